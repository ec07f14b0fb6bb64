//! The gateway's error contract: one enum for everything a caller can be refused with,
//! each carrying whose fault it is, rendered to the wire in exactly one place
//! (`ErrorResponse`: its body and its header set, for every listener).
//!
//! Status, numeric code and kind are a stable, documented contract (README, "Errors");
//! `msg` is for people and may change. Messages never carry secrets, client keys or
//! body bytes: they are built from fixed text plus values the caller already knows.

use bytes::Bytes;

use crate::headers::REQUEST_ID_HEADER;
use crate::verify::VerifyFailure;

/// Header that names the error kind on every gateway-made error response.
pub const ERROR_KIND_HEADER: &str = "x-nxgate-error";

/// Everything the gateway itself can answer a caller with instead of the upstream's response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (framing, smuggling attempt, unreadable body).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No tenant could be chosen for this caller.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller did not send a whole request header within `limits.request_header_timeout_ms`.
    #[error("request header not received within {timeout_ms} ms")]
    RequestHeaderTimeout {
        /// The configured limit.
        timeout_ms: u64,
    },
    /// The path is outside `routes.allow_prefixes`.
    #[error("path is not an allowed route")]
    RouteNotAllowed,
    /// The request body is over `limits.max_request_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The tenant is over its rate limit.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// Whole seconds until a request will be admitted (the `Retry-After` value).
        retry_after_secs: u64,
    },
    /// The tenant already has `max_in_flight` requests in progress.
    #[error("too many requests in flight for this tenant (limit {limit})")]
    Overloaded {
        /// The configured cap.
        limit: u32,
    },
    /// NXCloud said it is busy and the tenant is backing off: refused without reaching it.
    #[error("NXCloud is busy for this tenant; retry after {retry_after_secs} s")]
    UpstreamBusy {
        /// Whole seconds until the next probe may go (the `Retry-After` value).
        retry_after_secs: u64,
    },
    /// The upstream could not be reached (refused, reset, TLS failure, DNS).
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream answered, but its answer did not verify.
    #[error("upstream response failed verification: {failure} (upstream status {upstream_status})")]
    BadUpstreamSignature {
        /// What did not check out.
        failure: VerifyFailure,
        /// The status the upstream sent, for diagnosis.
        upstream_status: u16,
    },
    /// The upstream body is over `limits.max_response_body_bytes`.
    #[error("upstream response exceeds {limit} bytes")]
    UpstreamResponseTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The upstream response was truncated or malformed.
    #[error("bad upstream response: {0}")]
    BadUpstreamResponse(String),
    /// The upstream did not answer within a configured timeout.
    #[error("upstream timeout: {0}")]
    UpstreamTimeout(String),
    /// A callback is not one NXCloud signed for a configured tenant: unknown `uuid`, a
    /// signature header missing, repeated or malformed, a different `algorithm`, or a
    /// `sign` that does not match the exact body.
    #[error("callback refused: {0}")]
    BadCallbackSignature(&'static str),
    /// A callback's `createTs` is too far from the gateway clock.
    #[error("callback createTs is {skew_secs}s from the gateway clock (limit {limit_secs}s)")]
    StaleCallback {
        /// Observed distance.
        skew_secs: u64,
        /// `verify.max_clock_skew_secs`.
        limit_secs: u64,
    },
    /// The same callback (tenant, requestID) is being delivered right now.
    #[error("this callback is already being delivered; retry later")]
    CallbackInProgress,
    /// The replay memory cannot answer (Redis down, or the local memory full), so the
    /// callback is refused rather than risk delivering it twice.
    #[error("replay memory unavailable ({0}); retry later")]
    ReplayStoreUnavailable(&'static str),
    /// The callback receiver refused or reset the connection, or answered garbage.
    #[error("callback receiver unreachable: {0}")]
    CallbackReceiverUnreachable(String),
    /// The callback receiver did not answer within `callbacks.receiver_timeout_ms`.
    #[error("callback receiver timeout: {0}")]
    CallbackReceiverTimeout(String),
    /// A request on an `idempotency.required_paths` path came without `Idempotency-Key`.
    #[error("this path requires an Idempotency-Key header")]
    IdempotencyKeyMissing,
    /// The `Idempotency-Key` header is not 1 to 255 visible ASCII characters (or a quoted
    /// string of them), or appears more than once.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters, sent once")]
    IdempotencyKeyInvalid,
    /// The first request with this key is still in flight.
    #[error("a request with this Idempotency-Key is in progress; retry after 1 s")]
    IdempotencyKeyInProgress,
    /// The key was used for a request with another method, path, query or body.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
}

/// The stable kinds of the error contract, one per [`GatewayError`] variant: the
/// `x-nxgate-error` value and a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `bad_request`: 400 / 40001.
    BadRequest,
    /// `unauthenticated`: 401 / 40101.
    Unauthenticated,
    /// `route_not_allowed`: 404 / 40401.
    RouteNotAllowed,
    /// `request_header_timeout`: 408 / 40801.
    RequestHeaderTimeout,
    /// `body_too_large`: 413 / 41301.
    BodyTooLarge,
    /// `rate_limited`: 429 / 42901.
    RateLimited,
    /// `overloaded`: 429 / 42902.
    Overloaded,
    /// `upstream_busy`: 429 / 42903.
    UpstreamBusy,
    /// `upstream_unreachable`: 502 / 50201.
    UpstreamUnreachable,
    /// `bad_upstream_signature`: 502 / 50202.
    BadUpstreamSignature,
    /// `upstream_response_too_large`: 502 / 50203.
    UpstreamResponseTooLarge,
    /// `bad_upstream_response`: 502 / 50204.
    BadUpstreamResponse,
    /// `upstream_timeout`: 504 / 50401.
    UpstreamTimeout,
    /// `bad_callback_signature`: 401 / 40102.
    BadCallbackSignature,
    /// `stale_callback`: 401 / 40103.
    StaleCallback,
    /// `callback_in_progress`: 409 / 40901.
    CallbackInProgress,
    /// `replay_store_unavailable`: 503 / 50301.
    ReplayStoreUnavailable,
    /// `callback_receiver_unreachable`: 502 / 50205.
    CallbackReceiverUnreachable,
    /// `callback_receiver_timeout`: 504 / 50402.
    CallbackReceiverTimeout,
    /// `idempotency_key_missing`: 400 / 40002.
    IdempotencyKeyMissing,
    /// `idempotency_key_invalid`: 400 / 40003.
    IdempotencyKeyInvalid,
    /// `idempotency_key_in_progress`: 409 / 40902.
    IdempotencyKeyInProgress,
    /// `idempotency_key_reused`: 422 / 42201.
    IdempotencyKeyReused,
}

