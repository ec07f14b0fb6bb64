//! Callback verification (NXCloud → gateway → internal receiver), as a pure function.
//!
//! NXCloud signs its callbacks with the same v3 rule as its answers, but sends no
//! `algorithm` header: the account's algorithm (the tenant's `algorithm`) applies. The
//! checks run in the contract's order, so the first failure named is the documented one:
//! the exact `uuid` picks the tenant (and so the secret); `requestID`, `createTs` and `sign`
//! must each be present once and well formed; an `algorithm` header, if sent, must name the
//! tenant's algorithm; `createTs` must be within `verify.max_clock_skew_secs`; and `sign`
//! must match over the exact body bytes, compared in constant time. Replay (the same
//! requestID again) is the listener's business, since it needs memory.

use http::{HeaderMap, HeaderName};
use std::sync::Arc;

use crate::config::Tenant;
use crate::errors::GatewayError;
use crate::signing::{self, header, Algorithm, SigningInput};
use crate::tenants::TenantDirectory;

/// Longest accepted `requestID`: it becomes part of a replay-memory key.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A callback that passed every check.
#[derive(Debug)]
pub struct VerifiedCallback<'t, 'h> {
    /// The tenant whose `uuid` it carries.
    pub tenant: &'t Arc<Tenant>,
    /// That tenant's position in the config (it indexes the gateway's per-tenant records).
    pub position: usize,
    /// Its `requestID` (visible ASCII, at most [`MAX_REQUEST_ID_LEN`] bytes).
    pub request_id: &'h str,
}

/// A callback that failed a check: the refusal, and the tenant if the `uuid` named one.
#[derive(Debug)]
pub struct RefusedCallback {
    /// The tenant's position, once known (for logs and metrics).
    pub position: Option<usize>,
    /// What to answer.
    pub error: GatewayError,
}

/// One header, present exactly once, as visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName, missing: &'static str) -> Result<&'h str, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(GatewayError::BadCallbackSignature(missing))?;
    if values.next().is_some() {
        return Err(GatewayError::BadCallbackSignature("a signature header appears more than once"));
    }
    match first.to_str() {
        Ok(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => Ok(v),
        _ => Err(GatewayError::BadCallbackSignature("a signature header is empty or not visible ASCII")),
    }
}

