//! The outbox in Redis: shared by every replica, so any of them delivers what any of them
//! accepted, and a replica that dies mid-delivery leaves its callbacks to the others once
//! their lease runs out.
//!
//! Keys (all of one tenant under one prefix, `nxgate:outbox:<tag>:`, the tag being
//! [`RedisLink::tenant_tag`], so with Cluster they share one hash slot and every script
//! below runs on one node):
//! - `rec:<requestID>`, a hash: `id` (the `webhook-id`), `meta` (the [`Callback`] as JSON),
//!   `body`, `attempts`, `last_error`, `stage` (`q` queued, `d` dead, `x` delivered),
//!   `received` (accepted, ms), `since` (dead since, ms), `until` (delivered: a duplicate
//!   until, ms);
//! - `due`: a sorted set, requestID → due ms (queued ones only; taking one for an attempt
//!   moves it past the attempt's lease);
//! - `waiting`: requestID → accepted ms (queued ones only: the count and the oldest);
//! - `dead`: requestID → dead since ms;
//! - `delivered`: requestID → until ms, so delivered ids past their window are found.
//!
//! Every change is one Lua script, atomic on the server: two replicas never take the same
//! callback at once, and a crash leaves no half-written callback. Times are always the
//! caller's `now_ms` (never Redis' clock), so the store means the same as the embedded one.

use bytes::Bytes;
use redis::{Script, ScriptInvocation};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Answer, Callback, DeadLetter, Depth, Intake, Job, KeyClaim, Settle, StoreError, DEAD_LETTER_KEEP};
use crate::net::redis::{RedisConnection, RedisLink};

/// Most delivered ids and most dead letters one `depth` call forgets per tenant, so a
/// backlog of them is worked off over several calls rather than block Redis in one script.
const PURGE_BATCH: u64 = 1_000;

// The scripts name their fixed keys in KEYS; the per-callback `rec:` keys of a tenant are
// built inside the script from the tenant's prefix (ARGV[1] where passed), which carries
// the same hash tag as the KEYS, so with Cluster they are in the script's slot.

/// Intake. KEYS: rec, due, waiting, delivered. ARGV: requestID, max queued, accepted ms,
/// due ms, meta, body, id. Returns `stored`, `duplicate` or `full`.
pub const INTAKE: &str = r#"
local stale = false
local stage = redis.call('HGET', KEYS[1], 'stage')
if stage then
  local upto = tonumber(redis.call('HGET', KEYS[1], 'until') or '')
  -- A delivered id past its window is as good as forgotten (Redis may not have expired it yet).
  if stage == 'x' and upto and upto <= tonumber(ARGV[3]) then stale = true else return 'duplicate' end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return 'duplicate'
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return 'full' end
if stale then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], 'id', ARGV[7], 'meta', ARGV[5], 'body', ARGV[6], 'attempts', '0',
  'last_error', '', 'stage', 'q', 'received', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 'stored'
"#;

/// Takes due callbacks. KEYS: due, waiting. ARGV: prefix, now ms, lease end ms, limit.
/// Returns `{meta, body, attempt}` per callback taken.
pub const TAKE: &str = r#"
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
for _, m in ipairs(due) do
  local rec = ARGV[1] .. 'rec:' .. m
  local f = redis.call('HMGET', rec, 'stage', 'meta', 'body')
  if f[1] == 'q' then
    redis.call('ZADD', KEYS[1], ARGV[3], m)
    local n = redis.call('HINCRBY', rec, 'attempts', 1)
    out[#out + 1] = {f[2], f[3] or '', n}
  else
    -- No queued record behind it (evicted, or deleted by hand): it cannot be delivered.
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
  end
end
return out
"#;

/// Settles an attempt. KEYS: rec, due, waiting, dead, delivered. ARGV: `x` (delivered),
/// `r` (retry) or `d` (dead), requestID, attempt, now ms, until ms (delivered: end of the
/// window; retry: next due), keep ms, error. Returns 1 if it applied.
pub const SETTLE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'stage', 'attempts')
local stage, m = f[1], ARGV[2]
if not stage then return 0 end
if ARGV[1] == 'x' then
  -- Whichever attempt says so: the receiver has it.
  if stage == 'x' then return 0 end
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZREM', KEYS[4], m)
  -- Only the marker stays: the body and headers are no longer needed.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'stage', 'x', 'until', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[5], m)
  -- The index outlives its longest window, so a tenant no longer asked about frees it too.
  if redis.call('PTTL', KEYS[5]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[5], ARGV[6]) end
  return 1
