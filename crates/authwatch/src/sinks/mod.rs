//! Alert sinks: where alerts go. Each sink is one module with one config and one
//! [`AlertSink`] impl; a sink receives finished [`Alert`]s and never sees audit events.

use std::io;

use authwatch_rules::Alert;

pub mod cloudwatch_metrics;
pub mod json_lines;
pub mod ledger;
pub mod notification;
pub mod sns;
pub mod spool;

pub use json_lines::JsonLinesSink;

/// A destination for alerts.
pub trait AlertSink {
    /// A short name for logs and summaries (`stdout`, `file:/path`).
    fn name(&self) -> &str;
    /// Hands one alert over. An error means the alert was not delivered.
    fn deliver(&mut self, alert: &Alert) -> io::Result<()>;
    /// Makes everything delivered so far durable or visible.
    fn flush(&mut self) -> io::Result<()>;
    /// The run is over: finish what is in flight (a sink with a queue waits a bounded time
    /// for it to drain). An error says what was not finished.
    fn close(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Several sinks as one: each alert goes to every sink, in order; the first failure stops it.
pub struct Fanout<'a>(pub Vec<&'a mut dyn AlertSink>);

impl AlertSink for Fanout<'_> {
    fn name(&self) -> &str {
        "fanout"
    }

    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        for s in &mut self.0 {
            s.deliver(alert)
                .map_err(|e| io::Error::new(e.kind(), format!("sink {}: {e}", s.name())))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }

    fn close(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.close())
    }
}
