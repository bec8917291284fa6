//! The path shared by every way of running: records → decode → engine → sinks, with the
//! counters a summary reports.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use authwatch_event::event::check_structure;
use authwatch_event::framing::FramingError;
use authwatch_event::{cluster_from_log_group, visit_events, Micros, RawRecord};
use authwatch_rules::{Alert, Engine, EngineStats, Matcher, Prefilter, Prepared};
use serde::Serialize;

use crate::input::Location;
use crate::sinks::cloudwatch_metrics::{DeniedFact, MetricsPublisher, MetricsTally};
use crate::sinks::AlertSink;

/// How many parse-error samples a summary keeps.
pub const MAX_ERROR_SAMPLES: usize = 10;

/// How far beyond the wall clock an event's time may be before the pipeline drops it
/// (15 minutes): API servers' clocks are NTP-synced, so more than that is a forged or broken
/// timestamp, and letting it through would move the engine's event clock into the future
/// and close every window on the real events that follow.
pub const DEFAULT_MAX_FUTURE_SKEW: Micros = 15 * 60 * 1_000_000;

/// A wall clock in microseconds since the epoch (the pipeline's only use of real time).
pub type WallClock = fn() -> Micros;

/// The system's wall clock.
pub fn system_now() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Drops events dated more than `skew` beyond the wall clock. The engine stays pure (it
/// never reads a clock); this is the one place "now" comes in. The clock is read only when
/// an event is beyond the last limit computed, so the common case costs one comparison, and
/// a replay of old exports is never affected.
#[derive(Debug, Clone, Copy)]
struct FutureGuard {
    skew: Micros,
    clock: WallClock,
    limit: Micros,
}

impl FutureGuard {
    fn admits(&mut self, t: Micros) -> bool {
        if t <= self.limit {
            return true;
        }
        self.limit = (self.clock)().saturating_add(self.skew);
        t <= self.limit
    }
}

/// One bad record, as the summary shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorSample {
    /// `file:line` or `file (record n)`.
    pub location: String,
    /// Short reason (`invalid_json`, `not_an_event`, `no_timestamp`...).
    pub reason: &'static str,
    /// What the decoder said.
    pub detail: String,
}

/// Record-level counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Records read (lines, CloudWatch events).
    pub records: u64,
    /// Audit events read: decoded (an EventList counts each item), or checked and passed
    /// over by the prefilter.
    pub events_parsed: u64,
    /// Of those, records the prefilter ruled out: structure-checked, not decoded.
    pub prefiltered: u64,
    /// Records or events that could not be used.
    pub parse_errors: u64,
    /// The same, by reason.
    pub parse_errors_by_reason: BTreeMap<&'static str, u64>,
    /// The first few, with where they are.
    pub parse_error_samples: Vec<ErrorSample>,
    /// Alerts handed to the sinks.
    pub alerts: u64,
    /// Events dated more than the allowed skew beyond the wall clock, dropped before the
    /// engine (see [`DEFAULT_MAX_FUTURE_SKEW`]); also in `events_parsed`.
    pub future_events: u64,
}

impl Counters {
    fn parse_error(&mut self, reason: &'static str, detail: String, location: String) {
        self.parse_errors += 1;
        *self.parse_errors_by_reason.entry(reason).or_default() += 1;
        if self.parse_error_samples.len() < MAX_ERROR_SAMPLES {
            let mut detail = detail;
            truncate_chars(&mut detail, 200);
            self.parse_error_samples.push(ErrorSample {
                location,
                reason,
                detail,
            });
        }
    }
}

/// What the stateless stage ([`Worker`]) makes of one record; [`Pipeline::accept`] takes
/// these in input order.
#[derive(Debug)]
pub enum Outcome {
    /// A record was read (framing errors are not records).
    Record,
    /// A decoded event, matched against the rules.
    Event(Prepared),
    /// An event the prefilter ruled out (structure-checked, not decoded).
    Prefiltered,
    /// What the metrics need of a decoded event (only when metrics are on; it follows the
    /// event's own outcome).
    Fact(EventFact),
    /// A record or event that could not be used.
    Error {
        /// Short reason.
        reason: &'static str,
        /// What the decoder said.
        detail: String,
        /// Where it is.
        location: String,
    },
}

/// The facts about one event that metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFact {
    /// The cluster, from the log group.
    pub cluster: Option<Arc<str>>,
    /// The response code when it is 401 or 403, with the API server.
    pub denied: Option<(u16, Option<String>)>,
}

