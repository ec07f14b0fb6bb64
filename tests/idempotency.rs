//! Idempotency keys against the real binary: a caller's retry with the same
//! `Idempotency-Key` gets the first answer again (byte for byte, `idempotent-replayed:
//! true`) instead of a second call at NXCloud; the same key on another request is 422, and
//! while the first is in flight 409. Recorded is whatever may have reached NXCloud (its
//! answers, verified or refused, and failures after the request was written); a refusal
//! before forwarding, or a connection that never opened, records nothing.
//!
//! "Reached NXCloud" is always counted at the far side: the emulator's request counter
//! (`/_emulator/requests`) or, for an upstream that resets, the test's own listener.

mod common;

use common::*;
use nxgate_emulator::{EmulatorConfig, DELAY_HEADER, FAULT_HEADER};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CREATE: &str = "/callcentre/api/v3/createAndCall";
const PING: &str = "/callcentre/api/v3/ping";
const KEY_HEADER: &str = "Idempotency-Key";
const REPLAYED: &str = "idempotent-replayed";

// ---------------------------------------------------------------------------------------
// Requests and answers.

/// A createAndCall body for task `task` (one number; callbacks point at a closed port and
/// never fire: the emulator's clock stands still).
fn create_body(task: &str) -> Vec<u8> {
    json!({
        "productID": "callbot", "userTaskID": task, "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "idem", "maxCall": 1, "maxRingTime": 30, "taskCallbackUrl": "http://127.0.0.1:9/task"},
        "callInfoList": {
            "orderCallbackUrl": "http://127.0.0.1:9/order", "callCallbackUrl": "http://127.0.0.1:9/call",
            "callList": [{"orderID": format!("{task}-o0"), "userPhone": "8613800000000"}]
        }
    })
    .to_string()
    .into_bytes()
}

