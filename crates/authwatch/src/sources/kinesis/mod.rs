//! `authwatch run --kinesis-stream`: several replicas share a log group's subscription
//! stream, with exact counts across shards (issue #10; docs/kinesis.md).
//!
//! Two stages, each an ordinary Kinesis consumer group with leases in DynamoDB
//! ([`authwatch_aws::lease`]):
//! 1. **match** (per source shard): decode the subscription records (gzip JSON
//!    `DATA_MESSAGE`; `CONTROL_MESSAGE` skipped and counted), prefilter, match, and write one
//!    match record per (rule, key) to the match stream with partition key = rule + key. A
//!    shard is checkpointed once its match records are written.
//! 2. **window** (per match-stream shard): every record of a key is on one shard, so one
//!    replica owns each key's window. Each held shard has its own [`Engine`], the same engine
//!    as the single-process path; its watermark is the oldest "read through" time of the
//!    stage-1 shards (from their leases) minus `--max-lateness`, so no match of a slower source
//!    shard arrives behind it. Alerts are claimed in the lease table
//!    ([`LeaseTable::claim_alert`]) before they reach the sinks, so a window rebuilt by another
//!    replica after a failover never sends twice; the shard is checkpointed after.
//!
//! A replica that takes over a match-stream shard rebuilds its windows by reading the shard
//! again from its checkpoint's arrival time minus the rebuild horizon (the longest
//! `window + cooldown`, plus the lateness bound and the lease timeout), and tells the fresh
//! engine the alerts marked sent ([`LeaseTable::sent_alerts`], `Engine::remember_sent`) so
//! that it keeps the cooldowns they started.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authwatch_aws::backoff::Backoff;
use authwatch_aws::kinesis::{KinesisError, StreamRef};
use authwatch_aws::lease::{Coordinator, LeaseError, LeaseTable};
use authwatch_aws::{sdk_config, ClientConfig};
use authwatch_event::Micros;
use authwatch_rules::{Engine, EngineConfig, Rule};
use serde::Serialize;

use crate::pipeline::{Accounting, Counters, Worker};
use crate::service::{Health, ServiceOptions};
use crate::sinks::AlertSink;
use crate::sources::StartAt;
use crate::telemetry::cloudwatch_metrics::MetricsPublisher;
use crate::telemetry::http::Snapshot;

/// Retries a call on transient errors (with backoff), for ever, unless the stop signal came.
macro_rules! retrying {
    ($what:expr, $call:expr) => {{
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) if backoff.attempts() < 1000 => {
                    tracing::warn!("authwatch run: {}: {e}; retrying", $what);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => break Err(e),
            }
        }
    }};
}

mod leases;
mod match_stage;
mod record;
mod window_stage;

use leases::StageLeases;
use match_stage::{follow_leases_match, match_step, MatchStage};
use window_stage::{follow_leases_window, window_step, WindowStage};

/// How long SIGTERM waits for the step under way (a batch matched and written, or alerts
/// claimed, delivered and marked sent) before the leases are given up: well inside the 30 s
/// Kubernetes and ECS give a container to stop.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Which stages a replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Both stages (the default; one replica is a complete deployment).
    All,
    /// Stage 1 only: source stream → match stream.
    Match,
    /// Stage 2 only: match stream → windows → alerts.
    Window,
}

impl Role {
    fn matches(self) -> bool {
        matches!(self, Role::All | Role::Match)
    }
    fn windows(self) -> bool {
        matches!(self, Role::All | Role::Window)
    }
}

/// What `authwatch run --kinesis-stream` was asked to do.
#[derive(Debug, Clone)]
pub struct KinesisOptions {
    /// `--kinesis-stream`: the log group's subscription stream (name or ARN).
    pub source: String,
    /// `--match-stream`: where stage 1 writes and stage 2 reads.
    pub match_stream: String,
    /// `--lease-table` (default `authwatch-<source stream name>`).
    pub lease_table: Option<String>,
    /// `--role`.
    pub role: Role,
    /// `--lease-timeout`.
    pub lease_timeout: Duration,
    /// `--replica-id` (default: host name and process id).
    pub replica_id: String,
    /// `--region`.
    pub region: Option<String>,
    /// `--start-at`, for shards without a checkpoint (default: now minus the longest window).
    pub start_at: Option<StartAt>,
    /// `--max-lateness` (µs).
    pub max_lateness: Micros,
    /// `--low-mark-fallback` (µs): how far behind the newest match a window engine counts
    /// by itself when the source low mark stops moving (default 10 minutes).
    pub low_mark_fallback: Micros,
    /// `--poll-interval`: how often a caught-up shard is asked again.
    pub poll_interval: Duration,
    /// `--http-addr`: serve `/healthz`, `/readyz`, `/metrics` here.
    pub http_addr: Option<std::net::SocketAddr>,
    /// `--cloudwatch-namespace` / `--metrics-format`: publish CloudWatch metrics (stage 1
    /// counts the events and denials it decodes, stage 2 the alerts it delivers).
    pub metrics: Option<crate::telemetry::cloudwatch_metrics::MetricsConfig>,
}

