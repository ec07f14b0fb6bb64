//! The vendor's signature codes on requests (§2, §3), against requests signed by signers
//! that share no code with the product: the reference signer and Python's hashlib.

mod common;

use common::*;
use nxgate_emulator::{EmulatorConfig, SAMPLE_SECRET, SAMPLE_UUID};
use nxgate_testkit::refsign::{self, Digest};
use serde_json::json;
use std::collections::HashMap;

const PING: &str = "/callcentre/api/v3/ping";
const LIST_TASK: &str = "/callcentre/api/v3/listTask";

fn list_task_body() -> Vec<u8> {
    json!({"productID": "callbot", "page": 1, "size": 10, "queryConditions": {}}).to_string().into_bytes()
}

/// Headers for a request signed over `body` with `secret`, the algorithm header optional.
fn headers_for(
    uuid: &str,
    secret: &str,
    digest: Digest,
    algorithm: Option<&str>,
    ts: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let id = new_request_id();
    let sign = refsign::sign(digest, secret.as_bytes(), body, ts, &id, uuid);
    let mut h = vec![
        ("requestID".into(), id),
        ("uuid".into(), uuid.into()),
        ("createTs".into(), ts.into()),
        ("sign".into(), sign),
    ];
    if let Some(a) = algorithm {
        h.push(("algorithm".into(), a.into()));
    }
    h
}

fn send(emu: &Emu, path: &str, headers: &[(String, String)], body: &[u8]) -> serde_json::Value {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = emu.raw(path, &h, body);
    assert_eq!(r.status, 200, "the vendor answers refusals in an HTTP 200");
    r.try_json().unwrap()
}

#[test]
fn a_wrong_sign_is_code_6_on_ping_and_retcode_6_elsewhere() {
    let emu = Emu::start();
    let body = list_task_body();
    let h = headers_for(UUID, "not-the-secret", Digest::Md5, None, &now_secs(), &body);
    let v = send(&emu, LIST_TASK, &h, &body);
    assert_eq!(v["retCode"], 6, "{v}");
    assert!(v.get("code").is_none(), "retCode family: {v}");
    let ping = br#"{"data":"x"}"#;
    let h = headers_for(UUID, "not-the-secret", Digest::Sha256, Some("SHA256"), &now_secs(), ping);
    let v = send(&emu, PING, &h, ping);
    assert_eq!((v["code"].clone(), v["msg"].clone()), (json!(6), json!("sign mismatch")), "{v}");
}

#[test]
fn a_sign_over_other_bytes_is_code_6() {
    let emu = Emu::start();
    let body = list_task_body();
    let h = headers_for(UUID, SECRET, Digest::Md5, Some("MD5"), &now_secs(), &body);
    let mut other = body.clone();
    other.push(b' ');
    assert_eq!(send(&emu, LIST_TASK, &h, &other)["retCode"], 6);
    // The same headers over the right bytes pass: the 6 is the body's doing.
    assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 0);
}

#[test]
fn each_missing_signature_header_is_code_6001() {
    let emu = Emu::start();
    let body = list_task_body();
    let full = headers_for(UUID, SECRET, Digest::Md5, None, &now_secs(), &body);
    for dropped in ["requestID", "uuid", "createTs", "sign"] {
        let h: Vec<_> = full.iter().filter(|(k, _)| k != dropped).cloned().collect();
        assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 6001, "without {dropped}");
        let ping = br#"{"data":"x"}"#;
        let h: Vec<_> = headers_for(UUID, SECRET, Digest::Md5, None, &now_secs(), ping)
            .into_iter()
            .filter(|(k, _)| k != dropped)
            .collect();
        assert_eq!(send(&emu, PING, &h, ping)["code"], 6001, "ping without {dropped}");
    }
}

#[test]
fn an_unknown_account_is_code_6002_and_unsigned() {
    let emu = Emu::start();
    let body = list_task_body();
    let h = headers_for("no-such-account", SECRET, Digest::Md5, None, &now_secs(), &body);
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = emu.raw(LIST_TASK, &hs, &body);
    assert_eq!(r.try_json().unwrap()["retCode"], 6002);
    assert!(r.header("sign").is_none(), "there is no secret to sign for an unknown account");
}

