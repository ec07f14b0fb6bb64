//! A local stand-in for `nxbot.nxcloud.com`, for users' CI, our tests, the demo and the
//! benchmarks.
//!
//! It checks request signatures exactly as the vendor document describes, answers
//! `/callcentre/api/v3/ping` like the real service, echoes any other path, and signs every
//! answer. It misbehaves on demand (per request with the `x-emulator-fault` header, or for
//! every request with `--fault`) so the gateway's fail-closed paths can be exercised.
//!
//! It is a small hand-written HTTP/1.1 server rather than a framework, because the
//! misbehaviours need byte-level control: a reset in the middle of a body, a body shorter
//! than its `Content-Length`, a response that is not HTTP at all.

pub mod cli;

use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use nxgate_core::secret::Secret;
use nxgate_core::signing::{self, header as sig, Algorithm, SigningInput};

/// Request header that selects a fault for one request.
pub const FAULT_HEADER: &str = "x-emulator-fault";
/// Request header with the delay for `slow`, in milliseconds.
pub const DELAY_HEADER: &str = "x-emulator-delay-ms";
/// Request header with the body size for `oversized`, in bytes.
pub const SIZE_HEADER: &str = "x-emulator-size";

/// Delay of `slow` when no `x-emulator-delay-ms` is given.
pub const DEFAULT_SLOW_MS: u64 = 5_000;
/// Body size of `oversized` when no `x-emulator-size` is given.
pub const DEFAULT_OVERSIZE_BYTES: usize = 16 * 1024 * 1024;
/// Largest request header block the emulator reads.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest request body the emulator reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How far a request's createTs may be from the emulator's clock.
pub const REQUEST_SKEW_SECS: u64 = 300;

/// The vendor's public sample account id, used by the demo.
pub const SAMPLE_UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
/// The vendor's public sample secret key, used by the demo.
pub const SAMPLE_SECRET: &str = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A `sign` that does not match.
    BadSign,
    /// A validly signed answer carrying another requestID.
    WrongRequestId,
    /// A validly signed answer carrying another uuid.
    WrongUuid,
    /// A validly signed answer with a createTs an hour old.
    StaleTs,
    /// No `sign` header.
    MissingSign,
    /// Answer signed with the other algorithm (MD5 for a SHA256 request).
    Downgrade,
    /// Wait `x-emulator-delay-ms` before answering.
    Slow,
    /// Send the header and half the body, then reset the connection.
    Reset,
    /// Send the header and half the body, then close cleanly.
    Truncated,
    /// A correctly signed body of `x-emulator-size` bytes.
    Oversized,
    /// `500` with a JSON body and no signature headers.
    Unsigned500,
    /// Bytes that are not an HTTP response.
    Garbage,
}

impl Fault {
    /// Every fault, for tests that sweep them.
    pub const ALL: [Fault; 12] = [
        Fault::BadSign,
        Fault::WrongRequestId,
        Fault::WrongUuid,
        Fault::StaleTs,
        Fault::MissingSign,
        Fault::Downgrade,
        Fault::Slow,
        Fault::Reset,
        Fault::Truncated,
        Fault::Oversized,
        Fault::Unsigned500,
        Fault::Garbage,
    ];

    /// The name used in `x-emulator-fault` and `--fault`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::BadSign => "bad_sign",
            Fault::WrongRequestId => "wrong_request_id",
            Fault::WrongUuid => "wrong_uuid",
            Fault::StaleTs => "stale_ts",
            Fault::MissingSign => "missing_sign",
            Fault::Downgrade => "downgrade",
            Fault::Slow => "slow",
            Fault::Reset => "reset",
            Fault::Truncated => "truncated",
            Fault::Oversized => "oversized",
            Fault::Unsigned500 => "unsigned_500",
            Fault::Garbage => "garbage",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown fault {s:?}; one of: {}", Fault::ALL.map(|f| f.name()).join(", ")))
    }
}

/// How the emulator behaves.
#[derive(Debug, Default)]
pub struct EmulatorConfig {
    /// Known accounts: uuid → secret.
    pub tenants: HashMap<String, Secret>,
    /// Skip request signature checks (only for the benchmark's "direct" row).
    pub skip_request_verification: bool,
    /// Misbehave on every request.
    pub fault: Option<Fault>,
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// How to put a response on the wire.
enum Delivery {
    Whole,
    HalfThenReset,
    HalfThenClose,
    Garbage,
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delivery: Delivery,
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

/// Accepts connections forever.
pub async fn serve(listener: TcpListener, cfg: Arc<EmulatorConfig>, tls: Option<tokio_rustls::TlsAcceptor>) {
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
        let cfg = cfg.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, &cfg).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => connection(s, &cfg).await,
                    Err(e) => tracing::debug!(error = %e, "emulator TLS handshake failed"),
                },
            }
        });
    }
}

