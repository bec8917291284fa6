//! One pass of aggregation: the selected events by dimension and over time, in bounded memory,
//! and the [`Report`] every output format is rendered from.

use std::collections::{BTreeMap, HashMap, VecDeque};

use authwatch_event::time::format_millis;
use authwatch_event::{EventView, Micros};
use authwatch_rules::Alert;
use serde::Serialize;

use super::sketch::{hash64, BigHll, Series, Table};

const SEC: Micros = 1_000_000;

/// Slot widths (seconds): each divides the next, so slots re-bin exactly into any coarser one.
pub const LADDER: [i64; 13] = [
    1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400,
];

/// Series are kept at the finest ladder step with at most this many slots over the span.
const MAX_SLOTS: i64 = 4096;

/// The automatic bucket is the smallest ladder step giving at most this many buckets.
const TARGET_BUCKETS: i64 = 48;

/// A fixed `--bucket` is widened to a multiple of itself beyond this many buckets.
const MAX_BUCKETS: i64 = 10_000;

/// A request logged twice (stages, overlapping exports) counts once if its copies are at
/// most this far apart in event time (shortened when more than [`DEDUP_CAP`] IDs fall in it).
pub const DEDUP_HORIZON: Micros = 3600 * SEC;

/// At most this many auditIDs are remembered for de-duplication (about 40 MB).
pub const DEDUP_CAP: usize = 1 << 20;

/// `sourceIPs` longer than this count toward the first entries and the last (as the engine).
const MAX_FANOUT: usize = 16;

/// What events are broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// `host` (the API server: the record's host, else the log stream).
    Host,
    /// Each address of `sourceIPs`.
    SourceIp,
    /// `user.username`.
    User,
    /// `userAgent`.
    UserAgent,
    /// `verb` and `objectRef.resource[/subresource]` (or the request path).
    VerbResource,
    /// `responseStatus.code`.
    Code,
    /// The IAM principal behind the user on EKS (`user.extra.canonicalArn`, else
    /// `user.extra.arn`): the role to look up in CloudTrail.
    IamPrincipal,
}

/// Every dimension, in output order.
pub const DIMS: [Dim; 7] = [
    Dim::Host,
    Dim::SourceIp,
    Dim::User,
    Dim::UserAgent,
    Dim::VerbResource,
    Dim::Code,
    Dim::IamPrincipal,
];

impl Dim {
    /// The name used in every output and in `--key`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Host => "host",
            Dim::SourceIp => "sourceIPs",
            Dim::User => "user.username",
            Dim::UserAgent => "userAgent",
            Dim::VerbResource => "verb+resource",
            Dim::Code => "responseStatus.code",
            Dim::IamPrincipal => "user.extra.canonicalArn",
        }
    }

    /// Whose distinct values are counted per value of this dimension.
    pub fn counterpart(self) -> Dim {
        match self {
            Dim::SourceIp | Dim::VerbResource | Dim::IamPrincipal => Dim::User,
            _ => Dim::SourceIp,
        }
    }

    /// What the counterpart column is called.
    pub fn counterpart_label(self) -> &'static str {
        match self.counterpart() {
            Dim::User => "users",
            _ => "addresses",
        }
    }
}

/// The values of every dimension for one event (sourceIPs may have several).
pub fn dim_values(view: &EventView<'_, '_>) -> [Vec<String>; 7] {
    let ev = view.event;
    let one = |s: Option<&str>| s.map(str::to_owned).into_iter().collect::<Vec<_>>();
    let mut ips: Vec<String> = Vec::new();
    let n = ev.source_ips.len();
    for (i, ip) in ev.source_ips.iter().enumerate() {
        if n > MAX_FANOUT && i >= MAX_FANOUT - 1 && i != n - 1 {
            continue;
        }
        if !ips.iter().any(|x| x == ip.as_str()) {
            ips.push(ip.as_str().to_owned());
        }
    }
    let verb = ev.verb.as_ref().map_or("-", |v| v.as_str());
    let what = match ev.object_ref.as_ref().and_then(|o| {
        o.resource.as_ref().map(|r| match &o.subresource {
            Some(s) => format!("{}/{}", r.as_str(), s.as_str()),
            None => r.as_str().to_owned(),
        })
    }) {
        Some(r) => Some(r),
        None => ev
            .request_uri
            .as_ref()
            .map(|u| u.as_str().split('?').next().unwrap_or("").to_owned()),
    };
    let vr = match what {
        Some(w) => vec![format!("{verb} {w}")],
        None if ev.verb.is_some() => vec![verb.to_owned()],
        None => Vec::new(),
    };
    [
        one(view.host),
        ips,
        one(ev.user.username.as_ref().map(|u| u.as_str())),
        one(ev.user_agent.as_ref().map(|u| u.as_str())),
        vr,
        ev.code().map(|c| c.to_string()).into_iter().collect(),
        ev.iam_principal().into_iter().collect(),
    ]
}

