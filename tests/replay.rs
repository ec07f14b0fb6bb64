//! Replay safety against the real binary: a request whose bytes were all written upstream
//! is never sent again unless its path is in `routes.idempotent_paths`.
//!
//! The upstream is a stand-in written here, not the emulator, because the failure is
//! about one connection's history: it answers the first request on every connection
//! (correctly signed, so the gateway pools the connection), and on a *reused* connection it
//! reads the whole request and then resets the connection without answering, which is
//! what NXCloud accepting `createAndCall` and the connection breaking before the answer
//! looks like to the gateway. It records every request it receives, so a test counts
//! receptions upstream instead of trusting what the caller was told.

mod common;

use common::*;
use nxgate_testkit::refsign::{self, Digest};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PING: &str = "/callcentre/api/v3/ping";
const CREATE_AND_CALL: &str = "/callcentre/api/v3/createAndCall";

/// One request as the stand-in received it, whole.
#[derive(Debug, Clone)]
struct Reception {
    /// The request target.
    path: String,
    /// The body bytes.
    body: Vec<u8>,
    /// Which accepted connection it came on (0, 1, ...).
    connection: usize,
    /// Whether it was the first request on that connection.
    first_on_connection: bool,
}

/// What the stand-in does with the first request on a connection. Any later request on
/// a connection is always read whole and answered with a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFirst {
    /// Answer it, signed, and keep the connection open.
    Answer,
    /// Read it whole, then reset the connection (SO_LINGER 0) without answering.
    Reset,
}

/// The upstream stand-in on 127.0.0.1, port picked by the kernel.
struct StandIn {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Reception>>>,
}

impl StandIn {
    fn start(on_first: OnFirst) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve(stream, connection, on_first, &log));
            }
        });
        StandIn { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Reception> {
        self.received.lock().unwrap().clone()
    }

    /// How many times a request for `path` whose body contains `marker` arrived.
    fn count(&self, path: &str, marker: &str) -> usize {
        self.received().iter().filter(|r| r.path == path && contains(&r.body, marker.as_bytes())).count()
    }

    /// How many connections the gateway opened.
    fn connections(&self) -> usize {
        self.received().iter().map(|r| r.connection + 1).max().unwrap_or(0)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Serves one connection: the first request as `on_first` says, a later one with a reset.
fn serve(mut stream: TcpStream, connection: usize, on_first: OnFirst, log: &Mutex<Vec<Reception>>) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let mut first = true;
    while let Some(req) = read_request(&mut stream, &mut buf) {
        log.lock().unwrap().push(Reception {
            path: req.path.clone(),
            body: req.body.clone(),
            connection,
            first_on_connection: first,
        });
        let reset = !first || on_first == OnFirst::Reset;
        if reset {
            // Linger 0: closing sends a RST, not a FIN, once every request byte was read.
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
            return;
        }
        if stream.write_all(&signed_answer(&req)).is_err() {
            return;
        }
        first = false;
    }
}

/// A request the stand-in read: its target, signature headers and body.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
    }
}

