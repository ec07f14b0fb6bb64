//! The caller-facing connection: a deadline on the whole request header, under Pingora.
//!
//! Pingora 0.9's HTTP/1 server bounds each *read* of a request header (by its 60 s
//! keep-alive timeout), never the whole header, so a caller trickling a byte every few
//! seconds holds a connection, its task and its buffers for as long as it likes. With h2c
//! on, Pingora first waits, with no timeout at all, for 24 bytes to compare with the
//! HTTP/2 preface, so a complete HTTP/1 request shorter than that was never answered.
//!
//! [`HeaderDeadline`] wraps an app and hands it every accepted connection inside a
//! [`GuardedStream`], which sees the bytes the server reads and writes:
//! - a request's header must be complete within `limits.request_header_timeout_ms`,
//!   counted from the accept (first request) or from the request's first byte (keep-alive);
//! - on expiry the connection is closed, after a `408 request_header_timeout` if part of
//!   a header had arrived (nothing is said to a caller that has said nothing);
//! - the preface peek stops as soon as the bytes cannot be the preface, under the deadline.
//!
//! Request boundaries are read off the bytes: a header ends at its blank line (found by
//! [`HeaderEnd`], the rule httparse applies), and the next request begins with the first
//! byte read after a final (non-1xx) response was written. That is exact because Pingora
//! never reuses a connection whose request body was left unread
//! (`close_on_response_before_downstream_finish`), so no body bytes follow a response.
//! HTTP/2 connections are left to the h2 stack (`h2_idle_timeout`).
//!
//! [`next_request`] reads a request header the way pingora-proxy does (400 for a
//! malformed header, 405 for CONNECT).

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use nxgate_core::clock::now_unix_ms;
use nxgate_core::errors::{ErrorResponse, GatewayError};
use nxgate_core::signing;

/// What Pingora peeks for on a cleartext connection (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes are gathered up to this size until the server flushes, so a response header and
/// a body of up to ~15 KiB leave in one segment. The buffer exists only from a response's
/// first write to its flush: an idle connection holds none (the listeners' own L4 buffers
/// are off, `runtime::server`).
pub const WRITE_COALESCE_BYTES: usize = 16 * 1024;

/// Finds the blank line that ends an HTTP/1 header, across reads. Like httparse, it skips
/// empty lines before the request line and takes `\n` as well as `\r\n` as a line end.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeaderEnd {
    /// A byte other than CR/LF has been seen: blank lines now end the header.
    started: bool,
    /// 1 just after a LF, 2 after LF CR, 0 otherwise.
    after_lf: u8,
}

impl HeaderEnd {
    /// Feeds the next bytes read; returns how many of them belong to the header if it
    /// ends among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if !self.started {
                if matches!(bytes[i], b'\r' | b'\n') {
                    i += 1;
                    continue;
                }
                self.started = true;
            }
            if self.after_lf == 0 {
                // Inside a line: only the next LF can matter, so jump to it (memchr).
                match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.after_lf = 1;
                        continue;
                    }
                    None => return None,
                }
            }
            self.after_lf = match (self.after_lf, bytes[i]) {
                (_, b'\n') => {
                    *self = HeaderEnd::default();
                    return Some(i + 1);
                }
                (1, b'\r') => 2,
                _ => 0,
            };
            i += 1;
        }
        None
    }
}

/// Where a connection is in its request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header: the deadline is armed.
    Header,
    /// The header is in; reading the body and answering (bounded elsewhere).
    Request,
    /// A final response was written; the next byte read starts a new request.
    Answered,
    /// HTTP/2: not ours to frame.
    H2,
}

