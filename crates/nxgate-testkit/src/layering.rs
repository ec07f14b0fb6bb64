//! Which module of a crate imports which, read from its source: for the tests that keep the
//! gateway's and the emulator's modules in layers with no import circle.
//!
//! Each file under `src/` is a module (`src/api/tasks.rs` is `api::tasks`, `src/state.rs`
//! is `state`, `src/lib.rs` is the crate root); `A -> B` when A's code names a path into B
//! (`crate::b::..`, `super::b`, in `use` lines, `use` groups or inline; comments and string
//! literals are skipped). A parent and its own descendants are left out: a parent declares
//! its children and they may use its items, which is the module tree itself, not a circle
//! between peers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path from the crate root (empty for the root).
pub type Module = Vec<String>;

/// Every `.rs` file under `src`, with the module it is.
pub fn source_files(src: &Path) -> Vec<(Module, String)> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src").with_extension("");
            let mut module: Module = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
                module.pop();
            }
            files.push((module, std::fs::read_to_string(&path).expect("source")));
        }
    }
    files.sort();
    files
}

/// The tokens of Rust source that can spell a path: identifiers, `::` and the punctuation of
/// `use` groups and blocks. Comments and the insides of string and char literals are dropped,
/// so a URL or a doc comment naming a module is not an import.
pub fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || (next == Some('#') && raw_string_ahead(&chars, i + 1))) {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            i += 1 + hashes + 1;
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while i < chars.len() && !chars[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime, which is skipped as a name.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && next == Some(':') {
            out.push("::".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// Whether `r#..#"` starts at `at` (a raw string), not a raw identifier `r#name`.
fn raw_string_ahead(chars: &[char], at: usize) -> bool {
    chars[at..].iter().find(|&&c| c != '#') == Some(&'"')
}

/// Every path starting at `crate`, `super` or `self` in a file of module `file`, resolved to
/// the module path it names (with the item it names, if any, as the last segments).
pub fn named_paths(file: &Module, text: &str) -> Vec<Module> {
    let toks = tokens(text);
    let mut found = Vec::new();
    // Inline `mod x { .. }` blocks move `self` and `super`: (their module, the depth they close at).
    let mut scopes: Vec<(Module, usize)> = vec![(file.clone(), 0)];
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if scopes.len() > 1 && scopes.last().is_some_and(|(_, d)| *d == depth) {
                    scopes.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|b| b == "{") => {
                let mut inner = scopes.last().expect("a scope").0.clone();
                inner.push(toks[i + 1].clone());
                scopes.push((inner, depth));
            }
            "crate" | "super" | "self"
                if toks.get(i + 1).is_some_and(|s| s == "::") && (i == 0 || toks[i - 1] != "::") =>
            {
                let here = &scopes.last().expect("a scope").0;
                let mut base: Module = if t == "crate" { Vec::new() } else { here.clone() };
                let mut j = i;
                if t == "super" {
                    while toks.get(j) == Some(&"super".to_owned()) && toks.get(j + 1).is_some_and(|s| s == "::") {
                        base.pop();
                        j += 2;
                    }
                } else {
                    j += 2;
                }
                i = read_tree(&toks, j, base, &mut found);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Reads a path (tree) from `toks[at..]` below `prefix`: `a::b`, `a::{b, c::d}`, `*`.
/// Pushes each full path; returns the index after it.
fn read_tree(toks: &[String], mut at: usize, mut prefix: Module, found: &mut Vec<Module>) -> usize {
    loop {
        match toks.get(at).map(String::as_str) {
            Some("{") => {
                at += 1;
                while toks.get(at).is_some_and(|t| t != "}") {
                    at = read_tree(toks, at, prefix.clone(), found);
                    if toks.get(at).is_some_and(|t| t == ",") {
                        at += 1;
                    }
                }
                return at + 1;
            }
            Some(name) if name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') => {
                if name != "self" {
                    prefix.push(name.to_owned());
                }
                at += 1;
                if toks.get(at).is_some_and(|t| t == "::") {
                    at += 1;
                    continue;
                }
                // `x as y` renames; the path is `x`.
                if toks.get(at).is_some_and(|t| t == "as") {
                    at += 2;
                }
                found.push(prefix);
                return at;
            }
            _ => {
                found.push(prefix);
                return at;
            }
        }
    }
}

/// `from -> to` for every path in the crate under `src` that names a module, neither an
/// ancestor of the other. Modules are named `a::b`; the crate root is `crate`.
pub fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = source_files(src);
    let modules: Vec<&Module> = files.iter().map(|(m, _)| m).collect();
    let name = |m: &Module| if m.is_empty() { "crate".to_owned() } else { m.join("::") };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, text) in &files {
        edges.entry(name(from)).or_default();
        for path in named_paths(from, text) {
            // The longest prefix that is a file: `crate::state::task_status::PENDING` is in `state`.
            let Some(to) = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(&p)) else {
                continue;
            };
            if !to.starts_with(from) && !from.starts_with(&to) {
                edges.entry(name(from)).or_default().insert(name(&to));
            }
        }
    }
    edges
}

/// Every import circle a depth-first search meets (one per edge that closes one), as
/// `a -> b -> a`.
pub fn find_circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            circles.push(format!("{} -> {m}", path[at..].join(" -> ")));
            return;
        }
        path.push(m);
        for to in edges.get(m).into_iter().flatten() {
            visit(to, edges, path, done, circles);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    for m in edges.keys() {
        visit(m, edges, &mut Vec::new(), &mut done, &mut circles);
    }
    circles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_reader_sees_every_form_of_import() {
        let text = r#"
            use crate::state::World;
            use crate::{auth::Refusal, api::{fields::Obj, orders}};
            use super::{fields_of, tasks as t};
            // use crate::commented::Out;
            let url = "crate::quoted::Out";
            let c = '"'; let s: &'static str = r"crate::raw::Out";
            let x = crate::sim::advance_to(e, 1);
            mod tests { use super::*; fn f() { super::super::lists::g(); } }
            let y = nxgate_core::crate_like::z;
        "#;
        let file = vec!["api".to_owned(), "orders".to_owned()];
        let paths: Vec<String> = named_paths(&file, text).iter().map(|p| p.join("::")).collect();
        assert_eq!(
            paths,
            [
                "state::World",
                "auth::Refusal",
                "api::fields::Obj",
                "api::orders",
                "api::fields_of",
                "api::tasks",
                "sim::advance_to",
                "api::orders",
                "api::lists::g",
            ]
        );
    }

    #[test]
    fn the_circle_finder_finds_a_long_circle() {
        let edges: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
            .into_iter()
            .map(|(f, t)| (f.to_owned(), BTreeSet::from([t.to_owned()])))
            .collect();
        assert_eq!(find_circles(&edges), ["a -> b -> c -> a"]);
    }
}
