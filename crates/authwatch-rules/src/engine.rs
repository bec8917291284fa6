//! The detection engine: rules applied to events in event-time order, sliding-window counts
//! per rule and key, alerts (detection.md).
//!
//! Events come in through [`Engine::observe`] in whatever order the sources read them.
//! Matching is stateless and happens at once; only the matches (few: most events are 2xx)
//! are held in a reorder buffer until the watermark — the newest event time seen minus the
//! lateness bound — passes them, and are then counted in time order. An event that arrives
//! behind the watermark is *late*: it is still counted if a window that contains it is still
//! open, and the late figure records it either way.
//!
//! Memory is bounded whatever the input: a key's state is freed when its window empties,
//! and each rule tracks at most `max_keys` keys; past that the least recently seen key is
//! evicted, counted, and a built-in `key-cardinality-exceeded` alert fires once per cooldown
//! (an address spray is itself a signal).
//!
//! There is no clock and no I/O here: the same events in give the same alerts out.
//!
//! Its parts (issue #19): the stateless [`Matcher`] (matcher.rs), the keys and their eviction
//! (keys.rs), a key's sliding window (window.rs), auditID de-duplication (dedup.rs), audit IDs
//! (audit_id.rs), what an alert keeps of an event (hit.rs), and whether a window fires and the
//! alert it makes (firing.rs). This file holds the loop: the reorder buffer, the watermark,
//! counting, cooldowns and sweeping.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use authwatch_event::{EventView, Micros};
use serde::Serialize;
use smallvec::SmallVec;

use crate::absence::AbsenceState;
use crate::alert::{stable_id, Alert, Group};
use crate::audit_id::AuditId;
use crate::dedup::SeenIds;
use crate::firing::{build_alert, evaluate};
use crate::hit::HitInfo;
use crate::keys::{Key, Keys, Slot};
use crate::matcher::HitPhase;
use crate::rule::{Rule, RuleKind};
use crate::window::{Entry, KeyState, Values};
use crate::HashMap;

pub use crate::matcher::{Matcher, Prepared, MAX_FANOUT};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How far behind the newest event time an event may arrive and still be counted in exact
    /// time order (detection.md: default 2 minutes).
    pub max_lateness: Micros,
    /// The cluster name put on alerts; when `None`, it is taken from the log group
    /// (`/aws/eks/<cluster>/cluster`) of the event that fired.
    pub cluster: Option<String>,
    /// How many audit IDs an alert carries as samples.
    pub sample_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_lateness: 120_000_000,
            cluster: None,
            sample_size: 5,
        }
    }
}

/// What the engine saw, for summaries and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Events given to [`Engine::observe`].
    pub events: u64,
    /// Events skipped for lack of any usable time (detection.md reason `no_timestamp`).
    pub no_timestamp: u64,
    /// Events that matched at least one rule.
    pub matched: u64,
    /// Rule matches not counted because the event lacked a `group_by` field.
    pub missing_group_key: u64,
    /// Rule matches whose fan-out (e.g. a `sourceIPs` list) was cut to [`MAX_FANOUT`] keys.
    pub fanout_capped: u64,
    /// Rule matches not counted because their auditID was already counted for the rule.
    pub duplicates: u64,
    /// Events that arrived behind the watermark (newest time − lateness bound).
    pub late_events: u64,
    /// Late rule matches not counted because every window containing them had closed.
    pub late_dropped: u64,
    /// Alerts fired, by rule id.
    pub alerts_by_rule: BTreeMap<String, u64>,
    /// Keys evicted because a rule reached its `max_keys`, by rule id.
    pub evicted_keys: BTreeMap<String, u64>,
    /// Alerts not fired because an earlier run had sent one for the key within the cooldown
    /// ([`Engine::remember_sent`]): the same alert again, or a second page for one attack.
    pub held_back_as_sent: u64,
}

/// A rule match waiting in the reorder buffer.
#[derive(Debug)]
struct Pending {
    time: Micros,
    seq: u64,
    rule: usize,
    keys: SmallVec<[Key; 1]>,
    info: Arc<HitInfo>,
    /// `distinct` rules: the event's values of `distinct_of`.
    distinct: Option<Values>,
    /// What it does to an absence rule's key.
    phase: HitPhase,
    /// It arrived behind the watermark.
    late: bool,
}

