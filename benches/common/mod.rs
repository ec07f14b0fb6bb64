//! What the benchmarks that drive the real binary share: starting `nxgate run` (and a
//! loopback `redis-server`) and reading the bound addresses from the ready file.

use nxgate_testkit::client;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `nxgate` subcommand, stopped when dropped.
pub struct Running {
    child: Child,
    /// Its ready file's JSON.
    pub ready: serde_json::Value,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The first address the ready file lists under `field`.
    pub fn addr(&self, field: &str) -> SocketAddr {
        let v = &self.ready[field];
        v.get(0).unwrap_or(v).as_str().expect("an address").parse().unwrap()
    }
}

/// Starts `nxgate <args> --ready-file <dir>/ready-<name>.json` with `envs`, logging at WARN.
pub fn start(dir: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let ready = dir.join(format!("ready-{name}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_nxgate"))
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the nxgate binary starts");
    let ready = client::wait_for_ready_file(&ready, Duration::from_secs(20)).expect("it gets ready");
    Running { child, ready }
}

/// `nxgate run` on `yaml` (written under `dir`).
pub fn gateway(dir: &Path, yaml: &str, envs: &[(&str, &str)]) -> Running {
    let config = dir.join("nxgate.yaml");
    std::fs::write(&config, yaml).unwrap();
    start(dir, "gateway", &["run", "-c", config.to_str().unwrap()], envs)
}

/// A `redis-server` on a free loopback port, without persistence, if one is installed.
pub fn redis_server() -> Option<(Child, u16)> {
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    client::wait_for_listener(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))
        .then_some((child, port))
}

/// The `state:` block of each mode the benchmarks compare (`STATE` is replaced by a
/// directory), the Redis one only if a server is running on `redis_port`.
pub fn state_modes(redis_port: Option<u16>) -> Vec<(&'static str, String)> {
    let mut modes = vec![
        ("memory", "state: { kind: \"memory\" }\n".to_owned()),
        ("embedded (durable commit)", "state: { kind: \"embedded\", dir: \"STATE\" }\n".to_owned()),
    ];
    match redis_port {
        Some(port) => modes.push((
            "Redis (acknowledged)",
            format!(
                "state: {{ kind: \"redis\" }}\nredis: {{ url: \"redis://127.0.0.1:{port}/0\", timeout_ms: 1000 }}\n"
            ),
        )),
        None => println!("redis-server not found: the Redis row is left out"),
    }
    modes
}

/// Runs `one(i)` for `i` in `0..n` over `conns` threads, each with its own keep-alive
/// connection to `addr`; returns the elapsed time.
pub fn blast(
    addr: SocketAddr,
    n: usize,
    conns: usize,
    one: impl Fn(&mut client::Connection, usize) + Send + Sync + 'static,
) -> Duration {
    let one = std::sync::Arc::new(one);
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let one = one.clone();
            std::thread::spawn(move || {
                let mut conn = client::Connection::open(addr).unwrap();
                for i in (c..n).step_by(conns) {
                    one(&mut conn, i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed()
}

/// How many to send: `default` under `cargo bench` (overridable by the `var`), 300 as the
/// smoke run of `cargo test --all-targets`.
pub fn count(var: &str, default: usize) -> usize {
    if std::env::args().any(|a| a == "--bench") {
        std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    } else {
        300
    }
}
