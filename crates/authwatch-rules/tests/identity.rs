//! The IAM principal behind a Kubernetes user (issue #17, part 6): on EKS `user.extra` holds
//! the IAM role (`canonicalArn`), the assumed-role session (`arn`, `sessionName`) and the
//! access key (`accessKeyId`). Every alert carries the distinct principals and keys of the
//! events it counted (a sorted sample of at most 10, with the total), and a rule can group by
//! them.

use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_event::{visit_events, Micros, RawRecord};
use authwatch_rules::{load_rules, Alert, Engine, EngineConfig};

const SEC: Micros = 1_000_000;

fn base() -> Micros {
    parse_timestamp("2026-11-20T10:00:00Z").unwrap()
}

/// A denied `list secrets` by `user` from `ip` at `secs`, signed by `role`'s session `key`
/// (EKS writes each extra value as a list of one string).
fn line(id: &str, secs: i64, ip: &str, user: &str, role: Option<&str>, key: &str) -> String {
    let extra = match role {
        Some(role) => format!(
            r#","extra":{{"accessKeyId":["{key}"],"arn":["arn:aws:sts::111122223333:assumed-role/{role}/{user}-session"],"canonicalArn":["arn:aws:iam::111122223333:role/{role}"],"principalId":["AROAEXAMPLE"],"sessionName":["{user}-session"]}}"#
        ),
        None => String::new(),
    };
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"list","requestURI":"/api/v1/secrets","user":{{"username":"{user}","groups":["system:authenticated"]{extra}}},"sourceIPs":["{ip}"],"objectRef":{{"resource":"secrets"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"{}"}}"#,
        format_millis(base() + secs * SEC)
    )
}

fn run(rule: &str, lines: &[String]) -> Vec<Alert> {
    let rules = load_rules("identity.yaml", rule).unwrap();
    let mut engine = Engine::new(rules, EngineConfig::default());
    let mut alerts = Vec::new();
    for l in lines {
        let record = RawRecord {
            message: l.as_bytes(),
            ..Default::default()
        };
        visit_events(&record, &mut |v| {
            engine.observe(&v.expect("a valid event"), &mut alerts)
        });
    }
    engine.finish(&mut alerts);
    alerts
}

const BY_IP: &str =
    "id: r\nmatch: {responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 5m\nthreshold: 4\n";

#[test]
fn an_alert_carries_the_distinct_iam_principals_and_access_keys_behind_it() {
    let lines = vec![
        line("a1", 0, "198.51.100.7", "admin", Some("ops"), "ASIAAAA"),
        line("a2", 1, "198.51.100.7", "admin", Some("ops"), "ASIAAAA"),
        line("a3", 2, "198.51.100.7", "dev", Some("dev"), "ASIABBB"),
        // A user mapped without an IAM principal (a service account token): nothing to add.
        line(
            "a4",
            3,
            "198.51.100.7",
            "system:serviceaccount:x:y",
            None,
            "",
        ),
    ];
    let alerts = run(BY_IP, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        a.iam_principals,
        [
            "arn:aws:iam::111122223333:role/dev",
            "arn:aws:iam::111122223333:role/ops"
        ]
    );
    assert_eq!(a.iam_principal_count, 2);
    assert_eq!(a.access_key_ids, ["ASIAAAA", "ASIABBB"]);
    assert_eq!(a.access_key_id_count, 2);
    let json: serde_json::Value = serde_json::from_str(&a.to_json_line()).unwrap();
    assert_eq!(
        json["iam_principals"][1],
        "arn:aws:iam::111122223333:role/ops"
    );
    assert_eq!(json["access_key_id_count"], 2);
}

#[test]
fn the_sample_is_bounded_and_the_count_is_not() {
    let lines: Vec<String> = (0..25)
        .map(|i| {
            line(
                &format!("b{i}"),
                i,
                "198.51.100.8",
                "admin",
                Some(&format!("role-{i:02}")),
                &format!("ASIA{i:04}"),
            )
        })
        .collect();
    let rule = BY_IP.replace("threshold: 4", "threshold: 25");
    let alerts = run(&rule, &lines);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].iam_principals.len(), 10);
    assert_eq!(alerts[0].iam_principal_count, 25);
    assert_eq!(alerts[0].access_key_ids.len(), 10);
    assert_eq!(alerts[0].access_key_id_count, 25);
    assert_eq!(
        alerts[0].iam_principals[0],
        "arn:aws:iam::111122223333:role/role-00"
    );
}

#[test]
fn without_user_extra_the_alert_has_no_identity_fields() {
    let lines: Vec<String> = (0..4)
        .map(|i| line(&format!("c{i}"), i, "198.51.100.9", "bob", None, ""))
        .collect();
    let alerts = run(BY_IP, &lines);
    assert_eq!(alerts.len(), 1);
    let json: serde_json::Value = serde_json::from_str(&alerts[0].to_json_line()).unwrap();
    for f in [
        "iam_principals",
        "iam_principal_count",
        "access_key_ids",
        "access_key_id_count",
    ] {
        assert!(json.get(f).is_none(), "{f} in {json}");
    }
}

#[test]
fn rules_group_by_and_match_on_the_iam_principal() {
    // Two Kubernetes users behind one IAM role: one key, counted together.
    let rule = "id: by-role\nmatch:\n  responseStatus.code: 403\n  user.extra.canonicalArn: {glob: 'arn:aws:iam::*:role/*'}\ngroup_by: [user.extra.canonicalArn]\nwindow: 5m\nthreshold: 3\n";
    let lines = vec![
        line("d1", 0, "198.51.100.10", "alice", Some("shared"), "ASIA1"),
        line("d2", 1, "198.51.100.11", "bob", Some("shared"), "ASIA2"),
        line("d3", 2, "198.51.100.12", "carol", None, ""),
        line("d4", 3, "198.51.100.13", "dave", Some("shared"), "ASIA3"),
    ];
    let alerts = run(rule, &lines);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0].group.0,
        [(
            "user.extra.canonicalArn".to_owned(),
            "arn:aws:iam::111122223333:role/shared".to_owned()
        )]
    );
    assert_eq!(alerts[0].count, 3);
    assert_eq!(alerts[0].users, ["alice", "bob", "dave"]);
}
