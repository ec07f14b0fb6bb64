//! What crosses the gateway, on arbitrary input:
//! - `headers::forwardable_request_headers` never forwards a signature header,
//!   `Authorization`, `Host`, framing or hop-by-hop headers (including those `Connection`
//!   names), and forwards every other header unchanged;
//! - `routes::is_allowed` never allows a path that, percent-decoded once, holds a `.` or
//!   `..` segment, a backslash, a NUL or a new `/`, or that is outside every prefix;
//! - `tenants::TenantDirectory::select` picks a tenant only for exactly one
//!   `Bearer <key>` whose key is that tenant's, the default only when no header is sent.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nxgate_core::tenants::TenantDirectory;
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

/// Client keys of the two tenants (index 0, 1) of the test directory.
const KEYS: [[&str; 2]; 2] = [["key-a-1", "key-a-2"], ["key-b-1", "tok!~b"]];

/// Header names the gateway must never forward (besides those `Connection` lists).
const NEVER: [&str; 18] = [
    "requestid",
    "uuid",
    "createts",
    "sign",
    "algorithm",
    "authorization",
    "host",
    "content-length",
    "expect",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fn directory(default_tenant: bool) -> TenantDirectory {
    let digest = |k: &str| nxgate_core::tenants::client_key_digest_hex(k.as_bytes());
    let yaml = format!(
        r#"listen: ["127.0.0.1:1"]
upstream:
  url: "https://nxbot.example"
{default}tenants:
  - name: a
    uuid: "uuid-a"
    secret_env: S
    client_keys_sha256: ["{}", "{}"]
  - name: b
    uuid: "uuid-b"
    secret_env: S
    algorithm: "SHA256"
    client_keys_sha256: ["{}", "{}"]
"#,
        digest(KEYS[0][0]),
        digest(KEYS[0][1]),
        digest(KEYS[1][0]),
        digest(KEYS[1][1]),
        default = if default_tenant { "default_tenant: b\n" } else { "" },
    );
    let env = HashMap::from([("S".to_owned(), "secret".to_owned())]);
    let cfg = nxgate_core::config::parse(&yaml, Path::new("fuzz.yaml"), &env).expect("fixed fuzz config is valid");
    TenantDirectory::new(cfg.tenants, cfg.default_tenant)
}

static WITH_DEFAULT: LazyLock<TenantDirectory> = LazyLock::new(|| directory(true));
static WITHOUT_DEFAULT: LazyLock<TenantDirectory> = LazyLock::new(|| directory(false));

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    /// One of the names the gateway must drop, with some letters uppercased.
    Never {
        which: u8,
        upper_mask: u32,
    },
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Auth<'a> {
    /// `<scheme spelling><separator><key>`: near-valid credentials.
    Key {
        tenant: bool,
        second: bool,
        scheme: u8,
        sep: u8,
        suffix: &'a [u8],
    },
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    headers: Vec<(Name<'a>, &'a [u8])>,
    /// Names for `Connection` to list, comma-joined.
    connection: Option<&'a str>,
    path: &'a str,
    auth: Vec<Auth<'a>>,
    default_tenant: bool,
}

fn name_bytes(n: &Name<'_>) -> Vec<u8> {
    match n {
        Name::Never { which, upper_mask } => NEVER[*which as usize % NEVER.len()]
            .bytes()
            .enumerate()
            .map(|(i, b)| if upper_mask >> (i % 32) & 1 == 1 { b.to_ascii_uppercase() } else { b })
            .collect(),
        Name::Raw(b) => b.to_vec(),
    }
}

fn auth_bytes(a: &Auth<'_>) -> Vec<u8> {
    match a {
        Auth::Key { tenant, second, scheme, sep, suffix } => {
            let schemes = ["Bearer", "bearer", "BEARER", "Basic", "Bearer:", ""];
            let seps = [" ", "  ", "\t", "", " \t "];
            let key = KEYS[*tenant as usize][*second as usize];
            let mut v =
                format!("{}{}{key}", schemes[*scheme as usize % schemes.len()], seps[*sep as usize % seps.len()])
                    .into_bytes();
            v.extend_from_slice(suffix);
            v
        }
        Auth::Raw(b) => b.to_vec(),
    }
}

