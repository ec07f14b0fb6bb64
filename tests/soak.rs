//! Soak: a minute at 64 connections mixing good requests, upstream faults and a
//! rate-limited tenant. Every response is accounted for and matched to its own request,
//! and the process neither grows its memory nor leaks file descriptors.
//!
//! `NXGATE_SOAK_SECS` shortens or lengthens the run (default 60).

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 64;

/// One kind of request in the mix and the statuses it may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Good,
    RateLimitedTenant,
    BadSign,
    Truncated,
    Reset,
    WrongRequestId,
    Unsigned500,
}

const MIX: [Kind; 10] = [
    Kind::Good,
    Kind::Good,
    Kind::Good,
    Kind::Good,
    Kind::RateLimitedTenant,
    Kind::BadSign,
    Kind::Truncated,
    Kind::Reset,
    Kind::WrongRequestId,
    Kind::Unsigned500,
];

fn fault(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Good | Kind::RateLimitedTenant => None,
        Kind::BadSign => Some("bad_sign"),
        Kind::Truncated => Some("truncated"),
        Kind::Reset => Some("reset"),
        Kind::WrongRequestId => Some("wrong_request_id"),
        Kind::Unsigned500 => Some("unsigned_500"),
    }
}

/// Checks one response against its request; returns the outcome label.
fn check(kind: Kind, data: &str, r: &Response) -> &'static str {
    let req_id = r.header("x-request-id").expect("every response has x-request-id");
    match (kind, r.status) {
        (Kind::Good | Kind::RateLimitedTenant, 200) => {
            let v = r.json();
            // The caller gets the answer to its own request, never another's.
            assert_eq!(v["data"], data, "a caller received another request's answer");
            assert_eq!(v["reqId"], req_id);
            "ok"
        }
        (Kind::RateLimitedTenant, 429) => {
            assert_gateway_error(r, 429, 42901, "rate_limited");
            "rate_limited"
        }
        (Kind::BadSign | Kind::WrongRequestId | Kind::Unsigned500, 502) => {
            assert_gateway_error(r, 502, 50202, "bad_upstream_signature");
            assert!(!String::from_utf8_lossy(&r.body).contains(data), "upstream body leaked");
            "refused"
        }
        (Kind::Truncated | Kind::Reset, 502) => {
            assert_gateway_error(r, 502, 50204, "bad_upstream_response");
            "refused"
        }
        (kind, status) => panic!("{kind:?} got unexpected {status}: {}", String::from_utf8_lossy(&r.body)),
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Open-fd counts sampled 20 times over 2 s: upstream connections open and close with
/// every fault, so one sample says little; a window shows the band the count moves in.
fn fd_window(pid: u32) -> (usize, usize) {
    let samples: Vec<usize> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            fd_count(pid)
        })
        .collect();
    (*samples.iter().min().unwrap(), *samples.iter().max().unwrap())
}

