//! What `authwatch run` shows an operator while it runs: `/healthz`, `/readyz` and
//! `/metrics` (Prometheus text format) over HTTP, read-only.
//!
//! The live loop owns every counter; after each pass it hands a [`Snapshot`] to
//! [`ServiceMetrics::update`], which moves the Prometheus metrics forward (counters by the
//! difference since the last snapshot). The HTTP server runs on its own thread, so probes are
//! answered even while a pass is being processed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use crate::sinks::SinkFigures;

type Labels = Vec<(&'static str, String)>;

/// Everything the metrics report, as cumulative totals (counters) or current values.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Records read, by log group.
    pub records: BTreeMap<String, u64>,
    /// Events by outcome: `parsed`, `matched`, `duplicate`, `late`, `late_dropped`,
    /// `no_timestamp`, `missing_group_key`, `fanout_capped`, `future` (dated beyond the wall
    /// clock's skew, dropped).
    pub events: BTreeMap<&'static str, u64>,
    /// Parse errors by reason.
    pub parse_errors: BTreeMap<String, u64>,
    /// Alerts by (rule, severity).
    pub alerts: BTreeMap<(String, String), u64>,
    /// Per sink: (delivered, failed, pending, dropped).
    pub sinks: BTreeMap<String, SinkFigures>,
    /// AWS API calls by (operation, outcome).
    pub api_calls: BTreeMap<(String, String), u64>,
    /// Now minus the newest event time read, by log group, seconds.
    pub ingest_lag: BTreeMap<String, f64>,
    /// Keys held by the engine.
    pub active_keys: u64,
    /// Keys evicted, by rule.
    pub evicted_keys: BTreeMap<String, u64>,
    /// Checkpoint writes, and failed ones.
    pub state_writes: u64,
    /// Failed checkpoint writes.
    pub state_write_failures: u64,
}

/// The Prometheus metrics and the readiness state.
pub struct ServiceMetrics {
    registry: Registry,
    records: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    parse_errors: Family<Labels, Counter>,
    alerts: Family<Labels, Counter>,
    sink_delivered: Family<Labels, Counter>,
    sink_failed: Family<Labels, Counter>,
    sink_dropped: Family<Labels, Counter>,
    sink_pending: Family<Labels, Gauge>,
    api_calls: Family<Labels, Counter>,
    throttles: Counter,
    ingest_lag: Family<Labels, Gauge<f64, AtomicU64>>,
    active_keys: Gauge,
    evicted: Family<Labels, Counter>,
    state_writes: Counter,
    state_write_failures: Counter,
    last: Snapshot,
    ready: Readiness,
}

/// When the service counts as ready.
#[derive(Debug)]
struct Readiness {
    state_loaded: bool,
    last_read: BTreeMap<String, Instant>,
    max_age: Duration,
}

fn bump(family: &Family<Labels, Counter>, labels: Labels, now: u64, before: u64) {
    if now > before {
        family.get_or_create(&labels).inc_by(now - before);
    } else {
        // Make the series exist (at zero) so dashboards see it from the start.
        let _ = family.get_or_create(&labels);
    }
}

