//! Back-pressure after NXCloud says "busy" (`code`/`retCode` 7, HTTP 429 or 503): the
//! tenant's requests are refused locally, except one probe per period; the period
//! doubles up to a maximum while probes stay busy, and the backoff ends on the first
//! answer that is not busy. Lock-free (three atomics per tenant), with the clock passed
//! in as milliseconds so the rule is tested without waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The configured periods (`upstream.busy_backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First period after a busy answer.
    pub initial: Duration,
    /// Longest period.
    pub max: Duration,
}

/// What to do with one request of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not backing off: send it.
    Send,
    /// Backing off, and this request is the period's one probe: send it.
    Probe,
    /// Backing off: refuse it, and tell the caller to retry after this long.
    Refuse {
        /// Until the next probe may go (at least one second, as `Retry-After` counts).
        retry_after: Duration,
    },
}

/// One tenant's backoff state.
#[derive(Debug, Default)]
pub struct Backoff {
    active: AtomicBool,
    period_ms: AtomicU64,
    next_probe_ms: AtomicU64,
}

impl Backoff {
    /// Whether the tenant is backing off now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Decides one request at unix-millisecond time `now_ms`.
    pub fn admit(&self, now_ms: u64) -> Admit {
        if !self.is_active() {
            return Admit::Send;
        }
        let next = self.next_probe_ms.load(Ordering::Acquire);
        if now_ms >= next {
            let period = self.period_ms.load(Ordering::Acquire);
            // Exactly one request per period wins the probe; the others see the new time.
            if self
                .next_probe_ms
                .compare_exchange(next, now_ms.saturating_add(period), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Admit::Probe;
            }
        }
        let next = self.next_probe_ms.load(Ordering::Acquire);
        let wait_ms = next.saturating_sub(now_ms).max(1000);
        Admit::Refuse { retry_after: Duration::from_millis(wait_ms.div_ceil(1000) * 1000) }
    }

    /// Records an answer at `now_ms`. `busy` starts or prolongs the backoff (a first busy
    /// answer waits `initial`, each busy probe doubles the period up to `max`);
    /// `retry_after` (the upstream's own `Retry-After`) lengthens the wait if it is longer.
    /// Any other answer ends the backoff. Returns whether a backoff started or ended.
    pub fn record(&self, policy: &BackoffPolicy, now_ms: u64, busy: bool, retry_after: Option<Duration>) -> bool {
        let initial = policy.initial.as_millis() as u64;
        let max = (policy.max.as_millis() as u64).max(initial);
        if !busy {
            return self.active.swap(false, Ordering::AcqRel);
        }
        let started = !self.active.load(Ordering::Acquire);
        let period = if started { initial } else { self.period_ms.load(Ordering::Acquire).saturating_mul(2).min(max) };
        self.period_ms.store(period, Ordering::Release);
        let hinted = retry_after.map_or(0, |d| d.as_millis() as u64);
        self.next_probe_ms.store(now_ms.saturating_add(period.max(hinted)), Ordering::Release);
        self.active.store(true, Ordering::Release);
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(4) };

    fn refuse(secs: u64) -> Admit {
        Admit::Refuse { retry_after: Duration::from_secs(secs) }
    }

    #[test]
    fn not_busy_means_send() {
        let b = Backoff::default();
        assert_eq!(b.admit(0), Admit::Send);
        assert!(!b.record(&POLICY, 0, false, None));
        assert_eq!(b.admit(10), Admit::Send);
    }

    #[test]
    fn one_probe_per_period_and_the_period_doubles_to_the_max() {
        let b = Backoff::default();
        assert!(b.record(&POLICY, 0, true, None), "a backoff started");
        assert_eq!(b.admit(1), refuse(1));
        assert_eq!(b.admit(999), refuse(1));
        assert_eq!(b.admit(1000), Admit::Probe);
        assert_eq!(b.admit(1001), refuse(1), "one probe per period");
        // The probe was busy too: 2 s, then 4 s, then 4 s (the max).
        for (at, period) in [(1100u64, 2000u64), (3100, 4000), (7100, 4000)] {
            assert!(!b.record(&POLICY, at, true, None), "still the same backoff");
            assert_eq!(b.admit(at + period - 1), refuse(1));
            assert_eq!(b.admit(at + period), Admit::Probe);
        }
        // A probe that is not busy ends it.
        assert!(b.record(&POLICY, 11_200, false, None), "the backoff ended");
        assert_eq!(b.admit(11_201), Admit::Send);
        // A later busy answer starts over at the initial period.
        b.record(&POLICY, 20_000, true, None);
        assert_eq!(b.admit(21_000), Admit::Probe);
    }

    #[test]
    fn the_upstreams_retry_after_is_honoured_when_longer() {
        let b = Backoff::default();
        b.record(&POLICY, 0, true, Some(Duration::from_secs(10)));
        assert_eq!(b.admit(1000), refuse(9));
        assert_eq!(b.admit(9_500), refuse(1));
        assert_eq!(b.admit(10_000), Admit::Probe);
    }

    #[test]
    fn concurrent_callers_get_exactly_one_probe() {
        let b = std::sync::Arc::new(Backoff::default());
        b.record(&POLICY, 0, true, None);
        let probes: usize = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.admit(5_000) == Admit::Probe).count())
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(probes, 1);
    }
}