#[test]
fn a_minute_at_64_connections_accounts_for_every_response_without_growth() {
    let secs: u64 = std::env::var("NXGATE_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let emu = Emulator::start();
    // The gateway's upstream is a recording relay: what the far side received is counted
    // there, independently of the gateway and of the callers.
    let rec = Recorder::start(emu.addr);
    let mut opts = GatewayOptions::new(rec.url());
    opts.tenant_b_extra = "    rate_limit: { per_second: 50, burst: 50 }\n".into();
    // Quiet logs: a minute of debug lines would measure the logger, not the gateway.
    std::env::set_var("NXGATE_TEST_LOG", "warn");
    let gw = Gateway::start(&opts);
    std::env::remove_var("NXGATE_TEST_LOG");
    let pid = gw.pid();
    let addr = gw.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<HashMap<(Kind, &'static str), u64>>> = Arc::default();
    // Every request's `data` and the outcome its caller got back.
    let outcomes: Arc<Mutex<HashMap<String, &'static str>>> = Arc::default();
    let run_started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let (stop, tally, outcomes) = (stop.clone(), tally.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let mut c = Connection::open(addr).unwrap();
                let mut local: HashMap<(Kind, &'static str), u64> = HashMap::new();
                let mut got: Vec<(String, &'static str)> = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let kind = MIX[(w + i) % MIX.len()];
                    let data = format!("w{w}-r{i}");
                    let key = if kind == Kind::RateLimitedTenant { KEY_B } else { KEY_A };
                    let auth = format!("Bearer {key}");
                    let mut headers = vec![("authorization", auth.as_str())];
                    if let Some(f) = fault(kind) {
                        headers.push(("x-emulator-fault", f));
                    }
                    let body = format!(r#"{{"data":"{data}"}}"#);
                    let r = c
                        .request("POST", "/callcentre/api/v3/ping", &headers, body.as_bytes())
                        .unwrap_or_else(|e| panic!("worker {w} request {i} ({kind:?}): {e}"));
                    let outcome = check(kind, &data, &r);
                    *local.entry((kind, outcome)).or_default() += 1;
                    got.push((data, outcome));
                    i += 1;
                }
                let mut t = tally.lock().unwrap();
                for (k, n) in local {
                    *t.entry(k).or_default() += n;
                }
                let mut o = outcomes.lock().unwrap();
                for (data, outcome) in got {
                    assert!(o.insert(data, outcome).is_none(), "a data value was used twice");
                }
            })
        })
        .collect();

    let warm_up = Duration::from_secs((secs / 6).max(2));
    std::thread::sleep(warm_up);
    let rss_warm = proc_status(pid, "VmRSS:");
    let fds_warm = fd_window(pid);
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(warm_up + Duration::from_secs(4)));
    let rss_end = proc_status(pid, "VmRSS:");
    let fds_end = fd_window(pid);
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let run_secs = stopped.duration_since(run_started).as_secs_f64();
    for w in workers {
        w.join().expect("a worker failed");
    }
    assert!(stopped.elapsed() < Duration::from_secs(30), "workers took too long to finish");
    let run_secs_upper = run_started.elapsed().as_secs_f64();

    // What the far side received: the `data` of every request that reached the relay.
    let upstream_text = rec.text();
    let mut received: HashMap<&str, u64> = HashMap::new();
    for piece in upstream_text.split(r#"{"data":""#).skip(1) {
        let data = piece.split('"').next().unwrap();
        *received.entry(data).or_default() += 1;
    }
    let received_total: u64 = received.values().sum();

    let tally = tally.lock().unwrap();
    let outcomes = outcomes.lock().unwrap();
    let answered = outcomes.len() as u64;
    println!(
        "soak: {secs} s ({run_secs:.1} s of traffic), {CONNECTIONS} connections, {answered} answered, \
         {received_total} received upstream over {} connections",
        rec.connections()
    );
    let mut rows: Vec<_> = tally.iter().collect();
    rows.sort_by_key(|(k, _)| format!("{k:?}"));
    for ((kind, outcome), n) in rows {
        println!("  {kind:?} -> {outcome}: {n}");
    }
    println!("  RSS after warm-up {rss_warm} kB, at end {rss_end} kB; fds (min, max) {fds_warm:?} -> {fds_end:?}");

    // Caller side against far side, request by request: everything that was not refused
    // by the rate limit reached the upstream exactly once (no retry, no duplicate, no
    // answer made up without asking), a 429 never reached it, and nothing reached it that
    // no caller sent.
    for (data, outcome) in outcomes.iter() {
        let n = received.get(data.as_str()).copied().unwrap_or(0);
        let expected = if *outcome == "rate_limited" { 0 } else { 1 };
        assert_eq!(n, expected, "{data} ({outcome}) reached the upstream {n} times");
    }
    for data in received.keys() {
        assert!(outcomes.contains_key(*data), "the upstream received {data}, which no caller got an answer for");
    }
    let limited = tally.get(&(Kind::RateLimitedTenant, "rate_limited")).copied().unwrap_or(0);
    assert_eq!(received_total, answered - limited, "received upstream != answered - refused by the limit");
    assert_eq!(tally.values().sum::<u64>(), answered);
    assert!(answered > 1000, "too little traffic to mean anything: {answered}");
    for kind in MIX {
        assert!(tally.keys().any(|(k, _)| *k == kind), "{kind:?} never ran");
    }
    // Tenant B (50/s, burst 50) is offered more than 50/s. A token bucket admits at most
    // burst + rate × time: that bound is exact and may not be exceeded (one token of slack
    // for the refill that lands while the last requests are answered). From below it
    // admits the same when saturated the whole time; on a loaded 2-core machine B's
    // offered rate dips now and then (a refill beyond the burst is lost), so allow 10%
    // under min(offered, theory) (the README's run: 3,024 of 3,050, 0.9% under).
    let admitted = tally.get(&(Kind::RateLimitedTenant, "ok")).copied().unwrap_or(0);
    let offered = admitted + limited;
    let upper = 50.0 + 50.0 * run_secs_upper + 1.0;
    let theory = 50.0 + 50.0 * run_secs;
    println!("  tenant B: offered {offered}, admitted {admitted}, theory {theory:.0} (upper bound {upper:.0})");
    assert!(limited > 0, "tenant B was never limited");
    assert!(admitted as f64 <= upper, "tenant B admitted {admitted} > burst + rate × time = {upper:.0}");
    assert!(
        admitted as f64 >= 0.9 * theory.min(offered as f64),
        "tenant B admitted {admitted}, more than 10% under min(offered {offered}, theory {theory:.0})"
    );
    assert!(
        (rss_end as f64) <= rss_warm as f64 * 1.2 && (rss_end as f64) >= rss_warm as f64 * 0.8,
        "RSS moved more than 20%: {rss_warm} kB -> {rss_end} kB"
    );
    // A leak (one fd per request or per fault) would add thousands over the run; the
    // band the count moves in as upstream connections churn must not have risen.
    assert!(fds_end.0 <= fds_warm.1, "fd growth: (min, max) {fds_warm:?} -> {fds_end:?}");
}