fn ping_body(data: &str) -> Vec<u8> {
    format!(r#"{{"data":"{data}"}}"#).into_bytes()
}

/// POST `path` to `addr` as the tenant of `client_key`, with `Idempotency-Key: key` if
/// given and the `extra` headers, on a fresh connection.
fn send_to(
    addr: SocketAddr,
    client_key: &str,
    path: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let auth = format!("Bearer {client_key}");
    let mut headers = vec![("content-type", "application/json"), ("authorization", auth.as_str())];
    if let Some(k) = key {
        headers.push((KEY_HEADER, k));
    }
    headers.extend_from_slice(extra);
    client::request(addr, "POST", path, &headers, body).unwrap()
}

/// `send_to` the gateway as tenant A.
fn send_a(gw: &Gateway, path: &str, key: Option<&str>, body: &[u8]) -> Response {
    send_to(gw.addr, KEY_A, path, key, &[], body)
}

fn text(r: &Response) -> String {
    format!("{} {:?} {}", r.status, r.headers, String::from_utf8_lossy(&r.body))
}

/// A createAndCall NXCloud accepted, answered by the gateway as such (not a replay).
fn assert_created(r: &Response) {
    assert_eq!(r.status, 200, "{}", text(r));
    assert_eq!(r.json()["retCode"], 0, "{}", text(r));
    assert_fresh(r);
}

/// An answer that is not a replay.
fn assert_fresh(r: &Response) {
    assert_eq!(r.header(REPLAYED), None, "a first answer says it was replayed: {}", text(r));
}

/// `again` is `original` replayed: same status, byte-identical body, same x-request-id,
/// same content type and error kind, and `idempotent-replayed: true`.
fn assert_replay(original: &Response, again: &Response) {
    assert_eq!(again.header(REPLAYED), Some("true"), "not a replay of {}:\n{}", text(original), text(again));
    assert_eq!(again.status, original.status, "{}", text(again));
    assert_eq!(
        String::from_utf8_lossy(&again.body),
        String::from_utf8_lossy(&original.body),
        "the replayed body is not the recorded one"
    );
    assert_eq!(again.body, original.body, "the replayed body is not byte-identical");
    assert!(original.header("x-request-id").is_some());
    assert_eq!(again.header("x-request-id"), original.header("x-request-id"), "x-request-id");
    assert_eq!(again.header("content-type"), original.header("content-type"), "content-type");
    assert_eq!(again.header("x-nxgate-error"), original.header("x-nxgate-error"), "x-nxgate-error");
}

/// The 409 of a key whose first request is still in flight.
fn assert_in_progress(r: &Response) {
    assert_gateway_error(r, 409, 40902, "idempotency_key_in_progress");
    assert_eq!(r.header("retry-after"), Some("1"), "{}", text(r));
    assert_eq!(r.header(REPLAYED), None);
}

// ---------------------------------------------------------------------------------------
// The far side and the gateway's own account.

/// How many requests the emulator at `addr` has received.
fn received_at(addr: SocketAddr) -> u64 {
    let v = client::request(addr, "GET", "/_emulator/requests", &[], b"").unwrap().json();
    v["total"].as_u64().unwrap_or_else(|| panic!("no total in {v}"))
}

fn received(emu: &Emulator) -> u64 {
    received_at(emu.addr)
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `within`.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn series(tenant: &str, outcome: &str) -> String {
    format!(r#"nxgate_idempotency_total{{outcome="{outcome}",tenant="{tenant}"}}"#)
}

/// Waits (up to 5 s: metrics may be counted just after the answer) until
/// `nxgate_idempotency_total{tenant, outcome}` is `want`, and asserts it.
fn assert_counted(gw: &Gateway, tenant: &str, outcome: &str, want: f64) {
    let s = series(tenant, outcome);
    let got = wait_for(Duration::from_secs(5), || {
        let v = gw.metric(&s);
        (v == want).then_some(v)
    })
    .unwrap_or_else(|| gw.metric(&s));
    assert_eq!(got, want, "{s}");
}

fn scrape(gw: &Gateway) -> String {
    String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap()
}

// ---------------------------------------------------------------------------------------
// Gateways.

fn gateway_with(emu_url: String, extra_top: &str) -> Gateway {
    let mut opts = GatewayOptions::new(emu_url);
    opts.extra_top = extra_top.to_owned();
    Gateway::start(&opts)
}

fn gateway(emu: &Emulator) -> Gateway {
    gateway_with(emu.url(), "")
}

fn embedded(dir: &std::path::Path) -> String {
    format!("state:\n  kind: \"embedded\"\n  dir: \"{}\"\n", dir.display())
}

fn redis_state(redis: &RedisServer) -> String {
    format!("state:\n  kind: \"redis\"\nredis:\n  url: \"{}\"\n", redis.url())
}

// ---- 1. replay ------------------------------------------------------------------------

#[test]
fn a_create_and_call_sent_twice_with_one_key_reaches_nxcloud_once_and_the_retry_gets_the_first_answer_replayed() {
    let emu = Emulator::start();
    let yaml = GatewayOptions::new(emu.url()).yaml(any_port());
    let gw = Gateway::start_with_args(&yaml, &["--log-format", "json"]);
    let body = create_body("idem-once");
    let first = send_a(&gw, CREATE, Some("order-2024-0001"), &body);
    assert_created(&first);
    assert_eq!(received(&emu), 1);

    let again = send_a(&gw, CREATE, Some("order-2024-0001"), &body);
    assert_replay(&first, &again);
    // Had it been sent again, NXCloud would have refused the taken userTaskID (retCode 4)
    // and answered with a fresh responseID; the counter says it was not.
    assert_eq!(received(&emu), 1, "the retry reached NXCloud");
    assert_eq!(again.json()["retCode"], 0);

    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-a", "replayed", 1.0);
    for (tenant, outcome) in
        [("tenant-a", "in_progress"), ("tenant-a", "reused"), ("tenant-b", "new"), ("tenant-b", "replayed")]
    {
        assert_counted(&gw, tenant, outcome, 0.0);
    }

    // The access log names the outcome of each keyed request.
    let events = wait_for(Duration::from_secs(5), || {
        let events: Vec<Value> = gw
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "nxgate::access" && v["path"] == CREATE)
            .collect();
        (events.len() >= 2).then_some(events)
    })
    .unwrap_or_else(|| panic!("two access events for {CREATE} expected; log:\n{}", gw.log()));
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["idempotency"], "new", "{}", events[0]);
    assert_eq!(events[1]["idempotency"], "replayed", "{}", events[1]);
    assert_eq!(events[0]["status"], 200);
    assert_eq!(events[1]["status"], 200);
    // A request without a key says nothing about idempotency.
    assert_eq!(send_a(&gw, PING, None, &ping_body("unkeyed")).status, 200);
    let unkeyed = wait_for(Duration::from_secs(5), || {
        gw.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "nxgate::access" && v["path"] == PING)
    })
    .expect("access event of the unkeyed ping");
    assert!(unkeyed.get("idempotency").is_none_or(|v| v.is_null()), "{unkeyed}");
}