/// What the aggregation takes from one selected event: owned, so that it can be taken on a
/// decoding thread and counted, in input order, on another.
#[derive(Debug, Clone)]
pub struct Observation {
    t: Micros,
    audit_id: Option<String>,
    code: Option<i64>,
    values: [Vec<String>; 7],
}

impl Observation {
    /// What [`Aggregator::add`] counts of `view` at time `t`.
    pub fn of(view: &EventView<'_, '_>, t: Micros) -> Observation {
        Observation {
            t,
            audit_id: view
                .event
                .audit_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            code: view.event.code(),
            values: dim_values(view),
        }
    }
}

/// The aggregation state of one pass.
#[derive(Debug)]
pub struct Aggregator {
    tables: Vec<Table>,
    missing: [u64; 7],
    /// Slot width in microseconds.
    res: Micros,
    fixed_bucket: Option<Micros>,
    min_t: Option<Micros>,
    max_t: Option<Micros>,
    total: Series,
    by_code: BTreeMap<i64, Series>,
    codes: BTreeMap<String, u64>,
    events: u64,
    duplicates: u64,
    seen: HashMap<u64, Micros>,
    prune_at: usize,
    dedup_horizon: Micros,
    first_ids: Vec<String>,
    last_ids: VecDeque<String>,
    all_addresses: BigHll,
}

/// How many audit IDs are kept from the start and the end of the span.
const SAMPLE_IDS: usize = 5;

impl Aggregator {
    /// Exact counts for up to `exact_limit` values per dimension; `bucket` fixes the bucket
    /// width (else it is chosen from the span).
    pub fn new(exact_limit: usize, bucket: Option<Micros>) -> Aggregator {
        Aggregator {
            tables: DIMS.iter().map(|_| Table::new(exact_limit)).collect(),
            missing: [0; 7],
            res: bucket.unwrap_or(SEC),
            fixed_bucket: bucket,
            min_t: None,
            max_t: None,
            total: Series::default(),
            by_code: BTreeMap::new(),
            codes: BTreeMap::new(),
            events: 0,
            duplicates: 0,
            seen: HashMap::new(),
            prune_at: 1 << 16,
            dedup_horizon: DEDUP_HORIZON,
            first_ids: Vec::new(),
            last_ids: VecDeque::new(),
            all_addresses: BigHll::default(),
        }
    }

