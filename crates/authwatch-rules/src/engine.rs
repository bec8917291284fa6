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

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use authwatch_event::{cluster_from_log_group, EventView, Micros};
use serde::Serialize;
use smallvec::SmallVec;

use crate::alert::{stable_id, Alert, Group};
use crate::field::EventFacts;
use crate::rule::{Rule, RuleKind};

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
}

/// What an alert needs to know about one counted event; shared by every key it fans out to.
#[derive(Debug)]
struct HitInfo {
    audit_id: Option<Arc<str>>,
    code: Option<i64>,
    verb: Option<Arc<str>>,
    user: Option<Arc<str>>,
    host: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
}

/// A key: the values of a rule's `group_by`, in one allocation (memory per key matters when
/// an attacker sprays addresses). Each value is stored as its length in bytes, `:`, and the
/// value, so no value can run into the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key(Arc<str>);

impl Key {
    fn new<S: AsRef<str>>(values: &[S]) -> Key {
        let mut s = String::with_capacity(values.iter().map(|v| v.as_ref().len() + 4).sum());
        for v in values {
            let v = v.as_ref();
            s.push_str(&v.len().to_string());
            s.push(':');
            s.push_str(v);
        }
        Key(Arc::from(s))
    }

    /// The values, in `group_by` order.
    fn values(&self) -> impl Iterator<Item = &str> {
        let mut rest: &str = &self.0;
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            let value = tail.get(..len)?;
            rest = tail.get(len..)?;
            Some(value)
        })
    }
}

/// Shares the text of low-cardinality fields (verbs, API servers, clusters, users) between
/// the events that carry them, up to a bound, past which text is simply not shared.
#[derive(Debug, Default, Clone)]
struct Interner {
    set: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    const CAP: usize = 100_000;

    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.set.len() < Self::CAP {
            self.set.insert(a.clone());
        }
        a
    }
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
    /// It arrived behind the watermark.
    late: bool,
}

/// Distinct values of one event (usually one).
type Values = Arc<[Box<str>]>;

