//! A local stand-in for `nxbot.nxcloud.com`'s Callbot v3 API, for users' CI, our tests, the
//! demo and the benchmarks: no NXCloud account needed.
//!
//! What it models (details and every undocumented choice: `docs/emulator.md`):
//! - every documented endpoint of the v3 API, with the vendor's field validation codes and
//!   its two envelopes (`code/msg/reqId/timestamp/data` for ping, `retCode/retMsg/responseID`
//!   for the rest);
//! - the signature rule on requests and answers, with the vendor's refusal codes (6, 6001,
//!   6002, 3), using the independent reference signer `nxgate_testkit::refsign`;
//! - tasks, orders and calls, dialled on a simulated clock with seeded outcomes, reported
//!   through signed task/order/call callbacks with bounded retries;
//! - gzip bodies on the endpoints that document them;
//! - faults on demand, per request (`x-emulator-fault`) or always (`--fault`);
//! - an inspection and control surface under `/_emulator/` (state, request counter,
//!   clock stepping), unauthenticated: never expose an emulator beyond a test network.
//!
//! Any path that is not a documented endpoint is echoed back (method, path, headers, body)
//! in the `code` envelope: an emulator extension the gateway's own tests use to see what
//! the gateway sent upstream.
//!
//! The request path, in the order a request travels, is `respond`'s body.

#![warn(missing_docs)]

pub mod cli;

mod api;
mod auth;
mod callbacks;
mod control;
mod faults;
mod http;
mod sim;
mod state;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use bytes::BytesMut;
use nxgate_core::secret::Secret;
use nxgate_testkit::refsign::Digest;
use serde_json::{json, Value};

pub use auth::REQUEST_SKEW_SECS;
pub use callbacks::CallbackRetry;
pub use faults::{
    Fault, Misbehaviour, VendorFault, DEFAULT_OVERSIZE_BYTES, DEFAULT_RETRY_AFTER_SECS, DEFAULT_SLOW_MS, DELAY_HEADER,
    FAULT_HEADER, RETRY_AFTER_HEADER, SIZE_HEADER,
};
pub use http::Resettable;

use api::Endpoint;
use auth::{header, Refusal};
use http::{Delivery, Request, Response};
use state::World;

/// The vendor's public sample account id, used by the demo.
pub const SAMPLE_UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
/// The vendor's public sample secret key, used by the demo.
pub const SAMPLE_SECRET: &str = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";

/// Which bytes the `sign` of a gzip body covers. The vendor does not say (§1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GzipSign {
    /// The decoded (uncompressed) bytes.
    #[default]
    Decoded,
    /// The bytes on the wire (compressed).
    Wire,
}

impl std::str::FromStr for GzipSign {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "decoded" => Ok(GzipSign::Decoded),
            "wire" => Ok(GzipSign::Wire),
            _ => Err(format!("--gzip-sign takes decoded or wire, not {s:?}")),
        }
    }
}

/// How the emulator behaves. Construct with `..Default::default()`: fields are added over
/// time.
#[derive(Debug, Default)]
pub struct EmulatorConfig {
    /// Known accounts: uuid → secret.
    pub tenants: HashMap<String, Secret>,
    /// Each account's configured algorithm (the console setting), used to sign its
    /// callbacks; an account not listed uses MD5. Requests and answers use the request's
    /// `algorithm` header instead.
    pub tenant_algorithms: HashMap<String, Digest>,
    /// Skip request signature checks (only for the benchmark's "direct" row).
    pub skip_request_verification: bool,
    /// Misbehave on every request (a defect).
    pub fault: Option<Fault>,
    /// Answer every request busy / in maintenance / 429 (when `fault` is `None`).
    pub vendor_fault: Option<VendorFault>,
    /// Delay of `slow` when a request gives no `x-emulator-delay-ms` (`None`: 5 s).
    pub slow_ms: Option<u64>,
    /// Seed of the call outcomes and ids: the same seed and requests give the same calls.
    pub seed: u64,
    /// Simulated seconds per wall-clock second; 0 (the default here) freezes the clock
    /// so only `POST /_emulator/advance` moves it.
    pub time_scale: f64,
    /// Which bytes a gzip body's sign covers, for requests and answers.
    pub gzip_sign: GzipSign,
    /// How undeliverable callbacks are retried.
    pub callback_retry: CallbackRetry,
}