    /// Counts one selected event, as [`Observation::of`] took it (on a decoding thread,
    /// maybe: given the same observations in the same order, the counts are the same). A
    /// second copy of an auditID (within [`DEDUP_HORIZON`]) is only counted as a duplicate.
    pub fn add(&mut self, obs: Observation) {
        let t = obs.t;
        if let Some(id) = obs.audit_id {
            let h = hash64(&id);
            if self.seen.insert(h, t).is_some() {
                self.duplicates += 1;
                return;
            }
            if self.seen.len() >= self.prune_at {
                // Forget IDs older than the horizon; if that is not enough to stay under the
                // cap, shorten the horizon (and say so in the report).
                let now = self.max_t.unwrap_or(t).max(t);
                loop {
                    let h = self.dedup_horizon;
                    self.seen.retain(|_, seen| *seen >= now - h);
                    if self.seen.len() <= DEDUP_CAP / 2 || h <= SEC {
                        break;
                    }
                    self.dedup_horizon = h / 2;
                }
                self.prune_at = (self.seen.len() * 2).clamp(1 << 16, DEDUP_CAP);
            }
            if self.first_ids.len() < SAMPLE_IDS {
                self.first_ids.push(id);
            } else {
                if self.last_ids.len() == SAMPLE_IDS {
                    self.last_ids.pop_front();
                }
                self.last_ids.push_back(id);
            }
        }
        self.events += 1;
        self.extend_span(t);
        self.total.add(t, self.res);
        let values = obs.values;
        if let Some(code) = obs.code {
            self.by_code.entry(code).or_default().add(t, self.res);
        }
        *self
            .codes
            .entry(obs.code.map_or("-".into(), |c| c.to_string()))
            .or_default() += 1;
        for ip in &values[1] {
            self.all_addresses.add(hash64(ip));
        }
        for (d, dim) in DIMS.iter().enumerate() {
            if values[d].is_empty() {
                self.missing[d] += 1;
                continue;
            }
            let cp = &values[dim_index(dim.counterpart())];
            for v in &values[d] {
                let e = self.tables[d].add(v, t, self.res);
                for c in cp {
                    e.counterparts.add(c);
                }
            }
        }
    }

    fn extend_span(&mut self, t: Micros) {
        let lo = self.min_t.map_or(t, |m| m.min(t));
        let hi = self.max_t.map_or(t, |m| m.max(t));
        self.min_t = Some(lo);
        self.max_t = Some(hi);
        if self.fixed_bucket.is_some() {
            return;
        }
        let span = hi - lo;
        let mut res = self.res;
        while span / res > MAX_SLOTS {
            match LADDER.iter().map(|s| s * SEC).find(|&s| s > res) {
                Some(next) => res = next,
                None => break,
            }
        }
        if res != self.res {
            let factor = res / self.res;
            self.res = res;
            self.total.coarsen(factor);
            for s in self.by_code.values_mut() {
                s.coarsen(factor);
            }
            for t in &mut self.tables {
                t.coarsen(factor);
            }
        }
    }

