//! One test per documented endpoint (§4): its documented fields and types, each validation
//! code reachable (2 missing, 3 wrong type, 4 bad value, 4001 too many), its envelope.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;

fn create(emu: &Emu, task: &str) -> Value {
    emu.ok("createTask", &json!({"productID": "callbot", "userTaskID": task, "sceneID": "scene-1"}))
}

fn call_info(prefix: &str, n: usize) -> Value {
    let list: Vec<Value> =
        (0..n).map(|i| json!({"orderID": format!("{prefix}-{i}"), "userPhone": format!("86156{i:08}")})).collect();
    json!({"orderCallbackUrl": "http://127.0.0.1:9/order", "callCallbackUrl": "http://127.0.0.1:9/call", "callList": list})
}

/// `body` with `path` (dotted, `[i]` for arrays) replaced by `value` (or removed if `None`).
fn with(body: &Value, path: &str, value: Option<Value>) -> Value {
    let mut b = body.clone();
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = &mut b;
    for p in &parts[..parts.len() - 1] {
        cur = match p.split_once('[') {
            Some((k, i)) => &mut cur[k][i.trim_end_matches(']').parse::<usize>().unwrap()],
            None => &mut cur[*p],
        };
    }
    let last = parts[parts.len() - 1];
    if let Some((k, i)) = last.split_once('[') {
        let i: usize = i.trim_end_matches(']').parse().unwrap();
        match value {
            Some(v) => cur[k][i] = v,
            None => {
                cur[k].as_array_mut().unwrap().remove(i);
            }
        }
        return b;
    }
    match value {
        Some(v) => cur[last] = v,
        None => {
            cur.as_object_mut().unwrap().remove(last);
        }
    }
    b
}

/// Asserts each (path, replacement, code) on `body` against endpoint `name`.
fn assert_codes(emu: &Emu, name: &str, body: &Value, cases: &[(&str, Option<Value>, i64)]) {
    for (path, value, code) in cases {
        let b = with(body, path, value.clone());
        let v = emu.call(name, &b);
        assert_eq!(v["retCode"], *code, "{name}: {path} = {value:?}: {v}");
        assert!(
            v["retMsg"].as_str().unwrap().contains(path.rsplit('.').next().unwrap().split('[').next().unwrap()),
            "{name}: message names the field: {v}"
        );
    }
}

fn assert_envelope(v: &Value) {
    assert!(v["retCode"].is_i64() && v["retMsg"].is_string(), "{v}");
    assert_eq!(v["responseID"].as_str().unwrap().len(), 32, "{v}");
    assert!(v.get("code").is_none() && v.get("reqId").is_none(), "not the ping envelope: {v}");
}

