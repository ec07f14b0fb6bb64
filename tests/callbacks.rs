//! The callback listener against the real binary: NXCloud-signed callbacks (signed here
//! with the independent reference signer) reach a recording test receiver once; every
//! refusal is answered before the receiver sees a byte.

mod common;

use common::tls::{tls_request, Pki};
use common::*;
use nxgate_core::errors::CallbackOutcome;
use nxgate_testkit::refsign::{self, Digest};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Gateways and callbacks.

const PATH: &str = "/hooks/orderCallback?src=nx";

fn callbacks_block(receiver_url: &str, extra: &str) -> String {
    format!(
        "callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{receiver_url}\"\n  allow_prefixes: [\"/hooks/\"]\n  receiver_timeout_ms: 1500\n{extra}"
    )
}

fn gateway_with(receiver_url: &str, extra_callbacks: &str, extra_top: &str) -> Gateway {
    let mut opts = GatewayOptions::new("http://127.0.0.1:9".to_owned());
    opts.extra_top = format!(
        "limits:\n  max_request_body_bytes: 4096\n{}{extra_top}",
        callbacks_block(receiver_url, extra_callbacks)
    );
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    assert_eq!(gw.callbacks.len(), 1, "the ready file lists the callback listener");
    gw
}

fn gateway(r: &TestReceiver) -> Gateway {
    gateway_with(&r.url(), "", "")
}

fn send(gw: &Gateway, headers: &[(String, String)], body: &[u8]) -> Response {
    send_to(gw.callbacks[0], PATH, headers, body)
}

fn body(tag: &str) -> Vec<u8> {
    format!(r#"{{"callbackType":"1","orderID":"{tag}","userPhone":"+85200000000","finish":true,"other":"body-marker-c41b"}}"#)
        .into_bytes()
}

fn rid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn callbacks_metric(gw: &Gateway, tenant: &str, outcome: &str) -> f64 {
    gw.metric(&format!("nxgate_callbacks_total{{outcome=\"{outcome}\",tenant=\"{tenant}\"}}"))
}

// ---------------------------------------------------------------------------------------
// Delivery.

#[test]
fn md5_and_sha256_callbacks_reach_the_receiver_byte_identical_with_tenant_and_request_id() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let mut signs = Vec::new();
    for (i, account) in [Account::A, Account::B].into_iter().enumerate() {
        let b = body(&format!("order-{i}"));
        let id = rid();
        let h = signed(account, &b, &id);
        signs.push(h[3].1.clone());
        let resp = send(&gw, &h, &b);
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.body, format!(r#"{{"received":{}}}"#, i + 1).as_bytes(), "the receiver's body comes back");
        assert_eq!(resp.header("x-receiver"), Some("yes"), "the receiver's headers come back");
        assert_eq!(resp.header("x-request-id"), Some(id.as_str()));
        let got = &r.seen()[i];
        assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", PATH));
        assert_eq!(got.body, b, "byte-identical body");
        assert_eq!(got.header("x-nxgate-tenant"), Some(account.name()));
        assert_eq!(got.header("x-request-id"), Some(id.as_str()));
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.header("host"), Some(r.addr.to_string().as_str()));
        for gone in ["requestID", "uuid", "createTs", "sign", "algorithm"] {
            assert_eq!(got.header(gone), None, "{gone} must not reach the receiver");
        }
        assert_eq!(callbacks_metric(&gw, account.name(), "delivered"), 1.0);
    }
    // The access event is written once the answer is out: give it a moment.
    let events = |log: &str| log.lines().filter(|l| l.contains("nxgate::access") && l.contains("outcome")).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while events(&gw.log()) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log();
    assert_eq!(events(&log), 2, "one access event per callback:\n{log}");
    for (i, line) in log.lines().enumerate() {
        assert!(!line.contains("body-marker-c41b"), "a callback body reached the log (line {i}): {line}");
        for sign in &signs {
            assert!(!line.to_ascii_uppercase().contains(sign.as_str()), "a sign reached the log (line {i}): {line}");
        }
    }
}

