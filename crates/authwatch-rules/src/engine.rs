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

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::net::Ipv6Addr;
use std::sync::Arc;

use authwatch_event::{cluster_from_log_group, EventView, Micros};
use serde::Serialize;
use smallvec::SmallVec;

use crate::alert::{stable_id, Alert, Group};
use crate::field::EventFacts;
use crate::rule::{Rule, RuleKind};

/// The engine's maps are keyed by text an attacker chooses (addresses, auditIDs): foldhash is
/// several times cheaper than SipHash and, seeded per process, still not predictable.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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

/// What an alert needs to know about one counted event; shared by every key it fans out to.
#[derive(Debug)]
struct HitInfo {
    audit_id: Option<AuditId>,
    code: Option<i64>,
    verb: Option<Arc<str>>,
    user: Option<Arc<str>>,
    host: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
}

/// An auditID as the engine keeps it, in 24 bytes. Kubernetes writes UUIDs (36 characters of
/// text): those in canonical form (lowercase, hyphenated) are kept as their 16 bytes, with no
/// allocation, and turn back into the same text; other ids up to [`INLINE_ID`] bytes are kept
/// inline, longer ones in one shared allocation. The same id always takes the same form, so
/// equality and hashing are those of the text, and [`Ord`] is the text's order (the bytes of a
/// canonical UUID compare like its lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AuditId {
    Uuid([u8; 16]),
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Text(Arc<str>),
}

/// Longest auditID kept inline when it is not a UUID.
const INLINE_ID: usize = 22;

impl AuditId {
    fn new(s: &str) -> AuditId {
        if let Some(b) = parse_uuid(s) {
            return AuditId::Uuid(b);
        }
        if s.len() <= INLINE_ID {
            let mut bytes = [0u8; INLINE_ID];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            return AuditId::Inline {
                len: s.len() as u8,
                bytes,
            };
        }
        AuditId::Text(Arc::from(s))
    }

    /// Calls `f` with the id's text (rendered on the stack for a UUID).
    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            AuditId::Uuid(b) => {
                let buf = render_uuid(b);
                f(std::str::from_utf8(&buf).unwrap_or_default())
            }
            AuditId::Inline { len, bytes } => f(std::str::from_utf8(
                bytes.get(..usize::from(*len)).unwrap_or_default(),
            )
            .unwrap_or_default()),
            AuditId::Text(t) => f(t),
        }
    }
}

impl Ord for AuditId {
    fn cmp(&self, o: &Self) -> Ordering {
        match (self, o) {
            (AuditId::Uuid(a), AuditId::Uuid(b)) => a.cmp(b),
            (AuditId::Text(a), AuditId::Text(b)) => a.cmp(b),
            _ => self.with_str(|a| o.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for AuditId {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Positions of the hyphens in a canonical UUID.
fn is_uuid_hyphen(i: usize) -> bool {
    matches!(i, 8 | 13 | 18 | 23)
}

/// The 16 bytes of a UUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex;
/// `None` for anything else (uppercase included: it would not render back the same).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if is_uuid_hyphen(i) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
        n += 1;
    }
    Some(out)
}

fn render_uuid(b: &[u8; 16]) -> [u8; 36] {
    let mut out = [b'-'; 36];
    let mut n = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if is_uuid_hyphen(i) {
            continue;
        }
        let byte = b[n / 2];
        let v = if n % 2 == 0 { byte >> 4 } else { byte & 15 };
        *slot = HEX[usize::from(v)];
        n += 1;
    }
    out
}

/// Longest encoded key kept inline in a [`Key`] (an IPv4 address encodes in at most 18).
const INLINE_KEY: usize = 22;

/// A key: the values of a rule's `group_by`. Each value is encoded as its length in bytes,
/// `:`, and the value, so no value can run into the next. Memory per key matters when an
/// attacker sprays addresses, so a key takes 24 bytes and, in the common cases, no allocation:
/// an encoding of up to [`INLINE_KEY`] bytes (any IPv4 address, short names) is stored inline,
/// one IPv6 address in canonical form as its 16 bytes, anything else in one shared allocation.
/// The same values always give the same variant, so the derived equality and hash are those
/// of the values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Ip6([u8; 16]),
    Heap(Arc<str>),
}

impl Key {
    fn new<S: AsRef<str>>(values: &[S]) -> Key {
        if let [v] = values {
            let v = v.as_ref();
            if v.contains(':') {
                if let Ok(ip) = v.parse::<Ipv6Addr>() {
                    // Only if it writes back the same: `::FFFF:1.2.3.4` stays text.
                    if ip.to_string() == v {
                        return Key::Ip6(ip.octets());
                    }
                }
            }
        }
        let mut s = String::with_capacity(values.iter().map(|v| v.as_ref().len() + 4).sum());
        for v in values {
            let v = v.as_ref();
            s.push_str(&v.len().to_string());
            s.push(':');
            s.push_str(v);
        }
        if s.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // `s.len() <= 22` fits in a u8.
            return Key::Inline {
                len: s.len() as u8,
                bytes,
            };
        }
        Key::Heap(Arc::from(s))
    }

