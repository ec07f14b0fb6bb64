//! The vendor's signature rule (§2) on both directions: checking a request, signing an
//! answer. Both go through `nxgate_testkit::refsign`, an implementation that shares no code
//! with the product's signer.
//!
//! Refusals use the vendor's codes (§3), in an HTTP 200 as the vendor answers:
//!
//! | check, in this order | code |
//! |---|---|
//! | `requestID`, `uuid`, `createTs` or `sign` missing | 6001 |
//! | `uuid` not a configured account | 6002 |
//! | `algorithm` present, not empty and not `MD5`/`SHA256` | 3 |
//! | `createTs` not an integer | 3 |
//! | `createTs` more than [`REQUEST_SKEW_SECS`] from the clock | 4 (the vendor documents no skew rule; 4 "parameter value error" keeps a clock problem apart from a credential problem, which is what 6 means to an operator) |
//! | `sign` does not match | 6 |
//!
//! Header names are matched case-insensitively, so the vendor sample's `requestId` is the
//! same header as the tables' `requestID`.

use nxgate_core::secret::Secret;
use nxgate_testkit::refsign::{self, Digest};

use crate::faults::Fault;
use crate::http::{Delivery, Request};

/// How far a request's createTs may be from the emulator's clock.
pub const REQUEST_SKEW_SECS: u64 = 300;

/// How old the `createTs` of a `stale_ts` answer is.
const STALE_FAULT_AGE_SECS: u64 = 3_600;

/// The signature header names (§1.1).
pub(crate) mod header {
    pub const REQUEST_ID: &str = "requestID";
    pub const UUID: &str = "uuid";
    pub const CREATE_TS: &str = "createTs";
    pub const SIGN: &str = "sign";
    pub const ALGORITHM: &str = "algorithm";
}

/// A refused request: the vendor code and a message.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub code: i64,
    pub msg: String,
}

impl Refusal {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        Refusal { code, msg: msg.into() }
    }
}

/// The request's algorithm: absent or empty ⇒ MD5 (§1.1); `None` if it names another.
pub(crate) fn request_digest(req: &Request) -> Option<Digest> {
    match req.header_str(header::ALGORITHM).map(str::trim) {
        None | Some("") => Some(Digest::Md5),
        Some(a) => Digest::from_header(a),
    }
}

/// Checks the request's signature over `signed_body` (the wire bytes, or the decoded
/// bytes of a gzip body, per `--gzip-sign`).
pub(crate) fn check(
    tenants: &std::collections::HashMap<String, Secret>,
    req: &Request,
    signed_body: &[u8],
) -> Result<(), Refusal> {
    let (Some(request_id), Some(uuid), Some(create_ts), Some(sign)) = (
        req.header_str(header::REQUEST_ID),
        req.header_str(header::UUID),
        req.header_str(header::CREATE_TS),
        req.header_str(header::SIGN),
    ) else {
        return Err(Refusal::new(6001, "missing signature header (requestID, uuid, createTs, sign)"));
    };
    let Some(secret) = tenants.get(uuid) else { return Err(Refusal::new(6002, "account does not exist")) };
    let Some(digest) = request_digest(req) else {
        return Err(Refusal::new(3, "algorithm must be MD5 or SHA256"));
    };
    let ts: u64 =
        create_ts.trim().parse().map_err(|_| Refusal::new(3, "createTs is not a unix timestamp in seconds"))?;
    if ts.abs_diff(crate::wall_secs()) > REQUEST_SKEW_SECS {
        return Err(Refusal::new(4, format!("createTs is more than {REQUEST_SKEW_SECS} s from the server clock")));
    }
    if !refsign::is_valid(digest, secret.expose(), signed_body, create_ts, request_id, uuid, sign) {
        // The message predates the vendor codes; kept so existing callers' assertions hold.
        return Err(Refusal::new(6, "sign mismatch"));
    }
    Ok(())
}

/// The five signature headers of an answer whose sign covers `signed_body`, bent by
/// `fault`, and how the answer must be delivered under that fault.
pub(crate) fn answer_signature(
    signed_body: &[u8],
    secret: &Secret,
    fault: Option<Fault>,
    request_id: &str,
    uuid: &str,
    digest: Digest,
) -> (Vec<(&'static str, String)>, Delivery) {
    let mut stamp = Stamp { request_id: request_id.to_owned(), uuid: uuid.to_owned(), ts: crate::wall_secs(), digest };
    match fault {
        Some(Fault::WrongRequestId) => wrong_request_id(&mut stamp),
        Some(Fault::WrongUuid) => wrong_uuid(&mut stamp),
        Some(Fault::StaleTs) => stale_ts(&mut stamp),
        Some(Fault::Downgrade) => downgrade(&mut stamp),
        _ => {}
    }
    let ts = stamp.ts.to_string();
    let mut sign = refsign::sign(stamp.digest, secret.expose(), signed_body, &ts, &stamp.request_id, &stamp.uuid);
    if fault == Some(Fault::BadSign) {
        bad_sign(&mut sign);
    }
    let mut headers = vec![(header::REQUEST_ID, stamp.request_id), (header::UUID, stamp.uuid), (header::CREATE_TS, ts)];
    if fault != Some(Fault::MissingSign) {
        headers.push((header::SIGN, sign));
    }
    headers.push((header::ALGORITHM, stamp.digest.name().to_owned()));
    (headers, delivery(fault))
}

/// What an answer's signature headers state, before the sign is computed over them.
struct Stamp {
    request_id: String,
    uuid: String,
    ts: u64,
    digest: Digest,
}

/// `wrong_request_id`: a validly signed answer carrying another requestID.
fn wrong_request_id(stamp: &mut Stamp) {
    stamp.request_id = format!("{:032x}", rand::random::<u128>());
}

/// `wrong_uuid`: a validly signed answer carrying another uuid.
fn wrong_uuid(stamp: &mut Stamp) {
    stamp.uuid.push('x');
}

/// `stale_ts`: a validly signed answer with a createTs an hour old.
fn stale_ts(stamp: &mut Stamp) {
    stamp.ts -= STALE_FAULT_AGE_SECS;
}

/// `downgrade`: signed with the other algorithm (MD5 for a SHA256 request).
fn downgrade(stamp: &mut Stamp) {
    stamp.digest = if stamp.digest == Digest::Sha256 { Digest::Md5 } else { Digest::Sha256 };
}

/// `bad_sign`: one hex digit flipped, so the sign keeps its length and loses its value.
fn bad_sign(sign: &mut String) {
    let last = if sign.ends_with('0') { "1" } else { "0" };
    sign.replace_range(sign.len() - 1.., last);
}

/// `reset` and `truncated` cut the answer off mid-body; every other answer goes out whole.
fn delivery(fault: Option<Fault>) -> Delivery {
    match fault {
        Some(Fault::Reset) => Delivery::HalfThenReset,
        Some(Fault::Truncated) => Delivery::HalfThenClose,
        _ => Delivery::Whole,
    }
}
