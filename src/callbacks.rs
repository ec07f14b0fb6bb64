//! The callback listener: NXCloud → gateway → internal receiver, each callback once.
//!
//! A listener of its own (never the proxy or admin port), reachable from the internet. It
//! is a Pingora `HttpServerApp` rather than a `ServeHttp` (which never reads the body) or
//! a `ProxyHttp` (which would stream the request to the receiver before it is verified),
//! wrapped in the same `HeaderDeadline` as the proxy listener. Each request travels, in
//! order:
//!
//! route (`callbacks.allow_prefixes`) → frame and read the body (`net::body`, the proxy's
//! rules and `max_request_body_bytes`) → verify (`nxgate_core::callback`: uuid → tenant,
//! headers, algorithm, createTs, sign over the exact bytes) → claim the pair in the replay
//! memory (`replay`) → deliver to the tenant's receiver with Pingora's connector (the
//! same `net::upstream` exchange the proxy uses, plain HTTP, under `receiver_timeout_ms`)
//! → record the outcome in the replay memory → answer NXCloud with the receiver's answer.
//!
//! A refused callback is answered before any connection to the receiver is opened, so the
//! receiver never sees a byte of it.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::body;
use crate::net::upstream::UpstreamError;
use crate::policy::replay::{Claim, IN_PROGRESS_MARGIN};
use crate::process::lifecycle::Lifecycle;
use crate::process::metrics::{Metrics, NO_TENANT};
use crate::proxy::DOWNSTREAM_KEEPALIVE_SECS;
use crate::state::{Generation, Live};
use nxgate_core::callback::verify_callback;
use nxgate_core::clock::{now_unix, now_unix_ms};
use nxgate_core::config::Tenant;
use nxgate_core::errors::{CallbackOutcome, ErrorResponse, ErrorSource, GatewayError};
use nxgate_core::headers::{self, CALLBACK_DUPLICATE_HEADER, CALLBACK_TENANT_HEADER, REQUEST_ID_HEADER};
use nxgate_core::replay::Idempotency;
use nxgate_core::signing;

/// Per-callback state, read by the access log and the metrics.
struct CallbackCtx {
    /// The gateway's id for this request (`reqId` of its error bodies).
    gateway_id: String,
    started: Instant,
    tenant: Option<String>,
    /// The callback's `requestID`, once verified.
    request_id: Option<String>,
    status: u16,
    outcome: CallbackOutcome,
    receiver_status: Option<u16>,
    delivery_time: Option<Duration>,
    bytes_in: usize,
    bytes_out: usize,
}

struct Reply {
    header: ResponseHeader,
    body: Bytes,
}

/// The callback listener's application.
pub struct CallbackApp {
    live: Live,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
}

impl CallbackApp {
    /// Serves callbacks with whatever generation `live` holds at each callback's start.
    pub fn new(live: Live, metrics: Arc<Metrics>, lifecycle: Arc<Lifecycle>) -> Self {
        CallbackApp { live, metrics, lifecycle }
    }

    /// Counts the callback; before its answer is written, so a metric read after the
    /// answer always includes it.
    fn count(&self, ctx: &CallbackCtx) {
        let tenant = ctx.tenant.as_deref().unwrap_or(NO_TENANT);
        self.metrics.callbacks.with_label_values(&[tenant, ctx.outcome.as_str()]).inc();
        if let Some(t) = ctx.delivery_time {
            self.metrics.callback_delivery_duration.with_label_values(&[tenant]).observe(t.as_secs_f64());
        }
    }

    fn log(&self, ctx: &CallbackCtx) {
        let tenant = ctx.tenant.as_deref().unwrap_or(NO_TENANT);
        // One access-log event per callback: no body, no signature, no query string.
        tracing::info!(
            target: crate::process::logging::ACCESS_TARGET,
            listener = "callbacks",
            tenant,
            request_id = ctx.request_id.as_deref().unwrap_or("-"),
            gateway_id = %ctx.gateway_id,
            status = ctx.status,
            outcome = ctx.outcome.as_str(),
            receiver_status = ctx.receiver_status,
            duration_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            delivery_ms = ctx.delivery_time.map(|d| d.as_secs_f64() * 1e3),
            bytes_in = ctx.bytes_in,
            bytes_out = ctx.bytes_out,
            "callback"
        );
    }
}

