//! Prometheus metrics.
//!
//! Every label value is bounded: tenant names come from the config (plus `-` for callers
//! no tenant was chosen for), everything else is a fixed enum or a status code the
//! gateway itself sent. Nothing a caller sends (path, header, key) becomes a label, so a
//! caller can never create new series.

use nxgate_core::errors::{CallbackOutcome, Refusal, UpstreamFailure};
use nxgate_core::signing::Algorithm;
use nxgate_core::verify::VerifyFailure;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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
    /// The listeners' edge: connections refused or cut before HTTP (`net::edge`).
    pub edge: EdgeMetrics,
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
        Metrics {
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
            edge,
        }
    }

    /// Exports every callback series of `tenants` (and `-`) at zero.
    pub fn export_callback_series<'a>(&self, tenants: impl Iterator<Item = &'a str>) {
        for tenant in std::iter::once(NO_TENANT).chain(tenants) {
            for outcome in CallbackOutcome::ALL {
                self.callbacks.with_label_values(&[tenant, outcome.as_str()]);
            }
            self.callback_delivery_duration.with_label_values(&[tenant]);
        }
    }

    /// Exports every series known from the config at zero, so a fresh gateway's first
    /// scrape has every family (an absent series reads as "no data", not as 0, and a
    /// `rate()` over its first increment is lost). Per tenant: its `ok` requests (the
    /// other status/outcome pairs are only known once they happen), both histograms, the
    /// in-flight gauge, every verification failure reason, both rate-limit kinds, every
    /// vendor code label and the busy counter. Called for each config generation, so
    /// tenants added on reload appear at once.
    pub fn register_tenants<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) {
        for tenant in tenants {
            self.requests.with_label_values(&[tenant, "200", "ok"]);
            self.request_duration.with_label_values(&[tenant]);
            self.upstream_duration.with_label_values(&[tenant]);
            self.in_flight.with_label_values(&[tenant]);
            for reason in verify_reasons() {
                self.verify_failures.with_label_values(&[tenant, reason]);
            }
            for refusal in Refusal::ALL {
                self.rate_limited.with_label_values(&[tenant, refusal.as_str()]);
            }
            for code in nxgate_core::vendor::all_labels() {
                self.upstream_codes.with_label_values(&[tenant, code]);
            }
            self.upstream_busy.with_label_values(&[tenant]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
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
