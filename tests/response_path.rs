//! The response path: every upstream misbehaviour, both algorithms, fail-closed, the
//! verify modes, and HTTPS upstreams with a CA made at test time.

mod common;

use common::*;
use nxgate_emulator::{self as emulator, EmulatorConfig, Fault};
use std::time::Duration;

/// What the gateway must answer for each fault (status, code, kind, words the msg names).
fn expected(fault: Fault) -> (u16, u64, &'static str, &'static str) {
    match fault {
        Fault::BadSign => (502, 50202, "bad_upstream_signature", "sign does not match"),
        Fault::WrongRequestId => (502, 50202, "bad_upstream_signature", "requestID"),
        Fault::WrongUuid => (502, 50202, "bad_upstream_signature", "uuid"),
        Fault::StaleTs => (502, 50202, "bad_upstream_signature", "createTs"),
        Fault::MissingSign => (502, 50202, "bad_upstream_signature", "no sign header"),
        Fault::Downgrade => (502, 50202, "bad_upstream_signature", "algorithm"),
        Fault::Unsigned500 => (502, 50202, "bad_upstream_signature", "upstream status 500"),
        Fault::Oversized => (502, 50203, "upstream_response_too_large", "exceeds"),
        Fault::Truncated => (502, 50204, "bad_upstream_response", "truncated"),
        Fault::Reset => (502, 50204, "bad_upstream_response", "truncated"),
        Fault::Garbage => (502, 50204, "bad_upstream_response", "response header"),
        Fault::Slow => (504, 50401, "upstream_timeout", "timeout"),
    }
}

fn fault_gateway(emu: &Emulator) -> Gateway {
    let mut opts = GatewayOptions::new(emu.url());
    // Small enough that `oversized` (and `slow`) trip quickly.
    opts.extra_top = "limits:\n  max_response_body_bytes: 65536\n".into();
    let yaml = opts.yaml(any_port());
    Gateway::start_yaml(&yaml.replace("read_timeout_ms: 5000", "read_timeout_ms: 500"))
}

fn fault_headers(fault: Fault) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![(emulator::FAULT_HEADER, fault.name())];
    if fault == Fault::Slow {
        h.push((emulator::DELAY_HEADER, "2000"));
    }
    if fault == Fault::Oversized {
        h.push((emulator::SIZE_HEADER, "1000000"));
    }
    h
}

#[test]
fn every_fault_with_both_algorithms_gets_its_documented_error_and_none_of_the_upstream_body() {
    let emu = Emulator::start();
    let gw = fault_gateway(&emu);
    for key in [KEY_A, KEY_B] {
        for fault in Fault::ALL {
            let marker = format!("marker-{}-{}", fault.name(), &key[..20]);
            let auth = format!("Bearer {key}");
            let mut headers = vec![("authorization", auth.as_str())];
            headers.extend(fault_headers(fault));
            let r = gw.post("/callcentre/api/v3/ping", &headers, format!(r#"{{"data":"{marker}"}}"#).as_bytes());
            let (status, code, kind, words) = expected(fault);
            let v = assert_gateway_error(&r, status, code, kind);
            let msg = v["msg"].as_str().unwrap();
            assert!(msg.contains(words), "{}: msg {msg:?} should name {words:?}", fault.name());
            // Fail closed: not one byte of the upstream's answer reaches the caller.
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains(&marker) && !body.contains("success") && !body.contains("NOT HTTP"),
                "{}: {body}",
                fault.name()
            );
            for h in ["sign", "requestid", "uuid", "createts", "algorithm"] {
                assert!(r.header(h).is_none(), "{}: upstream header {h} leaked", fault.name());
            }
        }
    }
}

#[test]
fn a_pooled_connection_is_never_reused_after_a_fault_with_either_algorithm() {
    // After each fault, the next request on the same caller connection (and so on the
    // gateway's pooled upstream connections) must get its own answer: never the rest of
    // the faulty response, never another request's response.
    let emu = Emulator::start();
    let gw = fault_gateway(&emu);
    for key in [KEY_A, KEY_B] {
        let auth = format!("Bearer {key}");
        let mut c = Connection::open(gw.addr).unwrap();
        for (i, fault) in Fault::ALL.into_iter().enumerate() {
            let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
            headers.extend(fault_headers(fault));
            let r = c.request("POST", "/callcentre/api/v3/ping", &headers, br#"{"data":"faulty"}"#).unwrap();
            assert_eq!(r.status, expected(fault).0, "{}", fault.name());
            let data = format!("after-{i}");
            let r = c
                .request(
                    "POST",
                    "/callcentre/api/v3/ping",
                    &[("authorization", &auth)],
                    format!(r#"{{"data":"{data}"}}"#).as_bytes(),
                )
                .unwrap();
            assert_eq!(r.status, 200, "after {}: {}", fault.name(), String::from_utf8_lossy(&r.body));
            let v = r.json();
            assert_eq!(v["data"], data, "after {}", fault.name());
            assert_eq!(v["reqId"], r.header("x-request-id").unwrap());
        }
    }
}

#[test]
fn report_mode_passes_a_failing_response_and_logs_the_reason() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.verify_mode = "report";
    let gw = Gateway::start(&opts);
    let r = gw.ping_a(&[("x-emulator-fault", "bad_sign")], "reported");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], "reported");
    // The WARN line itself, for this request, with its reason (the access-log event also
    // names the reason, so a bare `contains("sign_mismatch")` would match it alone).
    let id = r.header("x-request-id").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = gw.log();
        let found = log
            .lines()
            .find(|l| l.contains(" WARN ") && l.contains("passed on because verify.mode is report"))
            .map(str::to_owned);
        if let Some(line) = found {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "no report-mode WARN line in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for field in [
        "tenant=tenant-a".to_owned(),
        format!("request_id={id}"),
        r#"reason="sign_mismatch""#.into(),
        "upstream_status=200".into(),
    ] {
        assert!(line.contains(&field), "{field} missing from the WARN line: {line}");
    }
    assert_eq!(gw.log().matches("passed on because verify.mode is report").count(), 1, "one WARN per failure");
}

