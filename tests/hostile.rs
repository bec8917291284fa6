//! Inputs an attacker controls: they must neither crash authwatch, nor exhaust its memory,
//! nor hide an attack that follows them.

use std::io::Write;

use authwatch::input::FormatChoice;
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
