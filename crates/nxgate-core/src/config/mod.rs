//! Configuration: the file a person writes (`file`) and the validated model the gateway
//! runs on (`GatewayConfig`).
//!
//! Validation happens once, here, at load (and again for every reload, before the new
//! config replaces the old one). It collects every problem, each naming its field, so an
//! operator fixes a file in one pass. Nothing after this point re-checks: a running
//! gateway never sees an invalid config.

pub mod file;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{DeliveryMode, OnRedisError, RateLimitKind, RequestCompression, StateKind, VerifyMode};
use file::{FileConfig, TenantFile};

use crate::backoff::BackoffPolicy;

use crate::secret::Secret;
use crate::signing::Algorithm;

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config {path}: {msg}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// The parser's message (names the field and line).
        msg: String,
    },
    /// The file parsed, but some values are not acceptable.
    #[error("config {path} is invalid:\n{}", list(.problems))]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// Every problem found, each naming its field.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

/// One invalid value, with the dotted path of its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `tenants[1].secret_env`.
    pub field: String,
    /// What is wrong with it.
    pub msg: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.msg)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Where and how to reach NXCloud.
    pub upstream: UpstreamConfig,
    /// Largest request body accepted from a caller.
    pub max_request_body_bytes: usize,
    /// Largest upstream response body accepted.
    pub max_response_body_bytes: usize,
    /// Time a caller has to send a whole request header (see `downstream`).
    pub request_header_timeout: Duration,
    /// Response verification mode.
    pub verify_mode: VerifyMode,
    /// Largest accepted createTs distance, seconds.
    pub max_clock_skew_secs: u64,
    /// Allowed path prefixes.
    pub allow_prefixes: Vec<String>,
    /// Paths (without query) whose requests may be sent again after being written
    /// upstream; see `routes::is_idempotent` and `replay`.
    pub idempotent_paths: Vec<String>,
    /// Tenants in file order.
    pub tenants: Vec<Tenant>,
    /// Index into `tenants` of the default tenant.
    pub default_tenant: Option<usize>,
    /// Admin listener address, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// Drain time allowed on SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Where rate-limit state lives.
    pub rate_limit_backend: RateLimitBackend,
    /// The Redis connection (used when `rate_limit_backend.kind` is Redis).
    pub redis: RedisConfig,
    /// HTTPS identity of the proxy listeners; `None` = plain HTTP.
    pub listen_tls: Option<TlsIdentity>,
    /// The callback listener, if configured.
    pub callbacks: Option<CallbacksConfig>,
    /// Most connections each listener holds open (`limits.max_connections`); `None` = no cap.
    pub max_connections: Option<usize>,
    /// Sources the proxy listeners accept (`listen_allow_sources`); `None` = any.
    pub listen_allow_sources: Option<SourceList>,
    /// Sources the admin listener accepts (`admin_allow_sources`); `None` = any.
    pub admin_allow_sources: Option<SourceList>,
    /// Where durable state lives (`state:`); only a restart changes it.
    pub state: StateConfig,
    /// Traces (`telemetry:`); only a restart changes it.
    pub telemetry: TelemetryConfig,
    /// `Idempotency-Key` handling (`idempotency:`).
    pub idempotency: IdempotencyConfig,
}

/// The validated `idempotency:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a key's recorded answer is replayed.
    pub retention: Duration,
    /// Paths (without query) that require a key.
    pub required_paths: Vec<String>,
}

/// The validated `telemetry:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans go: the collector's OTLP/HTTP traces URL (`<otlp_endpoint>/v1/traces`);
    /// `None` = no traces, and no cost.
    pub traces_url: Option<String>,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
}

/// The validated `state:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Memory, embedded or Redis (`null` resolved).
    pub kind: StateKind,
    /// The embedded store's directory (resolved against the config file's); set exactly
    /// when `kind` is embedded.
    pub dir: Option<PathBuf>,
}

impl StateConfig {
    /// Whether state survives a restart of this process.
    pub fn is_durable(&self) -> bool {
        self.kind != StateKind::Memory
    }
}

/// A validated source allowlist: the CIDRs a listener accepts connections from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceList(Vec<ipnet::IpNet>);

impl SourceList {
    /// Whether `ip` is inside one of the networks. An IPv4 peer seen on a dual-stack IPv6
    /// socket (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The networks, as written canonically (`10.0.0.0/8`).
    pub fn nets(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

impl fmt::Display for SourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.0.iter().map(|n| n.to_string()).collect();
        f.write_str(&nets.join(", "))
    }
}

