//! The outbox worker: delivers the callbacks queued delivery stored (`store`), each signed
//! the Standard Webhooks way, retried per `callbacks.retry_schedule_ms` until the receiver
//! answers 2xx, then a dead letter.
//!
//! The same loop keeps the state store tidy (delivered ids past their window, week-old
//! dead letters, expired `Idempotency-Key`s), so it runs in every gateway, with or without
//! a callback listener.
//!
//! One loop per process takes what is due (waking on intake and redrive, else polling,
//! which is how a replica sees work another stored or abandoned) and runs each attempt as
//! a task of its own, at most [`MAX_IN_DELIVERY`] at once. Taking a callback leases it for
//! `receiver_timeout_ms` + [`LEASE_MARGIN`]: an attempt whose process dies is taken again
//! once that is over, by this process after a restart or by another replica. Delivery is
//! therefore at least once; the `webhook-id` is the same on every attempt, so receivers
//! dedupe on it. Each attempt reads the live generation, so a reload changes the
//! schedule, the signing secret and the receivers of the next attempt.

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::net::upstream::{self, UpstreamError};
use crate::policy::replay::IN_PROGRESS_MARGIN;
use crate::process::metrics::AttemptResult;
use crate::process::telemetry::Trace;
use crate::state::{Generation, Live};
use crate::store::{now_ms, Job, Settle};
use nxgate_core::clock::now_unix;
use nxgate_core::headers::{CALLBACK_TENANT_HEADER, REQUEST_ID_HEADER};
use nxgate_core::replay::Idempotency;
use nxgate_core::webhook::SigningKey;
use opentelemetry::trace::SpanKind;

/// Most attempts in progress at once (per process).
pub const MAX_IN_DELIVERY: usize = 64;

/// How long past `receiver_timeout_ms` a taken callback stays leased.
pub const LEASE_MARGIN: Duration = IN_PROGRESS_MARGIN;

/// The longest the worker waits before looking for due callbacks again.
const POLL: Duration = Duration::from_millis(250);

/// How often the queue gauges are refreshed and expired state is forgotten.
const DEPTH_EVERY: Duration = Duration::from_secs(1);

/// Least time between two log lines about a store that cannot answer.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The worker, a Pingora background service.
pub struct OutboxWorker {
    /// The generation each step reads.
    pub live: Live,
}

