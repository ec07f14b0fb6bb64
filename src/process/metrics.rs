//! Prometheus metrics.
//!
//! Every label value is bounded: tenant names come from the config (plus `-` for callers
//! no tenant was chosen for), everything else is a fixed enum or a status code the
//! gateway itself sent. Nothing a caller sends (path, header, key) becomes a label, so a
//! caller can never create new series.

use crate::net::redis::{RedisFailure, RedisMetrics};
use nxgate_core::errors::{CallbackOutcome, Refusal, UpstreamFailure};
use nxgate_core::signing::Algorithm;
use nxgate_core::verify::VerifyFailure;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Label for requests no tenant was chosen for (refused before authentication succeeded).
pub const NO_TENANT: &str = "-";

/// Every `reason` label of `nxgate_verify_failures_total`. The match makes adding a
/// `VerifyFailure` variant without listing it here a compile error.
fn verify_reasons() -> [&'static str; 10] {
    use VerifyFailure as V;
    let all = [
        V::MissingHeader(""),
        V::DuplicateHeader(""),
        V::UnreadableHeader(""),
        V::RequestIdMismatch,
        V::UuidMismatch,
        V::UnknownAlgorithm,
        V::AlgorithmMismatch { expected: Algorithm::Md5, got: Algorithm::Md5 },
        V::MalformedTimestamp,
        V::StaleTimestamp { skew_secs: 0, limit_secs: 0 },
        V::SignatureMismatch,
    ];
    for f in &all {
        match f {
            V::MissingHeader(_)
            | V::DuplicateHeader(_)
            | V::UnreadableHeader(_)
            | V::RequestIdMismatch
            | V::UuidMismatch
            | V::UnknownAlgorithm
            | V::AlgorithmMismatch { .. }
            | V::MalformedTimestamp
            | V::StaleTimestamp { .. }
            | V::SignatureMismatch => {}
        }
    }
    all.map(|f| f.reason())
}

/// Latency buckets in seconds: sub-millisecond gateway work up to the 60 s total timeout.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// All of nxgate's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    /// `nxgate_requests_total{tenant,status,outcome}`.
    pub requests: IntCounterVec,
    /// `nxgate_request_duration_seconds{tenant}`.
    pub request_duration: HistogramVec,
    /// `nxgate_upstream_duration_seconds{tenant}`.
    pub upstream_duration: HistogramVec,
    /// `nxgate_verify_failures_total{tenant,reason}`.
    pub verify_failures: IntCounterVec,
    /// `nxgate_rate_limited_total{tenant,kind}`.
    pub rate_limited: IntCounterVec,
    /// `nxgate_in_flight{tenant}`.
    pub in_flight: IntGaugeVec,
    /// `nxgate_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `nxgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `nxgate_rate_limit_backend_errors_total`: Redis calls that failed or timed out.
    pub backend_errors: prometheus::IntCounter,
    /// `nxgate_request_header_timeouts_total`: connections closed at the header deadline.
    pub header_timeouts: prometheus::IntCounter,
    /// `nxgate_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `nxgate_draining`: 1 while shutting down.
    pub draining: IntGauge,
    /// `nxgate_upstream_codes_total{tenant,code}`: NXCloud's `code`/`retCode` (the vendor's
    /// table, else `other`), including codes of answers that failed verification.
    pub upstream_codes: IntCounterVec,
    /// `nxgate_upstream_busy_total{tenant}`: busy answers (code 7, HTTP 429 or 503).
    pub upstream_busy: IntCounterVec,
    /// `nxgate_upstream_backoff_tenants`: tenants backing off after a busy answer now.
    pub backoff_tenants: IntGauge,
    /// `nxgate_callbacks_total{tenant,outcome}`.
    pub callbacks: IntCounterVec,
    /// `nxgate_callback_delivery_duration_seconds{tenant}`: the exchange with the receiver.
    pub callback_delivery_duration: HistogramVec,
    /// `nxgate_redis_up` and `nxgate_redis_errors_total{reason}`.
    pub redis: RedisFamilies,
    /// The listeners' edge: connections refused or cut before HTTP (`net::edge`).
    pub edge: EdgeMetrics,
    /// The callback outbox (queued delivery).
    pub outbox: OutboxFamilies,
    /// `nxgate_idempotency_total{tenant,outcome}`.
    pub idempotency: IntCounterVec,
}

