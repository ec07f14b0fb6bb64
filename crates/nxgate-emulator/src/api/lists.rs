//! listTask, listOrder, listCall, listOrderDetail (§4.10–4.13).
//!
//! Paged lists answer `totalCount` (all matches) next to the page: the vendor's paging
//! fields are not seen (§9), and a total is the least a pager needs.

use serde_json::{json, Map, Value};

use super::fields::{in_range, range_filter, Checked, Obj};
use super::{fields_of, task_key};
use crate::state::{call_detail, call_status, Call, Order, Task, World};

/// Largest page `size` (not documented; the examples use 100).
pub(crate) const MAX_PAGE_SIZE: i64 = 1_000;
/// Page size of listOrder/listCall when the request gives none (their `size` row is not seen).
const DEFAULT_PAGE_SIZE: i64 = 100;
/// `orderList` of listOrderDetail: at most 500 (§4.13, documented).
pub(crate) const MAX_ORDER_LIST: usize = 500;
/// Longest filter list (`taskStatus`, `orderID`, `callID`, ...). Not documented.
const MAX_FILTER_LIST: usize = 500;

/// `page`/`size` → (skip, take). `required`: listTask documents both as required.
fn paging(body: &Obj<'_>, required: bool) -> Checked<(usize, usize)> {
    let (page, size) = if required {
        (body.req_int("page")?, body.req_int("size")?)
    } else {
        (body.opt_int("page")?.unwrap_or(1), body.opt_int("size")?.unwrap_or(DEFAULT_PAGE_SIZE))
    };
    if page < 1 {
        return Err(body.bad("page", "must be at least 1"));
    }
    if !(1..=MAX_PAGE_SIZE).contains(&size) {
        return Err(body.bad("size", &format!("must be between 1 and {MAX_PAGE_SIZE}")));
    }
    Ok((((page - 1) * size) as usize, size as usize))
}

fn page_of(items: Vec<Value>, (skip, take): (usize, usize)) -> (usize, Vec<Value>) {
    let total = items.len();
    (total, items.into_iter().skip(skip).take(take).collect())
}

/// listTask: the account's tasks, oldest first.
pub(crate) fn list_task(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let page = paging(body, true)?;
    let q = body.req_obj("queryConditions")?;
    let statuses = q.opt_int_list("taskStatus", MAX_FILTER_LIST)?;
    let names = q.opt_str_list("taskName", MAX_FILTER_LIST)?;
    let scene = q.opt_str("sceneID")?;
    let ids = q.opt_str_list("userTaskID", MAX_FILTER_LIST)?;
    let (start, end) = (q.opt_int("startTs")?, q.opt_int("endTs")?);
    let mut tasks: Vec<&Task> = w
        .tasks
        .values()
        .filter(|t| t.uuid == uuid)
        .filter(|t| statuses.as_ref().is_none_or(|s| s.contains(&t.status)))
        // The old zh revision says fuzzy: a substring match serves both readings.
        .filter(|t| names.as_ref().is_none_or(|n| n.iter().any(|n| t.task_name.contains(n))))
        .filter(|t| scene.is_none_or(|s| s.is_empty() || t.scene_id == s))
        .filter(|t| ids.as_ref().is_none_or(|i| i.contains(&t.user_task_id.as_str())))
        .filter(|t| start.is_none_or(|s| t.create_ts as i64 >= s) && end.is_none_or(|e| t.create_ts as i64 <= e))
        .collect();
    tasks.sort_by(|a, b| (a.create_ts, &a.user_task_id).cmp(&(b.create_ts, &b.user_task_id)));
    let rows = tasks
        .iter()
        .map(|t| {
            json!({
                "userTaskID": t.user_task_id,
                "taskID": t.task_id,
                "sceneID": t.scene_id,
                "taskStatus": t.status,
                "createTs": t.create_ts,
                "taskStat": t.stat(),
            })
        })
        .collect();
    let (total, rows) = page_of(rows, page);
    Ok(fields_of(json!({ "totalCount": total, "taskData": rows })))
}

/// The call filters listOrder and listCall share.
struct CallFilter<'a> {
    intent_id: Option<Vec<&'a str>>,
    intent_name: Option<Vec<&'a str>>,
    intent_tag: Option<Vec<&'a str>>,
    intent_level: Option<Vec<i64>>,
    call_status: Option<Vec<i64>>,
    duration: Option<(Option<i64>, Option<i64>)>,
    turns: Option<(Option<i64>, Option<i64>)>,
}

impl<'a> CallFilter<'a> {
    fn read(o: &Obj<'a>) -> Checked<Self> {
        Ok(CallFilter {
            intent_id: o.opt_str_list("intentID", MAX_FILTER_LIST)?,
            intent_name: o.opt_str_list("intentName", MAX_FILTER_LIST)?,
            intent_tag: o.opt_str_list("intentTag", MAX_FILTER_LIST)?,
            intent_level: o.opt_int_list("intentLevel", MAX_FILTER_LIST)?,
            call_status: o.opt_int_list("callStatus", MAX_FILTER_LIST)?,
            duration: range_filter(o, "callDuration")?,
            turns: range_filter(o, "turnTime")?,
        })
    }

