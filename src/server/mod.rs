//! The server, above both flows: Pingora's server with the proxy, callback, admin and
//! housekeeping services; where the listeners are bound (`bind`), the admin listener
//! (`admin`) and config reload (`reload`).

pub mod admin;
pub mod bind;
pub mod reload;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::callbacks::outbox::OutboxWorker;
use crate::callbacks::Callbacks;
use crate::net::downstream::{DeadlineSource, HeaderDeadline};
use crate::net::edge::{CapSource, Edge, EdgeCounters, SourceFilter, SourcePolicy};
use crate::net::keepalive::{LeanHttp, KEEPALIVE};
use crate::net::tls::{CertStore, TlsError};
use crate::process::lifecycle::{Lifecycle, Signals};
use crate::process::metrics::{CloseReason, Metrics};
use crate::proxy::Proxy;
use crate::server::admin::{AdminApp, Housekeeping};
use crate::server::bind::{BindError, Bound};
use crate::server::reload::{Reloader, TlsStores};
use crate::shell::Shell;
use crate::state::{self, Live};
use crate::store::embedded::OpenError;
use crate::store::Outbox;
use nxgate_core::config::{GatewayConfig, SourceList};

/// Seconds each runtime gets to finish its tasks once the grace period is over.
pub const RUNTIME_SHUTDOWN_SECS: u64 = 5;

/// A caller-facing service (the proxy, the callback listener): `app` behind the lean
/// HTTP/1 loop, the header deadline and the listener's edge (source allowlist, connection
/// cap, TLS under the deadline when `tls` is set), on `addrs`. The listeners are plain TCP
/// to Pingora even with TLS: `net::edge` does the handshake, under the deadline. They have
/// no L4 buffers: Pingora's defaults (64 KiB read, 1,460 bytes write) are allocated per
/// connection and kept while it idles; the guarded stream gathers a response's writes itself,
/// only while it is written (`net::downstream::WRITE_COALESCE_BYTES`), and Pingora's parser
/// reads into its own buffers (`docs/pingora.md` §11).
fn caller_service<A: HttpServerApp + Send + Sync + 'static>(
    app: A,
    addrs: &[SocketAddr],
    tls: Option<&Arc<CertStore>>,
    edge: EdgeSpec,
    bound: &Bound,
    live: &Live,
    metrics: &Metrics,
) -> Service<Edge<HeaderDeadline<LeanHttp<A>>>> {
    let app = LeanHttp::new(app, KEEPALIVE);
    let app = HeaderDeadline::new(app, header_deadline(live), metrics.header_timeouts.clone());
    let acceptor = tls.map(|store| store.settings().build());
    let endpoints = addrs.iter().map(|addr| listener(*addr, bound).l4_buffer(L4BufferSettings::unbuffered()));
    edge_service(app, acceptor, endpoints, edge, live, metrics)
}

/// Which listener a service is, and which sources it accepts.
struct EdgeSpec {
    /// The service's name (Pingora's logs).
    name: &'static str,
    /// The `listener` label: `proxy`, `callbacks` or `admin`.
    label: &'static str,
    /// The allowlist, read from the live config per connection.
    sources: fn(&GatewayConfig) -> Option<&SourceList>,
}

/// A service serving `app` behind the edge (`net::edge`) on `endpoints`.
fn edge_service<A: ServerApp + Send + Sync + 'static>(
    app: A,
    tls: Option<Acceptor>,
    endpoints: impl Iterator<Item = ListenerConfig>,
    spec: EdgeSpec,
    live: &Live,
    metrics: &Metrics,
) -> Service<Edge<A>> {
    let closed = |reason| metrics.edge.closed(spec.label, reason);
    let counters = EdgeCounters {
        open: metrics.edge.open(spec.label),
        over_cap: closed(CloseReason::MaxConnections),
        handshake_timeouts: closed(CloseReason::HandshakeTimeout),
    };
    let cap_live = live.clone();
    let cap: CapSource = Box::new(move || cap_live.load().config.max_connections);
    let edge = Edge::new(app, tls, header_deadline(live), cap, counters);
    let mut svc = Service::new(spec.name.to_owned(), edge);
    for endpoint in endpoints {
        svc.add_listener(endpoint);
    }
    let (sources_live, sources) = (live.clone(), spec.sources);
    let allows: SourcePolicy = Box::new(move |ip| sources(&sources_live.load().config).is_none_or(|l| l.allows(ip)));
    svc.set_connection_filter(Arc::new(SourceFilter::new(allows, closed(CloseReason::SourceNotAllowed))));
    svc
}

/// Each new connection's header deadline, from the generation live at its accept.
fn header_deadline(live: &Live) -> DeadlineSource {
    let live = live.clone();
    Box::new(move || live.load().config.request_header_timeout)
}

/// How a process starts: fresh, or taking over the listening sockets of a running one.
#[derive(Debug, Clone, Default)]
pub struct StartMode {
    /// Take the listeners from the process listening on `upgrade_sock` (Pingora's
    /// graceful upgrade: start the new process with this set, then SIGQUIT the old one).
    pub upgrade: bool,
    /// The socket the listeners are handed over on; see [`default_upgrade_sock`].
    pub upgrade_sock: Option<PathBuf>,
    /// Once every listener accepts, write the bound addresses here as JSON.
    pub ready_file: Option<PathBuf>,
}

