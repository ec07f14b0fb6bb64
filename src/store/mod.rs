//! Durable state: the callback outbox (every callback accepted in queued delivery, until
//! its receiver took it or it became a dead letter), and, in the embedded store, the
//! replay memory of direct delivery.
//!
//! Two stores behind one interface, both well-kept crates rather than a format of ours:
//! - [`embedded::Embedded`]: `redb` (ACID, durable commits) in one file under `state.dir`,
//!   or in memory for `state.kind: "memory"`; one writer thread groups the operations of
//!   many callbacks into one commit;
//! - [`redis::RedisOutbox`]: the `redis:` connection, shared by every replica, keys
//!   hash-tagged per tenant.
//!
//! The model is the same in both. A callback is identified by its `webhook-id`
//! (`nxgate_core::webhook::message_id`, from its tenant's uuid and its requestID) and is in
//! one stage: **queued** (due at a time; taking it for an attempt moves its due time past
//! the attempt's lease, so a delivery whose process died is taken again once overdue),
//! **dead** (kept [`DEAD_LETTER_KEEP`], unless redriven) or **delivered** (only its id is
//! kept, for the replay window, so a copy is still answered as a duplicate). A settlement
//! other than "delivered" applies only to the attempt that holds the callback (its
//! attempt number), so a late answer of a lease that ran out cannot undo a newer one.

pub mod embedded;
pub mod redis;

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::net::redis::{RedisLink, RedisMetrics};
use nxgate_core::config::{RedisConfig, StateConfig, StateKind};

/// How long a dead letter is kept unless redriven.
pub const DEAD_LETTER_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// One accepted callback: everything its deliveries send, but its body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Callback {
    /// Its `webhook-id`.
    pub id: String,
    /// The tenant's name when it arrived (for people: the dead-letter list, logs).
    pub tenant: String,
    /// The tenant's NXCloud uuid (its keys; the receiver is looked up by it).
    pub uuid: String,
    /// Its `requestID`.
    pub request_id: String,
    /// The HTTP method it arrived with.
    pub method: String,
    /// Its path and query, as they arrived.
    pub target: String,
    /// The headers that are forwarded (content type and the like), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Unix ms when it was accepted.
    pub received_ms: u64,
    /// The `traceparent` of its intake's span, when traced: each delivery attempt's span
    /// is its child. (Absent in records written before traces existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What intake made of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Stored (committed / acknowledged): it will be delivered.
    Stored,
    /// The same (tenant, requestID) is already stored: nothing was written.
    Duplicate,
    /// `max_queued` callbacks are waiting: nothing was written.
    Full,
}

/// One attempt at a delivery: the callback, its body and the attempt's number.
#[derive(Debug, Clone)]
pub struct Job {
    /// The callback.
    pub callback: Callback,
    /// Its exact body bytes.
    pub body: Bytes,
    /// 1 for the first attempt (and after a redrive).
    pub attempt: u32,
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The receiver answered 2xx: remember the id for `keep` (the replay window).
    Delivered {
        /// How long a copy is still a duplicate.
        keep: Duration,
    },
    /// Try again after `after`.
    Retry {
        /// The schedule's next delay.
        after: Duration,
        /// Why this attempt failed.
        error: String,
    },
    /// The schedule is exhausted: a dead letter.
    Dead {
        /// Why the last attempt failed.
        error: String,
    },
}

/// A dead letter, as `GET /callbacks/dead` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The callback.
    pub callback: Callback,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: String,
    /// Unix ms when it became a dead letter.
    pub since_ms: u64,
}

/// One tenant's outbox, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Callbacks waiting (queued, in delivery included).
    pub queued: u64,
    /// When the oldest waiting one was accepted (unix ms).
    pub oldest_received_ms: Option<u64>,
    /// Dead letters held.
    pub dead: u64,
}

/// An answer recorded for an `Idempotency-Key`: what the caller got, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its headers, in order (`x-request-id` among them).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its body.
    #[serde(skip)]
    pub body: Bytes,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// Not seen (or expired): this request now holds it, under this token.
    New(String),
    /// Its first request is still in flight.
    InProgress,
    /// It was used for a request with another fingerprint.
    Reused,
    /// Its first request's answer.
    Replay(Answer),
}

/// The store cannot answer (Redis down, a disk error): intake refuses with 503 rather
/// than accept what it cannot keep.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the state store cannot answer: {0}")]
pub struct StoreError(pub String);

/// The two stores.
pub enum Backend {
    /// redb, in a file or in memory (shared with the replay memory of direct delivery).
    Embedded(Arc<embedded::Embedded>),
    /// Redis.
    Redis(redis::RedisOutbox),
}

