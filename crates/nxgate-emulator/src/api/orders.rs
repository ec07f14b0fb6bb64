//! addBatchCall, importBatchCall, exportBatchCall, stopOrder (§4.6–4.9).
//!
//! Orders are added and deleted here only, for every endpoint that does either (createAndCall
//! and mgrTaskStatus too): `tasks` calls in, this module never calls `tasks`.

use serde_json::{json, Map, Value};
use std::collections::HashSet;

use super::fields::{Checked, Obj, VALUE};
use super::{fields_of, task_key};
use crate::auth::Refusal;
use crate::state::{call_status, task_status, Batch, Order, OrderPhase, Task, World};

/// Largest `callList` of addBatchCall and createAndCall. Not documented (§6); 4001 beyond.
pub(crate) const MAX_CALL_LIST: usize = 1_000;
/// Largest `callList` of importBatchCall, the bulk path (gzip bodies). Not documented.
pub(crate) const MAX_IMPORT_LIST: usize = 100_000;
/// Largest `orderIDs` of stopOrder. Not documented; the same as listOrderDetail's 500.
pub(crate) const MAX_ORDER_IDS: usize = 500;

/// One `callList` element, checked.
pub(crate) struct NewOrder {
    order_id: String,
    user_phone: String,
    user_name: String,
    customer_name: String,
    other: String,
    params: Value,
}

/// A checked `callInfoList`.
pub(crate) struct NewBatch {
    order_callback_url: String,
    call_callback_url: String,
    orders: Vec<NewOrder>,
}

/// Reads `callInfoList` (§4.6): both URLs required, `callList` of 1..=`max` elements, each
/// with an `orderID` and a digits-only `userPhone`; orderIDs unique within the list.
pub(crate) fn read_call_info(info: &Obj<'_>, max: usize) -> Checked<NewBatch> {
    let order_callback_url = info.req_url("orderCallbackUrl")?.to_owned();
    let call_callback_url = info.req_url("callCallbackUrl")?.to_owned();
    let list = info.req_array("callList", max)?;
    if list.is_empty() {
        return Err(info.bad("callList", "must not be empty"));
    }
    let mut seen = HashSet::new();
    let mut orders = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let item = info.element("callList", i, v)?;
        let order_id = item.req_id("orderID")?;
        if !seen.insert(order_id) {
            return Err(item.bad("orderID", "appears twice in callList"));
        }
        let phone = item.req_str("userPhone")?;
        if phone.is_empty() || !phone.bytes().all(|b| b.is_ascii_digit()) {
            return Err(item.bad("userPhone", "must be digits only, with the country code"));
        }
        let params = match item.opt_array("params", usize::MAX)? {
            None => json!([]),
            Some(ps) => {
                for (j, p) in ps.iter().enumerate() {
                    let p = item.element("params", j, p)?;
                    p.req_str("name")?;
                    p.opt_str("value")?;
                }
                Value::Array(ps.clone())
            }
        };
        orders.push(NewOrder {
            order_id: order_id.to_owned(),
            user_phone: phone.to_owned(),
            user_name: item.opt_str("userName")?.unwrap_or_default().to_owned(),
            customer_name: item.opt_str("customerName")?.unwrap_or_default().to_owned(),
            other: item.opt_str("other")?.unwrap_or_default().to_owned(),
            params,
        });
    }
    Ok(NewBatch { order_callback_url, call_callback_url, orders })
}

/// orderIDs are unique per account across its tasks (§4.6 "globally unique"): a taken one is `4`.
pub(crate) fn check_new_order_ids(w: &World, uuid: &str, batch: &NewBatch) -> Checked<()> {
    for o in &batch.orders {
        if w.order_owner.contains_key(&(uuid.to_owned(), o.order_id.clone())) {
            return Err(Refusal::new(VALUE, format!("orderID {} already exists", o.order_id)));
        }
    }
    Ok(())
}

/// Adds checked orders to a task; returns their ids.
pub(crate) fn insert_orders(w: &mut World, key: &(String, String), batch: NewBatch) -> Vec<String> {
    let now = w.now_ms;
    let mut ids = Vec::with_capacity(batch.orders.len());
    for o in batch.orders {
        w.order_owner.insert((key.0.clone(), o.order_id.clone()), key.1.clone());
        let task = w.tasks.get_mut(key).expect("caller checked the task");
        task.order_index.insert(o.order_id.clone(), task.orders.len());
        ids.push(o.order_id.clone());
        task.orders.push(Order {
            order_id: o.order_id,
            user_phone: o.user_phone,
            user_name: o.user_name,
            customer_name: o.customer_name,
            other: o.other,
            params: o.params,
            order_callback_url: Some(batch.order_callback_url.clone()),
            call_callback_url: Some(batch.call_callback_url.clone()),
            phase: OrderPhase::Waiting { not_before_ms: now },
            stopped: false,
            deleted: false,
            calls: Vec::new(),
        });
    }
    ids
}

