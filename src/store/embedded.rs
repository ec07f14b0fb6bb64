//! The embedded store: `redb` in one file under `state.dir` (or in memory, for
//! `state.kind: "memory"`), holding the outbox and the replay memory of direct delivery.
//!
//! One writer thread owns the database. Every operation is a closure sent to it; the
//! thread runs whatever has queued up meanwhile in one write transaction and one durable
//! commit, and answers each operation only after that commit: group commit, so intake
//! is durable per callback at the cost of one fsync per batch, not per callback. The
//! operations of a batch run in order, each seeing the writes before it, so a batch means
//! the same as the operations one by one. redb locks the file, so a second process on
//! the same `state.dir` cannot open it.
//!
//! Tables (keys sort, so each index is a range scan): `callbacks` (id → record),
//! `bodies` (id → exact body bytes, while queued or dead), `due` ((due ms, id), queued
//! only), `waiting` ((uuid, accepted ms, id), queued only), `dead` ((uuid, since ms, id)),
//! `expiry` ((until ms, id), delivered ids), `replay` (direct delivery: key → (until
//! ms, state)) and `idempotency` / `idempotency_bodies` (tenant uuid + `Idempotency-Key`
//! → fingerprint, expiry, holder or recorded answer; the answer's body). `replay_expiry`
//! and `idempotency_expiry` index those two by expiry, so forgetting what expired reads
//! only what expired.

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{Answer, Callback, DeadLetter, Depth, Intake, Job, KeyClaim, Settle, StoreError, DEAD_LETTER_KEEP};

const CALLBACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("callbacks");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
const DUE: TableDefinition<(u64, &str), ()> = TableDefinition::new("due");
const WAITING: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("waiting");
const DEAD: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("dead");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
const REPLAY: TableDefinition<&str, (u64, &str)> = TableDefinition::new("replay");
const REPLAY_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("replay_expiry");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const KEY_BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_bodies");
const KEY_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_expiry");

/// An index of expiries, `(until ms, key)`: what is past its time is a range, not a scan.
type ExpiryIndex = TableDefinition<'static, (u64, &'static str), ()>;

/// The state file's name under `state.dir`.
pub const FILE_NAME: &str = "nxgate-state.redb";

/// Most operations in one commit.
const MAX_BATCH: usize = 1024;

/// Sorts after every id (`msg_` + hex) and every uuid-bound range end.
const ID_MAX: &str = "\u{10FFFF}";

/// Where a stored callback is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Stage {
    Queued { due_ms: u64 },
    Dead { since_ms: u64 },
    Delivered { until_ms: u64 },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    callback: Callback,
    attempts: u32,
    last_error: String,
    stage: Stage,
}

/// One `Idempotency-Key`: held by a request in flight (`token`) or answered (`answer`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyRecord {
    fingerprint: String,
    until_ms: u64,
    token: Option<String>,
    answer: Option<Answer>,
}

/// The table key of tenant `uuid`'s `key` (a uuid holds no newline).
fn scoped(uuid: &str, key: &str) -> String {
    format!("{uuid}\n{key}")
}

fn read_key(txn: &WriteTransaction, k: &str) -> Result<Option<KeyRecord>, redb::Error> {
    let table = txn.open_table(KEYS)?;
    let found = table.get(k)?;
    found
        .map(|v| {
            serde_json::from_slice(v.value())
                .map_err(|e| redb::Error::Corrupted(format!("an idempotency record does not parse: {e}")))
        })
        .transpose()
}

fn write_key(txn: &WriteTransaction, k: &str, r: &KeyRecord) -> Result<(), redb::Error> {
    let json = serde_json::to_vec(r).expect("a key record serializes");
    txn.open_table(KEYS)?.insert(k, json.as_slice())?;
    Ok(())
}

/// Queued and dead callbacks per tenant uuid, kept by the writer thread (counting the
/// index tables on every intake would be a scan).
#[derive(Debug, Clone, Default)]
struct Counts(HashMap<String, (u64, u64)>);

impl Counts {
    fn queued(&mut self, uuid: &str) -> &mut u64 {
        &mut self.0.entry(uuid.to_owned()).or_default().0
    }
    fn dead(&mut self, uuid: &str) -> &mut u64 {
        &mut self.0.entry(uuid.to_owned()).or_default().1
    }
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// An operation: its reply, and whether it wrote anything.
type Work = Box<dyn FnOnce(&WriteTransaction, &mut Counts) -> (Reply, bool) + Send>;

/// What a direct delivery finds in the replay memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayState {
    /// Not there (or expired): now claimed by this token.
    Claimed,
    /// Delivered.
    Delivered,
    /// Another delivery holds it.
    InProgress,
}

