//! `nxgate emulator`: the emulator's command line, owned by the emulator crate so the
//! gateway binary only mounts it as a subcommand.

use clap::Args;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nxgate_core::secret::Secret;
use nxgate_testkit::refsign::Digest;

use crate::{CallbackRetry, EmulatorConfig, GzipSign, Misbehaviour};

/// `nxgate emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on (port 0: the kernel picks one; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Once listening, write the bound address to this file as JSON (`{"listen": ".."}`).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// A known account, as UUID=SECRET or UUID=SECRET:ALGORITHM (MD5 or SHA256, the
    /// algorithm its callbacks are signed with; default MD5). Repeatable. Test credentials only.
    #[arg(long = "tenant", value_name = "UUID=SECRET[:ALGORITHM]", hide_default_value = true)]
    pub tenants: Vec<String>,
    /// A YAML or JSON file of accounts: `tenants: [{uuid, secret, algorithm}]`. Test
    /// credentials only: the file holds secrets in clear.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Misbehave on every request: a defect (bad_sign, reset, ...) or busy, maintenance,
    /// http_429 (see docs/emulator.md for the list).
    #[arg(long)]
    pub fault: Option<String>,
    /// How long `slow` waits when a request has no x-emulator-delay-ms header (default 5000):
    /// with --fault slow, an upstream that far away (the benchmark's in-flight row).
    #[arg(long, value_name = "MS")]
    pub slow_ms: Option<u64>,
    /// Do not check request signatures (only for the benchmark's direct row).
    #[arg(long)]
    pub skip_request_verification: bool,
    /// Seed of the simulated call outcomes (same seed, same requests: same calls).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Simulated seconds per real second (0: the clock moves only by POST /_emulator/advance).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Which bytes the sign of a gzip body covers (requests and answers): decoded or wire.
    #[arg(long, default_value = "decoded")]
    pub gzip_sign: String,
    /// Delivery attempts per callback, the first included (1: no retry).
    #[arg(long, default_value_t = CallbackRetry::default().max_attempts)]
    pub callback_attempts: u32,
    /// Simulated seconds before a failed callback's first retry (doubling after each).
    #[arg(long, default_value_t = CallbackRetry::default().initial_backoff_secs)]
    pub callback_backoff_secs: u64,
    /// Cap of the doubling callback backoff, simulated seconds.
    #[arg(long, default_value_t = CallbackRetry::default().max_backoff_secs)]
    pub callback_max_backoff_secs: u64,
    /// Real milliseconds a callback receiver has to answer one attempt.
    #[arg(long, default_value_t = CallbackRetry::default().timeout.as_millis() as u64)]
    pub callback_timeout_ms: u64,
}

/// One account.
struct TenantSpec {
    uuid: String,
    secret: Secret,
    digest: Digest,
}

/// Parses `UUID=SECRET` or `UUID=SECRET:ALGORITHM`. A secret that itself ends in `:MD5` or
/// `:SHA256` cannot be given this way; use --config.
fn parse_tenant(pair: &str) -> Result<TenantSpec, String> {
    // Name the flag, not the value: it may hold a secret.
    let err = || "--tenant takes UUID=SECRET or UUID=SECRET:ALGORITHM (MD5 or SHA256)".to_owned();
    let (uuid, rest) = pair.split_once('=').ok_or_else(err)?;
    let (secret, digest) = match rest.rsplit_once(':') {
        Some((s, a)) if Digest::from_header(a).is_some() => (s, Digest::from_header(a).expect("checked")),
        _ => (rest, Digest::Md5),
    };
    if uuid.is_empty() || secret.is_empty() {
        return Err(err());
    }
    Ok(TenantSpec { uuid: uuid.to_owned(), secret: Secret::new(secret.as_bytes().to_vec()), digest })
}

/// Parses `UUID=SECRET[:ALGORITHM]` pairs (secrets only).
pub fn emulator_tenants(pairs: &[String]) -> Result<HashMap<String, Secret>, String> {
    pairs.iter().map(|p| parse_tenant(p).map(|t| (t.uuid, t.secret))).collect()
}

/// The `--config` file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    tenants: Vec<ConfigTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigTenant {
    uuid: String,
    secret: String,
    #[serde(default)]
    algorithm: Option<String>,
}

fn read_config(path: &Path) -> Result<Vec<TenantSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // serde_yaml reads JSON too. Its errors quote positions, not values.
    let file: ConfigFile = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    file.tenants
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let digest = match t.algorithm.as_deref() {
                None | Some("") => Digest::Md5,
                Some(a) => Digest::from_header(a)
                    .ok_or_else(|| format!("{}: tenants[{i}].algorithm must be MD5 or SHA256", path.display()))?,
            };
            if t.uuid.is_empty() || t.secret.is_empty() {
                return Err(format!("{}: tenants[{i}] needs a uuid and a secret", path.display()));
            }
            Ok(TenantSpec { uuid: t.uuid, secret: Secret::new(t.secret.into_bytes()), digest })
        })
        .collect()
}

