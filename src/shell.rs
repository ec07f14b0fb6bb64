//! The request shell: what happens to every request on every caller-facing listener,
//! written once, with the two flows (`proxy`, `callbacks`) plugged in through [`Flow`],
//! the way pingora-proxy writes its loop once over `ProxyHttp`.
//!
//! For each request the shell, in this order:
//! 1. reads the request header (`net::downstream::next_request`: a bare 400 for a
//!    malformed header, a bare 405 for CONNECT; the header deadline is the listener's
//!    `HeaderDeadline`);
//! 2. bounds the connection's idle time, and makes this answer the last while draining;
//! 3. counts the request in flight until its answer is flushed;
//! 4. runs the flow, which frames and reads the body with `net::body` and may refuse
//!    with a `GatewayError` at any step;
//! 5. turns a refusal into the one wire rendering (`ErrorResponse`), logged by whose
//!    fault it is, and closes the connection after a framing or body error;
//! 6. counts the request in the flow's metrics **before** writing the answer (a scrape
//!    after the answer always includes it), writes the answer, then writes the flow's
//!    access event;
//! 7. hands the connection back for the next request if it may be kept.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Instant;

use crate::net::downstream::next_request;
use crate::net::keepalive::KEEPALIVE;
use crate::process::lifecycle::Lifecycle;
use nxgate_core::clock::now_unix_ms;
use nxgate_core::errors::{ErrorKind, ErrorResponse, ErrorSource, GatewayError, UpstreamFailure};
use nxgate_core::headers::{self, REQUEST_ID_HEADER};
use nxgate_core::signing;

/// An answer ready to send.
pub struct Reply {
    /// Status and headers, framed for the caller (`reframe`).
    pub header: ResponseHeader,
    /// The whole body.
    pub body: Bytes,
}

/// The facts of one request that every flow keeps, for its metrics and access event.
#[derive(Debug)]
pub struct Request {
    /// The gateway's own id: `reqId` of its error bodies (and the proxy's requestID).
    pub id: String,
    /// When the request header was in.
    pub started: Instant,
    /// Status sent to the caller.
    pub status: u16,
    /// Request body bytes read.
    pub bytes_in: usize,
    /// Response body bytes written.
    pub bytes_out: usize,
    /// The error the gateway answered with, if it did.
    pub error: Option<ErrorKind>,
    /// How an upstream exchange failed, if that is why.
    pub upstream_failure: Option<UpstreamFailure>,
}

impl Request {
    fn new() -> Self {
        Request {
            id: signing::new_request_id(),
            started: Instant::now(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            upstream_failure: None,
        }
    }

    /// The `outcome` label: the error kind, or `ok`.
    pub fn outcome(&self) -> Option<&'static str> {
        self.error.map(ErrorKind::as_str)
    }
}

/// What a listener does with a request whose header is in: the proxy and the callback
/// flow implement it; the shell does the rest.
#[async_trait]
pub trait Flow: Send + Sync + 'static {
    /// The flow's own state for one request (its config snapshot, its tenant, what it
    /// learned on the way); dropped only once the answer is flushed, so guards it holds
    /// (in-flight slots) last that long.
    type Ctx: Send;

    /// The listener's name in log lines.
    const LISTENER: &'static str;

    /// A request's state, taken when its header is in (one config snapshot for the whole
    /// request: a reload mid-request changes nothing for it).
    fn start(&self) -> Self::Ctx;

    /// Runs the flow; each step may refuse with a `GatewayError`.
    async fn handle(
        &self,
        session: &mut ServerSession,
        req: &mut Request,
        ctx: &mut Self::Ctx,
    ) -> Result<Reply, GatewayError>;

    /// The tenant's name for log lines, once known.
    fn tenant<'c>(&self, ctx: &'c Self::Ctx) -> Option<&'c str>;

    /// Headers this flow adds to every answer, refusals included.
    fn decorate(&self, _ctx: &Self::Ctx, _reply: &mut Reply) {}

    /// Work that must be done before the answer is written (an `Idempotency-Key`'s
    /// answer recorded), if this request has any: `None` for most, which then pay no
    /// boxed future.
    fn settle<'a>(&'a self, _ctx: &'a mut Self::Ctx, _reply: &'a Reply) -> Option<Settling<'a>> {
        None
    }

    /// Counts the finished request (before its answer is written).
    fn record(&self, req: &Request, ctx: &Self::Ctx);

    /// The one access event of the request (after its answer is written). No secret,
    /// client key, query string or body.
    fn log(&self, session: &ServerSession, req: &Request, ctx: &Self::Ctx);
}

/// What [`Flow::settle`] returns: work awaited before the answer is written.
pub type Settling<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// A Pingora `HttpServerApp` running `F` for every request.
pub struct Shell<F> {
    flow: F,
    lifecycle: Arc<Lifecycle>,
    options: Option<HttpServerOptions>,
}

