//! Response verification, as a pure function.
//!
//! The gateway is the only party that can tell a genuine NXCloud answer from a forged or
//! replayed one, so it checks every response before a byte of it reaches the caller:
//! the echoed `requestID` binds the answer to this request (no replay of another
//! answer), the exact `uuid` pins the account (and, because the secret is a prefix of
//! the hashed text, stops length-extension forgeries that would shift bytes between
//! fields), the `algorithm` must not be downgraded, `createTs` must be fresh, and `sign`
//! must match over the exact body bytes. Checks run in that order so that the first
//! failure named is the most specific one.

use http::{HeaderMap, HeaderName};

use crate::secret::Secret;
use crate::signing::{self, header, Algorithm, SigningInput};

/// What the response must match: facts about the request we sent.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// The `requestID` we sent.
    pub request_id: &'a str,
    /// The tenant's `uuid`.
    pub uuid: &'a str,
    /// The algorithm we signed the request with.
    pub algorithm: Algorithm,
    /// The tenant's secret.
    pub secret: &'a Secret,
    /// Largest accepted distance between `createTs` and `now`, in seconds.
    pub max_clock_skew_secs: u64,
    /// The gateway's clock, unix seconds.
    pub now: u64,
}

/// Why a response was refused. `reason()` is a bounded label for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// A required signature header is absent.
    #[error("response has no {0} header")]
    MissingHeader(&'static str),
    /// A signature header appears more than once, so it is ambiguous.
    #[error("response has more than one {0} header")]
    DuplicateHeader(&'static str),
    /// A signature header is not valid visible ASCII.
    #[error("response {0} header is not valid text")]
    UnreadableHeader(&'static str),
    /// The echoed `requestID` is not the one we sent.
    #[error("response requestID does not match the request")]
    RequestIdMismatch,
    /// The `uuid` is not the tenant's.
    #[error("response uuid does not match the tenant")]
    UuidMismatch,
    /// The `algorithm` names no known algorithm.
    #[error("response algorithm is unknown")]
    UnknownAlgorithm,
    /// The `algorithm` differs from the request's (a downgrade, or an upgrade we did not ask for).
    #[error("response algorithm {got} does not match the request's {expected}")]
    AlgorithmMismatch {
        /// What we signed with.
        expected: Algorithm,
        /// What the response claims.
        got: Algorithm,
    },
    /// `createTs` is not a whole number of seconds.
    #[error("response createTs is not a unix timestamp")]
    MalformedTimestamp,
    /// `createTs` is further from our clock than allowed.
    #[error("response createTs is {skew_secs}s from the gateway clock (limit {limit_secs}s)")]
    StaleTimestamp {
        /// Observed distance.
        skew_secs: u64,
        /// Configured limit.
        limit_secs: u64,
    },
    /// The `sign` does not match the body and headers.
    #[error("response sign does not match")]
    SignatureMismatch,
}

impl VerifyFailure {
    /// A short, fixed label: safe as a metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyFailure::MissingHeader(_) => "missing_header",
            VerifyFailure::DuplicateHeader(_) => "duplicate_header",
            VerifyFailure::UnreadableHeader(_) => "unreadable_header",
            VerifyFailure::RequestIdMismatch => "request_id_mismatch",
            VerifyFailure::UuidMismatch => "uuid_mismatch",
            VerifyFailure::UnknownAlgorithm => "unknown_algorithm",
            VerifyFailure::AlgorithmMismatch { .. } => "algorithm_mismatch",
            VerifyFailure::MalformedTimestamp => "malformed_timestamp",
            VerifyFailure::StaleTimestamp { .. } => "stale_timestamp",
            VerifyFailure::SignatureMismatch => "sign_mismatch",
        }
    }
}

/// A signature header: the parsed name to look up (a `&str` key would be parsed and
/// lowercased again on every lookup) and the vendor's spelling for messages.
struct Name(HeaderName, &'static str);

const SIGN: Name = Name(header::parsed::SIGN, header::SIGN);
const REQUEST_ID: Name = Name(header::parsed::REQUEST_ID, header::REQUEST_ID);
const UUID: Name = Name(header::parsed::UUID, header::UUID);
const CREATE_TS: Name = Name(header::parsed::CREATE_TS, header::CREATE_TS);
const ALGORITHM: Name = Name(header::parsed::ALGORITHM, header::ALGORITHM);

/// Reads one signature header: absent is `None`, repeated or non-text is a failure.
fn single<'h>(headers: &'h HeaderMap, name: &Name) -> Result<Option<&'h str>, VerifyFailure> {
    let mut values = headers.get_all(&name.0).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(VerifyFailure::DuplicateHeader(name.1));
    }
    first.to_str().map(Some).map_err(|_| VerifyFailure::UnreadableHeader(name.1))
}

