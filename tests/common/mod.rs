//! Test harness: the real `nxgate` binary against the in-process emulator.
//!
//! Every gateway a test starts writes its whole log (at `debug`, Pingora included) to a
//! file under `target/tmp/nxgate-logs/`. When the gateway is dropped, its log is scanned
//! for every secret and client key the suite uses; a hit fails the test. So every log
//! line the suite produces is checked, not a sample.
#![allow(dead_code)]

pub mod receiver;
pub mod tls;
#[allow(unused_imports)]
pub use receiver::{Mode, Received, TestReceiver};

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nxgate_core::secret::Secret;
use nxgate_emulator::{self as emulator, EmulatorConfig, Fault};
#[allow(unused_imports)]
pub use nxgate_testkit::client::Connection;
pub use nxgate_testkit::client::{self, Response};

/// Tenant A: the vendor's public sample credentials.
pub const UUID_A: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
pub const SECRET_A: &str = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";
/// Tenant B: a second account with its own secret.
pub const UUID_B: &str = "tenant-b-uuid-0002";
pub const SECRET_B: &str = "k3y-With&Ampersand-tenant-b-SECRET";
/// Client keys (callers present these; the config holds only their sha256).
pub const KEY_A: &str = "client-key-for-tenant-a-7f3e9c1d";
pub const KEY_B: &str = "client-key-for-tenant-b-91ab44e0";

/// POSTs `body` as JSON to `path` on `addr` with `headers` (owned pairs, as signed
/// callbacks are built).
pub fn send_to(addr: SocketAddr, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    client::request(addr, "POST", path, &all, body).unwrap()
}

/// The four headers NXCloud sends with a callback (no `algorithm`), signed by `account`
/// over `body` at unix time `ts` with the independent reference signer.
pub fn signed_at(account: Account, body: &[u8], request_id: &str, ts: u64) -> Vec<(String, String)> {
    let ts = ts.to_string();
    let secret = account.secret().as_bytes();
    let sign = nxgate_testkit::refsign::sign(account.digest(), secret, body, &ts, request_id, account.uuid());
    vec![
        ("requestID".into(), request_id.into()),
        ("uuid".into(), account.uuid().into()),
        ("createTs".into(), ts),
        ("sign".into(), sign),
    ]
}

/// [`signed_at`] now.
pub fn signed(account: Account, body: &[u8], request_id: &str) -> Vec<(String, String)> {
    signed_at(account, body, request_id, unix_now())
}

/// This process's soft limit on open files (the gateway inherits it).
pub fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// A process's resident set size, KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The suite's two NXCloud accounts, as callbacks name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Account {
    /// tenant-a, MD5.
    A,
    /// tenant-b, SHA256.
    B,
}

impl Account {
    pub fn uuid(self) -> &'static str {
        match self {
            Account::A => UUID_A,
            Account::B => UUID_B,
        }
    }
    pub fn secret(self) -> &'static str {
        match self {
            Account::A => SECRET_A,
            Account::B => SECRET_B,
        }
    }
    pub fn digest(self) -> nxgate_testkit::refsign::Digest {
        match self {
            Account::A => nxgate_testkit::refsign::Digest::Md5,
            Account::B => nxgate_testkit::refsign::Digest::Sha256,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Account::A => "tenant-a",
            Account::B => "tenant-b",
        }
    }
}

/// Everything a log must never contain.
pub const NEVER_LOGGED: [&str; 4] = [SECRET_A, SECRET_B, KEY_A, KEY_B];

pub fn sha256_hex(s: &str) -> String {
    nxgate_core::tenants::client_key_digest_hex(s.as_bytes())
}

