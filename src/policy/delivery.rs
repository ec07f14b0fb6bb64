//! Callback delivery: each verified callback is claimed in the replay memory, delivered
//! to its tenant's receiver at most once per claim, and its outcome recorded; and the
//! state that takes for one config generation (the receivers, each with its connection
//! pool, and the replay memory, which survives reloads).

use bytes::Bytes;
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::replay::{Claim, LocalReplay, RedisReplay, ReplayStore, IN_PROGRESS_MARGIN};
use crate::net::upstream::{Upstream, UpstreamError, UpstreamResponse};
use crate::store::{Backend, Outbox};
use nxgate_core::config::{CallbacksConfig, GatewayConfig, Receiver, Tenant, UpstreamConfig};
use nxgate_core::errors::GatewayError;
use nxgate_core::replay::Idempotency;

/// The callback side of one config generation.
pub struct CallbackRuntime {
    /// The validated `callbacks:` block.
    pub config: CallbacksConfig,
    /// Where callbacks of tenants without their own `callbacks_forward_to` go.
    default_receiver: Arc<Upstream>,
    /// Shared with the next generation.
    pub replay: Arc<ReplayStore>,
    /// The outbox of queued delivery (the process's, whatever the delivery mode).
    pub outbox: Arc<Outbox>,
    /// How long a delivered pair is remembered: a callback is accepted while its
    /// `createTs` is within the skew window of the clock, so a copy can arrive up to
    /// twice the window after the first was accepted, and none later.
    pub keep_delivered: Duration,
    /// `limits.max_response_body_bytes`, for the receiver's answer.
    max_answer_bytes: usize,
}

/// What became of a claimed callback.
// Returned once per callback and consumed at once, never stored: boxing the answer would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    /// Already delivered: answer the duplicate, do not forward.
    Duplicate,
    /// The receiver answered (2xx: delivered, remembered; otherwise released for a retry).
    Answered(UpstreamResponse),
}

/// Facts about a delivery for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeliveryReport {
    /// The receiver's status, if it answered.
    pub receiver_status: Option<u16>,
    /// Time spent in the exchange with the receiver.
    pub time: Option<Duration>,
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
    /// Builds the callback side of `config`, keeping `previous`'s replay memory (`state:`
    /// cannot change on reload, so it is the same kind). The replay memory lives where
    /// `state:` says: in the process (memory), in the state file, or in Redis (on the
    /// outbox's link).
    pub fn new(config: &GatewayConfig, previous: Option<&CallbackRuntime>, outbox: &Arc<Outbox>) -> Option<Self> {
        let cb = config.callbacks.clone()?;
        let default_receiver = receiver_upstream(&cb.forward_to, cb.receiver_timeout);
        let kept = previous.map(|p| &p.replay).filter(|r| match (r.as_ref(), &outbox.backend) {
            (ReplayStore::Local(l), _) => {
                l.set_capacity(cb.replay_memory_entries);
                true
            }
            // A reload that changed `redis:` moved the outbox to a new link; follow it.
            (ReplayStore::Redis(r), Backend::Redis(o)) => Arc::ptr_eq(r.link(), &o.link()),
            _ => true,
        });
        let replay = match kept {
            Some(r) => r.clone(),
            None => Arc::new(match &outbox.backend {
                Backend::Embedded(e) if config.state.is_durable() => ReplayStore::Embedded(e.clone()),
                Backend::Embedded(_) => ReplayStore::Local(LocalReplay::new(cb.replay_memory_entries)),
                Backend::Redis(r) => ReplayStore::Redis(RedisReplay::new(r.link())),
            }),
        };
        Some(CallbackRuntime {
            outbox: outbox.clone(),
            keep_delivered: Duration::from_secs(2 * config.max_clock_skew_secs.max(1)),
            max_answer_bytes: config.max_response_body_bytes,
            config: cb,
            default_receiver,
            replay,
        })
    }

    /// Where callbacks go whose tenant has no receiver of its own (or is no longer
    /// configured, for a callback queued before a reload).
    pub fn default_receiver(&self) -> &Arc<Upstream> {
        &self.default_receiver
    }

    /// The receiver of `tenant`'s callbacks: its own `callbacks_forward_to`, else the
    /// default one (shared, with its pool).
    pub fn receiver_for(&self, tenant: &Tenant) -> Arc<Upstream> {
        match &tenant.callbacks_forward_to {
            Some(own) => receiver_upstream(own, self.config.receiver_timeout),
            None => self.default_receiver.clone(),
        }
    }

    /// Claims (tenant, `request_id`), then delivers `header` and `body` to `receiver`
    /// and records the outcome in the replay memory.
    pub async fn deliver(
        &self,
        receiver: &Upstream,
        tenant: &Tenant,
        request_id: &str,
        header: RequestHeader,
        body: &Bytes,
        report: &mut DeliveryReport,
    ) -> Result<Delivery, GatewayError> {
        let in_progress_for = self.config.receiver_timeout + IN_PROGRESS_MARGIN;
        let ticket = match self.replay.claim(tenant, request_id, in_progress_for).await? {
            Claim::Fresh(ticket) => ticket,
            Claim::Delivered => return Ok(Delivery::Duplicate),
            Claim::InProgress => return Err(GatewayError::CallbackInProgress),
        };
        // Called again only if the header write itself failed (nothing was sent).
        let build = || Box::new(header.clone());
        let started = Instant::now();
        // Never sent twice once written: if the receiver may have taken it, the caller (NXCloud)
        // gets 502 and retries with the same requestID, which the replay memory lets through
        // again, so a receiver sees a second copy only when it failed to answer the first.
        let result = receiver.send(build, body, self.max_answer_bytes, Idempotency::NotIdempotent).await;
        report.time = Some(started.elapsed());
        match result {
            Ok(response) => {
                report.receiver_status = Some(response.header.status.as_u16());
                if response.header.status.is_success() {
                    self.replay.delivered(ticket, self.keep_delivered).await;
                } else {
                    self.replay.failed(ticket).await;
                }
                Ok(Delivery::Answered(response))
            }
            Err(e) => {
                self.replay.failed(ticket).await;
                Err(match e {
                    UpstreamError::Timeout(m) => GatewayError::CallbackReceiverTimeout(m),
                    other => GatewayError::CallbackReceiverUnreachable(other.to_string()),
                })
            }
        }
    }
}
