//! What an idle keep-alive caller and a request waiting on NXCloud cost the gateway (issue
//! 28; `docs/pingora.md` §11, §13).
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

/// Sends one ping on `s` and reads its whole answer, leaving the connection open.
fn one_request(s: &mut TcpStream) -> u16 {
    send_only(s);
    read_answer(s)
}

/// Reads one whole answer (`Content-Length` framed) from `s`; its status.
fn read_answer(s: &mut TcpStream) -> u16 {
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

/// Requests held in flight at once.
const IN_FLIGHT: usize = 500;

/// RSS per request waiting on a slow NXCloud (the caller's connection, the request and its
/// upstream connection), debug build, measured: 22.4 to 26.4 KiB (28 without patch 2, more
/// with Pingora's per-connection task back). A guard against what a waiting request holds
/// growing back; the exact test of patch 2 is `tests/header_buffer.rs`, where RSS noise
/// does not blur 4 KiB.
const MAX_KIB_PER_REQUEST: f64 = 32.0;

/// Sends one ping on `s` without reading the answer.
fn send_only(s: &mut TcpStream) {
    let body = br#"{"data":"in flight"}"#;
    let head = format!(
        "POST /callcentre/api/v3/ping HTTP/1.1\r\nhost: nxgate\r\nauthorization: Bearer {KEY_A}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

#[test]
fn a_request_waiting_on_a_slow_nxcloud_holds_a_bounded_amount() {
    let nofile = open_files_limit();
    assert!(nofile >= 8192, "the test needs `ulimit -n` of at least 8192 (scripts/test.sh raises it); it is {nofile}");
    // NXCloud 3 s away: every request waits there while RSS is read.
    let emu = Emulator::with(
        nxgate_emulator::EmulatorConfig {
            tenants: emulator_tenants(),
            fault: Some(nxgate_emulator::Fault::Slow),
            slow_ms: Some(3000),
            ..Default::default()
        },
        None,
    );
    std::env::set_var("NXGATE_TEST_LOG", "warn");
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    std::env::remove_var("NXGATE_TEST_LOG");
    // Warm up with a few requests only: memory freed after a round as large as the measured
    // one would stay with the allocator for reuse and hide what the round holds.
    let round = |n: usize| {
        let mut callers: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(gw.addr).unwrap()).collect();
        for s in &mut callers {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            send_only(s);
        }
        callers
    };
    let read_all = |callers: &mut Vec<TcpStream>| {
        for s in callers.iter_mut() {
            assert_eq!(read_answer(s), 200);
        }
    };
    let mut warm = round(4);
    read_all(&mut warm);
    drop(warm);
    std::thread::sleep(Duration::from_secs(1));
    let before = vm_rss_kb(gw.pid());
    let mut callers = round(IN_FLIGHT);
    std::thread::sleep(Duration::from_millis(1500));
    let with = vm_rss_kb(gw.pid());
    read_all(&mut callers);
    let per = (with.saturating_sub(before)) as f64 / IN_FLIGHT as f64;
    eprintln!("RSS {before} KiB before, {with} KiB with {IN_FLIGHT} requests in flight: {per:.2} KiB each");
    assert!(per <= MAX_KIB_PER_REQUEST, "{per:.2} KiB per request in flight (at most {MAX_KIB_PER_REQUEST})");
}

/// jemalloc takes the gateway's own options (`src/main.rs`): freed pages go back after a
/// second unused, not jemalloc's ten, so a burst of connections does not stay in RSS. Read
/// back from jemalloc's own statistics, which print its options as it runs them.
#[test]
fn jemalloc_returns_freed_pages_within_a_second() {
    let out = std::process::Command::new(nxgate_bin())
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("nxgate runs");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("opt.dirty_decay_ms: 1000"), "jemalloc's options: {stats:.2000}");
    assert!(stats.contains("opt.background_thread: true"), "jemalloc's options: {stats:.2000}");
}
