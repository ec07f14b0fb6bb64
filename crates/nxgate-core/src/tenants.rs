//! Choosing the tenant a caller is entitled to.
//!
//! Callers prove who they are with `Authorization: Bearer <client key>`. The gateway
//! stores only sha256 digests of keys, so a leaked config leaks no key. Lookup hashes the
//! presented key and compares it with every stored digest in constant time, with no early
//! exit: how long a lookup takes says nothing about how close a guess was or where it
//! matched. Callers that present no key get `default_tenant`, if one is configured
//! (the sidecar shape); otherwise they are refused.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::Tenant;
use crate::errors::GatewayError;

/// All tenants of one config generation, indexed for lookup.
#[derive(Debug)]
pub struct TenantDirectory {
    tenants: Vec<Arc<Tenant>>,
    /// (digest, index into `tenants`), flattened across tenants.
    keys: Vec<([u8; 32], u32)>,
    default: Option<usize>,
    /// uuid → index into `tenants` (uuids are unique and not secret).
    uuids: std::collections::HashMap<String, usize>,
}

impl TenantDirectory {
    /// Indexes `tenants`; `default` is an index into it.
    pub fn new(tenants: Vec<Tenant>, default: Option<usize>) -> Self {
        let keys = tenants
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.client_key_hashes.iter().map(move |h| (*h, i as u32)))
            .collect();
        let uuids = tenants.iter().enumerate().map(|(i, t)| (t.uuid.clone(), i)).collect();
        TenantDirectory { tenants: tenants.into_iter().map(Arc::new).collect(), keys, default, uuids }
    }

    /// All tenants, in config order.
    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The tenant at `position` (its place in the config's `tenants` list).
    pub fn get(&self, position: usize) -> &Arc<Tenant> {
        &self.tenants[position]
    }

    /// The tenant whose `uuid` is exactly `uuid` (callbacks name their account this way).
    pub fn by_uuid(&self, uuid: &str) -> Option<&Arc<Tenant>> {
        self.position_by_uuid(uuid).map(|i| &self.tenants[i])
    }

    /// The position of the tenant whose `uuid` is exactly `uuid`.
    pub fn position_by_uuid(&self, uuid: &str) -> Option<usize> {
        self.uuids.get(uuid).copied()
    }

    /// Picks the tenant for a request from its `Authorization` header values.
    pub fn select<'a, I>(&self, authorization: I) -> Result<&Arc<Tenant>, GatewayError>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        self.select_position(authorization).map(|i| &self.tenants[i])
    }

    /// [`select`](Self::select), answering with the tenant's position, which indexes the
    /// gateway's per-tenant records.
    pub fn select_position<'a, I>(&self, mut authorization: I) -> Result<usize, GatewayError>
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let Some(value) = authorization.next() else {
            return self
                .default
                .ok_or(GatewayError::Unauthenticated("a client key is required (Authorization: Bearer <key>)"));
        };
        if authorization.next().is_some() {
            return Err(GatewayError::Unauthenticated("more than one Authorization header"));
        }
        let key =
            bearer_token(value).ok_or(GatewayError::Unauthenticated("Authorization must be 'Bearer <client key>'"))?;
        self.position_by_key(key, digest_eq).ok_or(GatewayError::Unauthenticated("unknown client key"))
    }

    /// The tenant whose key list holds sha256(`key`), in time independent of which matched.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Tenant>> {
        self.position_by_key(key, digest_eq).map(|i| &self.tenants[i])
    }

    /// The position of the tenant whose key list holds sha256(`key`), with the digest
    /// comparison passed in, so tests can watch every comparison.
    fn position_by_key(&self, key: &[u8], mut eq: impl FnMut(&[u8; 32], &[u8; 32]) -> Choice) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // 0 means "no match"; a match stores index + 1. Every entry is compared.
        let mut found = 0u32;
        for (stored, idx) in &self.keys {
            found.conditional_assign(&(idx + 1), eq(stored, &digest));
        }
        (found != 0).then(|| (found - 1) as usize)
    }
}

/// Constant-time digest equality, a 64-bit word at a time (`subtle`'s slice comparison
/// goes byte by byte, which made a 200-key lookup cost ~14 µs).
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> Choice {
    let word = |d: &[u8; 32], i: usize| u64::from_ne_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    (0..4).fold(Choice::from(1), |equal, i| equal & word(a, i).ct_eq(&word(b, i)))
}

