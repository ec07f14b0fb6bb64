//! The process, beside transport at the bottom: metrics, logging, traces (`telemetry`),
//! and the lifecycle (readiness, in-flight accounting, draining).

pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod telemetry;