#[test]
fn every_callback_series_is_exported_at_zero_from_the_start() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let text = String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap();
    for tenant in ["-", "tenant-a", "tenant-b"] {
        // The gateway's own list, so a new outcome cannot be left out here.
        for outcome in CallbackOutcome::ALL.map(CallbackOutcome::as_str) {
            let series = format!("nxgate_callbacks_total{{outcome=\"{outcome}\",tenant=\"{tenant}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
        let h = format!("nxgate_callback_delivery_duration_seconds_count{{tenant=\"{tenant}\"}} 0");
        assert!(text.contains(&h), "{h} missing");
    }
}

#[test]
fn a_tenant_with_its_own_receiver_gets_its_callbacks_there() {
    let (default, sales) = (TestReceiver::start(), TestReceiver::start());
    let mut opts = GatewayOptions::new("http://127.0.0.1:9".to_owned());
    opts.extra_top = callbacks_block(&default.url(), "");
    opts.tenant_b_extra = format!("    callbacks_forward_to: \"{}\"\n", sales.url());
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    let b = body("own");
    assert_eq!(send(&gw, &signed(Account::B, &b, &rid()), &b).status, 200);
    assert_eq!(send(&gw, &signed(Account::A, &b, &rid()), &b).status, 200);
    assert_eq!((default.count(), sales.count()), (1, 1));
    assert_eq!(sales.seen()[0].header("x-nxgate-tenant"), Some("tenant-b"));
}

// ---------------------------------------------------------------------------------------
// Refusals: each answered with its code; the receiver never sees a byte.

fn assert_refused(headers: Vec<(String, String)>, body: &[u8], status: u16, code: u64, kind: &str) {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let resp = send(&gw, &headers, body);
    assert_gateway_error(&resp, status, code, kind);
    r.assert_untouched();
    let refused: f64 = ["-", "tenant-a", "tenant-b"].iter().map(|t| callbacks_metric(&gw, t, kind)).sum();
    assert_eq!(refused, 1.0, "counted once as {kind}");
}

#[test]
fn a_forged_sign_is_refused() {
    let b = body("forged");
    let mut h = signed(Account::A, &b, &rid());
    h[3].1 = refsign::sign(Digest::Md5, b"not-the-secret", &b, &h[2].1, &h[0].1, UUID_A);
    assert_refused(h, &b, 401, 40102, "bad_callback_signature");
}

#[test]
fn a_sign_over_other_bytes_is_refused() {
    let b = body("bytes");
    let h = signed(Account::B, &b, &rid());
    let mut other = b.clone();
    other[5] ^= 1;
    assert_refused(h, &other, 401, 40102, "bad_callback_signature");
}

#[test]
fn an_unknown_uuid_is_refused() {
    let b = body("uuid");
    let mut h = signed(Account::A, &b, &rid());
    h[1].1 = "someone-else-entirely".into();
    assert_refused(h, &b, 401, 40102, "bad_callback_signature");
}

#[test]
fn a_missing_header_is_refused_for_each_signature_header() {
    for missing in ["requestID", "uuid", "createTs", "sign"] {
        let b = body("missing");
        let h: Vec<_> = signed(Account::A, &b, &rid()).into_iter().filter(|(k, _)| k != missing).collect();
        assert_refused(h, &b, 401, 40102, "bad_callback_signature");
    }
}

#[test]
fn a_duplicated_header_is_refused() {
    let b = body("dup");
    let mut h = signed(Account::A, &b, &rid());
    h.push(h[0].clone());
    assert_refused(h, &b, 401, 40102, "bad_callback_signature");
}

#[test]
fn an_algorithm_header_other_than_the_tenants_is_refused() {
    let b = body("alg");
    // tenant-a is MD5; a correct SHA256 signature with `algorithm: SHA256` is still refused.
    let id = rid();
    let ts = unix_now().to_string();
    let sign = refsign::sign(Digest::Sha256, SECRET_A.as_bytes(), &b, &ts, &id, UUID_A);
    let h = vec![
        ("requestID".into(), id),
        ("uuid".into(), UUID_A.into()),
        ("createTs".into(), ts),
        ("sign".into(), sign),
        ("algorithm".into(), "sha256".into()),
    ];
    assert_refused(h, &b, 401, 40102, "bad_callback_signature");
}

#[test]
fn a_stale_create_ts_is_refused() {
    let b = body("stale");
    assert_refused(signed_at(Account::A, &b, &rid(), unix_now() - 330), &b, 401, 40103, "stale_callback");
}

#[test]
fn a_future_create_ts_is_refused() {
    let b = body("future");
    assert_refused(signed_at(Account::B, &b, &rid(), unix_now() + 330), &b, 401, 40103, "stale_callback");
}

#[test]
fn an_oversized_body_is_refused() {
    let b = vec![b'x'; 4097];
    assert_refused(signed(Account::A, &b, &rid()), &b, 413, 41301, "body_too_large");
}

#[test]
fn a_path_outside_allow_prefixes_is_refused() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let b = body("path");
    let resp = send_to(gw.callbacks[0], "/admin/orderCallback", &signed(Account::A, &b, &rid()), &b);
    assert_gateway_error(&resp, 404, 40401, "route_not_allowed");
    r.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Replay.

#[test]
fn a_callback_delivered_once_is_answered_as_a_duplicate_and_not_forwarded_again() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let b = body("twice");
    let h = signed(Account::A, &b, &rid());
    assert_eq!(send(&gw, &h, &b).status, 200);
    let again = send(&gw, &h, &b);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-nxgate-duplicate"), Some("true"));
    assert_eq!(r.count(), 1);
    assert_eq!(callbacks_metric(&gw, "tenant-a", "duplicate"), 1.0);
}