#[test]
fn ping_answers_the_code_envelope_with_the_callers_data() {
    let emu = Emu::start();
    let r = emu.signed("/callcentre/api/v3/ping", br#"{"data":"hello"}"#, &[]);
    let v = r.try_json().unwrap();
    assert_eq!(v.as_object().unwrap().len(), 5, "{v}");
    assert_eq!((v["code"].clone(), v["data"].clone()), (json!(0), json!("hello")));
    assert!(v["msg"].is_string() && v["reqId"].is_string() && v.get("retCode").is_none());
    let ts = v["timestamp"].as_u64().unwrap();
    assert!(ts.abs_diff(now_secs().parse().unwrap()) < 5, "timestamp is Unix seconds: {ts}");
    let code = |body: &[u8]| emu.signed("/callcentre/api/v3/ping", body, &[]).try_json().unwrap()["code"].clone();
    assert_eq!(code(b"{}"), 2);
    assert_eq!(code(br#"{"data":5}"#), 3);
    assert_eq!(code(b"not json"), 3);
}

#[test]
fn create_task_answers_a_task_id_and_refuses_bad_fields() {
    let emu = Emu::start();
    let body = json!({
        "productID": "callbot", "userTaskID": "t-create", "sceneID": "scene-1", "account": "", "other": "x",
        "taskCallbackUrl": "http://127.0.0.1:9/task", "orderCallbackUrl": "http://127.0.0.1:9/order",
        "taskCreateSetting": {"strategyName": "s", "startupType": 1, "startupAt": 0, "zoneSecond": 0, "dialAtWeekDay": "1,2",
            "dialAtUpHour ": "09:00", "dialAtDownHour": "18:00", "maxRingTime": 30, "routeID": "r",
            "manualCallSetting": {"agentGroup": "g", "dispatchType": 1, "ratioCallRate": 1.5, "predictCallRate": 1}},
        "funcFlag": {"taskKeep": false, "roundRedial": false, "wholeTTS": false, "smsEnable": false,
            "smsFuncFlag": [{"smsId": "s1", "intentId": ["A"], "intentName": ["n"]}]},
    });
    let v = emu.ok("createTask", &body);
    assert_envelope(&v);
    assert_eq!(v["taskID"].as_str().unwrap().len(), 32);
    assert_eq!(emu.code("createTask", &body), 4, "a userTaskID is unique");
    let fresh = with(&body, "userTaskID", Some(json!("t-create-2")));
    assert_codes(
        &emu,
        "createTask",
        &fresh,
        &[
            ("productID", None, 2),
            ("productID", Some(json!("sms")), 4),
            ("userTaskID", None, 2),
            ("userTaskID", Some(json!(7)), 3),
            ("userTaskID", Some(json!("")), 4),
            ("sceneID", None, 2),
            ("taskCreateSetting.startupType", Some(json!("1")), 3),
            ("taskCreateSetting.maxRingTime", Some(json!(0)), 4),
            ("taskCreateSetting.manualCallSetting.ratioCallRate", Some(json!("fast")), 3),
            ("funcFlag.taskKeep", Some(json!("yes")), 3),
            ("funcFlag.smsFuncFlag[0].intentId", Some(json!("A")), 3),
            ("taskCallbackUrl", Some(json!("ftp://x")), 4),
            ("taskCreateSetting", Some(json!([])), 3),
        ],
    );
    // A refused request changes nothing.
    assert_eq!(
        emu.ok("listTask", &json!({"productID": "callbot", "page": 1, "size": 10, "queryConditions": {}}))
            ["totalCount"],
        1
    );
}

#[test]
fn create_and_call_creates_a_pending_task_with_its_orders() {
    let emu = Emu::start();
    let body = json!({
        "productID": "callbot", "userTaskID": "t-cac", "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "n", "maxCall": 3, "taskCallbackUrl": "http://127.0.0.1:9/task"},
        "funcFlag": {"phoneEncrypt": false, "smsFuncFlag": [{"smsID": "s", "intentID": [], "intentName": []}]},
        "callInfoList": call_info("cac", 3),
    });
    let v = emu.ok("createAndCall", &body);
    assert_envelope(&v);
    assert!(v["taskID"].is_string());
    let state = emu.state();
    assert_eq!(state["tasks"][0]["taskStatus"], 1, "pending until mgrTaskStatus starts it");
    assert_eq!(state["tasks"][0]["orders"].as_array().unwrap().len(), 3);
    let fresh = with(&body, "userTaskID", Some(json!("t-cac-2")));
    let over: Vec<Value> = (0..1001).map(|i| json!({"orderID": format!("big-{i}"), "userPhone": "861"})).collect();
    assert_codes(
        &emu,
        "createAndCall",
        &fresh,
        &[
            ("callInfoList", None, 2),
            ("callInfoList.callList", None, 2),
            ("callInfoList.callList", Some(json!({})), 3),
            ("callInfoList.callList", Some(json!([])), 4),
            ("callInfoList.callList", Some(Value::Array(over)), 4001),
            ("callInfoList.orderCallbackUrl", None, 2),
            ("callInfoList.callCallbackUrl", Some(json!(1)), 3),
            ("callInfoList.callList[0].userPhone", Some(json!("+86 156")), 4),
            ("callInfoList.callList[0].orderID", None, 2),
            ("callInfoList.callList[1].orderID", Some(json!("cac-0")), 4),
            ("taskCreateSetting.maxCall", Some(json!(0)), 4),
            ("taskCreateSetting.maxCall", Some(json!(2.5)), 3),
            ("funcFlag.phoneEncrypt", Some(json!(1)), 3),
        ],
    );
    // orderIDs are unique across the account's tasks.
    assert_eq!(emu.code("createAndCall", &with(&fresh, "callInfoList", Some(call_info("cac", 1)))), 4);
}

#[test]
fn mgr_task_status_moves_the_task_through_its_states() {
    let emu = Emu::start();
    let v = create(&emu, "t-mgr");
    let task_id = v["taskID"].clone();
    let op = |n: i64| json!({"productID": "callbot", "userTaskID": "t-mgr", "taskOperate": n});
    let v = emu.ok("mgrTaskStatus", &op(2));
    assert_envelope(&v);
    assert_eq!((v["taskID"].clone(), v["taskStatus"].clone()), (task_id, json!(5)));
    assert_eq!(emu.ok("mgrTaskStatus", &op(1))["taskStatus"], 2);
    assert_eq!(emu.ok("mgrTaskStatus", &op(1))["taskStatus"], 2, "start is idempotent");
    assert_codes(
        &emu,
        "mgrTaskStatus",
        &op(2),
        &[
            ("taskOperate", None, 2),
            ("taskOperate", Some(json!("2")), 3),
            ("taskOperate", Some(json!(4)), 4),
            ("delCall", Some(json!(2)), 4),
            ("delCall", Some(json!(true)), 3),
            ("userTaskID", Some(json!("no-such-task")), 4),
        ],
    );
    assert_eq!(emu.ok("mgrTaskStatus", &op(3))["taskStatus"], 3);
    assert_eq!(emu.code("mgrTaskStatus", &op(1)), 4, "a completed task stays completed");
}

#[test]
fn update_task_changes_a_paused_or_pending_task_only() {
    let emu = Emu::start();
    create(&emu, "t-upd");
    let body = json!({"productID": "callbot", "userTaskID": "t-upd", "sceneID": "scene-2",
        "taskCreateSetting": {"maxCall": 9, "taskName": "renamed"}, "funcFlag": {"taskKeep": true}});
    assert_envelope(&emu.ok("updateTask", &body));
    let task = &emu.state()["tasks"][0];
    assert_eq!((task["sceneID"].clone(), task["maxCall"].clone()), (json!("scene-2"), json!(9)));
    assert_codes(
        &emu,
        "updateTask",
        &body,
        &[
            ("productID", None, 2),
            ("sceneID", Some(json!("")), 4),
            ("taskCreateSetting.maxCall", Some(json!("9")), 3),
            ("funcFlag", Some(json!("x")), 3),
        ],
    );
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "t-upd", "taskOperate": 1}));
    assert_eq!(emu.code("updateTask", &body), 4, "a running task cannot be updated");
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "t-upd", "taskOperate": 2}));
    assert_eq!(emu.code("updateTask", &body), 0, "a paused one can");
}