    /// Selected events counted (duplicates excluded).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Builds the report. `top` values per dimension; `alerts` are those the rules raised.
    pub fn report(&self, top: usize, head: ReportHead, alerts: Vec<Alert>) -> Report {
        let bucket = match self.fixed_bucket {
            Some(b) => {
                let span = match (self.min_t, self.max_t) {
                    (Some(a), Some(z)) => z - a,
                    _ => 0,
                };
                if span / b >= MAX_BUCKETS {
                    b * (span / b / MAX_BUCKETS + 1)
                } else {
                    b
                }
            }
            None => {
                let span = match (self.min_t, self.max_t) {
                    (Some(a), Some(b)) => b - a,
                    _ => 0,
                };
                let day = LADDER[LADDER.len() - 1] * SEC;
                LADDER
                    .iter()
                    .map(|s| s * SEC)
                    .filter(|&s| s >= self.res)
                    .find(|&s| span / s < TARGET_BUCKETS)
                    // Longer spans: whole days (every slot width divides a day).
                    .unwrap_or_else(|| day * (span / day / TARGET_BUCKETS + 1))
            }
        };
        let per = (bucket / self.res).max(1);
        let (start, n) = match (self.min_t, self.max_t) {
            (Some(a), Some(b)) => {
                let first = a.div_euclid(bucket);
                let last = b.div_euclid(bucket);
                (
                    first * bucket,
                    usize::try_from(last - first + 1).unwrap_or(1),
                )
            }
            _ => (0, 0),
        };
        let first_slot = start.div_euclid(self.res);
        let bins = |s: &Series| s.bins(first_slot, per, n);
        let events = self.events;
        let share = |c: u64| {
            if events == 0 {
                0.0
            } else {
                (c as f64 * 1000.0 / events as f64).round() / 10.0
            }
        };
        let mut dims = Vec::new();
        for (d, dim) in DIMS.iter().enumerate() {
            let table = &self.tables[d];
            let mut entries: Vec<_> = table.entries().iter().collect();
            entries.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
            let values = entries
                .into_iter()
                .take(top)
                .map(|e| ValueReport {
                    value: clean(&e.key),
                    count: e.count,
                    count_error: e.error,
                    share: share(e.count),
                    first_seen: format_millis(e.first),
                    last_seen: format_millis(e.last),
                    counterparts: e.counterparts.distinct(),
                    counterparts_exact: e.counterparts.exact(),
                    counterpart_examples: e
                        .counterparts
                        .examples
                        .iter()
                        .map(|(k, c)| Example {
                            value: clean(k),
                            count: *c,
                        })
                        .collect(),
                    series: bins(&e.series),
                })
                .collect();
            dims.push(DimReport {
                name: dim.name(),
                counterpart: dim.counterpart().name(),
                counterpart_label: dim.counterpart_label(),
                events: table.total,
                missing: self.missing[d],
                distinct: table.distinct_values(),
                exact: table.exact(),
                max_error: table.max_error(),
                error_bound: table.total / table.limit() as u64,
                values,
            });
        }
        let mut sample_ids: Vec<String> = self.first_ids.iter().map(|s| clean(s)).collect();
        sample_ids.extend(self.last_ids.iter().map(|s| clean(s)));
        let code_series = |c: i64| self.by_code.get(&c).map_or_else(|| vec![0; n], &bins);
        let other: Vec<u64> = {
            let total = bins(&self.total);
            let a = code_series(401);
            let b = code_series(403);
            total
                .iter()
                .zip(a.iter().zip(b.iter()))
                .map(|(t, (x, y))| t.saturating_sub(x + y))
                .collect()
        };
        Report {
            filter: head.filter,
            key: head.key,
            first_seen: self.min_t.map(format_millis),
            last_seen: self.max_t.map(format_millis),
            bucket_seconds: bucket / SEC,
            exact_limit: self.tables.first().map_or(0, Table::limit),
            totals: Totals {
                events,
                codes: self.codes.clone(),
                duplicates: self.duplicates,
                dedup_window_seconds: self.dedup_horizon / SEC,
                distinct_addresses: if self.tables[1].exact() {
                    self.tables[1].distinct_values()
                } else {
                    self.all_addresses.estimate()
                },
                records: head.records,
                events_read: head.events_read,
                parse_errors: head.parse_errors,
            },
            series: SeriesReport {
                start: format_millis(start),
                bucket_seconds: bucket / SEC,
                total: bins(&self.total),
                code_401: code_series(401),
                code_403: code_series(403),
                other,
            },
            dimensions: dims,
            alerts_total: head.alerts_total,
            alerts,
            sample_audit_ids: sample_ids,
        }
    }
}

fn dim_index(d: Dim) -> usize {
    DIMS.iter().position(|x| *x == d).unwrap_or(0)
}

/// Strips control characters (C0 incl. ESC, DEL, C1) and bidirectional/zero-width format
/// characters from a value taken from an event, before any output shows it.
pub fn clean(s: &str) -> String {
    s.chars()
        .filter(|&c| {
            !(c.is_control()
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'))
        })
        .collect()
}

/// An alert with every value that came from an event cleaned (see [`clean`]).
pub fn clean_alert(mut a: Alert) -> Alert {
    for (_, v) in &mut a.group.0 {
        *v = clean(v);
    }
    for list in [&mut a.sample_audit_ids, &mut a.hosts, &mut a.users] {
        for v in list.iter_mut() {
            *v = clean(v);
        }
    }
    a.verbs = std::mem::take(&mut a.verbs)
        .into_iter()
        .map(|(k, n)| (clean(&k), n))
        .collect();
    if let Some(d) = &mut a.distinct_sample {
        for v in d.iter_mut() {
            *v = clean(v);
        }
    }
    a
}

/// What the caller knows that the aggregation does not.
#[derive(Debug, Clone, Default)]
pub struct ReportHead {
    /// The filter, in words.
    pub filter: String,
    /// `--key dim=value`, if drilling down.
    pub key: Option<KeyReport>,
    /// Records read.
    pub records: u64,
    /// Audit events read (selected or not).
    pub events_read: u64,
    /// Records or events that could not be used.
    pub parse_errors: u64,
    /// Alerts the rules raised (the report lists at most a bounded number).
    pub alerts_total: u64,
}

/// `--key`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// The field path.
    pub path: String,
    /// The value.
    pub value: String,
}

