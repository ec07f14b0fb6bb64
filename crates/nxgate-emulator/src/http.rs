//! The wire: one hand-written HTTP/1.1 server connection and a minimal client for
//! callbacks.
//!
//! Hand-written rather than a framework because the faults need byte-level control: a
//! reset in the middle of a body, a body shorter than its `Content-Length`, a response
//! that is not HTTP at all.

use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request header block the emulator reads.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest request body the emulator reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A parsed request.
pub(crate) struct Request {
    pub method: String,
    /// The request target as sent (may carry a query).
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub close: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The path without its query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// The value of `key` in the query string, if any.
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.path.split_once('?')?;
        q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether the caller listed `gzip` in `Accept-Encoding` (and did not give it q=0).
    pub fn accepts_gzip(&self) -> bool {
        self.header_str("accept-encoding").is_some_and(|v| {
            v.split(',').any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let coding = parts.next().unwrap_or("");
                let refused = parts.any(|p| p.replace(' ', "") == "q=0");
                coding.eq_ignore_ascii_case("gzip") && !refused
            })
        })
    }
}

/// How to put a response on the wire.
pub(crate) enum Delivery {
    Whole,
    HalfThenReset,
    HalfThenClose,
    Garbage,
}

/// A response before it is written.
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub delivery: Delivery,
}

impl Response {
    pub fn plain(status: u16, body: Vec<u8>) -> Response {
        Response { status, headers: vec![("content-type", "text/plain".into())], body, delivery: Delivery::Whole }
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, headers: vec![("content-type", "application/json".into())], body, delivery: Delivery::Whole }
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

/// Reads one request; `Ok(None)` on a clean close between requests.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<Request>, String> {
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

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown")
}

/// Writes `resp`; returns whether the connection may serve another request.
pub(crate) async fn write_response<S: Resettable>(stream: &mut S, resp: Response, close: bool) -> bool {
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

/// How a receiver's answer body ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// What a callback receiver answered.
pub(crate) struct ClientAnswer {
    pub status: u16,
    pub body: String,
}

/// Largest receiver answer kept for `/_emulator/state` (the rest is dropped).
const MAX_KEPT_ANSWER_BYTES: usize = 4 * 1024;

/// POSTs `body` to a plain `http://host:port/path` URL on a fresh connection
/// (`connection: close`): the simplest client that cannot mix up two answers.
/// HTTPS receivers are not supported; they fail as unreachable (documented).
pub(crate) async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<ClientAnswer, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// callback URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let exchange = async {
        let mut stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(body).await.map_err(|e| e.to_string())?;
        // Read the head, then the body by its framing: a receiver that ignores
        // `connection: close` must not stall the delivery until the timeout.
        let mut raw = Vec::new();
        let (status, head_len, framing) = loop {
            if stream.read_buf(&mut raw).await.map_err(|e| format!("read answer: {e}"))? == 0 {
                return Err("receiver closed the connection before answering".to_owned());
            }
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&raw) {
                Ok(httparse::Status::Complete(n)) => {
                    let find =
                        |name: &str| parsed.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
                    let framing = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
                        Framing::Chunked
                    } else if let Some(len) =
                        find("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                    {
                        Framing::Length(len)
                    } else {
                        Framing::UntilClose
                    };
                    break (parsed.code.unwrap_or(0), n, framing);
                }
                Ok(httparse::Status::Partial) if raw.len() < MAX_HEADER_BYTES => {}
                _ => return Err("receiver answer is not HTTP".to_owned()),
            }
        };
        loop {
            let body = &raw[head_len..];
            let complete = match framing {
                Framing::Length(n) => body.len() >= n,
                // The last chunk; trailers are not expected from a callback receiver.
                Framing::Chunked => body.ends_with(b"0\r\n\r\n"),
                Framing::UntilClose => false,
            };
            if complete || raw.len() - head_len > MAX_KEPT_ANSWER_BYTES {
                break;
            }
            if stream.read_buf(&mut raw).await.map_err(|e| format!("read answer: {e}"))? == 0 {
                break;
            }
        }
        let kept = &raw[head_len..raw.len().min(head_len + MAX_KEPT_ANSWER_BYTES)];
        Ok(ClientAnswer { status, body: String::from_utf8_lossy(kept).into_owned() })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}