impl Pending {
    /// Ties in time are broken by auditID, then arrival: a shuffle of the input within the
    /// lateness bound then releases matches in the same order.
    fn order_key(&self) -> (Micros, Option<&AuditId>, u64) {
        (self.time, self.info.audit_id.as_ref(), self.seq)
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.order_key() == o.order_key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> Ordering {
        self.order_key().cmp(&o.order_key())
    }
}

#[derive(Debug, Default)]
struct RuleState {
    keys: Keys,
    evictions: u64,
    /// The built-in cardinality alert is quiet until this event time.
    cardinality_cooling_until: Option<Micros>,
    /// Event time of the last sweep.
    last_sweep: Option<Micros>,
    /// The earliest event time counted: a spike rule judges a rise only once it has seen a
    /// whole baseline.
    first_time: Option<Micros>,
    /// Window ends of alerts an earlier run already sent, per key, ascending
    /// ([`Engine::remember_sent`]): consulted only when an alert is about to fire.
    sent_before: HashMap<Key, SmallVec<[Micros; 2]>>,
    /// Absence rules: the keys open and their deadlines.
    absence: AbsenceState,
}

/// The detection engine (see the module docs).
///
/// ```
/// use authwatch_event::{visit_events, RawRecord};
/// use authwatch_rules::{load_rules, Engine, EngineConfig};
///
/// let rules = load_rules("r.yaml", "id: r\nmatch: {responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 1m\nthreshold: 2\n").unwrap();
/// let mut engine = Engine::new(rules, EngineConfig::default());
/// let mut alerts = Vec::new();
/// for (id, ts) in [("a", "10:00:00"), ("b", "10:00:30")] {
///     let line = format!(r#"{{"auditID":"{id}","sourceIPs":["198.51.100.7"],"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2026-11-20T{ts}Z"}}"#);
///     let record = RawRecord { message: line.as_bytes(), ..Default::default() };
///     visit_events(&record, &mut |ev| engine.observe(&ev.unwrap(), &mut alerts));
/// }
/// engine.finish(&mut alerts);
/// assert_eq!(alerts.len(), 1);
/// assert_eq!(alerts[0].group.0, [("sourceIPs".to_string(), "198.51.100.7".to_string())]);
/// ```
#[derive(Debug)]
pub struct Engine {
    rules: Arc<Vec<Rule>>,
    matcher: Matcher,
    states: Vec<RuleState>,
    seen: SeenIds,
    /// The longest rule window: how long auditIDs are remembered.
    max_window: Micros,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    max_seen: Option<Micros>,
    /// Matches at or before this time are released to the windows (newest time − lateness).
    watermark: Option<Micros>,
    /// The newest time counted in the windows so far: the engine's "now".
    clock: Option<Micros>,
    config: EngineConfig,
    cluster: Option<Arc<str>>,
    stats: EngineStats,
    /// The absence rules, by index: only their deadlines are looked at as time moves (most
    /// rule sets have none, and this runs at every released match).
    absence_rules: Vec<usize>,
}

impl Engine {
    /// An engine for these rules.
    pub fn new(rules: Vec<Rule>, config: EngineConfig) -> Engine {
        let stats = EngineStats {
            alerts_by_rule: rules.iter().map(|r| (r.id.clone(), 0)).collect(),
            ..Default::default()
        };
        let rules = Arc::new(rules);
        let cluster: Option<Arc<str>> = config.cluster.as_deref().map(Arc::from);
        Engine {
            states: rules.iter().map(|_| RuleState::default()).collect(),
            absence_rules: rules
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.kind, RuleKind::Absence(_)))
                .map(|(i, _)| i)
                .collect(),
            seen: SeenIds::default(),
            max_window: rules.iter().map(|r| r.window).max().unwrap_or(0),
            matcher: Matcher::new(rules.clone(), cluster.clone()),
            rules,
            pending: BinaryHeap::new(),
            seq: 0,
            max_seen: None,
            watermark: None,
            clock: None,
            cluster,
            config,
            stats,
        }
    }

    /// The rules, in load order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Counters so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Keys currently tracked, summed over rules (for memory monitoring).
    pub fn active_keys(&self) -> usize {
        self.states
            .iter()
            .map(|s| s.keys.len() + s.absence.len())
            .sum()
    }

    /// Tells a rebuilt engine about an alert an earlier run (or another replica) already
    /// sent: `rule`'s key `values` (in `group_by` order, as in [`Alert::group`]) fired at
    /// `window_end`. Returns `false` when no loaded rule has that id.
    ///
    /// Why: a restart or failover rebuilds the windows by reading events again from some
    /// horizon back, but the cooldowns that run had started before the horizon are not in
    /// those events. Without them, a key under a sustained attack could fire again at an
    /// event where the first run was cooling down — a second page for one attack, with a new
    /// `alert_id` that no de-duplication recognizes. With them, an alert that would fire at
    /// an event time inside `[window_end, window_end + cooldown)` of a remembered alert is
    /// held back (the remembered alert itself included: it was sent) and the key cools down
    /// until the remembered cooldown ends, as it did in the first run; from there the rebuilt
    /// engine fires what the first run fired, with the same ids.
    ///
    /// ```
    /// use authwatch_event::{visit_events, RawRecord};
    /// use authwatch_rules::{load_rules, Engine, EngineConfig};
    ///
    /// let rules = load_rules("r.yaml", "id: r\nmatch: {responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 1m\nthreshold: 1\ncooldown: 10m\n").unwrap();
    /// let mut engine = Engine::new(rules, EngineConfig::default());
    /// // The run before the restart sent an alert for this address at 10:00:00.
    /// let sent_at = authwatch_event::time::parse_timestamp("2026-11-20T10:00:00Z").unwrap();
    /// assert!(engine.remember_sent("r", &["198.51.100.7"], sent_at));
    /// let mut alerts = Vec::new();
    /// let line = r#"{"auditID":"a","sourceIPs":["198.51.100.7"],"responseStatus":{"code":403},"requestReceivedTimestamp":"2026-11-20T10:05:00Z"}"#;
    /// let record = RawRecord { message: line.as_bytes(), ..Default::default() };
    /// visit_events(&record, &mut |ev| engine.observe(&ev.unwrap(), &mut alerts));
    /// engine.finish(&mut alerts);
    /// // 10:05 is inside that alert's cooldown: no second page.
    /// assert!(alerts.is_empty());
    /// assert_eq!(engine.stats().held_back_as_sent, 1);
    /// ```
    pub fn remember_sent<S: AsRef<str>>(
        &mut self,
        rule: &str,
        values: &[S],
        window_end: Micros,
    ) -> bool {
        let Some(i) = self.rules.iter().position(|r| r.id == rule) else {
            return false;
        };
        let Some(state) = self.states.get_mut(i) else {
            return false;
        };
        let ends = state.sent_before.entry(Key::new(values)).or_default();
        if let Err(at) = ends.binary_search(&window_end) {
            ends.insert(at, window_end);
        }
        true
    }

    /// Takes one event; appends any alerts it (or the watermark it moves) fires to `out`.
    pub fn observe(&mut self, view: &EventView<'_, '_>, out: &mut Vec<Alert>) {
        let prepared = self.matcher.prepare(view);
        self.accept(prepared, out);
    }

    /// A [`Matcher`] for these rules, to prepare events on other threads; their
    /// [`Prepared`] results go to [`Engine::accept`] in input order.
    pub fn matcher(&self) -> Matcher {
        Matcher::new(self.rules.clone(), self.cluster.clone())
    }

    /// Takes one event prepared by a [`Matcher`] (the stateful half of [`Engine::observe`]).
    pub fn accept(&mut self, prepared: Prepared, out: &mut Vec<Alert>) {
        self.stats.events += 1;
        self.stats.missing_group_key += prepared.missing_group_key;
        self.stats.fanout_capped += prepared.fanout_capped;
        let Some(t) = prepared.time else {
            self.stats.no_timestamp += 1;
            return;
        };
        let late = self.watermark.is_some_and(|w| t < w);
        if late {
            self.stats.late_events += 1;
        }
        if let Some(info) = prepared.info {
            self.stats.matched += 1;
            for hit in prepared.hits {
                self.seq += 1;
                self.pending.push(Reverse(Pending {
                    time: t,
                    seq: self.seq,
                    rule: hit.rule,
                    keys: hit.keys,
                    info: info.clone(),
                    distinct: hit.distinct,
                    phase: hit.phase,
                    late,
                }));
            }
        }
        self.advance_clock(t, out);
    }

    /// An event at `t` was read that no rule can match (a pipeline's prefilter ruled it out
    /// undecoded): time moves on as if it had been given to [`Engine::accept`], so that
    /// absence deadlines pass with the events after them, matched or not.
    pub fn advance_clock(&mut self, t: Micros, out: &mut Vec<Alert>) {
        if self.max_seen.is_none_or(|m| t > m) {
            self.max_seen = Some(t);
            let w = t.saturating_sub(self.config.max_lateness);
            if self.watermark.is_none_or(|old| w > old) {
                self.watermark = Some(w);
            }
        }
        self.release(out);
    }

    /// Declares that no event older than `t` is still expected in order (a live source that
    /// has read everything up to `t` plus the lateness bound says so): matches held back up to
    /// `t` are counted now instead of waiting for a newer event. A quiet log group then
    /// still fires the alerts of its last events. Events older than `t` that arrive later are
    /// late: still counted while a window that contains them is open.
    pub fn advance_watermark(&mut self, t: Micros, out: &mut Vec<Alert>) {
        if self.watermark.is_none_or(|w| t > w) {
            self.watermark = Some(t);
            self.release(out);
        }
    }

    /// End of input: counts everything still held back and appends the alerts. Absence
    /// deadlines up to the newest event time seen fire; later ones are not known yet (a
    /// closing event may still come).
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        // Every held match is at or before the newest time seen.
        if let Some(upto) = self.max_seen {
            self.drain_until(upto, out);
        }
    }

    fn release(&mut self, out: &mut Vec<Alert>) {
        let Some(w) = self.watermark else { return };
        self.drain_until(w, out);
        if let Some(now) = self.clock {
            self.sweep(now);
        }
    }

    /// Counts the held matches and judges the absence deadlines up to `upto`, in time order:
    /// a closing event at or before a deadline is counted before the deadline is judged.
    fn drain_until(&mut self, upto: Micros, out: &mut Vec<Alert>) {
        loop {
            let next = self
                .pending
                .peek()
                .map(|Reverse(p)| p.time)
                .filter(|t| *t <= upto);
            match (next, self.next_deadline(upto)) {
                (Some(t), Some((d, rule))) if d < t => self.fire_due(rule, d, out),
                (Some(_), _) => {
                    if let Some(Reverse(p)) = self.pending.pop() {
                        self.count(p, out);
                    }
                }
                (None, Some((d, rule))) => self.fire_due(rule, d, out),
                (None, None) => break,
            }
        }
    }

    /// The earliest absence deadline at or before `upto`, and its rule.
    fn next_deadline(&self, upto: Micros) -> Option<(Micros, usize)> {
        self.absence_rules
            .iter()
            .filter_map(|&i| self.states[i].absence.next_deadline().map(|d| (d, i)))
            .filter(|(d, _)| *d <= upto)
            .min()
    }

    /// An absence rule's deadline `d` passed with its key still open: the alert, unless the
    /// key is cooling down or an earlier run sent it ([`Engine::remember_sent`]).
    fn fire_due(&mut self, rule_index: usize, d: Micros, out: &mut Vec<Alert>) {
        let rule = &self.rules[rule_index];
        let state = &mut self.states[rule_index];
        let Some((end, key, open, fires)) = state.absence.take_due(d, rule.cooldown) else {
            return;
        };
        self.clock = Some(self.clock.map_or(end, |c| c.max(end)));
        if !fires {
            return;
        }
        if sent_cooling(&state.sent_before, &key, end, rule.cooldown).is_some() {
            self.stats.held_back_as_sent += 1;
            return;
        }
        let entry = Entry {
            time: open.at,
            info: open.info,
            distinct: None,
        };
        let mut alert = build_alert(
            rule,
            &key,
            std::iter::once(&entry),
            end,
            1,
            self.config.sample_size,
        );
        alert.kind = rule.kind.as_str();
        out.push(alert);
        *self
            .stats
            .alerts_by_rule
            .entry(rule.id.clone())
            .or_default() += 1;
    }

    /// An absence rule's released match: opens, closes or cancels its keys.
    fn count_absence(&mut self, p: Pending) {
        let rule = &self.rules[p.rule];
        let state = &mut self.states[p.rule];
        for key in p.keys {
            match p.phase {
                HitPhase::Open => {
                    let max_keys = rule.max_keys.min(Keys::MAX);
                    if state
                        .absence
                        .open(key, p.time, rule.window, p.info.clone(), max_keys)
                    {
                        state.evictions += 1;
                        *self.stats.evicted_keys.entry(rule.id.clone()).or_default() += 1;
                    }
                }
                HitPhase::Close | HitPhase::Cancel => {
                    state.absence.close(&key, p.time, rule.window);
                }
            }
        }
    }

    /// Counts one released match (dedup, window, threshold, cooldown).
    fn count(&mut self, mut p: Pending, out: &mut Vec<Alert>) {
        let rule = &self.rules[p.rule];
        let state = &mut self.states[p.rule];
        let now = self.clock.map_or(p.time, |c| c.max(p.time));
        self.clock = Some(now);
        if p.late && p.time <= now.saturating_sub(rule.window) {
            // Every window containing it closed before "now": nothing left to count it in.
            self.stats.late_dropped += 1;
            return;
        }
        if let Some(id) = &p.info.audit_id {
            if !self.seen.first_for(id, p.rule, p.time) {
                self.stats.duplicates += 1;
                return;
            }
        }
        if matches!(rule.kind, RuleKind::Absence(_)) {
            self.count_absence(p);
            return;
        }
        // Entries whose window has emptied can go (a late match may then count low: never high).
        let horizon = now.saturating_sub(rule.window);
        state.first_time = Some(state.first_time.map_or(p.time, |f| f.min(p.time)));
        let keys = std::mem::take(&mut p.keys);
        let max_keys = rule.max_keys.min(Keys::MAX);
        for key in keys {
            let idx = match state.keys.find(&key) {
                Some(i) => {
                    state.keys.touch(i);
                    i
                }
                None => {
                    if state.keys.len() >= max_keys && state.keys.evict_lru() {
                        state.evictions += 1;
                        *self.stats.evicted_keys.entry(rule.id.clone()).or_default() += 1;
                        if state.cardinality_cooling_until.is_none_or(|c| p.time >= c) {
                            state.cardinality_cooling_until =
                                Some(p.time.saturating_add(rule.cooldown));
                            out.push(cardinality_alert(rule, state.evictions, &p));
                            *self
                                .stats
                                .alerts_by_rule
                                .entry(CARDINALITY_RULE.to_owned())
                                .or_default() += 1;
                        }
                    }
                    state.keys.insert(key, KeyState::new(&rule.kind))
                }
            };
            let Some(Slot { key, state: ks, .. }) = state.keys.slot_mut(idx) else {
                continue;
            };
            ks.insert(Entry {
                time: p.time,
                info: p.info.clone(),
                distinct: p.distinct.clone(),
            });
            ks.prune(horizon, &rule.kind);
            // Evaluate at the event's own time; a late event may also complete the window
            // that ends at the key's newest event.
            let newest = ks.entries.back().map_or(p.time, |e| e.time);
            let ends: &[Micros] = if newest > p.time {
                &[p.time, newest]
            } else {
                &[p.time]
            };
            for &end in ends {
                if ks.cooling_at(end) {
                    continue;
                }
                if let Some(alert) = evaluate(
                    rule,
                    key,
                    ks,
                    end,
                    self.config.sample_size,
                    state.first_time,
                ) {
                    if let Some((until, same)) =
                        sent_cooling(&state.sent_before, key, end, rule.cooldown)
                    {
                        ks.cooling_until = until;
                        self.stats.held_back_as_sent += 1;
                        if same {
                            // The earlier run fired this very alert and stopped here.
                            break;
                        }
                        // It was cooling down here: the next end is judged as it judged it.
                        continue;
                    }
                    ks.cooling_until = end.saturating_add(rule.cooldown);
                    out.push(alert);
                    *self
                        .stats
                        .alerts_by_rule
                        .entry(rule.id.clone())
                        .or_default() += 1;
                    break;
                }
            }
        }
    }

    /// Forgets auditIDs and keys that no open window can need any more. Each rule is swept
    /// every eighth of its window of event time, so a key outlives its last event by at most
    /// 1⅛ windows.
    fn sweep(&mut self, now: Micros) {
        let max_window = self.max_window;
        if self
            .seen
            .last_sweep
            .is_none_or(|s| now - s >= (max_window / 8).max(1_000_000))
        {
            self.seen.last_sweep = Some(now);
            // A copy of an older id would be late with every window closed: dropped anyway.
            self.seen.forget(now.saturating_sub(max_window));
        }
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            let period = (rule.window / 8).max(1_000_000);
            if state.last_sweep.is_some_and(|s| now - s < period) {
                continue;
            }
            state.last_sweep = Some(now);
            let horizon = now.saturating_sub(rule.window);
            if !state.sent_before.is_empty() {
                // No event counted from here on can end a window inside these cooldowns.
                let cooldown = rule.cooldown;
                state.sent_before.retain(|_, ends| {
                    ends.retain(|e| e.saturating_add(cooldown) > horizon);
                    !ends.is_empty()
                });
            }
            state.absence.sweep(now);
            state.keys.retain(|ks| {
                ks.prune(horizon, &rule.kind);
                !ks.is_empty() || ks.cooling_at(now)
            });
        }
    }
}

