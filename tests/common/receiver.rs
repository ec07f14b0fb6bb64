//! A callback receiver for tests: records every request it gets (method, path, headers,
//! body), with switchable answers, and counts connections so a test can prove nothing
//! reached it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with a JSON body naming the request's number.
    Ok = 0,
    /// 500.
    Fail = 1,
    /// Reads the request and never answers.
    Silent = 2,
    /// Reads the request and closes the connection.
    Closed = 3,
    /// 200 after 600 ms.
    Slow = 4,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    seen: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    /// Whether each record carries the `ANSWERED` pseudo-header (receivers from `start_on`).
    record_answers: bool,
}

impl TestReceiver {
    pub fn start() -> Self {
        Self::serving(TcpListener::bind("127.0.0.1:0").unwrap(), false)
    }

    fn serving(listener: TcpListener, record_answers: bool) -> Self {
        let r = TestReceiver {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(AtomicU8::new(Mode::Ok as u8)),
            seen: Arc::default(),
            connections: Arc::default(),
            record_answers,
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                std::thread::spawn(move || me.serve(stream));
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Nothing reached it: no connection, no request.
    pub fn assert_untouched(&self) {
        assert_eq!(self.connections.load(Ordering::SeqCst), 0, "the receiver was connected to");
        assert!(self.seen().is_empty());
    }

    /// Answers each request by the mode of the moment; with `record_answers`, the answer is
    /// decided before the request is recorded and recorded with it (as the `ANSWERED`
    /// pseudo-header), so a test can tell an attempt the receiver accepted from one it
    /// refused even while its mode changes.
    fn serve(&self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some(mut req) = read_request(&mut s, &mut buf) else { return };
            let mode = self.mode.load(Ordering::SeqCst);
            if self.record_answers {
                let answered = match mode {
                    0 | 4 => "200",
                    1 => "500",
                    _ => "none",
                };
                req.headers.push((ANSWERED.to_owned(), answered.to_owned()));
            }
            let n = {
                let mut seen = self.seen.lock().unwrap();
                seen.push(req);
                seen.len()
            };
            let body = format!(r#"{{"received":{n}}}"#);
            let answer = |status: &str| {
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-receiver: yes\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            let out = match mode {
                0 => answer("200 OK"),
                1 => answer("500 Internal Server Error"),
                2 => {
                    let mut sink = [0u8; 1024];
                    while s.read(&mut sink).is_ok_and(|n| n > 0) {}
                    return;
                }
                3 => return,
                _ => {
                    std::thread::sleep(Duration::from_millis(600));
                    answer("200 OK")
                }
            };
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// One HTTP/1.1 request with a Content-Length body, or `None` at EOF.
pub fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let hs: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let len: usize = hs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let (method, path) = (req.method.unwrap().to_owned(), req.path.unwrap().to_owned());
            while buf.len() < head + len {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            return Some(Received { method, path, headers: hs, body });
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The pseudo-header a receiver from `TestReceiver::start_on` adds to each record: the
/// status it answered the request with (`"200"`, `"500"`), or `"none"` (Silent, Closed: no
/// answer). No real HTTP/1 header name starts with `:`.
pub const ANSWERED: &str = ":answered";

impl TestReceiver {
    /// Like `start`, listening on `addr` (port 0: the kernel picks): for a receiver that
    /// comes up where the gateway has been failing to connect, or one whose records say
    /// how each request was answered (`Received::answered`, `delivered`). Retries the bind
    /// for up to 5 s, in case the port is still held for a moment.
    pub fn start_on(addr: SocketAddr) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() >= deadline => panic!("receiver cannot bind {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Self::serving(listener, true)
    }

    /// The requests answered 2xx, in arrival order (receivers from `start_on` only: the
    /// others do not record their answers).
    pub fn delivered(&self) -> Vec<Received> {
        self.seen().into_iter().filter(|r| r.answered().is_some_and(|s| (200..300).contains(&s))).collect()
    }
}

impl Received {
    /// The status a `start_on` receiver answered this request with; `None` if it gave no
    /// answer (or is a receiver from `start`, which does not record answers).
    pub fn answered(&self) -> Option<u16> {
        self.header(ANSWERED).and_then(|s| s.parse().ok())
    }
}