/// A stream whose TCP socket can be told to reset on close.
pub trait Resettable: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Resettable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Resettable for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn connection<S: Resettable>(mut stream: S, cfg: &EmulatorConfig) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let req = match read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(msg) => {
                let _ = stream
                    .write_all(format!("HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}", msg.len()).as_bytes())
                    .await;
                return;
            }
        };
        let close = req.close;
        let resp = respond(cfg, &req).await;
        let keep_going = write_response(&mut stream, resp, close).await;
        if !keep_going || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request; `Ok(None)` on a clean close between requests.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<Option<Request>, String> {
    let (head_len, method, path, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, Vec<u8>)> =
                    parsed.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
                break (n, parsed.method.unwrap_or("").to_owned(), parsed.path.unwrap_or("").to_owned(), headers);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_BYTES => {}
            Ok(httparse::Status::Partial) => return Err("request header too large".into()),
            Err(e) => return Err(format!("bad request: {e}")),
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err("connection closed mid-header".into()) };
        }
    };
    buf.advance(head_len);
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        let len = match find("content-length") {
            None => 0,
            Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()).ok_or("bad content-length")?,
        };
        if len > MAX_BODY_BYTES {
            return Err("body too large".into());
        }
        fill(stream, buf, len).await?;
        buf.split_to(len).freeze()
    };
    Ok(Some(Request { method, path, headers, body, close }))
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut, n: usize) -> Result<(), String> {
    while buf.len() < n {
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed mid-body".into());
        }
    }
    Ok(())
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<BytesMut, String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(i);
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err("chunk line too long".into());
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed mid-chunk".into());
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_text = std::str::from_utf8(&line).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err("body too large".into());
        }
        fill(stream, buf, size + 2).await?;
        body.extend_from_slice(&buf.split_to(size));
        buf.advance(2);
    }
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The vendor's JSON envelope.
fn envelope(code: i64, msg: &str, req_id: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": data,
        "timestamp": now().as_millis() as u64,
        "code": code,
        "msg": msg,
        "reqId": req_id,
    }))
    .expect("json value serializes")
}

/// Why a request's signature was refused: `(code, msg)` in the answer's envelope.
fn check_request(cfg: &EmulatorConfig, req: &Request) -> Result<(), (i64, &'static str)> {
    let (Some(request_id), Some(uuid), Some(create_ts), Some(sign)) = (
        req.header_str(sig::REQUEST_ID),
        req.header_str(sig::UUID),
        req.header_str(sig::CREATE_TS),
        req.header(sig::SIGN),
    ) else {
        return Err((10001, "missing signature header (requestID, uuid, createTs, sign)"));
    };
    let Some(secret) = cfg.tenants.get(uuid) else { return Err((10002, "unknown uuid")) };
    let algorithm = match req.header_str(sig::ALGORITHM) {
        None => Algorithm::Md5,
        Some(a) => a.parse().map_err(|_| (10003, "unknown algorithm"))?,
    };
    let ts: u64 = create_ts.parse().map_err(|_| (10004, "createTs is not a unix timestamp"))?;
    if ts.abs_diff(now().as_secs()) > REQUEST_SKEW_SECS {
        return Err((10005, "createTs is too far from the server clock"));
    }
    let input = SigningInput { body: &req.body, create_ts, request_id, uuid };
    if !signing::signature_matches(secret, algorithm, &input, sign) {
        return Err((10006, "sign mismatch"));
    }
    Ok(())
}

async fn respond(cfg: &EmulatorConfig, req: &Request) -> Response {
    let fault = match req.header_str(FAULT_HEADER) {
        Some(name) => match name.parse::<Fault>() {
            Ok(f) => Some(f),
            Err(msg) => return plain(400, msg.into_bytes()),
        },
        None => cfg.fault,
    };
    let request_id = req.header_str(sig::REQUEST_ID).unwrap_or("").to_owned();
    let uuid = req.header_str(sig::UUID).unwrap_or("").to_owned();
    let algorithm = req.header_str(sig::ALGORITHM).and_then(|a| a.parse().ok()).unwrap_or_default();

    if fault == Some(Fault::Slow) {
        let ms = req.header_str(DELAY_HEADER).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SLOW_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fault == Some(Fault::Garbage) {
        return Response { status: 0, headers: vec![], body: b"NOT HTTP AT ALL\r\n\r\n".to_vec(), delivery: Delivery::Garbage };
    }
    if fault == Some(Fault::Unsigned500) {
        let body = envelope(500, "internal error", &request_id, serde_json::Value::Null);
        return json(500, body);
    }

    let verdict = if cfg.skip_request_verification { Ok(()) } else { check_request(cfg, req) };
    let body = match verdict {
        Err((code, msg)) => envelope(code, msg, &request_id, serde_json::Value::Null),
        Ok(()) if fault == Some(Fault::Oversized) => {
            let size = req.header_str(SIZE_HEADER).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_OVERSIZE_BYTES);
            let filler = "x".repeat(size);
            envelope(0, "success", &request_id, serde_json::Value::String(filler))
        }
        Ok(()) if req.path.split('?').next() == Some("/callcentre/api/v3/ping") => {
            // The real ping answers with data; echo the caller's `data` so callers can
            // tell their own answer from another request's.
            let data = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|v| v.get("data").cloned())
                .unwrap_or_else(|| serde_json::Value::String("pong".into()));
            envelope(0, "success", &request_id, data)
        }
        Ok(()) => envelope(0, "echo", &request_id, echo(req)),
    };

    let Some(secret) = cfg.tenants.get(&uuid) else {
        // An unknown account cannot be signed for; answer unsigned, as an error.
        return json(200, body);
    };
    let mut resp = json(200, body);
    sign_response(&mut resp, secret, fault, &request_id, &uuid, algorithm);
    resp
}

