//! One-request alerts explain themselves (issue #17, part 3): a rule with `threshold: 1`
//! carries the request that fired it (object, verb, user, IAM principal, addresses, user
//! agent, API server, auditID); counting rules do not pay for it.

use authwatch_event::{visit_events, RawRecord};
use authwatch_rules::{load_rules, Alert, Engine, EngineConfig};

/// A line of the shared corpus (1-based).
fn corpus_line(file: &str, n: usize) -> String {
    let path = format!(
        "{}/../../../shared/corpus/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .nth(n - 1)
        .expect("line")
        .to_owned()
}

fn run(rule: &str, lines: &[String]) -> Vec<Alert> {
    let rules = load_rules("evidence.yaml", rule).unwrap();
    let mut engine = Engine::new(rules, EngineConfig::default());
    let mut alerts = Vec::new();
    for l in lines {
        let record = RawRecord {
            message: l.as_bytes(),
            stream: Some("kube-apiserver-audit-0"),
            log_group: Some("/aws/eks/prod/cluster"),
            ..Default::default()
        };
        visit_events(&record, &mut |v| {
            engine.observe(&v.expect("a valid event"), &mut alerts)
        });
    }
    engine.finish(&mut alerts);
    alerts
}

const POD_CREATE: &str = "id: pod-created\nseverity: medium\nmatch:\n  verb: create\n  objectRef.resource: pods\ngroup_by: [objectRef.namespace]\nwindow: 10m\nthreshold: 1\n";

#[test]
fn a_one_request_alert_carries_the_request() {
    // Falco's trace create_nginx_pod_privileged.json: the replicaset controller creates a
    // pod; neither objectRef nor the body has a name yet (a create by generateName).
    let line = corpus_line("falco_k8s_audit.jsonl", 23);
    let alerts = run(POD_CREATE, &[line]);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let e = alerts[0].evidence.as_ref().expect("evidence");
    assert_eq!(
        e.audit_id.as_deref(),
        Some("a362d22b-db3c-4590-9505-23782f12925f")
    );
    assert_eq!(e.verb.as_deref(), Some("create"));
    assert_eq!(e.object.kind.as_deref(), Some("Pod"));
    assert_eq!(e.object.namespace.as_deref(), Some("default"));
    // A controller's create has only a generateName.
    assert_eq!(
        e.object.name.as_deref(),
        Some("nginx-deployment-5cdcc99dbf-")
    );
    assert_eq!(
        e.user.as_deref(),
        Some("system:serviceaccount:kube-system:replicaset-controller")
    );
    assert_eq!(e.host.as_deref(), Some("kube-apiserver-audit-0"));
    assert!(!e.source_ips.is_empty());
    // The offending container, with the flag that makes it so.
    assert_eq!(e.containers.len(), 1);
    assert_eq!(e.containers[0].name.as_deref(), Some("nginx"));
    assert_eq!(e.containers[0].image.as_deref(), Some("nginx"));
    assert_eq!(e.containers[0].privileged, Some(true));
    assert_eq!(e.containers[0].allow_privilege_escalation, None);
    let json: serde_json::Value = serde_json::from_str(&alerts[0].to_json_line()).unwrap();
    assert_eq!(json["evidence"]["object"]["kind"], "Pod");
    assert_eq!(json["evidence"]["containers"][0]["privileged"], true);
    assert_eq!(json["evidence"]["verb"], "create");
}

#[test]
fn counting_rules_carry_no_evidence() {
    let line = corpus_line("falco_k8s_audit.jsonl", 23);
    let rule = POD_CREATE.replace("threshold: 1", "threshold: 2").replace(
        "group_by: [objectRef.namespace, objectRef.name]",
        "group_by: [verb]",
    );
    let twice = [line.clone(), line.replace("a362d22b", "b362d22b")];
    let alerts = run(&rule, &twice);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].evidence.is_none());
    assert!(!alerts[0].to_json_line().contains("\"evidence\""));
}

#[test]
fn hostile_values_stay_escaped_in_the_json_line() {
    let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"h1","verb":"create","requestURI":"/api/v1/namespaces/x/pods","user":{"username":"ev\"il\n<script>"},"sourceIPs":["198.51.100.7"],"userAgent":"a\u001b[2J","objectRef":{"resource":"pods","namespace":"x","name":"p\"}"},"responseStatus":{"code":201},"requestReceivedTimestamp":"2026-11-20T10:00:00Z"}"#;
    let alerts = run(POD_CREATE, &[line.to_owned()]);
    assert_eq!(alerts.len(), 1);
    let text = alerts[0].to_json_line();
    assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["evidence"]["user"], "ev\"il\n<script>");
    assert_eq!(json["evidence"]["object"]["name"], "p\"}");
}
