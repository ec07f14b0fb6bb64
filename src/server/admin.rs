//! The admin listener: health, readiness, metrics and reload, never on the proxy port.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once config is loaded and the proxy listeners accept; 503 while draining |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /reload` | reloads the config file; 200, or 400 with the reason (old config keeps serving) |
//! | `GET /callbacks/dead` | the outbox's dead letters, oldest first (JSON array) |
//! | `POST /callbacks/redrive[?id=]` | queues every dead letter (or one) again with a fresh schedule |

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::process::lifecycle::Lifecycle;
use crate::process::metrics::Metrics;
use crate::server::bind::{write_ready_file, Bound};
use crate::server::reload::{ReloadError, Reloader};
use crate::state::Live;
use crate::store::now_ms;

/// How often the readiness probe retries connecting to the proxy listeners.
const READINESS_POLL: Duration = Duration::from_millis(20);

/// The admin HTTP application.
pub struct AdminApp {
    /// Readiness and draining.
    pub lifecycle: Arc<Lifecycle>,
    /// What `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// What `/reload` calls.
    pub reloader: Arc<Reloader>,
    /// The outbox and the tenants, for the dead-letter endpoints.
    pub live: Live,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static parts are valid")
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", serde_json::to_vec(&value).expect("json value serializes"))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_owned());
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            ("GET" | "HEAD", "/readyz") => {
                if self.lifecycle.is_ready() {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                } else {
                    let status = if self.lifecycle.is_draining() { "draining" } else { "starting" };
                    json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": status}))
                }
            }
            ("GET" | "HEAD", "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render()),
            ("POST", "/reload") => {
                let reloader = self.reloader.clone();
                // Reading files and building TLS roots is blocking work.
                let result = tokio::task::spawn_blocking(move || reloader.reload())
                    .await
                    .unwrap_or_else(|e| Err(ReloadError::Task(e.to_string())));
                match result {
                    Ok(()) => json(StatusCode::OK, serde_json::json!({"result": "ok"})),
                    Err(e) => {
                        json(StatusCode::BAD_REQUEST, serde_json::json!({"result": "error", "error": e.to_string()}))
                    }
                }
            }
            ("GET" | "HEAD", "/callbacks/dead") => self.dead_letters().await,
            ("POST", "/callbacks/redrive") => {
                let id =
                    req.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("id=")).map(str::to_owned));
                self.redrive(id.as_deref()).await
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/reload" | "/callbacks/dead" | "/callbacks/redrive") => {
                json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({"error": "method not allowed"}))
            }
            _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not found"})),
        }
    }
}

fn store_unavailable(e: crate::store::StoreError) -> Response<Vec<u8>> {
    json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": e.to_string()}))
}

impl AdminApp {
    async fn dead_letters(&self) -> Response<Vec<u8>> {
        let g = self.live.load_full();
        match g.outbox.dead_letters(&g.uuids()).await {
            Ok(dead) => {
                let list: Vec<_> = dead
                    .into_iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.callback.id,
                            "tenant": d.callback.tenant,
                            "request_id": d.callback.request_id,
                            "path": d.callback.target,
                            "attempts": d.attempts,
                            "last_error": d.last_error,
                            "first_received": d.callback.received_ms / 1000,
                            "dead_since": d.since_ms / 1000,
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::Value::Array(list))
            }
            Err(e) => store_unavailable(e),
        }
    }

    async fn redrive(&self, id: Option<&str>) -> Response<Vec<u8>> {
        let g = self.live.load_full();
        match g.outbox.redrive(&g.uuids(), id, now_ms()).await {
            Ok(0) if id.is_some() => {
                json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no dead letter has this id"}))
            }
            Ok(n) => {
                tracing::info!(redriven = n, id, "dead letters queued again");
                json(StatusCode::OK, serde_json::json!({"redriven": n}))
            }
            Err(e) => store_unavailable(e),
        }
    }
}

/// Background work next to the proxy: marks the gateway ready once every listener accepts
/// connections (then closes the port reservations and writes the ready file), and reloads
/// the config on SIGHUP.
pub struct Housekeeping {
    /// The listeners to probe.
    pub bound: Arc<Bound>,
    /// Where to report the bound addresses once ready.
    pub ready_file: Option<PathBuf>,
    /// Set ready here.
    pub lifecycle: Arc<Lifecycle>,
    /// SIGHUP calls this.
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for addr in self.bound.listen.iter().chain(self.bound.admin.iter()).chain(self.bound.callbacks.iter()) {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(READINESS_POLL).await;
            }
        }
        self.bound.release();
        self.lifecycle.set_ready();
        tracing::info!(listen = ?self.bound.listen, admin = ?self.bound.admin, callbacks = ?self.bound.callbacks, "ready");
        if let Some(path) = &self.ready_file {
            if let Err(e) = write_ready_file(path, &self.bound.to_json()) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }

        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler; use POST /reload");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    let reloader = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
