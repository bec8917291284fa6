//! A key's sliding window: its counted events ([`Entry`]) sorted by (time, auditID) in a
//! [`Window`] that keeps a lone event inline, and [`KeyState`], what a rule keeps per key (the
//! window, the cooldown, and the distinct-value counts or spike buckets of its kind). Moved
//! out of engine.rs (issue #19).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use authwatch_event::Micros;

use crate::audit_id::AuditId;
use crate::hit::HitInfo;
use crate::rule::RuleKind;
use crate::HashMap;

/// Distinct values of one event (usually one); a thin pointer, to keep [`Entry`] small.
pub(crate) type Values = Arc<Box<[Box<str>]>>;

/// One counted event in a key's window: 24 bytes.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) time: Micros,
    pub(crate) info: Arc<HitInfo>,
    pub(crate) distinct: Option<Values>,
}

impl Entry {
    fn order_key(&self) -> (Micros, Option<&AuditId>) {
        (self.time, self.info.audit_id.as_ref())
    }
}

/// A key's counted events, sorted by (time, auditID). Most keys of an address spray see one
/// event: it is kept inline, with no allocation (32 bytes a key instead of 32 plus a 32-byte
/// allocation); a second moves them into a `VecDeque`.
#[derive(Debug)]
pub(crate) enum Window {
    Empty,
    One(Entry),
    Many(VecDeque<Entry>),
}

impl Window {
    pub(crate) fn len(&self) -> usize {
        match self {
            Window::Empty => 0,
            Window::One(_) => 1,
            Window::Many(d) => d.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn front(&self) -> Option<&Entry> {
        match self {
            Window::Empty => None,
            Window::One(e) => Some(e),
            Window::Many(d) => d.front(),
        }
    }

    pub(crate) fn back(&self) -> Option<&Entry> {
        match self {
            Window::Empty => None,
            Window::One(e) => Some(e),
            Window::Many(d) => d.back(),
        }
    }

    fn partition_point(&self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
        match self {
            Window::Empty => 0,
            Window::One(e) => usize::from(pred(e)),
            Window::Many(d) => d.partition_point(pred),
        }
    }

    fn insert(&mut self, pos: usize, entry: Entry) {
        *self = match std::mem::replace(self, Window::Empty) {
            Window::Empty => Window::One(entry),
            Window::One(first) => {
                let mut d = VecDeque::with_capacity(2);
                d.push_back(first);
                d.insert(pos.min(1), entry);
                Window::Many(d)
            }
            Window::Many(mut d) => {
                d.insert(pos, entry);
                Window::Many(d)
            }
        };
    }

    fn pop_front(&mut self) -> Option<Entry> {
        match self {
            Window::Empty => None,
            Window::One(_) => match std::mem::replace(self, Window::Empty) {
                Window::One(e) => Some(e),
                _ => None,
            },
            Window::Many(d) => d.pop_front(),
        }
    }

    /// The `n` entries from index `first`.
    pub(crate) fn range(&self, first: usize, n: usize) -> impl Iterator<Item = &Entry> + Clone {
        let (a, b): (&[Entry], &[Entry]) = match self {
            Window::Empty => (&[], &[]),
            Window::One(e) => (std::slice::from_ref(e), &[]),
            Window::Many(d) => d.as_slices(),
        };
        a.iter().chain(b).skip(first).take(n)
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.range(0, self.len())
    }
}

/// What a kind keeps per key beyond the window's entries.
#[derive(Debug)]
pub(crate) enum KindState {
    /// `distinct`: how many entries carry each value.
    Distinct(HashMap<Box<str>, u32>),
    /// `spike`: counts of entries that left the window, in buckets of `baseline / 60`, by
    /// bucket start.
    Spike(VecDeque<(Micros, u64)>),
}

#[derive(Debug)]
pub(crate) struct KeyState {
    /// Counted events in the window, sorted by (time, auditID).
    pub(crate) entries: Window,
    /// No alert for this key before this event time (`Micros::MIN`: not cooling).
    pub(crate) cooling_until: Micros,
    pub(crate) kind: Option<Box<KindState>>,
}

impl KeyState {
    pub(crate) fn new(kind: &RuleKind) -> KeyState {
        KeyState {
            entries: Window::Empty,
            cooling_until: Micros::MIN,
            kind: match kind {
                RuleKind::Threshold | RuleKind::Absence(_) => None,
                RuleKind::Distinct { .. } => {
                    Some(Box::new(KindState::Distinct(HashMap::default())))
                }
                RuleKind::Spike { .. } => Some(Box::new(KindState::Spike(VecDeque::new()))),
            },
        }
    }

    /// Index of the first entry with time in `(end − window, end]`, and how many there are.
    pub(crate) fn window(&self, end: Micros, window: Micros) -> (usize, usize) {
        let first = self.entries.partition_point(|e| e.time <= end - window);
        let last = self.entries.partition_point(|e| e.time <= end);
        (first, last.saturating_sub(first))
    }

    pub(crate) fn cooling_at(&self, t: Micros) -> bool {
        t < self.cooling_until
    }

    pub(crate) fn insert(&mut self, entry: Entry) {
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
    pub(crate) fn prune(&mut self, horizon: Micros, kind: &RuleKind) {
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

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && !matches!(self.kind.as_deref(), Some(KindState::Spike(b)) if !b.is_empty())
    }

    /// Distinct values among the window's entries.
    pub(crate) fn distinct_in(&self, first: usize, n: usize) -> BTreeSet<&str> {
        self.entries
            .range(first, n)
            .flat_map(|e| e.distinct.iter().flat_map(|v| v.iter()))
            .map(|v| &**v)
            .collect()
    }

    /// Counted events in `(lo, hi]` that have left the window (spike baseline). Buckets that
    /// straddle `lo` are left out: a reported count is never above the true count.
    pub(crate) fn baseline(&self, lo: Micros, hi: Micros, width: Micros) -> u64 {
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
pub(crate) fn bucket_width(baseline: Micros) -> Micros {
    (baseline / 60).max(1)
}
