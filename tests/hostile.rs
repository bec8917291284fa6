//! Inputs an attacker controls: they must neither crash authwatch, nor exhaust its memory,
//! nor hide an attack that follows them.

use std::io::Write;

use authwatch::sources::files::FormatChoice;
use authwatch_tests::run;

fn denied(i: usize, ips: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"id-{i}","verb":"list","requestURI":"/api/v1/secrets","user":{{"username":"mallory"}},"sourceIPs":{ips},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2026-11-20T10:00:{:02}.000000Z"}}"#,
        i % 60
    )
}

fn bundled() -> Vec<authwatch_rules::Rule> {
    authwatch::rule_files::load(&[]).unwrap()
}

#[test]
fn a_line_longer_than_the_limit_is_skipped_and_the_attack_after_it_still_fires() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    // 20 MB of a single JSON string, longer than MAX_RECORD_BYTES (16 MiB).
    write!(
        f,
        r#"{{"auditID":"big","verb":"get","requestURI":"/","x":""#
    )
    .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..20 {
        f.write_all(&chunk).unwrap();
    }
    writeln!(f, "\"}}").unwrap();
    for i in 0..20 {
        writeln!(f, "{}", denied(i, r#"["198.51.100.7"]"#)).unwrap();
    }
    drop(f);
    let (alerts, s) = run(&[path], FormatChoice::Auto, bundled(), None);
    assert_eq!(s.parse_errors_by_reason.get("record_too_long"), Some(&1));
    assert_eq!(s.events_parsed, 20);
    assert!(
        alerts.iter().any(|a| a.rule == "denied-by-source-ip"),
        "{alerts:?}"
    );
}

#[test]
fn a_forged_source_ip_list_fans_out_to_a_bounded_number_of_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xff.jsonl");
    let mut ips: Vec<String> = (0..100_000)
        .map(|i| format!("\"10.{}.{}.{}\"", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    ips.push("\"203.0.113.99\"".into()); // the peer address the API server saw
    let list = format!("[{}]", ips.join(","));
    let text: String = (0..20).map(|i| denied(i, &list) + "\n").collect();
    std::fs::write(&path, text).unwrap();
    let (alerts, s) = run(&[path], FormatChoice::Auto, bundled(), None);
    assert!(s.fanout_capped >= 20, "{}", s.fanout_capped);
    // The peer address is always kept, so the attack is still attributed to it.
    assert!(
        alerts
            .iter()
            .any(|a| a.rule == "denied-by-source-ip" && a.group.0[0].1 == "203.0.113.99"),
        "{alerts:#?}"
    );
    let by_ip = alerts
        .iter()
        .filter(|a| a.rule == "denied-by-source-ip")
        .count();
    assert!(by_ip <= 16, "{by_ip} keys fired");
}

#[test]
fn deep_nesting_bad_utf8_and_nul_bytes_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.jsonl");
    let mut bytes = Vec::new();
    // Valid JSON, 10,000 levels deep inside a field no rule reads: an event like any other.
    bytes.extend(format!("{{\"auditID\":\"deep\",\"verb\":\"get\",\"requestReceivedTimestamp\":\"2026-11-20T10:00:00Z\",\"x\":{}1{}}}\n", "[".repeat(10_000), "]".repeat(10_000)).into_bytes());
    bytes.extend(b"{\"auditID\":\"\xff\xfe\",\"verb\":\"get\"}\n");
    bytes.extend(b"{\"auditID\":\"a\0b\",\"verb\":\"get\"}\n");
    bytes.extend(b"\0\0\0\0\n");
    for i in 0..20 {
        bytes.extend(denied(i, r#"["198.51.100.7"]"#).into_bytes());
        bytes.push(b'\n');
    }
    std::fs::write(&path, bytes).unwrap();
    let (alerts, s) = run(&[path], FormatChoice::Auto, bundled(), None);
    assert_eq!(s.records, 24);
    assert_eq!(s.events_parsed, 21, "{:?}", s.parse_error_samples);
    assert_eq!(s.parse_errors, 3, "{:?}", s.parse_error_samples);
    assert_eq!(s.parse_errors_by_reason.get("invalid_json"), Some(&3));
    assert!(alerts.iter().any(|a| a.rule == "denied-by-source-ip"));
}

fn denied_at(id: &str, ip: &str, code: u16, ts: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{id}","verb":"list","requestURI":"/api/v1/secrets","user":{{"username":"mallory"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":{code}}},"requestReceivedTimestamp":"{ts}"}}"#
    )
}

