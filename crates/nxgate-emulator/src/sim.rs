//! Simulated calling on a simulated clock.
//!
//! The clock is `origin + manual advances + wall time × time_scale`. With the default scale
//! 0 it only moves when a test calls `POST /_emulator/advance?secs=N`, which makes every
//! run of a test identical; `--time-scale 1` (the command line's default) runs in real time,
//! `60` makes a minute pass each second.
//!
//! The simulation is a discrete-event loop: find the next moment something happens (a call
//! ends, a free line can dial a waiting order, a callback is due), jump there, do it, and
//! deliver the callbacks it produced before looking further. Callbacks therefore arrive in
//! the order the events happened, and retries back off on the same simulated clock, so a
//! test steps through a retry schedule without sleeping.

use rand::Rng;
use std::time::Instant;

use crate::callbacks::{self, CallbackKind};
use crate::state::{call_status, task_status, Call, Intent, OrderPhase, World};
use crate::Emulator;

/// Seconds an unanswered order waits before its redial round (`funcFlag.roundRedial`).
pub(crate) const REDIAL_GAP_SECS: u64 = 60;
/// Call rounds of an order when `roundRedial` is on (one otherwise).
pub(crate) const ROUNDS_WITH_REDIAL: usize = 2;
/// Concurrent calls of a task that sets no `maxCall`.
pub(crate) const DEFAULT_MAX_CALL: usize = 5;
/// Ring timeout of a task that sets no `maxRingTime`, seconds.
pub(crate) const DEFAULT_RING_SECS: u64 = 30;
/// Upper bound of events in one advance: a guard against a model bug looping forever.
const MAX_EVENTS_PER_ADVANCE: usize = 10_000_000;
/// Wall-clock period of the real-time ticker.
pub(crate) const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Share of calls answered; the rest split below (cumulative thresholds of one draw).
const ANSWERED_UP_TO: f64 = 0.60;
/// ... rang out unanswered (25 %).
const NO_ANSWER_UP_TO: f64 = 0.85;
/// ... busy (10 %); the remaining 5 % fail to connect.
const BUSY_UP_TO: f64 = 0.95;
/// Seconds an answered call rings, and then talks.
const ANSWERED_RING_SECS: std::ops::RangeInclusive<u64> = 3..=10;
const ANSWERED_TALK_SECS: std::ops::RangeInclusive<u64> = 15..=90;
/// Seconds until a busy signal.
const BUSY_SECS: std::ops::RangeInclusive<u64> = 2..=5;
/// Seconds until a failed call gives up.
const FAILED_SECS: u64 = 1;
/// Dialogue turns of an answered call.
const ANSWERED_TURNS: std::ops::RangeInclusive<i64> = 1..=12;

/// The intent labels answered calls are tagged with (a fixed set; the real ones come from
/// the console's script template).
const INTENTS: [Intent; 3] = [
    Intent { id: "A", tag: "interested", name: "Interested", level: 1 },
    Intent { id: "B", tag: "not_interested", name: "Not interested", level: 2 },
    Intent { id: "C", tag: "call_back", name: "Call back later", level: 3 },
];

/// The simulated clock.
pub(crate) struct Clock {
    origin_ms: u64,
    started: Instant,
    scale: f64,
    manual_ms: u64,
}

impl Clock {
    pub fn new(origin_ms: u64, scale: f64) -> Self {
        Clock { origin_ms, started: Instant::now(), scale: scale.max(0.0), manual_ms: 0 }
    }

    /// Where simulated time should be now.
    pub fn target_ms(&self) -> u64 {
        let scaled = (self.started.elapsed().as_secs_f64() * 1000.0 * self.scale) as u64;
        self.origin_ms + self.manual_ms + scaled
    }

    pub fn advance(&mut self, ms: u64) {
        self.manual_ms = self.manual_ms.saturating_add(ms);
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }
}

impl World {
    /// The next simulated moment something happens in the model (callbacks excluded).
    pub(crate) fn next_event_ms(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for task in self.tasks.values() {
            let mut dialling = 0;
            for order in &task.orders {
                if let OrderPhase::Dialling { call } = &order.phase {
                    dialling += 1;
                    consider(call.end_ms);
                }
            }
            if task.status == task_status::RUNNING && dialling < task.max_call {
                if let Some(t) = task.orders.iter().filter_map(|o| o.dialable_at()).min() {
                    consider(t.max(self.now_ms));
                }
            }
        }
        next
    }

    /// Runs everything due at `self.now_ms`: ends calls, dials, completes tasks.
    pub(crate) fn step(&mut self) {
        let keys: Vec<(String, String)> = self.tasks.keys().cloned().collect();
        for key in keys {
            self.end_calls(&key);
            self.dial(&key);
            self.maybe_complete(&key);
        }
    }