/// The stateless stage: prefilter, decode, match. Cloned once per thread; the order of its
/// outcomes is restored before they reach the engine.
#[derive(Debug, Clone)]
pub struct Worker {
    prefilter: Option<Prefilter>,
    matcher: Matcher,
    /// Emit an [`Outcome::Fact`] per event (metrics are on).
    facts: bool,
    /// The last log group seen and its cluster, so a fact does not allocate per event.
    cluster_cache: Option<(String, Option<Arc<str>>)>,
}

impl Worker {
    /// Turns one record (or the framing error in its place) into outcomes.
    pub fn process(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: &Location<'_>,
        out: &mut Vec<Outcome>,
    ) {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                return out.push(Outcome::Error {
                    reason: e.reason(),
                    detail: e.to_string(),
                    location: loc.to_string(),
                })
            }
        };
        out.push(Outcome::Record);
        if let Some(p) = &self.prefilter {
            if !p.may_match(record.message) {
                out.push(match check_structure(record.message) {
                    Ok(()) => Outcome::Prefiltered,
                    Err(e) => Outcome::Error {
                        reason: e.reason(),
                        detail: e.to_string(),
                        location: loc.to_string(),
                    },
                });
                return;
            }
        }
        let matcher = &mut self.matcher;
        let facts = self.facts;
        let cluster = if facts {
            cached_cluster(&mut self.cluster_cache, record.log_group)
        } else {
            None
        };
        visit_events(&record, &mut |ev| {
            let mut fact = None;
            out.push(match ev {
                Ok(view) if view.time.is_none() => Outcome::Error {
                    reason: "no_timestamp",
                    detail: "event has no usable time".into(),
                    location: loc.to_string(),
                },
                Ok(view) if facts => {
                    let denied = match view.event.code() {
                        Some(c @ (401 | 403)) => Some((c as u16, view.host.map(str::to_owned))),
                        _ => None,
                    };
                    fact = Some(Outcome::Fact(EventFact {
                        cluster: cluster.clone(),
                        denied,
                    }));
                    Outcome::Event(matcher.prepare(&view))
                }
                Ok(view) => Outcome::Event(matcher.prepare(&view)),
                Err(e) => Outcome::Error {
                    reason: e.reason(),
                    detail: e.to_string(),
                    location: loc.to_string(),
                },
            });
            out.extend(fact);
        });
    }
}

fn cached_cluster(
    cache: &mut Option<(String, Option<Arc<str>>)>,
    log_group: Option<&str>,
) -> Option<Arc<str>> {
    let group = log_group?;
    match cache {
        Some((g, c)) if g == group => c.clone(),
        _ => {
            let c: Option<Arc<str>> = cluster_from_log_group(group).map(Arc::from);
            *cache = Some((group.to_owned(), c.clone()));
            c
        }
    }
}

fn truncate_chars(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push('…');
    }
}

/// Decodes records, feeds the engine, and delivers the alerts.
pub struct Pipeline<'s> {
    engine: Engine,
    worker: Worker,
    outcomes: Vec<Outcome>,
    sinks: Vec<&'s mut dyn AlertSink>,
    alerts: Vec<Alert>,
    counters: Counters,
    metrics: Option<Metrics>,
    future: Option<FutureGuard>,
    alerts_by_rule_severity: BTreeMap<(String, String), u64>,
}

/// Metrics being counted, and where they go.
struct Metrics {
    tally: MetricsTally,
    publisher: MetricsPublisher,
    default_cluster: String,
}

impl<'s> Pipeline<'s> {
    /// A pipeline delivering to `sinks`. With `prefilter`, records that no rule can match
    /// (by the literal bytes the rules need) are only structure-checked, not decoded.
    pub fn new(engine: Engine, sinks: Vec<&'s mut dyn AlertSink>, prefilter: bool) -> Self {
        let prefilter = prefilter
            .then(|| Prefilter::new(engine.rules()))
            .filter(|p| !p.passes_everything());
        Pipeline {
            worker: Worker {
                prefilter,
                matcher: engine.matcher(),
                facts: false,
                cluster_cache: None,
            },
            outcomes: Vec::new(),
            engine,
            sinks,
            alerts: Vec::new(),
            counters: Counters::default(),
            metrics: None,
            future: Some(FutureGuard {
                skew: DEFAULT_MAX_FUTURE_SKEW,
                clock: system_now,
                limit: Micros::MIN,
            }),
            alerts_by_rule_severity: BTreeMap::new(),
        }
    }

    /// Drops (and counts in `future_events`) events dated more than `skew` beyond `clock`;
    /// `None` lets every event through. The default is [`DEFAULT_MAX_FUTURE_SKEW`] against
    /// [`system_now`].
    pub fn with_max_future_skew(mut self, skew: Option<Micros>, clock: WallClock) -> Self {
        self.future = skew.map(|skew| FutureGuard {
            skew,
            clock,
            limit: Micros::MIN,
        });
        self
    }

