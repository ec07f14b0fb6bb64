//! `nxgate demo`: the emulator and the gateway on loopback, a signed and verified round
//! trip, a tampered response being refused, a campaign's callbacks, and a receiver outage
//! that loses none of them. Needs no NXCloud account: it uses the vendor's public sample
//! credentials against the local emulator.
//!
//! The demo checks what it shows and exits non-zero if anything is off, so it doubles
//! as a smoke test of a fresh build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::{Gateway, StartMode};
use nxgate_core::config;
use nxgate_core::secret::Secret;
use nxgate_core::webhook::SigningKey;
use nxgate_emulator::{self as emulator, EmulatorConfig, SAMPLE_SECRET, SAMPLE_UUID};
use nxgate_testkit::client;

const SECRET_ENV: &str = "NXGATE_DEMO_SECRET";
const WHSEC_ENV: &str = "NXGATE_DEMO_WEBHOOK_SECRET";
/// The demo's Standard Webhooks secret (deliveries are signed with it; the receiver checks).
const DEMO_WHSEC: &str = "whsec_bnhnYXRlLWRlbW8tc2lnbmluZy1rZXk=";

/// Runs the demo.
pub fn run() -> ExitCode {
    match demo() {
        Ok(()) => {
            println!("\ndemo OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_owned())
    }
}

fn demo() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let tenants = HashMap::from([(SAMPLE_UUID.to_owned(), Secret::new(SAMPLE_SECRET.as_bytes().to_vec()))]);
    let emu_cfg = Arc::new(EmulatorConfig { tenants, ..Default::default() });
    let (emu_addr, _emu) = rt
        .block_on(emulator::spawn("127.0.0.1:0".parse().expect("literal"), emu_cfg, None))
        .map_err(|e| format!("emulator: {e}"))?;

    // The internal service that receives NXCloud's callbacks, behind the gateway.
    let receiver = rt.block_on(Receiver::start()).map_err(|e| format!("receiver: {e}"))?;
    // Callbacks are kept in a state file of this run (queued delivery), retried every second.
    let state = tempfile::Builder::new().prefix("nxgate-demo-state").tempdir().map_err(|e| e.to_string())?;
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nupstream:\n  url: \"http://{emu_addr}\"\nadmin_listen: null\ndefault_tenant: demo\n\
         state:\n  kind: \"embedded\"\n  dir: \"{}\"\n\
         callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"http://{}\"\n  delivery: \"queued\"\n  \
         retry_schedule_ms: [0, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]\n  signing_secret_env: {WHSEC_ENV}\n\
         tenants:\n  - name: demo\n    uuid: \"{SAMPLE_UUID}\"\n    secret_env: {SECRET_ENV}\n    algorithm: MD5\n",
        state.path().display(),
        receiver.addr
    );
    let env = HashMap::from([
        (SECRET_ENV.to_owned(), SAMPLE_SECRET.to_owned()),
        (WHSEC_ENV.to_owned(), DEMO_WHSEC.to_owned()),
    ]);
    let cfg = config::parse(&yaml, Path::new("demo.yaml"), &env).map_err(|e| e.to_string())?;
    // Pingora's server is built and run on its own thread; the lifecycle handle comes back
    // so the demo can stop it.
    let (tx, rx) = std::sync::mpsc::channel();
    let gateway =
        std::thread::spawn(move || match Gateway::build(cfg, Path::new("demo.yaml"), &StartMode::default()) {
            Ok(gw) => {
                let _ = tx.send(Ok((gw.lifecycle(), gw.bound())));
                gw.run();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
    let (lifecycle, bound) = rx.recv().map_err(|_| "gateway failed to start".to_owned())?.map_err(|e| e.to_string())?;
    let gw_addr = bound.listen[0];
    check(client::wait_for_listener(gw_addr, Duration::from_secs(10)), "gateway did not start listening")?;

    println!("emulator (stand-in for nxbot.nxcloud.com): http://{emu_addr}");
    println!("gateway:                                   http://{gw_addr}  (tenant 'demo', MD5, sample credentials)\n");

    println!(
        "callback listener:                         http://{}  (forwards to http://{})\n",
        bound.callbacks[0], receiver.addr
    );

    let result = show(gw_addr)
        .and_then(|()| campaign(gw_addr, bound.callbacks[0], emu_addr, &receiver))
        .and_then(|()| outage(gw_addr, bound.callbacks[0], emu_addr, &receiver))
        .and_then(|()| retry_safely(gw_addr, emu_addr));
    lifecycle.stop_now();
    let _ = gateway.join();
    result
}

fn show(gw: SocketAddr) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let json = [("content-type", "application/json")];

    println!("1. An internal service sends an unsigned request; the emulator echoes what arrived upstream:");
    let echo = client::request(gw, "POST", "/callcentre/api/v3/echo", &json, br#"{"hello":"world"}"#).map_err(io)?;
    check(echo.status == 200, "echo did not return 200")?;
    let seen = echo.try_json()?;
    check(seen["code"] == 0, "emulator refused the gateway's signature")?;
    for pair in seen["data"]["headers"].as_array().into_iter().flatten() {
        let name = pair[0].as_str().unwrap_or("");
        let signature = nxgate_core::signing::header::ALL_LOWERCASE.contains(&name.to_ascii_lowercase().as_str());
        if signature || ["host", "content-length"].contains(&name) {
            println!("   {name}: {}", pair[1].as_str().unwrap_or(""));
        }
    }

    println!(
        "\n2. POST /callcentre/api/v3/ping through the gateway; the response was verified before it was passed on:"
    );
    let body = br#"{"data":"hello from an internal service"}"#;
    let ping = client::request(gw, "POST", "/callcentre/api/v3/ping", &json, body).map_err(io)?;
    println!("   HTTP {}", ping.status);
    for (k, v) in &ping.headers {
        println!("   {k}: {v}");
    }
    println!("   {}", String::from_utf8_lossy(&ping.body));
    check(ping.status == 200 && ping.try_json()?["code"] == 0, "ping was not answered with code 0")?;
    check(ping.try_json()?["data"] == "hello from an internal service", "ping did not echo our data")?;

    println!("\n3. The emulator now tampers with its answer (a wrong sign); the gateway refuses it:");
    let mut headers = json.to_vec();
    headers.push((emulator::FAULT_HEADER, "bad_sign"));
    let bad = client::request(gw, "POST", "/callcentre/api/v3/ping", &headers, body).map_err(io)?;
    println!("   HTTP {}  x-nxgate-error: {}", bad.status, bad.header("x-nxgate-error").unwrap_or("-"));
    println!("   {}", String::from_utf8_lossy(&bad.body));
    check(bad.status == 502 && bad.try_json()?["code"] == 50202, "tampered response was not refused with 50202")?;
    check(!String::from_utf8_lossy(&bad.body).contains("hello from"), "tampered body leaked to the caller")?;
    Ok(())
}

/// Step 4: a short campaign, callbacks and all, through the gateway in both directions.
fn campaign(gw: SocketAddr, callbacks: SocketAddr, emu: SocketAddr, receiver: &Receiver) -> Result<(), String> {
    println!(
        "\n4. A short campaign: createAndCall with 3 numbers, its callback URLs pointing at the gateway's callback"
    );
    println!(
        "   listener; mgrTaskStatus start; the emulator's clock moved an hour; NXCloud's signed callbacks arrive,"
    );
    println!("   are stored, answered 200, and delivered to the receiver:");
    run_campaign(gw, callbacks, emu, "demo-task")?;
    let seen = receiver.wait_for(8, Duration::from_secs(10));
    for r in &seen {
        println!(
            "   received POST {}  x-nxgate-tenant: {}  x-request-id: {}  webhook-id: {}",
            r.path, r.tenant, r.request_id, r.webhook_id
        );
    }
    let count = |p: &str| seen.iter().filter(|r| r.path == p).count();
    check(
        (count("/call"), count("/order"), count("/task")) == (3, 3, 2),
        "expected 3 call, 3 order and 2 task callbacks, each verified by the gateway",
    )?;
    check(seen.iter().all(|r| r.signed), "a delivery's webhook-signature did not verify")?;
    println!("   every one verified by the gateway (uuid, createTs window, sign over the exact body) before it was");
    println!("   stored, and signed for the receiver (webhook-signature, Standard Webhooks)");
    Ok(())
}

/// Step 5: the receiver is down while a campaign's callbacks arrive; none is lost.
fn outage(gw: SocketAddr, callbacks: SocketAddr, emu: SocketAddr, receiver: &Receiver) -> Result<(), String> {
    println!("\n5. The receiver goes down; a second campaign runs and its callbacks arrive meanwhile:");
    receiver.up.store(false, Ordering::SeqCst);
    let before = receiver.seen().len();
    run_campaign(gw, callbacks, emu, "demo-outage")?;
    std::thread::sleep(Duration::from_secs(2));
    let during = receiver.seen().len();
    // What NXCloud (the emulator) saw: every callback of both campaigns answered 200 at
    // its first attempt, the outage's included.
    let state = client::request(emu, "GET", "/_emulator/state", &[], b"").map_err(|e| e.to_string())?.try_json()?;
    let first_try = state["callbacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["state"] == "delivered" && c["attempts"].as_array().is_some_and(|a| a.len() == 1 && a[0]["status"] == 200)
        })
        .count();
    println!("   NXCloud got 200 at the first attempt for {first_try} of 16 callbacks (each stored durably first)");
    check(first_try == 16, "NXCloud did not get 200 for every callback at once")?;
    println!("   delivered to the receiver while it was down: {}", during - before);
    check(during == before, "a callback reached the receiver while it was down")?;
    println!("   the receiver comes back; the outbox retries every second:");
    receiver.up.store(true, Ordering::SeqCst);
    let seen = receiver.wait_for(before + 8, Duration::from_secs(15));
    let after = &seen[before.min(seen.len())..];
    for r in after {
        println!("   received POST {}  x-request-id: {}  signature ok: {}", r.path, r.request_id, r.signed);
    }
    check(after.len() == 8, "expected every one of the 8 callbacks after the outage")?;
    check(after.iter().all(|r| r.signed), "a delivery's webhook-signature did not verify")?;
    println!("   all 8 delivered after the outage, each signed");
    Ok(())
}

/// Step 6: a caller's retry with the same `Idempotency-Key` gets the first answer, and
/// NXCloud sees the call once.
fn retry_safely(gw: SocketAddr, emu: SocketAddr) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    println!("\n6. A caller times out and retries createAndCall with the same Idempotency-Key:");
    let body = serde_json::json!({
        "productID": "callbot", "userTaskID": "demo-retry", "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "retry", "maxCall": 1, "maxRingTime": 30},
        "callInfoList": {"callList": [{"orderID": "demo-retry-o0", "userPhone": "8613800000999"}]}
    })
    .to_string();
    let creates = || -> Result<u64, String> {
        let r = client::request(emu, "GET", "/_emulator/requests", &[], b"").map_err(io)?.try_json()?;
        Ok(r["by_path"]["/callcentre/api/v3/createAndCall"].as_u64().unwrap_or(0))
    };
    let before = creates()?;
    let headers = [("content-type", "application/json"), ("idempotency-key", "demo-retry-7f3a")];
    let path = "/callcentre/api/v3/createAndCall";
    let first = client::request(gw, "POST", path, &headers, body.as_bytes()).map_err(io)?;
    let again = client::request(gw, "POST", path, &headers, body.as_bytes()).map_err(io)?;
    for (n, r) in [("first", &first), ("retry", &again)] {
        println!(
            "   {n}: HTTP {}  x-request-id: {}  idempotent-replayed: {}",
            r.status,
            r.header("x-request-id").unwrap_or("-"),
            r.header("idempotent-replayed").unwrap_or("-")
        );
    }
    check(first.status == 200 && again.status == 200, "createAndCall was not answered 200")?;
    check(
        again.header("idempotent-replayed") == Some("true") && again.body == first.body,
        "the retry was not replayed",
    )?;
    let calls = creates()? - before;
    println!("   NXCloud received the task {calls} time(s); the retry got the first answer, byte for byte");
    check(calls == 1, "NXCloud received the retried createAndCall more than once")?;
    Ok(())
}

/// createAndCall with 3 numbers whose callbacks point at the gateway, started; then the
/// emulator's clock moves an hour, so every call ends and NXCloud's callbacks are sent.
fn run_campaign(gw: SocketAddr, callbacks: SocketAddr, emu: SocketAddr, task: &str) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let json = [("content-type", "application/json")];
    let cb = format!("http://{callbacks}");
    let list: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"orderID": format!("{task}-o{i}"), "userPhone": format!("8613800000{i:03}")}))
        .collect();
    let create = serde_json::json!({
        "productID": "callbot", "userTaskID": task, "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "demo", "maxCall": 3, "maxRingTime": 30, "taskCallbackUrl": format!("{cb}/task")},
        "callInfoList": {"orderCallbackUrl": format!("{cb}/order"), "callCallbackUrl": format!("{cb}/call"), "callList": list}
    });
    for (endpoint, body) in [
        ("createAndCall", create),
        ("mgrTaskStatus", serde_json::json!({"productID": "callbot", "userTaskID": task, "taskOperate": 1})),
    ] {
        let path = format!("/callcentre/api/v3/{endpoint}");
        let r = client::request(gw, "POST", &path, &json, body.to_string().as_bytes()).map_err(io)?;
        let v = r.try_json()?;
        println!("   {endpoint}: HTTP {}, retCode {}", r.status, v["retCode"]);
        check(r.status == 200 && v["retCode"] == 0, &format!("{endpoint} was not accepted"))?;
    }
    let advanced = client::request(emu, "POST", "/_emulator/advance?secs=3600", &[], b"").map_err(io)?;
    check(advanced.status == 200, "the emulator's clock did not move")?;
    Ok(())
}

