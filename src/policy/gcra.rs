//! Fleet-wide GCRA in Redis: one atomic script call per request on a `net::redis::RedisLink`.
//!
//! The script keeps one value per tenant, its theoretical arrival time (TAT, in
//! microseconds of Redis's own clock, so replicas with skewed clocks still agree), and
//! admits a request when the new TAT stays within the burst tolerance. It is sent once
//! and then called by hash (`EVALSHA`, the `redis` crate's `Script`).

use std::sync::Arc;
use std::time::Duration;

use super::admission::{RateDecision, RateState};
use crate::net::redis::{BackendUnavailable, RedisLink, RedisMetrics};
use nxgate_core::config::{RateLimit, RedisConfig};

/// GCRA step (also loaded by `nxgate check --probe`). KEYS[1]: tenant key. ARGV[1]:
/// emission interval T (µs). ARGV[2]: burst. Returns {admitted (0/1), retry_after_us,
/// remaining, reset_us}.
pub const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(tolerance / 1000) + 1000)
return {1, 0, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now}
"#;

/// The Redis backend of one `redis:` config.
pub struct RedisGcra {
    link: Arc<RedisLink>,
    script: redis::Script,
}

impl RedisGcra {
    /// A backend for `config`; connects in the background.
    pub fn new(config: RedisConfig, metrics: Option<RedisMetrics>) -> Self {
        RedisGcra { link: RedisLink::new(config, "rate-limit backend", metrics), script: redis::Script::new(GCRA) }
    }

    /// The config this backend talks to (a reload keeps the backend if it is unchanged).
    pub fn config(&self) -> &RedisConfig {
        self.link.config()
    }

    /// The key of the budget of the NXCloud account `uuid`: one per account, shared by
    /// every replica (hash-tagged with Cluster). Made once per tenant and generation.
    pub fn key(&self, uuid: &str) -> String {
        format!("nxgate:ratelimit:{}", self.link.tenant_tag(uuid))
    }

    /// One GCRA step on `key`; `Err` when Redis did not answer in time.
    pub async fn check(self: &Arc<Self>, key: &str, limit: RateLimit) -> Result<RateDecision, BackendUnavailable> {
        let mut conn = self.link.connection().await?;
        let interval_us = 1_000_000u64 / u64::from(limit.per_second);
        let mut invocation = self.script.key(key);
        invocation.arg(interval_us.max(1)).arg(limit.burst);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        let (admitted, retry_us, remaining, reset_us) = self.link.bounded(call).await?;
        let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
        let state = RateState { limit, remaining: remaining.max(0) as u32, reset: micros(reset_us) };
        Ok(if admitted == 1 {
            RateDecision::Allowed(Some(state))
        } else {
            RateDecision::Limited { retry_after: micros(retry_us), state }
        })
    }
}
