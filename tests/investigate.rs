//! `authwatch investigate` against an independent brute-force count (serde_json over every
//! line): the shared corpus and generated data sets, exact below the limit, within the stated
//! bound above it.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use authwatch::generate::{self, GenFormat, GenOptions};
use authwatch::investigate::agg::Report;
use authwatch::investigate::{investigate, InvestigateArgs};
use authwatch_event::time::{format_millis, parse_timestamp};
use authwatch_tests::corpus;
use serde_json::Value;

const DIMS: [&str; 7] = [
    "host",
    "sourceIPs",
    "user.username",
    "userAgent",
    "verb+resource",
    "responseStatus.code",
    "user.extra.canonicalArn",
];

/// Per dimension: value → (count, first, last).
type Counts = BTreeMap<&'static str, BTreeMap<String, (u64, i64, i64)>>;

#[derive(Default)]
struct Brute {
    events: u64,
    codes: BTreeMap<String, u64>,
    dims: Counts,
    seen: HashSet<String>,
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

impl Brute {
    /// One line of an audit log (with the log stream it came from, if any).
    fn line(&mut self, line: &str, stream: Option<&str>) {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if !ev.is_object() {
            return;
        }
        let Some(code) = ev["responseStatus"]["code"].as_i64() else {
            return;
        };
        if code != 401 && code != 403 {
            return;
        }
        let Some(t) = ["requestReceivedTimestamp", "stageTimestamp", "timestamp"]
            .iter()
            .find_map(|f| ev[*f].as_str().and_then(parse_timestamp))
        else {
            return;
        };
        if let Some(id) = ev["auditID"].as_str() {
            if !self.seen.insert(id.to_owned()) {
                return;
            }
        }
        self.events += 1;
        *self.codes.entry(code.to_string()).or_default() += 1;
        let host = s(&ev["host"]).or(stream.map(str::to_owned));
        let mut ips: Vec<String> = Vec::new();
        for ip in ev["sourceIPs"].as_array().into_iter().flatten() {
            if let Some(ip) = s(ip) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        let verb = ev["verb"].as_str();
        let what = match ev["objectRef"]["resource"].as_str() {
            Some(r) => match ev["objectRef"]["subresource"].as_str() {
                Some(sub) => Some(format!("{r}/{sub}")),
                None => Some(r.to_owned()),
            },
            None => ev["requestURI"]
                .as_str()
                .map(|u| u.split('?').next().unwrap_or("").to_owned()),
        };
        let vr = match (verb, what) {
            (v, Some(w)) => Some(format!("{} {w}", v.unwrap_or("-"))),
            (Some(v), None) => Some(v.to_owned()),
            (None, None) => None,
        };
        // The IAM principal: canonicalArn, else arn (EKS writes each as a list of one).
        let extra = &ev["user"]["extra"];
        let iam = s(&extra["canonicalArn"][0]).or_else(|| s(&extra["arn"][0]));
        let values: [Vec<String>; 7] = [
            host.into_iter().collect(),
            ips,
            s(&ev["user"]["username"]).into_iter().collect(),
            s(&ev["userAgent"]).into_iter().collect(),
            vr.into_iter().collect(),
            vec![code.to_string()],
            iam.into_iter().collect(),
        ];
        for (d, vals) in DIMS.iter().zip(values) {
            for v in vals {
                let e = self
                    .dims
                    .entry(d)
                    .or_default()
                    .entry(v)
                    .or_insert((0, t, t));
                e.0 += 1;
                e.1 = e.1.min(t);
                e.2 = e.2.max(t);
            }
        }
    }

    fn file(&mut self, path: &Path) {
        let file = std::fs::File::open(path).expect("open");
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        for line in BufReader::new(reader).lines() {
            self.line(&line.expect("read"), None);
        }
    }
}

fn run(args: &[&str]) -> Report {
    let args = InvestigateArgs::parse_args(args).expect("arguments");
    investigate(&args).expect("investigate")
}

/// Every value of every dimension (with `--top` large enough) equals the brute force.
fn assert_exact(report: &Report, brute: &Brute, what: &str) {
    assert_eq!(report.totals.events, brute.events, "{what}: events");
    assert_eq!(report.totals.codes, brute.codes, "{what}: codes");
    for d in &report.dimensions {
        assert!(d.exact, "{what}: {} should be exact", d.name);
        let got: BTreeMap<String, (u64, String, String)> = d
            .values
            .iter()
            .map(|v| {
                (
                    v.value.clone(),
                    (v.count, v.first_seen.clone(), v.last_seen.clone()),
                )
            })
            .collect();
        let want: BTreeMap<String, (u64, String, String)> = brute
            .dims
            .get(d.name)
            .map(|m| {
                m.iter()
                    .map(|(k, &(c, a, b))| (k.clone(), (c, format_millis(a), format_millis(b))))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(got, want, "{what}: dimension {}", d.name);
        assert_eq!(d.distinct, want.len() as u64, "{what}: {} distinct", d.name);
        // Sorted by count, descending.
        assert!(d.values.windows(2).all(|w| w[0].count >= w[1].count));
    }
    let series_sum: u64 = report.series.total.iter().sum();
    assert_eq!(
        series_sum, brute.events,
        "{what}: the timeline sums to the total"
    );
}

#[test]
fn corpus_counts_equal_a_brute_force_count() {
    for file in [
        "audit2rbac_demo.jsonl",
        "hkerma_audit_logs.jsonl.gz",
        "falco_k8s_audit.jsonl",
    ] {
        let path = corpus(file);
        let mut brute = Brute::default();
        brute.file(&path);
        let p = path.display().to_string();
        let report = run(&[&p, "--top", "1000000"]);
        assert_exact(&report, &brute, file);
        // Without the prefilter: the same.
        let report = run(&[&p, "--top", "1000000", "--no-prefilter", "--no-alerts"]);
        assert_exact(&report, &brute, file);
    }
}

#[test]
fn corpus_key_drill_down_counts_one_user() {
    let p = corpus("hkerma_audit_logs.jsonl.gz").display().to_string();
    let mut brute = Brute::default();
    brute.file(&corpus("hkerma_audit_logs.jsonl.gz"));
    let (user, &(count, _, _)) = brute.dims["user.username"]
        .iter()
        .max_by_key(|(_, v)| v.0)
        .expect("a user");
    let key = format!("user.username={user}");
    let report = run(&[&p, "--key", &key, "--top", "1000"]);
    assert_eq!(report.totals.events, count);
    let users = &report.dimensions[2];
    assert_eq!(users.values.len(), 1);
    assert_eq!(users.values[0].value, *user);
    assert!(!report.sample_audit_ids.is_empty());
    assert_eq!(report.key.as_ref().map(|k| k.value.as_str()), Some(&**user));
}

/// EKS events with the IAM principal in `user.extra`: the dimension `user.extra.canonicalArn`
/// equals the brute force, and `--key user.extra.canonicalArn=...` drills into one role.
#[test]
fn the_iam_principal_is_a_dimension_and_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eks.jsonl");
    let mut lines = Vec::new();
    for i in 0..30 {
        // Three roles (one written only as an assumed-role `arn`), two users each; some
        // events from a service account token, with no IAM principal.
        let extra = match i % 4 {
            0 => r#","extra":{"canonicalArn":["arn:aws:iam::111122223333:role/ops"],"arn":["arn:aws:sts::111122223333:assumed-role/ops/s1"],"accessKeyId":["ASIA1"]}"#.to_owned(),
            1 => r#","extra":{"canonicalArn":["arn:aws:iam::111122223333:role/dev"]}"#.to_owned(),
            2 => r#","extra":{"arn":["arn:aws:sts::111122223333:assumed-role/ci/build"]}"#.to_owned(),
            _ => String::new(),
        };
        lines.push(format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"iam-{i}","verb":"list","requestURI":"/api/v1/secrets","user":{{"username":"u{}"{extra}}},"sourceIPs":["198.51.100.{}"],"objectRef":{{"resource":"secrets"}},"responseStatus":{{"code":403}},"requestReceivedTimestamp":"2026-11-20T10:00:{:02}.000Z"}}"#,
            i % 2,
            i % 5,
            i
        ));
    }
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let mut brute = Brute::default();
    brute.file(&path);
    let p = path.display().to_string();
    let report = run(&[&p, "--top", "1000"]);
    assert_exact(&report, &brute, "eks.jsonl");
    let iam = report
        .dimensions
        .iter()
        .find(|d| d.name == "user.extra.canonicalArn")
        .expect("the IAM principal dimension");
    assert_eq!(iam.distinct, 3);
    assert_eq!(iam.values[0].count, 8, "{:?}", iam.values);
    // Drill into the role: only its events.
    let role = "arn:aws:iam::111122223333:role/ops";
    let report = run(&[
        &p,
        "--key",
        &format!("user.extra.canonicalArn={role}"),
        "--top",
        "100",
    ]);
    assert_eq!(report.totals.events, 8);
    let iam = report
        .dimensions
        .iter()
        .find(|d| d.name == "user.extra.canonicalArn")
        .unwrap();
    assert_eq!(iam.values.len(), 1);
    assert_eq!(iam.values[0].value, role);
}

