//! What every source's events are counted by, once: the record and parse-error counters, the
//! future-skew guard, the metrics tally, and the alerts delivered by rule and severity. The
//! file replay, the CloudWatch Logs poller and both Kinesis stages all count through an
//! [`Accounting`], so a figure means the same thing whichever way authwatch runs.

use std::collections::BTreeMap;
use std::io;

use authwatch_event::Micros;
use authwatch_rules::{Alert, Prepared};
use serde::Serialize;

use super::Outcome;
use crate::telemetry::cloudwatch_metrics::{DeniedFact, MetricsPublisher, MetricsTally};

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
pub(super) struct FutureGuard {
    pub(super) skew: Micros,
    pub(super) clock: WallClock,
    pub(super) limit: Micros,
}

impl FutureGuard {
    pub(super) fn admits(&mut self, t: Micros) -> bool {
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

fn truncate_chars(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push('…');
    }
}

/// Metrics being counted, and where they go.
struct Metrics {
    tally: MetricsTally,
    publisher: MetricsPublisher,
    default_cluster: String,
}

/// Counts what [`Worker`](super::Worker) outcomes and delivered alerts say, and decides which
/// events go on to an engine (the future-skew guard). One per run: a Kinesis replica running
/// both stages counts its decoding (stage 1) and its deliveries (stage 2) in the same one.
pub struct Accounting {
    counters: Counters,
    future: Option<FutureGuard>,
    metrics: Option<Metrics>,
    alerts_by_rule_severity: BTreeMap<(String, String), u64>,
}

impl Default for Accounting {
    fn default() -> Self {
        Accounting::new()
    }
}

impl Accounting {
    /// Counters at zero, the default future-skew guard ([`DEFAULT_MAX_FUTURE_SKEW`] against
    /// [`system_now`]), no metrics.
    pub fn new() -> Self {
        Accounting {
            counters: Counters::default(),
            future: Some(FutureGuard {
                skew: DEFAULT_MAX_FUTURE_SKEW,
                clock: system_now,
                limit: Micros::MIN,
            }),
            metrics: None,
            alerts_by_rule_severity: BTreeMap::new(),
        }
    }

    /// Drops (and counts in `future_events`) events dated more than `skew` beyond `clock`;
    /// `None` lets every event through.
    pub fn set_max_future_skew(&mut self, skew: Option<Micros>, clock: WallClock) {
        self.future = skew.map(|skew| FutureGuard {
            skew,
            clock,
            limit: Micros::MIN,
        });
    }

    /// Counts metrics and hands them to `publisher` every interval. The workers must then
    /// emit facts and decode every record ([`Worker::count_every_event`](super::Worker::count_every_event)):
    /// metrics count every 401/403, whatever the rules. Counts whose log group names no
    /// cluster go to `default_cluster`.
    pub fn set_metrics(&mut self, mut publisher: MetricsPublisher, default_cluster: &str) {
        publisher.add_cluster(default_cluster);
        self.metrics = Some(Metrics {
            tally: MetricsTally::default(),
            publisher,
            default_cluster: default_cluster.to_owned(),
        });
    }

    /// Whether metrics are counted.
    pub fn has_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// Whether a prefiltered record's time ([`Outcome::Time`]) may move an engine's clock:
    /// not beyond the allowed skew (not counted: the record was counted as prefiltered).
    pub fn admits_time(&mut self, t: Micros) -> bool {
        self.future.as_mut().is_none_or(|g| g.admits(t))
    }

    /// Counts one outcome, in input order; returns the event when it goes on to an engine.
    /// ([`Outcome::Time`] is for [`Accounting::admits_time`]; here it is passed over.)
    pub fn admit(&mut self, outcome: Outcome) -> Option<Prepared> {
        match outcome {
            Outcome::Time(_) => {}
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
                        return None;
                    }
                }
                if let Some(m) = &mut self.metrics {
                    m.tally.newest_event = m.tally.newest_event.max(p.time());
                }
                return Some(p);
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
        None
    }

    /// Counts an alert the sinks have taken (in the metrics too).
    pub fn delivered(&mut self, alert: &Alert) {
        if let Some(m) = &mut self.metrics {
            m.tally.alert(
                alert.cluster.as_deref(),
                &alert.rule,
                alert.severity.as_str(),
                &m.default_cluster,
            );
        }
        self.counters.alerts += 1;
        *self
            .alerts_by_rule_severity
            .entry((alert.rule.clone(), alert.severity.as_str().to_owned()))
            .or_default() += 1;
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

    /// Sends the metrics counted so far and waits for the publisher (the end of a run).
    pub fn close_metrics(&mut self) -> io::Result<()> {
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
}