// ---- 2. fingerprints and tenants ------------------------------------------------------

#[test]
fn a_key_reused_with_another_body_path_or_query_is_422_and_the_first_answer_stays_replayable() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let key = "reuse-me";
    let first = send_a(&gw, CREATE, Some(key), &create_body("idem-reuse"));
    assert_created(&first);
    for (path, body) in [
        (CREATE, create_body("idem-reuse-other")),
        (PING, create_body("idem-reuse")),
        ("/callcentre/api/v3/createAndCall?x=1", create_body("idem-reuse")),
    ] {
        let r = send_a(&gw, path, Some(key), &body);
        assert_gateway_error(&r, 422, 42201, "idempotency_key_reused");
        assert_eq!(r.header(REPLAYED), None);
    }
    assert_eq!(received(&emu), 1, "a reused key reached NXCloud");
    assert_counted(&gw, "tenant-a", "reused", 3.0);
    // The mismatches changed nothing: the original request is still replayed.
    assert_replay(&first, &send_a(&gw, CREATE, Some(key), &create_body("idem-reuse")));
    assert_eq!(received(&emu), 1);
}

#[test]
fn a_gzip_body_has_the_fingerprint_of_its_decoded_bytes() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let body = create_body("idem-gzip");
    let first = send_a(&gw, CREATE, Some("gz-key"), &body);
    assert_created(&first);
    for level in [1, 9] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(&body).unwrap();
        let gz = e.finish().unwrap();
        let r = send_to(gw.addr, KEY_A, CREATE, Some("gz-key"), &[("content-encoding", "gzip")], &gz);
        assert_replay(&first, &r);
    }
    assert_eq!(received(&emu), 1);
}

#[test]
fn the_same_key_from_another_tenant_is_another_key_and_is_forwarded() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let body = create_body("idem-tenants");
    let a = send_to(gw.addr, KEY_A, CREATE, Some("shared-key"), &[], &body);
    assert_created(&a);
    // Same key, same request, tenant B: a request of its own, not A's answer.
    let b = send_to(gw.addr, KEY_B, CREATE, Some("shared-key"), &[], &body);
    assert_created(&b);
    assert_eq!(received(&emu), 2, "tenant B's request did not reach NXCloud");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    // Each tenant's retry gets its own answer.
    assert_replay(&b, &send_to(gw.addr, KEY_B, CREATE, Some("shared-key"), &[], &body));
    assert_replay(&a, &send_to(gw.addr, KEY_A, CREATE, Some("shared-key"), &[], &body));
    // And B's key is B's: another body from B is a reuse, from A too.
    let other = create_body("idem-tenants-2");
    assert_gateway_error(
        &send_to(gw.addr, KEY_B, CREATE, Some("shared-key"), &[], &other),
        422,
        42201,
        "idempotency_key_reused",
    );
    assert_eq!(received(&emu), 2);
    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-b", "new", 1.0);
    assert_counted(&gw, "tenant-a", "replayed", 1.0);
    assert_counted(&gw, "tenant-b", "replayed", 1.0);
    assert_counted(&gw, "tenant-b", "reused", 1.0);
}

// ---- 3. the header --------------------------------------------------------------------

#[test]
fn a_malformed_key_is_400_40003_and_never_forwarded_and_255_visible_characters_are_fine() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "a b", "tab\there", "caf\u{e9}", "\u{2603}"] {
        let r = send_a(&gw, PING, Some(bad), &ping_body("bad-key"));
        assert_gateway_error(&r, 400, 40003, "idempotency_key_invalid");
    }
    assert_eq!(received(&emu), 0, "a request with a malformed key reached NXCloud");

    // The longest key, every visible character class in it.
    let longest: String = "!~\"#AZaz09-_.:/=+".chars().cycle().take(255).collect();
    let first = send_a(&gw, PING, Some(&longest), &ping_body("longest"));
    assert_eq!(first.status, 200, "{}", text(&first));
    assert_fresh(&first);
    assert_replay(&first, &send_a(&gw, PING, Some(&longest), &ping_body("longest")));
    assert_eq!(received(&emu), 1);
}

