//! A whole campaign at the emulator level: createAndCall → start → advance the clock →
//! callbacks, signed as §5 says, retried with the same requestID.

mod common;

use common::*;
use nxgate_testkit::client::ClosedPort;
use nxgate_testkit::refsign::Digest;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

fn start(emu: &Emu, task: &str) -> Value {
    emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": task, "taskOperate": 1}))
}

fn list_task(emu: &Emu, task: &str) -> Value {
    let v = emu.ok(
        "listTask",
        &json!({"productID": "callbot", "page": 1, "size": 10, "queryConditions": {"userTaskID": [task]}}),
    );
    v["taskData"][0].clone()
}

#[test]
fn twenty_numbers_give_twenty_call_and_order_callbacks_and_the_task_completes() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::new());
    let created = emu.ok("createAndCall", &campaign_body("camp-1", &rx.url, 20));
    let task_id = created["taskID"].as_str().unwrap().to_owned();
    assert_eq!(start(&emu, "camp-1")["taskStatus"], 2);
    // Nothing moves before the clock does (time scale 0).
    assert!(rx.all().is_empty());
    emu.advance(3600);

    let calls = rx.at("/call");
    let orders = rx.at("/order");
    let tasks = rx.at("/task");
    assert_eq!((calls.len(), orders.len()), (20, 20), "one call round per order (roundRedial off)");
    let statuses: Vec<i64> = tasks.iter().map(|t| t.json()["taskStatus"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [2, 3], "started, then completed");

    let mut request_ids = HashSet::new();
    for cb in rx.all() {
        assert!(cb.header("algorithm").is_none(), "callbacks carry no algorithm header (§5.1): {:?}", cb.headers);
        assert_eq!(cb.header("uuid"), Some(UUID));
        assert!(cb.verifies(SECRET, Digest::Md5), "{} does not verify", cb.path);
        assert!(
            request_ids.insert(cb.header("requestID").unwrap().to_owned()),
            "requestIDs are unique across callbacks"
        );
        let v = cb.json();
        if cb.path != "/task" {
            assert_eq!(v["taskID"], task_id.as_str());
            assert_eq!(v["userTaskID"], "camp-1");
            assert!(v["callInfoDetail"]["callID"].is_string());
        }
    }
    assert!(calls.iter().all(|c| c.json()["callbackType"] == 3));
    assert!(orders.iter().all(|c| c.json()["callbackType"] == "2" && c.json()["finish"] == true));
    assert_eq!(tasks[0].json()["callbackType"], 1);
    let order_ids: HashSet<String> = orders.iter().map(|o| o.json()["orderID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(order_ids.len(), 20);

    // The final taskCallback's counters agree with the calls the receiver saw.
    let answered = calls.iter().filter(|c| c.json()["callInfoDetail"]["callStatus"] == 1).count() as i64;
    let stat = &tasks[1].json()["taskStat"];
    assert_eq!(stat["totalOrderCount"], 20);
    assert_eq!(stat["finishOrderCount"], 20);
    assert_eq!(stat["totalCall"], 20);
    assert_eq!(stat["totalAnswerCall"], answered);
    assert!(answered > 0 && answered < 20, "seeded outcomes mix answered and not: {answered}");

    // listTask and listOrderDetail agree with the callbacks.
    let row = list_task(&emu, "camp-1");
    assert_eq!(row["taskStatus"], 3);
    assert_eq!(row["taskStat"], *stat);
    let ids: Vec<String> = order_ids.iter().cloned().collect();
    let detail = emu.ok("listOrderDetail", &json!({"productID": "callbot", "userTaskID": "camp-1", "orderList": ids}));
    let list = detail["orderDetailList"].as_array().unwrap();
    assert_eq!(list.len(), 20);
    for o in list {
        let cb = orders.iter().find(|c| c.json()["orderID"] == o["orderID"]).unwrap().json();
        assert_eq!(o["callInfoDetailList"][0], cb["callInfoDetail"], "listOrderDetail agrees with the orderCallback");
    }

    // The inspection state shows every callback delivered, each on its first attempt.
    let state = emu.state();
    let cbs = state["callbacks"].as_array().unwrap();
    assert_eq!(cbs.len(), 42);
    assert!(cbs.iter().all(|c| c["state"] == "delivered" && c["attempts"].as_array().unwrap().len() == 1));
    assert_eq!(state["requests"]["by_path"]["/callcentre/api/v3/createAndCall"], 1);
}

#[test]
fn a_receiver_answering_500_gets_the_same_request_id_again_after_the_backoff() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::from([("/task".to_owned(), 2)]));
    emu.ok("createAndCall", &campaign_body("camp-retry", &rx.url, 1));
    start(&emu, "camp-retry");
    emu.advance(0);
    assert_eq!(rx.at("/task").len(), 1, "first attempt");
    emu.advance(4);
    assert_eq!(rx.at("/task").len(), 1, "the first retry waits 5 simulated seconds");
    emu.advance(1);
    emu.advance(10);
    let attempts = rx.at("/task");
    let start_attempts: Vec<&Received> = attempts.iter().filter(|r| r.json()["taskStatus"] == 2).collect();
    assert_eq!(start_attempts.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 200]);
    let ids: HashSet<&str> = start_attempts.iter().map(|r| r.header("requestID").unwrap()).collect();
    assert_eq!(ids.len(), 1, "every retry reuses the requestID");
    assert!(start_attempts.iter().all(|r| r.verifies(SECRET, Digest::Md5) && r.body == start_attempts[0].body));
    let state = emu.state();
    let first = &state["callbacks"][0];
    assert_eq!(first["state"], "delivered");
    let statuses: Vec<Value> = first["attempts"].as_array().unwrap().iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(500), json!(500), json!(200)]);
    assert_eq!(first["attempts"][0]["answer"], "boom", "the receiver's answers are kept");
}

