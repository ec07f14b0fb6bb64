//! The request path, top to bottom in the order a request travels:
//! authenticate → route → frame → admit (concurrency, rate) → read body → sign → forward →
//! read response → verify → respond.
//!
//! [`NxGate`] is a pingora-core `HttpServerApp`: Pingora owns the listeners, HTTP/1 and
//! h2 parsing, keep-alive and graceful shutdown, and hands each request header to
//! `process_new_http`, which runs the whole exchange and writes the caller's response
//! itself. pingora-proxy's phases would send the request header before the body is signed
//! and the response header before the body is verified (`docs/pingora.md` §1-3), so
//! nxgate does not pay for a proxy loop it would skip (§11).
//!
//! Each step returns `Result<_, GatewayError>`; the only place a `GatewayError` becomes
//! bytes on the wire is `error_reply`, through `errors::ErrorResponse` (whose header set
//! the header-deadline answer in `net::downstream` shares).

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::upstream::UpstreamResponse;
use crate::net::{self, body};
use crate::policy::admission::{self, InFlightSlot, RateDecision, RateState};
use crate::policy::answers;
use crate::policy::exchange::{self, ExchangeReport, Outbound};
use crate::process::lifecycle::{InFlight, Lifecycle};
use crate::process::metrics::{Metrics, NO_TENANT};
use crate::state::{Generation, Live};
use nxgate_core::clock::now_unix_ms;
use nxgate_core::config::{RequestCompression, Tenant};
use nxgate_core::errors::{ErrorResponse, ErrorSource, GatewayError, Refusal, UpstreamFailure};
use nxgate_core::gzip::{self, GzipError};
use nxgate_core::headers::{self, REQUEST_ID_HEADER};
use nxgate_core::signing;

/// Idle time allowed between requests on a caller's keep-alive connection, and per read
/// of the next request header (Pingora's HTTP/1.1 default would be to wait forever).
pub const DOWNSTREAM_KEEPALIVE_SECS: u64 = 60;

pub use crate::net::body::REQUEST_BODY_TIMEOUT;

/// Per-request state, read by the access log.
#[derive(Debug)]
pub struct RequestCtx {
    /// The `requestID` sent upstream; also `reqId` of gateway errors and `x-request-id`.
    pub request_id: String,
    /// When the request arrived.
    pub started: Instant,
    /// Chosen tenant's name, once authenticated.
    pub tenant: Option<String>,
    /// Status sent to the caller.
    pub status: u16,
    /// Upstream status, timing and verification.
    pub exchange: ExchangeReport,
    /// Request body bytes read from the caller.
    pub bytes_in: usize,
    /// Body bytes written to the caller.
    pub bytes_out: usize,
    /// Gateway error kind, if the gateway answered with an error.
    pub error_kind: Option<&'static str>,
    /// How the upstream exchange failed, if that is why the request failed.
    pub upstream_failure: Option<UpstreamFailure>,
    /// Counts this request in flight (process-wide, for draining) until dropped, after
    /// the response is flushed.
    _in_flight: InFlight,
    /// Counts this request in its tenant's `nxgate_in_flight` gauge until dropped.
    tenant_gauge: Option<GaugeGuard>,
    /// Holds one of the tenant's `max_in_flight` slots until dropped.
    tenant_slot: Option<InFlightSlot>,
    /// The tenant's rate-limit state, for the `RateLimit*` headers.
    rate_state: Option<RateState>,
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for GaugeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GaugeGuard")
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

/// The Pingora application: nxgate's request path.
pub struct NxGate {
    live: Live,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    options: HttpServerOptions,
}

impl NxGate {
    /// Serves requests with whatever generation `live` holds at each request's start.
    pub fn new(live: Live, metrics: Arc<Metrics>, lifecycle: Arc<Lifecycle>) -> Self {
        // HTTP/2 with prior knowledge (h2c) on the same ports; HTTP/1 callers are unaffected
        // (Pingora peeks for the h2 preface). An h2 connection with no stream open is closed
        // after the same idle time as an HTTP/1 keep-alive connection.
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(Duration::from_secs(DOWNSTREAM_KEEPALIVE_SECS));
        NxGate { live, metrics, lifecycle, options }
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: signing::new_request_id(),
            started: Instant::now(),
            tenant: None,
            status: 0,
            exchange: ExchangeReport::default(),
            bytes_in: 0,
            bytes_out: 0,
            error_kind: None,
            upstream_failure: None,
            _in_flight: self.lifecycle.request_started(),
            tenant_gauge: None,
            tenant_slot: None,
            rate_state: None,
        }
    }