/// Why a Kinesis run stopped.
#[derive(Debug, thiserror::Error)]
pub enum KinesisRunError {
    /// A Kinesis call failed in a way retrying will not fix.
    #[error("{0}")]
    Kinesis(#[from] KinesisError),
    /// A DynamoDB call failed in a way retrying will not fix.
    #[error("{0}")]
    Lease(#[from] LeaseError),
    /// A sink failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a run counted (printed at the end, and every 30 s while running).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KinesisCounters {
    /// Source records read (stage 1).
    pub source_records: u64,
    /// `CONTROL_MESSAGE` records skipped.
    pub control_messages: u64,
    /// Log events of audit streams read (the shared pipeline's `records`).
    pub log_events: u64,
    /// Log events of other streams skipped.
    pub other_streams: u64,
    /// Events the prefilter ruled out.
    pub prefiltered: u64,
    /// Records or events that could not be used (both stages).
    pub parse_errors: u64,
    /// Events dated beyond the allowed clock skew, dropped before matching (stage 1).
    pub future_events: u64,
    /// Match records written (stage 1).
    pub matches_written: u64,
    /// Match records over Kinesis's 1 MiB record limit, not written (stage 1).
    pub matches_too_large: u64,
    /// Match records read (stage 2).
    pub matches_read: u64,
    /// Alerts handed to the sinks.
    pub alerts_delivered: u64,
    /// Alerts another replica (or an earlier life of a window) had already delivered.
    pub alerts_already_sent: u64,
    /// Leases taken and lost, both stages.
    pub leases_gained: u64,
    /// Leases lost.
    pub leases_lost: u64,
    /// Alerts delivered, by (rule, severity), for `/metrics`.
    #[serde(skip)]
    pub alerts_by_rule_severity: BTreeMap<(String, String), u64>,
}

impl KinesisCounters {
    /// These counters with what the shared pipeline counted ([`Accounting`]): stage 1's
    /// records, prefiltered and future events and parse errors, stage 2's deliveries. The
    /// stage-local counters hold only what the pipeline does not see (undecodable match
    /// records, control messages, other streams).
    fn with(&self, acc: &Accounting) -> KinesisCounters {
        let c = acc.counters();
        KinesisCounters {
            log_events: c.records,
            prefiltered: c.prefiltered,
            parse_errors: self.parse_errors + c.parse_errors,
            future_events: c.future_events,
            alerts_delivered: c.alerts,
            alerts_by_rule_severity: acc.alerts_by_rule_severity().clone(),
            ..self.clone()
        }
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs until SIGTERM/SIGINT (or a non-retryable error).
pub fn run(
    opts: &KinesisOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<KinesisCounters, KinesisRunError> {
    crate::runtime()?.block_on(run_async(opts, rules, sink))
}

async fn run_async(
    opts: &KinesisOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<KinesisCounters, KinesisRunError> {
    let conf = sdk_config(&ClientConfig {
        region: opts.region.clone(),
        attempt_timeout: None,
    })
    .await;
    let kinesis = aws_sdk_kinesis::Client::new(&conf);
    let source = StreamRef::new(&opts.source);
    let matches = StreamRef::new(&opts.match_stream);
    let table_name = opts
        .lease_table
        .clone()
        .unwrap_or_else(|| format!("authwatch-{}", source.name()));
    let table = LeaseTable::new(aws_sdk_dynamodb::Client::new(&conf), &table_name);
    retrying!("creating the lease table", table.ensure())?;

    let (max_window, memory) = crate::sources::rule_spans(&rules);
    // A window engine holds a match back until the source low mark passes it, or, while the
    // low mark stalls, up to its fallback lateness behind the newest match: a rebuild must
    // reach back past the oldest match a dead replica may still have held, or that match is
    // lost with it (its shard's checkpoint was already past it).
    let held_back = opts.max_lateness.max(opts.low_mark_fallback);
    let horizon_ms = memory / 1000
        + held_back / 1000
        + i64::try_from(opts.lease_timeout.as_millis()).unwrap_or(0);
    let start_ms = {
        let now = now_ms();
        match opts.start_at.unwrap_or(StartAt::Ago(max_window / 1000)) {
            StartAt::Now => now,
            StartAt::At(t) => t,
            StartAt::Ago(d) => now - d,
        }
    };
    tracing::info!(
        "authwatch run: replica {} role {:?}: source {}, match stream {}, lease table {table_name}",
        opts.replica_id,
        opts.role,
        source.name(),
        matches.name()
    );

    let engine_config = EngineConfig {
        max_lateness: opts.max_lateness,
        ..EngineConfig::default()
    };
    // The window engines are moved by the source low mark (the slowest source shard's
    // read-through − `--max-lateness`), not by the newest match they happen to see: a key's
    // matches from a slow or failed-over source shard are then still counted in time order.
    // Their own bound is only a fallback for a low mark that stops moving.
    let window_config = EngineConfig {
        max_lateness: held_back,
        ..engine_config.clone()
    };
    let tick_every = (opts.lease_timeout / 3).max(Duration::from_millis(500));
    // One accounting for both stages: stage 1 counts what it decodes, stage 2 what it
    // delivers, and the metrics publisher (when asked for) sends both.
    let mut acc = Accounting::new();
    if let Some(config) = &opts.metrics {
        acc.set_metrics(
            MetricsPublisher::start(config.clone())?,
            crate::sources::default_cluster(None, &[]),
        );
    }
    let stage1 = opts.role.matches().then(|| {
        let engine = Engine::new(rules.clone(), engine_config.clone());
        MatchStage {
            leases: StageLeases::start(
                Coordinator::new(
                    table.clone(),
                    source.name(),
                    &opts.replica_id,
                    opts.lease_timeout,
                ),
                kinesis.clone(),
                source.clone(),
                tick_every,
            ),
            readers: BTreeMap::new(),
            last_checkpoint: HashMap::new(),
            worker: {
                let mut w = Worker::new(&engine, true);
                if acc.has_metrics() {
                    w.count_every_event();
                }
                w
            },
            outcomes: Vec::new(),
            rule_ids: rules.iter().map(|r| r.id.clone()).collect(),
        }
    });
    let stage2 = opts.role.windows().then(|| WindowStage {
        leases: StageLeases::start(
            Coordinator::new(
                table.clone(),
                matches.name(),
                &opts.replica_id,
                opts.lease_timeout,
            ),
            kinesis.clone(),
            matches.clone(),
            tick_every,
        ),
        shards: BTreeMap::new(),
        rule_index: rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect(),
        rules: rules.clone(),
        source_low: None,
        last_low_read: None,
        in_flight: Vec::new(),
        stale_ms: i64::try_from(opts.lease_timeout.as_millis()).unwrap_or(i64::MAX),
        sent_scan_after: None,
    });

    // /healthz, /readyz, /metrics as in the polling run. Ready: the lease table answered
    // and every stage this replica runs has read its stream within three poll intervals
    // (plus 30 s, the time a lease round may take).
    let reads: Vec<String> = [
        opts.role.matches().then(|| source.name().to_owned()),
        opts.role.windows().then(|| matches.name().to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let service = ServiceOptions {
        reads: reads.clone(),
        max_read_age: opts.poll_interval * 3 + Duration::from_secs(30),
        http_addr: opts.http_addr,
        snapshot_every: Duration::from_secs(1),
    };
    let mut job = Replica {
        opts,
        kinesis,
        source,
        matches,
        table,
        stage1,
        stage2,
        counters: KinesisCounters::default(),
        acc,
        sink,
        start_ms,
        horizon_ms,
        window_config,
        reads,
        next_tick: Instant::now(),
        next_report: Instant::now() + Duration::from_secs(30),
    };
    crate::service::run(&mut job, &service).await?;
    Ok(job.counters.with(&job.acc))
}

/// A replica as the service loop drives it: both stages (or one), their counts, the sinks.
struct Replica<'a> {
    opts: &'a KinesisOptions,
    kinesis: aws_sdk_kinesis::Client,
    source: StreamRef,
    matches: StreamRef,
    table: LeaseTable,
    stage1: Option<MatchStage>,
    stage2: Option<WindowStage>,
    counters: KinesisCounters,
    acc: Accounting,
    sink: &'a mut dyn AlertSink,
    start_ms: i64,
    horizon_ms: i64,
    window_config: EngineConfig,
    reads: Vec<String>,
    next_tick: Instant,
    next_report: Instant,
}

impl crate::service::Job for Replica<'_> {
    type Error = KinesisRunError;

    /// Not dropped mid-way: a step cut between handing an alert to the sinks and marking its
    /// claim sent would have the replica that takes over send it again.
    const STOP_GRACE: Option<Duration> = Some(STOP_GRACE);

    async fn step(&mut self, health: &Health) -> Result<Duration, KinesisRunError> {
        let opts = self.opts;
        // The steps follow the leases the rounds (on their own task) hold; checked every
        // 200 ms, about five times a round.
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + Duration::from_millis(200);
            if let Some(st) = &mut self.stage1 {
                follow_leases_match(
                    st,
                    &self.kinesis,
                    &self.source,
                    self.start_ms,
                    opts.poll_interval,
                    &mut self.counters,
                )
                .await;
            }
            if let Some(st) = &mut self.stage2 {
                if let Err(e) = follow_leases_window(
                    st,
                    &self.kinesis,
                    &self.matches,
                    self.start_ms - self.horizon_ms,
                    self.horizon_ms,
                    &self.window_config,
                    opts.poll_interval,
                    &mut self.counters,
                )
                .await
                {
                    tracing::warn!("authwatch run: window stage leases: {e}");
                }
            }
        }
        if Instant::now() >= self.next_report {
            self.next_report = Instant::now() + Duration::from_secs(30);
            tracing::info!(
                "authwatch run: {}",
                serde_json::to_string(&self.counters.with(&self.acc)).unwrap_or_default()
            );
        }
        if let Some(st) = &mut self.stage1 {
            match_step(
                st,
                &self.kinesis,
                &self.matches,
                &mut self.counters,
                &mut self.acc,
            )
            .await?;
        }
        if let Some(st) = &mut self.stage2 {
            window_step(
                st,
                &self.table,
                self.source.name(),
                &opts.replica_id,
                opts.max_lateness,
                &mut *self.sink,
                &mut self.counters,
                &mut self.acc,
            )
            .await?;
        }
        self.acc.publish_if_due()?;
        // A step that returned read every stream this replica holds.
        for name in &self.reads {
            health.read_ok(name);
        }
        Ok(Duration::from_millis(50))
    }

    fn snapshot(&self) -> Snapshot {
        let active_keys = self.stage2.as_ref().map_or(0, |st| {
            st.shards.values().map(|w| w.engine.active_keys()).sum()
        });
        snapshot(
            &self.counters.with(&self.acc),
            self.acc.counters(),
            &*self.sink,
            (self.source.name(), self.matches.name()),
            active_keys,
        )
    }

    async fn stop(&mut self, _failed: bool) -> Result<(), KinesisRunError> {
        // A clean stop gives the leases up so others take them at once.
        if let Some(st) = &self.stage1 {
            st.leases.release().await;
        }
        if let Some(st) = &self.stage2 {
            st.leases.release().await;
        }
        self.sink.flush()?;
        self.acc.close_metrics()?;
        tracing::info!(
            "authwatch run: stopped: {}",
            serde_json::to_string(&self.counters.with(&self.acc)).unwrap_or_default()
        );
        Ok(())
    }
}

/// The run's figures in the shape `/metrics` serves: records by stream, events by outcome
/// (`parsed`, `prefiltered`, `other_stream`, `control_message`, `match_written`,
/// `match_read`, `already_sent`), alerts by rule and severity, the sinks.
fn snapshot(
    c: &KinesisCounters,
    pipeline: &Counters,
    sink: &dyn AlertSink,
    (source, matches): (&str, &str),
    active_keys: usize,
) -> Snapshot {
    let mut records = BTreeMap::new();
    records.insert(source.to_owned(), c.source_records);
    records.insert(matches.to_owned(), c.matches_read);
    let mut events = BTreeMap::new();
    events.insert("parsed", c.log_events);
    events.insert("prefiltered", c.prefiltered);
    events.insert("other_stream", c.other_streams);
    events.insert("control_message", c.control_messages);
    events.insert("match_written", c.matches_written);
    events.insert("match_too_large", c.matches_too_large);
    events.insert("match_read", c.matches_read);
    events.insert("already_sent", c.alerts_already_sent);
    events.insert("future", c.future_events);
    // By reason, as the shared pipeline counts them (stage 1); `undecodable`: match records
    // stage 2 could not read.
    let mut parse_errors: BTreeMap<String, u64> = pipeline
        .parse_errors_by_reason
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    parse_errors.insert(
        "undecodable".to_owned(),
        c.parse_errors - pipeline.parse_errors,
    );
    let mut sinks = BTreeMap::new();
    sink.figures(&mut sinks);
    Snapshot {
        records,
        events,
        parse_errors,
        alerts: c.alerts_by_rule_severity.clone(),
        sinks,
        active_keys: active_keys as u64,
        ..Snapshot::default()
    }
}
