//! `nxgate_core::config::parse` on arbitrary text must return `Ok` or `Err`, never panic.
//!
//! Config parsing reads the files that `tenants[].secret_file` and `upstream.ca_file`
//! name. The fuzzer must not make it read a device, FIFO or /proc file (which could block
//! or never end: that is a property of the file, not a parser bug), so inputs naming
//! anything but an absent path or a small regular file are skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nxgate_core::config::file::FileConfig;
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

static ENV: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    HashMap::from([
        ("NXGATE_FUZZ_SECRET".to_owned(), "fuzz-secret".to_owned()),
        ("S".to_owned(), "s".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ])
});

/// Whether reading `p` (as `config::parse` would, relative to the cwd) is harmless.
fn safe_to_read(p: &Path) -> bool {
    let s = p.to_string_lossy();
    if ["/dev", "/proc", "/sys", "/run"].iter().any(|d| s.starts_with(d)) {
        return false;
    }
    match std::fs::metadata(p) {
        Err(_) => true,
        Ok(m) => m.is_dir() || (m.is_file() && m.len() <= 1 << 20),
    }
}

fuzz_target!(|text: &str| {
    if let Ok(file) = serde_yaml::from_str::<FileConfig>(text) {
        let files =
            file.tenants.iter().filter_map(|t| t.secret_file.as_deref()).chain(file.upstream.ca_file.as_deref());
        for p in files {
            if !safe_to_read(p) {
                return;
            }
        }
    }
    let _ = nxgate_core::config::parse(text, Path::new("fuzz.yaml"), &*ENV);
});
