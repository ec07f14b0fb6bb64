//! The workspace's shape, checked: the core stays pure, the production build links no test
//! code, the gateway's modules form layers with no import circle, there is one lock file,
//! and no large file is tracked.

use nxgate_testkit::layering;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

#[test]
fn the_production_build_links_neither_the_emulator_nor_the_test_kit() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = ["tree", "--locked", "-p", "nxgate", "--no-default-features", "-e", "normal", "--prefix", "none"];
    let tree = run(Command::new(&cargo).args(args));
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"pingora"), "cargo tree listed the gateway's dependencies: {crates:?}");
    for test_code in ["nxgate-emulator", "nxgate-testkit"] {
        assert!(!crates.contains(&test_code), "the production build links {test_code}");
    }
    // The default build has them: the check above is not vacuous.
    let tree = run(Command::new(&cargo).args(["tree", "--locked", "-p", "nxgate", "-e", "normal", "--prefix", "none"]));
    assert!(tree.lines().any(|l| l.starts_with("nxgate-emulator ")), "the default build has the emulator");
}

/// The gateway's top-level modules in `lib.rs` order, lowest layer first.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).expect("src/lib.rs");
    lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';').to_owned()).collect()
}

/// `from -> to` for every import between two of the gateway's top-level modules (read by
/// `nxgate_testkit::layering`, which the emulator's layering test uses too).
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in layering::module_imports(&repo().join("src")) {
        for to in to.iter().map(|t| top(t)).filter(|t| *t != top(&from) && t != "crate") {
            edges.entry(top(&from)).or_default().insert(to);
        }
    }
    edges
}

#[test]
fn the_gateway_modules_are_layers_with_no_import_circle() {
    let layers = layers();
    assert!(layers.len() >= 6 && layers.contains(&"net".to_owned()), "lib.rs declares the layers: {layers:?}");
    let edges = module_imports();
    assert!(edges.get("cli").is_some_and(|to| to.contains("server")), "the reader found the imports: {edges:?}");
    let circles = layering::find_circles(&edges);
    assert!(circles.is_empty(), "import circles: {circles:#?}");
    // And every import points down the lib.rs order: a module uses only those declared before it.
    let rank = |m: &str| layers.iter().position(|l| l == m).unwrap_or_else(|| panic!("{m} is not declared in lib.rs"));
    let upward: Vec<String> = edges
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |to| (from, to)))
        .filter(|(from, to)| rank(to) > rank(from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(upward.is_empty(), "imports against the layer order of src/lib.rs: {upward:?}");
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
    let krates = crates.map(|e| e.expect("entry").path()).map(|p| {
        let name = format!("crates/{}", p.file_name().unwrap().to_string_lossy());
        (name, p)
    });
    // The root package (the gateway) is `src/` itself.
    for (name, krate) in krates.chain([(String::new(), repo())]) {
        assert!(name.is_empty() || named.contains(&name), "the Layout table does not name {name}");
        let src = krate.join("src");
        for dir in
            std::fs::read_dir(&src).into_iter().flatten().map(|e| e.expect("entry").path()).filter(|p| p.is_dir())
        {
            let prefix = if name.is_empty() { String::new() } else { format!("{name}/") };
            let rel = format!("{prefix}src/{}", dir.file_name().unwrap().to_string_lossy());
            let covered = named
                .iter()
                .any(|n| n == &rel || rel.starts_with(&format!("{n}/")) || n.starts_with(&format!("{rel}/")));
            assert!(covered, "the Layout table does not name {rel}");
        }
    }
}
