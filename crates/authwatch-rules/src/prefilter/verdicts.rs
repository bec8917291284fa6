//! Every field test's verdict on one line at once: per field, a table from the values the
//! rules name to the verdicts of all tests on that field (bit sets), built from the rules and
//! looked up once per line, instead of running each test.
//!
//! Exact: a verdict in a table is the test run on that very value. A value no rule names gets
//! the verdicts every test that only compares for equality gives any such value, and the
//! other tests (patterns, ranges, lists) are run on it.

use authwatch_event::structure::{Scalar, TopFields};

use super::{FieldTest, TopField};
use crate::condition::{Literal, Test};
use crate::field::Value;
use crate::HashMap;

/// At most this many field tests are tabled (bits of a `u128`); past it the prefilter runs
/// each test as asked.
pub(super) const MAX_TESTS: usize = 128;

/// The tables of every field the tests read.
#[derive(Debug, Clone)]
pub(super) struct FieldTables {
    tables: Vec<FieldTable>,
}

/// One field's table; bits are indices into the prefilter's field tests.
#[derive(Debug, Clone)]
struct FieldTable {
    field: TopField,
    /// Every test on this field.
    all: u128,
    /// The verdicts when the field is absent.
    absent: u128,
    by_str: HashMap<String, u128>,
    by_int: HashMap<i64, u128>,
    /// The verdicts, for a value no literal matches, of the tests that only compare for
    /// equality.
    others: u128,
    /// The tests run on such a value.
    dynamic: u128,
}

/// Whether a test's verdict depends on the value only through which literals it equals.
pub(super) fn equality_only(t: &Test) -> bool {
    match t {
        Test::Eq(_) | Test::Exists(_) => true,
        Test::Not(inner) => equality_only(inner),
        Test::All(ts) => ts.iter().all(equality_only),
        _ => false,
    }
}

fn literals<'t>(t: &'t Test, out: &mut Vec<&'t Literal>) {
    match t {
        Test::Eq(ls) => out.extend(ls),
        Test::Not(inner) => literals(inner, out),
        Test::All(ts) => ts.iter().for_each(|t| literals(t, out)),
        _ => {}
    }
}

/// The verdict bits of these test indices (each below [`MAX_TESTS`]).
pub(super) fn bits_of(indices: impl IntoIterator<Item = usize>) -> u128 {
    indices.into_iter().fold(0, |m, i| m | (1u128 << i))
}

