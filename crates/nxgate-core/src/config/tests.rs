use super::*;
use std::io::Write;

const MINIMAL: &str = r#"
listen: ["127.0.0.1:8080"]
upstream:
  url: "https://nxbot.nxcloud.com"
tenants:
  - name: acme
    uuid: "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR"
    secret_env: NXGATE_ACME_SECRET
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([("NXGATE_ACME_SECRET".to_owned(), "s3cr3t-value".to_owned())])
}

fn load_text(text: &str) -> Result<GatewayConfig, ConfigError> {
    parse(text, Path::new("test.yaml"), &env())
}

fn problems(text: &str) -> Vec<String> {
    match load_text(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(|p| p.to_string()).collect(),
        Err(other) => vec![other.to_string()],
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
    }
}

fn assert_problem(text: &str, field: &str) {
    let ps = problems(text);
    assert!(ps.iter().any(|p| p.contains(field)), "expected a problem naming {field}, got {ps:#?}");
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(3000));
    assert_eq!(c.upstream.read_timeout, Duration::from_millis(30000));
    assert_eq!(c.upstream.total_timeout, Duration::from_millis(60000));
    assert_eq!(c.max_request_body_bytes, 1_048_576);
    assert_eq!(c.max_response_body_bytes, 8_388_608);
    assert_eq!(c.request_header_timeout, Duration::from_millis(10_000));
    assert_eq!(c.verify_mode, VerifyMode::Enforce);
    assert_eq!(c.max_clock_skew_secs, 300);
    assert_eq!(c.allow_prefixes, vec!["/callcentre/".to_owned()]);
    assert_eq!(c.default_tenant, None);
    assert!(c.upstream.tls);
    assert_eq!((c.upstream.host.as_str(), c.upstream.port), ("nxbot.nxcloud.com", 443));
    assert_eq!(c.tenants[0].algorithm, Algorithm::Md5);
    assert_eq!(c.tenants[0].secret.expose(), b"s3cr3t-value");
    assert_eq!(c.tenants[0].rate_limit, None);
    assert_eq!(c.tenants[0].max_in_flight, None);
    assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.rate_limit_backend.kind, RateLimitKind::Local);
    assert_eq!(c.rate_limit_backend.on_redis_error, OnRedisError::LocalFallback);
}

#[test]
fn rate_limits_and_backend_are_validated() {
    let with_tenant = |extra: &str| {
        MINIMAL.replace("    secret_env: NXGATE_ACME_SECRET\n", &format!("    secret_env: NXGATE_ACME_SECRET\n{extra}"))
    };
    let c =
        load_text(&with_tenant("    rate_limit: { per_second: 50, burst: 100 }\n    max_in_flight: 256\n")).unwrap();
    assert_eq!(c.tenants[0].rate_limit, Some(RateLimit { per_second: 50, burst: 100 }));
    assert_eq!(c.tenants[0].max_in_flight, Some(256));
    assert_problem(&with_tenant("    rate_limit: { per_second: 0, burst: 1 }\n"), "tenants[0].rate_limit");
    assert_problem(&with_tenant("    max_in_flight: 0\n"), "tenants[0].max_in_flight");
    // The message names the field and what is wrong with it, not only that something is.
    let err = problems(&with_tenant("    rate_limit: { per_second: 1 }\n")).join("\n");
    assert!(err.contains("tenants[0].rate_limit") && err.contains("burst"), "{err}");
    let redis = |url: &str, policy: &str| {
        format!(
            "{MINIMAL}rate_limit_backend: {{ kind: \"redis\", redis_url: \"{url}\", on_redis_error: \"{policy}\" }}\n"
        )
    };
    let c = load_text(&redis("redis://127.0.0.1:6380/2", "deny")).unwrap();
    assert_eq!(c.rate_limit_backend.kind, RateLimitKind::Redis);
    assert_eq!(c.redis.url.expose(), b"redis://127.0.0.1:6380/2");
    assert_eq!((c.redis.host.as_str(), c.redis.db, c.redis.tls), ("127.0.0.1:6380", 2, false));
    assert_eq!(c.rate_limit_backend.on_redis_error, OnRedisError::Deny);
    let err = problems(&redis("http://user:pa55w0rd@x", "allow")).join("\n");
    assert!(err.contains("rate_limit_backend.redis_url") && !err.contains("pa55w0rd"), "{err}");
    let err = problems(&redis("redis://x", "sometimes")).join("\n");
    assert!(err.contains("rate_limit_backend.on_redis_error") && err.contains("sometimes"), "{err}");
}

