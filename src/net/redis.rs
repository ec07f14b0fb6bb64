//! The Redis connection with its circuit breaker, shared infrastructure below both flows:
//! the rate limiter's fleet-wide GCRA (`policy::gcra`) and the callback replay memory
//! (`policy::replay`) each hold a link.
//!
//! One `redis:` block describes it: a single server (`redis://`, or `rediss://` for TLS,
//! with an ACL user in the URL), a master found through Sentinel, or a Redis Cluster.
//!
//! Redis trouble must never hang a request: every call has the configured timeout
//! (`redis.timeout_ms`), there is no connect on the request path (a background task
//! connects, and reconnects: the connection manager for one server, Sentinel's answer for
//! a failover, the cluster client for a cluster), and after a failure Redis is not asked
//! again for `RECONNECT_PAUSE` (a small circuit breaker), so an outage costs requests
//! nothing but the policy. An outage is logged when it starts, once a minute while it
//! lasts (with the real reason: TLS, authentication, refused...), and when it ends.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use nxgate_core::config::{RedisConfig, RedisTopology};

/// Default budget for one Redis call (`redis.timeout_ms`); over it, the caller's fallback decides.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Pause between connection attempts while Redis is unreachable.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// While Redis stays unreachable, the outage is logged again this often.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Redis did not answer in time (or is not connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendUnavailable;

/// Why Redis could not be used: the `reason` label of `nxgate_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Nothing listens there.
    Refused,
    /// No answer within the limit.
    Timeout,
    /// The TLS handshake failed (unknown CA, wrong name...).
    Tls,
    /// Wrong user or password.
    Auth,
    /// Redis wants a user and password and the URL has none.
    Noauth,
    /// The URL's database does not exist.
    Database,
    /// The server is a replica (after a failover, or a wrong address).
    NotMaster,
    /// The server closed the connection (e.g. `redis://` to a TLS-only port).
    Closed,
    /// Sentinel does not know the master (or no Sentinel answered).
    Sentinel,
    /// Anything else.
    Other,
}

impl RedisFailure {
    /// Every reason, for exporting each series at zero.
    pub const ALL: [RedisFailure; 10] = [
        RedisFailure::Refused,
        RedisFailure::Timeout,
        RedisFailure::Tls,
        RedisFailure::Auth,
        RedisFailure::Noauth,
        RedisFailure::Database,
        RedisFailure::NotMaster,
        RedisFailure::Closed,
        RedisFailure::Sentinel,
        RedisFailure::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::Refused => "refused",
            RedisFailure::Timeout => "timeout",
            RedisFailure::Tls => "tls",
            RedisFailure::Auth => "auth",
            RedisFailure::Noauth => "noauth",
            RedisFailure::Database => "database",
            RedisFailure::NotMaster => "not_master",
            RedisFailure::Closed => "closed",
            RedisFailure::Sentinel => "sentinel",
            RedisFailure::Other => "other",
        }
    }

    /// Whether a Sentinel-found master should be asked for again (it may have moved).
    fn rediscover(self) -> bool {
        matches!(self, RedisFailure::Refused | RedisFailure::Timeout | RedisFailure::NotMaster | RedisFailure::Closed)
    }
}

