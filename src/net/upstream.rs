//! The upstream exchange, done by hand with Pingora's HTTP connector and connection pool.
//!
//! Pingora's proxy loop streams: it sends the request header before the body is read and
//! the response header before the response body arrives. nxgate must sign a fully
//! buffered body and must hold the whole response until it verifies, so it drives the
//! exchange itself: pooled keep-alive session, one request written with a
//! `Content-Length`, the whole response read under a byte cap, and the session returned
//! to the pool only after a complete, successful exchange (anything else drops it, which
//! closes the connection, so a half-read response can never be handed to the next
//! request).
//!
//! Two Pingora facts shape this file (see `docs/pingora.md` §4-5): the connector
//! copies no timeouts from the peer, so they are set on every session; and `HttpPeer::new`
//! resolves names with a blocking call, so names are resolved here with tokio and the
//! peer is built from a `SocketAddr`. A configured `ca_file` must be *added* to the system
//! roots, but Pingora's `ConnectorOptions.ca_file` replaces them; so the peer carries the
//! union as its CA list instead.

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::utils::tls::WrappedX509;
use pingora::{Error, ErrorType};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nxgate_core::config::UpstreamConfig;
use nxgate_core::errors::GatewayError;
use nxgate_core::replay::{self, AttemptStage, Connection, Idempotency, Retry};

/// How long an idle pooled upstream connection is kept: below the 60 s idle timeout
/// common to HTTP servers, so we close first and rarely race a server-side close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// How long a resolved upstream address is reused before the name is looked up again.
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, reset, DNS or TLS failure: no response was received.
    #[error("{0}")]
    Unreachable(String),
    /// A configured timeout expired.
    #[error("{0}")]
    Timeout(String),
    /// The response body is over the limit.
    #[error("response body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Truncated or not HTTP.
    #[error("{0}")]
    Malformed(String),
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(m) => GatewayError::UpstreamUnreachable(m),
            UpstreamError::Timeout(m) => GatewayError::UpstreamTimeout(m),
            UpstreamError::TooLarge { limit } => GatewayError::UpstreamResponseTooLarge { limit },
            UpstreamError::Malformed(m) => GatewayError::BadUpstreamResponse(m),
        }
    }
}

/// A complete upstream response.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Status and headers.
    pub header: ResponseHeader,
    /// The whole body, exactly as received (de-chunked).
    pub body: Bytes,
}

/// A failed attempt: how far it got (which decides whether it may be retried, see
/// `nxgate_core::replay`) and what went wrong.
struct Failure {
    stage: AttemptStage,
    error: UpstreamError,
}

fn classify(stage: AttemptStage, e: &Error) -> UpstreamError {
    use ErrorType::*;
    let what = match stage {
        AttemptStage::Connect => "connect",
        AttemptStage::BeforeWrite => "writing the request header",
        AttemptStage::Sending => "sending the request body",
        AttemptStage::AwaitingResponse => "reading the response header",
        AttemptStage::ReadingResponse => "reading the response body",
    };
    let msg = format!("{what}: {}", e.etype().as_str());
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => UpstreamError::Timeout(format!("connect: {}", e.etype().as_str())),
        ReadTimedout | WriteTimedout => UpstreamError::Timeout(msg),
        InvalidHTTPHeader | H1Error => UpstreamError::Malformed(msg),
        _ if stage == AttemptStage::ReadingResponse => UpstreamError::Malformed(format!("truncated response ({msg})")),
        _ => UpstreamError::Unreachable(msg),
    }
}

fn connect_error(e: &Error) -> UpstreamError {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => UpstreamError::Timeout(format!("connect: {}", e.etype().as_str())),
        _ => UpstreamError::Unreachable(format!("connect: {}", e.etype().as_str())),
    }
}

/// The upstream of one config generation: its connection pool, trust roots and timeouts.
pub struct Upstream {
    cfg: UpstreamConfig,
    connector: Connector,
    /// System roots plus `ca_file`, when a `ca_file` is configured.
    ca: Option<Arc<[WrappedX509]>>,
    /// The last resolved peer and when it was resolved.
    peer: ArcSwapOption<(Instant, HttpPeer)>,
}

