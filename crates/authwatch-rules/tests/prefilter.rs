//! The prefilter is sound: whenever a rule matches an event, the prefilter derived from the
//! rules lets the event's line through — whatever the rules, whatever JSON escaping the
//! encoder used (Go escapes <, > and & as \u003c, \u003e, \u0026), and inside a shipper's
//! wrapper.

use authwatch_event::{visit_events, RawRecord};
use authwatch_rules::field::EventFacts;
use authwatch_rules::{load_rules, Prefilter};
use proptest::prelude::*;

const CONDITIONS: &[&str] = &[
    "responseStatus.code: [401, 403]",
    "responseStatus.code: 404",
    "responseStatus.code: '403'",
    "responseStatus.code: {gte: 400}",
    "verb: get",
    "verb: [list, watch]",
    "objectRef.resource: secrets",
    "objectRef.subresource: exec",
    "user.username: {glob: 'system:*'}",
    "user.username: bob",
    "user.username: 'a<b'",
    "requestURI: {contains: /exec}",
    "requestURI: {contains: '?a=1&b=2'}",
    "sourceIPs: {cidr: 10.0.0.0/8}",
    "sourceIPs: 198.51.100.7",
    "userAgent: 'kubectl/v1.30 (a&b)'",
    "userAgent: {not: curl}",
    "any: [{verb: delete}, {responseStatus.code: 401}]",
    "annotations.authorization.k8s.io/decision: forbid",
    "impersonatedUser.username: {exists: true}",
];

#[allow(clippy::too_many_arguments)]
fn event(
    code: i64,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    user: Option<&str>,
    ip: &str,
    agent: &str,
    forbid: bool,
) -> String {
    let mut obj = serde_json::json!({"resource": resource});
    if let Some(s) = sub {
        obj["subresource"] = s.into();
    }
    let mut ev = serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "x",
        "requestURI": format!("/api/v1/{resource}{}?a=1&b=2", sub.map(|s| format!("/p/{s}")).unwrap_or_default()),
        "verb": verb, "user": {}, "sourceIPs": [ip, "10.0.0.5"], "userAgent": agent,
        "objectRef": obj, "responseStatus": {"code": code},
        "requestReceivedTimestamp": "2026-11-20T10:00:00Z",
        "annotations": {"authorization.k8s.io/decision": if forbid { "forbid" } else { "allow" }},
    });
    if let Some(u) = user {
        ev["user"] = serde_json::json!({"username": u});
        ev["impersonatedUser"] = serde_json::json!({"username": u});
    }
    ev.to_string()
}

fn go_escape(s: &str) -> String {
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn a_matching_line_always_passes(
        picks in prop::collection::vec(prop::collection::vec(0usize..CONDITIONS.len(), 1..4), 1..4),
        code in prop::sample::select(vec![200i64, 401, 403, 404]),
        verb in prop::sample::select(vec!["get", "list", "watch", "delete", "create"]),
        resource in prop::sample::select(vec!["secrets", "pods", "configmaps"]),
        sub in prop::option::of(prop::sample::select(vec!["exec", "log"])),
        user in prop::option::of(prop::sample::select(vec!["bob", "system:node:n1", "a<b"])),
        ip in prop::sample::select(vec!["198.51.100.7", "10.1.2.3", "2001:db8::1"]),
        agent in prop::sample::select(vec!["kubectl/v1.30 (a&b)", "curl", "Go-http-client/1.1"]),
        forbid in any::<bool>(),
        escape in any::<bool>(),
        wrap in any::<bool>(),
    ) {
        let yaml: String = picks
            .iter()
            .enumerate()
            .map(|(i, conds)| {
                let body: Vec<String> = conds.iter().map(|&c| format!("    {}", CONDITIONS[c])).collect();
                format!("- id: r{i}\n  match:\n{}\n  window: 1m\n  threshold: 1\n", body.join("\n"))
            })
            .collect();
        let rules = match load_rules("p.yaml", &yaml) {
            Ok(r) => r,
            Err(_) => return Ok(()), // the same path twice in one mapping: not a rule
        };
        let prefilter = Prefilter::new(&rules);
        let mut line = event(code, verb, resource, sub, user, ip, agent, forbid);
        if escape {
            line = go_escape(&line);
        }
        if wrap {
            line = serde_json::json!({"log": line, "host": "h"}).to_string();
        }
        let rec = RawRecord { message: line.as_bytes(), ..Default::default() };
        let mut matched = false;
        visit_events(&rec, &mut |v| {
            let v = v.expect("valid event");
            let facts = EventFacts::new(&v);
            matched |= rules.iter().any(|r| r.matches(&facts));
        });
        if matched {
            prop_assert!(prefilter.may_match(line.as_bytes()), "rules:\n{}\nline: {}", yaml, line);
        }
    }
}
