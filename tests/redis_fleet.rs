//! Redis the way fleets run it (issue 23), against real servers on loopback: TLS with an
//! ACL user, `check --probe` naming what is wrong, a Sentinel failover followed without a
//! restart, a three-master Cluster, and a reload that moves the gateway to another Redis.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const PATH: &str = "/hooks/orderCallback";
const LIMITED: &str = "    rate_limit: { per_second: 20, burst: 20 }\n";

/// A config with both tenants limited at 20/s (burst 20), callbacks to `receiver`, and
/// the given `rate_limit_backend` + `redis:` text.
fn config(upstream: &str, receiver: &str, redis: &str) -> String {
    let mut opts = GatewayOptions::new(upstream.to_owned());
    opts.tenant_a_extra = LIMITED.into();
    opts.tenant_b_extra = LIMITED.into();
    // Direct delivery: these tests check the replay memory the replicas share (state on
    // Redis would otherwise mean queued delivery; the cluster test checks that too).
    opts.extra_top = format!(
        "callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{receiver}\"\n  allow_prefixes: [\"/hooks/\"]\n  receiver_timeout_ms: 1500\n  delivery: \"direct\"\n{redis}"
    );
    opts.yaml(any_port())
}

fn redis_block(url: &str, extra: &str) -> String {
    format!("rate_limit_backend:\n  kind: \"redis\"\n  on_redis_error: \"deny\"\nredis:\n  url: \"{url}\"\n{extra}")
}

fn start(yaml: &str) -> Gateway {
    let gw = Gateway::start_yaml(yaml);
    gw.wait_ready();
    gw
}

/// Starts a gateway whose Redis works and waits until both of its links (rate limits and
/// replay memory) have connected, which they do in the background on their first call;
/// then lets tenant A's limit refill.
fn start_connected(yaml: &str) -> Gateway {
    let gw = start(yaml);
    let up = within(Duration::from_secs(10), || {
        let b = body("warm-up");
        gw.ping_a(&[], "warm-up").status == 200 && send(gw.callbacks[0], &signed(false, &b, &rid()), &b).status == 200
    });
    assert!(up.is_some(), "Redis did not answer within 10 s:\n{}", gw.log());
    std::thread::sleep(Duration::from_millis(1100));
    gw
}

