//! Traces against the real binary: an OTLP/HTTP (JSON) collector in the test receives the
//! spans of a proxied request and of a queued callback, with the caller's W3C trace
//! continued, the documented attributes, and nothing secret; with the collector down,
//! requests are unaffected.

mod common;

use common::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A trace id and parent span id, as an instrumented caller (or NXCloud) would send them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{PARENT_SPAN}-01")
}

/// Each export's path and raw body.
type Exports = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP collector: records each export's raw JSON body and answers 200 `{}`.
#[derive(Clone, Default)]
struct Collector {
    addr: Option<SocketAddr>,
    bodies: Exports,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = Collector { addr: Some(listener.local_addr().unwrap()), ..Default::default() };
        let bodies = c.bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let bodies = bodies.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buf = Vec::new();
                    while let Some(req) = receiver::read_request(&mut stream, &mut buf) {
                        bodies.lock().unwrap().push((req.path.clone(), req.body));
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        c
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    /// Every span received so far, flattened from the OTLP JSON.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for (_, body) in self.bodies.lock().unwrap().iter() {
            let doc: Value = serde_json::from_slice(body).expect("OTLP/HTTP JSON");
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }

    /// The spans of `trace_id` once `names` are all among them (the exporter batches
    /// every second).
    fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<Value> =
                self.spans().into_iter().filter(|s| s["traceId"].as_str() == Some(trace_id)).collect();
            let have = |n: &str| spans.iter().any(|s| s["name"] == n);
            if names.iter().all(|n| have(n)) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans {names:?} of {trace_id} not all received: {spans:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn raw(&self) -> String {
        self.bodies.lock().unwrap().iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect()
    }

    fn resource_service_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, body) in self.bodies.lock().unwrap().iter() {
            let doc: Value = serde_json::from_slice(body).unwrap();
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                for a in rs["resource"]["attributes"].as_array().into_iter().flatten() {
                    if a["key"] == "service.name" {
                        out.push(a["value"]["stringValue"].as_str().unwrap_or("").to_owned());
                    }
                }
            }
        }
        out
    }
}

fn span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
}

/// An attribute's value, whatever its OTLP JSON type, as a string.
fn attr(span: &Value, key: &str) -> Option<String> {
    let a = span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?;
    let v = &a["value"];
    ["stringValue", "intValue", "boolValue", "doubleValue"].iter().find_map(|t| match &v[t] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    })
}

fn gateway(emu: &Emulator, receiver: &TestReceiver, telemetry: &str) -> Gateway {
    gateway_delivering(emu, receiver, telemetry, "queued")
}

fn gateway_delivering(emu: &Emulator, receiver: &TestReceiver, telemetry: &str, delivery: &str) -> Gateway {
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_top = format!(
        "{telemetry}state:\n  kind: \"memory\"\ncallbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{}\"\n  \
         delivery: \"{delivery}\"\n  allow_prefixes: [\"/hooks/\"]\n",
        receiver.url()
    );
    Gateway::start_yaml(&opts.yaml(any_port()))
}

/// Posts one signed callback of tenant A with the caller's `traceparent`.
fn post_callback(gw: &Gateway, request_id: &str, body: &[u8]) -> Response {
    let mut headers = signed(Account::A, body, request_id);
    headers.push(("traceparent".into(), traceparent(TRACE_ID)));
    send_to(gw.callbacks[0], "/hooks/order", &headers, body)
}

fn telemetry_block(endpoint: &str) -> String {
    format!("telemetry:\n  otlp_endpoint: \"{endpoint}\"\n  service_name: \"nxgate-test\"\n")
}

