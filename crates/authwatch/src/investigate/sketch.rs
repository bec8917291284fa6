//! Bounded-memory counting: per-bucket series, distinct-value sketches, and the Space-Saving
//! heavy-hitters table that keeps exact counts up to a limit of distinct values.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

use authwatch_event::Micros;

/// A 64-bit hash, the same on every run of one build (`DefaultHasher::new` has fixed keys).
pub fn hash64(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// HyperLogLog with 2^P registers.
#[derive(Debug, Clone)]
pub struct Hll<const M: usize> {
    regs: Box<[u8; M]>,
}

impl<const M: usize> Default for Hll<M> {
    fn default() -> Self {
        Hll {
            regs: Box::new([0u8; M]),
        }
    }
}

impl<const M: usize> Hll<M> {
    const P: u32 = M.trailing_zeros();

    /// Adds a hashed value.
    pub fn add(&mut self, h: u64) {
        let idx = (h >> (64 - Self::P)) as usize;
        let rest = (h << Self::P) | (1u64 << (Self::P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if let Some(r) = self.regs.get_mut(idx) {
            if rank > *r {
                *r = rank;
            }
        }
    }

    /// The estimated number of distinct values (with the small-range correction).
    pub fn estimate(&self) -> u64 {
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in self.regs.iter() {
            sum += 2f64.powi(-i32::from(r));
            if r == 0 {
                zeros += 1;
            }
        }
        let raw = alpha * m * m / sum;
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }

    /// The relative standard error, 1.04/√m.
    pub fn std_error() -> f64 {
        1.04 / (M as f64).sqrt()
    }
}

/// Counterpart registers: 1024 (±3.3 % standard error).
pub type SmallHll = Hll<1024>;
/// Distinct values of a whole dimension: 16384 registers (±0.8 %).
pub type BigHll = Hll<16384>;

/// Up to this many distinct counterparts are kept exactly (with their counts).
pub const COUNTERPART_EXACT: usize = 16;

/// Distinct counterparts of one value (users of an address...): exact up to
/// [`COUNTERPART_EXACT`], then a HyperLogLog; the first values are kept as examples.
#[derive(Debug, Clone, Default)]
pub struct Counterparts {
    /// The first distinct values and how often each was seen.
    pub examples: Vec<(Box<str>, u64)>,
    /// Set once more than [`COUNTERPART_EXACT`] distinct values were seen.
    pub hll: Option<Box<SmallHll>>,
}

impl Counterparts {
    /// Adds one counterpart value.
    pub fn add(&mut self, v: &str) {
        if let Some(e) = self.examples.iter_mut().find(|(k, _)| &**k == v) {
            e.1 += 1;
            return;
        }
        if self.hll.is_none() && self.examples.len() < COUNTERPART_EXACT {
            self.examples.push((v.into(), 1));
            return;
        }
        let hll = self.hll.get_or_insert_with(|| {
            let mut h = Box::<SmallHll>::default();
            for (k, _) in &self.examples {
                h.add(hash64(k));
            }
            h
        });
        hll.add(hash64(v));
    }

    /// Distinct values: exact, or the sketch's estimate (never below the examples kept).
    pub fn distinct(&self) -> u64 {
        match &self.hll {
            None => self.examples.len() as u64,
            Some(h) => h.estimate().max(self.examples.len() as u64 + 1),
        }
    }

    /// Whether [`Counterparts::distinct`] is exact.
    pub fn exact(&self) -> bool {
        self.hll.is_none()
    }
}

/// Event counts per time slot of a resolution set by the owner, sparse.
#[derive(Debug, Clone, Default)]
pub struct Series {
    slots: Vec<(i64, u32)>,
}

impl Series {
    /// Counts one event at time `t` (slots of `res` microseconds).
    pub fn add(&mut self, t: Micros, res: Micros) {
        let i = t.div_euclid(res);
        if let Some(last) = self.slots.last_mut() {
            if last.0 == i && last.1 < u32::MAX {
                last.1 += 1;
                return;
            }
        }
        self.slots.push((i, 1));
        let n = self.slots.len();
        if n >= 64 && n.is_power_of_two() {
            self.coarsen(1);
        }
    }

    /// Divides slot indexes by `factor` (the resolution grew by that factor) and merges.
    pub fn coarsen(&mut self, factor: i64) {
        for s in &mut self.slots {
            s.0 = s.0.div_euclid(factor);
        }
        self.slots.sort_unstable_by_key(|s| s.0);
        let mut out: Vec<(i64, u32)> = Vec::with_capacity(self.slots.len());
        for &(i, c) in &self.slots {
            match out.last_mut() {
                Some(last) if last.0 == i => last.1 = last.1.saturating_add(c),
                _ => out.push((i, c)),
            }
        }
        self.slots = out;
    }

    /// Counts per output bucket: `n` buckets of `per` slots from slot `first`.
    pub fn bins(&self, first: i64, per: i64, n: usize) -> Vec<u64> {
        let mut out = vec![0u64; n];
        for &(i, c) in &self.slots {
            let b = (i - first).div_euclid(per.max(1));
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| out.get_mut(b)) {
                *slot += u64::from(c);
            }
        }
        out
    }
}

/// One tracked value of a dimension.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The value.
    pub key: Box<str>,
    /// Events counted (an overestimate by at most `error` once values were evicted).
    pub count: u64,
    /// Space-Saving error: the count it inherited when it replaced an evicted value.
    pub error: u64,
    /// First event time seen while tracked.
    pub first: Micros,
    /// Last event time seen while tracked.
    pub last: Micros,
    /// Counts per time slot (only events seen while tracked).
    pub series: Series,
    /// Distinct counterparts.
    pub counterparts: Counterparts,
}

/// A dimension's values: exact counts for up to `limit` distinct values, then Space-Saving
/// (the new value replaces the one with the smallest count and inherits that count as its
/// error bound). Memory is bounded by `limit` entries.
#[derive(Debug)]
pub struct Table {
    entries: Vec<Entry>,
    index: HashMap<Box<str>, u32>,
    limit: usize,
    heap: Option<BinaryHeap<Reverse<(u64, u32)>>>,
    /// Events counted in this dimension (each value of a fanned-out field counts).
    pub total: u64,
    /// Values replaced since the table filled.
    pub evictions: u64,
    /// Distinct values, estimated (used once values were evicted).
    pub distinct: BigHll,
}

impl Table {
    /// A table keeping at most `limit` values.
    pub fn new(limit: usize) -> Table {
        Table {
            entries: Vec::new(),
            index: HashMap::new(),
            limit: limit.max(1),
            heap: None,
            total: 0,
            evictions: 0,
            distinct: BigHll::default(),
        }
    }

    /// Counts `key` at `t`; returns its entry (to add counterparts to).
    pub fn add(&mut self, key: &str, t: Micros, res: Micros) -> &mut Entry {
        self.total += 1;
        self.distinct.add(hash64(key));
        let i = match self.index.get(key) {
            Some(&i) => i as usize,
            None if self.entries.len() < self.limit => {
                self.entries.push(Entry {
                    key: key.into(),
                    count: 0,
                    error: 0,
                    first: t,
                    last: t,
                    series: Series::default(),
                    counterparts: Counterparts::default(),
                });
                let i = self.entries.len() - 1;
                self.index.insert(key.into(), i as u32);
                i
            }
            None => self.replace_min(key, t),
        };
        let e = &mut self.entries[i];
        e.count += 1;
        e.first = e.first.min(t);
        e.last = e.last.max(t);
        e.series.add(t, res);
        e
    }

    fn replace_min(&mut self, key: &str, t: Micros) -> usize {
        let entries = &self.entries;
        let heap = self.heap.get_or_insert_with(|| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| Reverse((e.count, i as u32)))
                .collect()
        });
        // Lazy heap: a stored count below the entry's current one is stale; re-push it.
        // The first fresh top is a true minimum (stored counts never exceed current ones).
        let victim = loop {
            let Some(Reverse((c, i))) = heap.pop() else {
                break 0usize;
            };
            let cur = self.entries[i as usize].count;
            if cur == c {
                break i as usize;
            }
            heap.push(Reverse((cur, i)));
        };
        self.evictions += 1;
        let min = self.entries[victim].count;
        self.index.remove(&self.entries[victim].key);
        self.entries[victim] = Entry {
            key: key.into(),
            count: min,
            error: min,
            first: t,
            last: t,
            series: Series::default(),
            counterparts: Counterparts::default(),
        };
        self.index.insert(key.into(), victim as u32);
        // Pushed with the count after this event's increment.
        heap.push(Reverse((min + 1, victim as u32)));
        victim
    }

    /// The tracked values.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Coarsens every series by `factor`.
    pub fn coarsen(&mut self, factor: i64) {
        for e in &mut self.entries {
            e.series.coarsen(factor);
        }
    }

    /// Whether every count is exact (no value was ever evicted).
    pub fn exact(&self) -> bool {
        self.evictions == 0
    }

    /// Distinct values: exact while nothing was evicted, else the sketch's estimate.
    pub fn distinct_values(&self) -> u64 {
        if self.exact() {
            self.entries.len() as u64
        } else {
            self.distinct.estimate().max(self.entries.len() as u64)
        }
    }

    /// The largest error of any count (≤ total / limit).
    pub fn max_error(&self) -> u64 {
        self.entries.iter().map(|e| e.error).max().unwrap_or(0)
    }

    /// The limit of tracked values.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_the_limit_and_bounded_above_it() {
        let mut t = Table::new(4);
        for (k, n) in [("a", 50u64), ("b", 30), ("c", 5), ("d", 3)] {
            for _ in 0..n {
                t.add(k, 0, 1_000_000);
            }
        }
        assert!(t.exact());
        for i in 0..40 {
            t.add(&format!("x{i}"), 0, 1_000_000);
        }
        assert!(!t.exact());
        let total = t.total;
        let bound = total / 4;
        let a = t.entries().iter().find(|e| &*e.key == "a").unwrap();
        assert_eq!(a.count, 50);
        let b = t.entries().iter().find(|e| &*e.key == "b").unwrap();
        assert_eq!(b.count, 30);
        assert!(t.max_error() <= bound, "{} > {bound}", t.max_error());
        // Space-Saving never underestimates and counts sum to the total.
        let sum: u64 = t.entries().iter().map(|e| e.count).sum();
        assert_eq!(sum, total);
    }

    #[test]
    fn hll_is_within_a_few_percent() {
        let mut h = BigHll::default();
        for i in 0..200_000u32 {
            h.add(hash64(&format!(
                "10.{}.{}.{}",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )));
        }
        let e = h.estimate() as f64;
        assert!((e - 200_000.0).abs() / 200_000.0 < 0.03, "{e}");
        let mut s = SmallHll::default();
        for i in 0..50u32 {
            s.add(hash64(&i.to_string()));
        }
        assert!((s.estimate() as i64 - 50).abs() <= 2, "{}", s.estimate());
    }

    #[test]
    fn series_coarsen_merges() {
        let mut s = Series::default();
        for t in 0..200 {
            s.add(t * 1_000_000, 1_000_000);
        }
        s.coarsen(10);
        assert_eq!(s.bins(0, 1, 20), vec![10; 20]);
        assert_eq!(s.bins(0, 5, 4), vec![50; 4]);
    }
}
