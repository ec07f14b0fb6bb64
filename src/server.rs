//! Process wiring: Pingora's server with the proxy, admin and housekeeping services.

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{AdminApp, Housekeeping};
use crate::config::GatewayConfig;
use crate::downstream::HeaderDeadline;
use crate::generation;
use crate::lifecycle::{Lifecycle, Signals};
use crate::metrics::Metrics;
use crate::proxy::{NxGate, DOWNSTREAM_KEEPALIVE_SECS};
use crate::reload::Reloader;

/// Seconds each runtime gets to finish its tasks once the grace period is over.
pub const RUNTIME_SHUTDOWN_SECS: u64 = 5;

/// Per-connection write buffer on the proxy listeners.
const DOWNSTREAM_WRITE_BUFFER: usize = 16 * 1024;

/// How a process starts: fresh, or taking over the listening sockets of a running one.
#[derive(Debug, Clone, Default)]
pub struct StartMode {
    /// Take the listeners from the process listening on `upgrade_sock` (Pingora's
    /// graceful upgrade: start the new process with this set, then SIGQUIT the old one).
    pub upgrade: bool,
    /// The socket the listeners are handed over on; see [`default_upgrade_sock`].
    pub upgrade_sock: Option<PathBuf>,
}

/// The default handover socket: stable across restarts of one instance (it is named for
/// the first listen port), distinct between instances on one host.
pub fn default_upgrade_sock(config: &GatewayConfig) -> PathBuf {
    let port = config.listen.first().map_or(0, |a| a.port());
    std::env::temp_dir().join(format!("nxgate-upgrade-{port}.sock"))
}

/// Checks up front that every listen address can be bound, because Pingora binds inside a
/// spawned task and only logs a failure there while the process keeps running.
pub fn check_bindable(config: &GatewayConfig) -> Result<(), String> {
    for a in config.listen.iter().chain(config.admin_listen.iter()) {
        std::net::TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?;
    }
    Ok(())
}

/// A built, not yet running gateway.
pub struct Gateway {
    server: Server,
    lifecycle: Arc<Lifecycle>,
}

impl Gateway {
    /// Builds every service for `config`; `config_path` is what reloads read.
    pub fn build(config: GatewayConfig, config_path: &Path, mode: &StartMode) -> Self {
        let upgrade_sock = mode.upgrade_sock.clone().unwrap_or_else(|| default_upgrade_sock(&config));
        let conf = ServerConf {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            grace_period_seconds: Some(config.shutdown_grace.as_secs()),
            graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
            pid_file: std::env::temp_dir().join(format!("nxgate-{}.pid", std::process::id())).display().to_string(),
            upgrade_sock: upgrade_sock.display().to_string(),
            ..ServerConf::default()
        };
        let opt = Opt { upgrade: mode.upgrade, ..Opt::default() };
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        server.bootstrap();

        let metrics = Arc::new(Metrics::new());
        let lifecycle = Lifecycle::new(config.shutdown_grace, metrics.clone());
        let listen: Vec<SocketAddr> = config.listen.clone();
        let admin_listen = config.admin_listen;
        let live = generation::live(config, metrics.clone());
        let reloader = Arc::new(Reloader::new(config_path.to_owned(), live.clone(), metrics.clone()));

        let app = NxGate::new(live.clone(), metrics.clone(), lifecycle.clone());
        let mut proxy = pingora::proxy::http_proxy(&server.configuration, app);
        // HTTP/2 with prior knowledge (h2c) on the same ports; HTTP/1 callers are unaffected
        // (Pingora peeks for the h2 preface). An h2 connection with no stream open is closed
        // after the same idle time as an HTTP/1 keep-alive connection.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(Duration::from_secs(DOWNSTREAM_KEEPALIVE_SECS));
        proxy.server_options = Some(options);
        let mut proxy = Service::new("nxgate".to_owned(), HeaderDeadline::new(proxy, live.clone(), &metrics));
        for addr in &listen {
            // A 16 KiB write buffer lets a response header and a body of up to ~15 KiB leave
            // in one segment; Pingora's 1,460-byte default splits a 1 KiB answer in two.
            let buffers = L4BufferSettings::default().write(DOWNSTREAM_WRITE_BUFFER);
            proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
        }
        server.add_service(proxy);

        if let Some(addr) = admin_listen {
            let admin = AdminApp { lifecycle: lifecycle.clone(), metrics: metrics.clone(), reloader: reloader.clone() };
            let mut svc = Service::new("nxgate admin".to_owned(), HeaderDeadline::new(admin, live.clone(), &metrics));
            svc.add_tcp(&addr.to_string());
            server.add_service(svc);
        }
        let housekeeping = Housekeeping { listen, lifecycle: lifecycle.clone(), reloader };
        server.add_service(background_service("housekeeping", housekeeping));
        Gateway { server, lifecycle }
    }

    /// The lifecycle handle (readiness, draining, stop).
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Runs until a signal (or `Lifecycle::stop_now`). Blocks.
    pub fn run(self) {
        let signals = Signals(self.lifecycle.clone());
        self.server.run(RunArgs { shutdown_signal: Box::new(signals) });
    }
}
