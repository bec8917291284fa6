//! `authwatch run`: follow EKS audit log groups in CloudWatch Logs (the closed-range reading
//! of `replay --log-group` is [`super::log_group_range`]).
//!
//! Per pass and log group: read new events ([`LogGroupReader::pass`]), feed them through the
//! shared [`Pipeline`] (decode → engine → sinks), then checkpoint the position and the
//! delivered alert ids. A restart re-reads from the checkpointed position minus the rebuild
//! horizon (the longest `window + cooldown` plus the look-back) so that windows and cooldowns
//! are rebuilt, and the [`SentLedger`] drops the alerts that were already delivered.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use authwatch_aws::reader::ReadError;
use authwatch_aws::{
    build_client, Checkpoint, CheckpointError, CheckpointStore, ClientConfig, GroupPosition,
    LogGroupReader, ReaderConfig, RetryPolicy, TokenBucket,
};
use authwatch_event::time::format_millis;
use authwatch_event::{Micros, RawRecord};
use authwatch_rules::{Engine, EngineConfig, Rule};

use super::files::Location;
use super::{default_cluster, now_ms, remember_sent, rule_spans, StartAt, AUDIT_STREAM_PREFIX};
use crate::pipeline::Pipeline;
use crate::service::{Health, ServiceOptions};
use crate::sinks::ledger::{LedgerSink, SentLedger};
use crate::sinks::AlertSink;
use crate::telemetry::cloudwatch_metrics::{MetricsConfig, MetricsPublisher};
use crate::telemetry::http::Snapshot;

/// What to do with a checkpoint that fails its checksum or does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CorruptStatePolicy {
    /// Report it and exit (status 2); the file is left for inspection.
    Fail,
    /// Report it, move it aside, and start over from now minus the look-back.
    Rebuild,
}

