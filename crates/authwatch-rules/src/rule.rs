//! Rules: their YAML form (detection.md), validation, and the compiled [`Rule`].

use std::fmt;

use authwatch_event::Micros;
use serde_norway::Value as Yaml;

use std::collections::BTreeMap;

use crate::condition::{parse_conditions, Cond, Literal, NamedList, Test};
use crate::field::{EventFacts, FieldPath};
use crate::rule_test::RuleTest;

pub use crate::duration::parse_duration;

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// The lowercase name used in rules and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `group_by`.
#[derive(Debug, Clone)]
pub struct GroupField {
    /// Spelled as in the rule; alerts use this spelling.
    pub name: String,
    /// The resolved path.
    pub field: FieldPath,
}

/// What a rule counts and when it fires.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Matching events per key in the window reach `threshold`.
    Threshold,
    /// Distinct values of a field per key in the window reach `threshold` (enumeration,
    /// credential spray).
    Distinct {
        /// `distinct_of` as written.
        name: String,
        /// The resolved path.
        field: FieldPath,
    },
    /// The count in the window is at least `min_count` (the rule's `threshold`) and at least
    /// `ratio` times the rate of the preceding `baseline` window.
    Spike {
        /// `baseline`: the period before the window that sets the normal rate.
        baseline: Micros,
        /// `ratio`.
        ratio: f64,
    },
    /// "A, then no B for the same key within the window": an event matching the rule's
    /// `match` opens its key, one matching `close` closes it, one matching `cancel` drops it;
    /// the window passing with the key open fires, at open time + window.
    Absence(Box<Absence>),
}

/// The other two phases of an [`RuleKind::Absence`] rule (the rule's own `match`,
/// `exclude` and `group_by` open a key).
#[derive(Debug, Clone)]
pub struct Absence {
    /// `close`: the event whose arrival in time keeps the rule quiet.
    pub close: Phase,
    /// `cancel`: an event that makes the key moot (the namespace deleted).
    pub cancel: Option<Phase>,
}

/// Which events a phase of an absence rule takes, and the key it names for them. Its
/// `group_by` must name the same values as the rule's (`objectRef.namespace` of a
/// NetworkPolicy is the `objectRef.name` of its namespace).
#[derive(Debug, Clone)]
pub struct Phase {
    /// `match`: all must hold.
    pub conditions: Vec<Cond>,
    /// `exclude`: any excludes.
    pub exclude: Vec<Cond>,
    /// `group_by`.
    pub group_by: Vec<GroupField>,
}

impl Phase {
    /// Whether every `match` condition holds and no `exclude` condition does.
    pub fn matches(&self, facts: &EventFacts<'_, '_, '_>) -> bool {
        all_and_none(&self.conditions, &self.exclude, facts)
    }
}

/// Every `match` condition holds and no `exclude` condition does: a rule's test, and an
/// absence rule's phases'.
fn all_and_none(conditions: &[Cond], exclude: &[Cond], facts: &EventFacts<'_, '_, '_>) -> bool {
    conditions.iter().all(|c| c.holds(facts)) && !exclude.iter().any(|c| c.holds(facts))
}

impl RuleKind {
    /// The name used in rules and alerts.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::Threshold => "threshold",
            RuleKind::Distinct { .. } => "distinct",
            RuleKind::Spike { .. } => "spike",
            RuleKind::Absence(_) => "absence",
        }
    }
}

/// Default `max_keys`: how many keys a rule tracks before evicting the least recently seen.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `id`, unique in a rule set.
    pub id: String,
    /// `description`.
    pub description: String,
    /// `severity`.
    pub severity: Severity,
    /// `kind`.
    pub kind: RuleKind,
    /// `match`: all must hold.
    pub conditions: Vec<Cond>,
    /// `exclude`: any excludes.
    pub exclude: Vec<Cond>,
    /// `group_by`.
    pub group_by: Vec<GroupField>,
    /// `window`.
    pub window: Micros,
    /// `threshold` (for `spike`: `min_count`).
    pub threshold: u64,
    /// `cooldown` (default: the window).
    pub cooldown: Micros,
    /// `max_keys`.
    pub max_keys: usize,
    /// `tests`.
    pub tests: Vec<RuleTest>,
    /// Where the rule was loaded from (a file name), for messages.
    pub source: String,
}

