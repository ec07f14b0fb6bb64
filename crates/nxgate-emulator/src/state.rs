//! What the emulator remembers: tasks by `(uuid, userTaskID)`, their orders and calls, the
//! callbacks it sent, and a count of the requests it received; and the callback bodies
//! (§5.2–5.4), rendered here from the model they describe (`callbacks` only delivers them).
//!
//! One `World` behind one mutex: every handler and the simulation step take it briefly
//! and never across an `.await`, so the model is a plain single-threaded data structure and
//! a step is atomic with respect to the API (a test never sees half a call).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

use nxgate_testkit::refsign::Digest;

use crate::callbacks::{CallbackKind, CallbackRecord, Delivery};

/// Task status (§7.1).
pub(crate) mod task_status {
    /// Waiting to start.
    pub const PENDING: i64 = 1;
    /// In progress.
    pub const RUNNING: i64 = 2;
    /// Completed.
    pub const COMPLETED: i64 = 3;
    /// Ended (failed). Documented; the emulator never reaches it (no failure model).
    #[allow(dead_code)]
    pub const FAILED: i64 = 4;
    /// Paused.
    pub const PAUSED: i64 = 5;
}

/// `callStatus` values. The vendor documents none (§7.5); these are the emulator's.
pub(crate) mod call_status {
    /// Not dialled yet (only in exports/listings of orders without a call).
    pub const NOT_CALLED: i64 = 0;
    /// Answered.
    pub const ANSWERED: i64 = 1;
    /// Rang out, nobody answered.
    pub const NO_ANSWER: i64 = 2;
    /// The callee was busy.
    pub const BUSY: i64 = 3;
    /// The call could not be set up (unreachable number, carrier error).
    pub const FAILED: i64 = 4;
}

/// One intent label a call was tagged with.
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub id: &'static str,
    pub tag: &'static str,
    pub name: &'static str,
    pub level: i64,
}

impl Intent {
    pub fn json(&self) -> Value {
        json!({"intentID": self.id, "intentTag": self.tag, "intentName": self.name, "intentLevel": self.level})
    }
}

/// One dialling attempt of an order. Times are simulated Unix milliseconds.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub call_id: String,
    pub status: i64,
    pub start_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    pub intents: Vec<Intent>,
    pub hangup_cause: &'static str,
    pub term_sip_code: &'static str,
    /// Dialogue turns (for the `turnTime` filter).
    pub turns: i64,
}

impl Call {
    /// Talk time in seconds (0 when not answered).
    pub fn duration_secs(&self) -> i64 {
        self.answer_ms.map_or(0, |a| (self.end_ms.saturating_sub(a) / 1000) as i64)
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone)]
pub(crate) enum OrderPhase {
    /// Not being dialled; may be dialled from `not_before_ms` on.
    Waiting { not_before_ms: u64 },
    /// A call is in progress and ends at `call.end_ms`.
    Dialling { call: Call },
    /// No more calls will be made.
    Finished,
}

/// One number to call (`callList` element).
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub order_id: String,
    pub user_phone: String,
    pub user_name: String,
    pub customer_name: String,
    pub other: String,
    pub params: Value,
    pub order_callback_url: Option<String>,
    pub call_callback_url: Option<String>,
    pub phase: OrderPhase,
    /// stopOrder was called: never dialled again.
    pub stopped: bool,
    /// Removed by `delCall: 1`; kept in memory so its id stays taken, hidden from listings.
    pub deleted: bool,
    pub calls: Vec<Call>,
}

impl Order {
    pub fn finished(&self) -> bool {
        matches!(self.phase, OrderPhase::Finished)
    }

    pub fn dialling(&self) -> bool {
        matches!(self.phase, OrderPhase::Dialling { .. })
    }

    /// Whether the order still counts towards the task (not deleted).
    pub fn live(&self) -> bool {
        !self.deleted
    }

    /// Not finished, not stopped, not deleted, not in a call: may be dialled.
    pub fn dialable_at(&self) -> Option<u64> {
        match self.phase {
            OrderPhase::Waiting { not_before_ms } if !self.stopped && !self.deleted => Some(not_before_ms),
            _ => None,
        }
    }

    pub fn last_call(&self) -> Option<&Call> {
        self.calls.last()
    }

    pub fn answered(&self) -> bool {
        self.calls.iter().any(|c| c.status == call_status::ANSWERED)
    }
}

/// One import batch (importBatchCall), for exportBatchCall.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub batch_id: String,
    pub order_ids: Vec<String>,
}

/// An outbound task.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub uuid: String,
    pub user_task_id: String,
    pub task_id: String,
    pub scene_id: String,
    pub status: i64,
    /// Simulated Unix seconds.
    pub create_ts: u64,
    pub task_name: String,
    /// Concurrent calls (`taskCreateSetting.maxCall`).
    pub max_call: usize,
    /// Ring timeout in seconds (`taskCreateSetting.maxRingTime`).
    pub max_ring_secs: u64,
    /// `funcFlag.roundRedial`: an unanswered order gets a second round.
    pub round_redial: bool,
    /// `funcFlag.taskKeep`: the task stays running when its orders are done.
    pub task_keep: bool,
    pub task_callback_url: Option<String>,
    /// createTask's top-level `orderCallbackUrl`, used for orders that give none.
    pub order_callback_url: Option<String>,
    pub settings: Value,
    pub func_flag: Value,
    pub other: String,
    pub orders: Vec<Order>,
    pub order_index: HashMap<String, usize>,
    pub batches: Vec<Batch>,
}