/// `delCall` (§7.3): absent or 0 keeps, 1 deletes not-yet-dialled numbers.
pub(crate) fn read_del_call(body: &Obj<'_>) -> Checked<bool> {
    match body.opt_int("delCall")? {
        None | Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(_) => Err(body.bad("delCall", "must be 0 or 1")),
    }
}

/// Deletes the orders never dialled (all of the task's, or only those in `only`).
pub(crate) fn delete_undialled(task: &mut Task, only: Option<&[&str]>) {
    for order in &mut task.orders {
        let selected = only.is_none_or(|ids| ids.contains(&order.order_id.as_str()));
        if selected && order.calls.is_empty() && matches!(order.phase, OrderPhase::Waiting { .. }) {
            order.deleted = true;
        }
    }
}

/// addBatchCall (`import == false`) and importBatchCall (`import == true`): orders added to
/// a task that is not finished. importBatchCall also records a batch and answers its
/// `batchID` (for exportBatchCall); addBatchCall answers the envelope only (neither
/// response body is documented).
pub(crate) fn add_batch_call(w: &mut World, uuid: &str, body: &Obj<'_>, import: bool) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let info = body.req_obj("callInfoList")?;
    let batch = read_call_info(&info, if import { MAX_IMPORT_LIST } else { MAX_CALL_LIST })?;
    let status = w.tasks[&key].status;
    if status == task_status::COMPLETED || status == task_status::FAILED {
        return Err(Refusal::new(VALUE, "the task is finished; it takes no more numbers"));
    }
    check_new_order_ids(w, uuid, &batch)?;
    let ids = insert_orders(w, &key, batch);
    if !import {
        return Ok(Map::new());
    }
    let batch_id = w.new_id();
    w.tasks.get_mut(&key).expect("checked").batches.push(Batch { batch_id: batch_id.clone(), order_ids: ids });
    Ok(fields_of(json!({ "batchID": batch_id })))
}

/// exportBatchCall: the orders of the task's latest import batch with their last call
/// (§4.8). A task with no import answers `totalCount: 0`, `batchID: ""`.
pub(crate) fn export_batch_call(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let task = &w.tasks[&key];
    let Some(batch) = task.batches.last() else {
        return Ok(fields_of(json!({ "totalCount": 0, "batchID": "", "callList": [] })));
    };
    let list: Vec<Value> = batch
        .order_ids
        .iter()
        .filter_map(|id| task.order(id))
        .map(|o| {
            let last = o.last_call();
            json!({
                "orderID": o.order_id,
                "userPhone": o.user_phone,
                "other": o.other,
                "callID": last.map_or("", |c| c.call_id.as_str()),
                "callStatus": last.map_or(call_status::NOT_CALLED, |c| c.status),
                "callStartTs": last.map_or(0, |c| c.start_ms / 1000),
                "intents": last.map_or(vec![], |c| c.intents.iter().map(|i| i.json()).collect::<Vec<_>>()),
            })
        })
        .collect();
    Ok(fields_of(json!({ "totalCount": list.len(), "batchID": batch.batch_id, "callList": list })))
}

/// stopOrder: the named orders are never dialled again (a call in progress ends normally);
/// `delCall: 1` also deletes those not yet dialled. Unknown and already finished orders
/// are listed in `errList`.
pub(crate) fn stop_order(w: &mut World, uuid: &str, body: &Obj<'_>) -> Checked<Map<String, Value>> {
    body.product()?;
    let key = task_key(w, uuid, body)?;
    let ids = body.req_str_list("orderIDs", MAX_ORDER_IDS)?;
    if ids.is_empty() {
        return Err(body.bad("orderIDs", "must not be empty"));
    }
    let del_call = read_del_call(body)?;
    let task = w.tasks.get_mut(&key).expect("checked");
    let mut errors = Vec::new();
    let mut stopped = 0;
    for id in &ids {
        let Some(&i) = task.order_index.get(*id) else {
            errors.push(json!({"orderID": id, "errMsg": "order not found"}));
            continue;
        };
        let order = &mut task.orders[i];
        if order.deleted {
            errors.push(json!({"orderID": id, "errMsg": "order not found"}));
        } else if order.finished() {
            errors.push(json!({"orderID": id, "errMsg": "order already finished"}));
        } else {
            order.stopped = true;
            stopped += 1;
        }
    }
    if del_call {
        delete_undialled(task, Some(&ids));
    }
    Ok(fields_of(json!({ "totalCount": ids.len(), "successCount": stopped, "errList": errors })))
}
