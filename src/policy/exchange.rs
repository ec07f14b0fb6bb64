//! One signed exchange with NXCloud: sign the exact body, send it, read the whole
//! answer, verify it. The proxy runs it for every request; `nxgate ping` runs it to
//! prove a tenant's credentials. One implementation, so a passing ping means the proxy
//! path works too.

use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora::http::RequestHeader;
use std::time::{Duration, Instant, SystemTime};

use nxgate_core::clock::now_unix;
use nxgate_core::vendor;

use crate::net::upstream::{self, Upstream, UpstreamResponse};
use nxgate_core::config::{GatewayConfig, Tenant, VerifyMode};
use nxgate_core::errors::GatewayError;
use nxgate_core::headers;
use nxgate_core::replay::Idempotency;
use nxgate_core::routes;
use nxgate_core::signing::{self, SignedHeaders};
use nxgate_core::verify::{self, Expectation};

/// What happened to a response's signature check; a bounded label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyOutcome {
    /// No upstream response was checked (the request failed earlier, or mode is `off`).
    #[default]
    NotChecked,
    /// The response verified.
    Passed,
    /// The response failed and was refused (`enforce`).
    Refused(&'static str),
    /// The response failed but was passed on (`report`).
    Reported(&'static str),
}

impl VerifyOutcome {
    /// Label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            VerifyOutcome::NotChecked => "not_checked",
            VerifyOutcome::Passed => "passed",
            VerifyOutcome::Refused(_) => "refused",
            VerifyOutcome::Reported(_) => "reported",
        }
    }

    /// The failure reason, if verification failed.
    pub fn failure_reason(&self) -> Option<&'static str> {
        match self {
            VerifyOutcome::Refused(r) | VerifyOutcome::Reported(r) => Some(r),
            _ => None,
        }
    }
}

/// The caller-side facts of a request to forward.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path and query, exactly as forwarded.
    pub target: &'a str,
    /// The caller's headers (filtered here before sending).
    pub headers: &'a HeaderMap,
    /// The body was decoded from the caller's `Content-Encoding`: that header is not sent.
    pub decoded: bool,
}

/// Facts about the exchange for logs and metrics, filled in as far as it got.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeReport {
    /// Status the upstream sent, if it answered.
    pub upstream_status: Option<u16>,
    /// Time spent in the upstream exchange.
    pub upstream_time: Option<Duration>,
    /// Verification result.
    pub verify: VerifyOutcome,
    /// The answer's top-level `code` / `retCode`, if it had one.
    pub upstream_code: Option<i64>,
    /// Whether that code came in an answer that verified (else it is only a clue).
    pub code_verified: bool,
    /// The answer's `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
    /// Whether the request header was ever written whole to NXCloud: from then on the
    /// request may have reached it (an `Idempotency-Key`'s answer is recorded).
    pub written: bool,
    /// When each phase ended, for the trace's child spans: taken only when the caller
    /// sets this to `Some` (telemetry on), so the request path reads no clock otherwise.
    pub phases: Option<Phases>,
}

/// Wall-clock times of a signed exchange's phases (a trace's span times).
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// Signing started.
    pub signing: Option<SystemTime>,
    /// Signed; the request goes out.
    pub sent: Option<SystemTime>,
    /// The answer is in (or the exchange failed); verification starts.
    pub answered: Option<SystemTime>,
    /// Verified (or refused).
    pub verified: Option<SystemTime>,
}

/// Records `now` into one phase, when phases are being taken.
fn mark(report: &mut ExchangeReport, phase: fn(&mut Phases) -> &mut Option<SystemTime>) {
    if let Some(p) = report.phases.as_mut() {
        *phase(p) = Some(SystemTime::now());
    }
}

/// Everything one signed exchange needs and nothing more: NXCloud's connection pool and
/// the rules of the exchange. Built once per config generation; `nxgate ping` builds one
/// on its own.
pub struct Nxcloud {
    /// The connector, pool and trust roots.
    pub upstream: Upstream,
    /// `routes.idempotent_paths`: what may be sent again after it was written.
    idempotent_paths: Vec<String>,
    /// `limits.max_response_body_bytes`.
    max_response_body_bytes: usize,
    /// `verify.max_clock_skew_secs`.
    max_clock_skew_secs: u64,
}

impl Nxcloud {
    /// The exchange `config` describes.
    pub fn new(config: &GatewayConfig) -> Self {
        Nxcloud {
            upstream: Upstream::new(config.upstream.clone()),
            idempotent_paths: config.idempotent_paths.clone(),
            max_response_body_bytes: config.max_response_body_bytes,
            max_clock_skew_secs: config.max_clock_skew_secs,
        }
    }
}