/// A Redis error in an operator's words: the reason and one line saying what to do.
/// Redis errors carry no URL, so no password can leak through them.
pub fn classify(e: &RedisError) -> (RedisFailure, String) {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    let code = e.code().unwrap_or("");
    if code == "NOAUTH" || has("NOAUTH") {
        return (
            RedisFailure::Noauth,
            "NOAUTH: Redis requires a user and password; put user:password@ in the URL".into(),
        );
    }
    if code == "WRONGPASS" || has("WRONGPASS") || e.kind() == redis::ErrorKind::AuthenticationFailed {
        return (RedisFailure::Auth, format!("auth failed: wrong user or password ({text})"));
    }
    if has("DB index is out of range") {
        return (
            RedisFailure::Database,
            "wrong database: the URL's database number does not exist on the server".into(),
        );
    }
    if code == "READONLY" || has("READONLY") || has("not a master") {
        return (RedisFailure::NotMaster, "not a master: the server is a replica".into());
    }
    if matches!(e.kind(), redis::ErrorKind::MasterNameNotFoundBySentinel | redis::ErrorKind::EmptySentinelList)
        || has("sentinel")
    {
        return (RedisFailure::Sentinel, format!("Sentinel: {text}"));
    }
    if has("UnknownIssuer") || has("unknown issuer") || has("UnknownCA") {
        return (
            RedisFailure::Tls,
            "TLS: unknown CA (the server's certificate is not signed by a trusted root; set redis.ca_file)".into(),
        );
    }
    if has("certificate") || has("TLS") || has("tls") || has("InvalidContentType") || has("corrupt message") {
        return (RedisFailure::Tls, format!("TLS: {text}"));
    }
    if e.is_connection_refusal() && (has("refused") || has("Connection refused")) {
        return (RedisFailure::Refused, "connection refused: nothing listens at that address".into());
    }
    if e.is_timeout() || has("timed out") {
        return (RedisFailure::Timeout, "timed out".into());
    }
    if e.is_connection_dropped() || has("reset") || has("end of file") || has("broken pipe") || has("closed") {
        return (
            RedisFailure::Closed,
            "connection closed by the server (a TLS port reached with redis://? use rediss://)".into(),
        );
    }
    (RedisFailure::Other, text)
}

/// The metrics a link reports into (`process::metrics` registers them).
#[derive(Clone)]
pub struct RedisMetrics {
    /// `nxgate_redis_up`: 1 while the last attempt or call succeeded.
    pub up: prometheus::IntGauge,
    /// `nxgate_redis_errors_total{reason}`: failed connects and calls.
    pub errors: prometheus::IntCounterVec,
    /// `nxgate_rate_limit_backend_errors_total`: failed or timed-out calls (the older family).
    pub call_errors: prometheus::IntCounter,
}

