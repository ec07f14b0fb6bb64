//! `nxgate_core::verify::verify_response` on arbitrary headers and body: never panics; an `Ok`
//! always means the echoed ids, account and timestamp really are the expected ones; and
//! a correctly signed response verifies, but not once one body byte is changed.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nxgate_core::secret::Secret;
use nxgate_core::signing::{header, Algorithm};
use nxgate_core::verify::{verify_response, Expectation, VerifyFailure};
use nxgate_testkit::refsign::{self, Digest};
use std::sync::LazyLock;

const NOW: u64 = 1_732_406_400;
const SKEW: u64 = 300;
const REQUEST_ID: &str = "0123456789abcdef0123456789abcdef";
const UUID: &str = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR";
const SECRET_BYTES: &[u8] = b"u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr";
static SECRET: LazyLock<Secret> = LazyLock::new(|| Secret::new(SECRET_BYTES.to_vec()));

fn digest(algorithm: Algorithm) -> Digest {
    match algorithm {
        Algorithm::Md5 => Digest::Md5,
        Algorithm::Sha256 => Digest::Sha256,
    }
}

/// A header name: mostly the signature headers (so the fuzzer reaches the deep checks),
/// in any letter case, or arbitrary bytes.
#[derive(Arbitrary, Debug)]
enum Name<'a> {
    Signature { which: u8, upper_mask: u16 },
    Raw(&'a [u8]),
}

/// A header value: arbitrary, or one of the values the checks compare against, so
/// near-misses are explored.
#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Raw(&'a [u8]),
    RequestId,
    Uuid,
    Timestamp(i32),
    Algorithm(bool),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    headers: Vec<(Name<'a>, Value<'a>)>,
    body: &'a [u8],
    sha256: bool,
    /// Offset of the correctly signed response's createTs from NOW, kept within SKEW.
    ts_offset: i16,
    /// Which body byte to change, and how (a zero xor becomes 1).
    flip_at: u16,
    flip_xor: u8,
}

fn name_bytes(n: &Name<'_>) -> Vec<u8> {
    match n {
        Name::Signature { which, upper_mask } => {
            let names = [header::REQUEST_ID, header::UUID, header::CREATE_TS, header::SIGN, header::ALGORITHM];
            let base = names[*which as usize % names.len()];
            base.bytes()
                .enumerate()
                .map(
                    |(i, b)| {
                        if upper_mask >> (i % 16) & 1 == 1 {
                            b.to_ascii_uppercase()
                        } else {
                            b.to_ascii_lowercase()
                        }
                    },
                )
                .collect()
        }
        Name::Raw(b) => b.to_vec(),
    }
}

fn value_bytes(v: &Value<'_>) -> Vec<u8> {
    match v {
        Value::Raw(b) => b.to_vec(),
        Value::RequestId => REQUEST_ID.into(),
        Value::Uuid => UUID.into(),
        Value::Timestamp(off) => NOW.saturating_add_signed(*off as i64).to_string().into_bytes(),
        Value::Algorithm(sha) => if *sha { "SHA256" } else { "MD5" }.into(),
    }
}

fn expectation(algorithm: Algorithm) -> Expectation<'static> {
    Expectation { request_id: REQUEST_ID, uuid: UUID, algorithm, secret: &SECRET, max_clock_skew_secs: SKEW, now: NOW }
}

fn one(headers: &HeaderMap, name: &str) -> String {
    let mut all = headers.get_all(name).iter();
    let v = all.next().expect("verified without the header");
    assert!(all.next().is_none(), "verified with {name} repeated");
    v.to_str().expect("verified with unreadable header").to_owned()
}

fuzz_target!(|input: Input<'_>| {
    let algorithm = if input.sha256 { Algorithm::Sha256 } else { Algorithm::Md5 };
    let expect = expectation(algorithm);

    // 1. Arbitrary headers: never a panic, and Ok only when the response really is ours.
    let mut headers = HeaderMap::new();
    for (n, v) in &input.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&name_bytes(n)), HeaderValue::from_bytes(&value_bytes(v)))
        else {
            continue;
        };
        headers.append(name, value);
    }
    if verify_response(&expect, &headers, input.body).is_ok() {
        assert_eq!(one(&headers, header::REQUEST_ID), REQUEST_ID);
        assert_eq!(one(&headers, header::UUID), UUID);
        let ts: u64 = one(&headers, header::CREATE_TS).parse().expect("verified a non-numeric createTs");
        assert!(ts.abs_diff(NOW) <= SKEW, "verified a stale createTs");
        // Graded by the reference signer, which shares no code with the verifier.
        let right = refsign::sign(
            digest(algorithm),
            SECRET_BYTES,
            input.body,
            &one(&headers, header::CREATE_TS),
            REQUEST_ID,
            UUID,
        );
        assert!(one(&headers, header::SIGN).eq_ignore_ascii_case(&right), "verified a wrong sign");
    }

    // 2. The same extra headers around a correct signature set: verifies.
    let mut signed = HeaderMap::new();
    for (name, value) in &headers {
        if !header::ALL_LOWERCASE.contains(&name.as_str()) {
            signed.append(name.clone(), value.clone());
        }
    }
    let ts = NOW.saturating_add_signed(i64::from(input.ts_offset) % (SKEW as i64 + 1)).to_string();
    let sign = refsign::sign(digest(algorithm), SECRET_BYTES, input.body, &ts, REQUEST_ID, UUID);
    for (k, v) in [
        (header::REQUEST_ID, REQUEST_ID),
        (header::UUID, UUID),
        (header::CREATE_TS, ts.as_str()),
        (header::SIGN, sign.as_str()),
        (header::ALGORITHM, digest(algorithm).name()),
    ] {
        signed.insert(k, HeaderValue::from_str(v).unwrap());
    }
    assert_eq!(verify_response(&expect, &signed, input.body), Ok(()), "a correctly signed response was refused");

    // 3. One body byte changed (or one appended to an empty body): never verifies.
    let mut tampered = input.body.to_vec();
    let xor = if input.flip_xor == 0 { 1 } else { input.flip_xor };
    if tampered.is_empty() {
        tampered.push(xor);
    } else {
        let i = input.flip_at as usize % tampered.len();
        tampered[i] ^= xor;
    }
    assert_eq!(
        verify_response(&expect, &signed, &tampered),
        Err(VerifyFailure::SignatureMismatch),
        "a response with a changed body byte verified"
    );
});