impl Task {
    pub fn live_orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.iter().filter(|o| o.live())
    }

    pub fn order(&self, id: &str) -> Option<&Order> {
        self.order_index.get(id).map(|&i| &self.orders[i]).filter(|o| o.live())
    }

    /// The seven counters of §5.2.
    pub fn stat(&self) -> Value {
        let orders: Vec<&Order> = self.live_orders().collect();
        let total_orders = orders.len() as i64;
        let finished = orders.iter().filter(|o| o.finished()).count() as i64;
        let answered_orders = orders.iter().filter(|o| o.answered()).count() as i64;
        let total_call: i64 = orders.iter().map(|o| o.calls.len() as i64).sum();
        let answered_calls: i64 =
            orders.iter().map(|o| o.calls.iter().filter(|c| c.status == call_status::ANSWERED).count() as i64).sum();
        json!({
            "answerOrderCount": answered_orders,
            "finishOrderCount": finished,
            "totalOrderCount": total_orders,
            "finishRate": rate(finished, total_orders),
            "totalAnswerCall": answered_calls,
            "totalCall": total_call,
            "answerRate": rate(answered_calls, total_call),
        })
    }
}

/// `part / whole` rounded to 2 decimals (§5.2), 0 for an empty whole.
fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        ((part as f64 / whole as f64) * 100.0).round() / 100.0
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
pub(crate) fn call_detail(order: &Order, call: &Call) -> Value {
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

/// Requests received on the vendor surface (not `/_emulator/*`).
#[derive(Debug, Default, Clone)]
pub(crate) struct RequestCounter {
    pub total: u64,
    pub by_path: BTreeMap<String, u64>,
    /// The last [`RECENT_REQUESTS`] requests as they arrived (method, path, headers, body),
    /// so a test can see the bytes a documented endpoint received (those are not echoed).
    pub recent: std::collections::VecDeque<Value>,
}

/// How many requests `/_emulator/requests` shows in full.
pub(crate) const RECENT_REQUESTS: usize = 32;

/// Everything the emulator knows.
pub(crate) struct World {
    /// Simulated Unix ms up to which the simulation has run.
    pub now_ms: u64,
    /// Keyed by `(uuid, userTaskID)`: each account has its own task namespace.
    pub tasks: BTreeMap<(String, String), Task>,
    /// `(uuid, orderID)` → `userTaskID`: orderIDs are unique per account (§4.6 "globally").
    pub order_owner: HashMap<(String, String), String>,
    pub callbacks: Vec<CallbackRecord>,
    pub requests: RequestCounter,
    /// Draws call outcomes (seeded: the same seed and the same requests give the same calls).
    pub outcomes: ChaCha8Rng,
    /// Draws taskIDs and callIDs, separate so ids never shift outcomes.
    pub ids: ChaCha8Rng,
    /// The account's configured algorithm, for callbacks.
    pub algorithms: HashMap<String, Digest>,
}

impl World {
    pub fn new(seed: u64, now_ms: u64, algorithms: HashMap<String, Digest>) -> Self {
        World {
            now_ms,
            tasks: BTreeMap::new(),
            order_owner: HashMap::new(),
            callbacks: Vec::new(),
            requests: RequestCounter::default(),
            outcomes: ChaCha8Rng::seed_from_u64(seed),
            ids: ChaCha8Rng::seed_from_u64(seed ^ 0x05ee_d1d5),
            algorithms,
        }
    }

    /// A 32-hex-digit id, like the vendor's sample `uuid4().hex`.
    pub fn new_id(&mut self) -> String {
        format!("{:032x}", self.ids.gen::<u128>())
    }

    pub fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }

    pub fn task(&self, uuid: &str, user_task_id: &str) -> Option<&Task> {
        self.tasks.get(&(uuid.to_owned(), user_task_id.to_owned()))
    }

    /// Queues a callback for delivery at the current simulated time.
    pub fn queue_callback(&mut self, kind: CallbackKind, uuid: &str, url: Option<&str>, body: Value) {
        let Some(url) = url.filter(|u| !u.is_empty()) else { return };
        // Not from the seeded generator: a receiver's replay store may outlive one emulator
        // run (Redis), and two runs with one seed must not look like replays of each other.
        let request_id = format!("{:032x}", rand::random::<u128>());
        let digest = self.algorithms.get(uuid).copied().unwrap_or(Digest::Md5);
        let id = self.callbacks.len() as u64 + 1;
        self.callbacks.push(CallbackRecord {
            id,
            kind,
            uuid: uuid.to_owned(),
            url: url.to_owned(),
            request_id,
            body: serde_json::to_vec(&body).expect("json value serializes"),
            digest,
            attempts: Vec::new(),
            delivery: Delivery::Pending { next_ms: self.now_ms },
        });
    }

    /// Sets a task's status and, if it changed, queues its taskCallback.
    pub fn set_task_status(&mut self, key: &(String, String), status: i64) {
        let Some(task) = self.tasks.get_mut(key) else { return };
        if task.status == status {
            return;
        }
        task.status = status;
        let body = task_body(task);
        let url = task.task_callback_url.clone();
        let uuid = task.uuid.clone();
        self.queue_callback(CallbackKind::Task, &uuid, url.as_deref(), body);
    }
}

impl RequestCounter {
    /// Counts one request to `route` (its path without query) and keeps `seen`, its
    /// description, among the recent ones.
    pub fn count(&mut self, route: &str, seen: Value) {
        if self.recent.len() == RECENT_REQUESTS {
            self.recent.pop_front();
        }
        self.recent.push_back(seen);
        self.total += 1;
        // No allocation for a path seen before: this runs on every request of a benchmark.
        match self.by_path.get_mut(route) {
            Some(n) => *n += 1,
            None => {
                self.by_path.insert(route.to_owned(), 1);
            }
        }
    }
}
