//! Speaking the real API: NXCloud's own answer codes, back-pressure after "busy", and gzip
//! request bodies, against the real binary and the emulator (whose request counter says
//! what reached it).

mod common;

use common::*;
use nxgate_emulator::{EmulatorConfig, GzipSign};
use nxgate_testkit::refsign::{self, Digest};
use serde_json::{json, Value};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

const PING: &str = "/callcentre/api/v3/ping";

/// What the emulator has received so far.
fn received(emu: &Emulator) -> Value {
    client::request(emu.addr, "GET", "/_emulator/requests", &[], b"").unwrap().json()
}

fn pings_received(emu: &Emulator) -> u64 {
    received(emu)["by_path"][PING].as_u64().unwrap_or(0)
}

fn ping_b(gw: &Gateway, data: &str) -> Response {
    let auth = format!("Bearer {KEY_B}");
    gw.post(PING, &[("authorization", &auth)], format!(r#"{{"data":"{data}"}}"#).as_bytes())
}

/// An upstream that answers every request with `body`, correctly signed (reference
/// signer) for the request's requestID, uuid and algorithm, as tenant A's account.
fn signed_answerer(body: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut req = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                        let get = |n: &str| {
                            req.headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(n))
                                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                        };
                        let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        if buf.len() >= head + len {
                            seen.fetch_add(1, Ordering::SeqCst);
                            let (rid, uuid) = (get("requestID").unwrap_or_default(), get("uuid").unwrap_or_default());
                            let digest = get("algorithm").and_then(|a| Digest::from_header(&a)).unwrap_or(Digest::Md5);
                            let ts = unix_now().to_string();
                            let sign = refsign::sign(digest, SECRET_A.as_bytes(), body.as_bytes(), &ts, &rid, &uuid);
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nrequestID: {rid}\r\nuuid: {uuid}\r\ncreateTs: {ts}\r\nsign: {sign}\r\nalgorithm: {}\r\n\r\n{body}",
                                body.len(),
                                digest.name()
                            );
                            if stream.write_all(answer.as_bytes()).is_err() {
                                return;
                            }
                            buf.drain(..head + len);
                            continue;
                        }
                    }
                    match std::io::Read::read(&mut stream, &mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, count)
}

