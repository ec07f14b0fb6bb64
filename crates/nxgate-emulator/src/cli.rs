//! `nxgate emulator`: the emulator's command line, owned by the emulator crate so the
//! gateway binary only mounts it as a subcommand.

use clap::Args;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use nxgate_core::secret::Secret;

use crate::EmulatorConfig;

/// `nxgate emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0: the kernel picks one; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Once listening, write the bound address to this file as JSON (`{"listen": ".."}`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
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

/// Parses `UUID=SECRET` pairs.
pub fn emulator_tenants(pairs: &[String]) -> Result<HashMap<String, Secret>, String> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((u, s)) if !u.is_empty() && !s.is_empty() => Ok((u.to_owned(), Secret::new(s.as_bytes().to_vec()))),
            // Name the position, not the value: it may hold a secret.
            _ => Err("--tenant takes UUID=SECRET".to_owned()),
        })
        .collect()
}

/// `nxgate emulator`.
pub fn run(args: &EmulatorArgs) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let tenants = emulator_tenants(&args.tenants)?;
        let fault = args.fault.as_deref().map(str::parse).transpose()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => {
                let cert = std::fs::read(c).map_err(|e| format!("{}: {e}", c.display()))?;
                let key = std::fs::read(k).map_err(|e| format!("{}: {e}", k.display()))?;
                Some(crate::tls_acceptor(&cert, &key)?)
            }
            _ => None,
        };
        let cfg = Arc::new(EmulatorConfig { tenants, skip_request_verification: args.skip_request_verification, fault });
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (addr, task) = crate::spawn(args.listen, cfg, tls.clone()).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%addr, "emulator listening");
            println!("emulator listening on {scheme}://{addr}");
            if let Some(path) = &args.ready_file {
                write_ready_file(path, &format!("{{\"listen\":\"{addr}\"}}"))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            tokio::select! {
                _ = task => Ok(()),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `json` to `path` whole (a temporary file, then renamed), so a reader never sees
/// half of it.
fn write_ready_file(path: &std::path::Path, json: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}
