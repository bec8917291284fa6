//! `authwatch alarms sync`: CloudWatch alarms kept in step with the rules.
//!
//! One alarm per rule on `AlertsFired` (so the console shows which rule fired), and the
//! guidance's own alarm on a rise of `DeniedRequests` for the cluster (a static threshold,
//! and optionally a CloudWatch anomaly-detection band). Every alarm has the SNS topic as its
//! action, `TreatMissingData=notBreaching` (no denials is not a breach), a name prefix, and
//! the tag `ManagedBy=authwatch` plus `authwatch:cluster=<cluster>`.
//!
//! The sync is a plan ([`plan`]) compared with what exists ([`diff`]): an alarm whose
//! settings already match is left alone, so a second run makes no write call; `--prune`
//! deletes only alarms that carry our tag for this cluster and whose rule is gone.

use std::collections::BTreeSet;

use authwatch_rules::Rule;
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricAlarm, MetricDataQuery, MetricStat, Statistic, Tag,
};

/// The tag that marks an alarm as ours.
pub const MANAGED_TAG: (&str, &str) = ("ManagedBy", "authwatch");
/// The tag naming the cluster an alarm watches.
pub const CLUSTER_TAG: &str = "authwatch:cluster";

/// What `alarms sync` was asked for.
#[derive(Debug, Clone)]
pub struct AlarmOptions {
    /// The cluster (the metrics' `Cluster` dimension).
    pub cluster: String,
    /// The metrics namespace.
    pub namespace: String,
    /// The SNS topic for the alarm actions.
    pub topic_arn: String,
    /// Name prefix, e.g. `authwatch-`.
    pub prefix: String,
    /// Period of the per-rule alarms, seconds.
    pub rule_period: i32,
    /// Threshold of the denied-requests alarm: more than this many 401/403 per period.
    pub denied_threshold: f64,
    /// Period of the denied-requests alarm, seconds.
    pub denied_period: i32,
    /// Width of the anomaly-detection band, in standard deviations (adds a second alarm).
    pub anomaly_band: Option<f64>,
}

/// One alarm as we want it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredAlarm {
    /// Alarm name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Metric name (static alarms).
    pub metric: &'static str,
    /// Dimensions, sorted by name.
    pub dimensions: Vec<(String, String)>,
    /// Period, seconds.
    pub period: i32,
    /// Threshold (static alarms).
    pub threshold: f64,
    /// `>=` or `>` (static); anomaly alarms use `GreaterThanUpperThreshold`.
    pub comparison: ComparisonOperator,
    /// Anomaly band width, for the anomaly alarm.
    pub anomaly_band: Option<f64>,
}

fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The alarms `rules` call for.
pub fn plan(rules: &[Rule], o: &AlarmOptions) -> Vec<DesiredAlarm> {
    let base = format!("{}{}-", o.prefix, sanitize_name(&o.cluster));
    let mut out = Vec::new();
    let denied_dims = vec![("Cluster".to_owned(), o.cluster.clone())];
    out.push(DesiredAlarm {
        name: format!("{base}denied-requests"),
        description: format!(
            "authwatch: more than {} 401/403 responses in {} s on cluster {} (DeniedRequests); see the authwatch SNS notifications for who and from where.",
            o.denied_threshold, o.denied_period, o.cluster
        ),
        metric: "DeniedRequests",
        dimensions: denied_dims.clone(),
        period: o.denied_period,
        threshold: o.denied_threshold,
        comparison: ComparisonOperator::GreaterThanThreshold,
        anomaly_band: None,
    });
    if let Some(band) = o.anomaly_band {
        out.push(DesiredAlarm {
            name: format!("{base}denied-requests-anomaly"),
            description: format!(
                "authwatch: 401/403 responses on cluster {} above CloudWatch's anomaly band ({band} standard deviations) per {} s.",
                o.cluster, o.denied_period
            ),
            metric: "DeniedRequests",
            dimensions: denied_dims,
            period: o.denied_period,
            threshold: 0.0,
            comparison: ComparisonOperator::GreaterThanUpperThreshold,
            anomaly_band: Some(band),
        });
    }
    for r in rules {
        let mut dims = vec![
            ("Cluster".to_owned(), o.cluster.clone()),
            ("Rule".to_owned(), r.id.clone()),
            ("Severity".to_owned(), r.severity.as_str().to_owned()),
        ];
        dims.sort();
        let mut description = format!("authwatch rule {} ({}) fired", r.id, r.severity.as_str());
        if !r.description.is_empty() {
            description.push_str(": ");
            description.push_str(r.description.trim());
        }
        // CloudWatch limits descriptions to 1024 characters.
        if let Some((i, _)) = description.char_indices().nth(1000) {
            description.truncate(i);
            description.push('…');
        }
        out.push(DesiredAlarm {
            name: format!("{base}{}", sanitize_name(&r.id)),
            description,
            metric: "AlertsFired",
            dimensions: dims,
            period: o.rule_period,
            threshold: 1.0,
            comparison: ComparisonOperator::GreaterThanOrEqualToThreshold,
            anomaly_band: None,
        });
    }
    out
}