/// One connection of any of the three shapes; what the scripts are invoked on.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnected by the manager.
    Manager(ConnectionManager),
    /// The master Sentinel named; replaced when it fails.
    Master(MultiplexedConnection),
    /// A Redis Cluster; the client follows slots and reconnects.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Manager(c) => c.req_packed_command(cmd),
            RedisConnection::Master(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Master(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Manager(c) => c.get_db(),
            RedisConnection::Master(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// A link's connection, with the circuit breaker: never a connect on the request path (a
/// background task connects), every call bounded by `redis.timeout_ms`, and after a
/// failure no call for `RECONNECT_PAUSE`. The rate limiter and the callback replay memory
/// each hold one.
pub struct RedisLink {
    config: RedisConfig,
    /// What this link serves, for the outage log lines.
    purpose: &'static str,
    connection: ArcSwapOption<RedisConnection>,
    connecting: AtomicBool,
    connected: Notify,
    outage: AtomicBool,
    /// `now_ms()` of the last outage line, for one a minute.
    outage_logged_ms: AtomicU64,
    /// While `now_ms() < retry_at_ms`, skip Redis and apply the policy at once.
    retry_at_ms: AtomicU64,
    /// Why the last connect failed, so a request's failure says the real reason.
    last_connect_error: Mutex<Option<(RedisFailure, String)>>,
    metrics: Option<RedisMetrics>,
}

/// Milliseconds on a process-local monotonic clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RedisLink {
    /// A link to `config` serving `purpose`; starts connecting at once, in the background,
    /// so `nxgate_redis_up` and the outage line tell the truth before the first request.
    pub fn new(config: RedisConfig, purpose: &'static str, metrics: Option<RedisMetrics>) -> Arc<Self> {
        let link = Self::idle(config, purpose, metrics);
        link.connect_in_background();
        link
    }

    /// A link that connects on its first call only.
    fn idle(config: RedisConfig, purpose: &'static str, metrics: Option<RedisMetrics>) -> Arc<Self> {
        Arc::new(RedisLink {
            config,
            purpose,
            connection: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            connected: Notify::new(),
            outage: AtomicBool::new(false),
            outage_logged_ms: AtomicU64::new(0),
            retry_at_ms: AtomicU64::new(0),
            last_connect_error: Mutex::new(None),
            metrics,
        })
    }

    /// The `redis:` config this link was built from (a reload keeps the link if it is equal).
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The budget of one call.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The hash tag of a tenant's keys: with Cluster, `{uuid}`, so every key of one tenant
    /// is in one slot; elsewhere the bare uuid (the key names of earlier versions).
    pub fn tenant_tag(&self, uuid: &str) -> String {
        match self.config.topology {
            RedisTopology::Cluster { .. } => format!("{{{uuid}}}"),
            _ => uuid.to_owned(),
        }
    }

    /// A connection to call on, unless the breaker is open or none is up within the budget.
    pub async fn connection(self: &Arc<Self>) -> Result<RedisConnection, BackendUnavailable> {
        if now_ms() < self.retry_at_ms.load(Ordering::Acquire) {
            return Err(BackendUnavailable);
        }
        let conn = match self.connection.load_full() {
            Some(conn) => conn,
            None => {
                // Not connected yet (first requests after start, Redis down since start,
                // or a Sentinel master being looked up again): give the background
                // connect this request's budget, no more.
                self.connect_in_background();
                let _ = tokio::time::timeout(self.timeout(), self.connected.notified()).await;
                match self.connection.load_full() {
                    Some(conn) => conn,
                    None => {
                        let known = self.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        return Err(match known {
                            Some((reason, why)) => self.failed(reason, &why, true),
                            // The first attempt has not failed yet: open the breaker, and
                            // leave the outage line to that attempt, which knows the reason.
                            None => self.not_yet(),
                        });
                    }
                }
            }
        };
        Ok(RedisConnection::clone(&conn))
    }

    /// Runs one call under the timeout, opening the breaker on failure.
    pub async fn bounded<T>(
        self: &Arc<Self>,
        call: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, BackendUnavailable> {
        match tokio::time::timeout(self.timeout(), call).await {
            Ok(Ok(v)) => {
                self.recovered();
                Ok(v)
            }
            Ok(Err(e)) => {
                let (reason, why) = classify(&e);
                self.forget_moved_master(reason);
                Err(self.failed(reason, &why, true))
            }
            Err(_) => {
                self.forget_moved_master(RedisFailure::Timeout);
                Err(self.failed(RedisFailure::Timeout, "timed out", true))
            }
        }
    }

    /// With Sentinel, a dead or demoted master is dropped so the next call asks the
    /// Sentinels again (that is how a failover is followed).
    fn forget_moved_master(self: &Arc<Self>, reason: RedisFailure) {
        if matches!(self.config.topology, RedisTopology::Sentinel { .. }) && reason.rediscover() {
            self.connection.store(None);
            self.connect_in_background();
        }
    }

    /// Counts a failure, opens the breaker (for a call), and logs the outage when it
    /// starts and once a minute while it lasts.
    fn failed(&self, reason: RedisFailure, why: &str, call: bool) -> BackendUnavailable {
        let now = now_ms();
        if call {
            self.retry_at_ms.store(now + RECONNECT_PAUSE.as_millis() as u64, Ordering::Release);
        }
        if let Some(m) = &self.metrics {
            if call {
                m.call_errors.inc();
            }
            m.errors.with_label_values(&[reason.as_str()]).inc();
            m.up.set(0);
        }
        if self.outage_line_due(now) {
            tracing::warn!(
                why,
                reason = reason.as_str(),
                "{} (Redis) unavailable; applying its fallback until it is back",
                self.purpose
            );
        }
        BackendUnavailable
    }

    /// Whether a failure at `now` is to be logged: the first of an outage, then one a
    /// minute (of concurrent failures, one logs).
    fn outage_line_due(&self, now: u64) -> bool {
        let started = !self.outage.swap(true, Ordering::AcqRel);
        let last = self.outage_logged_ms.load(Ordering::Acquire);
        let due = now.saturating_sub(last) >= OUTAGE_LOG_EVERY.as_millis() as u64;
        (started || due)
            && self.outage_logged_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// A call that found no connection before any connect attempt failed.
    fn not_yet(&self) -> BackendUnavailable {
        self.retry_at_ms.store(now_ms() + RECONNECT_PAUSE.as_millis() as u64, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.call_errors.inc();
        }
        BackendUnavailable
    }

    fn recovered(&self) {
        if let Some(m) = &self.metrics {
            m.up.set(1);
        }
        if self.outage.swap(false, Ordering::AcqRel) {
            tracing::info!("{} (Redis) is back", self.purpose);
        }
    }

    /// Starts one connect loop on the current runtime, unless one is running. The loop
    /// holds the link weakly: a link dropped by a reload stops trying.
    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        background().spawn(async move {
            // Bounded by the link's life: each turn needs the link alive.
            while let Some(me) = weak.upgrade() {
                let attempt =
                    tokio::time::timeout(connect_timeout(me.timeout()) * 2, connect(&me.config, me.timeout()));
                let error = match attempt.await {
                    Ok(Ok(conn)) => {
                        *me.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        me.connection.store(Some(Arc::new(conn)));
                        me.recovered();
                        me.connected.notify_waiters();
                        me.connecting.store(false, Ordering::Release);
                        return;
                    }
                    Ok(Err(e)) => classify(&e),
                    Err(_) => (RedisFailure::Timeout, "connect timed out".to_owned()),
                };
                me.failed(error.0, &error.1, false);
                *me.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                drop(me);
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        });
    }
}

/// The runtime Redis connections live on: one thread of its own, so a link can connect
/// as soon as it is built (at start, before Pingora's runtimes exist; on a reload, from
/// whichever runtime runs it), and a connection never depends on one listener's runtime.
/// Calls are made from any runtime; the connection's task here does the I/O.
fn background() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("nxgate-redis")
                .enable_all()
                .build()
                .expect("a runtime for the Redis connections")
        })
        .handle()
}

/// Connect (TCP plus TLS handshake) limit for a call budget of `timeout`.
fn connect_timeout(timeout: Duration) -> Duration {
    (timeout * 5).max(Duration::from_millis(500))
}

/// The platform's trust roots as one PEM bundle, read once (a connect is retried every
/// 500 ms while Redis is down; the roots do not change that fast).
fn system_roots_pem() -> &'static [u8] {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        use base64::Engine;
        let mut pem = Vec::new();
        match pingora::tls::load_native_certs() {
            Ok(native) => {
                // The crate refuses the whole bundle over one certificate rustls cannot
                // take as a root: drop such platform roots instead.
                let usable = |c: &pingora::tls::CertificateDer<'static>| {
                    tokio_rustls::rustls::RootCertStore::empty().add(c.clone()).is_ok()
                };
                for cert in native.into_iter().filter(usable) {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
                    pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
                    for line in b64.as_bytes().chunks(64) {
                        pem.extend_from_slice(line);
                        pem.push(b'\n');
                    }
                    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the system trust roots; only redis.ca_file is trusted"),
        }
        pem
    })
}

