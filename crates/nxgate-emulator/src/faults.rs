//! Misbehaviour on demand, per request (`x-emulator-fault`) or for every request
//! (`--fault`).
//!
//! Two kinds, kept apart on purpose. A [`Fault`] is a *defect*: an answer the real vendor
//! must never give (a wrong sign, a reset mid-body, garbage); the gateway must fail closed on
//! each. A [`VendorFault`] is an *unhappy but well-formed* answer the vendor documents or may
//! plausibly give (busy, maintenance, rate limiting); the gateway must pass it on or back
//! off. Keeping `Fault` to the defects also keeps `Fault::ALL` a sweep of defects only.

use std::str::FromStr;

/// Request header that selects a fault for one request.
pub const FAULT_HEADER: &str = "x-emulator-fault";
/// Request header with the delay for `slow`, in milliseconds.
pub const DELAY_HEADER: &str = "x-emulator-delay-ms";
/// Request header with the body size for `oversized`, in bytes.
pub const SIZE_HEADER: &str = "x-emulator-size";
/// Request header with the `Retry-After` seconds of `http_429`.
pub const RETRY_AFTER_HEADER: &str = "x-emulator-retry-after";

/// Delay of `slow` when no `x-emulator-delay-ms` is given.
pub const DEFAULT_SLOW_MS: u64 = 5_000;
/// Body size of `oversized` when no `x-emulator-size` is given.
pub const DEFAULT_OVERSIZE_BYTES: usize = 16 * 1024 * 1024;
/// `Retry-After` of `http_429` when no `x-emulator-retry-after` is given.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A `sign` that does not match.
    BadSign,
    /// A validly signed answer carrying another requestID.
    WrongRequestId,
    /// A validly signed answer carrying another uuid.
    WrongUuid,
    /// A validly signed answer with a createTs an hour old.
    StaleTs,
    /// No `sign` header.
    MissingSign,
    /// Answer signed with the other algorithm (MD5 for a SHA256 request).
    Downgrade,
    /// Wait `x-emulator-delay-ms` before answering.
    Slow,
    /// Send the header and half the body, then reset the connection.
    Reset,
    /// Send the header and half the body, then close cleanly.
    Truncated,
    /// A correctly signed body of `x-emulator-size` bytes.
    Oversized,
    /// `500` with a JSON body and no signature headers.
    Unsigned500,
    /// Bytes that are not an HTTP response.
    Garbage,
}

impl Fault {
    /// Every fault, for tests that sweep them.
    pub const ALL: [Fault; 12] = [
        Fault::BadSign,
        Fault::WrongRequestId,
        Fault::WrongUuid,
        Fault::StaleTs,
        Fault::MissingSign,
        Fault::Downgrade,
        Fault::Slow,
        Fault::Reset,
        Fault::Truncated,
        Fault::Oversized,
        Fault::Unsigned500,
        Fault::Garbage,
    ];

    /// The name used in `x-emulator-fault` and `--fault`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::BadSign => "bad_sign",
            Fault::WrongRequestId => "wrong_request_id",
            Fault::WrongUuid => "wrong_uuid",
            Fault::StaleTs => "stale_ts",
            Fault::MissingSign => "missing_sign",
            Fault::Downgrade => "downgrade",
            Fault::Slow => "slow",
            Fault::Reset => "reset",
            Fault::Truncated => "truncated",
            Fault::Oversized => "oversized",
            Fault::Unsigned500 => "unsigned_500",
            Fault::Garbage => "garbage",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown fault {s:?}; one of: {}", Fault::ALL.map(|f| f.name()).join(", ")))
    }
}

/// A well-formed "not now" answer, as the vendor gives (or may give) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorFault {
    /// HTTP 200, signed, `code`/`retCode` 7 ("system busy", §3).
    Busy,
    /// HTTP 200, signed, `code`/`retCode` 5 ("server under maintenance", §3).
    Maintenance,
    /// HTTP 429 with `Retry-After` and an unsigned `7` body, as a rate-limiting front
    /// (load balancer, WAF) would answer: the vendor documents no HTTP error status.
    Http429,
}

impl VendorFault {
    /// Every vendor fault.
    pub const ALL: [VendorFault; 3] = [VendorFault::Busy, VendorFault::Maintenance, VendorFault::Http429];

    /// The name used in `x-emulator-fault` and `--fault`.
    pub fn name(self) -> &'static str {
        match self {
            VendorFault::Busy => "busy",
            VendorFault::Maintenance => "maintenance",
            VendorFault::Http429 => "http_429",
        }
    }
}

impl FromStr for VendorFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VendorFault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| format!("unknown vendor fault {s:?}"))
    }
}

/// Either kind, as named on the wire or the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A defect.
    Defect(Fault),
    /// A vendor-style refusal.
    Vendor(VendorFault),
}

impl Misbehaviour {
    /// The name used in `x-emulator-fault` and `--fault`.
    pub fn name(self) -> &'static str {
        match self {
            Misbehaviour::Defect(f) => f.name(),
            Misbehaviour::Vendor(v) => v.name(),
        }
    }

    /// The defect, if this is one.
    pub fn defect(self) -> Option<Fault> {
        match self {
            Misbehaviour::Defect(f) => Some(f),
            Misbehaviour::Vendor(_) => None,
        }
    }
}

impl FromStr for Misbehaviour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(f) = s.parse::<Fault>() {
            return Ok(Misbehaviour::Defect(f));
        }
        s.parse::<VendorFault>().map(Misbehaviour::Vendor).map_err(|_| {
            let names: Vec<&str> =
                Fault::ALL.iter().map(|f| f.name()).chain(VendorFault::ALL.iter().map(|f| f.name())).collect();
            format!("unknown fault {s:?}; one of: {}", names.join(", "))
        })
    }
}