/// The investigation's result: what `--format json` prints, and what text, CSV and HTML show.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The filter, in words.
    pub filter: String,
    /// The drill-down key, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyReport>,
    /// First selected event time.
    pub first_seen: Option<String>,
    /// Last selected event time.
    pub last_seen: Option<String>,
    /// Bucket width of every series.
    pub bucket_seconds: i64,
    /// Values counted exactly per dimension before heavy-hitter estimates start.
    pub exact_limit: usize,
    /// Totals.
    pub totals: Totals,
    /// Selected events per bucket.
    pub series: SeriesReport,
    /// The breakdowns.
    pub dimensions: Vec<DimReport>,
    /// Alerts the rules raised over the input.
    pub alerts_total: u64,
    /// The alerts (at most a bounded number; with `--key`, those whose key has the value).
    pub alerts: Vec<Alert>,
    /// Audit IDs of selected events: the first and the last few.
    pub sample_audit_ids: Vec<String>,
}

/// Totals of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Selected events (each auditID once).
    pub events: u64,
    /// Selected events by response code.
    pub codes: BTreeMap<String, u64>,
    /// Further copies of an auditID already counted (stages, overlapping exports).
    pub duplicates: u64,
    /// Copies of one auditID are recognized when at most this far apart in event time (one
    /// hour, shortened if more than `DEDUP_CAP` IDs arrive within it).
    pub dedup_window_seconds: i64,
    /// Distinct source addresses of selected events (estimated beyond the exact limit).
    pub distinct_addresses: u64,
    /// Records read.
    pub records: u64,
    /// Audit events read, selected or not.
    pub events_read: u64,
    /// Records or events that could not be used.
    pub parse_errors: u64,
}

/// Selected events per bucket.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    /// Start of the first bucket.
    pub start: String,
    /// Bucket width.
    pub bucket_seconds: i64,
    /// All selected events.
    pub total: Vec<u64>,
    /// Code 401.
    #[serde(rename = "401")]
    pub code_401: Vec<u64>,
    /// Code 403.
    #[serde(rename = "403")]
    pub code_403: Vec<u64>,
    /// Any other code (with `--rule` or `--where` selecting them).
    pub other: Vec<u64>,
}

/// One dimension's breakdown.
#[derive(Debug, Clone, Serialize)]
pub struct DimReport {
    /// Dimension name.
    pub name: &'static str,
    /// The dimension whose distinct values `counterparts` counts.
    pub counterpart: &'static str,
    /// Short label of the counterparts (`users`, `addresses`).
    pub counterpart_label: &'static str,
    /// Values counted (an event counts once per address of `sourceIPs`).
    pub events: u64,
    /// Selected events without this field.
    pub missing: u64,
    /// Distinct values (estimated when not `exact`).
    pub distinct: u64,
    /// Whether every count is exact.
    pub exact: bool,
    /// The largest overestimate of any count listed (0 when exact).
    pub max_error: u64,
    /// The Space-Saving bound: no count is over by more than events / exact_limit.
    pub error_bound: u64,
    /// The top values, by count.
    pub values: Vec<ValueReport>,
}

/// One value of a dimension.
#[derive(Debug, Clone, Serialize)]
pub struct ValueReport {
    /// The value (control characters stripped).
    pub value: String,
    /// Events (at most `count_error` over the true count).
    pub count: u64,
    /// Overestimate bound (0 when exact).
    pub count_error: u64,
    /// Percent of the selected events.
    pub share: f64,
    /// First event time.
    pub first_seen: String,
    /// Last event time.
    pub last_seen: String,
    /// Distinct counterparts (users of an address, addresses of a user...).
    pub counterparts: u64,
    /// Whether `counterparts` is exact (else a HyperLogLog estimate, ±3.3 %).
    pub counterparts_exact: bool,
    /// The first counterparts seen, with counts.
    pub counterpart_examples: Vec<Example>,
    /// Events per bucket (aligned with the report's series).
    pub series: Vec<u64>,
}

/// A counterpart value and its count.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The value.
    pub value: String,
    /// Events.
    pub count: u64,
}