#[test]
fn redis_url_env_keeps_the_password_out_of_the_file() {
    let text = format!("{MINIMAL}rate_limit_backend: {{ kind: \"redis\", redis_url_env: NXGATE_REDIS_URL }}\n");
    let env = HashMap::from([
        ("NXGATE_ACME_SECRET".to_owned(), "s".to_owned()),
        ("NXGATE_REDIS_URL".to_owned(), "redis://:pa55@10.0.0.5:6379/1".to_owned()),
    ]);
    let c = parse(&text, Path::new("t.yaml"), &env).unwrap();
    assert_eq!(c.redis.url.expose(), b"redis://:pa55@10.0.0.5:6379/1");
    assert!(c.redis.has_password && c.redis.username.is_none());
    assert_problem(&text, "rate_limit_backend.redis_url_env");
    let bad = HashMap::from([
        ("NXGATE_ACME_SECRET".to_owned(), "s".to_owned()),
        ("NXGATE_REDIS_URL".to_owned(), "http://:pa55@x".to_owned()),
    ]);
    match parse(&text, Path::new("t.yaml"), &bad) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("rate_limit_backend.redis_url_env") && !e.contains("pa55"), "{e}");
        }
        Ok(_) => panic!("an http:// Redis URL was accepted"),
    }
}

#[test]
fn request_header_timeout_is_read_and_must_be_positive() {
    let c = load_text(&format!("{MINIMAL}limits: {{ request_header_timeout_ms: 2500 }}\n")).unwrap();
    assert_eq!(c.request_header_timeout, Duration::from_millis(2500));
    assert_problem(
        &format!("{MINIMAL}limits: {{ request_header_timeout_ms: 0 }}\n"),
        "limits.request_header_timeout_ms",
    );
}

#[test]
fn idempotent_paths_default_to_the_read_only_endpoints() {
    let c = load_text(MINIMAL).unwrap();
    let expected = ["ping", "listTask", "listOrder", "listCall", "listOrderDetail"]
        .map(|name| format!("/callcentre/api/v3/{name}"))
        .to_vec();
    assert_eq!(c.idempotent_paths, expected);
}

#[test]
fn idempotent_paths_are_read_and_may_be_empty() {
    let c = load_text(&format!("{MINIMAL}routes: {{ idempotent_paths: [\"/callcentre/api/v3/ping\"] }}\n")).unwrap();
    assert_eq!(c.idempotent_paths, ["/callcentre/api/v3/ping"]);
    // Setting the key does not reset its sibling to anything but its default.
    assert_eq!(c.allow_prefixes, ["/callcentre/"]);
    let c = load_text(&format!("{MINIMAL}routes: {{ idempotent_paths: [] }}\n")).unwrap();
    assert!(c.idempotent_paths.is_empty());
}

#[test]
fn an_idempotent_path_must_be_a_full_path_without_a_query() {
    let ps = problems(&format!(
        "{MINIMAL}routes: {{ idempotent_paths: [\"/ok\", \"callcentre/api/v3/ping\", \"/callcentre/api/v3/listTask?page=1\"] }}\n"
    ));
    assert!(ps.iter().any(|p| p.contains("routes.idempotent_paths[1]") && p.contains("starting with '/'")), "{ps:#?}");
    assert!(ps.iter().any(|p| p.contains("routes.idempotent_paths[2]") && p.contains("query")), "{ps:#?}");
    assert!(!ps.iter().any(|p| p.contains("routes.idempotent_paths[0]")), "{ps:#?}");
}

#[test]
fn admin_listen_is_validated_and_can_be_disabled() {
    assert_eq!(load_text(&format!("{MINIMAL}admin_listen: null\n")).unwrap().admin_listen, None);
    assert_problem(&format!("{MINIMAL}admin_listen: \"nowhere\"\n"), "admin_listen");
    assert_problem(&format!("{MINIMAL}admin_listen: \"127.0.0.1:8080\"\n"), "admin_listen");
}