/// The configuration the arguments describe.
pub fn config_from_args(args: &EmulatorArgs) -> Result<EmulatorConfig, String> {
    let mut specs = args.tenants.iter().map(|p| parse_tenant(p)).collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.config {
        specs.extend(read_config(path)?);
    }
    if specs.is_empty() {
        return Err("at least one --tenant or a --config with tenants is needed".to_owned());
    }
    let mut cfg = EmulatorConfig {
        skip_request_verification: args.skip_request_verification,
        slow_ms: args.slow_ms,
        seed: args.seed,
        time_scale: args.time_scale,
        gzip_sign: args.gzip_sign.parse::<GzipSign>()?,
        callback_retry: CallbackRetry {
            max_attempts: args.callback_attempts.max(1),
            initial_backoff_secs: args.callback_backoff_secs,
            max_backoff_secs: args.callback_max_backoff_secs,
            timeout: Duration::from_millis(args.callback_timeout_ms),
        },
        ..Default::default()
    };
    if !args.time_scale.is_finite() || args.time_scale < 0.0 {
        return Err("--time-scale must be a number >= 0".to_owned());
    }
    match args.fault.as_deref().map(str::parse::<Misbehaviour>).transpose()? {
        Some(Misbehaviour::Defect(f)) => cfg.fault = Some(f),
        Some(Misbehaviour::Vendor(v)) => cfg.vendor_fault = Some(v),
        None => {}
    }
    for t in specs {
        cfg.tenant_algorithms.insert(t.uuid.clone(), t.digest);
        cfg.tenants.insert(t.uuid, t.secret);
    }
    Ok(cfg)
}

/// `nxgate emulator`.
pub fn run(args: &EmulatorArgs) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let cfg = config_from_args(args)?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => {
                let cert = std::fs::read(c).map_err(|e| format!("{}: {e}", c.display()))?;
                let key = std::fs::read(k).map_err(|e| format!("{}: {e}", k.display()))?;
                Some(crate::tls_acceptor(&cert, &key)?)
            }
            _ => None,
        };
        let cfg = Arc::new(cfg);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (addr, task) = crate::spawn(args.listen, cfg, tls.clone())
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn config(argv: &[&str]) -> Result<EmulatorConfig, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("emulator").chain(argv.iter().copied())).map_err(|e| e.to_string())?;
        config_from_args(&cli.args)
    }

    #[test]
    fn flags_and_a_config_file_become_one_configuration() {
        let path = std::env::temp_dir().join(format!("nxgate-emulator-cli-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "tenants:\n  - {uuid: f1, secret: fs1, algorithm: SHA256}\n  - {uuid: f2, secret: fs2}\n",
        )
        .unwrap();
        let cfg = config(&[
            "--tenant",
            "a=sa:sha256",
            "--config",
            path.to_str().unwrap(),
            "--seed",
            "9",
            "--time-scale",
            "0",
            "--gzip-sign",
            "wire",
            "--fault",
            "busy",
            "--callback-attempts",
            "2",
        ])
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut uuids: Vec<&str> = cfg.tenants.keys().map(String::as_str).collect();
        uuids.sort();
        assert_eq!(uuids, ["a", "f1", "f2"]);
        assert_eq!(cfg.tenant_algorithms["a"], Digest::Sha256);
        assert_eq!(cfg.tenant_algorithms["f1"], Digest::Sha256);
        assert_eq!(cfg.tenant_algorithms["f2"], Digest::Md5);
        assert_eq!((cfg.seed, cfg.time_scale, cfg.gzip_sign), (9, 0.0, GzipSign::Wire));
        assert_eq!((cfg.fault, cfg.vendor_fault), (None, Some(crate::VendorFault::Busy)));
        assert_eq!(cfg.callback_retry.max_attempts, 2);
        assert_eq!(config(&["--tenant", "a=b", "--fault", "reset"]).unwrap().fault, Some(crate::Fault::Reset));
    }

    #[test]
    fn bad_flags_are_refused_without_echoing_a_secret() {
        let e = config(&[]).err().unwrap();
        assert!(e.contains("--tenant"), "{e}");
        let e = config(&["--tenant", "a=topsecret", "--gzip-sign", "both"]).err().unwrap();
        assert!(e.contains("--gzip-sign") && !e.contains("topsecret"), "{e}");
        let e = config(&["--tenant", "a=topsecret", "--fault", "nope"]).err().unwrap();
        assert!(e.contains("busy") && e.contains("bad_sign"), "names every fault: {e}");
        let e = config(&["--tenant", "=topsecret"]).err().unwrap();
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn a_tenant_flag_may_name_its_callback_algorithm() {
        let t = parse_tenant("u1=s:e:cret:SHA256").unwrap();
        assert_eq!((t.uuid.as_str(), t.secret.expose(), t.digest), ("u1", &b"s:e:cret"[..], Digest::Sha256));
        let t = parse_tenant("u1=s:e:cret").unwrap();
        assert_eq!((t.secret.expose(), t.digest), (&b"s:e:cret"[..], Digest::Md5));
        let e = parse_tenant("u1=").err().unwrap();
        assert!(e.contains("--tenant takes"), "{e}");
    }
}
