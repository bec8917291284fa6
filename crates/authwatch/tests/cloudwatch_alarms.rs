//! CloudWatch metrics and alarms against LocalStack's runtime (started without Docker by
//! `.ci/run`, which exports `AUTHWATCH_LOCALSTACK_URL`; moto cannot be used: it does not speak
//! the RPC v2 CBOR protocol of the current `aws-sdk-cloudwatch`, and never evaluates alarms).
//!
//! `alarms sync` creates, then leaves alone, then prunes only its own alarms; and the whole
//! chain: a planted attack → `DeniedRequests`/`AlertsFired` metrics → the alarms go to
//! ALARM → their SNS action reaches an SQS queue.

mod support;

use std::process::Output;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, StateValue};
use serde_json::Value;
use support::*;

struct Aws {
    rt: tokio::runtime::Runtime,
    cw: aws_sdk_cloudwatch::Client,
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
}

impl Aws {
    fn new(endpoint: &str) -> Aws {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = sdk_conf(&rt, endpoint);
        Aws {
            cw: aws_sdk_cloudwatch::Client::new(&conf),
            sns: aws_sdk_sns::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
            rt,
        }
    }

    fn topic_with_queue(&self, name: &str) -> (String, String) {
        self.rt
            .block_on(topic_with_queue(&self.sns, &self.sqs, name, false))
    }

    fn alarms(&self, prefix: &str) -> Vec<aws_sdk_cloudwatch::types::MetricAlarm> {
        self.rt
            .block_on(self.cw.describe_alarms().alarm_name_prefix(prefix).send())
            .unwrap()
            .metric_alarms
            .unwrap_or_default()
    }

    fn receive(&self, url: &str) -> Vec<Value> {
        let r = self
            .rt
            .block_on(
                self.sqs
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send(),
            )
            .unwrap();
        r.messages
            .unwrap_or_default()
            .iter()
            .filter_map(|m| serde_json::from_str(m.body()?).ok())
            .collect()
    }
}

fn authwatch(endpoint: &str, args: &[&str]) -> Output {
    authwatch_cmd(Some(endpoint))
        .args(args)
        .output()
        .expect("run authwatch")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), now_ms())
}