fn generated(dir: &Path, format: GenFormat, events: u64, seed: u64) -> (std::path::PathBuf, Brute) {
    let opts = GenOptions {
        events,
        seed,
        start: parse_timestamp("2026-11-20T10:00:00Z").expect("time"),
        rate: 50,
        streams: 3,
    };
    let out = dir.join(match format {
        GenFormat::CwExport => "export",
        _ => "gen.jsonl",
    });
    generate::write(&opts, format, &out).expect("generate");
    let mut brute = Brute::default();
    generate::generate(&opts, &mut |e| {
        let stream = generate::stream_name(e.stream);
        let in_export = matches!(format, GenFormat::CwExport);
        brute.line(&e.json, in_export.then_some(stream.as_str()));
        Ok(())
    })
    .expect("generate");
    (out, brute)
}

#[test]
fn generated_counts_equal_a_brute_force_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jsonl, brute) = generated(dir.path(), GenFormat::Jsonl, 30_000, 11);
    assert!(brute.events > 200, "the generator plants attacks");
    let report = run(&[&jsonl.display().to_string(), "--top", "1000000"]);
    assert_exact(&report, &brute, "jsonl");
    assert!(report.alerts_total > 0, "the planted attacks raise alerts");
    // The planted scanner is the top address.
    assert_eq!(report.dimensions[1].values[0].value, "198.51.100.7");

    let (export, brute) = generated(dir.path(), GenFormat::CwExport, 30_000, 11);
    let report = run(&[&export.display().to_string(), "--top", "1000000"]);
    assert_exact(&report, &brute, "cw-export");
    assert_eq!(report.dimensions[0].values.len(), 3, "three API servers");
}