/// `nxgate check --probe` on `yaml`: (exit code, stdout + stderr).
fn probe(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nxgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(nxgate_bin())
        .args(["check", "--probe", "-c"])
        .arg(&path)
        .env("NXGATE_TEST_SECRET_A", SECRET_A)
        .env("NXGATE_TEST_SECRET_B", SECRET_B)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

// ---- callbacks -------------------------------------------------------------------------

fn body(tag: &str) -> Vec<u8> {
    format!(r#"{{"callbackType":"1","orderID":"{tag}","finish":true}}"#).into_bytes()
}

fn rid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// NXCloud's four headers for tenant A (MD5) or B (SHA256).
fn signed(b_tenant: bool, body: &[u8], request_id: &str) -> Vec<(String, String)> {
    common::signed(if b_tenant { Account::B } else { Account::A }, body, request_id)
}

fn send(addr: SocketAddr, headers: &[(String, String)], body: &[u8]) -> Response {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    client::request(addr, "POST", PATH, &all, body).unwrap()
}

/// One callback sent to both replicas at once: delivered once, the other copy a
/// duplicate or "in progress"; then again through each: duplicates.
fn one_delivery_across(gws: [&Gateway; 2], r: &TestReceiver, b_tenant: bool) {
    let before = r.count();
    let b = body("both");
    let h = signed(b_tenant, &b, &rid());
    let threads: Vec<_> = gws
        .iter()
        .map(|gw| {
            let (addr, h, b) = (gw.callbacks[0], h.clone(), b.clone());
            std::thread::spawn(move || send(addr, &h, &b))
        })
        .collect();
    let answers: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    assert_eq!(r.count(), before + 1, "two copies through two replicas, one delivery: {statuses:?}");
    for gw in gws {
        let again = send(gw.callbacks[0], &h, &b);
        assert_eq!((again.status, again.header("x-nxgate-duplicate")), (200, Some("true")));
    }
    assert_eq!(r.count(), before + 1);
}

// ---- rate limits -----------------------------------------------------------------------

/// `n` pings of tenant A (or B) through `addr`, one every `every`: (admitted, elapsed).
fn paced(addr: SocketAddr, key: &'static str, n: usize, every: Duration) -> std::thread::JoinHandle<(usize, Duration)> {
    std::thread::spawn(move || {
        let mut c = Connection::open(addr).unwrap();
        let auth = format!("Bearer {key}");
        let start = Instant::now();
        let mut ok = 0;
        for i in 0..n {
            if let Some(wait) = (start + every * i as u32).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let r = c.request("POST", "/callcentre/api/v3/ping", &[("authorization", &auth)], b"{}").unwrap();
            assert!(r.status == 200 || r.status == 429, "{}", r.status);
            ok += usize::from(r.status == 200);
        }
        (ok, start.elapsed())
    })
}

/// Both replicas send tenant `key`'s requests for about a second: together they admit the
/// one limit (burst 20 + 20/s), within 10 %, not twice it; each replica took part.
fn one_limit_across(gws: [&Gateway; 2], key: &'static str) {
    let every = Duration::from_millis(20);
    let (t1, t2) = (paced(gws[0].addr, key, 50, every), paced(gws[1].addr, key, 50, every));
    let ((a1, e1), (a2, e2)) = (t1.join().unwrap(), t2.join().unwrap());
    let expected = 20.0 + 20.0 * e1.max(e2).as_secs_f64();
    let total = (a1 + a2) as f64;
    assert!((expected * 0.9..=expected * 1.1).contains(&total), "admitted {a1} + {a2}, expected {expected:.1} ±10%");
    assert!(a1 >= 5 && a2 >= 5, "both replicas took part: {a1} / {a2}");
}

// ---- TLS and ACL ------------------------------------------------------------------------

/// A CA and a leaf for 127.0.0.1 it signed, as PEM files in `dir`: (ca.pem, cert.pem, key.pem).
fn pki(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("nxgate redis test CA {name}"));
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths =
        (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// redis-server with only a TLS port and one ACL user `gw` (the default user off).
fn tls_acl_redis(pki_dir: &std::path::Path) -> RedisServer {
    let (ca, cert, key) = pki(pki_dir, "good");
    RedisServer::start_with("redis-server", move |port| {
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\nuser default off\nuser gw on >gw-pa55 ~* &* +@all\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    })
}

#[test]
fn tls_with_an_acl_user_shares_limits_and_callbacks_and_bad_settings_fail_the_probe_with_their_reason() {
    let pki_dir = tempfile::tempdir().unwrap();
    let redis = tls_acl_redis(pki_dir.path());
    let good_ca = pki_dir.path().join("good-ca.pem");
    let (other_ca, _, _) = pki(pki_dir.path(), "other");
    let emu = Emulator::start();
    let r = TestReceiver::start();
    let port = redis.port;
    let ca = |p: &std::path::Path| format!("  ca_file: \"{}\"\n", p.display());
    let good =
        config(&emu.url(), &r.url(), &redis_block(&format!("rediss://gw:gw-pa55@127.0.0.1:{port}/0"), &ca(&good_ca)));

    // The probe passes and check shows the backend without the password.
    let (code, out) = probe(&good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("redis probe: OK (master, 12 scripts loaded)"), "{out}");
    assert!(out.contains(&format!("single server 127.0.0.1:{port}, TLS (system roots + ")), "{out}");
    assert!(out.contains("user gw with password, database 0"), "{out}");
    assert!(!out.contains("gw-pa55"), "the password was printed: {out}");

    // A gateway connects at start, before any request: Redis is up on the first scrapes.
    let idle = start(&good);
    let up = within(Duration::from_secs(5), || idle.metric("nxgate_redis_up") == 1.0);
    assert!(up.is_some(), "nxgate_redis_up stayed 0 on an idle gateway:\n{}", idle.log());
    drop(idle);

    // Two replicas share one limit and one replay memory over TLS.
    let (one, two) = (start_connected(&good), start_connected(&good));
    let errors = |gw: &Gateway| gw.metric("nxgate_rate_limit_backend_errors_total");
    let before = [errors(&one), errors(&two)];
    one_limit_across([&one, &two], KEY_A);
    one_delivery_across([&one, &two], &r, false);
    for (gw, before) in [&one, &two].into_iter().zip(before) {
        assert_eq!(gw.metric("nxgate_redis_up"), 1.0);
        assert_eq!(errors(gw), before, "no failed Redis call once connected");
        assert!(!gw.log().contains("gw-pa55"));
    }

    // Each wrong setting: the probe exits 1 naming it, and a running gateway shows Redis
    // down, counts the reason, and its WARN says the reason too.
    let wrong_db = format!("rediss://gw:gw-pa55@127.0.0.1:{port}/99");
    let cases: [(String, String, &str, &str); 5] = [
        (format!("rediss://gw:gw-pa55@127.0.0.1:{port}/0"), ca(&other_ca), "tls", "TLS: unknown CA"),
        (format!("rediss://gw:wrong@127.0.0.1:{port}/0"), ca(&good_ca), "auth", "auth failed"),
        (format!("rediss://127.0.0.1:{port}/0"), ca(&good_ca), "noauth", "NOAUTH"),
        (wrong_db, ca(&good_ca), "database", "wrong database"),
        (format!("redis://gw:gw-pa55@127.0.0.1:{port}/0"), String::new(), "closed", "use rediss://"),
    ];
    for (url, extra, reason, words) in cases {
        let yaml = config(&emu.url(), &r.url(), &redis_block(&url, &extra));
        let (code, out) = probe(&yaml);
        assert_eq!(code, 1, "{url}: {out}");
        let line = out.lines().find(|l| l.starts_with("redis probe FAILED")).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains(&format!("({reason})")) && line.contains(words), "{url}: {line}");
        let gw = start(&yaml);
        assert_eq!(gw.metric("nxgate_redis_up"), 0.0);
        // The connect at start fails with the reason, with no request needed.
        let series = format!("nxgate_redis_errors_total{{reason=\"{reason}\"}}");
        assert!(within(Duration::from_secs(5), || gw.metric(&series) >= 1.0).is_some(), "{url}: no {series}");
        // Deny refuses while Redis is not there, at once.
        let t = Instant::now();
        assert_eq!(gw.ping_a(&[], "x").status, 429);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(gw.metric("nxgate_redis_up"), 0.0);
        let log = gw.log();
        let warns: Vec<&str> = log.lines().filter(|l| l.contains("(Redis) unavailable")).collect();
        assert!(!warns.is_empty() && warns.iter().all(|w| w.contains(reason)), "{url}: {warns:?}");
        assert!(warns.len() <= 2, "one WARN per link, not per attempt: {warns:?}");
        assert!(!log.contains("gw-pa55"));
    }
}

#[test]
fn a_restarted_tls_redis_is_reconnected_to_without_a_restart_of_the_gateway() {
    let pki_dir = tempfile::tempdir().unwrap();
    let mut redis = tls_acl_redis(pki_dir.path());
    let r = TestReceiver::start();
    let emu = Emulator::start();
    let url = format!("rediss://gw:gw-pa55@127.0.0.1:{}/0", redis.port);
    let ca = format!("  ca_file: \"{}\"\n", pki_dir.path().join("good-ca.pem").display());
    let gw = start_connected(&config(&emu.url(), &r.url(), &redis_block(&url, &ca)));
    assert_eq!(gw.metric("nxgate_redis_up"), 1.0);

    redis.kill();
    // Deny answers 429 while Redis is away, and the gauge says so.
    let down =
        within(Duration::from_secs(5), || gw.ping_a(&[], "down").status == 429 && gw.metric("nxgate_redis_up") == 0.0);
    assert!(down.is_some(), "the outage was not noticed");
    redis.restart();
    let back = within(Duration::from_secs(10), || {
        let b = body("back");
        gw.ping_a(&[], "back").status == 200 && send(gw.callbacks[0], &signed(false, &b, &rid()), &b).status == 200
    });
    assert!(back.is_some(), "the gateway did not reconnect:\n{}", gw.log());
    assert_eq!(gw.metric("nxgate_redis_up"), 1.0);
    assert!(gw.log().contains("(Redis) is back"));
}

#[test]
fn nothing_listening_fails_the_probe_as_refused_and_a_reload_that_changes_redis_takes_effect() {
    let closed = client::ClosedPort::new().unwrap();
    let redis = RedisServer::start();
    let r = TestReceiver::start();
    let yaml = config("http://127.0.0.1:9", &r.url(), &redis_block(&format!("redis://{}/0", closed.addr), ""));
    let (code, out) = probe(&yaml);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("redis probe FAILED (refused): connection refused"), "{out}");

    let gw = start(&yaml);
    let b = body("reload");
    let h = signed(true, &b, &rid());
    assert_eq!(send(gw.callbacks[0], &h, &b).status, 503, "no Redis, no replay memory");
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace(&closed.addr.to_string(), &format!("127.0.0.1:{}", redis.port)))
        .unwrap();
    assert_eq!(gw.admin_post("/reload").unwrap().status, 200);
    // The new link connects in the background; the first calls may come before it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = send(gw.callbacks[0], &h, &b).status;
        if s != 503 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200);
    assert_eq!(r.count(), 1);
    assert_eq!(gw.metric("nxgate_redis_up"), 1.0);
}

