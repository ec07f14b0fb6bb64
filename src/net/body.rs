//! A caller's request target and body, the same way on every listener that forwards one
//! (the proxy and the callback listener): the target is checked as it will be sent,
//! ambiguous framing and oversized declared lengths are refused
//! before a byte is read, then the body is read whole (Content-Length or chunked) under a
//! byte cap and a deadline.

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use std::time::Duration;

use nxgate_core::errors::GatewayError;

/// Time allowed to receive a whole request body, so a slow sender cannot hold a
/// buffer and a task forever.
pub const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The path and query to forward, if the path is under `allow_prefixes`. Exactly what is
/// forwarded is checked: a target Pingora could not keep verbatim in the URI is refused
/// rather than checked in one spelling and sent in another.
pub fn allowed_target(req: &RequestHeader, allow_prefixes: &[String]) -> Result<String, GatewayError> {
    let target = req.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    if req.raw_path() != target.as_bytes() && req.uri.scheme().is_none() {
        return Err(GatewayError::BadRequest("request target is not a plain origin-form path".into()));
    }
    if !nxgate_core::routes::is_allowed(req.uri.path(), allow_prefixes) {
        return Err(GatewayError::RouteNotAllowed);
    }
    Ok(target.to_owned())
}

/// Refuses ambiguous framing and a declared body over `limit`; returns the declared
/// Content-Length, if any.
pub fn check_framing(session: &ServerSession, limit: usize) -> Result<Option<usize>, GatewayError> {
    let req = session.req_header();
    // Pingora deletes Content-Length when Transfer-Encoding is present (and then reads the
    // body as chunked); a request carrying both is a smuggling attempt, so look at the raw
    // header bytes, where the deleted line still is.
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) && session.as_http1().is_some() {
        let raw = session.to_h1_raw();
        let has_cl = raw
            .split(|&b| b == b'\n')
            .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"));
        if has_cl {
            return Err(GatewayError::BadRequest("both Content-Length and Transfer-Encoding".into()));
        }
    }
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(value) = lengths.next() else { return Ok(None) };
    if lengths.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Content-Length header".into()));
    }
    let text = value.to_str().unwrap_or("");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::BadRequest("Content-Length is not a number".into()));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= limit as u64 => Ok(Some(n as usize)),
        _ => Err(GatewayError::BodyTooLarge { limit }),
    }
}

/// The whole body, Content-Length or chunked, up to `limit` bytes.
pub async fn read_body(
    session: &mut ServerSession,
    limit: usize,
    declared: Option<usize>,
) -> Result<Bytes, GatewayError> {
    let expects_continue = expects_continue(session);
    if expects_continue {
        // Answer 100 only now that the caller is authenticated, routed and within limits.
        // Pingora would close the connection after a 100 sent before the body is read
        // unless told the body will be read in full (`docs/pingora.md` §6).
        session.set_close_on_response_before_downstream_finish(false);
        session
            .write_continue_response()
            .await
            .map_err(|e| GatewayError::BadRequest(format!("cannot send 100 Continue: {}", e.etype().as_str())))?;
    }
    let read = async {
        // A Content-Length body that arrives as one chunk is kept as Pingora hands it over
        // (its buffer is the body's size: what was read with the header, or an exact read),
        // not copied: a request waiting on NXCloud holds its body once. A chunked body's
        // chunks may be slices of a 64 KiB read buffer, so they are always copied out.
        let mut whole: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| GatewayError::BadRequest(format!("reading request body: {}", e.etype().as_str())))?
        {
            let so_far = whole.as_ref().map_or(0, Bytes::len) + buf.len();
            if so_far + chunk.len() > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            if declared.is_some() && so_far == 0 {
                whole = Some(chunk);
                continue;
            }
            if let Some(first) = whole.take() {
                buf.reserve(declared.unwrap_or(0).max(first.len() + chunk.len()));
                buf.extend_from_slice(&first);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(whole.unwrap_or_else(|| buf.freeze()))
    };
    let result = tokio::time::timeout(REQUEST_BODY_TIMEOUT, read).await.unwrap_or_else(|_| {
        Err(GatewayError::BadRequest(format!("request body not received within {} s", REQUEST_BODY_TIMEOUT.as_secs())))
    });
    if expects_continue {
        session.set_close_on_response_before_downstream_finish(true);
    }
    result
}

/// Whether the caller waits for `100 Continue` before sending its body.
pub fn expects_continue(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