/// The key of a `Bearer` credential: scheme in any case, then spaces, then a non-empty token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let token = rest.trim_ascii_start();
    if token.len() == rest.len() || token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(token)
}

/// sha256 of a client key as 64 lowercase hex digits: the form `client_keys_sha256` holds.
pub fn client_key_digest_hex(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::signing::Algorithm;

    fn tenant(name: &str, keys: &[&str]) -> Tenant {
        Tenant {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            secret: Secret::new(b"s".to_vec()),
            algorithm: Algorithm::Md5,
            client_key_hashes: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect(),
            secret_source: "test".into(),
            callbacks_forward_to: None,
            rate_limit: None,
            max_in_flight: None,
        }
    }

    fn dir(default: Option<usize>) -> TenantDirectory {
        TenantDirectory::new(vec![tenant("a", &["ka1", "ka2"]), tenant("b", &["kb"])], default)
    }

    fn pick(d: &TenantDirectory, headers: &[&str]) -> Result<String, GatewayError> {
        d.select(headers.iter().map(|h| h.as_bytes())).map(|t| t.name.clone())
    }

    #[test]
    fn bearer_key_selects_its_tenant() {
        let d = dir(None);
        assert_eq!(pick(&d, &["Bearer ka2"]).unwrap(), "a");
        assert_eq!(pick(&d, &["bearer kb"]).unwrap(), "b");
        assert_eq!(pick(&d, &["BEARER   kb"]).unwrap(), "b");
    }

    #[test]
    fn no_header_uses_the_default_tenant_or_is_refused() {
        assert_eq!(pick(&dir(Some(1)), &[]).unwrap(), "b");
        assert!(matches!(pick(&dir(None), &[]), Err(GatewayError::Unauthenticated(_))));
    }

    #[test]
    fn a_wrong_or_malformed_key_is_refused_even_with_a_default_tenant() {
        let d = dir(Some(0));
        for bad in ["Bearer nope", "Basic a2Ex", "Bearer", "Bearer ", "Bearerka1", "Bearer ka1 x", "ka1", ""] {
            assert!(matches!(pick(&d, &[bad]), Err(GatewayError::Unauthenticated(_))), "{bad:?}");
        }
        assert!(matches!(pick(&d, &["Bearer ka1", "Bearer ka1"]), Err(GatewayError::Unauthenticated(_))));
    }

    #[test]
    fn every_stored_digest_is_compared_whatever_the_key_and_wherever_it_matches() {
        // Timing resistance by construction: a lookup does the same work for the first key,
        // the last key, a near miss and garbage, and only ever compares sha256 digests, so
        // a guess sharing a prefix with a real key shares nothing with its digest.
        let keys: Vec<String> = (0..50).map(|i| format!("client-key-{i:02}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let d = TenantDirectory::new(vec![tenant("a", &refs[..25]), tenant("b", &refs[25..])], None);
        for (probe, expect) in [
            ("client-key-00", Some("a")),
            ("client-key-49", Some("b")),
            ("client-key-4", None),
            ("client-key-490", None),
            ("x", None),
        ] {
            let mut compared = Vec::new();
            let got = d.position_by_key(probe.as_bytes(), |stored, digest| {
                compared.push(*stored);
                assert_eq!(digest, &<[u8; 32]>::from(Sha256::digest(probe.as_bytes())), "only digests are compared");
                digest_eq(stored, digest)
            });
            assert_eq!(got.map(|i| d.get(i).name.as_str()), expect, "{probe}");
            let stored: Vec<[u8; 32]> = d.keys.iter().map(|(h, _)| *h).collect();
            assert_eq!(compared, stored, "{probe}: every entry, once, in order, no early exit");
        }
    }

    #[test]
    fn digest_equality_sees_a_difference_in_any_byte() {
        let a: [u8; 32] = Sha256::digest(b"k").into();
        assert!(bool::from(digest_eq(&a, &a)));
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!bool::from(digest_eq(&a, &b)), "byte {i}");
        }
    }

    #[test]
    fn digest_helper_matches_the_config_form() {
        assert_eq!(client_key_digest_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