// Idle callers are let go: an HTTP/1 keep-alive connection and an h2c connection with no
// stream open are each closed by the gateway after 60 s of silence (README, Security). They
// are fixed times, so these two tests wait the real minute; they live in this binary so
// that they run beside the soak's minute and cost the suite no extra time.

#[test]
fn an_idle_keep_alive_connection_is_closed_after_sixty_seconds() {
    let emu = Emulator::start();
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    let mut c = Connection::open(gw.addr).unwrap();
    let auth = format!("Bearer {KEY_A}");
    let r =
        c.request("POST", "/callcentre/api/v3/ping", &[("authorization", &auth)], br#"{"data":"then idle"}"#).unwrap();
    assert_eq!(r.status, 200);
    let answered = Instant::now();
    assert!(!c.is_closed_by_peer(Duration::from_secs(45)), "closed after only {:?}", answered.elapsed());
    assert!(c.is_closed_by_peer(Duration::from_secs(35)), "still open after {:?}", answered.elapsed());
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_secs(59) && idle <= Duration::from_secs(75), "closed after {idle:?}");
}

#[test]
fn an_idle_h2c_connection_is_closed_after_sixty_seconds_without_a_protocol_error() {
    use std::io::{Read, Write};
    let frame = |ty: u8, flags: u8, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    let emu = Emulator::start();
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    let connected = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    s.write_all(&hello).unwrap();
    // Read frames until the connection ends; acknowledge the server's SETTINGS as a
    // well-behaved client does, and open no stream.
    let (mut buf, mut frames, mut acked) = (Vec::new(), Vec::new(), false);
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            if ty == SETTINGS && flags & ACK == 0 && !acked {
                s.write_all(&frame(SETTINGS, ACK, &[])).unwrap();
                acked = true;
            }
            frames.push((ty, buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => break,
            Err(e) => panic!("no close within 90 s ({e}); frames: {frames:?}"),
        }
    }
    let idle = connected.elapsed();
    assert!(acked, "the server sent its SETTINGS: {frames:?}");
    // Pingora ends an idle h2 connection by closing it; it must not be a protocol error.
    let errors: Vec<u32> = frames
        .iter()
        .filter(|(ty, p)| *ty == GOAWAY && p.len() >= 8)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        .filter(|code| *code != 0)
        .collect();
    assert!(errors.is_empty(), "GOAWAY with error codes {errors:?}");
    assert!(idle >= Duration::from_secs(59) && idle <= Duration::from_secs(75), "closed after {idle:?}");
}