/// An emulator on a loopback port, stopped when dropped.
pub struct Emulator {
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl Emulator {
    pub fn start() -> Self {
        Self::with(EmulatorConfig { tenants: emulator_tenants(), ..Default::default() }, None)
    }

    pub fn with_fault(fault: Fault) -> Self {
        Self::with(EmulatorConfig { tenants: emulator_tenants(), fault: Some(fault), ..Default::default() }, None)
    }

    pub fn with(cfg: EmulatorConfig, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (addr, _task) = rt.block_on(emulator::spawn("127.0.0.1:0".parse().unwrap(), Arc::new(cfg), tls)).unwrap();
        Emulator { addr, _rt: rt }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub fn emulator_tenants() -> HashMap<String, Secret> {
    HashMap::from([
        (UUID_A.to_owned(), Secret::new(SECRET_A.as_bytes().to_vec())),
        (UUID_B.to_owned(), Secret::new(SECRET_B.as_bytes().to_vec())),
    ])
}

/// The bytes one upstream connection carried towards the far side.
type Stream = Arc<Mutex<Vec<u8>>>;

/// A TCP relay between the gateway and the emulator that keeps every byte the gateway
/// sends upstream, connection by connection, so a test can see exactly what reached the
/// far side (and what did not) instead of trusting the gateway's own account.
pub struct Recorder {
    pub addr: SocketAddr,
    /// One buffer per upstream connection, in the order they were accepted.
    seen: Arc<Mutex<Vec<Stream>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Stream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let _ = down.set_nodelay(true);
                        let Ok(up) = TcpStream::connect(target) else { continue };
                        let _ = up.set_nodelay(true);
                        let record = Arc::new(Mutex::new(Vec::new()));
                        seen2.lock().unwrap().push(record.clone());
                        pipe(down.try_clone().unwrap(), up.try_clone().unwrap(), Some(record));
                        pipe(up, down, None);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => break,
                }
            }
        });
        Recorder { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the gateway sent upstream so far, as text (bodies here are ASCII); each
    /// connection's bytes are contiguous, connections in the order they were accepted.
    pub fn text(&self) -> String {
        let all: Vec<u8> = self.seen.lock().unwrap().iter().flat_map(|c| c.lock().unwrap().clone()).collect();
        String::from_utf8_lossy(&all).into_owned()
    }

    /// How many requests the gateway forwarded: each carries exactly one `requestID`.
    pub fn forwarded(&self) -> usize {
        self.text().matches("\r\nrequestID: ").count()
    }

    /// How many upstream connections the gateway opened.
    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (up to 10 s) until `forwarded()` is at least `n`; returns it.
    pub fn wait_forwarded(&self, n: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.forwarded();
            if got >= n || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side closes; records the bytes if asked.
fn pipe(mut from: TcpStream, mut to: TcpStream, record: Option<Stream>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Recorded before it is passed on: once the far side has seen a byte,
                    // so has the record.
                    if let Some(r) = &record {
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Config knobs tests vary; `yaml()` renders the rest with defaults.
#[derive(Clone)]
pub struct GatewayOptions {
    pub upstream_url: String,
    pub algorithm_a: &'static str,
    pub algorithm_b: &'static str,
    pub default_tenant: Option<&'static str>,
    pub extra_upstream: String,
    pub extra_top: String,
    pub verify_mode: &'static str,
    /// Extra lines inside tenant A's / B's entry (4-space indented YAML).
    pub tenant_a_extra: String,
    pub tenant_b_extra: String,
}

impl GatewayOptions {
    pub fn new(upstream_url: String) -> Self {
        GatewayOptions {
            upstream_url,
            algorithm_a: "MD5",
            algorithm_b: "SHA256",
            default_tenant: None,
            extra_upstream: String::new(),
            extra_top: String::new(),
            verify_mode: "enforce",
            tenant_a_extra: String::new(),
            tenant_b_extra: String::new(),
        }
    }

    /// The config text, listening on `listen` (port 0: the kernel picks, and the harness
    /// reads the bound ports from the ready file).
    pub fn yaml(&self, listen: SocketAddr) -> String {
        self.yaml_with_admin(listen, any_port())
    }

    /// The config text, with the admin listener on `admin`.
    pub fn yaml_with_admin(&self, listen: SocketAddr, admin: SocketAddr) -> String {
        let default = self.default_tenant.map(|t| format!("default_tenant: {t}\n")).unwrap_or_default();
        format!(
            r#"listen: ["{listen}"]
admin_listen: "{admin}"
upstream:
  url: "{url}"
  connect_timeout_ms: 2000
  read_timeout_ms: 5000
  total_timeout_ms: 10000
{extra_upstream}
verify:
  mode: "{mode}"
{default}{extra_top}
tenants:
  - name: tenant-a
    uuid: "{UUID_A}"
    secret_env: NXGATE_TEST_SECRET_A
    algorithm: "{alg_a}"
    client_keys_sha256: ["{key_a}"]
{extra_a}  - name: tenant-b
    uuid: "{UUID_B}"
    secret_env: NXGATE_TEST_SECRET_B
    algorithm: "{alg_b}"
    client_keys_sha256: ["{key_b}"]
{extra_b}"#,
            url = self.upstream_url,
            extra_upstream = self.extra_upstream,
            mode = self.verify_mode,
            extra_top = self.extra_top,
            alg_a = self.algorithm_a,
            alg_b = self.algorithm_b,
            key_a = sha256_hex(KEY_A),
            key_b = sha256_hex(KEY_B),
            extra_a = self.tenant_a_extra,
            extra_b = self.tenant_b_extra,
        )
    }
}

/// A loopback listen address with port 0: the process binds a port the kernel picks and
/// reports it in its ready file.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The body as JSON (tests may panic; the client itself never does).
pub trait JsonBody {
    /// The body parsed as JSON; panics with the body if it is not JSON.
    fn json(&self) -> serde_json::Value;
}

impl JsonBody for Response {
    fn json(&self) -> serde_json::Value {
        self.try_json().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The `nxgate` binary under test: `NXGATE_BIN` if set (a copy of this tree's build, when
/// several trees share one target directory), else the one Cargo built for this test.
pub fn nxgate_bin() -> PathBuf {
    std::env::var_os("NXGATE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nxgate")))
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Directory all gateway logs of the suite go to.
pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nxgate-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `nxgate run` process.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener, if the config has one.
    pub admin: Option<SocketAddr>,
    /// The callback listeners, from the ready file.
    pub callbacks: Vec<SocketAddr>,
    child: Child,
    pub log_path: PathBuf,
    /// The config file the process was started with (tests may rewrite it and reload).
    pub config_path: PathBuf,
    /// Where the process reports its bound addresses.
    pub ready_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(opts: &GatewayOptions) -> Self {
        Self::start_yaml(&opts.yaml(any_port()))
    }

    /// Starts a gateway from full config text (whose first listen address is used).
    pub fn start_yaml(yaml: &str) -> Self {
        Self::start_with_args(yaml, &[])
    }

    /// Like `start_yaml`, with extra global CLI arguments (e.g. `--log-format json`).
    pub fn start_with_args(yaml: &str, extra_args: &[&str]) -> Self {
        Self::spawn(yaml, extra_args, &[], true)
    }

    /// Starts `nxgate run -c CONFIG <run_args>`; waits for the listener only if `wait`.
    pub fn spawn(yaml: &str, extra_args: &[&str], run_args: &[&str], wait: bool) -> Self {
        Self::launch(yaml, extra_args, run_args, wait, |_| {})
    }

    /// Like `spawn`; `environment` may change the process environment last (it runs after
    /// the harness set the test secrets and `RUST_LOG`, so it can also clear them).
    pub fn launch(
        yaml: &str,
        extra_args: &[&str],
        run_args: &[&str],
        wait: bool,
        environment: impl FnOnce(&mut Command),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nxgate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log_path = log_dir().join(format!("{}-{n}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).unwrap();
        let ready_file = dir.path().join("ready.json");
        let mut command = Command::new(nxgate_bin());
        command
            .args(extra_args)
            .args(["run", "-c"])
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .args(run_args)
            .env("NXGATE_TEST_SECRET_A", SECRET_A)
            .env("NXGATE_TEST_SECRET_B", SECRET_B)
            .env("RUST_LOG", std::env::var("NXGATE_TEST_LOG").unwrap_or_else(|_| "debug".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        environment(&mut command);
        let child = command.spawn().expect("spawn nxgate");
        // Until the ready file says otherwise, the addresses are the configured ones.
        let configured = |prefix: &str| -> Option<SocketAddr> {
            yaml.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|l| l.split('"').next())
                .and_then(|a| a.parse().ok())
        };
        let addr = configured("listen: [\"").unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let admin = configured("admin_listen: \"");
        let mut gw =
            Gateway { addr, admin, callbacks: Vec::new(), child, log_path, config_path: config, ready_file, _dir: dir };
        if wait {
            gw.wait_listening();
        }
        gw
    }

    /// Waits for the ready file (every listener accepts) and takes the bound addresses
    /// from it.
    pub fn wait_listening(&mut self) {
        match client::wait_for_ready_file(&self.ready_file, Duration::from_secs(20)) {
            Ok(v) => {
                self.addr = v["listen"][0].as_str().and_then(|a| a.parse().ok()).expect("ready file lists listen");
                self.admin = v["admin"].as_str().and_then(|a| a.parse().ok());
                self.callbacks = v["callbacks"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()?.parse().ok()).collect())
                    .unwrap_or_default();
            }
            Err(e) => {
                let _ = self.child.kill();
                panic!("{e}; gateway log:\n{}", self.log());
            }
        }
    }

    /// The process id, for signals and /proc measurements.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap().success();
        assert!(ok, "kill -{name} failed");
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> std::io::Result<Response> {
        client::request(self.admin.expect("config has admin_listen"), "GET", path, &[], b"")
    }

    /// POST on the admin listener.
    pub fn admin_post(&self, path: &str) -> std::io::Result<Response> {
        client::request(self.admin.expect("config has admin_listen"), "POST", path, &[], b"")
    }

    /// The value of one metric series from `/metrics` (exact name and label text), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.admin_get("/metrics").unwrap().body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.admin_get("/readyz").map(|r| r.status == 200).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway never became ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// POST with JSON content type and the given extra headers.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        client::request(self.addr, "POST", path, &all, body).unwrap()
    }

    /// POST as tenant A (by client key).
    pub fn post_a(&self, path: &str, body: &[u8]) -> Response {
        self.post(path, &[("authorization", &format!("Bearer {KEY_A}"))], body)
    }

    pub fn ping_a(&self, extra: &[(&str, &str)], data: &str) -> Response {
        let auth = format!("Bearer {KEY_A}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.post("/callcentre/api/v3/ping", &headers, format!(r#"{{"data":"{data}"}}"#).as_bytes())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let log = self.log();
        assert_logs_clean(&log, &self.log_path);
    }
}

/// Fails if `log` contains any secret or client key.
pub fn assert_logs_clean(log: &str, path: &std::path::Path) {
    for s in NEVER_LOGGED {
        assert!(!log.contains(s), "log {} contains a secret or client key", path.display());
    }
}

/// The upstream-seen request, from the emulator's echo.
pub struct Echo(pub serde_json::Value);

impl Echo {
    pub fn of(resp: &Response) -> Self {
        assert_eq!(resp.status, 200, "echo failed: {}", String::from_utf8_lossy(&resp.body));
        let v = resp.json();
        assert_eq!(v["code"], 0, "emulator refused the request: {v}");
        Echo(v["data"].clone())
    }

    /// All values of header `name` (case-insensitive) as the upstream saw them.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|p| p[1].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.headers(name);
        assert!(all.len() <= 1, "{name} appears {} times upstream", all.len());
        all.into_iter().next()
    }

    /// Header names exactly as spelled on the wire.
    pub fn names(&self) -> Vec<String> {
        self.0["headers"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_owned()).collect()
    }

    pub fn body(&self) -> Vec<u8> {
        hex::decode(self.0["body_hex"].as_str().unwrap()).unwrap()
    }

    pub fn path(&self) -> String {
        self.0["path"].as_str().unwrap().to_owned()
    }
}

/// Asserts a gateway error response: status, code, kind and the JSON shape.
pub fn assert_gateway_error(resp: &Response, status: u16, code: u64, kind: &str) -> serde_json::Value {
    assert_eq!(resp.status, status, "body: {}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-nxgate-error"), Some(kind));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 4, "error body has exactly code, msg, reqId, timestamp: {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    let req_id = v["reqId"].as_str().unwrap();
    assert_eq!(req_id.len(), 32);
    assert_eq!(resp.header("x-request-id"), Some(req_id));
    assert!(v["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    v
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A real `redis-server` on a loopback port, killed when dropped.
///
/// redis-server cannot report a kernel-picked port, so it is offered a port below the
/// ephemeral range (where port-0 binds never land) and binds it itself; if something
/// holds that port, redis-server exits and the next port is tried. Nothing binds a port
/// and releases it for someone else to take.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    /// After `kill`, holds the port so connections keep being refused.
    closed: Option<socket2::Socket>,
    /// The program and config file, for `restart`.
    program: String,
    conf: PathBuf,
}

static REDIS_STARTED: AtomicUsize = AtomicUsize::new(0);

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with("redis-server", |_| String::new())
    }

    /// Starts `program` (`redis-server` or `redis-sentinel`) from a config file: loopback,
    /// no persistence, then the lines `extra(port)` returns (later lines win, so they may
    /// move the port, e.g. `port 0` + `tls-port {port}`).
    pub fn start_with(program: &str, extra: impl Fn(u16) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed = std::process::id() as usize * 7919 + REDIS_STARTED.fetch_add(1, Ordering::Relaxed) * 104_729;
        for attempt in 0..50 {
            let port = 20_000 + ((seed + attempt * 7_331) % 10_000) as u16;
            let log = dir.path().join(format!("redis-{port}.log"));
            let conf = dir.path().join(format!("redis-{port}.conf"));
            let base = format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\nlogfile {}\ndir {}\n",
                log.display(),
                dir.path().display()
            );
            std::fs::write(&conf, base + &extra(port)).unwrap();
            let mut child =
                Command::new(program).arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(
                    |e| panic!("{program} not installed ({e}): run scripts/test.sh, which installs it"),
                );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                // A server says it is ready; a Sentinel, that it monitors its master.
                let ready = |l: String| l.contains("Ready to accept connections") || l.contains("+monitor master");
                if std::fs::read_to_string(&log).is_ok_and(ready) {
                    return RedisServer { port, child, _dir: dir, closed: None, program: program.to_owned(), conf };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken; try the next one
                }
                assert!(std::time::Instant::now() < deadline, "{program} did not start on {port}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no port for {program} after 50 tries");
    }

    /// Starts the server again after `kill`, on its port, from its config file.
    pub fn restart(&mut self) {
        let log = self._dir.path().join(format!("redis-{}.log", self.port));
        let ready = |l: &str| l.matches("Ready to accept connections").count();
        let before = ready(&std::fs::read_to_string(&log).unwrap_or_default());
        self.closed = None;
        self.child =
            Command::new(&self.program).arg(&self.conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ready(&std::fs::read_to_string(&log).unwrap_or_default()) == before {
            assert!(self.child.try_wait().unwrap().is_none(), "{} did not restart on {}", self.program, self.port);
            assert!(std::time::Instant::now() < deadline, "{} did not restart on {}", self.program, self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let path = self._dir.path().join(format!("redis-{}.log", self.port));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// A directory that lives as long as the server (for certificates and such).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server abruptly (an outage); its port then refuses connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.closed.is_none() {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            // Bound, never listening: the kernel answers connections with a reset.
            if socket.bind(&self.addr().into()).is_ok() {
                self.closed = Some(socket);
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
