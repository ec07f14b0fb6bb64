//! Secret material that cannot be printed and is wiped from memory when dropped.

use std::fmt;
use std::path::Path;
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

/// Largest secret file read.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file: the one reader for the config loader and every subcommand, so
/// `nxgate sign` and the gateway always sign with the same key. A small regular file (see
/// [`read_small_file`]); one trailing newline (`\n` or `\r\n`, as editors add) is not part
/// of the key; a second one, or an empty key, is refused.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let mut bytes = Zeroizing::new(read_small_file(path, MAX_SECRET_FILE_BYTES)?);
    if bytes.ends_with(b"\r\n") {
        let n = bytes.len() - 2;
        bytes.truncate(n);
    } else if bytes.ends_with(b"\n") {
        let n = bytes.len() - 1;
        bytes.truncate(n);
    }
    if bytes.ends_with(b"\n") || bytes.ends_with(b"\r") {
        return Err("ends with more than one newline".into());
    }
    if bytes.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Secret(bytes))
}

/// Reads a small regular file: devices, FIFOs and oversized files are refused, so a
/// mistyped path (`/dev/zero`, a pipe) cannot exhaust memory or hang a load or reload.
pub fn read_small_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(bytes)
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

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn a_secret_file_loses_exactly_one_trailing_newline() {
        for (content, key) in
            [(&b"k3y"[..], &b"k3y"[..]), (b"k3y\n", b"k3y"), (b"k3y\r\n", b"k3y"), (b"k\r3y\n", b"k\r3y")]
        {
            let f = file_with(content);
            assert_eq!(read_secret_file(f.path()).unwrap().expose(), key, "{content:?}");
        }
    }

    #[test]
    fn a_secret_file_with_two_newlines_or_nothing_is_refused() {
        for (content, why) in [
            (&b"k3y\n\n"[..], "more than one newline"),
            (b"k3y\r\n\r\n", "more than one newline"),
            (b"k3y\r", "more than one newline"),
            (b"", "empty"),
            (b"\n", "empty"),
        ] {
            let f = file_with(content);
            let e = read_secret_file(f.path()).unwrap_err();
            assert!(e.contains(why), "{content:?}: {e}");
        }
    }

    #[test]
    fn devices_fifos_and_large_files_are_not_read() {
        assert!(read_secret_file(Path::new("/dev/zero")).unwrap_err().contains("not a regular file"));
        let big = file_with(&vec![b'k'; MAX_SECRET_FILE_BYTES as usize + 1]);
        assert!(read_secret_file(big.path()).unwrap_err().contains("larger than 65536 bytes"));
    }
}