    /// Counts metrics and hands them to `publisher` every interval. Metrics count every
    /// 401/403, whatever the rules, so every record is decoded: this turns the prefilter
    /// off. Call before [`Pipeline::worker`]. Counts whose log group names no cluster go to
    /// `default_cluster`.
    pub fn with_metrics(mut self, mut publisher: MetricsPublisher, default_cluster: &str) -> Self {
        self.worker.prefilter = None;
        self.worker.facts = true;
        publisher.add_cluster(default_cluster);
        self.metrics = Some(Metrics {
            tally: MetricsTally::default(),
            publisher,
            default_cluster: default_cluster.to_owned(),
        });
        self
    }

    /// Takes one record (or the framing error in its place). Errors are sink failures.
    pub fn on_record(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: Location<'_>,
    ) -> io::Result<()> {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        self.worker.process(record, &loc, &mut outcomes);
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
            match o {
                Outcome::Record => self.counters.records += 1,
                Outcome::Prefiltered => {
                    self.counters.events_parsed += 1;
                    self.counters.prefiltered += 1;
                }
                Outcome::Event(p) => {
                    self.counters.events_parsed += 1;
                    if let (Some(g), Some(t)) = (&mut self.future, p.time()) {
                        if !g.admits(t) {
                            self.counters.future_events += 1;
                            continue;
                        }
                    }
                    if let Some(m) = &mut self.metrics {
                        m.tally.newest_event = m.tally.newest_event.max(p.time());
                    }
                    self.engine.accept(p, &mut self.alerts);
                }
                Outcome::Fact(f) => {
                    if let Some(m) = &mut self.metrics {
                        let cluster = f.cluster.as_deref().unwrap_or(&m.default_cluster);
                        match m.tally.events.get_mut(cluster) {
                            Some(n) => *n += 1,
                            None => {
                                m.tally.events.insert(cluster.to_owned(), 1);
                            }
                        }
                        if let Some((code, host)) = f.denied {
                            m.tally.denied(
                                DeniedFact {
                                    code,
                                    host,
                                    cluster: f.cluster.as_deref().map(str::to_owned),
                                },
                                &m.default_cluster,
                            );
                        }
                    }
                }
                Outcome::Error {
                    reason,
                    detail,
                    location,
                } => {
                    if let Some(m) = &mut self.metrics {
                        m.tally.parse_errors += 1;
                    }
                    self.counters.parse_error(reason, detail, location)
                }
            }
        }
        self.deliver()?;
        self.publish_if_due()
    }

    /// Hands the metrics to the publisher when an interval has passed.
    pub fn publish_if_due(&mut self) -> io::Result<()> {
        if let Some(m) = &mut self.metrics {
            if m.publisher.due() {
                m.publisher.publish(std::mem::take(&mut m.tally))?;
            }
        }
        Ok(())
    }

    /// A live source has read everything up to `t` (see [`Engine::advance_watermark`]):
    /// releases held matches up to there and delivers their alerts.
    pub fn advance_to(&mut self, t: authwatch_event::Micros) -> io::Result<()> {
        self.engine.advance_watermark(t, &mut self.alerts);
        self.deliver()?;
        self.publish_if_due()
    }

    /// End of input: releases what the reorder buffer holds and flushes the sinks.
    pub fn finish(&mut self) -> io::Result<()> {
        self.engine.finish(&mut self.alerts);
        self.deliver()?;
        for s in &mut self.sinks {
            s.flush()?;
        }
        if let Some(m) = &mut self.metrics {
            m.publisher.close(std::mem::take(&mut m.tally))?;
        }
        Ok(())
    }

    fn deliver(&mut self) -> io::Result<()> {
        for alert in self.alerts.drain(..) {
            if let Some(m) = &mut self.metrics {
                m.tally.alert(
                    alert.cluster.as_deref(),
                    &alert.rule,
                    alert.severity.as_str(),
                    &m.default_cluster,
                );
            }
            for s in &mut self.sinks {
                s.deliver(&alert)
                    .map_err(|e| io::Error::new(e.kind(), format!("sink {}: {e}", s.name())))?;
            }
            self.counters.alerts += 1;
            *self
                .alerts_by_rule_severity
                .entry((alert.rule.clone(), alert.severity.as_str().to_owned()))
                .or_default() += 1;
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
        if let Some(m) = &mut self.metrics {
            m.publisher.close(std::mem::take(&mut m.tally))?;
        }
        Ok(())
    }

    /// Record-level counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Alerts delivered, by (rule, severity).
    pub fn alerts_by_rule_severity(&self) -> &BTreeMap<(String, String), u64> {
        &self.alerts_by_rule_severity
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

#[cfg(test)]
mod tests {
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