/// The callback outbox of this process (it outlives config generations: only a restart
/// changes `state:`).
pub struct Outbox {
    /// Where it is kept.
    pub backend: Backend,
    /// Woken by intake and redrive, so the delivery worker does not wait for its next poll.
    pub wake: Notify,
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Embedded(s) => s.$method($($arg),*).await,
            Backend::Redis(s) => s.$method($($arg),*).await,
        }
    };
}

impl Outbox {
    /// Opens the store `state` names (Redis through `redis`). The embedded store refuses
    /// a `state.dir` another process holds.
    pub fn open(
        state: &StateConfig,
        redis: &RedisConfig,
        metrics: Option<RedisMetrics>,
    ) -> Result<Arc<Self>, embedded::OpenError> {
        let backend = match (state.kind, &state.dir) {
            (StateKind::Embedded, Some(dir)) => Backend::Embedded(Arc::new(embedded::Embedded::open(dir)?)),
            (StateKind::Redis, _) => {
                Backend::Redis(redis::RedisOutbox::new(RedisLink::new(redis.clone(), "callback state", metrics)))
            }
            // Validation sets `dir` exactly for the embedded kind.
            (StateKind::Memory | StateKind::Embedded, _) => {
                Backend::Embedded(Arc::new(embedded::Embedded::in_memory()))
            }
        };
        Ok(Arc::new(Outbox::new(backend)))
    }

    /// An outbox on `backend`.
    pub fn new(backend: Backend) -> Self {
        Outbox { backend, wake: Notify::new() }
    }

    /// Stores `callback` (due after `first_delay`) unless its id is already stored or
    /// `max_queued` are waiting (per tenant with Redis). Returns once it is durable.
    pub async fn intake(
        &self,
        callback: Callback,
        body: Bytes,
        first_delay: Duration,
        max_queued: usize,
    ) -> Result<Intake, StoreError> {
        let intake = dispatch!(self.intake(callback, body, first_delay, max_queued))?;
        if intake == Intake::Stored {
            self.wake.notify_one();
        }
        Ok(intake)
    }

    /// Takes at most `limit` callbacks of the tenants `uuids` due at `now_ms`, each held
    /// for `lease` (then due again, should its attempt never be settled).
    pub async fn take_due(
        &self,
        uuids: &[String],
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        dispatch!(self.take_due(uuids, now_ms, lease, limit))
    }

    /// Records how `job`'s attempt ended.
    pub async fn settle(&self, job: &Job, settle: Settle, now_ms: u64) -> Result<(), StoreError> {
        dispatch!(self.settle(job, settle, now_ms))
    }

    /// The dead letters of the tenants `uuids`, oldest first.
    pub async fn dead_letters(&self, uuids: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        dispatch!(self.dead_letters(uuids))
    }

    /// Queues the dead letters (all of the tenants `uuids`, or the one with `id`) again,
    /// with a fresh schedule. Returns how many.
    pub async fn redrive(&self, uuids: &[String], id: Option<&str>, now_ms: u64) -> Result<usize, StoreError> {
        let n = dispatch!(self.redrive(uuids, id, now_ms))?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Claims the `Idempotency-Key` `key` of tenant `uuid` for a request with
    /// `fingerprint`, held for `in_flight` unless completed or released first.
    pub async fn claim_key(
        &self,
        uuid: &str,
        key: &str,
        fingerprint: &str,
        in_flight: Duration,
        now_ms: u64,
    ) -> Result<KeyClaim, StoreError> {
        dispatch!(self.claim_key(uuid, key, fingerprint, in_flight, now_ms))
    }

    /// Records the answer of the request holding `key` under `token`, for `retention`.
    pub async fn complete_key(
        &self,
        uuid: &str,
        key: &str,
        token: &str,
        answer: &Answer,
        retention: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self.complete_key(uuid, key, token, answer, retention, now_ms))
    }

    /// Lets `key` go (its request never reached NXCloud): a retry proceeds.
    pub async fn release_key(&self, uuid: &str, key: &str, token: &str) -> Result<(), StoreError> {
        dispatch!(self.release_key(uuid, key, token))
    }

    /// Forgets the idempotency keys whose claim or retention ran out: what a gateway
    /// without a callback listener (so without [`Self::depth`]'s upkeep) needs.
    pub async fn purge_keys(&self, now_ms: u64) -> Result<(), StoreError> {
        dispatch!(self.purge_keys(now_ms))
    }

    /// Each tenant's depth (by uuid); forgets delivered ids past their window, dead
    /// letters past [`DEAD_LETTER_KEEP`] and expired idempotency keys on the way.
    pub async fn depth(&self, uuids: &[String], now_ms: u64) -> Result<HashMap<String, Depth>, StoreError> {
        dispatch!(self.depth(uuids, now_ms))
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    nxgate_core::clock::now_unix().as_millis() as u64
}

#[cfg(test)]
pub(crate) mod contract;
