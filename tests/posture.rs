//! Posture end to end (issue #17): a CloudWatch S3 export tree (two API servers, gzip files
//! per stream) with a Deployment patched to run privileged, a replicas-only patch, an ECR pod,
//! a Docker Hub pod, and two namespaces, one given a NetworkPolicy in time. The bundled rules
//! fire on exactly what the guidance's Config checks would flag, once each, with evidence;
//! with the prefilter on and off and on several threads (see `authwatch_tests::run`).

use std::io::Write;
use std::path::Path;

use authwatch::sources::files::FormatChoice;
use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_tests::{expected, fired, run};

const STREAMS: [&str; 2] = [
    "kube-apiserver-audit-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "kube-apiserver-audit-f9e8d7c6b5a4938271605f4e3d2c1b0a",
];

/// One audit event at `at` (10:MM:SS on 2026-11-20) with `body` as its requestObject.
fn event(
    id: &str,
    at: &str,
    verb: &str,
    object_ref: serde_json::Value,
    code: i64,
    body: Option<serde_json::Value>,
) -> (i64, String) {
    let ts = format!("2026-11-20T10:{at}.000000Z");
    let mut e = serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": id, "stage": "ResponseComplete", "requestURI": "/apis/x", "verb": verb,
        "user": {"username": "alice", "groups": ["system:authenticated"],
                 "extra": {"canonicalArn": ["arn:aws:iam::111122223333:role/platform"],
                           "accessKeyId": ["ASIAEXAMPLEALICE001"]}},
        "sourceIPs": ["192.0.2.10"], "userAgent": "kubectl/v1.31.2",
        "objectRef": object_ref, "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": ts, "stageTimestamp": ts,
    });
    if let Some(b) = body {
        e["requestObject"] = b;
    }
    (parse_timestamp(&ts).unwrap() / 1000, e.to_string())
}

fn pod(image: &str) -> serde_json::Value {
    serde_json::json!({"containers": [{"name": "app", "image": image}]})
}