/// The shipped example documents every default: loading it must give the same values as
/// leaving every optional key out.
#[test]
fn shipped_example_states_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/nxgate.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = HashMap::from([("NXGATE_ACME_SECRET".to_owned(), "x".to_owned())]);
    let shipped = parse(&text, &path, &env).unwrap();
    let minimal = load_text(MINIMAL).unwrap();
    assert_eq!(shipped.upstream.connect_timeout, minimal.upstream.connect_timeout);
    assert_eq!(shipped.upstream.read_timeout, minimal.upstream.read_timeout);
    assert_eq!(shipped.upstream.total_timeout, minimal.upstream.total_timeout);
    assert_eq!(shipped.upstream.extra_roots, minimal.upstream.extra_roots);
    assert_eq!(shipped.upstream.request_compression, minimal.upstream.request_compression);
    assert_eq!(shipped.upstream.busy_backoff, minimal.upstream.busy_backoff);
    assert_eq!(shipped.max_request_body_bytes, minimal.max_request_body_bytes);
    assert_eq!(shipped.max_response_body_bytes, minimal.max_response_body_bytes);
    assert_eq!(shipped.request_header_timeout, minimal.request_header_timeout);
    assert_eq!(shipped.verify_mode, minimal.verify_mode);
    assert_eq!(shipped.max_clock_skew_secs, minimal.max_clock_skew_secs);
    assert_eq!(shipped.allow_prefixes, minimal.allow_prefixes);
    assert_eq!(shipped.idempotent_paths, minimal.idempotent_paths);
    assert_eq!(shipped.default_tenant, minimal.default_tenant);
    assert_eq!(shipped.tenants[0].algorithm, minimal.tenants[0].algorithm);
    assert_eq!(shipped.tenants[0].rate_limit, minimal.tenants[0].rate_limit);
    assert_eq!(shipped.tenants[0].max_in_flight, minimal.tenants[0].max_in_flight);
    assert_eq!(shipped.admin_listen, minimal.admin_listen);
    assert_eq!(shipped.shutdown_grace, minimal.shutdown_grace);
    assert_eq!(shipped.rate_limit_backend, minimal.rate_limit_backend);
    assert_eq!(shipped.redis, minimal.redis);
    assert!(shipped.listen_tls.is_none() && minimal.listen_tls.is_none());
    assert_eq!(shipped.max_connections, minimal.max_connections);
    assert_eq!(shipped.listen_allow_sources, minimal.listen_allow_sources);
    assert_eq!(shipped.admin_allow_sources, minimal.admin_allow_sources);
    assert!(shipped.callbacks.is_none() && minimal.callbacks.is_none());
    assert_eq!(shipped.state, minimal.state);
    assert_eq!(shipped.telemetry, minimal.telemetry);
    assert_eq!(shipped.idempotency, minimal.idempotency);
    assert_eq!(shipped.tenants[0].callbacks_forward_to, minimal.tenants[0].callbacks_forward_to);

    // The commented `callbacks:` block, uncommented, states the defaults of `callbacks: {}`.
    let block: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# callbacks:"))
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    assert!(block.starts_with("callbacks:\n") && block.lines().count() > 5, "{block}");
    let shipped = load_text(&format!("{MINIMAL}{block}")).unwrap().callbacks.unwrap();
    let minimal = load_text(&format!("{MINIMAL}callbacks: {{}}\n")).unwrap().callbacks.unwrap();
    assert_eq!(shipped.listen, minimal.listen);
    assert_eq!(shipped.forward_to, minimal.forward_to);
    assert_eq!(shipped.allow_prefixes, minimal.allow_prefixes);
    assert_eq!(shipped.receiver_timeout, minimal.receiver_timeout);
    assert_eq!(shipped.replay_memory_entries, minimal.replay_memory_entries);
    assert!(shipped.tls.is_none() && minimal.tls.is_none());
    assert_eq!(shipped.allow_sources, minimal.allow_sources);
    assert_eq!(shipped.delivery, minimal.delivery);
    assert_eq!(shipped.retry_schedule, minimal.retry_schedule);
    assert_eq!(shipped.max_queued, minimal.max_queued);
    assert!(shipped.signing_key.is_none() && minimal.signing_key.is_none());
}

#[test]
fn edge_limits_default_to_none_and_are_validated() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.max_connections, None);
    assert!(c.listen_allow_sources.is_none() && c.admin_allow_sources.is_none());
    let c = load_text(&format!(
        "{MINIMAL}limits: {{ max_connections: 200 }}\nlisten_allow_sources: [\"10.1.2.3/8\", \"::1\"]\n\
         admin_allow_sources: [\"127.0.0.1/32\"]\ncallbacks: {{ allow_sources: [\"203.0.113.0/24\"] }}\n"
    ))
    .unwrap();
    assert_eq!(c.max_connections, Some(200));
    let proxy = c.listen_allow_sources.unwrap();
    assert_eq!(proxy.to_string(), "10.0.0.0/8, ::1/128", "host bits dropped, a bare IP is one host");
    assert!(proxy.allows("10.200.0.1".parse().unwrap()));
    assert!(proxy.allows("::ffff:10.0.0.9".parse().unwrap()), "an IPv4 peer on a dual-stack socket");
    assert!(!proxy.allows("11.0.0.1".parse().unwrap()) && !proxy.allows("::2".parse().unwrap()));
    assert!(c.admin_allow_sources.unwrap().allows("127.0.0.1".parse().unwrap()));
    let cb = c.callbacks.unwrap().allow_sources.unwrap();
    assert!(cb.allows("203.0.113.77".parse().unwrap()) && !cb.allows("127.0.0.1".parse().unwrap()));

    assert_problem(&format!("{MINIMAL}limits: {{ max_connections: 0 }}\n"), "limits.max_connections");
    assert_problem(&format!("{MINIMAL}listen_allow_sources: []\n"), "listen_allow_sources");
    assert_problem(&format!("{MINIMAL}listen_allow_sources: [\"10.0.0.0/33\"]\n"), "listen_allow_sources[0]");
    assert_problem(&format!("{MINIMAL}admin_allow_sources: [\"any\"]\n"), "admin_allow_sources[0]");
    assert_problem(&format!("{MINIMAL}callbacks: {{ allow_sources: [\"x/8\"] }}\n"), "callbacks.allow_sources[0]");
}

#[test]
fn callbacks_get_the_documented_defaults() {
    let c = load_text(&format!("{MINIMAL}callbacks: {{}}\n")).unwrap().callbacks.unwrap();
    assert_eq!(c.listen, vec!["0.0.0.0:8443".parse::<SocketAddr>().unwrap()]);
    assert_eq!(c.forward_to, Receiver { host: "127.0.0.1".into(), port: 8081, authority: "127.0.0.1:8081".into() });
    assert_eq!(c.allow_prefixes, vec!["/".to_owned()]);
    assert_eq!(c.receiver_timeout, Duration::from_millis(10_000));
    assert_eq!(c.replay_memory_entries, 100_000);
    assert!(c.tls.is_none());
    assert!(load_text(MINIMAL).unwrap().callbacks.is_none(), "no callbacks key, no callback listener");
}