fn echo(req: &Request) -> serde_json::Value {
    let headers: Vec<_> = req
        .headers
        .iter()
        .map(|(k, v)| serde_json::json!([k, String::from_utf8_lossy(v)]))
        .collect();
    serde_json::json!({
        "method": req.method,
        "path": req.path,
        "headers": headers,
        "body_hex": hex::encode(&req.body),
        "body_len": req.body.len(),
    })
}

fn plain(status: u16, body: Vec<u8>) -> Response {
    Response { status, headers: vec![("content-type", "text/plain".into())], body, delivery: Delivery::Whole }
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response { status, headers: vec![("content-type", "application/json".into())], body, delivery: Delivery::Whole }
}

/// Adds the five signature headers, bent by `fault`.
fn sign_response(resp: &mut Response, secret: &Secret, fault: Option<Fault>, request_id: &str, uuid: &str, algorithm: Algorithm) {
    let now = now().as_secs();
    let other_id;
    let other_uuid;
    let (mut request_id, mut uuid, mut ts, mut algorithm) = (request_id, uuid, now, algorithm);
    match fault {
        Some(Fault::WrongRequestId) => {
            other_id = signing::new_request_id();
            request_id = &other_id;
        }
        Some(Fault::WrongUuid) => {
            other_uuid = format!("{uuid}x");
            uuid = &other_uuid;
        }
        Some(Fault::StaleTs) => ts = now - 3_600,
        Some(Fault::Downgrade) => {
            algorithm = if algorithm == Algorithm::Sha256 { Algorithm::Md5 } else { Algorithm::Sha256 };
        }
        _ => {}
    }
    let ts = ts.to_string();
    let input = SigningInput { body: &resp.body, create_ts: &ts, request_id, uuid };
    let mut signed = signing::signed_headers(secret, algorithm, &input);
    if fault == Some(Fault::BadSign) {
        // Flip one hex digit: same length, wrong value.
        let last = if signed.sign.ends_with('0') { "1" } else { "0" };
        signed.sign.replace_range(signed.sign.len() - 1.., last);
    }
    for (name, value) in signed.pairs() {
        if fault == Some(Fault::MissingSign) && name == sig::SIGN {
            continue;
        }
        resp.headers.push((name, value.to_owned()));
    }
    resp.delivery = match fault {
        Some(Fault::Reset) => Delivery::HalfThenReset,
        Some(Fault::Truncated) => Delivery::HalfThenClose,
        _ => Delivery::Whole,
    };
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown")
}

/// Writes `resp`; returns whether the connection may serve another request.
async fn write_response<S: Resettable>(stream: &mut S, resp: Response, close: bool) -> bool {
    if let Delivery::Garbage = resp.delivery {
        let _ = stream.write_all(&resp.body).await;
        return false;
    }
    let mut out = Vec::with_capacity(256 + resp.body.len());
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).as_bytes());
    for (k, v) in &resp.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let head_len = out.len();
    out.extend_from_slice(&resp.body);
    match resp.delivery {
        Delivery::Whole => stream.write_all(&out).await.is_ok(),
        Delivery::HalfThenClose => {
            let _ = stream.write_all(&out[..head_len + resp.body.len() / 2]).await;
            let _ = stream.flush().await;
            false
        }
        Delivery::HalfThenReset => {
            let _ = stream.write_all(&out[..head_len + resp.body.len() / 2]).await;
            let _ = stream.flush().await;
            // Linger 0 turns the close into an RST. (The deprecation warns that a *non-zero*
            // linger blocks the thread on drop; zero does not wait.)
            #[allow(deprecated)]
            let _ = stream.tcp().set_linger(Some(Duration::ZERO));
            false
        }
        Delivery::Garbage => unreachable!("handled above"),
    }
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