/// An accepted connection with a whole-header deadline; see the module docs.
pub struct GuardedStream {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// Fires at the header deadline; only in `Phase::Header` (an idle connection holds no
    /// timer: it is made when a header starts and dropped once the header is in).
    deadline: Option<Pin<Box<Sleep>>>,
    header_end: HeaderEnd,
    /// Bytes of the current header received so far (pending ones included).
    header_bytes: usize,
    /// Bytes read while peeking, handed out before any new read.
    peeked: BytesMut,
    /// Counts connections closed at the deadline.
    timeouts: IntCounter,
    /// Written bytes not yet passed to `inner` (see [`WRITE_COALESCE_BYTES`]).
    out: Vec<u8>,
    /// How much of `out` has been passed on.
    out_sent: usize,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

impl GuardedStream {
    /// Wraps a just-accepted connection; its first header is due within `timeout`.
    pub fn new(inner: Stream, timeout: Duration, timeouts: IntCounter) -> Self {
        GuardedStream {
            inner,
            timeout,
            phase: Phase::Header,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            header_end: HeaderEnd::default(),
            header_bytes: 0,
            peeked: BytesMut::new(),
            timeouts,
            out: Vec::new(),
            out_sent: 0,
        }
    }

    /// Passes every gathered byte on to `inner`, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_sent += n;
        }
        self.out = Vec::new();
        self.out_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Gathers `bufs` if they fit beside what is gathered already; `None` if they do not.
    fn gather(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<usize> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + len >= WRITE_COALESCE_BYTES {
            return None;
        }
        if self.out.capacity() == 0 {
            self.out.reserve_exact(WRITE_COALESCE_BYTES);
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Some(len)
    }

    /// Reads from the socket, failing with `TimedOut` once a header's deadline has passed.
    fn poll_read_raw(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.phase == Phase::Header && self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(Err(self.expire(cx)));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    /// The header deadline passed: answer 408 if the caller had started a header, then
    /// fail the read so the server drops the connection.
    fn expire(&mut self, cx: &mut Context<'_>) -> io::Error {
        let timeout_ms = self.timeout.as_millis() as u64;
        self.timeouts.inc();
        tracing::info!(target: "nxgate::downstream", timeout_ms, header_bytes = self.header_bytes, "request header timeout; closing the connection");
        if self.header_bytes > 0 {
            let request_id = signing::new_request_id();
            let err = GatewayError::RequestHeaderTimeout { timeout_ms };
            let reply = ErrorResponse::new(&err, &request_id, now_unix_ms()).to_http1_closing();
            // Best effort and never waiting: the caller is the slow party here.
            let mut sent = 0;
            while sent < reply.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &reply[sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => sent += n,
                    _ => break,
                }
            }
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        self.phase = Phase::Answered;
        io::Error::new(io::ErrorKind::TimedOut, "request header timeout")
    }

    /// A final response starting to go out ends the request (a 1xx does not).
    fn observe_write(&mut self, start: &[u8]) {
        if matches!(self.phase, Phase::Header | Phase::Request) && is_final_response_start(start) {
            self.phase = Phase::Answered;
        }
    }

    /// Tracks request boundaries in the bytes handed to the server.
    fn observe_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Answered {
            self.phase = Phase::Header;
            self.header_bytes = 0;
            self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
        }
        if self.phase == Phase::Header {
            match self.header_end.feed(bytes) {
                Some(n) => {
                    self.header_bytes += n;
                    self.phase = Phase::Request;
                    self.deadline = None;
                }
                None => self.header_bytes += bytes.len(),
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.peeked.is_empty() {
            let taken = this.peeked.split_to(this.peeked.len().min(buf.remaining()));
            buf.put_slice(&taken);
            this.observe_read(&taken);
            // A peek reads only a few bytes: take whatever else has arrived in the same
            // call, so the server's parser is not woken once more for the rest. Pending or
            // an error leaves the peeked bytes as this read's answer; the error comes back
            // on the next read.
            if buf.remaining() > 0 && this.peeked.is_empty() {
                let before = buf.filled().len();
                if let Poll::Ready(Ok(())) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                    this.observe_read(&buf.filled()[before..]);
                }
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.poll_read_raw(cx, buf))?;
        this.observe_read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.observe_write(bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]));
        if let Some(n) = this.gather(bufs) {
            return Poll::Ready(Ok(n));
        }
        // Too big to gather: what is gathered goes first, then this write goes straight on.
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Whether a write begins a final HTTP/1 response (not `100 Continue` or another 1xx).
/// Pingora writes a response header with one call, so its first bytes are the status line.
fn is_final_response_start(buf: &[u8]) -> bool {
    buf.len() >= 10 && buf.starts_with(b"HTTP/1.") && buf[8] == b' ' && buf[9] != b'1'
}

#[async_trait]
impl Peek for GuardedStream {
    /// Pingora peeks only to compare with the HTTP/2 preface, and [`next_request`] to
    /// wait for a request's first byte: stop reading as soon as `buf` is full or the bytes
    /// cannot be the preface (the rest of `buf` is zeroed, which cannot match either).
    /// Reads are no larger than `buf`, so a peek holds no buffer of its own while it waits;
    /// the server's next read takes the rest.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        while self.peeked.len() < buf.len() && H2_PREFACE.starts_with(&self.peeked) {
            let mut chunk = [0u8; H2_PREFACE.len()];
            let want = (buf.len() - self.peeked.len()).min(chunk.len());
            let mut read = ReadBuf::new(&mut chunk[..want]);
            std::future::poll_fn(|cx| self.poll_read_raw(cx, &mut read)).await?;
            if read.filled().is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.peeked.extend_from_slice(read.filled());
            if self.phase == Phase::Header {
                self.header_bytes = self.peeked.len();
            }
        }
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        buf[n..].fill(0);
        // Only a connection's first bytes can start HTTP/2; the same bytes after an
        // HTTP/1 response are just a malformed request.
        if self.phase == Phase::Header && self.peeked.starts_with(H2_PREFACE) {
            self.phase = Phase::H2;
        }
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// The request header of `session`, or `None` when the connection is done (closed,
/// refused, or broken). A malformed header gets a bare 400 and a CONNECT a bare 405, then
/// the connection is closed, as pingora-proxy does.
pub async fn next_request(mut session: ServerSession) -> Option<ServerSession> {
    match session.read_request().await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::debug!(error = %e.etype().as_str(), "cannot read a request header");
            if matches!(e.etype(), pingora::ErrorType::InvalidHTTPHeader) {
                let _ = session.respond_error(400).await;
            }
            session.shutdown().await;
            return None;
        }
    }
    if session.req_header().method == http::Method::CONNECT {
        let _ = session.respond_error(405).await;
        session.shutdown().await;
        return None;
    }
    Some(session)
}

/// Where the header deadline of each new connection comes from: the live config's
/// `limits.request_header_timeout_ms`, so a reload applies to the next connection.
pub type DeadlineSource = Box<dyn Fn() -> Duration + Send + Sync>;

/// Serves `A` with every connection wrapped in a [`GuardedStream`].
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: DeadlineSource,
    timeouts: IntCounter,
}

