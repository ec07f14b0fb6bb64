//! The `check`, `sign` and `demo` subcommands.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn nxgate(args: &[&str]) -> Command {
    let mut c = Command::new(nxgate_bin());
    c.args(args)
        .env("NXGATE_TEST_SECRET_A", SECRET_A)
        .env("NXGATE_TEST_SECRET_B", SECRET_B)
        .env("NXGATE_ACME_SECRET", SECRET_A);
    c
}

#[test]
fn check_accepts_a_valid_config_and_prints_a_summary_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        GatewayOptions::new("https://nxbot.nxcloud.com".into()).yaml("127.0.0.1:8080".parse().unwrap()),
    )
    .unwrap();
    let out = nxgate(&["check", "-c", path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("tenant-a") && stdout.contains("env NXGATE_TEST_SECRET_A") && stdout.contains("config OK"),
        "{stdout}"
    );
    // Which calls may reach NXCloud twice is part of what a reviewer must see.
    assert!(stdout.contains("sent again after a broken connection: /callcentre/api/v3/ping, "), "{stdout}");
    assert!(stdout.contains("connections per listener: no cap\n"), "{stdout}");
    assert!(stdout.contains("sources allowed: listen any; admin any\n"), "{stdout}");
    for s in NEVER_LOGGED {
        assert!(!stdout.contains(s));
    }
}

#[test]
fn check_prints_the_callback_listener_its_receivers_and_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cb.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("cb.key"), key.serialize_pem()).unwrap();
    let mut opts = GatewayOptions::new("https://nxbot.nxcloud.com".into());
    opts.extra_top = [
        "limits:\n  max_connections: 5000\nadmin_allow_sources: [\"127.0.0.1/32\"]\n",
        "callbacks:\n  listen: [\"127.0.0.1:8443\"]\n  forward_to: \"http://10.0.0.5:8081\"\n",
        "  tls: { cert_file: cb.pem, key_file: cb.key }\n  allow_sources: [\"203.0.113.0/24\", \"198.51.100.7\"]\n",
    ]
    .concat();
    opts.tenant_b_extra = "    callbacks_forward_to: \"http://sales-svc:9000\"\n".into();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, opts.yaml("127.0.0.1:8080".parse().unwrap())).unwrap();
    let out = nxgate(&["check", "-c", path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("callbacks: listen 127.0.0.1:8443 (HTTPS, cert cb.pem, key cb.key)"), "{stdout}");
    assert!(stdout.contains("receiver http://10.0.0.5:8081"), "{stdout}");
    assert!(stdout.contains("receiver for tenant-b: http://sales-svc:9000"), "{stdout}");
    assert!(stdout.contains("connections per listener: at most 5000, TLS handshake within 10000 ms\n"), "{stdout}");
    assert!(
        stdout.contains("sources allowed: listen any; admin 127.0.0.1/32; callbacks 203.0.113.0/24, 198.51.100.7/32\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("PRIVATE KEY"));
}

#[test]
fn check_refuses_an_invalid_config_with_exit_1_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let yaml = GatewayOptions::new("https://nxbot.nxcloud.com".into()).yaml("127.0.0.1:8080".parse().unwrap());
    std::fs::write(&path, yaml.replace("NXGATE_TEST_SECRET_B", "NXGATE_TEST_UNSET")).unwrap();
    let out = nxgate(&["check", "-c", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenants[1].secret_env"), "{stderr}");
}

#[test]
fn check_accepts_the_shipped_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/nxgate.yaml");
    let out = nxgate(&["check", "-c", path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_with_an_invalid_config_exits_1_instead_of_serving() {
    let out = nxgate(&["run", "-c", "/nonexistent/nxgate.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn run_refuses_a_listen_address_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, GatewayOptions::new("http://127.0.0.1:1".into()).yaml(addr)).unwrap();
    let out = nxgate(&["run", "-c", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[test]
fn sign_prints_the_known_answer_for_a_vendor_vector() {
    // Vector "ping body, compact JSON", SHA256.
    let mut child = nxgate(&[
        "sign",
        "--uuid",
        UUID_A,
        "--secret-env",
        "NXGATE_TEST_SECRET_A",
        "--algorithm",
        "SHA256",
        "--request-id",
        "0123456789abcdef0123456789abcdef",
        "--create-ts",
        "1732406400",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"data":"hello"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sign: A499FBC07BAF50169DB85A297AC75766F752276D7A6266E68FF9CD8CE60996F3"), "{text}");
    assert!(text.contains("algorithm: SHA256") && text.contains("createTs: 1732406400"));
    assert!(!text.contains(SECRET_A));
}

#[test]
fn sign_reads_credentials_from_a_config_tenant() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/nxgate.yaml");
    let mut child = nxgate(&[
        "sign",
        "-c",
        path,
        "--tenant",
        "acme",
        "--request-id",
        "fedcba9876543210fedcba9876543210",
        "--create-ts",
        "1732406400",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    // Vector "empty body (e.g. a GET)", MD5 (the example tenant's algorithm).
    assert!(String::from_utf8_lossy(&out.stdout).contains("sign: 428063037260351229A2A17BCD4CB308"));
}

#[test]
fn demo_runs_and_shows_a_verified_round_trip_and_a_refusal() {
    let out = nxgate(&["demo"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("demo OK") && text.contains("HTTP 502") && text.contains("50202"), "{text}");
}

#[test]
fn a_secret_file_readable_by_others_is_warned_about_at_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("a.secret");
    std::fs::write(&secret, format!("{SECRET_A}\n")).unwrap();
    let path = dir.path().join("c.yaml");
    let yaml = GatewayOptions::new("https://nxbot.nxcloud.com".into())
        .yaml("127.0.0.1:8080".parse().unwrap())
        .replace("secret_env: NXGATE_TEST_SECRET_A", &format!("secret_file: \"{}\"", secret.display()));
    std::fs::write(&path, yaml).unwrap();
    let warned = |mode: u32| {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = nxgate(&["check", "-c", path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains(SECRET_A));
        stderr.contains("readable by every user")
    };
    assert!(warned(0o644), "0644 secret file not warned about");
    assert!(!warned(0o600), "0600 secret file warned about");
    assert!(!warned(0o640), "0640 secret file warned about");
}
