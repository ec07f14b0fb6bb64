//! Per-tenant admission: a GCRA rate limit and a concurrency cap.
//!
//! Two kinds of rate limiter, chosen by `rate_limit_backend.kind`:
//! - **local** (`governor`): state in this process, lock-free, nanoseconds per check. Each
//!   replica limits on its own, so N replicas admit up to N times the rate.
//! - **redis**: one atomic GCRA step per request in a Lua script (`redis.rs`), so every
//!   replica shares one budget per tenant and the limit holds for the fleet. When Redis
//!   cannot answer within `REDIS_TIMEOUT`, `on_redis_error` decides: limit locally
//!   meanwhile, deny, or allow. Never a hang.
//!
//! Tenants have different quotas, which one `governor` keyed limiter (one quota for every
//! key) cannot express, so each limited tenant gets its own direct limiter, held in its
//! per-tenant record (`state`), which the request path reaches by position, without locks.
//!
//! State survives reloads: a tenant whose limit is unchanged keeps its limiter (and its
//! in-flight counter always carries over), so a reload never hands out a fresh burst.
//! The concurrency cap (`max_in_flight`) is always local: it protects this process.

use bytes::BytesMut;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{clock::DefaultClock, Quota};
use http::HeaderValue;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nxgate_core::config::{GatewayConfig, OnRedisError, RateLimit, RateLimitKind, Tenant};

use super::gcra::RedisGcra;
use crate::net::redis::{BackendUnavailable, RedisMetrics, REDIS_TIMEOUT};

type Governor = governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A tenant's rate-limit state after one admission decision, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The policy.
    pub limit: RateLimit,
    /// Requests that could be admitted right now.
    pub remaining: u32,
    /// Time until the full burst is available again.
    pub reset: Duration,
}

/// The outcome of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Admitted; `None` when the tenant has no limit or the backend could not say.
    Allowed(Option<RateState>),
    /// Over the limit: retry after this long.
    Limited {
        /// When one request will be admitted again.
        retry_after: Duration,
        /// The state, for the headers.
        state: RateState,
    },
}

/// `RateLimit-Policy` value (draft-ietf-httpapi-ratelimit-headers): a quota of `burst`
/// requests per window `w`, the seconds the sustained rate needs to refill the burst.
/// Made once per tenant and config generation ([`TenantAdmission::policy`]).
pub fn policy_header(limit: &RateLimit) -> HeaderValue {
    let window = limit.burst.div_ceil(limit.per_second).max(1);
    HeaderValue::try_from(format!("\"tenant\";q={};w={}", limit.burst, window)).expect("ASCII digits")
}

/// `RateLimit` value: remaining quota `r` and seconds `t` until it is full again. Per
/// request, so written with `itoa` into one buffer: `format!` cost more than the limiter.
pub fn state_header(state: &RateState) -> HeaderValue {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (r.format(state.remaining), t.format(ceil_secs(state.reset)));
    let mut v = BytesMut::with_capacity(STATE_PREFIX.len() + r.len() + 3 + t.len());
    v.extend_from_slice(STATE_PREFIX);
    v.extend_from_slice(r.as_bytes());
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t.as_bytes());
    HeaderValue::from_maybe_shared(v.freeze()).expect("ASCII digits")
}

/// What every `RateLimit` value starts with.
const STATE_PREFIX: &[u8] = b"\"tenant\";r=";

/// Whole seconds, rounded up (Retry-After and `t=` take integers).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One tenant's in-flight counter, shared across config generations.
#[derive(Debug, Default)]
pub struct InFlightCounter(AtomicU32);