#[async_trait]
impl HttpServerApp for CallbackApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e.etype().as_str(), "callback listener: cannot read a request header");
                return None;
            }
        }
        let _in_flight = self.lifecycle.request_started();
        // Pingora has applied the caller's wishes (HTTP/1.0, `Connection: close`); only
        // bound the idle time of a connection that stays open, and close when draining.
        if *shutdown.borrow() {
            http.set_keepalive(None);
        } else if http.get_keepalive().is_some() {
            http.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
        }
        let generation = self.live.load_full();
        let mut ctx = CallbackCtx {
            gateway_id: signing::new_request_id(),
            started: Instant::now(),
            tenant: None,
            request_id: None,
            status: 0,
            outcome: CallbackOutcome::Delivered,
            receiver_status: None,
            delivery_time: None,
            bytes_in: 0,
            bytes_out: 0,
        };
        let reply = match handle(&generation, &mut http, &mut ctx).await {
            Ok(reply) => reply,
            Err(e) => {
                // After a framing or body error the request's end is unknown: close.
                if matches!(e, GatewayError::BadRequest(_) | GatewayError::BodyTooLarge { .. }) {
                    http.set_keepalive(None);
                }
                error_reply(&e, &mut ctx)
            }
        };
        ctx.status = reply.header.status.as_u16();
        self.count(&ctx);
        let head = http.req_header().method == http::Method::HEAD;
        let body_len = reply.body.len();
        let written = async {
            http.write_response_header(Box::new(reply.header)).await?;
            if !head && !reply.body.is_empty() {
                http.write_response_body(reply.body, true).await?;
            }
            Ok::<_, Box<pingora::Error>>(())
        };
        match written.await {
            Ok(()) if !head => ctx.bytes_out = body_len,
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(gateway_id = %ctx.gateway_id, error = %e.etype().as_str(), "NXCloud went away before the answer was written")
            }
        }
        self.log(&ctx);
        let persistent = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(_) => None,
        }
    }
}

/// The callback path proper; every step may refuse with a `GatewayError`.
async fn handle(g: &Generation, http: &mut ServerSession, ctx: &mut CallbackCtx) -> Result<Reply, GatewayError> {
    let cb = g.callbacks.as_ref().ok_or(GatewayError::RouteNotAllowed)?;
    let target = body::allowed_target(http.req_header(), &cb.config.allow_prefixes)?;
    let limit = g.config.max_request_body_bytes;
    let declared = body::check_framing(http, limit)?;
    let body = body::read_body(http, limit, declared).await?;
    ctx.bytes_in = body.len();

    let req = http.req_header();
    let now = now_unix().as_secs();
    let verified =
        verify_callback(&g.tenants, &req.headers, &body, g.config.max_clock_skew_secs, now).map_err(|r| {
            ctx.tenant = r.tenant.map(|t| t.name.clone());
            r.error
        })?;
    let tenant: Arc<Tenant> = verified.tenant.clone();
    let request_id = verified.request_id.to_owned();
    ctx.tenant = Some(tenant.name.clone());
    ctx.request_id = Some(request_id.clone());

    let receiver = cb.receiver(&tenant.name);
    let header = delivery_header(req, &target, receiver.authority(), &tenant.name, &request_id, body.len())?;

    let in_progress_for = cb.config.receiver_timeout + IN_PROGRESS_MARGIN;
    let ticket = match cb.replay.claim(&tenant, &request_id, in_progress_for).await? {
        Claim::Fresh(ticket) => ticket,
        Claim::Delivered => {
            ctx.outcome = CallbackOutcome::Duplicate;
            return Ok(duplicate_reply(&request_id));
        }
        Claim::InProgress => return Err(GatewayError::CallbackInProgress),
    };

    let build = || header.clone();
    let started = Instant::now();
    // Never sent twice once written: if the receiver may have taken it, the caller (NXCloud)
    // gets 502 and retries with the same requestID, which the replay memory lets through
    // again, so a receiver sees a second copy only when it failed to answer the first.
    let result = receiver.send(build, &body, g.config.max_response_body_bytes, Idempotency::NotIdempotent).await;
    ctx.delivery_time = Some(started.elapsed());
    match result {
        Ok(response) => {
            let status = response.header.status;
            ctx.receiver_status = Some(status.as_u16());
            if status.is_success() {
                let keep = Duration::from_secs(2 * g.config.max_clock_skew_secs.max(1));
                cb.replay.delivered(ticket, keep).await;
            } else {
                cb.replay.failed(ticket).await;
                ctx.outcome = CallbackOutcome::ReceiverError;
            }
            let header = pass_back(response.header, &request_id, response.body.len());
            Ok(Reply { header, body: response.body })
        }
        Err(e) => {
            cb.replay.failed(ticket).await;
            Err(match e {
                UpstreamError::Timeout(m) => GatewayError::CallbackReceiverTimeout(m),
                other => GatewayError::CallbackReceiverUnreachable(other.to_string()),
            })
        }
    }
}