end
-- Only the attempt that holds the callback may reschedule or kill it.
if stage ~= 'q' or tonumber(f[2]) ~= tonumber(ARGV[3]) then return 0 end
if ARGV[1] == 'r' then
  redis.call('ZADD', KEYS[2], ARGV[5], m)
  redis.call('HSET', KEYS[1], 'last_error', ARGV[7])
else
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZADD', KEYS[4], ARGV[4], m)
  redis.call('HSET', KEYS[1], 'stage', 'd', 'since', ARGV[4], 'last_error', ARGV[7])
end
return 1
"#;

/// Lists dead letters, oldest first. KEYS: dead. ARGV: prefix. Returns `{meta, attempts,
/// last_error, since}` per dead letter.
pub const DEAD: &str = r#"
local out = {}
local dead = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #dead, 2 do
  local f = redis.call('HMGET', ARGV[1] .. 'rec:' .. dead[i], 'stage', 'meta', 'attempts', 'last_error', 'since')
  if f[1] == 'd' then out[#out + 1] = {f[2], f[3] or '0', f[4] or '', f[5] or dead[i + 1]} end
end
return out
"#;

/// Queues dead letters again. KEYS: due, waiting, dead. ARGV: prefix, now ms, id (empty:
/// all). Returns how many.
pub const REDRIVE: &str = r#"
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local rec = ARGV[1] .. 'rec:' .. m
  local f = redis.call('HMGET', rec, 'stage', 'id', 'received')
  if ARGV[3] == '' or f[2] == ARGV[3] then
    redis.call('ZREM', KEYS[3], m)
    if f[1] == 'd' then
      redis.call('HSET', rec, 'stage', 'q', 'attempts', '0')
      redis.call('HDEL', rec, 'since')
      redis.call('ZADD', KEYS[1], ARGV[2], m)
      redis.call('ZADD', KEYS[2], f[3] or ARGV[2], m)
      n = n + 1
    end
    if ARGV[3] ~= '' then break end
  end
end
return n
"#;

/// A tenant's depth, forgetting what is past its time. KEYS: waiting, dead, delivered.
/// ARGV: prefix, now ms, dead-letter cutoff ms, purge batch. Returns `{queued, oldest
/// accepted ms or nil, dead}`.
pub const DEPTH: &str = r#"
local p = ARGV[1] .. 'rec:'
local batch = tonumber(ARGV[4])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, batch)) do
  if redis.call('HGET', p .. m, 'stage') == 'x' then redis.call('DEL', p .. m) end
  redis.call('ZREM', KEYS[3], m)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3], 'LIMIT', 0, batch)) do
  if redis.call('HGET', p .. m, 'stage') == 'd' then redis.call('DEL', p .. m) end
  redis.call('ZREM', KEYS[2], m)
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', KEYS[1]), oldest[2] or false, redis.call('ZCARD', KEYS[2])}
"#;

/// Claims an `Idempotency-Key`. KEYS[1]: the key's hash. ARGV: fingerprint, token,
/// in-flight expiry (ms). Returns `{'new'}`, `{'reused'}`, `{'progress'}` or
/// `{'done', answer JSON, body}`.
pub const KEY_CLAIM: &str = r#"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'new'}
end
if fp ~= ARGV[1] then return {'reused'} end
local answer = redis.call('HGET', KEYS[1], 'answer')
if not answer then return {'progress'} end
return {'done', answer, redis.call('HGET', KEYS[1], 'body')}
"#;

/// Records the answer of the request holding the key. ARGV: token, answer JSON, body,
/// retention (ms).
pub const KEY_COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'answer', ARGV[2], 'body', ARGV[3])
redis.call('HDEL', KEYS[1], 'token')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// Lets the key go if this request still holds it. ARGV: token.
pub const KEY_RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Every script of the outbox and the idempotency records, for `nxgate check --probe`.
pub const SCRIPTS: [&str; 9] = [INTAKE, TAKE, SETTLE, DEAD, REDRIVE, DEPTH, KEY_CLAIM, KEY_COMPLETE, KEY_RELEASE];

/// The key names of one tenant.
struct Keys {
    prefix: String,
}