fn check_headers(input: &Input<'_>) {
    let mut map = HeaderMap::new();
    for (n, v) in &input.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&name_bytes(n)), HeaderValue::from_bytes(v)) {
            map.append(name, value);
        }
    }
    if let Some(c) = input.connection.and_then(|c| HeaderValue::from_str(c).ok()) {
        map.append(http::header::CONNECTION, c);
    }
    let listed: Vec<String> = map
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let dropped = |name: &HeaderName| NEVER.contains(&name.as_str()) || listed.iter().any(|t| t == name.as_str());

    let forwarded: Vec<(&HeaderName, &HeaderValue)> = nxgate_core::headers::forwardable_request_headers(&map).collect();
    for (name, _) in &forwarded {
        assert!(!dropped(name), "forwarded {name}");
    }
    // Everything else passes, in order, values unchanged.
    let expected: Vec<(&HeaderName, &HeaderValue)> = map.iter().filter(|(n, _)| !dropped(n)).collect();
    assert_eq!(forwarded, expected);
}

/// `path` percent-decoded once (invalid escapes kept as they are).
fn percent_decode(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check_route(path: &str) {
    for prefixes in [vec!["/callcentre/".to_owned()], vec!["/callcentre/".to_owned(), "/a/".to_owned()]] {
        if !nxgate_core::routes::is_allowed(path, &prefixes) {
            continue;
        }
        assert!(prefixes.iter().any(|p| path.starts_with(p.as_str())), "{path:?} allowed outside the prefixes");
        let decoded = percent_decode(path);
        assert_eq!(
            decoded.iter().filter(|&&b| b == b'/').count(),
            path.bytes().filter(|&b| b == b'/').count(),
            "{path:?} allowed with an encoded slash"
        );
        assert!(!decoded.contains(&b'\\') && !decoded.contains(&0), "{path:?} allowed with a backslash or NUL");
        assert!(!path.bytes().any(|b| b.is_ascii_control()), "{path:?} allowed with a raw control byte");
        for segment in decoded.split(|&b| b == b'/') {
            assert!(segment != b"." && segment != b"..", "{path:?} allowed with a dot segment");
        }
    }
}

fn check_tenant(input: &Input<'_>) {
    let dir: &TenantDirectory = if input.default_tenant { &WITH_DEFAULT } else { &WITHOUT_DEFAULT };
    let values: Vec<Vec<u8>> = input.auth.iter().map(auth_bytes).collect();
    let picked: Option<String> = dir.select(values.iter().map(|v| v.as_slice())).ok().map(|t| t.name.clone());
    match (values.as_slice(), &picked) {
        ([], _) => assert_eq!(picked, input.default_tenant.then(|| "b".to_owned()), "no Authorization"),
        ([one], Some(name)) => {
            // Only "bearer" (any case), whitespace, then exactly one of that tenant's keys.
            assert!(one.len() > 6 && one[..6].eq_ignore_ascii_case(b"bearer"), "{one:?} selected {name}");
            let rest = &one[6..];
            assert!(rest.first().is_some_and(u8::is_ascii_whitespace), "{one:?} selected {name}");
            let key = std::str::from_utf8(rest.trim_ascii()).expect("keys are ASCII");
            let idx = if name == "a" { 0 } else { 1 };
            assert!(KEYS[idx].contains(&key), "{one:?} selected {name}");
        }
        ([_], None) => {}
        (_, picked) => assert!(picked.is_none(), "two Authorization headers were accepted"),
    }
    // Completeness: a well-formed credential for a known key selects its tenant (checked
    // when the fuzzer hands us exactly that credential, so it costs nothing otherwise).
    if let [Auth::Key { tenant, second, scheme: 0, sep: 0, suffix: [] }] = input.auth.as_slice() {
        let key = KEYS[*tenant as usize][*second as usize];
        assert_eq!(picked.as_deref(), Some(["a", "b"][*tenant as usize]), "Bearer {key}");
    }
}

fuzz_target!(|input: Input<'_>| {
    check_headers(&input);
    check_route(input.path);
    check_tenant(&input);
});
