//! The callback outbox against the real binary: with durable state (embedded or Redis) a
//! verified NXCloud callback is stored before NXCloud gets its 200, then delivered to the
//! receiver by a worker that retries on a schedule, signs each attempt per Standard
//! Webhooks (checked here by the Python `standardwebhooks` library, not by nxgate code),
//! survives kill -9 and replica loss, and parks what never got through as dead letters an
//! operator can redrive.
//!
//! Callbacks are signed with the independent reference signer, as in tests/callbacks.rs.
//! The receivers are `TestReceiver::start_on`, whose records say how each attempt was
//! answered, so "delivered" below always means "the receiver answered it 2xx".

mod common;

use base64::Engine;
use common::*;
use nxgate_emulator::EmulatorConfig;
use nxgate_testkit::refsign::{self, Digest};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Gateways and callbacks.

const PATH: &str = "/hooks/orderCallback?src=nx";

/// The variable the gateways read the Standard Webhooks secret from.
const WEBHOOK_SECRET_ENV: &str = "NXGATE_TEST_WEBHOOK_SECRET";

/// The Standard Webhooks secret: "whsec_" + base64 of the HMAC key.
fn webhook_secret() -> String {
    format!("whsec_{}", b64(b"outbox-test-hmac-key-32-bytes-ok"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A retry schedule that keeps a callback alive for `retries` × `every_ms` after its first
/// attempt: long enough that nothing dies in tests that are not about dead letters. (The
/// gateway takes at most 100 entries.)
fn schedule(retries: usize, every_ms: u64) -> String {
    let mut all = vec!["0".to_owned()];
    all.extend(std::iter::repeat_n(every_ms.to_string(), retries));
    format!("[{}]", all.join(", "))
}

/// `state:` for the embedded store in `dir`.
fn embedded(dir: &Path) -> String {
    format!("state:\n  kind: \"embedded\"\n  dir: \"{}\"\n", dir.display())
}

/// `state:` + `redis:` for a shared Redis.
fn redis_state(redis: &RedisServer) -> String {
    format!("state:\n  kind: \"redis\"\nredis:\n  url: \"{}\"\n", redis.url())
}

/// A whole config: `state` (a top-level block), a callback listener forwarding to
/// `receiver_url` with `callbacks_extra` (2-space indented lines), and the webhook secret
/// read from `WEBHOOK_SECRET_ENV`. `verify_extra` goes into the harness's `verify:` block.
fn config(receiver_url: &str, state: &str, callbacks_extra: &str, verify_extra: &str) -> String {
    config_upstream("http://127.0.0.1:9", receiver_url, state, callbacks_extra, verify_extra)
}

/// `config`, signing requests for `upstream` (the emulator, in a campaign).
fn config_upstream(
    upstream: &str,
    receiver_url: &str,
    state: &str,
    callbacks_extra: &str,
    verify_extra: &str,
) -> String {
    let mut opts = GatewayOptions::new(upstream.to_owned());
    opts.extra_top = format!(
        "{verify_extra}{state}callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{receiver_url}\"\n  allow_prefixes: [\"/hooks/\", \"/nx/\"]\n  receiver_timeout_ms: 1500\n  signing_secret_env: {WEBHOOK_SECRET_ENV}\n{callbacks_extra}"
    );
    opts.yaml(any_port())
}

/// Starts a gateway with the webhook secret in its environment (and `RUST_LOG` = `log` if
/// given) and waits for its listeners.
fn start(yaml: &str, log: Option<&str>) -> Gateway {
    let log = log.map(str::to_owned);
    let gw = Gateway::launch(yaml, &[], &[], true, |c| {
        c.env(WEBHOOK_SECRET_ENV, webhook_secret());
        if let Some(level) = log {
            c.env("RUST_LOG", level);
        }
    });
    assert_eq!(gw.callbacks.len(), 1, "the ready file lists the callback listener");
    gw
}

/// A callback's headers, as sent.
type Headers = Vec<(String, String)>;

/// The same, with a sign no tenant secret made.
fn forged_sign(account: Account, body: &[u8], request_id: &str) -> Headers {
    let mut h = signed(account, body, request_id);
    h[3].1 = refsign::sign(account.digest(), b"not-the-secret", body, &h[2].1, request_id, account.uuid());
    h
}

fn send(gw: &Gateway, headers: &[(String, String)], body: &[u8]) -> Response {
    send_to(gw.callbacks[0], PATH, headers, body)
}

fn body(tag: &str) -> Vec<u8> {
    format!(r#"{{"callbackType":"1","orderID":"{tag}","userPhone":"+85200000000","finish":true}}"#).into_bytes()
}

fn rid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One callback NXCloud sent: who, its requestID and body.
#[derive(Clone)]
struct Sent {
    account: Account,
    request_id: String,
    body: Vec<u8>,
}

/// Asserts NXCloud's answer in queued mode: 200, `"code": 0`, stored (not a duplicate).
fn assert_queued(resp: &Response, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["code"], 0, "{what}: {}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-nxgate-duplicate"), None, "{what}: a new callback is not a duplicate");
}

/// Sends `n` fresh callbacks (alternating tenants if `both`), each accepted into the queue.
fn queue_callbacks(gw: &Gateway, n: usize, both: bool, tag: &str) -> Vec<Sent> {
    (0..n)
        .map(|i| {
            let account = if both && i % 2 == 1 { Account::B } else { Account::A };
            let s = Sent { account, request_id: rid(), body: body(&format!("{tag}-{i}")) };
            assert_queued(&send(gw, &signed(account, &s.body, &s.request_id), &s.body), &format!("{tag} #{i}"));
            s
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Observing: metrics, the receiver, the state directory.

fn scrape(gw: &Gateway) -> String {
    String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap()
}

/// The value of series `name{labels}` in `text`, labels in any order; `None` if absent.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: HashSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let have: HashSet<String> = label_text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        (have == want).then(|| value.trim().parse().unwrap())
    })
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(&scrape(gw), name, labels).unwrap_or(0.0)
}

fn queue_depth(gw: &Gateway, tenant: &str) -> f64 {
    metric(gw, "nxgate_callback_queue_depth", &[("tenant", tenant)])
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the receiver answered 2xx for every one of `request_ids`; panics with the
/// gateway logs otherwise.
fn wait_delivered(r: &TestReceiver, request_ids: &[String], within: Duration, logs: &[&Gateway]) {
    let done = wait_for(within, || {
        let got: HashSet<String> =
            r.delivered().iter().filter_map(|x| x.header("x-request-id").map(str::to_owned)).collect();
        request_ids.iter().all(|id| got.contains(id)).then_some(())
    });
    if done.is_none() {
        let got: HashSet<String> =
            r.delivered().iter().filter_map(|x| x.header("x-request-id").map(str::to_owned)).collect();
        let missing: Vec<&String> = request_ids.iter().filter(|id| !got.contains(*id)).collect();
        let log: String = logs.iter().map(|g| g.log()).collect::<Vec<_>>().join("\n----- next gateway -----\n");
        panic!(
            "{} of {} callbacks not delivered within {within:?} (receiver saw {} requests): {missing:?}\ngateway log:\n{}",
            missing.len(),
            request_ids.len(),
            r.count(),
            tail(&log, 200)
        );
    }
}

/// The last `n` lines of a log, so a failure message stays readable.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deliveries (2xx-answered requests) by requestID.
fn delivered_by_request_id(r: &TestReceiver) -> HashMap<String, Vec<Received>> {
    let mut by: HashMap<String, Vec<Received>> = HashMap::new();
    for x in r.delivered() {
        by.entry(x.header("x-request-id").expect("x-request-id on every delivery").to_owned()).or_default().push(x);
    }
    by
}

/// Every request (attempt) the receiver saw, by requestID.
fn attempts_by_request_id(r: &TestReceiver) -> HashMap<String, Vec<Received>> {
    let mut by: HashMap<String, Vec<Received>> = HashMap::new();
    for x in r.seen() {
        by.entry(x.header("x-request-id").expect("x-request-id on every attempt").to_owned()).or_default().push(x);
    }
    by
}

/// "msg_" + 32 lowercase hex digits.
fn is_webhook_id(id: &str) -> bool {
    id.strip_prefix("msg_").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What the receiver must see on every attempt of `sent`: its path, body and content type,
/// the tenant, the requestID, a well-formed webhook-id, a current webhook-timestamp and a
/// v1 webhook-signature. (The signature's value is checked by `verify_signatures`.)
fn assert_attempt_shape(got: &Received, path: &str, sent: Option<&Sent>) {
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, path);
    assert_eq!(got.header("content-type"), Some("application/json"));
    if let Some(s) = sent {
        assert_eq!(got.body, s.body, "byte-identical body");
        assert_eq!(got.header("x-nxgate-tenant"), Some(s.account.name()));
        assert_eq!(got.header("x-request-id"), Some(s.request_id.as_str()));
    }
    let id = got.header("webhook-id").expect("webhook-id on every attempt");
    assert!(is_webhook_id(id), "webhook-id {id:?} is not msg_ + 32 hex digits");
    let ts: u64 = got.header("webhook-timestamp").expect("webhook-timestamp on every attempt").parse().unwrap();
    let now = unix_now();
    assert!(ts + 120 >= now && ts <= now + 5, "webhook-timestamp {ts} is not the attempt's time (now {now})");
    let sig = got.header("webhook-signature").expect("webhook-signature when a secret is set");
    assert!(sig.starts_with("v1,"), "{sig}");
    for gone in ["requestID", "uuid", "createTs", "sign", "algorithm"] {
        assert_eq!(got.header(gone), None, "{gone} must not reach the receiver");
    }
}

/// Checks every attempt's `webhook-signature` with the Python `standardwebhooks` library
/// (tests/data/verify_webhook.py). Its timestamp tolerance is 5 minutes: call this soon
/// after the deliveries. A missing python3 or library fails the test: it is installed by
/// scripts/install-deploy-tools.sh, which scripts/test.sh runs first.
fn verify_signatures(deliveries: &[Received]) {
    assert!(!deliveries.is_empty());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/verify_webhook.py");
    let lines: String = deliveries
        .iter()
        .map(|d| {
            json!({
                "secret": webhook_secret(),
                "id": d.header("webhook-id").unwrap_or(""),
                "timestamp": d.header("webhook-timestamp").unwrap_or(""),
                "signature": d.header("webhook-signature").unwrap_or(""),
                "body_b64": b64(&d.body),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install it and the standardwebhooks library with `bash scripts/install-deploy-tools.sh`")
        });
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(
        out.status.code(),
        Some(2),
        "the Python standardwebhooks library is missing; install it with `bash scripts/install-deploy-tools.sh`: {stderr}"
    );
    let verdicts: Vec<&str> = stdout.lines().collect();
    assert_eq!(verdicts.len(), deliveries.len(), "one verdict per delivery: {stdout}{stderr}");
    for (d, v) in deliveries.iter().zip(&verdicts) {
        assert_eq!(
            *v,
            "ok",
            "standardwebhooks refused the signature of {:?} (webhook-id {:?}, timestamp {:?})",
            d.header("x-request-id"),
            d.header("webhook-id"),
            d.header("webhook-timestamp")
        );
    }
    assert!(out.status.success(), "verify_webhook.py failed: {stdout}{stderr}");
}

/// Bytes of all files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn dead_letters(gw: &Gateway) -> Vec<Value> {
    let resp = gw.admin_get("/callbacks/dead").unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp.json().as_array().unwrap_or_else(|| panic!("GET /callbacks/dead is not a JSON array")).clone()
}

/// The emulator as NXCloud (time scale 0: only `advance` moves its clock).
fn emulator() -> Emulator {
    Emulator::with(
        EmulatorConfig {
            tenants: emulator_tenants(),
            tenant_algorithms: HashMap::from([(UUID_A.to_owned(), Digest::Md5), (UUID_B.to_owned(), Digest::Sha256)]),
            seed: 11,
            ..Default::default()
        },
        None,
    )
}

fn call(gw: &Gateway, endpoint: &str, body: &Value) {
    let auth = format!("Bearer {KEY_A}");
    let r =
        gw.post(&format!("/callcentre/api/v3/{endpoint}"), &[("authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{endpoint}: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["retCode"], 0, "{endpoint}: {}", String::from_utf8_lossy(&r.body));
}

// ---------------------------------------------------------------------------------------
// A receiver outage far longer than NXCloud's retries.

/// NXCloud retries a callback a few times over about a minute (the emulator: 4 attempts,
/// 5 s then doubling); in direct mode a receiver down for longer loses it. Queued, every
/// callback of a campaign is taken on its first attempt, waits out the outage, and is
/// delivered once the receiver listens, exactly once, signed per Standard Webhooks.
#[test]
fn a_campaign_sent_while_the_receiver_is_down_is_delivered_once_each_with_valid_webhook_signatures() {
    let emu = emulator();
    let state = tempfile::tempdir().unwrap();
    // Nothing listens on the receiver's address until later (the port stays bound so
    // nothing else takes it meanwhile).
    let closed = client::ClosedPort::new().unwrap();
    let receiver_addr = closed.addr;
    let yaml = config_upstream(
        &emu.url(),
        &format!("http://{receiver_addr}"),
        &embedded(state.path()),
        &format!("  retry_schedule_ms: {}\n", schedule(90, 300)),
        "",
    );
    let gw = start(&yaml, None);
    let callbacks = format!("http://{}", gw.callbacks[0]);

    let numbers = 15;
    let list: Vec<Value> = (0..numbers)
        .map(|i| json!({"orderID": format!("outage-o{i}"), "userPhone": format!("8613900000{i:03}")}))
        .collect();
    call(
        &gw,
        "createAndCall",
        &json!({
            "productID": "callbot",
            "userTaskID": "outage",
            "sceneID": "scene-1",
            "taskCreateSetting": {"taskName": "outage", "maxCall": 5, "maxRingTime": 30, "taskCallbackUrl": format!("{callbacks}/nx/task")},
            "funcFlag": {"roundRedial": false, "taskKeep": false},
            "callInfoList": {"orderCallbackUrl": format!("{callbacks}/nx/order"), "callCallbackUrl": format!("{callbacks}/nx/call"), "callList": list}
        }),
    );
    call(&gw, "mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "outage", "taskOperate": 1}));
    let r = client::request(emu.addr, "POST", "/_emulator/advance?secs=3600", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // NXCloud's view: every callback answered 200 `code: 0` on its first attempt.
    let state_json = client::request(emu.addr, "GET", "/_emulator/state", &[], b"").unwrap().json();
    let sent = state_json["callbacks"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 2 * numbers + 2, "a callCallback and an orderCallback per number, two taskCallbacks");
    for c in &sent {
        assert_eq!(c["state"], "delivered", "{c}");
        let attempts = c["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "accepted on the first attempt, while the receiver was down: {c}");
        assert_eq!(attempts[0]["status"], 200, "{c}");
        let answer: Value = serde_json::from_str(attempts[0]["answer"].as_str().unwrap()).unwrap();
        assert_eq!(answer["code"], 0, "{c}");
    }
    let n = sent.len() as f64;
    assert_eq!(metric(&gw, "nxgate_callbacks_total", &[("outcome", "queued"), ("tenant", "tenant-a")]), n);
    // The worker tries meanwhile and is refused; the queue shows its backlog and its age.
    let waited = wait_for(Duration::from_secs(15), || {
        let text = scrape(&gw);
        let unreachable = series(
            &text,
            "nxgate_callback_delivery_attempts_total",
            &[("result", "unreachable"), ("tenant", "tenant-a")],
        )
        .unwrap_or(0.0);
        let oldest = series(&text, "nxgate_callback_queue_oldest_seconds", &[("tenant", "tenant-a")]).unwrap_or(0.0);
        let depth = series(&text, "nxgate_callback_queue_depth", &[("tenant", "tenant-a")]).unwrap_or(0.0);
        (unreachable >= 1.0 && oldest >= 1.0 && depth >= 1.0 && depth <= n).then_some(())
    });
    assert!(waited.is_some(), "attempts to the closed port, queue depth and age not reported:\n{}", scrape(&gw));

    // The receiver comes up where the gateway has been knocking.
    drop(closed);
    let receiver = TestReceiver::start_on(receiver_addr);
    let request_ids: Vec<String> = sent.iter().map(|c| c["requestID"].as_str().unwrap().to_owned()).collect();
    wait_delivered(&receiver, &request_ids, Duration::from_secs(20), &[&gw]);
    let drained = wait_for(Duration::from_secs(10), || (queue_depth(&gw, "tenant-a") == 0.0).then_some(()));
    assert!(drained.is_some(), "the queue did not drain:\n{}", scrape(&gw));

    // Exactly once each, by webhook-id; the same as NXCloud sent, path and body.
    let deliveries = receiver.delivered();
    let mut by_webhook_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &deliveries {
        *by_webhook_id.entry(d.header("webhook-id").unwrap_or("").to_owned()).or_default() += 1;
    }
    assert!(by_webhook_id.values().all(|&c| c == 1), "a callback was delivered twice: {by_webhook_id:?}");
    assert_eq!(by_webhook_id.len(), sent.len(), "one webhook-id per callback");
    assert_eq!(deliveries.len(), sent.len());
    for c in &sent {
        let id = c["requestID"].as_str().unwrap();
        let d = deliveries.iter().find(|d| d.header("x-request-id") == Some(id)).unwrap();
        let url = c["url"].as_str().unwrap();
        let path = &url[url.find("/nx/").unwrap()..];
        assert_attempt_shape(d, path, None);
        assert_eq!(d.header("x-nxgate-tenant"), Some("tenant-a"));
        let got: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(got, c["body"], "the body NXCloud sent");
    }
    verify_signatures(&deliveries);
    assert!(!gw.log().contains(&webhook_secret()), "the webhook secret reached the log");
}

// ---------------------------------------------------------------------------------------
// Durability: kill -9, a second process, replicas.

/// What is queued survives kill -9: a new process on the same state.dir delivers all of
/// it, with the webhook-ids the dead one used. A second process on a dir in use refuses to
/// start rather than share the file.
#[test]
fn callbacks_queued_before_a_kill_9_are_delivered_after_a_restart_on_the_same_state_dir() {
    let state = tempfile::tempdir().unwrap();
    // The receiver refuses everything (500) until the restart: each attempt shows the
    // webhook-id the first process used.
    let r = TestReceiver::start_on(any_port());
    r.set(Mode::Fail);
    let yaml = config(&r.url(), &embedded(state.path()), &format!("  retry_schedule_ms: {}\n", schedule(90, 300)), "");
    let mut first = start(&yaml, None);
    let mut sent = queue_callbacks(&first, 20, true, "kill9");

    // A second process on the same dir exits non-zero, naming the setting.
    let mut second = Gateway::launch(&yaml, &[], &[], false, |c| {
        c.env(WEBHOOK_SECRET_ENV, webhook_secret());
    });
    let status = second.wait_exit(Duration::from_secs(15));
    let second_log = second.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second process on the same state.dir did not exit non-zero ({status:?}):\n{second_log}"
    );
    assert!(second_log.contains("state.dir"), "its error does not name state.dir:\n{second_log}");
    // ... and the first is undisturbed.
    sent.extend(queue_callbacks(&first, 1, false, "after-second"));

    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone()).collect();
    let tried = wait_for(Duration::from_secs(15), || {
        let attempts = attempts_by_request_id(&r);
        ids.iter().all(|id| attempts.contains_key(id)).then_some(attempts)
    })
    .unwrap_or_else(|| panic!("not every callback was attempted before the kill:\n{}", tail(&first.log(), 100)));
    let mut webhook_ids: HashMap<String, String> = HashMap::new();
    for (id, attempts) in &tried {
        let w = attempts[0].header("webhook-id").unwrap().to_owned();
        assert!(
            attempts.iter().all(|a| a.header("webhook-id") == Some(w.as_str())),
            "webhook-id changed between attempts"
        );
        webhook_ids.insert(id.clone(), w);
    }
    first.signal("KILL");
    assert!(first.wait_exit(Duration::from_secs(5)).is_some(), "kill -9 did not end the process");

    r.set(Mode::Ok);
    let restarted = start(&yaml, None);
    wait_delivered(&r, &ids, Duration::from_secs(20), &[&first, &restarted]);
    let drained = wait_for(Duration::from_secs(10), || {
        (queue_depth(&restarted, "tenant-a") == 0.0 && queue_depth(&restarted, "tenant-b") == 0.0).then_some(())
    });
    assert!(drained.is_some(), "the restarted queue did not drain:\n{}", scrape(&restarted));

    let delivered = delivered_by_request_id(&r);
    for s in &sent {
        let d = &delivered[&s.request_id];
        // The receiver never answered 2xx before the kill, so nothing was delivered twice.
        assert_eq!(d.len(), 1, "{} delivered {} times", s.request_id, d.len());
        assert_attempt_shape(&d[0], PATH, Some(s));
        assert_eq!(
            d[0].header("webhook-id"),
            Some(webhook_ids[&s.request_id].as_str()),
            "the webhook-id is stable across a restart"
        );
    }
    assert_eq!(delivered.len(), sent.len(), "nothing else was delivered");
    verify_signatures(&r.delivered());
}

/// Replica A takes callbacks from the shared Redis queue and dies mid-delivery (its
/// receiver never answers); replica B delivers them once they are overdue
/// (receiver_timeout_ms + 5 s after A took them), with A's webhook-ids, and the rest at
/// once. The two replicas forward to different receivers so the test can tell who
/// delivered what.
#[test]
fn a_replica_killed_mid_delivery_leaves_its_callbacks_to_the_other_once_overdue() {
    let redis = RedisServer::start();
    let (ra, rb) = (TestReceiver::start_on(any_port()), TestReceiver::start_on(any_port()));
    ra.set(Mode::Silent);
    let timeout_ms = 8000u64;
    let extra = format!("  retry_schedule_ms: {}\n  receiver_timeout_ms: {timeout_ms}\n", schedule(90, 300));
    // A later `receiver_timeout_ms` line would be a duplicate key: drop the default one.
    let yaml = |url: &str| config(url, &redis_state(&redis), &extra, "").replace("  receiver_timeout_ms: 1500\n", "");
    let mut a = start(&yaml(&ra.url()), None);
    // Nothing was taken before this moment: the lower bound of when A took anything.
    let t0 = Instant::now();
    let sent = queue_callbacks(&a, 12, true, "replica");
    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone()).collect();

    // A takes some; its receiver holds them without answering.
    let held = wait_for(Duration::from_secs(10), || (ra.count() > 0).then_some(()));
    assert!(held.is_some(), "replica A took nothing from the queue:\n{}", tail(&a.log(), 100));
    let b = start(&yaml(&rb.url()), None);
    a.signal("KILL");
    assert!(a.wait_exit(Duration::from_secs(5)).is_some(), "kill -9 did not end the process");
    // A's attempts were all still waiting for an answer when it died (else one may be
    // rescheduled as an ordinary retry, which B may take at once).
    assert!(
        t0.elapsed() < Duration::from_millis(timeout_ms - 1000),
        "too slow to kill A mid-delivery ({:?}); the test cannot tell an overdue take from a due one",
        t0.elapsed()
    );
    let held_by_a = ra.seen();
    assert!(held_by_a.iter().all(|x| x.answered().is_none()), "receiver A answered nothing");

    // When each callback first reached B's receiver.
    let mut first_delivered: HashMap<String, Instant> = HashMap::new();
    let done = wait_for(Duration::from_secs(30), || {
        for x in rb.delivered() {
            first_delivered.entry(x.header("x-request-id").unwrap().to_owned()).or_insert_with(Instant::now);
        }
        ids.iter().all(|id| first_delivered.contains_key(id)).then_some(())
    });
    if done.is_none() {
        wait_delivered(&rb, &ids, Duration::ZERO, &[&a, &b]);
    }
    let delivered = delivered_by_request_id(&rb);
    for s in &sent {
        let d = &delivered[&s.request_id];
        for x in d {
            assert_attempt_shape(x, PATH, Some(s));
            assert_eq!(x.header("webhook-id"), d[0].header("webhook-id"));
        }
    }
    // Overdue = receiver_timeout_ms + 5 s after A took it, and A took nothing before t0;
    // 2 s of slack for a store that keeps whole seconds.
    let overdue = Duration::from_millis(timeout_ms + 5000 - 2000);
    for x in &held_by_a {
        let id = x.header("x-request-id").unwrap();
        let d = &delivered[id];
        assert_eq!(d[0].header("webhook-id"), x.header("webhook-id"), "B delivers {id} with the webhook-id A used");
        let after = first_delivered[id] - t0;
        assert!(after >= overdue, "B took {id} from dead A after {after:?}, before it was overdue ({overdue:?})");
    }
    verify_signatures(&rb.delivered());
    let drained = wait_for(Duration::from_secs(10), || {
        (queue_depth(&b, "tenant-a") == 0.0 && queue_depth(&b, "tenant-b") == 0.0).then_some(())
    });
    assert!(drained.is_some(), "the shared queue did not drain:\n{}", scrape(&b));
}

// ---------------------------------------------------------------------------------------
// Dead letters and redrive.

/// A receiver that answers 500 to every attempt of a 3-attempt schedule: each callback
/// becomes a dead letter an operator can list and redrive, one by id or all at once, and
/// each is then delivered once, with the webhook-id it died with.
#[test]
fn callbacks_that_fail_every_attempt_become_dead_letters_that_redrive_delivers_once() {
    let state = tempfile::tempdir().unwrap();
    let r = TestReceiver::start_on(any_port());
    r.set(Mode::Fail);
    let extra = "  delivery: \"queued\"\n  retry_schedule_ms: [0, 200, 200]\n";
    let gw = start(&config(&r.url(), &embedded(state.path()), extra, ""), None);
    let before = unix_now();
    let sent = queue_callbacks(&gw, 3, false, "dead");

    let dead = wait_for(Duration::from_secs(15), || {
        let d = dead_letters(&gw);
        (d.len() == sent.len()).then_some(d)
    })
    .unwrap_or_else(|| panic!("dead letters: {:?}\n{}", dead_letters(&gw), tail(&gw.log(), 100)));
    let attempts = attempts_by_request_id(&r);
    let mut ids_by_request: HashMap<String, String> = HashMap::new();
    for s in &sent {
        let a = &attempts[&s.request_id];
        assert_eq!(a.len(), 3, "one attempt per schedule entry, then no more");
        for x in a {
            assert_attempt_shape(x, PATH, Some(s));
            assert_eq!(x.header("webhook-id"), a[0].header("webhook-id"), "the same webhook-id on every attempt");
        }
        let entry = dead
            .iter()
            .find(|e| e["request_id"] == s.request_id.as_str())
            .unwrap_or_else(|| panic!("{} not among the dead letters: {dead:?}", s.request_id));
        let id = entry["id"].as_str().unwrap();
        assert_eq!(Some(id), a[0].header("webhook-id"), "a dead letter's id is its webhook-id: {entry}");
        assert_eq!(entry["tenant"], "tenant-a", "{entry}");
        let path = entry["path"].as_str().unwrap();
        assert!(path == PATH || path == "/hooks/orderCallback", "{entry}");
        assert_eq!(entry["attempts"], 3, "{entry}");
        assert!(entry["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{entry}");
        let first = entry["first_received"].as_u64().unwrap_or_else(|| panic!("first_received: {entry}"));
        assert!(first >= before && first <= unix_now(), "first_received {first} not in [{before}, now]: {entry}");
        ids_by_request.insert(s.request_id.clone(), id.to_owned());
    }
    let dead_gauge = |tenant: &str| metric(&gw, "nxgate_callback_dead_letters", &[("tenant", tenant)]);
    let counted = wait_for(Duration::from_secs(5), || (dead_gauge("tenant-a") == 3.0).then_some(()));
    assert!(counted.is_some(), "nxgate_callback_dead_letters{{tenant-a}} = {}", dead_gauge("tenant-a"));
    assert_eq!(dead_gauge("tenant-b"), 0.0);
    let errors = || {
        metric(&gw, "nxgate_callback_delivery_attempts_total", &[("result", "receiver_error"), ("tenant", "tenant-a")])
    };
    let counted = wait_for(Duration::from_secs(5), || (errors() == 9.0).then_some(()));
    assert!(counted.is_some(), "attempts answered 500 counted as receiver_error: {} of 9", errors());
    // Dead is final until redriven: nothing more reaches the receiver.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(r.count(), 9, "a dead letter is not attempted again on its own");

    r.set(Mode::Ok);
    // One, by id.
    let one = &ids_by_request[&sent[0].request_id];
    let resp = gw.admin_post(&format!("/callbacks/redrive?id={one}")).unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json(), json!({"redriven": 1}));
    wait_delivered(&r, &[sent[0].request_id.clone()], Duration::from_secs(10), &[&gw]);
    let left = dead_letters(&gw);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|e| e["id"] != one.as_str()), "{left:?}");
    // An id that is not a dead letter.
    for unknown in ["msg_00000000000000000000000000000000", "nonsense"] {
        let resp = gw.admin_post(&format!("/callbacks/redrive?id={unknown}")).unwrap();
        assert_eq!(resp.status, 404, "{unknown}: {}", String::from_utf8_lossy(&resp.body));
    }
    // The rest, all at once.
    let resp = gw.admin_post("/callbacks/redrive").unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json(), json!({"redriven": 2}));
    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone()).collect();
    wait_delivered(&r, &ids, Duration::from_secs(10), &[&gw]);
    let emptied = wait_for(Duration::from_secs(5), || dead_letters(&gw).is_empty().then_some(()));
    assert!(emptied.is_some(), "dead letters left after the redrive: {:?}", dead_letters(&gw));
    let zero = wait_for(Duration::from_secs(5), || (dead_gauge("tenant-a") == 0.0).then_some(()));
    assert!(zero.is_some(), "nxgate_callback_dead_letters{{tenant-a}} = {}", dead_gauge("tenant-a"));

    // Delivered once each after the redrive (the only 2xx answers), with the same id.
    std::thread::sleep(Duration::from_millis(500));
    let delivered = delivered_by_request_id(&r);
    for s in &sent {
        let d = &delivered[&s.request_id];
        assert_eq!(d.len(), 1, "{} delivered {} times after the redrive", s.request_id, d.len());
        assert_attempt_shape(&d[0], PATH, Some(s));
        assert_eq!(d[0].header("webhook-id"), Some(ids_by_request[&s.request_id].as_str()));
    }
    verify_signatures(&r.delivered());
    let resp = gw.admin_post("/callbacks/redrive").unwrap();
    assert_eq!((resp.status, resp.json()), (200, json!({"redriven": 0})), "nothing left to redrive");
}

// ---------------------------------------------------------------------------------------
// A full queue.

/// With `max_queued` callbacks waiting, the next is refused with 503 / 50301 (so NXCloud
/// retries it later) rather than dropped; a copy of a stored one is still a duplicate.
/// Once the receiver is back and the queue drains, the refused one is accepted.
#[test]
fn a_full_queue_refuses_new_callbacks_with_503_and_accepts_them_once_drained() {
    let state = tempfile::tempdir().unwrap();
    let closed = client::ClosedPort::new().unwrap();
    let receiver_addr = closed.addr;
    let extra = format!("  max_queued: 5\n  retry_schedule_ms: {}\n", schedule(90, 300));
    let gw = start(&config(&format!("http://{receiver_addr}"), &embedded(state.path()), &extra, ""), None);
    let mut sent = queue_callbacks(&gw, 5, false, "full");

    // The sixth is refused, and nothing of it is stored.
    let refused = vec![Sent { account: Account::A, request_id: rid(), body: body("refused") }];
    for s in &refused {
        let resp = send(&gw, &signed(s.account, &s.body, &s.request_id), &s.body);
        assert_gateway_error(&resp, 503, 50301, "replay_store_unavailable");
    }
    // A copy of a stored one is not new: still a duplicate, not a refusal.
    let copy = send(&gw, &signed(Account::A, &sent[0].body, &sent[0].request_id), &sent[0].body);
    assert_eq!((copy.status, copy.header("x-nxgate-duplicate")), (200, Some("true")));

    drop(closed);
    let r = TestReceiver::start_on(receiver_addr);
    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone()).collect();
    wait_delivered(&r, &ids, Duration::from_secs(15), &[&gw]);
    let drained = wait_for(Duration::from_secs(10), || (queue_depth(&gw, "tenant-a") == 0.0).then_some(()));
    assert!(drained.is_some(), "the queue did not drain:\n{}", scrape(&gw));

    // NXCloud's retry of the refused ones (a fresh createTs and sign, the same requestID).
    for s in &refused {
        assert_queued(&send(&gw, &signed(s.account, &s.body, &s.request_id), &s.body), "the refused one, later");
    }
    sent.extend(refused);
    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone()).collect();
    wait_delivered(&r, &ids, Duration::from_secs(15), &[&gw]);
    std::thread::sleep(Duration::from_millis(500));
    let delivered = delivered_by_request_id(&r);
    for s in &sent {
        let d = &delivered[&s.request_id];
        assert_eq!(d.len(), 1, "{} delivered {} times", s.request_id, d.len());
        assert_attempt_shape(&d[0], PATH, Some(s));
    }
    assert_eq!(delivered.len(), sent.len(), "nothing else reached the receiver");
    assert_eq!(metric(&gw, "nxgate_callbacks_total", &[("outcome", "queued"), ("tenant", "tenant-a")]), 6.0);
}

/// Without Redis, `max_queued` bounds the whole queue (the contract: "callbacks waiting at
/// once"; only with Redis is it per tenant): a full queue refuses every tenant.
#[test]
fn without_redis_max_queued_bounds_the_whole_queue_not_each_tenant() {
    let state = tempfile::tempdir().unwrap();
    let closed = client::ClosedPort::new().unwrap();
    let extra = format!("  max_queued: 5\n  retry_schedule_ms: {}\n", schedule(90, 300));
    let gw = start(&config(&format!("http://{}", closed.addr), &embedded(state.path()), &extra, ""), None);
    queue_callbacks(&gw, 5, false, "tenant-a-fills");
    let b = body("tenant-b-refused");
    let resp = send(&gw, &signed(Account::B, &b, &rid()), &b);
    assert_gateway_error(&resp, 503, 50301, "replay_store_unavailable");
}

// ---------------------------------------------------------------------------------------
// Soak.

/// A minute of valid, forged and replayed callbacks at 20 a second, while the receiver is
/// down (closes every connection unanswered) 5 s in every 15. At the end every valid one
/// is delivered, no forged one ever reached the receiver, a requestID is delivered twice
/// only if an outage cut one of its attempts, and memory and the state file stay flat.
#[test]
fn a_minute_of_mixed_callbacks_through_receiver_outages_delivers_every_valid_one_without_growth() {
    const SOAK: Duration = Duration::from_secs(60);
    const PERIOD: Duration = Duration::from_millis(50);
    let state = tempfile::tempdir().unwrap();
    let r = TestReceiver::start_on(any_port());
    // Retries every 1-2 s for ~40 s: a 5 s outage is ridden out, nothing dies.
    let extra = "  receiver_timeout_ms: 5000\n  retry_schedule_ms: [0, 500, 1000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000]\n";
    // A 5 s skew window: replay entries expire after 10 s, so the state plateaus early.
    let yaml = config(&r.url(), &embedded(state.path()), extra, "  max_clock_skew_secs: 5\n")
        .replace("  receiver_timeout_ms: 1500\n", "");
    let gw = start(&yaml, Some("info"));
    let (pid, addr) = (gw.pid(), gw.callbacks[0]);

    let sender = std::thread::spawn(move || {
        let started = Instant::now();
        let (mut valid, mut forged, mut replayed) = (Vec::new(), 0u64, 0u64);
        let mut last: Option<(Headers, Vec<u8>)> = None;
        let mut i = 0u32;
        while started.elapsed() < SOAK {
            let due = started + PERIOD * i;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let account = if i.is_multiple_of(2) { Account::A } else { Account::B };
            match (i % 5, &last) {
                (1, _) => {
                    let b = body(&format!("f{i}"));
                    let resp = send_to(addr, PATH, &forged_sign(account, &b, &format!("forged-{i}")), &b);
                    assert_eq!(resp.status, 401, "forged #{i}: {}", String::from_utf8_lossy(&resp.body));
                    forged += 1;
                }
                (3, Some((h, b))) => {
                    let resp = send_to(addr, PATH, h, b);
                    assert_eq!(
                        (resp.status, resp.header("x-nxgate-duplicate")),
                        (200, Some("true")),
                        "replay #{i}: {}",
                        String::from_utf8_lossy(&resp.body)
                    );
                    replayed += 1;
                }
                _ => {
                    let (id, b) = (format!("valid-{i}-{}", rid()), body(&format!("v{i}")));
                    let h = signed(account, &b, &id);
                    assert_queued(&send_to(addr, PATH, &h, &b), &format!("valid #{i}"));
                    valid.push(id);
                    last = Some((h, b));
                }
            }
            i += 1;
        }
        (valid, forged, replayed)
    });

    // The receiver's outages, and samples of RSS and of the state directory once a second.
    let started = Instant::now();
    let mut samples: Vec<(u64, u64, u64)> = Vec::new(); // (second, RSS kB, state bytes)
    while started.elapsed() < SOAK {
        let second = started.elapsed().as_secs();
        r.set(if (5..10).contains(&(second % 15)) { Mode::Closed } else { Mode::Ok });
        if samples.last().is_none_or(|s| s.0 != second) {
            samples.push((second, vm_rss_kb(pid), dir_bytes(state.path())));
        }
        if sender.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (valid, forged, replayed) = sender.join().unwrap();
    r.set(Mode::Ok);
    wait_delivered(&r, &valid, Duration::from_secs(45), &[&gw]);
    let drained = wait_for(Duration::from_secs(10), || {
        (queue_depth(&gw, "tenant-a") == 0.0 && queue_depth(&gw, "tenant-b") == 0.0).then_some(())
    });
    assert!(drained.is_some(), "the queue did not drain:\n{}", scrape(&gw));
    let rss_end = vm_rss_kb(pid);
    let bytes_end = dir_bytes(state.path());

    let attempts = attempts_by_request_id(&r);
    let delivered = delivered_by_request_id(&r);
    let valid_set: HashSet<&String> = valid.iter().collect();
    let cut = r.seen().iter().filter(|x| x.answered().is_none()).count();
    println!(
        "outbox soak: {} valid, {forged} forged, {replayed} replayed; {} attempts at the receiver, {cut} cut by outages",
        valid.len(),
        r.count()
    );
    assert!(valid.len() > 400 && forged > 100 && replayed > 100, "the sender fell far behind its 20/s");
    assert!(cut > 0, "no attempt met an outage: the test did not test retries");
    for id in attempts.keys() {
        assert!(!id.starts_with("forged-"), "a forged callback reached the receiver: {id}");
        assert!(valid_set.contains(id), "the receiver got a callback nobody sent validly: {id}");
    }
    let mut doubled = 0;
    for id in &valid {
        let tries = &attempts[id];
        let w = tries[0].header("webhook-id");
        assert!(tries.iter().all(|t| t.header("webhook-id") == w), "{id}: webhook-id changed between attempts");
        let d = delivered[id].len();
        if d > 1 {
            doubled += 1;
            assert!(
                tries.iter().any(|t| t.answered().is_none()),
                "{id} delivered {d} times though no attempt of it was cut by an outage"
            );
        }
    }
    println!("outbox soak: {doubled} delivered more than once (at-least-once, after a cut attempt)");
    assert!(dead_letters(&gw).is_empty(), "something died: {:?}", dead_letters(&gw));
    verify_signatures(&r.delivered());

    // Flat: RSS at the end within 20 MB of RSS at the half (replay entries expire after
    // 10 s and the queue drains after each outage, so there is nothing to accumulate);
    // the state directory's largest size in the last 10 s of sending at most twice its
    // largest between 15 and 25 s (maxima over windows that each hold an outage, so a
    // store that compacts in steps compares peak with peak; steady growth from 20 s to
    // 55 s would be about 2.5x).
    let window = |from: u64, to: u64| samples.iter().filter(move |s| (from..to).contains(&s.0));
    let rss_half = window(28, 33).map(|s| s.1).max().expect("samples around 30 s");
    assert!(
        rss_end < rss_half + 20 * 1024,
        "RSS grew more than 20 MB in the second half: {rss_half} kB -> {rss_end} kB"
    );
    let early = window(15, 25).map(|s| s.2).max().expect("samples between 15 and 25 s");
    let late = window(50, 61).map(|s| s.2).max().expect("samples after 50 s").max(bytes_end);
    println!(
        "outbox soak: RSS {rss_half} kB at 30 s -> {rss_end} kB; state {early} B at 15-25 s -> {late} B at 50-60 s"
    );
    assert!(late <= 2 * early.max(1), "the state directory grew from {early} B to {late} B");
}

// ---------------------------------------------------------------------------------------
// Direct mode.

/// Without durable state, delivery stays synchronous: the receiver's answer is NXCloud's.
#[test]
fn with_memory_state_a_callback_is_forwarded_synchronously_and_the_receivers_answer_comes_back() {
    let r = TestReceiver::start_on(any_port());
    let gw = start(&config(&r.url(), "state:\n  kind: \"memory\"\n", "", ""), None);
    let b = body("direct");
    let resp = send(&gw, &signed(Account::A, &b, &rid()), &b);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.body, br#"{"received":1}"#, "the receiver's body comes back");
    assert_eq!(resp.header("x-receiver"), Some("yes"));
    assert_eq!(r.count(), 1, "delivered before the answer");
    assert_eq!(r.seen()[0].body, b);
    r.set(Mode::Fail);
    let b2 = body("direct-fail");
    let resp = send(&gw, &signed(Account::B, &b2, &rid()), &b2);
    assert_eq!(resp.status, 500, "the receiver's status comes back");
    assert_eq!(resp.header("x-receiver"), Some("yes"));
}

/// `delivery: "direct"` with the embedded store: synchronous, and the replay memory is in
/// the file, so a copy of a delivered callback after a restart is still a duplicate.
#[test]
fn direct_delivery_with_the_embedded_store_remembers_delivered_callbacks_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let r = TestReceiver::start_on(any_port());
    let yaml = config(&r.url(), &embedded(state.path()), "  delivery: \"direct\"\n", "");
    let mut first = start(&yaml, None);
    let b = body("remembered");
    let h = signed(Account::B, &b, &rid());
    let resp = send(&first, &h, &b);
    assert_eq!((resp.status, resp.body.as_slice()), (200, br#"{"received":1}"#.as_slice()), "synchronous");
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(20)).is_some(), "still running 20 s after SIGTERM");

    let second = start(&yaml, None);
    let dup = send(&second, &h, &b);
    assert_eq!((dup.status, dup.header("x-nxgate-duplicate")), (200, Some("true")), "remembered across the restart");
    assert_eq!(r.count(), 1, "not forwarded again");
    let b2 = body("fresh");
    let resp = send(&second, &signed(Account::A, &b2, &rid()), &b2);
    assert_eq!((resp.status, resp.body.as_slice()), (200, br#"{"received":2}"#.as_slice()));
}

// ---------------------------------------------------------------------------------------
// Metrics.

#[test]
fn every_outbox_series_is_exported_at_zero_from_the_first_scrape() {
    let state = tempfile::tempdir().unwrap();
    let r = TestReceiver::start_on(any_port());
    let gw = start(&config(&r.url(), &embedded(state.path()), "", ""), None);
    let text = scrape(&gw);
    for tenant in ["tenant-a", "tenant-b"] {
        let mut want: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("nxgate_callback_queue_depth", vec![("tenant", tenant)]),
            ("nxgate_callback_queue_oldest_seconds", vec![("tenant", tenant)]),
            ("nxgate_callback_dead_letters", vec![("tenant", tenant)]),
            ("nxgate_callbacks_total", vec![("outcome", "queued"), ("tenant", tenant)]),
        ];
        for result in ["delivered", "receiver_error", "timeout", "unreachable"] {
            want.push(("nxgate_callback_delivery_attempts_total", vec![("result", result), ("tenant", tenant)]));
        }
        for (name, labels) in want {
            assert_eq!(series(&text, name, &labels), Some(0.0), "{name}{labels:?} missing or not 0:\n{text}");
        }
    }
    r.assert_untouched();
}

#[test]
fn a_reload_changes_the_receiver_and_schedule_but_refuses_to_change_state() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (TestReceiver::start_on(any_port()), TestReceiver::start_on(any_port()));
    let yaml = config(&first.url(), &embedded(dir.path()), "  retry_schedule_ms: [0, 100]\n", "");
    let gw = start(&yaml, None);
    let sent = queue_callbacks(&gw, 1, false, "before-reload");
    wait_delivered(&first, &[sent[0].request_id.clone()], Duration::from_secs(10), &[&gw]);

    // state: needs a restart; the reload says so and the old config keeps serving.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(&gw.config_path, config(&second.url(), &embedded(other.path()), "", "")).unwrap();
    let refused = gw.admin_post("/reload").unwrap();
    assert_eq!(refused.status, 400);
    let why = refused.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(why.starts_with("state cannot change on reload"), "{why}");

    // The receiver and the schedule do change.
    std::fs::write(&gw.config_path, config(&second.url(), &embedded(dir.path()), "  retry_schedule_ms: [0]\n", ""))
        .unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let sent = queue_callbacks(&gw, 1, false, "after-reload");
    wait_delivered(&second, &[sent[0].request_id.clone()], Duration::from_secs(10), &[&gw]);
    assert_eq!(first.count(), 1, "the old receiver got only the callback from before the reload");
}
