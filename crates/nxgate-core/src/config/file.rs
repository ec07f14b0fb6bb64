//! The config file as a person writes it (`conf/nxgate.yaml`).
//!
//! Every default here is the value shown in `conf/nxgate.yaml`; a test keeps the two equal.
//! Nothing in this layer is trusted: `super::validate` turns it into the runtime model.

use serde::de::IgnoredAny;
use serde::Deserialize;
use std::path::PathBuf;

use crate::signing::Algorithm;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses that accept unsigned requests from internal services.
    pub listen: Vec<String>,
    /// The NXCloud endpoint.
    pub upstream: UpstreamFile,
    /// Body size limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Response verification.
    #[serde(default)]
    pub verify: VerifyFile,
    /// Which paths may be proxied.
    #[serde(default)]
    pub routes: RoutesFile,
    /// Tenant for callers that present no client key.
    #[serde(default)]
    pub default_tenant: Option<String>,
    /// The accounts this gateway signs for.
    pub tenants: Vec<TenantFile>,
    /// Admin endpoints (health, readiness, metrics, reload); `null` disables them.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: Option<String>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// The Redis connection every shared feature uses (with `rate_limit_backend.kind: "redis"`).
    #[serde(default)]
    pub redis: Option<RedisFile>,
    /// Where rate-limit state lives (and, with `kind: "redis"`, the callback replay memory).
    #[serde(default)]
    pub rate_limit_backend: RateLimitBackendFile,
    /// HTTPS on the proxy listeners; `null` = plain HTTP.
    #[serde(default)]
    pub listen_tls: Option<TlsFile>,
    /// The callback listener (NXCloud → gateway → internal receiver); absent = none.
    #[serde(default)]
    pub callbacks: Option<CallbacksFile>,
    /// CIDRs the proxy listeners accept connections from; `null` = any source.
    #[serde(default)]
    pub listen_allow_sources: Option<Vec<String>>,
    /// CIDRs the admin listener accepts connections from; `null` = any source.
    #[serde(default)]
    pub admin_allow_sources: Option<Vec<String>>,
    /// Durable state: the callback outbox and replay memory.
    #[serde(default)]
    pub state: StateFile,
    /// Traces over OTLP/HTTP.
    #[serde(default)]
    pub telemetry: TelemetryFile,
    /// `Idempotency-Key` handling.
    #[serde(default)]
    pub idempotency: IdempotencyFile,
}

/// `idempotency:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyFile {
    /// How long a key's answer is kept.
    #[serde(default = "defaults::retention_secs")]
    pub retention_secs: u64,
    /// Full paths on which a request without `Idempotency-Key` is refused.
    #[serde(default)]
    pub required_paths: Vec<String>,
}

impl Default for IdempotencyFile {
    fn default() -> Self {
        IdempotencyFile { retention_secs: defaults::retention_secs(), required_paths: Vec::new() }
    }
}

/// `telemetry:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// The OTLP/HTTP collector's base URL (`/v1/traces` is appended); `null` = no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (not continued from a sampled caller) recorded, 0.0 to 1.0.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` resource attribute.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        TelemetryFile {
            otlp_endpoint: None,
            sample_ratio: defaults::sample_ratio(),
            service_name: defaults::service_name(),
        }
    }
}

/// `state:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `null` = `"redis"` with `rate_limit_backend.kind: "redis"`, else `"memory"`.
    #[serde(default)]
    pub kind: Option<StateKind>,
    /// The embedded store's directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Where durable state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// In this process, lost on restart.
    Memory,
    /// One file under `state.dir`: survives restarts, this replica only.
    Embedded,
    /// The `redis:` connection, shared by every replica.
    Redis,
}

impl StateKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Memory => "memory",
            StateKind::Embedded => "embedded",
            StateKind::Redis => "redis",
        }
    }
}

/// How verified callbacks reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Stored first, answered 200, delivered by the outbox with retries.
    Queued,
    /// Forwarded while NXCloud waits; the receiver's answer is NXCloud's.
    Direct,
}

