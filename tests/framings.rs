//! The same events in every input framing give the same alerts, and those alerts are the
//! golden ones in `golden/framings.alerts.jsonl` (rewrite with `AUTHWATCH_BLESS=1`).

use std::io::Write;
use std::path::{Path, PathBuf};

use authwatch::generate::{generate, stream_name, GenEvent, GenOptions};
use authwatch::sources::files::FormatChoice;
use authwatch_event::framing::Format;
use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_tests::{here, lines, run};
use base64::Engine as _;

const LOG_GROUP: &str = "/aws/eks/golden/cluster";

/// One event with the API server (log stream) it came through and its time.
struct Rec {
    stream: String,
    time: i64,
    json: String,
}

fn from_gen(e: GenEvent) -> Rec {
    Rec {
        stream: stream_name(e.stream),
        time: e.time,
        json: e.json,
    }
}

fn events() -> Vec<Rec> {
    let opts = GenOptions {
        events: 3000,
        seed: 3,
        start: parse_timestamp("2026-11-20T10:00:00Z").unwrap(),
        rate: 20,
        streams: 3,
    };
    let mut out = Vec::new();
    generate(&opts, &mut |e| {
        out.push(from_gen(e));
        Ok(())
    })
    .unwrap();
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn wrapped_jsonl(evs: &[Rec]) -> String {
    evs.iter()
        .map(|e| {
            serde_json::json!({"log": e.json, "host": e.stream, "stream": "stdout"}).to_string()
                + "\n"
        })
        .collect()
}

fn write_cw_export(evs: &[Rec], root: &Path) {
    let task = root.join("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    let streams: std::collections::BTreeSet<&str> = evs.iter().map(|e| e.stream.as_str()).collect();
    for s in streams {
        let mine: Vec<&Rec> = evs.iter().filter(|e| e.stream == s).collect();
        let dir = task.join(s);
        std::fs::create_dir_all(&dir).unwrap();
        // Two files per stream, in time order, as CloudWatch writes them.
        for (part, chunk) in mine.chunks(mine.len().div_ceil(2)).enumerate() {
            let text: String = chunk
                .iter()
                .map(|e| format!("{} {}\n", format_millis(e.time + 800_000), e.json))
                .collect();
            std::fs::write(dir.join(format!("{part:06}.gz")), gz(text.as_bytes())).unwrap();
        }
    }
    std::fs::write(
        root.join("aws-logs-write-test"),
        "Permission Check Successful",
    )
    .unwrap();
}

fn write_filter_log_events(evs: &[Rec], path: &Path) {
    // Two pretty-printed pages, concatenated, as a paginating script would save them.
    let mut out = String::new();
    for (page, chunk) in evs.chunks(evs.len().div_ceil(2)).enumerate() {
        let events: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                serde_json::json!({
                    "logStreamName": e.stream,
                    "timestamp": e.time / 1000,
                    "message": e.json,
                    "ingestionTime": e.time / 1000 + 900,
                    "eventId": format!("{page}{i:055}"),
                })
            })
            .collect();
        let doc = serde_json::json!({"events": events, "searchedLogStreams": [], "nextToken": "x"});
        out.push_str(&serde_json::to_string_pretty(&doc).unwrap());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// Subscription payloads: one per API server per 10 s of traffic, in time order.
fn subscription_payloads(evs: &[Rec]) -> Vec<Vec<u8>> {
    let mut buckets: std::collections::BTreeMap<(i64, &str), Vec<&Rec>> = Default::default();
    for e in evs {
        buckets
            .entry((e.time / 10_000_000, e.stream.as_str()))
            .or_default()
            .push(e);
    }
    let control = serde_json::json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "", "subscriptionFilters": [], "logEvents": [{"id": "", "timestamp": 0, "message": "CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]});
    let mut out = vec![gz(control.to_string().as_bytes())];
    for ((_, s), chunk) in buckets {
        let log_events: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"id": format!("{}{i:04}", e.time), "timestamp": e.time / 1000, "message": e.json}))
            .collect();
        let payload = serde_json::json!({
            "messageType": "DATA_MESSAGE", "owner": "111122223333", "logGroup": LOG_GROUP,
            "logStream": s, "subscriptionFilters": ["authwatch"], "logEvents": log_events,
        });
        out.push(gz(payload.to_string().as_bytes()));
    }
    out
}

/// Writes `evs` in every framing under `d`.
fn write_every_framing(evs: &[Rec], d: &Path) {
    std::fs::write(d.join("wrapped.jsonl"), wrapped_jsonl(evs)).unwrap();
    // Gzip recognized by its magic bytes, whatever the name.
    std::fs::write(
        d.join("wrapped-gzip.txt"),
        gz(wrapped_jsonl(evs).as_bytes()),
    )
    .unwrap();
    write_cw_export(evs, &d.join("export"));
    write_filter_log_events(evs, &d.join("filter-log-events.json"));
    let payloads = subscription_payloads(evs);
    std::fs::create_dir_all(d.join("firehose")).unwrap();
    for (i, p) in payloads.iter().enumerate() {
        std::fs::write(d.join(format!("firehose/{i:05}")), p).unwrap();
    }
    let b64: String = payloads
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p) + "\n")
        .collect();
    std::fs::write(d.join("kinesis-records.txt"), b64).unwrap();
}

