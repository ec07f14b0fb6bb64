//! The callback flow: NXCloud → gateway → internal receiver, each callback once.
//!
//! A listener of its own (never the proxy or admin port), reachable from the internet,
//! running inside the same request shell as the proxy (`shell`: request reading with its
//! 400/405, the header deadline, refusals, the order of metrics and writes). Each request
//! travels, in order:
//!
//! route (`callbacks.allow_prefixes`) → frame and read the body (`net::body`, the proxy's
//! rules and `max_request_body_bytes`) → verify (`nxgate_core::callback`: uuid → tenant,
//! headers, algorithm, createTs, sign over the exact bytes) → then, by
//! `callbacks.delivery`:
//! - **queued**: store it in the outbox (`store`; durable before the answer) and answer
//!   NXCloud 200; the outbox worker (`outbox`) delivers it, signed, with retries;
//! - **direct**: claim the pair in the replay memory and deliver to the tenant's receiver
//!   (`policy::delivery`, with Pingora's connector, plain HTTP, under
//!   `receiver_timeout_ms`) → answer NXCloud with the receiver's answer.
//!
//! A refused callback is answered before anything is stored and before any connection to
//! the receiver is opened, so the receiver never sees a byte of it.

pub mod outbox;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;

use crate::net::{body, upstream};
use crate::policy::delivery::{Delivery, DeliveryReport};
use crate::process::telemetry::Trace;
use crate::shell::{self, Flow, Reply, Request};
use crate::state::{Live, Snapshot};
use crate::store::{self, Intake};
use nxgate_core::callback::verify_callback;
use nxgate_core::clock::now_unix;
use nxgate_core::config::DeliveryMode;
use nxgate_core::errors::{CallbackOutcome, GatewayError};
use nxgate_core::headers::{self, CALLBACK_DUPLICATE_HEADER, CALLBACK_TENANT_HEADER, REQUEST_ID_HEADER};
use nxgate_core::webhook;
use opentelemetry::trace::SpanKind;

/// The callback flow's state for one request, read by its metrics and access event.
pub struct CallbackCtx {
    /// The generation the callback arrived under, and its tenant once its `uuid` named one.
    at: Snapshot,
    /// The callback's `requestID`, once verified.
    request_id: Option<String>,
    /// How it ended, unless it was refused (the shell's request says so then).
    delivered: CallbackOutcome,
    /// The exchange with the receiver.
    delivery: DeliveryReport,
    /// Its trace's root span (empty with telemetry off).
    trace: Trace,
}

impl CallbackCtx {
    fn outcome(&self, req: &Request) -> CallbackOutcome {
        req.error.map_or(self.delivered, CallbackOutcome::Refused)
    }
}

/// The callback flow.
pub struct Callbacks(pub Live);

#[async_trait]
impl Flow for Callbacks {
    const LISTENER: &'static str = "callbacks";
    type Ctx = CallbackCtx;

    fn start(&self) -> CallbackCtx {
        CallbackCtx {
            at: Snapshot::of(&self.0),
            request_id: None,
            delivered: CallbackOutcome::Delivered,
            delivery: DeliveryReport::default(),
            trace: Trace::none(),
        }
    }

