//! createTask, createAndCall, mgrTaskStatus, updateTask (§4.2–4.5).

use serde_json::{json, Map, Value};
use std::collections::HashMap;

use super::fields::{Checked, Obj, VALUE};
use super::{fields_of, orders, task_key};
use crate::auth::Refusal;
use crate::sim::{DEFAULT_MAX_CALL, DEFAULT_RING_SECS};
use crate::state::{task_status, Task, World};

/// Largest `maxCall` accepted (the vendor documents none; a bound keeps the model small).
const MAX_CONCURRENT_CALLS: i64 = 1_000;

/// The settable part of a task: `taskCreateSetting` and `funcFlag`.
struct TaskSettings {
    task_name: Option<String>,
    max_call: Option<usize>,
    max_ring_secs: Option<u64>,
    round_redial: Option<bool>,
    task_keep: Option<bool>,
    task_callback_url: Option<String>,
    settings: Option<Value>,
    func_flag: Option<Value>,
}

/// Reads and type-checks `taskCreateSetting` and `funcFlag` (field types from the
/// vendor's examples; unknown keys are kept and not checked).
fn read_settings(body: &Obj<'_>) -> Checked<TaskSettings> {
    let mut out = TaskSettings {
        task_name: None,
        max_call: None,
        max_ring_secs: None,
        round_redial: None,
        task_keep: None,
        task_callback_url: None,
        settings: None,
        func_flag: None,
    };
    if let Some(s) = body.opt_obj("taskCreateSetting")? {
        // createTask's example spells one key with a trailing space (§8.5): accept both.
        for k in
            ["strategyName", "dialAtWeekDay", "dialAtUpHour", "dialAtUpHour ", "dialAtDownHour", "routeID", "taskName"]
        {
            s.opt_str(k)?;
        }
        for k in ["startupType", "startupAt", "zoneSecond"] {
            s.opt_int(k)?;
        }
        if let Some(n) = s.opt_int("maxCall")? {
            if !(1..=MAX_CONCURRENT_CALLS).contains(&n) {
                return Err(s.bad("maxCall", &format!("must be between 1 and {MAX_CONCURRENT_CALLS}")));
            }
            out.max_call = Some(n as usize);
        }
        if let Some(n) = s.opt_int("maxRingTime")? {
            if n < 1 {
                return Err(s.bad("maxRingTime", "must be at least 1"));
            }
            out.max_ring_secs = Some(n as u64);
        }
        if let Some(m) = s.opt_obj("manualCallSetting")? {
            m.opt_str("agentGroup")?;
            m.opt_int("dispatchType")?;
            m.opt_number("ratioCallRate")?;
            m.opt_number("predictCallRate")?;
        }
        out.task_name = s.opt_str("taskName")?.map(str::to_owned);
        out.task_callback_url = s.opt_url("taskCallbackUrl")?.map(str::to_owned);
        out.settings = Some(Value::Object(s.map().clone()));
    }
    if let Some(f) = body.opt_obj("funcFlag")? {
        for k in ["wholeTTS", "smsEnable", "phoneEncrypt"] {
            f.opt_bool(k)?;
        }
        out.task_keep = f.opt_bool("taskKeep")?;
        out.round_redial = f.opt_bool("roundRedial")?;
        if let Some(items) = f.opt_array("smsFuncFlag", usize::MAX)? {
            for (i, v) in items.iter().enumerate() {
                let sms = f.element("smsFuncFlag", i, v)?;
                // createTask spells them smsId/intentId, the others smsID/intentID (§8.5).
                for k in ["smsID", "smsId"] {
                    sms.opt_str(k)?;
                }
                for k in ["intentID", "intentId", "intentName"] {
                    sms.opt_str_list(k, usize::MAX)?;
                }
            }
        }
        out.func_flag = Some(Value::Object(f.map().clone()));
    }
    Ok(out)
}

fn new_task(w: &mut World, uuid: &str, user_task_id: &str, scene_id: &str, s: TaskSettings) -> Task {
    Task {
        uuid: uuid.to_owned(),
        user_task_id: user_task_id.to_owned(),
        task_id: w.new_id(),
        scene_id: scene_id.to_owned(),
        status: task_status::PENDING,
        create_ts: w.now_secs(),
        task_name: s.task_name.unwrap_or_default(),
        max_call: s.max_call.unwrap_or(DEFAULT_MAX_CALL),
        max_ring_secs: s.max_ring_secs.unwrap_or(DEFAULT_RING_SECS),
        round_redial: s.round_redial.unwrap_or(false),
        task_keep: s.task_keep.unwrap_or(false),
        task_callback_url: s.task_callback_url,
        order_callback_url: None,
        settings: s.settings.unwrap_or_else(|| json!({})),
        func_flag: s.func_flag.unwrap_or_else(|| json!({})),
        other: String::new(),
        orders: Vec::new(),
        order_index: HashMap::new(),
        batches: Vec::new(),
    }
}