/// The inputs [`write_every_framing`] writes, how to read each, and the framing expected.
fn every_framing(d: &Path) -> Vec<(PathBuf, FormatChoice, &'static str)> {
    [
        ("wrapped.jsonl", FormatChoice::Auto, "jsonl"),
        ("wrapped-gzip.txt", FormatChoice::Auto, "jsonl"),
        ("wrapped.jsonl", FormatChoice::Fixed(Format::Jsonl), "jsonl"),
        (
            "filter-log-events.json",
            FormatChoice::Auto,
            "filter-log-events",
        ),
        ("firehose", FormatChoice::Auto, "subscription"),
        ("kinesis-records.txt", FormatChoice::Auto, "subscription"),
        ("export", FormatChoice::Fixed(Format::CwExport), "cw-export"),
    ]
    .into_iter()
    .map(|(f, c, e)| (d.join(f), c, e))
    .collect()
}

fn golden(name: &str, got: &[String]) {
    let path = here(&format!("golden/{name}"));
    if std::env::var_os("AUTHWATCH_BLESS").is_some() {
        std::fs::write(&path, got.join("\n") + "\n").unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (AUTHWATCH_BLESS=1 writes it)");
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(got, want, "alerts differ from {}", path.display());
}

fn replay(inputs: &[PathBuf], format: FormatChoice) -> (Vec<String>, authwatch::summary::Summary) {
    let rules = authwatch::rule_files::load(&[]).unwrap();
    let (alerts, summary) = run(inputs, format, rules, Some("golden"));
    (lines(&alerts), summary)
}

#[test]
fn every_framing_gives_the_golden_alerts() {
    let evs = events();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    write_every_framing(&evs, d);
    let (reference, summary) = replay(&[d.join("export")], FormatChoice::Auto);
    assert_eq!(summary.records, 3000);
    assert_eq!(summary.parse_errors, 0);
    assert_eq!(summary.files, 6, "the write-test probe file is not read");
    assert!(summary.formats.values().all(|f| *f == "cw-export"));
    let rules_fired: std::collections::BTreeSet<&str> = reference
        .iter()
        .filter_map(|l| l.split('"').nth(3))
        .collect();
    assert_eq!(
        rules_fired.into_iter().collect::<Vec<_>>(),
        [
            "denied-by-host",
            "denied-by-source-ip",
            "denied-by-user",
            "secret-access-denied-for-service-account"
        ],
        "the planted attacks fire the three guidance rules, and the scanner the secrets rule"
    );
    golden("framings.alerts.jsonl", &reference);

    for (input, format, expect_format) in every_framing(d) {
        let name = input.display().to_string();
        let (got, s) = replay(&[input], format);
        assert_eq!(s.records, 3000, "{name}");
        assert_eq!(s.events_parsed, 3000, "{name}");
        assert_eq!(s.parse_errors, 0, "{name}: {:?}", s.parse_error_samples);
        assert!(
            s.formats.values().all(|f| *f == expect_format),
            "{name}: {:?}",
            s.formats
        );
        assert_eq!(got, reference, "{name}");
    }
}

#[test]
fn every_event_delivered_twice_changes_no_alert() {
    let evs = events();
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.jsonl");
    std::fs::write(&once, wrapped_jsonl(&evs)).unwrap();
    let (reference, _) = replay(std::slice::from_ref(&once), FormatChoice::Auto);
    // Overlapping exports: the same file twice, and the same events as FLE pages.
    let fle = dir.path().join("fle.json");
    write_filter_log_events(&evs, &fle);
    let (got, s) = replay(&[once.clone(), fle, once], FormatChoice::Auto);
    assert_eq!(s.records, 9000);
    assert!(s.duplicates > 0);
    assert_eq!(got, reference);
}

#[test]
fn plain_jsonl_has_no_host_but_the_same_address_and_user_alerts() {
    let evs = events();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.jsonl");
    let text: String = evs.iter().map(|e| format!("{}\n", e.json)).collect();
    std::fs::write(&plain, text).unwrap();
    let (got, s) = replay(&[plain], FormatChoice::Auto);
    // No event has a host; the 150 planted 401s have no user either.
    assert_eq!(s.missing_group_key, s.events_matched + 150);
    let golden = std::fs::read_to_string(here("golden/framings.alerts.jsonl")).unwrap();
    let want: Vec<&str> = golden
        .lines()
        .filter(|l| !l.contains("\"rule\":\"denied-by-host\""))
        .collect();
    let got: Vec<String> = got.into_iter().map(|l| strip_hosts(&l)).collect();
    let want: Vec<String> = want.into_iter().map(strip_hosts).collect();
    assert_eq!(got, want);
}

/// The `hosts` list is empty without host information; everything else must agree.
fn strip_hosts(line: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    v.as_object_mut().unwrap().remove("hosts");
    v.to_string()
}

#[test]
fn the_hkerma_corpus_reads_the_same_in_every_framing() {
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(authwatch_tests::corpus("hkerma_audit_logs.jsonl.gz")).unwrap(),
        )
        .read_to_string(&mut s)
        .unwrap();
        s
    };
    // Two API servers; CloudWatch's time is the event's own (the corpus has no other).
    let evs: Vec<Rec> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Rec {
                stream: format!("kube-apiserver-audit-{:032x}", i % 2),
                time: parse_timestamp(v["requestReceivedTimestamp"].as_str().unwrap()).unwrap(),
                json: l.to_owned(),
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_every_framing(&evs, dir.path());
    let rules = authwatch_tests::rules("rules/count-denied.yaml");
    let mut inputs = every_framing(dir.path());
    inputs.push((dir.path().join("export"), FormatChoice::Auto, "cw-export"));
    let mut first: Option<Vec<String>> = None;
    for (input, format, expect_format) in inputs {
        let name = input.display().to_string();
        let (alerts, s) = run(&[input], format, rules.clone(), Some("hkerma"));
        assert_eq!(s.records, 16_563, "{name}");
        assert_eq!(s.events_parsed, 16_563, "{name}");
        assert_eq!(s.parse_errors, 0, "{name}");
        assert_eq!(s.events_matched, 71, "{name}");
        assert_eq!(s.duplicates, 45, "{name}");
        assert!(
            s.formats.values().all(|f| *f == expect_format),
            "{name}: {:?}",
            s.formats
        );
        let got = lines(&alerts);
        assert!(
            got.iter()
                .any(|l| l.contains("\"rule\":\"all-denied-total\"") && l.contains("\"count\":56")),
            "{name}"
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "{name}"),
        }
    }
}