/// The request the receiver gets: same method, path and query; the callback's headers
/// minus hop-by-hop and signature headers; `Host`, `Content-Length`, `x-nxgate-tenant`
/// and `x-request-id` set by the gateway.
fn delivery_header(
    req: &RequestHeader,
    target: &str,
    authority: &str,
    tenant: &str,
    request_id: &str,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let bad =
        |e: Box<pingora::Error>| GatewayError::BadRequest(format!("cannot build the delivery: {}", e.etype().as_str()));
    let mut h =
        RequestHeader::build(req.method.clone(), target.as_bytes(), Some(req.headers.len() + 4)).map_err(bad)?;
    for (name, value) in headers::forwardable_callback_headers(&req.headers) {
        h.append_header(name.clone(), value.clone()).map_err(bad)?;
    }
    h.insert_header(http::header::HOST, authority).map_err(bad)?;
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string()).map_err(bad)?;
    h.insert_header(CALLBACK_TENANT_HEADER, tenant).map_err(bad)?;
    h.insert_header(REQUEST_ID_HEADER, request_id).map_err(bad)?;
    Ok(h)
}

/// The receiver's answer as NXCloud gets it: hop-by-hop and framing headers removed,
/// Content-Length and `x-request-id` (the callback's requestID) set.
fn pass_back(mut h: ResponseHeader, request_id: &str, body_len: usize) -> ResponseHeader {
    for name in headers::unforwardable_response_headers(&h.headers) {
        h.remove_header(&name);
    }
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string()).expect("number");
    h.insert_header(REQUEST_ID_HEADER, request_id).expect("verified visible ASCII");
    h
}

/// The answer to a callback that was already delivered.
fn duplicate_reply(request_id: &str) -> Reply {
    let body = Bytes::from_static(br#"{"code":0,"msg":"callback already delivered"}"#);
    let mut h = ResponseHeader::build(200, Some(4)).expect("200 is valid");
    h.insert_header(http::header::CONTENT_TYPE, "application/json").expect("static");
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string()).expect("number");
    h.insert_header(CALLBACK_DUPLICATE_HEADER, "true").expect("static");
    h.insert_header(REQUEST_ID_HEADER, request_id).expect("verified visible ASCII");
    Reply { header: h, body }
}

/// The one place a refusal becomes a response on this listener (through `ErrorResponse`).
fn error_reply(e: &GatewayError, ctx: &mut CallbackCtx) -> Reply {
    ctx.outcome = CallbackOutcome::Refused(e.error_kind());
    let tenant = ctx.tenant.as_deref().unwrap_or(NO_TENANT);
    match e.source() {
        ErrorSource::Caller => {
            tracing::debug!(gateway_id = %ctx.gateway_id, tenant, kind = e.kind(), error = %e, "callback refused")
        }
        ErrorSource::Upstream | ErrorSource::Internal => {
            tracing::warn!(gateway_id = %ctx.gateway_id, tenant, kind = e.kind(), error = %e, "callback not delivered")
        }
    }
    let rendered = ErrorResponse::new(e, &ctx.gateway_id, now_unix_ms());
    let headers = rendered.headers();
    let mut h = ResponseHeader::build(rendered.status, Some(headers.len())).expect("contract statuses are valid");
    for (name, value) in headers {
        h.insert_header(name, value).expect("the error header set is valid");
    }
    Reply { header: h, body: rendered.body }
}
