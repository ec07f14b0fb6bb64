//! `Idempotency-Key` (the IETF httpapi draft "The Idempotency-Key HTTP Header Field"):
//! reading the key a caller sent, and the fingerprint of the request it names.
//!
//! The key is scoped per tenant by the gateway's store; here it is only checked: 1 to 255
//! visible ASCII characters, or the draft's sf-string form (`"..."`, which names the same
//! key as its contents). The fingerprint is what makes a retry "the same request": the
//! method, the path with its query and the exact body bytes (after gzip decoding), hashed
//! with a separator no part can forge.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::errors::GatewayError;

/// The header.
pub const HEADER: &str = "idempotency-key";

/// The header that marks a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Longest key.
pub const MAX_KEY_LEN: usize = 255;

/// The key the caller sent, if any.
pub fn key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(GatewayError::IdempotencyKeyInvalid);
    }
    let text = value.to_str().map_err(|_| GatewayError::IdempotencyKeyInvalid)?;
    let key = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        // An sf-string: the characters between the quotes, none of them a quote or a
        // backslash (escapes would give one key two spellings).
        Some(inner) if !inner.contains(['"', '\\']) => inner,
        Some(_) => return Err(GatewayError::IdempotencyKeyInvalid),
        None => text,
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GatewayError::IdempotencyKeyInvalid);
    }
    Ok(Some(key))
}

/// The request's fingerprint: SHA-256 over method, target (path and query) and body, as
/// 64 hex digits.
pub fn fingerprint(method: &str, target: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // Lengths first, so no two (method, target, body) triples share the hashed bytes.
    for part in [method.as_bytes(), target.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, http::HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters_or_a_quoted_string_of_them() {
        assert_eq!(key(&HeaderMap::new()), Ok(None));
        assert_eq!(key(&with(&[b"abc-123"])), Ok(Some("abc-123")));
        assert_eq!(key(&with(&[b"\"abc-123\""])), Ok(Some("abc-123")), "the sf-string form names the same key");
        assert_eq!(key(&with(&[b"\"open"])), Ok(Some("\"open")), "unquoted: a quote is a visible character");
        let longest = "k".repeat(255);
        assert_eq!(key(&with(&[longest.as_bytes()])), Ok(Some(longest.as_str())));
        for bad in [&b""[..], b"\"\"", &[b'k'; 256], b"caf\xc3\xa9", b"a\tb", b"\"a\\\"b\"", b"a b", b"\"a b\""] {
            assert_eq!(
                key(&with(&[bad])),
                Err(GatewayError::IdempotencyKeyInvalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(key(&with(&[b"a", b"a"])), Err(GatewayError::IdempotencyKeyInvalid), "sent twice");
    }

    #[test]
    fn the_fingerprint_separates_method_target_and_body() {
        let f = fingerprint("POST", "/p?q=1", b"{}");
        assert_eq!(f.len(), 64);
        assert_eq!(f, fingerprint("POST", "/p?q=1", b"{}"));
        assert_ne!(f, fingerprint("POST", "/p?q=2", b"{}"));
        assert_ne!(f, fingerprint("POST", "/p?q=1", b"{ }"));
        assert_ne!(f, fingerprint("PUT", "/p?q=1", b"{}"));
        assert_ne!(fingerprint("POST", "/a", b"b"), fingerprint("POST", "/ab", b""));
    }
}
