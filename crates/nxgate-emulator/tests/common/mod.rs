//! The emulator's test harness: an in-process emulator, a signing client built on the
//! reference signer, and a callback receiver that records what arrives.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use nxgate_core::secret::Secret;
use nxgate_emulator::{self as emulator, EmulatorConfig};
use nxgate_testkit::client::{self, Response};
use nxgate_testkit::refsign::{self, Digest};

pub const UUID: &str = "test-uuid-0001";
pub const SECRET: &str = "test-secret-0001";
/// A second account, whose callbacks are signed with SHA256.
pub const UUID_SHA: &str = "test-uuid-0002";
pub const SECRET_SHA: &str = "test-secret-0002";
pub const V3: &str = "/callcentre/api/v3/";

/// An emulator on a loopback port (port 0), stopped when dropped.
pub struct Emu {
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

pub fn tenants() -> HashMap<String, Secret> {
    HashMap::from([
        (UUID.to_owned(), Secret::new(SECRET.as_bytes().to_vec())),
        (UUID_SHA.to_owned(), Secret::new(SECRET_SHA.as_bytes().to_vec())),
    ])
}

pub fn config() -> EmulatorConfig {
    EmulatorConfig {
        tenants: tenants(),
        tenant_algorithms: HashMap::from([(UUID_SHA.to_owned(), Digest::Sha256)]),
        seed: 7,
        ..Default::default()
    }
}

pub fn now_secs() -> String {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string()
}

pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Emu {
    pub fn start() -> Self {
        Self::with(config())
    }

    pub fn with(cfg: EmulatorConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (addr, _task) = rt.block_on(emulator::spawn("127.0.0.1:0".parse().unwrap(), Arc::new(cfg), None)).unwrap();
        Emu { addr, _rt: rt }
    }

    /// Sends raw headers and body.
    pub fn raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        client::request(self.addr, "POST", path, headers, body).unwrap()
    }

    /// A request signed (MD5, `algorithm: MD5` header) as account UUID.
    pub fn signed(&self, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
        self.signed_as(UUID, SECRET, Digest::Md5, path, body, extra)
    }

    pub fn signed_as(
        &self,
        uuid: &str,
        secret: &str,
        digest: Digest,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Response {
        let ts = now_secs();
        let id = new_request_id();
        let sign = refsign::sign(digest, secret.as_bytes(), body, &ts, &id, uuid);
        let mut headers = vec![
            ("content-type", "application/json"),
            ("requestID", id.as_str()),
            ("uuid", uuid),
            ("createTs", ts.as_str()),
            ("sign", sign.as_str()),
            ("algorithm", digest.name()),
        ];
        headers.extend_from_slice(extra);
        let r = self.raw(path, &headers, body);
        // Every answer from a known account is signed: check it with the reference signer.
        if r.status == 200 && !r.headers.iter().any(|(k, _)| k == "content-encoding") {
            assert_answer_signed(&r, secret, &id, uuid);
        }
        r
    }

    /// POSTs JSON to endpoint `name` and returns the answer's JSON.
    pub fn call(&self, name: &str, body: &Value) -> Value {
        let r = self.signed(&format!("{V3}{name}"), body.to_string().as_bytes(), &[]);
        assert_eq!(r.status, 200, "{name}: {}", String::from_utf8_lossy(&r.body));
        r.try_json().unwrap()
    }

    /// Like `call`, but asserts `retCode == 0` and returns the answer.
    pub fn ok(&self, name: &str, body: &Value) -> Value {
        let v = self.call(name, body);
        assert_eq!(v["retCode"], 0, "{name} {body}: {v}");
        v
    }

    /// The `retCode` of a call (asserting the envelope is there).
    pub fn code(&self, name: &str, body: &Value) -> i64 {
        let v = self.call(name, body);
        assert!(v["retMsg"].is_string() && v["responseID"].is_string(), "{name}: envelope: {v}");
        v["retCode"].as_i64().unwrap_or_else(|| panic!("{name}: no retCode: {v}"))
    }

    pub fn advance(&self, secs: u64) -> Value {
        let r = client::request(self.addr, "POST", &format!("/_emulator/advance?secs={secs}"), &[], b"").unwrap();
        assert_eq!(r.status, 200);
        r.try_json().unwrap()
    }

    pub fn state(&self) -> Value {
        let r = client::request(self.addr, "GET", "/_emulator/state", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        r.try_json().unwrap()
    }

    pub fn control(&self, path_and_query: &str) -> Response {
        client::request(self.addr, "POST", path_and_query, &[], b"").unwrap()
    }
}

/// Asserts the answer carries the request's requestID and uuid and a sign that the
/// reference signer accepts over the body.
pub fn assert_answer_signed(r: &Response, secret: &str, request_id: &str, uuid: &str) {
    assert_answer_signed_over(r, &r.body, secret, request_id, uuid)
}

pub fn assert_answer_signed_over(r: &Response, signed: &[u8], secret: &str, request_id: &str, uuid: &str) {
    let h = |k: &str| r.header(k).unwrap_or_else(|| panic!("answer lacks {k}: {:?}", r.headers));
    assert_eq!(h("requestid"), request_id);
    assert_eq!(h("uuid"), uuid);
    let digest = Digest::from_header(h("algorithm")).unwrap();
    assert!(
        refsign::is_valid(digest, secret.as_bytes(), signed, h("createts"), request_id, uuid, h("sign")),
        "answer sign does not verify"
    );
}

/// A task body with the given callback receiver.
pub fn campaign_body(user_task_id: &str, receiver: &str, numbers: usize) -> Value {
    let list: Vec<Value> = (0..numbers)
        .map(|i| serde_json::json!({"orderID": format!("{user_task_id}-o{i}"), "userPhone": format!("8613800000{i:03}"), "other": format!("row {i}")}))
        .collect();
    serde_json::json!({
        "productID": "callbot",
        "userTaskID": user_task_id,
        "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "campaign", "maxCall": 5, "maxRingTime": 30, "taskCallbackUrl": format!("{receiver}/task")},
        "funcFlag": {"roundRedial": false, "taskKeep": false},
        "callInfoList": {
            "orderCallbackUrl": format!("{receiver}/order"),
            "callCallbackUrl": format!("{receiver}/call"),
            "callList": list,
        }
    })
}

/// One callback as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Whether the sign verifies with the reference signer under `digest`.
    pub fn verifies(&self, secret: &str, digest: Digest) -> bool {
        let h = |k: &str| self.header(k).unwrap_or("");
        refsign::is_valid(digest, secret.as_bytes(), &self.body, h("createTs"), h("requestID"), h("uuid"), h("sign"))
    }
}

/// A callback receiver on a loopback port: records every request and answers 200, except
/// that the first `fail_first` requests to a path get 500.
pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(fail_first: HashMap<String, usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut failures_left = fail_first;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((path, headers, body)) = read_one(&mut stream) else { continue };
                let status = match failures_left.get_mut(&path) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        500
                    }
                    _ => 200,
                };
                log.lock().unwrap().push(Received { path, headers, body, answered: status });
                let reply = if status == 200 { "ok" } else { "boom" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Receiver { url, seen }
    }

    pub fn all(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn at(&self, path: &str) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }
}

/// Path, headers and body of one request.
type RawRequest = (String, Vec<(String, String)>, Vec<u8>);

fn read_one(stream: &mut std::net::TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let path = req.path.unwrap_or("").to_owned();
            while buf.len() < head + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((path, headers, buf[head..head + len].to_vec()));
        }
    }
}