/// The validated `callbacks:` block.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// Callback listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The default internal receiver.
    pub forward_to: Receiver,
    /// Path prefixes a callback may arrive on.
    pub allow_prefixes: Vec<String>,
    /// Limit on the whole exchange with the receiver.
    pub receiver_timeout: Duration,
    /// Most entries the in-process replay memory holds.
    pub replay_memory_entries: usize,
    /// HTTPS identity; `None` = plain HTTP.
    pub tls: Option<TlsIdentity>,
    /// Sources the callback listener accepts (`callbacks.allow_sources`); `None` = any.
    pub allow_sources: Option<SourceList>,
    /// Queued (the outbox) or direct (`null` resolved).
    pub delivery: DeliveryMode,
    /// Delay before each delivery attempt, the first included (queued delivery).
    pub retry_schedule: Vec<Duration>,
    /// Most callbacks waiting for delivery at once.
    pub max_queued: usize,
    /// The Standard Webhooks key deliveries are signed with; `None` = unsigned.
    pub signing_key: Option<crate::webhook::SigningKey>,
}

/// An internal callback receiver: `http://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
}

impl Receiver {
    /// The receiver as a URL, for summaries.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// A listener's certificate chain and key, read and checked at load (and at every reload).
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The certificate file, as configured (for summaries and messages).
    pub cert_file: PathBuf,
    /// The key file, as configured.
    pub key_file: PathBuf,
    /// The chain (DER), leaf first.
    pub cert_chain: Vec<Vec<u8>>,
    /// The private key (DER), kept like a secret.
    pub key_der: Secret,
}

/// The validated `rate_limit_backend:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitBackend {
    /// Local or Redis (then `GatewayConfig::redis` is the connection).
    pub kind: RateLimitKind,
    /// Policy when Redis cannot answer.
    pub on_redis_error: OnRedisError,
}

/// The validated `redis:` block (or the older `rate_limit_backend.redis_url`): the one
/// Redis connection every shared feature uses. Validated when Redis is used or `redis:`
/// is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The URL. It may hold a password, so it is kept like a secret: redacted in `Debug`,
    /// zeroized on drop.
    pub url: Secret,
    /// Which field the URL came from, for messages.
    pub url_field: &'static str,
    /// `rediss://`: TLS to every node (Sentinels included).
    pub tls: bool,
    /// `host:port` of the URL (the master's seed with Sentinel or Cluster, unused there).
    pub host: String,
    /// The ACL user of the URL, if any (never the password).
    pub username: Option<String>,
    /// Whether the URL carries a password.
    pub has_password: bool,
    /// The database number of the URL.
    pub db: i64,
    /// `ca_file` as configured, for summaries.
    pub ca_file: Option<PathBuf>,
    /// The PEM text of `ca_file`, checked at load; added to the system roots.
    pub extra_roots_pem: Vec<u8>,
    /// Single server, Sentinel or Cluster.
    pub topology: RedisTopology,
    /// One operation's limit before `on_redis_error` applies.
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::new(file::defaults::redis_url().into_bytes()),
            url_field: "redis.url",
            tls: false,
            host: "127.0.0.1:6379".to_owned(),
            username: None,
            has_password: false,
            db: 0,
            ca_file: None,
            extra_roots_pem: Vec::new(),
            topology: RedisTopology::Single,
            timeout: Duration::from_millis(file::defaults::redis_timeout_ms()),
        }
    }
}

/// How the Redis servers are arranged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server, the URL's host.
    Single,
    /// Sentinels name the master; failovers are followed.
    Sentinel {
        /// The master's name in the Sentinels' config.
        master_name: String,
        /// Sentinel addresses, `host:port`.
        nodes: Vec<String>,
    },
    /// A Redis Cluster, discovered from these seed nodes.
    Cluster {
        /// Seed nodes, `host:port`.
        nodes: Vec<String>,
    },
}

/// A tenant's GCRA limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained requests per second (> 0).
    pub per_second: u32,
    /// Burst size (> 0).
    pub burst: u32,
}

/// The validated `upstream:` block.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `https` (true) or `http`.
    pub tls: bool,
    /// Host name or IP literal (no brackets), also the TLS SNI.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `Host` header value sent upstream.
    pub authority: String,
    /// Extra trust anchors (DER), added to the system roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// TCP connect plus TLS handshake limit.
    pub connect_timeout: Duration,
    /// Per-read/write limit.
    pub read_timeout: Duration,
    /// Whole-exchange limit.
    pub total_timeout: Duration,
    /// What happens to a caller's gzip body.
    pub request_compression: RequestCompression,
    /// Back-pressure after busy answers (`None`: off).
    pub busy_backoff: Option<BackoffPolicy>,
}

/// One account the gateway signs for.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Operator's name (a bounded label for logs and metrics).
    pub name: String,
    /// NXCloud account id.
    pub uuid: String,
    /// Signing key.
    pub secret: Secret,
    /// Signing algorithm.
    pub algorithm: Algorithm,
    /// sha256 digests of the client keys that select this tenant.
    pub client_key_hashes: Vec<[u8; 32]>,
    /// GCRA limit; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Concurrency cap; `None` = unlimited.
    pub max_in_flight: Option<u32>,
    /// Where the secret came from (`env NAME` or `file PATH`), for summaries; never the value.
    pub secret_source: String,
    /// This tenant's callback receiver, overriding `callbacks.forward_to`.
    pub callbacks_forward_to: Option<Receiver>,
}

