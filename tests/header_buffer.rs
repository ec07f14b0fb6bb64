//! The tests of the patched pingora-core's second and fourth changes (`docs/pingora.md`
//! §13, patches 2 and 4): a small request does not keep Pingora's 4 KiB header buffer for
//! its whole life, and a body read with its header is handed over, not held twice.
//!
//! Counted exactly, in-process: the bytes the heap holds after `read_request` (and after
//! reading the body) on a session whose request is already waiting in the pipe. Unpatched,
//! the 4,096-byte buffer stays (the header values and the pre-read body are slices of it),
//! and the body comes back as a copy while the pre-read bytes stay in the buffer; patched,
//! what was read is copied into an allocation of its own size, the buffer goes back, and
//! the body is that allocation's tail.

use pingora::protocols::http::ServerSession;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use tokio::io::AsyncWriteExt;

/// Heap bytes in use, counted by [`Counting`].
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting the bytes in use.
struct Counting;

// SAFETY: every call is passed to `System` unchanged; only a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Pingora's initial header buffer (`INIT_HEADER_BUF_SIZE`, `core/protocols/http/v1/common.rs`).
const INIT_HEADER_BUF_SIZE: isize = 4096;

/// What a session holds after reading `request` (already in the pipe), in bytes.
async fn held_after_reading(request: &[u8]) -> (isize, ServerSession) {
    let (server, mut client) = tokio::io::duplex(64 * 1024);
    client.write_all(request).await.unwrap();
    let mut session = ServerSession::new_http1(Box::new(server));
    let before = LIVE.load(Ordering::Relaxed);
    assert!(session.read_request().await.unwrap(), "a request was read");
    let held = LIVE.load(Ordering::Relaxed) - before;
    // Keep the client end open until the count is taken.
    drop(client);
    (held, session)
}

/// A request with a `len`-byte JSON body, header and body in one write.
fn with_body(len: usize) -> Vec<u8> {
    let body = format!("{{\"data\":\"{}\"}}", "b".repeat(len - 11));
    assert_eq!(body.len(), len);
    let mut request = format!(
        "POST /callcentre/api/v3/ping HTTP/1.1\r\nHost: nxgate\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

// One test, on the current-thread runtime: no other thread allocates while counting.
#[tokio::test(flavor = "current_thread")]
async fn a_small_request_holds_what_it_read_not_the_initial_buffer() {
    let small = b"POST /callcentre/api/v3/ping HTTP/1.1\r\nHost: nxgate\r\nAuthorization: Bearer k\r\n\
                  Content-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"data\":\"small\"}";
    // A first read sets up what lives once per thread (Pingora's timer wheel, tokio's
    // context), so the counts below are the sessions' own.
    drop(held_after_reading(small).await);

    let (held, session) = held_after_reading(small).await;
    eprintln!("a {}-byte request: {held} bytes held after the header read", small.len());
    // The parsed header (its maps, with the case map) and what was read, but not 4 KiB.
    assert!(held < INIT_HEADER_BUF_SIZE, "{held} bytes held: the 4 KiB header buffer was kept");
    // Still the same request: headers and the pre-read body are intact.
    assert_eq!(session.req_header().uri.path(), "/callcentre/api/v3/ping");
    assert_eq!(session.req_header().headers["authorization"], "Bearer k");
    drop(session);

    // Over half the buffer: left as Pingora reads it (a large header is not copied).
    let filler = "x".repeat(2500);
    let large = format!("GET /callcentre/api/v3/ping HTTP/1.1\r\nHost: nxgate\r\nX-Filler: {filler}\r\n\r\n");
    let (held, session) = held_after_reading(large.as_bytes()).await;
    eprintln!("a {}-byte request: {held} bytes held after the header read", large.len());
    assert!(held >= INIT_HEADER_BUF_SIZE, "{held} bytes held");
    assert_eq!(session.req_header().headers["x-filler"].len(), 2500);

    drop(session);

    // A 1 KiB body read with its header: reading it adds (almost) nothing, because the body
    // handed over is the pre-read tail of the request's own allocation. Unpatched it adds a
    // copy of the body, and the pre-read bytes stay held by the header buffer too.
    let request = with_body(1024);
    let (_, mut session) = held_after_reading(&request).await;
    let before = LIVE.load(Ordering::Relaxed);
    let body = session.read_request_body().await.unwrap().expect("a body");
    let added = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("reading a {}-byte pre-read body added {added} bytes", body.len());
    assert_eq!(&body[..], &request[request.len() - 1024..]);
    assert!(session.read_request_body().await.unwrap().is_none(), "the body is complete");
    assert!(added < 256, "{added} bytes added: the body was copied");
}