fn rules_dir() -> String {
    format!("{}/../../rules", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn alarms_sync_creates_then_changes_nothing_and_prunes_only_its_own() {
    let Some(ep) = localstack() else { return };
    let aws = Aws::new(&ep);
    let cluster = unique("sync");
    let topic = format!("arn:aws:sns:us-east-1:000000000000:{}", unique("t"));
    // An alarm someone made by hand under the same prefix: never touched.
    let handmade = format!("authwatch-{cluster}-handmade");
    aws.rt
        .block_on(
            aws.cw
                .put_metric_alarm()
                .alarm_name(&handmade)
                .namespace("Other")
                .metric_name("Whatever")
                .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
                .period(60)
                .evaluation_periods(1)
                .threshold(1.0)
                .comparison_operator(
                    aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
                )
                .send(),
        )
        .unwrap();
    let rules = rules_dir();
    // One alarm per bundled rule plus the denied-requests alarm.
    let n_rules = authwatch::rule_files::load(&[std::path::PathBuf::from(&rules)])
        .unwrap()
        .len();
    let changes = n_rules + 1;
    let sync = |extra: &[&str]| {
        let mut args = vec![
            "alarms",
            "sync",
            "--rules",
            &rules,
            "--sns-topic-arn",
            &topic,
            "--cluster",
            &cluster,
        ];
        args.extend_from_slice(extra);
        authwatch(&ep, &args)
    };
    let prefix = format!("authwatch-{cluster}-");

    let dry = sync(&["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains(&format!("dry run: {changes} change(s) not applied")),
        "{}",
        text(&dry)
    );
    assert_eq!(aws.alarms(&prefix).len(), 1, "a dry run created alarms");

    let first = sync(&[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains(&format!("applied {changes} change(s)")),
        "{}",
        text(&first)
    );
    let alarms = aws.alarms(&prefix);
    assert_eq!(
        alarms.len(),
        changes + 1,
        "the rules' alarms and the handmade one"
    );
    let by_ip = alarms
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{prefix}denied-by-source-ip")))
        .expect("the per-rule alarm");
    assert_eq!(by_ip.metric_name(), Some("AlertsFired"));
    assert_eq!(by_ip.namespace(), Some("Authwatch"));
    assert_eq!(by_ip.alarm_actions(), std::slice::from_ref(&topic));
    assert_eq!(by_ip.treat_missing_data(), Some("notBreaching"));
    let mut dims: Vec<(String, String)> = by_ip
        .dimensions()
        .iter()
        .map(|d: &Dimension| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned()))
        .collect();
    dims.sort();
    assert_eq!(
        dims,
        [
            ("Cluster".to_owned(), cluster.clone()),
            ("Rule".to_owned(), "denied-by-source-ip".to_owned()),
            ("Severity".to_owned(), "high".to_owned())
        ]
    );
    let denied = alarms
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{prefix}denied-requests")))
        .expect("the denied-requests alarm");
    assert_eq!(denied.metric_name(), Some("DeniedRequests"));
    assert_eq!(denied.threshold(), Some(50.0));

    // Second run: nothing to do, and no alarm was written (CloudWatch moves an alarm's
    // configuration timestamp on every PutMetricAlarm).
    let stamps = |v: &[aws_sdk_cloudwatch::types::MetricAlarm]| {
        let mut s: Vec<(String, String)> = v
            .iter()
            .map(|a| {
                (
                    a.alarm_name().unwrap().to_owned(),
                    format!("{:?}", a.alarm_configuration_updated_timestamp()),
                )
            })
            .collect();
        s.sort();
        s
    };
    let before = stamps(&alarms);
    std::thread::sleep(Duration::from_millis(1100));
    let second = sync(&[]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("no change ({changes} alarms)")),
        "{}",
        text(&second)
    );
    assert_eq!(stamps(&aws.alarms(&prefix)), before);

    // A changed threshold is an update of that alarm only.
    let third = sync(&["--denied-threshold", "80"]);
    assert!(
        text(&third).contains(&format!(
            "update    {prefix}denied-requests (description, threshold)"
        )),
        "{}",
        text(&third)
    );
    assert!(
        text(&third).contains("applied 1 change(s)"),
        "{}",
        text(&third)
    );

    // Prune with one rule left: the other managed rule alarms go; the hand-made one stays.
    let one_rule = format!("{rules}/denied-by-source-ip.yaml");
    let pruned = authwatch(
        &ep,
        &[
            "alarms",
            "sync",
            "--rules",
            &one_rule,
            "--sns-topic-arn",
            &topic,
            "--cluster",
            &cluster,
            "--denied-threshold",
            "80",
            "--prune",
        ],
    );
    assert!(pruned.status.success(), "{}", text(&pruned));
    let mut left: Vec<String> = aws
        .alarms(&prefix)
        .iter()
        .map(|a| a.alarm_name().unwrap().to_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            format!("{prefix}denied-by-source-ip"),
            format!("{prefix}denied-requests"),
            handmade
        ]
    );
}

#[test]
fn planted_attack_becomes_metrics_then_alarm_then_an_sns_message_in_sqs() {
    let Some(ep) = localstack() else { return };
    let aws = Aws::new(&ep);
    let cluster = unique("chain");
    let namespace = unique("AuthwatchTest");
    let (topic, queue) = aws.topic_with_queue(&unique("chain"));
    let rule = format!("{}/denied-by-source-ip.yaml", rules_dir());
    let sync = authwatch(
        &ep,
        &[
            "alarms",
            "sync",
            "--rules",
            &rule,
            "--sns-topic-arn",
            &topic,
            "--cluster",
            &cluster,
            "--namespace",
            &namespace,
            "--period",
            "30s",
            "--denied-period",
            "30s",
            "--denied-threshold",
            "5",
        ],
    );
    assert!(sync.status.success(), "{}", text(&sync));

    // Probe alarms on exact series (see below), made before the data arrives: 25 denials
    // (all 403), 30 events.
    let probe = |name: &str, metric: &str, dims: &[(&str, &str)]| {
        let mut req = aws
            .cw
            .put_metric_alarm()
            .alarm_name(name)
            .namespace(&namespace)
            .metric_name(metric)
            .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
            .period(30)
            .evaluation_periods(1)
            .threshold(0.0)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            );
        for (k, v) in dims {
            req = req.dimensions(Dimension::builder().name(*k).value(*v).build());
        }
        aws.rt.block_on(req.send()).unwrap();
    };
    let probe_prefix = format!("probe-{cluster}-");
    probe(
        &format!("{probe_prefix}403"),
        "DeniedRequests",
        &[("Cluster", &cluster), ("Code", "403")],
    );
    probe(
        &format!("{probe_prefix}events"),
        "EventsProcessed",
        &[("Cluster", &cluster)],
    );
    // 25 denials from one address (fires denied-by-source-ip once) and 5 allowed requests.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let t0 = now_ms() - 60_000;
    let mut lines: Vec<String> = attack("chain", 25, t0, 500, "203.0.113.50", "mallory")
        .into_iter()
        .map(|e| e.1)
        .collect();
    for i in 0..5 {
        lines.push(
            denied(&format!("ok-{i}"), t0 + 20_000 + i, "10.0.0.1", "alice")
                .replace("\"code\":403", "\"code\":200"),
        );
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let alerts_file = dir.path().join("alerts.jsonl");
    let replay = authwatch(
        &ep,
        &[
            "replay",
            input.to_str().unwrap(),
            "--rules",
            &rule,
            "--cluster",
            &cluster,
            "--cloudwatch-namespace",
            &namespace,
            "--metrics-interval",
            "1s",
            "--no-progress",
            "--sink",
            &format!("file:{}", alerts_file.display()),
        ],
    );
    assert!(replay.status.success(), "{}", text(&replay));
    assert_eq!(alerts(&alerts_file).len(), 1);

    // The metrics, with their dimensions.
    let seen = metric_series(&aws.rt, &aws.cw, &namespace);
    for want in [
        format!("DeniedRequests Cluster={cluster}"),
        format!("DeniedRequests Cluster={cluster},Code=401"),
        format!("DeniedRequests Cluster={cluster},Code=403"),
        format!("AlertsFired Cluster={cluster},Rule=denied-by-source-ip,Severity=high"),
        format!("EventsProcessed Cluster={cluster}"),
        format!("ParseErrors Cluster={cluster}"),
        format!("IngestLagSeconds Cluster={cluster}"),
    ] {
        assert!(seen.contains(&want), "{want} not in {seen:#?}");
    }
    assert!(
        seen.iter()
            .all(|s| !s.contains("203.0.113.50") && !s.contains("mallory")),
        "an address or user became a dimension: {seen:#?}"
    );

    // The alarms go to ALARM on those metrics; the state reason carries the sums.
    let prefix = format!("authwatch-{cluster}-");
    let mut states = Vec::new();
    // 30 s periods: LocalStack evaluates each alarm once per period over the last period, so
    // the counts (sent once, at the end of the replay) stay in its window for a whole
    // evaluation cycle; with 10 s periods a busy machine could evaluate just before and just
    // after and see nothing.
    let fired = wait_until(Duration::from_secs(120), || {
        states = aws.alarms(&prefix);
        states.len() == 2
            && states
                .iter()
                .all(|a| a.state_value() == Some(&StateValue::Alarm))
    });
    let summary: Vec<String> = states
        .iter()
        .map(|a| {
            format!(
                "{:?} {:?} {:?}",
                a.alarm_name(),
                a.state_value(),
                a.state_reason()
            )
        })
        .collect();
    assert!(fired, "alarms did not fire: {summary:#?}");
    let denied_reason = states
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{prefix}denied-requests")))
        .and_then(|a| a.state_reason_data())
        .unwrap_or_default()
        .to_owned();
    // LocalStack reads an alarm's metric as the sum over every dimension set that contains
    // the alarm's dimensions (real CloudWatch matches the set exactly), so the {Cluster}
    // alarm sees 25 + 25 (its own series plus {Cluster, Code=403}). Exact sums are read from
    // series no other series contains: the per-rule alarm, and the probes below.
    let data = |name: &str| -> Value {
        states
            .iter()
            .find(|a| a.alarm_name() == Some(name))
            .and_then(|a| a.state_reason_data())
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default()
    };
    assert!(
        denied_reason.contains("recentDatapoints"),
        "{denied_reason}"
    );
    let rule_alarm = data(&format!("{prefix}denied-by-source-ip"));
    assert_eq!(rule_alarm["recentDatapoints"][0], 1.0, "{rule_alarm}");
    let mut probes = Vec::new();
    let evaluated = wait_until(Duration::from_secs(120), || {
        probes = aws.alarms(&probe_prefix);
        probes.len() == 2
            && probes
                .iter()
                .all(|a| a.state_value() == Some(&StateValue::Alarm))
    });
    let point = |suffix: &str| -> Value {
        probes
            .iter()
            .find(|a| a.alarm_name() == Some(&format!("{probe_prefix}{suffix}")))
            .and_then(|a| a.state_reason_data())
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .map(|d| d["recentDatapoints"][0].clone())
            .unwrap_or_default()
    };
    assert!(evaluated, "probe alarms: {probes:#?}");
    assert_eq!(point("403"), 25.0);
    assert_eq!(point("events"), 30.0);

    // The alarm actions reach the queue through SNS.
    let mut subjects = Vec::new();
    let got = wait_until(Duration::from_secs(30), || {
        for m in aws.receive(&queue) {
            subjects.push(m["Subject"].as_str().unwrap_or_default().to_owned());
        }
        subjects
            .iter()
            .any(|s| s.contains(&format!("{prefix}denied-by-source-ip")))
            && subjects
                .iter()
                .any(|s| s.contains(&format!("{prefix}denied-requests")))
    });
    assert!(got, "alarm notifications not received: {subjects:#?}");
    assert!(
        subjects.iter().all(|s| s.starts_with("ALARM")),
        "{subjects:#?}"
    );
}