impl ErrorKind {
    /// Every kind, in the order of the README's error table.
    pub const ALL: [ErrorKind; 23] = [
        ErrorKind::BadRequest,
        ErrorKind::IdempotencyKeyMissing,
        ErrorKind::IdempotencyKeyInvalid,
        ErrorKind::Unauthenticated,
        ErrorKind::RouteNotAllowed,
        ErrorKind::RequestHeaderTimeout,
        ErrorKind::BodyTooLarge,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::UpstreamBusy,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::BadUpstreamSignature,
        ErrorKind::UpstreamResponseTooLarge,
        ErrorKind::BadUpstreamResponse,
        ErrorKind::UpstreamTimeout,
        ErrorKind::BadCallbackSignature,
        ErrorKind::StaleCallback,
        ErrorKind::CallbackInProgress,
        ErrorKind::IdempotencyKeyInProgress,
        ErrorKind::IdempotencyKeyReused,
        ErrorKind::ReplayStoreUnavailable,
        ErrorKind::CallbackReceiverUnreachable,
        ErrorKind::CallbackReceiverTimeout,
    ];

    /// The wire and label form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::RouteNotAllowed => "route_not_allowed",
            ErrorKind::RequestHeaderTimeout => "request_header_timeout",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::UpstreamBusy => "upstream_busy",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::BadUpstreamSignature => "bad_upstream_signature",
            ErrorKind::UpstreamResponseTooLarge => "upstream_response_too_large",
            ErrorKind::BadUpstreamResponse => "bad_upstream_response",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::BadCallbackSignature => "bad_callback_signature",
            ErrorKind::StaleCallback => "stale_callback",
            ErrorKind::CallbackInProgress => "callback_in_progress",
            ErrorKind::ReplayStoreUnavailable => "replay_store_unavailable",
            ErrorKind::CallbackReceiverUnreachable => "callback_receiver_unreachable",
            ErrorKind::CallbackReceiverTimeout => "callback_receiver_timeout",
            ErrorKind::IdempotencyKeyMissing => "idempotency_key_missing",
            ErrorKind::IdempotencyKeyInvalid => "idempotency_key_invalid",
            ErrorKind::IdempotencyKeyInProgress => "idempotency_key_in_progress",
            ErrorKind::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

/// How a callback ended: the `outcome` label of `nxgate_callbacks_total` and of the
/// callback listener's access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Stored in the outbox (queued delivery), answered 200; delivered later.
    Queued,
    /// Already delivered; answered 200 with `x-nxgate-duplicate: true`.
    Duplicate,
    /// The receiver answered, but not 2xx (its answer is passed back).
    ReceiverError,
    /// Refused, or not delivered, with this error.
    Refused(ErrorKind),
}

