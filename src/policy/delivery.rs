//! Callback delivery's state for one config generation: the receivers (each with its
//! connection pool) and the replay memory, which survives reloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::replay::{LocalReplay, RedisReplay, ReplayStore};
use crate::net::redis::{RedisLink, RedisMetrics};
use crate::net::upstream::Upstream;
use nxgate_core::config::{CallbacksConfig, GatewayConfig, RateLimitKind, Receiver, UpstreamConfig};

/// The callback side of one config generation: receivers (with their pools) and the
/// replay memory (which survives reloads).
pub struct CallbackRuntime {
    /// The validated `callbacks:` block.
    pub config: CallbacksConfig,
    default_receiver: Arc<Upstream>,
    /// Tenants with their own `callbacks_forward_to`.
    receivers: HashMap<String, Arc<Upstream>>,
    /// Shared with the next generation.
    pub replay: Arc<ReplayStore>,
}

fn receiver_upstream(r: &Receiver, timeout: Duration) -> Arc<Upstream> {
    Arc::new(Upstream::new(UpstreamConfig {
        tls: false,
        host: r.host.clone(),
        port: r.port,
        authority: r.authority.clone(),
        extra_roots: Vec::new(),
        connect_timeout: timeout,
        read_timeout: timeout,
        total_timeout: timeout,
        request_compression: Default::default(),
        busy_backoff: None,
    }))
}

impl CallbackRuntime {
    /// Builds the callback side of `config`, keeping `previous`'s replay memory when it
    /// is the same kind (and, for Redis, the same `redis:` config).
    pub fn new(
        config: &GatewayConfig,
        previous: Option<&CallbackRuntime>,
        redis_metrics: Option<RedisMetrics>,
    ) -> Option<Self> {
        let cb = config.callbacks.clone()?;
        let default_receiver = receiver_upstream(&cb.forward_to, cb.receiver_timeout);
        let receivers = config
            .tenants
            .iter()
            .filter_map(|t| {
                Some((t.name.clone(), receiver_upstream(t.callbacks_forward_to.as_ref()?, cb.receiver_timeout)))
            })
            .collect();
        let backend = &config.rate_limit_backend;
        let kept = previous.map(|p| &p.replay).filter(|r| match (r.as_ref(), backend.kind) {
            (ReplayStore::Local(l), RateLimitKind::Local) => {
                l.set_capacity(cb.replay_memory_entries);
                true
            }
            (ReplayStore::Redis(r), RateLimitKind::Redis) => r.link().config() == &config.redis,
            _ => false,
        });
        let replay = kept.cloned().unwrap_or_else(|| {
            Arc::new(match backend.kind {
                RateLimitKind::Local => ReplayStore::Local(LocalReplay::new(cb.replay_memory_entries)),
                RateLimitKind::Redis => {
                    let link = RedisLink::new(config.redis.clone(), "callback replay memory", redis_metrics);
                    ReplayStore::Redis(RedisReplay::new(link))
                }
            })
        });
        Some(CallbackRuntime { config: cb, default_receiver, receivers, replay })
    }

    /// The receiver of `tenant`'s callbacks.
    pub fn receiver(&self, tenant: &str) -> &Arc<Upstream> {
        self.receivers.get(tenant).unwrap_or(&self.default_receiver)
    }
}