/// What the sync does to one alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// It does not exist yet.
    Create(DesiredAlarm),
    /// It exists with other settings (named).
    Update(DesiredAlarm, Vec<String>),
    /// It exists as planned.
    Unchanged(String),
    /// A managed alarm of this cluster whose rule is gone (only with `--prune`).
    Delete(String),
}

impl Change {
    /// One line for the plan.
    pub fn describe(&self) -> String {
        match self {
            Change::Create(d) => format!("create    {}", d.name),
            Change::Update(d, why) => format!("update    {} ({})", d.name, why.join(", ")),
            Change::Unchanged(n) => format!("unchanged {n}"),
            Change::Delete(n) => format!("delete    {n}"),
        }
    }

    /// Whether applying it calls a write API.
    pub fn writes(&self) -> bool {
        !matches!(self, Change::Unchanged(_))
    }
}

/// The settings in which `existing` differs from `want` (empty when it matches).
pub fn differences(want: &DesiredAlarm, existing: &MetricAlarm, o: &AlarmOptions) -> Vec<String> {
    let mut d = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            d.push(name.to_owned());
        }
    };
    check(
        "description",
        existing.alarm_description() == Some(want.description.as_str()),
    );
    check(
        "actions",
        existing.alarm_actions() == [o.topic_arn.clone()]
            && existing.actions_enabled() != Some(false),
    );
    check(
        "treat_missing_data",
        existing.treat_missing_data() == Some("notBreaching"),
    );
    check(
        "comparison",
        existing.comparison_operator() == Some(&want.comparison),
    );
    check(
        "evaluation_periods",
        existing.evaluation_periods() == Some(1),
    );
    match want.anomaly_band {
        None => {
            check("metric", existing.metric_name() == Some(want.metric));
            check(
                "namespace",
                existing.namespace() == Some(o.namespace.as_str()),
            );
            check("statistic", existing.statistic() == Some(&Statistic::Sum));
            check("period", existing.period() == Some(want.period));
            check("threshold", existing.threshold() == Some(want.threshold));
            let mut have: Vec<(String, String)> = existing
                .dimensions()
                .iter()
                .map(|x| {
                    (
                        x.name().unwrap_or("").to_owned(),
                        x.value().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            have.sort();
            check("dimensions", have == want.dimensions);
        }
        Some(_) => {
            let queries = anomaly_queries(want, o);
            check("metrics", existing.metrics() == queries.as_slice());
            check(
                "threshold_metric_id",
                existing.threshold_metric_id() == Some("ad1"),
            );
        }
    }
    d
}

fn dimensions(want: &DesiredAlarm) -> Vec<Dimension> {
    want.dimensions
        .iter()
        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
        .collect()
}

fn anomaly_queries(want: &DesiredAlarm, o: &AlarmOptions) -> Vec<MetricDataQuery> {
    let metric = Metric::builder()
        .namespace(&o.namespace)
        .metric_name(want.metric)
        .set_dimensions(Some(dimensions(want)))
        .build();
    vec![
        MetricDataQuery::builder()
            .id("m1")
            .return_data(true)
            .metric_stat(
                MetricStat::builder()
                    .metric(metric)
                    .period(want.period)
                    .stat("Sum")
                    .build(),
            )
            .build(),
        MetricDataQuery::builder()
            .id("ad1")
            .return_data(true)
            .expression(format!(
                "ANOMALY_DETECTION_BAND(m1, {})",
                want.anomaly_band.unwrap_or(2.0)
            ))
            .label("DeniedRequests (expected)")
            .build(),
    ]
}

/// Errors of a sync.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {detail}")]
pub struct SyncError {
    /// The API call.
    pub op: &'static str,
    /// What CloudWatch said.
    pub detail: String,
}

fn err<E>(op: &'static str, e: aws_sdk_cloudwatch::error::SdkError<E>) -> SyncError
where
    E: aws_sdk_cloudwatch::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    SyncError {
        op,
        detail: authwatch_aws::backoff::classify(&e).detail().to_owned(),
    }
}

/// Existing alarms whose name starts with the cluster's prefix.
async fn existing(
    client: &aws_sdk_cloudwatch::Client,
    name_prefix: &str,
) -> Result<Vec<MetricAlarm>, SyncError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let r = client
            .describe_alarms()
            .alarm_name_prefix(name_prefix)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| err("DescribeAlarms", e))?;
        out.extend(r.metric_alarms().iter().cloned());
        token = r.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Whether an alarm carries our tags for `cluster`.
async fn is_managed(
    client: &aws_sdk_cloudwatch::Client,
    arn: &str,
    cluster: &str,
) -> Result<bool, SyncError> {
    let tags = client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| err("ListTagsForResource", e))?;
    let has = |k: &str, v: &str| {
        tags.tags()
            .iter()
            .any(|t| t.key() == Some(k) && t.value() == Some(v))
    };
    Ok(has(MANAGED_TAG.0, MANAGED_TAG.1) && has(CLUSTER_TAG, cluster))
}

