//! A config generation: the validated config plus everything built from it once
//! (tenant index, upstream connector and pool).
//!
//! The proxy reads the current generation through an `ArcSwap`: a request takes one
//! snapshot when it starts and keeps it to the end, so a reload never changes the rules
//! under a request in flight, and the request path takes no lock.

use arc_swap::ArcSwap;
use std::sync::Arc;

use crate::policy::admission::Admission;
use crate::policy::answers::Answers;
use crate::policy::delivery::CallbackRuntime;
use crate::policy::exchange::Nxcloud;
use crate::process::metrics::Metrics;
use nxgate_core::config::GatewayConfig;
use nxgate_core::tenants::TenantDirectory;

/// Everything one config generation needs at request time.
pub struct Generation {
    /// The validated config.
    pub config: GatewayConfig,
    /// Tenants indexed by client key.
    pub tenants: TenantDirectory,
    /// NXCloud: its connector and pool, and the rules of the signed exchange.
    pub nxcloud: Nxcloud,
    /// Per-tenant rate limits and concurrency caps.
    pub admission: Admission,
    /// Per-tenant memory of NXCloud's answers (busy back-off, credential alarms).
    pub answers: Answers,
    /// Callback receivers and the replay memory, if `callbacks:` is configured.
    pub callbacks: Option<CallbackRuntime>,
}

impl Generation {
    /// Builds the request-time state for a validated config.
    pub fn new(config: GatewayConfig) -> Self {
        Self::next(config, None, None)
    }

    /// Builds the generation that follows `previous` (on reload), carrying over the state
    /// that must survive a reload.
    pub fn next(config: GatewayConfig, previous: Option<&Generation>, metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.register_tenants(config.tenants.iter().map(|t| t.name.as_str()));
            // Exported whether or not a callback listener is configured: every family is in
            // the first scrape, so a dashboard or alert never meets a missing one.
            m.export_callback_series(config.tenants.iter().map(|t| t.name.as_str()));
        }
        let tenants = TenantDirectory::new(config.tenants.clone(), config.default_tenant);
        let nxcloud = Nxcloud::new(&config);
        let callbacks = CallbackRuntime::new(
            &config,
            previous.and_then(|p| p.callbacks.as_ref()),
            metrics.as_ref().map(|m| m.redis_metrics()),
        );
        let admission = Admission::new(&config, previous.map(|p| &p.admission), metrics);
        let answers = Answers::new(&config, previous.map(|p| &p.answers));
        Generation { config, tenants, nxcloud, admission, answers, callbacks }
    }
}

/// The generation requests use now; replaced whole on reload.
pub type Live = Arc<ArcSwap<Generation>>;

/// A `Live` handle holding `config`, counting into `metrics`.
pub fn live(config: GatewayConfig, metrics: Arc<Metrics>) -> Live {
    Arc::new(ArcSwap::from_pointee(Generation::next(config, None, Some(metrics))))
}