impl CallbackOutcome {
    /// Every outcome the callback listener can have: the three deliveries and every error
    /// kind its steps can refuse with.
    pub const ALL: [CallbackOutcome; 13] = [
        CallbackOutcome::Delivered,
        CallbackOutcome::Queued,
        CallbackOutcome::Duplicate,
        CallbackOutcome::ReceiverError,
        CallbackOutcome::Refused(ErrorKind::BadCallbackSignature),
        CallbackOutcome::Refused(ErrorKind::StaleCallback),
        CallbackOutcome::Refused(ErrorKind::CallbackInProgress),
        CallbackOutcome::Refused(ErrorKind::CallbackReceiverUnreachable),
        CallbackOutcome::Refused(ErrorKind::CallbackReceiverTimeout),
        CallbackOutcome::Refused(ErrorKind::ReplayStoreUnavailable),
        CallbackOutcome::Refused(ErrorKind::RouteNotAllowed),
        CallbackOutcome::Refused(ErrorKind::BodyTooLarge),
        CallbackOutcome::Refused(ErrorKind::BadRequest),
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Delivered => "delivered",
            CallbackOutcome::Queued => "queued",
            CallbackOutcome::Duplicate => "duplicate",
            CallbackOutcome::ReceiverError => "receiver_error",
            CallbackOutcome::Refused(kind) => kind.as_str(),
        }
    }
}

/// Why admission refused a request: the `kind` label of `nxgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the tenant's rate limit ([`GatewayError::RateLimited`]).
    Rate,
    /// At the tenant's `max_in_flight` ([`GatewayError::Overloaded`]).
    InFlight,
}

impl Refusal {
    /// Both, for exporting each series at zero.
    pub const ALL: [Refusal; 2] = [Refusal::Rate, Refusal::InFlight];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::InFlight => "in_flight",
        }
    }

    /// The error kind the caller is refused with.
    pub fn kind(self) -> ErrorKind {
        match self {
            Refusal::Rate => ErrorKind::RateLimited,
            Refusal::InFlight => ErrorKind::Overloaded,
        }
    }
}

/// Whose fault an error is, as Pingora's `ErrorSource`: it decides the log level (a
/// caller's mistake is routine, an upstream or internal failure is the operator's business)
/// and which metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The caller sent something the gateway refuses.
    Caller,
    /// NXCloud (or the network to it) failed.
    Upstream,
    /// The gateway itself could not do its job.
    Internal,
}

/// How an upstream exchange failed: the bounded `kind` label of
/// `nxgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Refused, reset, TLS or DNS failure.
    Unreachable,
    /// No answer within a timeout.
    Timeout,
    /// The answer was over the size limit.
    TooLarge,
    /// The answer was truncated or not HTTP.
    Malformed,
}

impl UpstreamFailure {
    /// Every value, for exporting each series at zero.
    pub const ALL: [UpstreamFailure; 4] =
        [UpstreamFailure::Unreachable, UpstreamFailure::Timeout, UpstreamFailure::TooLarge, UpstreamFailure::Malformed];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Unreachable => "unreachable",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::TooLarge => "too_large",
            UpstreamFailure::Malformed => "malformed",
        }
    }
}

impl GatewayError {
    /// Whose fault it is.
    pub fn source(&self) -> ErrorSource {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::Unauthenticated(_)
            | GatewayError::RouteNotAllowed
            | GatewayError::RequestHeaderTimeout { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::Overloaded { .. }
            | GatewayError::BadCallbackSignature(_)
            | GatewayError::StaleCallback { .. }
            | GatewayError::CallbackInProgress
            | GatewayError::IdempotencyKeyMissing
            | GatewayError::IdempotencyKeyInvalid
            | GatewayError::IdempotencyKeyInProgress
            | GatewayError::IdempotencyKeyReused => ErrorSource::Caller,
            GatewayError::ReplayStoreUnavailable(_) => ErrorSource::Internal,
            GatewayError::CallbackReceiverUnreachable(_) | GatewayError::CallbackReceiverTimeout(_) => {
                ErrorSource::Upstream
            }
            GatewayError::UpstreamBusy { .. }
            | GatewayError::UpstreamUnreachable(_)
            | GatewayError::BadUpstreamSignature { .. }
            | GatewayError::UpstreamResponseTooLarge { .. }
            | GatewayError::BadUpstreamResponse(_)
            | GatewayError::UpstreamTimeout(_) => ErrorSource::Upstream,
        }
    }