#[test]
fn list_task_pages_and_filters_the_accounts_tasks() {
    let emu = Emu::start();
    for t in ["lt-a", "lt-b", "lt-c"] {
        create(&emu, t);
    }
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "lt-b", "taskOperate": 2}));
    let body = json!({"productID": "callbot", "page": 1, "size": 2, "queryConditions": {}});
    let v = emu.ok("listTask", &body);
    assert_envelope(&v);
    assert_eq!(v["totalCount"], 3);
    let rows = v["taskData"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row = &rows[0];
    for (k, kind) in [("userTaskID", "s"), ("taskID", "s"), ("sceneID", "s"), ("taskStatus", "i"), ("createTs", "i")] {
        assert!(if kind == "s" { row[k].is_string() } else { row[k].is_i64() }, "{k}: {row}");
    }
    for k in ["answerOrderCount", "finishOrderCount", "totalOrderCount", "totalAnswerCall", "totalCall"] {
        assert!(row["taskStat"][k].is_i64(), "{k}");
    }
    assert!(row["taskStat"]["finishRate"].is_f64() && row["taskStat"]["answerRate"].is_f64());
    assert_eq!(emu.ok("listTask", &with(&body, "page", Some(json!(2))))["taskData"].as_array().unwrap().len(), 1);
    let paused = emu.ok("listTask", &with(&body, "queryConditions", Some(json!({"taskStatus": [5]}))));
    assert_eq!(paused["taskData"][0]["userTaskID"], "lt-b");
    // Another account sees none of them.
    let other = emu.signed_as(
        UUID_SHA,
        SECRET_SHA,
        nxgate_testkit::refsign::Digest::Md5,
        &format!("{V3}listTask"),
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(other.try_json().unwrap()["totalCount"], 0);
    assert_codes(
        &emu,
        "listTask",
        &body,
        &[
            ("page", None, 2),
            ("size", Some(json!("2")), 3),
            ("size", Some(json!(0)), 4),
            ("page", Some(json!(0)), 4),
            ("queryConditions", None, 2),
            ("queryConditions.taskStatus", Some(json!(5)), 3),
            ("queryConditions.userTaskID", Some(json!([1])), 3),
        ],
    );
}

#[test]
fn add_batch_call_adds_orders_to_an_unfinished_task() {
    let emu = Emu::start();
    create(&emu, "t-add");
    let body = json!({"productID": "callbot", "userTaskID": "t-add", "callInfoList": call_info("add", 2)});
    let v = emu.ok("addBatchCall", &body);
    assert_envelope(&v);
    assert_eq!(emu.state()["tasks"][0]["orders"].as_array().unwrap().len(), 2);
    let over: Vec<Value> = (0..1001).map(|i| json!({"orderID": format!("x{i}"), "userPhone": "1"})).collect();
    assert_codes(
        &emu,
        "addBatchCall",
        &with(&body, "callInfoList", Some(call_info("add2", 1))),
        &[
            ("userTaskID", Some(json!("nope")), 4),
            ("callInfoList", Some(json!("x")), 3),
            ("callInfoList.callList", Some(Value::Array(over)), 4001),
            ("callInfoList.callList[0]", Some(json!("8615600000000")), 3),
            ("callInfoList.callList[0].userName", Some(json!(1)), 3),
            ("callInfoList.callList[0].params", Some(json!([{"value": "v"}])), 2),
        ],
    );
    assert_eq!(emu.code("addBatchCall", &body), 4, "the same orderIDs again");
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "t-add", "taskOperate": 3}));
    assert_eq!(
        emu.code("addBatchCall", &with(&body, "callInfoList", Some(call_info("add3", 1)))),
        4,
        "a finished task takes no numbers"
    );
}