impl Keys {
    fn rec(&self, request_id: &str) -> String {
        format!("{}rec:{request_id}", self.prefix)
    }
    fn due(&self) -> String {
        format!("{}due", self.prefix)
    }
    fn waiting(&self) -> String {
        format!("{}waiting", self.prefix)
    }
    fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }
    fn delivered(&self) -> String {
        format!("{}delivered", self.prefix)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Redis could not answer: the link has logged the reason (never the URL).
fn unavailable<E>(_: E) -> StoreError {
    StoreError("Redis is unreachable or did not answer in time".to_owned())
}

fn corrupt(what: &str) -> StoreError {
    StoreError(format!("an outbox record in Redis is not readable ({what})"))
}

/// A number Redis returned as text (a score may be written as a float).
fn number(text: &str) -> Result<u64, StoreError> {
    text.parse::<u64>().or_else(|_| text.parse::<f64>().map(|f| f as u64)).map_err(|_| corrupt("a number"))
}

/// The scripts with their hashes, computed once per outbox.
struct ScriptSet {
    intake: Script,
    take: Script,
    settle: Script,
    dead: Script,
    redrive: Script,
    depth: Script,
    key_claim: Script,
    key_complete: Script,
    key_release: Script,
}

/// The outbox in Redis.
pub struct RedisOutbox {
    link: arc_swap::ArcSwap<RedisLink>,
    /// Boxed: six scripts inline would make `Backend` ~300 bytes for its Redis variant.
    scripts: Box<ScriptSet>,
    /// Where the next `take_due` starts among the tenants, so a tenant with a large
    /// backlog does not fill every batch before the others are looked at.
    turn: AtomicUsize,
}

impl RedisOutbox {
    /// An outbox on `link`.
    pub fn new(link: Arc<RedisLink>) -> Self {
        RedisOutbox {
            link: arc_swap::ArcSwap::new(link),
            scripts: Box::new(ScriptSet {
                intake: Script::new(INTAKE),
                take: Script::new(TAKE),
                settle: Script::new(SETTLE),
                dead: Script::new(DEAD),
                redrive: Script::new(REDRIVE),
                depth: Script::new(DEPTH),
                key_claim: Script::new(KEY_CLAIM),
                key_complete: Script::new(KEY_COMPLETE),
                key_release: Script::new(KEY_RELEASE),
            }),
            turn: AtomicUsize::new(0),
        }
    }

    /// The link in use now.
    pub fn link(&self) -> Arc<RedisLink> {
        self.link.load_full()
    }

    /// Moves to `link` (a reload changed `redis:`): the next call uses it. What is stored
    /// stays where it is: pointed at the same data (a new password, another address of
    /// the same server), nothing changes; pointed at another Redis, what waits in the old
    /// one is delivered by the gateways still using it.
    pub fn relink(&self, link: Arc<RedisLink>) {
        self.link.store(link);
    }

    fn keys(&self, uuid: &str) -> Keys {
        Keys { prefix: format!("nxgate:outbox:{}:", self.link.load().tenant_tag(uuid)) }
    }

    async fn connection(&self) -> Result<RedisConnection, StoreError> {
        self.link.load_full().connection().await.map_err(unavailable)
    }

    /// Runs one script under the link's timeout and breaker.
    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut RedisConnection,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.link.load_full().bounded(call.invoke_async(conn)).await.map_err(unavailable)
    }

    /// See [`super::Outbox::intake`] (`max_queued` per tenant).
    pub async fn intake(
        &self,
        callback: Callback,
        body: Bytes,
        first_delay: Duration,
        max_queued: usize,
    ) -> Result<Intake, StoreError> {
        let keys = self.keys(&callback.uuid);
        let meta = serde_json::to_vec(&callback).map_err(|_| StoreError("a callback does not serialize".into()))?;
        let due_ms = callback.received_ms.saturating_add(ms(first_delay));
        let mut call = self.scripts.intake.key(keys.rec(&callback.request_id));
        call.key(keys.due()).key(keys.waiting()).key(keys.delivered());
        call.arg(&callback.request_id)
            .arg(u64::try_from(max_queued).unwrap_or(u64::MAX))
            .arg(callback.received_ms)
            .arg(due_ms)
            .arg(meta)
            .arg(&body[..])
            .arg(&callback.id);
        let mut conn = self.connection().await?;
        let answer: String = self.run(&mut conn, &call).await?;
        match answer.as_str() {
            "stored" => Ok(Intake::Stored),
            "duplicate" => Ok(Intake::Duplicate),
            "full" => Ok(Intake::Full),
            _ => Err(corrupt("an intake answer")),
        }
    }

    /// The hash of tenant `uuid`'s `Idempotency-Key` (in the tenant's slot with Cluster).
    fn key_hash(&self, uuid: &str, key: &str) -> String {
        format!("nxgate:idempotency:{}:{key}", self.link.load().tenant_tag(uuid))
    }

    /// See [`super::Outbox::claim_key`]. Expiry is Redis's own (`PEXPIRE`), so `now_ms`
    /// is not needed here.
    pub async fn claim_key(
        &self,
        uuid: &str,
        key: &str,
        fingerprint: &str,
        in_flight: Duration,
        _now_ms: u64,
    ) -> Result<KeyClaim, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut call = self.scripts.key_claim.key(self.key_hash(uuid, key));
        call.arg(fingerprint).arg(&token).arg(ms(in_flight).max(1));
        let mut conn = self.connection().await?;
        let found: Vec<Vec<u8>> = self.run(&mut conn, &call).await?;
        Ok(match found.first().map(Vec::as_slice) {
            Some(b"new") => KeyClaim::New(token),
            Some(b"reused") => KeyClaim::Reused,
            Some(b"progress") => KeyClaim::InProgress,
            Some(b"done") if found.len() == 3 => {
                let mut answer: Answer =
                    serde_json::from_slice(&found[1]).map_err(|_| corrupt("an idempotency answer"))?;
                answer.body = Bytes::from(found[2].clone());
                KeyClaim::Replay(answer)
            }
            _ => return Err(corrupt("an idempotency claim")),
        })
    }

    /// See [`super::Outbox::purge_keys`]: nothing to do, Redis expires each key itself
    /// (`PEXPIRE`).
    pub async fn purge_keys(&self, _now_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// See [`super::Outbox::complete_key`].
    pub async fn complete_key(
        &self,
        uuid: &str,
        key: &str,
        token: &str,
        answer: &Answer,
        retention: Duration,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(answer).map_err(|_| StoreError("an answer does not serialize".into()))?;
        let mut call = self.scripts.key_complete.key(self.key_hash(uuid, key));
        call.arg(token).arg(json).arg(&answer.body[..]).arg(ms(retention).max(1));
        let mut conn = self.connection().await?;
        self.run::<i64>(&mut conn, &call).await.map(drop)
    }

    /// See [`super::Outbox::release_key`].
    pub async fn release_key(&self, uuid: &str, key: &str, token: &str) -> Result<(), StoreError> {
        let mut call = self.scripts.key_release.key(self.key_hash(uuid, key));
        call.arg(token);
        let mut conn = self.connection().await?;
        self.run::<i64>(&mut conn, &call).await.map(drop)
    }

    /// See [`super::Outbox::take_due`].
    pub async fn take_due(
        &self,
        uuids: &[String],
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        if limit == 0 || uuids.is_empty() {
            return Ok(jobs);
        }
        let mut conn = self.connection().await?;
        let until = now_ms.saturating_add(ms(lease));
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % uuids.len();
        for uuid in uuids[start..].iter().chain(&uuids[..start]) {
            let want = limit - jobs.len();
            if want == 0 {
                break;
            }
            let keys = self.keys(uuid);
            let mut call = self.scripts.take.key(keys.due());
            // Redis takes a LIMIT count up to i64::MAX; no batch comes near that.
            call.key(keys.waiting()).arg(&keys.prefix).arg(now_ms).arg(until).arg(want.min(i64::MAX as usize) as u64);
            let taken: Vec<(Vec<u8>, Vec<u8>, i64)> = self.run(&mut conn, &call).await?;
            for (meta, body, attempt) in taken {
                match serde_json::from_slice::<Callback>(&meta) {
                    Ok(callback) => jobs.push(Job {
                        callback,
                        body: Bytes::from(body),
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    }),
                    // Left leased: it comes back after the lease, and the others of this
                    // batch are still delivered.
                    Err(e) => tracing::warn!(uuid, error = %e, "an outbox record in Redis does not parse; skipped"),
                }
            }
        }
        Ok(jobs)
    }

    /// See [`super::Outbox::settle`].
    pub async fn settle(&self, job: &Job, settle: Settle, now_ms: u64) -> Result<(), StoreError> {
        let c = &job.callback;
        let keys = self.keys(&c.uuid);
        let (kind, at, keep, error) = match settle {
            Settle::Delivered { keep } => ("x", now_ms.saturating_add(ms(keep)), ms(keep).max(1), String::new()),
            Settle::Retry { after, error } => ("r", now_ms.saturating_add(ms(after)), 0, error),
            Settle::Dead { error } => ("d", now_ms, 0, error),
        };
        let mut call = self.scripts.settle.key(keys.rec(&c.request_id));
        call.key(keys.due()).key(keys.waiting()).key(keys.dead()).key(keys.delivered());
        call.arg(kind).arg(&c.request_id).arg(job.attempt).arg(now_ms).arg(at).arg(keep).arg(error);
        let mut conn = self.connection().await?;
        let _applied: i64 = self.run(&mut conn, &call).await?;
        Ok(())
    }

    /// See [`super::Outbox::dead_letters`].
    pub async fn dead_letters(&self, uuids: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        if uuids.is_empty() {
            return Ok(out);
        }
        let mut conn = self.connection().await?;
        for uuid in uuids {
            let keys = self.keys(uuid);
            let mut call = self.scripts.dead.key(keys.dead());
            call.arg(&keys.prefix);
            let dead: Vec<(Vec<u8>, String, String, String)> = self.run(&mut conn, &call).await?;
            for (meta, attempts, last_error, since) in dead {
                let callback = serde_json::from_slice::<Callback>(&meta).map_err(|_| corrupt("a dead letter"))?;
                let attempts = u32::try_from(number(&attempts)?).unwrap_or(u32::MAX);
                out.push(DeadLetter { callback, attempts, last_error, since_ms: number(&since)? });
            }
        }
        // Oldest first across tenants too.
        out.sort_by_key(|d| d.since_ms);
        Ok(out)
    }

    /// See [`super::Outbox::redrive`].
    pub async fn redrive(&self, uuids: &[String], id: Option<&str>, now_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        if uuids.is_empty() {
            return Ok(n);
        }
        let mut conn = self.connection().await?;
        for uuid in uuids {
            let keys = self.keys(uuid);
            let mut call = self.scripts.redrive.key(keys.due());
            call.key(keys.waiting()).key(keys.dead()).arg(&keys.prefix).arg(now_ms).arg(id.unwrap_or(""));
            let moved: u64 = self.run(&mut conn, &call).await?;
            n += moved as usize;
            // An id names one callback of one tenant.
            if id.is_some() && n > 0 {
                break;
            }
        }
        Ok(n)
    }

    /// See [`super::Outbox::depth`]; also forgets delivered ids past their window and dead
    /// letters past [`DEAD_LETTER_KEEP`] (Redis expires delivered ids too; this follows
    /// `now_ms`, and frees the index).
    pub async fn depth(&self, uuids: &[String], now_ms: u64) -> Result<HashMap<String, Depth>, StoreError> {
        let mut out = HashMap::new();
        if uuids.is_empty() {
            return Ok(out);
        }
        let mut conn = self.connection().await?;
        let cutoff = now_ms.saturating_sub(ms(DEAD_LETTER_KEEP));
        for uuid in uuids {
            let keys = self.keys(uuid);
            let mut call = self.scripts.depth.key(keys.waiting());
            call.key(keys.dead()).key(keys.delivered()).arg(&keys.prefix).arg(now_ms).arg(cutoff).arg(PURGE_BATCH);
            let (queued, oldest, dead): (u64, Option<String>, u64) = self.run(&mut conn, &call).await?;
            let oldest_received_ms = oldest.as_deref().map(number).transpose()?;
            out.insert(uuid.clone(), Depth { queued, oldest_received_ms, dead });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{contract, Backend, Outbox};
    use nxgate_core::config::RedisConfig;
    use nxgate_core::secret::Secret;
    use std::process::{Child, Command, Stdio};

    /// A private `redis-server` on a loopback port, killed when dropped.
    struct Server {
        port: u16,
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Server {
        /// redis-server cannot report a port it was given 0 for, so it is offered ports
        /// below the ephemeral range in turn; one already taken makes it exit.
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let seed = std::process::id() as usize * 7_919;
            for attempt in 0..50 {
                let port = 30_000 + ((seed + attempt * 2_741) % 2_700) as u16;
                let log = dir.path().join(format!("redis-{port}.log"));
                let mut child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--logfile")
                    .arg(&log)
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed");
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Ready to accept connections")) {
                        return Server { port, child, _dir: dir };
                    }
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "redis-server did not start on {port}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            panic!("no free port for redis-server after 50 tries");
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn config(port: u16) -> RedisConfig {
        RedisConfig {
            url: Secret::new(format!("redis://127.0.0.1:{port}").into_bytes()),
            host: format!("127.0.0.1:{port}"),
            // Generous: a loaded test machine must not open the breaker.
            timeout: Duration::from_secs(5),
            ..RedisConfig::default()
        }
    }

    /// An outbox on an emptied server.
    async fn fresh(link: &Arc<RedisLink>) -> Outbox {
        let mut conn = link.connection().await.expect("the test server answers");
        let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        Outbox::new(Backend::Redis(RedisOutbox::new(link.clone())))
    }

    #[tokio::test]
    async fn the_redis_store_keeps_the_contract() {
        let server = Server::start();
        let link = RedisLink::new(config(server.port), "test", None);
        contract::all(|| fresh(&link)).await;
    }

    #[tokio::test]
    async fn two_replicas_never_take_the_same_callback() {
        let server = Server::start();
        let link = RedisLink::new(config(server.port), "test", None);
        let one = Arc::new(fresh(&link).await);
        // The other replica: its own link and connection.
        let other =
            Arc::new(Outbox::new(Backend::Redis(RedisOutbox::new(RedisLink::new(config(server.port), "test", None)))));
        let t0 = 1_800_000_000_000;
        for i in 0..200 {
            let c = contract::callback(contract::A, &format!("r{i}"), t0);
            assert_eq!(one.intake(c, Bytes::from_static(b"{}"), Duration::ZERO, 1_000).await.unwrap(), Intake::Stored);
        }
        let mut tasks = Vec::new();
        for o in [one.clone(), other.clone(), one.clone(), other.clone()] {
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let jobs = o.take_due(&contract::tenants(), t0, Duration::from_secs(60), 7).await.unwrap();
                    if jobs.is_empty() {
                        return ids;
                    }
                    ids.extend(jobs.into_iter().map(|j| j.callback.id));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!((all.len(), distinct.len()), (200, 200), "each taken exactly once");
    }

    #[tokio::test]
    async fn max_queued_is_per_tenant_and_keys_are_under_the_tenant_prefix() {
        let server = Server::start();
        let link = RedisLink::new(config(server.port), "test", None);
        let o = fresh(&link).await;
        let t0 = 1_800_000_000_000;
        for (uuid, id, want) in [
            (contract::A, "r1", Intake::Stored),
            (contract::A, "r2", Intake::Full),
            (contract::B, "r1", Intake::Stored),
        ] {
            let got = o.intake(contract::callback(uuid, id, t0), Bytes::new(), Duration::ZERO, 1).await.unwrap();
            assert_eq!(got, want, "{uuid} {id}");
        }
        let mut conn = link.connection().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        keys.sort();
        let want: Vec<String> = [contract::A, contract::B]
            .iter()
            .flat_map(|u| ["due", "rec:r1", "waiting"].map(|k| format!("nxgate:outbox:{u}:{k}")))
            .collect();
        assert_eq!(keys, want);
        let all = o.take_due(&contract::tenants(), t0, Duration::from_secs(1), usize::MAX).await.unwrap();
        assert_eq!(all.len(), 2, "any limit is a valid LIMIT count");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_store_error_without_the_url() {
        let server = Server::start();
        let port = server.port;
        drop(server);
        let mut c = config(port);
        c.url = Secret::new(format!("redis://user:hunter2@127.0.0.1:{port}").into_bytes());
        c.timeout = Duration::from_millis(200);
        let o = RedisOutbox::new(RedisLink::new(c, "test", None));
        let started = std::time::Instant::now();
        let e = o
            .intake(contract::callback(contract::A, "r1", 1), Bytes::new(), Duration::ZERO, 10)
            .await
            .expect_err("nothing listens there");
        assert!(started.elapsed() < Duration::from_secs(3), "it does not hang");
        let text = e.to_string();
        assert!(!text.contains("hunter2") && !text.contains("redis://"), "{text}");
        assert!(o.depth(&contract::tenants(), 1).await.is_err());
    }
}