/// The default handover socket: stable across restarts of one instance (it is named for
/// the first listen port as bound), distinct between instances on one host.
pub fn default_upgrade_sock(bound: &Bound) -> PathBuf {
    let port = bound.listen.first().map_or(0, |a| a.port());
    std::env::temp_dir().join(format!("nxgate-upgrade-{port}.sock"))
}

/// Pingora's listener for `addr`; a reserved port-0 address must share the reservation's
/// port, so its listener sets `SO_REUSEPORT` as the reservation did.
fn listener(addr: SocketAddr, bound: &Bound) -> ListenerConfig {
    let config = ListenerConfig::tcp(addr.to_string());
    if !bound.is_reserved(addr) {
        return config;
    }
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    config.tcp_socket_options(options)
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address cannot be had.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A listener's certificate and key do not make a key pair.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The state store cannot be opened (`state.dir` held by another process, unreadable).
    #[error(transparent)]
    State(#[from] OpenError),
}

/// A built, not yet running gateway.
pub struct Gateway {
    server: Server,
    lifecycle: Arc<Lifecycle>,
    bound: Arc<Bound>,
}

impl Gateway {
    /// Builds every service for `config`; `config_path` is what reloads read. Fails if a
    /// listen address cannot be had.
    pub fn build(config: GatewayConfig, config_path: &Path, mode: &StartMode) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Before any listener: a state.dir another process holds stops the start here.
        let outbox = Outbox::open(&config.state, &config.redis, Some(metrics.redis_metrics()))?;
        let callback_listen = config.callbacks.as_ref().map(|c| c.listen.clone()).unwrap_or_default();
        let bound = Arc::new(Bound::resolve(&config.listen, config.admin_listen, &callback_listen, mode.upgrade)?);
        let tls = TlsStores {
            proxy: config.listen_tls.as_ref().map(CertStore::new).transpose()?,
            callbacks: config.callbacks.as_ref().and_then(|c| c.tls.as_ref()).map(CertStore::new).transpose()?,
        };
        let upgrade_sock = mode.upgrade_sock.clone().unwrap_or_else(|| default_upgrade_sock(&bound));
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

        let lifecycle = Lifecycle::new(config.shutdown_grace, metrics.clone());
        let live = state::live(config, metrics.clone(), outbox);
        let reloader = Arc::new(Reloader::new(config_path.to_owned(), live.clone(), metrics.clone(), tls.clone()));

        let app = Shell::new(Proxy(live.clone()), lifecycle.clone(), true);
        let proxy = EdgeSpec { name: "nxgate", label: "proxy", sources: |c| c.listen_allow_sources.as_ref() };
        server.add_service(caller_service(app, &bound.listen, tls.proxy.as_ref(), proxy, &bound, &live, &metrics));

        if !bound.callbacks.is_empty() {
            let app = Shell::new(Callbacks(live.clone()), lifecycle.clone(), false);
            let callbacks = tls.callbacks.as_ref();
            server.add_service(caller_service(
                app,
                &bound.callbacks,
                callbacks,
                EdgeSpec {
                    name: "nxgate callbacks",
                    label: "callbacks",
                    sources: |c| c.callbacks.as_ref().and_then(|c| c.allow_sources.as_ref()),
                },
                &bound,
                &live,
                &metrics,
            ));
        }

        if let Some(addr) = bound.admin {
            let admin = AdminApp {
                lifecycle: lifecycle.clone(),
                metrics: metrics.clone(),
                reloader: reloader.clone(),
                live: live.clone(),
            };
            let deadline = HeaderDeadline::new(admin, header_deadline(&live), metrics.header_timeouts.clone());
            let spec = EdgeSpec { name: "nxgate admin", label: "admin", sources: |c| c.admin_allow_sources.as_ref() };
            let endpoints = std::iter::once(listener(addr, &bound));
            server.add_service(edge_service(deadline, None, endpoints, spec, &live, &metrics));
        }
        // Delivers queued callbacks, and keeps the state store tidy whatever the config.
        server.add_service(background_service("callback outbox", OutboxWorker { live: live.clone() }));
        let housekeeping = Housekeeping {
            bound: bound.clone(),
            ready_file: mode.ready_file.clone(),
            lifecycle: lifecycle.clone(),
            reloader,
        };
        server.add_service(background_service("housekeeping", housekeeping));
        Ok(Gateway { server, lifecycle, bound })
    }

    /// Where the listeners are (port 0 resolved).
    pub fn bound(&self) -> Arc<Bound> {
        self.bound.clone()
    }

    /// The lifecycle handle (readiness, draining, stop).
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Runs until a signal (or `Lifecycle::stop_now`), or until a drain has nothing left in
    /// flight. Blocks. Pingora runs on a thread of its own: its graceful shutdown sleeps the
    /// whole grace period, and returning from here ends the process without waiting for it.
    pub fn run(self) {
        let lifecycle = self.lifecycle.clone();
        let server = self.server;
        let signals = Signals(lifecycle.clone());
        let done = lifecycle.clone();
        let spawned = std::thread::Builder::new().name("pingora".to_owned()).spawn(move || {
            server.run(RunArgs { shutdown_signal: Box::new(signals) });
            done.server_stopped();
        });
        match spawned {
            Ok(_) => lifecycle.wait(),
            Err(e) => tracing::error!(error = %e, "cannot start the server thread"),
        }
    }
}