impl DeliveryMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Queued => "queued",
            DeliveryMode::Direct => "direct",
        }
    }
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `callbacks:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksFile {
    /// Addresses NXCloud's callbacks arrive on.
    #[serde(default = "defaults::callbacks_listen")]
    pub listen: Vec<String>,
    /// The internal receiver, `http://host[:port]`; the callback's path and query are appended.
    #[serde(default = "defaults::callbacks_forward_to")]
    pub forward_to: String,
    /// Path prefixes a callback may arrive on; anything else is 404.
    #[serde(default = "defaults::callbacks_allow_prefixes")]
    pub allow_prefixes: Vec<String>,
    /// Limit on the whole exchange with the receiver.
    #[serde(default = "defaults::receiver_timeout_ms")]
    pub receiver_timeout_ms: u64,
    /// Most (tenant, requestID) pairs the in-process replay memory holds.
    #[serde(default = "defaults::replay_memory_entries")]
    pub replay_memory_entries: u64,
    /// HTTPS on the callback listener; `null` = plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// CIDRs the callback listener accepts connections from; `null` = any source.
    #[serde(default)]
    pub allow_sources: Option<Vec<String>>,
    /// `"queued"` or `"direct"`; `null` = queued with durable state, else direct.
    #[serde(default)]
    pub delivery: Option<DeliveryMode>,
    /// Delay before each delivery attempt, the first included.
    #[serde(default = "defaults::retry_schedule_ms")]
    pub retry_schedule_ms: Vec<u64>,
    /// Most callbacks waiting for delivery at once.
    #[serde(default = "defaults::max_queued")]
    pub max_queued: u64,
    /// Environment variable holding the Standard Webhooks secret.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// File holding the Standard Webhooks secret.
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKind {
    /// In this process (each replica limits on its own).
    #[default]
    Local,
    /// In Redis (the limit holds for the whole fleet).
    Redis,
}

/// What to do with a request when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Limit with this process's local limiter meanwhile.
    #[default]
    LocalFallback,
    /// Refuse the request (429).
    Deny,
    /// Admit the request unlimited.
    Allow,
}

/// `rate_limit_backend:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBackendFile {
    /// `"local"` or `"redis"`.
    #[serde(default)]
    pub kind: RateLimitKind,
    /// The older spelling of `redis.url`; either this or `redis:`, never both.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The older spelling of `redis.url_env`; either this or `redis:`, never both.
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// `"local_fallback"`, `"deny"` or `"allow"`.
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

impl Default for RateLimitBackendFile {
    fn default() -> Self {
        RateLimitBackendFile {
            kind: RateLimitKind::Local,
            redis_url: None,
            redis_url_env: None,
            on_redis_error: OnRedisError::LocalFallback,
        }
    }
}

/// `redis:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://` or `rediss://` (TLS), with `user:password@` for an ACL user and `/db`;
    /// absent = `redis://127.0.0.1:6379/0`.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL instead (overrides `url`), so a password
    /// stays out of the file.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Extra PEM roots for `rediss://`, added to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ask these Sentinels for the master of `master_name`.
    #[serde(default)]
    pub sentinel: Option<SentinelFile>,
    /// A Redis Cluster reached through these seed nodes.
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
    /// One operation's limit before `on_redis_error` applies.
    #[serde(default = "defaults::redis_timeout_ms")]
    pub timeout_ms: u64,
}

/// `redis.sentinel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    /// The master's name in the Sentinels' config.
    pub master_name: String,
    /// Sentinel addresses, `host:port`.
    pub nodes: Vec<String>,
}

/// `redis.cluster`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Seed nodes, `host:port`; the rest of the cluster is discovered from them.
    pub nodes: Vec<String>,
}

/// A tenant's `rate_limit:` (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests that may arrive at once after an idle period.
    pub burst: u32,
}

/// `upstream:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `https://host[:port]` (or `http://` for loopback emulators).
    pub url: String,
    /// Extra PEM roots, added to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TCP connect plus TLS handshake limit.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit on each read from (and write to) the upstream.
    #[serde(default = "defaults::read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Limit on the whole upstream exchange.
    #[serde(default = "defaults::total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// What to do with a caller's `Content-Encoding: gzip` body.
    #[serde(default)]
    pub request_compression: RequestCompression,
    /// Back-pressure after a busy answer; `null` disables it.
    #[serde(default = "defaults::busy_backoff")]
    pub busy_backoff: Option<BusyBackoffFile>,
}