#[test]
fn idempotency_keeps_answers_a_day_and_requires_keys_nowhere_by_default() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.idempotency, IdempotencyConfig { retention: Duration::from_secs(86_400), required_paths: vec![] });
    let c = load_text(&format!(
        "{MINIMAL}idempotency: {{ retention_secs: 2, required_paths: [\"/callcentre/api/v3/createAndCall\"] }}\n"
    ))
    .unwrap();
    assert_eq!(c.idempotency.retention, Duration::from_secs(2));
    assert_problem(&format!("{MINIMAL}idempotency: {{ retention_secs: 0 }}\n"), "idempotency.retention_secs");
    assert_problem(
        &format!("{MINIMAL}idempotency: {{ required_paths: [\"create\"] }}\n"),
        "idempotency.required_paths[0]",
    );
    assert_problem(
        &format!("{MINIMAL}idempotency: {{ required_paths: [\"/a?b\"] }}\n"),
        "idempotency.required_paths[0]",
    );
}

#[test]
fn telemetry_is_off_by_default_and_validated() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.telemetry, TelemetryConfig { traces_url: None, sample_ratio: 1.0, service_name: "nxgate".into() });
    let c = load_text(&format!(
        "{MINIMAL}telemetry: {{ otlp_endpoint: \"http://collector:4318/\", sample_ratio: 0.25, service_name: edge-1 }}\n"
    ))
    .unwrap();
    assert_eq!(c.telemetry.traces_url.as_deref(), Some("http://collector:4318/v1/traces"));
    assert_eq!(c.telemetry.sample_ratio, 0.25);
    for bad in ["\"collector:4318\"", "\"ftp://c:1\"", "\"http://u:p@c:4318\"", "\"http://c:4318/?x=1\""] {
        assert_problem(&format!("{MINIMAL}telemetry: {{ otlp_endpoint: {bad} }}\n"), "telemetry.otlp_endpoint");
    }
    assert_problem(&format!("{MINIMAL}telemetry: {{ sample_ratio: 1.5 }}\n"), "telemetry.sample_ratio");
    assert_problem(&format!("{MINIMAL}telemetry: {{ service_name: \"\" }}\n"), "telemetry.service_name");
    assert_problem(&format!("{MINIMAL}telemetry: {{ endpoint: x }}\n"), "endpoint");
}

#[test]
fn state_and_delivery_resolve_their_nulls() {
    let c = load_text(&format!("{MINIMAL}callbacks: {{}}\n")).unwrap();
    assert_eq!(c.state, StateConfig { kind: StateKind::Memory, dir: None });
    let cb = c.callbacks.unwrap();
    assert_eq!(cb.delivery, DeliveryMode::Direct, "memory state: today's pass-through");
    assert_eq!(cb.retry_schedule.len(), 8);
    assert_eq!(cb.retry_schedule[1], Duration::from_secs(5));
    assert_eq!(cb.max_queued, 1_000_000);

    let c = load_text(&format!("{MINIMAL}state: {{ kind: \"embedded\", dir: st }}\ncallbacks: {{}}\n")).unwrap();
    assert_eq!(c.state.kind, StateKind::Embedded);
    assert!(c.state.dir.as_ref().unwrap().ends_with("st"), "resolved against the config's directory");
    assert_eq!(c.callbacks.unwrap().delivery, DeliveryMode::Queued);

    let c = load_text(&format!("{MINIMAL}rate_limit_backend: {{ kind: \"redis\" }}\ncallbacks: {{}}\n")).unwrap();
    assert_eq!(c.state.kind, StateKind::Redis, "where the replay memory already lived");
    assert_eq!(c.callbacks.unwrap().delivery, DeliveryMode::Queued);

    let c = load_text(&format!(
        "{MINIMAL}state: {{ kind: \"redis\" }}\ncallbacks: {{ delivery: \"direct\", retry_schedule_ms: [0, 10] }}\n"
    ))
    .unwrap();
    assert_eq!(c.redis.host, "127.0.0.1:6379", "state on Redis uses the redis: block");
    let cb = c.callbacks.unwrap();
    assert_eq!(cb.delivery, DeliveryMode::Direct);
    assert_eq!(cb.retry_schedule, vec![Duration::ZERO, Duration::from_millis(10)]);
}

#[test]
fn state_and_queued_delivery_are_validated_field_by_field() {
    assert_problem(&format!("{MINIMAL}state: {{ kind: \"embedded\" }}\n"), "state.dir");
    assert_problem(&format!("{MINIMAL}state: {{ kind: \"memory\", dir: /tmp/x }}\n"), "state.dir");
    assert_problem(&format!("{MINIMAL}state: {{ kind: \"disk\" }}\n"), "state.kind");
    assert_problem(&format!("{MINIMAL}state: {{ knd: \"memory\" }}\n"), "knd");
    let with = |block: &str| format!("{MINIMAL}callbacks:\n{block}\n");
    assert_problem(&with("  delivery: \"later\""), "delivery");
    assert_problem(&with("  retry_schedule_ms: []"), "callbacks.retry_schedule_ms");
    assert_problem(&with("  retry_schedule_ms: [0, 604800001]"), "callbacks.retry_schedule_ms[1]");
    assert_problem(&with("  max_queued: 0"), "callbacks.max_queued");
    assert_problem(&with("  signing_secret_env: NXGATE_TEST_UNSET_WHSEC"), "callbacks.signing_secret_env");
    assert_problem(&with("  signing_secret_file: /nonexistent/whsec"), "callbacks.signing_secret_file");
    assert_problem(
        &with("  signing_secret_env: A\n  signing_secret_file: /nonexistent/whsec"),
        "callbacks.signing_secret_env",
    );
}