/// The TLS roots for `rediss://`: the system's plus `ca_file`'s. Always given (never the
/// crate's own loading), so the roots are read once and one unreadable system certificate
/// is skipped rather than failing every connect.
fn tls_certificates(config: &RedisConfig) -> Option<redis::TlsCertificates> {
    if !config.tls {
        return None;
    }
    // The crate takes one PEM bundle that replaces the system roots, so the bundle is the
    // system roots followed by ca_file: ca_file adds to them, as upstream.ca_file does.
    let mut pem = system_roots_pem().to_vec();
    pem.extend_from_slice(&config.extra_roots_pem);
    Some(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
}

fn url_text(config: &RedisConfig) -> RedisResult<&str> {
    std::str::from_utf8(config.url.expose())
        .map_err(|_| RedisError::from((redis::ErrorKind::InvalidClientConfig, "the Redis URL is not UTF-8")))
}

/// A client for `url` with the configured roots.
fn client(config: &RedisConfig, url: &str) -> RedisResult<redis::Client> {
    match tls_certificates(config) {
        Some(certs) => redis::Client::build_with_tls(url, certs),
        None => redis::Client::open(url),
    }
}

/// `host:port` as a URL of the config's scheme, with no credentials (for Sentinels and
/// cluster seeds; credentials are set separately).
fn node_addr(config: &RedisConfig, node: &str) -> RedisResult<redis::ConnectionAddr> {
    let (host, port) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']').to_owned(), p.parse().ok()?)))
        .ok_or_else(|| RedisError::from((redis::ErrorKind::InvalidClientConfig, "a node is not host:port")))?;
    Ok(if config.tls {
        redis::ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
    } else {
        redis::ConnectionAddr::Tcp(host, port)
    })
}

