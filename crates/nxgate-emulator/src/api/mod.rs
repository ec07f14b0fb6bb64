//! The documented v3 surface (§4): which paths are endpoints, what each reads and answers.
//!
//! One module per family: [`tasks`] (createTask, createAndCall, mgrTaskStatus, updateTask),
//! [`orders`] (addBatchCall, importBatchCall, exportBatchCall, stopOrder), [`lists`]
//! (listTask, listOrder, listCall, listOrderDetail). Ping is answered in `lib.rs` with the
//! `code` envelope. Each handler validates the whole body before it changes anything, so a
//! refused request leaves the state as it was.

pub(crate) mod fields;
pub(crate) mod lists;
pub(crate) mod orders;
pub(crate) mod tasks;

use serde_json::{Map, Value};

use crate::state::World;
use fields::{Checked, Obj};

/// The path prefix of every v3 endpoint.
pub(crate) const V3_PREFIX: &str = "/callcentre/api/v3/";

/// A documented endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Ping,
    CreateTask,
    CreateAndCall,
    MgrTaskStatus,
    UpdateTask,
    ListTask,
    AddBatchCall,
    ImportBatchCall,
    ExportBatchCall,
    StopOrder,
    ListOrder,
    ListCall,
    ListOrderDetail,
}

impl Endpoint {
    const ALL: [(Endpoint, &'static str); 13] = [
        (Endpoint::Ping, "ping"),
        (Endpoint::CreateTask, "createTask"),
        (Endpoint::CreateAndCall, "createAndCall"),
        (Endpoint::MgrTaskStatus, "mgrTaskStatus"),
        (Endpoint::UpdateTask, "updateTask"),
        (Endpoint::ListTask, "listTask"),
        (Endpoint::AddBatchCall, "addBatchCall"),
        (Endpoint::ImportBatchCall, "importBatchCall"),
        (Endpoint::ExportBatchCall, "exportBatchCall"),
        (Endpoint::StopOrder, "stopOrder"),
        (Endpoint::ListOrder, "listOrder"),
        (Endpoint::ListCall, "listCall"),
        (Endpoint::ListOrderDetail, "listOrderDetail"),
    ];

    /// The endpoint at `route` (a path without query), if it is a documented one.
    pub fn from_route(route: &str) -> Option<Endpoint> {
        let name = route.strip_prefix(V3_PREFIX)?;
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(e, _)| *e)
    }

    /// Only importBatchCall documents a gzip request body (§1.1).
    pub fn takes_gzip_body(self) -> bool {
        self == Endpoint::ImportBatchCall
    }

    /// exportBatchCall and listCall document `Accept-Encoding: gzip` (§1.1).
    pub fn may_gzip_answer(self) -> bool {
        matches!(self, Endpoint::ExportBatchCall | Endpoint::ListCall)
    }
}

/// Runs a `retCode`-family endpoint: its fields on success (the envelope is added by the
/// caller).
pub(crate) fn handle(w: &mut World, endpoint: Endpoint, uuid: &str, body: &Value) -> Checked<Map<String, Value>> {
    let obj: Obj<'_> = fields::body_object(body)?;
    match endpoint {
        Endpoint::Ping => unreachable!("ping has the code envelope and is answered by the caller"),
        Endpoint::CreateTask => tasks::create_task(w, uuid, &obj),
        Endpoint::CreateAndCall => tasks::create_and_call(w, uuid, &obj),
        Endpoint::MgrTaskStatus => tasks::mgr_task_status(w, uuid, &obj),
        Endpoint::UpdateTask => tasks::update_task(w, uuid, &obj),
        Endpoint::ListTask => lists::list_task(w, uuid, &obj),
        Endpoint::AddBatchCall => orders::add_batch_call(w, uuid, &obj, false),
        Endpoint::ImportBatchCall => orders::add_batch_call(w, uuid, &obj, true),
        Endpoint::ExportBatchCall => orders::export_batch_call(w, uuid, &obj),
        Endpoint::StopOrder => orders::stop_order(w, uuid, &obj),
        Endpoint::ListOrder => lists::list_order(w, uuid, &obj),
        Endpoint::ListCall => lists::list_call(w, uuid, &obj),
        Endpoint::ListOrderDetail => lists::list_order_detail(w, uuid, &obj),
    }
}

/// A `Map` from `json!({...})`.
pub(crate) fn fields_of(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The task named by `userTaskID`, or `4` "task not found".
pub(crate) fn task_key(w: &World, uuid: &str, obj: &Obj<'_>) -> Checked<(String, String)> {
    let id = obj.req_id("userTaskID")?;
    let key = (uuid.to_owned(), id.to_owned());
    if !w.tasks.contains_key(&key) {
        return Err(obj.bad("userTaskID", "names no task of this account"));
    }
    Ok(key)
}