/// How one delivery attempt of the outbox ended: the `result` of
/// `nxgate_callback_delivery_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered 2xx.
    Delivered,
    /// It answered something else.
    ReceiverError,
    /// No whole answer within `callbacks.receiver_timeout_ms`.
    Timeout,
    /// Refused, reset, or not HTTP.
    Unreachable,
}

impl AttemptResult {
    /// Every result, in the order of [`OutboxSeries`]' counters.
    pub const ALL: [AttemptResult; 4] =
        [AttemptResult::Delivered, AttemptResult::ReceiverError, AttemptResult::Timeout, AttemptResult::Unreachable];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::ReceiverError => "receiver_error",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Unreachable => "unreachable",
        }
    }
}

/// What an `Idempotency-Key` found: the `outcome` of `nxgate_idempotency_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// First use: the request proceeds.
    New,
    /// The first request's answer, replayed.
    Replayed,
    /// The first request is still in flight (409).
    InProgress,
    /// Used for another request (422).
    Reused,
}

impl KeyOutcome {
    /// Every outcome, in the order of [`TenantMetrics`]' counters.
    pub const ALL: [KeyOutcome; 4] =
        [KeyOutcome::New, KeyOutcome::Replayed, KeyOutcome::InProgress, KeyOutcome::Reused];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOutcome::New => "new",
            KeyOutcome::Replayed => "replayed",
            KeyOutcome::InProgress => "in_progress",
            KeyOutcome::Reused => "reused",
        }
    }
}

/// The outbox's families (issue 24).
pub struct OutboxFamilies {
    /// `nxgate_callback_queue_depth{tenant}`.
    pub depth: IntGaugeVec,
    /// `nxgate_callback_queue_oldest_seconds{tenant}`.
    pub oldest: IntGaugeVec,
    /// `nxgate_callback_delivery_attempts_total{tenant,result}`.
    pub attempts: IntCounterVec,
    /// `nxgate_callback_dead_letters{tenant}`.
    pub dead: IntGaugeVec,
}

impl OutboxFamilies {
    fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let attempts = IntCounterVec::new(
            Opts::new(
                "nxgate_callback_delivery_attempts_total",
                "Outbox delivery attempts, by tenant and result (delivered, receiver_error, timeout, unreachable).",
            ),
            &["tenant", "result"],
        )
        .expect("valid metric");
        registry.register(Box::new(attempts.clone())).expect("unique metric");
        OutboxFamilies {
            depth: gauge("nxgate_callback_queue_depth", "Callbacks waiting for delivery (in delivery included)."),
            oldest: gauge(
                "nxgate_callback_queue_oldest_seconds",
                "Age of the oldest callback waiting for delivery, seconds (0: none waits).",
            ),
            attempts,
            dead: gauge("nxgate_callback_dead_letters", "Dead letters held (GET /callbacks/dead)."),
        }
    }
}

/// One tenant's outbox series, resolved once per generation.
pub struct OutboxSeries {
    /// Its queue depth.
    pub depth: IntGauge,
    /// Its oldest waiting callback's age.
    pub oldest: IntGauge,
    /// Its dead letters.
    pub dead: IntGauge,
    /// In `AttemptResult::ALL` order.
    attempts: [IntCounter; 4],
}

impl OutboxSeries {
    /// Counts one attempt.
    pub fn attempt(&self, result: AttemptResult) {
        self.attempts[result as usize].inc();
    }
}

/// The Redis connection's families (issue 23), kept in one block.
pub struct RedisFamilies {
    /// `nxgate_redis_up`: 1 while Redis answers, 0 otherwise (and when not used).
    pub up: IntGauge,
    /// `nxgate_redis_errors_total{reason}`: failed connects and calls, by reason.
    pub errors: IntCounterVec,
}

impl RedisFamilies {
    fn new(registry: &Registry) -> Self {
        let up = IntGauge::new("nxgate_redis_up", "1 while Redis answers; 0 while it does not (or is not used).")
            .expect("valid metric");
        registry.register(Box::new(up.clone())).expect("unique metric");
        let errors = IntCounterVec::new(
            Opts::new("nxgate_redis_errors_total", "Failed Redis connects and calls, by reason."),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(errors.clone())).expect("unique metric");
        for reason in RedisFailure::ALL {
            errors.with_label_values(&[reason.as_str()]);
        }
        RedisFamilies { up, errors }
    }
}

