//! Alert sinks: where alerts go. Each sink is one module with one config and one
//! [`AlertSink`] impl; a sink receives finished [`Alert`]s and never sees audit events.

use std::io;

use authwatch_rules::Alert;

pub mod json_lines;
pub mod ledger;

pub use json_lines::JsonLinesSink;

/// A destination for alerts.
pub trait AlertSink {
    /// A short name for logs and summaries (`stdout`, `file:/path`).
    fn name(&self) -> &str;
    /// Hands one alert over. An error means the alert was not delivered.
    fn deliver(&mut self, alert: &Alert) -> io::Result<()>;
    /// Makes everything delivered so far durable or visible.
    fn flush(&mut self) -> io::Result<()>;
}
