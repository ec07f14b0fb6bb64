//! The workspace's shape, checked: the core stays pure, there is one lock file, and no
//! large file is tracked.

use std::process::Command;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.current_dir(repo()).output().expect("command runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn the_core_depends_on_no_async_runtime_and_no_pingora() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = run(Command::new(cargo).args(["tree", "--locked", "-p", "nxgate-core", "-e", "normal", "--prefix", "none"]));
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"sha2"), "cargo tree listed the core's dependencies: {crates:?}");
    let impure: Vec<&&str> = crates.iter().filter(|c| c.starts_with("pingora") || c.starts_with("tokio")).collect();
    assert!(impure.is_empty(), "nxgate-core depends on {impure:?}");
}

/// Tracked files, or `None` outside a git checkout (a source tarball), where there is
/// nothing to check.
fn tracked() -> Option<Vec<String>> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(repo()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).split('\0').filter(|f| !f.is_empty()).map(str::to_owned).collect())
}

#[test]
fn one_lock_file_and_no_large_tracked_file() {
    let Some(files) = tracked() else {
        eprintln!("NOTE: not a git checkout; nothing to check");
        return;
    };
    let locks: Vec<&String> = files.iter().filter(|f| f.ends_with("Cargo.lock")).collect();
    assert_eq!(locks, ["Cargo.lock"], "one lock file for the whole workspace");
    for f in &files {
        let Ok(meta) = std::fs::metadata(repo().join(f)) else { continue }; // deleted, not yet committed
        let allowed = f.ends_with("Cargo.lock") || f.starts_with("tests/data/");
        assert!(allowed || meta.len() <= 200_000, "{f} is {} bytes (over 200 KB)", meta.len());
    }
}
