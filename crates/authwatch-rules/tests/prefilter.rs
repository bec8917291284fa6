//! The prefilter is sound: whenever a rule matches an event, the prefilter derived from the
//! rules lets the event's line through — whatever the rules, whatever JSON escaping the
//! encoder used (Go escapes <, > and & as \u003c, \u003e, \u0026), and inside a shipper's
//! wrapper.

use authwatch_event::structure::scan_structure;
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
    "responseStatus.code: {gte: 200, lt: 300}",
    "objectRef.resource: {not: pods}",
    "objectRef.subresource: {exists: false}",
    "user.username: [bob, 'a<b']",
    "verb: {not: {glob: 'c*'}}",
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

/// The rule file of one case: rule `r{i}` with the conditions picked for it.
fn rule_file(picks: &[Vec<usize>], conditions: &[&str]) -> Option<String> {
    let yaml: String = picks
        .iter()
        .enumerate()
        .map(|(i, conds)| {
            let body: Vec<String> = conds
                .iter()
                .map(|&c| format!("    {}", conditions[c]))
                .collect();
            format!(
                "- id: r{i}\n  match:\n{}\n  window: 1m\n  threshold: 1\n",
                body.join("\n")
            )
        })
        .collect();
    // The same path twice in one mapping is not a rule.
    load_rules("p.yaml", &yaml).ok().map(|_| yaml)
}

/// When a rule of `yaml` matches `line`, the prefilter lets it through, from its bytes
/// alone and with the fields the structure pass read.
fn assert_sound(yaml: &str, line: &str) -> Result<(), TestCaseError> {
    let rules = load_rules("p.yaml", yaml).expect("checked by rule_file");
    let prefilter = Prefilter::new(&rules);
    let rec = RawRecord {
        message: line.as_bytes(),
        ..Default::default()
    };
    let mut matched = false;
    visit_events(&rec, &mut |v| {
        let v = v.expect("valid event");
        let facts = EventFacts::new(&v);
        matched |= rules.iter().any(|r| r.matches(&facts));
    });
    if matched {
        prop_assert!(
            prefilter.may_match(line.as_bytes()),
            "rules:\n{}\nline: {}",
            yaml,
            line
        );
        let top = scan_structure(line.as_bytes()).ok().flatten();
        prop_assert!(
            prefilter.may_match_read(line.as_bytes(), top.as_ref()),
            "with {:?}; rules:\n{}\nline: {}",
            top,
            yaml,
            line
        );
    }
    Ok(())
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
        let Some(yaml) = rule_file(&picks, CONDITIONS) else { return Ok(()) };
        let mut line = event(code, verb, resource, sub, user, ip, agent, forbid);
        if escape {
            line = go_escape(&line);
        }
        if wrap {
            line = serde_json::json!({"log": line, "host": "h"}).to_string();
        }
        assert_sound(&yaml, &line)?;
    }
}

/// Conditions on request bodies: values under keys the client wrote, which a client may
/// escape (`"priv\u0069leged"`, `"\/var\/run"`): a patch is logged as sent.
const BODY_CONDITIONS: &[&str] = &[
    "pod.containers[*].securityContext.privileged: true",
    "pod.containers[*].securityContext.allowPrivilegeEscalation: {not: false}",
    "pod.containers[*].image: {registry_not_in: [public.ecr.aws]}",
    "pod.containers[*].image: {contains: /evil}",
    "pod.volumes[*].hostPath.path: {contains: /var/run}",
    "pod.hostNetwork: true",
    "pod.containers: {exists: true}",
    "requestObject.metadata.labels.app: web",
    "objectRef.resource: [pods, deployments]",
    "verb: [create, patch]",
];

#[allow(clippy::too_many_arguments)]
fn body_event(
    verb: &str,
    resource: &str,
    privileged: Option<bool>,
    image: &str,
    host_path: Option<&str>,
    host_network: bool,
    list: &str,
    sub: Option<&str>,
) -> String {
    let mut container = serde_json::json!({"name": "c", "image": image});
    if let Some(p) = privileged {
        container["securityContext"] = serde_json::json!({"privileged": p});
    }
    let mut spec = serde_json::json!({ list: [container] });
    if let Some(p) = host_path {
        spec["volumes"] = serde_json::json!([{"name": "v", "hostPath": {"path": p}}]);
    }
    if host_network {
        spec["hostNetwork"] = true.into();
    }
    let body = if resource == "pods" {
        serde_json::json!({"metadata": {"labels": {"app": "web"}}, "spec": spec})
    } else {
        serde_json::json!({"metadata": {"labels": {"app": "web"}}, "spec": {"template": {"spec": spec}}})
    };
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "x",
        "requestURI": format!("/api/v1/namespaces/d/{resource}"), "verb": verb, "user": {"username": "u"},
        "sourceIPs": ["10.0.0.5"], "objectRef": {"resource": resource, "namespace": "d", "subresource": sub},
        "responseStatus": {"code": 201}, "requestReceivedTimestamp": "2026-11-20T10:00:00Z",
        "requestObject": body,
    })
    .to_string()
}

/// Writes the first letter of each key in `keys` as a `\u` escape, as a client may.
fn escape_keys(line: &str, keys: &[&str]) -> String {
    let mut out = line.to_owned();
    for k in keys {
        let mut chars = k.chars();
        if let Some(first) = chars.next() {
            let escaped = format!("\"\\u{:04x}{}\"", first as u32, chars.as_str());
            out = out.replace(&format!("\"{k}\""), &escaped);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn a_matching_body_line_always_passes(
        picks in prop::collection::vec(prop::collection::vec(0usize..BODY_CONDITIONS.len(), 1..4), 1..4),
        verb in prop::sample::select(vec!["create", "patch", "get"]),
        resource in prop::sample::select(vec!["pods", "deployments"]),
        privileged in prop::option::of(any::<bool>()),
        image in prop::sample::select(vec!["nginx", "public.ecr.aws/x/y:1", "evil.io:5000/evil@sha256:ab"]),
        host_path in prop::option::of(prop::sample::select(vec!["/var/run/docker.sock", "/etc"])),
        host_network in any::<bool>(),
        list in prop::sample::select(vec!["containers", "initContainers", "ephemeralContainers"]),
        sub in prop::option::of(prop::sample::select(vec!["ephemeralcontainers", "status", ""])),
        escaped_keys in prop::sample::subsequence(vec!["privileged", "image", "path", "hostNetwork", "containers", "app", "hostPath"], 0..3),
        escape_slashes in any::<bool>(),
        wrap in any::<bool>(),
    ) {
        let Some(yaml) = rule_file(&picks, BODY_CONDITIONS) else { return Ok(()) };
        let mut line = body_event(verb, resource, privileged, image, host_path, host_network, list, sub);
        line = escape_keys(&line, &escaped_keys);
        if escape_slashes {
            line = line.replace('/', "\\/");
        }
        if wrap {
            line = serde_json::json!({"log": line, "host": "h"}).to_string();
        }
        assert_sound(&yaml, &line)?;
    }
}
