//! Per-tenant rate limits and concurrency caps, local and shared through Redis.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const A_20_PER_SEC: &str = "    rate_limit: { per_second: 20, burst: 20 }\n";

/// Sends `n` pings for `key`, one every `every`, and returns (statuses, elapsed).
fn paced(gw_addr: SocketAddr, key: &str, n: usize, every: Duration) -> (Vec<u16>, Duration) {
    let mut c = Connection::open(gw_addr).unwrap();
    let auth = format!("Bearer {key}");
    let start = Instant::now();
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = c.request("POST", "/callcentre/api/v3/ping", &[("authorization", &auth)], b"{}").unwrap();
        if r.status == 429 {
            assert_gateway_error(&r, 429, 42901, "rate_limited");
        }
        statuses.push(r.status);
    }
    (statuses, start.elapsed())
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

/// A GCRA limit of `rate`/s with `burst`, over `elapsed` from idle, admits burst + rate·t.
fn assert_within_10_percent(got: usize, rate: f64, burst: f64, elapsed: Duration) {
    let expected = burst + rate * elapsed.as_secs_f64();
    let (lo, hi) = (expected * 0.9, expected * 1.1);
    assert!((lo..=hi).contains(&(got as f64)), "admitted {got}, expected {expected:.1} ±10% over {elapsed:?}");
}

#[test]
fn a_tenant_at_20_per_second_admits_burst_plus_rate_and_the_other_tenant_is_unaffected() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = A_20_PER_SEC.into();
    let gw = Arc::new(Gateway::start(&opts));
    let addr = gw.addr;
    // Tenant B (unlimited) runs at the same time on another connection.
    let b = std::thread::spawn(move || paced(addr, KEY_B, 200, Duration::from_millis(10)));
    let (statuses, elapsed) = paced(gw.addr, KEY_A, 200, Duration::from_millis(10));
    assert_within_10_percent(admitted(&statuses), 20.0, 20.0, elapsed);
    let (b_statuses, _) = b.join().unwrap();
    assert_eq!(admitted(&b_statuses), 200, "tenant B was limited by tenant A's limit");
    std::thread::sleep(Duration::from_millis(100));
    let refused = statuses.len() - admitted(&statuses);
    assert_eq!(gw.metric(r#"nxgate_rate_limited_total{kind="rate",tenant="tenant-a"}"#), refused as f64);
}

#[test]
fn rate_limit_headers_are_on_every_response_of_a_limited_tenant_and_429_has_retry_after() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = "    rate_limit: { per_second: 1, burst: 2 }\n".into();
    let gw = Gateway::start(&opts);
    // Exact values: 1/s is the slowest rate the config allows, and the three requests
    // are milliseconds apart, so no token refills in between (a stall of over a second
    // between two of them would show as r=1; not widened, it is the claim itself).
    let first = gw.ping_a(&[], "x");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"tenant\";q=2;w=2"));
    assert_eq!(first.header("ratelimit"), Some("\"tenant\";r=1;t=1"));
    assert_eq!(gw.ping_a(&[], "x").header("ratelimit"), Some("\"tenant\";r=0;t=2"));
    let limited = gw.ping_a(&[], "x");
    assert_gateway_error(&limited, 429, 42901, "rate_limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    // Nothing left, and the bucket is full again in 2 s (burst 2 at 1/s, rounded up: the
    // few milliseconds since the first request do not make it 1).
    assert_eq!(limited.header("ratelimit"), Some("\"tenant\";r=0;t=2"));
    // An unlimited tenant's responses carry no rate-limit headers.
    let b = gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {KEY_B}"))], b"{}");
    assert!(b.header("ratelimit").is_none() && b.header("ratelimit-policy").is_none());
}