/// Reads one whole request (header, then `Content-Length` bytes of body); `None` at EOF.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = parsed.parse(buf).expect("the gateway sends valid HTTP") {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let path = parsed.path.unwrap_or_default().to_owned();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().expect("a numeric Content-Length"));
            if buf.len() >= head_len + length {
                let body = buf[head_len..head_len + length].to_vec();
                buf.drain(..head_len + length);
                return Some(Request { path, headers, body });
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A 200 answer signed the way NXCloud signs (reference signer), echoing the request
/// body, so the gateway verifies it and keeps the connection.
fn signed_answer(req: &Request) -> Vec<u8> {
    let (request_id, uuid) = (req.header("requestID"), req.header("uuid"));
    let secret = match uuid {
        UUID_A => SECRET_A,
        UUID_B => SECRET_B,
        other => panic!("unknown uuid {other:?}"),
    };
    let digest = Digest::from_header(req.header("algorithm")).unwrap_or(Digest::Md5);
    let create_ts = unix_now().to_string();
    let mut body = br#"{"code":0,"msg":"success","echo":"#.to_vec();
    body.extend_from_slice(&req.body);
    body.push(b'}');
    let sign = refsign::sign(digest, secret.as_bytes(), &body, &create_ts, request_id, uuid);
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nrequestID: {request_id}\r\n\
         uuid: {uuid}\r\ncreateTs: {create_ts}\r\nsign: {sign}\r\nalgorithm: {}\r\n\r\n",
        body.len(),
        digest.name()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

fn gateway(upstream: &StandIn) -> Gateway {
    Gateway::start(&GatewayOptions::new(upstream.url()))
}

/// `createAndCall` reached NXCloud whole and the pooled connection then broke: sending it
/// again would dial the same numbers twice, so the caller gets the 502 instead.
#[test]
fn a_written_create_and_call_on_a_reused_connection_is_never_sent_again() {
    let upstream = StandIn::start(OnFirst::Answer);
    let gw = gateway(&upstream);

    // Opens the one connection and leaves it pooled.
    let warm = gw.ping_a(&[], "warm-up");
    assert_eq!(warm.status, 200, "{}", String::from_utf8_lossy(&warm.body));

    let call = gw.post_a(CREATE_AND_CALL, br#"{"taskName":"dial-once","phones":["+15550100"]}"#);
    assert_gateway_error(&call, 502, 50201, "upstream_unreachable");

    assert_eq!(upstream.count(CREATE_AND_CALL, "dial-once"), 1, "received: {:#?}", upstream.received());
    let reception = upstream.received().into_iter().find(|r| r.path == CREATE_AND_CALL).unwrap();
    assert!(!reception.first_on_connection, "the call went over the pooled connection: {reception:?}");
    assert_eq!(upstream.connections(), 1, "no second connection was opened for it");
    assert!(gw.log().contains("not sent again because its path is not in routes.idempotent_paths"), "{}", gw.log());
}

/// `ping` is read-only (a default idempotent path): the same breakage is retried once on a
/// fresh connection, and the caller gets the verified answer.
#[test]
fn a_written_ping_on_a_reused_connection_is_retried_once_and_succeeds() {
    let upstream = StandIn::start(OnFirst::Answer);
    let gw = gateway(&upstream);

    assert_eq!(gw.ping_a(&[], "warm-up").status, 200);

    let ping = gw.ping_a(&[], "sent-twice");
    assert_eq!(ping.status, 200, "{}", String::from_utf8_lossy(&ping.body));
    assert!(contains(&ping.body, br#""echo":{"data":"sent-twice"}"#), "{}", String::from_utf8_lossy(&ping.body));

    let twice: Vec<Reception> =
        upstream.received().into_iter().filter(|r| r.path == PING && contains(&r.body, b"sent-twice")).collect();
    assert_eq!(twice.len(), 2, "received: {:#?}", upstream.received());
    // First on the pooled connection (reset), then once more on a new one (answered).
    assert!(!twice[0].first_on_connection && twice[1].first_on_connection, "{twice:#?}");
    assert_ne!(twice[0].connection, twice[1].connection);
    assert_eq!(upstream.connections(), 2);
}

/// The refused retry costs the caller nothing new: the 502 is the one the same reset gets
/// on a fresh connection, which was never retried.
#[test]
fn the_refusal_is_the_same_502_as_a_reset_on_a_fresh_connection() {
    let upstream = StandIn::start(OnFirst::Reset);
    let gw = gateway(&upstream);

    let call = gw.post_a(CREATE_AND_CALL, br#"{"taskName":"fresh-reset"}"#);
    assert_gateway_error(&call, 502, 50201, "upstream_unreachable");
    assert_eq!(upstream.count(CREATE_AND_CALL, "fresh-reset"), 1);
    // A fresh connection failing is the upstream's answer even for an idempotent path.
    let ping = gw.ping_a(&[], "fresh-ping");
    assert_gateway_error(&ping, 502, 50201, "upstream_unreachable");
    assert_eq!(upstream.count(PING, "fresh-ping"), 1);
}

/// The list is the operator's: a path listed is retried, and one left out is not, the
/// default read-only ones included.
#[test]
fn routes_idempotent_paths_decides_which_written_requests_are_retried() {
    let upstream = StandIn::start(OnFirst::Answer);
    let mut opts = GatewayOptions::new(upstream.url());
    opts.extra_top = format!("routes:\n  idempotent_paths: [\"{CREATE_AND_CALL}\"]\n");
    let gw = Gateway::start(&opts);

    assert_eq!(gw.ping_a(&[], "warm-up").status, 200);
    // The query is not part of the match.
    let call = gw.post_a(&format!("{CREATE_AND_CALL}?dry=1"), br#"{"taskName":"listed"}"#);
    assert_eq!(call.status, 200, "{}", String::from_utf8_lossy(&call.body));
    assert_eq!(upstream.count(&format!("{CREATE_AND_CALL}?dry=1"), "listed"), 2, "{:#?}", upstream.received());

    // The answered retry left its fresh connection pooled; ping is no longer listed.
    let ping = gw.ping_a(&[], "unlisted");
    assert_gateway_error(&ping, 502, 50201, "upstream_unreachable");
    assert_eq!(upstream.count(PING, "unlisted"), 1, "{:#?}", upstream.received());
}
