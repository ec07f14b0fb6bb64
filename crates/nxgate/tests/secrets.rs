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
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.log();
    // The scan means something only if the log holds every request: one access line each.
    let access = log.lines().filter(|l| l.contains("nxgate::access")).count();
    assert_eq!(access, bodies.len(), "access log lines vs requests sent");
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
fn help_output_has_no_secret() {
    for args in [vec!["--help"], vec!["run", "--help"], vec!["sign", "--help"], vec!["emulator", "--help"]] {
        let out = std::process::Command::new(nxgate_bin())
            .args(&args)
            .env("NXGATE_TEST_SECRET_A", SECRET_A)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(SECRET_A) && !text.contains(nxgate_emulator::SAMPLE_SECRET), "{args:?}");
    }
}
