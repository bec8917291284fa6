//! The path shared by every way of running: records → [`Worker`] (prefilter, decode, match)
//! → [`Accounting`] (counts, future-skew guard, metrics) → engine → sinks. Files, the
//! CloudWatch Logs poller and log-group back-tests run a [`Pipeline`]; the Kinesis stages,
//! whose engine sits on the far side of the match stream, use its [`Worker`] and
//! [`Accounting`] directly.

mod accounting;
mod worker;

use std::collections::BTreeMap;
use std::io;

use authwatch_event::framing::FramingError;
use authwatch_event::{Micros, RawRecord};
use authwatch_rules::{Alert, Engine, EngineStats};

pub use accounting::{
    system_now, Accounting, Counters, ErrorSample, WallClock, DEFAULT_MAX_FUTURE_SKEW,
    MAX_ERROR_SAMPLES,
};
pub use worker::{EventFact, Outcome, Seen, Worker};

use crate::sinks::AlertSink;
use crate::sources::files::Location;
use crate::telemetry::cloudwatch_metrics::MetricsPublisher;

/// Decodes records, feeds the engine, and delivers the alerts.
pub struct Pipeline<'s> {
    engine: Engine,
    worker: Worker,
    outcomes: Vec<Outcome>,
    sinks: Vec<&'s mut dyn AlertSink>,
    alerts: Vec<Alert>,
    accounting: Accounting,
}

impl<'s> Pipeline<'s> {
    /// A pipeline delivering to `sinks`. With `prefilter`, records that no rule can match
    /// (by the literal bytes the rules need) are only structure-checked, not decoded.
    pub fn new(engine: Engine, sinks: Vec<&'s mut dyn AlertSink>, prefilter: bool) -> Self {
        Pipeline {
            worker: Worker::new(&engine, prefilter),
            outcomes: Vec::new(),
            engine,
            sinks,
            alerts: Vec::new(),
            accounting: Accounting::new(),
        }
    }

    /// Drops (and counts in `future_events`) events dated more than `skew` beyond `clock`;
    /// `None` lets every event through. The default is [`DEFAULT_MAX_FUTURE_SKEW`] against
    /// [`system_now`].
    pub fn with_max_future_skew(mut self, skew: Option<Micros>, clock: WallClock) -> Self {
        self.accounting.set_max_future_skew(skew, clock);
        self
    }

    /// Counts metrics and hands them to `publisher` every interval. Metrics count every
    /// 401/403, whatever the rules, so every record is decoded: this turns the prefilter
    /// off. Call before [`Pipeline::worker`]. Counts whose log group names no cluster go to
    /// `default_cluster`.
    pub fn with_metrics(mut self, publisher: MetricsPublisher, default_cluster: &str) -> Self {
        self.worker.count_every_event();
        self.accounting.set_metrics(publisher, default_cluster);
        self
    }

    /// Takes one record (or the framing error in its place). Errors are sink failures.
    pub fn on_record(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: Location<'_>,
    ) -> io::Result<()> {
        self.on_record_seeing(record, loc, &mut |_, _| {})
    }

