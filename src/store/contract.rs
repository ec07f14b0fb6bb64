//! The outbox contract, run against every store (`embedded` in memory and on disk,
//! `redis` against a real server): one behaviour, whichever backend keeps it.

use super::*;

/// Tenant uuids the contract uses.
pub const A: &str = "uuid-a";
pub const B: &str = "uuid-b";

pub fn tenants() -> Vec<String> {
    vec![A.to_owned(), B.to_owned()]
}

pub fn callback(uuid: &str, request_id: &str, received_ms: u64) -> Callback {
    Callback {
        id: nxgate_core::webhook::message_id(uuid, request_id),
        tenant: format!("tenant-{uuid}"),
        uuid: uuid.to_owned(),
        request_id: request_id.to_owned(),
        method: "POST".to_owned(),
        target: "/hooks/orderCallback?x=1".to_owned(),
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        received_ms,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
    }
}

const T0: u64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(10);

async fn intake(o: &Outbox, uuid: &str, id: &str, at: u64, max: usize) -> Intake {
    o.intake(callback(uuid, id, at), Bytes::from(format!("{{\"id\":\"{id}\"}}")), Duration::ZERO, max).await.unwrap()
}

/// Intake stores once, answers a copy as a duplicate (queued, dead or delivered) and
/// refuses past `max_queued` without writing. (Whether the bound is per tenant or for the
/// whole queue is each store's own test: here the bounded tenant is alone under it.)
pub async fn intake_dedupes_and_bounds(o: &Outbox) {
    assert_eq!(intake(o, A, "r1", T0, 2).await, Intake::Stored);
    assert_eq!(intake(o, A, "r1", T0, 2).await, Intake::Duplicate);
    assert_eq!(intake(o, A, "r2", T0 + 1, 2).await, Intake::Stored);
    assert_eq!(intake(o, A, "r3", T0 + 2, 2).await, Intake::Full);
    assert_eq!(intake(o, B, "r1", T0, 10).await, Intake::Stored, "another tenant's requestID is another callback");
    let d = o.depth(&tenants(), T0 + 5_000).await.unwrap();
    assert_eq!(d[A], Depth { queued: 2, oldest_received_ms: Some(T0), dead: 0 });
    assert_eq!(d[B].queued, 1);

    let jobs = o.take_due(&tenants(), T0 + 1, LEASE, 100).await.unwrap();
    assert_eq!(jobs.len(), 3);
    let r1 = jobs.iter().find(|j| j.callback.uuid == A && j.callback.request_id == "r1").unwrap();
    assert_eq!(r1.callback, callback(A, "r1", T0));
    assert_eq!(&r1.body[..], br#"{"id":"r1"}"#);
    assert_eq!(r1.attempt, 1);
    o.settle(r1, Settle::Delivered { keep: Duration::from_secs(60) }, T0 + 10).await.unwrap();
    assert_eq!(intake(o, A, "r1", T0, 2).await, Intake::Duplicate, "delivered: still a duplicate in its window");
    assert_eq!(intake(o, A, "r3", T0 + 2, 3).await, Intake::Stored, "a delivered one frees its place");
    let d = o.depth(&tenants(), T0 + 20).await.unwrap();
    assert_eq!(d[A].queued, 2);
    assert_eq!(d[A].oldest_received_ms, Some(T0 + 1));
}

/// Taking leases: a taken callback is not taken again until its lease runs out, then it
/// is, with the next attempt number; a stale settlement is ignored.
pub async fn leases_expire_and_stale_settlements_are_ignored(o: &Outbox) {
    assert_eq!(intake(o, A, "r1", T0, 10).await, Intake::Stored);
    assert!(o.take_due(&tenants(), T0 - 1, LEASE, 10).await.unwrap().is_empty(), "not due before its time");
    let first = o.take_due(&tenants(), T0, LEASE, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(o.take_due(&tenants(), T0 + 9_999, LEASE, 10).await.unwrap().is_empty(), "held by its lease");
    let second = o.take_due(&tenants(), T0 + 10_000, LEASE, 10).await.unwrap();
    assert_eq!(second.len(), 1, "the lease ran out: as if its process died");
    assert_eq!(second[0].attempt, 2);
    // The first attempt's late failure must not reschedule or kill the second's.
    o.settle(&first[0], Settle::Dead { error: "late".into() }, T0 + 10_001).await.unwrap();
    assert!(o.dead_letters(&tenants()).await.unwrap().is_empty());
    o.settle(&second[0], Settle::Retry { after: Duration::from_secs(5), error: "500".into() }, T0 + 10_002)
        .await
        .unwrap();
    assert!(o.take_due(&tenants(), T0 + 15_001, LEASE, 10).await.unwrap().is_empty());
    let third = o.take_due(&tenants(), T0 + 15_002, LEASE, 10).await.unwrap();
    assert_eq!(third[0].attempt, 3);
    // A late "delivered" of any attempt is the truth: the receiver has it.
    o.settle(&first[0], Settle::Delivered { keep: Duration::from_secs(60) }, T0 + 15_003).await.unwrap();
    assert!(o.take_due(&tenants(), T0 + 99_000, LEASE, 10).await.unwrap().is_empty());
    assert_eq!(o.depth(&tenants(), T0 + 15_004).await.unwrap()[A].queued, 0);
}

/// Dead letters are listed with their facts, redriven all or one, and counted.
pub async fn dead_letters_are_listed_and_redriven(o: &Outbox) {
    for id in ["r1", "r2"] {
        assert_eq!(intake(o, A, id, T0, 10).await, Intake::Stored);
    }
    let jobs = o.take_due(&tenants(), T0, LEASE, 10).await.unwrap();
    for j in &jobs {
        o.settle(j, Settle::Dead { error: "receiver answered 500".into() }, T0 + 7).await.unwrap();
    }
    let dead = o.dead_letters(&tenants()).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error, "receiver answered 500");
    assert_eq!(dead[0].since_ms, T0 + 7);
    assert_eq!(o.depth(&tenants(), T0 + 8).await.unwrap()[A], Depth { queued: 0, oldest_received_ms: None, dead: 2 });
    assert_eq!(intake(o, A, "r1", T0, 10).await, Intake::Duplicate, "a dead letter is still stored");

    assert_eq!(o.redrive(&tenants(), Some("msg_nope"), T0 + 9).await.unwrap(), 0);
    let one = dead[0].callback.id.clone();
    assert_eq!(o.redrive(&tenants(), Some(&one), T0 + 9).await.unwrap(), 1);
    assert_eq!(o.dead_letters(&tenants()).await.unwrap().len(), 1);
    assert_eq!(o.redrive(&tenants(), None, T0 + 10).await.unwrap(), 1);
    assert!(o.dead_letters(&tenants()).await.unwrap().is_empty());
    let again = o.take_due(&tenants(), T0 + 10, LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.attempt == 1), "a redrive starts a fresh schedule");
    assert_eq!(&again[0].body[..4], b"{\"id", "the body was kept with the dead letter");
}