/// One delivery the demo's receiver took.
#[derive(Debug, Clone)]
struct Delivered {
    path: String,
    tenant: String,
    request_id: String,
    webhook_id: String,
    /// Whether `webhook-signature` matched `webhook-id`, `webhook-timestamp` and the body.
    signed: bool,
}

type Log = Arc<std::sync::Mutex<Vec<Delivered>>>;

/// A minimal callback receiver for the demo: records each request, checks its signature,
/// and answers 200; while down, it closes every connection without answering.
struct Receiver {
    addr: SocketAddr,
    seen: Log,
    up: Arc<AtomicBool>,
}

impl Receiver {
    async fn start() -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Log = Arc::default();
        let up = Arc::new(AtomicBool::new(true));
        let (log, is_up) = (seen.clone(), up.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone(), is_up.clone()));
            }
        });
        Ok(Receiver { addr, seen, up })
    }

    fn seen(&self) -> Vec<Delivered> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The deliveries once there are `n` (or whatever arrived within `within`).
    fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + within;
        while self.seen().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.seen()
    }
}

/// Reads requests (Content-Length framed, as the gateway sends them) until the peer closes.
async fn serve(mut stream: tokio::net::TcpStream, log: Log, up: Arc<AtomicBool>) {
    let key = SigningKey::parse(DEMO_WHSEC.as_bytes()).expect("the demo's secret parses");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
            let get = |n: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if buf.len() >= head + len {
                if !up.load(Ordering::SeqCst) {
                    return; // down: the request is read, never answered
                }
                let (id, ts) = (get("webhook-id").unwrap_or_default(), get("webhook-timestamp").unwrap_or_default());
                let body = &buf[head..head + len];
                let expected = ts.parse().ok().map(|ts| key.sign(&id, ts, body));
                let entry = Delivered {
                    path: req.path.unwrap_or("").to_owned(),
                    tenant: get("x-nxgate-tenant").unwrap_or_default(),
                    request_id: get("x-request-id").unwrap_or_default(),
                    signed: expected.is_some() && expected == get("webhook-signature"),
                    webhook_id: id,
                };
                if let Ok(mut seen) = log.lock() {
                    seen.push(entry);
                }
                buf.drain(..head + len);
                if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                    return;
                }
                continue;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
