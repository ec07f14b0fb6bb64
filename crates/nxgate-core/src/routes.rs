//! Which request paths may be forwarded.
//!
//! A prefix check on the raw path is only safe if the path cannot climb out of the prefix
//! once the upstream normalizes it. So before matching, any path that holds a dot
//! segment (`.`/`..`, also percent-encoded, also with `;parameters` as servlet containers
//! read them), an encoded slash or backslash, a raw backslash, or a control byte (raw or
//! percent-encoded: Pingora percent-encodes raw ones before nxgate sees the path) is
//! refused outright: NXCloud's API has no use for them and a gateway that forwards them
//! cannot promise what the upstream will resolve them to.

/// Whether `path` (the URI path, without query) may be forwarded under `allow_prefixes`.
pub fn is_allowed(path: &str, allow_prefixes: &[String]) -> bool {
    is_plain(path) && allow_prefixes.iter().any(|p| path.starts_with(p.as_str()))
}

/// Whether the request to `target` (a path, with or without its `?query`) is listed in
/// `idempotent_paths`, so that it may be sent again after it was written upstream (see
/// `replay`). The path must equal a listed one exactly: the query never counts, because
/// the same endpoint is just as idempotent (or not) with any parameters.
pub fn is_idempotent(target: &str, idempotent_paths: &[String]) -> bool {
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    idempotent_paths.iter().any(|p| p == path)
}

// Runs on every request, so it works on bytes and allocates nothing; the reference
// implementation in the tests (the former string version) pins that the rules are the same.
fn is_plain(path: &str) -> bool {
    let p = path.as_bytes();
    if p.first() != Some(&b'/') || p.iter().any(|&b| b.is_ascii_control() || b == b'\\') {
        return false;
    }
    !has_forbidden_escape(p) && p.split(|&b| b == b'/').all(|segment| !is_dot_segment(segment))
}