impl Rule {
    /// Whether every `match` condition holds and no `exclude` condition does.
    pub fn matches(&self, facts: &EventFacts<'_, '_, '_>) -> bool {
        all_and_none(&self.conditions, &self.exclude, facts)
    }

    /// The request or response body paths the rule reads (`requestObject...`, `pod.*`,
    /// `object.name` past `objectRef`), in every phase: such a rule sees nothing in events
    /// logged at the Metadata level, which carry no body.
    pub fn body_paths(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut phases: Vec<&Vec<Cond>> = vec![&self.conditions, &self.exclude];
        if let RuleKind::Absence(a) = &self.kind {
            phases.extend([&a.close.conditions, &a.close.exclude]);
            if let Some(c) = &a.cancel {
                phases.extend([&c.conditions, &c.exclude]);
            }
        }
        for c in phases.into_iter().flatten() {
            c.visit_fields(&mut |path, field, _| {
                let body = matches!(field, FieldPath::Pod(_))
                    || (field.needs_raw()
                        && (path.starts_with("requestObject")
                            || path.starts_with("responseObject")));
                if body && !out.contains(&path) {
                    out.push(path);
                }
            });
        }
        out
    }

    /// Things that make a rule match less than its author likely meant: a condition that can
    /// never hold. Loading succeeds; `authwatch rules check` and start-up print these.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.conditions {
            c.visit_fields(&mut |path, field, test| {
                if *field == FieldPath::Code {
                    let never = match test {
                        Test::Eq(lits) => lits.iter().all(|l| match l {
                            Literal::Int(_) => false,
                            Literal::Str(s) => s.parse::<i64>().is_err(),
                            Literal::Bool(_) => true,
                        }),
                        Test::Cidr(_) => true,
                        _ => false,
                    };
                    if never {
                        out.push(format!(
                            "match.{path}: {path} is a number; this condition can never hold"
                        ));
                    }
                }
                if let (
                    Test::Cidr(_),
                    FieldPath::Verb | FieldPath::Username | FieldPath::Code | FieldPath::Object(_),
                ) = (test, field)
                {
                    if *field != FieldPath::Code {
                        out.push(format!(
                            "match.{path}: cidr only matches IP addresses; {path} never holds one"
                        ));
                    }
                }
            });
        }
        if self.window < 60 && !matches!(self.kind, RuleKind::Spike { .. }) {
            out.push("window: shorter than 60 µs cannot be split into buckets".into());
        }
        out
    }
}