/// Signs, sends and verifies one request for `tenant`.
pub async fn signed_exchange(
    g: &Nxcloud,
    tenant: &Tenant,
    request_id: &str,
    out: Outbound<'_>,
    body: &Bytes,
    mode: VerifyMode,
    report: &mut ExchangeReport,
) -> Result<UpstreamResponse, GatewayError> {
    mark(report, |p| &mut p.signing);
    let signed = sign(tenant, request_id, now_unix().as_secs(), body);
    // Built here first so a header that cannot be built is refused before anything is sent;
    // a retry rebuilds it from the same inputs, which therefore cannot fail then.
    let mut first = Some(Box::new(upstream_request(g.upstream.authority(), out, &signed, body.len())?));
    let header = || {
        first.take().unwrap_or_else(|| {
            Box::new(
                upstream_request(g.upstream.authority(), out, &signed, body.len())
                    .expect("built from these same inputs once already"),
            )
        })
    };

    // Sent again after it was written only if the endpoint is listed as idempotent: most
    // of NXCloud's endpoints dial real people (nxgate_core::replay).
    let idempotency = if routes::is_idempotent(out.target, &g.idempotent_paths) {
        Idempotency::Idempotent
    } else {
        Idempotency::NotIdempotent
    };
    mark(report, |p| &mut p.sent);
    let sent_at = Instant::now();
    let result =
        g.upstream.send_tracked(header, body, g.max_response_body_bytes, idempotency, &mut report.written).await;
    report.upstream_time = Some(sent_at.elapsed());
    mark(report, |p| &mut p.answered);
    let response = result?;
    report.upstream_status = Some(response.header.status.as_u16());
    // Read before verification so that even a refused answer says what NXCloud claims
    // (for logs and metrics only; the caller never gets an unverified body).
    report.upstream_code = vendor::read_code(&response.body);
    report.retry_after = crate::policy::answers::retry_after(&response.header.headers);

    let verdict = check_response(g, tenant, &signed, &response, mode);
    mark(report, |p| &mut p.verified);
    report.verify = match &verdict {
        Ok(outcome) => *outcome,
        Err(GatewayError::BadUpstreamSignature { failure, .. }) => VerifyOutcome::Refused(failure.reason()),
        Err(_) => VerifyOutcome::NotChecked,
    };
    report.code_verified = report.verify == VerifyOutcome::Passed;
    verdict?;
    Ok(response)
}

/// The five signature headers over the exact body bytes.
fn sign(tenant: &Tenant, request_id: &str, now: u64, body: &[u8]) -> SignedHeaders {
    signing::sign_request(&tenant.secret, tenant.algorithm, body, now, request_id, &tenant.uuid)
}

/// The header sent upstream: the caller's end-to-end headers, then Host (`authority`),
/// `Accept-Encoding: identity`, signature and framing headers set by the gateway. Public for the request-path bench.
pub fn upstream_request(
    authority: &str,
    out: Outbound<'_>,
    signed: &SignedHeaders,
    body_len: usize,
) -> Result<RequestHeader, GatewayError> {
    let internal = |e: Box<pingora::Error>| {
        GatewayError::BadRequest(format!("cannot build upstream request: {}", e.etype().as_str()))
    };
    let forwarded = headers::forwardable_request_headers(out.headers).filter(|(name, _)| {
        // The answer is verified over the bytes received, and the vendor does not say
        // which bytes the sign of a compressed answer covers: ask for identity, always.
        !(out.decoded && *name == http::header::CONTENT_ENCODING) && *name != http::header::ACCEPT_ENCODING
    });
    let mut h = upstream::request_header(out.method, out.target, forwarded, out.headers.len() + 6, authority, body_len)
        .map_err(internal)?;
    h.insert_header(http::header::ACCEPT_ENCODING, "identity").map_err(internal)?;
    for (name, value) in signed.pairs() {
        h.insert_header(name, value).map_err(internal)?;
    }
    Ok(h)
}

/// Verifies the response according to `mode`.
fn check_response(
    g: &Nxcloud,
    tenant: &Tenant,
    signed: &SignedHeaders,
    response: &UpstreamResponse,
    mode: VerifyMode,
) -> Result<VerifyOutcome, GatewayError> {
    if mode == VerifyMode::Off {
        return Ok(VerifyOutcome::NotChecked);
    }
    let expect = Expectation {
        request_id: &signed.request_id,
        uuid: &tenant.uuid,
        algorithm: signed.algorithm,
        secret: &tenant.secret,
        max_clock_skew_secs: g.max_clock_skew_secs,
        now: now_unix().as_secs(),
    };
    let failure = match verify::verify_response(&expect, &response.header.headers, &response.body) {
        Ok(()) => return Ok(VerifyOutcome::Passed),
        Err(f) => f,
    };
    let upstream_status = response.header.status.as_u16();
    if mode == VerifyMode::Report {
        tracing::warn!(
            tenant = %tenant.name,
            request_id = %signed.request_id,
            reason = failure.reason(),
            upstream_status,
            "upstream response failed verification; passed on because verify.mode is report"
        );
        return Ok(VerifyOutcome::Reported(failure.reason()));
    }
    Err(GatewayError::BadUpstreamSignature { failure, upstream_status })
}
