//! Whether a key's window fires ([`evaluate`]: threshold, distinct or spike) and the
//! [`Alert`] it fires, built from the window's entries ([`build_alert`]). Moved out of
//! engine.rs (issue #19).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use authwatch_event::Micros;

use crate::alert::{stable_id, Alert, Group};
use crate::keys::Key;
use crate::rule::{Rule, RuleKind};
use crate::window::{bucket_width, Entry, KeyState, KindState};

/// What a firing kind adds to the alert.
enum KindExtra {
    None,
    Distinct(u64),
    Spike { base: u64, ratio: Option<f64> },
}

/// Whether the key's window ending at `end` fires, and the alert if so.
pub(crate) fn evaluate(
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
        // Fired by its deadline (absence.rs), never by a window's count.
        RuleKind::Absence(_) => None,
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

pub(crate) fn build_alert<'a>(
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
    let mut principals = Bounded::default();
    let mut access_keys = Bounded::default();
    let mut samples = VecDeque::with_capacity(sample_size + 1);
    let mut cluster = None;
    let mut evidence = None;
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
        if let Some(p) = &i.iam_principal {
            principals.insert(p);
        }
        if let Some(k) = &i.access_key_id {
            access_keys.insert(k);
        }
        if let Some(a) = &i.audit_id {
            samples.push_back(a.to_string());
            if samples.len() > sample_size {
                samples.pop_front();
            }
        }
        // The firing event is the last in the window: its cluster names the alert, and it
        // is the evidence of a one-request alert.
        cluster = i.cluster.clone();
        evidence = i.evidence.as_deref();
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
        iam_principal_count: principals.all.len() as u64,
        iam_principals: principals.sample(),
        access_key_id_count: access_keys.all.len() as u64,
        access_key_ids: access_keys.sample(),
        cluster: cluster.map(|c| c.to_string()),
        kind: "threshold",
        description: rule.description.clone(),
        distinct_count: None,
        distinct_sample: None,
        baseline_count: None,
        ratio: None,
        evicted_keys: None,
        evidence: evidence.filter(|_| rule.threshold == 1).cloned(),
    }
}

/// Lists in alerts (hosts, users) carry at most this many values.
const LIST_CAP: usize = 10;

/// The distinct values of one alert field (IAM principals, access keys): all of them
/// counted, the first [`LIST_CAP`] in sort order shown.
#[derive(Default)]
struct Bounded<'a> {
    all: BTreeSet<&'a str>,
}

impl<'a> Bounded<'a> {
    fn insert(&mut self, v: &'a str) {
        self.all.insert(v);
    }

    fn sample(&self) -> Vec<String> {
        self.all
            .iter()
            .take(LIST_CAP)
            .map(|s| (*s).to_owned())
            .collect()
    }
}
