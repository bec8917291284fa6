//! `authwatch run`: follow EKS audit log groups in CloudWatch Logs, and
//! `authwatch replay --log-group`: the same reader over a closed time range.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authwatch_aws::reader::ReadError;
use authwatch_aws::{
    build_client, Checkpoint, CheckpointError, CheckpointStore, ClientConfig, GroupPosition,
    LogGroupReader, ReaderConfig, RetryPolicy, TokenBucket,
};
use authwatch_event::time::format_millis;
use authwatch_event::{Micros, RawRecord};
use authwatch_rules::{Engine, EngineConfig, Rule};

use crate::input::Location;
use crate::pipeline::Pipeline;
use crate::service::ServiceMetrics;
use crate::sinks::cloudwatch_metrics::{MetricsConfig, MetricsPublisher, UNKNOWN_CLUSTER};
use crate::sinks::ledger::{LedgerSink, SentLedger};
use crate::sinks::AlertSink;

/// The EKS audit stream prefix (the API log streams share `kube-apiserver-`).
pub const AUDIT_STREAM_PREFIX: &str = "kube-apiserver-audit-";

/// Where a run without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Now.
    Now,
    /// A fixed time, ms since epoch.
    At(i64),
    /// This long before now, ms.
    Ago(i64),
}

impl StartAt {
    /// Parses `now`, `-<duration>` or an RFC 3339 time.
    pub fn parse(s: &str) -> Option<StartAt> {
        if s == "now" {
            return Some(StartAt::Now);
        }
        if let Some(d) = s.strip_prefix('-') {
            return authwatch_rules::rule::parse_duration(d).map(|us| StartAt::Ago(us / 1000));
        }
        authwatch_event::time::parse_timestamp(s).map(|us| StartAt::At(us.div_euclid(1000)))
    }

    fn resolve(self, now_ms: i64) -> i64 {
        match self {
            StartAt::Now => now_ms,
            StartAt::At(t) => t,
            StartAt::Ago(d) => now_ms - d,
        }
    }
}

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

/// What `authwatch replay --log-group` was asked to do.
#[derive(Debug, Clone)]
pub struct RangeOptions {
    /// Log groups to read.
    pub log_groups: Vec<String>,
    /// `--region`.
    pub region: Option<String>,
    /// Range start, ms (inclusive).
    pub start_ms: i64,
    /// Range end, ms (inclusive).
    pub end_ms: i64,
    /// `--api-rate`.
    pub api_rate: f64,
    /// `--max-lateness` (µs).
    pub max_lateness: Micros,
    /// `--cluster` for alerts (default: from the log group).
    pub cluster: Option<String>,
    /// Publish CloudWatch metrics.
    pub metrics: Option<MetricsConfig>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The longest `window` and the longest `window + cooldown` of `rules`, µs.
pub(crate) fn rule_spans(rules: &[Rule]) -> (Micros, Micros) {
    let window = rules.iter().map(|r| r.window).max().unwrap_or(0);
    let memory = rules
        .iter()
        .map(|r| r.window.saturating_add(r.cooldown))
        .max()
        .unwrap_or(0);
    (window, memory)
}

/// Tells a rebuilt engine the alerts already sent, so that it keeps their cooldowns
/// ([`Engine::remember_sent`]). Shared by the restart of `run` and the window replicas of
/// the Kinesis mode.
pub(crate) fn remember_sent<'a>(
    engine: &mut Engine,
    sent: impl IntoIterator<Item = &'a authwatch_aws::FiredAlert>,
) {
    let (mut kept, mut unknown) = (0u64, 0u64);
    for f in sent {
        if engine.remember_sent(&f.rule, &f.key, f.window_end_us) {
            kept += 1;
        } else if f.rule != authwatch_rules::CARDINALITY_RULE {
            unknown += 1;
        }
    }
    if kept + unknown > 0 {
        tracing::info!(
            "authwatch: the engine keeps the cooldowns of {kept} alerts already sent{}",
            if unknown > 0 {
                format!(" ({unknown} of rules no longer loaded are ignored)")
            } else {
                String::new()
            }
        );
    }
}

