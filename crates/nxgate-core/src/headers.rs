//! Which headers cross the gateway, in each direction.
//!
//! Requests: the caller's own signature headers are dropped (only the gateway signs),
//! as are `Authorization` (it selects the tenant and is meant for the gateway alone),
//! hop-by-hop headers (RFC 9110 §7.6.1, plus any the `Connection` header names), `Host`,
//! `Content-Length` and `Expect` (the gateway frames the upstream request itself).
//! Everything else passes unchanged, in order.
//!
//! Responses: the upstream's end-to-end headers pass, including its signature headers
//! (after verification), minus hop-by-hop and framing headers, which the gateway sets
//! for the buffered body it sends.

use http::header::{HeaderMap, HeaderName};

use crate::signing::header as sig;

/// Correlation header added to every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

const HOP_BY_HOP: [&str; 9] = [
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

/// Header names listed in `Connection` (lowercase), which are hop-by-hop for this message.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || listed.iter().any(|t| t == n)
}

/// The caller's headers that go upstream, in order (names are lowercase in `HeaderMap`).
pub fn forwardable_request_headers(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &http::HeaderValue)> {
    let listed = connection_tokens(headers);
    headers.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !(is_hop_by_hop(name, &listed)
            || sig::ALL_LOWERCASE.contains(&n)
            || matches!(n, "authorization" | "host" | "content-length" | "expect"))
    })
}

/// Headers the gateway sets on a delivered callback; a sender's own copies are dropped.
pub const CALLBACK_TENANT_HEADER: &str = "x-nxgate-tenant";

/// Set to `true` on the answer to a callback that was already delivered.
pub const CALLBACK_DUPLICATE_HEADER: &str = "x-nxgate-duplicate";

/// A verified callback's headers that go to the receiver, in order: everything but
/// hop-by-hop headers, the five signature headers (the receiver trusts the gateway, not
/// them), `Host`, `Content-Length`, `Expect` and the headers the gateway itself sets
/// (`x-nxgate-tenant`, `x-nxgate-duplicate`, `x-request-id`), so a sender cannot forge them.
pub fn forwardable_callback_headers(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &http::HeaderValue)> {
    let listed = connection_tokens(headers);
    headers.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !(is_hop_by_hop(name, &listed)
            || sig::ALL_LOWERCASE.contains(&n)
            || matches!(n, "host" | "content-length" | "expect")
            || matches!(n, CALLBACK_TENANT_HEADER | CALLBACK_DUPLICATE_HEADER | REQUEST_ID_HEADER))
    })
}

/// The upstream's headers that must not reach the caller (each name once).
/// Removing them from the upstream header, rather than copying the rest into a new one,
/// keeps the upstream's header-name spelling (`requestID`, not `requestid`).
pub fn unforwardable_response_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    let listed = connection_tokens(headers);
    headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &listed) || matches!(name.as_str(), "content-length" | REQUEST_ID_HEADER))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    fn names<'a>(it: impl Iterator<Item = (&'a HeaderName, &'a http::HeaderValue)>) -> Vec<String> {
        it.map(|(k, _)| k.to_string()).collect()
    }

    #[test]
    fn client_signature_headers_are_dropped_in_any_case() {
        let h = map(&[
            ("RequestID", "x"),
            ("UUID", "x"),
            ("createts", "1"),
            ("Sign", "x"),
            ("ALGORITHM", "MD5"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(names(forwardable_request_headers(&h)), ["content-type"]);
    }

    #[test]
    fn authorization_framing_and_hop_by_hop_headers_are_dropped() {
        let h = map(&[
            ("authorization", "Bearer k"),
            ("host", "gw"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "x"),
            ("expect", "100-continue"),
            ("x-custom", "kept"),
            ("accept", "*/*"),
        ]);
        assert_eq!(names(forwardable_request_headers(&h)), ["x-custom", "accept"]);
    }

    #[test]
    fn response_drops_framing_but_not_signature_headers() {
        let h = map(&[
            ("sign", "ABC"),
            ("requestid", "r"),
            ("content-length", "9"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("x-request-id", "spoofed"),
            ("content-type", "application/json"),
        ]);
        let dropped: Vec<String> = unforwardable_response_headers(&h).iter().map(|n| n.to_string()).collect();
        assert_eq!(dropped, ["content-length", "transfer-encoding", "connection", "x-request-id"]);
    }

    #[test]
    fn a_callback_keeps_content_type_and_loses_signature_hop_by_hop_and_gateway_headers() {
        let m = map(&[
            ("content-type", "application/json"),
            ("requestID", "r"),
            ("uuid", "u"),
            ("createTs", "1"),
            ("sign", "AB"),
            ("algorithm", "MD5"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("host", "gw"),
            ("content-length", "2"),
            ("x-nxgate-tenant", "forged"),
            ("x-request-id", "forged"),
            ("x-nxgate-duplicate", "true"),
            ("user-agent", "nxcloud"),
        ]);
        let kept: Vec<_> = forwardable_callback_headers(&m).map(|(k, _)| k.as_str()).collect();
        assert_eq!(kept, ["content-type", "user-agent"]);
    }
}