    /// The exchange failure this error stands for, if it is one (a failed verification
    /// is counted by the verification metrics instead).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            GatewayError::UpstreamUnreachable(_) => Some(UpstreamFailure::Unreachable),
            GatewayError::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
            GatewayError::UpstreamResponseTooLarge { .. } => Some(UpstreamFailure::TooLarge),
            GatewayError::BadUpstreamResponse(_) => Some(UpstreamFailure::Malformed),
            _ => None,
        }
    }

    /// The `Retry-After` seconds this refusal tells the caller to wait, if any.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_secs } | GatewayError::UpstreamBusy { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            GatewayError::IdempotencyKeyInProgress => Some(1),
            _ => None,
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.contract().0
    }

    /// Stable numeric code in the JSON body.
    pub fn code(&self) -> u32 {
        self.contract().1
    }

    /// Stable kind: the `x-nxgate-error` header value, and a bounded log/metric label.
    pub fn kind(&self) -> &'static str {
        self.contract().2.as_str()
    }

    /// The kind as a type.
    pub fn error_kind(&self) -> ErrorKind {
        self.contract().2
    }

    fn contract(&self) -> (u16, u32, ErrorKind) {
        match self {
            GatewayError::BadRequest(_) => (400, 40001, ErrorKind::BadRequest),
            GatewayError::Unauthenticated(_) => (401, 40101, ErrorKind::Unauthenticated),
            GatewayError::RouteNotAllowed => (404, 40401, ErrorKind::RouteNotAllowed),
            GatewayError::RequestHeaderTimeout { .. } => (408, 40801, ErrorKind::RequestHeaderTimeout),
            GatewayError::BodyTooLarge { .. } => (413, 41301, ErrorKind::BodyTooLarge),
            GatewayError::RateLimited { .. } => (429, 42901, ErrorKind::RateLimited),
            GatewayError::Overloaded { .. } => (429, 42902, ErrorKind::Overloaded),
            GatewayError::UpstreamBusy { .. } => (429, 42903, ErrorKind::UpstreamBusy),
            GatewayError::UpstreamUnreachable(_) => (502, 50201, ErrorKind::UpstreamUnreachable),
            GatewayError::BadUpstreamSignature { .. } => (502, 50202, ErrorKind::BadUpstreamSignature),
            GatewayError::UpstreamResponseTooLarge { .. } => (502, 50203, ErrorKind::UpstreamResponseTooLarge),
            GatewayError::BadUpstreamResponse(_) => (502, 50204, ErrorKind::BadUpstreamResponse),
            GatewayError::UpstreamTimeout(_) => (504, 50401, ErrorKind::UpstreamTimeout),
            GatewayError::BadCallbackSignature(_) => (401, 40102, ErrorKind::BadCallbackSignature),
            GatewayError::StaleCallback { .. } => (401, 40103, ErrorKind::StaleCallback),
            GatewayError::CallbackInProgress => (409, 40901, ErrorKind::CallbackInProgress),
            GatewayError::ReplayStoreUnavailable(_) => (503, 50301, ErrorKind::ReplayStoreUnavailable),
            GatewayError::CallbackReceiverUnreachable(_) => (502, 50205, ErrorKind::CallbackReceiverUnreachable),
            GatewayError::CallbackReceiverTimeout(_) => (504, 50402, ErrorKind::CallbackReceiverTimeout),
            GatewayError::IdempotencyKeyMissing => (400, 40002, ErrorKind::IdempotencyKeyMissing),
            GatewayError::IdempotencyKeyInvalid => (400, 40003, ErrorKind::IdempotencyKeyInvalid),
            GatewayError::IdempotencyKeyInProgress => (409, 40902, ErrorKind::IdempotencyKeyInProgress),
            GatewayError::IdempotencyKeyReused => (422, 42201, ErrorKind::IdempotencyKeyReused),
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: u32,
    msg: &'a str,
    #[serde(rename = "reqId")]
    req_id: &'a str,
    timestamp: u64,
}

/// A rendered error: what every listener writes to the caller, status, headers and body.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: u16,
    /// `x-nxgate-error` value.
    pub kind: &'static str,
    /// JSON body, `{"code","msg","reqId","timestamp"}` like the upstream's own.
    pub body: Bytes,
    request_id: String,
    retry_after_secs: Option<u64>,
}