/// Delivered ids are forgotten after their window, dead letters after a week.
pub async fn old_entries_are_purged(o: &Outbox) {
    for id in ["r1", "r2"] {
        assert_eq!(intake(o, A, id, T0, 10).await, Intake::Stored);
    }
    let jobs = o.take_due(&tenants(), T0, LEASE, 10).await.unwrap();
    let (r1, r2) = if jobs[0].callback.request_id == "r1" { (&jobs[0], &jobs[1]) } else { (&jobs[1], &jobs[0]) };
    o.settle(r1, Settle::Delivered { keep: Duration::from_secs(1) }, T0).await.unwrap();
    o.settle(r2, Settle::Dead { error: "x".into() }, T0).await.unwrap();
    o.depth(&tenants(), T0 + 1_001).await.unwrap();
    assert_eq!(intake(o, A, "r1", T0, 10).await, Intake::Stored, "past its window, a delivered id is forgotten");
    let week = DEAD_LETTER_KEEP.as_millis() as u64;
    assert_eq!(o.depth(&tenants(), T0 + week - 1).await.unwrap()[A].dead, 1);
    assert_eq!(o.depth(&tenants(), T0 + week + 1).await.unwrap()[A].dead, 0);
    assert!(o.dead_letters(&tenants()).await.unwrap().is_empty());
}

pub fn answer() -> Answer {
    Answer {
        status: 502,
        headers: vec![("x-request-id".to_owned(), b"rid-1".to_vec()), ("x-bin".to_owned(), vec![0x80, 0x81])],
        body: Bytes::from_static(b"{\"code\":50201,\"bytes\":\"\xff\"}"),
    }
}

/// A key is claimed once, answered once, replayed byte for byte, refused for another
/// fingerprint, per tenant; a released key is new again; a holder whose claim was taken
/// over cannot record. (Expiry by time is each store's own test: Redis keeps its own clock.)
pub async fn keys_are_claimed_replayed_and_released(o: &Outbox) {
    let long = Duration::from_secs(60);
    let KeyClaim::New(t) = o.claim_key(A, "k1", "fp1", long, T0).await.unwrap() else { panic!("new") };
    assert_eq!(o.claim_key(A, "k1", "fp1", long, T0).await.unwrap(), KeyClaim::InProgress);
    assert_eq!(o.claim_key(A, "k1", "fp2", long, T0).await.unwrap(), KeyClaim::Reused);
    assert!(matches!(o.claim_key(B, "k1", "fp2", long, T0).await.unwrap(), KeyClaim::New(_)), "keys are per tenant");
    o.complete_key(A, "k1", "not-the-holder", &answer(), long, T0).await.unwrap();
    assert_eq!(o.claim_key(A, "k1", "fp1", long, T0).await.unwrap(), KeyClaim::InProgress, "only the holder records");
    o.complete_key(A, "k1", &t, &answer(), long, T0 + 1).await.unwrap();
    assert_eq!(o.claim_key(A, "k1", "fp1", long, T0 + 2).await.unwrap(), KeyClaim::Replay(answer()));
    assert_eq!(o.claim_key(A, "k1", "fp9", long, T0 + 2).await.unwrap(), KeyClaim::Reused);

    let KeyClaim::New(t2) = o.claim_key(A, "k2", "fp", long, T0).await.unwrap() else { panic!("new") };
    o.release_key(A, "k2", "not-the-holder").await.unwrap();
    assert_eq!(o.claim_key(A, "k2", "fp", long, T0).await.unwrap(), KeyClaim::InProgress);
    o.release_key(A, "k2", &t2).await.unwrap();
    assert!(matches!(o.claim_key(A, "k2", "fp", long, T0).await.unwrap(), KeyClaim::New(_)), "released: new again");
}

/// Every contract check, each on a fresh store from `fresh`.
pub async fn all<F: std::future::Future<Output = Outbox>>(fresh: impl Fn() -> F) {
    keys_are_claimed_replayed_and_released(&fresh().await).await;
    intake_dedupes_and_bounds(&fresh().await).await;
    leases_expire_and_stale_settlements_are_ignored(&fresh().await).await;
    dead_letters_are_listed_and_redriven(&fresh().await).await;
    old_entries_are_purged(&fresh().await).await;
}
