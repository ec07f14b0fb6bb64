//! The proxy flow, top to bottom in the order a request travels:
//! authenticate → route → frame → admit (concurrency, rate, busy back-off) → read body →
//! sign → forward → read response → verify → respond.
//!
//! It runs inside the request shell (`shell`), which reads the request, renders refusals,
//! and orders metrics, the answer and the access event. pingora-proxy's phases would send
//! the request header before the body is signed and the response header before the body
//! is verified (`docs/pingora.md` §1-3), so nxgate does not pay for a proxy loop it would
//! skip (§11): the shell is a pingora-core `HttpServerApp`.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;

use crate::net::body;
use crate::policy::admission::{self, InFlightSlot, RateDecision, RateState};
use crate::policy::answers;
use crate::policy::exchange::{self, ExchangeReport, Outbound, Phases};
use crate::process::metrics::KeyOutcome;
use crate::process::telemetry::Trace;
use crate::shell::{self, Flow, Reply, Request, Settling};
use crate::state::{Generation, Live, Snapshot, TenantRecord};
use crate::store::{self, Answer, KeyClaim};
use nxgate_core::clock::now_unix_ms;
use nxgate_core::config::{GatewayConfig, RequestCompression};
use nxgate_core::errors::{GatewayError, Refusal};
use nxgate_core::gzip::{self, GzipError};
use nxgate_core::idempotency;
use opentelemetry::trace::SpanKind;

/// The proxy's state for one request, read by its metrics and access event.
pub struct ProxyCtx {
    /// The generation the request started under, and its tenant once authenticated.
    at: Snapshot,
    /// Upstream status, timing and verification.
    exchange: ExchangeReport,
    /// Counts this request in its tenant's `nxgate_in_flight` gauge until dropped.
    _gauge: Option<GaugeGuard>,
    /// Holds one of the tenant's `max_in_flight` slots until dropped.
    _slot: Option<InFlightSlot>,
    /// The tenant's rate-limit state, for the `RateLimit*` headers.
    rate_state: Option<RateState>,
    /// Its trace's root span (empty with telemetry off); ends when the request does.
    trace: Trace,
    /// What its `Idempotency-Key` found, if it sent one.
    key_outcome: Option<KeyOutcome>,
    /// The key this request holds (it was new): its answer is recorded, or the key let
    /// go, before the caller gets the answer.
    held: Option<HeldKey>,
}

/// An `Idempotency-Key` claimed by the request in flight.
struct HeldKey {
    key: String,
    token: String,
}

/// How much longer than `upstream.total_timeout_ms` a key stays claimed by a request
/// whose process died (the body read and admission come before the exchange).
pub const KEY_CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The proxy flow: caller → NXCloud → caller.
pub struct Proxy(pub Live);

#[async_trait]
impl Flow for Proxy {
    type Ctx = ProxyCtx;
    const LISTENER: &'static str = "proxy";

    fn start(&self) -> ProxyCtx {
        ProxyCtx {
            at: Snapshot::of(&self.0),
            exchange: ExchangeReport::default(),
            _gauge: None,
            _slot: None,
            rate_state: None,
            trace: Trace::none(),
            key_outcome: None,
            held: None,
        }
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        req: &mut Request,
        ctx: &mut ProxyCtx,
    ) -> Result<Reply, GatewayError> {
        // This future is boxed once per request (by `async_trait`): the exchange's future is
        // large, and the futures above it would each hold and copy it whole.
        handle(session, req, ctx).await
    }