    /// The encoding [`Key::new`] made of the values (what a multi-replica deployment routes
    /// by): the same values always give the same text, whichever variant holds it.
    fn encoded(&self) -> Cow<'_, str> {
        match self {
            Key::Inline { len, bytes } => Cow::Borrowed(
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            Key::Ip6(b) => {
                let text = Ipv6Addr::from(*b).to_string();
                Cow::Owned(format!("{}:{text}", text.len()))
            }
            Key::Heap(s) => Cow::Borrowed(s),
        }
    }

    /// The values, in `group_by` order.
    fn values(&self) -> Vec<String> {
        if let Key::Ip6(b) = self {
            return vec![Ipv6Addr::from(*b).to_string()];
        }
        let encoded = self.encoded();
        let mut rest: &str = &encoded;
        let mut out = Vec::new();
        while let Some((len, tail)) = rest.split_once(':') {
            let Some(value) = len.parse::<usize>().ok().and_then(|l| tail.get(..l)) else {
                break;
            };
            out.push(value.to_owned());
            rest = &tail[value.len()..];
        }
        out
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

/// Distinct values of one event (usually one); a thin pointer, to keep [`Entry`] small.
type Values = Arc<Box<[Box<str>]>>;

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

/// One counted event in a key's window: 24 bytes.
#[derive(Debug, Clone)]
struct Entry {
    time: Micros,
    info: Arc<HitInfo>,
    distinct: Option<Values>,
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
enum Window {
    Empty,
    One(Entry),
    Many(VecDeque<Entry>),
}

impl Window {
    fn len(&self) -> usize {
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

    fn back(&self) -> Option<&Entry> {
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
    fn range(&self, first: usize, n: usize) -> impl Iterator<Item = &Entry> + Clone {
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
    entries: Window,
    /// No alert for this key before this event time (`Micros::MIN`: not cooling).
    cooling_until: Micros,
    kind: Option<Box<KindState>>,
}

impl KeyState {
    fn new(kind: &RuleKind) -> KeyState {
        KeyState {
            entries: Window::Empty,
            cooling_until: Micros::MIN,
            kind: match kind {
                RuleKind::Threshold => None,
                RuleKind::Distinct { .. } => {
                    Some(Box::new(KindState::Distinct(HashMap::default())))
                }
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
        t < self.cooling_until
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
            .range(first, n)
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
/// An entry is 40 bytes (a UUID id inline); ids are forgotten by a sweep of the map.
#[derive(Debug, Default)]
struct SeenIds {
    /// id → (time first counted, bits of the first 64 rules that counted it).
    map: HashMap<AuditId, (Micros, u64)>,
    /// Rules past the 64th (rare), one entry per (id, rule).
    more: HashMap<(AuditId, usize), Micros>,
    last_sweep: Option<Micros>,
}

impl SeenIds {
    /// Records that `rule` counted `id` (at `time`); false if it already had.
    fn first_for(&mut self, id: &AuditId, rule: usize, time: Micros) -> bool {
        let entry = match self.map.get_mut(id) {
            Some(e) => e,
            None => self.map.entry(id.clone()).or_insert((time, 0)),
        };
        if rule < 64 {
            let bit = 1u64 << rule;
            let fresh = entry.1 & bit == 0;
            entry.1 |= bit;
            return fresh;
        }
        self.more.insert((id.clone(), rule), time).is_none()
    }

    /// Forgets ids first counted at or before `before`. A whole pass over the map, but the
    /// engine sweeps at most every eighth of the longest window, so each id is visited a
    /// bounded number of times.
    fn forget(&mut self, before: Micros) {
        self.map.retain(|_, (first, _)| *first > before);
        if !self.more.is_empty() {
            self.more.retain(|_, t| *t > before);
        }
    }
}

/// No slot (the end of the recency list).
const NIL: u32 = u32::MAX;

/// One key's slot in [`Keys`].
#[derive(Debug)]
struct Slot {
    key: Key,
    /// Neighbours in the recency list (least recently counted first), or [`NIL`].
    prev: u32,
    next: u32,
    state: KeyState,
}

/// A rule's keys: their states in a slab, found through a hash table of slab indexes (4 bytes
/// a bucket instead of a whole entry: at a million keys the table is half empty), and a
/// doubly linked recency list through the slots for least-recently-counted eviction in O(1).
#[derive(Debug)]
struct Keys {
    table: hashbrown::HashTable<u32>,
    slots: Vec<Option<Slot>>,
    /// Empty slots to reuse.
    free: Vec<u32>,
    /// Least and most recently counted key.
    head: u32,
    tail: u32,
    hasher: foldhash::fast::RandomState,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            table: hashbrown::HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Keys {
    /// Most keys a rule can hold: slab indexes are `u32` ([`NIL`] excluded).
    const MAX: usize = (u32::MAX - 1) as usize;

    fn len(&self) -> usize {
        self.table.len()
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    fn find(&self, key: &Key) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.table
            .find(h, |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.key == *key)
            })
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let Some((prev, next)) = self.slot(i).map(|s| (s.prev, s.next)) else {
            return;
        };
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_last(&mut self, i: u32) {
        let tail = self.tail;
        if let Some(s) = self.slot_mut(i) {
            s.prev = tail;
            s.next = NIL;
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = i,
            None => self.head = i,
        }
        self.tail = i;
    }

    /// Marks the key most recently counted.
    fn touch(&mut self, i: u32) {
        if self.tail != i {
            self.unlink(i);
            self.link_last(i);
        }
    }

    /// Adds a key (most recently counted); its index.
    fn insert(&mut self, key: Key, state: KeyState) -> u32 {
        let h = self.hasher.hash_one(&key);
        let slot = Slot {
            key,
            prev: NIL,
            next: NIL,
            state,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(h, i, |&j| {
            slots
                .get(j as usize)
                .and_then(Option::as_ref)
                .map_or(0, |s| hasher.hash_one(&s.key))
        });
        self.link_last(i);
        i
    }

    fn remove(&mut self, i: u32) {
        let Some(h) = self.slot(i).map(|s| self.hasher.hash_one(&s.key)) else {
            return;
        };
        self.unlink(i);
        if let Ok(e) = self.table.find_entry(h, |&j| j == i) {
            e.remove();
        }
        self.slots[i as usize] = None;
        self.free.push(i);
    }

    /// Removes the least recently counted key; false if there is none.
    fn evict_lru(&mut self) -> bool {
        let head = self.head;
        if self.slot(head).is_none() {
            return false;
        }
        self.remove(head);
        true
    }

    /// Keeps the keys for which `keep` is true; then gives memory back when most of the slab
    /// is empty (after a spray's keys expire).
    fn retain(&mut self, mut keep: impl FnMut(&mut KeyState) -> bool) {
        for i in 0..self.slots.len() as u32 {
            let drop = self.slot_mut(i).is_some_and(|s| !keep(&mut s.state));
            if drop {
                self.remove(i);
            }
        }
        if self.slots.len() > 1024 && self.len() < self.slots.len() / 4 {
            self.compact();
        }
    }

    /// Rebuilds the slab with only the live keys, in recency order.
    fn compact(&mut self) {
        let mut live = Vec::with_capacity(self.len());
        let mut i = self.head;
        while let Some(slot) = self.slots.get_mut(i as usize).and_then(Option::take) {
            i = slot.next;
            live.push(slot);
        }
        *self = Keys {
            hasher: std::mem::take(&mut self.hasher),
            ..Keys::default()
        };
        self.slots.reserve_exact(live.len());
        for slot in live {
            self.insert(slot.key, slot.state);
        }
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
    pub fn partitions(&self) -> impl Iterator<Item = (usize, Cow<'_, str>)> {
        self.hits
            .iter()
            .flat_map(|h| h.keys.iter().map(move |k| (h.rule, k.encoded())))
    }

    /// Keeps only the count toward `(rule, key)` (see [`Prepared::partitions`]); the other
    /// pairs are counted by whoever owns them. `false` when the event does not count toward
    /// that pair (nothing left to count).
    pub fn retain_partition(&mut self, rule: usize, key: &str) -> bool {
        self.hits.retain(|h| h.rule == rule);
        for h in &mut self.hits {
            h.keys.retain(|k| k.encoded() == key);
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
                    Some(Values::new(values.into_boxed_slice()))
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

fn hit_info(
    view: &EventView<'_, '_>,
    cluster: Option<&Arc<str>>,
    interner: &mut Interner,
) -> HitInfo {
    let ev = view.event;
    HitInfo {
        audit_id: ev.audit_id.as_ref().map(|a| AuditId::new(a.as_str())),
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
        ks.entries.range(first, n),
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
    let values = key.values();
    let mut id_parts: Vec<&[u8]> = vec![rule.id.as_bytes()];
    id_parts.extend(values.iter().map(|v| v.as_bytes()));
    let end_bytes = end.to_be_bytes();
    id_parts.push(&end_bytes);
    let alert_id = stable_id(&id_parts);
    let group = Group(
        rule.group_by
            .iter()
            .zip(values)
            .map(|(g, v)| (g.name.clone(), v))
            .collect(),
    );
    Alert {
        rule: rule.id.clone(),
        severity: rule.severity,
        alert_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_are_kept_as_bytes_and_render_back_the_same() {
        let s = "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1b";
        let id = AuditId::new(s);
        assert!(matches!(id, AuditId::Uuid(_)));
        assert_eq!(id.to_string(), s);
        for other in [
            "0F8E7D6C-5B4A-4939-8271-605F4E3D2C1B-and-some-more",
            "0F8E7D6C-5B4A-4939-8271-605F4E3D2C1B",
            "0f8e7d6c5b4a49398271605f4e3d2c1b",
            "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1",
            "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1g",
            "",
        ] {
            let id = AuditId::new(other);
            assert!(!matches!(id, AuditId::Uuid(_)), "{other}");
            assert_eq!(id.to_string(), other);
        }
    }

    #[test]
    fn audit_ids_order_like_their_text() {
        let texts = [
            "00000000-0000-4000-8000-000000000000",
            "0000000a-0000-4000-8000-000000000000",
            "00000009-0000-4000-8000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "0000000A-0000-4000-8000-000000000000",
            "a",
            "0",
            "00000000-0000-4000-8000-00000000000",
            "00000000-0000-4000-8000-0000000000000",
            "g",
            "s-1",
            "s-10",
            "s-9",
            "a-rather-long-audit-id-that-is-not-a-uuid",
            "a-rather-long-audit-id-that-is-not-a-uuie",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(AuditId::new(a).cmp(&AuditId::new(b)), a.cmp(b), "{a} {b}");
                assert_eq!(AuditId::new(a) == AuditId::new(b), a == b, "{a} {b}");
            }
        }
    }

    #[test]
    fn keys_give_back_their_values_whatever_their_form() {
        let cases: &[&[&str]] = &[
            &["198.51.100.7"],
            &["255.255.255.255"],
            &["2001:db8::1"],
            &["::ffff:1.2.3.4"],
            &["2001:DB8::1"],
            &["2001:0db8::1"],
            &["system:serviceaccount:kube-system:a-rather-long-name"],
            &["alice", "api-1"],
            &["", ":"],
            &["1:2", "3"],
        ];
        for values in cases {
            let key = Key::new(values);
            assert_eq!(key.values(), values.to_vec(), "{key:?}");
        }
        assert!(matches!(Key::new(&["2001:db8::1"]), Key::Ip6(_)));
        assert!(matches!(
            Key::new(&["2001:DB8::1"]),
            Key::Heap(_) | Key::Inline { .. }
        ));
        assert!(matches!(Key::new(&["255.255.255.255"]), Key::Inline { .. }));
        assert_ne!(Key::new(&["1:2", "3"]), Key::new(&["1", "2:3"]));
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<AuditId>(), 24);
    }

    #[test]
    fn keys_evict_least_recently_counted_and_give_memory_back() {
        let mut keys = Keys::default();
        let kind = RuleKind::Threshold;
        let ids: Vec<u32> = (0..3000)
            .map(|i| keys.insert(Key::new(&[i.to_string()]), KeyState::new(&kind)))
            .collect();
        keys.touch(ids[0]);
        assert!(keys.evict_lru());
        assert_eq!(keys.find(&Key::new(&["1"])), None);
        assert_eq!(keys.find(&Key::new(&["0"])), Some(ids[0]));
        let mut n = 0;
        keys.retain(|_| {
            n += 1;
            n % 10 == 0
        });
        assert_eq!(keys.len(), 299);
        assert!(keys.slots.len() < 1000);
        // Recency order survives compaction (the keys were counted in numeric order).
        let mut order = Vec::new();
        while let Some(k) = keys.slot(keys.head).map(|s| s.key.values()) {
            order.extend(k.iter().filter_map(|v| v.parse::<u32>().ok()));
            keys.evict_lru();
        }
        assert_eq!(order.len(), 299);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(keys.len(), 0);
    }
}