// ---- Sentinel ---------------------------------------------------------------------------

/// `redis-cli` against `port`, over TLS trusting `ca` if given.
fn cli_tls(ca: Option<&std::path::Path>, port: u16, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    if let Some(ca) = ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli not installed: run scripts/test.sh, which installs it");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `done` every 50 ms for at most `limit`; the time it took, if it happened.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_sentinel_failover_is_followed_without_a_restart_and_no_callback_is_delivered_twice() {
    sentinel_failover(false);
}

#[test]
fn a_sentinel_failover_over_tls_is_followed_too() {
    sentinel_failover(true);
}

/// A master, a replica and three Sentinels (every one TLS-only with `tls`); two gateways;
/// the master is killed mid-run.
fn sentinel_failover(tls: bool) {
    let pki_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(pki_dir.path(), "sentinel");
    // With TLS: the server's own port is TLS only, and replication and Sentinel's
    // connections to the servers use TLS too.
    let tls_lines = |port: u16| {
        if tls {
            format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                cert.display(),
                key.display(),
                ca.display()
            )
        } else {
            String::new()
        }
    };
    let cli = |port: u16, args: &[&str]| cli_tls(tls.then_some(ca.as_path()), port, args);
    let scheme = if tls { "rediss" } else { "redis" };
    let ca_file = if tls { format!("  ca_file: \"{}\"\n", ca.display()) } else { String::new() };
    let auth = "requirepass s3nt-pa55\nmasterauth s3nt-pa55\n";
    let mut master = RedisServer::start_with("redis-server", |port| format!("{auth}{}", tls_lines(port)));
    let mport = master.port;
    let replica = RedisServer::start_with("redis-server", |port| {
        format!("{auth}replicaof 127.0.0.1 {mport}\nreplica-priority 10\n{}", tls_lines(port))
    });
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with("redis-sentinel", |port| {
                format!(
                    "sentinel monitor fleet 127.0.0.1 {mport} 2\nsentinel auth-pass fleet s3nt-pa55\nsentinel down-after-milliseconds fleet 1000\nsentinel failover-timeout fleet 5000\n{}",
                    tls_lines(port)
                )
            })
        })
        .collect();
    // The replica is in sync, and every Sentinel knows it (else a failover has nowhere to go).
    let synced = within(Duration::from_secs(15), || {
        cli(replica.port, &["-a", "s3nt-pa55", "--no-auth-warning", "INFO", "replication"])
            .contains("master_link_status:up")
            && sentinels
                .iter()
                .all(|s| cli(s.port, &["SENTINEL", "REPLICAS", "fleet"]).contains(&replica.port.to_string()))
    });
    assert!(synced.is_some(), "the replica did not sync or the Sentinels did not see it");

    let nodes = sentinels.iter().map(|s| format!("\"127.0.0.1:{}\"", s.port)).collect::<Vec<_>>().join(", ");
    let extra = format!("  sentinel: {{ master_name: \"fleet\", nodes: [{nodes}] }}\n");
    let emu = Emulator::start();
    let r = TestReceiver::start();
    let extra = format!("{extra}{ca_file}");
    let yaml = config(&emu.url(), &r.url(), &redis_block(&format!("{scheme}://:s3nt-pa55@127.0.0.1:6379/0"), &extra));
    let (code, out) = probe(&yaml);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("master \"fleet\" from Sentinels") && !out.contains("s3nt-pa55"), "{out}");
    // The replica itself, asked as a single server, is not a master.
    let single = format!("{scheme}://:s3nt-pa55@127.0.0.1:{}/0", replica.port);
    let as_single = config(&emu.url(), &r.url(), &redis_block(&single, &ca_file));
    let (code, out) = probe(&as_single);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("redis probe FAILED (not_master): not a master"), "{out}");

    let (one, two) = (start_connected(&yaml), start_connected(&yaml));
    one_limit_across([&one, &two], KEY_A);
    one_delivery_across([&one, &two], &r, false);
    // Delivered before the failover; recorded on the master, replicated in well under this.
    let before = body("before");
    let before_h = signed(true, &before, &rid());
    assert_eq!(send(one.callbacks[0], &before_h, &before).status, 200);
    std::thread::sleep(Duration::from_millis(300));

    master.kill();
    let killed = Instant::now();
    // Fresh callbacks every 100 ms: refused (503) until the gateway uses the new master.
    let promoted = within(Duration::from_secs(20), || {
        cli(sentinels[0].port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "fleet"]).contains(&replica.port.to_string())
    })
    .expect("the Sentinels did not promote the replica within 20 s");
    // Both links of the gateway (rate limits: deny answers 429 while Redis is away;
    // replay memory: 503) are on the new master.
    let followed = within(Duration::from_secs(20), || {
        let b = body("during");
        send(one.callbacks[0], &signed(true, &b, &rid()), &b).status == 200 && one.ping_a(&[], "during").status == 200
    })
    .expect("the gateway did not follow the failover within 20 s");
    let (promoted_at, followed_at) = (promoted, promoted + followed);
    assert!(
        followed_at <= promoted_at + Duration::from_secs(2),
        "Sentinel promoted after {promoted_at:?} from the kill, the gateway followed after {followed_at:?}"
    );
    eprintln!("failover: promoted {promoted_at:?}, followed {followed_at:?} after the kill ({:?})", killed.elapsed());

    // The other replica follows too, limits hold on the new master, and what was delivered
    // before the failover is a duplicate now.
    assert!(within(Duration::from_secs(5), || {
        let b = body("two");
        send(two.callbacks[0], &signed(true, &b, &rid()), &b).status == 200 && two.ping_a(&[], "two").status == 200
    })
    .is_some());
    one_limit_across([&one, &two], KEY_B);
    let seen_before = r.count();
    for gw in [&one, &two] {
        let again = send(gw.callbacks[0], &before_h, &before);
        assert_eq!((again.status, again.header("x-nxgate-duplicate")), (200, Some("true")));
    }
    one_delivery_across([&one, &two], &r, true);
    assert_eq!(r.count(), seen_before + 1);
    // No requestID reached the receiver twice, across the whole run.
    let mut ids: Vec<String> = r.seen().iter().filter_map(|s| s.header("x-request-id").map(str::to_owned)).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a callback was delivered twice");
    assert_eq!(one.metric("nxgate_redis_up"), 1.0);
}

