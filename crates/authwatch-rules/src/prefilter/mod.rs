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

mod verdicts;

use std::cell::Cell;

use memchr::memmem::Finder;

use crate::condition::{Cond, Literal, Test};
use authwatch_event::structure::{Scalar, TopFields};

use crate::field::{FieldPath, ObjectField, Segment, Value};
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
    /// A field test ([`FieldTest`]) on the fields the structure pass read; where it could
    /// not read the field (or the line is a wrapper or a list), the needles of the test.
    Field(usize),
}

/// What a line offers a [`Need`]: its needles (searched lazily, each at most once) and the
/// fields the structure pass read.
struct Probe<'p, 'l> {
    found: &'p dyn Fn(usize) -> bool,
    fields: &'p [FieldTest],
    top: Option<&'p TopFields<'l>>,
    /// Each field test's verdict on this line, once known: 0 = not yet, 1 = false, 2 = true,
    /// 3 = the field was not read (the needles decide).
    field_memo: &'p [Cell<u8>],
    /// Or the verdicts from the tables: decided, true, and to run when asked (then
    /// recorded in the first two).
    verdicts: Option<(Cell<u128>, Cell<u128>, u128)>,
}

impl Probe<'_, '_> {
    /// Field test `i` on the fields read, once per line; `None` when the field was not read.
    fn field(&self, i: usize) -> Option<bool> {
        if let Some((known, truth, deferred)) = &self.verdicts {
            let bit = 1u128 << i;
            if known.get() & bit != 0 {
                return Some(truth.get() & bit != 0);
            }
            if deferred & bit == 0 {
                return None;
            }
            let r = self.top.and_then(|top| self.fields[i].read(top));
            if let Some(v) = r {
                known.set(known.get() | bit);
                if v {
                    truth.set(truth.get() | bit);
                }
            }
            return r;
        }
        let memo = &self.field_memo[i];
        match memo.get() {
            0 => {
                let r = self.top.and_then(|top| self.fields[i].read(top));
                memo.set(match r {
                    Some(false) => 1,
                    Some(true) => 2,
                    None => 3,
                });
                r
            }
            3 => None,
            v => Some(v == 2),
        }
    }
}

impl Need {
    fn holds(&self, p: &Probe<'_, '_>) -> bool {
        match self {
            Need::Any => true,
            Need::OneOf(ids) => ids.iter().any(|&i| (p.found)(i)),
            Need::And(ns) => ns.iter().all(|n| n.holds(p)),
            Need::Or(ns) => ns.iter().any(|n| n.holds(p)),
            Need::Field(i) => match p.field(*i) {
                Some(verdict) => verdict,
                None => p.fields[*i].fallback.holds(p),
            },
        }
    }

    /// Needles of which at least one must be in a line for this to hold; `None` if it can
    /// hold without any.
    fn required(&self, fields: &[FieldTest]) -> Option<Vec<usize>> {
        match self {
            Need::Any => None,
            Need::OneOf(ids) => Some(ids.clone()),
            // Any one child's requirement is the whole's: take the narrowest.
            Need::And(ns) => ns
                .iter()
                .filter_map(|n| n.required(fields))
                .min_by_key(Vec::len),
            // Every branch must bring its own.
            Need::Or(ns) => ns.iter().try_fold(Vec::new(), |mut all, n| {
                all.extend(n.required(fields)?);
                Some(all)
            }),
            Need::Field(i) => fields[*i].fallback.required(fields),
        }
    }
}

/// A condition on a field the structure pass reads ([`TopFields`]): tested exactly, with the
/// rule's own test, on a plain event line; by its needles elsewhere.
#[derive(Debug, Clone)]
struct FieldTest {
    field: TopField,
    test: Test,
    fallback: Need,
    /// The field and test as written, to find the same test in another rule.
    key: String,
}

/// The fields of [`TopFields`] a rule can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopField {
    Verb,
    Code,
    Object(ObjectField),
    Username,
    /// Whether there is a request body (a guard of body conditions, not a rule's field).
    RequestObject,
}