#[test]
fn an_unreachable_receiver_is_given_up_after_the_configured_attempts() {
    let emu = Emu::start();
    let closed = ClosedPort::new().unwrap();
    emu.ok("createAndCall", &campaign_body("camp-gone", &format!("http://{}", closed.addr), 1));
    start(&emu, "camp-gone");
    emu.advance(3600);
    let state = emu.state();
    let cbs = state["callbacks"].as_array().unwrap();
    assert!(!cbs.is_empty());
    for cb in cbs {
        assert_eq!(cb["state"], "gave_up", "{cb}");
        let attempts = cb["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 4, "four attempts in all by default");
        assert!(attempts.iter().all(|a| a["status"].is_null() && a["error"].is_string()));
        // 5, 10, 20 simulated seconds apart.
        let at: Vec<u64> = attempts.iter().map(|a| a["at_ms"].as_u64().unwrap()).collect();
        assert_eq!([at[1] - at[0], at[2] - at[1], at[3] - at[2]], [5_000, 10_000, 20_000]);
    }
}

#[test]
fn callbacks_of_a_sha256_account_are_signed_with_sha256_and_no_algorithm_header() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::new());
    let body = campaign_body("camp-sha", &rx.url, 3);
    let r = emu.signed_as(
        UUID_SHA,
        SECRET_SHA,
        Digest::Md5,
        "/callcentre/api/v3/createAndCall",
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(r.try_json().unwrap()["retCode"], 0);
    let start_body = json!({"productID": "callbot", "userTaskID": "camp-sha", "taskOperate": 1}).to_string();
    emu.signed_as(UUID_SHA, SECRET_SHA, Digest::Md5, "/callcentre/api/v3/mgrTaskStatus", start_body.as_bytes(), &[]);
    emu.advance(3600);
    let all = rx.all();
    assert_eq!(all.len(), 3 + 3 + 2);
    for cb in all {
        assert!(cb.header("algorithm").is_none());
        assert!(cb.verifies(SECRET_SHA, Digest::Sha256) && !cb.verifies(SECRET_SHA, Digest::Md5));
    }
}

