//! An independent reference signer for the v3 rule, written from the vendor's text and
//! nothing else:
//!
//! ```text
//! authRaw = secretKey + "&body=" + body + "&createTs=" + createTs
//!           + "&requestID=" + requestID + "&uuid=" + uuid
//! sign    = uppercase hex of MD5(authRaw) or SHA256(authRaw)
//! ```
//!
//! It is deliberately plain (one `Vec`, one hash call, `format!` for hex) and uses other
//! hash implementations than the product (the `md5` crate and ring's SHA-256, where
//! `nxgate-core` uses RustCrypto's `md-5` and `sha2`). Tests use it wherever they claim a
//! signature is right, and the emulator checks requests and signs answers with it, so a
//! bug in the product's signer cannot agree with itself end to end.

/// The two digests the vendor allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// `MD5` (the vendor's default when no `algorithm` header is sent).
    Md5,
    /// `SHA256`.
    Sha256,
}

impl Digest {
    /// Parses the `algorithm` header value; the vendor spells them `MD5` and `SHA256`.
    pub fn from_header(value: &str) -> Option<Digest> {
        match value.to_ascii_uppercase().as_str() {
            "MD5" => Some(Digest::Md5),
            "SHA256" => Some(Digest::Sha256),
            _ => None,
        }
    }

    /// The header spelling.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "MD5",
            Digest::Sha256 => "SHA256",
        }
    }
}

/// The string the vendor hashes, as bytes (the body need not be UTF-8).
pub fn auth_raw(secret: &[u8], body: &[u8], create_ts: &str, request_id: &str, uuid: &str) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(secret);
    raw.extend_from_slice(b"&body=");
    raw.extend_from_slice(body);
    raw.extend_from_slice(b"&createTs=");
    raw.extend_from_slice(create_ts.as_bytes());
    raw.extend_from_slice(b"&requestID=");
    raw.extend_from_slice(request_id.as_bytes());
    raw.extend_from_slice(b"&uuid=");
    raw.extend_from_slice(uuid.as_bytes());
    raw
}

/// The `sign` value: uppercase hex of the digest of `auth_raw`.
pub fn sign(digest: Digest, secret: &[u8], body: &[u8], create_ts: &str, request_id: &str, uuid: &str) -> String {
    let raw = auth_raw(secret, body, create_ts, request_id, uuid);
    let bytes: Vec<u8> = match digest {
        Digest::Md5 => md5::compute(&raw).0.to_vec(),
        Digest::Sha256 => ring::digest::digest(&ring::digest::SHA256, &raw).as_ref().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Whether `claimed` is the right `sign` (hex case ignored, as the vendor's sample does).
/// Not constant-time: this is a test oracle, never on a path an attacker can time.
pub fn is_valid(
    digest: Digest,
    secret: &[u8],
    body: &[u8],
    create_ts: &str,
    request_id: &str,
    uuid: &str,
    claimed: &str,
) -> bool {
    sign(digest, secret, body, create_ts, request_id, uuid).eq_ignore_ascii_case(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers (recomputed with Python's hashlib when they were written).
    #[test]
    fn matches_the_known_answer_vectors() {
        let text = include_str!("../../../tests/data/signing.json");
        let vectors: serde_json::Value = serde_json::from_str(text).expect("vectors are JSON");
        let mut checked = 0;
        for v in vectors["vectors"].as_array().expect("vectors array") {
            let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"));
            let digest = Digest::from_header(field("algorithm")).expect("known algorithm");
            let body = hex::decode(field("body_hex")).expect("body_hex is hex");
            let got = sign(
                digest,
                field("secretKey").as_bytes(),
                &body,
                field("createTs"),
                field("requestID"),
                field("uuid"),
            );
            assert_eq!(got, field("sign"), "{}", field("description"));
            checked += 1;
        }
        assert_eq!(checked, 12, "every vector checked");
    }

    #[test]
    fn hex_case_is_ignored_and_one_byte_matters() {
        let s = sign(Digest::Sha256, b"k", b"{}", "1", "r", "u");
        assert!(is_valid(Digest::Sha256, b"k", b"{}", "1", "r", "u", &s.to_ascii_lowercase()));
        assert!(!is_valid(Digest::Sha256, b"k", b"{ }", "1", "r", "u", &s));
        assert!(!is_valid(Digest::Md5, b"k", b"{}", "1", "r", "u", &s));
    }
}