#[test]
fn a_rate_limited_request_is_never_signed_or_forwarded() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = "    rate_limit: { per_second: 1, burst: 1 }\n".into();
    let rec = Recorder::start(emu.addr);
    opts.upstream_url = rec.url();
    let gw = Gateway::start(&opts);
    assert_eq!(gw.ping_a(&[], "admitted").status, 200);
    assert_gateway_error(&gw.ping_a(&[], "refused"), 429, 42901, "rate_limited");
    // Counted at the far side (a recording relay), after both answers: one request only,
    // the admitted one; the refused request never reached the emulator.
    assert_eq!(rec.forwarded(), 1, "{}", rec.text());
    assert!(rec.text().contains(r#"{"data":"admitted"}"#) && !rec.text().contains("refused"));
    assert_eq!(gw.metric(r#"nxgate_upstream_duration_seconds_count{tenant="tenant-a"}"#), 1.0);
}

#[test]
fn max_in_flight_admits_exactly_n_concurrent_and_refuses_the_rest_at_once() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = "    max_in_flight: 3\n".into();
    let rec = Recorder::start(emu.addr);
    opts.upstream_url = rec.url();
    let gw = Gateway::start(&opts);
    let addr = gw.addr;
    let barrier = Arc::new(std::sync::Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer {KEY_A}");
                let headers =
                    [("authorization", auth.as_str()), ("x-emulator-fault", "slow"), ("x-emulator-delay-ms", "1500")];
                let mut c = Connection::open(addr).unwrap();
                barrier.wait();
                let t = Instant::now();
                let r = c.request("POST", "/callcentre/api/v3/ping", &headers, b"{}").unwrap();
                (r, t.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    assert_eq!(ok, 3, "statuses: {:?}", results.iter().map(|(r, _)| r.status).collect::<Vec<_>>());
    // "At once" measured against the event it is about: every refusal came before any
    // admitted request could have freed a slot (each holds it for the emulator's 1.5 s).
    let first_done = results.iter().filter(|(r, _)| r.status == 200).map(|(_, t)| *t).min().unwrap();
    assert!(first_done >= Duration::from_millis(1500), "an admitted request took only {first_done:?}");
    for (r, took) in results.iter().filter(|(r, _)| r.status != 200) {
        assert_gateway_error(r, 429, 42902, "overloaded");
        assert!(*took < first_done, "a refusal waited {took:?}, until a slot was free ({first_done:?})");
    }
    // The far side saw the three admitted requests and none of the seven refusals.
    assert_eq!(rec.forwarded(), 3, "{}", rec.text());
    // Tenant B is not capped by tenant A's limit.
    let b = gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {KEY_B}"))], b"{}");
    assert_eq!(b.status, 200);
    // Slots are given back: A is admitted again.
    assert_eq!(gw.ping_a(&[], "again").status, 200);
    assert_eq!(rec.forwarded(), 5);
    assert_eq!(gw.metric(r#"nxgate_rate_limited_total{kind="in_flight",tenant="tenant-a"}"#), 7.0);
}

#[test]
fn a_reload_keeps_limiter_state_of_unchanged_tenants_and_applies_new_limits() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = "    rate_limit: { per_second: 1, burst: 10 }\n".into();
    let gw = Gateway::start(&opts);
    gw.wait_ready();
    let exhausted = Instant::now();
    for _ in 0..10 {
        assert_eq!(gw.ping_a(&[], "x").status, 200);
    }
    assert_eq!(gw.ping_a(&[], "x").status, 429);
    // Change another tenant only: A stays exhausted (no fresh burst of 10 from a reload);
    // only what 1/s refilled meanwhile may pass.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace("algorithm: \"SHA256\"", "algorithm: \"MD5\"")).unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let after: usize = (0..10).filter(|_| gw.ping_a(&[], "x").status == 200).count();
    let refilled = exhausted.elapsed().as_secs() as usize + 1;
    assert!(after <= refilled, "{after} admitted right after the reload; refill allows {refilled}");
    // Change A's limit: the new limit applies from the next request.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace("per_second: 1, burst: 10", "per_second: 100, burst: 100")).unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    assert_eq!(gw.ping_a(&[], "x").status, 200);
    assert_eq!(gw.ping_a(&[], "x").header("ratelimit-policy"), Some("\"tenant\";q=100;w=1"));
}

// ---- Redis ---------------------------------------------------------------------------

fn redis_gateway(emu: &Emulator, redis: &RedisServer, policy: &str, tenant_a_extra: &str) -> Gateway {
    let mut opts = GatewayOptions::new(emu.url());
    opts.tenant_a_extra = tenant_a_extra.into();
    opts.extra_top = format!(
        "rate_limit_backend:\n  kind: \"redis\"\n  redis_url: \"{}\"\n  on_redis_error: \"{policy}\"\n",
        redis.url()
    );
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    gw.wait_ready();
    gw
}

#[test]
fn two_gateways_sharing_redis_admit_the_tenants_rate_once_not_twice() {
    let emu = Emulator::start();
    let redis = RedisServer::start();
    let one = redis_gateway(&emu, &redis, "deny", A_20_PER_SEC);
    let two = redis_gateway(&emu, &redis, "deny", A_20_PER_SEC);
    let (a1, a2) = (one.addr, two.addr);
    let t1 = std::thread::spawn(move || paced(a1, KEY_A, 100, Duration::from_millis(20)));
    let t2 = std::thread::spawn(move || paced(a2, KEY_A, 100, Duration::from_millis(20)));
    let (s1, e1) = t1.join().unwrap();
    let (s2, e2) = t2.join().unwrap();
    let total = admitted(&s1) + admitted(&s2);
    assert_within_10_percent(total, 20.0, 20.0, e1.max(e2));
    // Both replicas really took part.
    assert!(admitted(&s1) > 10 && admitted(&s2) > 10, "{} / {}", admitted(&s1), admitted(&s2));
    assert_eq!(one.metric("nxgate_rate_limit_backend_errors_total"), 0.0);
}

/// Warms the Redis path up, kills Redis, then sends `n` quick requests; returns their
/// statuses, each checked to come back within a bound (no hung request).
fn after_redis_dies(policy: &str, n: usize, tenant_a_extra: &str) -> (Gateway, Vec<u16>, Duration) {
    let emu = Emulator::start();
    let mut redis = RedisServer::start();
    let gw = redis_gateway(&emu, &redis, policy, tenant_a_extra);
    for _ in 0..3 {
        assert_eq!(gw.ping_a(&[], "warm").status, 200);
    }
    assert_eq!(gw.metric("nxgate_rate_limit_backend_errors_total"), 0.0, "Redis was not in use before the outage");
    redis.kill();
    let mut c = Connection::open(gw.addr).unwrap();
    let auth = format!("Bearer {KEY_A}");
    let started = Instant::now();
    let statuses = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = c.request("POST", "/callcentre/api/v3/ping", &[("authorization", &auth)], b"{}").unwrap();
            assert!(t.elapsed() < Duration::from_secs(1), "a request took {:?} during the Redis outage", t.elapsed());
            r.status
        })
        .collect();
    (gw, statuses, started.elapsed())
}

fn outage_logged_once(gw: &Gateway, elapsed: Duration) {
    std::thread::sleep(Duration::from_millis(100));
    let log = gw.log();
    assert_eq!(
        log.matches("rate-limit backend (Redis) unavailable").count(),
        1,
        "outage must be logged once, not per request"
    );
    // One failed Redis call per 500 ms reconnect pause that the run reached into (requests
    // inside a pause skip Redis). The exact count depends on where the run's pauses fall,
    // so: at least one, at most one per pause the run spans plus the first.
    let errors = gw.metric("nxgate_rate_limit_backend_errors_total");
    let most = 2.0 + (elapsed.as_millis() / 500) as f64;
    assert!((1.0..=most).contains(&errors), "{errors} backend errors over {elapsed:?} (at most {most})");
}

#[test]
fn redis_outage_with_deny_refuses_with_429_without_hanging() {
    let (gw, statuses, elapsed) = after_redis_dies("deny", 30, A_20_PER_SEC);
    assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
    outage_logged_once(&gw, elapsed);
}

#[test]
fn redis_outage_with_allow_admits_everything_without_hanging() {
    let (gw, statuses, elapsed) = after_redis_dies("allow", 30, A_20_PER_SEC);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    outage_logged_once(&gw, elapsed);
}

#[test]
fn redis_outage_with_local_fallback_limits_locally_without_hanging() {
    let (gw, statuses, elapsed) =
        after_redis_dies("local_fallback", 40, "    rate_limit: { per_second: 2, burst: 10 }\n");
    // The local limiter (2/s, burst 10, unused while Redis served) takes over: the burst
    // plus what refills during the run, not all 40.
    let ok = admitted(&statuses);
    let most = 10 + (2.0 * elapsed.as_secs_f64()).ceil() as usize + 1;
    assert!((10..=most).contains(&ok), "admitted {ok} of 40 in {elapsed:?}: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    outage_logged_once(&gw, elapsed);
}

#[test]
fn redis_that_was_never_up_still_answers_within_the_budget() {
    let emu = Emulator::start();
    let mut redis = RedisServer::start();
    redis.kill();
    let gw = redis_gateway(&emu, &redis, "deny", A_20_PER_SEC);
    let t = Instant::now();
    assert_eq!(gw.ping_a(&[], "x").status, 429);
    assert!(t.elapsed() < Duration::from_secs(1));
}