/// Compares the plan with what exists.
pub async fn diff(
    client: &aws_sdk_cloudwatch::Client,
    desired: &[DesiredAlarm],
    o: &AlarmOptions,
    prune: bool,
) -> Result<Vec<Change>, SyncError> {
    let prefix = format!("{}{}-", o.prefix, sanitize_name(&o.cluster));
    let have = existing(client, &prefix).await?;
    let mut changes = Vec::new();
    for want in desired {
        match have
            .iter()
            .find(|a| a.alarm_name() == Some(want.name.as_str()))
        {
            None => changes.push(Change::Create(want.clone())),
            Some(a) => {
                let d = differences(want, a, o);
                changes.push(if d.is_empty() {
                    Change::Unchanged(want.name.clone())
                } else {
                    Change::Update(want.clone(), d)
                });
            }
        }
    }
    if prune {
        let wanted: BTreeSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
        for a in &have {
            let (Some(name), Some(arn)) = (a.alarm_name(), a.alarm_arn()) else {
                continue;
            };
            if !wanted.contains(name) && is_managed(client, arn, &o.cluster).await? {
                changes.push(Change::Delete(name.to_owned()));
            }
        }
    }
    Ok(changes)
}

/// Tags a new alarm as ours. (A separate `TagResource` rather than `PutMetricAlarm`'s own
/// `Tags`, which mean the same to CloudWatch: LocalStack 4.10 cannot describe alarms created
/// with `Tags`.)
async fn tag(
    client: &aws_sdk_cloudwatch::Client,
    name: &str,
    o: &AlarmOptions,
) -> Result<(), SyncError> {
    let described = client
        .describe_alarms()
        .alarm_names(name)
        .send()
        .await
        .map_err(|e| err("DescribeAlarms", e))?;
    let arn = described
        .metric_alarms()
        .first()
        .and_then(|a| a.alarm_arn())
        .ok_or_else(|| SyncError {
            op: "DescribeAlarms",
            detail: format!("alarm {name} was created but is not listed"),
        })?
        .to_owned();
    client
        .tag_resource()
        .resource_arn(arn)
        .tags(
            Tag::builder()
                .key(MANAGED_TAG.0)
                .value(MANAGED_TAG.1)
                .build(),
        )
        .tags(Tag::builder().key(CLUSTER_TAG).value(&o.cluster).build())
        .send()
        .await
        .map_err(|e| err("TagResource", e))?;
    Ok(())
}