fn replay_once(
    path: &std::path::Path,
) -> (Vec<authwatch_rules::Alert>, authwatch::summary::Summary) {
    authwatch_tests::run_with(
        &[path.to_path_buf()],
        FormatChoice::Auto,
        bundled(),
        None,
        true,
        1,
    )
}

#[test]
fn a_100_mb_line_is_skipped_without_stopping_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..10 {
        writeln!(f, "{}", denied(i, r#"["198.51.100.7"]"#)).unwrap();
    }
    // 100 MiB in one line: a JSON string that never closes before the newline.
    write!(f, r#"{{"auditID":"huge","verb":"get","x":""#).unwrap();
    let chunk = vec![b'b'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    writeln!(f).unwrap();
    for i in 10..20 {
        writeln!(f, "{}", denied(i, r#"["198.51.100.7"]"#)).unwrap();
    }
    drop(f);
    // Once, prefilter on, one thread: 100 MB is read three times by `run`, for nothing more.
    let (alerts, s) = replay_once(&path);
    // The long line is a framing error, not a record.
    assert_eq!(s.records, 20);
    assert_eq!(s.parse_errors_by_reason.get("record_too_long"), Some(&1));
    assert!(
        s.parse_error_samples[0].location.ends_with(":11"),
        "{:?}",
        s.parse_error_samples
    );
    assert_eq!(s.events_parsed, 20);
    // The ten denials before the line and the ten after it are one attack.
    assert!(
        alerts
            .iter()
            .any(|a| a.rule == "denied-by-source-ip" && a.count == 20),
        "{alerts:?}"
    );
}

#[test]
fn far_future_epoch_and_malformed_timestamps_do_not_move_the_event_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("times.jsonl");
    let mut text = String::new();
    // Year 9999, twice: dropped before the engine (more than 15 min beyond the wall clock).
    // Let through, the second would move the watermark past the first, the first would be
    // counted and move the engine's clock to 9999, and every real event after them would be
    // "too late" to count.
    for (id, ts) in [
        ("future-1", "9999-01-01T00:00:00Z"),
        ("future-2", "9999-12-31T23:59:59.999999Z"),
    ] {
        text += &denied_at(id, "198.51.100.7", 403, ts);
        text.push('\n');
    }
    // 1970: a valid (if odd) time, counted like any other old event.
    text += &denied_at("epoch", "192.0.2.1", 403, "1970-01-01T00:00:00Z");
    text.push('\n');
    // Malformed: no usable time at all.
    text += &denied_at("bad", "198.51.100.7", 403, "2026-13-45T99:99:99Z");
    text.push('\n');
    text += &denied_at("huge-year", "198.51.100.7", 403, "+275760-09-13T00:00:00Z");
    text.push('\n');
    for i in 0..20 {
        text += &denied(i, r#"["198.51.100.7"]"#);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let (alerts, s) = run(&[path], FormatChoice::Auto, bundled(), None);
    assert_eq!(s.future_events, 2, "{s:?}");
    assert_eq!(
        s.parse_errors_by_reason.get("no_timestamp"),
        Some(&2),
        "{:?}",
        s.parse_error_samples
    );
    assert_eq!(s.late_dropped, 0);
    let fired: Vec<_> = alerts
        .iter()
        .filter(|a| a.rule == "denied-by-source-ip" && a.group.0[0].1 == "198.51.100.7")
        .collect();
    assert_eq!(fired.len(), 1, "{alerts:#?}");
    assert_eq!(fired[0].count, 20);
    assert!(
        fired[0].window_end < 2_000_000_000_000_000,
        "{:?}",
        fired[0]
    );
}

#[test]
fn the_same_audit_id_with_conflicting_contents_counts_once_at_its_first_matching_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dups.jsonl");
    let mut text = String::new();
    for i in 0..19 {
        text += &denied_at(
            &format!("id-{i}"),
            "198.51.100.7",
            403,
            &format!("2026-11-20T10:00:{i:02}Z"),
        );
        text.push('\n');
    }
    // Copy 1 of "dup": a 200, which the rule does not match, so it is not what counts.
    text += &denied_at("dup", "198.51.100.7", 200, "2026-11-20T10:00:30Z");
    text.push('\n');
    // Copy 2: the first that matches; it counts (the 20th from .7).
    text += &denied_at("dup", "198.51.100.7", 403, "2026-11-20T10:00:31Z");
    text.push('\n');
    // Copies 3 and 4: same auditID, other address and code: ignored for the rule, counted
    // as duplicates; they must not give .9 a count either.
    for (k, code) in [(32, 403), (33, 401)] {
        text += &denied_at(
            "dup",
            "198.51.100.9",
            code,
            &format!("2026-11-20T10:00:{k}Z"),
        );
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let rules = authwatch_rules::load_rules(
        "t.yaml",
        "id: by-ip\nmatch: {responseStatus.code: [401, 403]}\ngroup_by: [sourceIPs]\nwindow: 5m\nthreshold: 1\ncooldown: 1s\n---\nid: twenty\nmatch: {responseStatus.code: [401, 403]}\ngroup_by: [sourceIPs]\nwindow: 5m\nthreshold: 20\n",
    )
    .unwrap();
    let (alerts, s) = run(&[path], FormatChoice::Auto, rules, None);
    assert_eq!(s.duplicates, 4, "2 ignored copies x 2 rules: {s:?}");
    let twenty: Vec<_> = alerts.iter().filter(|a| a.rule == "twenty").collect();
    assert_eq!(twenty.len(), 1, "{alerts:#?}");
    assert_eq!(twenty[0].count, 20);
    assert_eq!(
        twenty[0].sample_audit_ids.last().map(String::as_str),
        Some("dup")
    );
    assert!(
        !alerts.iter().any(|a| a.group.0[0].1 == "198.51.100.9"),
        "a later copy counted: {alerts:#?}"
    );
}

/// `n` gzip members of `member_bytes` zeros each: `n * member_bytes` bytes decompressed from
/// about a thousandth of that.
fn gzip_bomb(prefix: &[u8], member_bytes: usize, n: usize) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let gz = |data: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut out = gz(prefix);
    let member = gz(&vec![0u8; member_bytes]);
    for _ in 0..n {
        out.extend_from_slice(&member);
    }
    out
}

#[test]
fn a_gzip_bomb_stops_its_input_with_a_clear_error_not_an_oom() {
    let dir = tempfile::tempdir().unwrap();
    // 10 GiB of zeros (1,024 members of 10 MiB) behind ten real events; about 10 MB on disk.
    let mut prefix = String::new();
    for i in 0..10 {
        prefix += &denied(i, r#"["198.51.100.7"]"#);
        prefix.push('\n');
    }
    let bomb = gzip_bomb(prefix.as_bytes(), 10 << 20, 1024);
    assert!(bomb.len() < 16 << 20, "{}", bomb.len());
    for name in ["bomb.jsonl.gz", "bomb.json.gz"] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bomb).unwrap();
        let format = if name == "bomb.json.gz" {
            // A whole-document framing: read into memory, so it needs the bound most.
            FormatChoice::Fixed(authwatch_event::framing::Format::FilterLogEvents)
        } else {
            FormatChoice::Auto
        };
        let mut sink = authwatch_tests::Collect::default();
        let opts = authwatch::replay::ReplayOptions {
            inputs: vec![path.clone()],
            format,
            max_lateness: 120_000_000,
            cluster: None,
            progress: false,
            prefilter: true,
            threads: 1,
            metrics: None,
        };
        let err = authwatch::replay::replay(&opts, bundled(), vec![&mut sink])
            .expect_err("a gzip bomb is refused")
            .to_string();
        assert!(err.contains(name), "{err}");
        assert!(err.contains("decompression bomb"), "{err}");
    }
}

#[test]
fn a_catastrophic_regex_runs_in_linear_time_on_a_100_kb_value() {
    // `(a+)+$` backtracks exponentially in backtracking engines; the regex crate is a finite
    // automaton (linear in the input), so this finishes: no timing is asserted, only that it
    // completes and answers correctly.
    let rules = authwatch_rules::load_rules(
        "evil.yaml",
        "id: evil\nmatch: {userAgent: {regex: '(a+)+$'}, responseStatus.code: 403}\ngroup_by: [sourceIPs]\nwindow: 1m\nthreshold: 1\n",
    )
    .expect("the regex is accepted");
    let mut engine = authwatch_rules::Engine::new(rules, authwatch_rules::EngineConfig::default());
    let mut alerts = Vec::new();
    for (id, tail) in [("no", "!"), ("yes", "")] {
        let agent = format!("{}{tail}", "a".repeat(100_000));
        let line = format!(
            r#"{{"auditID":"{id}","userAgent":"{agent}","sourceIPs":["192.0.2.{}"],"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2026-11-20T10:00:00Z"}}"#,
            id.len()
        );
        let record = authwatch_event::RawRecord {
            message: line.as_bytes(),
            ..Default::default()
        };
        authwatch_event::visit_events(&record, &mut |ev| {
            engine.observe(&ev.expect("an event"), &mut alerts)
        });
    }
    engine.finish(&mut alerts);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].sample_audit_ids, ["yes"]);
}

/// The `i`-th event of a 401 spray: one request from each of many distinct addresses, one a
/// millisecond from 10:00:00, as an anonymous scanner's would look.
fn spray_line(i: u32) -> String {
    let start = authwatch_event::time::parse_timestamp("2026-11-20T10:00:00Z").unwrap();
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"{i:08x}-0000-4000-8000-000000000000","verb":"get","requestURI":"/api","user":{{}},"sourceIPs":["10.{}.{}.{}"],"userAgent":"spray/1.0","responseStatus":{{"code":401}},"requestReceivedTimestamp":"{}"}}"#,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        authwatch_event::time::format_millis(start + i64::from(i) * 1000)
    )
}