#[test]
fn a_signing_secret_must_be_whsec_base64_and_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let c = load_text(&format!("{MINIMAL}callbacks: {{ signing_secret_file: {} }}\n", good.display())).unwrap();
    let key = c.callbacks.unwrap().signing_key.unwrap();
    assert_eq!(key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#).len(), 47);
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let problems = load_text(&format!("{MINIMAL}callbacks: {{ signing_secret_file: {} }}\n", bad.display()))
        .unwrap_err()
        .to_string();
    assert!(problems.contains("callbacks.signing_secret_file") && problems.contains("whsec_"), "{problems}");
    assert!(!problems.contains("MfKQ9r8"), "the secret is never echoed: {problems}");
}

#[test]
fn callbacks_are_validated_field_by_field() {
    let with = |block: &str| format!("{MINIMAL}callbacks:\n{block}\n");
    assert_problem(&with("  listen: [\"127.0.0.1:8080\"]"), "callbacks.listen[0]");
    assert_problem(&with("  listen: [\"127.0.0.1:9090\"]"), "callbacks.listen[0]");
    assert_problem(&with("  listen: []"), "callbacks.listen");
    assert_problem(&with("  listen: [\"nowhere\"]"), "callbacks.listen[0]");
    assert_problem(&with("  forward_to: \"https://svc:8081\""), "callbacks.forward_to");
    assert_problem(&with("  forward_to: \"http://svc:8081/hooks\""), "callbacks.forward_to");
    assert_problem(&with("  allow_prefixes: [\"hooks\"]"), "callbacks.allow_prefixes[0]");
    assert_problem(&with("  receiver_timeout_ms: 0"), "callbacks.receiver_timeout_ms");
    assert_problem(&with("  replay_memory_entries: 0"), "callbacks.replay_memory_entries");
    assert_problem(
        &with("  tls: { cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem }"),
        "callbacks.tls.cert_file",
    );
    assert_problem(
        &with("  tls: { cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem }"),
        "callbacks.tls.key_file",
    );
    assert_problem(&with("  listn: []"), "listn");
}

#[test]
fn a_tenant_may_name_its_own_callback_receiver() {
    let text = MINIMAL.replace(
        "    secret_env: NXGATE_ACME_SECRET\n",
        "    secret_env: NXGATE_ACME_SECRET\n    callbacks_forward_to: \"http://sales-svc:9000\"\n",
    );
    let c = load_text(&format!("{text}callbacks: {{}}\n")).unwrap();
    assert_eq!(c.tenants[0].callbacks_forward_to.as_ref().unwrap().url(), "http://sales-svc:9000");
    assert_problem(&text, "tenants[0].callbacks_forward_to");
    let bad = text.replace("http://sales-svc:9000", "ftp://x");
    assert_problem(&format!("{bad}callbacks: {{}}\n"), "tenants[0].callbacks_forward_to");
}

#[test]
fn tls_files_are_read_and_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
    let path = dir.path().join("nxgate.yaml");
    let tls = "{ cert_file: c.pem, key_file: k.pem }";
    let c = parse(&format!("{MINIMAL}listen_tls: {tls}\ncallbacks: {{ tls: {tls} }}\n"), &path, &env()).unwrap();
    let id = c.callbacks.unwrap().tls.unwrap();
    assert_eq!(id.cert_chain.len(), 1);
    assert_eq!(id.key_der.expose(), key.serialize_der().as_slice());
    assert!(!format!("{id:?}").contains(&hex::encode(key.serialize_der())));
    assert!(c.listen_tls.is_some());
    let bad = parse(&format!("{MINIMAL}listen_tls: {{ cert_file: c.pem, key_file: junk.pem }}\n"), &path, &env());
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("listen_tls.key_file"), "{err}");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let text = MINIMAL.replace("  url:", "  urll: x\n  url:");
    let err = load_text(&text).unwrap_err().to_string();
    assert!(err.contains("urll"), "{err}");
    let text = format!("{MINIMAL}\nratelimit: 5\n");
    assert!(load_text(&text).unwrap_err().to_string().contains("ratelimit"));
}

#[test]
fn an_inline_secret_is_refused_and_never_echoed() {
    let text = MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", "secret: \"inline-hunter2\"");
    let ps = problems(&text);
    assert!(ps.iter().any(|p| p.contains("tenants[0].secret") && p.contains("inline")), "{ps:#?}");
    assert!(!ps.join("\n").contains("hunter2"));
    let text = MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", "secretKey: \"inline-hunter2\"");
    let err = load_text(&text).unwrap_err().to_string();
    assert!(err.contains("tenants[0].secret") && !err.contains("hunter2"), "{err}");
}

