//! What admission costs per request: the concurrency cap and the rate limiter, local and
//! Redis.
//!
//! `cargo bench --bench ratelimit`.
//!
//! criterion 0.5's `to_async` needs its `async_tokio` feature, which this crate's
//! dev-dependency does not enable (and the dependencies are not changed for a bench), so
//! async checks run on a current-thread tokio runtime with one `block_on` per iteration.
//! `runtime/block_on_empty` measures that harness alone (an empty future), to subtract.
//!
//! - `local/try_enter`: take and release one `max_in_flight` slot (an atomic pair).
//! - `local/check_rate_unlimited`: a tenant with no rate limit (early return).
//! - `local/check_rate`: one GCRA step of the tenant's `governor` limiter.
//! - `redis/check_rate`: one GCRA step in Redis (`EVALSHA` round trip over loopback),
//!   against a `redis-server` this bench starts on a free loopback port and stops at the
//!   end; skipped, with a note, when `redis-server` is not installed.
//!
//! Limits are far above what the bench offers (10,000,000/s, burst 10,000,000), so every
//! check is admitted, as in the gateway benchmark.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nxgate::policy::admission::{RateBackend, RateDecision, TenantAdmission};
use nxgate_core::config;

/// The rate backend and the two tenants' admission state, as a generation holds them.
struct Admission {
    backend: RateBackend,
    limited: TenantAdmission,
    unlimited: TenantAdmission,
}

fn admission(backend: &str) -> Admission {
    let yaml = format!(
        r#"listen: ["127.0.0.1:8080"]
upstream:
  url: "https://nxbot.nxcloud.com"
admin_listen: null
rate_limit_backend:
{backend}
tenants:
  - name: limited
    uuid: "uuid-limited-0123456789abcdefgh"
    secret_env: BENCH_SECRET_A
    rate_limit: {{ per_second: 10000000, burst: 10000000 }}
    max_in_flight: 100000
  - name: unlimited
    uuid: "uuid-unlimited-0123456789abcdefg"
    secret_env: BENCH_SECRET_B
"#
    );
    let env: HashMap<String, String> = [("BENCH_SECRET_A", "secret-a"), ("BENCH_SECRET_B", "secret-b")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cfg = config::parse(&yaml, Path::new("bench.yaml"), &env).expect("bench config is valid");
    let backend = RateBackend::new(&cfg, None, None);
    let tenant = |name: &str| {
        let t = cfg.tenants.iter().find(|t| t.name == name).expect("configured");
        TenantAdmission::new(t, None, &backend)
    };
    Admission { limited: tenant("limited"), unlimited: tenant("unlimited"), backend }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn local(c: &mut Criterion) {
    let rt = runtime();
    let adm = admission("  kind: \"local\"");
    let mut g = c.benchmark_group("local");
    g.bench_function("try_enter", |b| b.iter(|| black_box(&adm.limited).try_enter().is_some()));
    g.bench_function("check_rate_unlimited", |b| b.iter(|| rt.block_on(adm.backend.check(black_box(&adm.unlimited)))));
    g.bench_function("check_rate", |b| {
        b.iter(|| {
            let d = rt.block_on(adm.backend.check(black_box(&adm.limited)));
            debug_assert!(matches!(d, RateDecision::Allowed(Some(_))));
            d
        })
    });
    g.finish();

    let mut g = c.benchmark_group("runtime");
    g.bench_function("block_on_empty", |b| b.iter(|| rt.block_on(async { black_box(1u32) })));
    g.finish();
}

/// A `redis-server` child on a free loopback port, stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?.local_addr().ok()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if Instant::now() > deadline {
                eprintln!("redis-server did not accept connections on {addr} within 10 s");
                return None; // dropping `server` stops it
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis(c: &mut Criterion) {
    let installed = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !installed {
        println!("NOTE: redis-server is not installed; skipping the Redis rate-limit benchmark (apt-get install redis-server)");
        return;
    }
    let Some(server) = RedisServer::start() else {
        println!("NOTE: redis-server could not be started; skipping the Redis rate-limit benchmark");
        return;
    };
    let rt = runtime();
    // "deny" turns a Redis failure into Limited, so a broken backend cannot pass as fast.
    let adm = admission(&format!(
        "  kind: \"redis\"\n  redis_url: \"redis://127.0.0.1:{}/0\"\n  on_redis_error: \"deny\"",
        server.port
    ));
    // The first checks start the background connect; wait until Redis itself answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rt.block_on(adm.backend.check(&adm.limited)) {
            RateDecision::Allowed(Some(_)) => break,
            other if Instant::now() > deadline => panic!("Redis backend never admitted: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(600)), // past the reconnect pause
        }
    }
    let mut g = c.benchmark_group("redis");
    g.bench_function("check_rate", |b| {
        b.iter(|| {
            let d = rt.block_on(adm.backend.check(black_box(&adm.limited)));
            assert!(matches!(d, RateDecision::Allowed(Some(_))), "Redis check failed: {d:?}");
            d
        })
    });
    g.finish();
    drop(adm);
    drop(rt);
    drop(server);
}

criterion_group!(ratelimit_benches, local, redis);
criterion_main!(ratelimit_benches);
