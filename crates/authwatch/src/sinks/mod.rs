//! Alert sinks: where alerts go. Each sink is one module with one config and one
//! [`AlertSink`] impl; a sink receives finished [`Alert`]s and never sees audit events.

use std::collections::BTreeMap;
use std::io;

use authwatch_rules::Alert;

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
    /// Alerts waiting inside the sink (a spool).
    fn pending(&self) -> u64 {
        0
    }
    /// Alerts the sink dropped (a full spool).
    fn dropped(&self) -> u64 {
        0
    }
    /// Failed attempts inside the sink (retried).
    fn failed_attempts(&self) -> u64 {
        0
    }
    /// Adds the figures of this sink (and of the sinks it wraps) to `out`, by name.
    fn figures(&self, out: &mut BTreeMap<String, SinkFigures>) {
        let f = out.entry(self.name().to_owned()).or_default();
        f.pending = self.pending();
        f.dropped = self.dropped();
        f.failed = f.failed.max(self.failed_attempts());
    }
}

/// One sink's figures, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkFigures {
    /// Alerts handed over.
    pub delivered: u64,
    /// Deliveries or attempts that failed (each is retried or reported).
    pub failed: u64,
    /// Alerts waiting (a spool).
    pub pending: u64,
    /// Alerts dropped (a full spool).
    pub dropped: u64,
}

/// Several sinks as one: each alert goes to every sink, in order; the first failure stops it.
pub struct Fanout<'a> {
    sinks: Vec<&'a mut dyn AlertSink>,
    counts: Vec<(u64, u64)>,
}

impl<'a> Fanout<'a> {
    /// Wraps `sinks`.
    pub fn new(sinks: Vec<&'a mut dyn AlertSink>) -> Self {
        let counts = vec![(0, 0); sinks.len()];
        Fanout { sinks, counts }
    }
}

impl AlertSink for Fanout<'_> {
    fn name(&self) -> &str {
        "fanout"
    }

    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        for (s, c) in self.sinks.iter_mut().zip(&mut self.counts) {
            match s.deliver(alert) {
                Ok(()) => c.0 += 1,
                Err(e) => {
                    c.1 += 1;
                    return Err(io::Error::new(e.kind(), format!("sink {}: {e}", s.name())));
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }

    fn close(&mut self) -> io::Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.close())
    }

    fn figures(&self, out: &mut BTreeMap<String, SinkFigures>) {
        for (s, (delivered, failed)) in self.sinks.iter().zip(&self.counts) {
            s.figures(out);
            let f = out.entry(s.name().to_owned()).or_default();
            f.delivered = *delivered;
            f.failed += failed;
        }
    }
}
