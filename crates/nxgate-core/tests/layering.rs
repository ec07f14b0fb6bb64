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
    let tree =
        run(Command::new(cargo).args(["tree", "--locked", "-p", "nxgate-core", "-e", "normal", "--prefix", "none"]));
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"sha2"), "cargo tree listed the core's dependencies: {crates:?}");
    let impure: Vec<&&str> = crates.iter().filter(|c| c.starts_with("pingora") || c.starts_with("tokio")).collect();
    assert!(impure.is_empty(), "nxgate-core depends on {impure:?}");
}

/// Tracked files, or `None` outside a git checkout (a source tarball), where there is
/// nothing to check.
fn tracked() -> Option<Vec<String>> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(repo()).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout).split('\0').filter(|f| !f.is_empty()).map(str::to_owned).collect()
    })
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

/// The README's Layout table names only paths that exist, and every source directory of
/// every crate (and every crate) is named by it.
#[test]
fn the_readme_layout_table_matches_the_tree() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let table = readme.split("## Layout").nth(1).expect("a Layout section").split("\n## ").next().unwrap_or("");
    let mut named = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or("");
        let mut base = String::new();
        for path in first.split('`').skip(1).step_by(2) {
            // `crates/x/src/a.rs`, `b.rs` names b.rs beside a.rs.
            let full = if path.contains('/') || base.is_empty() { path.to_owned() } else { format!("{base}{path}") };
            base = full.rfind('/').map(|i| full[..=i].to_owned()).unwrap_or_default();
            assert!(repo().join(&full).exists(), "the Layout table names {full}, which does not exist");
            named.push(full.trim_end_matches('/').to_owned());
        }
    }
    let crates = std::fs::read_dir(repo().join("crates")).expect("crates/");
    for krate in crates.map(|e| e.expect("entry").path()) {
        let name = format!("crates/{}", krate.file_name().unwrap().to_string_lossy());
        assert!(named.contains(&name), "the Layout table does not name {name}");
        let src = krate.join("src");
        for dir in
            std::fs::read_dir(&src).into_iter().flatten().map(|e| e.expect("entry").path()).filter(|p| p.is_dir())
        {
            let rel = format!("{name}/src/{}", dir.file_name().unwrap().to_string_lossy());
            let covered = named
                .iter()
                .any(|n| n == &rel || rel.starts_with(&format!("{n}/")) || n.starts_with(&format!("{rel}/")));
            assert!(covered || name.ends_with("emulator"), "the Layout table does not name {rel}");
        }
    }
}