#[test]
fn a_missing_secret_names_the_field() {
    assert_problem(&MINIMAL.replace("NXGATE_ACME_SECRET", "NXGATE_UNSET_VAR"), "tenants[0].secret_env");
    assert_problem(&MINIMAL.replace("    secret_env: NXGATE_ACME_SECRET\n", ""), "tenants[0].secret_env");
    assert_problem(
        &MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", "secret_env: NXGATE_ACME_SECRET\n    secret_file: /x"),
        "exactly one",
    );
    assert_problem(
        &MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", "secret_file: /nonexistent/nxgate"),
        "tenants[0].secret_file",
    );
}

#[test]
fn an_empty_secret_is_refused() {
    let env = HashMap::from([("NXGATE_ACME_SECRET".to_owned(), String::new())]);
    match parse(MINIMAL, Path::new("t.yaml"), &env) {
        Err(ConfigError::Invalid { problems, .. }) => assert!(problems[0].to_string().contains("empty")),
        other => panic!("{other:?}"),
    }
}

fn secret_file(contents: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents).unwrap();
    f
}

#[test]
fn a_secret_file_loses_exactly_one_trailing_newline() {
    for (contents, expected) in [(&b"abc\n"[..], &b"abc"[..]), (b"abc", b"abc"), (b"abc\r\n", b"abc")] {
        let f = secret_file(contents);
        let text = MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", &format!("secret_file: {}", f.path().display()));
        let c = load_text(&text).unwrap();
        assert_eq!(c.tenants[0].secret.expose(), expected);
        assert!(c.tenants[0].secret_source.starts_with("file "));
    }
    let f = secret_file(b"abc\n\n");
    let text = MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", &format!("secret_file: {}", f.path().display()));
    assert_problem(&text, "more than one newline");
}

const TWO: &str = r#"
listen: ["127.0.0.1:8080"]
upstream: { url: "https://nxbot.nxcloud.com" }
tenants:
  - name: acme
    uuid: "U1"
    secret_env: NXGATE_ACME_SECRET
    client_keys_sha256: ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
  - name: beta
    uuid: "U2"
    secret_env: NXGATE_ACME_SECRET
    client_keys_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
"#;

