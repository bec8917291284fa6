//! CloudWatch metrics: what was read and denied, per interval, as `PutMetricData` calls or
//! as Embedded Metric Format lines.
//!
//! The pipeline fills a [`MetricsTally`] (it never calls AWS); every interval a
//! [`MetricsPublisher`] takes it and sends it. Metrics, in the namespace (default
//! `Authwatch`):
//!
//! | metric | dimensions |
//! |---|---|
//! | `DeniedRequests` | `Cluster`; `Cluster`, `Code`; `Cluster`, `Host` |
//! | `AlertsFired` | `Cluster`, `Rule`, `Severity` |
//! | `EventsProcessed`, `ParseErrors` | `Cluster` |
//! | `IngestLagSeconds` | `Cluster` (now − the newest event time read) |
//!
//! No dimension ever holds a source address or a user name: each distinct dimension set is a
//! billed custom metric, and those are chosen by whoever sends the requests. API servers are
//! few (2–6 per cluster); at most [`MAX_HOSTS`] are kept per interval anyway.
//!
//! With the API, a failed call is retried a few times, then its counts are added to the
//! next interval's: counts are delayed, not lost. Counts are stamped with the time they are
//! sent (a replay of last week's logs reports its counts now).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authwatch_aws::backoff::{classify, Backoff};
use authwatch_aws::ClientConfig;
use authwatch_event::Micros;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::sinks::json_lines::JsonLinesTarget;

/// Distinct `Host` values kept per interval; the rest are counted under `other`.
pub const MAX_HOSTS: usize = 64;

/// `PutMetricData` takes at most this many items per call.
pub const MAX_DATUMS_PER_CALL: usize = 1000;

/// The `Cluster` value when neither the configuration nor the log group names one.
pub const UNKNOWN_CLUSTER: &str = "unknown";

/// How metrics leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsFormat {
    /// `PutMetricData` calls.
    Api,
    /// Embedded Metric Format JSON lines (for the CloudWatch agent, Container Insights or
    /// Lambda), no API calls.
    Emf,
}

/// Settings of the metrics publisher.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Namespace (default `Authwatch`).
    pub namespace: String,
    /// Time between publications.
    pub interval: Duration,
    /// API or EMF.
    pub format: MetricsFormat,
    /// Where EMF lines go.
    pub emf_output: JsonLinesTarget,
    /// `--region`.
    pub region: Option<String>,
}

/// One 401 or 403 the pipeline saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedFact {
    /// 401 or 403.
    pub code: u16,
    /// The API server (log stream or shipper host).
    pub host: Option<String>,
    /// The cluster, when known.
    pub cluster: Option<String>,
}

/// Counts since the last publication.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsTally {
    /// 401/403 by (cluster, code).
    pub denied: BTreeMap<(String, u16), u64>,
    /// 401/403 by (cluster, host).
    pub denied_by_host: BTreeMap<(String, String), u64>,
    /// Alerts by (cluster, rule, severity).
    pub alerts: BTreeMap<(String, String, String), u64>,
    /// Events read (decoded or passed over by the prefilter), by cluster.
    pub events: BTreeMap<String, u64>,
    /// Records or events that could not be used (not attributable to a cluster: they are
    /// put on the default cluster).
    pub parse_errors: u64,
    /// The newest event time read, µs.
    pub newest_event: Option<Micros>,
}

impl MetricsTally {
    /// Counts one denied request.
    pub fn denied(&mut self, fact: DeniedFact, default_cluster: &str) {
        let cluster = fact.cluster.unwrap_or_else(|| default_cluster.to_owned());
        if let Some(host) = fact.host {
            let hosts = self
                .denied_by_host
                .keys()
                .filter(|(c, _)| *c == cluster)
                .count();
            let host = if hosts >= MAX_HOSTS
                && !self
                    .denied_by_host
                    .contains_key(&(cluster.clone(), host.clone()))
            {
                "other".to_owned()
            } else {
                host
            };
            *self
                .denied_by_host
                .entry((cluster.clone(), host))
                .or_default() += 1;
        }
        *self.denied.entry((cluster, fact.code)).or_default() += 1;
    }

    /// Counts one alert.
    pub fn alert(
        &mut self,
        cluster: Option<&str>,
        rule: &str,
        severity: &str,
        default_cluster: &str,
    ) {
        *self
            .alerts
            .entry((
                cluster.unwrap_or(default_cluster).to_owned(),
                rule.to_owned(),
                severity.to_owned(),
            ))
            .or_default() += 1;
    }