#[test]
fn above_the_exact_limit_counts_are_within_the_stated_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jsonl, brute) = generated(dir.path(), GenFormat::Jsonl, 30_000, 5);
    let limit = 8u64;
    let report = run(&[
        &jsonl.display().to_string(),
        "--exact-limit",
        &limit.to_string(),
        "--top",
        "1000",
        "--no-alerts",
    ]);
    assert_eq!(report.totals.events, brute.events);
    let mut estimated = 0;
    for d in &report.dimensions {
        let want = brute.dims.get(d.name).cloned().unwrap_or_default();
        assert!(d.values.len() as u64 <= limit);
        assert_eq!(d.error_bound, d.events / limit, "{}", d.name);
        if want.len() as u64 <= limit {
            assert!(d.exact, "{} has {} values", d.name, want.len());
            continue;
        }
        estimated += 1;
        assert!(!d.exact);
        assert!(d.max_error <= d.error_bound, "{}", d.name);
        for v in &d.values {
            let truth = want.get(&v.value).map_or(0, |e| e.0);
            // Space-Saving: never under, over by at most the entry's error ≤ the bound.
            assert!(
                v.count >= truth,
                "{} {}: {} < {truth}",
                d.name,
                v.value,
                v.count
            );
            assert!(v.count - truth <= v.count_error, "{} {}", d.name, v.value);
            assert!(v.count_error <= d.error_bound);
        }
        // Every value above the bound is listed.
        for (k, e) in &want {
            if e.0 > d.error_bound {
                assert!(
                    d.values.iter().any(|v| &v.value == k),
                    "{}: {k} ({}) missing",
                    d.name,
                    e.0
                );
            }
        }
        // The distinct estimate is within 5 %.
        let n = want.len() as f64;
        assert!(
            ((d.distinct as f64) - n).abs() / n < 0.05,
            "{}: {} vs {n}",
            d.name,
            d.distinct
        );
    }
    assert!(estimated >= 1, "the limit was exceeded somewhere");
}