#[test]
fn a_required_path_without_a_key_is_400_40002_and_other_paths_need_none() {
    let emu = Emulator::start();
    let gw = gateway_with(
        emu.url(),
        "idempotency:\n  retention_secs: 86400\n  required_paths: [\"/callcentre/api/v3/createAndCall\"]\n",
    );
    for path in [CREATE, "/callcentre/api/v3/createAndCall?src=crm"] {
        let r = send_a(&gw, path, None, &create_body("idem-required"));
        assert_gateway_error(&r, 400, 40002, "idempotency_key_missing");
    }
    assert_eq!(received(&emu), 0, "a request without its required key reached NXCloud");
    // Other paths need no key.
    let r = send_a(&gw, PING, None, &ping_body("no-key-needed"));
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["data"], "no-key-needed");
    let r = send_a(
        &gw,
        "/callcentre/api/v3/createTask",
        None,
        br#"{"productID":"callbot","userTaskID":"t-x","sceneID":"s"}"#,
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    // With a key, the required path proceeds.
    assert_created(&send_a(&gw, CREATE, Some("required-ok"), &create_body("idem-required")));
    assert_eq!(received(&emu), 3);
}

#[test]
fn a_quoted_key_is_the_same_key_as_its_bare_form() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let first = send_a(&gw, PING, Some("abc-123"), &ping_body("quoted"));
    assert_eq!(first.status, 200, "{}", text(&first));
    assert_replay(&first, &send_a(&gw, PING, Some("\"abc-123\""), &ping_body("quoted")));
    // And the other way round.
    let second = send_a(&gw, PING, Some("\"xyz-789\""), &ping_body("quoted-2"));
    assert_eq!(second.status, 200, "{}", text(&second));
    assert_fresh(&second);
    assert_replay(&second, &send_a(&gw, PING, Some("xyz-789"), &ping_body("quoted-2")));
    // A quoted key names the same key for the reuse check too.
    assert_gateway_error(
        &send_a(&gw, PING, Some("\"abc-123\""), &ping_body("other")),
        422,
        42201,
        "idempotency_key_reused",
    );
    assert_eq!(received(&emu), 2);
}

// ---- 4. in flight ---------------------------------------------------------------------

#[test]
fn a_second_request_while_the_first_is_in_flight_is_409_at_once_and_replayed_once_the_first_completes() {
    let emu = Emulator::start();
    let yaml = GatewayOptions::new(emu.url()).yaml(any_port());
    let gw = Gateway::start_with_args(&yaml, &["--log-format", "json"]);
    let addr = gw.addr;
    let body = create_body("idem-inflight");
    let slow_body = body.clone();
    let first = std::thread::spawn(move || {
        send_to(addr, KEY_A, CREATE, Some("slow-key"), &[(FAULT_HEADER, "slow"), (DELAY_HEADER, "1500")], &slow_body)
    });
    assert!(
        wait_for(Duration::from_secs(5), || (received(&emu) == 1).then_some(())).is_some(),
        "the first request never reached the emulator"
    );
    let t = Instant::now();
    let second = send_a(&gw, CREATE, Some("slow-key"), &body);
    let took = t.elapsed();
    assert_in_progress(&second);
    assert!(took < Duration::from_millis(750), "the 409 waited {took:?} (for the first?)");
    assert!(!first.is_finished(), "the first request was no longer in flight; the test proves nothing");
    let first = first.join().unwrap();
    assert_created(&first);
    assert_replay(&first, &send_a(&gw, CREATE, Some("slow-key"), &body));
    assert_eq!(received(&emu), 1);
    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-a", "in_progress", 1.0);
    assert_counted(&gw, "tenant-a", "replayed", 1.0);
    // Each outcome is in the access log, the 409's too.
    let mut outcomes = wait_for(Duration::from_secs(5), || {
        let outcomes: Vec<String> = gw
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "nxgate::access" && v["path"] == CREATE)
            .map(|v| v["idempotency"].as_str().unwrap_or("-").to_owned())
            .collect();
        (outcomes.len() >= 3).then_some(outcomes)
    })
    .unwrap_or_else(|| panic!("three access events expected; log:\n{}", gw.log()));
    outcomes.sort();
    assert_eq!(outcomes, ["in_progress", "new", "replayed"]);
}