impl ServiceMetrics {
    /// The metrics of a run over `log_groups`; ready means the state is loaded and every
    /// group's last pass finished within `max_read_age`.
    pub fn new(log_groups: &[String], max_read_age: Duration) -> ServiceMetrics {
        let mut registry = Registry::with_prefix("authwatch");
        let m = ServiceMetrics {
            records: Family::default(),
            events: Family::default(),
            parse_errors: Family::default(),
            alerts: Family::default(),
            sink_delivered: Family::default(),
            sink_failed: Family::default(),
            sink_dropped: Family::default(),
            sink_pending: Family::default(),
            api_calls: Family::default(),
            throttles: Counter::default(),
            ingest_lag: Family::default(),
            active_keys: Gauge::default(),
            evicted: Family::default(),
            state_writes: Counter::default(),
            state_write_failures: Counter::default(),
            last: Snapshot::default(),
            ready: Readiness {
                state_loaded: false,
                last_read: log_groups.iter().map(|g| (g.clone(), far_past())).collect(),
                max_age: max_read_age,
            },
            registry: Registry::default(),
        };
        registry.register("records", "Records read, by log group", m.records.clone());
        registry.register(
            "events",
            "Audit events by outcome (parsed, matched, duplicate, late, late_dropped, ...)",
            m.events.clone(),
        );
        registry.register(
            "parse_errors",
            "Records or events that could not be used, by reason",
            m.parse_errors.clone(),
        );
        registry.register(
            "alerts",
            "Alerts fired, by rule and severity",
            m.alerts.clone(),
        );
        registry.register(
            "sink_deliveries",
            "Alerts handed to each sink",
            m.sink_delivered.clone(),
        );
        registry.register(
            "sink_failures",
            "Failed deliveries or publish attempts, by sink",
            m.sink_failed.clone(),
        );
        registry.register(
            "sink_dropped",
            "Alerts a sink dropped (full spool), by sink",
            m.sink_dropped.clone(),
        );
        registry.register(
            "sink_pending",
            "Alerts waiting in a sink's spool",
            m.sink_pending.clone(),
        );
        registry.register(
            "aws_api_calls",
            "AWS API calls by operation and outcome",
            m.api_calls.clone(),
        );
        registry.register(
            "aws_throttles",
            "Throttled AWS API calls",
            m.throttles.clone(),
        );
        registry.register(
            "ingest_lag_seconds",
            "Now minus the newest event time read, by log group",
            m.ingest_lag.clone(),
        );
        registry.register(
            "active_keys",
            "Keys held by the rule engine",
            m.active_keys.clone(),
        );
        registry.register(
            "evicted_keys",
            "Keys evicted because a rule reached max_keys, by rule",
            m.evicted.clone(),
        );
        registry.register("state_writes", "Checkpoint writes", m.state_writes.clone());
        registry.register(
            "state_write_failures",
            "Checkpoint writes that failed",
            m.state_write_failures.clone(),
        );
        ServiceMetrics { registry, ..m }
    }

    /// Moves the metrics to `s`.
    pub fn update(&mut self, s: Snapshot) {
        let last = std::mem::take(&mut self.last);
        for (g, n) in &s.records {
            let before = last.records.get(g).copied().unwrap_or(0);
            bump(&self.records, vec![("log_group", g.clone())], *n, before);
        }
        for (o, n) in &s.events {
            let before = last.events.get(o).copied().unwrap_or(0);
            bump(&self.events, vec![("outcome", (*o).to_owned())], *n, before);
        }
        for (r, n) in &s.parse_errors {
            let before = last.parse_errors.get(r).copied().unwrap_or(0);
            bump(&self.parse_errors, vec![("reason", r.clone())], *n, before);
        }
        for ((rule, sev), n) in &s.alerts {
            let before = last
                .alerts
                .get(&(rule.clone(), sev.clone()))
                .copied()
                .unwrap_or(0);
            bump(
                &self.alerts,
                vec![("rule", rule.clone()), ("severity", sev.clone())],
                *n,
                before,
            );
        }
        for (sink, f) in &s.sinks {
            let b = last.sinks.get(sink).copied().unwrap_or_default();
            let l = vec![("sink", sink.clone())];
            bump(&self.sink_delivered, l.clone(), f.delivered, b.delivered);
            bump(&self.sink_failed, l.clone(), f.failed, b.failed);
            bump(&self.sink_dropped, l.clone(), f.dropped, b.dropped);
            self.sink_pending
                .get_or_create(&l)
                .set(i64::try_from(f.pending).unwrap_or(i64::MAX));
        }
        let mut throttled_now = 0;
        let mut throttled_before = 0;
        for ((op, outcome), n) in &s.api_calls {
            let before = last
                .api_calls
                .get(&(op.clone(), outcome.clone()))
                .copied()
                .unwrap_or(0);
            if outcome == "throttled" {
                throttled_now += n;
                throttled_before += before;
            }
            bump(
                &self.api_calls,
                vec![("operation", op.clone()), ("outcome", outcome.clone())],
                *n,
                before,
            );
        }
        if throttled_now > throttled_before {
            self.throttles.inc_by(throttled_now - throttled_before);
        }
        for (g, lag) in &s.ingest_lag {
            self.ingest_lag
                .get_or_create(&vec![("log_group", g.clone())])
                .set(*lag);
        }
        self.active_keys
            .set(i64::try_from(s.active_keys).unwrap_or(i64::MAX));
        for (r, n) in &s.evicted_keys {
            let before = last.evicted_keys.get(r).copied().unwrap_or(0);
            bump(&self.evicted, vec![("rule", r.clone())], *n, before);
        }
        if s.state_writes > last.state_writes {
            self.state_writes.inc_by(s.state_writes - last.state_writes);
        }
        if s.state_write_failures > last.state_write_failures {
            self.state_write_failures
                .inc_by(s.state_write_failures - last.state_write_failures);
        }
        self.last = s;
    }