/// A running emulator's shared state.
pub(crate) struct Emulator {
    pub cfg: Arc<EmulatorConfig>,
    world: Mutex<World>,
    clock: Mutex<sim::Clock>,
    /// A fault set at run time through `/_emulator/fault`; overrides the configured one.
    runtime_fault: Mutex<Option<Option<Misbehaviour>>>,
    /// Serializes clock advances (the ticker's and the tests').
    pub advance_lock: tokio::sync::Mutex<()>,
}

impl Emulator {
    fn new(cfg: Arc<EmulatorConfig>) -> Self {
        let origin = wall_ms();
        Emulator {
            world: Mutex::new(World::new(cfg.seed, origin, cfg.tenant_algorithms.clone())),
            clock: Mutex::new(sim::Clock::new(origin, cfg.time_scale)),
            runtime_fault: Mutex::new(None),
            advance_lock: tokio::sync::Mutex::new(()),
            cfg,
        }
    }

    /// The model. A poisoned lock (a handler panicked) still holds a usable model.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> MutexGuard<'_, sim::Clock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault for requests that name none.
    pub fn standing_fault(&self) -> Option<Misbehaviour> {
        let runtime = *self.runtime_fault.lock().unwrap_or_else(|e| e.into_inner());
        runtime.unwrap_or_else(|| {
            self.cfg.fault.map(Misbehaviour::Defect).or(self.cfg.vendor_fault.map(Misbehaviour::Vendor))
        })
    }

    pub fn set_runtime_fault(&self, fault: Option<Misbehaviour>) {
        *self.runtime_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }
}

/// Binds `addr` and serves until the task is dropped. Returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    cfg: Arc<EmulatorConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, cfg, tls))))
}

/// Accepts connections forever (and, with a time scale, runs the clock).
pub async fn serve(listener: TcpListener, cfg: Arc<EmulatorConfig>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let emu = Arc::new(Emulator::new(cfg));
    tokio::join!(sim::ticker(emu.clone()), accept_loop(listener, emu, tls));
}

async fn accept_loop(listener: TcpListener, emu: Arc<Emulator>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "emulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let emu = emu.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, &emu).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => connection(s, &emu).await,
                    Err(e) => tracing::debug!(error = %e, "emulator TLS handshake failed"),
                },
            }
        });
    }
}

async fn connection<S: Resettable>(mut stream: S, emu: &Arc<Emulator>) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let req = match http::read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(msg) => {
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
                            msg.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
        };
        let close = req.close;
        let resp = respond(emu, &req).await;
        let keep_going = http::write_response(&mut stream, resp, close).await;
        if !keep_going || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(crate) fn wall_secs() -> u64 {
    wall_ms() / 1000
}

/// The two answer shapes (§1.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// ping (and the echo extension): `code`, `msg`, `reqId`, `timestamp`, `data`.
    Code,
    /// every other endpoint: `retCode`, `retMsg`, `responseID`, then the endpoint's fields.
    RetCode,
}

fn envelope(family: Family, code: i64, msg: &str, request_id: &str, fields: serde_json::Map<String, Value>) -> Vec<u8> {
    let value = match family {
        Family::Code => json!({
            "data": fields.get("data").cloned().unwrap_or(Value::Null),
            "timestamp": wall_secs(),
            "code": code,
            "msg": msg,
            // The vendor calls it a tracing id; echoing the requestID lets callers match
            // an answer to its request.
            "reqId": request_id,
        }),
        Family::RetCode => {
            let mut m = serde_json::Map::new();
            m.insert("retCode".into(), json!(code));
            m.insert("retMsg".into(), json!(msg));
            m.insert("responseID".into(), json!(format!("{:032x}", rand::random::<u128>())));
            m.extend(fields);
            Value::Object(m)
        }
    };
    serde_json::to_vec(&value).expect("json value serializes")
}

