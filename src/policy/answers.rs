//! What NXCloud's answers tell the gateway beyond their bytes: the vendor's business code
//! (counted per tenant; a refused credential raised to the operator, at most once a
//! minute per tenant, in words), and "busy" (the tenant backs off).

use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nxgate_core::backoff::{Admit, Backoff, BackoffPolicy};
use nxgate_core::errors::GatewayError;
use nxgate_core::vendor::{self, CodeClass};

use super::exchange::ExchangeReport;
use crate::process::metrics::TenantMetrics;

/// Least time between two credential alarms for one tenant.
pub const CREDENTIAL_ALARM_EVERY: Duration = Duration::from_secs(60);

/// One tenant's memory of NXCloud's answers: part of its per-tenant record, carried
/// across reloads.
#[derive(Debug, Default)]
pub struct TenantAnswers {
    /// The busy back-off.
    pub backoff: Backoff,
    /// Unix ms of the last credential alarm (0: never).
    last_alarm_ms: AtomicU64,
}

impl TenantAnswers {
    /// Whether a credential alarm may be raised at `now_ms` (and claims it if so).
    fn claim_alarm(&self, now_ms: u64) -> bool {
        let last = self.last_alarm_ms.load(Ordering::Acquire);
        let due = last == 0 || now_ms.saturating_sub(last) >= CREDENTIAL_ALARM_EVERY.as_millis() as u64;
        due && self.last_alarm_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// Step 4b: a tenant NXCloud said is busy is refused here, except the period's one probe.
/// `policy` is `upstream.busy_backoff` (`None`: never back off).
pub fn admit(policy: Option<&BackoffPolicy>, state: &TenantAnswers, now_ms: u64) -> Result<(), GatewayError> {
    if policy.is_none() {
        return Ok(());
    }
    match state.backoff.admit(now_ms) {
        Admit::Send | Admit::Probe => Ok(()),
        Admit::Refuse { retry_after } => Err(GatewayError::UpstreamBusy { retry_after_secs: retry_after.as_secs() }),
    }
}

/// Whether an answer says "busy": HTTP 429 or 503 (a status line cannot be signed), or a
/// verified code 7.
pub fn is_busy(report: &ExchangeReport) -> bool {
    matches!(report.upstream_status, Some(429 | 503)) || (report.code_verified && report.upstream_code == Some(7))
}

/// After an exchange that got an answer: counts its code, raises a credential alarm, and
/// starts, prolongs or ends the tenant's back-off (`backing_off` counts the tenants that
/// back off now).
pub fn observe(
    policy: Option<&BackoffPolicy>,
    state: &TenantAnswers,
    metrics: &TenantMetrics,
    backing_off: &IntGauge,
    report: &ExchangeReport,
    now_ms: u64,
) {
    if report.upstream_status.is_none() {
        return; // no answer: nothing NXCloud said
    }
    let tenant = metrics.name();
    if let Some(code) = report.upstream_code {
        metrics.upstream_code(code);
        if vendor::class(code) == CodeClass::Credential && state.claim_alarm(now_ms) {
            let meaning = vendor::lookup(code).map_or("", |c| c.meaning);
            // Unverified: the answer's own signature did not check out, which is what a
            // wrong secret looks like; the code it claims is still the best clue.
            tracing::error!(
                tenant,
                code,
                verified = report.code_verified,
                "NXCloud refused this tenant's request with code {code}: {meaning} (repeated at most once a minute)"
            );
        }
    }
    let busy = is_busy(report);
    if busy {
        metrics.upstream_busy.inc();
    }
    let Some(policy) = policy else { return };
    let changed = state.backoff.record(policy, now_ms, busy, report.retry_after);
    match (changed, busy) {
        (true, true) => {
            backing_off.inc();
            tracing::warn!(
                tenant,
                status = report.upstream_status,
                code = report.upstream_code,
                "NXCloud is busy; this tenant backs off (one probe per period)"
            );
        }
        (true, false) => {
            backing_off.dec();
            tracing::info!(tenant, "NXCloud answered a probe normally; this tenant's back-off ended");
        }
        _ => {}
    }
}

/// `Retry-After` in seconds (the delta form; an HTTP date is ignored).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_alarm_is_raised_at_most_once_a_minute() {
        let s = TenantAnswers::default();
        assert!(s.claim_alarm(1_000));
        assert!(!s.claim_alarm(1_001));
        assert!(!s.claim_alarm(60_999));
        assert!(s.claim_alarm(61_000));
    }

    #[test]
    fn busy_is_429_503_or_a_verified_7() {
        let r = |status, code, verified| ExchangeReport {
            upstream_status: Some(status),
            upstream_code: code,
            code_verified: verified,
            ..Default::default()
        };
        assert!(is_busy(&r(429, None, false)));
        assert!(is_busy(&r(503, None, false)));
        assert!(is_busy(&r(200, Some(7), true)));
        assert!(!is_busy(&r(200, Some(7), false)), "an unverified 7 could be anyone's");
        assert!(!is_busy(&r(200, Some(0), true)));
        assert!(!is_busy(&r(500, None, false)));
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
