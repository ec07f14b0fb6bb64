//! One secret-file reader: `nxgate sign` and the running gateway must sign with the same
//! key from the same file, whatever newline the file ends in.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

use nxgate_testkit::refsign::{self, Digest};

/// Runs `nxgate sign` with the secret from `file` over `body`; returns its `sign:` value.
fn cli_sign(file: &std::path::Path, request_id: &str, create_ts: &str, body: &[u8]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nxgate"))
        .args(["sign", "--uuid", UUID_A, "--algorithm", "MD5", "--request-id", request_id, "--create-ts", create_ts])
        .arg("--secret-file")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nxgate sign failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("sign: "))
        .unwrap_or_else(|| panic!("no sign line in {text}"))
        .to_owned()
}

#[test]
fn nxgate_sign_and_the_gateway_sign_alike_from_a_secret_file_ending_in_crlf() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.secret");
    std::fs::write(&file, format!("{SECRET_A}\r\n")).unwrap();
    let yaml = GatewayOptions::new(emu.url())
        .yaml(any_port())
        .replace("secret_env: NXGATE_TEST_SECRET_A", &format!("secret_file: \"{}\"", file.display()));
    let gw = Gateway::start_yaml(&yaml);

    // What the upstream saw: the emulator accepted it (it knows SECRET_A without the CRLF).
    let body = br#"{"hello":"crlf"}"#;
    let seen = Echo::of(&gw.post_a("/callcentre/x", body));
    assert_eq!(seen.body(), body);
    let (rid, ts, sign) =
        (seen.header("requestID").unwrap(), seen.header("createTs").unwrap(), seen.header("sign").unwrap());

    // The independent signer says the key is SECRET_A, CRLF stripped.
    assert_eq!(sign, refsign::sign(Digest::Md5, SECRET_A.as_bytes(), body, &ts, &rid, UUID_A));
    // And `nxgate sign` reads the same file the same way.
    assert_eq!(cli_sign(&file, &rid, &ts, body), sign);
}

#[test]
fn nxgate_sign_refuses_the_files_the_gateway_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two-newlines.secret");
    std::fs::write(&two, format!("{SECRET_A}\n\n")).unwrap();
    for (file, why) in
        [(two.as_path(), "more than one newline"), (std::path::Path::new("/dev/zero"), "not a regular file")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_nxgate"))
            .args(["sign", "--uuid", UUID_A])
            .arg("--secret-file")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{file:?}: {err}");
        assert!(!err.contains(SECRET_A));
    }
}