impl TopField {
    /// The order guards are tried in: the fields whose tests rules share most first.
    fn rank(self) -> u8 {
        match self {
            TopField::Code => 0,
            TopField::Verb => 1,
            TopField::Object(ObjectField::Subresource) => 2,
            TopField::Object(_) => 3,
            TopField::Username => 4,
            TopField::RequestObject => 5,
        }
    }

    /// This field as the structure pass read it.
    fn scalar<'l>(self, top: &TopFields<'l>) -> Scalar<'l> {
        match self {
            TopField::Verb => top.verb,
            TopField::Code => top.code,
            TopField::Username => top.username,
            TopField::Object(ObjectField::Resource) => top.resource,
            TopField::Object(ObjectField::Subresource) => top.subresource,
            TopField::Object(ObjectField::Namespace) => top.namespace,
            TopField::Object(ObjectField::Name) => top.name,
            TopField::Object(ObjectField::ApiGroup) => top.api_group,
            TopField::Object(ObjectField::ApiVersion) => Scalar::Unknown,
            TopField::RequestObject => top.request_object,
        }
    }

    fn of(path: &FieldPath) -> Option<TopField> {
        Some(match path {
            FieldPath::Verb => TopField::Verb,
            FieldPath::Code => TopField::Code,
            FieldPath::Username => TopField::Username,
            FieldPath::Object(
                f @ (ObjectField::Resource
                | ObjectField::Subresource
                | ObjectField::Namespace
                | ObjectField::Name
                | ObjectField::ApiGroup),
            ) => TopField::Object(*f),
            _ => return None,
        })
    }
}

impl FieldTest {
    /// The test's verdict on the field as read, `None` when the pass could not read it.
    fn read(&self, top: &TopFields<'_>) -> Option<bool> {
        let value = match self.field.scalar(top) {
            Scalar::Unknown => return None,
            Scalar::Absent => None,
            Scalar::Str(s) => Some(Value::Str(std::borrow::Cow::Borrowed(s))),
            Scalar::Int(n) => Some(Value::Int(n)),
        };
        Some(self.test.holds(value.as_slice()))
    }
}

