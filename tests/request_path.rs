//! The request path, step by step, against the real binary and the emulator.

mod common;

use common::*;
use nxgate_testkit::refsign::{self, Digest};
use std::time::Duration;

fn gateway() -> (Emulator, Gateway) {
    let emu = Emulator::start();
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    (emu, gw)
}

// ---- 1. tenant selection -------------------------------------------------------------

#[test]
fn bearer_key_selects_the_tenant_and_its_uuid_and_algorithm() {
    let (_emu, gw) = gateway();
    let a = Echo::of(&gw.post("/callcentre/x", &[("authorization", &format!("Bearer {KEY_A}"))], b"{}"));
    assert_eq!(a.header("uuid").as_deref(), Some(UUID_A));
    assert_eq!(a.header("algorithm").as_deref(), Some("MD5"));
    let b = Echo::of(&gw.post("/callcentre/x", &[("authorization", &format!("bearer {KEY_B}"))], b"{}"));
    assert_eq!(b.header("uuid").as_deref(), Some(UUID_B));
    assert_eq!(b.header("algorithm").as_deref(), Some("SHA256"));
}

#[test]
fn unknown_or_missing_key_is_401_without_a_default_tenant() {
    let (_emu, gw) = gateway();
    for headers in [vec![("authorization", "Bearer not-a-key")], vec![("authorization", "Basic eDp5")], vec![]] {
        let r = gw.post("/callcentre/api/v3/ping", &headers, b"{}");
        assert_gateway_error(&r, 401, 40101, "unauthenticated");
    }
}

#[test]
fn callers_without_a_key_get_the_default_tenant() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.default_tenant = Some("tenant-b");
    let gw = Gateway::start(&opts);
    let e = Echo::of(&gw.post("/callcentre/x", &[], b"{}"));
    assert_eq!(e.header("uuid").as_deref(), Some(UUID_B));
    // A wrong key is still refused: the default is for callers that present none.
    assert_gateway_error(
        &gw.post("/callcentre/x", &[("authorization", "Bearer wrong")], b"{}"),
        401,
        40101,
        "unauthenticated",
    );
}

#[test]
fn authorization_is_never_forwarded() {
    let (_emu, gw) = gateway();
    let e = Echo::of(&gw.post_a("/callcentre/x", b"{}"));
    assert!(e.headers("authorization").is_empty());
}

// ---- 2. routes -------------------------------------------------------------------------

#[test]
fn paths_outside_allow_prefixes_are_404() {
    let (_emu, gw) = gateway();
    for path in
        ["/", "/admin", "/callcentre", "/callcentre/../admin", "/callcentre/%2e%2e/admin", "/callcentre/..%2Fadmin"]
    {
        let r = gw.post_a(path, b"{}");
        assert_gateway_error(&r, 404, 40401, "route_not_allowed");
    }
}

// ---- 3. body framing and limits --------------------------------------------------------

fn small_limit_gateway() -> (Emulator, Gateway) {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_top = "limits:\n  max_request_body_bytes: 64\n".into();
    (emu, Gateway::start(&opts))
}

