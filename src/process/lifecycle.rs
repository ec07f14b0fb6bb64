//! Process lifecycle: readiness, in-flight accounting, signals, and draining.
//!
//! Pingora's graceful terminate stops accepting and then sleeps for the whole grace
//! period, busy or idle (`docs/pingora.md` §7). nxgate keeps Pingora's stop-accepting step
//! but returns from `run` as soon as the last in-flight request has been written: Pingora
//! runs on a thread of its own and the caller of [`Lifecycle::wait`] (the main thread)
//! wakes when the server stops, or when a drain finds nothing in flight. The in-flight
//! count drops when a request's state is dropped, after its answer is flushed, so ending
//! at zero cuts nothing off. The wake-ups are events (a drain starting, the count reaching
//! zero while draining, the server stopping), never a polling loop. If requests are still
//! running when the grace period ends, Pingora's own shutdown takes over.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::process::metrics::Metrics;

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
    /// Set when the server has stopped; with `events`, wakes [`Lifecycle::wait`].
    stopped: Mutex<bool>,
    /// Signalled on every event `wait` cares about: a drain starting, the in-flight count
    /// reaching zero while draining, the server stopping.
    events: Condvar,
}

/// Counts one request in flight until dropped.
#[must_use = "the request stops counting as in flight when this is dropped"]
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let was = self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if was == 1 && self.0.is_draining() {
            self.0.wake();
        }
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
            stopped: Mutex::new(false),
            events: Condvar::new(),
        })
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, bool> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes `wait`; the lock is taken so a waiter between its check and its wait
    /// cannot miss the event.
    fn wake(&self) {
        let _held = self.stopped();
        self.events.notify_all();
    }

    /// Records that the server has stopped (its `run` returned).
    pub fn server_stopped(&self) {
        *self.stopped() = true;
        self.events.notify_all();
    }

    /// Blocks until the server has stopped, or a drain has found nothing in flight for
    /// `DRAIN_SETTLE` (a request whose header was being parsed at the moment of the signal
    /// is counted by then).
    pub fn wait(&self) {
        let mut stopped = self.stopped();
        let mut drain_started: Option<Instant> = None;
        while !*stopped {
            if !self.is_draining() || self.in_flight() > 0 {
                stopped = self.events.wait(stopped).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let started = *drain_started.get_or_insert_with(Instant::now);
            let (guard, settled) = self.events.wait_timeout(stopped, DRAIN_SETTLE).unwrap_or_else(|p| p.into_inner());
            stopped = guard;
            if settled.timed_out() && self.in_flight() == 0 {
                tracing::info!(after_ms = started.elapsed().as_millis() as u64, "drained; exiting");
                return;
            }
        }
        if self.is_draining() && self.in_flight() > 0 {
            tracing::warn!(in_flight = self.in_flight(), "grace period over with requests in flight");
        }
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

    /// Turns readiness off; [`Lifecycle::wait`] returns once nothing is in flight (or
    /// Pingora's shutdown finishes the job when the grace period runs out).
    pub fn begin_drain(self: &Arc<Self>) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.draining.set(1);
        tracing::info!(in_flight = self.in_flight(), grace_secs = self.grace.as_secs(), "draining");
        self.wake();
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