impl Upstream {
    /// Builds the connector (and trust roots) for `cfg`.
    pub fn new(cfg: UpstreamConfig) -> Self {
        let ca = (!cfg.extra_roots.is_empty()).then(|| trust_roots(&cfg.extra_roots));
        Upstream { cfg, connector: Connector::new(None), ca, peer: ArcSwapOption::empty() }
    }

    /// The `Host` header value for upstream requests.
    pub fn authority(&self) -> &str {
        &self.cfg.authority
    }

    /// Sends one request and reads the whole response, all within `total_timeout`.
    ///
    /// `header` is called once per attempt and must return every header to send, including
    /// `Content-Length`, the same each time. The session consumes the header it writes, so
    /// the common single attempt builds one and copies none; only a retry builds a second.
    /// Boxed, as Pingora takes it: the futures waiting on the answer hold a pointer, not
    /// the header.
    /// `idempotency` says whether the request may be sent again once it was written (see
    /// `nxgate_core::replay`).
    pub async fn send(
        &self,
        header: impl FnMut() -> Box<RequestHeader>,
        body: &Bytes,
        max_body: usize,
        idempotency: Idempotency,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_tracked(header, body, max_body, idempotency, &mut false).await
    }

    /// [`Self::send`], also telling through `written` whether a request header was ever
    /// written whole to a connection (so the upstream may have the request), whatever the
    /// outcome, a total timeout included.
    pub async fn send_tracked(
        &self,
        header: impl FnMut() -> Box<RequestHeader>,
        body: &Bytes,
        max_body: usize,
        idempotency: Idempotency,
        written: &mut bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let total = self.cfg.total_timeout;
        match tokio::time::timeout(total, self.send_with_retry(header, body, max_body, idempotency, written)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout(format!("no complete response within {} ms", total.as_millis()))),
        }
    }

    async fn send_with_retry(
        &self,
        mut header: impl FnMut() -> Box<RequestHeader>,
        body: &Bytes,
        max_body: usize,
        idempotency: Idempotency,
        written: &mut bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let cached = self.peer().await?;
        let peer = &cached.1;
        let mut retried = false;
        loop {
            // A connect failure is never retried (`replay::after_failure` says so for
            // `Connect`): only a fresh connection connects, and it failing is the answer.
            // A pooled connection is taken without the connector's connect path, whose future
            // (TLS connect inline) is ~9 KiB: held inline it would grow every future above it,
            // each copied whole on every move, so it is boxed and only made for a new
            // connection (`docs/pingora.md` §11).
            let (h1, reused) = match self.connector.reused_http_session(peer).await {
                Some(h1) => (h1, true),
                None => Box::pin(self.connector.get_http_session(peer)).await.map_err(|e| connect_error(&e))?,
            };
            let mut session = HttpSession::H1(h1);
            session.set_read_timeout(Some(self.cfg.read_timeout));
            session.set_write_timeout(Some(self.cfg.read_timeout));
            let exchanged = exchange(&mut session, header(), body, max_body, self.cfg.read_timeout, written).await;
            let failure = match exchanged {
                Ok(response) => {
                    if let HttpSession::H1(h1) = session {
                        // Boxed: Pingora's release future (about 2 KiB) would otherwise size this
                        // one, held for as long as the request waits on NXCloud.
                        Box::pin(self.connector.release_http_session(h1, peer, peer.idle_timeout())).await;
                    }
                    return Ok(response);
                }
                Err(f) => f,
            };
            let connection = if reused { Connection::Reused } else { Connection::Fresh };
            // Only a broken connection (reset, closed) is what a pooled connection the server
            // dropped looks like; a timeout or a garbled answer is the upstream's doing, and a
            // second attempt would only double the wait or the damage.
            let broken = matches!(failure.error, UpstreamError::Unreachable(_));
            match (retried, broken, replay::after_failure(failure.stage, connection, idempotency)) {
                (false, true, Retry::Once) => {
                    // The same signed request (same requestID) goes out once more, on a new
                    // connection.
                    retried = true;
                    tracing::debug!(error = %failure.error, stage = ?failure.stage, "pooled upstream connection failed; retrying on a new one");
                }
                (false, true, Retry::Never) if reused => {
                    // Worth a line: the caller gets a 502 that a retry might have avoided, and
                    // the operator should see that it was refused on purpose.
                    tracing::info!(
                        error = %failure.error,
                        stage = ?failure.stage,
                        "pooled upstream connection failed after the request was written; not sent again \
                         because its path is not in routes.idempotent_paths"
                    );
                    return Err(failure.error);
                }
                _ => return Err(failure.error),
            }
        }
    }

    /// The peer for the current upstream address, resolving the name at most every
    /// `DNS_CACHE_TTL`. Shared rather than cloned: a request only borrows it.
    async fn peer(&self) -> Result<Arc<(Instant, HttpPeer)>, UpstreamError> {
        if let Some(cached) = self.peer.load_full() {
            if cached.0.elapsed() < DNS_CACHE_TTL {
                return Ok(cached);
            }
        }
        let addr = match self.cfg.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.cfg.port),
            Err(_) => tokio::net::lookup_host((self.cfg.host.as_str(), self.cfg.port))
                .await
                .map_err(|e| UpstreamError::Unreachable(format!("resolving {}: {e}", self.cfg.host)))?
                .next()
                .ok_or_else(|| UpstreamError::Unreachable(format!("{} has no address", self.cfg.host)))?,
        };
        let mut peer = HttpPeer::new(addr, self.cfg.tls, self.cfg.host.clone());
        peer.options.connection_timeout = Some(self.cfg.connect_timeout);
        peer.options.total_connection_timeout = Some(self.cfg.connect_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        peer.options.read_timeout = Some(self.cfg.read_timeout);
        peer.options.write_timeout = Some(self.cfg.read_timeout);
        peer.options.ca = self.ca.clone();
        let resolved = Arc::new((Instant::now(), peer));
        self.peer.store(Some(resolved.clone()));
        Ok(resolved)
    }
}

