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

mod common;
#[path = "../tests/common/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use nxgate_testkit::refsign::{self, Digest};
use std::time::{SystemTime, UNIX_EPOCH};

const UUID: &str = "bench-tenant-uuid";
const SECRET: &str = "bench-tenant-secret";

fn main() {
    let n = common::count("CALLBACKS", 20_000);
    let conns: usize = std::env::var("CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let receiver = receiver::TestReceiver::start();
    let redis = common::redis_server();
    let mut modes = vec![("direct (memory)", "state: { kind: \"memory\" }\n".to_owned())];
    modes.extend(common::state_modes(redis.as_ref().map(|r| r.1)).into_iter().skip(1).map(|(name, state)| {
        (
            if name.starts_with("embedded") {
                "queued, embedded (durable commit)"
            } else {
                "queued, Redis (acknowledged)"
            },
            state,
        )
    }));
    println!("| mode | callbacks | connections | seconds | accepted/s |");
    println!("|---|---:|---:|---:|---:|");
    for (k, (name, state)) in modes.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let state = state.replace("STATE", &dir.path().join("state").display().to_string());
        let yaml = format!(
            "listen: [\"127.0.0.1:0\"]\nadmin_listen: null\nupstream: {{ url: \"http://127.0.0.1:9\" }}\n{state}\
             callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{}\"\n  max_queued: 10000000\n\
             tenants:\n  - name: bench\n    uuid: \"{UUID}\"\n    secret_env: NXGATE_BENCH_SECRET\n",
            receiver.url()
        );
        let gw = common::gateway(dir.path(), &yaml, &[("NXGATE_BENCH_SECRET", SECRET)]);
        let addr = gw.addr("callbacks");
        let send = move |run: String| {
            move |conn: &mut nxgate_testkit::client::Connection, i: usize| {
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
        };
        // Warm the connections and the store, then measure.
        common::blast(addr, conns * 4, conns, send(format!("warm{k}")));
        let took = common::blast(addr, n, conns, send(format!("run{k}")));
        println!("| {name} | {n} | {conns} | {:.2} | {:.0} |", took.as_secs_f64(), n as f64 / took.as_secs_f64());
    }
    if let Some((mut child, _)) = redis {
        let _ = child.kill();
        let _ = child.wait();
    }
}
