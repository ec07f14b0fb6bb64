//! The replay memory: which (tenant, requestID) pairs were delivered, or are being
//! delivered right now.
//!
//! A pair has one of two states, each with an expiry:
//! - **in progress** (with a random token naming the delivery that holds it), from the
//!   moment a verified callback claims the pair until the receiver answers; it expires
//!   after `receiver_timeout + IN_PROGRESS_MARGIN`, so a gateway that dies mid-delivery
//!   blocks the pair only that long;
//! - **delivered**, once the receiver answered 2xx; kept for twice the clock-skew window
//!   (a callback is accepted while its `createTs` is within the window of the clock, so a
//!   copy can arrive up to 2 × window after the first one was accepted; none later).
//!
//! A failed delivery (receiver error, non-2xx, timeout) deletes its own in-progress entry,
//! so NXCloud's retry is delivered again. Claiming is atomic: of two concurrent copies,
//! exactly one is fresh.
//!
//! With `state.kind: "embedded"` the memory lives in the state file (`store::embedded`),
//! so it survives a restart. With `state.kind: "redis"` it lives in Redis (keys
//! `nxgate:callback:<uuid>:<requestID>`, values `d` or `p:<token>`, expiry by `PX`), so
//! every replica sees it; when Redis cannot answer within `REDIS_TIMEOUT` (or its circuit
//! breaker is open) the callback is refused with 503 rather than risk a double delivery.
//! Otherwise it is a bounded map in this process; when full of unexpired entries it
//! refuses with 503 too, rather than forget one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::redis::RedisLink;
use crate::store::embedded::{Embedded, ReplayState};
use crate::store::now_ms;
use nxgate_core::config::Tenant;
use nxgate_core::errors::GatewayError;

/// How much longer than `receiver_timeout` an in-progress claim lives.
pub const IN_PROGRESS_MARGIN: Duration = Duration::from_secs(5);

/// What a verified callback finds in the memory.
#[derive(Debug)]
pub enum Claim {
    /// Not seen (or its delivery failed): this delivery now holds the pair.
    Fresh(Ticket),
    /// Already delivered: answer the duplicate, do not forward.
    Delivered,
    /// Another delivery holds the pair right now.
    InProgress,
}

/// The claim of one delivery on one pair.
#[derive(Debug)]
pub struct Ticket {
    key: String,
    token: String,
}

/// The two backends.
pub enum ReplayStore {
    /// In this process, bounded.
    Local(LocalReplay),
    /// In Redis, shared by every replica.
    Redis(RedisReplay),
    /// In the embedded state file, kept across restarts.
    Embedded(Arc<Embedded>),
}