    fn tenant<'c>(&self, ctx: &'c ProxyCtx) -> Option<&'c str> {
        ctx.at.tenant_name()
    }

    fn decorate(&self, ctx: &ProxyCtx, reply: &mut Reply) {
        let (Some(state), Some(record)) = (&ctx.rate_state, ctx.at.record()) else { return };
        let h = &mut reply.header;
        if let Some(policy) = record.admission.policy() {
            h.insert_header("RateLimit-Policy", policy.clone()).expect("a valid value");
        }
        h.insert_header("RateLimit", admission::state_header(state)).expect("a valid value");
    }

    fn settle<'a>(&'a self, ctx: &'a mut ProxyCtx, reply: &'a Reply) -> Option<Settling<'a>> {
        let held = ctx.held.take()?;
        Some(Box::pin(settle_key(ctx, held, reply)))
    }

    fn record(&self, req: &Request, ctx: &ProxyCtx) {
        let elapsed = req.started.elapsed().as_secs_f64();
        if let Some(failure) = req.upstream_failure {
            ctx.at.g.metrics.upstream_errors.with_label_values(&[failure.label()]).inc();
        }
        let Some(record) = ctx.at.record() else {
            ctx.at.g.metrics.anonymous_request(req.status, req.outcome(), elapsed);
            return;
        };
        let m = &record.metrics;
        m.request(&ctx.at.g.metrics, req.status, req.outcome());
        m.request_duration.observe(elapsed);
        if let Some(t) = ctx.exchange.upstream_time {
            m.upstream_duration.observe(t.as_secs_f64());
        }
        if let Some(reason) = ctx.exchange.verify.failure_reason() {
            m.verify_failure(reason);
        }
    }

    fn log(&self, session: &ServerSession, req: &Request, ctx: &ProxyCtx) {
        let header = session.req_header();
        if ctx.trace.is_recording() {
            annotate(&ctx.trace, header, req, ctx);
        }
        tracing::info!(
            target: crate::process::logging::ACCESS_TARGET,
            tenant = self.tenant(ctx).unwrap_or("-"),
            request_id = %req.id,
            method = %header.method,
            path = header.uri.path(),
            status = req.status,
            upstream_status = ctx.exchange.upstream_status,
            upstream_code = ctx.exchange.upstream_code,
            upstream_code_verified = ctx.exchange.upstream_code.map(|_| ctx.exchange.code_verified),
            duration_ms = req.started.elapsed().as_secs_f64() * 1e3,
            upstream_ms = ctx.exchange.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            bytes_in = req.bytes_in,
            bytes_out = req.bytes_out,
            verify = ctx.exchange.verify.as_str(),
            verify_failure = ctx.exchange.verify.failure_reason(),
            error_kind = req.outcome(),
            idempotency = ctx.key_outcome.map(KeyOutcome::as_str),
            trace_id = ctx.trace.trace_id(),
            "request"
        );
    }
}

/// The root span's attributes, once the request is answered: who, what, how it ended.
fn annotate(trace: &Trace, header: &RequestHeader, req: &Request, ctx: &ProxyCtx) {
    trace.set("http.request.method", header.method.as_str().to_owned());
    trace.set("url.path", header.uri.path().to_owned());
    trace.set("http.response.status_code", i64::from(req.status));
    trace.set("nxgate.request_id", req.id.clone());
    if let Some(tenant) = ctx.at.tenant_name() {
        trace.set("nxgate.tenant", tenant.to_owned());
    }
    if let Some(code) = ctx.exchange.upstream_code {
        trace.set("nxgate.vendor_code", code);
        trace.set("nxgate.vendor_code_verified", ctx.exchange.code_verified);
    }
    if let Some(status) = ctx.exchange.upstream_status {
        trace.set("nxgate.upstream_status", i64::from(status));
    }
    trace.set("nxgate.verify", ctx.exchange.verify.as_str());
    if let Some(reason) = ctx.exchange.verify.failure_reason() {
        trace.set("nxgate.verify_failure", reason);
    }
    if let Some(outcome) = ctx.key_outcome {
        trace.set("nxgate.idempotency", outcome.as_str());
    }
    if let Some(kind) = req.outcome() {
        trace.set("error.type", kind);
        trace.fail(kind);
    }
}

/// Before a keyed request's answer goes out: if the request may have reached NXCloud (its
/// header was written), the answer is recorded for the key's retries; otherwise the key
/// is let go, so a retry proceeds. A store that cannot record leaves the claim to expire:
/// until then retries get 409, never a second call.
async fn settle_key(ctx: &ProxyCtx, held: HeldKey, reply: &Reply) {
    let Some(record) = ctx.at.record() else { return };
    let (outbox, uuid) = (&ctx.at.g.outbox, record.tenant.uuid.as_str());
    let result = if ctx.exchange.written {
        let answer = Answer {
            status: reply.header.status.as_u16(),
            headers: reply.header.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
            body: reply.body.clone(),
        };
        let retention = ctx.at.g.config.idempotency.retention;
        outbox.complete_key(uuid, &held.key, &held.token, &answer, retention, store::now_ms()).await
    } else {
        outbox.release_key(uuid, &held.key, &held.token).await
    };
    if let Err(e) = result {
        tracing::warn!(tenant = record.tenant.name.as_str(), error = %e, "cannot settle an Idempotency-Key; its retries get 409 until its claim expires");
    }
}

