//! Secret material that cannot be printed and is wiped from memory when dropped.

use std::fmt;
use zeroize::Zeroizing;

/// A tenant's signing key. `Debug` redacts it; its bytes are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps key bytes; the caller's buffer moves in, so no unzeroized copy is left behind.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// The key bytes, for the signer only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether the key is empty (an empty key is refused at config load).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let s = Secret::new(b"hunter2-very-secret".to_vec());
        let shown = format!("{s:?} {:#?}", Some(&s));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(s.expose(), b"hunter2-very-secret");
    }
}
