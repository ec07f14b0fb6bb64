//! Secrets never reach logs, error bodies or `--help`.
//!
//! Every gateway the suite starts has its log scanned on drop (see `common`); this test
//! adds the most verbose run: `trace` for everything, Pingora included, through every
//! success and failure path, with the secrets and keys present in requests too.

mod common;

use common::*;
use nxgate_emulator::Fault;

#[test]
fn a_trace_level_run_through_every_path_logs_no_secret_or_client_key() {
    let emu = Emulator::start();
    std::env::set_var("NXGATE_TEST_LOG", "trace");
    let gw = Gateway::start(&GatewayOptions::new(emu.url()));
    std::env::remove_var("NXGATE_TEST_LOG");
    let mut bodies = Vec::new();
    for key in [KEY_A, KEY_B, "wrong-key"] {
        let auth = format!("Bearer {key}");
        bodies.push(gw.post("/callcentre/api/v3/ping", &[("authorization", &auth)], b"{}").body);
        bodies.push(gw.post("/outside", &[("authorization", &auth)], b"{}").body);
        for fault in Fault::ALL.into_iter().filter(|f| *f != Fault::Slow) {
            bodies.push(
                gw.post(
                    "/callcentre/api/v3/ping",
                    &[("authorization", &auth), ("x-emulator-fault", fault.name())],
                    b"{}",
                )
                .body,
            );
        }
    }
    // A caller that (wrongly) sends a secret as a header value gets it dropped, not logged.
    bodies.push(
        gw.post("/callcentre/x", &[("authorization", &format!("Bearer {KEY_A}")), ("sign", SECRET_A)], b"{}").body,
    );
    // The scan means something only if the log holds every request: one access line each
    // (written after the answer, so wait for them rather than sleep).
    let access = |log: &str| log.lines().filter(|l| l.contains("nxgate::access")).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while access(&gw.log()) < bodies.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = gw.log();
    assert_eq!(access(&log), bodies.len(), "access log lines vs requests sent");
    assert!(log.contains("DEBUG"), "the run was not verbose");
    assert_logs_clean(&log, &gw.log_path);
    for b in bodies {
        let text = String::from_utf8_lossy(&b);
        for s in NEVER_LOGGED {
            assert!(!text.contains(s), "a response body contains a secret or key");
        }
    }
}

#[test]
fn help_and_usage_errors_print_no_secret_even_when_the_command_line_names_its_variable() {
    // No argument of the CLI takes its value from the environment (clap's `env`), so a
    // variable merely set in the environment cannot reach `--help`. What can: `sign`'s
    // `--secret-env NAME`, which reads the variable. So every run names the secret's
    // variable on its command line, with the variable set, and both output streams are
    // checked; the last run proves the variable really is read (it signs with it).
    let named = ["--uuid", UUID_A, "--secret-env", "NXGATE_TEST_SECRET_A"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["run", "--help"],
        vec!["emulator", "--help"],
        [&["sign"][..], &named, &["--help"]].concat(),
        [&["sign"][..], &named, &["--algorithm", "BOGUS"]].concat(),
        [&["sign"][..], &named, &["--create-ts", "not-a-number"]].concat(),
        [&["sign"][..], &named, &["--request-id", "0123456789abcdef0123456789abcdef", "--create-ts", "1732406400"]]
            .concat(),
    ];
    for args in &runs {
        let mut child = std::process::Command::new(nxgate_bin())
            .args(args)
            .env("NXGATE_TEST_SECRET_A", SECRET_A)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(b"{}");
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let is_error = args.contains(&"BOGUS") || args.contains(&"not-a-number");
        assert_eq!(out.status.success(), !is_error, "{args:?}: {text}");
        assert!(!text.contains(SECRET_A) && !text.contains(nxgate_emulator::SAMPLE_SECRET), "{args:?}: {text}");
    }
    // The last run signed with the variable's value: the reference signer agrees.
    let out = std::process::Command::new(nxgate_bin())
        .args(runs.last().unwrap())
        .env("NXGATE_TEST_SECRET_A", SECRET_A)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let expected = nxgate_testkit::refsign::sign(
        nxgate_testkit::refsign::Digest::Md5,
        SECRET_A.as_bytes(),
        b"",
        "1732406400",
        "0123456789abcdef0123456789abcdef",
        UUID_A,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("sign: {expected}")), "the secret was not read from the variable: {text}");
}