/// A rule file that cannot be used. Names the file, the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    /// The file (or other source name).
    pub file: String,
    /// The rule's id, or its position when it has none.
    pub rule: Option<String>,
    /// The field at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(r) = &self.rule {
            write!(f, ": rule `{r}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

const RULE_KEYS: &[&str] = &[
    "id",
    "description",
    "severity",
    "kind",
    "match",
    "exclude",
    "group_by",
    "window",
    "threshold",
    "cooldown",
    "distinct_of",
    "baseline",
    "ratio",
    "min_count",
    "max_keys",
    "close",
    "cancel",
    "tests",
];

/// Loads the rules in one YAML text: one rule, a list of rules, a mapping with a `rules:` list,
/// or several `---` documents of those.
pub fn load_rules(source: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let err = |rule: Option<String>, field: Option<&str>, message: String| RuleError {
        file: source.to_owned(),
        rule,
        field: field.map(str::to_owned),
        message,
    };
    let mut rules = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let mut lists = BTreeMap::new();
        let doc: Yaml = serde::Deserialize::deserialize(doc)
            .map_err(|e| err(None, None, format!("invalid YAML: {e}")))?;
        let items: Vec<Yaml> = match doc {
            Yaml::Null => continue,
            Yaml::Sequence(items) => items,
            Yaml::Mapping(m) if m.contains_key("rules") => {
                if let Some(k) = m
                    .keys()
                    .find(|k| !matches!(k.as_str(), Some("rules" | "lists")))
                {
                    return Err(err(
                        None,
                        Some(&key_text(k)),
                        "unknown top-level key (expected `rules` and `lists`)".into(),
                    ));
                }
                if let Some(l) = m.get("lists") {
                    lists = parse_lists(l).map_err(|(f, msg)| err(None, Some(&f), msg))?;
                }
                match m.get("rules") {
                    Some(Yaml::Sequence(items)) => items.clone(),
                    _ => return Err(err(None, Some("rules"), "expected a list of rules".into())),
                }
            }
            // One rule; `lists:` may sit beside its fields (the file's lists).
            Yaml::Mapping(mut m) => {
                if let Some(l) = m.remove("lists") {
                    lists = parse_lists(&l).map_err(|(f, msg)| err(None, Some(&f), msg))?;
                }
                vec![Yaml::Mapping(m)]
            }
            _ => {
                return Err(err(
                    None,
                    None,
                    "expected a rule, or a list of rules".into(),
                ))
            }
        };
        for item in items {
            let n = rules.len() + 1;
            rules.push(compile(source, n, &item, &lists)?);
        }
    }
    Ok(rules)
}

