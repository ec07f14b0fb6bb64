//! gzip bodies in both `--gzip-sign` modes, the vendor-style faults, the defects kept from
//! before, the echo extension and the request counter.

mod common;

use common::*;
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use nxgate_emulator::{EmulatorConfig, Fault, GzipSign, VendorFault};
use nxgate_testkit::client::{self, Response};
use nxgate_testkit::refsign::{self, Digest};
use serde_json::{json, Value};
use std::io::{Read, Write};

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Sends `sent` signed over `signed` (they differ for gzip bodies); returns the answer and
/// the requestID.
fn send(emu: &Emu, path: &str, signed: &[u8], sent: &[u8], extra: &[(&str, &str)]) -> (Response, String) {
    let ts = now_secs();
    let id = new_request_id();
    let sign = refsign::sign(Digest::Sha256, SECRET.as_bytes(), signed, &ts, &id, UUID);
    let mut h = vec![
        ("requestID", id.as_str()),
        ("uuid", UUID),
        ("createTs", ts.as_str()),
        ("sign", sign.as_str()),
        ("algorithm", "SHA256"),
    ];
    h.extend_from_slice(extra);
    (emu.raw(path, &h, sent), id)
}

fn emu_with(mode: GzipSign) -> Emu {
    let emu = Emu::with(EmulatorConfig { gzip_sign: mode, ..config() });
    emu.ok("createTask", &json!({"productID": "callbot", "userTaskID": "t-gz", "sceneID": "s"}));
    emu
}

fn import_body() -> Vec<u8> {
    let list: Vec<Value> =
        (0..50).map(|i| json!({"orderID": format!("gz-{i}"), "userPhone": "8615600000000"})).collect();
    json!({"productID": "callbot", "userTaskID": "t-gz", "callInfoList": {"orderCallbackUrl": "http://127.0.0.1:9/o", "callCallbackUrl": "http://127.0.0.1:9/c", "callList": list}})
        .to_string()
        .into_bytes()
}

const IMPORT: &str = "/callcentre/api/v3/importBatchCall";
const EXPORT: &str = "/callcentre/api/v3/exportBatchCall";
const GZIP_BODY: (&str, &str) = ("content-encoding", "gzip");

#[test]
fn a_gzip_import_is_accepted_signed_over_the_decoded_bytes_in_decoded_mode() {
    let emu = emu_with(GzipSign::Decoded);
    let plain = import_body();
    let wire = gz(&plain);
    let (r, _) = send(&emu, IMPORT, &plain, &wire, &[GZIP_BODY]);
    assert_eq!(r.try_json().unwrap()["retCode"], 0);
    assert_eq!(emu.state()["tasks"][0]["orders"].as_array().unwrap().len(), 50);
    // The compressed bytes are what the request counter saw arrive.
    let requests = client::request(emu.addr, "GET", "/_emulator/requests", &[], b"").unwrap().try_json().unwrap();
    let last = requests["recent"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["body_hex"].clone(), last["body_len"].clone()), (json!(hex::encode(&wire)), json!(wire.len())));
    // Signed over the wire bytes instead: refused with 6.
    let (r, _) = send(&emu, IMPORT, &wire, &wire, &[GZIP_BODY]);
    assert_eq!(r.try_json().unwrap()["retCode"], 6);
}

#[test]
fn a_gzip_import_is_accepted_signed_over_the_wire_bytes_in_wire_mode() {
    let emu = emu_with(GzipSign::Wire);
    let plain = import_body();
    let wire = gz(&plain);
    let (r, _) = send(&emu, IMPORT, &plain, &wire, &[GZIP_BODY]);
    assert_eq!(r.try_json().unwrap()["retCode"], 6);
    let (r, _) = send(&emu, IMPORT, &wire, &wire, &[GZIP_BODY]);
    assert_eq!(r.try_json().unwrap()["retCode"], 0);
}

