//! Requests per second through the real binary with and without `Idempotency-Key`, side
//! by side in one run: unkeyed (today's path), and keyed with the keys kept in memory, in
//! the embedded state file (a durable commit for the claim and one for the answer, shared
//! with concurrent requests) and in Redis (a local `redis-server`, when installed). Every
//! key is new, so each keyed request claims and records; the upstream is the emulator.
//!
//! `cargo bench --bench keyed_requests`: `REQUESTS` (default 10,000) `ping`s of 1 KiB over
//! `CONNS` (default 32) keep-alive connections per mode, all on loopback. Without `--bench`
//! (as `cargo test --all-targets` runs it) 300 per mode, as a smoke test: each answered 200.

mod common;

const UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
const SECRET: &str = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";

fn main() {
    let n = common::count("REQUESTS", 10_000);
    let conns: usize = std::env::var("CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let dir = tempfile::tempdir().unwrap();
    let tenant = format!("{UUID}={SECRET}");
    let emu = common::start(dir.path(), "emulator", &["emulator", "--listen", "127.0.0.1:0", "--tenant", &tenant], &[]);
    let upstream = emu.addr("listen");
    let redis = common::redis_server();
    let mut modes = vec![("unkeyed", "state: { kind: \"memory\" }\n".to_owned(), false)];
    modes.extend(common::state_modes(redis.as_ref().map(|r| r.1)).into_iter().map(|(name, state)| (name, state, true)));
    println!("| requests | keys kept in | requests | connections | seconds | requests/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for (k, (name, state, keyed)) in modes.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let state = state.replace("STATE", &dir.path().join("state").display().to_string());
        let yaml = format!(
            "listen: [\"127.0.0.1:0\"]\nadmin_listen: null\nupstream: {{ url: \"http://{upstream}\" }}\n{state}\
             default_tenant: bench\ntenants:\n  - name: bench\n    uuid: \"{UUID}\"\n    secret_env: NXGATE_BENCH_SECRET\n"
        );
        let gw = common::gateway(dir.path(), &yaml, &[("NXGATE_BENCH_SECRET", SECRET)]);
        let addr = gw.addr("listen");
        let send = move |run: String| {
            move |conn: &mut nxgate_testkit::client::Connection, i: usize| {
                let body = format!(r#"{{"data":"{}"}}"#, "x".repeat(1000));
                let key = format!("{run}-{i}");
                let mut headers = vec![("content-type", "application/json")];
                if keyed {
                    headers.push(("idempotency-key", key.as_str()));
                }
                let r = conn.request("POST", "/callcentre/api/v3/ping", &headers, body.as_bytes()).unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
        };
        common::blast(addr, conns * 4, conns, send(format!("warm{k}")));
        let took = common::blast(addr, n, conns, send(format!("run{k}")));
        let label = if keyed { "keyed" } else { "unkeyed" };
        let kept = if keyed { name } else { "-" };
        println!(
            "| {label} | {kept} | {n} | {conns} | {:.2} | {:.0} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    if let Some((mut child, _)) = redis {
        let _ = child.kill();
        let _ = child.wait();
    }
}
