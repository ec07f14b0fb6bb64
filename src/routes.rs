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

fn is_plain(path: &str) -> bool {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b'\\') {
        return false;
    }
    !has_encoded_control_byte(path)
        && path.split('/').all(|segment| {
            let lower = segment.to_ascii_lowercase();
            let decoded_dots = lower.replace("%2e", ".");
            // `..;x` is `..` to servers that treat `;` as a path parameter.
            let name = decoded_dots.split(';').next().unwrap_or("");
            name != "." && name != ".." && !lower.contains("%2f") && !lower.contains("%5c")
        })
}

/// Whether `path` holds `%XX` for a control byte (0x00-0x1F or 0x7F).
fn has_encoded_control_byte(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && std::str::from_utf8(&w[1..])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|b| b < 0x20 || b == 0x7f)
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
        ] {
            assert!(!is_allowed(p, &allow()), "{p}");
        }
    }
}