/// `upstream.request_compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestCompression {
    /// Decode a gzip body (bounded by `max_request_body_bytes`), sign and send the decoded
    /// bytes with no `Content-Encoding` (the default: the signed bytes mean one thing).
    #[default]
    Decode,
    /// Forward the compressed bytes, signed over them.
    Passthrough,
}

impl RequestCompression {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestCompression::Decode => "decode",
            RequestCompression::Passthrough => "passthrough",
        }
    }
}

/// `upstream.busy_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyBackoffFile {
    /// First period after a busy answer.
    #[serde(default = "defaults::busy_initial_ms")]
    pub initial_ms: u64,
    /// Longest period.
    #[serde(default = "defaults::busy_max_ms")]
    pub max_ms: u64,
}

/// `limits:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body accepted from a caller.
    #[serde(default = "defaults::max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Largest upstream response body accepted.
    #[serde(default = "defaults::max_response_body_bytes")]
    pub max_response_body_bytes: u64,
    /// Time a caller has to send a whole request header.
    #[serde(default = "defaults::request_header_timeout_ms")]
    pub request_header_timeout_ms: u64,
    /// Most connections each listener (proxy, callbacks, admin) holds open; `null` = no cap.
    #[serde(default)]
    pub max_connections: Option<u64>,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_body_bytes: defaults::max_request_body_bytes(),
            max_response_body_bytes: defaults::max_response_body_bytes(),
            request_header_timeout_ms: defaults::request_header_timeout_ms(),
            max_connections: None,
        }
    }
}

/// What to do with a response that fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Refuse it with 502 (the default).
    #[default]
    Enforce,
    /// Pass it, but log and count the failure.
    Report,
    /// Do not check.
    Off,
}

impl VerifyMode {
    /// The config spelling, also a bounded log label.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Enforce => "enforce",
            VerifyMode::Report => "report",
            VerifyMode::Off => "off",
        }
    }
}

/// `verify:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyFile {
    /// `"enforce"`, `"report"` or `"off"`.
    #[serde(default, deserialize_with = "mode_from_yaml")]
    pub mode: VerifyMode,
    /// Largest accepted distance between a response's createTs and our clock.
    #[serde(default = "defaults::max_clock_skew_secs")]
    pub max_clock_skew_secs: u64,
}

impl Default for VerifyFile {
    fn default() -> Self {
        VerifyFile { mode: VerifyMode::default(), max_clock_skew_secs: defaults::max_clock_skew_secs() }
    }
}

/// YAML 1.1 tools read an unquoted `off` as `false`; serde_yaml reads it as the string.
/// Accept the boolean spelling too, so `mode: off` never silently means anything else.
fn mode_from_yaml<'de, D: serde::Deserializer<'de>>(d: D) -> Result<VerifyMode, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Mode(VerifyMode),
        Bool(bool),
    }
    match Raw::deserialize(d) {
        Ok(Raw::Mode(m)) => Ok(m),
        Ok(Raw::Bool(false)) => Ok(VerifyMode::Off),
        Ok(Raw::Bool(true)) | Err(_) => {
            Err(serde::de::Error::custom("unknown verify mode: expected \"enforce\", \"report\" or \"off\""))
        }
    }
}

/// `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Path prefixes that may be proxied; anything else is 404.
    #[serde(default = "defaults::allow_prefixes")]
    pub allow_prefixes: Vec<String>,
    /// Full paths (no query) whose requests may be sent upstream again after they were
    /// written; every other request is sent at most once.
    #[serde(default = "defaults::idempotent_paths")]
    pub idempotent_paths: Vec<String>,
}

impl Default for RoutesFile {
    fn default() -> Self {
        RoutesFile { allow_prefixes: defaults::allow_prefixes(), idempotent_paths: defaults::idempotent_paths() }
    }
}

/// One entry of `tenants:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Operator's name for the tenant (logs, metrics).
    pub name: String,
    /// NXCloud account id.
    pub uuid: String,
    /// Environment variable that holds the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File that holds the secret (one trailing newline is stripped).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Signing algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// sha256 (lowercase hex) of each client key that selects this tenant.
    #[serde(default)]
    pub client_keys_sha256: Vec<String>,
    /// GCRA rate limit; absent = unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitFile>,
    /// Most concurrent requests for this tenant; absent = unlimited.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// This tenant's callback receiver, overriding `callbacks.forward_to`.
    #[serde(default)]
    pub callbacks_forward_to: Option<String>,
    /// Inline secrets are refused. The value is read into `IgnoredAny`, so it is never kept,
    /// and the refusal can name the field instead of calling it merely "unknown".
    #[serde(default, alias = "secretKey", alias = "secret_key")]
    pub secret: Option<IgnoredAny>,
}