/// The attack that follows the spray: 20 denials from one address within a minute.
fn after_the_spray(spray: u32) -> impl Iterator<Item = String> {
    (0..20).map(move |i| {
        denied_at(
            &format!("attack-{i}"),
            "203.0.113.9",
            403,
            &format!("2026-11-20T10:{:02}:{:02}.000Z", 1 + spray / 60_000, 10 + i),
        )
    })
}

/// The bundled rules with a small `max_keys`, so that a spray of tens of thousands of
/// addresses shows what one of millions would at the default (1,000,000).
fn bundled_with_max_keys(max_keys: usize) -> Vec<authwatch_rules::Rule> {
    bundled()
        .into_iter()
        .map(|mut r| {
            r.max_keys = max_keys;
            r
        })
        .collect()
}

#[test]
fn an_address_spray_past_max_keys_stays_bounded_is_reported_and_the_attack_after_it_fires() {
    // Streamed into the engine as they are generated: nothing is stored.
    const SPRAY: u32 = 50_000;
    const MAX_KEYS: usize = 1_000;
    let rules = bundled_with_max_keys(MAX_KEYS);
    let n_rules = rules.len();
    let mut engine = authwatch_rules::Engine::new(rules, authwatch_rules::EngineConfig::default());
    let mut alerts = Vec::new();
    let mut most_keys = 0;
    let lines = (0..SPRAY).map(spray_line).chain(after_the_spray(SPRAY));
    for (n, line) in lines.enumerate() {
        let record = authwatch_event::RawRecord {
            message: line.as_bytes(),
            ..Default::default()
        };
        authwatch_event::visit_events(&record, &mut |ev| engine.observe(&ev.unwrap(), &mut alerts));
        if n % 1000 == 0 {
            most_keys = most_keys.max(engine.active_keys());
        }
    }
    most_keys = most_keys.max(engine.active_keys());
    engine.finish(&mut alerts);
    // Every rule stays within its max_keys whatever the number of addresses.
    assert!(most_keys <= n_rules * MAX_KEYS, "{most_keys} keys");
    // Each address past the first 1,000 evicts one (all are inside one window), and so does
    // the attacker's, which is new.
    let evicted = engine
        .stats()
        .evicted_keys
        .get("denied-by-source-ip")
        .copied();
    assert_eq!(evicted, Some(u64::from(SPRAY) - MAX_KEYS as u64 + 1));
    // The spray is reported, once per cooldown, by the built-in alert.
    let cardinality: Vec<_> = alerts
        .iter()
        .filter(|a| {
            a.rule == authwatch_rules::CARDINALITY_RULE
                && a.group.0 == [("rule".to_owned(), "denied-by-source-ip".to_owned())]
        })
        .collect();
    assert_eq!(cardinality.len(), 1, "{cardinality:#?}");
    assert_eq!(cardinality[0].evicted_keys, Some(1));
    // None of the sprayed addresses fires, the attacker after them does, with every event.
    let by_ip: Vec<_> = alerts
        .iter()
        .filter(|a| a.rule == "denied-by-source-ip")
        .collect();
    assert_eq!(by_ip.len(), 1, "{by_ip:#?}");
    assert_eq!(by_ip[0].group.0[0].1, "203.0.113.9");
    assert_eq!(by_ip[0].count, 20);
}