#[test]
fn a_body_at_the_limit_passes_and_one_byte_more_is_413() {
    let (_emu, gw) = small_limit_gateway();
    let ok = vec![b'a'; 64];
    assert_eq!(Echo::of(&gw.post_a("/callcentre/x", &ok)).body(), ok);
    assert_gateway_error(&gw.post_a("/callcentre/x", &[b'a'; 65]), 413, 41301, "body_too_large");
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body_is_sent() {
    let (_emu, gw) = small_limit_gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    // Only the header: a gateway that waited for the body would hang here.
    c.send_raw(format!("POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-length: 1000000000\r\n\r\n").as_bytes()).unwrap();
    let r = c.read_response().unwrap();
    assert_gateway_error(&r, 413, 41301, "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn an_oversized_chunked_body_is_refused_while_reading() {
    let (_emu, gw) = small_limit_gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    let chunk = "a".repeat(40);
    c.send_raw(format!("POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ntransfer-encoding: chunked\r\n\r\n28\r\n{chunk}\r\n28\r\n{chunk}\r\n0\r\n\r\n").as_bytes()).unwrap();
    assert_gateway_error(&c.read_response().unwrap(), 413, 41301, "body_too_large");
}

#[test]
fn chunked_and_content_length_bodies_arrive_byte_identical_with_a_content_length() {
    let (_emu, gw) = gateway();
    let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect(); // not UTF-8
    let e = Echo::of(&gw.post_a("/callcentre/x", &body));
    assert_eq!(e.body(), body);
    assert_eq!(e.header("content-length"), Some(body.len().to_string()));
    assert!(e.headers("transfer-encoding").is_empty());

    let mut c = Connection::open(gw.addr).unwrap();
    let mut raw = format!(
        "POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(1000) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send_raw(&raw).unwrap();
    let e = Echo::of(&c.read_response().unwrap());
    assert_eq!(e.body(), body);
    assert_eq!(e.header("content-length"), Some("3000".into()));
    assert!(e.headers("transfer-encoding").is_empty());
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    let (_emu, gw) = gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    c.send_raw(format!("POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes()).unwrap();
    assert_gateway_error(&c.read_response().unwrap(), 400, 40001, "bad_request");
}

#[test]
fn duplicate_content_length_is_400() {
    let (_emu, gw) = gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    c.send_raw(format!("POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{{}}").as_bytes()).unwrap();
    assert_gateway_error(&c.read_response().unwrap(), 400, 40001, "bad_request");
}

#[test]
fn expect_100_continue_is_answered_and_the_body_still_signed() {
    let (_emu, gw) = gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    c.send_raw(format!("POST /callcentre/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY_A}\r\nexpect: 100-continue\r\ncontent-length: 7\r\n\r\n").as_bytes()).unwrap();
    assert_eq!(c.read_interim().unwrap(), 100);
    c.send_raw(b"{\"a\":1}").unwrap();
    let e = Echo::of(&c.read_response().unwrap());
    assert_eq!(e.body(), b"{\"a\":1}");
    assert!(e.headers("expect").is_empty());
}

// ---- 4. header handling -----------------------------------------------------------------

#[test]
fn client_signature_headers_are_replaced_in_any_letter_case() {
    let (_emu, gw) = gateway();
    let spoof = [
        ("RequestID", "spoofed-id"),
        ("UUID", "spoofed-uuid"),
        ("CREATETS", "1"),
        ("Sign", "SPOOFED"),
        ("Algorithm", "SHA256"),
        ("authorization", &format!("Bearer {KEY_A}")),
    ];
    let r = gw.post("/callcentre/x", &spoof, b"{}");
    let e = Echo::of(&r);
    // Exactly one of each, with the gateway's own values: the requestID is the one the
    // caller is told in x-request-id, the uuid and algorithm are tenant A's, the createTs
    // is the gateway's clock (the exact second is not knowable from here: within 5 s of
    // ours), and the sign is right (by the reference signer) over exactly those values.
    for n in ["requestID", "uuid", "createTs", "sign", "algorithm"] {
        assert_eq!(e.headers(n).len(), 1, "{n}: {:?}", e.headers(n));
    }
    let id = e.header("requestID").unwrap();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(e.header("uuid").as_deref(), Some(UUID_A));
    assert_eq!(e.header("algorithm").as_deref(), Some("MD5"));
    let ts = e.header("createTs").unwrap();
    assert!(ts.parse::<u64>().unwrap().abs_diff(unix_now()) <= 5, "createTs {ts}");
    let expected = refsign::sign(Digest::Md5, SECRET_A.as_bytes(), b"{}", &ts, &id, UUID_A);
    assert_eq!(e.header("sign"), Some(expected));
}

#[test]
fn signature_headers_are_fresh_well_formed_and_valid_over_the_exact_body() {
    let (_emu, gw) = gateway();
    for (key, uuid, secret, alg) in [(KEY_A, UUID_A, SECRET_A, Digest::Md5), (KEY_B, UUID_B, SECRET_B, Digest::Sha256)]
    {
        let body = b"{\"x\": [1, 2,  3]}\n";
        let r = gw.post("/callcentre/x", &[("authorization", &format!("Bearer {key}"))], body);
        let e = Echo::of(&r);
        let id = e.header("requestID").unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert_eq!(r.header("x-request-id"), Some(id.as_str()));
        let ts = e.header("createTs").unwrap();
        assert!(ts.parse::<u64>().unwrap().abs_diff(unix_now()) <= 5);
        assert_eq!(e.header("algorithm").as_deref(), Some(alg.name()));
        // Recompute the signature with the reference signer (no code shared with the
        // product's) over the bytes the upstream received.
        let expected = refsign::sign(alg, secret.as_bytes(), &e.body(), &ts, &id, uuid);
        assert_eq!(e.header("sign").unwrap(), expected);
        assert_eq!(e.body(), body);
        // The vendor's spelling of the header names is kept on the wire.
        let names = e.names();
        for n in ["requestID", "uuid", "createTs", "sign", "algorithm"] {
            assert!(names.iter().any(|x| x == n), "{n} not spelled as the vendor does: {names:?}");
        }
    }
}

#[test]
fn request_ids_are_unique_per_request() {
    let (_emu, gw) = gateway();
    let ids: std::collections::HashSet<String> =
        (0..20).map(|_| Echo::of(&gw.post_a("/callcentre/x", b"{}")).header("requestID").unwrap()).collect();
    assert_eq!(ids.len(), 20);
}

#[test]
fn query_content_type_and_custom_headers_pass_unchanged_and_hop_by_hop_do_not() {
    let (emu, gw) = gateway();
    let r = gw.post(
        "/callcentre/x/y?b=2&a=%20x&a=1",
        &[
            ("authorization", &format!("Bearer {KEY_A}")),
            ("x-custom", "Value With  Spaces"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "drop-me"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
        ],
        b"{}",
    );
    let e = Echo::of(&r);
    assert_eq!(e.path(), "/callcentre/x/y?b=2&a=%20x&a=1");
    assert_eq!(e.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(e.header("x-custom").as_deref(), Some("Value With  Spaces"));
    assert_eq!(e.headers("x-multi"), vec!["1", "2"]);
    assert_eq!(e.header("host"), Some(emu.addr.to_string()));
    for hop in ["x-hop", "keep-alive", "te", "upgrade"] {
        assert!(e.headers(hop).is_empty(), "{hop} was forwarded");
    }
}

#[test]
fn get_requests_are_signed_over_the_empty_body() {
    let (_emu, gw) = gateway();
    let r = client::request(gw.addr, "GET", "/callcentre/x", &[("authorization", &format!("Bearer {KEY_A}"))], b"")
        .unwrap();
    let e = Echo::of(&r);
    assert_eq!(e.0["method"], "GET");
    assert_eq!(e.body(), b"");
}

// ---- 5/6. response path ----------------------------------------------------------------

#[test]
fn ping_round_trips_with_both_algorithms_and_carries_the_upstream_signature_headers() {
    let (_emu, gw) = gateway();
    for (key, uuid, secret, alg) in [(KEY_A, UUID_A, SECRET_A, Digest::Md5), (KEY_B, UUID_B, SECRET_B, Digest::Sha256)]
    {
        let r = gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {key}"))], br#"{"data":"hi"}"#);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["code"], 0);
        assert_eq!(v["data"], "hi");
        let id = r.header("x-request-id").unwrap();
        assert_eq!(v["reqId"], id);
        assert_eq!(r.header("requestid"), Some(id));
        // The upstream's signature reaches the caller intact: right, by the reference
        // signer, over the exact body and the requestID, createTs and uuid it carries.
        assert_eq!(r.header("uuid"), Some(uuid));
        assert_eq!(r.header("algorithm"), Some(alg.name()));
        let ts = r.header("createts").expect("createTs is passed on");
        assert!(ts.parse::<u64>().unwrap().abs_diff(unix_now()) <= 5, "createTs {ts}");
        let sign = r.header("sign").expect("sign is passed on");
        assert!(refsign::is_valid(alg, secret.as_bytes(), &r.body, ts, id, uuid, sign), "sign {sign}");
        assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    }
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let (_emu, gw) = gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    for i in 0..50 {
        let data = format!("req-{i}");
        let body = format!(r#"{{"data":"{data}"}}"#);
        let r = c
            .request(
                "POST",
                "/callcentre/api/v3/ping",
                &[("authorization", &format!("Bearer {KEY_A}"))],
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.json()["data"], data);
    }
    // An error decided after the body was read (here: a refused upstream answer) keeps
    // the connection too.
    let r = c
        .request(
            "POST",
            "/callcentre/api/v3/ping",
            &[("authorization", &format!("Bearer {KEY_A}")), ("x-emulator-fault", "bad_sign")],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r =
        c.request("POST", "/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {KEY_A}"))], b"{}").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn refusals_decided_before_the_body_is_read_close_the_connection() {
    // The gateway does not drain an unauthenticated or unroutable body just to keep a
    // connection: it answers and closes.
    let (_emu, gw) = gateway();
    let mut c = Connection::open(gw.addr).unwrap();
    let r = c.request("POST", "/nope", &[("authorization", &format!("Bearer {KEY_A}"))], b"{}").unwrap();
    assert_gateway_error(&r, 404, 40401, "route_not_allowed");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
}

#[test]
fn unreachable_upstream_is_502_50201() {
    let closed = client::ClosedPort::new().unwrap();
    let gw = Gateway::start(&GatewayOptions::new(format!("http://{}", closed.addr)));
    let v = assert_gateway_error(&gw.ping_a(&[], "x"), 502, 50201, "upstream_unreachable");
    assert!(v["msg"].as_str().unwrap().contains("connect"), "{v}");
}

#[test]
fn a_slow_upstream_is_504_50401_within_the_read_timeout() {
    let emu = Emulator::start();
    let yaml = opts_yaml(&GatewayOptions::new(emu.url())).replace("read_timeout_ms: 5000", "read_timeout_ms: 300");
    let gw = Gateway::start_yaml(&yaml);
    let started = std::time::Instant::now();
    let r = gw.ping_a(&[("x-emulator-fault", "slow"), ("x-emulator-delay-ms", "3000")], "x");
    assert_gateway_error(&r, 504, 50401, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
}

#[test]
fn the_total_timeout_bounds_the_whole_exchange() {
    let emu = Emulator::start();
    let opts = GatewayOptions::new(emu.url());
    let yaml = opts_yaml(&opts).replace("total_timeout_ms: 10000", "total_timeout_ms: 400");
    let gw = Gateway::start_yaml(&yaml);
    let started = std::time::Instant::now();
    let r = gw.ping_a(&[("x-emulator-fault", "slow"), ("x-emulator-delay-ms", "3000")], "x");
    let v = assert_gateway_error(&r, 504, 50401, "upstream_timeout");
    assert!(v["msg"].as_str().unwrap().contains("400 ms"), "{v}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

/// Renders the options' YAML with a fresh listen port.
fn opts_yaml(opts: &GatewayOptions) -> String {
    opts.yaml(any_port())
}

// ---- h2c -------------------------------------------------------------------------------

fn curl_h2c(gw: &Gateway, extra: &[&str], body: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-D", "-", "-o", "-", "--max-time", "10"])
        .args(["-H", &format!("authorization: Bearer {KEY_A}"), "-H", "content-type: application/json"])
        .args(extra)
        .args(["--data-binary", body])
        .arg(format!("http://{}/callcentre/api/v3/ping", gw.addr))
        .output()
        .expect("curl is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn h2c_callers_are_signed_verified_and_refused_like_http1_callers() {
    let (_emu, gw) = gateway();
    let (head, body) = curl_h2c(&gw, &[], r#"{"data":"over h2c"}"#);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(body.contains(r#""data":"over h2c""#), "{body}");
    let (head, body) = curl_h2c(&gw, &["-H", "x-emulator-fault: bad_sign"], r#"{"data":"tampered"}"#);
    assert!(head.starts_with("HTTP/2 502") && head.contains("x-nxgate-error: bad_upstream_signature"), "{head}");
    assert!(!body.contains("tampered"), "{body}");
    // HTTP/1.1 callers share the port.
    assert_eq!(gw.ping_a(&[], "h1").json()["data"], "h1");
}