    fn end_calls(&mut self, key: &(String, String)) {
        let now = self.now_ms;
        loop {
            let task = &self.tasks[key];
            // The earliest ending call first, so callbacks go out in event order.
            let due = task
                .orders
                .iter()
                .enumerate()
                .filter_map(|(i, o)| match &o.phase {
                    OrderPhase::Dialling { call } if call.end_ms <= now => Some((call.end_ms, i)),
                    _ => None,
                })
                .min();
            let Some((_, i)) = due else { return };
            let task = self.tasks.get_mut(key).expect("key from the map");
            let rounds = if task.round_redial { ROUNDS_WITH_REDIAL } else { 1 };
            let task_over = task.status == task_status::COMPLETED || task.status == task_status::FAILED;
            let order = &mut task.orders[i];
            let OrderPhase::Dialling { call } = std::mem::replace(&mut order.phase, OrderPhase::Finished) else {
                unreachable!("selected as dialling")
            };
            let answered = call.status == call_status::ANSWERED;
            let end_ms = call.end_ms;
            order.calls.push(call);
            let done = answered || order.calls.len() >= rounds || order.stopped || task_over;
            order.phase = if done {
                OrderPhase::Finished
            } else {
                OrderPhase::Waiting { not_before_ms: end_ms + REDIAL_GAP_SECS * 1000 }
            };
            let task = &self.tasks[key];
            let order = &task.orders[i];
            let call_body = crate::state::call_body(task, order);
            let call_url = order.call_callback_url.clone();
            let order_url = order.order_callback_url.clone().or_else(|| task.order_callback_url.clone());
            let order_body = done.then(|| crate::state::order_body(task, order));
            let uuid = task.uuid.clone();
            self.queue_callback(CallbackKind::Call, &uuid, call_url.as_deref(), call_body);
            if let Some(body) = order_body {
                self.queue_callback(CallbackKind::Order, &uuid, order_url.as_deref(), body);
            }
        }
    }

    fn dial(&mut self, key: &(String, String)) {
        let now = self.now_ms;
        loop {
            let task = &self.tasks[key];
            if task.status != task_status::RUNNING {
                return;
            }
            let dialling = task.orders.iter().filter(|o| o.dialling()).count();
            if dialling >= task.max_call {
                return;
            }
            // Insertion order: the first waiting order whose redial gap has passed.
            let Some(i) = task.orders.iter().position(|o| o.dialable_at().is_some_and(|t| t <= now)) else { return };
            let ring_secs = task.max_ring_secs;
            let call = self.draw_call(now, ring_secs);
            let task = self.tasks.get_mut(key).expect("key from the map");
            task.orders[i].phase = OrderPhase::Dialling { call };
        }
    }

    fn maybe_complete(&mut self, key: &(String, String)) {
        let task = &self.tasks[key];
        if task.status != task_status::RUNNING || task.task_keep {
            return;
        }
        // A started task with no numbers yet waits for them.
        let any = task.live_orders().next().is_some();
        let all_done = task.live_orders().all(|o| o.finished() || (o.stopped && !o.dialling()));
        if any && all_done {
            self.set_task_status(key, task_status::COMPLETED);
        }
    }

    /// Draws one call's outcome and timing.
    fn draw_call(&mut self, start_ms: u64, ring_secs: u64) -> Call {
        let call_id = self.new_id();
        let r = &mut self.outcomes;
        let roll: f64 = r.gen();
        let (status, ring, talk, cause, sip) = if roll < ANSWERED_UP_TO {
            (
                call_status::ANSWERED,
                r.gen_range(ANSWERED_RING_SECS),
                r.gen_range(ANSWERED_TALK_SECS),
                "NORMAL_CLEARING",
                "200",
            )
        } else if roll < NO_ANSWER_UP_TO {
            (call_status::NO_ANSWER, ring_secs, 0, "NO_ANSWER", "480")
        } else if roll < BUSY_UP_TO {
            (call_status::BUSY, r.gen_range(BUSY_SECS), 0, "USER_BUSY", "486")
        } else {
            (call_status::FAILED, FAILED_SECS, 0, "CALL_REJECTED", "503")
        };
        let answered = status == call_status::ANSWERED;
        let intents = if answered { vec![INTENTS[r.gen_range(0..INTENTS.len())].clone()] } else { Vec::new() };
        let turns = if answered { r.gen_range(ANSWERED_TURNS) } else { 0 };
        let answer_ms = answered.then_some(start_ms + ring * 1000);
        Call {
            call_id,
            status,
            start_ms,
            answer_ms,
            end_ms: start_ms + (ring + talk) * 1000,
            intents,
            hangup_cause: cause,
            term_sip_code: sip,
            turns,
        }
    }
}

/// Moves simulated time to `target_ms`, running every event and delivering every callback
/// due on the way. Serialized: two advances never interleave.
pub(crate) async fn advance_to(emu: &Emulator, target_ms: u64) {
    let _one_at_a_time = emu.advance_lock.lock().await;
    for _ in 0..MAX_EVENTS_PER_ADVANCE {
        let due = {
            let w = emu.world();
            let model = w.next_event_ms();
            let callback = callbacks::next_due_ms(&w.callbacks);
            match (model, callback) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        match due {
            Some(t) if t <= target_ms => {
                let mut w = emu.world();
                w.now_ms = w.now_ms.max(t);
                w.step();
            }
            _ => break,
        }
        deliver_due(emu).await;
    }
    let mut w = emu.world();
    w.now_ms = w.now_ms.max(target_ms);
}

/// Attempts every callback due now, one after another, in the order they were queued.
async fn deliver_due(emu: &Emulator) {
    let due = {
        let w = emu.world();
        callbacks::due(&w.callbacks, w.now_ms)
    };
    let policy = &emu.cfg.callback_retry;
    for cb in due {
        let secret = emu.cfg.tenants.get(&cb.uuid).map(|s| s.expose().to_vec()).unwrap_or_default();
        let sent = callbacks::send(&cb, &secret, policy.timeout).await;
        let mut w = emu.world();
        let now = w.now_ms;
        w.callbacks[(cb.id - 1) as usize].settle(sent, now, policy);
    }
}

/// Follows the wall clock when `time_scale > 0`.
pub(crate) async fn ticker(emu: std::sync::Arc<Emulator>) {
    if emu.clock().scale() <= 0.0 {
        return;
    }
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let target = emu.clock().target_ms();
        advance_to(&emu, target).await;
    }
}
