//! Rules: their YAML form (detection.md), validation, and the compiled [`Rule`].

use std::fmt;

use authwatch_event::Micros;
use serde_norway::Value as Yaml;

use crate::field::{EventFacts, FieldPath, Value};

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

/// A literal a field is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// An integer (`403`).
    Int(i64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

impl Literal {
    /// Whether a field value equals this literal. Numbers and their decimal text compare equal,
    /// so `"403"` in a rule matches the code 403 and a stringly exporter's `"403"` matches `403`.
    pub fn matches(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (Literal::Int(a), Value::Int(b)) => a == b,
            (Literal::Str(a), Value::Str(b)) => a == b.as_ref(),
            (Literal::Bool(a), Value::Bool(b)) => a == b,
            (Literal::Int(a), Value::Str(b)) => b.parse::<i64>().ok() == Some(*a),
            (Literal::Str(a), Value::Int(b)) => a.parse::<i64>().ok() == Some(*b),
            _ => false,
        }
    }
}

/// `path: value` or `path: [values]` in `match`: true if any value at the path equals any
/// literal.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The path as written.
    pub path: String,
    /// The resolved path.
    pub field: FieldPath,
    /// Any of these.
    pub any_of: Vec<Literal>,
}

impl Condition {
    /// Evaluates the condition on one event.
    pub fn holds(&self, facts: &EventFacts<'_, '_, '_>) -> bool {
        facts
            .values(&self.field)
            .iter()
            .any(|v| self.any_of.iter().any(|l| l.matches(v)))
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

/// A compiled threshold rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `id`, unique in a rule set.
    pub id: String,
    /// `description`.
    pub description: String,
    /// `severity`.
    pub severity: Severity,
    /// `match`: all must hold.
    pub conditions: Vec<Condition>,
    /// `group_by`.
    pub group_by: Vec<GroupField>,
    /// `window`.
    pub window: Micros,
    /// `threshold`.
    pub threshold: u64,
    /// `cooldown` (default: the window).
    pub cooldown: Micros,
    /// Where the rule was loaded from (a file name), for messages.
    pub source: String,
}

impl Rule {
    /// Whether every condition holds for the event.
    pub fn matches(&self, facts: &EventFacts<'_, '_, '_>) -> bool {
        self.conditions.iter().all(|c| c.holds(facts))
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

/// Parses a duration as rules write it: `90s`, `5m`, `1h`, `1d`, or combinations (`1h30m`).
///
/// ```
/// use authwatch_rules::rule::parse_duration;
/// assert_eq!(parse_duration("5m"), Some(300_000_000));
/// assert_eq!(parse_duration("1h30m"), Some(5_400_000_000));
/// assert_eq!(parse_duration("5"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Micros> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(i64::from(d))?,
            );
        } else {
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return None,
            };
            total = total.checked_add(num.take()?.checked_mul(unit)?)?;
        }
    }
    if num.is_some() {
        return None;
    }
    total.checked_mul(1_000_000)
}

const RULE_KEYS: &[&str] = &[
    "id",
    "description",
    "severity",
    "match",
    "group_by",
    "window",
    "threshold",
    "cooldown",
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
        let doc: Yaml = serde::Deserialize::deserialize(doc)
            .map_err(|e| err(None, None, format!("invalid YAML: {e}")))?;
        let items: Vec<Yaml> = match doc {
            Yaml::Null => continue,
            Yaml::Sequence(items) => items,
            Yaml::Mapping(m) if m.contains_key("rules") => {
                if let Some(k) = m.keys().find(|k| k.as_str() != Some("rules")) {
                    return Err(err(
                        None,
                        Some(&key_text(k)),
                        "unknown top-level key".into(),
                    ));
                }
                match m.get("rules") {
                    Some(Yaml::Sequence(items)) => items.clone(),
                    _ => return Err(err(None, Some("rules"), "expected a list of rules".into())),
                }
            }
            m @ Yaml::Mapping(_) => vec![m],
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
            rules.push(compile(source, n, &item)?);
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

fn compile(source: &str, n: usize, item: &Yaml) -> Result<Rule, RuleError> {
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
    let mut conditions = Vec::new();
    match m.get("match") {
        None => {
            return Err(err(
                "match",
                "missing (a rule must say which events it counts)".into(),
            ))
        }
        Some(Yaml::Mapping(cm)) => {
            for (k, v) in cm {
                let path = key_text(k);
                let field_name = format!("match.{path}");
                if path.is_empty() {
                    return Err(err(&field_name, "empty path".into()));
                }
                let any_of = literals(v).map_err(|m| err(&field_name, m))?;
                conditions.push(Condition {
                    field: FieldPath::parse(&path),
                    path,
                    any_of,
                });
            }
        }
        Some(_) => {
            return Err(err(
                "match",
                "expected a mapping of field paths to values".into(),
            ))
        }
    }
    let group_by = match m.get("group_by") {
        None => Vec::new(),
        Some(Yaml::String(s)) => vec![s.clone()],
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|i| match i {
                Yaml::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(err("group_by", "expected field paths (strings)".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("group_by", "expected a list of field paths".into())),
    }
    .into_iter()
    .map(|name| GroupField {
        field: FieldPath::parse(&name),
        name,
    })
    .collect();
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
    let threshold = match m.get("threshold") {
        Some(Yaml::Number(n)) => n
            .as_u64()
            .filter(|t| *t >= 1)
            .ok_or_else(|| err("threshold", "must be a whole number ≥ 1".into()))?,
        Some(_) => return Err(err("threshold", "expected a whole number ≥ 1".into())),
        None => return Err(err("threshold", "missing".into())),
    };
    Ok(Rule {
        id,
        description,
        severity,
        conditions,
        group_by,
        window,
        threshold,
        cooldown,
        source: source.into(),
    })
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn literal(v: &Yaml) -> Result<Literal, String> {
    match v {
        Yaml::String(s) => Ok(Literal::Str(s.clone())),
        Yaml::Bool(b) => Ok(Literal::Bool(*b)),
        Yaml::Number(n) => n
            .as_i64()
            .map(Literal::Int)
            .ok_or_else(|| format!("{n} is not an integer")),
        _ => Err("expected a scalar (string, integer, boolean) or a list of scalars".into()),
    }
}

fn literals(v: &Yaml) -> Result<Vec<Literal>, String> {
    match v {
        Yaml::Sequence(items) if items.is_empty() => Err("empty list matches nothing".into()),
        Yaml::Sequence(items) => items.iter().map(literal).collect(),
        other => Ok(vec![literal(other)?]),
    }
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
        assert_eq!(
            r.conditions[0].any_of,
            vec![Literal::Int(401), Literal::Int(403)]
        );
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
                MINIMAL.replace("[401, 403]", "{gte: 400}"),
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
            let e = load_rules("rules/x.yaml", &text).unwrap_err();
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
    fn literals_compare_across_number_and_text() {
        assert!(Literal::Int(403).matches(&Value::Str("403".into())));
        assert!(Literal::Str("403".into()).matches(&Value::Int(403)));
        assert!(!Literal::Str("bob".into()).matches(&Value::Int(403)));
        assert!(Literal::Bool(true).matches(&Value::Bool(true)));
    }
}