impl<F: Flow> Shell<F> {
    /// Serves `flow`; with `h2c`, HTTP/2 with prior knowledge too, on the same port.
    pub fn new(flow: F, lifecycle: Arc<Lifecycle>, h2c: bool) -> Self {
        // HTTP/1 callers are unaffected by h2c (Pingora peeks for the h2 preface). An h2
        // connection with no stream open is closed after the HTTP/1 keep-alive time.
        let options = h2c.then(|| {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            options.h2_idle_timeout = Some(KEEPALIVE);
            options
        });
        Shell { flow, lifecycle, options }
    }

    /// One request whose header has been read: answer it, count it, log it, and hand the
    /// connection back for the next request if it may be kept.
    async fn serve(&self, mut session: ServerSession, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
        let _in_flight = self.lifecycle.request_started();
        // Pingora has already applied the caller's wishes (HTTP/1.0, `Connection: close`);
        // only bound the idle time of a connection that stays open, and end it when draining.
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(KEEPALIVE.as_secs()));
        }
        let mut req = Request::new();
        let mut ctx = self.flow.start();
        let mut reply = match self.flow.handle(&mut session, &mut req, &mut ctx).await {
            Ok(reply) => reply,
            Err(e) => {
                // After a framing or body error the request's end is unknown: whatever the
                // caller sends next cannot be trusted to start a new request, so close.
                if matches!(e, GatewayError::BadRequest(_) | GatewayError::BodyTooLarge { .. }) {
                    session.set_keepalive(None);
                }
                self.refusal(&e, &mut req, &ctx)
            }
        };
        self.flow.decorate(&ctx, &mut reply);
        if let Some(settling) = self.flow.settle(&mut ctx, &reply) {
            settling.await;
        }
        req.status = reply.header.status.as_u16();
        self.flow.record(&req, &ctx);
        let head = session.req_header().method == http::Method::HEAD;
        let body_len = reply.body.len();
        // Pingora's write and finish futures (about 1.2 and 3.7 KiB: every protocol's path
        // inline) are boxed when their turn comes, so this future, which lives while the
        // request waits on NXCloud, is not sized by them (docs/pingora.md §11).
        match Box::pin(write(&mut session, reply, head)).await {
            Ok(()) if !head => req.bytes_out = body_len,
            Ok(()) => {}
            Err(e) => tracing::debug!(
                gateway_id = %req.id,
                listener = F::LISTENER,
                error = %e.etype().as_str(),
                "the caller went away before the answer was written"
            ),
        }
        self.flow.log(&session, &req, &ctx);
        let persistent = HttpPersistentSettings::for_session(&session);
        let reused = Box::pin(session.finish()).await.ok().flatten();
        // `ctx` (in-flight slots) and `_in_flight` live until the answer is flushed.
        drop(ctx);
        reused.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent))
    }

    /// The one place a `GatewayError` becomes an answer, on every listener.
    fn refusal(&self, e: &GatewayError, req: &mut Request, ctx: &F::Ctx) -> Reply {
        req.error = Some(e.error_kind());
        req.upstream_failure = e.upstream_failure();
        let tenant = self.flow.tenant(ctx).unwrap_or("-");
        let (listener, kind) = (F::LISTENER, e.kind());
        match e.source() {
            ErrorSource::Caller => {
                tracing::debug!(gateway_id = %req.id, listener, tenant, kind, error = %e, "request refused")
            }
            ErrorSource::Upstream | ErrorSource::Internal => {
                tracing::warn!(gateway_id = %req.id, listener, tenant, kind, error = %e, "gateway error")
            }
        }
        let rendered = ErrorResponse::new(e, &req.id, now_unix_ms());
        let headers = rendered.headers();
        let mut h = ResponseHeader::build(rendered.status, Some(headers.len())).expect("contract statuses are valid");
        for (name, value) in headers {
            h.insert_header(name, value).expect("the error header set is valid");
        }
        Reply { header: h, body: rendered.body }
    }
}

#[async_trait]
impl<F: Flow> HttpServerApp for Shell<F> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // This future is boxed (by async_trait) per request and freed before the connection
        // idles again: between requests `net::keepalive` holds only the stream. The header
        // read (about 2.7 KiB, Pingora's `read_request`) and the request's own state are boxed
        // apart, each only while it runs, so neither sizes this box for the request's life.
        let session = Box::pin(next_request(session)).await?;
        Box::pin(self.serve(session, shutdown)).await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.options.as_ref()
    }
}

async fn write(session: &mut ServerSession, reply: Reply, head: bool) -> pingora::Result<()> {
    session.write_response_header(Box::new(reply.header)).await?;
    if !head && !reply.body.is_empty() {
        session.write_response_body(reply.body, true).await?;
    }
    Ok(())
}

/// An upstream's answer (NXCloud's, or a receiver's) as the caller gets it: hop-by-hop
/// and framing headers removed, `Content-Length` and `x-request-id` set.
pub fn reframe(mut h: ResponseHeader, request_id: &str, body_len: usize) -> ResponseHeader {
    for name in headers::unforwardable_response_headers(&h.headers) {
        h.remove_header(&name);
    }
    h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string()).expect("a number is a valid header");
    h.insert_header(REQUEST_ID_HEADER, request_id).expect("ids are visible ASCII");
    h
}