fn required<'h>(headers: &'h HeaderMap, name: &Name) -> Result<&'h str, VerifyFailure> {
    single(headers, name)?.ok_or(VerifyFailure::MissingHeader(name.1))
}

/// Checks a whole response (headers and exact body bytes) against what we sent.
pub fn verify_response(expect: &Expectation<'_>, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyFailure> {
    let sign = required(headers, &SIGN)?;
    let request_id = required(headers, &REQUEST_ID)?;
    let uuid = required(headers, &UUID)?;
    let create_ts = required(headers, &CREATE_TS)?;

    if request_id != expect.request_id {
        return Err(VerifyFailure::RequestIdMismatch);
    }
    if uuid != expect.uuid {
        return Err(VerifyFailure::UuidMismatch);
    }
    let algorithm = match single(headers, &ALGORITHM)? {
        None => expect.algorithm,
        Some(v) => v.parse::<Algorithm>().map_err(|_| VerifyFailure::UnknownAlgorithm)?,
    };
    if algorithm != expect.algorithm {
        return Err(VerifyFailure::AlgorithmMismatch { expected: expect.algorithm, got: algorithm });
    }
    // Only plain digits: "+5", " 5" or "5.0" are not what the vendor sends.
    if create_ts.is_empty() || !create_ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyFailure::MalformedTimestamp);
    }
    let ts: u64 = create_ts.parse().map_err(|_| VerifyFailure::MalformedTimestamp)?;
    let skew_secs = ts.abs_diff(expect.now);
    if skew_secs > expect.max_clock_skew_secs {
        return Err(VerifyFailure::StaleTimestamp { skew_secs, limit_secs: expect.max_clock_skew_secs });
    }
    let input = SigningInput { body, create_ts, request_id, uuid };
    if !signing::signature_matches(expect.secret, algorithm, &input, sign.as_bytes()) {
        return Err(VerifyFailure::SignatureMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NOW: u64 = 1_732_406_400;

    fn secret() -> Secret {
        Secret::new(b"u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr".to_vec())
    }

    fn expect(secret: &Secret, algorithm: Algorithm) -> Expectation<'_> {
        Expectation {
            request_id: "0123456789abcdef0123456789abcdef",
            uuid: "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR",
            algorithm,
            secret,
            max_clock_skew_secs: 300,
            now: NOW,
        }
    }

    /// A correctly signed response to `expect`, as headers. Signed by the test kit's
    /// reference signer, which shares no code with `signing`, so the verifier is never
    /// graded by the code it verifies with.
    fn signed(e: &Expectation<'_>, body: &[u8], ts: u64, alg: Algorithm) -> HeaderMap {
        use nxgate_testkit::refsign::{self, Digest};
        let ts = ts.to_string();
        let digest = match alg {
            Algorithm::Md5 => Digest::Md5,
            Algorithm::Sha256 => Digest::Sha256,
        };
        let sign = refsign::sign(digest, e.secret.expose(), body, &ts, e.request_id, e.uuid);
        let mut map = HeaderMap::new();
        for (k, v) in [
            (header::REQUEST_ID, e.request_id),
            (header::UUID, e.uuid),
            (header::CREATE_TS, ts.as_str()),
            (header::SIGN, sign.as_str()),
            (header::ALGORITHM, digest.name()),
        ] {
            map.insert(k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn a_correctly_signed_response_passes_with_both_algorithms() {
        let s = secret();
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let e = expect(&s, alg);
            let h = signed(&e, b"{\"code\":0}", NOW, alg);
            assert_eq!(verify_response(&e, &h, b"{\"code\":0}"), Ok(()));
        }
    }

    #[test]
    fn absent_algorithm_means_the_requests_algorithm() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        let mut h = signed(&e, b"x", NOW, Algorithm::Md5);
        h.remove("algorithm");
        assert_eq!(verify_response(&e, &h, b"x"), Ok(()));
        // An absent header on a SHA256 request means SHA256 too, and the MD5 sign is then wrong.
        let e256 = expect(&s, Algorithm::Sha256);
        assert_eq!(verify_response(&e256, &h, b"x"), Err(VerifyFailure::SignatureMismatch));
    }

    #[test]
    fn a_changed_body_byte_fails() {
        let s = secret();
        let e = expect(&s, Algorithm::Sha256);
        let h = signed(&e, b"{\"code\":0}", NOW, Algorithm::Sha256);
        assert_eq!(verify_response(&e, &h, b"{\"code\":1}"), Err(VerifyFailure::SignatureMismatch));
        assert_eq!(verify_response(&e, &h, b"{\"code\":0"), Err(VerifyFailure::SignatureMismatch));
    }

    #[test]
    fn each_missing_header_is_named() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        for name in ["sign", "requestID", "uuid", "createTs"] {
            let mut h = signed(&e, b"", NOW, Algorithm::Md5);
            h.remove(name);
            assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::MissingHeader(name)), "{name}");
        }
    }

    #[test]
    fn duplicated_signature_headers_are_refused() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        let mut h = signed(&e, b"", NOW, Algorithm::Md5);
        let sign = h.get("sign").unwrap().clone();
        h.append("sign", sign);
        assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::DuplicateHeader("sign")));
    }

    #[test]
    fn another_requests_answer_is_refused_even_when_validly_signed() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        let other = Expectation { request_id: "ffffffffffffffffffffffffffffffff", ..e };
        let h = signed(&other, b"", NOW, Algorithm::Md5);
        assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::RequestIdMismatch));
    }

    #[test]
    fn another_accounts_uuid_is_refused_even_when_validly_signed() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        let other = Expectation { uuid: "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDt", ..e };
        let h = signed(&other, b"", NOW, Algorithm::Md5);
        assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::UuidMismatch));
    }

    #[test]
    fn algorithm_downgrade_is_refused_even_when_validly_signed() {
        let s = secret();
        let e = expect(&s, Algorithm::Sha256);
        let h = signed(&e, b"", NOW, Algorithm::Md5);
        assert_eq!(
            verify_response(&e, &h, b""),
            Err(VerifyFailure::AlgorithmMismatch { expected: Algorithm::Sha256, got: Algorithm::Md5 })
        );
        let mut h = signed(&e, b"", NOW, Algorithm::Sha256);
        h.insert("algorithm", HeaderValue::from_static("SHA1"));
        assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::UnknownAlgorithm));
    }

    #[test]
    fn timestamps_outside_the_skew_window_are_refused_on_both_sides() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        for ts in [NOW - 300, NOW + 300] {
            assert_eq!(verify_response(&e, &signed(&e, b"", ts, Algorithm::Md5), b""), Ok(()), "{ts}");
        }
        for ts in [NOW - 301, NOW + 301, 0] {
            let got = verify_response(&e, &signed(&e, b"", ts, Algorithm::Md5), b"");
            assert!(matches!(got, Err(VerifyFailure::StaleTimestamp { .. })), "{ts}: {got:?}");
        }
    }

    #[test]
    fn non_numeric_timestamps_are_refused() {
        let s = secret();
        let e = expect(&s, Algorithm::Md5);
        for bad in ["", "+1732406400", " 1732406400", "1732406400.0", "99999999999999999999999"] {
            let mut h = signed(&e, b"", NOW, Algorithm::Md5);
            h.insert("createTs", HeaderValue::from_str(bad).unwrap());
            assert_eq!(verify_response(&e, &h, b""), Err(VerifyFailure::MalformedTimestamp), "{bad:?}");
        }
    }

    #[test]
    fn a_forged_sign_under_another_secret_is_refused() {
        let s = secret();
        let e = expect(&s, Algorithm::Sha256);
        let wrong = Secret::new(b"u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSR".to_vec());
        let h = signed(&Expectation { secret: &wrong, ..e }, b"{}", NOW, Algorithm::Sha256);
        assert_eq!(verify_response(&e, &h, b"{}"), Err(VerifyFailure::SignatureMismatch));
    }

    #[test]
    fn parsed_names_are_the_vendor_spellings() {
        for name in [&SIGN, &REQUEST_ID, &UUID, &CREATE_TS, &ALGORITHM] {
            assert_eq!(name.0, HeaderName::from_bytes(name.1.as_bytes()).unwrap(), "{}", name.1);
        }
    }

    #[test]
    fn reasons_are_distinct_fixed_labels() {
        let all = [
            VerifyFailure::MissingHeader("sign"),
            VerifyFailure::DuplicateHeader("sign"),
            VerifyFailure::UnreadableHeader("sign"),
            VerifyFailure::RequestIdMismatch,
            VerifyFailure::UuidMismatch,
            VerifyFailure::UnknownAlgorithm,
            VerifyFailure::AlgorithmMismatch { expected: Algorithm::Md5, got: Algorithm::Sha256 },
            VerifyFailure::MalformedTimestamp,
            VerifyFailure::StaleTimestamp { skew_secs: 1, limit_secs: 0 },
            VerifyFailure::SignatureMismatch,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|f| f.reason()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
