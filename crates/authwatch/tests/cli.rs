//! The `authwatch` binary as users run it: exit codes, stdin, files, messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn authwatch(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authwatch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run authwatch");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn denied(i: usize, ip: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"id-{i}","verb":"list","requestURI":"/api/v1/secrets","user":{{"username":"mallory"}},"sourceIPs":["{ip}"],"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2026-11-20T10:00:{:02}.000000Z"}}"#,
        i % 60
    )
}

#[test]
fn demo_prints_the_planted_attack() {
    let o = authwatch(&["demo"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let rules: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        rules,
        [
            "secret-access-denied-for-service-account",
            "denied-by-source-ip",
            "denied-by-user",
            "denied-by-host"
        ]
    );
    assert!(out.contains("\"sourceIPs\":\"198.51.100.7\""));
    assert!(
        stderr(&o).contains("2000 records, 2000 events parsed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stdin_gzip_and_summary_json() {
    let text: String = (0..25)
        .map(|i| denied(i, "198.51.100.7") + "\n")
        .collect::<String>()
        + "not json\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let o = authwatch(
        &["replay", "--summary-json", summary.to_str().unwrap(), "-"],
        Some(&gz),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let alerts: Vec<serde_json::Value> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 2, "by source IP and by user");
    assert_eq!(alerts[0]["group"]["sourceIPs"], "198.51.100.7");
    assert_eq!(alerts[1]["group"]["k8s_user.username"], "mallory");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["records"], 26);
    assert_eq!(s["events_parsed"], 25);
    assert_eq!(s["parse_errors"], 1);
    assert_eq!(s["parse_error_samples"][0]["location"], "<stdin>:26");
    assert_eq!(s["alerts_by_rule"]["denied-by-source-ip"], 1);
    assert!(stderr(&o).contains("1 parse errors"), "{}", stderr(&o));
}

#[test]
fn output_file_is_appended_and_stdout_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        (0..20)
            .map(|i| denied(i, "203.0.113.9") + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let out = dir.path().join("alerts.jsonl");
    for _ in 0..2 {
        let o = authwatch(
            &[
                "replay",
                "-q",
                "-o",
                out.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
        assert!(o.stderr.is_empty(), "-q: {}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4);
}

#[test]
fn a_bad_rule_file_stops_start_up_naming_file_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.yaml"),
        "id: my-rule\nmatch: {responseStatus.code: 403}\nwindow: 5 minutes\nthreshold: 3\n",
    )
    .unwrap();
    let o = authwatch(
        &["replay", "--rules", dir.path().to_str().unwrap(), "-"],
        Some(b""),
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("mine.yaml: rule `my-rule`: field `window`"),
        "{e}"
    );
}

#[test]
fn an_unreadable_input_is_an_io_error_naming_it() {
    let o = authwatch(&["replay", "/nonexistent/audit.jsonl"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/audit.jsonl"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(authwatch(&["replay"], None).status.code(), Some(2));
    let o = authwatch(&["replay", "--format", "csv", "-"], Some(b""));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown format `csv`"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        authwatch(&["replay", "--max-lateness", "soon", "-"], Some(b""))
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn rules_check_lists_the_bundled_set() {
    let o = authwatch(&["rules", "check"], None);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    for id in ["denied-by-host", "denied-by-source-ip", "denied-by-user"] {
        assert!(out.contains(id), "{out}");
    }
    // Rules that read request bodies say so; the denial rules do not.
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert!(
        err.contains("rule `privileged-container` reads the request body (pod.containers[*].securityContext.privileged)"),
        "{err}"
    );
    assert!(!err.contains("rule `denied-by-source-ip` reads"), "{err}");
}

#[test]
fn generate_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    for p in [&a, &b] {
        let o = authwatch(
            &[
                "generate",
                "--events",
                "500",
                "--seed",
                "9",
                "--out",
                p.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = std::fs::read(a).unwrap();
    assert_eq!(a, std::fs::read(b).unwrap());
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 500);
}

#[test]
fn rules_test_runs_the_bundled_tests_and_fails_on_a_wrong_expectation() {
    let o = authwatch(&["rules", "test"], None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap_or("")
            .ends_with(" passed, 0 failed"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        r#"
id: r
match: {responseStatus.code: 403}
group_by: [sourceIPs]
window: 1m
threshold: 2
tests:
  - name: two denials fire
    events:
      - {auditID: a, sourceIPs: [192.0.2.1], responseStatus: {code: 403}, requestReceivedTimestamp: "2026-11-20T10:00:00Z"}
      - {auditID: b, sourceIPs: [192.0.2.1], responseStatus: {code: 403}, requestReceivedTimestamp: "2026-11-20T10:00:01Z"}
    expect:
      - {group: {sourceIPs: 192.0.2.1}, count: 2}
  - name: wrongly expects silence
    events_file: two.jsonl
    expect: []
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("two.jsonl"),
        (0..2)
            .map(|i| denied(i, "192.0.2.9") + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let o = authwatch(&["rules", "test", dir.path().to_str().unwrap()], None);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("PASS r: two denials fire"), "{out}");
    assert!(
        out.contains("FAIL r: wrongly expects silence: expected 0 alert(s), got 1"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

#[test]
fn rules_check_warns_about_a_condition_that_can_never_hold() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "id: r\nmatch: {responseStatus.code: forbidden}\nwindow: 1m\nthreshold: 2\n",
    )
    .unwrap();
    let o = authwatch(&["rules", "check", dir.path().to_str().unwrap()], None);
    assert!(o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("warning:") && e.contains("can never hold"),
        "{e}"
    );
}

/// The Kinesis flags of `run` (issue #10) come from the environment and config files like
/// every other flag, and `--kinesis-stream` without `--match-stream` is refused.
#[test]
fn kinesis_flags_merge_from_env_and_file_and_need_a_match_stream() {
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_authwatch"));
        c.args(args).stdin(Stdio::null());
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = run(
        &[
            ("AUTHWATCH_KINESIS_STREAM", "audit-src"),
            ("AUTHWATCH_MATCH_STREAM", "audit-matches"),
            ("AUTHWATCH_ROLE", "window"),
            ("AUTHWATCH_LEASE_TIMEOUT", "20s"),
        ],
        &["config", "check"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("kinesis-stream: \"audit-src\"  # environment AUTHWATCH_KINESIS_STREAM"),
        "{out}"
    );
    assert!(
        out.contains("role: \"window\"  # environment AUTHWATCH_ROLE"),
        "{out}"
    );
    assert!(out.contains("lease-timeout: \"20s\""), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "kinesis-stream: audit-src\nlease-table: t\n").unwrap();
    for args in [
        vec!["config", "check", "--config", file.to_str().unwrap()],
        vec![
            "run",
            "--config",
            file.to_str().unwrap(),
            "--http-addr",
            "off",
        ],
    ] {
        let o = run(&[], &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--kinesis-stream needs --match-stream"),
            "{}",
            stderr(&o)
        );
    }
    let o = run(
        &[],
        &[
            "run",
            "--kinesis-stream",
            "s",
            "--match-stream",
            "m",
            "--role",
            "both",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("both"), "{}", stderr(&o));
}

#[test]
fn long_version_names_the_gzip_inflater_of_this_build() {
    let o = authwatch(&["--version"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(&format!("authwatch {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let inflater = if cfg!(feature = "isal") {
        "inflated by Intel's ISA-L"
    } else {
        "inflated by zlib-rs"
    };
    assert!(out.contains(inflater), "{out}");
    // `-V` stays the short form.
    let o = authwatch(&["-V"], None);
    let short = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        short.trim(),
        format!("authwatch {}", env!("CARGO_PKG_VERSION"))
    );
}