#[test]
fn off_mode_skips_verification() {
    let emu = Emulator::start();
    let mut opts = GatewayOptions::new(emu.url());
    opts.verify_mode = "off";
    let gw = Gateway::start(&opts);
    let r = gw.ping_a(&[("x-emulator-fault", "wrong_uuid")], "unchecked");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], "unchecked");
    // Transport failures are still errors in off mode.
    assert_eq!(gw.ping_a(&[("x-emulator-fault", "truncated")], "x").status, 502);
}

#[test]
fn the_emulator_refuses_a_request_signed_with_the_wrong_secret() {
    // The far side really checks signatures: a gateway configured with the wrong secret
    // gets the vendor's `code != 0` answer, not a silent success.
    let emu = Emulator::with(
        EmulatorConfig {
            tenants: std::collections::HashMap::from([(
                UUID_A.to_owned(),
                nxgate_core::secret::Secret::new(b"other-secret".to_vec()),
            )]),
            ..Default::default()
        },
        None,
    );
    let mut opts = GatewayOptions::new(emu.url());
    opts.verify_mode = "off";
    let gw = Gateway::start(&opts);
    let v = gw.ping_a(&[], "x").json();
    // The vendor's "signature incorrect".
    assert_eq!(v["code"], 6, "{v}");
    assert_eq!(v["msg"], "sign mismatch");
    // In enforce mode that answer (signed under the emulator's secret) is refused too.
    let enforcing = Gateway::start(&GatewayOptions::new(emu.url()));
    assert_gateway_error(&enforcing.ping_a(&[], "x"), 502, 50202, "bad_upstream_signature");
}

// ---- HTTPS upstream ---------------------------------------------------------------------

struct TestPki {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "nxgate test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    let acceptor = emulator::tls_acceptor(chain.as_bytes(), leaf_key.serialize_pem().as_bytes()).unwrap();
    TestPki { ca_pem: ca.pem(), acceptor }
}

fn tls_emulator(p: &TestPki) -> Emulator {
    Emulator::with(EmulatorConfig { tenants: emulator_tenants(), ..Default::default() }, Some(p.acceptor.clone()))
}

/// Options for `url` trusting the test CA through `upstream.ca_file` (kept in `dir`).
fn trusting_test_ca(p: &TestPki, dir: &tempfile::TempDir, url: String) -> GatewayOptions {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let mut opts = GatewayOptions::new(url);
    opts.extra_upstream = format!("  ca_file: \"{}\"\n", ca.display());
    opts
}

#[test]
fn https_upstream_verified_against_a_ca_file_works_with_both_algorithms() {
    let p = pki();
    let emu = tls_emulator(&p);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&trusting_test_ca(&p, &dir, format!("https://localhost:{}", emu.addr.port())));
    for key in [KEY_A, KEY_B] {
        let r =
            gw.post("/callcentre/api/v3/ping", &[("authorization", &format!("Bearer {key}"))], br#"{"data":"tls"}"#);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["data"], "tls");
    }
    // Pooled TLS connections are reused across requests.
    for _ in 0..10 {
        assert_eq!(gw.ping_a(&[], "again").status, 200);
    }
}

#[test]
fn https_upstream_with_an_unknown_ca_is_502_50201() {
    let p = pki();
    let emu = tls_emulator(&p);
    let gw = Gateway::start(&GatewayOptions::new(format!("https://localhost:{}", emu.addr.port())));
    let v = assert_gateway_error(&gw.ping_a(&[], "x"), 502, 50201, "upstream_unreachable");
    // The exact message: the handshake failed (Pingora's TLSHandshakeFailure), not some
    // other connect error that happens to mention TLS.
    assert_eq!(v["msg"], "upstream unreachable: connect: TLSHandshakeFailure", "{v}");
}

#[test]
fn https_upstream_whose_certificate_names_another_host_is_refused() {
    let p = pki();
    let emu = tls_emulator(&p);
    let dir = tempfile::tempdir().unwrap();
    // The certificate is for "localhost"; connecting by IP must fail hostname checks.
    let gw = Gateway::start(&trusting_test_ca(&p, &dir, format!("https://127.0.0.1:{}", emu.addr.port())));
    assert_gateway_error(&gw.ping_a(&[], "x"), 502, 50201, "upstream_unreachable");
}
