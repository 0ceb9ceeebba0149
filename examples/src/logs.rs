//! The server's own log records, for `GET /api/v1/logs` (Vamp's log stream: Server-Sent
//! Events of type `log`, each `{"timestamp", "level", "logger", "message"}`).
//!
//! [`install`] sets the process's `tracing` subscriber: the usual output, and a [`LogFeed`]
//! that hands every record to the open streams. A stream that falls behind loses the records
//! it could not take (a bounded channel; it is told how many), so a slow client never holds
//! memory. Records are built only while a stream is open, and a message is cut at
//! [`MAX_MESSAGE`] bytes. The records are what the server logs, which never carries a
//! credential.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The most bytes of a record's message (and its fields) a stream carries.
pub const MAX_MESSAGE: usize = 4096;

/// Records a stream may fall behind by before it loses them.
const CAPACITY: usize = 1024;

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogRecord {
    /// When, RFC 3339 in UTC.
    pub timestamp: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// Where it comes from (the `tracing` target, e.g. `vamp_core::ops::controller`).
    pub logger: String,
    /// The message and its fields (`key=value`).
    pub message: String,
}

impl LogRecord {
    /// As the stream sends it: `{"timestamp", "level", "logger", "message"}`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "timestamp": self.timestamp,
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
        })
    }

    /// The record that stands for `n` records a stream could not take.
    #[must_use]
    pub fn skipped(n: u64) -> Self {
        Self {
            timestamp: vamp_core::time::now_iso(),
            level: "WARN".into(),
            logger: "vamp".into(),
            message: format!("{n} log records skipped: this stream fell behind"),
        }
    }
}

/// The records, to whoever listens.
#[derive(Debug)]
pub struct LogFeed {
    tx: broadcast::Sender<Arc<LogRecord>>,
}

impl LogFeed {
    /// A feed nobody listens to yet.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(CAPACITY).0,
        })
    }

    /// The records from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.tx.subscribe()
    }

    /// The `tracing` layer that feeds it.
    #[must_use]
    pub fn layer(self: &Arc<Self>) -> LogLayer {
        LogLayer(Arc::clone(self))
    }
}

/// A `tracing` layer handing records to a [`LogFeed`].
#[derive(Debug)]
pub struct LogLayer(Arc<LogFeed>);

/// The message and fields of an event, cut at [`MAX_MESSAGE`].
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() >= MAX_MESSAGE {
            return;
        }
        if field.name() == "message" {
            let _ = write!(
                self.0,
                "{}{value:?}",
                if self.0.is_empty() { "" } else { " " }
            );
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if self.0.tx.receiver_count() == 0 {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.0;
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let meta = event.metadata();
        let _ = self.0.tx.send(Arc::new(LogRecord {
            timestamp: vamp_core::time::now_iso(),
            level: meta.level().to_string(),
            logger: meta.target().to_owned(),
            message,
        }));
    }
}

static FEED: OnceLock<Arc<LogFeed>> = OnceLock::new();

/// The feed [`install`] set up, if it did.
pub fn feed() -> Option<Arc<LogFeed>> {
    FEED.get().map(Arc::clone)
}

/// Sets the process's subscriber (unless one is set already): `tracing`'s usual output
/// (`fmt`; colours only on a terminal) and the feed of `GET /api/v1/logs`. Returns the feed.
pub fn install() -> Arc<LogFeed> {
    let feed = Arc::clone(FEED.get_or_init(LogFeed::new));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .with(
            feed.layer()
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        )
        .try_init();
    feed
}

/// A level filter of `GET /logs?level=…` (the least severe level shown; `INFO` by default).
///
/// # Errors
/// A level that is not one of `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE` (any case).
pub fn level(name: Option<&str>) -> Result<Level, String> {
    match name {
        None => Ok(Level::INFO),
        Some(n) => n.trim().parse::<Level>().map_err(|_| {
            format!("unknown log level '{n}' (one of ERROR, WARN, INFO, DEBUG, TRACE)")
        }),
    }
}

/// Whether a record passes the filters: at least as severe as `least`, from a logger whose
/// name starts with `logger` (if given).
#[must_use]
pub fn shown(record: &LogRecord, least: Level, logger: Option<&str>) -> bool {
    let severe_enough = record.level.parse::<Level>().is_ok_and(|l| l <= least);
    severe_enough && logger.is_none_or(|p| record.logger.starts_with(p))
}