    /// Adds another tally (one that could not be sent) to this one.
    pub fn merge(&mut self, other: MetricsTally) {
        for (k, v) in other.denied {
            *self.denied.entry(k).or_default() += v;
        }
        for (k, v) in other.denied_by_host {
            *self.denied_by_host.entry(k).or_default() += v;
        }
        for (k, v) in other.alerts {
            *self.alerts.entry(k).or_default() += v;
        }
        for (k, v) in other.events {
            *self.events.entry(k).or_default() += v;
        }
        self.parse_errors += other.parse_errors;
        self.newest_event = self.newest_event.max(other.newest_event);
    }
}

/// One metric value with its dimensions, independent of how it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Metric name.
    pub name: &'static str,
    /// Dimension name → value.
    pub dimensions: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
    /// `Count` or `Seconds`.
    pub unit: &'static str,
}

/// The points of one interval. `clusters` are the clusters seen so far in the run: each
/// gets its cluster-level counts even when they are zero, so an alarm sees data (and a
/// stopped authwatch shows as missing data, not as zero).
pub fn points(tally: &MetricsTally, clusters: &BTreeSet<String>, now: Micros) -> Vec<Point> {
    let mut out = Vec::new();
    let count = |name, dimensions, value: u64| Point {
        name,
        dimensions,
        value: value as f64,
        unit: "Count",
    };
    for c in clusters {
        let total: u64 = tally
            .denied
            .iter()
            .filter(|((cl, _), _)| cl == c)
            .map(|(_, n)| n)
            .sum();
        out.push(count("DeniedRequests", vec![("Cluster", c.clone())], total));
        for code in [401u16, 403] {
            let n = tally.denied.get(&(c.clone(), code)).copied().unwrap_or(0);
            out.push(count(
                "DeniedRequests",
                vec![("Cluster", c.clone()), ("Code", code.to_string())],
                n,
            ));
        }
        out.push(count(
            "EventsProcessed",
            vec![("Cluster", c.clone())],
            tally.events.get(c).copied().unwrap_or(0),
        ));
    }
    for ((c, host), n) in &tally.denied_by_host {
        out.push(count(
            "DeniedRequests",
            vec![("Cluster", c.clone()), ("Host", host.clone())],
            *n,
        ));
    }
    for ((c, rule, sev), n) in &tally.alerts {
        out.push(count(
            "AlertsFired",
            vec![
                ("Cluster", c.clone()),
                ("Rule", rule.clone()),
                ("Severity", sev.clone()),
            ],
            *n,
        ));
    }
    if let Some(first) = clusters.iter().next() {
        out.push(count(
            "ParseErrors",
            vec![("Cluster", first.clone())],
            tally.parse_errors,
        ));
        if let Some(t) = tally.newest_event {
            let lag = (now.saturating_sub(t)).max(0) as f64 / 1e6;
            for c in clusters {
                out.push(Point {
                    name: "IngestLagSeconds",
                    dimensions: vec![("Cluster", c.clone())],
                    value: lag,
                    unit: "Seconds",
                });
            }
        }
    }
    out
}

/// Embedded Metric Format lines for `points`: one line per dimension set.
pub fn emf_lines(namespace: &str, points: &[Point], now_ms: i64) -> Vec<String> {
    // Group points by their dimension names and values.
    let mut groups: BTreeMap<Vec<(&str, &str)>, Vec<&Point>> = BTreeMap::new();
    for p in points {
        let key: Vec<(&str, &str)> = p.dimensions.iter().map(|(k, v)| (*k, v.as_str())).collect();
        groups.entry(key).or_default().push(p);
    }
    let mut lines = Vec::new();
    for (dims, ps) in groups {
        // A metric name may appear once per line.
        let mut seen = BTreeSet::new();
        let ps: Vec<&Point> = ps.into_iter().filter(|p| seen.insert(p.name)).collect();
        let mut doc = serde_json::Map::new();
        doc.insert(
            "_aws".into(),
            serde_json::json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [dims.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                    "Metrics": ps.iter().map(|p| serde_json::json!({"Name": p.name, "Unit": p.unit})).collect::<Vec<_>>(),
                }]
            }),
        );
        for (k, v) in &dims {
            doc.insert((*k).into(), serde_json::Value::String((*v).to_owned()));
        }
        for p in &ps {
            doc.insert(p.name.into(), serde_json::json!(p.value));
        }
        lines.push(serde_json::Value::Object(doc).to_string());
    }
    lines
}

fn to_datum(p: &Point) -> Option<MetricDatum> {
    let mut b = MetricDatum::builder()
        .metric_name(p.name)
        .value(p.value)
        .unit(StandardUnit::from(p.unit));
    for (k, v) in &p.dimensions {
        b = b.dimensions(Dimension::builder().name(*k).value(v).build());
    }
    // No Timestamp: CloudWatch stamps the datum on arrival (which is also when it was
    // counted, give or take an interval), and some emulators reject timestamps.
    Some(b.build())
}

fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

enum Job {
    Publish(MetricsTally, BTreeSet<String>),
}

/// Publishes a tally every interval.
pub struct MetricsPublisher {
    config: MetricsConfig,
    last: Instant,
    clusters: BTreeSet<String>,
    tx: Option<mpsc::Sender<Job>>,
    done: Option<mpsc::Receiver<()>>,
    emf: Option<Box<dyn Write + Send>>,
}

impl MetricsPublisher {
    /// Starts the publisher: for the API, a thread with its own runtime and client.
    pub fn start(config: MetricsConfig) -> io::Result<MetricsPublisher> {
        let mut p = MetricsPublisher {
            last: Instant::now(),
            clusters: BTreeSet::new(),
            tx: None,
            done: None,
            emf: None,
            config,
        };
        match p.config.format {
            MetricsFormat::Emf => {
                p.emf = Some(match &p.config.emf_output {
                    JsonLinesTarget::Stdout => Box::new(io::stdout()),
                    JsonLinesTarget::File(path) => Box::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)?,
                    ),
                });
            }
            MetricsFormat::Api => {
                let (tx, rx) = mpsc::channel::<Job>();
                let (done_tx, done_rx) = mpsc::channel();
                let namespace = p.config.namespace.clone();
                let region = p.config.region.clone();
                thread::Builder::new()
                    .name("cloudwatch-metrics".into())
                    .spawn(move || {
                        api_thread(namespace, region, rx);
                        let _ = done_tx.send(());
                    })?;
                p.tx = Some(tx);
                p.done = Some(done_rx);
            }
        }
        Ok(p)
    }

    /// Names a cluster whose counts are reported even when zero.
    pub fn add_cluster(&mut self, cluster: &str) {
        if !self.clusters.contains(cluster) {
            self.clusters.insert(cluster.to_owned());
        }
    }

    /// Whether an interval has passed since the last publication.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.config.interval
    }

    /// Sends a tally (without waiting for the API).
    pub fn publish(&mut self, tally: MetricsTally) -> io::Result<()> {
        self.last = Instant::now();
        for (c, _) in tally.denied.keys() {
            self.add_cluster(&c.clone());
        }
        for c in tally.events.keys() {
            self.add_cluster(&c.clone());
        }
        for (c, _, _) in tally.alerts.keys() {
            self.add_cluster(&c.clone());
        }
        if let Some(out) = &mut self.emf {
            let now = now_micros();
            let pts = points(&tally, &self.clusters, now);
            for line in emf_lines(&self.config.namespace, &pts, now / 1000) {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            return out.flush();
        }
        if let Some(tx) = &self.tx {
            tx.send(Job::Publish(tally, self.clusters.clone()))
                .map_err(|_| io::Error::other("the CloudWatch metrics thread has stopped"))?;
        }
        Ok(())
    }

    /// Publishes the last tally and waits (up to 30 s) for the API calls to finish.
    pub fn close(&mut self, last: MetricsTally) -> io::Result<()> {
        self.publish(last)?;
        self.tx = None;
        if let Some(done) = self.done.take() {
            if done.recv_timeout(Duration::from_secs(30)).is_err() {
                return Err(io::Error::other(
                    "CloudWatch metrics: the last PutMetricData did not finish within 30s",
                ));
            }
        }
        Ok(())
    }
}

fn api_thread(namespace: String, region: Option<String>, rx: mpsc::Receiver<Job>) {
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("authwatch: metrics: cannot start a runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let shared = authwatch_aws::sdk_config(&ClientConfig {
            region,
            attempt_timeout: Some(Duration::from_secs(10)),
        })
        .await;
        let client = aws_sdk_cloudwatch::Client::new(&shared);
        let mut carried = MetricsTally::default();
        // Blocking receive is fine: this thread does nothing else.
        while let Ok(Job::Publish(tally, clusters)) = rx.recv() {
            carried.merge(tally);
            let pts = points(&carried, &clusters, now_micros());
            match put_points(&client, &namespace, &pts).await {
                Ok(()) => carried = MetricsTally::default(),
                Err(e) => tracing::warn!(
                    "authwatch: metrics: PutMetricData to {namespace} failed ({e}); the counts are added to the next interval"
                ),
            }
        }
    });
}