#[test]
fn secret_and_ca_files_must_be_small_regular_files() {
    // A device would be read until memory runs out; a FIFO would hang the load.
    let dev = MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", "secret_file: /dev/zero");
    let ps = problems(&dev);
    assert!(ps.iter().any(|p| p.contains("tenants[0].secret_file") && p.contains("not a regular file")), "{ps:#?}");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let ps = problems(&MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", &format!("secret_file: {}", fifo.display())));
    assert!(ps.iter().any(|p| p.contains("not a regular file")), "{ps:#?}");
    let big = secret_file(&vec![b'a'; 64 * 1024 + 1]);
    let ps =
        problems(&MINIMAL.replace("secret_env: NXGATE_ACME_SECRET", &format!("secret_file: {}", big.path().display())));
    assert!(ps.iter().any(|p| p.contains("larger than")), "{ps:#?}");
    let with_ca = |path: &str| {
        MINIMAL.replace(
            "  url: \"https://nxbot.nxcloud.com\"",
            &format!("  url: \"https://nxbot.nxcloud.com\"\n  ca_file: {path}"),
        )
    };
    assert_problem(&with_ca("/dev/zero"), "upstream.ca_file");
    // The README's other two for ca_file: a FIFO (would hang the load) and over 4 MiB.
    let ca_fifo = dir.path().join("ca-fifo");
    assert!(std::process::Command::new("mkfifo").arg(&ca_fifo).status().unwrap().success());
    let ps = problems(&with_ca(&ca_fifo.display().to_string()));
    assert!(ps.iter().any(|p| p.contains("upstream.ca_file") && p.contains("not a regular file")), "{ps:#?}");
    let big_ca = dir.path().join("big-ca.pem");
    std::fs::write(&big_ca, vec![b'a'; 4 * 1024 * 1024 + 1]).unwrap();
    let ps = problems(&with_ca(&big_ca.display().to_string()));
    assert!(ps.iter().any(|p| p.contains("upstream.ca_file") && p.contains("larger than")), "{ps:#?}");
    // Exactly 4 MiB is within the limit: refused for its content (no certificate), not its size.
    std::fs::write(&big_ca, vec![b'a'; 4 * 1024 * 1024]).unwrap();
    let ps = problems(&with_ca(&big_ca.display().to_string()));
    assert!(ps.iter().all(|p| !p.contains("larger than")), "{ps:#?}");
}

#[test]
fn duplicate_names_uuids_and_keys_are_refused() {
    load_text(TWO).unwrap();
    assert_problem(&TWO.replace("name: beta", "name: acme"), "tenants[1].name");
    assert_problem(&TWO.replace("\"U2\"", "\"U1\""), "tenants[1].uuid");
    assert_problem(
        &TWO.replace(
            "0000000000000000000000000000000000000000000000000000000000000001",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        "tenants[1].client_keys_sha256[0]",
    );
}

#[test]
fn malformed_key_hashes_are_refused() {
    for bad in [
        "abc",
        "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
        "zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ] {
        assert_problem(
            &TWO.replace("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", bad),
            "tenants[0].client_keys_sha256[0]",
        );
    }
}

#[test]
fn default_tenant_must_name_a_tenant() {
    assert_problem(&format!("{TWO}default_tenant: nobody\n"), "default_tenant");
    assert_eq!(load_text(&format!("{TWO}default_tenant: beta\n")).unwrap().default_tenant, Some(1));
}

#[test]
fn bad_values_name_their_fields_all_at_once() {
    let text = r#"
listen: ["localhost:80", "127.0.0.1:1"]
upstream:
  url: "ftp://x"
  connect_timeout_ms: 0
limits: { max_request_body_bytes: 0 }
routes: { allow_prefixes: ["callcentre/"] }
tenants: []
"#;
    let ps = problems(text);
    for field in [
        "listen[0]",
        "upstream.url",
        "upstream.connect_timeout_ms",
        "limits.max_request_body_bytes",
        "routes.allow_prefixes[0]",
        "tenants",
    ] {
        assert!(ps.iter().any(|p| p.starts_with(field)), "{field} missing from {ps:#?}");
    }
}

#[test]
fn upstream_url_must_be_a_bare_origin() {
    for bad in ["https://x/api", "https://x?a=1", "https://user:pw@x", "x", "https://"] {
        assert_problem(&MINIMAL.replace("https://nxbot.nxcloud.com", bad), "upstream.url");
    }
    let c = load_text(&MINIMAL.replace("https://nxbot.nxcloud.com", "http://127.0.0.1:9000/")).unwrap();
    assert!(!c.upstream.tls);
    assert_eq!(
        (c.upstream.host.as_str(), c.upstream.port, c.upstream.authority.as_str()),
        ("127.0.0.1", 9000, "127.0.0.1:9000")
    );
    let c = load_text(&MINIMAL.replace("https://nxbot.nxcloud.com", "https://[::1]:8443")).unwrap();
    assert_eq!(c.upstream.host, "::1");
}

#[test]
fn verify_mode_accepts_quoted_and_yaml11_off() {
    let with = |m: &str| load_text(&format!("{MINIMAL}verify: {{ mode: {m} }}\n"));
    assert_eq!(with("\"off\"").unwrap().verify_mode, VerifyMode::Off);
    assert_eq!(with("off").unwrap().verify_mode, VerifyMode::Off);
    assert_eq!(with("false").unwrap().verify_mode, VerifyMode::Off);
    assert_eq!(with("\"report\"").unwrap().verify_mode, VerifyMode::Report);
    assert!(with("\"strict\"").unwrap_err().to_string().contains("verify mode"));
    let err = with("true").unwrap_err().to_string();
    // YAML `true` is a boolean, not a mode: refused with the field and the allowed values.
    assert!(err.contains(r#"verify: unknown verify mode: expected "enforce", "report" or "off""#), "{err}");
}

#[test]
fn ca_file_must_hold_certificates() {
    let f = secret_file(b"not a pem\n");
    assert_problem(
        &MINIMAL.replace(
            "  url: \"https://nxbot.nxcloud.com\"",
            &format!("  url: \"https://nxbot.nxcloud.com\"\n  ca_file: {}", f.path().display()),
        ),
        "upstream.ca_file",
    );
}

#[test]
fn the_redis_block_takes_tls_acl_users_sentinel_and_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let with = |block: &str| format!("{MINIMAL}rate_limit_backend: {{ kind: \"redis\" }}\nredis:\n{block}");
    let text = with(&format!(
        "  url: \"rediss://gw:pa55@127.0.0.1:16379/3\"\n  ca_file: \"{}\"\n  timeout_ms: 250\n",
        ca.display()
    ));
    let c = load_text(&text).unwrap();
    let r = &c.redis;
    assert!(r.tls && r.has_password && r.username.as_deref() == Some("gw"), "{r:?}");
    assert_eq!((r.host.as_str(), r.db, r.timeout), ("127.0.0.1:16379", 3, Duration::from_millis(250)));
    assert!(String::from_utf8_lossy(&r.extra_roots_pem).contains("BEGIN CERTIFICATE"));
    assert!(!format!("{c:?}").contains("pa55"));

    let c = load_text(&with(
        "  sentinel: { master_name: \"mymaster\", nodes: [\"127.0.0.1:26379\", \"127.0.0.1:26380\"] }\n",
    ))
    .unwrap();
    assert!(
        matches!(&c.redis.topology, RedisTopology::Sentinel { master_name, nodes } if master_name == "mymaster" && nodes.len() == 2)
    );
    let c = load_text(&with("  cluster: { nodes: [\"127.0.0.1:7000\"] }\n")).unwrap();
    assert!(matches!(&c.redis.topology, RedisTopology::Cluster { nodes } if nodes == &["127.0.0.1:7000"]));

    // Every problem names its field; a password is never echoed.
    assert_problem(&with("  url: \"redis://u:pa55@h/x\"\n"), "redis.url");
    assert!(!problems(&with("  url: \"http://u:pa55@h\"\n")).join("").contains("pa55"));
    assert_problem(&with("  timeout_ms: 0\n"), "redis.timeout_ms");
    assert_problem(&with("  ca_file: \"/nonexistent/ca.pem\"\n  url: \"rediss://h\"\n"), "redis.ca_file");
    assert_problem(&with(&format!("  ca_file: \"{}\"\n", ca.display())), "redis.ca_file");
    assert_problem(&with("  sentinel: { master_name: \"m\", nodes: [] }\n"), "redis.sentinel.nodes");
    assert_problem(&with("  sentinel: { master_name: \"m\", nodes: [\"nowhere\"] }\n"), "redis.sentinel.nodes[0]");
    assert_problem(&with("  cluster: { nodes: [\"h:0\"] }\n"), "redis.cluster.nodes[0]");
    assert_problem(
        &with("  sentinel: { master_name: \"m\", nodes: [\"h:1\"] }\n  cluster: { nodes: [\"h:2\"] }\n"),
        "redis.cluster",
    );
    assert_problem(&with("  url: \"redis://h/2\"\n  cluster: { nodes: [\"h:2\"] }\n"), "redis.url");
    assert_problem(&with("  url_env: NOT_SET_ANYWHERE\n"), "redis.url_env");
    assert_problem(&with("  hosts: []\n"), "hosts");
}

#[test]
fn the_older_redis_url_keeps_working_but_never_together_with_the_redis_block() {
    let legacy = "rate_limit_backend: { kind: \"redis\", redis_url: \"redis://127.0.0.1:6390/1\" }\n";
    let c = load_text(&format!("{MINIMAL}{legacy}redis: {{ timeout_ms: 50 }}\n")).unwrap();
    assert_eq!(c.redis.url.expose(), b"redis://127.0.0.1:6390/1");
    assert_eq!(c.redis.timeout, Duration::from_millis(50));
    assert_problem(&format!("{MINIMAL}{legacy}redis: {{ url: \"redis://h\" }}\n"), "rate_limit_backend.redis_url");
    let env_form = "rate_limit_backend: { kind: \"redis\", redis_url_env: X }\n";
    assert_problem(
        &format!("{MINIMAL}{env_form}redis: {{ url: \"redis://h\" }}\n"),
        "rate_limit_backend.redis_url_env",
    );
    // Not used and not written: not validated (a local backend needs no Redis).
    let c = load_text(&format!("{MINIMAL}rate_limit_backend: {{ redis_url: \"nonsense\" }}\n")).unwrap();
    assert_eq!(c.redis, RedisConfig::default());
}

#[test]
fn debug_output_of_a_loaded_config_has_no_secret() {
    let text = format!(
        "{MINIMAL}rate_limit_backend: {{ kind: \"redis\", redis_url: \"redis://:r3d1s-pa55@127.0.0.1:6379/0\" }}\n"
    );
    let c = load_text(&text).unwrap();
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    assert!(!shown.contains("r3d1s-pa55"), "redis password in Debug output");
}

#[test]
fn port_zero_may_appear_on_every_listener() {
    let listen = MINIMAL.lines().find(|l| l.starts_with("listen:")).expect("MINIMAL has a listen line");
    let text = MINIMAL.replace(listen, "listen: [\"127.0.0.1:0\"]\nadmin_listen: \"127.0.0.1:0\"");
    let c = load_text(&text).unwrap();
    assert_eq!(c.listen[0].port(), 0);
    assert_eq!(c.admin_listen.map(|a| a.port()), Some(0));
}

#[test]
fn request_compression_and_busy_backoff_have_their_defaults_and_can_be_set() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.upstream.request_compression, RequestCompression::Decode);
    let policy = c.upstream.busy_backoff.expect("on by default");
    assert_eq!((policy.initial, policy.max), (Duration::from_millis(1000), Duration::from_millis(30000)));
    let up = |extra: &str| {
        MINIMAL
            .replace("  url: \"https://nxbot.nxcloud.com\"", &format!("  url: \"https://nxbot.nxcloud.com\"\n{extra}"))
    };
    let c = load_text(&up("  request_compression: \"passthrough\"\n  busy_backoff: null")).unwrap();
    assert_eq!(c.upstream.request_compression, RequestCompression::Passthrough);
    assert_eq!(c.upstream.busy_backoff, None);
    let c = load_text(&up("  busy_backoff: { initial_ms: 250 }")).unwrap();
    assert_eq!(c.upstream.busy_backoff.unwrap().max, Duration::from_millis(30000));
    assert_problem(&up("  busy_backoff: { initial_ms: 5000, max_ms: 1000 }"), "upstream.busy_backoff.max_ms");
    assert_problem(&up("  busy_backoff: { initial_ms: 0 }"), "upstream.busy_backoff.initial_ms");
    let err = load_text(&up("  request_compression: \"gzip\"")).unwrap_err().to_string();
    assert!(err.contains("request_compression") || err.contains("unknown variant"), "{err}");
    let err = load_text(&up("  busy_backoff: { initial: 1 }")).unwrap_err().to_string();
    assert!(err.contains("initial"), "{err}");
}
