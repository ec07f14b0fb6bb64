//! Config reload: SIGHUP or `POST /reload` on the admin port.
//!
//! The new file is loaded and validated in full (secrets re-read from their env vars
//! and files) before anything changes; an invalid file is refused, logged and counted,
//! and the old config keeps serving. A valid one replaces the live generation in one
//! atomic swap: requests already running finish under the generation they started with,
//! the next request sees the new one. TLS certificates and keys are re-read too and
//! installed in the listeners' certificate stores (`net::tls`): the next handshake
//! presents them. Listen addresses, and whether a listener uses TLS, need a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::net::tls::{CertStore, TlsError};
use crate::process::metrics::Metrics;
use crate::state::{Generation, Live};
use nxgate_core::config;

/// The certificate stores of the TLS listeners, which a reload refills.
#[derive(Debug, Clone, Default)]
pub struct TlsStores {
    /// `listen_tls`.
    pub proxy: Option<Arc<CertStore>>,
    /// `callbacks.tls`.
    pub callbacks: Option<Arc<CertStore>>,
}

/// Why a reload was refused (the previous config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A setting only a restart can change.
    #[error("{0} cannot change on reload (restart, or use a graceful upgrade)")]
    NeedsRestart(&'static str),
    /// A listener's new certificate and key do not make a key pair.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The reload task itself failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

/// Fails with `NeedsRestart(what)` when `a` and `b` differ.
fn unchanged<T: PartialEq>(what: &'static str, a: &T, b: &T) -> Result<(), ReloadError> {
    if a == b {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart(what))
    }
}

/// Reloads one config file into one live generation.
pub struct Reloader {
    path: PathBuf,
    live: Live,
    metrics: Arc<Metrics>,
    tls: TlsStores,
    /// Reloads are rare and must not interleave; this lock is never on the request path.
    serial: Mutex<()>,
}

impl Reloader {
    /// A reloader for `path` feeding `live`.
    pub fn new(path: PathBuf, live: Live, metrics: Arc<Metrics>, tls: TlsStores) -> Self {
        Reloader { path, live, metrics, tls, serial: Mutex::new(()) }
    }

    /// Loads, validates and swaps in the config file. On error the old config stays.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %self.path.display(), "config reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(path = %self.path.display(), error = %e, "config reload refused; the previous config keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let next = config::load(&self.path)?;
        let current = self.live.load();
        unchanged("listen", &current.config.listen, &next.listen)?;
        unchanged("admin_listen", &current.config.admin_listen, &next.admin_listen)?;
        let callbacks_listen = |c: &config::GatewayConfig| c.callbacks.as_ref().map(|c| c.listen.clone());
        unchanged("callbacks.listen", &callbacks_listen(&current.config), &callbacks_listen(&next))?;
        unchanged("state", &current.config.state, &next.state)?;
        unchanged("telemetry", &current.config.telemetry, &next.telemetry)?;
        let has_tls =
            |c: &config::GatewayConfig| (c.listen_tls.is_some(), c.callbacks.as_ref().map(|c| c.tls.is_some()));
        unchanged("whether a listener uses TLS", &has_tls(&current.config), &has_tls(&next))?;
        // Certificates are re-read (the load above parsed them); build every key pair
        // before installing any, so a bad one changes nothing.
        let proxy_pair = next.listen_tls.as_ref().map(CertStore::prepare).transpose()?;
        let callback_pair = next.callbacks.as_ref().and_then(|c| c.tls.as_ref()).map(CertStore::prepare).transpose()?;
        let generation = Generation::next(next, Some(&current), self.metrics.clone(), current.outbox.clone());
        if let (Some(store), Some(pair)) = (&self.tls.proxy, proxy_pair) {
            store.install(pair);
        }
        if let (Some(store), Some(pair)) = (&self.tls.callbacks, callback_pair) {
            store.install(pair);
        }
        self.live.store(Arc::new(generation));
        Ok(())
    }
}
