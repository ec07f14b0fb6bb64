//! The three callbacks (§5): their bodies, their signatures and their delivery.
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

use serde_json::{json, Value};
use std::time::Duration;

use nxgate_testkit::refsign;

use crate::state::{Attempt, CallbackRecord, Delivery, Order, Task, World};
use crate::Emulator;

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

/// `callbackType` of taskCallback (§7.4: 1).
const TASK_CALLBACK_TYPE: i64 = 1;
/// `callbackType` of orderCallback: §7.4 says 2, the en table types it as a string.
const ORDER_CALLBACK_TYPE: &str = "2";
/// `callbackType` of callCallback: not documented; 3 is the next value (§7.4 "presumably").
const CALL_CALLBACK_TYPE: i64 = 3;

/// The taskCallback body (§5.2).
pub(crate) fn task_body(task: &Task) -> Value {
    json!({
        "callbackType": TASK_CALLBACK_TYPE,
        "userTaskID": task.user_task_id,
        "taskID": task.task_id,
        "sceneID": task.scene_id,
        "taskStatus": task.status,
        "createTs": task.create_ts,
        "taskStat": task.stat(),
    })
}

/// The orderCallback body (§5.3), about the order's last call.
pub(crate) fn order_body(task: &Task, order: &Order) -> Value {
    let mut body = order_fields(task, order);
    body["callbackType"] = json!(ORDER_CALLBACK_TYPE);
    body
}

/// The callCallback body (§5.4), about the call that just ended.
pub(crate) fn call_body(task: &Task, order: &Order) -> Value {
    let mut body = order_fields(task, order);
    body["callbackType"] = json!(CALL_CALLBACK_TYPE);
    body
}

fn order_fields(task: &Task, order: &Order) -> Value {
    json!({
        "orderID": order.order_id,
        "userPhone": order.user_phone,
        "userName": order.user_name,
        "sceneID": task.scene_id,
        "userTaskID": task.user_task_id,
        "taskID": task.task_id,
        "finish": order.finished(),
        "other": order.other,
        "callInfoDetail": order.last_call().map(|c| call_detail(order, c)).unwrap_or(Value::Null),
    })
}

/// The caller id and line every simulated call uses (en-only fields, placeholders).
const CALLING_NUMBER: &str = "8610000000";
const LINE_ADDRESS: &str = "127.0.0.1";

/// One call in the shape of `callInfoDetail` / `callInfoDetailList[]` (§5.3, §4.13).
/// Timestamps are Unix seconds (the vendor's unit is not stated; its `createTs` is seconds).
pub(crate) fn call_detail(order: &Order, call: &crate::state::Call) -> Value {
    let secs = |ms: u64| ms / 1000;
    let answered = call.answer_ms.is_some();
    json!({
        "callID": call.call_id,
        "callingNumber": CALLING_NUMBER,
        "lineAddress": LINE_ADDRESS,
        "callStatus": call.status,
        "callStartTs": secs(call.start_ms),
        "callAnswerTs": call.answer_ms.map_or(0, secs),
        "callEndTs": secs(call.end_ms),
        "callDuration": call.duration_secs(),
        "callAudioUrl": if answered { format!("http://emulator.invalid/audio/{}.wav", call.call_id) } else { String::new() },
        "hangupCause": call.hangup_cause,
        "termSipCode": call.term_sip_code,
        "intents": call.intents.iter().map(|i| i.json()).collect::<Vec<_>>(),
        "sms": [],
        "agent": {
            "agentName": "", "agentGroup": "", "agentCallStatus": 0, "agentCallElapsed": 0, "agentLabel": "",
            "manualCallStart": 0, "manualCallAnswer": 0, "manualCallEnd": 0, "manualHangupBy": 0,
        },
        "params": order.params,
    })
}

/// When the next pending callback is due.
pub(crate) fn next_due_ms(w: &World) -> Option<u64> {
    w.callbacks
        .iter()
        .filter_map(|c| match c.delivery {
            Delivery::Pending { next_ms } => Some(next_ms),
            _ => None,
        })
        .min()
}

/// Attempts every callback due now, one after another, in the order they were queued.
pub(crate) async fn deliver_due(emu: &Emulator) {
    let due: Vec<CallbackRecord> = {
        let w = emu.world();
        w.callbacks
            .iter()
            .filter(|c| matches!(c.delivery, Delivery::Pending { next_ms } if next_ms <= w.now_ms))
            .cloned()
            .collect()
    };
    let policy = &emu.cfg.callback_retry;
    for cb in due {
        let create_ts = crate::wall_secs().to_string();
        let secret = emu.cfg.tenants.get(&cb.uuid).map(|s| s.expose().to_vec()).unwrap_or_default();
        let sign = refsign::sign(cb.digest, &secret, &cb.body, &create_ts, &cb.request_id, &cb.uuid);
        let headers = [
            ("requestID", cb.request_id.clone()),
            ("uuid", cb.uuid.clone()),
            ("createTs", create_ts.clone()),
            ("sign", sign),
        ];
        let result = crate::http::post(&cb.url, &headers, &cb.body, policy.timeout).await;
        let mut w = emu.world();
        let now = w.now_ms;
        let record = &mut w.callbacks[(cb.id - 1) as usize];
        let ok = matches!(&result, Ok(a) if (200..300).contains(&a.status));
        record.attempts.push(match result {
            Ok(a) => Attempt { at_ms: now, create_ts, status: Some(a.status), error: None, answer: a.body },
            Err(e) => Attempt { at_ms: now, create_ts, status: None, error: Some(e), answer: String::new() },
        });
        let tried = record.attempts.len() as u32;
        record.delivery = if ok {
            Delivery::Delivered
        } else if tried >= policy.max_attempts.max(1) {
            tracing::warn!(url = %record.url, kind = record.kind.name(), "callback given up after {tried} attempts");
            Delivery::GaveUp
        } else {
            Delivery::Pending { next_ms: now + policy.backoff_secs(tried) * 1000 }
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