/// `TCP_CORK` on an HTTP/1 upstream connection while a request is written: Pingora writes
/// the header and the body with two `write`s, which would otherwise be two segments. The
/// queued bytes leave when the guard is dropped (or after the kernel's 200 ms ceiling).
/// Best effort: a socket option that cannot be set changes only the segmenting.
struct Cork(Option<std::os::fd::RawFd>);

impl Cork {
    fn new(s: &HttpSession) -> Self {
        // Pingora's stream id is its socket's fd (`docs/pingora.md` §11). The v1 connector
        // only makes HTTP/1 sessions; anything else would share its connection, so is left alone.
        let fd = match s {
            HttpSession::H1(h1) => Some(h1.stream().id()),
            _ => None,
        };
        Cork(fd.filter(|&fd| set_cork(fd, true)))
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        if let Some(fd) = self.0 {
            set_cork(fd, false);
        }
    }
}

fn set_cork(fd: std::os::fd::RawFd, on: bool) -> bool {
    // SAFETY: `fd` is the socket of the session borrowed by the exchange that holds the
    // `Cork`; it stays open for the guard's whole life and is only borrowed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).set_tcp_cork(on).is_ok()
}

/// One request/response on an established session.
async fn exchange(
    s: &mut HttpSession,
    header: Box<RequestHeader>,
    body: &Bytes,
    max_body: usize,
    read_timeout: Duration,
    written: &mut bool,
) -> Result<UpstreamResponse, Failure> {
    let fail = |stage| move |e: Box<Error>| Failure { stage, error: classify(stage, &e) };
    let head = header.method == http::Method::HEAD;
    // The line between "nothing written" and "written" (docs/pingora.md §4): Pingora's
    // `write_request_header` writes the whole header with one `write_all` plus a flush
    // straight to the socket (the connector's stream has no write buffer) and records the
    // request as written only when both succeed. So an error here means the server never
    // got a complete request header; once it returns `Ok`, the bytes are in the kernel and
    // may be on the wire, and the request counts as written even though the body is not.
    {
        // Header and body leave as one segment: the server is woken once, not twice.
        let _cork = Cork::new(s);
        s.write_request_header(header).await.map_err(fail(AttemptStage::BeforeWrite))?;
        *written = true;
        if !body.is_empty() {
            s.write_request_body(body.clone(), true).await.map_err(fail(AttemptStage::Sending))?;
        }
        s.finish_request_body().await.map_err(fail(AttemptStage::Sending))?;
    }

    answer_started(s, read_timeout).await.map_err(fail(AttemptStage::AwaitingResponse))?;
    // Interim 1xx answers are skipped; the final header follows on the same stream.
    let header = loop {
        s.read_response_header().await.map_err(fail(AttemptStage::AwaitingResponse))?;
        let h = s.response_header().expect("a header was just read");
        if h.status.is_informational() {
            if h.status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failure {
                    stage: AttemptStage::AwaitingResponse,
                    error: UpstreamError::Malformed("unexpected 101 Switching Protocols".into()),
                });
            }
            continue;
        }
        break h.clone();
    };

    // Refuse a declared oversize body before reading any of it.
    let declared = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !head && declared.is_some_and(|n| n > max_body as u64) {
        return Err(Failure {
            stage: AttemptStage::ReadingResponse,
            error: UpstreamError::TooLarge { limit: max_body },
        });
    }

    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = s.read_response_body().await.map_err(fail(AttemptStage::ReadingResponse))? {
        if buf.len() + chunk.len() > max_body {
            return Err(Failure {
                stage: AttemptStage::ReadingResponse,
                error: UpstreamError::TooLarge { limit: max_body },
            });
        }
        buf.extend_from_slice(&chunk);
    }
    // HEAD, 204 and 304 answers declare a length they do not send.
    let bodiless = head || matches!(header.status.as_u16(), 204 | 304);
    if !bodiless && declared.is_some_and(|n| n != buf.len() as u64) {
        return Err(Failure {
            stage: AttemptStage::ReadingResponse,
            error: UpstreamError::Malformed(format!(
                "truncated response: Content-Length {} but {} bytes arrived",
                declared.unwrap_or_default(),
                buf.len()
            )),
        });
    }
    Ok(UpstreamResponse { header, body: buf.freeze() })
}

