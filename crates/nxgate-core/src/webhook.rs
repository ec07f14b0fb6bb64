//! Standard Webhooks (<https://www.standardwebhooks.com>) for callback deliveries: the
//! stable message id of a (tenant, requestID), the signing key, and the signature.
//!
//! A receiver verifies a delivery with any Standard Webhooks library: the signature is
//! `v1,` + base64 of HMAC-SHA256(key, `webhook-id` + "." + `webhook-timestamp` + "." +
//! body), the key being the base64 after `whsec_` in the configured secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// `webhook-id` of the callback (tenant `uuid`, `request_id`): the same on every attempt,
/// replica and restart, and distinct across tenants. `msg_` + 32 hex digits of SHA-256.
pub fn message_id(uuid: &str, request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(uuid.as_bytes());
    // A separator no uuid contains (both are visible ASCII), so ("a b", "c") ≠ ("a", "b c").
    h.update(b"\n");
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// A delivery signing key: the decoded bytes of a `whsec_` secret. `Debug` redacts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey(Secret);

impl SigningKey {
    /// Parses `whsec_<base64>`; the message never echoes the secret.
    pub fn parse(text: &[u8]) -> Result<Self, &'static str> {
        let rest = text.strip_prefix(SECRET_PREFIX.as_bytes()).ok_or("must start with \"whsec_\"")?;
        let key = STANDARD.decode(rest).map_err(|_| "the part after \"whsec_\" is not base64")?;
        if key.len() < 16 {
            return Err("the key is shorter than 16 bytes");
        }
        Ok(SigningKey(Secret::new(key)))
    }

    /// `webhook-signature` of one delivery attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference
    /// libraries' tests).
    #[test]
    fn signs_the_specifications_example() {
        let key = SigningKey::parse(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_at_least_16_bytes() {
        assert!(SigningKey::parse(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse(b"whsec_not base64!").is_err());
        assert!(SigningKey::parse(b"whsec_c2hvcnQ=").is_err());
        let k = SigningKey::parse(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!format!("{k:?}").contains("MfKQ"));
    }

    #[test]
    fn message_ids_are_stable_and_per_tenant() {
        let a = message_id("uuid-a", "r1");
        assert_eq!(a, message_id("uuid-a", "r1"));
        assert_ne!(a, message_id("uuid-b", "r1"));
        assert_ne!(message_id("a b", "c"), message_id("a", "b c"));
        assert!(a.starts_with("msg_") && a.len() == 36 && a[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