    /// One request whose header has been read: answer it, log it, and hand the
    /// connection back for the next request if it may be kept.
    async fn serve(&self, mut session: ServerSession, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
        if *shutdown.borrow() {
            // Draining: this response is the connection's last.
            session.set_keepalive(None);
        }
        let mut ctx = self.new_ctx();
        self.respond(&mut session, &mut ctx).await;
        self.log(&session, &ctx);
        let persistent = HttpPersistentSettings::for_session(&session);
        let reused = session.finish().await.ok().flatten();
        // `ctx` (in-flight counts, the tenant's slot) lives until the response is flushed.
        drop(ctx);
        reused.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent))
    }

    /// Runs the whole exchange and writes the caller's response.
    async fn respond(&self, session: &mut ServerSession, ctx: &mut RequestCtx) {
        // One snapshot for the whole request: a reload mid-request changes nothing here.
        let generation = self.live.load_full();
        // Pingora has already applied the caller's wishes (HTTP/1.0, `Connection: close`);
        // only bound the idle time of a connection that stays open.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
        }
        // Boxed once per request: the exchange's future is large, and the futures above it
        // (the per-request one Pingora boxes among them) would each hold and copy it whole.
        let result = Box::pin(handle(&generation, &self.metrics, session, ctx)).await;
        let mut reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                // After a framing or body error the request's end is unknown: whatever the
                // caller sends next cannot be trusted to start a new request, so close.
                if matches!(e, GatewayError::BadRequest(_) | GatewayError::BodyTooLarge { .. }) {
                    session.set_keepalive(None);
                }
                error_reply(&e, ctx)
            }
        };
        if let Some(state) = &ctx.rate_state {
            let h = &mut reply.header;
            h.insert_header("RateLimit-Policy", admission::policy_header(&state.limit)).expect("ascii");
            h.insert_header("RateLimit", admission::state_header(state)).expect("ascii");
        }
        ctx.status = reply.header.status.as_u16();
        let head_request = session.req_header().method == http::Method::HEAD;
        let body_len = reply.body.len();
        if let Err(e) = write_reply(session, reply, head_request).await {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "caller went away before the response was written");
        } else if !head_request {
            ctx.bytes_out = body_len;
        }
    }

    /// One access-log event per request. No secret, client key, query string or body.
    fn log(&self, session: &ServerSession, ctx: &RequestCtx) {
        let req = session.req_header();
        tracing::info!(
            target: crate::process::logging::ACCESS_TARGET,
            tenant = ctx.tenant.as_deref().unwrap_or("-"),
            request_id = %ctx.request_id,
            method = %req.method,
            path = req.uri.path(),
            status = ctx.status,
            upstream_status = ctx.exchange.upstream_status,
            upstream_code = ctx.exchange.upstream_code,
            upstream_code_verified = ctx.exchange.upstream_code.map(|_| ctx.exchange.code_verified),
            duration_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            upstream_ms = ctx.exchange.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            bytes_in = ctx.bytes_in,
            bytes_out = ctx.bytes_out,
            verify = ctx.exchange.verify.as_str(),
            verify_failure = ctx.exchange.verify.failure_reason(),
            error_kind = ctx.error_kind,
            "request"
        );
        self.record(ctx);
    }

    /// Counts the finished request in every metric it touches.
    fn record(&self, ctx: &RequestCtx) {
        let m = &self.metrics;
        let tenant = ctx.tenant.as_deref().unwrap_or(NO_TENANT);
        let status = ctx.status.to_string();
        m.requests.with_label_values(&[tenant, &status, ctx.error_kind.unwrap_or("ok")]).inc();
        m.request_duration.with_label_values(&[tenant]).observe(ctx.started.elapsed().as_secs_f64());
        if let Some(t) = ctx.exchange.upstream_time {
            m.upstream_duration.with_label_values(&[tenant]).observe(t.as_secs_f64());
        }
        if let Some(reason) = ctx.exchange.verify.failure_reason() {
            m.verify_failures.with_label_values(&[tenant, reason]).inc();
        }
        if let Some(failure) = ctx.upstream_failure {
            m.upstream_errors.with_label_values(&[failure.label()]).inc();
        }
    }
}

