//! The prefilter: literal bytes a line must contain for any rule to match it, derived from the
//! rules and checked on raw bytes before decoding (most lines are 2xx and end here).
//!
//! Soundness comes first: a needle is only taken from a condition whose value appears
//! verbatim in any JSON encoding of a matching event — integers (digits cannot be escaped)
//! and strings made only of characters no encoder escapes. Anything else (`host`, which comes
//! from the record's context; regexes, globs, negations, CIDRs) makes that part of the rule
//! "may match anything".
//!
//! Needles are searched lazily (SIMD substring search) and each at most once per line, as the
//! rules' conditions ask for them: a 2xx line is ruled out after looking for `401` and `403`
//! once, however many rules test the response code. The cost grows with the number of
//! distinct needles a line has to be checked for, not with the number of rules. (One
//! Aho-Corasick pass over all needles was measured slower: frequent words such as `pods` or
//! `secrets` match on most lines.)

use std::cell::Cell;

use memchr::memmem::Finder;

use crate::condition::{Cond, Literal, Test};
use crate::field::FieldPath;
use crate::rule::{Rule, RuleKind};

/// What a rule needs to find in a line.
#[derive(Debug, Clone)]
enum Need {
    /// Nothing: any line may match.
    Any,
    /// At least one of these needles.
    OneOf(Vec<usize>),
    /// All of these.
    And(Vec<Need>),
    /// One of these.
    Or(Vec<Need>),
}

impl Need {
    fn holds(&self, found: &dyn Fn(usize) -> bool) -> bool {
        match self {
            Need::Any => true,
            Need::OneOf(ids) => ids.iter().any(|&i| found(i)),
            Need::And(ns) => ns.iter().all(|n| n.holds(found)),
            Need::Or(ns) => ns.iter().any(|n| n.holds(found)),
        }
    }

    /// Needles of which at least one must be in a line for this to hold; `None` if it can
    /// hold without any.
    fn required(&self) -> Option<Vec<usize>> {
        match self {
            Need::Any => None,
            Need::OneOf(ids) => Some(ids.clone()),
            // Any one child's requirement is the whole's: take the narrowest.
            Need::And(ns) => ns.iter().filter_map(Need::required).min_by_key(Vec::len),
            // Every branch must bring its own.
            Need::Or(ns) => ns.iter().try_fold(Vec::new(), |mut all, n| {
                all.extend(n.required()?);
                Some(all)
            }),
        }
    }
}

/// Needles for every rule.
#[derive(Debug, Clone)]
pub struct Prefilter {
    needles: Vec<String>,
    finders: Vec<Finder<'static>>,
    rules: Vec<Need>,
    /// The common case first: when every rule needs one of a few literals (`401`, `403` for
    /// the bundled set), one pass of a multi-literal search (aho-corasick, SIMD) tells that
    /// none is in the line, and then no rule can match: no rule walk, no search per needle.
    /// `None` when some rule can match a line without any literal.
    gate: Option<aho_corasick::AhoCorasick>,
}

/// Text that appears byte for byte in any JSON encoding of a string with this value.
fn verbatim(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"-_.:@ ,;=+*#%!?()[]{}$~^|'`".contains(&b) || b == b'/'
        })
}

impl Prefilter {
    /// Derives the prefilter from `rules`.
    ///
    /// ```
    /// use authwatch_rules::{load_rules, Prefilter};
    /// let rules = load_rules("r.yaml", "id: r\nmatch: {responseStatus.code: [401, 403]}\nwindow: 1m\nthreshold: 1\n").unwrap();
    /// let p = Prefilter::new(&rules);
    /// assert!(p.may_match(br#"{"responseStatus":{"code":403}}"#));
    /// assert!(!p.may_match(br#"{"responseStatus":{"code":200}}"#));
    /// ```
    pub fn new(rules: &[Rule]) -> Prefilter {
        let mut needles = Vec::new();
        // One need per rule, and per phase of an absence rule: a closing event must reach
        // the engine as surely as an opening one.
        let mut rule_needs = Vec::new();
        for r in rules {
            let mut phases = vec![&r.conditions];
            if let RuleKind::Absence(a) = &r.kind {
                phases.push(&a.close.conditions);
                phases.extend(a.cancel.as_ref().map(|c| &c.conditions));
            }
            for conditions in phases {
                rule_needs.push(Need::And(
                    conditions
                        .iter()
                        .map(|c| need_of(c, &mut needles))
                        .collect(),
                ));
            }
        }
        let rules = rule_needs;
        let finders = needles
            .iter()
            .map(|n| Finder::new(n.as_bytes()).into_owned())
            .collect();
        let gate = rules
            .iter()
            .try_fold(Vec::new(), |mut all, n| {
                all.extend(n.required()?);
                Some(all)
            })
            .filter(|ids| !ids.is_empty())
            .and_then(|mut ids| {
                ids.sort_unstable();
                ids.dedup();
                aho_corasick::AhoCorasick::new(ids.iter().map(|&i| needles[i].as_bytes())).ok()
            });
        Prefilter {
            needles,
            finders,
            rules,
            gate,
        }
    }

    /// Whether no line can be skipped (some rule needs no literal).
    pub fn passes_everything(&self) -> bool {
        self.rules.iter().any(|n| n.holds(&|_| false))
    }

    /// The needles, for diagnostics.
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    /// False only if no rule can match a line with these bytes.
    pub fn may_match(&self, line: &[u8]) -> bool {
        if self.gate.as_ref().is_some_and(|g| !g.is_match(line)) {
            return false;
        }
        // 0 = not searched yet, 1 = absent, 2 = present.
        let memo: smallvec::SmallVec<[Cell<u8>; 32]> =
            (0..self.finders.len()).map(|_| Cell::new(0)).collect();
        let found = |i: usize| match memo[i].get() {
            0 => {
                let present = self.finders[i].find(line).is_some();
                memo[i].set(if present { 2 } else { 1 });
                present
            }
            v => v == 2,
        };
        self.rules.iter().any(|n| n.holds(&found))
    }
}

