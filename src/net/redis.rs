//! One Redis connection with its circuit breaker, shared infrastructure below both flows:
//! the rate limiter's fleet-wide GCRA (`policy::gcra`) and the callback replay memory
//! (`policy::replay`) each hold a link.
//!
//! Redis trouble must never hang a request: every call has `REDIS_TIMEOUT`, there is no
//! connect on the request path (a background task connects and the connection manager
//! reconnects), and after a failure Redis is not asked again for `RECONNECT_PAUSE` (a
//! small circuit breaker), so an outage costs requests nothing but the policy. An outage
//! is logged once when it starts and once when it ends.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use nxgate_core::secret::Secret;

/// Budget for one Redis call; over it, the caller's fallback decides.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Pause between connection attempts while Redis is unreachable.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Redis did not answer in time (or is not connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendUnavailable;

/// One Redis connection with its circuit breaker: never a connect on the request path
/// (a background task connects, the connection manager reconnects), every call bounded
/// by `REDIS_TIMEOUT`, and after a failure no call for `RECONNECT_PAUSE`. Shared by the
/// rate limiter and the callback replay memory, each with its own link.
pub struct RedisLink {
    url: Secret,
    /// What this link serves, for the outage log lines.
    purpose: &'static str,
    connection: ArcSwapOption<ConnectionManager>,
    connecting: AtomicBool,
    connected: Notify,
    outage: AtomicBool,
    /// While `now_ms() < retry_at_ms`, skip Redis and apply the policy at once.
    retry_at_ms: AtomicU64,
    /// Counts failed or timed-out calls.
    errors: Option<prometheus::IntCounter>,
}

/// Milliseconds on a process-local monotonic clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RedisLink {
    /// A link to `url` serving `purpose`; connects lazily, in the background.
    pub fn new(url: Secret, purpose: &'static str, errors: Option<prometheus::IntCounter>) -> Self {
        RedisLink {
            url,
            purpose,
            connection: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            connected: Notify::new(),
            outage: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            errors,
        }
    }

    /// The URL (it may hold a password: never log it).
    pub fn url(&self) -> &Secret {
        &self.url
    }

    /// A connection to call on, unless the breaker is open or none is up within the budget.
    pub async fn connection(self: &Arc<Self>) -> Result<ConnectionManager, BackendUnavailable> {
        if now_ms() < self.retry_at_ms.load(Ordering::Acquire) {
            return Err(BackendUnavailable);
        }
        let conn = match self.connection.load_full() {
            Some(conn) => conn,
            None => {
                // Not connected yet (first requests after start, or Redis down since
                // start): give the background connect this request's budget, no more.
                self.connect_in_background();
                let _ = tokio::time::timeout(REDIS_TIMEOUT, self.connected.notified()).await;
                self.connection.load_full().ok_or_else(|| self.failed("not connected"))?
            }
        };
        Ok(ConnectionManager::clone(&conn))
    }

    /// Runs one call under `REDIS_TIMEOUT`, opening the breaker on failure.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendUnavailable> {
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(v)) => {
                self.recovered();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(e.category())),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    fn failed(&self, why: &str) -> BackendUnavailable {
        self.retry_at_ms.store(now_ms() + RECONNECT_PAUSE.as_millis() as u64, Ordering::Release);
        if let Some(c) = &self.errors {
            c.inc();
        }
        if !self.outage.swap(true, Ordering::AcqRel) {
            tracing::warn!(why, "{} (Redis) unavailable; applying its fallback until it is back", self.purpose);
        }
        BackendUnavailable
    }

    fn recovered(&self) {
        if self.outage.swap(false, Ordering::AcqRel) {
            tracing::info!("{} (Redis) is back", self.purpose);
        }
    }

    /// Starts one connect loop on the current runtime, unless one is running.
    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match me.connect().await {
                    Ok(conn) => {
                        me.connection.store(Some(Arc::new(conn)));
                        me.connected.notify_waiters();
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e.category(), "Redis connect failed; retrying");
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                }
            }
            me.connecting.store(false, Ordering::Release);
        });
    }

    async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let url = std::str::from_utf8(self.url.expose())
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis_url is not UTF-8")))?;
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT * 5))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_PAUSE);
        ConnectionManager::new_with_config(client, config).await
    }
}