#[test]
fn import_batch_call_answers_a_batch_id_and_export_lists_that_batch() {
    let emu = Emu::start();
    create(&emu, "t-imp");
    let body = json!({"productID": "callbot", "userTaskID": "t-imp", "callInfoList": call_info("imp", 3)});
    let v = emu.ok("importBatchCall", &body);
    assert_envelope(&v);
    let batch = v["batchID"].as_str().unwrap().to_owned();
    let big: Vec<Value> = (0..1500).map(|i| json!({"orderID": format!("bulk-{i}"), "userPhone": "86100"})).collect();
    let mut bulk = body.clone();
    bulk["callInfoList"]["callList"] = Value::Array(big);
    let bulk_batch = emu.ok("importBatchCall", &bulk)["batchID"].clone();
    assert_ne!(bulk_batch, json!(batch), "import takes more than addBatchCall's 1000");

    let export = json!({"productID": "callbot", "userTaskID": "t-imp"});
    let v = emu.ok("exportBatchCall", &export);
    assert_envelope(&v);
    assert_eq!((v["totalCount"].clone(), v["batchID"].clone()), (json!(1500), bulk_batch));
    let row = &v["callList"][0];
    for k in ["orderID", "userPhone", "other", "callID"] {
        assert!(row[k].is_string(), "{k}: {row}");
    }
    assert!(row["callStatus"].is_i64() && row["callStartTs"].is_i64() && row["intents"].is_array());
    assert_codes(&emu, "exportBatchCall", &export, &[("productID", Some(json!("string")), 4), ("userTaskID", None, 2)]);
    create(&emu, "t-noimp");
    let none = emu.ok("exportBatchCall", &json!({"productID": "callbot", "userTaskID": "t-noimp"}));
    assert_eq!((none["totalCount"].clone(), none["batchID"].clone()), (json!(0), json!("")));
}