fn refusal_body(family: Family, r: &Refusal, request_id: &str) -> Vec<u8> {
    envelope(family, r.code, &r.msg, request_id, serde_json::Map::new())
}

/// `code`/`retCode` 7 (§3).
const BUSY_CODE: i64 = 7;
/// `code`/`retCode` 5 (§3).
const MAINTENANCE_CODE: i64 = 5;
/// Largest decoded gzip request body.
const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::new(3, format!("Content-Encoding gzip, but the body does not decode: {e}")))?;
    if out.len() as u64 > MAX_DECODED_BYTES {
        return Err(Refusal::new(4001, "decoded body too large"));
    }
    Ok(out)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// One request, in the order it travels: control plane → count → fault → gzip decode →
/// signature check → vendor refusals → endpoint → gzip encode → sign.
async fn respond(emu: &Arc<Emulator>, req: &Request) -> Response {
    let route = req.route().to_owned();
    if route.starts_with(control::PREFIX) {
        return control::handle(emu, req).await;
    }
    let seen = describe(req, MAX_RECORDED_BODY_BYTES);
    emu.world().requests.count(&route, seen);
    let fault = match req.header_str(FAULT_HEADER) {
        Some(name) => match name.parse::<Misbehaviour>() {
            Ok(f) => Some(f),
            Err(msg) => return Response::plain(400, msg.into_bytes()),
        },
        None => emu.standing_fault(),
    };
    let x = Exchange::new(req, &route, fault);
    // Before the signature check: a broken or rate-limiting front stalls or answers without
    // looking at the request.
    match fault {
        Some(Misbehaviour::Defect(Fault::Slow)) => slow(req, emu.cfg.slow_ms).await,
        Some(Misbehaviour::Defect(Fault::Garbage)) => return garbage(),
        Some(Misbehaviour::Defect(Fault::Unsigned500)) => return unsigned_500(&x),
        Some(Misbehaviour::Vendor(VendorFault::Http429)) => return http_429(&x),
        _ => {}
    }
    let body = Body::read(req, x.endpoint);
    let answer = match verify(emu, req, &body) {
        Err(r) => refusal_body(x.family, &r, &x.request_id),
        Ok(()) => match fault {
            Some(Misbehaviour::Vendor(VendorFault::Busy)) => busy(&x),
            Some(Misbehaviour::Vendor(VendorFault::Maintenance)) => maintenance(&x),
            Some(Misbehaviour::Defect(Fault::Oversized)) => oversized(&x),
            _ => regular(emu, &x, body),
        },
    };
    // The remaining defects (bad_sign, missing_sign, reset, ...) are in how the answer is signed and sent.
    signed(emu, &x, answer)
}

/// What the answer to one request depends on besides its body, read once from its headers.
struct Exchange<'a> {
    req: &'a Request,
    endpoint: Option<Endpoint>,
    family: Family,
    request_id: String,
    uuid: String,
    digest: Digest,
    fault: Option<Misbehaviour>,
}

impl<'a> Exchange<'a> {
    fn new(req: &'a Request, route: &str, fault: Option<Misbehaviour>) -> Self {
        let endpoint = Endpoint::from_route(route);
        Exchange {
            req,
            endpoint,
            family: match endpoint {
                None | Some(Endpoint::Ping) => Family::Code,
                Some(_) => Family::RetCode,
            },
            request_id: req.header_str(header::REQUEST_ID).unwrap_or("").to_owned(),
            uuid: req.header_str(header::UUID).unwrap_or("").to_owned(),
            digest: auth::request_digest(req).unwrap_or(Digest::Md5),
            fault,
        }
    }
}