fn events() -> Vec<(i64, String)> {
    use serde_json::json;
    let deploy = |name: &str| json!({"resource": "deployments", "namespace": "prod", "name": name, "apiGroup": "apps", "apiVersion": "v1"});
    let pods = |name: &str| json!({"resource": "pods", "namespace": "prod", "name": name, "apiVersion": "v1"});
    vec![
        // Created harmless, then patched to run privileged: only what the patch sets.
        event(
            "p-01",
            "00:00",
            "create",
            deploy("web"),
            201,
            Some(json!({
            "kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"replicas": 2, "template": {"spec": pod("111122223333.dkr.ecr.eu-west-1.amazonaws.com/web:3")}}})),
        ),
        event(
            "p-02",
            "05:00",
            "patch",
            deploy("web"),
            200,
            Some(json!({
            "spec": {"template": {"spec": {"containers": [{"name": "app", "securityContext": {"privileged": true}}]}}}})),
        ),
        // A patch that only scales: quiet.
        event(
            "p-03",
            "06:00",
            "patch",
            deploy("api"),
            200,
            Some(json!({"spec": {"replicas": 5}})),
        ),
        // An ECR pod (trusted) and a Docker Hub pod (no registry: docker.io).
        event(
            "p-04",
            "07:00",
            "create",
            pods("ecr-pod"),
            201,
            Some(json!({
            "kind": "Pod", "apiVersion": "v1", "metadata": {"name": "ecr-pod", "namespace": "prod"},
            "spec": pod("111122223333.dkr.ecr.eu-west-1.amazonaws.com/tools@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")})),
        ),
        event(
            "p-05",
            "08:00",
            "create",
            pods("hub-pod"),
            201,
            Some(json!({
            "kind": "Pod", "apiVersion": "v1", "metadata": {"name": "hub-pod", "namespace": "prod"},
            "spec": pod("nginx:1.27")})),
        ),
        // Two namespaces; one gets a NetworkPolicy within 10 minutes.
        event(
            "n-01",
            "01:00",
            "create",
            json!({"resource": "namespaces", "name": "with-np", "apiVersion": "v1"}),
            201,
            None,
        ),
        event(
            "n-02",
            "03:00",
            "create",
            json!({"resource": "networkpolicies", "namespace": "with-np", "name": "default-deny", "apiGroup": "networking.k8s.io", "apiVersion": "v1"}),
            201,
            None,
        ),
        event(
            "n-03",
            "02:00",
            "create",
            json!({"resource": "namespaces", "name": "no-np", "apiVersion": "v1"}),
            201,
            None,
        ),
        // Time moves on.
        event(
            "t-01",
            "30:00",
            "get",
            json!({"resource": "pods", "namespace": "prod", "apiVersion": "v1"}),
            200,
            None,
        ),
    ]
}

fn write_export(root: &Path) {
    let task = root.join("6f0e1d2c-3b4a-5968-7786-95a4b3c2d1e0");
    let mut evs = events();
    evs.sort_by_key(|e| e.0);
    for (s, stream) in STREAMS.iter().enumerate() {
        let dir = task.join(stream);
        std::fs::create_dir_all(&dir).unwrap();
        let text: String = evs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == s)
            .map(|(_, (ms, json))| format!("{} {json}\n", format_millis((ms + 700) * 1000)))
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(dir.join("000000.gz"), gz.finish().unwrap()).unwrap();
    }
}

#[test]
fn an_export_tree_fires_the_posture_rules_on_exactly_what_they_check() {
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path());
    let rules = authwatch::rule_files::load(&[]).unwrap();
    let (alerts, s) = run(
        &[dir.path().to_owned()],
        FormatChoice::Auto,
        rules,
        Some("prod"),
    );
    assert_eq!(s.parse_errors, 0);
    let got = fired(&alerts);
    let want = expected(&[
        (
            "namespace-without-network-policy",
            &["no-np"],
            "2026-11-20T10:12:00.000Z",
        ),
        (
            "privilege-escalation-allowed",
            &["prod", "web"],
            "2026-11-20T10:05:00.000Z",
        ),
        (
            "privileged-container",
            &["prod", "web"],
            "2026-11-20T10:05:00.000Z",
        ),
        (
            "untrusted-image-registry",
            &["prod", "hub-pod"],
            "2026-11-20T10:08:00.000Z",
        ),
    ]);
    assert_eq!(got, want, "{alerts:#?}");
    // Each explains itself.
    let privileged = alerts
        .iter()
        .find(|a| a.rule == "privileged-container")
        .unwrap();
    let e = privileged.evidence.as_ref().expect("evidence");
    assert_eq!(e.verb.as_deref(), Some("patch"));
    assert_eq!(e.audit_id.as_deref(), Some("p-02"));
    assert_eq!(e.containers[0].privileged, Some(true));
    assert_eq!(
        e.iam_principal.as_deref(),
        Some("arn:aws:iam::111122223333:role/platform")
    );
    assert!(e.host.as_deref().is_some_and(|h| STREAMS.contains(&h)));
    let hub = alerts
        .iter()
        .find(|a| a.rule == "untrusted-image-registry")
        .unwrap();
    let e = hub.evidence.as_ref().expect("evidence");
    assert_eq!(e.containers[0].image.as_deref(), Some("nginx:1.27"));
    let ns = alerts
        .iter()
        .find(|a| a.rule == "namespace-without-network-policy")
        .unwrap();
    assert_eq!(
        ns.evidence.as_ref().unwrap().audit_id.as_deref(),
        Some("n-03")
    );
    assert_eq!(ns.cluster.as_deref(), Some("prod"));
}

/// A request body may hold a key named like the event's time (here a ServiceAccount's
/// annotation: EKS logs its writes with their body, and no bundled rule reads it): a record
/// the prefilter rules out must move the clock by its own time only. Were the nested time
/// taken (a byte search for the key finds it), a client could push the watermark two
/// hours ahead with one request, and the denied burst after it would be too late to count:
/// `run` replays with the prefilter on and off and requires the same alerts.
#[test]
fn a_time_inside_a_request_body_does_not_move_the_clock() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let mut evs = vec![
        // Opens an absence window, so that ruled-out records move the clock.
        event(
            "t-01",
            "00:00",
            "create",
            json!({"resource": "namespaces", "name": "late", "apiVersion": "v1"}),
            201,
            None,
        ),
        event(
            "t-02",
            "00:05",
            "create",
            json!({"resource": "serviceaccounts", "namespace": "prod", "name": "ci", "apiVersion": "v1"}),
            201,
            Some(json!({"kind": "ServiceAccount", "metadata": {"name": "ci",
                "annotations": {"requestReceivedTimestamp": "2026-11-20T12:00:00.000000Z"}}})),
        ),
    ];
    for i in 0..25 {
        evs.push(event(
            &format!("t-d{i:02}"),
            &format!("00:{:02}", 10 + i),
            "list",
            json!({"resource": "secrets", "namespace": "prod", "apiVersion": "v1"}),
            403,
            None,
        ));
    }
    let text: String = evs.iter().map(|(_, l)| format!("{l}\n")).collect();
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, text).unwrap();
    let rules = authwatch::rule_files::load(&[]).unwrap();
    let (alerts, s) = run(&[file], FormatChoice::Auto, rules, Some("prod"));
    assert_eq!(s.parse_errors, 0);
    assert_eq!(s.late_events, 0, "{s:?}");
    assert!(
        alerts.iter().any(|a| a.rule == "denied-by-user"),
        "the denied burst after the body's time must still alert: {alerts:#?}"
    );
}