impl Metrics {
    /// What a Redis link reports into.
    pub fn redis_metrics(&self) -> RedisMetrics {
        RedisMetrics {
            up: self.redis.up.clone(),
            errors: self.redis.errors.clone(),
            call_errors: self.backend_errors.clone(),
        }
    }
}

/// Every `listener` label of the edge families.
pub const LISTENERS: [&str; 3] = ["proxy", "callbacks", "admin"];

/// Why a connection was closed before HTTP: the `reason` of `nxgate_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A TLS handshake not complete within the header deadline.
    HandshakeTimeout,
    /// The listener already held `limits.max_connections`.
    MaxConnections,
    /// The peer is outside the listener's allowlist.
    SourceNotAllowed,
}

impl CloseReason {
    /// Every reason, for exporting each series at zero.
    pub const ALL: [CloseReason; 3] =
        [CloseReason::HandshakeTimeout, CloseReason::MaxConnections, CloseReason::SourceNotAllowed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::MaxConnections => "max_connections",
            CloseReason::SourceNotAllowed => "source_not_allowed",
        }
    }
}

/// `nxgate_connections_closed_total{listener,reason}` and `nxgate_open_connections{listener}`,
/// every series exported at zero from the start.
pub struct EdgeMetrics {
    /// Connections closed at the edge, by listener and reason.
    pub closed: IntCounterVec,
    /// Connections open now, by listener.
    pub open: IntGaugeVec,
}

impl EdgeMetrics {
    fn new(registry: &Registry) -> Self {
        let closed = IntCounterVec::new(
            Opts::new(
                "nxgate_connections_closed_total",
                "Connections closed before HTTP, by listener and reason (handshake_timeout, max_connections, source_not_allowed).",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(closed.clone())).expect("unique metric");
        let open =
            IntGaugeVec::new(Opts::new("nxgate_open_connections", "Connections open now, by listener."), &["listener"])
                .expect("valid metric");
        registry.register(Box::new(open.clone())).expect("unique metric");
        for listener in LISTENERS {
            open.with_label_values(&[listener]);
            for reason in CloseReason::ALL {
                closed.with_label_values(&[listener, reason.as_str()]);
            }
        }
        EdgeMetrics { closed, open }
    }

    /// The counter of `listener` (one of [`LISTENERS`]) for `reason`.
    pub fn closed(&self, listener: &str, reason: CloseReason) -> prometheus::IntCounter {
        debug_assert!(LISTENERS.contains(&listener), "{listener} is not a listener label");
        self.closed.with_label_values(&[listener, reason.as_str()])
    }

    /// The open-connections gauge of `listener` (one of [`LISTENERS`]).
    pub fn open(&self, listener: &str) -> IntGauge {
        debug_assert!(LISTENERS.contains(&listener), "{listener} is not a listener label");
        self.open.with_label_values(&[listener])
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), &["tenant"])
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let requests = counter(
            "nxgate_requests_total",
            "Requests answered, by tenant, status and outcome.",
            &["tenant", "status", "outcome"],
        );
        let request_duration =
            histogram("nxgate_request_duration_seconds", "Time from request header to response, seconds.");
        let upstream_duration =
            histogram("nxgate_upstream_duration_seconds", "Time spent in the upstream exchange, seconds.");
        let verify_failures = counter(
            "nxgate_verify_failures_total",
            "Upstream responses that failed verification, by reason.",
            &["tenant", "reason"],
        );
        let rate_limited = counter(
            "nxgate_rate_limited_total",
            "Requests refused by a tenant limit (kind: rate | in_flight).",
            &["tenant", "kind"],
        );
        let in_flight = gauge_vec("nxgate_in_flight", "Requests in progress, by tenant.", &["tenant"]);
        let upstream_errors = counter("nxgate_upstream_errors_total", "Failed upstream exchanges, by kind.", &["kind"]);
        let config_reloads =
            counter("nxgate_config_reloads_total", "Config reloads, by result (ok | error).", &["result"]);
        let build_info = gauge_vec("nxgate_build_info", "Always 1; the version label names the build.", &["version"]);
        let backend_errors = prometheus::IntCounter::new(
            "nxgate_rate_limit_backend_errors_total",
            "Rate-limit backend (Redis) calls that failed or timed out.",
        )
        .expect("valid metric");
        registry.register(Box::new(backend_errors.clone())).expect("unique metric");
        let header_timeouts = prometheus::IntCounter::new(
            "nxgate_request_header_timeouts_total",
            "Caller connections closed because a request header was not complete in time.",
        )
        .expect("valid metric");
        registry.register(Box::new(header_timeouts.clone())).expect("unique metric");
        let callbacks = counter(
            "nxgate_callbacks_total",
            "Callbacks answered, by tenant and outcome (delivered, duplicate, receiver_error or the refusal kind).",
            &["tenant", "outcome"],
        );
        let callback_delivery_duration = histogram(
            "nxgate_callback_delivery_duration_seconds",
            "Time spent delivering a callback to its receiver, seconds.",
        );
        let draining =
            IntGauge::new("nxgate_draining", "1 while the gateway drains for shutdown.").expect("valid metric");
        registry.register(Box::new(draining.clone())).expect("unique metric");
        let upstream_codes = counter(
            "nxgate_upstream_codes_total",
            "NXCloud answer codes (code/retCode) by tenant; other = not in the vendor's table.",
            &["tenant", "code"],
        );
        let upstream_busy =
            counter("nxgate_upstream_busy_total", "Busy answers from NXCloud (code 7, HTTP 429/503).", &["tenant"]);
        let backoff_tenants =
            IntGauge::new("nxgate_upstream_backoff_tenants", "Tenants backing off now after NXCloud answered busy.")
                .expect("valid metric");
        registry.register(Box::new(backoff_tenants.clone())).expect("unique metric");
        let edge = EdgeMetrics::new(&registry);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        for failure in UpstreamFailure::ALL {
            upstream_errors.with_label_values(&[failure.label()]);
        }
        let redis = RedisFamilies::new(&registry);
        let outbox = OutboxFamilies::new(&registry);
        let idempotency = counter(
            "nxgate_idempotency_total",
            "Requests with an Idempotency-Key, by tenant and outcome (new, replayed, in_progress, reused).",
            &["tenant", "outcome"],
        );
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds and
        // the rest, read from /proc at each scrape: the dashboard's memory panel.
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");
        Metrics {
            outbox,
            idempotency,
            registry,
            requests,
            request_duration,
            upstream_duration,
            verify_failures,
            rate_limited,
            upstream_codes,
            upstream_busy,
            backoff_tenants,
            in_flight,
            upstream_errors,
            config_reloads,
            backend_errors,
            header_timeouts,
            build_info,
            draining,
            callbacks,
            callback_delivery_duration,
            redis,
            edge,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
    }
}