/// Holds one in-flight slot of a tenant until dropped.
#[must_use = "the slot is released when this is dropped"]
#[derive(Debug)]
pub struct InFlightSlot(Arc<InFlightCounter>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlightCounter {
    /// Takes a slot if fewer than `max` are taken; never waits.
    ///
    /// Compare-and-swap, not increment-then-undo: with the undo, refused requests would
    /// inflate the count for a moment and refuse a request that should fit.
    pub fn try_acquire(self: &Arc<Self>, max: Option<u32>) -> Option<InFlightSlot> {
        let limit = max.unwrap_or(u32::MAX);
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| (taken < limit).then_some(taken + 1))
            .ok()
            .map(|_| InFlightSlot(self.clone()))
    }

    /// Slots taken now.
    pub fn current(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// A limited tenant's local limiter and the policy it was built for.
struct LocalLimiter {
    limit: RateLimit,
    governor: Governor,
}

impl LocalLimiter {
    fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(limit.per_second).expect("validated > 0"))
            .allow_burst(NonZeroU32::new(limit.burst).expect("validated > 0"));
        LocalLimiter { limit, governor: governor::RateLimiter::direct(quota).with_middleware() }
    }

    fn check(&self) -> RateDecision {
        use governor::clock::Clock;
        let per_request = Duration::from_secs(1) / self.limit.per_second;
        match self.governor.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = per_request * (self.limit.burst - remaining.min(self.limit.burst));
                RateDecision::Allowed(Some(RateState { limit: self.limit, remaining, reset }))
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                let state = RateState { limit: self.limit, remaining: 0, reset: per_request * self.limit.burst };
                RateDecision::Limited { retry_after, state }
            }
        }
    }
}

/// One tenant's admission state: part of its per-tenant record, carried across reloads.
pub struct TenantAdmission {
    limit: Option<RateLimit>,
    /// The `RateLimit-Policy` value of `limit`.
    policy: Option<HeaderValue>,
    local: Option<Arc<LocalLimiter>>,
    max_in_flight: Option<u32>,
    in_flight: Arc<InFlightCounter>,
    /// The Redis key of the account's budget, one per NXCloud account, shared by every
    /// replica (`None` without a Redis backend).
    redis_key: Option<String>,
}

impl TenantAdmission {
    /// Admission for `t` against `rates`, keeping `previous`'s in-flight count always and
    /// its limiter when the limit is unchanged (a reload never hands out a fresh burst).
    pub fn new(t: &Tenant, previous: Option<&TenantAdmission>, rates: &RateBackend) -> Self {
        let local = t.rate_limit.map(|limit| match previous.and_then(|p| p.local.as_ref()) {
            Some(kept) if kept.limit == limit => kept.clone(),
            _ => Arc::new(LocalLimiter::new(limit)),
        });
        TenantAdmission {
            limit: t.rate_limit,
            policy: t.rate_limit.as_ref().map(policy_header),
            local,
            max_in_flight: t.max_in_flight,
            in_flight: previous.map(|p| p.in_flight.clone()).unwrap_or_default(),
            redis_key: rates.redis.as_ref().map(|r| r.key(&t.uuid)),
        }
    }

    /// The `RateLimit-Policy` header value, for a tenant with a rate limit.
    pub fn policy(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }

    /// Takes an in-flight slot, or `None` if the tenant is at `max_in_flight`.
    pub fn try_enter(&self) -> Option<InFlightSlot> {
        self.in_flight.try_acquire(self.max_in_flight)
    }
}

/// Where rate limits are kept, shared by every tenant of a generation: in each tenant's
/// own limiter, or in Redis with a policy for when Redis cannot answer.
pub struct RateBackend {
    redis: Option<Arc<RedisGcra>>,
    on_redis_error: OnRedisError,
}

impl RateBackend {
    /// The backend `config` names, keeping `previous`'s Redis connection when the `redis:`
    /// config is the same; Redis links report into `metrics`.
    pub fn new(config: &GatewayConfig, previous: Option<&RateBackend>, metrics: Option<RedisMetrics>) -> Self {
        let backend = &config.rate_limit_backend;
        let redis = match backend.kind {
            RateLimitKind::Local => None,
            RateLimitKind::Redis => Some(match previous.and_then(|p| p.redis.as_ref()) {
                Some(r) if r.config() == &config.redis => r.clone(),
                _ => Arc::new(RedisGcra::new(config.redis.clone(), metrics)),
            }),
        };
        RateBackend { redis, on_redis_error: backend.on_redis_error }
    }