/// Waits until the answer starts to arrive, holding no buffer, within `read_timeout` (the
/// limit of the read it stands in for). Pingora reserves its 4 KiB response header buffer
/// before its first read, so a request waiting on a slow NXCloud would hold it all along
/// (`docs/pingora.md` §13, patch 3). Plain and TLS connections of the connector; anything
/// else goes straight to the read.
async fn answer_started(s: &HttpSession, read_timeout: Duration) -> pingora::Result<()> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use pingora::protocols::tls::TlsStream;
    let HttpSession::H1(h1) = s else { return Ok(()) };
    // Typed before the wait: a `&dyn Any` held across it would make the future `!Send`.
    let any = h1.stream().as_any();
    let (l4, tls) = (any.downcast_ref::<L4Stream>(), any.downcast_ref::<TlsStream<L4Stream>>());
    let ready = async move {
        match (l4, tls) {
            (Some(l4), _) => l4.readable().await,
            (_, Some(tls)) => tls.readable().await,
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(read_timeout, ready).await {
        // A readiness error is left for the read to report, as it always did.
        Ok(_) => Ok(()),
        Err(_) => Err(Error::explain(ErrorType::ReadTimedout, "while waiting for the response header")),
    }
}

/// A request header for an upstream (NXCloud, a callback receiver): `method` and `target`
/// as given, `headers` in order, then `Host` and `Content-Length` set by the gateway.
/// `more` is room for the headers the caller adds after.
pub fn request_header<'a>(
    method: &http::Method,
    target: &str,
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
    more: usize,
    authority: &str,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let mut h = RequestHeader::build(method.clone(), target.as_bytes(), Some(more + 2))?;
    for (name, value) in headers {
        h.append_header(name.clone(), value.clone())?;
    }
    h.insert_header(http::header::HOST, authority)?;
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    Ok(h)
}

