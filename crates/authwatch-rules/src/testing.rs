//! Rule tests: a rule may carry `tests:`, events (inline, or a JSON Lines fixture file) with
//! the alerts they must produce — or `expect: []`, none.
//!
//! ```yaml
//! tests:
//!   - name: twenty denials from one address fire once
//!     events_file: tests/denied-by-source-ip.fires.jsonl   # relative to the rule file
//!     expect:
//!       - {group: {sourceIPs: 198.51.100.7}, count: 20}
//!   - name: a single denial is quiet
//!     host: kube-apiserver-audit-0          # as if read from this log stream
//!     events:
//!       - {auditID: a, sourceIPs: [198.51.100.7], responseStatus: {code: 403},
//!          requestReceivedTimestamp: "2026-11-20T10:00:00Z"}
//!     expect: []
//! ```
//!
//! Each case runs the rule alone in a fresh engine. `expect` lists the alerts in order; each
//! listed field must equal the alert's (objects compare by the listed keys only).
//! Reading fixture files is the caller's job (this crate does no I/O).

use authwatch_event::{visit_events, RawRecord};

use crate::engine::{Engine, EngineConfig};
use crate::rule::Rule;
// The `tests:` format lives below rule.rs, which parses it; its old paths keep working.
pub use crate::rule_test::{parse_tests, RuleTest, TestEvents};

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The rule.
    pub rule: String,
    /// The case.
    pub case: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why not (empty when passed).
    pub detail: String,
}

/// Whether every field given in `want` equals the one in `got` (objects: listed keys only).
fn subset(want: &serde_json::Value, got: &serde_json::Value) -> bool {
    match (want, got) {
        (serde_json::Value::Object(w), serde_json::Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| subset(v, gv))),
        (serde_json::Value::Number(w), serde_json::Value::Number(g)) => w.as_f64() == g.as_f64(),
        _ => want == got,
    }
}

/// Runs a rule's tests. `load` reads an `events_file` (a path relative to the rule file).
pub fn run_tests(
    rule: &Rule,
    load: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
) -> Vec<CaseOutcome> {
    let mut alone = rule.clone();
    alone.tests.clear();
    rule.tests
        .iter()
        .map(|case| {
            let outcome = |passed: bool, detail: String| CaseOutcome {
                rule: rule.id.clone(),
                case: case.name.clone(),
                passed,
                detail,
            };
            let lines: Vec<Vec<u8>> = match &case.events {
                TestEvents::Inline(evs) => evs.iter().map(|e| e.clone().into_bytes()).collect(),
                TestEvents::File(f) => match load(f) {
                    Ok(bytes) => bytes
                        .split(|&c| c == b'\n')
                        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                        .map(<[u8]>::to_vec)
                        .collect(),
                    Err(e) => return outcome(false, format!("cannot read {f}: {e}")),
                },
            };
            let mut engine = Engine::new(vec![alone.clone()], EngineConfig::default());
            let mut alerts = Vec::new();
            let mut bad = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                let rec = RawRecord {
                    message: line,
                    stream: case.host.as_deref(),
                    ..Default::default()
                };
                visit_events(&rec, &mut |ev| match ev {
                    Ok(v) if v.time.is_some() => engine.observe(&v, &mut alerts),
                    Ok(_) => bad.push(format!("event {}: no usable time", i + 1)),
                    Err(e) => bad.push(format!("event {}: {e}", i + 1)),
                });
            }
            engine.finish(&mut alerts);
            if !bad.is_empty() {
                return outcome(false, format!("bad test events: {}", bad.join("; ")));
            }
            let got: Vec<serde_json::Value> = alerts
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect();
            if got.len() != case.expect.len() {
                let firing: Vec<String> = got
                    .iter()
                    .map(|a| format!("{} at {}", a["group"], a["window_end"]))
                    .collect();
                return outcome(
                    false,
                    format!(
                        "expected {} alert(s), got {}: [{}]",
                        case.expect.len(),
                        got.len(),
                        firing.join(", ")
                    ),
                );
            }
            for (i, (w, g)) in case.expect.iter().zip(&got).enumerate() {
                if !subset(w, g) {
                    return outcome(false, format!("alert {}: expected {w}, got {g}", i + 1));
                }
            }
            outcome(true, String::new())
        })
        .collect()
}
