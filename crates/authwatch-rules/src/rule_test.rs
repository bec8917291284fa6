//! A rule's `tests:` cases as a rule file writes them ([`RuleTest`], [`TestEvents`],
//! [`parse_tests`]). They sit below [`rule`](crate::rule), which parses them into each
//! [`Rule`](crate::rule::Rule); [`testing`](crate::testing) runs them in an engine, so the
//! rules no longer import the module that imports the engine (issue #19). The format is
//! described in [`testing`](crate::testing).

use serde_norway::Value as Yaml;

/// Where a test's events come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TestEvents {
    /// Inline events, as JSON text, one per event.
    Inline(Vec<String>),
    /// A JSON Lines file, relative to the rule file.
    File(String),
}

/// One test case of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTest {
    /// `name`.
    pub name: String,
    /// `events` or `events_file`.
    pub events: TestEvents,
    /// `host`: the log stream the events are read as coming from.
    pub host: Option<String>,
    /// `expect`: the alerts, in order (each a partial alert object).
    pub expect: Vec<serde_json::Value>,
}

fn to_json(v: &Yaml) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Parses `tests:`. Errors are (field, message).
pub fn parse_tests(v: &Yaml) -> Result<Vec<RuleTest>, (String, String)> {
    let Yaml::Sequence(cases) = v else {
        return Err(("tests".into(), "expected a list of test cases".into()));
    };
    let mut out = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let at = format!("tests[{i}]");
        let e = |f: &str, m: &str| (format!("{at}.{f}"), m.to_owned());
        let Yaml::Mapping(m) = case else {
            return Err((
                at,
                "expected a mapping with name, events (or events_file), expect".into(),
            ));
        };
        if let Some(k) = m.keys().find(|k| {
            !matches!(
                k.as_str(),
                Some("name" | "events" | "events_file" | "host" | "expect")
            )
        }) {
            return Err(e(
                k.as_str().unwrap_or("?"),
                "unknown field (expected name, events, events_file, host, expect)",
            ));
        }
        let name = match m.get("name") {
            Some(Yaml::String(s)) => s.clone(),
            None => format!("case {}", i + 1),
            Some(_) => return Err(e("name", "expected a string")),
        };
        let events = match (m.get("events"), m.get("events_file")) {
            (Some(Yaml::Sequence(evs)), None) => TestEvents::Inline(
                evs.iter()
                    .map(|ev| to_json(ev).map(|j| j.to_string()))
                    .collect::<Result<_, _>>()
                    .map_err(|m| e("events", &m))?,
            ),
            (None, Some(Yaml::String(f))) => TestEvents::File(f.clone()),
            (Some(_), Some(_)) => return Err(e("events", "give events or events_file, not both")),
            (None, None) => return Err(e("events", "missing (events or events_file)")),
            (Some(_), None) => return Err(e("events", "expected a list of events")),
            (None, Some(_)) => return Err(e("events_file", "expected a path")),
        };
        let host = match m.get("host") {
            None => None,
            Some(Yaml::String(s)) => Some(s.clone()),
            Some(_) => return Err(e("host", "expected a string")),
        };
        let expect = match m.get("expect") {
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(to_json)
                .collect::<Result<_, _>>()
                .map_err(|m| e("expect", &m))?,
            _ => {
                return Err(e(
                    "expect",
                    "missing: a list of expected alerts ([] for none)",
                ))
            }
        };
        out.push(RuleTest {
            name,
            events,
            host,
            expect,
        });
    }
    Ok(out)
}