/// Whether `path` holds, in any letter case, `%2f` or `%5c` (an encoded slash or
/// backslash) or `%XX` for a control byte (0x00-0x1F or 0x7F).
fn has_forbidden_escape(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        if w[0] != b'%' {
            return false;
        }
        let (hi, lo) = (w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase());
        if (hi, lo) == (b'2', b'f') || (hi, lo) == (b'5', b'c') {
            return true;
        }
        let Some(lo) = hex_value(lo) else { return false };
        match (hi, hex_value(hi)) {
            (_, Some(hi)) => hi < 2 || (hi == 7 && lo == 0xf),
            // `%+X`: the former check parsed the two bytes with `u8::from_str_radix`, which
            // takes a leading `+`, so these malformed escapes read as 0x0-0xF and were
            // refused. Kept: refusing a malformed escape costs no legitimate caller anything.
            (b'+', None) => true,
            _ => false,
        }
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Whether a path segment names `.` or `..`, with any dot spelled `%2e` in any case, and
/// with anything after a `;` ignored (`..;x` is `..` to servers that treat `;` as a path
/// parameter), or after `%3b` (`..%3bx`, for servers that decode before splitting it off).
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() && rest[0] != b';' && !is_escape(rest, b'3', b'b') {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if is_escape(rest, b'2', b'e') {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots == 1 || dots == 2
}

/// Whether `s` starts with `%` `hi` `lo`, the last in either case.
fn is_escape(s: &[u8], hi: u8, lo: u8) -> bool {
    s.len() >= 3 && s[0] == b'%' && s[1] == hi && s[2].eq_ignore_ascii_case(&lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["/callcentre/".into()]
    }

    #[test]
    fn idempotent_paths_match_the_whole_path_without_the_query() {
        let listed = vec!["/callcentre/api/v3/ping".to_owned(), "/callcentre/api/v3/listTask".to_owned()];
        assert!(is_idempotent("/callcentre/api/v3/ping", &listed));
        assert!(is_idempotent("/callcentre/api/v3/listTask?page=2&size=10", &listed));
        assert!(is_idempotent("/callcentre/api/v3/ping?", &listed));
        // Not a prefix match, and letter case counts (the upstream's paths are case-sensitive).
        assert!(!is_idempotent("/callcentre/api/v3/ping/x", &listed));
        assert!(!is_idempotent("/callcentre/api/v3/pin", &listed));
        assert!(!is_idempotent("/callcentre/api/v3/PING", &listed));
        assert!(!is_idempotent("/callcentre/api/v3/createAndCall?x=/callcentre/api/v3/ping", &listed));
        assert!(!is_idempotent("/callcentre/api/v3/ping", &[]));
    }

    #[test]
    fn paths_under_an_allowed_prefix_pass() {
        assert!(is_allowed("/callcentre/api/v3/ping", &allow()));
        assert!(is_allowed("/callcentre/", &allow()));
        assert!(is_allowed("/callcentre/a.b/c..d/%41", &allow()));
        assert!(is_allowed("/callcentre/x%20y;v=1/%7E", &allow()));
    }

    #[test]
    fn paths_outside_every_prefix_are_refused() {
        for p in ["/", "/callcentre", "/admin", "/callcentrex/", "callcentre/", "", "*"] {
            assert!(!is_allowed(p, &allow()), "{p}");
        }
    }

    #[test]
    fn traversal_out_of_a_prefix_is_refused_in_every_spelling() {
        for p in [
            "/callcentre/../admin",
            "/callcentre/./api",
            "/callcentre/%2e%2e/admin",
            "/callcentre/%2E%2E/admin",
            "/callcentre/.%2e/admin",
            "/callcentre/%2e/admin",
            "/callcentre/..",
            "/callcentre/..%2fadmin",
            "/callcentre/x%2F..%2F..%2Fadmin",
            "/callcentre/..\\admin",
            "/callcentre/%5c..%5cadmin",
            "/callcentre/a%00b",
            "/callcentre/a\tb",
            "/callcentre/x%01",
            "/callcentre/x%1F",
            "/callcentre/x%7f",
            "/callcentre/..;/admin",
            "/callcentre/.;x/admin",
            "/callcentre/%2e%2e;jsessionid=1/admin",
            "/callcentre/%2E/admin",
            "/callcentre/%2e%2E/admin",
            "/callcentre/.%2E/admin",
            "/callcentre/%2E./admin",
            "/callcentre/%2e%2E;x/admin",
            "/callcentre/.;/admin",
            "/callcentre/..;",
            "/callcentre/a/../../admin",
            "/callcentre/x%2fy",
            "/callcentre/x%5Cy",
            "/callcentre/x%00",
            "/callcentre/x%0a",
            "/callcentre/x%0A",
            "/callcentre/x%7F",
            "/callcentre/x%1f%20",
            "/callcentre/x\x7f",
            "/callcentre/x\ny",
            "/callcentre/%%01",
            "/callcentre/x%+1",
            "/callcentre/%2e%2e%3b/x",
            "/callcentre/..%3B/admin",
            "/callcentre/.%3bx/admin",
            "/callcentre/%2E%2E%3Bjsessionid=1/admin",
        ] {
            assert!(!is_allowed(p, &allow()), "{p}");
        }
    }

    #[test]
    fn names_that_only_look_like_dot_segments_or_escapes_pass() {
        for p in [
            "/callcentre/...",
            "/callcentre/%2e%2e%2e/x",
            "/callcentre/.x/x..",
            "/callcentre/%2ex",
            "/callcentre/x;..",
            "/callcentre/x%2",
            "/callcentre/x%",
            "/callcentre/x%zz",
            "/callcentre/x%2g",
            "/callcentre/x%20",
            "/callcentre/x%7e",
            "/callcentre/x%80",
            "/callcentre/x%-1",
            "/callcentre/%e2%80%a8",
            "/callcentre/caf\u{e9}",
            "/callcentre/x%3b..",
            "/callcentre/%3b../x",
        ] {
            assert!(is_allowed(p, &allow()), "{p}");
        }
    }

    /// The same rules on strings, as first written; `is_plain` must agree with it everywhere.
    fn is_plain_reference(path: &str) -> bool {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
            return false;
        }
        let encoded_control = path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && std::str::from_utf8(&w[1..])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .is_some_and(|b| b < 0x20 || b == 0x7f)
        });
        !encoded_control
            && path.split('/').all(|segment| {
                let lower = segment.to_ascii_lowercase();
                let decoded_dots = lower.replace("%2e", ".").replace("%3b", ";");
                let name = decoded_dots.split(';').next().unwrap_or("");
                name != "." && name != ".." && !lower.contains("%2f") && !lower.contains("%5c")
            })
    }

    #[test]
    fn byte_rules_agree_with_the_string_rules_on_every_short_path() {
        const TOKENS: [&str; 25] = [
            "/", ".", "%", "2", "e", "E", "f", "5", "c", "C", ";", "a", "0", "1", "7", "+", "-", "\\", "\t", "\u{e9}",
            "%2e", "%2E", "%5c", "%7f", "%3b",
        ];
        let mut checked = 0;
        let mut path = String::new();
        let mut idx = [0usize; 4];
        for len in 0..=4 {
            idx[..len].fill(0);
            loop {
                for lead in ["/", ""] {
                    path.clear();
                    path.push_str(lead);
                    for &i in &idx[..len] {
                        path.push_str(TOKENS[i]);
                    }
                    assert_eq!(is_plain(&path), is_plain_reference(&path), "{path:?}");
                    checked += 1;
                }
                // Next combination, like an odometer.
                let mut k = 0;
                while k < len {
                    idx[k] += 1;
                    if idx[k] < TOKENS.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
        assert!(checked > 600_000, "{checked}");
    }
}
