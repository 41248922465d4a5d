//! The app's log view: a `tracing` layer that keeps the last lines in memory
//! and wakes the UI, which shows them and turns warnings and errors into
//! toasts.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept.
pub(crate) const LOG_LINES: usize = 2_000;

/// One log line as the log panel shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    /// Increases by one per line, for "what is new since".
    pub seq: u64,
    /// When it was logged.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Its level.
    pub level: Level,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields.
    pub text: String,
}

#[derive(Default)]
struct Inner {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

/// The shared buffer; clone freely.
#[derive(Clone, Default)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
    repaint: Arc<OnceLock<egui::Context>>,
}

impl LogBuffer {
    /// Requests a repaint of `ctx` whenever a line arrives.
    pub(crate) fn attach(&self, ctx: &egui::Context) {
        let _ = self.repaint.set(ctx.clone());
    }

    /// Appends a line, dropping the oldest beyond [`LOG_LINES`].
    pub fn push(&self, level: Level, target: &str, text: String) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let seq = g.next_seq;
            g.next_seq += 1;
            g.lines.push_back(LogLine {
                seq,
                time: chrono::Utc::now(),
                level,
                target: target.to_owned(),
                text,
            });
            while g.lines.len() > LOG_LINES {
                g.lines.pop_front();
            }
        }
        if let Some(ctx) = self.repaint.get() {
            ctx.request_repaint();
        }
    }

    /// Lines with `seq >= from`.
    pub(crate) fn since(&self, from: u64) -> Vec<LogLine> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Lines are in seq order: skip straight to the first new one.
        let start = g.lines.partition_point(|l| l.seq < from);
        g.lines.range(start..).cloned().collect()
    }

    /// Calls `f` with every line kept (under the lock: keep `f` short).
    pub(crate) fn with_lines<R>(&self, f: impl FnOnce(&VecDeque<LogLine>) -> R) -> R {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&g.lines)
    }

    /// The layer that feeds this buffer.
    pub fn layer(&self) -> LogLayer {
        LogLayer { buf: self.clone() }
    }
}

/// A `tracing` layer that copies every event into a [`LogBuffer`].
pub struct LogLayer {
    buf: LogBuffer,
}

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut f);
        let meta = event.metadata();
        self.buf.push(
            *meta.level(),
            meta.target(),
            format!("{}{}", f.message, f.rest),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_lines_with_fields_and_sequence() {
        let buf = LogBuffer::default();
        let sub = tracing_subscriber::registry().with(buf.layer());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(rate = 5, "started");
            tracing::warn!("redis down");
        });
        let lines = buf.since(0);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "started rate=5");
        assert_eq!(lines[1].level, Level::WARN);
        assert_eq!(buf.since(1).len(), 1);
    }
}