/// The `Cluster` of metrics that no log group names: the configured one, else the first log
/// group's.
fn default_cluster<'a>(configured: Option<&'a str>, log_groups: &'a [String]) -> &'a str {
    configured
        .or_else(|| {
            log_groups
                .first()
                .and_then(|g| authwatch_event::cluster_from_log_group(g))
        })
        .unwrap_or(UNKNOWN_CLUSTER)
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
    // Fault injection for the crash tests (README, Reliability): makes every state write
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
    let mut state_writes = 1u64;
    let mut state_write_failures = 0u64;
    let mut state_failing: Option<std::time::Instant> = None;

    // Readiness: every group read within three poll intervals (plus the time a pass of a
    // busy group may take).
    let service = Arc::new(std::sync::Mutex::new(ServiceMetrics::new(
        &opts.log_groups,
        opts.poll_interval * 3 + Duration::from_secs(30),
    )));
    lock(&service).state_loaded();
    if let Some(addr) = opts.http_addr {
        let bound = crate::service::serve(addr, service.clone())?;
        tracing::info!("authwatch run: serving /healthz /readyz /metrics on http://{bound}");
    }
    let mut shutdown = std::pin::pin!(shutdown_signal());

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
    let mut index = 0u64;
    let mut records_by_group: BTreeMap<String, u64> = BTreeMap::new();
    let mut newest_by_group: BTreeMap<String, i64> = BTreeMap::new();
    'run: loop {
        let mut caught_up = true;
        for reader in &mut readers {
            let until = now_ms();
            // A signal ends the run between passes or in the middle of one (a pass cut short
            // has moved nothing: its events are read again by the next process).
            let pass = tokio::select! {
                biased;
                signal = &mut shutdown => {
                    tracing::info!("authwatch run: {signal}: stopping");
                    break 'run;
                }
                pass = reader.pass(until) => pass?,
            };
            lock(&service).read_ok(reader.log_group());
            if pass.position_ms < until {
                caught_up = false;
            }
            let group = reader.log_group().to_owned();
            *records_by_group.entry(group.clone()).or_default() += pass.events.len() as u64;
            if let Some(newest) = pass.events.iter().map(|e| e.timestamp_ms).max() {
                let e = newest_by_group.entry(group.clone()).or_insert(newest);
                *e = (*e).max(newest);
            }
            for ev in &pass.events {
                index += 1;
                let record = RawRecord {
                    message: ev.message.as_bytes(),
                    stream: Some(&ev.stream),
                    log_group: Some(&group),
                    cw_timestamp: Some(ev.timestamp_ms.saturating_mul(1000)),
                    event_id: Some(&ev.event_id),
                };
                pipeline.on_record(
                    Ok(record),
                    Location {
                        name: &group,
                        index,
                        is_line: false,
                    },
                )?;
            }
            if let Some(p) = checkpoint.groups.get_mut(&group) {
                p.position_ms = pass.position_ms;
            }
            let oldest = checkpoint
                .groups
                .values()
                .map(|p| p.position_ms)
                .min()
                .unwrap_or(pass.position_ms);
            // Every group is read up to `oldest`: matches held for ordering up to there (less
            // the lateness bound) fire now, even if the log group falls silent.
            pipeline.advance_to(
                oldest
                    .saturating_mul(1000)
                    .saturating_sub(opts.max_lateness),
            )?;
            // Alerts of this pass are delivered (and journalled): the position may move.
            // Kept while a rebuild could re-read an event inside the alert's cooldown (the
            // rebuild re-reads by CloudWatch timestamp; an event's own time may be up to the
            // lateness bound earlier).
            checkpoint.sent_alerts = ledger.borrow_mut().prune_and_snapshot(
                oldest - horizon_ms - max_cooldown_ms - opts.max_lateness / 1000,
            );
            // A state directory that cannot be written (full disk, read-only volume) must
            // not blind the watcher: say so, count it, and keep alerting. Nothing is lost:
            // the position on disk stays where it was, so a restart re-reads from there.
            match store.save(&checkpoint) {
                Ok(()) => {
                    state_writes += 1;
                    if state_failing.take().is_some() {
                        tracing::info!("authwatch run: state writes work again");
                    }
                    if let Err(e) = ledger.borrow_mut().clear_journal() {
                        tracing::warn!("authwatch run: emptying the sent-alert journal: {e}");
                    }
                }
                Err(e) => {
                    state_write_failures += 1;
                    if state_failing
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(60))
                    {
                        state_failing = Some(std::time::Instant::now());
                        tracing::error!(
                            "authwatch run: cannot write the state in {} ({e}); still reading and alerting, but a restart would re-read from the last saved position ({} failed writes so far)",
                            opts.state_dir.display(),
                            state_write_failures
                        );
                    }
                }
            }
        }
        let mut api_calls: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in &readers {
            for ((op, outcome), n) in r.call_outcomes() {
                *api_calls
                    .entry(((*op).to_owned(), (*outcome).to_owned()))
                    .or_default() += n;
            }
        }
        lock(&service).update(snapshot(
            &pipeline,
            api_calls,
            &records_by_group,
            &newest_by_group,
            (state_writes, state_write_failures),
        ));
        if caught_up {
            tokio::select! {
                biased;
                signal = &mut shutdown => {
                    tracing::info!("authwatch run: {signal}: stopping");
                    break 'run;
                }
                () = tokio::time::sleep(opts.poll_interval) => {}
            }
        }
    }
    // Everything of the finished passes is delivered and checkpointed; flush the sinks, send
    // the last metrics, and write the state once more.
    pipeline.stop()?;
    drop(pipeline);
    if let Err(e) = store.save(&checkpoint) {
        tracing::error!("authwatch run: writing the state at shutdown: {e}");
    }
    tracing::info!(
        "authwatch run: stopped; state in {}",
        opts.state_dir.display()
    );
    Ok(())
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); names the one that came.
pub(crate) async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupt"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}

