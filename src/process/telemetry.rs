//! Traces: OpenTelemetry spans of each proxied request and each callback, exported over
//! OTLP/HTTP (JSON) by the SDK's batch processor when `telemetry.otlp_endpoint` is set.
//!
//! The request path only builds spans and hands finished ones to the processor's bounded
//! queue (at most [`MAX_QUEUED_SPANS`]; more are dropped, never waited for); export runs
//! on the processor's own thread, so a collector that is slow or down costs requests
//! nothing. With telemetry off no tracer is installed and every [`Trace`] is empty: a
//! request pays one branch per step, no allocation and no clock read.
//!
//! The spans are the OpenTelemetry API's own, not `tracing` spans through
//! `tracing-opentelemetry`: the log subscriber would otherwise see (and the text format
//! print) every request-path span, and the request path would pay the subscriber's span
//! bookkeeping with telemetry off.
//!
//! Propagation is W3C Trace Context: a caller's `traceparent`/`tracestate` is continued,
//! and a callback's receiver gets the `traceparent` of its delivery attempt. Attributes
//! are names, ids, statuses and outcomes; never a secret, a client key or a body.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use nxgate_core::config::TelemetryConfig;

/// Most finished spans waiting for export; more are dropped.
pub const MAX_QUEUED_SPANS: usize = 2048;

/// How long the processor waits before exporting a partial batch.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// One export's limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracer, once telemetry is installed (never with telemetry off).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Why telemetry cannot start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// Flushes and stops the exporter when dropped (at exit).
pub struct Installed(SdkTracerProvider);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.0.shutdown_with_timeout(EXPORT_TIMEOUT);
    }
}

/// Installs the exporter `config` asks for (none without an endpoint). Call once, at
/// start, outside any async runtime (the exporter's HTTP client is a blocking one, used
/// on the processor's thread).
pub fn install(config: &TelemetryConfig) -> Result<Option<Installed>, TelemetryError> {
    let Some(url) = &config.traces_url else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let batch =
        BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).with_scheduled_delay(EXPORT_EVERY).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
        .build();
    if TRACER.set(provider.tracer("nxgate")).is_err() {
        tracing::warn!("telemetry was already installed; keeping the first exporter");
    }
    Ok(Some(Installed(provider)))
}

/// Whether spans are recorded.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A span in progress, or nothing (telemetry off, or not sampled). Ends when dropped.
#[derive(Default)]
pub struct Trace(Option<Context>);

/// Reads headers for the propagator.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Collects what the propagator writes.
struct Written(Vec<(String, String)>);

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Parses one `traceparent` value as a parent context.
fn parent_from(traceparent: &str) -> Context {
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(traceparent) {
        h.insert("traceparent", v);
    }
    TraceContextPropagator::new().extract(&Headers(&h))
}

impl Trace {
    /// Nothing: what every constructor returns with telemetry off.
    pub fn none() -> Self {
        Trace(None)
    }

    /// A server span for a request that arrived with `headers`, continuing the caller's
    /// W3C trace if it sent one.
    pub fn server(name: &'static str, headers: &http::HeaderMap) -> Self {
        let Some(tracer) = TRACER.get() else { return Trace::none() };
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        Self::start(tracer, name, SpanKind::Server, &parent, None)
    }

    /// A span whose parent is the span a `traceparent` names (a stored callback's intake),
    /// or a new trace without one.
    pub fn from_traceparent(name: &'static str, kind: SpanKind, traceparent: Option<&str>) -> Self {
        let Some(tracer) = TRACER.get() else { return Trace::none() };
        let parent = traceparent.map(parent_from).unwrap_or_default();
        Self::start(tracer, name, kind, &parent, None)
    }

    /// A child span of this one, starting now (or at `at`).
    pub fn child(&self, name: &'static str, kind: SpanKind, at: Option<SystemTime>) -> Self {
        match (&self.0, TRACER.get()) {
            (Some(parent), Some(tracer)) => Self::start(tracer, name, kind, parent, at),
            _ => Trace::none(),
        }
    }

    fn start(tracer: &SdkTracer, name: &'static str, kind: SpanKind, parent: &Context, at: Option<SystemTime>) -> Self {
        let mut builder = tracer.span_builder(name).with_kind(kind);
        if let Some(at) = at {
            builder = builder.with_start_time(at);
        }
        let span = builder.start_with_context(tracer, parent);
        Trace(Some(parent.with_span(span)))
    }

    /// Whether this is a span being recorded (so attributes are worth computing).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    /// Sets one attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with a reason (an error kind, never a body).
    pub fn fail(&self, reason: &str) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(reason.to_owned()));
        }
    }

    /// Ends the span now (or at `at`).
    pub fn end(self, at: Option<SystemTime>) {
        if let Some(cx) = &self.0 {
            match at {
                Some(t) => cx.span().end_with_timestamp(t),
                None => cx.span().end(),
            }
        }
    }

    /// The `traceparent` of this span, to hand to the next hop.
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut out = Written(Vec::new());
        TraceContextPropagator::new().inject_context(cx, &mut out);
        out.0.into_iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v)
    }

    /// The trace id (32 hex digits), for the access log.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // A span not ended explicitly (an early return) still ends, now.
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}