#[test]
fn a_callback_whose_delivery_failed_is_delivered_again() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let b = body("retry");
    let h = signed(Account::B, &b, &rid());
    r.set(Mode::Fail);
    let first = send(&gw, &h, &b);
    assert_eq!(first.status, 500, "the receiver's status comes back");
    assert_eq!(first.header("x-receiver"), Some("yes"));
    r.set(Mode::Ok);
    let second = send(&gw, &h, &b);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-nxgate-duplicate"), None);
    assert_eq!(r.count(), 2);
    assert_eq!(callbacks_metric(&gw, "tenant-b", "receiver_error"), 1.0);
}

fn concurrent_copies(addrs: [SocketAddr; 2], r: &TestReceiver) -> Vec<Response> {
    let b = body("concurrent");
    let h = signed(Account::A, &b, &rid());
    let threads: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            let (h, b) = (h.clone(), b.clone());
            std::thread::spawn(move || send_to(addr, PATH, &h, &b))
        })
        .collect();
    let answers: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(r.count(), 1, "two copies, one delivery");
    let delivered = answers.iter().filter(|a| a.status == 200 && a.header("x-nxgate-duplicate").is_none()).count();
    assert_eq!(delivered, 1);
    for a in &answers {
        if a.status == 409 {
            assert_gateway_error(a, 409, 40901, "callback_in_progress");
        } else {
            assert_eq!(a.status, 200);
        }
    }
    answers
}

#[test]
fn two_concurrent_copies_are_delivered_once() {
    let r = TestReceiver::start();
    r.set(Mode::Slow);
    let gw = gateway(&r);
    concurrent_copies([gw.callbacks[0]; 2], &r);
}

#[test]
fn two_replicas_sharing_redis_deliver_a_callback_once() {
    let redis = RedisServer::start();
    let r = TestReceiver::start();
    r.set(Mode::Slow);
    let backend = format!("rate_limit_backend:\n  kind: \"redis\"\n  redis_url: \"{}\"\n", redis.url());
    // State on Redis means queued delivery unless told otherwise; this is the direct mode's
    // shared replay memory (tests/outbox.rs has the queued mode's fleet).
    let direct = "  delivery: \"direct\"\n";
    let (one, two) = (gateway_with(&r.url(), direct, &backend), gateway_with(&r.url(), direct, &backend));
    concurrent_copies([one.callbacks[0], two.callbacks[0]], &r);
    // And later, through the other replica: a duplicate.
    r.set(Mode::Ok);
    let b = body("later");
    let h = signed(Account::B, &b, &rid());
    assert_eq!(send(&one, &h, &b).status, 200);
    let dup = send(&two, &h, &b);
    assert_eq!((dup.status, dup.header("x-nxgate-duplicate")), (200, Some("true")));
    assert_eq!(r.count(), 2);
}