#[test]
fn an_algorithm_other_than_md5_or_sha256_is_code_3() {
    let emu = Emu::start();
    let body = list_task_body();
    for algorithm in ["SHA1", "HMAC-SHA256", "sha512"] {
        let h = headers_for(UUID, SECRET, Digest::Md5, Some(algorithm), &now_secs(), &body);
        assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 3, "{algorithm}");
    }
    // Empty means MD5 (§1.1), and the spelling is case-insensitive.
    for algorithm in ["", "md5", "MD5"] {
        let h = headers_for(UUID, SECRET, Digest::Md5, Some(algorithm), &now_secs(), &body);
        assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 0, "{algorithm:?}");
    }
    let h = headers_for(UUID, SECRET, Digest::Sha256, Some("sha256"), &now_secs(), &body);
    assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 0);
}

#[test]
fn a_create_ts_that_is_no_number_is_3_and_a_stale_one_is_4() {
    let emu = Emu::start();
    let body = list_task_body();
    let h = headers_for(UUID, SECRET, Digest::Md5, None, "yesterday", &body);
    assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 3);
    let now: u64 = now_secs().parse().unwrap();
    for ts in [now - nxgate_emulator::REQUEST_SKEW_SECS - 5, now + nxgate_emulator::REQUEST_SKEW_SECS + 5] {
        let h = headers_for(UUID, SECRET, Digest::Md5, None, &ts.to_string(), &body);
        let v = send(&emu, LIST_TASK, &h, &body);
        assert_eq!(v["retCode"], 4, "{v}");
        assert!(v["retMsg"].as_str().unwrap().contains("createTs"), "{v}");
    }
    let h = headers_for(UUID, SECRET, Digest::Md5, None, &(now - 60).to_string(), &body);
    assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 0, "a minute of skew is fine");
}

/// The vendor's Python sample, run as it is written (json.dumps spacing, `requestId`
/// spelling, uuid4().hex, no algorithm header, MD5), printing what it would send.
const VENDOR_SAMPLE: &str = r#"
import hashlib, json, time, uuid, sys
secret, uid, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = json.loads(sys.argv[4])
data = json.dumps(body)
ts = str(round(time.time()))
rid = uuid.uuid4().hex
raw = secret + "&body=" + data + "&createTs=" + ts + "&requestID=" + rid + "&uuid=" + uid
sign = hashlib.md5(raw.encode("utf-8")).hexdigest().upper()
print(json.dumps({"headers": {"uuid": uid, "requestId": rid, "sign": sign, "createTs": ts}, "body": data}))
"#;

fn python_request(secret: &str, uuid: &str, body: &serde_json::Value) -> (Vec<(String, String)>, Vec<u8>) {
    let out = std::process::Command::new("python3")
        .args(["-c", VENDOR_SAMPLE, secret, uuid, "unused", &body.to_string()])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let headers =
        v["headers"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
    (headers, v["body"].as_str().unwrap().as_bytes().to_vec())
}

#[test]
fn the_vendor_python_sample_request_is_accepted() {
    let emu = Emu::with(EmulatorConfig {
        tenants: HashMap::from([(
            SAMPLE_UUID.to_owned(),
            nxgate_core::secret::Secret::new(SAMPLE_SECRET.as_bytes().to_vec()),
        )]),
        ..Default::default()
    });
    // json.dumps writes ", " and ": ": the bytes signed are the bytes sent.
    let (h, body) = python_request(SAMPLE_SECRET, SAMPLE_UUID, &json!({"data": "hello, vendor"}));
    assert!(String::from_utf8_lossy(&body).contains("\"data\": \"hello"), "python spacing");
    assert!(h.iter().any(|(k, _)| k == "requestId") && !h.iter().any(|(k, _)| k == "algorithm"));
    let v = send(&emu, PING, &h, &body);
    assert_eq!((v["code"].clone(), v["data"].clone()), (json!(0), json!("hello, vendor")), "{v}");
    let (h, body) = python_request(
        SAMPLE_SECRET,
        SAMPLE_UUID,
        &json!({"productID": "callbot", "page": 1, "size": 5, "queryConditions": {"taskStatus": [1, 2]}}),
    );
    assert_eq!(send(&emu, LIST_TASK, &h, &body)["retCode"], 0);
    // And hashlib with the wrong secret is refused with 6.
    let (h, body) = python_request("wrong", SAMPLE_UUID, &json!({"data": "x"}));
    assert_eq!(send(&emu, PING, &h, &body)["code"], 6);
}

#[test]
fn answers_are_signed_with_the_requests_algorithm_and_echo_its_ids() {
    let emu = Emu::start();
    for digest in [Digest::Md5, Digest::Sha256] {
        // signed_as checks the answer's signature with the reference signer.
        let r = emu.signed_as(UUID, SECRET, digest, PING, br#"{"data":"a"}"#, &[]);
        assert_eq!(r.header("algorithm"), Some(digest.name()));
    }
}