/// The platform's trust roots plus `extra` (all DER), in the form Pingora's peer takes.
fn trust_roots(extra: &[Vec<u8>]) -> Arc<[WrappedX509]> {
    let native = pingora::tls::load_native_certs().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot load the system trust roots; only upstream.ca_file is trusted");
        Vec::new()
    });
    native
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .chain(extra.iter().cloned())
        // Pingora's parser panics on DER it cannot read; drop such platform roots instead.
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect::<Vec<_>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server that answers the first request on each connection and, when a second one
    /// has arrived whole on it, closes the connection unanswered: to the client, a pooled
    /// connection that broke after the request was written. Counts connections and
    /// complete requests received.
    fn one_answer_per_connection() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    for answer in [true, false] {
                        let mut req = Vec::new();
                        let mut chunk = [0u8; 1024];
                        // Header, then the 2-byte body every test request carries.
                        while req.windows(4).position(|w| w == b"\r\n\r\n").is_none_or(|i| req.len() < i + 4 + 2) {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => req.extend_from_slice(&chunk[..n]),
                            }
                        }
                        reqs.fetch_add(1, Ordering::SeqCst);
                        if answer {
                            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
                        }
                    }
                });
            }
        });
        (addr, connections, requests)
    }

    fn upstream(addr: SocketAddr) -> Upstream {
        Upstream::new(UpstreamConfig {
            tls: false,
            host: addr.ip().to_string(),
            port: addr.port(),
            authority: addr.to_string(),
            extra_roots: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
            request_compression: Default::default(),
            busy_backoff: None,
        })
    }

    /// A header builder for `POST /x` with a 2-byte body that counts how often it is called.
    fn counted_header<'a>(up: &'a Upstream, built: &'a AtomicUsize) -> impl FnMut() -> Box<RequestHeader> + Copy + 'a {
        move || {
            built.fetch_add(1, Ordering::SeqCst);
            let mut h = RequestHeader::build("POST", b"/x", None).unwrap();
            h.insert_header(http::header::HOST, up.authority()).unwrap();
            h.insert_header(http::header::CONTENT_LENGTH, "2").unwrap();
            Box::new(h)
        }
    }

    #[tokio::test]
    async fn a_written_idempotent_request_is_retried_once_and_only_the_retry_builds_a_second_header() {
        let (addr, connections, requests) = one_answer_per_connection();
        let up = upstream(addr);
        let built = AtomicUsize::new(0);
        let header = counted_header(&up, &built);
        let body = Bytes::from_static(b"hi");

        let first = up.send(header, &body, 1024, Idempotency::Idempotent).await.expect("first exchange");
        assert_eq!((first.header.status.as_u16(), &first.body[..]), (200, &b"ok"[..]));
        assert_eq!(built.load(Ordering::SeqCst), 1);

        // The pooled connection is reused and breaks after the whole request was written;
        // the path is idempotent, so the same request is sent again on a new connection.
        let second = up.send(header, &body, 1024, Idempotency::Idempotent).await.expect("retried exchange");
        assert_eq!((second.header.status.as_u16(), &second.body[..]), (200, &b"ok"[..]));
        assert_eq!(built.load(Ordering::SeqCst), 3);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_written_request_that_is_not_idempotent_is_never_sent_again() {
        let (addr, connections, requests) = one_answer_per_connection();
        let up = upstream(addr);
        let built = AtomicUsize::new(0);
        let header = counted_header(&up, &built);
        let body = Bytes::from_static(b"hi");

        up.send(header, &body, 1024, Idempotency::NotIdempotent).await.expect("first exchange");
        // Same breakage as above, but the upstream may have acted on the request: the
        // failure is reported and nothing is sent again.
        let err = up.send(header, &body, 1024, Idempotency::NotIdempotent).await.expect_err("not retried");
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("reading the response header"), "{err}");
        assert_eq!(built.load(Ordering::SeqCst), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }
}
