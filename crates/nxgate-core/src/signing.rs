//! The Callbot v3 signature, as pure functions.
//!
//! NXCloud authenticates both directions with a prefix-keyed hash:
//! `H(secretKey + "&body=" + body + "&createTs=" + ts + "&requestID=" + id + "&uuid=" + uuid)`,
//! rendered as uppercase hex. The same rule signs requests (over the request body) and
//! responses (over the response body, with the response's `createTs`). Nothing here does
//! I/O, so the gateway, the emulator, the `sign` command and the benchmarks all share
//! exactly one implementation, pinned by the vendor's known-answer vectors.
//!
//! The body is fed to the hasher as raw bytes: it is never decoded, re-encoded or copied,
//! which is what "the bytes signed are exactly the bytes sent" requires.

use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The `algorithm` header value; `MD5` when the header is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize)]
pub enum Algorithm {
    /// `MD5`: the vendor's default.
    #[default]
    #[serde(rename = "MD5")]
    Md5,
    /// `SHA256`.
    #[serde(rename = "SHA256")]
    Sha256,
}

impl Algorithm {
    /// The header spelling the vendor uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `algorithm` header value that names no known algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm (expected MD5 or SHA256)")]
pub struct UnknownAlgorithm;

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Accepts the vendor's spelling in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(UnknownAlgorithm)
        }
    }
}

/// Everything that goes into one signature except the secret.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    /// The exact body bytes as they travel on the wire.
    pub body: &'a [u8],
    /// `createTs`: unix seconds, as sent.
    pub create_ts: &'a str,
    /// `requestID`, as sent.
    pub request_id: &'a str,
    /// `uuid`: the account id.
    pub uuid: &'a str,
}

/// The five signature headers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `requestID`.
    pub request_id: String,
    /// `uuid`.
    pub uuid: String,
    /// `createTs`.
    pub create_ts: String,
    /// `sign`: uppercase hex digest.
    pub sign: String,
    /// `algorithm`.
    pub algorithm: Algorithm,
}

impl SignedHeaders {
    /// Header names and values in the vendor's spelling, in a stable order.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            (header::REQUEST_ID, &self.request_id),
            (header::UUID, &self.uuid),
            (header::CREATE_TS, &self.create_ts),
            (header::SIGN, &self.sign),
            (header::ALGORITHM, self.algorithm.as_str()),
        ]
    }
}

/// Header names in the vendor's spelling (HTTP treats them case-insensitively).
pub mod header {
    /// Unique id of one request, echoed by the response.
    pub const REQUEST_ID: &str = "requestID";
    /// Account id.
    pub const UUID: &str = "uuid";
    /// Unix seconds when the message was made.
    pub const CREATE_TS: &str = "createTs";
    /// Uppercase hex signature.
    pub const SIGN: &str = "sign";
    /// `MD5` or `SHA256`.
    pub const ALGORITHM: &str = "algorithm";
    /// All five, lowercase, for case-insensitive filtering.
    pub const ALL_LOWERCASE: [&str; 5] = ["requestid", "uuid", "createts", "sign", "algorithm"];

    /// The five as parsed header names, for `HeaderMap` lookups that do not parse and
    /// lowercase a `&str` key on every call.
    pub mod parsed {
        use http::HeaderName;
        /// `requestID`.
        pub const REQUEST_ID: HeaderName = HeaderName::from_static("requestid");
        /// `uuid`.
        pub const UUID: HeaderName = HeaderName::from_static("uuid");
        /// `createTs`.
        pub const CREATE_TS: HeaderName = HeaderName::from_static("createts");
        /// `sign`.
        pub const SIGN: HeaderName = HeaderName::from_static("sign");
        /// `algorithm`.
        pub const ALGORITHM: HeaderName = HeaderName::from_static("algorithm");
    }
}

fn feed<D: Digest>(mut hasher: D, secret: &Secret, input: &SigningInput<'_>) -> D {
    hasher.update(secret.expose());
    hasher.update(b"&body=");
    hasher.update(input.body);
    hasher.update(b"&createTs=");
    hasher.update(input.create_ts.as_bytes());
    hasher.update(b"&requestID=");
    hasher.update(input.request_id.as_bytes());
    hasher.update(b"&uuid=");
    hasher.update(input.uuid.as_bytes());
    hasher
}

/// Hex digits of the longest digest (SHA256: 32 bytes).
const MAX_SIGN_LEN: usize = 64;

/// A `sign` value, rendered on the stack: the request path signs and verifies once each
/// per request, and neither needs the digits on the heap.
struct SignDigits {
    buf: [u8; MAX_SIGN_LEN],
    len: usize,
}