/// Where secrets come from; the process environment in production, a map in tests.
pub trait Environment {
    /// The value of an environment variable, if set.
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl<S: std::hash::BuildHasher> Environment for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(name).map(OsString::from)
    }
}

/// Reads, parses and validates a config file against the process environment.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    load_with(path, &ProcessEnv)
}

/// Like [`load`], with an explicit environment.
pub fn load_with(path: &Path, env: &dyn Environment) -> Result<GatewayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, path, env)
}

/// Parses and validates config text; `path` names the file in messages and anchors
/// relative `secret_file` / `ca_file` paths.
pub fn parse(text: &str, path: &Path, env: &dyn Environment) -> Result<GatewayConfig, ConfigError> {
    let file: FileConfig =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), msg: e.to_string() })?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate(file, base, env).map_err(|problems| ConfigError::Invalid { path: path.to_owned(), problems })
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.0.push(Problem { field: field.into(), msg: msg.into() });
    }
}

/// Largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Turns the file model into the runtime model, or lists everything wrong with it.
pub fn validate(file: FileConfig, base: &Path, env: &dyn Environment) -> Result<GatewayConfig, Vec<Problem>> {
    let mut p = Problems(Vec::new());

    if file.listen.is_empty() {
        p.add("listen", "at least one address is required");
    }
    let mut listen = Vec::new();
    for (i, a) in file.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => p.add(format!("listen[{i}]"), format!("{a:?} is not an IP:port address")),
        }
    }

    let upstream = validate_upstream(&file.upstream, base, &mut p);

    let limits = &file.limits;
    let max_request_body_bytes = positive_size("limits.max_request_body_bytes", limits.max_request_body_bytes, &mut p);
    let max_response_body_bytes =
        positive_size("limits.max_response_body_bytes", limits.max_response_body_bytes, &mut p);
    let request_header_timeout =
        positive_ms("limits.request_header_timeout_ms", limits.request_header_timeout_ms, &mut p);
    let max_connections = limits.max_connections.map(|n| positive_size("limits.max_connections", n, &mut p));
    let listen_allow_sources =
        file.listen_allow_sources.as_ref().map(|l| source_list("listen_allow_sources", l, &mut p));
    let admin_allow_sources = file.admin_allow_sources.as_ref().map(|l| source_list("admin_allow_sources", l, &mut p));

    validate_prefixes("routes.allow_prefixes", &file.routes.allow_prefixes, &mut p);
    for (i, path) in file.routes.idempotent_paths.iter().enumerate() {
        if !path.starts_with('/') {
            p.add(format!("routes.idempotent_paths[{i}]"), format!("{path:?} must be a full path starting with '/'"));
        } else if path.contains('?') {
            p.add(
                format!("routes.idempotent_paths[{i}]"),
                format!("{path:?} must not contain a query: a request's path is matched without its query"),
            );
        }
    }

    let tenants = validate_tenants(&file.tenants, base, env, &mut p);

    let default_tenant = match &file.default_tenant {
        None => None,
        Some(name) => {
            let idx = file.tenants.iter().position(|t| &t.name == name);
            if idx.is_none() {
                p.add("default_tenant", format!("{name:?} is not the name of a tenant"));
            }
            idx
        }
    };

    let admin_listen = match &file.admin_listen {
        None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            // Port 0 is a fresh kernel-picked port for each listener, so it never clashes.
            Ok(addr) if addr.port() != 0 && listen.contains(&addr) => {
                p.add("admin_listen", "must differ from every proxy listen address");
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                p.add("admin_listen", format!("{a:?} is not an IP:port address"));
                None
            }
        },
    };
    let backend = &file.rate_limit_backend;
    let redis = validate_redis(&file, base, env, &mut p);

    let listen_tls = file.listen_tls.as_ref().and_then(|t| read_tls_identity("listen_tls", t, base, &mut p));
    let state = validate_state(&file, base, &mut p);
    let telemetry = validate_telemetry(&file.telemetry, &mut p);
    let idempotency = validate_idempotency(&file.idempotency, &mut p);
    let callbacks = file
        .callbacks
        .as_ref()
        .and_then(|c| validate_callbacks(c, &listen, admin_listen, state.kind, base, env, &mut p));
    if callbacks.is_none() {
        for (i, t) in file.tenants.iter().enumerate() {
            if t.callbacks_forward_to.is_some() && file.callbacks.is_none() {
                p.add(format!("tenants[{i}].callbacks_forward_to"), "needs a callbacks: section");
            }
        }
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(GatewayConfig {
        state,
        telemetry,
        idempotency,
        listen_tls,
        callbacks,
        max_connections,
        listen_allow_sources,
        admin_allow_sources,
        admin_listen,
        shutdown_grace: Duration::from_secs(file.shutdown_grace_secs),
        rate_limit_backend: RateLimitBackend { kind: backend.kind, on_redis_error: backend.on_redis_error },
        redis: redis.unwrap_or_default(),
        listen,
        upstream: upstream.expect("no problems means the upstream validated"),
        max_request_body_bytes,
        max_response_body_bytes,
        request_header_timeout,
        verify_mode: file.verify.mode,
        max_clock_skew_secs: file.verify.max_clock_skew_secs,
        allow_prefixes: file.routes.allow_prefixes,
        idempotent_paths: file.routes.idempotent_paths,
        tenants,
        default_tenant,
    })
}