#[test]
fn stop_order_reports_successes_and_errors() {
    let emu = Emu::start();
    create(&emu, "t-stop");
    emu.ok(
        "addBatchCall",
        &json!({"productID": "callbot", "userTaskID": "t-stop", "callInfoList": call_info("st", 3)}),
    );
    let body =
        json!({"productID": "callbot", "userTaskID": "t-stop", "orderIDs": ["st-0", "st-1", "nope"], "delCall": 1});
    let v = emu.ok("stopOrder", &body);
    assert_envelope(&v);
    assert_eq!((v["totalCount"].clone(), v["successCount"].clone()), (json!(3), json!(2)));
    assert_eq!(v["errList"], json!([{"orderID": "nope", "errMsg": "order not found"}]));
    let orders = emu.ok("listOrder", &json!({"productID": "callbot", "userTaskID": "t-stop", "options": {}}));
    assert_eq!(orders["totalCount"], 1, "delCall 1 deleted the two undialled orders");
    let over: Vec<String> = (0..501).map(|i| format!("o{i}")).collect();
    assert_codes(
        &emu,
        "stopOrder",
        &body,
        &[
            ("orderIDs", None, 2),
            ("orderIDs", Some(json!("st-2")), 3),
            ("orderIDs", Some(json!(over)), 4001),
            ("orderIDs", Some(json!([])), 4),
            ("delCall", Some(json!(5)), 4),
        ],
    );
}

/// A finished small campaign (3 orders) for the list endpoints.
fn finished_campaign(emu: &Emu, task: &str) -> Receiver {
    let rx = Receiver::start(HashMap::new());
    emu.ok("createAndCall", &campaign_body(task, &rx.url, 6));
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": task, "taskOperate": 1}));
    emu.advance(3600);
    rx
}

#[test]
fn list_order_filters_by_order_finish_and_call_status() {
    let emu = Emu::start();
    let rx = finished_campaign(&emu, "t-lo");
    let body = json!({"productID": "callbot", "userTaskID": "t-lo", "options": {"orderID": null, "intentID": null, "finish": null, "turnTime": null}, "page": 1, "size": 100});
    let v = emu.ok("listOrder", &body);
    assert_envelope(&v);
    assert_eq!(v["totalCount"], 6);
    let row = &v["orderList"][0];
    for k in ["orderID", "userPhone", "userName", "other", "callID"] {
        assert!(row[k].is_string(), "{k}");
    }
    assert!(row["finish"].is_boolean() && row["callStatus"].is_i64() && row["intents"].is_array());
    let answered = rx.at("/call").iter().filter(|c| c.json()["callInfoDetail"]["callStatus"] == 1).count();
    let only_answered = emu.ok("listOrder", &with(&body, "options", Some(json!({"callStatus": [1]}))));
    assert_eq!(only_answered["totalCount"], answered);
    let one = emu.ok("listOrder", &with(&body, "options", Some(json!({"orderID": ["t-lo-o2"], "finish": 1}))));
    assert_eq!(one["orderList"][0]["orderID"], "t-lo-o2");
    assert_eq!(emu.ok("listOrder", &with(&body, "options", Some(json!({"finish": 0}))))["totalCount"], 0);
    assert_eq!(emu.ok("listOrder", &with(&body, "size", Some(json!(4))))["orderList"].as_array().unwrap().len(), 4);
    assert_codes(
        &emu,
        "listOrder",
        &body,
        &[
            ("options", None, 2),
            ("options.finish", Some(json!(2)), 4),
            ("options.intentLevel", Some(json!(["1"])), 3),
            ("options.callDuration", Some(json!({"gt": "1"})), 3),
            ("size", Some(json!(100_000)), 4),
        ],
    );
}