/// `userTaskID` and `sceneID` of a new task; a taken userTaskID is `4`.
fn new_task_ids<'a>(w: &World, uuid: &str, body: &Obj<'a>) -> Checked<(&'a str, &'a str)> {
    body.product()?;
    let user_task_id = body.req_id("userTaskID")?;
    let scene_id = body.req_id("sceneID")?;
    if w.task(uuid, user_task_id).is_some() {
        return Err(body.bad("userTaskID", "already exists"));
    }
    Ok((user_task_id, scene_id))
}

/// createTask: an empty task, status 1. Answers `taskID` (response body not documented).
pub(crate) fn create_task(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    let (user_task_id, scene_id) = new_task_ids(w, uuid, body)?;
    body.opt_str("account")?;
    let other = body.opt_str("other")?.unwrap_or_default().to_owned();
    // createTask carries both URLs at the top level (§4.2).
    let task_url = body.opt_url("taskCallbackUrl")?.map(str::to_owned);
    let order_url = body.opt_url("orderCallbackUrl")?.map(str::to_owned);
    let settings = read_settings(body)?;
    let mut task = new_task(w, uuid, user_task_id, scene_id, settings);
    task.task_callback_url = task_url.or(task.task_callback_url);
    task.order_callback_url = order_url;
    task.other = other;
    let task_id = task.task_id.clone();
    w.tasks.insert((uuid.to_owned(), user_task_id.to_owned()), task);
    Ok(fields_of(json!({ "taskID": task_id })))
}

/// createAndCall: a task with its first orders, status 1 until mgrTaskStatus starts it.
/// Answers `taskID` (response body not documented).
pub(crate) fn create_and_call(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    let (user_task_id, scene_id) = new_task_ids(w, uuid, body)?;
    let settings = read_settings(body)?;
    let info = body.req_obj("callInfoList")?;
    let batch = orders::read_call_info(&info, orders::MAX_CALL_LIST)?;
    orders::check_new_order_ids(w, uuid, &batch)?;
    let task = new_task(w, uuid, user_task_id, scene_id, settings);
    let task_id = task.task_id.clone();
    let key = (uuid.to_owned(), user_task_id.to_owned());
    w.tasks.insert(key.clone(), task);
    orders::insert_orders(w, &key, batch);
    Ok(fields_of(json!({ "taskID": task_id })))
}

/// `taskOperate` (§7.2).
const START: i64 = 1;
const PAUSE: i64 = 2;
const FINISH: i64 = 3;

/// mgrTaskStatus: start (1 or 5 → 2), pause (1 or 2 → 5), finish (→ 3); a finished task
/// refuses every operation with `4`. `delCall: 1` deletes the not-yet-dialled orders.
pub(crate) fn mgr_task_status(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let op = body.req_int("taskOperate")?;
    if ![START, PAUSE, FINISH].contains(&op) {
        return Err(body.bad("taskOperate", "must be 1 (start), 2 (pause) or 3 (finish)"));
    }
    let del_call = orders::read_del_call(body)?;
    let current = w.tasks[&key].status;
    if current == task_status::COMPLETED || current == task_status::FAILED {
        return Err(Refusal::new(VALUE, "the task is already finished"));
    }
    let next = match op {
        START => task_status::RUNNING,
        PAUSE => task_status::PAUSED,
        _ => task_status::COMPLETED,
    };
    if del_call {
        orders::delete_undialled(w.tasks.get_mut(&key).expect("checked"), None);
    }
    w.set_task_status(&key, next);
    let task = &w.tasks[&key];
    Ok(fields_of(json!({ "taskID": task.task_id, "taskStatus": task.status })))
}

/// updateTask: only a pending (1) or paused (5) task; replaces `taskCreateSetting` and/or
/// `funcFlag`. Takes effect at once (the vendor's 5-minute delay is not modelled). Answers
/// the envelope only (response body not documented).
pub(crate) fn update_task(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let scene_id = match body.opt_str("sceneID")? {
        Some(s) if s.trim().is_empty() => return Err(body.bad("sceneID", "must not be empty")),
        other => other,
    };
    let s = read_settings(body)?;
    let task = w.tasks.get_mut(&key).expect("checked");
    if task.status != task_status::PENDING && task.status != task_status::PAUSED {
        return Err(Refusal::new(VALUE, "only a pending or paused task can be updated"));
    }
    if let Some(scene) = scene_id {
        task.scene_id = scene.to_owned();
    }
    if let Some(v) = s.settings {
        task.settings = v;
        task.task_name = s.task_name.unwrap_or_default();
        task.max_call = s.max_call.unwrap_or(DEFAULT_MAX_CALL);
        task.max_ring_secs = s.max_ring_secs.unwrap_or(DEFAULT_RING_SECS);
        task.task_callback_url = s.task_callback_url.or(task.task_callback_url.take());
    }
    if let Some(v) = s.func_flag {
        task.func_flag = v;
        task.round_redial = s.round_redial.unwrap_or(false);
        task.task_keep = s.task_keep.unwrap_or(false);
    }
    Ok(Map::new())
}
