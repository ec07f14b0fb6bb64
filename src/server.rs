//! Process wiring: Pingora's server, listeners and lifecycle around the `NxGate` app.

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::generation::Live;
use crate::proxy::NxGate;

/// Seconds Pingora keeps serving in-flight requests after SIGTERM before its runtimes stop.
pub const GRACE_PERIOD_SECS: u64 = 5;

/// Seconds each runtime then gets to finish its tasks.
pub const RUNTIME_SHUTDOWN_SECS: u64 = 5;

/// A way to stop a running gateway from inside the process (demo, tests).
#[derive(Clone, Default)]
pub struct StopHandle(Arc<Notify>);

impl StopHandle {
    /// Asks the server to stop at once.
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

/// SIGTERM / SIGINT drain gracefully, SIGQUIT hands the listeners to a new process
/// (Pingora's graceful upgrade), and a `StopHandle` stops at once.
struct Signals(StopHandle);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with the stop handle only");
            self.0 .0.notified().await;
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); ShutdownSignal::GracefulTerminate }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); ShutdownSignal::GracefulTerminate }
            _ = quit.recv() => { tracing::info!("SIGQUIT: graceful upgrade"); ShutdownSignal::GracefulUpgrade }
            _ = self.0 .0.notified() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Checks up front that every listen address can be bound, because Pingora binds inside a
/// spawned task and only logs a failure there while the process keeps running.
pub fn check_bindable(addrs: &[SocketAddr]) -> Result<(), String> {
    for a in addrs {
        std::net::TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?;
    }
    Ok(())
}

/// Builds the Pingora server for `live` and runs it until a signal or `stop`. Blocks.
pub fn serve(live: Live, listen: &[SocketAddr], stop: StopHandle) {
    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
        // Unique per process so several gateways on one host never share them.
        pid_file: std::env::temp_dir().join(format!("nxgate-{}.pid", std::process::id())).display().to_string(),
        upgrade_sock: std::env::temp_dir().join(format!("nxgate-upgrade-{}.sock", std::process::id())).display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(&server.configuration, NxGate::new(live), "nxgate");
    for addr in listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.run(RunArgs { shutdown_signal: Box::new(Signals(stop)) });
}