#[test]
fn redis_down_refuses_with_503_rather_than_risk_a_double_delivery() {
    let closed = client::ClosedPort::new().unwrap();
    let backend = format!("rate_limit_backend:\n  kind: \"redis\"\n  redis_url: \"redis://{}/0\"\n", closed.addr);
    // Queued (the default with state on Redis: the outbox's intake refuses) and direct
    // (the replay memory's claim refuses).
    for delivery in ["", "  delivery: \"direct\"\n"] {
        let r = TestReceiver::start();
        let gw = gateway_with(&r.url(), delivery, &backend);
        let b = body("noredis");
        let started = Instant::now();
        let resp = send(&gw, &signed(Account::A, &b, &rid()), &b);
        assert_gateway_error(&resp, 503, 50301, "replay_store_unavailable");
        assert!(started.elapsed() < Duration::from_secs(2), "{delivery}: {:?}", started.elapsed());
        r.assert_untouched();
    }
}

#[test]
fn a_full_local_replay_memory_refuses_with_503() {
    let r = TestReceiver::start();
    let gw = gateway_with(&r.url(), "  replay_memory_entries: 2\n", "");
    for i in 0..2 {
        let b = body(&format!("fill-{i}"));
        assert_eq!(send(&gw, &signed(Account::A, &b, &rid()), &b).status, 200);
    }
    let b = body("overflow");
    assert_gateway_error(&send(&gw, &signed(Account::A, &b, &rid()), &b), 503, 50301, "replay_store_unavailable");
    assert_eq!(r.count(), 2);
}

// ---------------------------------------------------------------------------------------
// Receiver trouble.

#[test]
fn a_receiver_that_is_down_gives_502() {
    let closed = client::ClosedPort::new().unwrap();
    let gw = gateway_with(&format!("http://{}", closed.addr), "", "");
    let b = body("down");
    let resp = send(&gw, &signed(Account::A, &b, &rid()), &b);
    assert_gateway_error(&resp, 502, 50205, "callback_receiver_unreachable");
}

#[test]
fn a_receiver_that_closes_without_answering_gives_502() {
    let r = TestReceiver::start();
    r.set(Mode::Closed);
    let gw = gateway(&r);
    let b = body("closed");
    assert_gateway_error(&send(&gw, &signed(Account::B, &b, &rid()), &b), 502, 50205, "callback_receiver_unreachable");
}