/// `slow`: waits `x-emulator-delay-ms` (else the configured delay), then answers as if
/// nothing happened.
async fn slow(req: &Request, configured_ms: Option<u64>) {
    let ms =
        req.header_str(DELAY_HEADER).and_then(|v| v.parse().ok()).unwrap_or(configured_ms.unwrap_or(DEFAULT_SLOW_MS));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// `garbage`: bytes that are not an HTTP response.
fn garbage() -> Response {
    Response { status: 0, headers: vec![], body: b"NOT HTTP AT ALL\r\n\r\n".to_vec(), delivery: Delivery::Garbage }
}

/// `unsigned_500`: a 500 with a `code` body and no signature headers.
fn unsigned_500(x: &Exchange<'_>) -> Response {
    Response::json(500, envelope(Family::Code, 500, "internal error", &x.request_id, Default::default()))
}

/// `http_429`: 429 with `Retry-After` and an unsigned `7` body.
fn http_429(x: &Exchange<'_>) -> Response {
    let secs = x.req.header_str(RETRY_AFTER_HEADER).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_RETRY_AFTER_SECS);
    let mut resp =
        Response::json(429, envelope(x.family, BUSY_CODE, "too many requests", &x.request_id, Default::default()));
    resp.headers.push(("retry-after", secs.to_string()));
    resp
}

/// `busy`: a `7` body, signed like any answer.
fn busy(x: &Exchange<'_>) -> Vec<u8> {
    envelope(x.family, BUSY_CODE, "system busy", &x.request_id, Default::default())
}

/// `maintenance`: a `5` body, signed like any answer.
fn maintenance(x: &Exchange<'_>) -> Vec<u8> {
    envelope(x.family, MAINTENANCE_CODE, "server under maintenance", &x.request_id, Default::default())
}

/// `oversized`: a success whose `data` is `x-emulator-size` bytes.
fn oversized(x: &Exchange<'_>) -> Vec<u8> {
    let size = x.req.header_str(SIZE_HEADER).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_OVERSIZE_BYTES);
    let data = serde_json::Map::from_iter([("data".to_owned(), Value::String("x".repeat(size)))]);
    envelope(Family::Code, 0, "success", &x.request_id, data)
}

/// A request body: whether it says gzip, and its decoding when the endpoint takes gzip.
struct Body {
    gzipped: bool,
    decoded: Option<Result<Vec<u8>, Refusal>>,
}

impl Body {
    fn read(req: &Request, endpoint: Option<Endpoint>) -> Body {
        let gzipped = req.header_str("content-encoding").is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let decoded = match (gzipped, endpoint) {
            (true, Some(e)) if e.takes_gzip_body() => Some(gunzip(&req.body)),
            _ => None,
        };
        Body { gzipped, decoded }
    }
}

/// The request's signature check, over the bytes `--gzip-sign` says its sign covers.
fn verify(emu: &Emulator, req: &Request, body: &Body) -> Result<(), Refusal> {
    match (&body.decoded, emu.cfg.gzip_sign) {
        // The sign covers decoded bytes that do not exist: the body's format is the error.
        (Some(Err(r)), GzipSign::Decoded) => Err(r.clone()),
        _ if emu.cfg.skip_request_verification => Ok(()),
        (Some(Ok(d)), GzipSign::Decoded) => auth::check(&emu.cfg.tenants, req, d),
        _ => auth::check(&emu.cfg.tenants, req, &req.body),
    }
}

/// The answer no fault replaced: the endpoint's, or the echo off the documented paths.
fn regular(emu: &Emulator, x: &Exchange<'_>, body: Body) -> Vec<u8> {
    match x.endpoint {
        None => {
            let data = serde_json::Map::from_iter([("data".to_owned(), echo(x.req))]);
            envelope(Family::Code, 0, "echo", &x.request_id, data)
        }
        Some(e) => answer(emu, e, x.family, x.req, &x.uuid, &x.request_id, body.gzipped, body.decoded),
    }
}