/// Validates `redis:` (or the older `rate_limit_backend.redis_url[_env]`), when Redis is
/// used or the block is written. Messages never echo the URL: it may carry a password.
fn validate_redis(file: &FileConfig, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<RedisConfig> {
    let backend = &file.rate_limit_backend;
    let used = backend.kind == RateLimitKind::Redis || file.state.kind == Some(StateKind::Redis);
    let legacy = backend.redis_url.is_some() || backend.redis_url_env.is_some();
    if file.redis.is_none() && !used {
        return None;
    }
    let empty = file::RedisFile { timeout_ms: file::defaults::redis_timeout_ms(), ..Default::default() };
    let block = file.redis.as_ref().unwrap_or(&empty);
    if legacy && (block.url.is_some() || block.url_env.is_some()) {
        let field = if backend.redis_url.is_some() {
            "rate_limit_backend.redis_url"
        } else {
            "rate_limit_backend.redis_url_env"
        };
        p.add(field, "give the Redis URL once: in redis.url / redis.url_env or here, not both");
        return None;
    }
    // The older fields live on as another spelling of the same two keys.
    let (url, url_env, url_field, env_field) = if legacy {
        (&backend.redis_url, &backend.redis_url_env, "rate_limit_backend.redis_url", "rate_limit_backend.redis_url_env")
    } else {
        (&block.url, &block.url_env, "redis.url", "redis.url_env")
    };
    let before = p.0.len();
    let (text, field) = match url_env {
        None => (url.clone().unwrap_or_else(file::defaults::redis_url), url_field),
        Some(var) => match env.var(var).map(|v| v.into_string()) {
            Some(Ok(u)) => (u, env_field),
            Some(Err(_)) => {
                p.add(env_field, format!("environment variable {var} is not UTF-8"));
                (String::new(), env_field)
            }
            None => {
                p.add(env_field, format!("environment variable {var} is not set"));
                (String::new(), env_field)
            }
        },
    };
    let parsed = if p.0.len() == before { parse_redis_url(&text, field, p) } else { None };
    if block.timeout_ms == 0 {
        p.add("redis.timeout_ms", "must be greater than 0");
    }
    let extra_roots_pem = match &block.ca_file {
        None => Vec::new(),
        Some(f) => {
            let path = resolve(base, f);
            match read_pem_certs(&path).and_then(|_| crate::secret::read_small_file(&path, MAX_CA_FILE_BYTES)) {
                Ok(pem) => pem,
                Err(msg) => {
                    p.add("redis.ca_file", msg);
                    Vec::new()
                }
            }
        }
    };
    if block.ca_file.is_some() && parsed.as_ref().is_some_and(|u| !u.tls) {
        p.add("redis.ca_file", "only used with rediss:// (TLS); the URL is redis://");
    }
    let nodes = |field: &str, nodes: &[String], p: &mut Problems| {
        if nodes.is_empty() {
            p.add(field, "at least one host:port is required");
        }
        for (i, n) in nodes.iter().enumerate() {
            let ok =
                n.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|v| v > 0));
            if !ok || n.contains(['/', '@']) {
                p.add(format!("{field}[{i}]"), format!("{n:?} is not host:port"));
            }
        }
        nodes.to_vec()
    };
    let topology = match (&block.sentinel, &block.cluster) {
        (Some(_), Some(_)) => {
            p.add("redis.cluster", "give at most one of redis.sentinel and redis.cluster");
            RedisTopology::Single
        }
        (Some(s), None) => {
            if s.master_name.is_empty() || !s.master_name.bytes().all(|b| b.is_ascii_graphic()) {
                p.add("redis.sentinel.master_name", "must be the master's name in the Sentinels' config");
            }
            let nodes = nodes("redis.sentinel.nodes", &s.nodes, p);
            RedisTopology::Sentinel { master_name: s.master_name.clone(), nodes }
        }
        (None, Some(c)) => {
            let nodes = nodes("redis.cluster.nodes", &c.nodes, p);
            if parsed.as_ref().is_some_and(|u| u.db != 0) {
                p.add(field, "Redis Cluster has only database 0");
            }
            RedisTopology::Cluster { nodes }
        }
        (None, None) => RedisTopology::Single,
    };
    if p.0.len() > before {
        return None;
    }
    let u = parsed?;
    Some(RedisConfig {
        url: Secret::new(text.into_bytes()),
        url_field: field,
        tls: u.tls,
        host: u.host,
        username: u.username,
        has_password: u.has_password,
        db: u.db,
        ca_file: block.ca_file.clone(),
        extra_roots_pem,
        topology,
        timeout: Duration::from_millis(block.timeout_ms),
    })
}

