//! Which request paths may be forwarded.
//!
//! A prefix check on the raw path is only safe if the path cannot climb out of the prefix
//! once the upstream normalizes it. So before matching, any path that holds a dot
//! segment (`.`/`..`, also percent-encoded), an encoded slash or backslash, a raw
//! backslash, or a control byte is refused outright: NXCloud's API has no use for them
//! and a gateway that forwards them cannot promise what the upstream will resolve them to.

/// Whether `path` (the URI path, without query) may be forwarded under `allow_prefixes`.
pub fn is_allowed(path: &str, allow_prefixes: &[String]) -> bool {
    is_plain(path) && allow_prefixes.iter().any(|p| path.starts_with(p.as_str()))
}

fn is_plain(path: &str) -> bool {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
        return false;
    }
    path.split('/').all(|segment| {
        let lower = segment.to_ascii_lowercase();
        let decoded_dots = lower.replace("%2e", ".");
        decoded_dots != "." && decoded_dots != ".." && !lower.contains("%2f") && !lower.contains("%5c")
            && !lower.contains("%00")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["/callcentre/".into()]
    }

    #[test]
    fn paths_under_an_allowed_prefix_pass() {
        assert!(is_allowed("/callcentre/api/v3/ping", &allow()));
        assert!(is_allowed("/callcentre/", &allow()));
        assert!(is_allowed("/callcentre/a.b/c..d/%41", &allow()));
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
        ] {
            assert!(!is_allowed(p, &allow()), "{p}");
        }
    }
}