    /// Whether a call (or "no call yet", `None`) passes.
    fn admits(&self, call: Option<&Call>) -> bool {
        let status = call.map_or(call_status::NOT_CALLED, |c| c.status);
        let intents = call.map(|c| c.intents.as_slice()).unwrap_or(&[]);
        let any_str = |f: &Option<Vec<&str>>, get: fn(&crate::state::Intent) -> &str| {
            f.as_ref().is_none_or(|want| intents.iter().any(|i| want.contains(&get(i))))
        };
        self.call_status.as_ref().is_none_or(|s| s.contains(&status))
            && any_str(&self.intent_id, |i| i.id)
            && any_str(&self.intent_name, |i| i.name)
            && any_str(&self.intent_tag, |i| i.tag)
            && self.intent_level.as_ref().is_none_or(|l| intents.iter().any(|i| l.contains(&i.level)))
            && in_range(self.duration, call.map_or(0, |c| c.duration_secs()))
            && in_range(self.turns, call.map_or(0, |c| c.turns))
    }
}

/// listOrder: the task's orders with their last call, filtered by `options`.
pub(crate) fn list_order(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let options = body.req_obj("options")?;
    let order_ids = options.opt_str_list("orderID", MAX_FILTER_LIST)?;
    let finish = match options.opt_int("finish")? {
        None => None,
        Some(0) => Some(false),
        Some(1) => Some(true),
        Some(_) => return Err(options.bad("finish", "must be 0 or 1")),
    };
    let filter = CallFilter::read(&options)?;
    let page = paging(body, false)?;
    let task = &w.tasks[&key];
    let rows = task
        .live_orders()
        .filter(|o| order_ids.as_ref().is_none_or(|ids| ids.contains(&o.order_id.as_str())))
        .filter(|o| finish.is_none_or(|f| o.finished() == f))
        .filter(|o| filter.admits(o.last_call()))
        .map(order_row)
        .collect();
    let (total, rows) = page_of(rows, page);
    Ok(fields_of(json!({ "totalCount": total, "orderList": rows })))
}

fn order_row(o: &Order) -> Value {
    let last = o.last_call();
    json!({
        "orderID": o.order_id,
        "userPhone": o.user_phone,
        "userName": o.user_name,
        "other": o.other,
        "finish": o.finished(),
        "callID": last.map_or("", |c| c.call_id.as_str()),
        "callStatus": last.map_or(call_status::NOT_CALLED, |c| c.status),
        "callStartTs": last.map_or(0, |c| c.start_ms / 1000),
        "callDuration": last.map_or(0, |c| c.duration_secs()),
        "intents": last.map_or(vec![], |c| c.intents.iter().map(|i| i.json()).collect::<Vec<_>>()),
    })
}

/// listCall: every finished call of the task, in the order they started.
pub(crate) fn list_call(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let options = body.opt_obj("options")?;
    let (call_ids, filter, start, end) = match &options {
        None => (None, None, None, None),
        Some(o) => (
            o.opt_str_list("callID", MAX_FILTER_LIST)?,
            Some(CallFilter::read(o)?),
            o.opt_int("startTs")?,
            o.opt_int("endTs")?,
        ),
    };
    let page = paging(body, false)?;
    let task = &w.tasks[&key];
    let mut calls: Vec<(&Order, &Call)> =
        task.live_orders().flat_map(|o| o.calls.iter().map(move |c| (o, c))).collect();
    calls.sort_by(|a, b| (a.1.start_ms, &a.1.call_id).cmp(&(b.1.start_ms, &b.1.call_id)));
    let rows = calls
        .into_iter()
        .filter(|(_, c)| call_ids.as_ref().is_none_or(|ids| ids.contains(&c.call_id.as_str())))
        .filter(|(_, c)| filter.as_ref().is_none_or(|f| f.admits(Some(c))))
        .filter(|(_, c)| {
            let ts = (c.start_ms / 1000) as i64;
            start.is_none_or(|s| ts >= s) && end.is_none_or(|e| ts <= e)
        })
        .map(|(o, c)| {
            json!({
                "callID": c.call_id,
                "orderID": o.order_id,
                "userPhone": o.user_phone,
                "callStatus": c.status,
                "callStartTs": c.start_ms / 1000,
                "callAnswerTs": c.answer_ms.map_or(0, |a| a / 1000),
                "callEndTs": c.end_ms / 1000,
                "callDuration": c.duration_secs(),
                "intents": c.intents.iter().map(|i| i.json()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (total, rows) = page_of(rows, page);
    Ok(fields_of(json!({ "totalCount": total, "callList": rows })))
}

/// listOrderDetail: every call of each named order (§4.13); unknown ids are left out.
pub(crate) fn list_order_detail(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let ids = body.req_str_list("orderList", MAX_ORDER_LIST)?;
    let task = &w.tasks[&key];
    let rows: Vec<Value> = ids
        .iter()
        .filter_map(|id| task.order(id))
        .map(|o| {
            json!({
                "orderID": o.order_id,
                "userPhone": o.user_phone,
                "userName": o.user_name,
                "sceneID": task.scene_id,
                "userTaskID": task.user_task_id,
                "taskID": task.task_id,
                "finish": o.finished(),
                "other": o.other,
                "callInfoDetailList": o.calls.iter().map(|c| call_detail(o, c)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(fields_of(json!({ "orderDetailList": rows })))
}