/// What `check` may show of a Redis URL: everything but the password.
struct RedisUrlParts {
    tls: bool,
    host: String,
    username: Option<String>,
    has_password: bool,
    db: i64,
}

fn parse_redis_url(url: &str, field: &str, p: &mut Problems) -> Option<RedisUrlParts> {
    const FORM: &str = "must be redis:// or rediss://[user:password@]host[:port][/db]";
    let Ok(uri) = url.parse::<http::Uri>() else {
        p.add(field, FORM);
        return None;
    };
    let tls = match uri.scheme_str() {
        Some("redis") => false,
        Some("rediss") => true,
        _ => {
            p.add(field, FORM);
            return None;
        }
    };
    let Some(auth) = uri.authority().filter(|a| !a.host().is_empty()) else {
        p.add(field, FORM);
        return None;
    };
    let (userinfo, _) = auth.as_str().rsplit_once('@').unwrap_or(("", ""));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let db = match uri.path().trim_start_matches('/') {
        "" => 0,
        n => match n.parse::<i64>() {
            Ok(db) if db >= 0 => db,
            _ => {
                p.add(field, "the path must be a database number, e.g. /0");
                return None;
            }
        },
    };
    if uri.query().is_some() {
        p.add(field, "must not have a query; use the redis: keys instead");
        return None;
    }
    Some(RedisUrlParts {
        tls,
        host: format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(6379)),
        username: (!user.is_empty()).then(|| user.to_owned()),
        has_password: !password.is_empty(),
        db,
    })
}

fn validate_prefixes(field: &str, prefixes: &[String], p: &mut Problems) {
    if prefixes.is_empty() {
        p.add(field, "at least one prefix is required (nothing could pass)");
    }
    for (i, prefix) in prefixes.iter().enumerate() {
        if !prefix.starts_with('/') {
            p.add(format!("{field}[{i}]"), format!("{prefix:?} must start with '/'"));
        } else if prefix.split('/').any(|seg| seg == "." || seg == "..") || prefix.contains('%') {
            p.add(format!("{field}[{i}]"), "must not contain dot segments or percent-encoding");
        }
    }
}

/// `state:`, with `kind: null` resolved: Redis where the rate limits already are, else memory.
fn validate_state(file: &FileConfig, base: &Path, p: &mut Problems) -> StateConfig {
    let kind = file.state.kind.unwrap_or(match file.rate_limit_backend.kind {
        RateLimitKind::Redis => StateKind::Redis,
        RateLimitKind::Local => StateKind::Memory,
    });
    let dir = match (kind, &file.state.dir) {
        (StateKind::Embedded, None) => {
            p.add("state.dir", "required with state.kind \"embedded\": the directory of the state file");
            None
        }
        (StateKind::Embedded, Some(d)) if d.as_os_str().is_empty() => {
            p.add("state.dir", "must not be empty");
            None
        }
        (StateKind::Embedded, Some(d)) => Some(resolve(base, d)),
        (_, Some(_)) => {
            p.add("state.dir", format!("only used with state.kind \"embedded\" (kind is {:?})", kind.as_str()));
            None
        }
        (_, None) => None,
    };
    StateConfig { kind, dir }
}

/// `telemetry:`: an `http(s)://host[:port][/path]` collector base (no query, no user
/// info: the URL is printed by `check`), a ratio in [0, 1], a plain service name.
fn validate_telemetry(t: &file::TelemetryFile, p: &mut Problems) -> TelemetryConfig {
    let traces_url = t.otlp_endpoint.as_ref().and_then(|url| {
        let field = "telemetry.otlp_endpoint";
        let Ok(uri) = url.parse::<http::Uri>() else {
            p.add(field, format!("{url:?} is not a URL"));
            return None;
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            p.add(
                field,
                "must be http(s)://host[:port], the collector's OTLP/HTTP address (e.g. http://otel-collector:4318)",
            );
            return None;
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some() {
            p.add(field, "must not contain user info or a query");
            return None;
        }
        Some(format!("{}/v1/traces", url.trim_end_matches('/')))
    });
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        p.add("telemetry.sample_ratio", "must be between 0.0 and 1.0");
    }
    if !is_header_safe(&t.service_name) {
        p.add("telemetry.service_name", "must be non-empty visible ASCII");
    }
    TelemetryConfig { traces_url, sample_ratio: t.sample_ratio, service_name: t.service_name.clone() }
}

/// Longest `idempotency.retention_secs`: 30 days.
pub const MAX_RETENTION_SECS: u64 = 30 * 86_400;