/// Defaults, equal to the values shown in `conf/nxgate.yaml`.
pub mod defaults {
    use super::BusyBackoffFile;

    /// `upstream.busy_backoff.initial_ms`.
    pub fn busy_initial_ms() -> u64 {
        1_000
    }
    /// `upstream.busy_backoff.max_ms`.
    pub fn busy_max_ms() -> u64 {
        30_000
    }
    /// `upstream.busy_backoff`.
    pub fn busy_backoff() -> Option<BusyBackoffFile> {
        Some(BusyBackoffFile { initial_ms: busy_initial_ms(), max_ms: busy_max_ms() })
    }
    /// `upstream.connect_timeout_ms`.
    pub fn connect_timeout_ms() -> u64 {
        3_000
    }
    /// `upstream.read_timeout_ms`.
    pub fn read_timeout_ms() -> u64 {
        30_000
    }
    /// `upstream.total_timeout_ms`.
    pub fn total_timeout_ms() -> u64 {
        60_000
    }
    /// `limits.max_request_body_bytes`.
    pub fn max_request_body_bytes() -> u64 {
        1_048_576
    }
    /// `limits.max_response_body_bytes`.
    pub fn max_response_body_bytes() -> u64 {
        8_388_608
    }
    /// `limits.request_header_timeout_ms`.
    pub fn request_header_timeout_ms() -> u64 {
        10_000
    }
    /// `verify.max_clock_skew_secs`.
    pub fn max_clock_skew_secs() -> u64 {
        300
    }
    /// `admin_listen`.
    pub fn admin_listen() -> Option<String> {
        Some("127.0.0.1:9090".to_owned())
    }
    /// `shutdown_grace_secs`.
    pub fn shutdown_grace_secs() -> u64 {
        30
    }
    /// `redis.url`.
    pub fn redis_url() -> String {
        "redis://127.0.0.1:6379/0".to_owned()
    }
    /// `redis.timeout_ms`.
    pub fn redis_timeout_ms() -> u64 {
        100
    }
    /// `routes.allow_prefixes`.
    pub fn allow_prefixes() -> Vec<String> {
        vec!["/callcentre/".to_owned()]
    }
    /// `routes.idempotent_paths`: the read-only endpoints. Every other endpoint of the v3
    /// API creates, changes or stops tasks and calls.
    pub fn idempotent_paths() -> Vec<String> {
        [
            "/callcentre/api/v3/ping",
            "/callcentre/api/v3/listTask",
            "/callcentre/api/v3/listOrder",
            "/callcentre/api/v3/listCall",
            "/callcentre/api/v3/listOrderDetail",
        ]
        .map(str::to_owned)
        .to_vec()
    }
    /// `callbacks.listen`.
    pub fn callbacks_listen() -> Vec<String> {
        vec!["0.0.0.0:8443".to_owned()]
    }
    /// `callbacks.forward_to`.
    pub fn callbacks_forward_to() -> String {
        "http://127.0.0.1:8081".to_owned()
    }
    /// `callbacks.allow_prefixes`.
    pub fn callbacks_allow_prefixes() -> Vec<String> {
        vec!["/".to_owned()]
    }
    /// `callbacks.receiver_timeout_ms`.
    pub fn receiver_timeout_ms() -> u64 {
        10_000
    }
    /// `callbacks.replay_memory_entries`.
    pub fn replay_memory_entries() -> u64 {
        100_000
    }
    /// `callbacks.retry_schedule_ms`: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    /// (about 27.6 hours in all).
    pub fn retry_schedule_ms() -> Vec<u64> {
        vec![0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]
    }
    /// `callbacks.max_queued`.
    pub fn max_queued() -> u64 {
        1_000_000
    }
    /// `idempotency.retention_secs`: a day.
    pub fn retention_secs() -> u64 {
        86_400
    }
    /// `telemetry.sample_ratio`.
    pub fn sample_ratio() -> f64 {
        1.0
    }
    /// `telemetry.service_name`.
    pub fn service_name() -> String {
        "nxgate".to_owned()
    }
}