impl Pending {
    /// Ties in time are broken by auditID, then arrival: a shuffle of the input within the
    /// lateness bound then releases matches in the same order.
    fn order_key(&self) -> (Micros, Option<&str>, u64) {
        (self.time, self.info.audit_id.as_deref(), self.seq)
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

#[derive(Debug, Clone)]
struct Entry {
    time: Micros,
    info: Arc<HitInfo>,
    distinct: Option<Values>,
}

impl Entry {
    fn order_key(&self) -> (Micros, Option<&str>) {
        (self.time, self.info.audit_id.as_deref())
    }
}

/// What a kind keeps per key beyond the window's entries.
#[derive(Debug)]
enum KindState {
    /// `distinct`: how many entries carry each value.
    Distinct(HashMap<Box<str>, u32>),
    /// `spike`: counts of entries that left the window, in buckets of `baseline / 60`, by
    /// bucket start.
    Spike(VecDeque<(Micros, u64)>),
}

#[derive(Debug)]
struct KeyState {
    /// Counted events in the window, sorted by (time, auditID).
    entries: VecDeque<Entry>,
    /// No alert for this key before this event time.
    cooling_until: Option<Micros>,
    /// When the key was last counted (the rule's touch counter), for LRU eviction.
    touch: u64,
    kind: Option<Box<KindState>>,
}

impl KeyState {
    fn new(kind: &RuleKind, touch: u64) -> KeyState {
        KeyState {
            // Most keys of a spray see one event: no room for more until needed.
            entries: VecDeque::with_capacity(1),
            cooling_until: None,
            touch,
            kind: match kind {
                RuleKind::Threshold => None,
                RuleKind::Distinct { .. } => Some(Box::new(KindState::Distinct(HashMap::new()))),
                RuleKind::Spike { .. } => Some(Box::new(KindState::Spike(VecDeque::new()))),
            },
        }
    }

    /// Index of the first entry with time in `(end − window, end]`, and how many there are.
    fn window(&self, end: Micros, window: Micros) -> (usize, usize) {
        let first = self.entries.partition_point(|e| e.time <= end - window);
        let last = self.entries.partition_point(|e| e.time <= end);
        (first, last.saturating_sub(first))
    }

    fn cooling_at(&self, t: Micros) -> bool {
        self.cooling_until.is_some_and(|c| t < c)
    }

    fn insert(&mut self, entry: Entry) {
        if let (Some(KindState::Distinct(counts)), Some(values)) =
            (self.kind.as_deref_mut(), &entry.distinct)
        {
            for v in values.iter() {
                *counts.entry(v.clone()).or_insert(0) += 1;
            }
        }
        let pos = self
            .entries
            .partition_point(|e| e.order_key() <= entry.order_key());
        self.entries.insert(pos, entry);
    }

    /// Drops entries at or before `horizon` (spike rules keep their counts in buckets until
    /// `bucket_horizon`).
    fn prune(&mut self, horizon: Micros, kind: &RuleKind) {
        while self.entries.front().is_some_and(|e| e.time <= horizon) {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            match (self.kind.as_deref_mut(), kind) {
                (Some(KindState::Distinct(counts)), _) => {
                    for v in e.distinct.iter().flat_map(|v| v.iter()) {
                        if let Some(n) = counts.get_mut(v) {
                            *n -= 1;
                            if *n == 0 {
                                counts.remove(v);
                            }
                        }
                    }
                }
                (Some(KindState::Spike(buckets)), RuleKind::Spike { baseline, .. }) => {
                    let width = bucket_width(*baseline);
                    let start = e.time.div_euclid(width) * width;
                    let pos = buckets.partition_point(|(s, _)| *s < start);
                    match buckets.get_mut(pos) {
                        Some((s, n)) if *s == start => *n += 1,
                        _ => buckets.insert(pos, (start, 1)),
                    }
                }
                _ => {}
            }
        }
        if let (Some(KindState::Spike(buckets)), RuleKind::Spike { baseline, .. }) =
            (self.kind.as_deref_mut(), kind)
        {
            let width = bucket_width(*baseline);
            // A bucket is kept while part of it can still be inside a baseline.
            while buckets
                .front()
                .is_some_and(|(s, _)| s + width - 1 <= horizon - baseline)
            {
                buckets.pop_front();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && !matches!(self.kind.as_deref(), Some(KindState::Spike(b)) if !b.is_empty())
    }

    /// Distinct values among the window's entries.
    fn distinct_in(&self, first: usize, n: usize) -> BTreeSet<&str> {
        self.entries
            .range(first..first + n)
            .flat_map(|e| e.distinct.iter().flat_map(|v| v.iter()))
            .map(|v| &**v)
            .collect()
    }

    /// Counted events in `(lo, hi]` that have left the window (spike baseline). Buckets that
    /// straddle `lo` are left out: a reported count is never above the true count.
    fn baseline(&self, lo: Micros, hi: Micros, width: Micros) -> u64 {
        let from_entries = self
            .entries
            .iter()
            .filter(|e| e.time > lo && e.time <= hi)
            .count() as u64;
        let from_buckets: u64 = match self.kind.as_deref() {
            Some(KindState::Spike(buckets)) => buckets
                .iter()
                .filter(|(s, _)| *s > lo && s + width - 1 <= hi)
                .map(|(_, n)| n)
                .sum(),
            _ => 0,
        };
        from_entries + from_buckets
    }
}

/// Spike baselines are counted in buckets of at most `baseline / 60` (detection.md allows
/// buckets of window/60).
fn bucket_width(baseline: Micros) -> Micros {
    (baseline / 60).max(1)
}

/// The auditIDs counted, with the rules that counted each (one bit per rule), to ignore later
/// copies (detection.md: "one request counts once per rule"). One map for all rules: an
/// address spray that several rules count costs one entry per request, not one per rule.
#[derive(Debug, Default)]
struct SeenIds {
    /// id → (time first counted, bits of the first 64 rules that counted it).
    map: HashMap<Arc<str>, (Micros, u64)>,
    /// Rules past the 64th (rare), one entry per (id, rule).
    more: HashMap<(Arc<str>, usize), Micros>,
    /// The ids in the order counted, to forget them once no window can need them.
    order: VecDeque<(Micros, Arc<str>)>,
    last_sweep: Option<Micros>,
}

impl SeenIds {
    /// Records that `rule` counted `id` (at `time`); false if it already had.
    fn first_for(&mut self, id: &Arc<str>, rule: usize, time: Micros) -> bool {
        let entry = self.map.entry(id.clone()).or_insert_with(|| {
            self.order.push_back((time, id.clone()));
            (time, 0)
        });
        if rule < 64 {
            let bit = 1u64 << rule;
            let fresh = entry.1 & bit == 0;
            entry.1 |= bit;
            return fresh;
        }
        self.more.insert((id.clone(), rule), time).is_none()
    }

    /// Forgets ids counted at or before `before`.
    fn forget(&mut self, before: Micros) {
        while let Some((t, id)) = self.order.front() {
            if *t > before {
                break;
            }
            if self.map.get(id).is_some_and(|(first, _)| first == t) {
                self.map.remove(id);
            }
            self.order.pop_front();
        }
        if !self.more.is_empty() {
            self.more.retain(|_, t| *t > before);
        }
    }
}

#[derive(Debug, Default)]
struct RuleState {
    keys: HashMap<Key, KeyState>,
    /// (touch, key) for every time a key was counted, oldest first; entries whose touch is
    /// no longer the key's are stale and skipped. Compacted when it grows past twice the keys.
    lru: VecDeque<(u64, Key)>,
    touches: u64,
    evictions: u64,
    /// The built-in cardinality alert is quiet until this event time.
    cardinality_cooling_until: Option<Micros>,
    /// Event time of the last sweep.
    last_sweep: Option<Micros>,
    /// The earliest event time counted: a spike rule judges a rise only once it has seen a
    /// whole baseline.
    first_time: Option<Micros>,
}

impl RuleState {
    /// Removes the least recently counted key.
    fn evict_lru(&mut self) -> bool {
        while let Some((touch, key)) = self.lru.pop_front() {
            if self.keys.get(&key).is_some_and(|ks| ks.touch == touch) {
                self.keys.remove(&key);
                self.evictions += 1;
                return true;
            }
        }
        false
    }

    fn compact_lru(&mut self) {
        let mut live: Vec<(u64, Key)> = self
            .keys
            .iter()
            .map(|(k, ks)| (ks.touch, k.clone()))
            .collect();
        live.sort_unstable_by_key(|(t, _)| *t);
        self.lru = live.into();
    }
}

/// The stateless half of the engine: which rules an event matches and the keys it counts
/// toward. Cheap to clone (the rules are shared); one per thread.
#[derive(Debug, Clone)]
pub struct Matcher {
    rules: Arc<Vec<Rule>>,
    cluster: Option<Arc<str>>,
    interner: Interner,
}

/// One event as a [`Matcher`] saw it, ready for [`Engine::accept`].
#[derive(Debug)]
pub struct Prepared {
    time: Option<Micros>,
    info: Option<Arc<HitInfo>>,
    hits: SmallVec<[PreparedHit; 1]>,
    missing_group_key: u64,
    fanout_capped: u64,
}

#[derive(Debug)]
struct PreparedHit {
    rule: usize,
    keys: SmallVec<[Key; 1]>,
    distinct: Option<Values>,
}

impl Prepared {
    /// The event's time, if it has one.
    pub fn time(&self) -> Option<Micros> {
        self.time
    }

    /// The (rule index, key) pairs this event counts toward. A key is the encoded values of
    /// the rule's `group_by`: equal values give equal strings. A multi-replica deployment
    /// routes each pair to the replica that owns that key's window (issue #10).
    pub fn partitions(&self) -> impl Iterator<Item = (usize, &str)> {
        self.hits
            .iter()
            .flat_map(|h| h.keys.iter().map(move |k| (h.rule, &*k.0)))
    }

    /// Keeps only the count toward `(rule, key)` (see [`Prepared::partitions`]); the other
    /// pairs are counted by whoever owns them. `false` when the event does not count toward
    /// that pair (nothing left to count).
    pub fn retain_partition(&mut self, rule: usize, key: &str) -> bool {
        self.hits.retain(|h| h.rule == rule);
        for h in &mut self.hits {
            h.keys.retain(|k| &*k.0 == key);
        }
        self.hits.retain(|h| !h.keys.is_empty());
        if self.hits.is_empty() {
            self.info = None;
        }
        !self.hits.is_empty()
    }
}

impl Matcher {
    /// Matches one event against every rule.
    pub fn prepare(&mut self, view: &EventView<'_, '_>) -> Prepared {
        let mut p = Prepared {
            time: view.time,
            info: None,
            hits: SmallVec::new(),
            missing_group_key: 0,
            fanout_capped: 0,
        };
        if view.time.is_none() {
            return p;
        }
        let facts = EventFacts::new(view);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(&facts) {
                continue;
            }
            let mut capped = false;
            let keys = group_keys(rule, &facts, &mut capped);
            p.fanout_capped += u64::from(capped);
            if keys.is_empty() {
                p.missing_group_key += 1;
                continue;
            }
            let distinct = match &rule.kind {
                RuleKind::Distinct { field, .. } => {
                    let mut values: Vec<Box<str>> = facts
                        .values(field)
                        .iter()
                        .map(|v| v.to_key().into())
                        .collect();
                    if values.is_empty() {
                        p.missing_group_key += 1;
                        continue;
                    }
                    if values.len() > MAX_FANOUT {
                        values.truncate(MAX_FANOUT);
                        p.fanout_capped += 1;
                    }
                    values.sort_unstable();
                    values.dedup();
                    Some(Values::from(values))
                }
                _ => None,
            };
            if p.info.is_none() {
                p.info = Some(Arc::new(hit_info(
                    view,
                    self.cluster.as_ref(),
                    &mut self.interner,
                )));
            }
            p.hits.push(PreparedHit {
                rule: i,
                keys,
                distinct,
            });
        }
        p
    }
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
            seen: SeenIds::default(),
            max_window: rules.iter().map(|r| r.window).max().unwrap_or(0),
            matcher: Matcher {
                rules: rules.clone(),
                cluster: cluster.clone(),
                interner: Interner::default(),
            },
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
        self.states.iter().map(|s| s.keys.len()).sum()
    }

    /// Takes one event; appends any alerts it (or the watermark it moves) fires to `out`.
    pub fn observe(&mut self, view: &EventView<'_, '_>, out: &mut Vec<Alert>) {
        let prepared = self.matcher.prepare(view);
        self.accept(prepared, out);
    }

    /// A [`Matcher`] for these rules, to prepare events on other threads; their
    /// [`Prepared`] results go to [`Engine::accept`] in input order.
    pub fn matcher(&self) -> Matcher {
        Matcher {
            rules: self.rules.clone(),
            cluster: self.cluster.clone(),
            interner: Interner::default(),
        }
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
                    late,
                }));
            }
        }
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

    /// End of input: counts everything still held back and appends the alerts.
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        while let Some(Reverse(p)) = self.pending.pop() {
            self.count(p, out);
        }
    }

    fn release(&mut self, out: &mut Vec<Alert>) {
        let Some(w) = self.watermark else { return };
        while self.pending.peek().is_some_and(|Reverse(p)| p.time <= w) {
            if let Some(Reverse(p)) = self.pending.pop() {
                self.count(p, out);
            }
        }
        if let Some(now) = self.clock {
            self.sweep(now);
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
        // Entries whose window has emptied can go (a late match may then count low: never high).
        let horizon = now.saturating_sub(rule.window);
        state.first_time = Some(state.first_time.map_or(p.time, |f| f.min(p.time)));
        let keys = std::mem::take(&mut p.keys);
        for key in keys {
            state.touches += 1;
            let touch = state.touches;
            match state.keys.get_mut(&key) {
                Some(ks) => ks.touch = touch,
                None => {
                    if state.keys.len() >= rule.max_keys && state.evict_lru() {
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
                    state
                        .keys
                        .insert(key.clone(), KeyState::new(&rule.kind, touch));
                }
            }
            state.lru.push_back((touch, key.clone()));
            if state.lru.len() > 2 * state.keys.len() + 1024 {
                state.compact_lru();
            }
            let Some(ks) = state.keys.get_mut(&key) else {
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
                    &key,
                    ks,
                    end,
                    self.config.sample_size,
                    state.first_time,
                ) {
                    ks.cooling_until = Some(end.saturating_add(rule.cooldown));
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
            state.keys.retain(|_, ks| {
                ks.prune(horizon, &rule.kind);
                !ks.is_empty() || ks.cooling_at(now)
            });
            if state.lru.len() > 2 * state.keys.len() + 1024 {
                state.compact_lru();
            }
        }
    }
}

fn hit_info(
    view: &EventView<'_, '_>,
    cluster: Option<&Arc<str>>,
    interner: &mut Interner,
) -> HitInfo {
    let ev = view.event;
    HitInfo {
        audit_id: ev.audit_id.as_ref().map(|a| Arc::from(a.as_str())),
        code: ev.code(),
        verb: ev.verb.as_ref().map(|v| interner.get(v.as_str())),
        user: ev.username().map(|u| interner.get(u)),
        host: view.host.map(|h| interner.get(h)),
        cluster: cluster.cloned().or_else(|| {
            view.log_group
                .and_then(cluster_from_log_group)
                .map(|c| interner.get(c))
        }),
    }
}

/// Most keys one event counts toward (sourceIPs fan-out); beyond it the event is counted for
/// the first entries and the last, and `fanout_capped` says so.
pub const MAX_FANOUT: usize = 16;

/// The keys an event counts toward: one value per `group_by` field, fanning out over lists
/// (`sourceIPs`). No key if any field is absent.
fn group_keys(
    rule: &Rule,
    facts: &EventFacts<'_, '_, '_>,
    capped: &mut bool,
) -> SmallVec<[Key; 1]> {
    let mut keys: SmallVec<[Vec<Box<str>>; 1]> = smallvec::smallvec![Vec::new()];
    for g in &rule.group_by {
        let all = facts.values(&g.field);
        let mut values: Vec<String> = if all.len() > MAX_FANOUT {
            // A list this long is forged (X-Forwarded-For is client-controlled): keep the
            // first entries and the last, the peer address the API server saw.
            *capped = true;
            all[..MAX_FANOUT - 1]
                .iter()
                .chain(all.last())
                .map(|v| v.to_key())
                .collect()
        } else {
            all.iter().map(|v| v.to_key()).collect()
        };
        values.sort_unstable();
        values.dedup();
        if values.is_empty() {
            return SmallVec::new();
        }
        if keys.len() * values.len() > MAX_FANOUT {
            *capped = true;
            values.truncate((MAX_FANOUT / keys.len()).max(1));
        }
        let mut next = SmallVec::with_capacity(keys.len() * values.len());
        for k in &keys {
            for v in &values {
                let mut k = k.clone();
                k.push(v.as_str().into());
                next.push(k);
            }
        }
        keys = next;
    }
    keys.into_iter().map(|k| Key::new(&k)).collect()
}

/// What a firing kind adds to the alert.
enum KindExtra {
    None,
    Distinct(u64),
    Spike { base: u64, ratio: Option<f64> },
}

/// Whether the key's window ending at `end` fires, and the alert if so.
fn evaluate(
    rule: &Rule,
    key: &Key,
    ks: &KeyState,
    end: Micros,
    sample_size: usize,
    first_time: Option<Micros>,
) -> Option<Alert> {
    let (first, n) = ks.window(end, rule.window);
    let count = n as u64;
    // Decide first: building an alert walks the window, and most evaluations do not fire.
    let extra = match &rule.kind {
        RuleKind::Threshold => (count >= rule.threshold).then_some(KindExtra::None),
        RuleKind::Distinct { .. } => {
            let covers_all = first == 0 && first + n == ks.entries.len();
            let distinct: u64 = match ks.kind.as_deref() {
                Some(KindState::Distinct(counts)) if covers_all => counts.len() as u64,
                _ => ks.distinct_in(first, n).len() as u64,
            };
            (distinct >= rule.threshold).then_some(KindExtra::Distinct(distinct))
        }
        RuleKind::Spike { baseline, ratio } => {
            let lo = end - rule.window - baseline;
            let hi = end - rule.window;
            // Without a whole baseline observed, a busy start would look like a rise.
            if count < rule.threshold || first_time.is_none_or(|f| f > lo) {
                return None;
            }
            let base = ks.baseline(lo, hi, bucket_width(*baseline));
            // Rates, so a 1-hour baseline compares with a 5-minute window.
            let expected = base as f64 * rule.window as f64 / *baseline as f64;
            ((n as f64) >= ratio * expected).then(|| KindExtra::Spike {
                base,
                ratio: (expected > 0.0).then(|| n as f64 / expected),
            })
        }
    }?;
    let mut alert = build_alert(
        rule,
        key,
        ks.entries.range(first..first + n),
        end,
        count,
        sample_size,
    );
    match extra {
        KindExtra::None => {}
        KindExtra::Distinct(distinct) => {
            alert.distinct_count = Some(distinct);
            alert.distinct_sample = Some(
                ks.distinct_in(first, n)
                    .into_iter()
                    .take(LIST_CAP)
                    .map(str::to_owned)
                    .collect(),
            );
        }
        KindExtra::Spike { base, ratio } => {
            alert.baseline_count = Some(base);
            alert.ratio = ratio;
        }
    }
    alert.kind = rule.kind.as_str();
    Some(alert)
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

fn build_alert<'a>(
    rule: &Rule,
    key: &Key,
    window: impl Iterator<Item = &'a Entry> + Clone,
    end: Micros,
    count: u64,
    sample_size: usize,
) -> Alert {
    let mut codes = BTreeMap::new();
    let mut verbs = BTreeMap::new();
    let mut hosts = BTreeSet::new();
    let mut users = BTreeSet::new();
    let mut samples = VecDeque::with_capacity(sample_size + 1);
    let mut cluster = None;
    for e in window {
        let i = &e.info;
        let code = i.code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        *codes.entry(code).or_insert(0) += 1;
        if let Some(v) = &i.verb {
            *verbs.entry(v.to_string()).or_insert(0) += 1;
        }
        if let Some(h) = &i.host {
            if hosts.len() < LIST_CAP || hosts.contains(h) {
                hosts.insert(h.clone());
            }
        }
        if let Some(u) = &i.user {
            if users.len() < LIST_CAP || users.contains(u) {
                users.insert(u.clone());
            }
        }
        if let Some(a) = &i.audit_id {
            samples.push_back(a.to_string());
            if samples.len() > sample_size {
                samples.pop_front();
            }
        }
        // The firing event is the last in the window: its cluster names the alert.
        cluster = i.cluster.clone();
    }
    let group = Group(
        rule.group_by
            .iter()
            .zip(key.values())
            .map(|(g, v)| (g.name.clone(), v.to_owned()))
            .collect(),
    );
    let mut id_parts: Vec<&[u8]> = vec![rule.id.as_bytes()];
    id_parts.extend(key.values().map(str::as_bytes));
    let end_bytes = end.to_be_bytes();
    id_parts.push(&end_bytes);
    Alert {
        rule: rule.id.clone(),
        severity: rule.severity,
        alert_id: stable_id(&id_parts),
        group,
        count,
        threshold: rule.threshold,
        window_seconds: rule.window / 1_000_000,
        window_start: end - rule.window,
        window_end: end,
        codes,
        sample_audit_ids: samples.into(),
        hosts: hosts.into_iter().map(|h| h.to_string()).collect(),
        users: users.into_iter().map(|u| u.to_string()).collect(),
        verbs,
        cluster: cluster.map(|c| c.to_string()),
        kind: "threshold",
        description: rule.description.clone(),
        distinct_count: None,
        distinct_sample: None,
        baseline_count: None,
        ratio: None,
        evicted_keys: None,
    }
}

/// Lists in alerts (hosts, users) carry at most this many values.
const LIST_CAP: usize = 10;
