//! A whole Callbot campaign through nxgate, with no NXCloud account: the emulator as
//! NXCloud, the gateway signing the team's requests and verifying NXCloud's callbacks on
//! its callback listener, and a recording receiver as the team's service.

mod common;

use common::*;
use nxgate_emulator::EmulatorConfig;
use nxgate_testkit::refsign::Digest;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// The emulator (time scale 0: only `advance` moves its clock) and a gateway whose
/// callback listener forwards to `receiver`.
fn world(receiver: &TestReceiver) -> (Emulator, Gateway) {
    let emu = Emulator::with(
        EmulatorConfig {
            tenants: emulator_tenants(),
            tenant_algorithms: HashMap::from([(UUID_A.to_owned(), Digest::Md5), (UUID_B.to_owned(), Digest::Sha256)]),
            seed: 7,
            ..Default::default()
        },
        None,
    );
    let mut opts = GatewayOptions::new(emu.url());
    opts.extra_top = format!(
        "callbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"{}\"\n  allow_prefixes: [\"/nx/\"]\n",
        receiver.url()
    );
    let gw = Gateway::start(&opts);
    assert_eq!(gw.callbacks.len(), 1);
    (emu, gw)
}

fn call(gw: &Gateway, key: &str, endpoint: &str, body: &Value) -> Value {
    let auth = format!("Bearer {key}");
    let r =
        gw.post(&format!("/callcentre/api/v3/{endpoint}"), &[("authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{endpoint}: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["retCode"], 0, "{endpoint}: {v}");
    v
}

fn advance(emu: &Emulator, secs: u64) {
    let r = client::request(emu.addr, "POST", &format!("/_emulator/advance?secs={secs}"), &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn campaign(task: &str, callbacks: &str, numbers: usize) -> Value {
    let list: Vec<Value> = (0..numbers)
        .map(|i| json!({"orderID": format!("{task}-o{i}"), "userPhone": format!("8613800000{i:03}")}))
        .collect();
    json!({
        "productID": "callbot",
        "userTaskID": task,
        "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "campaign", "maxCall": 5, "maxRingTime": 30, "taskCallbackUrl": format!("{callbacks}/nx/task")},
        "funcFlag": {"roundRedial": false, "taskKeep": false},
        "callInfoList": {"orderCallbackUrl": format!("{callbacks}/nx/order"), "callCallbackUrl": format!("{callbacks}/nx/call"), "callList": list}
    })
}

fn json_of(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{} is not JSON: {e}", r.path))
}

#[test]
fn twenty_numbers_dialled_and_reported_back_through_the_gateway() {
    let receiver = TestReceiver::start();
    let (emu, gw) = world(&receiver);
    let callbacks = format!("http://{}", gw.callbacks[0]);

    let created = call(&gw, KEY_A, "createAndCall", &campaign("camp-1", &callbacks, 20));
    let task_id = created["taskID"].as_str().expect("a taskID").to_owned();
    call(&gw, KEY_A, "mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "camp-1", "taskOperate": 1}));
    advance(&emu, 3600);

    let seen = receiver.seen();
    let at = |p: &str| seen.iter().filter(|r| r.path == p).collect::<Vec<_>>();
    let (calls, orders, tasks) = (at("/nx/call"), at("/nx/order"), at("/nx/task"));
    assert_eq!((calls.len(), orders.len()), (20, 20), "exactly 20 callCallbacks and 20 orderCallbacks");
    let statuses: Vec<Value> = tasks.iter().map(|t| json_of(t)["taskStatus"].clone()).collect();
    assert_eq!(statuses, [json!(2), json!(3)], "started, then completed");
    assert_eq!(seen.len(), 42, "nothing else reached the receiver");

    // Each was verified by nxgate (only a verified callback is forwarded), and arrives as
    // the gateway's contract says: tenant named, requestID as x-request-id, no signature.
    let mut ids = HashSet::new();
    for r in &seen {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("x-nxgate-tenant"), Some("tenant-a"), "{}", r.path);
        let id = r.header("x-request-id").expect("x-request-id").to_owned();
        assert!(ids.insert(id), "every callback delivered once");
        for h in ["sign", "requestid", "createts", "uuid", "algorithm"] {
            assert!(r.header(h).is_none(), "{h} reached the receiver");
        }
    }
    let state = client::request(emu.addr, "GET", "/_emulator/state", &[], b"").unwrap().json();
    let sent = state["callbacks"].as_array().unwrap();
    assert_eq!(sent.len(), 42);
    assert!(sent.iter().all(|c| c["state"] == "delivered"), "the gateway answered NXCloud 2xx for every one");

    // listOrderDetail through nxgate agrees with what the receiver saw.
    let order_ids: Vec<String> = orders.iter().map(|o| json_of(o)["orderID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(order_ids.iter().collect::<HashSet<_>>().len(), 20);
    let detail = call(
        &gw,
        KEY_A,
        "listOrderDetail",
        &json!({"productID": "callbot", "userTaskID": "camp-1", "orderList": order_ids}),
    );
    let list = detail["orderDetailList"].as_array().unwrap();
    assert_eq!(list.len(), 20);
    for o in list {
        let cb = orders.iter().map(|r| json_of(r)).find(|c| c["orderID"] == o["orderID"]).unwrap();
        assert_eq!(cb["taskID"], task_id.as_str());
        assert_eq!(o["callInfoDetailList"][0], cb["callInfoDetail"], "listOrderDetail agrees with the orderCallback");
    }
    // listTask shows the task completed, with the counters of the last taskCallback.
    let tasks_now = call(
        &gw,
        KEY_A,
        "listTask",
        &json!({"productID": "callbot", "page": 1, "size": 10, "queryConditions": {"userTaskID": ["camp-1"]}}),
    );
    assert_eq!(tasks_now["taskData"][0]["taskStatus"], 3);
    assert_eq!(tasks_now["taskData"][0]["taskStat"], json_of(tasks[1])["taskStat"]);
    assert_eq!(gw.metric(r#"nxgate_callbacks_total{outcome="delivered",tenant="tenant-a"}"#), 42.0);
}

#[test]
fn a_receiver_outage_is_retried_by_nxcloud_and_delivered_once_it_answers() {
    let receiver = TestReceiver::start();
    let (emu, gw) = world(&receiver);
    let callbacks = format!("http://{}", gw.callbacks[0]);
    receiver.set(Mode::Fail);
    call(&gw, KEY_B, "createAndCall", &campaign("camp-2", &callbacks, 1));
    call(&gw, KEY_B, "mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "camp-2", "taskOperate": 1}));
    advance(&emu, 0);
    let first = receiver.seen();
    assert_eq!(first.len(), 1, "the first taskCallback reached the failing receiver");
    receiver.set(Mode::Ok);
    advance(&emu, 3600);
    let seen = receiver.seen();
    let starts: Vec<&Received> =
        seen.iter().filter(|r| r.path == "/nx/task" && json_of(r)["taskStatus"] == 2).collect();
    assert_eq!(starts.len(), 2, "delivered again after the 500, and only once more");
    assert_eq!(
        starts[0].header("x-request-id"),
        starts[1].header("x-request-id"),
        "NXCloud's retry reuses the requestID"
    );
    assert_eq!(starts[0].body, starts[1].body);
    assert!(seen.iter().all(|r| r.header("x-nxgate-tenant") == Some("tenant-b")));
    // A SHA256 account's callbacks (signed so by NXCloud, with no algorithm header) passed
    // the gateway's check with tenant B's algorithm: otherwise none would have been forwarded.
    let state = client::request(emu.addr, "GET", "/_emulator/state", &[], b"").unwrap().json();
    assert!(state["callbacks"].as_array().unwrap().iter().all(|c| c["state"] == "delivered"), "{state}");
}