fn needle(needles: &mut Vec<String>, text: String) -> usize {
    if let Some(i) = needles.iter().position(|n| *n == text) {
        return i;
    }
    needles.push(text);
    needles.len() - 1
}

fn literal_needle(l: &Literal) -> Option<String> {
    match l {
        Literal::Int(i) => Some(i.to_string()),
        Literal::Bool(b) => Some(b.to_string()),
        Literal::Str(s) if verbatim(s) => Some(s.clone()),
        // An integer field may be written as text by some exporters; both forms contain the
        // digits.
        Literal::Str(s) if s.parse::<i64>().is_ok() => Some(s.trim().to_owned()),
        Literal::Str(_) => None,
    }
}

fn test_need(test: &Test, needles: &mut Vec<String>) -> Need {
    match test {
        Test::Eq(lits) => {
            let texts: Option<Vec<String>> = lits.iter().map(literal_needle).collect();
            match texts {
                Some(t) if !t.is_empty() => {
                    Need::OneOf(t.into_iter().map(|t| needle(needles, t)).collect())
                }
                _ => Need::Any,
            }
        }
        Test::Contains(subs) if subs.iter().all(|s| verbatim(s)) => {
            Need::OneOf(subs.iter().map(|s| needle(needles, s.clone())).collect())
        }
        Test::All(tests) => Need::And(tests.iter().map(|t| test_need(t, needles)).collect()),
        _ => Need::Any,
    }
}

fn need_of(cond: &Cond, needles: &mut Vec<String>) -> Need {
    match cond {
        // `host` comes from the record (the log stream), not from the line's bytes.
        Cond::Field {
            field: FieldPath::Host,
            ..
        } => Need::Any,
        Cond::Field { test, .. } => test_need(test, needles),
        Cond::All(cs) => Need::And(cs.iter().map(|c| need_of(c, needles)).collect()),
        Cond::Any(cs) => Need::Or(cs.iter().map(|c| need_of(c, needles)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_rules;

    fn pf(yaml: &str) -> Prefilter {
        Prefilter::new(&load_rules("t.yaml", yaml).unwrap())
    }

    #[test]
    fn needs_every_condition_and_any_rule() {
        let p = pf("- {id: a, match: {responseStatus.code: 403, objectRef.resource: secrets}, window: 1m, threshold: 1}\n- {id: b, match: {verb: delete}, window: 1m, threshold: 1}\n");
        assert!(p.may_match(b"...403...secrets..."));
        assert!(!p.may_match(b"...403...configmaps..."));
        assert!(p.may_match(b"...\"verb\":\"delete\"..."));
        assert!(!p.may_match(b"...200..."));
        assert!(!p.passes_everything());
    }

    #[test]
    fn what_cannot_be_seen_in_the_bytes_passes_everything() {
        for yaml in [
            "id: a\nmatch: {user.username: {glob: 'system:*'}}\nwindow: 1m\nthreshold: 1\n",
            "id: a\nmatch: {host: kube-apiserver-audit-1}\nwindow: 1m\nthreshold: 1\n",
            "id: a\nmatch: {userAgent: 'curl <8>'}\nwindow: 1m\nthreshold: 1\n",
            "id: a\nmatch: {any: [{verb: get}, {sourceIPs: {cidr: 10.0.0.0/8}}]}\nwindow: 1m\nthreshold: 1\n",
        ] {
            let p = pf(yaml);
            assert!(p.passes_everything(), "{yaml}");
            assert!(p.may_match(b"{}"), "{yaml}");
        }
    }

    #[test]
    fn the_gate_holds_the_literals_every_rule_needs_one_of() {
        let two = "id: a\nmatch: {responseStatus.code: [401, 403], verb: get}\nwindow: 1m\nthreshold: 1\n---\nid: b\nmatch: {any: [{verb: delete}, {requestURI: {contains: /exec}}]}\nwindow: 1m\nthreshold: 1\n";
        let p = Prefilter::new(&load_rules("t.yaml", two).unwrap());
        let gate = p.gate.as_ref().map(|g| g.patterns_len());
        // `get` (the narrowest of rule a's needs), `delete` and `/exec` (both branches of b).
        assert_eq!(gate, Some(3));
        assert!(!p.may_match(b"post 403 /api"));
        assert!(!p.may_match(b"get 200 /api"));
        assert!(p.may_match(b"delete"));
        assert!(p.may_match(b"get 403"));
        assert!(!p.may_match(b"post 403"));
        // A rule that needs no literal leaves no gate.
        let open = "id: a\nmatch: {responseStatus.code: 403}\nwindow: 1m\nthreshold: 1\n---\nid: b\nmatch: {host: h}\nwindow: 1m\nthreshold: 1\n";
        let p = Prefilter::new(&load_rules("t.yaml", open).unwrap());
        assert!(p.gate.is_none());
        assert!(p.may_match(b"{}"));
    }

    #[test]
    fn groups_and_operators() {
        let p = pf("id: a\nmatch:\n  responseStatus.code: {gte: 400, lt: 500}\n  any:\n    - {verb: create}\n    - {requestURI: {contains: /exec}}\nwindow: 1m\nthreshold: 1\n");
        assert!(p.may_match(b"create"));
        assert!(p.may_match(b"/api/v1/pods/x/exec"));
        assert!(!p.may_match(b"get /api/v1/pods"));
    }
}