/// Sends points in calls of at most [`MAX_DATUMS_PER_CALL`], each retried up to 3 times.
async fn put_points(
    client: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    pts: &[Point],
) -> Result<(), String> {
    let datums: Vec<MetricDatum> = pts.iter().filter_map(to_datum).collect();
    for chunk in datums.chunks(MAX_DATUMS_PER_CALL) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let r = client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(chunk.to_vec()))
                .send()
                .await;
            match r {
                Ok(_) => break,
                Err(e) => {
                    let class = classify(&e);
                    if !class.is_transient() || backoff.attempts() >= 3 {
                        return Err(class.detail().to_owned());
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_to_points_has_the_documented_dimensions() {
        let mut t = MetricsTally::default();
        for code in [401, 403, 403] {
            t.denied(
                DeniedFact {
                    code,
                    host: Some("kube-apiserver-audit-a".into()),
                    cluster: Some("prod".into()),
                },
                UNKNOWN_CLUSTER,
            );
        }
        t.alert(Some("prod"), "denied-by-source-ip", "high", UNKNOWN_CLUSTER);
        t.events.insert("prod".into(), 10);
        t.parse_errors = 2;
        t.newest_event = Some(1_000_000);
        let clusters = BTreeSet::from(["prod".to_owned()]);
        let pts = points(&t, &clusters, 5_000_000);
        let find = |name: &str, dims: &[(&str, &str)]| {
            pts.iter()
                .find(|p| {
                    p.name == name
                        && p.dimensions.len() == dims.len()
                        && dims
                            .iter()
                            .all(|(k, v)| p.dimensions.iter().any(|(pk, pv)| pk == k && pv == v))
                })
                .map(|p| p.value)
        };
        assert_eq!(find("DeniedRequests", &[("Cluster", "prod")]), Some(3.0));
        assert_eq!(
            find("DeniedRequests", &[("Cluster", "prod"), ("Code", "403")]),
            Some(2.0)
        );
        assert_eq!(
            find("DeniedRequests", &[("Cluster", "prod"), ("Code", "401")]),
            Some(1.0)
        );
        assert_eq!(
            find(
                "DeniedRequests",
                &[("Cluster", "prod"), ("Host", "kube-apiserver-audit-a")]
            ),
            Some(3.0)
        );
        assert_eq!(
            find(
                "AlertsFired",
                &[
                    ("Cluster", "prod"),
                    ("Rule", "denied-by-source-ip"),
                    ("Severity", "high")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(find("EventsProcessed", &[("Cluster", "prod")]), Some(10.0));
        assert_eq!(find("ParseErrors", &[("Cluster", "prod")]), Some(2.0));
        assert_eq!(find("IngestLagSeconds", &[("Cluster", "prod")]), Some(4.0));
        // Nothing is keyed by address or user.
        for p in &pts {
            for (k, _) in &p.dimensions {
                assert!(
                    ["Cluster", "Code", "Host", "Rule", "Severity"].contains(k),
                    "{k}"
                );
            }
        }
    }

    #[test]
    fn hosts_are_capped() {
        let mut t = MetricsTally::default();
        for i in 0..(MAX_HOSTS + 10) {
            t.denied(
                DeniedFact {
                    code: 403,
                    host: Some(format!("h{i}")),
                    cluster: None,
                },
                "c",
            );
        }
        assert_eq!(t.denied_by_host.len(), MAX_HOSTS + 1);
        assert_eq!(t.denied_by_host[&("c".into(), "other".into())], 10);
        assert_eq!(t.denied[&("c".into(), 403)], (MAX_HOSTS + 10) as u64);
    }

    #[test]
    fn emf_lines_declare_their_metrics() {
        let mut t = MetricsTally::default();
        t.denied(
            DeniedFact {
                code: 403,
                host: None,
                cluster: Some("prod".into()),
            },
            UNKNOWN_CLUSTER,
        );
        let clusters = BTreeSet::from(["prod".to_owned()]);
        let lines = emf_lines("Authwatch", &points(&t, &clusters, 0), 1234);
        let docs: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let code403 = docs
            .iter()
            .find(|d| d["Code"] == "403")
            .expect("a line for Cluster+Code=403");
        assert_eq!(code403["DeniedRequests"], 1.0);
        assert_eq!(code403["Cluster"], "prod");
        let m = &code403["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "Authwatch");
        assert_eq!(m["Dimensions"][0], serde_json::json!(["Cluster", "Code"]));
        assert_eq!(m["Metrics"][0]["Name"], "DeniedRequests");
        assert_eq!(code403["_aws"]["Timestamp"], 1234);
        // Every declared metric has its value on the line.
        for d in &docs {
            for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
            {
                let name = m["Name"].as_str().unwrap();
                assert!(d[name].is_number(), "{d}");
            }
        }
    }
}
