//! Absence rules (issue #17, part 4): "A, then no B for the same key within T". The
//! namespace-without-network-policy shape: a namespace created opens its key, a NetworkPolicy
//! created in it closes it, the namespace deleted cancels it, and T passing with the key open
//! fires at open time + T. Same guarantees as windows: time only from events, duplicates and
//! reordering within the lateness bound change nothing, a restart that re-reads the horizon
//! and remembers what it sent neither loses nor repeats an alert.

use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_event::{visit_events, Micros, RawRecord};
use authwatch_rules::{load_rules, Alert, Engine, EngineConfig, Prefilter};

const SEC: Micros = 1_000_000;
const MIN: i64 = 60;

const RULE: &str = r#"
id: ns-no-netpol
severity: medium
kind: absence
match:
  verb: create
  objectRef.resource: namespaces
  responseStatus.code: {gte: 200, lt: 300}
group_by: [objectRef.name]
close:
  match:
    verb: create
    objectRef.resource: networkpolicies
    responseStatus.code: {gte: 200, lt: 300}
  group_by: [objectRef.namespace]
cancel:
  match:
    verb: delete
    objectRef.resource: namespaces
window: 10m
"#;

fn base() -> Micros {
    parse_timestamp("2026-11-20T10:00:00Z").unwrap()
}

#[derive(Clone, Debug)]
struct Ev {
    secs: i64,
    line: String,
}

fn at(secs: i64) -> String {
    format_millis(base() + secs * SEC)
}

fn ns_created(id: &str, secs: i64, ns: &str) -> Ev {
    Ev {
        secs,
        line: format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"create","requestURI":"/api/v1/namespaces","user":{{"username":"alice"}},"sourceIPs":["10.0.0.1"],"objectRef":{{"resource":"namespaces","name":"{ns}","apiVersion":"v1"}},"responseStatus":{{"code":201}},"requestReceivedTimestamp":"{}"}}"#,
            at(secs)
        ),
    }
}

fn netpol_created(id: &str, secs: i64, ns: &str) -> Ev {
    Ev {
        secs,
        line: format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"create","requestURI":"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies","user":{{"username":"alice"}},"sourceIPs":["10.0.0.1"],"objectRef":{{"resource":"networkpolicies","namespace":"{ns}","name":"default-deny","apiGroup":"networking.k8s.io","apiVersion":"v1"}},"responseStatus":{{"code":201}},"requestReceivedTimestamp":"{}"}}"#,
            at(secs)
        ),
    }
}

fn ns_deleted(id: &str, secs: i64, ns: &str) -> Ev {
    Ev {
        secs,
        line: format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"delete","requestURI":"/api/v1/namespaces/{ns}","user":{{"username":"alice"}},"sourceIPs":["10.0.0.1"],"objectRef":{{"resource":"namespaces","namespace":"{ns}","name":"{ns}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{}"}}"#,
            at(secs)
        ),
    }
}