fn validate_idempotency(i: &file::IdempotencyFile, p: &mut Problems) -> IdempotencyConfig {
    if i.retention_secs == 0 || i.retention_secs > MAX_RETENTION_SECS {
        p.add("idempotency.retention_secs", "must be between 1 and 2592000 (30 days)");
    }
    for (k, path) in i.required_paths.iter().enumerate() {
        if !path.starts_with('/') || path.contains('?') {
            p.add(
                format!("idempotency.required_paths[{k}]"),
                format!("{path:?} must be a full path starting with '/', without a query"),
            );
        }
    }
    IdempotencyConfig { retention: Duration::from_secs(i.retention_secs), required_paths: i.required_paths.clone() }
}

/// Longest delay of one step of `callbacks.retry_schedule_ms`: a week.
pub const MAX_RETRY_DELAY_MS: u64 = 7 * 24 * 3_600_000;

/// Most steps in `callbacks.retry_schedule_ms`.
pub const MAX_RETRY_STEPS: usize = 100;

fn validate_callbacks(
    c: &file::CallbacksFile,
    listen: &[SocketAddr],
    admin: Option<SocketAddr>,
    state: StateKind,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<CallbacksConfig> {
    let before = p.0.len();
    if c.listen.is_empty() {
        p.add("callbacks.listen", "at least one address is required (or remove the callbacks section)");
    }
    let mut addrs = Vec::new();
    for (i, a) in c.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            // Port 0 is a fresh kernel-picked port for each listener, so it never clashes.
            Ok(addr) if addr.port() != 0 && (listen.contains(&addr) || admin == Some(addr)) => {
                p.add(format!("callbacks.listen[{i}]"), "must differ from every listen and admin_listen address")
            }
            Ok(addr) => addrs.push(addr),
            Err(_) => p.add(format!("callbacks.listen[{i}]"), format!("{a:?} is not an IP:port address")),
        }
    }
    let forward_to = parse_receiver("callbacks.forward_to", &c.forward_to, p);
    validate_prefixes("callbacks.allow_prefixes", &c.allow_prefixes, p);
    let receiver_timeout = positive_ms("callbacks.receiver_timeout_ms", c.receiver_timeout_ms, p);
    let replay_memory_entries = positive_size("callbacks.replay_memory_entries", c.replay_memory_entries, p);
    let tls = c.tls.as_ref().and_then(|t| read_tls_identity("callbacks.tls", t, base, p));
    let allow_sources = c.allow_sources.as_ref().map(|l| source_list("callbacks.allow_sources", l, p));
    let delivery = c.delivery.unwrap_or(match state {
        StateKind::Memory => DeliveryMode::Direct,
        StateKind::Embedded | StateKind::Redis => DeliveryMode::Queued,
    });
    if c.retry_schedule_ms.is_empty() || c.retry_schedule_ms.len() > MAX_RETRY_STEPS {
        p.add("callbacks.retry_schedule_ms", format!("must list 1 to {MAX_RETRY_STEPS} delays (ms)"));
    }
    for (i, ms) in c.retry_schedule_ms.iter().enumerate() {
        if *ms > MAX_RETRY_DELAY_MS {
            p.add(format!("callbacks.retry_schedule_ms[{i}]"), "must be at most 604800000 (7 days)");
        }
    }
    let max_queued = positive_size("callbacks.max_queued", c.max_queued, p);
    let signing_key = signing_key(c, base, env, p);
    if p.0.len() > before {
        return None;
    }
    Some(CallbacksConfig {
        delivery,
        retry_schedule: c.retry_schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        max_queued,
        signing_key,
        listen: addrs,
        forward_to: forward_to?,
        allow_prefixes: c.allow_prefixes.clone(),
        receiver_timeout,
        replay_memory_entries,
        tls,
        allow_sources,
    })
}

/// `callbacks.signing_secret_env` / `signing_secret_file`: at most one, holding a
/// `whsec_` secret. Messages never echo it.
fn signing_key(
    c: &file::CallbacksFile,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<crate::webhook::SigningKey> {
    let (text, field) = match (&c.signing_secret_env, &c.signing_secret_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            p.add("callbacks.signing_secret_env", "set at most one of signing_secret_env / signing_secret_file");
            return None;
        }
        (Some(var), None) => match env.var(var) {
            Some(v) => (Secret::new(v.into_encoded_bytes()), "callbacks.signing_secret_env"),
            None => {
                p.add("callbacks.signing_secret_env", format!("environment variable {var} is not set"));
                return None;
            }
        },
        (None, Some(f)) => match crate::secret::read_secret_file(&resolve(base, f)) {
            Ok(s) => (s, "callbacks.signing_secret_file"),
            Err(e) => {
                p.add("callbacks.signing_secret_file", e);
                return None;
            }
        },
    };
    crate::webhook::SigningKey::parse(text.expose())
        .map_err(|e| p.add(field, format!("not a Standard Webhooks secret: {e}")))
        .ok()
}