impl ReplayStore {
    /// Claims (tenant, request_id) for a delivery taking at most `in_progress_for`.
    pub async fn claim(
        &self,
        tenant: &Tenant,
        request_id: &str,
        in_progress_for: Duration,
    ) -> Result<Claim, GatewayError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        match self {
            ReplayStore::Local(l) => {
                l.claim(format!("nxgate:callback:{}:{request_id}", tenant.uuid), token, in_progress_for)
            }
            ReplayStore::Redis(r) => {
                // Hash-tagged per tenant with Cluster.
                let key = format!("nxgate:callback:{}:{request_id}", r.link.tenant_tag(&tenant.uuid));
                r.claim(key, token, in_progress_for).await
            }
            ReplayStore::Embedded(e) => {
                let key = format!("{}:{request_id}", tenant.uuid);
                let unavailable = |_| GatewayError::ReplayStoreUnavailable("the state store cannot answer");
                Ok(
                    match e
                        .replay_claim(key.clone(), token.clone(), in_progress_for, now_ms())
                        .await
                        .map_err(unavailable)?
                    {
                        ReplayState::Claimed => Claim::Fresh(Ticket { key, token }),
                        ReplayState::Delivered => Claim::Delivered,
                        ReplayState::InProgress => Claim::InProgress,
                    },
                )
            }
        }
    }

    /// The receiver took it (2xx): remember the pair as delivered for `keep`.
    pub async fn delivered(&self, ticket: Ticket, keep: Duration) {
        match self {
            ReplayStore::Local(l) => l.delivered(ticket, keep),
            ReplayStore::Redis(r) => r.delivered(ticket, keep).await,
            ReplayStore::Embedded(e) => {
                if let Err(err) = e.replay_delivered(ticket.key, keep, now_ms()).await {
                    tracing::warn!(error = %err, "callback delivered but the state store cannot record it; a retry after the claim expires would be delivered again");
                }
            }
        }
    }

    /// The delivery failed: forget this claim, so a retry is delivered.
    pub async fn failed(&self, ticket: Ticket) {
        match self {
            ReplayStore::Local(l) => l.failed(ticket),
            ReplayStore::Redis(r) => r.failed(ticket).await,
            // On failure the claim simply expires.
            ReplayStore::Embedded(e) => drop(e.replay_failed(ticket.key, ticket.token).await),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    InProgress(String),
    Delivered,
}

struct LocalInner {
    entries: HashMap<String, (State, Instant)>,
    /// (expiry, key) in the order entries were written: each claim drops the entries whose
    /// time is up from the front, so the map holds about one skew window's worth, not
    /// `capacity` of mostly expired ones. A key written twice (claimed, then delivered)
    /// is here twice; the earlier item finds a later expiry in the map and leaves it.
    expiries: VecDeque<(Instant, String)>,
    /// No entry expires before this, so a full map is not scanned again until then.
    next_expiry: Instant,
}

impl LocalInner {
    /// Drops expired entries from the front of the write order.
    fn sweep(&mut self, now: Instant) {
        while self.expiries.front().is_some_and(|(until, _)| *until <= now) {
            let (_, key) = self.expiries.pop_front().expect("front exists");
            if self.entries.get(&key).is_some_and(|(_, until)| *until <= now) {
                self.entries.remove(&key);
            }
        }
    }

    fn write(&mut self, key: String, state: State, until: Instant) {
        self.next_expiry = self.next_expiry.min(until);
        self.expiries.push_back((until, key.clone()));
        self.entries.insert(key, (state, until));
    }
}

/// The in-process memory: a map with a hard bound on its entries.
pub struct LocalReplay {
    inner: Mutex<LocalInner>,
    capacity: AtomicUsize,
}

impl LocalReplay {
    /// An empty memory of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        LocalReplay {
            inner: Mutex::new(LocalInner {
                entries: HashMap::new(),
                expiries: VecDeque::new(),
                next_expiry: Instant::now(),
            }),
            capacity: AtomicUsize::new(capacity),
        }
    }

    /// A reload may change the bound; the entries stay.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, key: String, token: String, ttl: Duration) -> Result<Claim, GatewayError> {
        let now = Instant::now();
        let mut m = self.lock();
        m.sweep(now);
        match m.entries.get(&key) {
            Some((State::Delivered, until)) if *until > now => return Ok(Claim::Delivered),
            Some((State::InProgress(_), until)) if *until > now => return Ok(Claim::InProgress),
            Some(_) => {}
            None => {
                if m.entries.len() >= self.capacity.load(Ordering::Acquire) {
                    // Expiries are not written in order (claims and deliveries keep for
                    // different times), so an expired entry may sit behind a live one:
                    // when full, scan, at most once per earliest expiry.
                    if now >= m.next_expiry {
                        m.entries.retain(|_, (_, until)| *until > now);
                        m.next_expiry = m.entries.values().map(|(_, until)| *until).min().unwrap_or(now);
                        let entries = &m.entries;
                        let kept: VecDeque<_> =
                            m.expiries.iter().filter(|(_, k)| entries.contains_key(k)).cloned().collect();
                        m.expiries = kept;
                    }
                    if m.entries.len() >= self.capacity.load(Ordering::Acquire) {
                        return Err(GatewayError::ReplayStoreUnavailable("the local replay memory is full"));
                    }
                }
            }
        }
        m.write(key.clone(), State::InProgress(token.clone()), now + ttl);
        Ok(Claim::Fresh(Ticket { key, token }))
    }

    fn delivered(&self, ticket: Ticket, keep: Duration) {
        let until = Instant::now() + keep;
        self.lock().write(ticket.key, State::Delivered, until);
    }

    fn failed(&self, ticket: Ticket) {
        let mut m = self.lock();
        if m.entries.get(&ticket.key).is_some_and(|(s, _)| *s == State::InProgress(ticket.token.clone())) {
            m.entries.remove(&ticket.key);
        }
    }

    /// Entries held now (expired ones included until the next scan).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Claims the key if absent; else returns what is there. KEYS[1]: pair. ARGV[1]: value.
/// ARGV[2]: expiry (ms).
pub const CLAIM: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'fresh' end
return redis.call('GET', KEYS[1]) or 'gone'
"#;

/// Deletes the key only if it still holds this delivery's claim. ARGV[1]: value.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The memory in Redis.
pub struct RedisReplay {
    link: Arc<RedisLink>,
    claim: redis::Script,
    release: redis::Script,
}