#[test]
fn a_caller_that_hangs_up_mid_flight_gets_the_answer_replayed_on_its_retry_and_nxcloud_is_called_once() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let body = create_body("idem-hangup");
    // The caller gives up after 200 ms, while NXCloud takes 1 s.
    let mut c = Connection::open(gw.addr).unwrap();
    let auth = format!("Bearer {KEY_A}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        (KEY_HEADER, "hangup-key"),
        (FAULT_HEADER, "slow"),
        (DELAY_HEADER, "1000"),
    ];
    c.send_raw(&client::encode("POST", CREATE, &headers, &body)).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || (received(&emu) == 1).then_some(())).is_some(),
        "the request never reached the emulator"
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    // Its retries: 409 while NXCloud still works on it, then its answer; never a second call.
    let mut statuses = Vec::new();
    let replayed = wait_for(Duration::from_secs(5), || {
        let r = send_a(&gw, CREATE, Some("hangup-key"), &body);
        statuses.push(r.status);
        if r.status == 409 {
            assert_in_progress(&r);
            std::thread::sleep(Duration::from_millis(100));
            return None;
        }
        Some(r)
    })
    .unwrap_or_else(|| panic!("still no answer after 5 s of retries: {statuses:?}"));
    assert_eq!(received(&emu), 1, "the retry called NXCloud again: {}", text(&replayed));
    assert_eq!(replayed.header(REPLAYED), Some("true"), "{}", text(&replayed));
    assert_eq!(replayed.status, 200, "{}", text(&replayed));
    assert_eq!(replayed.json()["retCode"], 0, "{}", text(&replayed));
}

#[test]
fn sixty_four_concurrent_requests_with_one_key_reach_nxcloud_exactly_once() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let addr = gw.addr;
    let n = 64;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer {KEY_A}");
                let headers = [
                    ("content-type", "application/json"),
                    ("authorization", auth.as_str()),
                    (KEY_HEADER, "one-for-all"),
                    (FAULT_HEADER, "slow"),
                    (DELAY_HEADER, "800"),
                ];
                let mut c = Connection::open(addr).unwrap();
                barrier.wait();
                c.request("POST", CREATE, &headers, &create_body("idem-64")).unwrap()
            })
        })
        .collect();
    let results: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(received(&emu), 1, "more than one request reached NXCloud");
    let firsts: Vec<&Response> = results.iter().filter(|r| r.status == 200 && r.header(REPLAYED).is_none()).collect();
    assert_eq!(
        firsts.len(),
        1,
        "statuses: {:?}",
        results.iter().map(|r| (r.status, r.header(REPLAYED).map(str::to_owned))).collect::<Vec<_>>()
    );
    let first = firsts[0];
    assert_created(first);
    let (mut conflicts, mut replays) = (0, 0);
    for r in results.iter().filter(|r| !std::ptr::eq(*r, first)) {
        if r.status == 409 {
            assert_in_progress(r);
            conflicts += 1;
        } else {
            assert_replay(first, r);
            replays += 1;
        }
    }
    assert_eq!(conflicts + replays, n - 1);
    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-a", "in_progress", conflicts as f64);
    assert_counted(&gw, "tenant-a", "replayed", replays as f64);
}

// ---- 5. what is recorded --------------------------------------------------------------

#[test]
fn an_answer_refused_by_verification_is_recorded_and_replayed() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let body = create_body("idem-badsign");
    let first = send_to(gw.addr, KEY_A, CREATE, Some("bad-sign-key"), &[(FAULT_HEADER, "bad_sign")], &body);
    assert_gateway_error(&first, 502, 50202, "bad_upstream_signature");
    assert_fresh(&first);
    // The retry carries no fault: had it been sent again, NXCloud would have accepted it.
    let again = send_a(&gw, CREATE, Some("bad-sign-key"), &body);
    assert_replay(&first, &again);
    assert_gateway_error(&again, 502, 50202, "bad_upstream_signature");
    assert_eq!(received(&emu), 1);
}

#[test]
fn a_reset_mid_answer_is_recorded_and_replayed() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let body = create_body("idem-reset");
    let first = send_to(gw.addr, KEY_A, CREATE, Some("reset-key"), &[(FAULT_HEADER, "reset")], &body);
    assert_gateway_error(&first, 502, 50204, "bad_upstream_response");
    assert_fresh(&first);
    assert_replay(&first, &send_a(&gw, CREATE, Some("reset-key"), &body));
    assert_eq!(received(&emu), 1);
}

/// An upstream that reads each request whole, counts it, then resets the connection
/// without answering a byte: a failure after the request was written.
struct Resetter {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Resetter {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            stream.set_nonblocking(false).unwrap();
                            if read_one_request(&stream) {
                                seen.fetch_add(1, Ordering::SeqCst);
                            }
                            // Linger 0: close sends a reset, not a FIN.
                            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => break,
                }
            }
        });
        Resetter { addr, requests, stop }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request (header and Content-Length body); false on EOF, error or 5 s of