/// A response ready to send to the caller.
struct Reply {
    header: ResponseHeader,
    body: Bytes,
}

#[async_trait]
impl HttpServerApp for NxGate {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // This future is boxed (by async_trait) per request and freed before the connection
        // idles again: between requests `net::keepalive` holds only the stream. The request's
        // own state is boxed apart, so the header read does not carry (and copy) it.
        let session = net::downstream::next_request(session).await?;
        Box::pin(self.serve(session, shutdown)).await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// The request path proper. Each step may refuse the request with a `GatewayError`.
async fn handle(
    g: &Generation,
    metrics: &Metrics,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Result<Reply, GatewayError> {
    let tenant = authenticate(g, session)?;
    ctx.tenant = Some(tenant.name.clone());
    ctx.tenant_gauge = Some(GaugeGuard::new(metrics.in_flight.with_label_values(&[&tenant.name])));
    let target = route(g, session.req_header())?;
    let declared = check_framing(g, session)?;
    let admitted = match admit(g, &tenant, ctx).await {
        Ok(()) => answers::admit(&g.config, &g.answers, &tenant, now_unix_ms()),
        Err(refused) => Err(refused),
    };
    if let Err(refused) = admitted {
        // A limited caller retries: read its body (bounded as always) so its keep-alive
        // connection survives the 429 instead of being closed with an unread body.
        if !expects_continue(session) {
            let _ = read_body(g, session, declared).await;
        }
        return Err(refused);
    }
    let body = read_body(g, session, declared).await?;
    ctx.bytes_in = body.len();
    let (body, decoded) = decode_body(g, session.req_header(), body)?;

    let req = session.req_header();
    let out = Outbound { method: &req.method, target: &target, headers: &req.headers, decoded };
    let result = exchange::signed_exchange(
        &g.nxcloud,
        &tenant,
        &ctx.request_id,
        out,
        &body,
        g.config.verify_mode,
        &mut ctx.exchange,
    )
    .await;
    answers::observe(&g.config, &g.answers, metrics, &tenant, &ctx.exchange, now_unix_ms());
    Ok(caller_reply(result?, &ctx.request_id))
}

/// Step 1: the tenant this caller is entitled to.
fn authenticate(g: &Generation, session: &ServerSession) -> Result<Arc<Tenant>, GatewayError> {
    let auth = session.req_header().headers.get_all(http::header::AUTHORIZATION);
    g.tenants.select(auth.iter().map(|v| v.as_bytes())).cloned()
}

/// Step 2: the path and query to send upstream, if the path is allowed.
fn route(g: &Generation, req: &RequestHeader) -> Result<String, GatewayError> {
    body::allowed_target(req, &g.config.allow_prefixes)
}

/// Step 3: refuse ambiguous framing and oversized declared bodies before reading a byte.
/// Returns the declared Content-Length, if any.
fn check_framing(g: &Generation, session: &ServerSession) -> Result<Option<usize>, GatewayError> {
    body::check_framing(session, g.config.max_request_body_bytes)
}

/// Step 4: the tenant's concurrency cap, then its rate limit. A refused request is never
/// read, signed or forwarded, and costs no other tenant anything.
async fn admit(g: &Generation, tenant: &Tenant, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let admission = &g.admission;
    let Some(slot) = admission.try_enter(&tenant.name) else {
        admission.count_refusal(&tenant.name, Refusal::InFlight);
        return Err(GatewayError::Overloaded { limit: tenant.max_in_flight.unwrap_or(0) });
    };
    ctx.tenant_slot = Some(slot);
    match admission.check_rate(&tenant.name).await {
        RateDecision::Allowed(state) => {
            ctx.rate_state = state;
            Ok(())
        }
        RateDecision::Limited { retry_after, state } => {
            ctx.rate_state = Some(state);
            admission.count_refusal(&tenant.name, Refusal::Rate);
            Err(GatewayError::RateLimited { retry_after_secs: admission::ceil_secs(retry_after).max(1) })
        }
    }
}

/// Step 5: the whole body, Content-Length or chunked, up to the limit.
async fn read_body(
    g: &Generation,
    session: &mut ServerSession,
    declared: Option<usize>,
) -> Result<Bytes, GatewayError> {
    body::read_body(session, g.config.max_request_body_bytes, declared).await
}

/// Step 5b: with `upstream.request_compression: "decode"`, a gzip body is inflated (never
/// past `max_request_body_bytes`) so that what is signed and sent is the decoded bytes,
/// whose meaning the vendor's rule is clear about. Returns the body and whether it was
/// decoded.
fn decode_body(g: &Generation, req: &RequestHeader, body: Bytes) -> Result<(Bytes, bool), GatewayError> {
    if g.config.upstream.request_compression == RequestCompression::Passthrough {
        return Ok((body, false));
    }
    let mut encodings = req.headers.get_all(http::header::CONTENT_ENCODING).iter();
    let Some(value) = encodings.next() else { return Ok((body, false)) };
    let single = encodings.next().is_none();
    let name = value.to_str().unwrap_or("").trim();
    if single && name.eq_ignore_ascii_case("identity") {
        return Ok((body, false));
    }
    if !single || !(name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) {
        return Err(GatewayError::BadRequest(
            "Content-Encoding other than gzip cannot be decoded (upstream.request_compression is \"decode\")".into(),
        ));
    }
    let limit = g.config.max_request_body_bytes;
    match gzip::decode_bounded(&body, limit) {
        Ok(decoded) => Ok((Bytes::from(decoded), true)),
        Err(GzipError::TooLarge { limit }) => Err(GatewayError::BodyTooLarge { limit }),
        Err(e @ GzipError::Corrupt(_)) => Err(GatewayError::BadRequest(e.to_string())),
    }
}

fn expects_continue(session: &ServerSession) -> bool {
    body::expects_continue(session)
}

/// Step 6: the verified upstream response, reframed for the caller.
fn caller_reply(response: UpstreamResponse, request_id: &str) -> Reply {
    let header = caller_response_header(response.header, request_id, response.body.len());
    Reply { header, body: response.body }
}

/// The upstream's response header as the caller gets it: hop-by-hop and framing headers
/// removed, Content-Length and x-request-id set. Public for the request-path bench.
pub fn caller_response_header(mut h: ResponseHeader, request_id: &str, body_len: usize) -> ResponseHeader {
    for name in headers::unforwardable_response_headers(&h.headers) {
        h.remove_header(&name);
    }
    finish_header(&mut h, request_id, body_len);
    h
}

/// The one place a `GatewayError` is turned into a response.
fn error_reply(e: &GatewayError, ctx: &mut RequestCtx) -> Reply {
    ctx.error_kind = Some(e.kind());
    ctx.upstream_failure = e.upstream_failure();
    let tenant = ctx.tenant.as_deref().unwrap_or(NO_TENANT);
    match e.source() {
        ErrorSource::Caller => {
            tracing::debug!(request_id = %ctx.request_id, kind = e.kind(), error = %e, "request refused")
        }
        ErrorSource::Upstream | ErrorSource::Internal => {
            tracing::warn!(request_id = %ctx.request_id, tenant, kind = e.kind(), error = %e, "gateway error")
        }
    }
    let rendered = ErrorResponse::new(e, &ctx.request_id, now_unix_ms());
    let headers = rendered.headers();
    let mut h = ResponseHeader::build(rendered.status, Some(headers.len())).expect("contract statuses are valid");
    for (name, value) in headers {
        h.insert_header(name, value).expect("the error header set is valid");
    }
    Reply { header: h, body: rendered.body }
}

fn finish_header(h: &mut ResponseHeader, request_id: &str, body_len: usize) {
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string()).expect("number is a valid header");
    h.insert_header(REQUEST_ID_HEADER, request_id).expect("hex id is a valid header");
}

async fn write_reply(session: &mut ServerSession, reply: Reply, head_request: bool) -> pingora::Result<()> {
    session.write_response_header(Box::new(reply.header)).await?;
    if !head_request && !reply.body.is_empty() {
        session.write_response_body(reply.body, true).await?;
    }
    Ok(())
}