/// Applies the changes that write.
pub async fn apply(
    client: &aws_sdk_cloudwatch::Client,
    changes: &[Change],
    o: &AlarmOptions,
) -> Result<(), SyncError> {
    for c in changes {
        match c {
            Change::Create(want) | Change::Update(want, _) => {
                let mut req = client
                    .put_metric_alarm()
                    .alarm_name(&want.name)
                    .alarm_description(&want.description)
                    .actions_enabled(true)
                    .alarm_actions(&o.topic_arn)
                    .evaluation_periods(1)
                    .comparison_operator(want.comparison.clone())
                    .treat_missing_data("notBreaching");
                req = match want.anomaly_band {
                    None => req
                        .namespace(&o.namespace)
                        .metric_name(want.metric)
                        .set_dimensions(Some(dimensions(want)))
                        .statistic(Statistic::Sum)
                        .period(want.period)
                        .threshold(want.threshold),
                    Some(_) => req
                        .set_metrics(Some(anomaly_queries(want, o)))
                        .threshold_metric_id("ad1"),
                };
                req.send().await.map_err(|e| err("PutMetricAlarm", e))?;
                if matches!(c, Change::Create(_)) {
                    tag(client, &want.name, o).await?;
                }
            }
            Change::Delete(name) => {
                client
                    .delete_alarms()
                    .alarm_names(name)
                    .send()
                    .await
                    .map_err(|e| err("DeleteAlarms", e))?;
            }
            Change::Unchanged(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> AlarmOptions {
        AlarmOptions {
            cluster: "prod".into(),
            namespace: "Authwatch".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:alerts".into(),
            prefix: "authwatch-".into(),
            rule_period: 60,
            denied_threshold: 50.0,
            denied_period: 300,
            anomaly_band: Some(2.0),
        }
    }

    #[test]
    fn plan_has_one_alarm_per_rule_and_the_denied_alarms() {
        let rules = authwatch_rules::load_rules(
            "r.yaml",
            "rules:\n  - id: a-rule\n    severity: high\n    match: {responseStatus.code: 403}\n    group_by: [sourceIPs]\n    window: 5m\n    threshold: 3\n",
        )
        .unwrap();
        let p = plan(&rules, &opts());
        let names: Vec<&str> = p.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "authwatch-prod-denied-requests",
                "authwatch-prod-denied-requests-anomaly",
                "authwatch-prod-a-rule"
            ]
        );
        let rule = &p[2];
        assert_eq!(rule.metric, "AlertsFired");
        assert_eq!(
            rule.dimensions,
            vec![
                ("Cluster".to_owned(), "prod".to_owned()),
                ("Rule".to_owned(), "a-rule".to_owned()),
                ("Severity".to_owned(), "high".to_owned())
            ]
        );
        assert_eq!(rule.threshold, 1.0);
    }

    #[test]
    fn a_matching_alarm_has_no_differences() {
        let o = opts();
        let p = plan(&[], &o);
        let want = &p[0];
        let a = MetricAlarm::builder()
            .alarm_name(&want.name)
            .alarm_description(&want.description)
            .actions_enabled(true)
            .alarm_actions(&o.topic_arn)
            .treat_missing_data("notBreaching")
            .comparison_operator(want.comparison.clone())
            .evaluation_periods(1)
            .metric_name(want.metric)
            .namespace(&o.namespace)
            .statistic(Statistic::Sum)
            .period(want.period)
            .threshold(want.threshold)
            .dimensions(Dimension::builder().name("Cluster").value("prod").build())
            .build();
        assert!(differences(want, &a, &o).is_empty());
        let mut changed = a.clone();
        changed.threshold = Some(10.0);
        assert_eq!(differences(want, &changed, &o), vec!["threshold"]);
    }
}