/// A list of CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or bare addresses (one host). An empty
/// list is refused: it would shut the listener to everyone, and `null` means any source.
fn source_list(field: &str, list: &[String], p: &mut Problems) -> SourceList {
    if list.is_empty() {
        p.add(field, "must name at least one CIDR (null allows any source)");
    }
    let mut nets = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match s.parse::<ipnet::IpNet>() {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => nets.push(ipnet::IpNet::from(ip)),
                Err(_) => {
                    p.add(format!("{field}[{i}]"), format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8) or IP address"))
                }
            },
        }
    }
    SourceList(nets)
}

/// `http://host[:port]` and nothing else: the receiver is on the internal network and the
/// callback's own path and query are appended.
fn parse_receiver(field: &str, url: &str, p: &mut Problems) -> Option<Receiver> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        p.add(field, format!("{url:?} is not a URL"));
        return None;
    };
    if uri.scheme_str() != Some("http") {
        p.add(field, "must be http://host[:port] (the receiver is an internal service)");
        return None;
    }
    let Some(auth) = uri.authority() else {
        p.add(field, "has no host");
        return None;
    };
    if auth.as_str().contains('@') {
        p.add(field, "must not contain user info");
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        p.add(field, "must be http://host[:port] only; the callback's path and query are appended as-is");
        return None;
    }
    Some(Receiver {
        host: auth.host().trim_start_matches('[').trim_end_matches(']').to_owned(),
        port: auth.port_u16().unwrap_or(80),
        authority: auth.as_str().to_owned(),
    })
}

/// Largest certificate or key file read.
const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and checks a certificate chain and its key. Messages name files, never key bytes.
fn read_tls_identity(field: &str, t: &file::TlsFile, base: &Path, p: &mut Problems) -> Option<TlsIdentity> {
    let cert_chain = match read_pem_certs(&resolve(base, &t.cert_file)) {
        Ok(c) => Some(c),
        Err(msg) => {
            p.add(format!("{field}.cert_file"), msg);
            None
        }
    };
    let key_path = resolve(base, &t.key_file);
    let key =
        crate::secret::read_small_file(&key_path, MAX_TLS_FILE_BYTES).and_then(
            |data| match rustls_pemfile::private_key(&mut data.as_slice()) {
                Ok(Some(key)) => Ok(Secret::new(key.secret_der().to_vec())),
                Ok(None) => Err(format!("{} holds no PEM private key", key_path.display())),
                Err(_) => Err(format!("{}: bad PEM", key_path.display())),
            },
        );
    let key = match key {
        Ok(k) => Some(k),
        Err(msg) => {
            p.add(format!("{field}.key_file"), msg);
            None
        }
    };
    Some(TlsIdentity {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        cert_chain: cert_chain?,
        key_der: key?,
    })
}

fn positive_size(field: &str, v: u64, p: &mut Problems) -> usize {
    if v == 0 {
        p.add(field, "must be greater than 0");
    }
    usize::try_from(v).unwrap_or_else(|_| {
        p.add(field, "is too large for this platform");
        0
    })
}

fn positive_ms(field: &str, ms: u64, p: &mut Problems) -> Duration {
    if ms == 0 {
        p.add(field, "must be greater than 0");
    }
    Duration::from_millis(ms)
}

fn validate_upstream(u: &file::UpstreamFile, base: &Path, p: &mut Problems) -> Option<UpstreamConfig> {
    let connect_timeout = positive_ms("upstream.connect_timeout_ms", u.connect_timeout_ms, p);
    let read_timeout = positive_ms("upstream.read_timeout_ms", u.read_timeout_ms, p);
    let total_timeout = positive_ms("upstream.total_timeout_ms", u.total_timeout_ms, p);
    let busy_backoff = u.busy_backoff.map(|b| {
        let initial = positive_ms("upstream.busy_backoff.initial_ms", b.initial_ms, p);
        let max = positive_ms("upstream.busy_backoff.max_ms", b.max_ms, p);
        if b.max_ms < b.initial_ms {
            p.add("upstream.busy_backoff.max_ms", "must be at least initial_ms");
        }
        BackoffPolicy { initial, max }
    });

    let extra_roots = match &u.ca_file {
        None => Vec::new(),
        Some(f) => match read_pem_certs(&resolve(base, f)) {
            Ok(certs) => certs,
            Err(msg) => {
                p.add("upstream.ca_file", msg);
                Vec::new()
            }
        },
    };

    let uri: http::Uri = match u.url.parse() {
        Ok(uri) => uri,
        Err(_) => {
            p.add("upstream.url", format!("{:?} is not a URL", u.url));
            return None;
        }
    };
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            p.add("upstream.url", "scheme must be https:// (or http:// for local emulators)");
            return None;
        }
    };
    let Some(auth) = uri.authority() else {
        p.add("upstream.url", "has no host");
        return None;
    };
    if auth.as_str().contains('@') {
        p.add("upstream.url", "must not contain user info");
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        p.add("upstream.url", "must be scheme://host[:port] only; the caller's path is appended as-is");
        return None;
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Some(UpstreamConfig {
        tls,
        host,
        port,
        authority: auth.as_str().to_owned(),
        extra_roots,
        connect_timeout,
        read_timeout,
        total_timeout,
        request_compression: u.request_compression,
        busy_backoff,
    })
}

