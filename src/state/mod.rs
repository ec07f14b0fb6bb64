//! A config generation: the validated config plus everything built from it once: the
//! tenant directory, one record per tenant, NXCloud's connector, the rate-limit backend
//! and callback delivery.
//!
//! The flows read the current generation through an `ArcSwap`: a request takes one
//! snapshot when it starts and keeps it to the end, so a reload never changes the rules
//! under a request in flight, and the request path takes no lock. A tenant's state lives
//! in one [`TenantRecord`], at the tenant's position in the config, so the request path
//! reaches it by index (the position the tenant directory answers with), never by name,
//! with its metric handles already resolved. What must survive a reload is carried from
//! the previous generation in one place, [`TenantRecord::next`].

use arc_swap::ArcSwap;
use std::sync::Arc;

use crate::net::redis::RedisLink;
use crate::net::upstream::Upstream;
use crate::policy::admission::{RateBackend, TenantAdmission};
use crate::policy::answers::TenantAnswers;
use crate::policy::delivery::CallbackRuntime;
use crate::policy::exchange::Nxcloud;
use crate::process::metrics::{CallbackSeries, Metrics, TenantMetrics, NO_TENANT};
use crate::store::{Backend, Outbox};
use nxgate_core::config::{GatewayConfig, Tenant};
use nxgate_core::tenants::TenantDirectory;

/// Everything one tenant needs at request time.
pub struct TenantRecord {
    /// Its config.
    pub tenant: Arc<Tenant>,
    /// Its rate limiter and in-flight count.
    pub admission: TenantAdmission,
    /// What NXCloud's answers said about it (busy back-off, credential alarms).
    pub answers: Arc<TenantAnswers>,
    /// Where its callbacks go, when a callback listener is configured.
    pub receiver: Option<Arc<Upstream>>,
    /// Its metric series.
    pub metrics: TenantMetrics,
}

impl TenantRecord {
    /// The record of `tenant` in a new generation, carrying over from `previous` (the
    /// same tenant, by name, in the generation before) what must survive a reload: the
    /// in-flight count, a limiter whose limit is unchanged, and the answers' memory.
    fn next(
        tenant: &Arc<Tenant>,
        previous: Option<&TenantRecord>,
        rates: &RateBackend,
        callbacks: Option<&CallbackRuntime>,
        metrics: &Metrics,
    ) -> Self {
        TenantRecord {
            tenant: tenant.clone(),
            admission: TenantAdmission::new(tenant, previous.map(|p| &p.admission), rates),
            answers: previous.map(|p| p.answers.clone()).unwrap_or_default(),
            receiver: callbacks.map(|c| c.receiver_for(tenant)),
            metrics: metrics.tenant(&tenant.name),
        }
    }
}

/// Everything one config generation needs at request time.
pub struct Generation {
    /// The validated config.
    pub config: GatewayConfig,
    /// Tenants indexed by client key and uuid.
    pub tenants: TenantDirectory,
    /// One per tenant, in config order.
    records: Vec<TenantRecord>,
    /// The callback series of callbacks that named no tenant.
    pub anonymous_callbacks: CallbackSeries,
    /// NXCloud: its connector and pool, and the rules of the signed exchange.
    pub nxcloud: Nxcloud,
    /// Where rate limits are kept.
    pub rates: RateBackend,
    /// Callback delivery, if `callbacks:` is configured.
    pub callbacks: Option<CallbackRuntime>,
    /// The process's metrics, for the series that are not per tenant.
    pub metrics: Arc<Metrics>,
    /// Durable state (the callback outbox): the process's, carried by every generation.
    pub outbox: Arc<Outbox>,
}

impl Generation {
    /// Builds the generation that follows `previous` (on reload; `None` at start),
    /// carrying over the state that must survive a reload; `outbox` is the process's.
    pub fn next(
        config: GatewayConfig,
        previous: Option<&Generation>,
        metrics: Arc<Metrics>,
        outbox: Arc<Outbox>,
    ) -> Self {
        let tenants = TenantDirectory::new(config.tenants.clone(), config.default_tenant);
        if let Backend::Redis(r) = &outbox.backend {
            if r.link().config() != &config.redis {
                r.relink(RedisLink::new(config.redis.clone(), "callback state", Some(metrics.redis_metrics())));
            }
        }
        let callbacks = CallbackRuntime::new(&config, previous.and_then(|p| p.callbacks.as_ref()), &outbox);
        let rates = RateBackend::new(&config, previous.map(|p| &p.rates), Some(metrics.redis_metrics()));
        let records = tenants
            .all()
            .iter()
            .map(|t| {
                let before = previous.and_then(|p| p.records.iter().find(|r| r.tenant.name == t.name));
                TenantRecord::next(t, before, &rates, callbacks.as_ref(), &metrics)
            })
            .collect();
        Generation {
            nxcloud: Nxcloud::new(&config),
            anonymous_callbacks: metrics.callback_series(NO_TENANT),
            config,
            tenants,
            records,
            rates,
            callbacks,
            metrics,
            outbox,
        }
    }

    /// The position of the tenant whose uuid is `uuid`, if configured.
    pub fn position_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.tenants.position_by_uuid(uuid)
    }

    /// Every tenant's uuid, in config order (the outbox's keys).
    pub fn uuids(&self) -> Vec<String> {
        self.records.iter().map(|r| r.tenant.uuid.clone()).collect()
    }

    /// The record of the tenant at `position` (as the tenant directory answers).
    pub fn record(&self, position: usize) -> &TenantRecord {
        &self.records[position]
    }
}

/// A request's view of the config: the generation it started under (kept to its end, so a
/// reload mid-request changes nothing for it) and, once known, its tenant.
pub struct Snapshot {
    /// The generation.
    pub g: Arc<Generation>,
    /// The tenant's position, once known.
    pub tenant: Option<usize>,
}

impl Snapshot {
    /// The generation live now, no tenant yet.
    pub fn of(live: &Live) -> Self {
        Snapshot { g: live.load_full(), tenant: None }
    }

    /// The tenant's record, once known.
    pub fn record(&self) -> Option<&TenantRecord> {
        self.tenant.map(|i| self.g.record(i))
    }

    /// The tenant's name, once known.
    pub fn tenant_name(&self) -> Option<&str> {
        self.record().map(|r| r.tenant.name.as_str())
    }
}

/// The generation requests use now; replaced whole on reload.
pub type Live = Arc<ArcSwap<Generation>>;

/// A `Live` handle holding `config`, counting into `metrics`, keeping state in `outbox`.
pub fn live(config: GatewayConfig, metrics: Arc<Metrics>, outbox: Arc<Outbox>) -> Live {
    Arc::new(ArcSwap::from_pointee(Generation::next(config, None, metrics, outbox)))
}