/// The calls a seed gives: (orderID, callStatus, callDuration) of every callCallback.
fn outcomes(seed: u64) -> Vec<(String, i64, i64)> {
    let emu = Emu::with(nxgate_emulator::EmulatorConfig { seed, ..config() });
    let rx = Receiver::start(HashMap::new());
    emu.ok("createAndCall", &campaign_body("camp-seed", &rx.url, 10));
    start(&emu, "camp-seed");
    emu.advance(3600);
    rx.at("/call")
        .iter()
        .map(|c| {
            let v = c.json();
            let d = &v["callInfoDetail"];
            (
                v["orderID"].as_str().unwrap().to_owned(),
                d["callStatus"].as_i64().unwrap(),
                d["callDuration"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_calls() {
    assert_eq!(outcomes(42), outcomes(42));
    assert_ne!(outcomes(42), outcomes(43));
}

#[test]
fn with_round_redial_an_unanswered_order_gets_a_second_call_then_one_order_callback() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::new());
    let mut body = campaign_body("camp-redial", &rx.url, 20);
    body["funcFlag"]["roundRedial"] = json!(true);
    emu.ok("createAndCall", &body);
    start(&emu, "camp-redial");
    emu.advance(7200);
    let calls = rx.at("/call");
    let orders = rx.at("/order");
    assert_eq!(orders.len(), 20, "one orderCallback per order, after its last round");
    assert!(calls.len() > 20 && calls.len() <= 40, "{} calls", calls.len());
    for o in &orders {
        let id = o.json()["orderID"].clone();
        let rounds: Vec<Value> = calls.iter().map(|c| c.json()).filter(|c| c["orderID"] == id).collect();
        let first_answered = rounds[0]["callInfoDetail"]["callStatus"] == 1;
        assert_eq!(rounds.len(), if first_answered { 1 } else { 2 }, "{id}");
        assert_eq!(rounds.last().unwrap()["finish"], true);
        if rounds.len() == 2 {
            assert_eq!(rounds[0]["finish"], false, "the first round's callCallback says the order goes on");
        }
    }
}

#[test]
fn pause_stops_dialling_and_start_resumes_it() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::new());
    let mut body = campaign_body("camp-pause", &rx.url, 10);
    body["taskCreateSetting"]["maxCall"] = json!(1);
    emu.ok("createAndCall", &body);
    start(&emu, "camp-pause");
    emu.advance(1);
    let paused =
        emu.ok("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "camp-pause", "taskOperate": 2}));
    assert_eq!(paused["taskStatus"], 5);
    emu.advance(3600);
    assert_eq!(rx.at("/call").len(), 1, "only the call in progress when paused ends");
    start(&emu, "camp-pause");
    emu.advance(3600);
    assert_eq!(rx.at("/call").len(), 10);
    let statuses: Vec<i64> = rx.at("/task").iter().map(|t| t.json()["taskStatus"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [2, 5, 2, 3]);
}

#[test]
fn finish_with_del_call_drops_the_undialled_orders() {
    let emu = Emu::start();
    let rx = Receiver::start(HashMap::new());
    let mut body = campaign_body("camp-finish", &rx.url, 10);
    body["taskCreateSetting"]["maxCall"] = json!(2);
    emu.ok("createAndCall", &body);
    start(&emu, "camp-finish");
    emu.advance(1);
    let v = emu.ok(
        "mgrTaskStatus",
        &json!({"productID": "callbot", "userTaskID": "camp-finish", "taskOperate": 3, "delCall": 1}),
    );
    assert_eq!(v["taskStatus"], 3);
    emu.advance(3600);
    assert_eq!(rx.at("/call").len(), 2, "the two calls in progress end; nothing else is dialled");
    let orders = emu.ok("listOrder", &json!({"productID": "callbot", "userTaskID": "camp-finish", "options": {}}));
    assert_eq!(orders["totalCount"], 2, "the eight undialled orders are deleted");
    // A finished task refuses every further operation.
    assert_eq!(
        emu.code("mgrTaskStatus", &json!({"productID": "callbot", "userTaskID": "camp-finish", "taskOperate": 1})),
        4
    );
}

#[test]
fn a_time_scale_runs_the_campaign_without_advance() {
    let emu = Emu::with(nxgate_emulator::EmulatorConfig { time_scale: 10_000.0, ..config() });
    let rx = Receiver::start(HashMap::new());
    emu.ok("createAndCall", &campaign_body("camp-live", &rx.url, 3));
    start(&emu, "camp-live");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rx.at("/task").len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!((rx.at("/call").len(), rx.at("/order").len(), rx.at("/task").len()), (3, 3, 2));
}

#[test]
fn a_receiver_that_keeps_the_connection_open_is_not_waited_for() {
    // A keep-alive receiver that ignores `connection: close`: the answer's Content-Length
    // ends the delivery, not the receiver's eventual close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 65536];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            held.push(stream);
        }
    });
    let emu = Emu::with(nxgate_emulator::EmulatorConfig {
        callback_retry: nxgate_emulator::CallbackRetry {
            timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        },
        ..config()
    });
    emu.ok("createTask", &json!({"productID": "callbot", "userTaskID": "t-keep", "sceneID": "s", "taskCallbackUrl": format!("{url}/task")}));
    start(&emu, "t-keep");
    let began = std::time::Instant::now();
    emu.advance(0);
    assert!(began.elapsed() < std::time::Duration::from_secs(5), "{:?}", began.elapsed());
    let state = emu.state();
    assert_eq!(state["callbacks"][0]["state"], "delivered", "{}", state["callbacks"]);
    assert_eq!(state["callbacks"][0]["attempts"][0]["answer"], "ok");
}
