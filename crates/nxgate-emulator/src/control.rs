//! `/_emulator/*`: the test-facing control plane. Unsigned and unauthenticated (it is a
//! test double), never counted in the request counter, never faulted.
//!
//! | request | effect |
//! |---|---|
//! | `GET /_emulator/state` | tasks, orders, calls, callbacks (with every attempt and the receiver's answers), the request counter, the clock |
//! | `GET /_emulator/requests` | the request counter, and the last 32 requests as they arrived (method, path, headers, `body_hex` of the first 64 KiB, `body_len`) |
//! | `POST /_emulator/advance?secs=N` | moves the simulated clock N seconds (fractions allowed), running every call and callback due on the way; answers when they are done |
//! | `POST /_emulator/fault?name=F` | from now on, answer every request that names no fault with `F`; `name=none` turns faults off, `name=config` restores `--fault` |

use serde_json::{json, Value};
use std::sync::Arc;

use crate::callbacks::Delivery;
use crate::http::{Request, Response};
use crate::state::{OrderPhase, World};
use crate::{Emulator, Misbehaviour};

/// Where the control plane lives.
pub(crate) const PREFIX: &str = "/_emulator/";

pub(crate) async fn handle(emu: &Arc<Emulator>, req: &Request) -> Response {
    let json_answer = |v: Value| Response::json(200, serde_json::to_vec(&v).expect("json value serializes"));
    match (req.method.as_str(), req.route()) {
        ("GET", "/_emulator/state") => json_answer(state_json(&emu.world(), emu.clock().scale())),
        ("GET", "/_emulator/requests") => json_answer(requests_json(&emu.world())),
        ("POST", "/_emulator/advance") => {
            let Some(secs) =
                req.query("secs").and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0)
            else {
                return Response::plain(400, b"advance takes ?secs=N (N >= 0)".to_vec());
            };
            let target = {
                let mut clock = emu.clock();
                clock.advance((secs * 1000.0) as u64);
                clock.target_ms()
            };
            crate::sim::advance_to(emu, target).await;
            let w = emu.world();
            json_answer(json!({ "now_ms": w.now_ms, "callbacks": w.callbacks.len() }))
        }
        ("POST", "/_emulator/fault") => match req.query("name") {
            Some("none") => {
                emu.set_runtime_fault(None);
                json_answer(json!({ "fault": null }))
            }
            Some("config") => {
                *emu.runtime_fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
                json_answer(json!({ "fault": emu.standing_fault().map(Misbehaviour::name) }))
            }
            Some(name) => match name.parse::<Misbehaviour>() {
                Ok(f) => {
                    emu.set_runtime_fault(Some(f));
                    json_answer(json!({ "fault": f.name() }))
                }
                Err(msg) => Response::plain(400, msg.into_bytes()),
            },
            None => Response::plain(400, b"fault takes ?name=F".to_vec()),
        },
        _ => Response::plain(404, b"unknown /_emulator/ endpoint".to_vec()),
    }
}

fn requests_json(w: &World) -> Value {
    json!({ "total": w.requests.total, "by_path": w.requests.by_path, "recent": w.requests.recent })
}

/// The whole model, for tests. Field names are the emulator's own (snake_case), except
/// where they mirror the vendor's (`userTaskID`, `orderID`, ...).
fn state_json(w: &World, time_scale: f64) -> Value {
    let tasks: Vec<Value> = w
        .tasks
        .values()
        .map(|t| {
            let orders: Vec<Value> = t
                .orders
                .iter()
                .map(|o| {
                    let phase = match &o.phase {
                        OrderPhase::Waiting { .. } => "waiting",
                        OrderPhase::Dialling { .. } => "dialling",
                        OrderPhase::Finished => "finished",
                    };
                    json!({
                        "orderID": o.order_id,
                        "userPhone": o.user_phone,
                        "userName": o.user_name,
                        "customerName": o.customer_name,
                        "phase": phase,
                        "stopped": o.stopped,
                        "deleted": o.deleted,
                        "calls": o.calls.iter().map(|c| crate::state::call_detail(o, c)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "uuid": t.uuid,
                "userTaskID": t.user_task_id,
                "taskID": t.task_id,
                "sceneID": t.scene_id,
                "taskStatus": t.status,
                "taskStat": t.stat(),
                "taskName": t.task_name,
                "maxCall": t.max_call,
                "taskCreateSetting": t.settings,
                "funcFlag": t.func_flag,
                "other": t.other,
                "taskCallbackUrl": t.task_callback_url,
                "orders": orders,
            })
        })
        .collect();
    let callbacks: Vec<Value> = w
        .callbacks
        .iter()
        .map(|c| {
            let (state, next_ms) = match c.delivery {
                Delivery::Pending { next_ms } => ("pending", Some(next_ms)),
                Delivery::Delivered => ("delivered", None),
                Delivery::GaveUp => ("gave_up", None),
            };
            json!({
                "id": c.id,
                "kind": c.kind.name(),
                "uuid": c.uuid,
                "url": c.url,
                "requestID": c.request_id,
                "algorithm": c.digest.name(),
                "body": serde_json::from_slice::<Value>(&c.body).unwrap_or(Value::Null),
                "state": state,
                "next_attempt_ms": next_ms,
                "attempts": c.attempts.iter().map(|a| json!({
                    "at_ms": a.at_ms,
                    "createTs": a.create_ts,
                    "status": a.status,
                    "error": a.error,
                    "answer": a.answer,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "clock": { "now_ms": w.now_ms, "time_scale": time_scale },
        "requests": requests_json(w),
        "tasks": tasks,
        "callbacks": callbacks,
    })
}