/// Reads every certificate of a PEM file as DER, checking each parses as X.509.
fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = crate::secret::read_small_file(path, MAX_CA_FILE_BYTES)?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = item.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn validate_tenants(tenants: &[TenantFile], base: &Path, env: &dyn Environment, p: &mut Problems) -> Vec<Tenant> {
    if tenants.is_empty() {
        p.add("tenants", "at least one tenant is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut uuids: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let at = |f: &str| format!("tenants[{i}].{f}");
        if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            p.add(at("name"), "must be non-empty and use only letters, digits, '-', '_' or '.'");
        } else if let Some(j) = names.insert(&t.name, i) {
            p.add(at("name"), format!("{:?} is also the name of tenants[{j}]", t.name));
        }
        if !is_header_safe(&t.uuid) {
            p.add(at("uuid"), "must be non-empty visible ASCII (it is sent as a header)");
        } else if let Some(j) = uuids.insert(&t.uuid, i) {
            p.add(at("uuid"), format!("is also the uuid of tenants[{j}]"));
        }
        if t.secret.is_some() {
            p.add(at("secret"), "inline secrets are not allowed; use secret_env or secret_file");
        }
        let secret = match (&t.secret_env, &t.secret_file) {
            (Some(_), Some(_)) => {
                p.add(at("secret_env"), "set exactly one of secret_env / secret_file, not both");
                None
            }
            (None, None) => {
                p.add(at("secret_env"), "a secret is required: set secret_env or secret_file");
                None
            }
            (Some(var), None) => match env.var(var) {
                None => {
                    p.add(at("secret_env"), format!("environment variable {var} is not set"));
                    None
                }
                Some(v) => Some(Secret::new(v.into_encoded_bytes())),
            },
            (None, Some(f)) => match crate::secret::read_secret_file(&resolve(base, f)) {
                Err(e) => {
                    p.add(at("secret_file"), e);
                    None
                }
                Ok(secret) => {
                    warn_if_readable_by_others(&resolve(base, f), &t.name);
                    Some(secret)
                }
            },
        };
        let secret = match secret {
            Some(s) if s.is_empty() => {
                let field = if t.secret_env.is_some() { "secret_env" } else { "secret_file" };
                p.add(at(field), "the secret is empty");
                None
            }
            other => other,
        };
        let mut hashes = Vec::new();
        for (k, h) in t.client_keys_sha256.iter().enumerate() {
            let field = at(&format!("client_keys_sha256[{k}]"));
            let valid = h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            let Some(digest) = valid.then(|| hex::decode(h).ok()).flatten() else {
                p.add(field, "must be 64 lowercase hex digits (sha256 of the key)");
                continue;
            };
            let digest: [u8; 32] = digest.try_into().expect("64 hex digits are 32 bytes");
            if let Some(j) = keys.insert(digest, i) {
                p.add(field, format!("this key hash is already listed for tenants[{j}]"));
            }
            hashes.push(digest);
        }
        let rate_limit = t.rate_limit.and_then(|r| {
            if r.per_second == 0 || r.burst == 0 {
                p.add(
                    at("rate_limit"),
                    "per_second and burst must both be greater than 0 (omit rate_limit for unlimited)",
                );
                None
            } else {
                Some(RateLimit { per_second: r.per_second, burst: r.burst })
            }
        });
        if t.max_in_flight == Some(0) {
            p.add(at("max_in_flight"), "must be greater than 0 (omit it for unlimited)");
        }
        let callbacks_forward_to =
            t.callbacks_forward_to.as_ref().and_then(|url| parse_receiver(&at("callbacks_forward_to"), url, p));
        if let Some(secret) = secret {
            out.push(Tenant {
                callbacks_forward_to,
                rate_limit,
                max_in_flight: t.max_in_flight,
                name: t.name.clone(),
                uuid: t.uuid.clone(),
                secret,
                algorithm: t.algorithm,
                client_key_hashes: hashes,
                secret_source: match (&t.secret_env, &t.secret_file) {
                    (Some(var), _) => format!("env {var}"),
                    (_, Some(f)) => format!("file {}", f.display()),
                    (None, None) => unreachable!("a secret was loaded from one of them"),
                },
            });
        }
    }
    out
}

/// A secret file others can read is a leak waiting to happen; it still loads (operators
/// may have reasons), but the gateway says so at every load.
fn warn_if_readable_by_others(path: &Path, tenant: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                tenant,
                path = %path.display(),
                "secret_file is readable by every user on this host; chmod o-r (e.g. 0600 or 0640)"
            );
        }
    }
}

#[cfg(test)]
mod tests;