impl RedisReplay {
    /// A memory on `link`.
    pub fn new(link: Arc<RedisLink>) -> Self {
        RedisReplay { link, claim: redis::Script::new(CLAIM), release: redis::Script::new(RELEASE) }
    }

    /// The link (its config decides whether a reload keeps this memory).
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    async fn claim(&self, key: String, token: String, ttl: Duration) -> Result<Claim, GatewayError> {
        let unavailable = |_| GatewayError::ReplayStoreUnavailable("Redis cannot answer");
        let mut conn = self.link.connection().await.map_err(unavailable)?;
        let value = format!("p:{token}");
        let mut call = self.claim.key(&key);
        call.arg(&value).arg(ttl.as_millis().max(1) as u64);
        let found: String = self.link.bounded(call.invoke_async(&mut conn)).await.map_err(unavailable)?;
        Ok(match found.as_str() {
            "fresh" => Claim::Fresh(Ticket { key, token }),
            "d" => Claim::Delivered,
            // Another delivery's claim, or one that expired between the two commands.
            _ => Claim::InProgress,
        })
    }

    async fn delivered(&self, ticket: Ticket, keep: Duration) {
        let Ok(mut conn) = self.link.connection().await else {
            tracing::warn!("callback delivered but Redis cannot record it; a retry after the claim expires would be delivered again");
            return;
        };
        let set = redis::cmd("SET").arg(&ticket.key).arg("d").arg("PX").arg(keep.as_millis().max(1) as u64).to_owned();
        if self.link.bounded(set.query_async::<()>(&mut conn)).await.is_err() {
            tracing::warn!("callback delivered but Redis cannot record it; a retry after the claim expires would be delivered again");
        }
    }

    async fn failed(&self, ticket: Ticket) {
        let Ok(mut conn) = self.link.connection().await else { return };
        let mut call = self.release.key(&ticket.key);
        call.arg(format!("p:{}", ticket.token));
        // On failure the claim simply expires.
        let _ = self.link.bounded(call.invoke_async::<i64>(&mut conn)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(l: &LocalReplay, key: &str) -> Result<Claim, GatewayError> {
        l.claim(key.into(), uuid::Uuid::new_v4().to_string(), Duration::from_secs(10))
    }

    #[test]
    fn a_pair_is_fresh_once_then_in_progress_then_delivered() {
        let l = LocalReplay::new(10);
        let Ok(Claim::Fresh(t)) = claim(&l, "a") else { panic!() };
        assert!(matches!(claim(&l, "a"), Ok(Claim::InProgress)));
        l.delivered(t, Duration::from_secs(60));
        assert!(matches!(claim(&l, "a"), Ok(Claim::Delivered)));
        assert!(matches!(claim(&l, "b"), Ok(Claim::Fresh(_))));
    }

    #[test]
    fn a_failed_delivery_frees_the_pair_for_a_retry() {
        let l = LocalReplay::new(10);
        let Ok(Claim::Fresh(t)) = claim(&l, "a") else { panic!() };
        l.failed(t);
        assert!(matches!(claim(&l, "a"), Ok(Claim::Fresh(_))));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn expired_entries_are_dropped_long_before_the_memory_is_full() {
        let l = LocalReplay::new(1_000);
        for i in 0..100 {
            let Ok(Claim::Fresh(t)) = l.claim(format!("k{i}"), "t".into(), Duration::from_millis(30)) else { panic!() };
            l.delivered(t, Duration::from_millis(30));
        }
        assert_eq!(l.len(), 100);
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(claim(&l, "fresh"), Ok(Claim::Fresh(_))));
        assert_eq!(l.len(), 1, "the expired 100 were swept by the next claim");
        assert!(l.lock().expiries.len() <= 2);
    }

    #[test]
    fn a_full_memory_refuses_rather_than_forgets_and_recovers_when_entries_expire() {
        let l = LocalReplay::new(2);
        for k in ["a", "b"] {
            let Ok(Claim::Fresh(t)) = l.claim(k.into(), "t".into(), Duration::from_millis(50)) else { panic!() };
            l.delivered(t, Duration::from_millis(50));
        }
        let e = claim(&l, "c").unwrap_err();
        assert_eq!((e.status(), e.code()), (503, 50301));
        assert!(matches!(claim(&l, "a"), Ok(Claim::Delivered)), "a known pair is still answered");
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(claim(&l, "c"), Ok(Claim::Fresh(_))));
        assert_eq!(l.len(), 1);
    }
}