/// Needles for every rule.
#[derive(Debug, Clone)]
pub struct Prefilter {
    needles: Vec<String>,
    finders: Vec<Finder<'static>>,
    rules: Vec<Need>,
    /// The field tests [`Need::Field`] refers to.
    fields: Vec<FieldTest>,
    /// Per rule (phase), the field tests its match needs all of: one that is false on a line
    /// rules the rule out without walking its conditions (most lines fail the first).
    guards: Vec<Vec<usize>>,
    /// The guards as bit sets over the field tests, for the tables' verdicts.
    guard_bits: Vec<u128>,
    /// Every field test's verdict by value; `None` past [`verdicts::MAX_TESTS`] tests.
    tables: Option<verdicts::FieldTables>,
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
        let mut fields = Vec::new();
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
                        .map(|c| need_of(c, &mut needles, &mut fields))
                        .collect(),
                ));
            }
        }
        let rules: Vec<Need> = rule_needs
            .into_iter()
            .map(|n| cheap_first(flatten(n), &fields))
            .collect();
        let finders = needles
            .iter()
            .map(|n| Finder::new(n.as_bytes()).into_owned())
            .collect();
        let gate = rules
            .iter()
            .try_fold(Vec::new(), |mut all, n| {
                all.extend(n.required(&fields)?);
                Some(all)
            })
            .filter(|ids| !ids.is_empty())
            .and_then(|mut ids| {
                ids.sort_unstable();
                ids.dedup();
                aho_corasick::AhoCorasick::new(ids.iter().map(|&i| needles[i].as_bytes())).ok()
            });
        let guards: Vec<Vec<usize>> = rules
            .iter()
            .map(|n| match n {
                Need::And(children) => {
                    let mut g: Vec<usize> = children
                        .iter()
                        .filter_map(|c| match c {
                            Need::Field(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    // The tests most rules share first (`code`, then `verb`): after the first
                    // rule they are answered from the line's memo, so most rules cost one look.
                    g.sort_by_key(|&i| fields[i].field.rank());
                    g
                }
                _ => Vec::new(),
            })
            .collect();
        let guard_bits = guards
            .iter()
            .map(|g| verdicts::bits_of(g.iter().copied().filter(|&i| i < verdicts::MAX_TESTS)))
            .collect();
        let tables = verdicts::FieldTables::new(&fields);
        Prefilter {
            needles,
            finders,
            rules,
            fields,
            guards,
            guard_bits,
            tables,
            gate,
        }
    }

    /// Whether no line can be skipped (some rule needs no literal).
    pub fn passes_everything(&self) -> bool {
        let field_memo: Vec<Cell<u8>> = self.fields.iter().map(|_| Cell::new(0)).collect();
        let probe = Probe {
            found: &|_| false,
            fields: &self.fields,
            top: None,
            field_memo: &field_memo,
            verdicts: None,
        };
        self.rules.iter().any(|n| n.holds(&probe))
    }

    /// The needles, for diagnostics.
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    /// False only if no rule can match a line with these bytes.
    pub fn may_match(&self, line: &[u8]) -> bool {
        self.may_match_read(line, None)
    }

    /// [`Prefilter::may_match`], with the fields the structure pass read from the line
    /// ([`scan_structure`](authwatch_event::structure::scan_structure)): conditions on
    /// `verb`, `responseStatus.code`, `objectRef.*` and `user.username` are then tested
    /// exactly, as the rule would test them, instead of by a search for their words (which
    /// `create` or `pods` pass on most lines), and the multi-literal gate is skipped.
    ///
    /// ```
    /// use authwatch_event::structure::scan_structure;
    /// use authwatch_rules::{load_rules, Prefilter};
    /// let rules = load_rules("r.yaml", "id: r\nmatch: {verb: delete, objectRef.resource: namespaces}\nwindow: 1m\nthreshold: 1\n").unwrap();
    /// let p = Prefilter::new(&rules);
    /// // `delete` and `namespaces` are both in the line, but not as the verb and resource.
    /// let line = br#"{"auditID":"a","verb":"get","requestURI":"/api/v1/namespaces/x/pods?delete","objectRef":{"resource":"pods"}}"#;
    /// assert!(p.may_match(line));
    /// assert!(!p.may_match_read(line, scan_structure(line).unwrap().as_ref()));
    /// ```
    pub fn may_match_read(&self, line: &[u8], top: Option<&TopFields<'_>>) -> bool {
        if top.is_none() && self.gate.as_ref().is_some_and(|g| !g.is_match(line)) {
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
        // With the tables: every field verdict from one lookup per field, and a rule whose
        // guards include a false test is passed over with one AND.
        if let (Some(top), Some(tables)) = (top, &self.tables) {
            let (known, truth, deferred) = tables.verdicts(top);
            let failed = known & !truth;
            let probe = Probe {
                found: &found,
                fields: &self.fields,
                top: Some(top),
                field_memo: &[],
                verdicts: Some((Cell::new(known), Cell::new(truth), deferred)),
            };
            return self
                .rules
                .iter()
                .zip(&self.guard_bits)
                .any(|(n, &guards)| guards & failed == 0 && n.holds(&probe));
        }
        let field_memo: smallvec::SmallVec<[Cell<u8>; 32]> =
            (0..self.fields.len()).map(|_| Cell::new(0)).collect();
        let probe = Probe {
            found: &found,
            fields: &self.fields,
            top,
            field_memo: &field_memo,
            verdicts: None,
        };
        self.rules.iter().zip(&self.guards).any(|(n, guards)| {
            !guards.iter().any(|&g| probe.field(g) == Some(false)) && n.holds(&probe)
        })
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

/// Needles that stand for any escape sequence a JSON encoder may write in the text of a
/// request body: `\uXXXX` can spell any character and `\/` a slash. A body is the client's
/// bytes (a patch is logged as sent), so a key or value there may be escaped where the
/// server's own fields never are; a line holding either sequence passes a body needle.
/// Inside a shipper's wrapper (the event as a JSON string) the escapes are doubled and
/// still contain these.
const BODY_ESCAPES: [&str; 2] = ["\\u", "\\/"];

/// Whether the field's values come from a request or response body (or any raw path), where
/// the bytes are the client's: needles from it allow for escapes ([`BODY_ESCAPES`]).
fn from_body(field: &FieldPath) -> bool {
    matches!(
        field,
        FieldPath::Other(_) | FieldPath::Each(_) | FieldPath::Pod(_)
    )
}

fn keys(segs: &[Segment]) -> Vec<&str> {
    segs.iter()
        .filter_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Each => None,
        })
        .collect()
}

/// The object key a value at this path sits under, when it is the same for every value:
/// the path's last key. `pod.containers` alone is none (it stands for three keys).
fn last_key(field: &FieldPath) -> Option<&str> {
    match field {
        FieldPath::Other(path) => path.last().map(String::as_str),
        FieldPath::Each(segs) => keys(segs).last().copied(),
        FieldPath::Pod(segs) => {
            let k = keys(segs);
            match k.as_slice() {
                [] | ["containers"] => None,
                [.., last] => Some(*last),
            }
        }
        _ => None,
    }
    .filter(|k| verbatim(k))
}

/// Adds the escape needles to every needle choice of `need`.
fn allowing_escapes(need: Need, escapes: &[usize]) -> Need {
    match need {
        Need::Any => Need::Any,
        // Fields the structure pass reads are the server's, never a body's.
        Need::Field(i) => Need::Field(i),
        Need::OneOf(mut ids) => {
            ids.extend_from_slice(escapes);
            Need::OneOf(ids)
        }
        Need::And(ns) => Need::And(
            ns.into_iter()
                .map(|n| allowing_escapes(n, escapes))
                .collect(),
        ),
        Need::Or(ns) => Need::Or(
            ns.into_iter()
                .map(|n| allowing_escapes(n, escapes))
                .collect(),
        ),
    }
}

/// The field test of `test` on `top`, shared with any rule that has the same one (`code:
/// [401, 403]`, `verb: [create, update, patch]`): run at most once per line.
fn field_need(top: TopField, test: &Test, fallback: Need, fields: &mut Vec<FieldTest>) -> Need {
    let key = format!("{top:?} {test:?}");
    if let Some(i) = fields.iter().position(|f| f.key == key) {
        return Need::Field(i);
    }
    fields.push(FieldTest {
        field: top,
        test: test.clone(),
        fallback,
        key,
    });
    Need::Field(fields.len() - 1)
}

/// Whether the path reads the request body (`pod.*`, `requestObject.…`).
fn in_request_body(field: &FieldPath) -> bool {
    match field {
        FieldPath::Pod(_) => true,
        FieldPath::Other(path) => path.first().is_some_and(|k| k == "requestObject"),
        FieldPath::Each(segs) => {
            matches!(segs.first(), Some(Segment::Key(k)) if k == "requestObject")
        }
        _ => false,
    }
}

/// The subresources `pod.*` reads a pod spec under: none (or empty), or `ephemeralcontainers`.
fn pod_subresources() -> Test {
    Test::Not(Box::new(Test::All(vec![
        Test::Exists(true),
        Test::Not(Box::new(Test::Eq(vec![
            Literal::Str("ephemeralcontainers".into()),
            Literal::Str(String::new()),
        ]))),
    ])))
}

/// `And` children of `And`s lifted into one list, so that a rule's guards (its direct field
/// tests) include those a condition brings with it.
fn flatten(need: Need) -> Need {
    match need {
        Need::And(ns) => {
            let mut out = Vec::new();
            for n in ns {
                match flatten(n) {
                    Need::And(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            Need::And(out)
        }
        Need::Or(ns) => Need::Or(ns.into_iter().map(flatten).collect()),
        other => other,
    }
}

/// Orders each `And` for a short walk: field tests first, those decided by a table lookup
/// before those that run a pattern or range, the most shared fields first (the guards'
/// order), then needles and the rest as written.
fn cheap_first(need: Need, fields: &[FieldTest]) -> Need {
    match need {
        Need::And(ns) => {
            let mut ns: Vec<Need> = ns.into_iter().map(|n| cheap_first(n, fields)).collect();
            ns.sort_by_key(|n| match n {
                Need::Field(i) => (
                    0,
                    u8::from(!verdicts::equality_only(&fields[*i].test)),
                    fields[*i].field.rank(),
                ),
                _ => (1, 0, 0),
            });
            Need::And(ns)
        }
        Need::Or(ns) => Need::Or(ns.into_iter().map(|n| cheap_first(n, fields)).collect()),
        other => other,
    }
}

fn need_of(cond: &Cond, needles: &mut Vec<String>, fields: &mut Vec<FieldTest>) -> Need {
    match cond {
        // `host` comes from the record (the log stream), not from the line's bytes.
        Cond::Field {
            field: FieldPath::Host,
            ..
        } => Need::Any,
        Cond::Field { field, test, .. } if from_body(field) => {
            let escapes: Vec<usize> = BODY_ESCAPES
                .iter()
                .map(|e| needle(needles, (*e).to_owned()))
                .collect();
            let value = allowing_escapes(test_need(test, needles), &escapes);
            // A test that fails on an absent field needs the field, so its key is in the
            // line: `privileged` for `pod.containers[*].securityContext.privileged`. The key
            // is searched unquoted: inside a wrapper the quotes are escaped.
            let empty: [crate::field::Value<'_>; 0] = [];
            let needs_field = !test.holds(&empty);
            let mut all = Vec::new();
            // `pod.*` reads no body of a subresource but `ephemeralcontainers` (see
            // `pod_spec`): `patch pods/status`, a kubelet's most common write, cannot match.
            if needs_field && matches!(field, FieldPath::Pod(_)) {
                all.push(field_need(
                    TopField::Object(ObjectField::Subresource),
                    &pod_subresources(),
                    Need::Any,
                    fields,
                ));
            }
            // A value in the request body needs a body: a `Metadata`-level event has none.
            if needs_field && in_request_body(field) {
                all.push(field_need(
                    TopField::RequestObject,
                    &Test::Exists(true),
                    Need::Any,
                    fields,
                ));
            }
            if let (Some(key), true) = (last_key(field), needs_field) {
                let mut ids = vec![needle(needles, key.to_owned())];
                ids.extend_from_slice(&escapes);
                all.push(Need::OneOf(ids));
            }
            if all.is_empty() {
                value
            } else {
                all.push(value);
                Need::And(all)
            }
        }
        Cond::Field { field, test, .. } => {
            let fallback = test_need(test, needles);
            match TopField::of(field) {
                Some(top) => field_need(top, test, fallback, fields),
                None => fallback,
            }
        }
        Cond::All(cs) => Need::And(cs.iter().map(|c| need_of(c, needles, fields)).collect()),
        Cond::Any(cs) => Need::Or(cs.iter().map(|c| need_of(c, needles, fields)).collect()),
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

    #[test]
    fn a_body_test_needs_its_key_unless_the_line_has_escapes() {
        let p = pf("id: a\nmatch:\n  verb: create\n  objectRef.resource: pods\n  pod.containers[*].securityContext.privileged: true\nwindow: 1m\nthreshold: 1\n");
        // `create`, `pods` and `true` are everywhere; `privileged` is not.
        assert!(!p.may_match(br#"{"verb":"create","objectRef":{"resource":"pods"},"requestObject":{"spec":{"containers":[{"tty":true}]}}}"#));
        assert!(p.may_match(br#"{"verb":"create","objectRef":{"resource":"pods"},"requestObject":{"spec":{"containers":[{"securityContext":{"privileged":true}}]}}}"#));
        // A key the client escaped, and the event inside a shipper's wrapper.
        assert!(p.may_match(br#"{"verb":"create","objectRef":{"resource":"pods"},"requestObject":{"spec":{"containers":[{"securityContext":{"priv\u0069leged":true}}]}}}"#));
        assert!(p.may_match(br#"{"log":"{\"verb\":\"create\",\"objectRef\":{\"resource\":\"pods\"},\"x\":{\"privileged\":true}}"}"#));
        // A test that holds on an absent field needs no key; `pod.containers` alone is
        // three keys.
        for yaml in [
            "id: a\nmatch:\n  verb: create\n  pod.containers[*].securityContext.allowPrivilegeEscalation: {not: false}\nwindow: 1m\nthreshold: 1\n",
            "id: a\nmatch: {verb: create, pod.containers: {exists: true}}\nwindow: 1m\nthreshold: 1\n",
        ] {
            let p = pf(yaml);
            assert!(p.may_match(br#"{"verb":"create","requestObject":{"spec":{"initContainers":[{}]}}}"#), "{yaml}");
        }
    }
}
