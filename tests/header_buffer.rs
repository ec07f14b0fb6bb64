//! The test of the patched pingora-core's second change (`docs/pingora.md` §13, patch 2): a
//! small request does not keep Pingora's 4 KiB header buffer for its whole life.
//!
//! Counted exactly, in-process: the bytes the heap holds after `read_request` on a session
//! whose request is already waiting in the pipe. Unpatched, the 4,096-byte buffer stays
//! (the header values and the pre-read body are slices of it); patched, what was read is
//! copied into an allocation of its own size and the buffer goes back.

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
}
