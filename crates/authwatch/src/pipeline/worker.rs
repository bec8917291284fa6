//! The stateless stage every source's records go through: prefilter, structure check,
//! decode, match. Cloned once per thread; an [`Accounting`](super::Accounting) takes its
//! outcomes in input order.

use std::sync::Arc;

use authwatch_event::framing::FramingError;
use authwatch_event::structure::{scan_structure, Scalar, TopFields};
use authwatch_event::time::parse_timestamp;
use authwatch_event::{cluster_from_log_group, visit_events, Micros, RawRecord};
use authwatch_rules::{Engine, Matcher, Prefilter, Prepared, RuleKind};

use crate::sources::files::Location;

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
    /// The event time of a record the prefilter ruled out, when a rule needs time to move
    /// with every event (absence rules: a deadline passes with the events after it, matched
    /// or not). It moves the engine's clock as a decoded, unmatched event would.
    Time(Micros),
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
    /// Emit [`Outcome::Time`] for prefiltered records (some rule is an absence rule).
    times: bool,
}

impl Worker {
    /// A worker for `engine`'s rules. With `prefilter`, records that no rule can match (by
    /// the literal bytes the rules need) are only structure-checked, not decoded.
    pub fn new(engine: &Engine, prefilter: bool) -> Worker {
        Worker {
            prefilter: prefilter
                .then(|| Prefilter::new(engine.rules()))
                .filter(|p| !p.passes_everything()),
            matcher: engine.matcher(),
            facts: false,
            cluster_cache: None,
            times: engine
                .rules()
                .iter()
                .any(|r| matches!(r.kind, RuleKind::Absence(_))),
        }
    }

    /// Decodes every record and emits an [`Outcome::Fact`] per event, for metrics that
    /// count every 401/403 whatever the rules (turns the prefilter off).
    pub fn count_every_event(&mut self) {
        self.prefilter = None;
        self.facts = true;
    }

    /// Turns one record (or the framing error in its place) into outcomes.
    pub fn process(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: &Location<'_>,
        out: &mut Vec<Outcome>,
    ) {
        self.process_seeing(record, loc, out, &mut |_, _| {});
    }

    /// [`Worker::process`], showing `see` each record (not framing errors) and what the
    /// structure pass read of it, once, before it is decoded: so that a caller with a
    /// prefilter of its own (investigate's filter) tests it on the same fields instead of
    /// searching the record again. See [`Seen`].
    pub fn process_seeing(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: &Location<'_>,
        out: &mut Vec<Outcome>,
        see: &mut dyn FnMut(&RawRecord<'_>, Seen<'_, '_>),
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
            // One structure pass first: it checks what a ruled-out record must be and reads
            // the fields the prefilter tests exactly. A record it refuses is judged by the
            // needles alone, as before, so every verdict stays what it was: ruled out, the
            // structure error is counted; let through, the decoder's.
            let scanned = scan_structure(record.message);
            see(&record, scanned.as_ref().ok().map(Option::as_ref));
            let ruled_out = match scanned {
                Ok(top) => (!p.may_match_read(record.message, top.as_ref())).then_some(Ok(top)),
                Err(e) => (!p.may_match(record.message)).then_some(Err(e)),
            };
            match ruled_out {
                None => {}
                Some(Ok(top)) => {
                    out.push(Outcome::Prefiltered);
                    if self.times {
                        out.extend(prefiltered_time(&record, top.as_ref()).map(Outcome::Time));
                    }
                    return;
                }
                Some(Err(e)) => {
                    return out.push(Outcome::Error {
                        reason: e.reason(),
                        detail: e.to_string(),
                        location: loc.to_string(),
                    })
                }
            }
        } else {
            see(&record, None);
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

/// What [`Worker::process_seeing`] shows of a record: `Some` when the structure pass read it
/// and found it well-formed, with the fields of a plain event line (`Some(None)` for a
/// wrapper or a list: [`Prefilter::may_match_read`] takes either); `None` when the pass did
/// not run (no prefilter) or refused the record, so only a search of the bytes tells.
pub type Seen<'r, 'a> = Option<Option<&'r TopFields<'a>>>;

/// The time of a record the prefilter ruled out, as decoding would find it: the event's own
/// top-level `requestReceivedTimestamp` as the structure pass read it, else (a wrapper, a
/// list, an escaped or malformed time) the decoder's reading, the newest of its events.
///
/// Only the top-level field: a byte search for the key would also find one nested in a
/// request body (an annotation of that name), and a client could move the clock, and with
/// it the watermark, to any time it likes, making every real event after it too late.
fn prefiltered_time(record: &RawRecord<'_>, top: Option<&TopFields<'_>>) -> Option<Micros> {
    if let Some(Scalar::Str(t)) = top.map(|t| t.request_received_timestamp) {
        if let Some(t) = parse_timestamp(t) {
            return Some(t);
        }
    }
    let mut newest: Option<Micros> = None;
    visit_events(record, &mut |ev| {
        if let Ok(t) = ev.map(|v| v.time) {
            newest = newest.max(t);
        }
    });
    newest
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
