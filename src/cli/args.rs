//! Command-line interface. Secrets are never taken as arguments of the gateway commands
//! (they would show in `ps` and shell history); they come from the environment or files.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::process::logging::LogFormat;
use nxgate_core::signing::Algorithm;

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
        /// Once every listener accepts, write the bound addresses to this file as JSON
        /// (`{"listen": [..], "admin": ..}`); with port 0 in the config, this is how a
        /// script learns the ports.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate a config file and print a summary (no secrets); exit 0 if valid, 1 if not.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Also connect to Redis (when used), authenticate and load the scripts; exit 1
        /// with the reason in one line if that fails.
        #[arg(long)]
        probe: bool,
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
    #[cfg(feature = "emulator")]
    Emulator(nxgate_emulator::cli::EmulatorArgs),
    /// Run the emulator and the gateway on loopback and show a signed, verified round trip.
    #[cfg(feature = "emulator")]
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
    #[arg(long, value_parser = parse_algorithm)]
    pub algorithm: Option<Algorithm>,
    /// requestID to sign with (default: a fresh one).
    #[arg(long)]
    pub request_id: Option<String>,
    /// createTs to sign with (default: now).
    #[arg(long)]
    pub create_ts: Option<u64>,
}

/// `--algorithm`: the vendor's spellings, any letter case.
fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|_| format!("{s:?} is not MD5 or SHA256"))
}