#[test]
fn list_call_lists_every_call_and_filters_them() {
    let emu = Emu::start();
    let rx = finished_campaign(&emu, "t-lc");
    let body = json!({"productID": "callbot", "userTaskID": "t-lc", "options": {"callID": null, "startTs": 0}, "page": 1, "size": 100});
    let v = emu.ok("listCall", &body);
    assert_envelope(&v);
    assert_eq!(v["totalCount"], 6);
    let row = &v["callList"][0];
    for k in ["callID", "orderID", "userPhone"] {
        assert!(row[k].is_string(), "{k}");
    }
    for k in ["callStatus", "callStartTs", "callAnswerTs", "callEndTs", "callDuration"] {
        assert!(row[k].is_i64(), "{k}");
    }
    let id = rx.at("/call")[0].json()["callInfoDetail"]["callID"].clone();
    let one = emu.ok("listCall", &with(&body, "options", Some(json!({"callID": [id]}))));
    assert_eq!((one["totalCount"].clone(), one["callList"][0]["callID"].clone()), (json!(1), id));
    let long = emu.ok("listCall", &with(&body, "options", Some(json!({"callDuration": {"gt": 0, "enable": true}}))));
    assert!(long["callList"].as_array().unwrap().iter().all(|c| c["callStatus"] == 1));
    assert_codes(
        &emu,
        "listCall",
        &body,
        &[
            ("userTaskID", None, 2),
            ("options.callStatus", Some(json!(1)), 3),
            ("options.startTs", Some(json!("0")), 3),
            ("page", Some(json!(-1)), 4),
        ],
    );
}

#[test]
fn list_order_detail_returns_every_call_and_caps_the_list_at_500() {
    let emu = Emu::start();
    finished_campaign(&emu, "t-lod");
    let body = json!({"productID": "callbot", "userTaskID": "t-lod", "orderList": ["t-lod-o0", "t-lod-o1", "unknown"]});
    let v = emu.ok("listOrderDetail", &body);
    assert_envelope(&v);
    let list = v["orderDetailList"].as_array().unwrap();
    assert_eq!(list.len(), 2, "unknown orders are left out");
    let o = &list[0];
    for k in ["orderID", "userPhone", "userName", "sceneID", "userTaskID", "taskID", "other"] {
        assert!(o[k].is_string(), "{k}");
    }
    assert!(o["finish"].is_boolean());
    let c = &o["callInfoDetailList"][0];
    for k in ["callID", "callingNumber", "lineAddress", "callAudioUrl", "hangupCause", "termSipCode"] {
        assert!(c[k].is_string(), "{k}");
    }
    for k in ["callStatus", "callStartTs", "callAnswerTs", "callEndTs", "callDuration"] {
        assert!(c[k].is_i64(), "{k}");
    }
    assert!(
        c["intents"].is_array() && c["sms"].is_array() && c["params"].is_array() && c["agent"]["agentName"].is_string()
    );
    let max: Vec<String> = (0..500).map(|i| format!("x{i}")).collect();
    assert_eq!(emu.code("listOrderDetail", &with(&body, "orderList", Some(json!(max)))), 0, "500 is allowed");
    let over: Vec<String> = (0..501).map(|i| format!("x{i}")).collect();
    assert_codes(
        &emu,
        "listOrderDetail",
        &body,
        &[
            ("orderList", Some(json!(over)), 4001),
            ("orderList", None, 2),
            ("orderList", Some(json!([1, 2])), 3),
            ("productID", Some(json!(1)), 3),
        ],
    );
}

#[test]
fn a_documented_endpoint_refuses_a_body_that_is_not_a_json_object() {
    let emu = Emu::start();
    for body in [&b"not json"[..], b"[1,2]", b""] {
        let v = emu.signed(&format!("{V3}listTask"), body, &[]).try_json().unwrap();
        assert_eq!(v["retCode"], 3, "{v}");
    }
}
