//! What an idle keep-alive caller costs the gateway (issue 28; `docs/pingora.md` §11, §13).
//!
//! Until the patched pingora-core (`crates/pingora-core`), each connection's task held the
//! handshake future inline for the connection's whole life: several KiB per idle caller
//! (about 8.6 KiB in a release build, more in this debug build). The bound below sits
//! between the two (it fails on the unpatched crate), so the test fails if that task, or
//! anything else kept per idle connection, grows back. The release figures are in BENCHMARKS.md ("Issue 28").

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Idle callers held at once: enough that a few KiB each stand far above the noise of the
/// allocator's own bookkeeping.
const CALLERS: usize = 2000;

/// Debug build, measured: 3.8 KiB per idle caller with the patch, 13.5 KiB without it.
const MAX_KIB_PER_CALLER: f64 = 8.0;

/// Sends one ping on `s` and reads its whole answer (`Content-Length` framed), leaving the
/// connection open.
fn one_request(s: &mut TcpStream) -> u16 {
    let body = br#"{"data":"idle"}"#;
    let head = format!(
        "POST /callcentre/api/v3/ping HTTP/1.1\r\nhost: nxgate\r\nauthorization: Bearer {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the gateway closed the connection: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a framed answer");
        if got.len() >= end + 4 + len {
            return head[9..12].parse().unwrap();
        }
    }
}

#[test]
fn an_idle_keep_alive_caller_costs_a_few_kib() {
    let nofile = open_files_limit();
    assert!(nofile >= 8192, "the test needs `ulimit -n` of at least 8192 (scripts/test.sh raises it); it is {nofile}");
    let emu = Emulator::start();
    std::env::set_var("NXGATE_TEST_LOG", "warn");
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    std::env::remove_var("NXGATE_TEST_LOG");
    // Warm up: the pools, the allocator's caches and the per-tenant state exist before
    // "before" is read.
    for _ in 0..50 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        assert_eq!(one_request(&mut s), 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = vm_rss_kb(gw.pid());

    let mut callers = Vec::with_capacity(CALLERS);
    for _ in 0..CALLERS {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(one_request(&mut s), 200);
        callers.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let with = vm_rss_kb(gw.pid());
    let per = (with.saturating_sub(before)) as f64 / CALLERS as f64;
    eprintln!("RSS {before} KiB before, {with} KiB with {CALLERS} idle callers: {per:.2} KiB each");
    assert!(per <= MAX_KIB_PER_CALLER, "{per:.2} KiB per idle caller (at most {MAX_KIB_PER_CALLER})");
    // Every one of them is still served on its kept connection.
    for s in callers.iter_mut().step_by(97) {
        assert_eq!(one_request(s), 200);
    }
}