    /// [`Pipeline::on_record`], showing `see` what [`Worker::process_seeing`] does.
    pub fn on_record_seeing(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: Location<'_>,
        see: &mut dyn FnMut(&RawRecord<'_>, Seen<'_, '_>),
    ) -> io::Result<()> {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        self.worker.process_seeing(record, &loc, &mut outcomes, see);
        let result = self.accept(outcomes.drain(..));
        self.outcomes = outcomes;
        result
    }

    /// A copy of the stateless stage, for another thread.
    pub fn worker(&self) -> Worker {
        self.worker.clone()
    }

    /// Takes outcomes of [`Worker::process`], in input order. Errors are sink failures.
    pub fn accept(&mut self, outcomes: impl IntoIterator<Item = Outcome>) -> io::Result<()> {
        for o in outcomes {
            if let Outcome::Time(t) = o {
                if self.accounting.admits_time(t) {
                    self.engine.advance_clock(t, &mut self.alerts);
                }
                continue;
            }
            if let Some(p) = self.accounting.admit(o) {
                self.engine.accept(p, &mut self.alerts);
            }
        }
        self.deliver()?;
        self.accounting.publish_if_due()
    }

    /// Hands the metrics to the publisher when an interval has passed.
    pub fn publish_if_due(&mut self) -> io::Result<()> {
        self.accounting.publish_if_due()
    }

    /// A live source has read everything up to `t` (see [`Engine::advance_watermark`]):
    /// releases held matches up to there and delivers their alerts.
    pub fn advance_to(&mut self, t: Micros) -> io::Result<()> {
        self.engine.advance_watermark(t, &mut self.alerts);
        self.deliver()?;
        self.accounting.publish_if_due()
    }

    /// End of input: releases what the reorder buffer holds and flushes the sinks.
    pub fn finish(&mut self) -> io::Result<()> {
        self.engine.finish(&mut self.alerts);
        self.deliver()?;
        for s in &mut self.sinks {
            s.flush()?;
        }
        self.accounting.close_metrics()
    }

    fn deliver(&mut self) -> io::Result<()> {
        for alert in self.alerts.drain(..) {
            deliver(&mut self.sinks, &alert)?;
            self.accounting.delivered(&alert);
        }
        Ok(())
    }

    /// The sinks' figures (deliveries, failures, spools), by sink name.
    pub fn sink_figures(&self) -> BTreeMap<String, crate::sinks::SinkFigures> {
        let mut out = BTreeMap::new();
        for s in &self.sinks {
            s.figures(&mut out);
        }
        out
    }

    /// Flushes the sinks and sends the metrics counted so far, without releasing what the
    /// reorder buffer holds (a restart re-reads those events): the end of a live run.
    pub fn stop(&mut self) -> io::Result<()> {
        for s in &mut self.sinks {
            s.flush()?;
        }
        self.accounting.close_metrics()
    }

    /// Record-level counters.
    pub fn counters(&self) -> &Counters {
        self.accounting.counters()
    }

    /// Alerts delivered, by (rule, severity).
    pub fn alerts_by_rule_severity(&self) -> &BTreeMap<(String, String), u64> {
        self.accounting.alerts_by_rule_severity()
    }

    /// Keys the engine holds.
    pub fn active_keys(&self) -> usize {
        self.engine.active_keys()
    }

    /// The engine's counters.
    pub fn engine_stats(&self) -> &EngineStats {
        self.engine.stats()
    }
}

/// Hands one alert to every sink, in order; a failure names the sink.
fn deliver(sinks: &mut [&mut dyn AlertSink], alert: &Alert) -> io::Result<()> {
    for s in sinks.iter_mut() {
        s.deliver(alert)
            .map_err(|e| io::Error::new(e.kind(), format!("sink {}: {e}", s.name())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::accounting::FutureGuard;
    use super::*;
    use authwatch_rules::{load_rules, EngineConfig};

    /// 2026-11-20T10:00:00Z, the fixed "now" of these tests.
    const NOW: Micros = 1_795_168_800_000_000;

    fn fixed_now() -> Micros {
        NOW
    }

    struct Keep(Vec<Alert>);
    impl AlertSink for Keep {
        fn name(&self) -> &str {
            "keep"
        }
        fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
            self.0.push(alert.clone());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(id: &str, ts: &str) -> String {
        format!(
            r#"{{"auditID":"{id}","sourceIPs":["198.51.100.7"],"responseStatus":{{"code":403}},"requestReceivedTimestamp":"{ts}"}}"#
        )
    }

    fn feed(skew: Option<Micros>, lines: &[String]) -> (Counters, Vec<Alert>) {
        let rules = load_rules(
            "r.yaml",
            "id: r\nmatch: {responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 5m\nthreshold: 3\n",
        )
        .unwrap();
        let mut keep = Keep(Vec::new());
        let counters = {
            let mut p = Pipeline::new(
                Engine::new(rules, EngineConfig::default()),
                vec![&mut keep],
                true,
            )
            .with_max_future_skew(skew, fixed_now);
            for (i, l) in lines.iter().enumerate() {
                let record = RawRecord {
                    message: l.as_bytes(),
                    ..Default::default()
                };
                let loc = Location {
                    name: "t",
                    index: i as u64 + 1,
                    is_line: true,
                };
                p.on_record(Ok(record), loc).unwrap();
            }
            p.finish().unwrap();
            p.counters().clone()
        };
        (counters, keep.0)
    }

    /// Two events dated `futures` (more than the 2-minute lateness bound apart), then three
    /// real denials from 09:50. Two, because the newest event only moves the watermark; the
    /// one before it is then released, counted, and moves the engine's clock.
    fn attack_after(futures: [&str; 2]) -> Vec<String> {
        let mut lines = vec![line("f1", futures[0]), line("f2", futures[1])];
        for (i, s) in ["00", "10", "20"].iter().enumerate() {
            lines.push(line(&format!("a{i}"), &format!("2026-11-20T09:50:{s}Z")));
        }
        lines
    }

    #[test]
    fn an_event_beyond_now_plus_skew_is_dropped_and_counted() {
        // 16 minutes ahead of "now": dropped; the attack after it fires.
        let (c, alerts) = feed(
            Some(DEFAULT_MAX_FUTURE_SKEW),
            &attack_after(["2026-11-20T10:16:00Z", "2026-11-20T10:19:00Z"]),
        );
        assert_eq!(c.future_events, 2);
        assert_eq!(c.events_parsed, 5);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].count, 3);
    }

    #[test]
    fn an_event_within_the_skew_is_kept() {
        // 14 minutes ahead: kept (clocks drift a little). It moves the watermark, so the
        // attack 24 minutes before it arrives late and, its windows closed, is not counted:
        // what an unbounded future time would do to every later event.
        let (c, alerts) = feed(
            Some(DEFAULT_MAX_FUTURE_SKEW),
            &attack_after(["2026-11-20T10:11:00Z", "2026-11-20T10:14:00Z"]),
        );
        assert_eq!(c.future_events, 0);
        assert!(alerts.is_empty(), "{alerts:?}");
    }

    #[test]
    fn without_the_guard_a_far_future_event_blinds_the_engine() {
        let far = ["9999-01-01T00:00:00Z", "9999-12-31T23:59:59Z"];
        let (c, alerts) = feed(None, &attack_after(far));
        assert_eq!(c.future_events, 0);
        assert!(alerts.is_empty(), "{alerts:?}");
        let (c, alerts) = feed(Some(DEFAULT_MAX_FUTURE_SKEW), &attack_after(far));
        assert_eq!(c.future_events, 2);
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn the_guard_reads_the_clock_again_when_an_event_is_beyond_its_limit() {
        let mut g = FutureGuard {
            skew: 10,
            clock: fixed_now,
            limit: Micros::MIN,
        };
        assert!(g.admits(NOW));
        assert_eq!(g.limit, NOW + 10);
        assert!(g.admits(NOW + 10));
        assert!(!g.admits(NOW + 11));
        assert!(g.admits(Micros::MIN));
    }
}