    /// The state was loaded (or created).
    pub fn state_loaded(&mut self) {
        self.ready.state_loaded = true;
    }

    /// A pass over `log_group` finished.
    pub fn read_ok(&mut self, log_group: &str) {
        self.ready
            .last_read
            .insert(log_group.to_owned(), Instant::now());
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.state_loaded {
            return Err("state not loaded yet".into());
        }
        let stale: Vec<String> = self
            .ready
            .last_read
            .iter()
            .filter(|(_, t)| t.elapsed() > self.ready.max_age)
            .map(|(g, t)| {
                if t.elapsed() > Duration::from_secs(86_400 * 365) {
                    format!("{g}: not read yet")
                } else {
                    format!("{g}: last read {}s ago", t.elapsed().as_secs())
                }
            })
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale.join("; "))
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn far_past() -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(86_400 * 366 * 10))
        .or_else(|| now.checked_sub(Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` from a thread of its own; GET and
/// HEAD only.
pub fn serve(addr: SocketAddr, metrics: Arc<Mutex<ServiceMetrics>>) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("the HTTP server is not on an IP address"))?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (status, body, content_type) = respond(&req, &metrics);
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(
                        tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            content_type.as_bytes(),
                        )
                        .unwrap_or_else(|_| {
                            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain"[..])
                                .expect("a static header is valid")
                        }),
                    );
                let _ = req.respond(response);
            }
        })?;
    Ok(bound)
}

fn respond(
    req: &tiny_http::Request,
    metrics: &Mutex<ServiceMetrics>,
) -> (u16, String, &'static str) {
    use tiny_http::Method;
    if !matches!(req.method(), Method::Get | Method::Head) {
        return (405, "read-only: GET or HEAD\n".into(), "text/plain");
    }
    let path = req.url().split('?').next().unwrap_or("");
    let m = metrics.lock().unwrap_or_else(|p| p.into_inner());
    match path {
        "/healthz" => (200, "ok\n".into(), "text/plain"),
        "/readyz" => match m.readiness() {
            Ok(()) => (200, "ready\n".into(), "text/plain"),
            Err(why) => (503, format!("not ready: {why}\n"), "text/plain"),
        },
        "/metrics" => (
            200,
            m.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => (
            404,
            "not found: /healthz, /readyz, /metrics\n".into(),
            "text/plain",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_by_differences_and_readiness_follows_reads() {
        let mut m = ServiceMetrics::new(&["g".into()], Duration::from_secs(60));
        assert!(m.readiness().is_err());
        m.state_loaded();
        assert_eq!(m.readiness(), Err("g: not read yet".into()));
        m.read_ok("g");
        assert_eq!(m.readiness(), Ok(()));
        let mut s = Snapshot::default();
        s.records.insert("g".into(), 10);
        s.alerts.insert(("r".into(), "high".into()), 1);
        s.api_calls
            .insert(("FilterLogEvents".into(), "throttled".into()), 2);
        m.update(s.clone());
        s.records.insert("g".into(), 15);
        s.api_calls
            .insert(("FilterLogEvents".into(), "throttled".into()), 5);
        m.update(s);
        let text = m.render();
        assert!(
            text.contains("authwatch_records_total{log_group=\"g\"} 15"),
            "{text}"
        );
        assert!(
            text.contains("authwatch_alerts_total{rule=\"r\",severity=\"high\"} 1"),
            "{text}"
        );
        assert!(text.contains("authwatch_aws_throttles_total 5"), "{text}");
    }
}