/// Why the store cannot open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the state file open.
    #[error(
        "state.dir: {0} is in use by another process (its state file is locked); each nxgate needs its own state.dir"
    )]
    InUse(PathBuf),
    /// The directory or file cannot be created or read.
    #[error("state.dir: cannot open the state file {0}: {1}")]
    Io(PathBuf, String),
}

/// The embedded store.
pub struct Embedded {
    work: mpsc::Sender<Work>,
    /// The state file, if on disk.
    path: Option<PathBuf>,
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("embedded store: {e}"))
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a record serializes")
}

fn decode(bytes: &[u8]) -> Result<Record, redb::Error> {
    serde_json::from_slice(bytes).map_err(|e| redb::Error::Corrupted(format!("an outbox record does not parse: {e}")))
}

fn read_record(txn: &WriteTransaction, id: &str) -> Result<Option<Record>, redb::Error> {
    let table = txn.open_table(CALLBACKS)?;
    let found = table.get(id)?;
    found.map(|v| decode(v.value())).transpose()
}

fn write_record(txn: &WriteTransaction, r: &Record) -> Result<(), redb::Error> {
    txn.open_table(CALLBACKS)?.insert(r.callback.id.as_str(), encode(r).as_slice())?;
    Ok(())
}

/// Takes `r` (queued) off the queue's indexes.
fn unqueue(txn: &WriteTransaction, r: &Record, counts: &mut Counts) -> Result<(), redb::Error> {
    if let Stage::Queued { due_ms } = r.stage {
        let c = &r.callback;
        txn.open_table(DUE)?.remove((due_ms, c.id.as_str()))?;
        txn.open_table(WAITING)?.remove((c.uuid.as_str(), c.received_ms, c.id.as_str()))?;
        let q = counts.queued(&c.uuid);
        *q = q.saturating_sub(1);
    }
    Ok(())
}

/// Puts `r` on the queue, due at `due_ms`, with a fresh schedule.
fn enqueue(txn: &WriteTransaction, r: &mut Record, due_ms: u64, counts: &mut Counts) -> Result<(), redb::Error> {
    let c = &r.callback;
    txn.open_table(DUE)?.insert((due_ms, c.id.as_str()), ())?;
    txn.open_table(WAITING)?.insert((c.uuid.as_str(), c.received_ms, c.id.as_str()), ())?;
    *counts.queued(&c.uuid) += 1;
    r.stage = Stage::Queued { due_ms };
    r.attempts = 0;
    write_record(txn, r)
}

/// Moves `key`'s entry in `index` from `old` to `new` (either may be absent).
fn reindex(
    txn: &WriteTransaction,
    index: ExpiryIndex,
    key: &str,
    old: Option<u64>,
    new: Option<u64>,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(index)?;
    if let Some(until) = old {
        table.remove((until, key))?;
    }
    if let Some(until) = new {
        table.insert((until, key), ())?;
    }
    Ok(())
}

/// Takes the entries of `index` that expired by `now_ms` out of it: their keys.
fn take_expired(txn: &WriteTransaction, index: ExpiryIndex, now_ms: u64) -> Result<Vec<String>, redb::Error> {
    let mut table = txn.open_table(index)?;
    let mut out = Vec::new();
    // Expired means `until <= now`, as every reader of these tables decides it.
    for entry in table.range(..=(now_ms, ID_MAX))? {
        let (key, _) = entry?;
        out.push(key.value().1.to_owned());
    }
    if !out.is_empty() {
        table.retain_in(..=(now_ms, ID_MAX), |_, _| false)?;
    }
    Ok(out)
}

/// Forgets the idempotency keys whose claim or retention ran out by `now_ms`; how many.
fn purge_keys(txn: &WriteTransaction, now_ms: u64) -> Result<usize, redb::Error> {
    let expired = take_expired(txn, KEY_EXPIRY, now_ms)?;
    for k in &expired {
        txn.open_table(KEYS)?.remove(k.as_str())?;
        txn.open_table(KEY_BODIES)?.remove(k.as_str())?;
    }
    Ok(expired.len())
}

fn forget(txn: &WriteTransaction, id: &str) -> Result<(), redb::Error> {
    txn.open_table(CALLBACKS)?.remove(id)?;
    txn.open_table(BODIES)?.remove(id)?;
    Ok(())
}