#[test]
fn a_corrupt_gzip_body_is_3_and_gzip_elsewhere_is_3() {
    let junk = b"\x1f\x8b\x08\x00definitely not deflate".to_vec();
    for mode in [GzipSign::Decoded, GzipSign::Wire] {
        let emu = emu_with(mode);
        let (r, _) = send(&emu, IMPORT, &junk, &junk, &[GZIP_BODY]);
        assert_eq!(r.try_json().unwrap()["retCode"], 3, "{mode:?}");
    }
    let emu = emu_with(GzipSign::Wire);
    let body = gz(br#"{"productID":"callbot","page":1,"size":1,"queryConditions":{}}"#);
    let (r, _) = send(&emu, "/callcentre/api/v3/listTask", &body, &body, &[GZIP_BODY]);
    let v = r.try_json().unwrap();
    assert_eq!(v["retCode"], 3, "{v}");
}

#[test]
fn export_and_list_call_gzip_their_answer_when_asked_and_sign_per_mode() {
    for mode in [GzipSign::Decoded, GzipSign::Wire] {
        let emu = emu_with(mode);
        let plain = import_body();
        send(&emu, IMPORT, &plain, &plain, &[]);
        for path in [EXPORT, "/callcentre/api/v3/listCall"] {
            let body = br#"{"productID":"callbot","userTaskID":"t-gz"}"#;
            let (r, id) = send(&emu, path, body, body, &[("accept-encoding", "gzip, deflate")]);
            assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
            let decoded = gunzip(&r.body);
            let v: Value = serde_json::from_slice(&decoded).unwrap();
            assert_eq!(v["retCode"], 0, "{path}: {v}");
            let signed = if mode == GzipSign::Decoded { decoded.clone() } else { r.body.clone() };
            assert_answer_signed_over(&r, &signed, SECRET, &id, UUID);
            // Without Accept-Encoding: identity, signed over the body.
            let (r, id) = send(&emu, path, body, body, &[]);
            assert!(r.header("content-encoding").is_none());
            assert_answer_signed(&r, SECRET, &id, UUID);
        }
        // Other endpoints never gzip.
        let body = br#"{"productID":"callbot","page":1,"size":1,"queryConditions":{}}"#;
        let (r, _) = send(&emu, "/callcentre/api/v3/listTask", body, body, &[("accept-encoding", "gzip")]);
        assert!(r.header("content-encoding").is_none());
    }
}

fn list_task(emu: &Emu, fault: &str) -> Response {
    let body = json!({"productID": "callbot", "page": 1, "size": 1, "queryConditions": {}}).to_string();
    emu.signed("/callcentre/api/v3/listTask", body.as_bytes(), &[("x-emulator-fault", fault)])
}

#[test]
fn busy_and_maintenance_are_signed_7_and_5_in_each_envelope() {
    let emu = Emu::start();
    for (fault, code) in [("busy", 7), ("maintenance", 5)] {
        // `signed` checks the answer's signature.
        assert_eq!(list_task(&emu, fault).try_json().unwrap()["retCode"], code);
        let ping = emu.signed("/callcentre/api/v3/ping", br#"{"data":"x"}"#, &[("x-emulator-fault", fault)]);
        assert_eq!(ping.try_json().unwrap()["code"], code);
    }
}

#[test]
fn http_429_carries_retry_after_and_an_unsigned_busy_body() {
    let emu = Emu::start();
    let r = list_task(&emu, "http_429");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.try_json().unwrap()["retCode"], 7);
    assert!(r.header("sign").is_none());
    let body = br#"{"data":"x"}"#;
    let r = emu.signed(
        "/callcentre/api/v3/ping",
        body,
        &[("x-emulator-fault", "http_429"), (nxgate_emulator::RETRY_AFTER_HEADER, "30")],
    );
    assert_eq!((r.status, r.header("retry-after")), (429, Some("30")));
}

#[test]
fn a_standing_vendor_fault_applies_to_every_request_and_can_be_switched_at_run_time() {
    let emu = Emu::with(EmulatorConfig { vendor_fault: Some(VendorFault::Busy), ..config() });
    assert_eq!(list_task(&emu, "busy").try_json().unwrap()["retCode"], 7);
    let body = json!({"productID": "callbot", "page": 1, "size": 1, "queryConditions": {}});
    assert_eq!(emu.call("listTask", &body)["retCode"], 7);
    assert_eq!(emu.control("/_emulator/fault?name=none").status, 200);
    assert_eq!(emu.call("listTask", &body)["retCode"], 0);
    assert_eq!(emu.control("/_emulator/fault?name=maintenance").status, 200);
    assert_eq!(emu.call("listTask", &body)["retCode"], 5);
    assert_eq!(emu.control("/_emulator/fault?name=config").status, 200);
    assert_eq!(emu.call("listTask", &body)["retCode"], 7);
    assert_eq!(emu.control("/_emulator/fault?name=nonsense").status, 400);
}

#[test]
fn every_defect_is_still_served_by_name() {
    let emu = Emu::start();
    for fault in Fault::ALL {
        let mut headers = vec![("x-emulator-fault", fault.name())];
        if fault == Fault::Slow {
            headers.push((nxgate_emulator::DELAY_HEADER, "10"));
        }
        if fault == Fault::Oversized {
            headers.push((nxgate_emulator::SIZE_HEADER, "1000"));
        }
        let ts = now_secs();
        let id = new_request_id();
        let body = br#"{"data":"x"}"#;
        let sign = refsign::sign(Digest::Md5, SECRET.as_bytes(), body, &ts, &id, UUID);
        headers.extend([
            ("requestID", id.as_str()),
            ("uuid", UUID),
            ("createTs", ts.as_str()),
            ("sign", sign.as_str()),
        ]);
        let r = client::request(emu.addr, "POST", "/callcentre/api/v3/ping", &headers, body);
        match fault {
            Fault::Garbage | Fault::Reset | Fault::Truncated => assert!(r.is_err(), "{}: {r:?}", fault.name()),
            Fault::Unsigned500 => assert_eq!(r.unwrap().status, 500),
            Fault::MissingSign => assert!(r.unwrap().header("sign").is_none()),
            Fault::Oversized => assert_eq!(r.unwrap().try_json().unwrap()["data"].as_str().unwrap().len(), 1000),
            Fault::Slow => assert_answer_signed(&r.unwrap(), SECRET, &id, UUID),
            _ => {
                let r = r.unwrap();
                let h = |k: &str| r.header(k).unwrap().to_owned();
                let ok = refsign::is_valid(
                    Digest::from_header(&h("algorithm")).unwrap(),
                    SECRET.as_bytes(),
                    &r.body,
                    &h("createts"),
                    &id,
                    UUID,
                    &h("sign"),
                );
                let faithful = ok && h("requestid") == id && h("uuid") == UUID && h("algorithm") == "MD5";
                let fresh = h("createts").parse::<u64>().unwrap().abs_diff(now_secs().parse().unwrap()) < 60;
                assert!(!(faithful && fresh), "{} must bend the signature", fault.name());
            }
        }
    }
    let r = emu.raw("/callcentre/api/v3/ping", &[("x-emulator-fault", "nope")], b"{}");
    assert_eq!(r.status, 400);
}

#[test]
fn an_undocumented_path_is_echoed_as_an_emulator_extension() {
    let emu = Emu::start();
    let r = emu.signed("/callcentre/x?y=1", b"raw bytes", &[("x-extra", "1")]);
    let v = r.try_json().unwrap();
    assert_eq!((v["code"].clone(), v["msg"].clone()), (json!(0), json!("echo")));
    assert_eq!(v["data"]["path"], "/callcentre/x?y=1");
    assert_eq!(v["data"]["method"], "POST");
    assert_eq!(v["data"]["body_hex"], hex::encode(b"raw bytes"));
    assert!(v["data"]["headers"].as_array().unwrap().iter().any(|h| h[0] == "x-extra"));
    // Its signature is checked like any other.
    let r = emu.raw("/callcentre/x", &[], b"{}");
    assert_eq!(r.try_json().unwrap()["code"], 6001);
}

#[test]
fn the_request_counter_counts_vendor_requests_by_path_and_not_the_control_plane() {
    let emu = Emu::start();
    emu.signed("/callcentre/api/v3/ping", br#"{"data":"1"}"#, &[]);
    emu.signed("/callcentre/api/v3/ping", br#"{"data":"2"}"#, &[("x-emulator-fault", "busy")]);
    emu.raw("/callcentre/api/v3/listTask", &[], b"{}");
    emu.state();
    emu.advance(1);
    let r = client::request(emu.addr, "GET", "/_emulator/requests", &[], b"").unwrap();
    let v = r.try_json().unwrap();
    assert_eq!(v["total"], 3, "{v}");
    assert_eq!(v["by_path"], json!({"/callcentre/api/v3/ping": 2, "/callcentre/api/v3/listTask": 1}));
    let recent = v["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[2]["path"], "/callcentre/api/v3/listTask");
    assert_eq!(recent[1]["body_hex"], hex::encode(br#"{"data":"2"}"#), "the bytes as they arrived");
    assert_eq!(emu.state()["requests"], v);
}

#[test]
fn skip_request_verification_accepts_unsigned_requests() {
    let emu = Emu::with(EmulatorConfig { skip_request_verification: true, ..config() });
    let r = emu.raw("/callcentre/api/v3/ping", &[], br#"{"data":"unchecked"}"#);
    assert_eq!(r.try_json().unwrap()["data"], "unchecked");
}

#[test]
fn slow_ms_sets_the_delay_of_a_standing_slow_fault() {
    let emu = Emu::with(EmulatorConfig { fault: Some(Fault::Slow), slow_ms: Some(300), ..config() });
    let (ts, id) = (now_secs(), new_request_id());
    let body = br#"{"data":"x"}"#;
    let sign = refsign::sign(Digest::Md5, SECRET.as_bytes(), body, &ts, &id, UUID);
    let headers = [("requestID", id.as_str()), ("uuid", UUID), ("createTs", ts.as_str()), ("sign", sign.as_str())];
    let started = std::time::Instant::now();
    let r = client::request(emu.addr, "POST", "/callcentre/api/v3/ping", &headers, body).unwrap();
    let waited = started.elapsed();
    assert_answer_signed(&r, SECRET, &id, UUID);
    // At least the configured 300 ms, and nowhere near the 5 s the fault waits by default.
    assert!(waited >= std::time::Duration::from_millis(300), "{waited:?}");
    assert!(waited < std::time::Duration::from_millis(4_000), "{waited:?}");
}
