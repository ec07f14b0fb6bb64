//! What each subcommand does. `main.rs` only parses arguments and calls in here.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::args::SignArgs;
use crate::policy::exchange::{self, ExchangeReport, Nxcloud, Outbound};
use crate::policy::{gcra, replay};
use crate::server::{self, StartMode};
use nxgate_core::config::{
    self, DeliveryMode, GatewayConfig, OnRedisError, RateLimitKind, RedisConfig, RedisTopology, SourceList, StateKind,
    Tenant, VerifyMode,
};
use nxgate_core::secret::{self, Secret};
use nxgate_core::signing::{self, Algorithm, SigningInput};

/// `nxgate run`.
pub fn run(path: &Path, mode: &StartMode) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        listen = ?config.listen,
        upstream = %config.upstream.authority,
        tenants = config.tenants.len(),
        verify = config.verify_mode.as_str(),
        "nxgate starting"
    );
    // Before the server's runtimes: the exporter's client must not be built inside one.
    // Held to the end of `run`, so spans still queued are flushed at exit.
    let _telemetry = match crate::process::telemetry::install(&config.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match server::Gateway::build(config, path, mode) {
        Ok(gateway) => {
            gateway.run();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The path `nxgate ping` calls.
pub const PING_PATH: &str = "/callcentre/api/v3/ping";

/// `nxgate ping`: one signed, verified ping per tenant, through the proxy's own exchange
/// code, always in enforce mode (a ping that is not verified proves nothing).
pub fn ping(path: &Path, only: Option<&str>) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Only what one signed request needs: no limiter, receiver or Redis link.
    let nxcloud = Nxcloud::new(&config);
    let tenants: Vec<Arc<Tenant>> = match only {
        None => config.tenants.into_iter().map(Arc::new).collect(),
        Some(name) => match config.tenants.into_iter().find(|t| t.name == name) {
            Some(t) => vec![Arc::new(t)],
            None => {
                eprintln!("no tenant named {name:?}");
                return ExitCode::FAILURE;
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for tenant in &tenants {
        let outcome = rt.block_on(ping_one(&nxcloud, tenant));
        match outcome {
            Ok(summary) => println!("{}: OK ({summary})", tenant.name),
            Err(reason) => {
                failed += 1;
                println!("{}: FAILED: {reason}", tenant.name);
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn ping_one(g: &Nxcloud, tenant: &Tenant) -> Result<String, String> {
    let request_id = signing::new_request_id();
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let out = Outbound { method: &http::Method::POST, target: PING_PATH, headers: &headers, decoded: false };
    // ping's `data` is a required field (the vendor's ping page); NXCloud echoes it.
    let body = bytes::Bytes::from_static(br#"{"data":"nxgate ping"}"#);
    let mut report = ExchangeReport::default();
    let started = std::time::Instant::now();
    let result = exchange::signed_exchange(g, tenant, &request_id, out, &body, VerifyMode::Enforce, &mut report).await;
    let response = result.map_err(|e| {
        // A refused answer may still say why NXCloud refused us (a wrong secret makes its
        // answer unverifiable too): say that first, marked as unverified.
        let clue = vendor_code_words(report.upstream_code, false).map(|w| format!("{w}; ")).unwrap_or_default();
        format!("{clue}{} ({}, requestID {request_id})", e, e.kind())
    })?;
    let status = response.header.status.as_u16();
    if status != 200 || report.upstream_code != Some(0) {
        let words = vendor_code_words(report.upstream_code, true).unwrap_or_else(|| "no code in the answer".into());
        return Err(format!("HTTP {status}, {words} (requestID {request_id})"));
    }
    Ok(format!("HTTP 200, code 0, verified, {} ms, requestID {request_id}", started.elapsed().as_millis()))
}

/// NXCloud's code in an operator's words: `NXCloud says code 6 (signature incorrect:
/// check the tenant's secret)`.
fn vendor_code_words(code: Option<i64>, verified: bool) -> Option<String> {
    let code = code?;
    let meaning = nxgate_core::vendor::lookup(code).map_or("not in the vendor's code table", |c| c.meaning);
    let trust = if verified { "" } else { ", in an answer that failed verification" };
    Some(format!("NXCloud says code {code} ({meaning}{trust})"))
}

/// `nxgate healthcheck`.
pub fn healthcheck(url: &str) -> ExitCode {
    let parsed = url.parse::<http::Uri>().ok().filter(|u| u.scheme_str() == Some("http"));
    let Some(uri) = parsed else {
        eprintln!("healthcheck takes an http:// URL");
        return ExitCode::FAILURE;
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(&authority).ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            eprintln!("cannot resolve {authority}");
            return ExitCode::FAILURE;
        }
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match status_of_get(addr, authority, path) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: HTTP {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long `healthcheck` waits to connect, and for each read or write.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The status of one `GET path` over HTTP/1.0 (the server closes after the answer), read
/// from its status line.
fn status_of_get(addr: std::net::SocketAddr, authority: &str, path: &str) -> std::io::Result<u16> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).take(512).read_line(&mut line)?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1 answer")),
    }
}

/// A summary of a validated config with no secret in it.
pub fn summary(c: &GatewayConfig) -> String {
    let mut out = String::new();
    let scheme = if c.upstream.tls { "https" } else { "http" };
    let addrs = |a: &[std::net::SocketAddr]| a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    let tls = |t: &Option<nxgate_core::config::TlsIdentity>| match t {
        None => "plain HTTP".to_owned(),
        Some(t) => format!("HTTPS, cert {}, key {}", t.cert_file.display(), t.key_file.display()),
    };
    out.push_str(&format!("listen: {} ({})\n", addrs(&c.listen), tls(&c.listen_tls)));
    out.push_str(&format!("upstream: {scheme}://{}", c.upstream.authority));
    if !c.upstream.extra_roots.is_empty() {
        out.push_str(&format!(" (+{} extra CA certificates)", c.upstream.extra_roots.len()));
    }
    out.push('\n');
    out.push_str(&format!(
        "verify: {} (max clock skew {} s)\nroutes: {}\n",
        c.verify_mode.as_str(),
        c.max_clock_skew_secs,
        c.allow_prefixes.join(", ")
    ));
    // Says which calls may reach NXCloud twice, so a reviewer of the config sees it.
    let idempotent = if c.idempotent_paths.is_empty() { "none".to_owned() } else { c.idempotent_paths.join(", ") };
    out.push_str(&format!("sent again after a broken connection: {idempotent}\n"));
    out.push_str(&format!(
        "limits: request body {} B, response body {} B, request header within {} ms\n",
        c.max_request_body_bytes,
        c.max_response_body_bytes,
        c.request_header_timeout.as_millis()
    ));
    // Where callbacks are kept, so a reviewer sees whether a restart can lose one.
    let state = match (c.state.kind, &c.state.dir) {
        (StateKind::Embedded, Some(dir)) => {
            format!(
                "embedded, {} (survives restarts; this replica only)",
                dir.join(crate::store::embedded::FILE_NAME).display()
            )
        }
        (StateKind::Redis, _) => "redis (the redis: connection; shared by every replica)".to_owned(),
        _ => "memory (lost on restart)".to_owned(),
    };
    out.push_str(&format!("state: {state}\n"));
    let required = &c.idempotency.required_paths;
    out.push_str(&format!(
        "idempotency keys: answers kept {} s (in state), required on {}\n",
        c.idempotency.retention.as_secs(),
        if required.is_empty() { "no path".to_owned() } else { required.join(", ") }
    ));
    match &c.telemetry.traces_url {
        None => out.push_str("traces: off\n"),
        Some(url) => out.push_str(&format!(
            "traces: OTLP/HTTP to {url} (service {}, new traces sampled at {})\n",
            c.telemetry.service_name, c.telemetry.sample_ratio
        )),
    }
    let redis_used = c.rate_limit_backend.kind == RateLimitKind::Redis || c.state.kind == StateKind::Redis;
    match c.rate_limit_backend.kind {
        RateLimitKind::Local if redis_used => out.push_str(&format!(
            "rate limits: in process (each replica on its own)\nredis: {}\n",
            redis_summary(&c.redis)
        )),
        RateLimitKind::Local => out.push_str("rate limits: in process (each replica on its own)\n"),
        RateLimitKind::Redis => {
            let on_error = match c.rate_limit_backend.on_redis_error {
                OnRedisError::LocalFallback => "local_fallback",
                OnRedisError::Deny => "deny",
                OnRedisError::Allow => "allow",
            };
            out.push_str(&format!(
                "rate limits: Redis (shared by every replica), on_redis_error {on_error}\nredis: {}\n",
                redis_summary(&c.redis)
            ))
        }
    }
    // What an internet-facing listener lets in, so a reviewer sees an open edge.
    let cap = c.max_connections.map_or("no cap".to_owned(), |n| format!("at most {n}"));
    out.push_str(&format!("connections per listener: {cap}"));
    if c.listen_tls.is_some() || c.callbacks.as_ref().is_some_and(|cb| cb.tls.is_some()) {
        out.push_str(&format!(", TLS handshake within {} ms", c.request_header_timeout.as_millis()));
    }
    out.push('\n');
    let sources = |l: Option<&SourceList>| l.map_or("any".to_owned(), |l| l.to_string());
    out.push_str(&format!(
        "sources allowed: listen {}; admin {}",
        sources(c.listen_allow_sources.as_ref()),
        sources(c.admin_allow_sources.as_ref())
    ));
    if let Some(cb) = &c.callbacks {
        out.push_str(&format!("; callbacks {}", sources(cb.allow_sources.as_ref())));
    }
    out.push('\n');
    out.push_str(&format!("tenants: {}\n", c.tenants.len()));
    for (i, t) in c.tenants.iter().enumerate() {
        let default = if c.default_tenant == Some(i) { ", default" } else { "" };
        out.push_str(&format!(
            "  - {} (uuid {}, {}, {} client keys, secret from {}{default})\n",
            t.name,
            t.uuid,
            t.algorithm,
            t.client_key_hashes.len(),
            t.secret_source
        ));
    }
    match &c.callbacks {
        None => out.push_str("callbacks: off\n"),
        Some(cb) => {
            out.push_str(&format!("callbacks: listen {} ({})\n", addrs(&cb.listen), tls(&cb.tls)));
            out.push_str(&format!(
                "  receiver {} (timeout {} ms), paths {}\n",
                cb.forward_to.url(),
                cb.receiver_timeout.as_millis(),
                cb.allow_prefixes.join(", ")
            ));
            for t in &c.tenants {
                if let Some(r) = &t.callbacks_forward_to {
                    out.push_str(&format!("  receiver for {}: {}\n", t.name, r.url()));
                }
            }
            match cb.delivery {
                DeliveryMode::Queued => {
                    let schedule: Vec<String> = cb.retry_schedule.iter().map(|d| human(*d)).collect();
                    out.push_str(&format!(
                        "  delivery: queued (stored before NXCloud is answered), at most {} waiting{}\n  \
                         attempts after: {}; then a dead letter\n  deliveries signed: {}\n",
                        cb.max_queued,
                        if c.state.kind == StateKind::Redis { " per tenant" } else { "" },
                        schedule.join(", "),
                        if cb.signing_key.is_some() { "yes (webhook-signature)" } else { "no (no signing secret)" }
                    ));
                }
                DeliveryMode::Direct => {
                    let replay = match c.state.kind {
                        StateKind::Redis => "Redis (the redis: connection above)".to_owned(),
                        StateKind::Embedded => "the state file".to_owned(),
                        StateKind::Memory => format!("in process, at most {} entries", cb.replay_memory_entries),
                    };
                    out.push_str(&format!(
                        "  delivery: direct (the receiver answers NXCloud)\n  replay memory: {replay}\n"
                    ));
                }
            }
        }
    }
    out
}

/// `nxgate check [--probe]`.
pub fn check(path: &Path, probe: bool) -> ExitCode {
    let c = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary(&c));
    println!("config OK");
    if !probe {
        return ExitCode::SUCCESS;
    }
    if c.rate_limit_backend.kind != RateLimitKind::Redis && c.state.kind != StateKind::Redis {
        println!("redis probe: nothing to probe (rate_limit_backend.kind is \"local\", state.kind is not \"redis\")");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The scripts the gateway runs, so a server that refuses them (ACL, no scripting) shows now.
    let mut scripts = vec![gcra::GCRA, replay::CLAIM, replay::RELEASE];
    scripts.extend(crate::store::redis::SCRIPTS);
    match rt.block_on(crate::net::redis::probe(&c.redis, &scripts)) {
        Ok(found) => {
            println!("redis probe: OK ({found})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis probe FAILED ({}): {e}", e.reason.as_str());
            ExitCode::FAILURE
        }
    }
}

/// A schedule step for people: `0 s`, `5 s`, `5 min`, `2 h`.
fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        _ if ms > 0 && ms.is_multiple_of(3_600_000) => format!("{} h", ms / 3_600_000),
        _ if ms > 0 && ms.is_multiple_of(60_000) => format!("{} min", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{} s", ms / 1_000),
        _ => format!("{ms} ms"),
    }
}

/// The Redis connection in one line: shape, hosts, TLS, user, database; never the password.
pub fn redis_summary(r: &RedisConfig) -> String {
    let shape = match &r.topology {
        RedisTopology::Single => format!("single server {}", r.host),
        RedisTopology::Sentinel { master_name, nodes } => {
            format!("master {master_name:?} from Sentinels {}", nodes.join(", "))
        }
        RedisTopology::Cluster { nodes } => format!("cluster, seeds {}", nodes.join(", ")),
    };
    let tls = match (r.tls, &r.ca_file) {
        (false, _) => "no TLS".to_owned(),
        (true, None) => "TLS (system roots)".to_owned(),
        (true, Some(f)) => format!("TLS (system roots + {})", f.display()),
    };
    let user = match (&r.username, r.has_password) {
        (Some(u), true) => format!("user {u} with password"),
        (Some(u), false) => format!("user {u}, no password"),
        (None, true) => "default user with password".to_owned(),
        (None, false) => "no authentication".to_owned(),
    };
    format!("{shape}, {tls}, {user}, database {}, timeout {} ms (from {})", r.db, r.timeout.as_millis(), r.url_field)
}

/// `nxgate sign`.
pub fn sign(args: &SignArgs) -> ExitCode {
    let (uuid, secret, tenant_alg) = match sign_credentials(args) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("cannot read the body from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let algorithm = args.algorithm.or(tenant_alg).unwrap_or_default();
    let request_id = args.request_id.clone().unwrap_or_else(signing::new_request_id);
    let create_ts = args.create_ts.unwrap_or_else(|| nxgate_core::clock::now_unix().as_secs()).to_string();
    let input = SigningInput { body: &body, create_ts: &create_ts, request_id: &request_id, uuid: &uuid };
    for (name, value) in signing::signed_headers(&secret, algorithm, &input).pairs() {
        println!("{name}: {value}");
    }
    ExitCode::SUCCESS
}

fn sign_credentials(args: &SignArgs) -> Result<(String, Secret, Option<Algorithm>), String> {
    if let (Some(path), Some(name)) = (&args.config, &args.tenant) {
        let c = config::load(path).map_err(|e| e.to_string())?;
        let t = c.tenants.into_iter().find(|t| &t.name == name).ok_or(format!("no tenant named {name:?}"))?;
        return Ok((t.uuid, t.secret, Some(t.algorithm)));
    }
    let uuid = args.uuid.clone().ok_or("give --uuid with --secret-env or --secret-file (or --config with --tenant)")?;
    let secret = match (&args.secret_env, &args.secret_file) {
        (Some(var), None) => {
            let value = std::env::var_os(var).ok_or(format!("environment variable {var} is not set"))?;
            Secret::new(value.into_encoded_bytes())
        }
        // The config loader's own reader: same guards, same newline rule, same key.
        (None, Some(f)) => secret::read_secret_file(f).map_err(|e| format!("--secret-file: {e}"))?,
        _ => return Err("give exactly one of --secret-env / --secret-file".into()),
    };
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok((uuid, secret, None))
}