#[test]
fn filters_by_rule_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jsonl, brute) = generated(dir.path(), GenFormat::Jsonl, 20_000, 11);
    let p = jsonl.display().to_string();
    let r = run(&[&p, "--where", "responseStatus.code=401"]);
    assert_eq!(
        r.totals.events,
        brute.codes.get("401").copied().unwrap_or(0)
    );
    let r = run(&[
        &p,
        "--rule",
        "denied-by-source-ip",
        "--where",
        "sourceIPs=198.51.100.7",
    ]);
    let want = brute.dims["sourceIPs"]["198.51.100.7"].0;
    assert_eq!(r.totals.events, want);
    let err = InvestigateArgs::parse_args([p.as_str(), "--rule", "no-such-rule"])
        .map(|a| investigate(&a));
    assert!(matches!(err, Ok(Err(_))));
}

/// `investigate` on several threads gives the report one thread gives, byte for byte: on
/// JSON Lines, a cw-export tree, the corpus gzip'd, a file given twice (every event a
/// duplicate the second time), and with the exact limit exceeded (the Space-Saving path,
/// which depends on the order events are counted in).
#[test]
fn the_report_is_the_same_on_any_number_of_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (jsonl, _) = generated(dir.path(), GenFormat::Jsonl, 30_000, 11);
    let (export, _) = generated(dir.path(), GenFormat::CwExport, 30_000, 12);
    let corpus = corpus("hkerma_audit_logs.jsonl.gz");
    let (jsonl, export, corpus) = (
        jsonl.display().to_string(),
        export.display().to_string(),
        corpus.display().to_string(),
    );
    let cases: [Vec<&str>; 4] = [
        vec![&jsonl, "--top", "1000"],
        vec![&export, &jsonl, "--exact-limit", "8", "--top", "1000"],
        vec![&corpus, &corpus, "--top", "1000"],
        vec![
            &corpus,
            "--no-alerts",
            "--exact-limit",
            "5",
            "--where",
            "verb=get",
        ],
    ];
    for case in &cases {
        let report = |threads: &str| {
            let mut args = case.clone();
            args.extend(["--threads", threads, "--format", "json"]);
            serde_json::to_string(&run(&args)).expect("json")
        };
        let one = report("1");
        assert!(one.len() > 1000, "a report with content: {one}");
        for threads in ["2", "3"] {
            let many = report(threads);
            if many != one {
                let at = many
                    .bytes()
                    .zip(one.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                let near = |r: &str| {
                    r.get(at.saturating_sub(80)..(at + 120).min(r.len()))
                        .unwrap_or("")
                        .to_owned()
                };
                panic!(
                    "{threads} threads on {case:?} differ from one at byte {at}:\n  1: ...{}\n  {threads}: ...{}",
                    near(&one),
                    near(&many)
                );
            }
        }
    }
}