/// silence.
fn read_one_request(mut stream: &TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_reset_after_the_request_was_written_is_recorded_and_replayed() {
    let up = Resetter::start();
    let gw = gateway_with(format!("http://{}", up.addr), "");
    let body = create_body("idem-rst");
    let first = send_a(&gw, CREATE, Some("rst-key"), &body);
    assert_gateway_error(&first, 502, 50201, "upstream_unreachable");
    assert_fresh(&first);
    assert_eq!(up.requests(), 1);
    let again = send_a(&gw, CREATE, Some("rst-key"), &body);
    assert_replay(&first, &again);
    assert_eq!(up.requests(), 1, "the retry reached the upstream");
    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-a", "replayed", 1.0);
}

#[test]
fn an_upstream_timeout_after_the_request_was_written_is_recorded_and_replayed() {
    let emu = Emulator::start();
    let yaml = GatewayOptions::new(emu.url()).yaml(any_port()).replace("read_timeout_ms: 5000", "read_timeout_ms: 400");
    let gw = Gateway::start_yaml(&yaml);
    let body = create_body("idem-timeout");
    let slow = [(FAULT_HEADER, "slow"), (DELAY_HEADER, "1200")];
    let first = send_to(gw.addr, KEY_A, CREATE, Some("timeout-key"), &slow, &body);
    assert_gateway_error(&first, 504, 50401, "upstream_timeout");
    assert_fresh(&first);
    // Without the fault the request would succeed: a 504 again is the recorded one.
    assert_replay(&first, &send_a(&gw, CREATE, Some("timeout-key"), &body));
    assert_eq!(received(&emu), 1);
}

#[test]
fn a_refused_connection_records_nothing_and_the_retry_is_forwarded() {
    // A port bound but not listening refuses connections; the emulator later listens on it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let gw = gateway_with(format!("http://{addr}"), "");
    let body = create_body("idem-refused");
    let first = send_a(&gw, CREATE, Some("refused-key"), &body);
    assert_gateway_error(&first, 502, 50201, "upstream_unreachable");
    assert_fresh(&first);

    socket.listen(128).unwrap();
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cfg = Arc::new(EmulatorConfig { tenants: emulator_tenants(), ..Default::default() });
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        nxgate_emulator::serve(listener, cfg, None).await
    });
    let again = send_a(&gw, CREATE, Some("refused-key"), &body);
    assert_created(&again);
    assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(received_at(addr), 1);
    assert_counted(&gw, "tenant-a", "new", 2.0);
    assert_counted(&gw, "tenant-a", "replayed", 0.0);
}

#[test]
fn a_refusal_before_forwarding_records_nothing() {
    let emu = Emulator::start();
    let gw = gateway_with(emu.url(), "limits:\n  max_request_body_bytes: 4096\n");
    // Refused by the route check: the key is free for the real request afterwards.
    let r = send_a(&gw, "/not-allowed/createAndCall", Some("early-key"), &create_body("idem-early"));
    assert_gateway_error(&r, 404, 40401, "route_not_allowed");
    let first = send_a(&gw, CREATE, Some("early-key"), &create_body("idem-early"));
    assert_created(&first);
    // Refused for its size: again nothing recorded, so the same request refused twice is
    // refused afresh each time (not a replay) and the key is not taken.
    let big = ping_body(&"x".repeat(5000));
    for _ in 0..2 {
        let r = send_a(&gw, PING, Some("big-key"), &big);
        assert_gateway_error(&r, 413, 41301, "body_too_large");
        assert_eq!(r.header(REPLAYED), None);
    }
    let r = send_a(&gw, PING, Some("big-key"), &ping_body("small"));
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_fresh(&r);
    assert_eq!(received(&emu), 2);
}

// ---- 6. where keys live ---------------------------------------------------------------