    fn tenant<'c>(&self, ctx: &'c CallbackCtx) -> Option<&'c str> {
        ctx.at.tenant_name()
    }

    /// The callback path proper; every step may refuse with a `GatewayError`. (Its
    /// future is boxed once per callback, by `async_trait`.)
    async fn handle(
        &self,
        session: &mut ServerSession,
        req: &mut Request,
        ctx: &mut CallbackCtx,
    ) -> Result<Reply, GatewayError> {
        let g = ctx.at.g.clone();
        let cb = g.callbacks.as_ref().ok_or(GatewayError::RouteNotAllowed)?;
        let target = body::allowed_target(session.req_header(), &cb.config.allow_prefixes)?;
        let limit = g.config.max_request_body_bytes;
        let declared = body::check_framing(session, limit)?;
        let body = body::read_body(session, limit, declared).await?;
        req.bytes_in = body.len();

        let header = session.req_header();
        ctx.trace = Trace::server("nxgate.callback", &header.headers);
        let step = ctx.trace.child("verify", SpanKind::Internal, None);
        let now = now_unix().as_secs();
        let verified = verify_callback(&g.tenants, &header.headers, &body, g.config.max_clock_skew_secs, now).map_err(
            |refused| {
                ctx.at.tenant = refused.position;
                step.fail(refused.error.kind());
                refused.error
            },
        )?;
        step.end(None);
        ctx.at.tenant = Some(verified.position);
        let request_id = verified.request_id.to_owned();
        ctx.request_id = Some(request_id.clone());
        let record = g.record(verified.position);
        let receiver = record.receiver.as_ref().ok_or(GatewayError::RouteNotAllowed)?;
        let tenant = &record.tenant;
        if cb.config.delivery == DeliveryMode::Queued {
            let callback = store::Callback {
                id: webhook::message_id(&tenant.uuid, &request_id),
                tenant: tenant.name.clone(),
                uuid: tenant.uuid.clone(),
                request_id: request_id.clone(),
                method: header.method.as_str().to_owned(),
                target,
                headers: headers::forwardable_callback_headers(&header.headers)
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                received_ms: store::now_ms(),
                traceparent: ctx.trace.traceparent(),
            };
            let first_delay = cb.config.retry_schedule[0];
            let full = GatewayError::ReplayStoreUnavailable("the callback queue is full");
            let unavailable = |e: store::StoreError| {
                tracing::error!(error = %e, "a callback could not be stored; NXCloud is answered 503 and retries");
                GatewayError::ReplayStoreUnavailable("the state store cannot answer")
            };
            let step = ctx.trace.child("store", SpanKind::Internal, None);
            let stored = cb.outbox.intake(callback, body, first_delay, cb.config.max_queued).await;
            if let Err(e) = &stored {
                step.fail(&e.to_string());
            }
            step.end(None);
            return match stored.map_err(unavailable)? {
                Intake::Stored => {
                    ctx.delivered = CallbackOutcome::Queued;
                    Ok(json_reply(&request_id, br#"{"code":0,"msg":"callback accepted"}"#, false))
                }
                Intake::Duplicate => {
                    ctx.delivered = CallbackOutcome::Duplicate;
                    Ok(json_reply(&request_id, br#"{"code":0,"msg":"callback already accepted"}"#, true))
                }
                Intake::Full => Err(full),
            };
        }
        let mut delivery =
            delivery_header(header, &target, receiver.authority(), &tenant.name, &request_id, body.len())?;
        let step = ctx.trace.child("deliver", SpanKind::Client, None);
        if let Some(tp) = step.traceparent() {
            let _ = delivery.insert_header("traceparent", tp);
        }
        let delivered = cb.deliver(receiver, tenant, &request_id, delivery, &body, &mut ctx.delivery).await;
        if let Some(status) = ctx.delivery.receiver_status {
            step.set("http.response.status_code", i64::from(status));
        }
        if let Err(e) = &delivered {
            step.fail(e.kind());
        }
        step.end(None);
        match delivered? {
            Delivery::Duplicate => {
                ctx.delivered = CallbackOutcome::Duplicate;
                Ok(json_reply(&request_id, br#"{"code":0,"msg":"callback already delivered"}"#, true))
            }
            Delivery::Answered(response) => {
                if !response.header.status.is_success() {
                    ctx.delivered = CallbackOutcome::ReceiverError;
                }
                let header = shell::reframe(response.header, &request_id, response.body.len());
                Ok(Reply { header, body: response.body })
            }
        }
    }

    fn record(&self, req: &Request, ctx: &CallbackCtx) {
        let series = ctx.at.record().map_or(&ctx.at.g.anonymous_callbacks, |r| &r.metrics.callbacks);
        series.outcome(ctx.outcome(req));
        if let Some(t) = ctx.delivery.time {
            series.delivery_duration.observe(t.as_secs_f64());
        }
    }

    fn log(&self, session: &ServerSession, req: &Request, ctx: &CallbackCtx) {
        if ctx.trace.is_recording() {
            let t = &ctx.trace;
            t.set("url.path", session.req_header().uri.path().to_owned());
            t.set("http.response.status_code", i64::from(req.status));
            t.set("nxgate.outcome", ctx.outcome(req).as_str());
            if let Some(tenant) = self.tenant(ctx) {
                t.set("nxgate.tenant", tenant.to_owned());
            }
            if let Some(id) = &ctx.request_id {
                t.set("nxgate.request_id", id.clone());
            }
            if let Some(kind) = req.outcome() {
                t.fail(kind);
            }
        }
        tracing::info!(
            target: crate::process::logging::ACCESS_TARGET,
            listener = Self::LISTENER,
            tenant = self.tenant(ctx).unwrap_or("-"),
            request_id = ctx.request_id.as_deref().unwrap_or("-"),
            gateway_id = %req.id,
            status = req.status,
            outcome = ctx.outcome(req).as_str(),
            receiver_status = ctx.delivery.receiver_status,
            duration_ms = req.started.elapsed().as_secs_f64() * 1e3,
            delivery_ms = ctx.delivery.time.map(|d| d.as_secs_f64() * 1e3),
            bytes_in = req.bytes_in,
            bytes_out = req.bytes_out,
            trace_id = ctx.trace.trace_id(),
            "callback"
        );
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
    let forwarded = headers::forwardable_callback_headers(&req.headers);
    let mut h = upstream::request_header(&req.method, target, forwarded, req.headers.len() + 2, authority, body_len)
        .map_err(bad)?;
    h.insert_header(CALLBACK_TENANT_HEADER, tenant).map_err(bad)?;
    h.insert_header(REQUEST_ID_HEADER, request_id).map_err(bad)?;
    Ok(h)
}

/// The gateway's own 200 to NXCloud (the vendor's `code` 0 shape): a callback accepted,
/// or a `duplicate` of one already accepted or delivered.
fn json_reply(request_id: &str, body: &'static [u8], duplicate: bool) -> Reply {
    let body = Bytes::from_static(body);
    let mut h = ResponseHeader::build(200, Some(4)).expect("200 is valid");
    h.insert_header(http::header::CONTENT_TYPE, "application/json").expect("static");
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string()).expect("number");
    if duplicate {
        h.insert_header(CALLBACK_DUPLICATE_HEADER, "true").expect("static");
    }
    h.insert_header(REQUEST_ID_HEADER, request_id).expect("verified visible ASCII");
    Reply { header: h, body }
}