/// Any other request: only moves time on.
fn tick(id: &str, secs: i64) -> Ev {
    Ev {
        secs,
        line: format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"get","requestURI":"/api/v1/pods","user":{{"username":"bob"}},"sourceIPs":["10.0.0.2"],"objectRef":{{"resource":"pods"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{}"}}"#,
            at(secs)
        ),
    }
}

fn feed(engine: &mut Engine, events: &[Ev], out: &mut Vec<Alert>) {
    for e in events {
        let record = RawRecord {
            message: e.line.as_bytes(),
            stream: Some("kube-apiserver-audit-0"),
            log_group: Some("/aws/eks/prod/cluster"),
            ..Default::default()
        };
        visit_events(&record, &mut |v| engine.observe(&v.expect("an event"), out));
    }
    engine.finish(out);
}

fn run(events: &[Ev]) -> Vec<Alert> {
    let mut engine = Engine::new(
        load_rules("absence.yaml", RULE).unwrap(),
        EngineConfig::default(),
    );
    let mut out = Vec::new();
    feed(&mut engine, events, &mut out);
    out
}

fn brief(alerts: &[Alert]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = alerts
        .iter()
        .map(|a| {
            (
                a.group.0[0].1.clone(),
                format_millis(a.window_end),
                a.alert_id.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_namespace_left_without_a_network_policy_fires_at_its_deadline() {
    let alerts = run(&[ns_created("a", 0, "team-a"), tick("t", 11 * MIN)]);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind, "absence");
    assert_eq!(
        a.group.0,
        [("objectRef.name".to_owned(), "team-a".to_owned())]
    );
    assert_eq!(a.window_end, base() + 10 * MIN * SEC);
    assert_eq!(a.window_start, base());
    assert_eq!(a.count, 1);
    assert_eq!(a.sample_audit_ids, ["a"]);
    // The opening request is the evidence.
    let e = a.evidence.as_ref().expect("evidence");
    assert_eq!(e.verb.as_deref(), Some("create"));
    assert_eq!(e.object.name.as_deref(), Some("team-a"));
    assert_eq!(a.cluster.as_deref(), Some("prod"));
}

#[test]
fn a_network_policy_in_time_closes_it_and_one_in_another_namespace_does_not() {
    let alerts = run(&[
        ns_created("a", 0, "team-a"),
        ns_created("b", 1, "team-b"),
        netpol_created("p", 5 * MIN, "team-a"),
        netpol_created("q", 6 * MIN, "elsewhere"),
        tick("t", 20 * MIN),
    ]);
    assert_eq!(brief(&alerts).len(), 1);
    assert_eq!(alerts[0].group.0[0].1, "team-b");
}

#[test]
fn a_close_exactly_at_the_deadline_is_in_time_and_one_after_is_not() {
    let in_time = run(&[
        ns_created("a", 0, "x"),
        netpol_created("p", 10 * MIN, "x"),
        tick("t", 20 * MIN),
    ]);
    assert!(in_time.is_empty(), "{in_time:?}");
    let late = run(&[
        ns_created("a", 0, "x"),
        netpol_created("p", 10 * MIN + 1, "x"),
        tick("t", 20 * MIN),
    ]);
    assert_eq!(late.len(), 1);
}

#[test]
fn deleting_the_namespace_cancels_it() {
    let alerts = run(&[
        ns_created("a", 0, "tmp"),
        ns_deleted("d", 2 * MIN, "tmp"),
        tick("t", 20 * MIN),
    ]);
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn a_deadline_after_the_last_event_is_not_known_yet() {
    // Nine minutes of stream after the namespace: a policy may still come.
    let alerts = run(&[ns_created("a", 0, "x"), tick("t", 9 * MIN)]);
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn a_namespace_recreated_after_the_cooldown_fires_again() {
    let alerts = run(&[
        ns_created("a", 0, "x"),
        ns_deleted("d", 15 * MIN, "x"),
        ns_created("b", 30 * MIN, "x"),
        tick("t", 45 * MIN),
    ]);
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);
}

fn scenario() -> Vec<Ev> {
    let mut v = Vec::new();
    for i in 0..12 {
        let ns = format!("ns-{i}");
        v.push(ns_created(&format!("c{i}"), i * 37, &ns));
        match i % 3 {
            0 => v.push(netpol_created(&format!("p{i}"), i * 37 + 200, &ns)),
            1 => v.push(ns_deleted(&format!("d{i}"), i * 37 + 300, &ns)),
            _ => {}
        }
    }
    for k in 0..40 {
        v.push(tick(&format!("t{k}"), k * 60));
    }
    v.sort_by_key(|e| e.secs);
    v
}

#[test]
fn duplicates_and_reordering_within_the_lateness_bound_change_nothing() {
    let expected = brief(&run(&scenario()));
    assert_eq!(expected.len(), 4, "{expected:?}");
    // Every event twice, and neighbours swapped (all within seconds: inside the 2-minute bound).
    let mut shuffled = Vec::new();
    for pair in scenario().chunks(2) {
        for e in pair.iter().rev() {
            shuffled.push(e.clone());
            shuffled.push(e.clone());
        }
    }
    assert_eq!(brief(&run(&shuffled)), expected);
    // Reversed in blocks of events less than 100 s apart (inside the 2-minute bound).
    let mut blocks: Vec<Ev> = Vec::new();
    let mut block: Vec<Ev> = Vec::new();
    for e in scenario() {
        if block.first().is_some_and(|f: &Ev| e.secs - f.secs >= 100) {
            blocks.extend(block.drain(..).rev());
        }
        block.push(e);
    }
    blocks.extend(block.drain(..).rev());
    assert_eq!(brief(&run(&blocks)), expected);
}

#[test]
fn a_restart_mid_window_loses_nothing_and_sends_nothing_twice() {
    let events = scenario();
    let expected = brief(&run(&events));
    let rules = load_rules("absence.yaml", RULE).unwrap();
    let horizon = rules[0].window + rules[0].cooldown;
    let mut forgetful_repeats = 0;
    for cut in [5, 15, 25, 40] {
        // The first process reads up to `cut` and stops.
        let mut first = Engine::new(rules.clone(), EngineConfig::default());
        let mut sent = Vec::new();
        feed(&mut first, &events[..cut], &mut sent);
        let cut_time = base() + events[cut - 1].secs * SEC;
        // The next re-reads from the horizon back, knowing what was sent.
        let again: Vec<Ev> = events
            .iter()
            .filter(|e| base() + e.secs * SEC > cut_time - horizon)
            .cloned()
            .collect();
        // The proof that remembering matters: without it, the re-read pages again.
        let mut forgetful = Engine::new(rules.clone(), EngineConfig::default());
        let mut repeat = Vec::new();
        feed(&mut forgetful, &again, &mut repeat);
        forgetful_repeats += repeat
            .iter()
            .filter(|a| sent.iter().any(|s| s.alert_id == a.alert_id))
            .count();
        let mut second = Engine::new(rules.clone(), EngineConfig::default());
        for a in &sent {
            let values: Vec<&str> = a.group.0.iter().map(|(_, v)| v.as_str()).collect();
            assert!(second.remember_sent(&a.rule, &values, a.window_end));
        }
        let mut later = Vec::new();
        feed(&mut second, &again, &mut later);
        let mut all = sent.clone();
        all.extend(later);
        let got = brief(&all);
        let mut ids: Vec<&String> = all.iter().map(|a| &a.alert_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            all.len(),
            "cut {cut}: an alert sent twice: {got:?}"
        );
        assert_eq!(got, expected, "cut {cut}");
    }
    assert!(
        forgetful_repeats > 0,
        "no cut re-read an alert already sent"
    );
}

#[test]
fn open_and_close_route_to_the_same_key_for_replicas() {
    // Kinesis stage 1 routes by (rule, key): the opening and the closing event of one
    // namespace must land on the same window owner.
    let engine = Engine::new(
        load_rules("absence.yaml", RULE).unwrap(),
        EngineConfig::default(),
    );
    let key_of = |e: &Ev| {
        let mut m = engine.matcher();
        let record = RawRecord {
            message: e.line.as_bytes(),
            ..Default::default()
        };
        let mut keys = Vec::new();
        visit_events(&record, &mut |v| {
            let p = m.prepare(&v.unwrap());
            keys.extend(p.partitions().map(|(r, k)| (r, k.into_owned())));
        });
        keys
    };
    let open = key_of(&ns_created("a", 0, "team-a"));
    assert_eq!(open.len(), 1);
    assert_eq!(key_of(&netpol_created("p", 1, "team-a")), open);
    assert_eq!(key_of(&ns_deleted("d", 2, "team-a")), open);
}

#[test]
fn the_prefilter_lets_closing_and_cancelling_events_through() {
    let mut rules = load_rules("absence.yaml", RULE).unwrap();
    rules.extend(
        load_rules(
            "denied.yaml",
            "id: d\nmatch: {responseStatus.code: [401, 403]}\ngroup_by: [sourceIPs]\nwindow: 5m\nthreshold: 20\n",
        )
        .unwrap(),
    );
    let p = Prefilter::new(&rules);
    for e in [
        ns_created("a", 0, "x"),
        netpol_created("p", 1, "x"),
        ns_deleted("d", 2, "x"),
    ] {
        assert!(p.may_match(e.line.as_bytes()), "{}", e.line);
    }
    assert!(!p.may_match(tick("t", 3).line.as_bytes()));
}

#[test]
fn a_malformed_absence_rule_names_its_field() {
    let missing = RULE.split("close:").next().unwrap().to_owned() + "window: 10m\n";
    let e = load_rules("bad.yaml", &missing).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("close"), "{e}");
    let mismatch = RULE.replace(
        "  group_by: [objectRef.namespace]",
        "  group_by: [objectRef.namespace, verb]",
    );
    let e = load_rules("bad.yaml", &mismatch).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("close.group_by"), "{e}");
    let threshold = RULE.replace("window: 10m", "window: 10m\nthreshold: 3");
    let e = load_rules("bad.yaml", &threshold).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("threshold"), "{e}");
    let stray = RULE.replace("cancel:", "cancel:\n  within: 5m");
    let e = load_rules("bad.yaml", &stray).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("cancel.within"), "{e}");
}
