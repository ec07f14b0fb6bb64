//! Command-line interface. Secrets are never taken as arguments of the gateway commands
//! (they would show in `ps` and shell history); they come from the environment or files.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::logging::LogFormat;
use crate::signing::Algorithm;

/// nxgate: a signing reverse proxy for the NXCloud Callbot v3 API.
#[derive(Debug, Parser)]
#[command(name = "nxgate", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: accept unsigned requests, sign, forward, verify, answer.
    Run {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of the running instance (graceful upgrade:
        /// start this, then send SIGQUIT to the old process).
        #[arg(long)]
        upgrade: bool,
        /// Socket for the listener handover (default: nxgate-upgrade-<first listen port>.sock
        /// in the temp directory).
        #[arg(long)]
        upgrade_sock: Option<PathBuf>,
    },
    /// Validate a config file and print a summary (no secrets); exit 0 if valid, 1 if not.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Prove each tenant's credentials: a signed, verified POST /callcentre/api/v3/ping.
    /// Exit 0 if every tenant passed, 1 otherwise.
    Ping {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Only this tenant (default: all).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Exit 0 if URL answers 200 (for container health checks; plain http only).
    Healthcheck {
        /// e.g. http://127.0.0.1:9090/healthz
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Print the signature headers for the body on stdin (for debugging).
    Sign(SignArgs),
    /// Run a local stand-in for nxbot.nxcloud.com (for CI, tests and benchmarks).
    Emulator(EmulatorArgs),
    /// Run the emulator and the gateway on loopback and show a signed, verified round trip.
    Demo,
}

/// `nxgate sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Take uuid, secret and algorithm from this config's tenant (with --tenant).
    #[arg(short, long, requires = "tenant")]
    pub config: Option<PathBuf>,
    /// Tenant name in --config.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Account uuid (without --config).
    #[arg(long, conflicts_with = "config")]
    pub uuid: Option<String>,
    /// Environment variable holding the secret (without --config).
    #[arg(long, conflicts_with_all = ["config", "secret_file"])]
    pub secret_env: Option<String>,
    /// File holding the secret (without --config).
    #[arg(long, conflicts_with = "config")]
    pub secret_file: Option<PathBuf>,
    /// MD5 or SHA256 (default: the tenant's, else MD5).
    #[arg(long)]
    pub algorithm: Option<Algorithm>,
    /// requestID to sign with (default: a fresh one).
    #[arg(long)]
    pub request_id: Option<String>,
    /// createTs to sign with (default: now).
    #[arg(long)]
    pub create_ts: Option<u64>,
}

/// `nxgate emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// A known account, as UUID=SECRET (repeatable). Test credentials only.
    #[arg(long = "tenant", value_name = "UUID=SECRET", required = true, hide_default_value = true)]
    pub tenants: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Misbehave on every request (see README for the list).
    #[arg(long)]
    pub fault: Option<String>,
    /// Do not check request signatures (only for the benchmark's direct row).
    #[arg(long)]
    pub skip_request_verification: bool,
}

impl clap::ValueEnum for Algorithm {
    fn value_variants<'a>() -> &'a [Self] {
        &[Algorithm::Md5, Algorithm::Sha256]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let lower = match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).alias(lower))
    }
}