#[test]
fn a_proxied_request_continues_the_callers_trace_with_a_span_per_step() {
    let emu = Emulator::start();
    let collector = Collector::start();
    let receiver = TestReceiver::start();
    let gw = gateway(&emu, &receiver, &telemetry_block(&collector.url()));
    let tp = traceparent(TRACE_ID);
    let resp = gw.ping_a(&[("traceparent", &tp), ("tracestate", "vendor=x")], "body-marker-trace-1");
    assert_eq!(resp.status, 200);

    let names = ["nxgate.proxy", "authenticate", "admit", "sign", "upstream exchange", "verify"];
    let spans = collector.wait_for(TRACE_ID, &names);
    let root = span(&spans, "nxgate.proxy");
    assert_eq!(root["parentSpanId"], PARENT_SPAN, "the caller's span is the parent: {root:#}");
    assert_eq!(root["kind"], 2, "SERVER");
    let root_id = root["spanId"].as_str().unwrap();
    for child in &names[1..] {
        assert_eq!(span(&spans, child)["parentSpanId"], root_id, "{child} is a step of the request");
    }
    assert_eq!(span(&spans, "upstream exchange")["kind"], 3, "CLIENT");
    assert_eq!(attr(root, "nxgate.tenant").as_deref(), Some("tenant-a"));
    assert_eq!(attr(root, "url.path").as_deref(), Some("/callcentre/api/v3/ping"));
    assert_eq!(attr(root, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(root, "nxgate.vendor_code").as_deref(), Some("0"));
    assert_eq!(attr(root, "nxgate.verify").as_deref(), Some("passed"));
    let request_id = resp.header("x-request-id").unwrap();
    assert_eq!(attr(root, "nxgate.request_id").as_deref(), Some(request_id));
    assert!(collector.resource_service_names().iter().all(|n| n == "nxgate-test"));

    // The access log names the trace.
    assert!(gw.log().contains(&format!("trace_id=\"{TRACE_ID}\"")), "{}", gw.log());

    // A refused request is traced too, its reason on the span.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let refused = gw.post("/callcentre/api/v3/ping", &[("traceparent", &traceparent(other))], b"{}");
    assert_eq!(refused.status, 401);
    let spans = collector.wait_for(other, &["nxgate.proxy"]);
    let root = span(&spans, "nxgate.proxy");
    assert_eq!(attr(root, "error.type").as_deref(), Some("unauthenticated"));
    assert_eq!(root["status"]["code"], 2, "ERROR: {root:#}");

    assert_nothing_secret(&collector);
}

#[test]
fn a_queued_callback_is_traced_from_intake_to_each_delivery_attempt_and_the_receiver_gets_traceparent() {
    let emu = Emulator::start();
    let collector = Collector::start();
    let receiver = TestReceiver::start();
    let gw = gateway(&emu, &receiver, &telemetry_block(&collector.url()));
    let body = br#"{"orderID":"o-1","finish":true,"other":"body-marker-trace-2"}"#;
    let resp = post_callback(&gw, "cb-trace-1", body);
    assert_eq!(resp.status, 200);

    let spans = collector.wait_for(TRACE_ID, &["nxgate.callback", "verify", "store", "nxgate.callback.delivery"]);
    let intake = span(&spans, "nxgate.callback");
    assert_eq!(intake["parentSpanId"], PARENT_SPAN, "NXCloud's trace is continued");
    assert_eq!(attr(intake, "nxgate.outcome").as_deref(), Some("queued"));
    assert_eq!(attr(intake, "nxgate.request_id").as_deref(), Some("cb-trace-1"));
    assert_eq!(attr(intake, "nxgate.tenant").as_deref(), Some("tenant-a"));
    let intake_id = intake["spanId"].as_str().unwrap();
    for step in ["verify", "store"] {
        assert_eq!(span(&spans, step)["parentSpanId"], intake_id);
    }
    let attempt = span(&spans, "nxgate.callback.delivery");
    assert_eq!(attempt["parentSpanId"], intake_id, "the attempt is a child of the intake");
    assert_eq!(attr(attempt, "nxgate.attempt").as_deref(), Some("1"));
    assert_eq!(attr(attempt, "nxgate.result").as_deref(), Some("delivered"));
    assert!(attr(attempt, "nxgate.webhook_id").is_some_and(|id| id.starts_with("msg_")));

    // The receiver got the attempt's traceparent.
    let delivered = receiver.seen();
    assert_eq!(delivered.len(), 1);
    let got = delivered[0].header("traceparent").expect("the delivery carries traceparent");
    assert_eq!(got, format!("00-{TRACE_ID}-{}-01", attempt["spanId"].as_str().unwrap()));

    assert_nothing_secret(&collector);
}

#[test]
fn a_direct_callback_is_traced_and_its_delivery_carries_traceparent() {
    let emu = Emulator::start();
    let collector = Collector::start();
    let receiver = TestReceiver::start();
    let gw = gateway_delivering(&emu, &receiver, &telemetry_block(&collector.url()), "direct");
    let body = br#"{"orderID":"o-2","other":"body-marker-trace-2"}"#;
    assert_eq!(post_callback(&gw, "cb-trace-direct", body).status, 200);
    let spans = collector.wait_for(TRACE_ID, &["nxgate.callback", "verify", "deliver"]);
    let intake = span(&spans, "nxgate.callback");
    assert_eq!(attr(intake, "nxgate.outcome").as_deref(), Some("delivered"));
    let deliver = span(&spans, "deliver");
    assert_eq!(deliver["parentSpanId"], intake["spanId"]);
    assert_eq!(attr(deliver, "http.response.status_code").as_deref(), Some("200"));
    let got = receiver.seen()[0].header("traceparent").map(str::to_owned);
    assert_eq!(got, Some(format!("00-{TRACE_ID}-{}-01", deliver["spanId"].as_str().unwrap())));
    assert_nothing_secret(&collector);
}

/// No span carries a secret, a client key or a body (the bodies above carry markers).
fn assert_nothing_secret(collector: &Collector) {
    let raw = collector.raw();
    for s in NEVER_LOGGED.iter().chain(&["body-marker-trace-1", "body-marker-trace-2"]) {
        assert!(!raw.contains(s), "an exported span carries {s:?}");
    }
}

#[test]
fn with_the_collector_down_requests_are_unaffected() {
    let emu = Emulator::start();
    let receiver = TestReceiver::start();
    let closed = client::ClosedPort::new().unwrap();
    let gw = gateway(&emu, &receiver, &telemetry_block(&format!("http://{}", closed.addr)));
    let started = Instant::now();
    for i in 0..50 {
        let r = gw.ping_a(&[("traceparent", &traceparent(TRACE_ID))], &format!("n{i}"));
        assert_eq!(r.status, 200);
    }
    // 50 pings on loopback take well under a second each; an exporter in the path would
    // show as seconds of waiting per request.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    // And exits cleanly (flushing to nobody) when asked to.
    drop(gw);
}

#[test]
fn without_telemetry_no_span_is_sent_and_the_log_has_no_trace_id() {
    let emu = Emulator::start();
    let receiver = TestReceiver::start();
    let gw = gateway(&emu, &receiver, "");
    let r = gw.ping_a(&[("traceparent", &traceparent(TRACE_ID))], "off");
    assert_eq!(r.status, 200);
    assert!(!gw.log().contains("trace_id="), "{}", gw.log());
}
