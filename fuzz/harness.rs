//! The bodies of the fuzz targets, one function per target.
//!
//! Shared by `fuzz/fuzz_targets/*.rs` (through `#[path]`) and by the workspace test
//! `tests/fuzz_regressions.rs`, which replays every file under `fuzz/regressions/<target>/`
//! through the same function, so a fixed crash stays fixed without the fuzzer.
//!
//! Each function must not panic on any input; the `assert!`s are invariants that must hold
//! whatever the bytes.

#![allow(dead_code)]

use authwatch_event::event::check_structure;
use authwatch_event::framing::{
    cw_export_time, detect, records_in_document, records_in_line, Format, FramingError, Origin,
};
use authwatch_event::structure::{scan_structure, scan_structure_with, Method};
use authwatch_event::time::parse_timestamp;
use authwatch_event::{decode, visit_events, Decoded, RawRecord};
use authwatch_rules::{
    check_unique_ids, load_rules, Alert, Engine, EngineConfig, Prefilter, RuleKind,
    CARDINALITY_RULE,
};

/// A fuzz target's body.
pub type Body = fn(&[u8]);

/// Target names, as directories under `fuzz/regressions/` and `fuzz/corpus/`.
pub const TARGETS: &[(&str, Body)] = &[
    ("decode_event", decode_event),
    ("framing_jsonl_line", framing_jsonl_line),
    ("framing_cw_export_line", framing_cw_export_line),
    (
        "framing_filter_log_events_doc",
        framing_filter_log_events_doc,
    ),
    ("framing_subscription_payload", framing_subscription_payload),
    ("rule_file", rule_file),
    ("engine", engine),
];

/// Every accessor of a decoded event, so that none of them can panic either.
fn touch_record(record: &RawRecord<'_>) {
    visit_events(record, &mut |ev| match ev {
        Ok(view) => {
            let e = view.event;
            let _ = e.time(record.cw_timestamp);
            let _ = e.code();
            let _ = e.username();
            let _ = e.annotation("authorization.k8s.io/decision");
            let _ = e.lookup(&["user", "username"]);
            let _ = e.lookup(&["responseStatus", "code"]);
            let _ = e.lookup(&["annotations", "authorization.k8s.io/reason"]);
            assert_eq!(view.time, e.time(record.cw_timestamp));
        }
        Err(err) => {
            let _ = err.reason();
            let _ = err.to_string();
        }
    });
}

fn sink(r: Result<RawRecord<'_>, FramingError>) {
    match r {
        Ok(record) => touch_record(&record),
        Err(e) => {
            let _ = e.reason();
            let _ = e.to_string();
        }
    }
}

const ORIGIN: Origin<'static> = Origin {
    stream: Some("kube-apiserver-audit-fuzz"),
    log_group: Some("/aws/eks/fuzz/cluster"),
};

/// `decode`, `check_structure`, timestamps, and the wrapper/list walk of one record.
pub fn decode_event(data: &[u8]) {
    match decode(data) {
        Ok(Decoded::Event(e)) => {
            let _ = e.time(None);
            let _ = e.code();
            let _ = e.username();
        }
        Ok(Decoded::Wrapped { inner, .. }) => {
            let _ = decode(inner.as_str().as_bytes());
        }
        Ok(Decoded::List(items)) => {
            for item in items {
                let _ = decode(item.get().as_bytes());
            }
        }
        Err(e) => {
            let _ = e.reason();
        }
    }
    // The structure pass: check_structure's verdict, and the fields it reads are the
    // decoder's; it never calls a wrapper or a list a plain event.
    let scanned = scan_structure(data);
    assert_eq!(
        scanned.as_ref().map(|_| ()).map_err(|e| e.reason()),
        check_structure(data).map_err(|e| e.reason())
    );
    // Every method of the pass (byte walk, portable blocks, AVX2 blocks) reads it alike.
    let by_bytes = format!("{:?}", scan_structure_with(data, Method::ByteWalk));
    for method in [Method::Blocks, Method::BlocksAvx2] {
        assert_eq!(
            format!("{:?}", scan_structure_with(data, method)),
            by_bytes,
            "{method:?}"
        );
    }
    if let Ok(Some(top)) = scanned {
        match decode(data) {
            Ok(Decoded::Event(ev)) => {
                if let Some(what) = top.disagreement(&ev) {
                    panic!("structure pass read {what} unlike the decoder: {top:?}");
                }
            }
            Ok(_) => panic!("structure pass took a wrapper or a list for a plain event"),
            Err(_) => {}
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_timestamp(s);
    }
    touch_record(&RawRecord {
        message: data,
        stream: Some("s"),
        log_group: None,
        cw_timestamp: Some(1_700_000_000_000_000),
        event_id: None,
    });
}

/// One JSON Lines line, as the reader hands it over.
pub fn framing_jsonl_line(data: &[u8]) {
    let _ = detect(data);
    records_in_line(Format::Jsonl, data, ORIGIN, &mut sink);
}

/// One CloudWatch S3-export line (`<RFC3339> <message>`).
pub fn framing_cw_export_line(data: &[u8]) {
    let _ = detect(data);
    let _ = cw_export_time(data);
    records_in_line(Format::CwExport, data, ORIGIN, &mut sink);
}

/// One `filter-log-events` document (or several concatenated).
pub fn framing_filter_log_events_doc(data: &[u8]) {
    let _ = detect(data);
    records_in_document(Format::FilterLogEvents, data, ORIGIN, &mut sink);
    records_in_line(Format::FilterLogEvents, data, Origin::default(), &mut sink);
}

/// A subscription payload: as a document (gzip or plain JSON) and as a base64 line.
pub fn framing_subscription_payload(data: &[u8]) {
    let _ = detect(data);
    let _ = Format::Subscription.is_line_based(data);
    records_in_document(Format::Subscription, data, ORIGIN, &mut sink);
    records_in_line(Format::Subscription, data, ORIGIN, &mut sink);
}

/// A fixed 403 event, to run freshly loaded rules on.
const PROBE: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"p-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/secrets","verb":"list","user":{"username":"system:serviceaccount:default:x","groups":["system:authenticated"]},"sourceIPs":["198.51.100.7","10.0.0.5"],"userAgent":"curl/8","objectRef":{"resource":"secrets","namespace":"default","apiVersion":"v1"},"responseStatus":{"code":403},"requestReceivedTimestamp":"2026-11-20T10:00:00.000000Z","annotations":{"authorization.k8s.io/decision":"forbid"}}"#;