/// Opens one connection of the configured shape and checks it answers (a connect without
/// credentials succeeds where they are required: the PING shows NOAUTH); calls on it are
/// limited to `timeout`.
pub async fn connect(config: &RedisConfig, timeout: Duration) -> RedisResult<RedisConnection> {
    let mut conn = open(config, timeout).await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

async fn open(config: &RedisConfig, timeout: Duration) -> RedisResult<RedisConnection> {
    let url = url_text(config)?;
    match &config.topology {
        RedisTopology::Single => {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout(timeout)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(RECONNECT_PAUSE);
            Ok(RedisConnection::Manager(ConnectionManager::new_with_config(client(config, url)?, manager).await?))
        }
        RedisTopology::Sentinel { master_name, nodes } => {
            let info = redis::IntoConnectionInfo::into_connection_info(url)?;
            let redis_info = info.redis_settings();
            let addrs = nodes.iter().map(|n| node_addr(config, n)).collect::<RedisResult<Vec<_>>>()?;
            let mut builder = redis::sentinel::SentinelClientBuilder::new(
                addrs,
                master_name,
                redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_db(redis_info.db());
            if let Some(user) = redis_info.username() {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = redis_info.password() {
                builder = builder.set_client_to_redis_password(password);
            }
            if config.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                if let Some(certs) = tls_certificates(config) {
                    builder = builder
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_certificates(certs);
                }
            }
            let mut sentinel = builder.build()?;
            let master = sentinel.async_get_client().await?;
            let options = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout(timeout)))
                .set_response_timeout(Some(timeout));
            let mut conn = master.get_multiplexed_async_connection_with_config(&options).await?;
            // Sentinel's answer may be stale for a moment around a failover: only a master will do.
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                return Err(RedisError::from((redis::ErrorKind::Client, "not a master", "ROLE".to_owned())));
            }
            Ok(RedisConnection::Master(conn))
        }
        RedisTopology::Cluster { nodes } => {
            let info = redis::IntoConnectionInfo::into_connection_info(url)?;
            let redis_info = info.redis_settings();
            let seeds = nodes
                .iter()
                .map(|n| {
                    let scheme = if config.tls { "rediss" } else { "redis" };
                    format!("{scheme}://{n}")
                })
                .collect::<Vec<_>>();
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(connect_timeout(timeout))
                .response_timeout(timeout)
                .retries(1);
            if let Some(user) = redis_info.username() {
                builder = builder.username(user);
            }
            if let Some(password) = redis_info.password() {
                builder = builder.password(password);
            }
            if let Some(certs) = tls_certificates(config) {
                builder = builder.certs(certs);
            }
            Ok(RedisConnection::Cluster(builder.build()?.get_async_connection().await?))
        }
    }
}