#[test]
fn a_key_used_on_one_redis_replica_is_in_flight_and_then_replayed_on_the_other() {
    let redis = RedisServer::start();
    let emu = Emulator::start();
    let one = gateway_with(emu.url(), &redis_state(&redis));
    let two = gateway_with(emu.url(), &redis_state(&redis));
    one.wait_ready();
    two.wait_ready();

    let body = create_body("idem-fleet");
    let first = send_a(&one, CREATE, Some("fleet-key"), &body);
    assert_created(&first);
    assert_replay(&first, &send_a(&two, CREATE, Some("fleet-key"), &body));
    assert_gateway_error(
        &send_a(&two, CREATE, Some("fleet-key"), &create_body("idem-fleet-other")),
        422,
        42201,
        "idempotency_key_reused",
    );
    assert_eq!(received(&emu), 1);

    // In flight on one replica is in flight on the other.
    let addr = one.addr;
    let slow_body = create_body("idem-fleet-slow");
    let body2 = slow_body.clone();
    let slow = std::thread::spawn(move || {
        send_to(addr, KEY_A, CREATE, Some("fleet-slow"), &[(FAULT_HEADER, "slow"), (DELAY_HEADER, "1500")], &body2)
    });
    assert!(wait_for(Duration::from_secs(5), || (received(&emu) == 2).then_some(())).is_some());
    assert_in_progress(&send_a(&two, CREATE, Some("fleet-slow"), &slow_body));
    assert!(!slow.is_finished(), "the first request was no longer in flight; the test proves nothing");
    let slow = slow.join().unwrap();
    assert_created(&slow);
    assert_replay(&slow, &send_a(&two, CREATE, Some("fleet-slow"), &slow_body));
    assert_eq!(received(&emu), 2);
    assert_counted(&two, "tenant-a", "replayed", 2.0);
    assert_counted(&two, "tenant-a", "in_progress", 1.0);
    assert_counted(&two, "tenant-a", "new", 0.0);
}

#[test]
fn the_embedded_store_replays_a_key_after_kill_9_and_a_restart_and_keeps_a_key_cut_short_claimed() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_top = embedded(dir.path());
    let yaml = opts.yaml(any_port());
    let mut gw = Gateway::start_yaml(&yaml);
    gw.wait_ready();
    let body = create_body("idem-durable");
    let first = send_a(&gw, CREATE, Some("durable-key"), &body);
    assert_created(&first);
    // Killed the moment the answer is in: it was recorded before the caller got it.
    gw.signal("KILL");
    assert!(gw.wait_exit(Duration::from_secs(5)).is_some(), "kill -9 did not end the process");

    let restarted = Gateway::start_yaml(&yaml);
    restarted.wait_ready();
    assert_replay(&first, &send_a(&restarted, CREATE, Some("durable-key"), &body));
    assert_gateway_error(
        &send_a(&restarted, CREATE, Some("durable-key"), &create_body("idem-durable-2")),
        422,
        42201,
        "idempotency_key_reused",
    );
    assert_eq!(received(&emu), 1);

    // A request in flight when the process dies may have reached NXCloud: after a restart
    // its key is still claimed, so a retry is told to wait rather than sent again.
    let mut restarted = restarted;
    let mut c = Connection::open(restarted.addr).unwrap();
    let auth = format!("Bearer {KEY_A}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        (KEY_HEADER, "crash-key"),
        (FAULT_HEADER, "slow"),
        (DELAY_HEADER, "3000"),
    ];
    let crash_body = create_body("idem-crash");
    c.send_raw(&client::encode("POST", CREATE, &headers, &crash_body)).unwrap();
    assert!(wait_for(Duration::from_secs(5), || (received(&emu) == 2).then_some(())).is_some());
    restarted.signal("KILL");
    assert!(restarted.wait_exit(Duration::from_secs(5)).is_some(), "kill -9 did not end the process");
    drop(c);
    let third = Gateway::start_yaml(&yaml);
    third.wait_ready();
    assert_in_progress(&send_a(&third, CREATE, Some("crash-key"), &crash_body));
    assert_replay(&first, &send_a(&third, CREATE, Some("durable-key"), &body));
    assert_eq!(received(&emu), 2, "a retry of the request the crash cut short was sent again");
}

/// With `retention_secs: 2` in `state`: replayed at once, new again after 3 s.
fn a_key_expires_after_its_retention(state: &str) {
    let emu = Emulator::start();
    let gw = gateway_with(emu.url(), &format!("{state}idempotency:\n  retention_secs: 2\n"));
    gw.wait_ready();
    let body = ping_body("retention");
    let first = send_a(&gw, PING, Some("short-lived"), &body);
    let answered = Instant::now();
    assert_eq!(first.status, 200, "{}", text(&first));
    assert_fresh(&first);
    assert_replay(&first, &send_a(&gw, PING, Some("short-lived"), &body));
    assert_eq!(received(&emu), 1);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(answered.elapsed()));
    let later = send_a(&gw, PING, Some("short-lived"), &body);
    assert_eq!(later.status, 200, "{}", text(&later));
    assert_fresh(&later);
    assert_ne!(later.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(received(&emu), 2, "the expired key was not sent again");
    // And the new answer is recorded in turn.
    assert_replay(&later, &send_a(&gw, PING, Some("short-lived"), &body));
    assert_eq!(received(&emu), 2);
}

