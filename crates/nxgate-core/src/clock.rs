//! The wall clock, in one place: signatures carry unix seconds, error bodies unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the unix epoch (zero if the clock is before it).
pub fn now_unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Unix milliseconds now, as error bodies carry them.
pub fn now_unix_ms() -> u64 {
    now_unix().as_millis() as u64
}