// ---- Cluster ----------------------------------------------------------------------------

#[test]
fn a_three_master_cluster_shares_limits_and_the_replay_memory_with_tenants_on_different_masters() {
    cluster(false);
}

#[test]
fn a_three_master_cluster_over_tls_with_an_acl_user_does_too() {
    cluster(true);
}

/// Three masters (TLS-only, with an ACL user `gw` and the default user off, with
/// `tls_acl`), two gateways.
fn cluster(tls_acl: bool) {
    let pki_dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(pki_dir.path(), "cluster");
    let masters: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with("redis-server", |port| {
                // The bus port next to the client port, inside the same range (the default,
                // port + 10000, would reach into the kernel's ephemeral ports).
                let bus = 20_000 + (port - 20_000 + 5_000) % 10_000;
                let mut conf = format!("cluster-enabled yes\ncluster-config-file nodes-{port}.conf\ncluster-port {bus}\n");
                if tls_acl {
                    conf += &format!(
                        "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-cluster yes\ntls-replication yes\nuser default off\nuser gw on >gw-pa55 ~* &* +@all\n",
                        cert.display(),
                        key.display(),
                        ca.display()
                    );
                }
                conf
            })
        })
        .collect();
    let auth: Vec<&str> = if tls_acl { vec!["--user", "gw", "--pass", "gw-pa55", "--no-auth-warning"] } else { vec![] };
    let cli = |port: u16, args: &[&str]| {
        let all: Vec<&str> = auth.iter().chain(args).copied().collect();
        cli_tls(tls_acl.then_some(ca.as_path()), port, &all)
    };
    let addrs: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
    let mut create = Command::new("redis-cli");
    if tls_acl {
        create.arg("--tls").arg("--cacert").arg(&ca).args(&auth);
    }
    let out = create
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli not installed: run scripts/test.sh, which installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let ok = within(Duration::from_secs(15), || {
        masters.iter().all(|m| cli(m.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });
    assert!(ok.is_some(), "the cluster did not become ok");
    // The two tenants' hash tags land on different masters.
    let owner = |uuid: &str| -> u16 {
        let slot: u16 = cli(masters[0].port, &["CLUSTER", "KEYSLOT", &format!("{{{uuid}}}")]).trim().parse().unwrap();
        let nodes = cli(masters[0].port, &["CLUSTER", "NODES"]);
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <slot ranges...>`
        let line = nodes
            .lines()
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    lo.parse::<u16>().is_ok_and(|lo| lo <= slot) && hi.parse::<u16>().is_ok_and(|hi| slot <= hi)
                })
            })
            .expect("a master owns the slot");
        let addr = line.split_whitespace().nth(1).unwrap();
        addr.split(['@', ':']).nth(1).unwrap().parse().unwrap()
    };
    let (owner_a, owner_b) = (owner(UUID_A), owner(UUID_B));
    assert_ne!(owner_a, owner_b, "the test needs tenants on different masters");

    let emu = Emulator::start();
    let r = TestReceiver::start();
    let nodes = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let (url, extra) = if tls_acl {
        (format!("rediss://gw:gw-pa55@{}/0", addrs[0]), format!("  ca_file: \"{}\"\n", ca.display()))
    } else {
        (format!("redis://{}/0", addrs[0]), String::new())
    };
    let yaml = config(&emu.url(), &r.url(), &redis_block(&url, &format!("{extra}  cluster: {{ nodes: [{nodes}] }}\n")));
    let (code, out) = probe(&yaml);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("redis probe: OK (cluster ok, 12 scripts loaded)") && out.contains("cluster, seeds"), "{out}");

    let (one, two) = (start_connected(&yaml), start_connected(&yaml));
    one_limit_across([&one, &two], KEY_A);
    one_limit_across([&one, &two], KEY_B);
    one_delivery_across([&one, &two], &r, false);
    one_delivery_across([&one, &two], &r, true);
    // Queued delivery and Idempotency-Key on the cluster: each tenant's outbox and keys in
    // its own slot, every script's keys in one slot.
    let queued_receiver = TestReceiver::start();
    let queued =
        yaml.replace("  delivery: \"direct\"", "  delivery: \"queued\"").replace(&r.url(), &queued_receiver.url());
    let (three, four) = (start_connected(&queued), start_connected(&queued));
    // (start_connected itself stores a callback on each: count ours by requestID.)
    let mut ours = Vec::new();
    for (b_tenant, gw) in [(false, &three), (true, &four)] {
        let (b, id) = (body("queued-on-cluster"), rid());
        let h = signed(b_tenant, &b, &id);
        assert_eq!(send(gw.callbacks[0], &h, &b).status, 200);
        let other = if b_tenant { &three } else { &four };
        let dup = send(other.callbacks[0], &h, &b);
        assert_eq!((dup.status, dup.header("x-nxgate-duplicate")), (200, Some("true")), "stored once for the fleet");
        ours.push(id);
    }
    let copies = |id: &str| queued_receiver.seen().iter().filter(|x| x.header("x-request-id") == Some(id)).count();
    let delivered = within(Duration::from_secs(10), || ours.iter().all(|id| copies(id) >= 1));
    assert!(delivered.is_some(), "queued callbacks not delivered on the cluster:\n{}\n{}", three.log(), four.log());
    assert!(ours.iter().all(|id| copies(id) == 1), "each delivered once");
    // one_limit_across emptied both tenants' buckets (20 at 20/s): let them refill.
    std::thread::sleep(Duration::from_millis(1_100));
    for key in [KEY_A, KEY_B] {
        let auth = format!("Bearer {key}");
        let headers = [("authorization", auth.as_str()), ("idempotency-key", "cluster-key-1")];
        let first = three.post("/callcentre/api/v3/ping", &headers, br#"{"data":"k"}"#);
        let again = four.post("/callcentre/api/v3/ping", &headers, br#"{"data":"k"}"#);
        assert_eq!((first.status, again.header("idempotent-replayed")), (200, Some("true")), "{}", four.log());
        assert_eq!(first.body, again.body);
    }
    // Each tenant's keys are on its own master, and only there.
    for (uuid, owner) in [(UUID_A, owner_a), (UUID_B, owner_b)] {
        for m in &masters {
            let keys = cli(m.port, &["--scan", "--pattern", &format!("nxgate:*{{{uuid}}}*")]);
            assert_eq!(!keys.trim().is_empty(), m.port == owner, "{uuid} on {}: {keys:?}", m.port);
        }
    }
    assert_eq!(one.metric("nxgate_redis_errors_total{reason=\"other\"}"), 0.0);
    assert_eq!(one.metric("nxgate_redis_up"), 1.0);
}