#[test]
fn a_key_in_memory_is_new_again_once_its_retention_has_passed() {
    a_key_expires_after_its_retention("state:\n  kind: \"memory\"\n");
}

#[test]
fn a_key_in_the_embedded_store_is_new_again_once_its_retention_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    a_key_expires_after_its_retention(&embedded(dir.path()));
}

#[test]
fn a_key_in_redis_is_new_again_once_its_retention_has_passed() {
    let redis = RedisServer::start();
    a_key_expires_after_its_retention(&redis_state(&redis));
}

// ---- 7. rate limits -------------------------------------------------------------------

#[test]
fn a_replay_spends_no_rate_limit_token_and_a_rate_limited_request_records_nothing() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = "    rate_limit: { per_second: 1, burst: 2 }\n".into();
    let gw = Gateway::start(&opts);
    let t0 = Instant::now();
    // Two tokens: the keyed request takes one ...
    let first = send_a(&gw, PING, Some("limited-1"), &ping_body("keyed"));
    assert_eq!(first.status, 200, "{}", text(&first));
    assert_fresh(&first);
    // ... five replays take none ...
    for _ in 0..5 {
        assert_replay(&first, &send_a(&gw, PING, Some("limited-1"), &ping_body("keyed")));
    }
    // ... so one is left for an unkeyed request, and then none.
    let unkeyed = send_a(&gw, PING, None, &ping_body("unkeyed"));
    assert_eq!(unkeyed.status, 200, "a replay spent a token: {}", text(&unkeyed));
    let limited = send_a(&gw, PING, Some("limited-2"), &ping_body("late"));
    assert_gateway_error(&limited, 429, 42901, "rate_limited");
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(900), "too slow ({took:?}): a token may have refilled meanwhile");
    assert_eq!(received(&emu), 2);

    // The 429 recorded nothing: once a token is back, the same request goes through.
    std::thread::sleep(Duration::from_millis(1100));
    let retried = send_a(&gw, PING, Some("limited-2"), &ping_body("late"));
    assert_eq!(retried.status, 200, "{}", text(&retried));
    assert_fresh(&retried);
    assert_eq!(retried.json()["data"], "late");
    assert_eq!(received(&emu), 3);
    assert_counted(&gw, "tenant-a", "replayed", 5.0);
}

// ---- 8. metrics -----------------------------------------------------------------------

#[test]
fn idempotency_metrics_are_exported_at_zero_from_the_first_scrape_and_never_name_a_key() {
    let emu = Emulator::start();
    let gw = gateway(&emu);
    let first_scrape = scrape(&gw);
    assert!(first_scrape.contains("# TYPE nxgate_idempotency_total counter"), "{first_scrape}");
    for tenant in ["tenant-a", "tenant-b"] {
        for outcome in ["new", "replayed", "in_progress", "reused"] {
            let line = format!("{} 0", series(tenant, outcome));
            assert!(first_scrape.lines().any(|l| l == line), "{line} missing from the first scrape:\n{first_scrape}");
        }
    }

    let key = "zq-distinctive-idem-key-4f81c";
    let body = ping_body("metrics");
    let first = send_a(&gw, PING, Some(key), &body);
    assert_eq!(first.status, 200);
    assert_replay(&first, &send_a(&gw, PING, Some(key), &body));
    assert_gateway_error(&send_a(&gw, PING, Some(key), &ping_body("other")), 422, 42201, "idempotency_key_reused");
    let b = send_to(gw.addr, KEY_B, PING, Some(key), &[], &body);
    assert_eq!(b.status, 200);
    assert_counted(&gw, "tenant-a", "new", 1.0);
    assert_counted(&gw, "tenant-a", "replayed", 1.0);
    assert_counted(&gw, "tenant-a", "reused", 1.0);
    assert_counted(&gw, "tenant-b", "new", 1.0);
    let text = scrape(&gw);
    assert!(!text.contains(key) && !text.contains("zq-distinctive"), "the key appears in /metrics:\n{text}");
    let families: Vec<&str> = text.lines().filter(|l| l.starts_with("nxgate_idempotency_total{")).collect();
    assert_eq!(families.len(), 8, "one series per tenant and outcome, nothing else: {families:#?}");
}