#[test]
fn a_verified_6003_is_counted_per_request_and_alarmed_once_a_minute() {
    let (addr, count) = signed_answerer(r#"{"retCode":6003,"retMsg":"no permission","responseID":"r1"}"#);
    let gw = Gateway::start(&GatewayOptions::new(format!("http://{addr}")));
    for _ in 0..4 {
        let r = gw.post_a("/callcentre/api/v3/listTask", br#"{"productID":"callbot"}"#);
        // Verified: the caller gets NXCloud's answer as it is.
        assert_eq!((r.status, r.json()["retCode"].clone()), (200, json!(6003)));
    }
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert_eq!(gw.metric(r#"nxgate_upstream_codes_total{code="6003",tenant="tenant-a"}"#), 4.0);
    // The request counter is written after the answer is sent (Pingora's logging phase).
    let series = r#"nxgate_requests_total{outcome="ok",status="200",tenant="tenant-a"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric(series) < 4.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(gw.metric(series), 4.0, "counted as a 200 ok, with the vendor code beside it");
    let log = gw.log();
    let alarms: Vec<&str> =
        log.lines().filter(|l| l.contains("NXCloud refused this tenant's request with code 6003")).collect();
    assert_eq!(alarms.len(), 1, "one ERROR line per minute per tenant, not one per request");
    assert!(
        alarms[0].contains("ERROR") && alarms[0].contains("tenant-a") && alarms[0].contains("verified=true"),
        "{}",
        alarms[0]
    );
    assert!(alarms[0].contains("no permission"), "{}", alarms[0]);
}

#[test]
fn verified_codes_are_counted_per_tenant() {
    let emu = Emulator::start();
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    // The emulator answers an undocumented endpoint's wrong field with a vendor code; the
    // answer is signed and verifies, so the caller gets it (HTTP 200) and it is counted.
    let r = gw.post_a("/callcentre/api/v3/listTask", br#"{"productID":"callbot","page":"one"}"#);
    assert_eq!(r.status, 200);
    let code = r.json()["retCode"].as_i64().expect("a retCode");
    assert_ne!(code, 0);
    let label = nxgate_core::vendor::label(Some(code));
    assert_eq!(gw.metric(&format!(r#"nxgate_upstream_codes_total{{code="{label}",tenant="tenant-a"}}"#)), 1.0);
    assert_eq!(gw.ping_a(&[], "fine").json()["code"], 0);
    assert_eq!(gw.metric(r#"nxgate_upstream_codes_total{code="0",tenant="tenant-a"}"#), 1.0);
    assert_eq!(gw.metric(r#"nxgate_upstream_codes_total{code="0",tenant="tenant-b"}"#), 0.0);
}

/// A gateway whose tenant A holds the wrong secret: NXCloud (the emulator) answers code 6,
/// signed with the right secret, so the answer cannot verify either. The caller still
/// gets 502 and nothing of that body; the operator reads "code 6", not "tampering".
#[test]
fn a_wrong_secret_is_reported_as_the_vendors_code_6_not_as_tampering() {
    let emu = Emulator::start();
    let yaml = GatewayOptions::new(emu.url())
        .yaml(any_port())
        .replace("secret_env: NXGATE_TEST_SECRET_A", "secret_env: NXGATE_WRONG_SECRET");
    let gw = Gateway::launch(&yaml, &[], &[], true, |c| {
        c.env("NXGATE_WRONG_SECRET", "not-the-secret-nxcloud-knows");
    });
    for _ in 0..5 {
        let r = gw.ping_a(&[], "x");
        let v = assert_gateway_error(&r, 502, 50202, "bad_upstream_signature");
        assert!(!String::from_utf8_lossy(&r.body).contains("sign mismatch"), "the upstream's body leaked: {v}");
    }
    assert_eq!(gw.metric(r#"nxgate_upstream_codes_total{code="6",tenant="tenant-a"}"#), 5.0);
    let log = gw.log();
    let alarms = log.matches("NXCloud refused this tenant's request with code 6: signature incorrect").count();
    assert_eq!(alarms, 1, "one ERROR line per minute per tenant, not one per request");
    let line = log.lines().find(|l| l.contains("NXCloud refused this tenant")).unwrap();
    assert!(line.contains("ERROR") && line.contains("tenant-a") && line.contains("verified=false"), "{line}");
    assert!(!log.contains("not-the-secret-nxcloud-knows"));

    // `nxgate ping` says it in words.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nxgate.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nxgate"))
        .args(["ping", "-c"])
        .arg(&config)
        .args(["--tenant", "tenant-a"])
        .env("NXGATE_WRONG_SECRET", "not-the-secret-nxcloud-knows")
        .env("NXGATE_TEST_SECRET_B", SECRET_B)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NXCloud says code 6 (signature incorrect: check the tenant's secret, in an answer that failed verification)"),
        "{text}"
    );
}

#[test]
fn after_a_busy_answer_the_tenant_backs_off_with_one_probe_per_period() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_upstream = "  busy_backoff: { initial_ms: 500, max_ms: 1000 }\n".into();
    let gw = Gateway::start(&opts);
    let busy = [("x-emulator-fault", "busy")];

    let r = gw.ping_a(&busy, "first");
    let first_busy = Instant::now();
    assert_eq!((r.status, r.json()["code"].clone()), (200, json!(7)), "the busy answer itself is passed on");
    assert_eq!(pings_received(&emu), 1);
    assert_eq!(gw.metric("nxgate_upstream_backoff_tenants"), 1.0);

    // Backing off: refused here, never reaching the emulator; tenant B is unaffected.
    for _ in 0..3 {
        let r = gw.ping_a(&[], "refused");
        assert_gateway_error(&r, 429, 42903, "upstream_busy");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(ping_b(&gw, "b").status, 200);
    assert_eq!(pings_received(&emu), 2, "only tenant B's request reached NXCloud");

    // One probe per period (500 ms): still busy, so the period doubles to 1 s.
    sleep_until(first_busy + Duration::from_millis(700));
    assert_eq!(gw.ping_a(&busy, "probe").json()["code"], 7);
    let probe = Instant::now();
    assert_gateway_error(&gw.ping_a(&[], "refused again"), 429, 42903, "upstream_busy");
    assert_eq!(pings_received(&emu), 3);
    sleep_until(probe + Duration::from_millis(600));
    assert_gateway_error(&gw.ping_a(&[], "within the doubled period"), 429, 42903, "upstream_busy");
    assert_eq!(pings_received(&emu), 3);

    // The next probe is answered normally: the back-off ends.
    sleep_until(probe + Duration::from_millis(1300));
    assert_eq!(gw.ping_a(&[], "recovered").json()["code"], 0);
    assert_eq!(gw.ping_a(&[], "normal again").json()["data"], "normal again");
    assert_eq!(pings_received(&emu), 5);
    assert_eq!(gw.metric("nxgate_upstream_backoff_tenants"), 0.0);
    assert_eq!(gw.metric(r#"nxgate_upstream_busy_total{tenant="tenant-a"}"#), 2.0);
    assert_eq!(gw.metric(r#"nxgate_upstream_busy_total{tenant="tenant-b"}"#), 0.0);
    let log = gw.log();
    assert_eq!(log.matches("NXCloud is busy; this tenant backs off").count(), 1);
    assert_eq!(log.matches("this tenant's back-off ended").count(), 1);
}

#[test]
fn an_http_429_from_nxcloud_backs_off_for_its_retry_after() {
    let emu = Emulator::start();
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    let r = gw.ping_a(&[("x-emulator-fault", "http_429")], "x");
    assert_ne!(r.status, 200);
    let r = gw.ping_a(&[], "y");
    assert_gateway_error(&r, 429, 42903, "upstream_busy");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(secs >= 1, "{secs}");
    assert_eq!(pings_received(&emu), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn import_body() -> Vec<u8> {
    let list: Vec<Value> =
        (0..20).map(|i| json!({"orderID": format!("gz-{i}"), "userPhone": "8615600000000"})).collect();
    let info = json!({"orderCallbackUrl": "http://127.0.0.1:9/o", "callCallbackUrl": "http://127.0.0.1:9/c", "callList": list});
    json!({"productID": "callbot", "userTaskID": "t-gz", "callInfoList": info}).to_string().into_bytes()
}

fn gzip_world(mode: GzipSign, compression: &str) -> (Emulator, Gateway) {
    let emu =
        Emulator::with(EmulatorConfig { tenants: emulator_tenants(), gzip_sign: mode, ..Default::default() }, None);
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_upstream = format!("  request_compression: \"{compression}\"\n");
    let gw = Gateway::start(&opts);
    let task =
        gw.post_a("/callcentre/api/v3/createTask", br#"{"productID":"callbot","userTaskID":"t-gz","sceneID":"s"}"#);
    assert_eq!(task.json()["retCode"], 0, "{}", String::from_utf8_lossy(&task.body));
    (emu, gw)
}

fn last_received(emu: &Emulator) -> Value {
    received(emu)["recent"].as_array().unwrap().last().unwrap().clone()
}

fn post_gzip(gw: &Gateway, body: &[u8]) -> Response {
    let auth = format!("Bearer {KEY_A}");
    gw.post("/callcentre/api/v3/importBatchCall", &[("authorization", &auth), ("content-encoding", "gzip")], body)
}

#[test]
fn a_gzip_import_is_decoded_signed_over_the_decoded_bytes_and_accepted_in_both_emulator_modes() {
    for mode in [GzipSign::Decoded, GzipSign::Wire] {
        let (emu, gw) = gzip_world(mode, "decode");
        let plain = import_body();
        let r = post_gzip(&gw, &gzip(&plain));
        assert_eq!(r.json()["retCode"], 0, "{mode:?}: {}", String::from_utf8_lossy(&r.body));
        let seen = last_received(&emu);
        assert_eq!(seen["body_hex"], json!(hex::encode(&plain)), "{mode:?}: the decoded bytes were sent");
        let names: Vec<String> =
            seen["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_ascii_lowercase()).collect();
        assert!(!names.contains(&"content-encoding".to_owned()), "{names:?}");
    }
}

#[test]
fn a_gzip_import_passes_through_compressed_when_configured() {
    let (emu, gw) = gzip_world(GzipSign::Wire, "passthrough");
    let wire = gzip(&import_body());
    let r = post_gzip(&gw, &wire);
    assert_eq!(r.json()["retCode"], 0, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(last_received(&emu)["body_hex"], json!(hex::encode(&wire)), "byte-identical compressed");
}

#[test]
fn a_small_gzip_that_inflates_past_the_limit_is_413_and_a_corrupt_one_is_400() {
    let (emu, gw) = {
        let emu = Emulator::start();
        let mut opts = GatewayOptions::new(emu.url());
        opts.extra_top = "limits:\n  max_request_body_bytes: 65536\n".into();
        let gw = Gateway::start(&opts);
        (emu, gw)
    };
    let bomb = gzip(&vec![b' '; 4 * 1024 * 1024]);
    assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
    assert_gateway_error(&post_gzip(&gw, &bomb), 413, 41301, "body_too_large");
    assert_gateway_error(&post_gzip(&gw, b"\x1f\x8b\x08\x00 not deflate"), 400, 40001, "bad_request");
    let auth = format!("Bearer {KEY_A}");
    let r = gw.post(PING, &[("authorization", &auth), ("content-encoding", "br")], b"{}");
    assert_gateway_error(&r, 400, 40001, "bad_request");
    assert_eq!(received(&emu)["total"], 0, "none of them reached NXCloud");
}

#[test]
fn an_export_asked_for_with_accept_encoding_gzip_succeeds_in_both_emulator_modes() {
    for mode in [GzipSign::Decoded, GzipSign::Wire] {
        let (_emu, gw) = gzip_world(mode, "decode");
        let plain = import_body();
        assert_eq!(post_gzip(&gw, &gzip(&plain)).json()["retCode"], 0);
        let auth = format!("Bearer {KEY_A}");
        let r = gw.post(
            "/callcentre/api/v3/exportBatchCall",
            &[("authorization", &auth), ("accept-encoding", "gzip")],
            br#"{"productID":"callbot","userTaskID":"t-gz"}"#,
        );
        // nxgate asks NXCloud for identity, so the answer it verified is the one it sends.
        assert_eq!(r.header("content-encoding"), None, "{mode:?}");
        let v = r.json();
        assert_eq!(v["retCode"], 0, "{mode:?}: {v}");
        assert_eq!(v.to_string().matches("gz-").count(), 20, "{mode:?}: every imported order is listed: {v}");
    }
}