/// What `authwatch run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Log groups to follow.
    pub log_groups: Vec<String>,
    /// `--region`.
    pub region: Option<String>,
    /// `--lookback`, ms.
    pub lookback_ms: i64,
    /// `--lookback-every`: how often a pass re-reads the whole look-back (zero: every pass).
    pub lookback_every: Duration,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--start-at`; `None` = now minus the longest rule window.
    pub start_at: Option<StartAt>,
    /// `--on-corrupt-state`.
    pub on_corrupt: CorruptStatePolicy,
    /// `--api-rate`: CloudWatch Logs calls per second, all log groups together.
    pub api_rate: f64,
    /// `--aws-timeout`: one CloudWatch Logs call's limit before it is retried.
    pub aws_timeout: Duration,
    /// `--poll-interval`.
    pub poll_interval: Duration,
    /// `--rediscover-interval`.
    pub rediscover_every: Duration,
    /// `--max-lateness` (µs).
    pub max_lateness: Micros,
    /// The wait after a non-transient API error (authorization, missing group).
    pub slow_retry: Duration,
    /// Publish CloudWatch metrics.
    pub metrics: Option<MetricsConfig>,
    /// Serve `/healthz`, `/readyz`, `/metrics` here.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The checkpoint is unreadable and `--on-corrupt-state rebuild` was not given.
    #[error("{0}; start with --on-corrupt-state rebuild to move it aside and rebuild from the look-back")]
    CorruptState(CheckpointError),
    /// The state directory cannot be read or written.
    #[error("state: {0}")]
    State(#[from] CheckpointError),
    /// The ledger journal or a sink failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A closed-range read met a non-transient API error.
    #[error("{0}")]
    Read(#[from] ReadError),
}

impl LiveError {
    /// 2 for operator-fixable configuration or state problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LiveError::CorruptState(_) => 2,
            _ => 1,
        }
    }
}

/// Runs until killed (or until a sink or the state directory fails).
pub fn run(opts: &RunOptions, rules: Vec<Rule>, sink: &mut dyn AlertSink) -> Result<(), LiveError> {
    crate::runtime()?.block_on(run_async(opts, rules, sink))
}

async fn run_async(
    opts: &RunOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<(), LiveError> {
    let (max_window, memory) = rule_spans(&rules);
    let horizon_ms = memory / 1000 + opts.lookback_ms;
    let mut store = CheckpointStore::new(&opts.state_dir);
    // Fault injection for the crash tests (docs/reliability.md): makes every state write
    // pause halfway so that a `kill -9` lands inside one.
    if let Some(ms) = std::env::var("AUTHWATCH_FAULT_STATE_WRITE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!("fault injection: every state write pauses {ms} ms halfway");
        store = store.with_write_pause(Duration::from_millis(ms));
    }
    let now = now_ms();
    let mut checkpoint = match store.load() {
        Ok(Some(c)) => c,
        Ok(None) => Checkpoint::default(),
        Err(e @ CheckpointError::Corrupt { .. }) => match opts.on_corrupt {
            CorruptStatePolicy::Fail => return Err(LiveError::CorruptState(e)),
            CorruptStatePolicy::Rebuild => {
                let aside = store.path().with_extension(format!("corrupt-{now}"));
                std::fs::rename(store.path(), &aside)?;
                tracing::warn!(
                    "authwatch: {e}; moved to {} and rebuilding from the look-back ({}s): alerts of that period may be delivered again",
                    aside.display(),
                    opts.lookback_ms / 1000
                );
                let start = now - opts.lookback_ms;
                let mut c = Checkpoint::default();
                for g in &opts.log_groups {
                    c.groups.insert(
                        g.clone(),
                        GroupPosition {
                            position_ms: start,
                            floor_ms: start - max_window / 1000,
                        },
                    );
                }
                c
            }
        },
        Err(e) => return Err(e.into()),
    };

    let client = build_client(&ClientConfig {
        region: opts.region.clone(),
        attempt_timeout: Some(opts.aws_timeout),
    })
    .await;
    let bucket = Arc::new(TokenBucket::new(opts.api_rate, opts.api_rate.max(1.0)));
    let mut readers = Vec::new();
    for g in &opts.log_groups {
        let pos = *checkpoint.groups.entry(g.clone()).or_insert_with(|| {
            let start = opts
                .start_at
                .unwrap_or(StartAt::Ago(max_window / 1000))
                .resolve(now);
            GroupPosition {
                position_ms: start,
                floor_ms: start,
            }
        });
        let from = pos.floor_ms.max(pos.position_ms - horizon_ms);
        tracing::info!(
            "authwatch run: {g}: position {}, reading from {} (state in {})",
            format_millis(pos.position_ms * 1000),
            format_millis(from * 1000),
            opts.state_dir.display()
        );
        let config = ReaderConfig {
            log_group: g.clone(),
            stream_prefix: AUDIT_STREAM_PREFIX.into(),
            lookback_ms: opts.lookback_ms,
            full_lookback_every: opts.lookback_every,
            rediscover_every: opts.rediscover_every,
            max_pass_span_ms: 5 * 60 * 1000,
            retry: RetryPolicy {
                slow_retry: opts.slow_retry,
                ..RetryPolicy::default()
            },
        };
        readers.push(LogGroupReader::new(
            client.clone(),
            bucket.clone(),
            config,
            from,
            pos.position_ms,
        ));
    }
    let ledger = Rc::new(RefCell::new(SentLedger::open(
        &opts.state_dir,
        &checkpoint.sent_alerts,
    )?));
    store.save(&checkpoint)?;
    let state_writes = 1u64;

    let max_cooldown_ms = rules.iter().map(|r| r.cooldown).max().unwrap_or(0) / 1000;
    let mut engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: opts.max_lateness,
            ..EngineConfig::default()
        },
    );
    remember_sent(&mut engine, ledger.borrow().fired());
    let mut ledger_sink = LedgerSink::new(ledger.clone(), sink);
    // No prefilter live: every decoded event moves the watermark, so held matches are
    // released as soon as time moves on (live volumes are far below decoding speed).
    let mut pipeline = Pipeline::new(engine, vec![&mut ledger_sink], false);
    if let Some(config) = &opts.metrics {
        pipeline = pipeline.with_metrics(
            MetricsPublisher::start(config.clone())?,
            default_cluster(None, &opts.log_groups),
        );
    }
    // Readiness: every group read within three poll intervals (plus the time a pass of a
    // busy group may take).
    let service = ServiceOptions {
        reads: opts.log_groups.clone(),
        max_read_age: opts.poll_interval * 3 + Duration::from_secs(30),
        http_addr: opts.http_addr,
        snapshot_every: Duration::ZERO,
    };
    let mut poller = Poller {
        opts,
        readers,
        pipeline,
        checkpoint,
        store,
        ledger,
        horizon_ms,
        max_cooldown_ms,
        index: 0,
        records_by_group: BTreeMap::new(),
        newest_by_group: BTreeMap::new(),
        state_writes,
        state_write_failures: 0,
        state_failing: None,
    };
    crate::service::run(&mut poller, &service).await
}

/// The polling run as the service loop drives it: one step is a pass over every log group.
struct Poller<'a> {
    opts: &'a RunOptions,
    readers: Vec<LogGroupReader>,
    pipeline: Pipeline<'a>,
    checkpoint: Checkpoint,
    store: CheckpointStore,
    ledger: Rc<RefCell<SentLedger>>,
    horizon_ms: i64,
    max_cooldown_ms: i64,
    index: u64,
    records_by_group: BTreeMap<String, u64>,
    newest_by_group: BTreeMap<String, i64>,
    state_writes: u64,
    state_write_failures: u64,
    state_failing: Option<std::time::Instant>,
}

impl crate::service::Job for Poller<'_> {
    type Error = LiveError;

    /// A signal ends the run between passes or in the middle of one (a pass cut short has
    /// moved nothing: its events are read again by the next process).
    const STOP_GRACE: Option<Duration> = None;

    async fn step(&mut self, health: &Health) -> Result<Duration, LiveError> {
        let opts = self.opts;
        let mut caught_up = true;
        for reader in &mut self.readers {
            let until = now_ms();
            let pass = reader.pass(until).await?;
            health.read_ok(reader.log_group());
            if pass.position_ms < until {
                caught_up = false;
            }
            let group = reader.log_group().to_owned();
            *self.records_by_group.entry(group.clone()).or_default() += pass.events.len() as u64;
            if let Some(newest) = pass.events.iter().map(|e| e.timestamp_ms).max() {
                let e = self.newest_by_group.entry(group.clone()).or_insert(newest);
                *e = (*e).max(newest);
            }
            for ev in &pass.events {
                self.index += 1;
                let record = RawRecord {
                    message: ev.message.as_bytes(),
                    stream: Some(&ev.stream),
                    log_group: Some(&group),
                    cw_timestamp: Some(ev.timestamp_ms.saturating_mul(1000)),
                    event_id: Some(&ev.event_id),
                };
                self.pipeline.on_record(
                    Ok(record),
                    Location {
                        name: &group,
                        index: self.index,
                        is_line: false,
                    },
                )?;
            }
            if let Some(p) = self.checkpoint.groups.get_mut(&group) {
                p.position_ms = pass.position_ms;
            }
            let oldest = self
                .checkpoint
                .groups
                .values()
                .map(|p| p.position_ms)
                .min()
                .unwrap_or(pass.position_ms);
            // Every group is read up to `oldest`: matches held for ordering up to there (less
            // the lateness bound) fire now, even if the log group falls silent.
            self.pipeline.advance_to(
                oldest
                    .saturating_mul(1000)
                    .saturating_sub(opts.max_lateness),
            )?;
            // Alerts of this pass are delivered (and journalled): the position may move.
            // Kept while a rebuild could re-read an event inside the alert's cooldown (the
            // rebuild re-reads by CloudWatch timestamp; an event's own time may be up to the
            // lateness bound earlier).
            self.checkpoint.sent_alerts = self.ledger.borrow_mut().prune_and_snapshot(
                oldest - self.horizon_ms - self.max_cooldown_ms - opts.max_lateness / 1000,
            );
            // A state directory that cannot be written (full disk, read-only volume) must
            // not blind the watcher: say so, count it, and keep alerting. Nothing is lost:
            // the position on disk stays where it was, so a restart re-reads from there.
            match self.store.save(&self.checkpoint) {
                Ok(()) => {
                    self.state_writes += 1;
                    if self.state_failing.take().is_some() {
                        tracing::info!("authwatch run: state writes work again");
                    }
                    if let Err(e) = self.ledger.borrow_mut().clear_journal() {
                        tracing::warn!("authwatch run: emptying the sent-alert journal: {e}");
                    }
                }
                Err(e) => {
                    self.state_write_failures += 1;
                    if self
                        .state_failing
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60))
                    {
                        self.state_failing = Some(std::time::Instant::now());
                        tracing::error!(
                            "authwatch run: cannot write the state in {} ({e}); still reading and alerting, but a restart would re-read from the last saved position ({} failed writes so far)",
                            opts.state_dir.display(),
                            self.state_write_failures
                        );
                    }
                }
            }
        }
        Ok(if caught_up {
            opts.poll_interval
        } else {
            Duration::ZERO
        })
    }

    fn snapshot(&self) -> Snapshot {
        let mut api_calls: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in &self.readers {
            for ((op, outcome), n) in r.call_outcomes() {
                *api_calls
                    .entry(((*op).to_owned(), (*outcome).to_owned()))
                    .or_default() += n;
            }
        }
        snapshot(
            &self.pipeline,
            api_calls,
            &self.records_by_group,
            &self.newest_by_group,
            (self.state_writes, self.state_write_failures),
        )
    }

    async fn stop(&mut self, failed: bool) -> Result<(), LiveError> {
        if failed {
            return Ok(());
        }
        // Everything of the finished passes is delivered and checkpointed; flush the sinks,
        // send the last metrics, and write the state once more.
        self.pipeline.stop()?;
        if let Err(e) = self.store.save(&self.checkpoint) {
            tracing::error!("authwatch run: writing the state at shutdown: {e}");
        }
        tracing::info!(
            "authwatch run: stopped; state in {}",
            self.opts.state_dir.display()
        );
        Ok(())
    }
}

fn snapshot(
    pipeline: &Pipeline<'_>,
    api_calls: BTreeMap<(String, String), u64>,
    records: &BTreeMap<String, u64>,
    newest: &BTreeMap<String, i64>,
    (state_writes, state_write_failures): (u64, u64),
) -> Snapshot {
    let c = pipeline.counters();
    let e = pipeline.engine_stats();
    let now = now_ms();
    let mut events = BTreeMap::new();
    events.insert("parsed", c.events_parsed);
    events.insert("matched", e.matched);
    events.insert("duplicate", e.duplicates);
    events.insert("late", e.late_events);
    events.insert("late_dropped", e.late_dropped);
    events.insert("no_timestamp", e.no_timestamp);
    events.insert("missing_group_key", e.missing_group_key);
    events.insert("fanout_capped", e.fanout_capped);
    events.insert("future", c.future_events);
    Snapshot {
        records: records.clone(),
        events,
        parse_errors: c
            .parse_errors_by_reason
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        alerts: pipeline.alerts_by_rule_severity().clone(),
        sinks: pipeline.sink_figures(),
        api_calls,
        ingest_lag: newest
            .iter()
            .map(|(g, t)| (g.clone(), ((now - t).max(0)) as f64 / 1000.0))
            .collect(),
        active_keys: pipeline.active_keys() as u64,
        evicted_keys: e.evicted_keys.clone(),
        state_writes,
        state_write_failures,
    }
}
