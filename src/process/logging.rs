//! Log output: `tracing` events as text or JSON lines on stderr, filtered by `RUST_LOG`.
//!
//! Pingora's own DEBUG and TRACE events print whole request headers, `Authorization`
//! (a client key) included, so events from `pingora*` targets above INFO are dropped
//! whatever `RUST_LOG` asks for. The suite's trace-level secret scan holds this in place.

use clap::ValueEnum;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Target of the one access-log event every request makes.
pub const ACCESS_TARGET: &str = "nxgate::access";

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
        LogFormat::Text => fmt.event_format(TextFormat::default()).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // A second init (tests, demo) keeps the first subscriber; nothing else to do.
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(filter).with_filter(filter_fn(is_safe_to_log).with_max_level_hint(hint)))
        .try_init();
}

/// tracing-subscriber's default text format (`Full`), with the access event written by a
/// direct field visitor. That event is formatted once per request, and the stock path
/// spends about half its cost wrapping every field name and `=` in (empty, when colours
/// are off) ANSI styles. The line is the same byte for byte (pinned by a test); coloured
/// output, events inside spans and every other event take the stock path.
#[derive(Default)]
struct TextFormat {
    full: format::Format<format::Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET || writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.full.format_event(ctx, writer, event);
        }
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        // The stock level column: five characters wide.
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = PlainFields { writer: &mut writer, first: true, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// `name=value` pairs as the stock `DefaultVisitor` writes them without colours: values
/// in `Debug` form (so strings are quoted and escaped), the message bare, separated by
/// one space. The access event's message is a literal, so the stock visitor's escaping of
/// ANSI sequences in messages has nothing to do here.
struct PlainFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for PlainFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                self.writer.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            write!(self.writer, "{value:?}")
        })();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Events shaped like the gateway's: the access event with every kind of field value
    /// (present and absent options, quoting, floats), and ordinary events.
    fn emit() {
        for (tenant, status, upstream) in [("tenant-a", 200u16, Some(200u16)), ("-", 502, None)] {
            tracing::info!(
                target: ACCESS_TARGET,
                tenant,
                request_id = %"0123456789abcdef0123456789abcdef",
                method = %http::Method::POST,
                path = "/callcentre/a \"b\"\\c\u{e9}",
                status,
                upstream_status = upstream,
                duration_ms = 1.25f64,
                upstream_ms = upstream.map(|_| 0.5f64),
                bytes_in = 33usize,
                bytes_out = 0usize,
                verify = "passed",
                verify_failure = None::<&str>,
                error_kind = upstream.map_or(Some("upstream_unreachable"), |_| None),
                pingora_error = None::<&str>,
                "request"
            );
        }
        tracing::warn!(request_id = %"x", kind = "k", "gateway error");
        tracing::info!(target: ACCESS_TARGET, r#type = "raw", "request");
        let span = tracing::info_span!("outer", n = 1);
        let _inside = span.enter();
        tracing::info!(target: ACCESS_TARGET, status = 1, "request");
    }

    /// The lines one subscriber writes, each without its leading timestamp.
    fn lines<F>(text_format: F) -> Vec<String>
    where
        F: FormatEvent<tracing_subscriber::Registry, format::DefaultFields> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let layer =
            tracing_subscriber::fmt::layer().with_writer(out.clone()).with_ansi(false).event_format(text_format);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| l.split_once(' ').expect("timestamp first").1.to_owned()).collect()
    }

    #[test]
    fn text_lines_are_the_stock_format_byte_for_byte() {
        let stock = lines(format::Format::<format::Full, SystemTime>::default());
        let ours = lines(TextFormat::default());
        assert_eq!(stock.len(), 5, "{stock:#?}");
        assert!(
            stock[0].starts_with(" INFO nxgate::access: request tenant=\"tenant-a\" request_id=0123"),
            "{}",
            stock[0]
        );
        assert_eq!(ours, stock);
    }
}
