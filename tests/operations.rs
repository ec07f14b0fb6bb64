//! Operating nxgate: admin endpoints, metrics, access logs, reload, drain, ping.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn started(emu: &Emulator) -> Gateway {
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    gw.wait_ready();
    gw
}

// ---- admin endpoints ------------------------------------------------------------------

#[test]
fn healthz_and_readyz_answer_on_the_admin_port_only() {
    let emu = Emulator::start();
    let gw = started(&emu);
    assert_eq!(gw.admin_get("/healthz").unwrap().status, 200);
    let ready = gw.admin_get("/readyz").unwrap();
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")));
    assert_eq!(gw.admin_get("/nope").unwrap().status, 404);
    assert_eq!(gw.admin_get("/reload").unwrap().status, 405);
    // The proxy port does not serve admin paths: they are outside allow_prefixes.
    let r = client::request(gw.addr, "GET", "/healthz", &[("authorization", &format!("Bearer {KEY_A}"))], b"").unwrap();
    assert_gateway_error(&r, 404, 40401, "route_not_allowed");
}

#[test]
fn healthcheck_command_exits_0_on_200_and_1_otherwise() {
    let emu = Emulator::start();
    let gw = started(&emu);
    let run =
        |url: String| std::process::Command::new(nxgate_bin()).args(["healthcheck", "--url", &url]).status().unwrap();
    assert!(run(format!("http://{}/healthz", gw.admin.unwrap())).success());
    assert!(!run(format!("http://{}/nope", gw.admin.unwrap())).success());
    let closed = client::ClosedPort::new().unwrap();
    assert!(!run(format!("http://{}/healthz", closed.addr)).success());
}

// ---- metrics ----------------------------------------------------------------------------

