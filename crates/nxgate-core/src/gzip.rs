//! gzip bodies, decoded under a size bound: a caller's `Content-Encoding: gzip` body is
//! decoded before it is signed (`upstream.request_compression: "decode"`), and a small
//! compressed body may inflate to gigabytes, so the bound is enforced while inflating,
//! never after.

use std::io::Read;

/// Why a gzip body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    /// It inflates past the limit (a zip bomb, or simply too large).
    #[error("gzip body inflates past {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// It is not a valid gzip stream (bad header, bad data, bad checksum, cut short).
    #[error("gzip body is corrupt: {0}")]
    Corrupt(String),
}

/// Decodes `data` (one or more gzip members) to at most `limit` bytes. Memory use is
/// bounded by `limit` plus the decoder's window, whatever `data` claims.
pub fn decode_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, GzipError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| GzipError::Corrupt(e.kind().to_string()))?;
    if out.len() > limit {
        return Err(GzipError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_within_the_limit_exactly() {
        let body = br#"{"userTaskID":"t1","orderList":[{"phone":"+8613800000000"}]}"#;
        assert_eq!(decode_bounded(&gzip(body), body.len()).unwrap(), body);
        assert_eq!(decode_bounded(&gzip(body), body.len() - 1), Err(GzipError::TooLarge { limit: body.len() - 1 }));
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 128 * 1024, "64 MiB of zeros compress to {} bytes", bomb.len());
        assert_eq!(decode_bounded(&bomb, 1 << 20), Err(GzipError::TooLarge { limit: 1 << 20 }));
    }

    #[test]
    fn corrupt_and_truncated_streams_are_refused() {
        let good = gzip(b"hello hello hello");
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 6] ^= 0xff; // inside the CRC32
        for bad in [&b"not gzip at all"[..], &good[..good.len() - 4], &flipped, &good[..5]] {
            assert!(matches!(decode_bounded(bad, 1024), Err(GzipError::Corrupt(_))), "{bad:?}");
        }
    }

    #[test]
    fn concatenated_members_are_one_body() {
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(decode_bounded(&two, 16).unwrap(), b"abcd");
    }
}