/// A failed `check --probe`: the reason and one line saying it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProbeFailure {
    /// Why.
    pub reason: RedisFailure,
    /// One line for the operator.
    pub message: String,
}

impl From<RedisError> for ProbeFailure {
    fn from(e: RedisError) -> Self {
        let (reason, message) = classify(&e);
        ProbeFailure { reason, message }
    }
}

/// Limit on each step of a probe (an operator waits for it, nothing else does).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

async fn probe_step<T>(call: impl std::future::Future<Output = RedisResult<T>>) -> Result<T, ProbeFailure> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ProbeFailure { reason: RedisFailure::Timeout, message: "timed out".into() }),
    }
}

/// `nxgate check --probe`: connects, authenticates, checks the server is a master (the
/// cluster is healthy) and loads `scripts`; says what it found, never the password.
pub async fn probe(config: &RedisConfig, scripts: &[&str]) -> Result<String, ProbeFailure> {
    let mut conn = probe_step(connect(config, PROBE_TIMEOUT)).await?;
    let shape = match &conn {
        RedisConnection::Cluster(_) => {
            let info: String = probe_step(redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn)).await?;
            if !info.contains("cluster_state:ok") {
                return Err(ProbeFailure {
                    reason: RedisFailure::Other,
                    message: "the cluster's state is not ok".into(),
                });
            }
            "cluster ok"
        }
        _ => {
            let role: Vec<Value> = probe_step(redis::cmd("ROLE").query_async(&mut conn)).await?;
            if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                return Err(ProbeFailure {
                    reason: RedisFailure::NotMaster,
                    message: "not a master: the server is a replica, which cannot take writes".into(),
                });
            }
            "master"
        }
    };
    for script in scripts {
        let _: Value = probe_step(redis::cmd("SCRIPT").arg("LOAD").arg(*script).query_async(&mut conn)).await?;
    }
    Ok(format!("{shape}, {} scripts loaded", scripts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Arc<RedisLink> {
        RedisLink::idle(RedisConfig::default(), "test", None)
    }

    #[test]
    fn an_outage_is_logged_when_it_starts_then_once_a_minute_and_again_after_a_recovery() {
        let l = link();
        let logged: Vec<bool> = [1_000, 1_500, 30_000, 60_999].iter().map(|t| l.outage_line_due(*t)).collect();
        assert_eq!(logged, [true, false, false, false]);
        assert!(l.outage_line_due(61_000), "a minute after the last line");
        assert!(!l.outage_line_due(61_500));
        l.recovered();
        assert!(l.outage_line_due(62_000), "a new outage is logged at once");
    }

    #[test]
    fn errors_are_told_in_an_operators_words() {
        let io = |kind, msg: &str| RedisError::from(std::io::Error::new(kind, msg.to_owned()));
        let server = |code: &str, detail: &str| redis::make_extension_error(code.to_owned(), Some(detail.to_owned()));
        let cases = [
            (io(std::io::ErrorKind::ConnectionRefused, "Connection refused"), RedisFailure::Refused),
            (io(std::io::ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer"), RedisFailure::Tls),
            (io(std::io::ErrorKind::ConnectionReset, "Connection reset by peer"), RedisFailure::Closed),
            (io(std::io::ErrorKind::TimedOut, "timed out"), RedisFailure::Timeout),
            (server("NOAUTH", "Authentication required."), RedisFailure::Noauth),
            (server("WRONGPASS", "invalid username-password pair"), RedisFailure::Auth),
            (server("READONLY", "You can't write against a read only replica."), RedisFailure::NotMaster),
            (server("ERR", "DB index is out of range"), RedisFailure::Database),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e).0, want, "{e}");
        }
        assert!(classify(&io(std::io::ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer"))
            .1
            .starts_with("TLS: unknown CA"));
        let labels: std::collections::HashSet<_> = RedisFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RedisFailure::ALL.len());
    }
}