    /// The rate decision for one request of tenant `t`.
    pub async fn check(&self, t: &TenantAdmission) -> RateDecision {
        let (Some(limit), Some(local)) = (t.limit, t.local.as_ref()) else { return RateDecision::Allowed(None) };
        let (Some(redis), Some(key)) = (&self.redis, &t.redis_key) else { return local.check() };
        // Boxed: only the Redis backend pays for its client's large future.
        match Box::pin(redis.check(key, limit)).await {
            Ok(decision) => decision,
            Err(BackendUnavailable) => match self.on_redis_error {
                OnRedisError::LocalFallback => local.check(),
                OnRedisError::Allow => RateDecision::Allowed(None),
                OnRedisError::Deny => {
                    let state = RateState { limit, remaining: 0, reset: REDIS_TIMEOUT };
                    // Redis may be back any moment; ask for the shortest useful wait.
                    RateDecision::Limited { retry_after: Duration::from_secs(1), state }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_fresh_local_limiter_admits_exactly_the_burst() {
        let l = LocalLimiter::new(limit(1, 5));
        let started = std::time::Instant::now();
        let admitted = (0..20).filter(|_| matches!(l.check(), RateDecision::Allowed(_))).count();
        assert_eq!(admitted, 5);
        match l.check() {
            RateDecision::Limited { retry_after, state } => {
                // The next token is due 1 s after the first admission: measured from
                // before it (the limiter's clock is not tokio's, so it cannot be paused),
                // no later than 1 s from now and no sooner than 1 s minus what has passed.
                let passed = started.elapsed();
                assert!(
                    retry_after + passed >= Duration::from_secs(1) && retry_after <= Duration::from_secs(1),
                    "{retry_after:?} after {passed:?}"
                );
                assert_eq!(state.remaining, 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn remaining_counts_down_with_each_admission() {
        let l = LocalLimiter::new(limit(1, 3));
        let remaining: Vec<u32> = (0..3)
            .map(|_| match l.check() {
                RateDecision::Allowed(Some(s)) => s.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
    }

    #[test]
    fn in_flight_slots_are_capped_and_released_on_drop() {
        let c = Arc::new(InFlightCounter::default());
        let held: Vec<_> = (0..3).map(|_| c.try_acquire(Some(3)).expect("under the cap")).collect();
        assert!(c.try_acquire(Some(3)).is_none());
        assert_eq!(c.current(), 3);
        drop(held);
        assert_eq!(c.current(), 0);
        assert!(c.try_acquire(None).is_some());
    }

    #[test]
    fn refused_acquisitions_never_crowd_out_a_request_that_fits() {
        // Many threads race for 3 slots while 2 are held: exactly one more may get in.
        let c = Arc::new(InFlightCounter::default());
        let _held: Vec<_> = (0..2).map(|_| c.try_acquire(Some(3)).unwrap()).collect();
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let got: usize = (0..16)
            .map(|_| {
                let (c, barrier) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    c.try_acquire(Some(3)).map(std::mem::forget).is_some()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(got, 1);
        assert_eq!(c.current(), 3);
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let l = limit(50, 100);
        assert_eq!(policy_header(&l), "\"tenant\";q=100;w=2");
        assert_eq!(policy_header(&limit(100, 10)), "\"tenant\";q=10;w=1");
        let s = RateState { limit: l, remaining: 7, reset: Duration::from_millis(1500) };
        assert_eq!(state_header(&s), "\"tenant\";r=7;t=2");
        let s = RateState { limit: l, remaining: u32::MAX, reset: Duration::ZERO };
        assert_eq!(state_header(&s), "\"tenant\";r=4294967295;t=0");
        let s = RateState { limit: l, remaining: 0, reset: Duration::from_secs(86_400) };
        assert_eq!(state_header(&s), "\"tenant\";r=0;t=86400");
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