#[async_trait]
impl BackgroundService for OutboxWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let permits = Arc::new(Semaphore::new(MAX_IN_DELIVERY));
        let mut depth_at = Instant::now() - DEPTH_EVERY;
        let mut warned_at: Option<Instant> = None;
        let mut warn = |what: &str, e: &dyn std::fmt::Display| {
            if warned_at.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                warned_at = Some(Instant::now());
                tracing::warn!(error = %e, "the callback outbox cannot {what}; retrying (repeated at most every 10 s)");
            }
        };
        loop {
            let g = self.live.load_full();
            let mut more = false;
            if g.callbacks.is_none() && depth_at.elapsed() >= DEPTH_EVERY {
                depth_at = Instant::now();
                if let Err(e) = g.outbox.purge_keys(now_ms()).await {
                    warn("forget expired idempotency keys", &e);
                }
            }
            if let Some(cb) = g.callbacks.as_ref() {
                let uuids = g.uuids();
                let free = permits.available_permits();
                if free > 0 {
                    let lease = cb.config.receiver_timeout + LEASE_MARGIN;
                    match g.outbox.take_due(&uuids, now_ms(), lease, free).await {
                        Ok(jobs) => {
                            more = jobs.len() == free;
                            for job in jobs {
                                let permit = permits.clone().acquire_owned().await.expect("never closed");
                                let g = g.clone();
                                tokio::spawn(async move {
                                    attempt(&g, job).await;
                                    drop(permit);
                                });
                            }
                        }
                        Err(e) => warn("take due callbacks", &e),
                    }
                }
                if depth_at.elapsed() >= DEPTH_EVERY {
                    depth_at = Instant::now();
                    match g.outbox.depth(&uuids, now_ms()).await {
                        Ok(depths) => publish_depths(&g, depths, now_ms()),
                        Err(e) => warn("count its queue", &e),
                    }
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = g.outbox.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn publish_depths(g: &Generation, depths: std::collections::HashMap<String, crate::store::Depth>, now_ms: u64) {
    for (uuid, d) in depths {
        let Some(position) = g.position_by_uuid(&uuid) else { continue };
        let series = &g.record(position).metrics.outbox;
        series.depth.set(d.queued as i64);
        series.dead.set(d.dead as i64);
        series.oldest.set(d.oldest_received_ms.map_or(0, |t| now_ms.saturating_sub(t) / 1000) as i64);
    }
}

/// One delivery attempt of `job`, settled in the store.
async fn attempt(g: &Generation, job: Job) {
    let Some(cb) = g.callbacks.as_ref() else { return };
    let c = &job.callback;
    let record = g.position_by_uuid(&c.uuid).map(|p| g.record(p));
    let receiver = record.and_then(|r| r.receiver.clone()).unwrap_or_else(|| cb.default_receiver().clone());
    let tenant = record.map_or(c.tenant.as_str(), |r| r.tenant.name.as_str());
    // A child of the callback's intake span, whatever replica or restart attempts it.
    let span = Trace::from_traceparent("nxgate.callback.delivery", SpanKind::Client, c.traceparent.as_deref());
    let timestamp = now_unix().as_secs();
    let started = Instant::now();
    let (result, error, status) = match delivery_header(
        &job,
        tenant,
        receiver.authority(),
        cb.config.signing_key.as_ref(),
        timestamp,
        span.traceparent(),
    ) {
        Err(e) => (AttemptResult::Unreachable, format!("cannot build the delivery: {e}"), None),
        Ok(header) => {
            let build = || Box::new(header.clone());
            match receiver.send(build, &job.body, g.config.max_response_body_bytes, Idempotency::NotIdempotent).await {
                Ok(r) if r.header.status.is_success() => {
                    (AttemptResult::Delivered, String::new(), Some(r.header.status.as_u16()))
                }
                Ok(r) => (
                    AttemptResult::ReceiverError,
                    format!("receiver answered {}", r.header.status.as_u16()),
                    Some(r.header.status.as_u16()),
                ),
                Err(UpstreamError::Timeout(m)) => (AttemptResult::Timeout, format!("receiver timeout: {m}"), None),
                Err(e) => (AttemptResult::Unreachable, format!("receiver unreachable: {e}"), None),
            }
        }
    };
    let took = started.elapsed();
    if let Some(r) = record {
        r.metrics.outbox.attempt(result);
        r.metrics.callbacks.delivery_duration.observe(took.as_secs_f64());
    }
    let schedule = &cb.config.retry_schedule;
    let attempts = job.attempt as usize;
    let settle = match result {
        AttemptResult::Delivered => Settle::Delivered { keep: cb.keep_delivered },
        _ if attempts >= schedule.len() => Settle::Dead { error: error.clone() },
        _ => Settle::Retry { after: schedule[attempts], error: error.clone() },
    };
    let dead = matches!(settle, Settle::Dead { .. });
    if span.is_recording() {
        span.set("nxgate.tenant", tenant.to_owned());
        span.set("nxgate.request_id", c.request_id.clone());
        span.set("nxgate.webhook_id", c.id.clone());
        span.set("nxgate.attempt", i64::from(job.attempt));
        span.set("nxgate.result", result.as_str());
        span.set("nxgate.dead_letter", dead);
        if let Some(s) = status {
            span.set("http.response.status_code", i64::from(s));
        }
        if result != AttemptResult::Delivered {
            span.fail(result.as_str());
        }
    }
    span.end(None);
    tracing::info!(
        target: crate::process::logging::ACCESS_TARGET,
        listener = "callbacks",
        tenant,
        request_id = c.request_id.as_str(),
        webhook_id = c.id.as_str(),
        attempt = job.attempt,
        result = result.as_str(),
        receiver_status = status,
        delivery_ms = took.as_secs_f64() * 1e3,
        dead,
        "callback delivery"
    );
    if dead {
        tracing::warn!(
            tenant,
            request_id = c.request_id.as_str(),
            attempts,
            error = error.as_str(),
            "callback is a dead letter after its last attempt (GET /callbacks/dead, POST /callbacks/redrive)"
        );
    }
    if let Err(e) = g.outbox.settle(&job, settle, now_ms()).await {
        // Its lease runs out and it is attempted again: at least once.
        tracing::warn!(tenant, request_id = c.request_id.as_str(), error = %e, "cannot record a delivery attempt; the callback will be attempted again");
    }
}

/// The request the receiver gets: the callback's method, target, forwarded headers and
/// body, `Host`, `Content-Length`, `x-nxgate-tenant`, `x-request-id`, and the Standard
/// Webhooks headers of this attempt.
fn delivery_header(
    job: &Job,
    tenant: &str,
    authority: &str,
    key: Option<&SigningKey>,
    timestamp: u64,
    traceparent: Option<String>,
) -> Result<RequestHeader, String> {
    let c = &job.callback;
    let method = http::Method::from_bytes(c.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut headers = Vec::with_capacity(c.headers.len());
    for (name, value) in &c.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        headers.push((name, http::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?));
    }
    let bad = |e: Box<pingora::Error>| e.etype().as_str().to_owned();
    let mut h = upstream::request_header(
        &method,
        &c.target,
        headers.iter().map(|(n, v)| (n, v)),
        headers.len() + 5,
        authority,
        job.body.len(),
    )
    .map_err(bad)?;
    h.insert_header(CALLBACK_TENANT_HEADER, tenant).map_err(bad)?;
    h.insert_header(REQUEST_ID_HEADER, c.request_id.as_str()).map_err(bad)?;
    h.insert_header("webhook-id", c.id.as_str()).map_err(bad)?;
    h.insert_header("webhook-timestamp", timestamp.to_string()).map_err(bad)?;
    if let Some(key) = key {
        h.insert_header("webhook-signature", key.sign(&c.id, timestamp, &job.body)).map_err(bad)?;
    }
    if let Some(tp) = traceparent {
        h.insert_header("traceparent", tp).map_err(bad)?;
    }
    Ok(h)
}