impl SignDigits {
    fn upper_hex(digest: &[u8]) -> Self {
        let mut buf = [0u8; MAX_SIGN_LEN];
        let len = 2 * digest.len();
        hex::encode_to_slice(digest, &mut buf[..len]).expect("MAX_SIGN_LEN holds the longest digest");
        buf[..len].make_ascii_uppercase();
        SignDigits { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("hex digits are ASCII")
    }
}

fn sign_digits(secret: &Secret, algorithm: Algorithm, input: &SigningInput<'_>) -> SignDigits {
    match algorithm {
        Algorithm::Md5 => SignDigits::upper_hex(&feed(Md5::new(), secret, input).finalize()),
        Algorithm::Sha256 => SignDigits::upper_hex(&feed(Sha256::new(), secret, input).finalize()),
    }
}

/// Computes `sign` (uppercase hex) for one message.
pub fn sign(secret: &Secret, algorithm: Algorithm, input: &SigningInput<'_>) -> String {
    sign_digits(secret, algorithm, input).as_str().to_owned()
}

/// Signs a message and returns all five headers.
pub fn signed_headers(secret: &Secret, algorithm: Algorithm, input: &SigningInput<'_>) -> SignedHeaders {
    SignedHeaders {
        request_id: input.request_id.to_owned(),
        uuid: input.uuid.to_owned(),
        create_ts: input.create_ts.to_owned(),
        sign: sign(secret, algorithm, input),
        algorithm,
    }
}

/// Signs an outgoing request made at `create_ts` (unix seconds): what the gateway does to
/// every request body, in one place so the benchmarks time exactly that.
pub fn sign_request(
    secret: &Secret,
    algorithm: Algorithm,
    body: &[u8],
    create_ts: u64,
    request_id: &str,
    uuid: &str,
) -> SignedHeaders {
    let create_ts = create_ts.to_string();
    signed_headers(secret, algorithm, &SigningInput { body, create_ts: &create_ts, request_id, uuid })
}

/// Whether `presented` is the right signature, compared in constant time.
///
/// Hex letter case is not significant: a lowercase rendering of the right digest is
/// the same MAC, so accepting it costs nothing.
#[must_use = "a signature check that is not looked at protects nothing"]
pub fn signature_matches(secret: &Secret, algorithm: Algorithm, input: &SigningInput<'_>, presented: &[u8]) -> bool {
    let expected = sign_digits(secret, algorithm, input);
    let expected = expected.as_bytes();
    // The length of a signature is public (it follows from the algorithm), so a wrong one
    // may be refused before the constant-time part.
    if presented.len() != expected.len() {
        return false;
    }
    let mut upper = [0u8; MAX_SIGN_LEN];
    let upper = &mut upper[..expected.len()];
    for (u, p) in upper.iter_mut().zip(presented) {
        *u = p.to_ascii_uppercase();
    }
    expected.ct_eq(upper).into()
}

/// A fresh `requestID`: 32 lowercase hex digits from a random UUIDv4.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        description: String,
        algorithm: Algorithm,
        #[serde(rename = "secretKey")]
        secret_key: String,
        uuid: String,
        #[serde(rename = "createTs")]
        create_ts: String,
        #[serde(rename = "requestID")]
        request_id: String,
        body_hex: String,
        sign: String,
    }

    #[derive(serde::Deserialize)]
    struct VectorFile {
        vectors: Vec<Vector>,
    }

    const VECTORS: &str = include_str!("../../../tests/data/signing.json");

    fn vectors() -> Vec<Vector> {
        serde_json::from_str::<VectorFile>(VECTORS).expect("vector file parses").vectors
    }

    #[test]
    fn every_known_answer_vector_signs_to_its_published_value() {
        let vectors = vectors();
        assert!(vectors.len() >= 12, "vector file lost entries: {}", vectors.len());
        for v in vectors {
            let body = hex::decode(&v.body_hex).unwrap();
            let input = SigningInput { body: &body, create_ts: &v.create_ts, request_id: &v.request_id, uuid: &v.uuid };
            let got = sign(&secret(&v.secret_key), v.algorithm, &input);
            assert_eq!(got, v.sign, "{} ({})", v.description, v.algorithm);
            assert!(signature_matches(&secret(&v.secret_key), v.algorithm, &input, v.sign.as_bytes()));
        }
    }

    /// The repository's copy must equal the vendor-facts copy beside the repository. On a
    /// developer's fresh machine without `../shared` there is nothing to compare (said on
    /// stderr); in CI (`CI` set), where `../shared` is always laid beside the clone, a
    /// missing copy fails.
    /// The repository's copy must equal the vendor-facts copy beside the repository. On a
    /// developer's fresh machine without `../shared` there is nothing to compare (said on
    /// stderr); in CI (`CI` set), where `../shared` is always laid beside the clone, a
    /// missing copy fails.
    #[test]
    fn the_parsed_names_are_the_vendor_names_lowercased() {
        use header::parsed;
        let parsed = [parsed::REQUEST_ID, parsed::UUID, parsed::CREATE_TS, parsed::SIGN, parsed::ALGORITHM];
        let vendor = [header::REQUEST_ID, header::UUID, header::CREATE_TS, header::SIGN, header::ALGORITHM];
        for ((p, v), l) in parsed.iter().zip(vendor).zip(header::ALL_LOWERCASE) {
            assert_eq!((p.as_str(), l), (v.to_ascii_lowercase().as_str(), l));
        }
    }

    #[test]
    fn vendored_vectors_equal_the_shared_copy_or_ci_fails_without_it() {
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors/signing.json");
        match std::fs::read_to_string(shared) {
            Ok(text) => assert_eq!(text, VECTORS, "tests/data/signing.json drifted from {shared}"),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{shared}: {e}");
                assert!(std::env::var_os("CI").is_none(), "CI is set but {shared} is missing");
                eprintln!("NOTE: {shared} not found; compared nothing (the vectors above still ran)");
            }
        }
    }

    #[test]
    fn signature_check_rejects_any_single_changed_input() {
        let s = secret("k");
        let base = SigningInput { body: b"{}", create_ts: "1", request_id: "r", uuid: "u" };
        let good = sign(&s, Algorithm::Sha256, &base);
        assert!(signature_matches(&s, Algorithm::Sha256, &base, good.as_bytes()));
        assert!(signature_matches(&s, Algorithm::Sha256, &base, good.to_lowercase().as_bytes()));
        let variants = [
            SigningInput { body: b"{} ", ..base },
            SigningInput { create_ts: "2", ..base },
            SigningInput { request_id: "R", ..base },
            SigningInput { uuid: "v", ..base },
        ];
        for v in variants {
            assert!(!signature_matches(&s, Algorithm::Sha256, &v, good.as_bytes()), "{v:?}");
        }
        assert!(!signature_matches(&secret("K"), Algorithm::Sha256, &base, good.as_bytes()));
        assert!(!signature_matches(&s, Algorithm::Md5, &base, good.as_bytes()));
        assert!(!signature_matches(&s, Algorithm::Sha256, &base, &good.as_bytes()[..63]));
        assert!(!signature_matches(&s, Algorithm::Sha256, &base, b""));
    }

    #[test]
    fn sign_request_equals_signed_headers_over_the_same_input() {
        let s = secret("k");
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let got = sign_request(&s, algorithm, b"{\"a\":1}", 1_732_406_400, "r", "u");
            let input = SigningInput { body: b"{\"a\":1}", create_ts: "1732406400", request_id: "r", uuid: "u" };
            assert_eq!(got, signed_headers(&s, algorithm, &input));
        }
    }

    #[test]
    fn signature_check_takes_either_hex_case_but_nothing_else() {
        let s = secret("k");
        let base = SigningInput { body: b"{}", create_ts: "1", request_id: "r", uuid: "u" };
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let good = sign(&s, algorithm, &base);
            assert_eq!(good.len(), if algorithm == Algorithm::Md5 { 32 } else { 64 });
            assert!(good.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)), "{good}");
            let mixed: String =
                good.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_lowercase() } else { c }).collect();
            assert!(signature_matches(&s, algorithm, &base, mixed.as_bytes()));
            let longer = format!("{good}0");
            assert!(!signature_matches(&s, algorithm, &base, longer.as_bytes()));
            // One changed digit must fail.
            let mut wrong = good.clone().into_bytes();
            let last = wrong.len() - 1;
            wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
            assert!(!signature_matches(&s, algorithm, &base, &wrong));
        }
    }

    #[test]
    fn algorithm_parses_in_any_case_and_rejects_others() {
        assert_eq!("md5".parse::<Algorithm>(), Ok(Algorithm::Md5));
        assert_eq!("Sha256".parse::<Algorithm>(), Ok(Algorithm::Sha256));
        assert_eq!("SHA-256".parse::<Algorithm>(), Err(UnknownAlgorithm));
        assert_eq!("".parse::<Algorithm>(), Err(UnknownAlgorithm));
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_and_unique() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