impl<A> HeaderDeadline<A> {
    /// Wraps `inner`; each new connection's deadline is `timeout()` at its accept, and
    /// `timeouts` counts the connections closed at it.
    pub fn new(inner: A, timeout: DeadlineSource, timeouts: IntCounter) -> Self {
        HeaderDeadline { inner: Arc::new(inner), timeout, timeouts }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let guarded = GuardedStream::new(stream, (self.timeout)(), self.timeouts.clone());
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    fn end_of(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut h = HeaderEnd::default();
        chunks.iter().enumerate().find_map(|(i, c)| h.feed(c).map(|n| (i, n)))
    }

    #[test]
    fn header_end_is_the_first_blank_line_in_either_line_ending() {
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]), Some((0, 27)));
        assert_eq!(end_of(&[b"GET / HTTP/1.1\nHost: a\n\nbody"]), Some((0, 24)));
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nHost: a\n\r\n"]), Some((0, 26)));
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nX: \r\r\n"]), None);
    }

    #[test]
    fn header_end_is_found_across_reads_split_anywhere() {
        let req = b"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\nhi";
        for split in 1..req.len() {
            let (a, b) = req.split_at(split);
            let got = end_of(&[a, b]).map(|(i, n)| if i == 0 { n } else { a.len() + n });
            assert_eq!(got, Some(req.len() - 2), "split at {split}");
        }
    }

    #[test]
    fn leading_blank_lines_do_not_end_a_header_that_has_not_started() {
        // httparse skips them; counting them as the end would disarm the deadline.
        assert_eq!(end_of(&[b"\r\n\r\n\n\r\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(end_of(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]), Some((0, 22)));
    }

    #[test]
    fn header_end_agrees_with_httparse_wherever_the_reads_split() {
        let requests: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n",
            b"\nGET /y HTTP/1.1\nHost: a\nx: \r\n\n",
            b"GET / HTTP/1.1\r\nx-empty:\r\nx-spaces:   \r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET /z HTTP/1.1\r\nHost: a\n\r\n",
        ];
        for req in requests {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let parsed = httparse::Request::new(&mut headers).parse(req).expect("a valid request");
            let httparse::Status::Complete(len) = parsed else { panic!("incomplete: {req:?}") };
            let mut with_body = req.to_vec();
            with_body.extend_from_slice(b"\r\n\r\nbody\n\n");
            for split in 0..=with_body.len() {
                let (a, b) = with_body.split_at(split);
                let got = end_of(&[a, b]).map(|(i, n)| if i == 0 { n } else { a.len() + n });
                assert_eq!(got, Some(len), "{:?} split at {split}", String::from_utf8_lossy(req));
            }
        }
    }

    #[test]
    fn only_final_responses_end_a_request() {
        assert!(is_final_response_start(b"HTTP/1.1 200 OK\r\n"));
        assert!(is_final_response_start(b"HTTP/1.1 408 Request Timeout\r\n"));
        assert!(!is_final_response_start(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_final_response_start(b"{\"data\":\"HTTP/1.1 200\"}"));
        assert!(!is_final_response_start(b"HTTP/1.1"));
    }

    fn pair(timeout: Duration) -> (GuardedStream, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let counter = IntCounter::new("t", "t").unwrap();
        (GuardedStream::new(Box::new(server), timeout, counter), client)
    }

    async fn read_some(s: &mut GuardedStream) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    async fn read_all(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// What the far side has received so far, without waiting for more.
    async fn received_now(c: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_wait_reads_one_byte_and_never_turns_a_connection_into_h2() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        s.flush().await.unwrap();
        // The preface after an HTTP/1 answer is a malformed request, not an h2 connection.
        c.write_all(H2_PREFACE).await.unwrap();
        let mut first = [0u8; 1];
        assert!(s.try_peek(&mut first).await.unwrap());
        assert_eq!(&first, b"P");
        assert_eq!(s.peeked.len(), 1, "the wait holds one byte, not a buffer");
        assert_eq!(s.phase, Phase::Answered);
        // The server's next read gets the peeked byte and what followed it, in one call.
        assert_eq!(read_some(&mut s).await.unwrap(), H2_PREFACE);
        // Read as HTTP/1: the preface's blank line ends a (malformed) request header.
        assert_eq!(s.phase, Phase::Request);
    }

    #[tokio::test]
    async fn a_response_is_gathered_until_the_flush_and_no_buffer_is_kept_after_it() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n";
        let body = [b'x'; 1024];
        s.write_all(head).await.unwrap();
        s.write_all(&body).await.unwrap();
        assert_eq!(received_now(&mut c).await, b"", "nothing leaves before the flush");
        assert!(s.out.capacity() > 0);
        s.flush().await.unwrap();
        let got = received_now(&mut c).await;
        assert_eq!(got.len(), head.len() + body.len());
        assert!(got.starts_with(head) && got.ends_with(&body));
        assert_eq!(s.out.capacity(), 0, "the gathering buffer is freed once flushed");
        assert_eq!(s.phase, Phase::Answered, "the gathered status line still ends the request");
    }

    #[tokio::test]
    async fn a_write_too_big_to_gather_goes_straight_on_after_what_was_gathered() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let big = vec![b'y'; WRITE_COALESCE_BYTES];
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 19 + WRITE_COALESCE_BYTES];
            c.read_exact(&mut got).await.unwrap();
            got
        });
        // Not flushed: the big write itself pushes the gathered header out first, in order.
        s.write_all(&big).await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..19], b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(got[19..].iter().all(|&b| b == b'y'));
        assert_eq!(s.out.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_header_is_cut_at_the_deadline_with_a_408() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"GET /callcentre/x HTTP/1.1\r\n").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap().len(), 28);
        tokio::time::sleep(Duration::from_secs(9)).await;
        c.write_all(b"Host: a\r\n").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap().len(), 9, "in time: still served");
        let started = Instant::now();
        let err = read_some(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(1), "the deadline is for the whole header");
        assert_eq!(s.timeouts.get(), 1);
        drop(s);
        let reply = read_all(&mut c).await;
        assert!(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{reply}");
        assert!(reply.contains("connection: close\r\n") && reply.contains("\"code\":40801"), "{reply}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_sends_nothing_is_closed_without_a_word() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        let err = read_some(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(s);
        assert_eq!(read_all(&mut c).await, "");
    }

    #[tokio::test(start_paused = true)]
    async fn body_and_keep_alive_idle_time_are_not_bounded_by_the_header_deadline() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"POST /x HTTP/1.1\r\ncontent-length: 4\r\n\r\nab").await.unwrap();
        read_some(&mut s).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        c.write_all(b"cd").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap(), b"cd", "a slow body is the body timeout's business");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        // The next request's clock starts at its first byte, not at the response.
        c.write_all(b"GET /y HTTP/1.1\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        c.write_all(b"\r\n").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap(), b"\r\n");
        // The header is complete: from here on the deadline is off, so this read just waits.
        let idle = tokio::time::timeout(Duration::from_secs(40), read_some(&mut s)).await;
        assert!(idle.is_err(), "a complete header must not be cut by the header deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_request_trickled_on_a_kept_alive_connection_is_cut_too() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        c.write_all(b"G").await.unwrap();
        read_some(&mut s).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.write_all(b"E").await.unwrap();
            read_some(&mut s).await.unwrap();
        }
        let started = Instant::now();
        assert_eq!(read_some(&mut s).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_100_continue_the_body_is_still_not_under_the_header_deadline() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"POST /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n").await.unwrap();
        read_some(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        c.write_all(b"a").await.unwrap();
        read_some(&mut s).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        c.write_all(b"b").await.unwrap();
        assert_eq!(read_some(&mut s).await.unwrap(), b"b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_request_is_peeked_without_waiting_for_24_bytes_and_then_read_whole() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        let req = b"GET /x HTTP/1.0\r\n\r\n";
        c.write_all(req).await.unwrap();
        let mut buf = [0u8; 24];
        assert!(s.try_peek(&mut buf).await.unwrap());
        assert_ne!(&buf[..], H2_PREFACE);
        assert_eq!(&buf[..req.len()], req);
        assert_eq!(read_some(&mut s).await.unwrap(), req, "peeked bytes are read again");
        assert_eq!(s.phase, Phase::Request);
    }

    #[tokio::test(start_paused = true)]
    async fn the_h2_preface_is_peeked_whole_even_in_pieces_and_leaves_the_connection_to_h2() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        let writer = tokio::spawn(async move {
            for piece in H2_PREFACE.chunks(5) {
                c.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            c.write_all(b"frame").await.unwrap();
            c
        });
        let mut buf = [0u8; 24];
        assert!(s.try_peek(&mut buf).await.unwrap());
        assert_eq!(&buf[..], H2_PREFACE);
        assert_eq!(s.phase, Phase::H2);
        let mut all = [0u8; 24];
        s.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..], H2_PREFACE);
        let mut later = [0u8; 5];
        s.read_exact(&mut later).await.expect("h2 bytes 60 s later are not under the header deadline");
        assert_eq!(&later, b"frame");
        let _c = writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peek_that_never_completes_ends_at_the_deadline() {
        let (mut s, mut c) = pair(Duration::from_secs(10));
        c.write_all(b"PRI * HTTP/2").await.unwrap();
        let mut buf = [0u8; 24];
        let started = Instant::now();
        assert_eq!(s.try_peek(&mut buf).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