fn key_text(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

fn parse_lists(v: &Yaml) -> Result<BTreeMap<String, NamedList>, (String, String)> {
    let Yaml::Mapping(m) = v else {
        return Err((
            "lists".into(),
            "expected a mapping of list names to lists".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (k, items) in m {
        let name = key_text(k);
        let list = NamedList::parse(items).map_err(|e| (format!("lists.{name}"), e))?;
        out.insert(name, list);
    }
    Ok(out)
}

fn compile(
    source: &str,
    n: usize,
    item: &Yaml,
    lists: &BTreeMap<String, NamedList>,
) -> Result<Rule, RuleError> {
    let Yaml::Mapping(m) = item else {
        return Err(RuleError {
            file: source.into(),
            rule: Some(format!("#{n}")),
            field: None,
            message: "expected a mapping".into(),
        });
    };
    let id = m.get("id").and_then(Yaml::as_str).map(str::to_owned);
    let err = |field: &str, message: String| RuleError {
        file: source.into(),
        rule: Some(id.clone().unwrap_or_else(|| format!("#{n}"))),
        field: Some(field.into()),
        message,
    };
    for k in m.keys() {
        let name = key_text(k);
        if !RULE_KEYS.contains(&name.as_str()) {
            return Err(err(
                &name,
                format!("unknown field (expected one of: {})", RULE_KEYS.join(", ")),
            ));
        }
    }
    let id = match m.get("id") {
        Some(Yaml::String(s)) if valid_id(s) => s.clone(),
        Some(Yaml::String(_)) => {
            return Err(err(
                "id",
                "must be 1-128 characters of letters, digits, `-`, `_`, `.`".into(),
            ))
        }
        Some(_) => return Err(err("id", "expected a string".into())),
        None => return Err(err("id", "missing".into())),
    };
    let description = match m.get("description") {
        None => String::new(),
        Some(Yaml::String(s)) => s.clone(),
        Some(_) => return Err(err("description", "expected a string".into())),
    };
    let severity = match m.get("severity") {
        None => Severity::Medium,
        Some(Yaml::String(s)) => Severity::parse(s).ok_or_else(|| {
            err(
                "severity",
                format!("`{s}` is not one of info, low, medium, high, critical"),
            )
        })?,
        Some(_) => return Err(err("severity", "expected a string".into())),
    };
    let conditions = match m.get("match") {
        None => {
            return Err(err(
                "match",
                "missing (a rule must say which events it counts)".into(),
            ))
        }
        Some(v) => parse_conditions(v, "match", lists).map_err(|(f, msg)| err(&f, msg))?,
    };
    if conditions.is_empty() {
        return Err(err(
            "match",
            "empty: a rule must say which events it counts".into(),
        ));
    }
    let exclude = match m.get("exclude") {
        None => Vec::new(),
        Some(v) => parse_conditions(v, "exclude", lists).map_err(|(f, msg)| err(&f, msg))?,
    };
    let group_by =
        parse_group_by(m.get("group_by"), "group_by").map_err(|(f, msg)| err(&f, msg))?;
    let duration = |field: &str| -> Result<Option<Micros>, RuleError> {
        match m.get(field) {
            None => Ok(None),
            Some(Yaml::String(s)) => parse_duration(s)
                .map(Some)
                .ok_or_else(|| err(field, format!("`{s}` is not a duration like 30s, 5m, 1h"))),
            Some(_) => Err(err(field, "expected a duration like 30s, 5m, 1h".into())),
        }
    };
    let window = duration("window")?.ok_or_else(|| err("window", "missing".into()))?;
    if window <= 0 {
        return Err(err("window", "must be longer than zero".into()));
    }
    let cooldown = duration("cooldown")?.unwrap_or(window);
    let whole = |field: &str| -> Result<Option<u64>, RuleError> {
        match m.get(field) {
            None => Ok(None),
            Some(Yaml::Number(n)) => n
                .as_u64()
                .filter(|t| *t >= 1)
                .map(Some)
                .ok_or_else(|| err(field, "must be a whole number ≥ 1".into())),
            Some(_) => Err(err(field, "expected a whole number ≥ 1".into())),
        }
    };
    let kind_name = match m.get("kind") {
        None => "threshold",
        Some(Yaml::String(s)) => s.as_str(),
        Some(_) => {
            return Err(err(
                "kind",
                "expected threshold, distinct, spike or absence".into(),
            ))
        }
    };
    let only_for = |field: &str, kinds: &str| -> Result<(), RuleError> {
        if m.contains_key(field) {
            return Err(err(
                field,
                format!("only for kind {kinds} (this rule is kind {kind_name})"),
            ));
        }
        Ok(())
    };
    let (kind, threshold) = match kind_name {
        "threshold" | "distinct" => {
            only_for("baseline", "spike")?;
            only_for("ratio", "spike")?;
            only_for("min_count", "spike")?;
            let threshold =
                whole("threshold")?.ok_or_else(|| err("threshold", "missing".into()))?;
            let kind = if kind_name == "distinct" {
                match m.get("distinct_of") {
                    Some(Yaml::String(s)) if !s.is_empty() => RuleKind::Distinct {
                        name: s.clone(),
                        field: FieldPath::parse_checked(s)
                            .map_err(|m| err("distinct_of", format!("bad field path: {m}")))?,
                    },
                    Some(_) => return Err(err("distinct_of", "expected a field path".into())),
                    None => {
                        return Err(err(
                            "distinct_of",
                            "missing (which field's distinct values to count)".into(),
                        ))
                    }
                }
            } else {
                only_for("distinct_of", "distinct")?;
                RuleKind::Threshold
            };
            (kind, threshold)
        }
        "absence" => {
            let rule_group_len = group_by.len();
            for f in ["threshold", "distinct_of", "baseline", "ratio", "min_count"] {
                only_for(
                    f,
                    "threshold, distinct or spike (an absence rule fires once per open key)",
                )?;
            }
            let phase = |name: &str| -> Result<Option<Phase>, RuleError> {
                let Some(v) = m.get(name) else {
                    return Ok(None);
                };
                let Yaml::Mapping(pm) = v else {
                    return Err(err(
                        name,
                        "expected a mapping with match, exclude, group_by".into(),
                    ));
                };
                for k in pm.keys() {
                    let key = key_text(k);
                    if !matches!(key.as_str(), "match" | "exclude" | "group_by") {
                        return Err(err(
                            &format!("{name}.{key}"),
                            "unknown field (expected match, exclude, group_by)".into(),
                        ));
                    }
                }
                let conditions = match pm.get("match") {
                    Some(v) => parse_conditions(v, &format!("{name}.match"), lists)
                        .map_err(|(f, msg)| err(&f, msg))?,
                    None => Vec::new(),
                };
                if conditions.is_empty() {
                    return Err(err(
                        &format!("{name}.match"),
                        "missing or empty: say which events this phase takes".into(),
                    ));
                }
                let exclude = match pm.get("exclude") {
                    Some(v) => parse_conditions(v, &format!("{name}.exclude"), lists)
                        .map_err(|(f, msg)| err(&f, msg))?,
                    None => Vec::new(),
                };
                let field = format!("{name}.group_by");
                let group_by = match pm.get("group_by") {
                    // The same paths as the rule's when not given.
                    None => group_by.clone(),
                    v => parse_group_by(v, &field).map_err(|(f, msg)| err(&f, msg))?,
                };
                if group_by.len() != rule_group_len {
                    return Err(err(
                        &field,
                        format!(
                            "names {} value(s); the rule's group_by names {rule_group_len}: a {name} event must name the key it {name}s",
                            group_by.len()
                        ),
                    ));
                }
                Ok(Some(Phase {
                    conditions,
                    exclude,
                    group_by,
                }))
            };
            let close = phase("close")?.ok_or_else(|| {
                err(
                    "close",
                    "missing (an absence rule needs the event that closes a key)".into(),
                )
            })?;
            let cancel = phase("cancel")?;
            (RuleKind::Absence(Box::new(Absence { close, cancel })), 1)
        }
        "spike" => {
            only_for(
                "threshold",
                "threshold or distinct (spike rules use min_count)",
            )?;
            only_for("distinct_of", "distinct")?;
            let baseline =
                duration("baseline")?.ok_or_else(|| err("baseline", "missing".into()))?;
            if baseline <= 0 {
                return Err(err("baseline", "must be longer than zero".into()));
            }
            let ratio = match m.get("ratio") {
                Some(Yaml::Number(n)) => n
                    .as_f64()
                    .filter(|r| r.is_finite() && *r >= 1.0)
                    .ok_or_else(|| err("ratio", "must be a number ≥ 1".into()))?,
                Some(_) => return Err(err("ratio", "expected a number ≥ 1".into())),
                None => return Err(err("ratio", "missing".into())),
            };
            let min_count =
                whole("min_count")?.ok_or_else(|| err("min_count", "missing".into()))?;
            (RuleKind::Spike { baseline, ratio }, min_count)
        }
        other => {
            return Err(err(
                "kind",
                format!("`{other}` is not one of threshold, distinct, spike, absence"),
            ))
        }
    };
    let max_keys = whole("max_keys")?.map_or(DEFAULT_MAX_KEYS, |k| k as usize);
    let tests = match m.get("tests") {
        None => Vec::new(),
        Some(v) => crate::rule_test::parse_tests(v).map_err(|(f, msg)| err(&f, msg))?,
    };
    Ok(Rule {
        id,
        description,
        severity,
        kind,
        conditions,
        exclude,
        group_by,
        window,
        threshold,
        cooldown,
        max_keys,
        tests,
        source: source.into(),
    })
}

/// `group_by` (or a phase's): a field path or a list of them.
fn parse_group_by(v: Option<&Yaml>, field: &str) -> Result<Vec<GroupField>, (String, String)> {
    let names: Vec<String> = match v {
        None => Vec::new(),
        Some(Yaml::String(s)) => vec![s.clone()],
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|i| match i {
                Yaml::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err((
                    field.to_owned(),
                    "expected field paths (strings)".to_owned(),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err((
                field.to_owned(),
                "expected a list of field paths".to_owned(),
            ))
        }
    };
    names
        .into_iter()
        .map(|name| {
            FieldPath::parse_checked(&name)
                .map(|field| GroupField { field, name })
                .map_err(|m| (field.to_owned(), format!("bad field path: {m}")))
        })
        .collect()
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks that rule ids are unique across a whole set (several files).
pub fn check_unique_ids(rules: &[Rule]) -> Result<(), RuleError> {
    let mut seen = std::collections::HashMap::new();
    for r in rules {
        if let Some(prev) = seen.insert(r.id.as_str(), r.source.as_str()) {
            return Err(RuleError {
                file: r.source.clone(),
                rule: Some(r.id.clone()),
                field: Some("id".into()),
                message: format!("duplicate id (also defined in {prev})"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
id: forbidden-by-source-ip
description: Many denied requests from one address
severity: high
match:
  responseStatus.code: [401, 403]
group_by: [sourceIPs]
window: 5m
threshold: 20
cooldown: 15m
"#;

    #[test]
    fn loads_the_contract_example() {
        let rules = load_rules("x.yaml", MINIMAL).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.id, "forbidden-by-source-ip");
        assert_eq!(r.severity, Severity::High);
        assert_eq!(r.window, 300_000_000);
        assert_eq!(r.cooldown, 900_000_000);
        assert_eq!(r.threshold, 20);
        assert_eq!(r.group_by[0].field, FieldPath::SourceIps);
        assert!(matches!(
            &r.conditions[0],
            Cond::Field { test: Test::Eq(l), .. } if *l == vec![Literal::Int(401), Literal::Int(403)]
        ));
    }

    #[test]
    fn loads_lists_and_documents_and_defaults_cooldown() {
        let text = "- {id: a, match: {verb: get}, window: 1m, threshold: 1}\n- {id: b, match: {verb: get}, window: 2m, threshold: 1}\n---\nrules:\n  - {id: c, match: {verb: get}, window: 1m, threshold: 1}\n";
        let rules = load_rules("x.yaml", text).unwrap();
        let ids: Vec<_> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(rules[1].cooldown, 120_000_000);
        assert_eq!(rules[0].severity, Severity::Medium);
    }

    #[test]
    fn errors_name_the_file_the_rule_and_the_field() {
        let cases = [
            (MINIMAL.replace("threshold: 20", "treshold: 20"), "treshold"),
            (MINIMAL.replace("window: 5m", "window: 5 minutes"), "window"),
            (MINIMAL.replace("window: 5m", "window: 0s"), "window"),
            (
                MINIMAL.replace("severity: high", "severity: urgent"),
                "severity",
            ),
            (
                MINIMAL.replace("threshold: 20", "threshold: 0"),
                "threshold",
            ),
            (
                MINIMAL.replace("threshold: 20", "threshold: many"),
                "threshold",
            ),
            (
                MINIMAL.replace("[401, 403]", "{gte: many}"),
                "match.responseStatus.code",
            ),
            (
                MINIMAL.replace("[401, 403]", "[]"),
                "match.responseStatus.code",
            ),
            (
                MINIMAL.replace("group_by: [sourceIPs]", "group_by: 7"),
                "group_by",
            ),
        ];
        for (text, field) in cases {
            let e = load_rules("rules/x.yaml", &text).expect_err(&text);
            assert_eq!(e.file, "rules/x.yaml");
            assert_eq!(e.rule.as_deref(), Some("forbidden-by-source-ip"), "{e}");
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert!(
                e.to_string()
                    .starts_with("rules/x.yaml: rule `forbidden-by-source-ip`: field"),
                "{e}"
            );
        }
        let e = load_rules("y.yaml", "match: {verb: get}\nwindow: 1m\nthreshold: 1\n").unwrap_err();
        assert_eq!(
            (e.rule.as_deref(), e.field.as_deref()),
            (Some("#1"), Some("id"))
        );
        let e = load_rules("y.yaml", "id: [").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        let mut both = load_rules("a.yaml", MINIMAL).unwrap();
        both.extend(load_rules("b.yaml", MINIMAL).unwrap());
        let e = check_unique_ids(&both).unwrap_err();
        assert_eq!(e.to_string(), "b.yaml: rule `forbidden-by-source-ip`: field `id`: duplicate id (also defined in a.yaml)");
    }

    #[test]
    fn kinds_lists_and_exclude() {
        let text = r#"
lists:
  scanners: [10.0.0.0/8]
rules:
  - id: enum
    kind: distinct
    distinct_of: objectRef.resource
    match: {responseStatus.code: {gte: 400, lt: 500}}
    exclude: {sourceIPs: {in_list: scanners}}
    group_by: [sourceIPs]
    window: 10m
    threshold: 15
  - id: spike
    kind: spike
    match: {responseStatus.code: [401, 403]}
    window: 5m
    baseline: 1h
    ratio: 5
    min_count: 100
"#;
        let rules = load_rules("x.yaml", text).unwrap();
        assert_eq!(rules[0].kind.as_str(), "distinct");
        assert_eq!(rules[0].exclude.len(), 1);
        assert_eq!(rules[0].max_keys, DEFAULT_MAX_KEYS);
        // (RuleKind is not PartialEq since absence rules hold conditions.)
        match &rules[1].kind {
            RuleKind::Spike { baseline, ratio } => {
                assert_eq!((*baseline, *ratio), (3_600_000_000, 5.0));
            }
            other => panic!("expected a spike rule, got {other:?}"),
        }
        assert_eq!(rules[1].threshold, 100);
        let bad = [
            (
                text.replace("    distinct_of: objectRef.resource\n", ""),
                "distinct_of",
            ),
            (text.replace("ratio: 5", "ratio: 0.5"), "ratio"),
            (
                text.replace("min_count: 100", "threshold: 100"),
                "threshold",
            ),
            (
                text.replace("in_list: scanners", "in_list: scaners"),
                "exclude.sourceIPs",
            ),
            (text.replace("kind: spike", "kind: burst"), "kind"),
            (
                text.replace("[10.0.0.0/8]", "[10.0.0.0/80]"),
                "lists.scanners",
            ),
        ];
        for (t, field) in bad {
            let e = load_rules("x.yaml", &t).expect_err(&t);
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
    }

    #[test]
    fn bad_paths_and_registry_patterns_name_the_file_the_rule_and_the_field() {
        let base = "id: r\nmatch:\n  verb: create\n  FIELD: true\nwindow: 1m\nthreshold: 1\n";
        for (path, want) in [
            (
                "requestObject.spec.containers[",
                "match.requestObject.spec.containers[",
            ),
            (
                "requestObject.spec.containers[x].image",
                "match.requestObject.spec.containers[x].image",
            ),
            (
                "requestObject.spec.containers[0]",
                "match.requestObject.spec.containers[0]",
            ),
            ("'[*].image'", "match.[*].image"),
            ("requestObject..spec", "match.requestObject..spec"),
            ("pod.containers[*].", "match.pod.containers[*]."),
            ("pod.containers]", "match.pod.containers]"),
        ] {
            let text = base.replace("FIELD", path);
            let e = load_rules("rules/p.yaml", &text).expect_err(&text);
            assert_eq!(e.file, "rules/p.yaml");
            assert_eq!(e.rule.as_deref(), Some("r"));
            assert_eq!(e.field.as_deref(), Some(want), "{e}");
            assert!(e.message.starts_with("bad field path"), "{e}");
        }
        let e = load_rules(
            "g.yaml",
            "id: r\nmatch: {verb: create}\ngroup_by: [objectRef.name, 'a[1]']\nwindow: 1m\nthreshold: 1\n",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("group_by"), "{e}");
        let reg = |arg: &str| {
            load_rules(
                "rules/i.yaml",
                &format!("lists:\n  trusted: ['*.dkr.ecr.*.amazonaws.com', 'bad/path']\n  nums: [1]\nrules:\n  - id: img\n    match:\n      verb: create\n      pod.containers[*].image: {{{arg}}}\n    window: 1m\n    threshold: 1\n"),
            )
        };
        for arg in [
            "registry_not_in: trusted",
            "registry_in: nums",
            "registry_in: missing",
            "registry_in: ['my reg']",
            "registry_in: []",
            "registry_not_in: 7",
        ] {
            let e = reg(arg).expect_err(arg);
            assert_eq!(e.file, "rules/i.yaml");
            assert_eq!(e.rule.as_deref(), Some("img"), "{e}");
            assert_eq!(
                e.field.as_deref(),
                Some("match.pod.containers[*].image"),
                "{arg}: {e}"
            );
        }
        assert!(reg("registry_in: ['*.dkr.ecr.*.amazonaws.com', 'my.reg:5000']").is_ok());
        // Fine paths load.
        for path in [
            "requestObject.spec.containers[*].image",
            "requestObject.rules[*].verbs",
            "pod.hostNetwork",
            "requestObject.metadata.labels.app.kubernetes.io/name",
        ] {
            load_rules("ok.yaml", &base.replace("FIELD", path)).expect(path);
        }
    }

    #[test]
    fn body_conditions_are_evaluated_after_decoded_ones() {
        let r = &load_rules(
            "x.yaml",
            "id: r\nmatch:\n  pod.hostPID: true\n  requestObject.kind: Pod\n  annotations.authorization.k8s.io/decision: allow\n  verb: create\n  any: [{pod.hostIPC: true}, {verb: patch}]\nwindow: 1m\nthreshold: 1\n",
        )
        .unwrap()[0];
        let order: Vec<u8> = r.conditions.iter().map(Cond::cost).collect();
        assert_eq!(order, [0, 1, 2, 2, 2]);
        let Cond::Field { path, .. } = &r.conditions[0] else {
            panic!("{:?}", r.conditions[0]);
        };
        assert_eq!(path, "verb");

        // The body is parsed only when the cheaper conditions hold, whatever the order written.
        let r = &load_rules(
            "x.yaml",
            "id: r\nmatch:\n  pod.hostPID: true\n  verb: delete\nwindow: 1m\nthreshold: 1\n",
        )
        .unwrap()[0];
        let line = br#"{"kind":"Event","auditID":"a","verb":"create","objectRef":{"resource":"pods","namespace":"d","name":"p"},"requestObject":{"kind":"Pod","spec":{"hostPID":true}}}"#;
        let Ok(authwatch_event::event::Decoded::Event(ev)) = authwatch_event::event::decode(line)
        else {
            panic!("not an event");
        };
        let view = authwatch_event::EventView {
            event: &ev,
            host: None,
            log_group: None,
            time: None,
        };
        let facts = EventFacts::new(&view);
        assert!(!r.matches(&facts));
        assert!(!facts.raw_parsed(), "verb: delete failed first");
        let create = &load_rules(
            "x.yaml",
            "id: r\nmatch:\n  pod.hostPID: true\n  verb: create\nwindow: 1m\nthreshold: 1\n",
        )
        .unwrap()[0];
        assert!(create.matches(&facts));
        assert!(facts.raw_parsed());
    }

    #[test]
    fn a_condition_that_can_never_hold_is_a_warning() {
        let r = &load_rules("x.yaml", &MINIMAL.replace("[401, 403]", "forbidden")).unwrap()[0];
        assert_eq!(r.warnings().len(), 1, "{:?}", r.warnings());
        let r = &load_rules("x.yaml", &MINIMAL.replace("[401, 403]", "'403'")).unwrap()[0];
        assert!(r.warnings().is_empty(), "\"403\" equals 403");
    }
}
