//! The stateless half of the engine ([`Matcher`]): which rules an event matches and the keys
//! it counts toward, as a [`Prepared`] event for [`Engine::accept`](crate::Engine::accept).
//! Cheap to clone, one per thread. Moved out of engine.rs (issue #19); the conditions it
//! evaluates, which this file held before, are in [`condition`](crate::condition), and their
//! old paths (`authwatch_rules::matcher::Cond`, ...) keep working through the re-exports below.

use std::borrow::Cow;
use std::sync::Arc;

use authwatch_event::{EventView, Micros};
use smallvec::SmallVec;

use crate::field::EventFacts;
use crate::hit::{evidence, hit_info, HitInfo, Interner};
use crate::keys::Key;
use crate::rule::{GroupField, Rule, RuleKind};
use crate::window::Values;

#[doc(no_inline)]
pub use crate::condition::{
    glob_regex, parse_conditions, parse_test, Cond, IpNet, Literal, NamedList, Test,
    REGEX_SIZE_LIMIT,
};

/// The stateless half of the engine: which rules an event matches and the keys it counts
/// toward. Cheap to clone (the rules are shared); one per thread.
#[derive(Debug, Clone)]
pub struct Matcher {
    rules: Arc<Vec<Rule>>,
    cluster: Option<Arc<str>>,
    interner: Interner,
}

/// One event as a [`Matcher`] saw it, ready for [`Engine::accept`](crate::Engine::accept).
#[derive(Debug)]
pub struct Prepared {
    pub(crate) time: Option<Micros>,
    pub(crate) info: Option<Arc<HitInfo>>,
    pub(crate) hits: SmallVec<[PreparedHit; 1]>,
    pub(crate) missing_group_key: u64,
    pub(crate) fanout_capped: u64,
}

#[derive(Debug)]
pub(crate) struct PreparedHit {
    pub(crate) rule: usize,
    pub(crate) keys: SmallVec<[Key; 1]>,
    pub(crate) distinct: Option<Values>,
    /// What the event does to an absence rule's key (`Open` for every other kind).
    pub(crate) phase: HitPhase,
}

/// Which phase of a rule an event matched: for an absence rule, its `match` opens a key,
/// `close` closes it and `cancel` drops it; every other rule only has `Open` (counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HitPhase {
    Open,
    Close,
    Cancel,
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
    /// A matcher for these rules; `cluster` names the alerts' cluster when set
    /// ([`EngineConfig::cluster`](crate::EngineConfig::cluster)).
    pub(crate) fn new(rules: Arc<Vec<Rule>>, cluster: Option<Arc<str>>) -> Matcher {
        Matcher {
            rules,
            cluster,
            interner: Interner::default(),
        }
    }

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
            let (phase, group_by) = if rule.matches(&facts) {
                (HitPhase::Open, &rule.group_by)
            } else if let RuleKind::Absence(a) = &rule.kind {
                if a.close.matches(&facts) {
                    (HitPhase::Close, &a.close.group_by)
                } else if let Some(c) = a.cancel.as_ref().filter(|c| c.matches(&facts)) {
                    (HitPhase::Cancel, &c.group_by)
                } else {
                    continue;
                }
            } else {
                continue;
            };
            let mut capped = false;
            let keys = group_keys(group_by, &facts, &mut capped);
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
                phase,
            });
        }
        // A rule that fires on one request explains itself with that request (issue #17);
        // kept only for such rules, so counting rules pay nothing for it.
        if p.hits.iter().any(|h| self.rules[h.rule].threshold == 1) {
            if let Some(info) = p.info.as_mut().and_then(Arc::get_mut) {
                info.evidence = Some(Box::new(evidence(&facts)));
            }
        }
        p
    }
}

/// Most keys one event counts toward (sourceIPs fan-out); beyond it the event is counted for
/// the first entries and the last, and `fanout_capped` says so.
pub const MAX_FANOUT: usize = 16;

/// The keys an event counts toward: one value per `group_by` field, fanning out over lists
/// (`sourceIPs`). No key if any field is absent.
fn group_keys(
    group_by: &[GroupField],
    facts: &EventFacts<'_, '_, '_>,
    capped: &mut bool,
) -> SmallVec<[Key; 1]> {
    let mut keys: SmallVec<[Vec<Box<str>>; 1]> = smallvec::smallvec![Vec::new()];
    for g in group_by {
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