#[test]
fn metrics_count_known_traffic_exactly() {
    let emu = Emulator::start();
    let gw = started(&emu);
    for _ in 0..3 {
        assert_eq!(gw.ping_a(&[], "ok").status, 200);
    }
    assert_eq!(gw.post("/callcentre/x", &[("authorization", "Bearer wrong")], b"{}").status, 401);
    assert_eq!(gw.ping_a(&[("x-emulator-fault", "bad_sign")], "bad").status, 502);
    assert_eq!(gw.ping_a(&[("x-emulator-fault", "truncated")], "cut").status, 502);
    // Every request is counted once its answer is sent; wait for the last one.
    wait_metric(&gw, r#"nxgate_request_duration_seconds_count{tenant="tenant-a"}"#, 5.0);

    assert_eq!(gw.metric(r#"nxgate_requests_total{outcome="ok",status="200",tenant="tenant-a"}"#), 3.0);
    assert_eq!(gw.metric(r#"nxgate_requests_total{outcome="unauthenticated",status="401",tenant="-"}"#), 1.0);
    assert_eq!(
        gw.metric(r#"nxgate_requests_total{outcome="bad_upstream_signature",status="502",tenant="tenant-a"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"nxgate_requests_total{outcome="bad_upstream_response",status="502",tenant="tenant-a"}"#),
        1.0
    );
    assert_eq!(gw.metric(r#"nxgate_verify_failures_total{reason="sign_mismatch",tenant="tenant-a"}"#), 1.0);
    assert_eq!(gw.metric(r#"nxgate_upstream_errors_total{kind="malformed"}"#), 1.0);
    assert_eq!(gw.metric(r#"nxgate_request_duration_seconds_count{tenant="tenant-a"}"#), 5.0);
    assert_eq!(gw.metric(r#"nxgate_upstream_duration_seconds_count{tenant="tenant-a"}"#), 5.0);
    assert_eq!(gw.metric(r#"nxgate_in_flight{tenant="tenant-a"}"#), 0.0);
    let text = String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap();
    assert!(text.contains(&format!("nxgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
}

/// Waits (up to 10 s) until `series` reads `value`; fails with the scrape otherwise.
fn wait_metric(gw: &Gateway, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.metric(series) != value {
        assert!(Instant::now() < deadline, "{series} never reached {value}: {}", gw.metric(series));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every series of a scrape, `name{labels}` -> value.
fn scrape(gw: &Gateway) -> std::collections::HashMap<String, f64> {
    let text = String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {l}")))
        })
        .collect()
}

/// The README's metrics table: each family and the label values it enumerates in
/// parentheses (`...` and prose left out).
fn readme_metric_families() -> Vec<(String, Vec<String>)> {
    let readme = include_str!("../README.md");
    let table = readme.split("| metric | labels |").nth(1).expect("README has the metrics table");
    let backticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            let name = backticked(cells[1]).into_iter().next().expect("a metric name");
            let values = cells[2].split_once('(').map(|(_, v)| backticked(v)).unwrap_or_default();
            (name, values)
        })
        .collect()
}

#[test]
fn a_fresh_gateways_first_scrape_has_every_documented_family_with_every_known_series_at_zero() {
    let emu = Emulator::start();
    let gw = started(&emu);
    let text = String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap();
    let series = scrape(&gw);
    let families = readme_metric_families();
    assert_eq!(families.len(), 27, "the README's table changed: {families:?}");
    for (family, values) in &families {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is absent from the first scrape:\n{text}");
        for v in values {
            let label = format!("=\"{v}\"");
            assert!(
                series.iter().any(|(k, n)| k.starts_with(&format!("{family}{{")) && k.contains(&label) && *n == 0.0),
                "{family} has no {v} series at 0:\n{text}"
            );
        }
    }
    // Every combination the config makes known, at 0 (label names in Prometheus's order).
    let mut expected: Vec<String> = Vec::new();
    for tenant in ["tenant-a", "tenant-b"] {
        expected.push(format!(r#"nxgate_requests_total{{outcome="ok",status="200",tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_request_duration_seconds_count{{tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_upstream_duration_seconds_count{{tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_in_flight{{tenant="{tenant}"}}"#));
        for reason in [
            "missing_header",
            "duplicate_header",
            "unreadable_header",
            "request_id_mismatch",
            "uuid_mismatch",
            "unknown_algorithm",
            "algorithm_mismatch",
            "malformed_timestamp",
            "stale_timestamp",
            "sign_mismatch",
        ] {
            expected.push(format!(r#"nxgate_verify_failures_total{{reason="{reason}",tenant="{tenant}"}}"#));
        }
        for kind in ["rate", "in_flight"] {
            expected.push(format!(r#"nxgate_rate_limited_total{{kind="{kind}",tenant="{tenant}"}}"#));
        }
        for code in ["0", "1", "2", "3", "4", "4001", "5", "5001", "6", "6001", "6002", "6003", "7", "1001", "other"] {
            expected.push(format!(r#"nxgate_upstream_codes_total{{code="{code}",tenant="{tenant}"}}"#));
        }
        expected.push(format!(r#"nxgate_upstream_busy_total{{tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_callbacks_total{{outcome="delivered",tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_callback_delivery_duration_seconds_count{{tenant="{tenant}"}}"#));
        expected.push(format!(r#"nxgate_callbacks_total{{outcome="queued",tenant="{tenant}"}}"#));
        for gauge in ["queue_depth", "queue_oldest_seconds", "dead_letters"] {
            expected.push(format!(r#"nxgate_callback_{gauge}{{tenant="{tenant}"}}"#));
        }
        for outcome in ["new", "replayed", "in_progress", "reused"] {
            expected.push(format!(r#"nxgate_idempotency_total{{outcome="{outcome}",tenant="{tenant}"}}"#));
        }
        for result in ["delivered", "receiver_error", "timeout", "unreachable"] {
            expected.push(format!(r#"nxgate_callback_delivery_attempts_total{{result="{result}",tenant="{tenant}"}}"#));
        }
    }
    expected.push("nxgate_upstream_backoff_tenants".to_owned());
    for kind in ["unreachable", "timeout", "too_large", "malformed"] {
        expected.push(format!(r#"nxgate_upstream_errors_total{{kind="{kind}"}}"#));
    }
    for result in ["ok", "error"] {
        expected.push(format!(r#"nxgate_config_reloads_total{{result="{result}"}}"#));
    }
    expected.extend(
        ["nxgate_rate_limit_backend_errors_total", "nxgate_draining", "nxgate_request_header_timeouts_total"]
            .map(String::from),
    );
    // Redis is not used here: down (0), and every failure reason at 0.
    expected.push("nxgate_redis_up".to_owned());
    for reason in
        ["refused", "timeout", "tls", "auth", "noauth", "database", "not_master", "closed", "sentinel", "other"]
    {
        expected.push(format!(r#"nxgate_redis_errors_total{{reason="{reason}"}}"#));
    }
    for s in &expected {
        assert_eq!(series.get(s), Some(&0.0), "{s} is not exported at 0 on a fresh gateway:\n{text}");
    }
    let version = format!(r#"nxgate_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(series.get(&version), Some(&1.0), "{text}");
}

#[test]
fn callers_cannot_create_metric_series() {
    let emu = Emulator::start();
    let gw = started(&emu);
    let series = |gw: &Gateway| {
        String::from_utf8(gw.admin_get("/metrics").unwrap().body)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count()
    };
    const REFUSED: &str = r#"nxgate_requests_total{outcome="unauthenticated",status="401",tenant="-"}"#;
    gw.post("/callcentre/a", &[("authorization", "Bearer k1")], b"{}");
    gw.post("/callcentre/a", &[("authorization", "Bearer k2")], b"{}");
    // Counted after the answer is sent: wait until the gateway has accounted for both,
    // rather than sleeping and hoping it has.
    wait_metric(&gw, REFUSED, 2.0);
    let before = series(&gw);
    for i in 0..20 {
        gw.post(
            &format!("/callcentre/path-{i}?q={i}"),
            &[("authorization", &format!("Bearer key-{i}")), ("x-custom", &i.to_string())],
            b"{}",
        );
    }
    wait_metric(&gw, REFUSED, 22.0);
    assert_eq!(series(&gw), before, "new paths, keys or headers made new series");
}

// ---- access log ------------------------------------------------------------------------

#[test]
fn json_access_log_has_one_event_per_request_with_every_field() {
    let emu = Emulator::start();
    let yaml = GatewayOptions::new(emu.url()).yaml(any_port());
    let gw = Gateway::start_with_args(&yaml, &["--log-format", "json"]);
    gw.wait_ready();
    let ok = gw.post(
        "/callcentre/api/v3/ping?secret-looking=query",
        &[("authorization", &format!("Bearer {KEY_A}"))],
        br#"{"data":"body-text-never-logged"}"#,
    );
    let bad = gw.ping_a(&[("x-emulator-fault", "wrong_uuid")], "x");
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "nxgate::access")
        .collect();
    assert_eq!(events.len(), 2, "{log}");
    let e = &events[0];
    assert_eq!(e["tenant"], "tenant-a");
    assert_eq!(e["request_id"], ok.header("x-request-id").unwrap());
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/callcentre/api/v3/ping");
    assert_eq!(e["status"], 200);
    assert_eq!(e["upstream_status"], 200);
    assert!(e["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(e["upstream_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(e["bytes_in"], 33);
    assert_eq!(e["bytes_out"], ok.body.len());
    assert_eq!(e["verify"], "passed");
    assert!(e.get("error_kind").is_none_or(|v| v.is_null()));
    let e = &events[1];
    assert_eq!(e["request_id"], bad.header("x-request-id").unwrap());
    assert_eq!(e["status"], 502);
    assert_eq!(e["verify"], "refused");
    assert_eq!(e["verify_failure"], "uuid_mismatch");
    assert_eq!(e["error_kind"], "bad_upstream_signature");
    assert!(!log.contains("secret-looking") && !log.contains("body-text-never-logged"), "query or body logged");
}

// ---- reload ----------------------------------------------------------------------------

/// Config text whose tenant A reads its secret from `secret_file`.
fn file_secret_yaml(emu: &Emulator, listen: SocketAddr, admin: SocketAddr, secret_file: &std::path::Path) -> String {
    GatewayOptions::new(emu.url())
        .yaml_with_admin(listen, admin)
        .replace("secret_env: NXGATE_TEST_SECRET_A", &format!("secret_file: \"{}\"", secret_file.display()))
}

#[test]
fn reload_picks_up_a_rotated_secret_file_via_admin_and_via_sighup() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("a.secret");
    std::fs::write(&secret, "an-outdated-secret\n").unwrap();
    let yaml = file_secret_yaml(&emu, any_port(), any_port(), &secret);
    let gw = Gateway::start_yaml(&yaml);
    gw.wait_ready();
    // The emulator refuses the outdated secret (and its answer fails our verification).
    assert_gateway_error(&gw.ping_a(&[], "x"), 502, 50202, "bad_upstream_signature");

    std::fs::write(&secret, format!("{SECRET_A}\n")).unwrap();
    let r = gw.admin_post("/reload").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(gw.ping_a(&[], "rotated").json()["data"], "rotated");

    std::fs::write(&secret, "outdated-again\n").unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric(r#"nxgate_config_reloads_total{result="ok"}"#) < 2.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.ping_a(&[], "x").status, 502);
}

#[test]
fn a_world_readable_secret_file_is_warned_about_on_reload_too() {
    // tests/cli.rs covers `check`; the README says "at every load", so: a start with a
    // private file warns nothing, a reload after `chmod o+r` warns once, naming the tenant.
    use std::os::unix::fs::PermissionsExt;
    const WARNING: &str = "secret_file is readable by every user on this host";
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("a.secret");
    std::fs::write(&secret, format!("{SECRET_A}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = Gateway::start_yaml(&file_secret_yaml(&emu, any_port(), any_port(), &secret));
    gw.wait_ready();
    assert_eq!(gw.ping_a(&[], "private").json()["data"], "private");
    assert_eq!(gw.log().matches(WARNING).count(), 0, "a 0600 secret_file was warned about");

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = gw.admin_post("/reload").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let log = gw.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(" WARN ") && warnings[0].contains("tenant-a"), "{}", warnings[0]);
    assert!(warnings[0].contains(&secret.display().to_string()), "the path is named: {}", warnings[0]);
    // Still loaded (a warning, not a refusal).
    assert_eq!(gw.metric(r#"nxgate_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(gw.ping_a(&[], "still").json()["data"], "still");
}

#[test]
fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let emu = Emulator::start();
    let gw = started(&emu);
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, good.replace("NXGATE_TEST_SECRET_B", "NXGATE_TEST_UNSET")).unwrap();
    let r = gw.admin_post("/reload").unwrap();
    assert_eq!(r.status, 400);
    let err = r.json()["error"].as_str().unwrap().to_owned();
    assert!(err.contains("tenants[1].secret_env"), "{err}");
    assert_eq!(gw.metric(r#"nxgate_config_reloads_total{result="error"}"#), 1.0);
    assert_eq!(gw.ping_a(&[], "still").json()["data"], "still");
    assert!(gw.log().contains("config reload refused"));

    // Changing the listen address needs a restart; a reload says so and changes nothing.
    std::fs::write(&gw.config_path, good.replace(r#"listen: ["127.0.0.1:0"]"#, r#"listen: ["127.0.0.1:1"]"#)).unwrap();
    let r = gw.admin_post("/reload").unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("listen"));
    assert_eq!(gw.ping_a(&[], "same").status, 200);
}

#[test]
fn tenants_added_and_removed_by_reload_take_effect_for_the_next_request() {
    let emu = Emulator::start();
    let gw = started(&emu);
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    // Remove tenant B (the last entry).
    let without_b = &good[..good.find("  - name: tenant-b").unwrap()];
    std::fs::write(&gw.config_path, without_b).unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let b = gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {KEY_B}"))], b"{}");
    assert_gateway_error(&b, 401, 40101, "unauthenticated");
    std::fs::write(&gw.config_path, &good).unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    let b = gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {KEY_B}"))], b"{}");
    assert_eq!(b.status, 200);
}

#[test]
fn no_request_fails_while_the_config_reloads_under_load() {
    let emu = Emulator::start();
    let gw = Arc::new(started(&emu));
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (gw, stop, sent) = (gw.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut c = Connection::open(gw.addr).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let data = format!("w{w}-{i}");
                    let body = format!(r#"{{"data":"{data}"}}"#);
                    let r = c
                        .request(
                            "POST",
                            "/callcentre/api/v3/ping",
                            &[("authorization", &format!("Bearer {KEY_A}"))],
                            body.as_bytes(),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    assert_eq!(r.json()["data"], data);
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for i in 0..20 {
        // Alternate between two valid configs (tenant B's algorithm flips).
        let text = if i % 2 == 0 { good.replace("algorithm: \"SHA256\"", "algorithm: \"MD5\"") } else { good.clone() };
        std::fs::write(&gw.config_path, text).unwrap();
        assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a request failed during reloads");
    }
    assert!(sent.load(Ordering::Relaxed) > 40, "too little load to mean anything");
    assert_eq!(gw.metric(r#"nxgate_config_reloads_total{result="ok"}"#), 20.0);
}

// ---- drain -------------------------------------------------------------------------------

#[test]
fn sigterm_drains_slow_requests_with_200s_then_exits_0() {
    let emu = Emulator::start();
    let mut gw = started(&emu);
    let addr = gw.addr;
    let slow: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"data":"slow-{i}"}}"#);
                let auth = format!("Bearer {KEY_A}");
                let headers =
                    [("authorization", auth.as_str()), ("x-emulator-fault", "slow"), ("x-emulator-delay-ms", "2500")];
                client::request(addr, "POST", "/callcentre/api/v3/ping", &headers, body.as_bytes()).unwrap()
            })
        })
        .collect();
    // Let all five reach the upstream, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric(r#"nxgate_in_flight{tenant="tenant-a"}"#) < 5.0 {
        assert!(Instant::now() < deadline, "slow requests never got in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    gw.signal("TERM");
    // Draining: not ready any more, and no new connections are accepted. Anchored on the
    // event that defines draining, not on a fixed window: both must be seen while the
    // slow requests are still being served (each holds the upstream for 2.5 s).
    let draining = |slow: &[std::thread::JoinHandle<Response>]| slow.iter().all(|t| !t.is_finished());
    loop {
        match gw.admin_get("/readyz") {
            Ok(r) if r.status == 503 => break,
            // The admin listener may already have stopped accepting, which also means "not ready".
            Err(_) => break,
            Ok(r) => {
                assert!(draining(&slow), "readyz still {} when the drained requests finished", r.status);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        assert!(draining(&slow), "still accepting connections when the drained requests finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(draining(&slow), "draining was only seen after the requests finished");
    for (i, t) in slow.into_iter().enumerate() {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "slow request {i} was cut off");
        assert_eq!(r.json()["data"], format!("slow-{i}"));
    }
    let status = gw.wait_exit(Duration::from_secs(10)).expect("gateway did not exit after draining");
    assert!(status.success(), "{status:?}");
    // It left as soon as the work was done (2.5 s), not after the 30 s grace period.
    assert!(signalled.elapsed() < Duration::from_secs(15), "{:?}", signalled.elapsed());
}

#[test]
fn an_idle_gateway_exits_at_once_on_sigint() {
    let emu = Emulator::start();
    let mut gw = started(&emu);
    let t = Instant::now();
    gw.signal("INT");
    assert!(gw.wait_exit(Duration::from_secs(5)).expect("no exit").success());
    assert!(t.elapsed() < Duration::from_secs(3));
}

// ---- ping ------------------------------------------------------------------------------

fn ping_cmd(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(nxgate_bin())
        .args(["ping", "-c"])
        .arg(config)
        .args(extra)
        .env("NXGATE_TEST_SECRET_A", SECRET_A)
        .env("NXGATE_TEST_SECRET_B", SECRET_B)
        .output()
        .unwrap()
}

#[test]
fn ping_proves_every_tenants_credentials_against_the_emulator() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, GatewayOptions::new(emu.url()).yaml(any_port())).unwrap();
    let out = ping_cmd(&path, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("tenant-a: OK") && text.contains("tenant-b: OK") && text.contains("verified"), "{text}");
    let out = ping_cmd(&path, &["--tenant", "tenant-b"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tenant-a"));
}

#[test]
fn ping_names_the_failing_tenant_and_exits_1() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("wrong.secret");
    std::fs::write(&secret, "not-the-secret\n").unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, file_secret_yaml(&emu, any_port(), any_port(), &secret)).unwrap();
    let out = ping_cmd(&path, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("tenant-a: FAILED") && text.contains("bad_upstream_signature"), "{text}");
    assert!(text.contains("tenant-b: OK"), "{text}");
    assert!(!text.contains("not-the-secret"));
}

// ---- graceful upgrade ----------------------------------------------------------------

#[test]
fn graceful_upgrade_hands_the_listeners_over_without_failing_a_request() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap();
    let yaml = GatewayOptions::new(emu.url()).yaml(any_port());
    let mut old = Gateway::spawn(&yaml, &[], &["--upgrade-sock", sock_arg], true);
    old.wait_ready();
    // The new process takes the listeners over by address: it is configured with the
    // ports the old one was given (port 0 cannot be handed over).
    let yaml = yaml
        .replace(r#"listen: ["127.0.0.1:0"]"#, &format!(r#"listen: ["{}"]"#, old.addr))
        .replace(r#"admin_listen: "127.0.0.1:0""#, &format!(r#"admin_listen: "{}""#, old.admin.unwrap()));

    // Traffic runs through the whole handover, each request on a fresh connection.
    let addr = old.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = client::request(
                    addr,
                    "POST",
                    "/callcentre/api/v3/ping",
                    &[("authorization", &format!("Bearer {KEY_A}"))],
                    b"{}",
                )
                .expect("a request failed during the upgrade");
                assert_eq!(r.status, 200);
                served += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            served
        })
    };

    // The new process waits on the socket for the old one's listeners.
    let mut new = Gateway::spawn(&yaml, &[], &["--upgrade", "--upgrade-sock", sock_arg], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "new process never opened the upgrade socket:\n{}", new.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(20)).expect("old process did not exit after handing over");
    assert!(status.success(), "{status:?}");
    // After the old process is gone, the same address is served by the new one.
    new.wait_listening();
    assert_eq!(new.addr, addr, "the new process serves the handed-over address");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().expect("a request failed during the upgrade");
    assert!(served > 20, "too little traffic to mean anything: {served}");
    let r = client::request(
        addr,
        "POST",
        "/callcentre/api/v3/ping",
        &[("authorization", &format!("Bearer {KEY_A}"))],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(new.log().contains("nxgate::access"), "the new process served nothing");
}
