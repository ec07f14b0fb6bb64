//! Process lifecycle: readiness, in-flight accounting, signals, and draining.
//!
//! Pingora's graceful terminate stops accepting and then sleeps for the whole grace
//! period, busy or idle (`docs/pingora.md` §7). nxgate keeps Pingora's stop-accepting step
//! but exits as soon as the last in-flight request has been written: the in-flight count
//! drops when a request's context is dropped, which Pingora does after it has flushed the
//! response, so exiting at zero cuts nothing off. If requests are still running when the
//! grace period ends, Pingora's own shutdown takes over.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::process::metrics::Metrics;

/// How often the drain watcher looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the count must stay at zero before exit, so a request whose header was
/// being parsed at the moment of the signal is counted before we decide.
const DRAIN_SETTLE: Duration = Duration::from_millis(100);
/// On SIGQUIT Pingora hands the listening sockets to the new process and keeps
/// accepting for its `CLOSE_TIMEOUT` (5 s) before it stops; draining starts after that,
/// so the old process cannot exit before the handover is done.
const UPGRADE_HANDOVER: Duration = Duration::from_secs(6);

/// Process-wide state shared by the proxy, the admin endpoints and the signal handler.
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    stop: Notify,
    grace: Duration,
    metrics: Arc<Metrics>,
}

/// Counts one request in flight until dropped.
#[must_use = "the request stops counting as in flight when this is dropped"]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lifecycle {
    /// New, not yet ready; `grace` bounds draining.
    pub fn new(grace: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Lifecycle {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            stop: Notify::new(),
            grace,
            metrics,
        })
    }

    /// Marks listeners up and config loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `/readyz` should say 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Whether a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request until the guard drops.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Stops the server at once (tests, demo).
    pub fn stop_now(&self) {
        self.stop.notify_one();
    }

    /// Turns readiness off and exits the process once nothing is in flight (or lets
    /// Pingora's shutdown finish the job when the grace period runs out).
    pub fn begin_drain(self: &Arc<Self>) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.draining.set(1);
        tracing::info!(in_flight = self.in_flight(), grace_secs = self.grace.as_secs(), "draining");
        let me = self.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut idle_since: Option<Instant> = None;
            while started.elapsed() < me.grace {
                if me.in_flight() == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= DRAIN_SETTLE {
                        tracing::info!(after_ms = started.elapsed().as_millis() as u64, "drained; exiting");
                        std::process::exit(0);
                    }
                } else {
                    idle_since = None;
                }
                std::thread::sleep(DRAIN_POLL);
            }
            tracing::warn!(in_flight = me.in_flight(), "grace period over with requests in flight");
        });
    }
}

/// Maps signals to Pingora shutdowns. SIGTERM and SIGINT drain; SIGQUIT hands the
/// listening sockets to a new process (`run --upgrade`) and then drains.
pub struct Signals(pub Arc<Lifecycle>);

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::quit()))
        else {
            tracing::error!("cannot install signal handlers");
            self.0.stop.notified().await;
            return ShutdownSignal::FastShutdown;
        };
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
            _ = self.0.stop.notified() => return ShutdownSignal::FastShutdown,
        };
        tracing::info!(signal, "shutdown requested");
        if signal == "SIGQUIT" {
            let lifecycle = self.0.clone();
            std::thread::spawn(move || {
                std::thread::sleep(UPGRADE_HANDOVER);
                lifecycle.begin_drain();
            });
            ShutdownSignal::GracefulUpgrade
        } else {
            self.0.begin_drain();
            ShutdownSignal::GracefulTerminate
        }
    }
}