impl Embedded {
    /// Opens (creating if missing) the state file under `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Io(path.clone(), e.to_string()))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(dir.to_owned()),
            other => OpenError::Io(path.clone(), other.to_string()),
        })?;
        Self::start(db, Some(path.clone())).map_err(|e| OpenError::Io(path, e.to_string()))
    }

    /// A store in this process's memory, lost on exit.
    pub fn in_memory() -> Self {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        Self::start(db, None).expect("an empty in-memory database has no records to count")
    }

    /// The state file, when on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn start(db: Database, path: Option<PathBuf>) -> Result<Self, redb::Error> {
        let counts = count(&db)?;
        let (work, queue) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("nxgate-state".to_owned())
            .spawn(move || writer(db, queue, counts))
            .map_err(redb::Error::Io)?;
        Ok(Embedded { work, path })
    }

    /// Runs `op` in the writer's next transaction; answers after its commit.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction, &mut Counts) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run_checked(move |txn, counts| op(txn, counts).map(|t| (t, true))).await
    }

    /// [`Self::run`] for an operation that often writes nothing (a poll, a count) and
    /// says whether it wrote: a batch that wrote nothing is aborted, not committed, so an
    /// idle gateway's polls cost no disk flush.
    async fn run_checked<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction, &mut Counts) -> Result<(T, bool), redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |txn, counts| {
            let result = op(txn, counts);
            // A failed operation may have written part of its work: commit as usual.
            let wrote = result.as_ref().map_or(true, |(_, wrote)| *wrote);
            let reply: Reply = Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.and_then(|()| result.map(|(t, _)| t).map_err(storage)));
            });
            (reply, wrote)
        });
        let stopped = || StoreError("embedded store: its writer thread stopped".to_owned());
        self.work.send(work).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// See [`super::Outbox::intake`] (`max_queued` for the whole queue).
    pub async fn intake(
        &self,
        callback: Callback,
        body: Bytes,
        first_delay: Duration,
        max_queued: usize,
    ) -> Result<Intake, StoreError> {
        self.run(move |txn, counts| {
            if let Some(old) = read_record(txn, &callback.id)? {
                match old.stage {
                    // Past its window a delivered id is as good as forgotten.
                    Stage::Delivered { until_ms } if until_ms <= callback.received_ms => {
                        txn.open_table(EXPIRY)?.remove((until_ms, callback.id.as_str()))?;
                    }
                    _ => return Ok(Intake::Duplicate),
                }
            }
            // One bound for the whole queue: this store is one process's.
            if counts.0.values().map(|(queued, _)| queued).sum::<u64>() >= max_queued as u64 {
                return Ok(Intake::Full);
            }
            txn.open_table(BODIES)?.insert(callback.id.as_str(), &body[..])?;
            let due_ms = callback.received_ms + first_delay.as_millis() as u64;
            let mut r = Record { callback, attempts: 0, last_error: String::new(), stage: Stage::Queued { due_ms: 0 } };
            enqueue(txn, &mut r, due_ms, counts)?;
            Ok(Intake::Stored)
        })
        .await
    }

    /// See [`super::Outbox::take_due`].
    pub async fn take_due(
        &self,
        uuids: &[String],
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let uuids = uuids.to_vec();
        self.run_checked(move |txn, _| {
            let due: Vec<(u64, String)> = {
                let table = txn.open_table(DUE)?;
                let mut out = Vec::new();
                for entry in table.range(..=(now_ms, ID_MAX))? {
                    let (key, _) = entry?;
                    let (due_ms, id) = key.value();
                    out.push((due_ms, id.to_owned()));
                    if out.len() >= limit * 2 {
                        break;
                    }
                }
                out
            };
            let mut jobs = Vec::new();
            let until = now_ms + lease.as_millis() as u64;
            for (due_ms, id) in due {
                if jobs.len() >= limit {
                    break;
                }
                let Some(mut r) = read_record(txn, &id)? else { continue };
                // A tenant no longer configured waits until it is again.
                if !uuids.contains(&r.callback.uuid) {
                    continue;
                }
                let mut table = txn.open_table(DUE)?;
                table.remove((due_ms, id.as_str()))?;
                table.insert((until, id.as_str()), ())?;
                drop(table);
                r.attempts += 1;
                r.stage = Stage::Queued { due_ms: until };
                write_record(txn, &r)?;
                let body = txn.open_table(BODIES)?.get(id.as_str())?.map(|b| Bytes::copy_from_slice(b.value()));
                jobs.push(Job { attempt: r.attempts, callback: r.callback, body: body.unwrap_or_default() });
            }
            let wrote = !jobs.is_empty();
            Ok((jobs, wrote))
        })
        .await
    }

    /// See [`super::Outbox::settle`].
    pub async fn settle(&self, job: &Job, settle: Settle, now_ms: u64) -> Result<(), StoreError> {
        let (id, attempt) = (job.callback.id.clone(), job.attempt);
        self.run(move |txn, counts| {
            let Some(mut r) = read_record(txn, &id)? else { return Ok(()) };
            let holds = matches!(r.stage, Stage::Queued { .. }) && r.attempts == attempt;
            match settle {
                Settle::Delivered { keep } => {
                    match r.stage {
                        Stage::Queued { .. } => unqueue(txn, &r, counts)?,
                        Stage::Dead { since_ms } => {
                            let c = &r.callback;
                            txn.open_table(DEAD)?.remove((c.uuid.as_str(), since_ms, c.id.as_str()))?;
                            let d = counts.dead(&c.uuid);
                            *d = d.saturating_sub(1);
                        }
                        Stage::Delivered { .. } => return Ok(()),
                    }
                    let until_ms = now_ms + keep.as_millis() as u64;
                    txn.open_table(BODIES)?.remove(id.as_str())?;
                    txn.open_table(EXPIRY)?.insert((until_ms, id.as_str()), ())?;
                    r.stage = Stage::Delivered { until_ms };
                    r.callback.headers.clear();
                    write_record(txn, &r)
                }
                Settle::Retry { .. } | Settle::Dead { .. } if !holds => Ok(()),
                Settle::Retry { after, error } => {
                    let Stage::Queued { due_ms } = r.stage else { return Ok(()) };
                    let next = now_ms + after.as_millis() as u64;
                    let mut table = txn.open_table(DUE)?;
                    table.remove((due_ms, id.as_str()))?;
                    table.insert((next, id.as_str()), ())?;
                    drop(table);
                    r.stage = Stage::Queued { due_ms: next };
                    r.last_error = error;
                    write_record(txn, &r)
                }
                Settle::Dead { error } => {
                    unqueue(txn, &r, counts)?;
                    let c = &r.callback;
                    txn.open_table(DEAD)?.insert((c.uuid.as_str(), now_ms, c.id.as_str()), ())?;
                    *counts.dead(&c.uuid) += 1;
                    r.stage = Stage::Dead { since_ms: now_ms };
                    r.last_error = error;
                    write_record(txn, &r)
                }
            }
        })
        .await
    }

    /// See [`super::Outbox::dead_letters`].
    pub async fn dead_letters(&self, uuids: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        let uuids = uuids.to_vec();
        self.run_checked(move |txn, _| {
            let mut out = Vec::new();
            for (id, _) in dead_ids(txn, &uuids, u64::MAX)? {
                let Some(r) = read_record(txn, &id)? else { continue };
                if let Stage::Dead { since_ms } = r.stage {
                    out.push(DeadLetter {
                        callback: r.callback,
                        attempts: r.attempts,
                        last_error: r.last_error,
                        since_ms,
                    });
                }
            }
            out.sort_by_key(|d| d.since_ms);
            Ok((out, false))
        })
        .await
    }

    /// See [`super::Outbox::redrive`].
    pub async fn redrive(&self, uuids: &[String], id: Option<&str>, now_ms: u64) -> Result<usize, StoreError> {
        let (uuids, only) = (uuids.to_vec(), id.map(str::to_owned));
        self.run(move |txn, counts| {
            let mut n = 0;
            for (id, since_ms) in dead_ids(txn, &uuids, u64::MAX)? {
                if only.as_ref().is_some_and(|o| *o != id) {
                    continue;
                }
                let Some(mut r) = read_record(txn, &id)? else { continue };
                txn.open_table(DEAD)?.remove((r.callback.uuid.as_str(), since_ms, id.as_str()))?;
                let d = counts.dead(&r.callback.uuid);
                *d = d.saturating_sub(1);
                enqueue(txn, &mut r, now_ms, counts)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// See [`super::Outbox::depth`]; also forgets expired delivered ids, replay entries
    /// and week-old dead letters.
    pub async fn depth(&self, uuids: &[String], now_ms: u64) -> Result<HashMap<String, Depth>, StoreError> {
        let uuids = uuids.to_vec();
        self.run_checked(move |txn, counts| {
            let delivered = take_expired(txn, EXPIRY, now_ms)?;
            for id in &delivered {
                forget(txn, id)?;
            }
            let replay = take_expired(txn, REPLAY_EXPIRY, now_ms)?;
            for key in &replay {
                txn.open_table(REPLAY)?.remove(key.as_str())?;
            }
            let keys = purge_keys(txn, now_ms)?;
            let cutoff = now_ms.saturating_sub(DEAD_LETTER_KEEP.as_millis() as u64);
            let old_dead = dead_ids(txn, &uuids, cutoff)?;
            let wrote = !(delivered.is_empty() && replay.is_empty() && keys == 0 && old_dead.is_empty());
            for (id, since_ms) in old_dead {
                let Some(r) = read_record(txn, &id)? else { continue };
                txn.open_table(DEAD)?.remove((r.callback.uuid.as_str(), since_ms, id.as_str()))?;
                let d = counts.dead(&r.callback.uuid);
                *d = d.saturating_sub(1);
                forget(txn, &id)?;
            }
            let waiting = txn.open_table(WAITING)?;
            let mut out = HashMap::new();
            for uuid in &uuids {
                let oldest = waiting.range((uuid.as_str(), 0, "")..=(uuid.as_str(), u64::MAX, ID_MAX))?.next();
                let oldest_received_ms = oldest.transpose()?.map(|(k, _)| k.value().1);
                let (queued, dead) = counts.0.get(uuid).copied().unwrap_or_default();
                out.insert(uuid.clone(), Depth { queued, oldest_received_ms, dead });
            }
            Ok((out, wrote))
        })
        .await
    }

    /// See [`super::Outbox::purge_keys`].
    pub async fn purge_keys(&self, now_ms: u64) -> Result<(), StoreError> {
        self.run_checked(move |txn, _| purge_keys(txn, now_ms).map(|n| ((), n > 0))).await
    }

    /// See [`super::Outbox::claim_key`].
    pub async fn claim_key(
        &self,
        uuid: &str,
        key: &str,
        fingerprint: &str,
        in_flight: Duration,
        now_ms: u64,
    ) -> Result<KeyClaim, StoreError> {
        let (k, fingerprint) = (scoped(uuid, key), fingerprint.to_owned());
        self.run(move |txn, _| {
            let found = read_key(txn, &k)?;
            if let Some(r) = found.clone().filter(|r| r.until_ms > now_ms) {
                return Ok(match r {
                    r if r.fingerprint != fingerprint => KeyClaim::Reused,
                    KeyRecord { answer: Some(mut answer), .. } => {
                        let body = txn.open_table(KEY_BODIES)?.get(k.as_str())?.map(|b| b.value().to_vec());
                        answer.body = Bytes::from(body.unwrap_or_default());
                        KeyClaim::Replay(answer)
                    }
                    _ => KeyClaim::InProgress,
                });
            }
            // Expired (not purged yet): its answer goes with it.
            let old = found.map(|r| r.until_ms);
            if old.is_some() {
                txn.open_table(KEY_BODIES)?.remove(k.as_str())?;
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            let until_ms = now_ms + in_flight.as_millis() as u64;
            write_key(txn, &k, &KeyRecord { fingerprint, until_ms, token: Some(token.clone()), answer: None })?;
            reindex(txn, KEY_EXPIRY, &k, old, Some(until_ms))?;
            Ok(KeyClaim::New(token))
        })
        .await
    }

    /// See [`super::Outbox::complete_key`].
    pub async fn complete_key(
        &self,
        uuid: &str,
        key: &str,
        token: &str,
        answer: &Answer,
        retention: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (k, token, answer) = (scoped(uuid, key), token.to_owned(), answer.clone());
        self.run(move |txn, _| {
            let Some(mut r) = read_key(txn, &k)? else { return Ok(()) };
            if r.token.as_deref() != Some(token.as_str()) {
                return Ok(()); // its claim expired and another request holds the key now
            }
            txn.open_table(KEY_BODIES)?.insert(k.as_str(), &answer.body[..])?;
            let until_ms = now_ms + retention.as_millis() as u64;
            reindex(txn, KEY_EXPIRY, &k, Some(r.until_ms), Some(until_ms))?;
            r.until_ms = until_ms;
            r.token = None;
            r.answer = Some(answer);
            write_key(txn, &k, &r)
        })
        .await
    }

    /// See [`super::Outbox::release_key`].
    pub async fn release_key(&self, uuid: &str, key: &str, token: &str) -> Result<(), StoreError> {
        let (k, token) = (scoped(uuid, key), token.to_owned());
        self.run(move |txn, _| {
            if let Some(r) = read_key(txn, &k)?.filter(|r| r.token.as_deref() == Some(token.as_str())) {
                txn.open_table(KEYS)?.remove(k.as_str())?;
                reindex(txn, KEY_EXPIRY, &k, Some(r.until_ms), None)?;
            }
            Ok(())
        })
        .await
    }

    /// Direct delivery: claims `key` for `ttl` unless it is delivered or held.
    pub async fn replay_claim(
        &self,
        key: String,
        token: String,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<ReplayState, StoreError> {
        self.run(move |txn, _| {
            let mut table = txn.open_table(REPLAY)?;
            let mut old = None;
            if let Some(found) = table.get(key.as_str())? {
                let (until, state) = found.value();
                if until > now_ms {
                    return Ok(if state == "d" { ReplayState::Delivered } else { ReplayState::InProgress });
                }
                old = Some(until);
            }
            let (held, until) = (format!("p:{token}"), now_ms + ttl.as_millis() as u64);
            table.insert(key.as_str(), (until, held.as_str()))?;
            drop(table);
            reindex(txn, REPLAY_EXPIRY, &key, old, Some(until))?;
            Ok(ReplayState::Claimed)
        })
        .await
    }

    /// Direct delivery: `key` was delivered; a copy is a duplicate for `keep`.
    pub async fn replay_delivered(&self, key: String, keep: Duration, now_ms: u64) -> Result<(), StoreError> {
        self.run(move |txn, _| {
            let until = now_ms + keep.as_millis() as u64;
            let old = txn.open_table(REPLAY)?.insert(key.as_str(), (until, "d"))?.map(|v| v.value().0);
            reindex(txn, REPLAY_EXPIRY, &key, old, Some(until))
        })
        .await
    }

    /// Direct delivery: the claim by `token` failed; a retry may claim `key` again.
    pub async fn replay_failed(&self, key: String, token: String) -> Result<(), StoreError> {
        self.run(move |txn, _| {
            let mut table = txn.open_table(REPLAY)?;
            let held = format!("p:{token}");
            let ours = table.get(key.as_str())?.and_then(|v| {
                let (until, state) = v.value();
                (state == held).then_some(until)
            });
            if let Some(until) = ours {
                table.remove(key.as_str())?;
                drop(table);
                reindex(txn, REPLAY_EXPIRY, &key, Some(until), None)?;
            }
            Ok(())
        })
        .await
    }
}

/// Dead letters of `uuids` that died before `before_ms`: (id, since ms).
fn dead_ids(txn: &WriteTransaction, uuids: &[String], before_ms: u64) -> Result<Vec<(String, u64)>, redb::Error> {
    let table = txn.open_table(DEAD)?;
    let mut out = Vec::new();
    for uuid in uuids {
        for entry in table.range((uuid.as_str(), 0, "")..(uuid.as_str(), before_ms, ""))? {
            let (key, _) = entry?;
            let (_, since, id) = key.value();
            out.push((id.to_owned(), since));
        }
    }
    Ok(out)
}

/// The queued and dead counts of a store as opened (one pass over two indexes).
fn count(db: &Database) -> Result<Counts, redb::Error> {
    let txn = db.begin_write()?;
    let mut counts = Counts::default();
    {
        for entry in txn.open_table(WAITING)?.iter()? {
            *counts.queued(entry?.0.value().0) += 1;
        }
        for entry in txn.open_table(DEAD)?.iter()? {
            *counts.dead(entry?.0.value().0) += 1;
        }
        // Created here, so read-only paths never meet a missing table.
        for t in [CALLBACKS, BODIES] {
            txn.open_table(t)?;
        }
        txn.open_table(DUE)?;
        txn.open_table(EXPIRY)?;
        txn.open_table(REPLAY)?;
        txn.open_table(KEYS)?;
        txn.open_table(KEY_BODIES)?;
        txn.open_table(REPLAY_EXPIRY)?;
        txn.open_table(KEY_EXPIRY)?;
    }
    txn.commit()?;
    Ok(counts)
}

/// The writer thread: one transaction and one commit per batch of operations.
fn writer(db: Database, queue: mpsc::Receiver<Work>, mut counts: Counts) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                tracing::error!(error = %e, "the state store cannot begin a transaction");
                for w in batch {
                    // Nothing ran: answer every operation with the failure.
                    drop(w);
                }
                continue;
            }
        };
        let before = counts.clone();
        let (replies, wrote): (Vec<Reply>, Vec<bool>) = batch.into_iter().map(|w| w(&txn, &mut counts)).unzip();
        let committed =
            if wrote.contains(&true) { txn.commit().map_err(storage) } else { txn.abort().map_err(storage) };
        if let Err(e) = &committed {
            tracing::error!(error = %e, "the state store cannot commit; the batch's callbacks were refused");
            counts = before;
        }
        for reply in replies {
            reply(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{contract, Backend, Outbox};
    use std::sync::Arc;

    #[tokio::test]
    async fn the_in_memory_store_keeps_the_contract() {
        contract::all(|| async { Outbox::new(Backend::Embedded(Arc::new(Embedded::in_memory()))) }).await;
    }

    #[tokio::test]
    async fn the_file_store_keeps_the_contract() {
        let dirs = std::sync::Mutex::new(Vec::new());
        contract::all(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Embedded::open(dir.path()).unwrap();
            dirs.lock().unwrap().push(dir);
            async move { Outbox::new(Backend::Embedded(Arc::new(store))) }
        })
        .await;
    }

    #[tokio::test]
    async fn what_was_committed_is_there_after_a_reopen_and_one_process_holds_a_dir() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000_000;
        {
            let store = Embedded::open(dir.path()).unwrap();
            let e = Embedded::open(dir.path()).err().expect("the file is locked");
            assert!(matches!(e, OpenError::InUse(_)) && e.to_string().starts_with("state.dir: "), "{e}");
            for i in 0..50 {
                let c = contract::callback(contract::A, &format!("r{i}"), t0);
                let stored = store.intake(c, Bytes::from(vec![b'x'; i]), Duration::ZERO, 100).await.unwrap();
                assert_eq!(stored, Intake::Stored);
            }
            let taken = store.take_due(&contract::tenants(), t0, Duration::from_secs(5), 10).await.unwrap();
            assert_eq!(taken.len(), 10, "ten in delivery when the process 'dies'");
        }
        // The writer thread holds the database until its channel closes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let store = loop {
            match Embedded::open(dir.path()) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        };
        let depth = store.depth(&contract::tenants(), t0).await.unwrap();
        assert_eq!(depth[contract::A].queued, 50, "counted again from the file");
        let now = store.take_due(&contract::tenants(), t0, Duration::from_secs(60), 100).await.unwrap();
        assert_eq!(now.len(), 40);
        let later = store.take_due(&contract::tenants(), t0 + 5_000, Duration::from_secs(5), 100).await.unwrap();
        assert_eq!(later.len(), 10, "the ten in delivery are due again once their lease ran out");
        assert!(later.iter().all(|j| j.attempt == 2 && j.body.len() < 50));
    }

    #[tokio::test]
    async fn idempotency_keys_expire_when_their_claim_or_retention_runs_out() {
        let s = Embedded::in_memory();
        let (t0, ttl) = (1_800_000_000_000, Duration::from_secs(10));
        let KeyClaim::New(t) = s.claim_key("u", "k", "fp", ttl, t0).await.unwrap() else { panic!() };
        assert_eq!(s.claim_key("u", "k", "fp", ttl, t0 + 9_999).await.unwrap(), KeyClaim::InProgress);
        let KeyClaim::New(t2) = s.claim_key("u", "k", "fp", ttl, t0 + 10_000).await.unwrap() else {
            panic!("a holder that died frees the key once its claim expires")
        };
        s.complete_key("u", "k", &t, &contract::answer(), ttl, t0 + 10_001).await.unwrap();
        assert_eq!(
            s.claim_key("u", "k", "fp", ttl, t0 + 10_002).await.unwrap(),
            KeyClaim::InProgress,
            "the old holder lost it"
        );
        s.complete_key("u", "k", &t2, &contract::answer(), Duration::from_secs(2), t0 + 10_003).await.unwrap();
        assert_eq!(s.claim_key("u", "k", "fp", ttl, t0 + 12_002).await.unwrap(), KeyClaim::Replay(contract::answer()));
        s.depth(&[], t0 + 12_004).await.unwrap();
        assert!(
            matches!(s.claim_key("u", "k", "fp", ttl, t0 + 12_004).await.unwrap(), KeyClaim::New(_)),
            "retention over"
        );
    }

    /// Entries of a table, read in the writer's transaction.
    async fn rows(s: &Embedded, table: TableDefinition<'static, &'static str, &'static [u8]>) -> u64 {
        s.run(move |txn, _| Ok(redb::ReadableTableMetadata::len(&txn.open_table(table)?)?)).await.unwrap()
    }

    #[tokio::test]
    async fn expired_keys_and_replay_entries_are_forgotten_through_their_index() {
        let s = Embedded::in_memory();
        let (t0, short) = (1_800_000_000_000, Duration::from_secs(1));
        for i in 0..20 {
            let k = format!("k{i}");
            let KeyClaim::New(t) = s.claim_key("u", &k, "fp", short, t0).await.unwrap() else { panic!() };
            if i % 2 == 0 {
                s.complete_key("u", &k, &t, &contract::answer(), short, t0).await.unwrap();
            }
            s.replay_claim(format!("r{i}"), "t".into(), short, t0).await.unwrap();
        }
        s.replay_delivered("r0".into(), Duration::from_secs(60), t0).await.unwrap();
        assert_eq!((rows(&s, KEYS).await, rows(&s, KEY_BODIES).await), (20, 10));
        s.purge_keys(t0 + 999).await.unwrap();
        assert_eq!(rows(&s, KEYS).await, 20, "nothing expired yet");
        s.purge_keys(t0 + 1_000).await.unwrap();
        assert_eq!((rows(&s, KEYS).await, rows(&s, KEY_BODIES).await), (0, 0), "answers and claims alike");
        s.depth(&[], t0 + 1_000).await.unwrap();
        let replay = s.run(|txn, _| Ok(redb::ReadableTableMetadata::len(&txn.open_table(REPLAY)?)?)).await.unwrap();
        assert_eq!(replay, 1, "only the delivered one, kept for its window");
        assert_eq!(s.replay_claim("r0".into(), "t".into(), short, t0 + 1_000).await.unwrap(), ReplayState::Delivered);
    }

    #[tokio::test]
    async fn idle_polls_and_counts_leave_the_file_untouched_and_work_is_still_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        let file = || std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let t0 = 1_800_000_000_000;
        let before = file();
        for i in 0..20 {
            assert!(s.take_due(&contract::tenants(), t0 + i, Duration::from_secs(5), 10).await.unwrap().is_empty());
            s.depth(&contract::tenants(), t0 + i).await.unwrap();
            s.purge_keys(t0 + i).await.unwrap();
            assert!(s.dead_letters(&contract::tenants()).await.unwrap().is_empty());
        }
        assert!(file() == before, "nothing was written, so nothing was committed");
        let c = contract::callback(contract::A, "r1", t0);
        assert_eq!(s.intake(c, Bytes::from_static(b"{}"), Duration::ZERO, 10).await.unwrap(), Intake::Stored);
        assert!(file() != before, "a write is committed");
        let taken = s.take_due(&contract::tenants(), t0, Duration::from_secs(5), 10).await.unwrap();
        assert_eq!(taken.len(), 1, "an aborted batch left the store as it was");
    }

    #[tokio::test]
    async fn max_queued_bounds_the_whole_queue() {
        let s = Embedded::in_memory();
        let intake = |uuid, id: &str| s.intake(contract::callback(uuid, id, 1), Bytes::new(), Duration::ZERO, 2);
        assert_eq!(intake(contract::A, "a").await.unwrap(), Intake::Stored);
        assert_eq!(intake(contract::B, "b").await.unwrap(), Intake::Stored);
        assert_eq!(intake(contract::B, "c").await.unwrap(), Intake::Full, "two wait, whichever tenants'");
    }

    #[tokio::test]
    async fn concurrent_intakes_share_commits_and_each_is_answered() {
        let store = Arc::new(Embedded::in_memory());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let c = contract::callback(contract::B, &format!("r{}", i % 150), 1);
                s.intake(c, Bytes::from_static(b"{}"), Duration::ZERO, 1_000).await.unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            stored += usize::from(t.await.unwrap() == Intake::Stored);
        }
        assert_eq!(stored, 150, "each requestID stored once, its copies answered as duplicates");
    }

    #[tokio::test]
    async fn the_replay_memory_claims_once_and_releases_on_failure() {
        let s = Embedded::in_memory();
        let ttl = Duration::from_secs(10);
        assert_eq!(s.replay_claim("k".into(), "t1".into(), ttl, 100).await.unwrap(), ReplayState::Claimed);
        assert_eq!(s.replay_claim("k".into(), "t2".into(), ttl, 101).await.unwrap(), ReplayState::InProgress);
        s.replay_failed("k".into(), "t2".into()).await.unwrap();
        assert_eq!(s.replay_claim("k".into(), "t3".into(), ttl, 102).await.unwrap(), ReplayState::InProgress);
        s.replay_failed("k".into(), "t1".into()).await.unwrap();
        assert_eq!(s.replay_claim("k".into(), "t4".into(), ttl, 103).await.unwrap(), ReplayState::Claimed);
        s.replay_delivered("k".into(), Duration::from_secs(1), 104).await.unwrap();
        assert_eq!(s.replay_claim("k".into(), "t5".into(), ttl, 105).await.unwrap(), ReplayState::Delivered);
        assert_eq!(s.replay_claim("k".into(), "t6".into(), ttl, 1_104).await.unwrap(), ReplayState::Claimed);
    }
}
