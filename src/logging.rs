//! Log output: `tracing` events as text or JSON lines on stderr, filtered by `RUST_LOG`.
//!
//! Pingora's own DEBUG and TRACE events print whole request headers, `Authorization`
//! (a client key) included, so events from `pingora*` targets above INFO are dropped
//! whatever `RUST_LOG` asks for. The suite's trace-level secret scan holds this in place.

use clap::ValueEnum;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether an event may be written at all (before `RUST_LOG` filtering).
pub fn is_safe_to_log(meta: &Metadata<'_>) -> bool {
    !(meta.target().starts_with("pingora") && *meta.level() > Level::INFO)
}

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Without a hint the safety filter would leave the global maximum at TRACE, and every
    // `log` record Pingora makes (13 per request) would be built only to be dropped.
    let hint = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let output = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // A second init (tests, demo) keeps the first subscriber; nothing else to do.
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(filter).with_filter(filter_fn(is_safe_to_log).with_max_level_hint(hint)))
        .try_init();
}