/// One tenant's series (or `-`'s) with their labels resolved once, when its config
/// generation is built: the request path counts through these handles, with no label
/// hashing. Resolving them exports every series the config makes known at zero, so a
/// fresh gateway's first scrape has every family (an absent series reads as "no data", not
/// as 0, and a `rate()` over its first increment is lost): the `ok` requests (other
/// status/outcome pairs are only known once they happen), both histograms, the in-flight
/// gauge, every verification failure reason, both refusal kinds, every vendor code label,
/// the busy counter and every callback outcome (with `-`'s callback series, which the
/// generation resolves apart).
pub struct TenantMetrics {
    name: String,
    /// `nxgate_requests_total{tenant,"200","ok"}`, the common case.
    requests_ok: IntCounter,
    /// `nxgate_request_duration_seconds{tenant}`.
    pub request_duration: Histogram,
    /// `nxgate_upstream_duration_seconds{tenant}`.
    pub upstream_duration: Histogram,
    /// `nxgate_in_flight{tenant}`.
    pub in_flight: IntGauge,
    /// In `verify_reasons()` order.
    verify_failures: [IntCounter; 10],
    /// In `Refusal::ALL` order.
    refusals: [IntCounter; 2],
    /// In `vendor::all_labels()` order.
    upstream_codes: Vec<IntCounter>,
    /// `nxgate_upstream_busy_total{tenant}`.
    pub upstream_busy: IntCounter,
    /// Its callbacks' series.
    pub callbacks: CallbackSeries,
    /// Its outbox's series.
    pub outbox: OutboxSeries,
    /// In `KeyOutcome::ALL` order.
    idempotency: [IntCounter; 4],
}