/// When an earlier run sent an alert for `key` at `end` itself, or at some
/// `T < end < T + cooldown`: the end of that cooldown, and whether it is the same alert.
fn sent_cooling(
    sent_before: &HashMap<Key, SmallVec<[Micros; 2]>>,
    key: &Key,
    end: Micros,
    cooldown: Micros,
) -> Option<(Micros, bool)> {
    if sent_before.is_empty() {
        return None;
    }
    let ends = sent_before.get(key)?;
    let latest = *ends.get(ends.partition_point(|&t| t <= end).checked_sub(1)?)?;
    let until = latest.saturating_add(cooldown);
    let same = latest == end;
    (same || end < until).then_some((until, same))
}

/// The id of the built-in alert that a rule tracks more keys than its `max_keys`.
pub const CARDINALITY_RULE: &str = "key-cardinality-exceeded";

fn cardinality_alert(rule: &Rule, evictions: u64, p: &Pending) -> Alert {
    let entry = Entry {
        time: p.time,
        info: p.info.clone(),
        distinct: None,
    };
    let key = Key::new(&[rule.id.as_str()]);
    let mut a = build_alert(
        rule,
        &key,
        std::iter::once(&entry),
        p.time,
        rule.max_keys as u64,
        1,
    );
    a.rule = CARDINALITY_RULE.to_owned();
    a.severity = crate::rule::Severity::Medium;
    a.group = Group(vec![("rule".to_owned(), rule.id.clone())]);
    a.threshold = rule.max_keys as u64;
    a.kind = "key-cardinality";
    a.evicted_keys = Some(evictions);
    a.description = format!(
        "rule `{}` is tracking more than its max_keys ({}) keys: the least recently seen are evicted, so counts for them restart. Many distinct keys is itself a signal (an address or identity spray).",
        rule.id, rule.max_keys
    );
    let id_parts: [&[u8]; 3] = [
        CARDINALITY_RULE.as_bytes(),
        rule.id.as_bytes(),
        &p.time.to_be_bytes(),
    ];
    a.alert_id = stable_id(&id_parts);
    a
}