impl ErrorResponse {
    /// Renders `err` for the request `req_id` at unix-millisecond time `now_ms`.
    pub fn new(err: &GatewayError, req_id: &str, now_ms: u64) -> Self {
        let msg = err.to_string();
        let body = ErrorBody { code: err.code(), msg: &msg, req_id, timestamp: now_ms };
        let json = serde_json::to_vec(&body).expect("plain struct serializes");
        ErrorResponse {
            status: err.status(),
            kind: err.kind(),
            body: Bytes::from(json),
            request_id: req_id.to_owned(),
            retry_after_secs: err.retry_after_secs(),
        }
    }

    /// The header set of every gateway-made error, in order (names lowercase).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("content-type", "application/json".to_owned()),
            (ERROR_KIND_HEADER, self.kind.to_owned()),
            (REQUEST_ID_HEADER, self.request_id.clone()),
            ("content-length", self.body.len().to_string()),
        ];
        if let Some(secs) = self.retry_after_secs {
            h.push(("retry-after", secs.to_string()));
        }
        h
    }

    /// The whole HTTP/1.1 response, ending the connection, for where no parsed request (and
    /// so no Pingora session) exists to answer through: a header that never completed.
    pub fn to_http1_closing(&self) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status).into_bytes();
        for (name, value) in self.headers() {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<GatewayError> {
        vec![
            GatewayError::BadRequest("x".into()),
            GatewayError::IdempotencyKeyMissing,
            GatewayError::IdempotencyKeyInvalid,
            GatewayError::Unauthenticated("no key"),
            GatewayError::RouteNotAllowed,
            GatewayError::RequestHeaderTimeout { timeout_ms: 1 },
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::RateLimited { retry_after_secs: 1 },
            GatewayError::Overloaded { limit: 1 },
            GatewayError::UpstreamBusy { retry_after_secs: 1 },
            GatewayError::UpstreamUnreachable("refused".into()),
            GatewayError::BadUpstreamSignature { failure: VerifyFailure::SignatureMismatch, upstream_status: 200 },
            GatewayError::UpstreamResponseTooLarge { limit: 1 },
            GatewayError::BadUpstreamResponse("truncated".into()),
            GatewayError::UpstreamTimeout("read".into()),
            GatewayError::BadCallbackSignature("sign does not match"),
            GatewayError::StaleCallback { skew_secs: 301, limit_secs: 300 },
            GatewayError::CallbackInProgress,
            GatewayError::IdempotencyKeyInProgress,
            GatewayError::IdempotencyKeyReused,
            GatewayError::ReplayStoreUnavailable("redis"),
            GatewayError::CallbackReceiverUnreachable("refused".into()),
            GatewayError::CallbackReceiverTimeout("10000 ms".into()),
        ]
    }

    #[test]
    fn the_documented_table_holds() {
        let table: Vec<_> = every_variant().iter().map(|e| (e.status(), e.code(), e.kind())).collect();
        assert_eq!(
            table,
            vec![
                (400, 40001, "bad_request"),
                (400, 40002, "idempotency_key_missing"),
                (400, 40003, "idempotency_key_invalid"),
                (401, 40101, "unauthenticated"),
                (404, 40401, "route_not_allowed"),
                (408, 40801, "request_header_timeout"),
                (413, 41301, "body_too_large"),
                (429, 42901, "rate_limited"),
                (429, 42902, "overloaded"),
                (429, 42903, "upstream_busy"),
                (502, 50201, "upstream_unreachable"),
                (502, 50202, "bad_upstream_signature"),
                (502, 50203, "upstream_response_too_large"),
                (502, 50204, "bad_upstream_response"),
                (504, 50401, "upstream_timeout"),
                (401, 40102, "bad_callback_signature"),
                (401, 40103, "stale_callback"),
                (409, 40901, "callback_in_progress"),
                (409, 40902, "idempotency_key_in_progress"),
                (422, 42201, "idempotency_key_reused"),
                (503, 50301, "replay_store_unavailable"),
                (502, 50205, "callback_receiver_unreachable"),
                (504, 50402, "callback_receiver_timeout"),
            ]
        );
    }

    #[test]
    fn every_kind_is_listed_once_in_the_table_order() {
        let kinds: Vec<_> = every_variant().iter().map(|e| e.error_kind()).collect();
        assert_eq!(kinds, ErrorKind::ALL);
        assert_eq!(ErrorKind::ALL.map(ErrorKind::as_str).iter().collect::<std::collections::HashSet<_>>().len(), 23);
    }

    #[test]
    fn callback_outcomes_are_distinct_and_refusals_name_their_error_kind() {
        let labels: std::collections::HashSet<_> = CallbackOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), CallbackOutcome::ALL.len());
        assert_eq!(CallbackOutcome::Refused(ErrorKind::StaleCallback).as_str(), "stale_callback");
        assert_eq!(Refusal::Rate.kind().as_str(), GatewayError::RateLimited { retry_after_secs: 1 }.kind());
        assert_eq!(Refusal::InFlight.kind().as_str(), GatewayError::Overloaded { limit: 1 }.kind());
    }

    #[test]
    fn body_has_the_upstream_shape() {
        let e = GatewayError::BadUpstreamSignature { failure: VerifyFailure::RequestIdMismatch, upstream_status: 200 };
        let r = ErrorResponse::new(&e, "abc", 1_700_000_000_000);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], 50202);
        assert_eq!(v["reqId"], "abc");
        assert_eq!(v["timestamp"], 1_700_000_000_000u64);
        let msg = v["msg"].as_str().unwrap();
        assert!(msg.contains("requestID") && msg.contains("200"), "{msg}");
        assert_eq!(v.as_object().unwrap().len(), 4);
    }

    #[test]
    fn a_closing_http1_response_parses_and_carries_the_same_body() {
        let e = GatewayError::RequestHeaderTimeout { timeout_ms: 10_000 };
        let r = ErrorResponse::new(&e, "rid", 1);
        let raw = r.to_http1_closing();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = parsed.parse(&raw).unwrap() else { panic!("incomplete") };
        assert_eq!((parsed.code, parsed.reason), (Some(408), Some("Request Timeout")));
        let get = |n: &str| parsed.headers.iter().find(|h| h.name == n).map(|h| std::str::from_utf8(h.value).unwrap());
        assert_eq!(get("connection"), Some("close"));
        assert_eq!(get(ERROR_KIND_HEADER), Some("request_header_timeout"));
        assert_eq!(get("x-request-id"), Some("rid"));
        assert_eq!(get("content-length"), Some(r.body.len().to_string().as_str()));
        assert_eq!(&raw[head_len..], &r.body[..]);
        let v: serde_json::Value = serde_json::from_slice(&raw[head_len..]).unwrap();
        assert_eq!(v["code"], 40801);
    }

    #[test]
    fn every_error_says_whose_fault_it_is() {
        for e in every_variant() {
            // A busy upstream refuses with 429 although it is not the caller's doing.
            let expected = match e.status() {
                _ if e.kind() == "upstream_busy" => ErrorSource::Upstream,
                ..=499 => ErrorSource::Caller,
                503 => ErrorSource::Internal,
                _ => ErrorSource::Upstream,
            };
            assert_eq!(e.source(), expected, "{e:?}");
        }
    }

    #[test]
    fn upstream_failures_map_to_their_metric_labels() {
        let labels: Vec<_> = every_variant().iter().filter_map(|e| e.upstream_failure()).map(|f| f.label()).collect();
        assert_eq!(labels, ["unreachable", "too_large", "malformed", "timeout"]);
        assert_eq!(UpstreamFailure::ALL.map(|f| f.label()), ["unreachable", "timeout", "too_large", "malformed"]);
    }

    #[test]
    fn one_header_set_for_every_error_and_retry_after_only_when_told_to_wait() {
        for e in every_variant() {
            let r = ErrorResponse::new(&e, "rid", 1);
            let names: Vec<_> = r.headers().into_iter().map(|(n, _)| n).collect();
            let mut expected = vec!["content-type", ERROR_KIND_HEADER, "x-request-id", "content-length"];
            if matches!(
                e,
                GatewayError::RateLimited { .. }
                    | GatewayError::UpstreamBusy { .. }
                    | GatewayError::IdempotencyKeyInProgress
            ) {
                expected.push("retry-after");
            }
            assert_eq!(names, expected, "{e:?}");
        }
        let r = ErrorResponse::new(&GatewayError::RateLimited { retry_after_secs: 7 }, "rid", 1);
        assert_eq!(r.headers().last().unwrap(), &("retry-after", "7".to_owned()));
    }
}
