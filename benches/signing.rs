//! Signing and response verification: the pure per-request crypto of nxgate.
//!
//! `cargo bench --bench signing`. For each body size (0.1, 1, 16, 256 KiB) and algorithm
//! (MD5, SHA256): `sign` (`signing::sign_request`, exactly what the gateway does to every
//! request body: createTs rendered, the five headers made), `verify` (`verify_response`
//! on a correctly signed response: header checks plus one signature recomputation and a
//! constant-time compare) and `sign+verify` (one request signed and one same-sized
//! response verified: the whole crypto cost of one proxied request). The requestID is
//! made before signing (with the request's context), so it is not part of these.
//! Throughput is reported in body bytes.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use std::time::{SystemTime, UNIX_EPOCH};

use nxgate_core::secret::Secret;
use nxgate_core::signing::{self, Algorithm, SigningInput};
use nxgate_core::verify::{self, Expectation};

/// The vendor's public sample credentials (also the emulator's).
const UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
const SECRET: &[u8] = b"u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";

const SIZES: [(&str, usize); 4] = [("0.1KiB", 102), ("1KiB", 1024), ("16KiB", 16 * 1024), ("256KiB", 256 * 1024)];
const ALGORITHMS: [Algorithm; 2] = [Algorithm::Md5, Algorithm::Sha256];

/// A JSON body of exactly `len` bytes.
fn body(len: usize) -> Vec<u8> {
    let mut b = b"{\"data\":\"".to_vec();
    b.resize(len - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The headers a correct upstream answer carries.
fn signed_response_headers(secret: &Secret, algorithm: Algorithm, request_id: &str, body: &[u8], ts: u64) -> HeaderMap {
    let ts = ts.to_string();
    let input = SigningInput { body, create_ts: &ts, request_id, uuid: UUID };
    let signed = signing::signed_headers(secret, algorithm, &input);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in signed.pairs() {
        h.insert(name, HeaderValue::from_str(value).unwrap());
    }
    h
}

fn benches(c: &mut Criterion) {
    let secret = Secret::new(SECRET.to_vec());
    let request_id = "0123456789abcdef0123456789abcdef";
    let ts = now();

    for (op, measure) in [("sign", 0), ("verify", 1), ("sign+verify", 2)] {
        let mut group = c.benchmark_group(op);
        for (label, len) in SIZES {
            let body = body(len);
            // sign+verify moves one request body and one response body of this size.
            group.throughput(Throughput::Bytes(if measure == 2 { 2 * len as u64 } else { len as u64 }));
            for algorithm in ALGORITHMS {
                let headers = signed_response_headers(&secret, algorithm, request_id, &body, ts);
                let expect = Expectation {
                    request_id,
                    uuid: UUID,
                    algorithm,
                    secret: &secret,
                    max_clock_skew_secs: 300,
                    now: ts,
                };
                assert_eq!(verify::verify_response(&expect, &headers, &body), Ok(()), "fixture must verify");
                let id = BenchmarkId::new(algorithm.as_str(), label);
                // The body behind black_box, so it is never constant-folded.
                let sign =
                    || signing::sign_request(&secret, algorithm, black_box(&body), black_box(ts), request_id, UUID);
                match measure {
                    0 => group.bench_function(id, |b| b.iter(sign)),
                    1 => group.bench_function(id, |b| {
                        b.iter(|| verify::verify_response(black_box(&expect), black_box(&headers), black_box(&body)))
                    }),
                    _ => group.bench_function(id, |b| {
                        b.iter(|| {
                            let signed = sign();
                            let ok = verify::verify_response(black_box(&expect), black_box(&headers), black_box(&body));
                            (signed, ok)
                        })
                    }),
                };
            }
        }
        group.finish();
    }
}

criterion_group!(signing_benches, benches);
criterion_main!(signing_benches);