#[test]
fn a_silent_receiver_gives_504_within_the_timeout_and_the_listener_keeps_serving() {
    let r = TestReceiver::start();
    r.set(Mode::Silent);
    let gw = gateway(&r);
    let b = body("silent");
    let h = signed(Account::A, &b, &rid());
    let started = Instant::now();
    assert_gateway_error(&send(&gw, &h, &b), 504, 50402, "callback_receiver_timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(3000), "{took:?}");
    r.set(Mode::Ok);
    let resp = send(&gw, &h, &b);
    assert_eq!(resp.status, 200, "the timed-out callback is delivered on NXCloud's retry");
    let b2 = body("after");
    assert_eq!(send(&gw, &signed(Account::B, &b2, &rid()), &b2).status, 200);
}

// ---------------------------------------------------------------------------------------
// TLS.

fn encoded_callback(account: Account, b: &[u8], id: &str) -> Vec<u8> {
    let h = signed(account, b, id);
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(h.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    client::encode("POST", PATH, &all, b)
}

#[test]
fn a_callback_over_https_is_delivered_and_plain_http_to_the_tls_port_is_refused() {
    let pki = Pki::new();
    let r = TestReceiver::start();
    let gw = gateway_with(&r.url(), &format!("  tls: {}\n", pki.yaml()), "");
    let b = body("tls");
    let (status, resp_body, _) = tls_request(gw.callbacks[0], &pki.ca_pem, &encoded_callback(Account::B, &b, &rid()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp_body));
    assert_eq!(r.count(), 1);
    assert_eq!(r.seen()[0].body, b);

    let plain = client::request(gw.callbacks[0], "POST", PATH, &[("content-type", "application/json")], &b);
    assert!(
        plain.as_ref().map_or(true, |resp| resp.status == 0),
        "plain HTTP was answered: {:?}",
        plain.map(|r| r.status)
    );
    assert_eq!(r.count(), 1, "nothing sent in plain HTTP reaches the receiver");
}

#[test]
fn certificates_are_re_read_on_reload() {
    let pki = Pki::new();
    let r = TestReceiver::start();
    let gw = gateway_with(&r.url(), &format!("  tls: {}\n", pki.yaml()), "");
    let b = body("reload");
    let (_, _, before) = tls_request(gw.callbacks[0], &pki.ca_pem, &encoded_callback(Account::A, &b, &rid()));
    let renewed = pki.issue_leaf();
    assert_ne!(before, renewed);
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let (status, _, after) = tls_request(gw.callbacks[0], &pki.ca_pem, &encoded_callback(Account::A, &b, &rid()));
    assert_eq!(status, 200);
    assert_eq!(after, renewed, "the next handshake presents the renewed certificate");
    assert_eq!(r.count(), 2);
}

#[test]
fn the_proxy_listener_serves_https_with_listen_tls() {
    let pki = Pki::new();
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_top = format!("listen_tls: {}\n", pki.yaml());
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    let auth = format!("Bearer {KEY_A}");
    let req = client::encode(
        "POST",
        "/callcentre/api/v3/ping",
        &[("authorization", auth.as_str()), ("content-type", "application/json")],
        br#"{"data":"tls"}"#,
    );
    let (status, resp_body, _) = tls_request(gw.addr, &pki.ca_pem, &req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp_body));
    assert!(client::request(gw.addr, "POST", "/callcentre/api/v3/ping", &[], b"{}").map_or(true, |r| r.status == 0));
}

// ---------------------------------------------------------------------------------------
// Soak.

/// A callback as sent: headers and body.
type Sent = (Vec<(String, String)>, Vec<u8>);

/// Mixed valid, forged and replayed callbacks on many keep-alive connections: every valid
/// one delivered exactly once, no forged or replayed one delivered, memory flat. The skew
/// window is 5 s, so delivered entries expire after 10 s and the replay memory plateaus.
#[test]
fn a_soak_of_mixed_callbacks_delivers_each_valid_one_exactly_once_without_growth() {
    let connections: usize =
        std::env::var("NXGATE_CALLBACK_SOAK_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let secs: u64 = std::env::var("NXGATE_CALLBACK_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let r = TestReceiver::start();
    std::env::set_var("NXGATE_TEST_LOG", "warn");
    let mut opts = GatewayOptions::new("http://127.0.0.1:9".to_owned());
    // Right after the harness's `verify:` line, so it lands in that block.
    opts.extra_top = format!("  max_clock_skew_secs: 5\n{}", callbacks_block(&r.url(), ""));
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    std::env::remove_var("NXGATE_TEST_LOG");
    let (pid, addr) = (gw.pid(), gw.callbacks[0]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Connection::open(addr).unwrap();
                let mut delivered: Vec<String> = Vec::new();
                let (mut forged, mut replayed) = (0u64, 0u64);
                let mut last: Option<Sent> = None;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let account = if i.is_multiple_of(2) { Account::A } else { Account::B };
                    let (headers, b, kind) = match (i % 5, &last) {
                        (1, _) => {
                            let b = body(&format!("w{w}-f{i}"));
                            let mut h = signed(account, &b, &format!("forged-{w}-{i}"));
                            h[3].1 = refsign::sign(account.digest(), b"wrong", &b, &h[2].1, &h[0].1, account.uuid());
                            (h, b, "forged")
                        }
                        (3, Some((h, b))) => (h.clone(), b.clone(), "replay"),
                        _ => {
                            let b = body(&format!("w{w}-v{i}"));
                            (signed(account, &b, &format!("valid-{w}-{i}")), b, "valid")
                        }
                    };
                    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
                    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    let resp = c.request("POST", PATH, &all, &b).unwrap_or_else(|e| panic!("worker {w} #{i}: {e}"));
                    match kind {
                        "valid" => {
                            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
                            assert_eq!(resp.header("x-nxgate-duplicate"), None);
                            delivered.push(headers[0].1.clone());
                            last = Some((headers, b));
                        }
                        "forged" => {
                            assert_eq!(resp.status, 401);
                            forged += 1;
                        }
                        _ => {
                            assert_eq!((resp.status, resp.header("x-nxgate-duplicate")), (200, Some("true")));
                            replayed += 1;
                        }
                    }
                    i += 1;
                }
                (delivered, forged, replayed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs / 2));
    let rss_warm = vm_rss_kb(pid);
    std::thread::sleep(Duration::from_secs(secs - secs / 2 - 1));
    let rss_end = vm_rss_kb(pid);
    stop.store(true, Ordering::Relaxed);
    let mut valid = Vec::new();
    let (mut forged, mut replayed) = (0, 0);
    for w in workers {
        let (d, f, rp) = w.join().unwrap();
        valid.extend(d);
        forged += f;
        replayed += rp;
    }
    let seen: Vec<String> = r.seen().iter().map(|x| x.header("x-request-id").unwrap().to_owned()).collect();
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    println!(
        "callback soak ({secs} s, {connections} connections): {} valid, {forged} forged, {replayed} replayed; RSS {rss_warm} kB -> {rss_end} kB",
        valid.len()
    );
    assert!(valid.len() > 100 && forged > 0 && replayed > 0);
    assert_eq!(unique.len(), seen.len(), "a callback was delivered twice");
    assert_eq!(seen.len(), valid.len(), "every valid callback delivered, nothing else");
    assert!(seen.iter().all(|id| id.starts_with("valid-")), "a forged callback was delivered");
    assert!(
        (rss_end as f64) <= rss_warm as f64 * 1.2,
        "RSS grew more than 20% after warm-up: {rss_warm} kB -> {rss_end} kB"
    );
}

// ---------------------------------------------------------------------------------------
// The listener's own rules: header deadline, reload, logs.

#[test]
fn a_callback_header_trickled_past_the_deadline_gets_408_and_the_receiver_nothing() {
    let r = TestReceiver::start();
    let mut opts = GatewayOptions::new("http://127.0.0.1:9".to_owned());
    opts.extra_top = format!("limits:\n  request_header_timeout_ms: 400\n{}", callbacks_block(&r.url(), ""));
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    let mut c = Connection::open(gw.callbacks[0]).unwrap();
    c.send_raw(b"POST /hooks/orderCallback HTTP/1.1\r\nhost: x\r\n").unwrap();
    let started = Instant::now();
    let resp = c.read_response().unwrap();
    assert_gateway_error(&resp, 408, 40801, "request_header_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    r.assert_untouched();
}

#[test]
fn a_reload_keeps_the_replay_memory_and_refuses_to_move_the_callback_listener() {
    let r = TestReceiver::start();
    let gw = gateway(&r);
    let b = body("reload-replay");
    let h = signed(Account::A, &b, &rid());
    assert_eq!(send(&gw, &h, &b).status, 200);
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let dup = send(&gw, &h, &b);
    assert_eq!((dup.status, dup.header("x-nxgate-duplicate")), (200, Some("true")), "remembered across a reload");
    assert_eq!(r.count(), 1);

    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        text.replace("listen: [\"127.0.0.1:0\"]\n  forward_to", "listen: [\"127.0.0.1:1\"]\n  forward_to"),
    )
    .unwrap();
    let refused = gw.admin_post("/reload").unwrap();
    assert_eq!(refused.status, 400);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("callbacks.listen"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let b2 = body("still-serving");
    assert_eq!(send(&gw, &signed(Account::B, &b2, &rid()), &b2).status, 200);
}

#[test]
fn a_trace_level_run_logs_no_callback_body_or_sign() {
    let r = TestReceiver::start();
    std::env::set_var("NXGATE_TEST_LOG", "trace");
    let gw = gateway(&r);
    std::env::remove_var("NXGATE_TEST_LOG");
    let mut signs = Vec::new();
    for (i, account) in [Account::A, Account::B].into_iter().enumerate() {
        let b = body(&format!("trace-{i}"));
        let h = signed(account, &b, &rid());
        signs.push(h[3].1.clone());
        assert_eq!(send(&gw, &h, &b).status, 200);
        assert_eq!(send(&gw, &h, &b).header("x-nxgate-duplicate"), Some("true"));
        let mut forged = h.clone();
        forged[0].1 = rid();
        assert_eq!(send(&gw, &forged, &b).status, 401);
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log();
    assert!(log.lines().count() > 10, "a trace run logs something:\n{log}");
    for line in log.lines() {
        assert!(!line.contains("body-marker-c41b"), "a callback body reached the log: {line}");
        for sign in &signs {
            assert!(!line.to_ascii_uppercase().contains(sign.as_str()), "a sign reached the log: {line}");
        }
    }
}
