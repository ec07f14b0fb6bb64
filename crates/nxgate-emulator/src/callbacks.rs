//! Delivery of the three callbacks (§5): signing and POSTing the bodies it is handed, with
//! retries. The bodies are rendered in `state`, beside the model they describe: this module
//! knows no task or order, so `state` depends on it and never the reverse.
//!
//! Signed as §5.1 says: headers `requestID`, `uuid`, `createTs`, `sign`, with the account's
//! configured algorithm and **no `algorithm` header** (the receiver must know the
//! algorithm from its own configuration). The signature comes from the reference signer
//! (`nxgate_testkit::refsign`), never from the product's.
//!
//! The vendor documents no reply contract and no retry policy. The emulator's choice: a
//! 2xx answer is delivered; anything else (another status, a refused connection, no answer
//! within the timeout) is retried up to `max_attempts` attempts in all, waiting
//! `initial_backoff_secs`, then double, up to `max_backoff_secs`, on the simulated clock.
//! Every attempt carries the same `requestID` and body (so a receiver's replay handling
//! is exercised) and a fresh `createTs` and `sign` (so a long backoff is not refused as
//! stale).

use std::time::Duration;

use nxgate_testkit::refsign::{self, Digest};

use crate::http::ClientAnswer;

/// How undeliverable callbacks are retried.
#[derive(Debug, Clone)]
pub struct CallbackRetry {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Simulated seconds before the first retry.
    pub initial_backoff_secs: u64,
    /// Cap of the doubling backoff, simulated seconds.
    pub max_backoff_secs: u64,
    /// Wall-clock time a receiver has to answer one attempt.
    pub timeout: Duration,
}

impl Default for CallbackRetry {
    fn default() -> Self {
        CallbackRetry {
            max_attempts: 4,
            initial_backoff_secs: 5,
            max_backoff_secs: 60,
            timeout: Duration::from_secs(5),
        }
    }
}

impl CallbackRetry {
    /// Simulated seconds to wait after failed attempt number `attempt` (1-based).
    pub fn backoff_secs(&self, attempt: u32) -> u64 {
        let doubled = self.initial_backoff_secs.saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        doubled.min(self.max_backoff_secs)
    }
}

/// Which of the three callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallbackKind {
    Task,
    Order,
    Call,
}

impl CallbackKind {
    pub fn name(self) -> &'static str {
        match self {
            CallbackKind::Task => "taskCallback",
            CallbackKind::Order => "orderCallback",
            CallbackKind::Call => "callCallback",
        }
    }
}

/// One delivery attempt of a callback.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// Simulated Unix ms of the attempt.
    pub at_ms: u64,
    /// The `createTs` header sent (wall-clock seconds).
    pub create_ts: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub answer: String,
}

/// Where a callback is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Waiting for its next attempt at this simulated time.
    Pending { next_ms: u64 },
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed.
    GaveUp,
}

/// A callback the emulator made (and keeps for `/_emulator/state`).
#[derive(Debug, Clone)]
pub(crate) struct CallbackRecord {
    pub id: u64,
    pub kind: CallbackKind,
    pub uuid: String,
    pub url: String,
    /// Kept for every retry: receivers de-duplicate on it.
    pub request_id: String,
    pub body: Vec<u8>,
    pub digest: Digest,
    pub attempts: Vec<Attempt>,
    pub delivery: Delivery,
}

/// When the next pending callback is due.
pub(crate) fn next_due_ms(records: &[CallbackRecord]) -> Option<u64> {
    records
        .iter()
        .filter_map(|c| match c.delivery {
            Delivery::Pending { next_ms } => Some(next_ms),
            _ => None,
        })
        .min()
}

/// The callbacks due at `now_ms`, in the order they were queued. Copies: each is sent
/// without holding the model's lock.
pub(crate) fn due(records: &[CallbackRecord], now_ms: u64) -> Vec<CallbackRecord> {
    records
        .iter()
        .filter(|c| matches!(c.delivery, Delivery::Pending { next_ms } if next_ms <= now_ms))
        .cloned()
        .collect()
}

/// One attempt as sent, before it is stamped with the simulated time it ended at.
pub(crate) struct Sent {
    create_ts: String,
    result: Result<ClientAnswer, String>,
}

/// Signs `cb` afresh (new `createTs`, same `requestID`) with `secret` and POSTs it once.
pub(crate) async fn send(cb: &CallbackRecord, secret: &[u8], timeout: Duration) -> Sent {
    let create_ts = crate::wall_secs().to_string();
    let sign = refsign::sign(cb.digest, secret, &cb.body, &create_ts, &cb.request_id, &cb.uuid);
    let headers = [
        ("requestID", cb.request_id.clone()),
        ("uuid", cb.uuid.clone()),
        ("createTs", create_ts.clone()),
        ("sign", sign),
    ];
    let result = crate::http::post(&cb.url, &headers, &cb.body, timeout).await;
    Sent { create_ts, result }
}

impl CallbackRecord {
    /// Records the attempt `sent`, ended at simulated `now_ms`, and decides what follows:
    /// delivered, another attempt after the backoff, or given up.
    pub fn settle(&mut self, sent: Sent, now_ms: u64, policy: &CallbackRetry) {
        let Sent { create_ts, result } = sent;
        let ok = matches!(&result, Ok(a) if (200..300).contains(&a.status));
        self.attempts.push(match result {
            Ok(a) => Attempt { at_ms: now_ms, create_ts, status: Some(a.status), error: None, answer: a.body },
            Err(e) => Attempt { at_ms: now_ms, create_ts, status: None, error: Some(e), answer: String::new() },
        });
        let tried = self.attempts.len() as u32;
        self.delivery = if ok {
            Delivery::Delivered
        } else if tried >= policy.max_attempts.max(1) {
            tracing::warn!(url = %self.url, kind = self.kind.name(), "callback given up after {tried} attempts");
            Delivery::GaveUp
        } else {
            Delivery::Pending { next_ms: now_ms + policy.backoff_secs(tried) * 1000 }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let p = CallbackRetry { initial_backoff_secs: 5, max_backoff_secs: 60, ..Default::default() };
        let waits: Vec<u64> = (1..=6).map(|a| p.backoff_secs(a)).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(p.backoff_secs(200), 60, "no overflow on absurd attempt counts");
    }
}