/// A recorded answer, replayed: the same status, headers and body bytes, marked.
fn replay(answer: Answer) -> Reply {
    let mut h = ResponseHeader::build(answer.status, Some(answer.headers.len() + 1)).expect("a recorded status");
    for (name, value) in answer.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(&value)) {
            let _ = h.append_header(n, v);
        }
    }
    h.insert_header(idempotency::REPLAYED_HEADER, "true").expect("static");
    Reply { header: h, body: answer.body }
}

/// The exchange's three child spans (sign, upstream exchange, verify), from the times
/// it took: the exchange itself reads no clock for them unless telemetry is on.
fn exchange_spans(trace: &Trace, phases: &Phases) {
    let steps = [
        ("sign", SpanKind::Internal, phases.signing, phases.sent),
        ("upstream exchange", SpanKind::Client, phases.sent, phases.answered),
        ("verify", SpanKind::Internal, phases.answered, phases.verified),
    ];
    for (name, kind, start, end) in steps {
        if let (Some(start), Some(end)) = (start, end) {
            trace.child(name, kind, Some(start)).end(Some(end));
        }
    }
}

/// The request path proper. Each step may refuse the request with a `GatewayError`.
async fn handle(session: &mut ServerSession, req: &mut Request, ctx: &mut ProxyCtx) -> Result<Reply, GatewayError> {
    let g = ctx.at.g.clone();
    ctx.trace = Trace::server("nxgate.proxy", &session.req_header().headers);
    let step = ctx.trace.child("authenticate", SpanKind::Internal, None);
    let position = authenticate(&g, session)?;
    step.end(None);
    ctx.at.tenant = Some(position);
    let record = g.record(position);
    ctx._gauge = Some(GaugeGuard::new(&record.metrics.in_flight));
    let target = body::allowed_target(session.req_header(), &g.config.allow_prefixes)?;
    let key = idempotency::key(&session.req_header().headers)?.map(str::to_owned);
    if key.is_none() && g.config.idempotency.required_paths.iter().any(|p| p == session.req_header().uri.path()) {
        return Err(GatewayError::IdempotencyKeyMissing);
    }
    let limit = g.config.max_request_body_bytes;
    let declared = body::check_framing(session, limit)?;
    // A keyed request is read first: its fingerprint needs the body, and a replay must
    // spend no rate-limit token.
    let mut read = None;
    if let Some(key) = key {
        let body = Box::pin(body::read_body(session, limit, declared)).await?;
        req.bytes_in = body.len();
        let (body, decoded) = decode_body(&g.config, session.req_header(), body)?;
        // Boxed: the store's future would otherwise size this one for every request.
        let claimed = Box::pin(claim_key(&g, record, ctx, key, session.req_header(), &target, &body)).await?;
        if let Some(answer) = claimed {
            return Ok(replay(answer));
        }
        read = Some((body, decoded));
    }
    let step = ctx.trace.child("admit", SpanKind::Internal, None);
    let admitted = match admit(&g, record, ctx).await {
        Ok(()) => answers::admit(g.config.upstream.busy_backoff.as_ref(), &record.answers, now_unix_ms()),
        Err(refused) => Err(refused),
    };
    if let Err(refused) = &admitted {
        step.fail(refused.kind());
    }
    step.end(None);
    if let Err(refused) = admitted {
        // A limited caller retries: read its body (bounded as always) so its keep-alive
        // connection survives the 429 instead of being closed with an unread body.
        if read.is_none() && !body::expects_continue(session) {
            let _ = Box::pin(body::read_body(session, limit, declared)).await;
        }
        return Err(refused);
    }
    let (body, decoded) = match read {
        Some(read) => read,
        None => {
            // Boxed, as above: the body read (Pingora's, every protocol's path inline) is
            // over before the exchange, which should not carry its size.
            let body = Box::pin(body::read_body(session, limit, declared)).await?;
            req.bytes_in = body.len();
            decode_body(&g.config, session.req_header(), body)?
        }
    };

    let header = session.req_header();
    let out = Outbound { method: &header.method, target: &target, headers: &header.headers, decoded };
    let tenant = &record.tenant;
    let verify = g.config.verify_mode;
    if ctx.trace.is_recording() {
        ctx.exchange.phases = Some(Phases::default());
    }
    let result = exchange::signed_exchange(&g.nxcloud, tenant, &req.id, out, &body, verify, &mut ctx.exchange).await;
    if let Some(phases) = &ctx.exchange.phases {
        exchange_spans(&ctx.trace, phases);
    }
    let backoff = g.config.upstream.busy_backoff.as_ref();
    let backing_off = &g.metrics.backoff_tenants;
    answers::observe(backoff, &record.answers, &record.metrics, backing_off, &ctx.exchange, now_unix_ms());
    let response = result?;
    let header = shell::reframe(response.header, &req.id, response.body.len());
    Ok(Reply { header, body: response.body })
}