/// The callback series of one tenant, or of `-` (callbacks that named no tenant).
pub struct CallbackSeries {
    /// In `CallbackOutcome::ALL` order.
    outcomes: [IntCounter; 13],
    /// `nxgate_callback_delivery_duration_seconds{tenant}`.
    pub delivery_duration: Histogram,
}

impl CallbackSeries {
    /// Counts a callback's outcome.
    pub fn outcome(&self, outcome: CallbackOutcome) {
        if let Some(i) = CallbackOutcome::ALL.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
    }
}

impl TenantMetrics {
    /// The tenant's name, as its series are labelled.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts one answered request.
    pub fn request(&self, m: &Metrics, status: u16, outcome: Option<&'static str>) {
        match (status, outcome) {
            (200, None) => self.requests_ok.inc(),
            (status, outcome) => {
                m.requests.with_label_values(&[&self.name, &status.to_string(), outcome.unwrap_or("ok")]).inc()
            }
        }
    }

    /// Counts a response that failed verification for `reason`.
    pub fn verify_failure(&self, reason: &'static str) {
        if let Some(i) = verify_reasons().iter().position(|r| *r == reason) {
            self.verify_failures[i].inc();
        }
    }

    /// Counts what an `Idempotency-Key` found.
    pub fn key(&self, outcome: KeyOutcome) {
        self.idempotency[outcome as usize].inc();
    }

    /// Counts an admission refusal.
    pub fn refusal(&self, refusal: Refusal) {
        self.refusals[refusal as usize].inc();
    }

    /// Counts NXCloud's answer code (`None`: no code in the answer is not counted).
    pub fn upstream_code(&self, code: i64) {
        self.upstream_codes[nxgate_core::vendor::label_index(Some(code))].inc();
    }
}

impl Metrics {
    /// Resolves (and so exports at zero) every series of tenant `name`.
    pub fn tenant(&self, name: &str) -> TenantMetrics {
        TenantMetrics {
            name: name.to_owned(),
            requests_ok: self.requests.with_label_values(&[name, "200", "ok"]),
            request_duration: self.request_duration.with_label_values(&[name]),
            upstream_duration: self.upstream_duration.with_label_values(&[name]),
            in_flight: self.in_flight.with_label_values(&[name]),
            verify_failures: verify_reasons().map(|r| self.verify_failures.with_label_values(&[name, r])),
            refusals: Refusal::ALL.map(|r| self.rate_limited.with_label_values(&[name, r.as_str()])),
            upstream_codes: nxgate_core::vendor::all_labels()
                .map(|code| self.upstream_codes.with_label_values(&[name, code]))
                .collect(),
            upstream_busy: self.upstream_busy.with_label_values(&[name]),
            callbacks: self.callback_series(name),
            outbox: OutboxSeries {
                depth: self.outbox.depth.with_label_values(&[name]),
                oldest: self.outbox.oldest.with_label_values(&[name]),
                dead: self.outbox.dead.with_label_values(&[name]),
                attempts: AttemptResult::ALL.map(|r| self.outbox.attempts.with_label_values(&[name, r.as_str()])),
            },
            idempotency: KeyOutcome::ALL.map(|o| self.idempotency.with_label_values(&[name, o.as_str()])),
        }
    }

    /// Resolves (and so exports at zero) the callback series of `name`.
    pub fn callback_series(&self, name: &str) -> CallbackSeries {
        CallbackSeries {
            outcomes: CallbackOutcome::ALL.map(|o| self.callbacks.with_label_values(&[name, o.as_str()])),
            delivery_duration: self.callback_delivery_duration.with_label_values(&[name]),
        }
    }

    /// Counts an answered request no tenant was chosen for (refused before authentication
    /// succeeded): a rare path, so its series are made when first used.
    pub fn anonymous_request(&self, status: u16, outcome: Option<&'static str>, seconds: f64) {
        self.requests.with_label_values(&[NO_TENANT, &status.to_string(), outcome.unwrap_or("ok")]).inc();
        self.request_duration.with_label_values(&[NO_TENANT]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scrape of a fresh gateway is tested end to end in tests/operations.rs; here
    /// only that the reason list matches the verifier's labels one to one.
    #[test]
    fn verify_reasons_are_distinct() {
        let reasons = verify_reasons();
        let set: std::collections::HashSet<_> = reasons.iter().collect();
        assert_eq!(set.len(), reasons.len(), "{reasons:?}");
    }
}
