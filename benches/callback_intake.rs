//! Callbacks accepted per second by the real binary, side by side in one run: direct
//! delivery (the receiver answers while NXCloud waits), queued delivery on the embedded
//! store (each callback committed to disk before its 200; concurrent ones share a commit)
//! and queued delivery on Redis (acknowledged by a local `redis-server`, when installed).
//!
//! `cargo bench --bench callback_intake` sends `CALLBACKS` (default 20,000) NXCloud-signed
//! callbacks over `CONNS` (default 32) keep-alive connections per mode, all on loopback,
//! and prints one table row per mode: accepted/s and the time of the run. Without
//! `--bench` (as `cargo test --all-targets` runs it) it sends 300 per mode, as a smoke test
//! that every mode answers 200 to each.

#[path = "../tests/common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use nxgate_testkit::client::{self, Connection};
use nxgate_testkit::refsign::{self, Digest};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const UUID: &str = "bench-tenant-uuid";
const SECRET: &str = "bench-tenant-secret";

struct Running {
    child: Child,
    callbacks: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(dir: &Path, receiver: &str, extra: &str) -> Running {
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin_listen: null\nupstream: {{ url: \"http://127.0.0.1:9\" }}\n{extra}\
         callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{receiver}\"\n  max_queued: 10000000\n\
         tenants:\n  - name: bench\n    uuid: \"{UUID}\"\n    secret_env: NXGATE_BENCH_SECRET\n"
    );
    let config = dir.join("nxgate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(env!("CARGO_BIN_EXE_nxgate"))
        .args(["run", "-c"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("NXGATE_BENCH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the nxgate binary starts");
    let json = client::wait_for_ready_file(&ready, Duration::from_secs(20)).expect("the gateway gets ready");
    let callbacks = json["callbacks"][0].as_str().expect("a callback listener").parse().unwrap();
    Running { child, callbacks }
}

fn redis_server() -> Option<(Child, u16)> {
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    client::wait_for_listener(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))
        .then_some((child, port))
}

/// Sends `n` distinct signed callbacks over `conns` connections; returns the elapsed time.
fn blast(addr: SocketAddr, n: usize, conns: usize, run: &str) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let run = run.to_owned();
            std::thread::spawn(move || {
                let mut conn = Connection::open(addr).unwrap();
                for i in (c..n).step_by(conns) {
                    let body = format!(r#"{{"callType":"order","orderID":"o-{i}","pad":"{}"}}"#, "x".repeat(400));
                    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
                    let rid = format!("{run}-{i}");
                    let sign = refsign::sign(Digest::Md5, SECRET.as_bytes(), body.as_bytes(), &ts, &rid, UUID);
                    let headers = [
                        ("content-type", "application/json"),
                        ("requestID", rid.as_str()),
                        ("createTs", ts.as_str()),
                        ("uuid", UUID),
                        ("sign", sign.as_str()),
                    ];
                    let r = conn.request("POST", "/hooks/order", &headers, body.as_bytes()).unwrap();
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize =
        if full { std::env::var("CALLBACKS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000) } else { 300 };
    let conns: usize = std::env::var("CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let receiver = receiver::TestReceiver::start();
    let redis = redis_server();
    let mut modes: Vec<(&str, String)> = vec![
        ("direct (memory)", "state: { kind: \"memory\" }\n".to_owned()),
        ("queued, embedded (durable commit)", "state: { kind: \"embedded\", dir: \"STATE\" }\n".to_owned()),
    ];
    match &redis {
        Some((_, port)) => modes.push((
            "queued, Redis (acknowledged)",
            format!(
                "state: {{ kind: \"redis\" }}\nredis: {{ url: \"redis://127.0.0.1:{port}/0\", timeout_ms: 1000 }}\n"
            ),
        )),
        None => println!("redis-server not found: the Redis row is left out"),
    }
    println!("| mode | callbacks | connections | seconds | accepted/s |");
    println!("|---|---:|---:|---:|---:|");
    for (k, (name, extra)) in modes.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra.replace("STATE", &dir.path().join("state").display().to_string());
        let gw = start_gateway(dir.path(), &receiver.url(), &extra);
        // Warm the connections and the store, then measure.
        blast(gw.callbacks, conns * 4, conns, &format!("warm{k}"));
        let took = blast(gw.callbacks, n, conns, &format!("run{k}"));
        println!("| {name} | {n} | {conns} | {:.2} | {:.0} |", took.as_secs_f64(), n as f64 / took.as_secs_f64());
    }
    if let Some((mut child, _)) = redis {
        let _ = child.kill();
        let _ = child.wait();
    }
}