/// Checks one callback (headers and exact body bytes) at gateway time `now` (unix seconds).
pub fn verify_callback<'t, 'h>(
    tenants: &'t TenantDirectory,
    headers: &'h HeaderMap,
    body: &[u8],
    max_clock_skew_secs: u64,
    now: u64,
) -> Result<VerifiedCallback<'t, 'h>, RefusedCallback> {
    let refuse = |position, error| RefusedCallback { position, error };
    let uuid = single(headers, &header::parsed::UUID, "no uuid header").map_err(|e| refuse(None, e))?;
    let position = tenants
        .position_by_uuid(uuid)
        .ok_or_else(|| refuse(None, GatewayError::BadCallbackSignature("uuid names no configured tenant")))?;
    let tenant = tenants.get(position);
    let known = Some(position);
    let request_id =
        single(headers, &header::parsed::REQUEST_ID, "no requestID header").map_err(|e| refuse(known, e))?;
    let create_ts = single(headers, &header::parsed::CREATE_TS, "no createTs header").map_err(|e| refuse(known, e))?;
    let sign = single(headers, &header::parsed::SIGN, "no sign header").map_err(|e| refuse(known, e))?;
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(refuse(known, GatewayError::BadCallbackSignature("requestID is too long")));
    }
    // Only plain digits: "+5", " 5" or "5.0" are not what the vendor sends.
    let ts = create_ts
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| create_ts.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| refuse(known, GatewayError::BadCallbackSignature("createTs is not a unix timestamp")))?;
    if !sign.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(known, GatewayError::BadCallbackSignature("sign is not hex")));
    }
    let mut algorithms = headers.get_all(&header::parsed::ALGORITHM).iter();
    if let Some(value) = algorithms.next() {
        if algorithms.next().is_some() {
            return Err(refuse(known, GatewayError::BadCallbackSignature("a signature header appears more than once")));
        }
        let named = value.to_str().ok().and_then(|v| v.parse::<Algorithm>().ok());
        if named != Some(tenant.algorithm) {
            return Err(refuse(known, GatewayError::BadCallbackSignature("algorithm is not the tenant's")));
        }
    }
    let skew_secs = ts.abs_diff(now);
    if skew_secs > max_clock_skew_secs {
        return Err(refuse(known, GatewayError::StaleCallback { skew_secs, limit_secs: max_clock_skew_secs }));
    }
    let input = SigningInput { body, create_ts, request_id, uuid };
    if !signing::signature_matches(&tenant.secret, tenant.algorithm, &input, sign.as_bytes()) {
        return Err(refuse(known, GatewayError::BadCallbackSignature("sign does not match")));
    }
    Ok(VerifiedCallback { tenant, position, request_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use http::HeaderValue;

    const NOW: u64 = 1_732_406_400;
    const UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
    const BODY: &[u8] = br#"{"callbackType":1,"taskID":"t1"}"#;

    fn tenant(algorithm: Algorithm) -> Tenant {
        Tenant {
            name: "acme".into(),
            uuid: UUID.into(),
            secret: Secret::new(b"u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr".to_vec()),
            algorithm,
            client_key_hashes: vec![],
            rate_limit: None,
            max_in_flight: None,
            secret_source: "env X".into(),
            callbacks_forward_to: None,
        }
    }

    fn dir(algorithm: Algorithm) -> TenantDirectory {
        TenantDirectory::new(vec![tenant(algorithm)], None)
    }

    /// A callback as NXCloud sends it: four headers, no `algorithm`.
    fn signed(algorithm: Algorithm, body: &[u8], ts: u64) -> HeaderMap {
        let t = tenant(algorithm);
        let ts = ts.to_string();
        let input = SigningInput { body, create_ts: &ts, request_id: "rid-1", uuid: UUID };
        let mut h = HeaderMap::new();
        h.insert("requestid", HeaderValue::from_static("rid-1"));
        h.insert("uuid", HeaderValue::from_static(UUID));
        h.insert("createts", HeaderValue::from_str(&ts).unwrap());
        h.insert("sign", HeaderValue::from_str(&signing::sign(&t.secret, algorithm, &input)).unwrap());
        h
    }

    fn refusal(d: &TenantDirectory, h: &HeaderMap, body: &[u8]) -> (u32, &'static str) {
        let e = verify_callback(d, h, body, 300, NOW).unwrap_err().error;
        (e.code(), e.kind())
    }

    #[test]
    fn a_signed_callback_passes_with_either_algorithm_and_any_sign_case() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let d = dir(alg);
            let mut h = signed(alg, BODY, NOW);
            let ok = verify_callback(&d, &h, BODY, 300, NOW).unwrap();
            assert_eq!((ok.tenant.name.as_str(), ok.request_id), ("acme", "rid-1"));
            let lower = h["sign"].to_str().unwrap().to_ascii_lowercase();
            h.insert("sign", HeaderValue::from_str(&lower).unwrap());
            assert!(verify_callback(&d, &h, BODY, 300, NOW).is_ok());
            h.insert("algorithm", HeaderValue::from_static(if alg == Algorithm::Md5 { "md5" } else { "sha256" }));
            assert!(verify_callback(&d, &h, BODY, 300, NOW).is_ok(), "the tenant's own algorithm, any case");
        }
    }

    #[test]
    fn each_check_refuses_with_its_code() {
        let d = dir(Algorithm::Md5);
        let good = signed(Algorithm::Md5, BODY, NOW);
        assert_eq!(refusal(&d, &good, b"{}"), (40102, "bad_callback_signature"), "other bytes");
        for name in ["uuid", "requestid", "createts", "sign"] {
            let mut h = good.clone();
            h.remove(name);
            assert_eq!(refusal(&d, &h, BODY), (40102, "bad_callback_signature"), "{name} missing");
            let mut h = good.clone();
            h.append(HeaderName::from_static(name), good[name].clone());
            assert_eq!(refusal(&d, &h, BODY), (40102, "bad_callback_signature"), "{name} twice");
        }
        let mut h = good.clone();
        h.insert("uuid", HeaderValue::from_static("someone-else"));
        let refused = verify_callback(&d, &h, BODY, 300, NOW).unwrap_err();
        assert!(refused.position.is_none() && refused.error.code() == 40102);
        let mut h = good.clone();
        h.insert("algorithm", HeaderValue::from_static("SHA256"));
        let refused = verify_callback(&d, &h, BODY, 300, NOW).unwrap_err();
        assert_eq!(refused.position.map(|i| d.get(i).name.as_str()), Some("acme"));
        assert_eq!(refused.error.kind(), "bad_callback_signature");
        let mut h = good.clone();
        h.insert("createts", HeaderValue::from_static("17324064oo"));
        assert_eq!(refusal(&d, &h, BODY), (40102, "bad_callback_signature"));
        let mut h = good.clone();
        h.insert("sign", HeaderValue::from_static("zz"));
        assert_eq!(refusal(&d, &h, BODY), (40102, "bad_callback_signature"));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_even_when_signed() {
        let d = dir(Algorithm::Sha256);
        for ts in [NOW - 301, NOW + 301] {
            let h = signed(Algorithm::Sha256, BODY, ts);
            assert_eq!(refusal(&d, &h, BODY), (40103, "stale_callback"));
        }
        assert!(verify_callback(&d, &signed(Algorithm::Sha256, BODY, NOW - 300), BODY, 300, NOW).is_ok());
    }

    #[test]
    fn the_timestamp_is_checked_before_the_sign() {
        let d = dir(Algorithm::Md5);
        let mut h = signed(Algorithm::Md5, BODY, NOW - 1000);
        h.insert("sign", HeaderValue::from_static("00"));
        assert_eq!(refusal(&d, &h, BODY).0, 40103);
    }
}