#[test]
fn an_address_spray_through_replay_raises_the_cardinality_alert_and_the_attack_still_fires() {
    // The same through the whole replay pipeline (framing, prefilter, decoding threads),
    // from a file generated here.
    const SPRAY: u32 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spray.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for line in (0..SPRAY).map(spray_line).chain(after_the_spray(SPRAY)) {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let (alerts, s) = run(
        &[path],
        FormatChoice::Auto,
        bundled_with_max_keys(500),
        None,
    );
    assert_eq!(s.events_parsed, u64::from(SPRAY) + 20);
    assert!(
        s.alerts_by_rule
            .get(authwatch_rules::CARDINALITY_RULE)
            .is_some_and(|&n| n >= 1),
        "{:?}",
        s.alerts_by_rule
    );
    let by_ip: Vec<_> = alerts
        .iter()
        .filter(|a| a.rule == "denied-by-source-ip")
        .collect();
    assert_eq!(by_ip.len(), 1, "{by_ip:#?}");
    assert_eq!(by_ip[0].group.0[0].1, "203.0.113.9");
    assert_eq!(by_ip[0].count, 20);
}

#[test]
fn bad_lines_across_many_read_blocks_are_counted_and_sampled_at_their_line_numbers() {
    // The parallel replay reads line framings in blocks of about 1 MiB and frames them on its
    // workers: the line numbers in the samples must still be the input's, in every block, in
    // a plain and a gzip file, after a whole document between them, and past a line too long
    // to keep. `run` also checks that one thread and three agree.
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    let mut bad = Vec::new();
    let mut line = 0;
    // About 8 MiB of events; every 9,000th line broken, and the 20,000th far too long.
    for i in 0..24_000 {
        line += 1;
        if i > 0 && i % 9_000 == 0 {
            text.extend_from_slice(b"{\"auditID\": not json\n");
            bad.push(line);
        } else if i == 20_000 {
            text.extend(std::iter::repeat_n(b'x', (16 << 20) + 5));
            text.push(b'\n');
            bad.push(line);
        } else {
            writeln!(text, "{}", denied(i, r#"["198.51.100.7"]"#)).unwrap();
        }
    }
    let plain = dir.path().join("a.jsonl");
    std::fs::write(&plain, &text).unwrap();
    let doc = dir.path().join("b.json");
    std::fs::write(
        &doc,
        r#"{"events":[{"message":"not json","logStreamName":"s","timestamp":1}]}"#,
    )
    .unwrap();
    let gz = dir.path().join("c.jsonl.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&text).unwrap();
    std::fs::write(&gz, e.finish().unwrap()).unwrap();

    let (_, s) = run(
        &[plain.clone(), doc.clone(), gz.clone()],
        FormatChoice::Auto,
        bundled(),
        None,
    );
    assert_eq!(
        s.parse_errors,
        2 * bad.len() as u64 + 1,
        "{:?}",
        s.parse_errors_by_reason
    );
    assert_eq!(s.parse_errors_by_reason.get("record_too_long"), Some(&2));
    let want: Vec<String> = bad
        .iter()
        .map(|n| format!("{}:{n}", plain.display()))
        .chain([format!("{} (record 1)", doc.display())])
        .chain(bad.iter().map(|n| format!("{}:{n}", gz.display())))
        .collect();
    let got: Vec<&str> = s
        .parse_error_samples
        .iter()
        .map(|e| e.location.as_str())
        .collect();
    assert_eq!(got, want);
}