/// The answer gzipped where the endpoint and the request allow it, and signed for a known
/// account, with the signature and delivery defects applied (`auth::answer_signature`).
fn signed(emu: &Emulator, x: &Exchange<'_>, mut body: Vec<u8>) -> Response {
    let mut resp = Response::json(200, Vec::new());
    // With `--gzip-sign decoded`, a gzip answer's sign covers the bytes before compression.
    let mut decoded_answer = None;
    if x.endpoint.is_some_and(Endpoint::may_gzip_answer) && x.req.accepts_gzip() {
        let wire = gzip(&body);
        if emu.cfg.gzip_sign == GzipSign::Decoded {
            decoded_answer = Some(std::mem::take(&mut body));
        }
        body = wire;
        resp.headers.push(("content-encoding", "gzip".into()));
    }
    // An unknown account cannot be signed for; its refusal goes out unsigned.
    if let Some(secret) = emu.cfg.tenants.get(&x.uuid) {
        let signed = decoded_answer.as_deref().unwrap_or(&body);
        let defect = x.fault.and_then(Misbehaviour::defect);
        let (headers, delivery) = auth::answer_signature(signed, secret, defect, &x.request_id, &x.uuid, x.digest);
        resp.headers.extend(headers);
        resp.delivery = delivery;
    }
    resp.body = body;
    resp
}

/// The answer of a documented endpoint to a request that passed the signature check.
#[allow(clippy::too_many_arguments)]
fn answer(
    emu: &Emulator,
    endpoint: Endpoint,
    family: Family,
    req: &Request,
    uuid: &str,
    request_id: &str,
    gzipped: bool,
    decoded: Option<Result<Vec<u8>, Refusal>>,
) -> Vec<u8> {
    if req.method != "POST" {
        return refusal_body(family, &Refusal::new(1, "every v3 endpoint is POST"), request_id);
    }
    let bytes: &[u8] = match &decoded {
        Some(Ok(d)) => d,
        Some(Err(r)) => return refusal_body(family, r, request_id),
        None if gzipped => {
            return refusal_body(
                family,
                &Refusal::new(3, "Content-Encoding gzip is accepted by importBatchCall only"),
                request_id,
            )
        }
        None => &req.body,
    };
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return refusal_body(family, &Refusal::new(3, "body is not JSON"), request_id);
    };
    if endpoint == Endpoint::Ping {
        return ping(&value, request_id);
    }
    let result = api::handle(&mut emu.world(), endpoint, uuid, &value);
    match result {
        Ok(fields) => envelope(family, 0, "success", request_id, fields),
        Err(r) => refusal_body(family, &r, request_id),
    }
}

/// ping (§4.1): `data` is required and must be a string; it comes back as `data`.
fn ping(value: &Value, request_id: &str) -> Vec<u8> {
    let refuse = |code, msg: &str| refusal_body(Family::Code, &Refusal::new(code, msg), request_id);
    let Some(map) = value.as_object() else { return refuse(3, "body must be a JSON object") };
    match map.get("data") {
        None | Some(Value::Null) => refuse(2, "data is missing"),
        Some(Value::String(_)) => {
            let data = serde_json::Map::from_iter([("data".to_owned(), map["data"].clone())]);
            envelope(Family::Code, 0, "success", request_id, data)
        }
        Some(_) => refuse(3, "data must be a string"),
    }
}

/// The echo extension: what arrived, for the gateway's tests.
fn echo(req: &Request) -> Value {
    describe(req, usize::MAX)
}

/// Body bytes of one request kept in `/_emulator/requests` (`body_len` is always whole).
const MAX_RECORDED_BODY_BYTES: usize = 64 * 1024;

/// A request as it arrived: method, path, headers, the first `max_body` bytes of its body.
fn describe(req: &Request, max_body: usize) -> Value {
    let headers: Vec<_> = req.headers.iter().map(|(k, v)| json!([k, String::from_utf8_lossy(v)])).collect();
    json!({
        "method": req.method,
        "path": req.path,
        "headers": headers,
        "body_hex": hex::encode(&req.body[..req.body.len().min(max_body)]),
        "body_len": req.body.len(),
    })
}

/// A TLS acceptor for PEM certificate chain and key files.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..]).map_err(|e| e.to_string())?.ok_or("no private key")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
