//! A minimal blocking HTTP/1.1 client for the demo and the test suite. Every failure is
//! an `Err`, never a panic (the demo runs in the product binary).
//!
//! It writes exactly the bytes it is given (so tests can send malformed, smuggling or
//! non-UTF-8 requests) and reads one response framed by `Content-Length`, which the
//! gateway always sets. It is not a general-purpose client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or why it is not JSON (with the body, for the message).
    pub fn try_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Read timeout for responses.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

impl Connection {
    /// Connects to `addr`.
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buf: Vec::new() })
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `method path` with `headers` and `body` (adds Host and Content-Length) and reads the answer.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.send_raw(&encode(method, path, headers, body))?;
        self.read_response()
    }

    /// Reads one response; the connection stays usable if the server keeps it open.
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf).map_err(|e| bad(e.to_string()))? {
                httparse::Status::Complete(head) => {
                    let status = parsed.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse::<usize>().map_err(|_| bad(format!("bad content-length {v}"))))
                        .transpose()?
                        .ok_or_else(|| bad("response has no content-length".into()))?;
                    while self.buf.len() < head + len {
                        self.fill()?;
                    }
                    let body = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Ok(Response { status, headers, body });
                }
                httparse::Status::Partial => self.fill()?,
            }
        }
    }

    /// Reads an interim (1xx) response, which has no body, and returns its status.
    pub fn read_interim(&mut self) -> std::io::Result<u16> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut slots);
            let status =
                parsed.parse(&self.buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if let httparse::Status::Complete(head) = status {
                let code = parsed.code.unwrap_or(0);
                self.buf.drain(..head);
                return Ok(code);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Whether the server closed the connection (reads EOF within `wait`).
    pub fn is_closed_by_peer(&mut self, wait: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(wait));
        let mut b = [0u8; 1];
        let closed = matches!(self.stream.read(&mut b), Ok(0));
        let _ = self.stream.set_read_timeout(Some(RESPONSE_TIMEOUT));
        closed
    }
}

/// The bytes of a request with a Content-Length body.
pub fn encode(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: nxgate.local\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    Connection::open(addr)?.request(method, path, headers, body)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_listener(addr: SocketAddr, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A loopback address that refuses connections for as long as this value lives: a TCP
/// socket bound to a kernel-chosen port but never listening. Nobody else can bind the port
/// meanwhile, unlike a port that was "free a moment ago".
pub struct ClosedPort {
    _socket: socket2::Socket,
    /// The refusing address.
    pub addr: SocketAddr,
}

impl ClosedPort {
    /// Binds a non-listening socket on 127.0.0.1.
    pub fn new() -> std::io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("bound socket has no inet address"))?;
        Ok(ClosedPort { _socket: socket, addr })
    }
}

/// Waits for a process's `--ready-file` (written whole, by rename, once every listener
/// accepts) and returns its JSON.
pub fn wait_for_ready_file(path: &std::path::Path, within: Duration) -> Result<serde_json::Value, String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read(path) {
            return serde_json::from_slice(&text)
                .map_err(|e| format!("ready file {} is not JSON: {e}", path.display()));
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("no ready file at {} within {within:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