fn bits_where(tests: &[(usize, &Test)], values: &[Value<'_>]) -> u128 {
    bits_of(
        tests
            .iter()
            .filter(|(_, t)| t.holds(values))
            .map(|(i, _)| *i),
    )
}

impl FieldTables {
    /// The tables of `fields`, or `None` past [`MAX_TESTS`].
    pub(super) fn new(fields: &[FieldTest]) -> Option<FieldTables> {
        if fields.len() > MAX_TESTS {
            return None;
        }
        let mut tables: Vec<FieldTable> = Vec::new();
        let mut kinds: Vec<TopField> = Vec::new();
        for f in fields {
            if !kinds.contains(&f.field) {
                kinds.push(f.field);
            }
        }
        for kind in kinds {
            let tests: Vec<(usize, &Test)> = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.field == kind)
                .map(|(i, f)| (i, &f.test))
                .collect();
            let mut lits = Vec::new();
            for (_, t) in &tests {
                literals(t, &mut lits);
            }
            // The values a literal can equal, in the two forms a field is read in: a string
            // literal is also the integer it spells, an integer also its text (`Literal::matches`).
            let mut strs: Vec<String> = Vec::new();
            let mut ints: Vec<i64> = Vec::new();
            for l in lits {
                match l {
                    Literal::Str(s) => {
                        strs.push(s.clone());
                        if let Ok(n) = s.parse::<i64>() {
                            ints.push(n);
                        }
                    }
                    Literal::Int(n) => ints.push(*n),
                    // Fields read are strings or integers, which no boolean equals.
                    Literal::Bool(_) => {}
                }
            }
            let by_str = strs
                .into_iter()
                .map(|s| {
                    let v = [Value::Str(std::borrow::Cow::Borrowed(s.as_str()))];
                    let m = bits_where(&tests, &v);
                    (s, m)
                })
                .collect();
            let by_int = ints
                .into_iter()
                .map(|n| (n, bits_where(&tests, &[Value::Int(n)])))
                .collect();
            let (eq, dynamic): (Vec<_>, Vec<_>) = tests.iter().partition(|(_, t)| equality_only(t));
            // A text no literal equals and no integer parses from.
            let nothing = [Value::Str(std::borrow::Cow::Borrowed("\u{1}\u{2}"))];
            tables.push(FieldTable {
                field: kind,
                all: bits_of(tests.iter().map(|(i, _)| *i)),
                absent: bits_where(&tests, &[]),
                by_str,
                by_int,
                others: bits_where(&eq, &nothing),
                dynamic: bits_of(dynamic.iter().map(|(i, _)| *i)),
            });
        }
        Some(FieldTables { tables })
    }

    /// The verdicts on a line's fields: (tests decided, tests true, tests to run when asked).
    /// A field the structure pass could not read decides none of its tests; a value no rule
    /// names leaves its patterns, ranges and lists to be run, lazily (a glob on the username
    /// costs more than the rest of the line's verdicts together).
    pub(super) fn verdicts(&self, top: &TopFields<'_>) -> (u128, u128, u128) {
        let (mut known, mut truth, mut deferred) = (0u128, 0u128, 0u128);
        for t in &self.tables {
            let (bits, later) = match t.field.scalar(top) {
                Scalar::Unknown => continue,
                Scalar::Absent => (t.absent, 0),
                Scalar::Int(n) => match t.by_int.get(&n) {
                    Some(m) => (*m, 0),
                    None => (t.others, t.dynamic),
                },
                Scalar::Str(s) => match t.by_str.get(s) {
                    Some(m) => (*m, 0),
                    // Text that spells an integer may equal an integer literal: run all.
                    None if s.parse::<i64>().is_ok() => (0, t.all),
                    None => (t.others, t.dynamic),
                },
            };
            known |= t.all & !later;
            truth |= bits & !later;
            deferred |= later;
        }
        (known, truth, deferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_rules;
    use crate::prefilter::Prefilter;

    /// The tables give each test's own verdict (`FieldTest::read`: the test run on the value)
    /// for every value a field may be read as: named by a rule or not, text that spells an
    /// integer (`+403`, `0403`), empty, absent, unknown.
    #[test]
    fn the_tables_agree_with_each_test_run_on_the_value() {
        let yaml = "\
lists:
  ns: [kube-system, '12']
rules:
- {id: a, match: {responseStatus.code: [401, 403]}, window: 1m, threshold: 1}
- {id: b, match: {responseStatus.code: '404', verb: {not: get}}, window: 1m, threshold: 1}
- {id: c, match: {responseStatus.code: {gte: 200, lt: 300}, objectRef.resource: [pods, '7']}, window: 1m, threshold: 1}
- {id: d, match: {user.username: {glob: 'system:node:*'}, objectRef.subresource: {exists: false}}, window: 1m, threshold: 1}
- {id: e, match: {objectRef.namespace: {in_list: ns}, objectRef.name: {not: {exists: true}}}, window: 1m, threshold: 1}
- {id: f, match: {verb: [create, patch], objectRef.apiGroup: {contains: rbac}}, window: 1m, threshold: 1}
";
        let rules = load_rules("t.yaml", yaml).unwrap();
        let p = Prefilter::new(&rules);
        let tables = p.tables.as_ref().expect("tables");
        let strs = [
            "get",
            "create",
            "patch",
            "pods",
            "7",
            "+403",
            "0403",
            "403",
            "404",
            "12",
            "",
            "kube-system",
            "system:node:n1",
            "rbac.authorization.k8s.io",
            "x",
        ];
        let mut scalars: Vec<Scalar<'_>> = strs.iter().map(|s| Scalar::Str(s)).collect();
        scalars.extend([401, 403, 404, 200, 299, 300, 7, 12, -1].map(Scalar::Int));
        scalars.extend([Scalar::Absent, Scalar::Unknown]);
        let mut checked = 0;
        for (i, &a) in scalars.iter().enumerate() {
            // Every scalar in every field, paired so that each field sees each value.
            let b = scalars[(i * 7 + 3) % scalars.len()];
            let c = scalars[(i * 5 + 1) % scalars.len()];
            for top in [
                TopFields {
                    verb: a,
                    code: b,
                    resource: c,
                    subresource: a,
                    namespace: b,
                    name: c,
                    api_group: a,
                    username: b,
                    ..TopFields::default()
                },
                TopFields {
                    verb: c,
                    code: a,
                    resource: b,
                    subresource: c,
                    namespace: a,
                    name: b,
                    api_group: c,
                    username: a,
                    ..TopFields::default()
                },
                TopFields {
                    verb: b,
                    code: c,
                    resource: a,
                    subresource: b,
                    namespace: c,
                    name: a,
                    api_group: b,
                    username: c,
                    ..TopFields::default()
                },
            ] {
                let (known, truth, deferred) = tables.verdicts(&top);
                for (k, f) in p.fields.iter().enumerate() {
                    let from_table = if deferred >> k & 1 == 1 {
                        f.read(&top)
                    } else {
                        (known >> k & 1 == 1).then_some(truth >> k & 1 == 1)
                    };
                    assert_eq!(from_table, f.read(&top), "test {} on {top:?}", f.key);
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "{checked}");
    }
}