fn lock(m: &std::sync::Mutex<ServiceMetrics>) -> std::sync::MutexGuard<'_, ServiceMetrics> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn snapshot(
    pipeline: &Pipeline<'_>,
    api_calls: BTreeMap<(String, String), u64>,
    records: &BTreeMap<String, u64>,
    newest: &BTreeMap<String, i64>,
    (state_writes, state_write_failures): (u64, u64),
) -> crate::service::Snapshot {
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
    crate::service::Snapshot {
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

/// Reads `[start, end]` of each log group once, with the live reader, and finishes the
/// engine. API errors other than throttling, 5xx and connection failures end it.
pub fn replay_range(
    opts: &RangeOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<crate::pipeline::Counters, LiveError> {
    let engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: opts.max_lateness,
            cluster: opts.cluster.clone(),
            ..EngineConfig::default()
        },
    );
    let mut pipeline = Pipeline::new(engine, vec![sink], false);
    if let Some(config) = &opts.metrics {
        pipeline = pipeline.with_metrics(
            MetricsPublisher::start(config.clone())?,
            default_cluster(opts.cluster.as_deref(), &opts.log_groups),
        );
    }
    for_each_range_record(
        &opts.log_groups,
        opts.region.clone(),
        (opts.start_ms, opts.end_ms),
        opts.api_rate,
        &mut |record, loc| pipeline.on_record(Ok(record), loc),
    )?;
    pipeline.finish()?;
    Ok(pipeline.counters().clone())
}

/// Calls `f` with every audit record of `log_groups` over `[start_ms, end_ms]`, read once
/// with the live reader (same streams, same passes; API errors other than throttling, 5xx
/// and connection failures end it). `replay --log-group` and `investigate --log-group`.
pub fn for_each_range_record(
    log_groups: &[String],
    region: Option<String>,
    (start_ms, end_ms): (i64, i64),
    api_rate: f64,
    f: &mut dyn FnMut(RawRecord<'_>, Location<'_>) -> std::io::Result<()>,
) -> Result<(), LiveError> {
    crate::runtime()?.block_on(async {
        let client = build_client(&ClientConfig {
            region,
            attempt_timeout: None,
        })
        .await;
        let bucket = Arc::new(TokenBucket::new(api_rate, api_rate.max(1.0)));
        let mut index = 0u64;
        for g in log_groups {
            let config = ReaderConfig {
                log_group: g.clone(),
                stream_prefix: AUDIT_STREAM_PREFIX.into(),
                lookback_ms: 0,
                full_lookback_every: Duration::ZERO,
                rediscover_every: Duration::MAX,
                max_pass_span_ms: 5 * 60 * 1000,
                retry: RetryPolicy {
                    forever: false,
                    ..RetryPolicy::default()
                },
            };
            let mut reader =
                LogGroupReader::new(client.clone(), bucket.clone(), config, start_ms, start_ms);
            loop {
                let pass = reader.pass(end_ms).await?;
                for ev in &pass.events {
                    index += 1;
                    let record = RawRecord {
                        message: ev.message.as_bytes(),
                        stream: Some(&ev.stream),
                        log_group: Some(g),
                        cw_timestamp: Some(ev.timestamp_ms.saturating_mul(1000)),
                        event_id: Some(&ev.event_id),
                    };
                    f(
                        record,
                        Location {
                            name: g,
                            index,
                            is_line: false,
                        },
                    )?;
                }
                if reader.position_ms() >= end_ms {
                    break;
                }
            }
        }
        Ok(())
    })
}
