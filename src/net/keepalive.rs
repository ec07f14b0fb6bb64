//! HTTP/1 connections that hold nothing but their socket while they wait for the next
//! request.
//!
//! Pingora's own connection loop (`impl ServerApp for T: HttpServerApp`) keeps a boxed
//! future the size of its largest state (the h2 path included, a few KiB) for the life of
//! every connection, and the app's `process_new_http` future, with Pingora's 4 KiB header
//! buffer allocated, stays alive while an idle keep-alive caller says nothing. With
//! thousands of idle callers that is most of the gateway's memory (`docs/pingora.md` §11).
//!
//! [`LeanHttp`] runs the same loop for HTTP/1: it waits for a request's first byte holding
//! only the stream, then builds the session and calls the app's `process_new_http` (whose
//! future is boxed per request and freed before the next wait). HTTP/2 (h2c prior
//! knowledge or ALPN) and custom protocols go to Pingora's loop unchanged.
//!
//! The apps it serves never enable HTTP/1 pipelining: a reused stream must not carry
//! already-read bytes, which this loop would wait past.

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::net::downstream::H2_PREFACE;

/// Idle time allowed between requests on a caller's keep-alive connection, and per read
/// of the next request header (Pingora's HTTP/1.1 default would be to wait forever); also
/// what Pingora's own loop sets for a connection's first request.
pub const KEEPALIVE: Duration = Duration::from_secs(60);

/// Serves an `HttpServerApp`'s HTTP/1 connections with a small idle footprint.
pub struct LeanHttp<A> {
    app: Arc<A>,
    /// How long a connection may wait for its next request; the app's keep-alive time.
    idle: Duration,
    /// Set, and `stop` notified, when the service shuts down: callers idle between
    /// requests are let go instead of being kept until their idle time runs out.
    stopping: AtomicBool,
    stop: Notify,
}

impl<A> LeanHttp<A> {
    /// Serves `app`, closing a connection idle for `idle` between requests.
    pub fn new(app: A, idle: Duration) -> Self {
        LeanHttp { app: Arc::new(app), idle, stopping: AtomicBool::new(false), stop: Notify::new() }
    }

    /// Resolves once the service is shutting down.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a shutdown between the two is not missed.
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            notified.await;
        }
    }

    /// Waits for the next request's first byte, holding no buffer; `false` if the
    /// connection is done (closed, idle too long, its header deadline passed, shutdown).
    async fn next_byte(&self, stream: &mut Stream) -> bool {
        let mut first = [0u8; 1];
        tokio::select! {
            biased;
            peeked = tokio::time::timeout(self.idle, stream.try_peek(&mut first)) => matches!(peeked, Ok(Ok(_))),
            () = self.stopped() => false,
        }
    }
}

impl<A: HttpServerApp> LeanHttp<A> {
    /// Whether the connection is for Pingora's own loop: h2 (prior knowledge, when the app
    /// allows h2c, or by ALPN) or a custom protocol. `None` if the peek failed.
    async fn not_http1(&self, stream: &mut Stream) -> Option<bool> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2) | Some(ALPN::Custom(_))) {
            return Some(true);
        }
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        if h2c && stream.get_ssl_digest().is_none() {
            let mut buf = [0u8; H2_PREFACE.len()];
            let peeked = stream.try_peek(&mut buf).await.ok()?;
            return Some(peeked && buf == H2_PREFACE);
        }
        Some(false)
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for LeanHttp<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if self.not_http1(&mut stream).await? {
            // Pingora's loop peeks again; the guarded stream answers from what it has.
            return self.app.process_new(stream, shutdown).await;
        }
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            if !self.next_byte(&mut stream).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if first {
                // What Pingora's loop sets for a connection's first request.
                session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE.as_secs()));
                session
                    .set_keepalive_reuses_remaining(self.app.server_options().and_then(|o| o.keepalive_request_limit));
                first = false;
            } else if let Some(settings) = persistent.take() {
                settings.apply_to_session(&mut session);
            }
            let (reused, settings) = self.app.process_new_http(session, shutdown).await?.consume();
            stream = reused;
            persistent = settings;
        }
    }

    async fn cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.app.cleanup().await;
    }
}