/// A rule file: load it; when it loads, build the engine and prefilter and run two events.
pub fn rule_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = match load_rules("fuzz.yaml", text) {
        Ok(rules) => rules,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = check_unique_ids(&rules);
    for r in &rules {
        let _ = r.warnings();
        assert!(
            r.window > 0,
            "rule {} loaded with window {}",
            r.id,
            r.window
        );
    }
    let prefilter = Prefilter::new(&rules);
    let _ = prefilter.may_match(PROBE.as_bytes());
    let mut engine = Engine::new(rules, EngineConfig::default());
    let mut out = Vec::new();
    for line in [PROBE.to_owned(), PROBE.replace("p-1", "p-2")] {
        let record = RawRecord {
            message: line.as_bytes(),
            stream: Some("s"),
            ..Default::default()
        };
        visit_events(&record, &mut |ev| {
            if let Ok(view) = ev {
                engine.observe(&view, &mut out);
            }
        });
    }
    engine.finish(&mut out);
    for a in &out {
        let _ = a.to_json_line();
    }
}

const BUNDLED: &[&str] = &[
    include_str!("../rules/anonymous-denied-by-source-ip.yaml"),
    include_str!("../rules/cluster-denied-spike.yaml"),
    include_str!("../rules/denied-by-host.yaml"),
    include_str!("../rules/denied-by-source-ip.yaml"),
    include_str!("../rules/denied-by-user.yaml"),
    include_str!("../rules/enumeration-by-source-ip.yaml"),
    include_str!("../rules/exec-attach-portforward-denied.yaml"),
    include_str!("../rules/impersonation-denied.yaml"),
    include_str!("../rules/node-denied-outside-scope.yaml"),
    include_str!("../rules/secret-access-denied-for-service-account.yaml"),
];

/// Small rules that fire easily, so fuzzed inputs reach windows, cooldowns and eviction.
const SMALL: &str = r#"
- id: small-threshold
  match: {responseStatus.code: [401, 403]}
  group_by: [sourceIPs, k8s_user.username]
  window: 1m
  threshold: 2
  cooldown: 30s
  max_keys: 4
- id: small-distinct
  kind: distinct
  distinct_of: objectRef.resource
  match: {responseStatus.code: 403}
  group_by: [host]
  window: 2m
  threshold: 2
"#;

/// Events, one per line, into the bundled rules plus two small ones; the first byte picks the
/// lateness bound. Invariants: no panic; the engine counts every event it is given; every
/// alert it reports is in its per-rule tally; threshold alerts hold at least `threshold`
/// events in a window that ends at the firing time.
pub fn engine(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    static RULES: std::sync::OnceLock<Vec<authwatch_rules::Rule>> = std::sync::OnceLock::new();
    let rules = RULES
        .get_or_init(|| {
            let mut rules = Vec::new();
            for text in BUNDLED {
                rules.extend(load_rules("bundled.yaml", text).expect("bundled rules load"));
            }
            rules.extend(load_rules("small.yaml", SMALL).expect("small rules load"));
            rules
        })
        .clone();
    let config = EngineConfig {
        max_lateness: i64::from(first) * 1_000_000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(rules, config);
    let mut out: Vec<Alert> = Vec::new();
    let mut given = 0u64;
    for (i, line) in data.split(|&c| c == b'\n').enumerate() {
        let record = RawRecord {
            message: line,
            stream: Some(if i % 2 == 0 { "a" } else { "b" }),
            log_group: Some("/aws/eks/fuzz/cluster"),
            cw_timestamp: None,
            event_id: None,
        };
        visit_events(&record, &mut |ev| {
            if let Ok(view) = ev {
                given += 1;
                engine.observe(&view, &mut out);
            }
        });
    }
    engine.finish(&mut out);
    let stats = engine.stats();
    assert_eq!(stats.events, given);
    let tallied: u64 = stats.alerts_by_rule.values().sum();
    assert_eq!(tallied, out.len() as u64);
    for a in &out {
        let _ = a.to_json_line();
        if a.rule == CARDINALITY_RULE {
            continue;
        }
        let rule = engine
            .rules()
            .iter()
            .find(|r| r.id == a.rule)
            .expect("alert names a loaded rule");
        assert!(a.window_start <= a.window_end, "{a:?}");
        if matches!(rule.kind, RuleKind::Threshold) {
            assert!(a.count >= a.threshold, "{a:?}");
        }
    }
}