/// Step 3b, for a request with an `Idempotency-Key`: claims the key for this request, or
/// answers from what it holds (the first answer to replay, or a refusal).
async fn claim_key(
    g: &Generation,
    record: &TenantRecord,
    ctx: &mut ProxyCtx,
    key: String,
    header: &RequestHeader,
    target: &str,
    body: &Bytes,
) -> Result<Option<Answer>, GatewayError> {
    let fingerprint = idempotency::fingerprint(header.method.as_str(), target, body);
    let in_flight = g.config.upstream.total_timeout + KEY_CLAIM_MARGIN;
    let claim = g.outbox.claim_key(&record.tenant.uuid, &key, &fingerprint, in_flight, store::now_ms()).await;
    let claim = claim.map_err(|e| {
        tracing::error!(tenant = record.tenant.name.as_str(), error = %e, "cannot claim an Idempotency-Key");
        GatewayError::ReplayStoreUnavailable("the state store cannot answer")
    })?;
    let (outcome, result) = match claim {
        KeyClaim::New(token) => {
            ctx.held = Some(HeldKey { key, token });
            (KeyOutcome::New, Ok(None))
        }
        KeyClaim::Replay(answer) => (KeyOutcome::Replayed, Ok(Some(answer))),
        KeyClaim::InProgress => (KeyOutcome::InProgress, Err(GatewayError::IdempotencyKeyInProgress)),
        KeyClaim::Reused => (KeyOutcome::Reused, Err(GatewayError::IdempotencyKeyReused)),
    };
    ctx.key_outcome = Some(outcome);
    record.metrics.key(outcome);
    result
}

/// Step 1: the position of the tenant this caller is entitled to.
fn authenticate(g: &Generation, session: &ServerSession) -> Result<usize, GatewayError> {
    let auth = session.req_header().headers.get_all(http::header::AUTHORIZATION);
    g.tenants.select_position(auth.iter().map(|v| v.as_bytes()))
}

/// Step 4: the tenant's concurrency cap, then its rate limit. A refused request is never
/// read, signed or forwarded, and costs no other tenant anything.
async fn admit(g: &Generation, record: &TenantRecord, ctx: &mut ProxyCtx) -> Result<(), GatewayError> {
    let Some(slot) = record.admission.try_enter() else {
        record.metrics.refusal(Refusal::InFlight);
        return Err(GatewayError::Overloaded { limit: record.tenant.max_in_flight.unwrap_or(0) });
    };
    ctx._slot = Some(slot);
    match g.rates.check(&record.admission).await {
        RateDecision::Allowed(state) => {
            ctx.rate_state = state;
            Ok(())
        }
        RateDecision::Limited { retry_after, state } => {
            ctx.rate_state = Some(state);
            record.metrics.refusal(Refusal::Rate);
            Err(GatewayError::RateLimited { retry_after_secs: admission::ceil_secs(retry_after).max(1) })
        }
    }
}

/// Step 5b: with `upstream.request_compression: "decode"`, a gzip body is inflated (never
/// past `max_request_body_bytes`) so that what is signed and sent is the decoded bytes,
/// whose meaning the vendor's rule is clear about. Returns the body and whether it was
/// decoded.
fn decode_body(config: &GatewayConfig, req: &RequestHeader, body: Bytes) -> Result<(Bytes, bool), GatewayError> {
    if config.upstream.request_compression == RequestCompression::Passthrough {
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
    let limit = config.max_request_body_bytes;
    match gzip::decode_bounded(&body, limit) {
        Ok(decoded) => Ok((Bytes::from(decoded), true)),
        Err(GzipError::TooLarge { limit }) => Err(GatewayError::BodyTooLarge { limit }),
        Err(e @ GzipError::Corrupt(_)) => Err(GatewayError::BadRequest(e.to_string())),
    }
}
