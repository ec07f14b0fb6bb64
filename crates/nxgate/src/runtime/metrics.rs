//! Prometheus metrics.
//!
//! Every label value is bounded: tenant names come from the config (plus `-` for callers
//! no tenant was chosen for), everything else is a fixed enum or a status code the
//! gateway itself sent. Nothing a caller sends (path, header, key) becomes a label, so a
//! caller can never create new series.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label for requests no tenant was chosen for (refused before authentication succeeded).
pub const NO_TENANT: &str = "-";

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
    /// `nxgate_callbacks_total{tenant,outcome}`.
    pub callbacks: IntCounterVec,
    /// `nxgate_callback_delivery_duration_seconds{tenant}`: the exchange with the receiver.
    pub callback_delivery_duration: HistogramVec,
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
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            verify_failures,
            rate_limited,
            in_flight,
            upstream_errors,
            config_reloads,
            backend_errors,
            header_timeouts,
            build_info,
            draining,
            callbacks,
            callback_delivery_duration,
        }
    }

    /// Exports every callback series of `tenants` (and `-`) at zero.
    pub fn export_callback_series<'a>(&self, tenants: impl Iterator<Item = &'a str>) {
        for tenant in std::iter::once(NO_TENANT).chain(tenants) {
            for outcome in crate::callbacks::OUTCOMES {
                self.callbacks.with_label_values(&[tenant, outcome]);
            }
            self.callback_delivery_duration.with_label_values(&[tenant]);
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

    #[test]
    fn every_documented_metric_is_exposed() {
        let m = Metrics::new();
        m.requests.with_label_values(&["a", "200", "ok"]).inc();
        m.request_duration.with_label_values(&["a"]).observe(0.01);
        m.upstream_duration.with_label_values(&["a"]).observe(0.01);
        m.verify_failures.with_label_values(&["a", "sign_mismatch"]).inc();
        m.rate_limited.with_label_values(&["a", "rate"]).inc();
        m.in_flight.with_label_values(&["a"]).set(0);
        m.upstream_errors.with_label_values(&["timeout"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "nxgate_requests_total{",
            "nxgate_request_duration_seconds_bucket{",
            "nxgate_upstream_duration_seconds_bucket{",
            "nxgate_verify_failures_total{",
            "nxgate_rate_limited_total{",
            "nxgate_in_flight{",
            "nxgate_upstream_errors_total{",
            "nxgate_config_reloads_total{result=\"ok\"} 0",
            "nxgate_build_info{version=",
            "nxgate_draining 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
