//! `authwatch run --kinesis-stream`: several replicas share a log group's subscription
//! stream, with exact counts across shards (issue #10; README "Several replicas").
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authwatch_aws::backoff::Backoff;
use authwatch_aws::kinesis::{
    list_shards, put_all, Batch, KinesisError, ShardReader, StartPosition, StreamRef,
};
use authwatch_aws::lease::{Claim, Coordinator, Lease, LeaseError, LeaseTable};
use authwatch_aws::{sdk_config, ClientConfig, FiredAlert};
use authwatch_event::framing::{gunzip_bounded, is_gzip, records_in_document, Format, Origin};
use authwatch_event::{visit_events, Micros, RawRecord};
use authwatch_rules::{Alert, Engine, EngineConfig, Matcher, Prefilter, Rule};
use serde::{Deserialize, Serialize};

use crate::live::{StartAt, AUDIT_STREAM_PREFIX};
use crate::service::ServiceMetrics;
use crate::sinks::AlertSink;

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
    /// Log events of audit streams decoded.
    pub log_events: u64,
    /// Log events of other streams skipped.
    pub other_streams: u64,
    /// Events the prefilter ruled out.
    pub prefiltered: u64,
    /// Records or events that could not be used.
    pub parse_errors: u64,
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

/// One match as stage 1 writes it: the rule, the key, and the audit event with what the
/// record around it said (stage 2 matches it again against that one rule and key, so the
/// engine's input is exactly the single-process one).
#[derive(Debug, Serialize, Deserialize)]
struct MatchRecord<'a> {
    /// Rule id.
    #[serde(borrow)]
    r: Cow<'a, str>,
    /// Encoded group key.
    #[serde(borrow)]
    k: Cow<'a, str>,
    /// Log group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    g: Option<Cow<'a, str>>,
    /// Log stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    s: Option<Cow<'a, str>>,
    /// CloudWatch timestamp, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<Micros>,
    /// CloudWatch event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    i: Option<Cow<'a, str>>,
    /// The audit event (JSON text).
    #[serde(borrow)]
    m: Cow<'a, str>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The partition key of a (rule, key) pair.
fn route(rule: &str, key: &str) -> String {
    format!("{rule}\u{1f}{key}")
}

/// One stage's leases. The lease rounds (list the shards, renew, take, balance) run on a
/// task of their own, every `--lease-timeout / 3`: renewal must not wait for a step that is
/// retrying a throttled `PutRecords` or alert claim, or a replica under throttling would lose
/// its leases to the others after `--lease-timeout` and the shards would move for nothing.
/// The steps follow the leases held ([`readable`]) and write checkpoints through the same
/// coordinator, behind a lock held only for one DynamoDB call or one round.
struct StageLeases {
    coord: Arc<tokio::sync::Mutex<Coordinator>>,
    /// Shards the last listing showed closed (resharded): their readers are told.
    closed: Arc<Mutex<Vec<String>>>,
    rounds: tokio::task::JoinHandle<()>,
}

impl StageLeases {
    fn start(
        coord: Coordinator,
        kinesis: aws_sdk_kinesis::Client,
        stream: StreamRef,
        every: Duration,
    ) -> StageLeases {
        let coord = Arc::new(tokio::sync::Mutex::new(coord));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let rounds = tokio::spawn({
            let (coord, closed) = (coord.clone(), closed.clone());
            async move {
                loop {
                    {
                        let mut c = coord.lock().await;
                        let (listed, ticked) = lease_round(&mut c, &kinesis, &stream).await;
                        match listed {
                            Ok(shards) => {
                                *closed.lock().unwrap_or_else(|p| p.into_inner()) = shards
                                    .into_iter()
                                    .filter(|s| s.closed)
                                    .map(|s| s.shard_id)
                                    .collect();
                            }
                            Err(e) => tracing::warn!(
                                "authwatch run: listing the shards of {}: {e}",
                                stream.name()
                            ),
                        }
                        if let Err(e) = ticked {
                            tracing::warn!("authwatch run: lease round of {}: {e}", stream.name());
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }
        });
        StageLeases {
            coord,
            closed,
            rounds,
        }
    }

    fn closed(&self) -> Vec<String> {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the rounds and gives every held lease up (a clean stop).
    async fn release(&self) {
        self.rounds.abort();
        if let Err(e) = self.coord.lock().await.release_all().await {
            tracing::warn!("authwatch run: releasing leases: {e}");
        }
    }
}

/// Stage 1's state: the source shards held and what they need.
struct MatchStage {
    leases: StageLeases,
    readers: BTreeMap<String, ShardReader>,
    last_checkpoint: HashMap<String, Instant>,
    prefilter: Option<Prefilter>,
    matcher: Matcher,
    rule_ids: Vec<String>,
}

/// One match-stream shard held by stage 2: its reader and its own engine.
struct WindowShard {
    reader: ShardReader,
    engine: Engine,
    matcher: Matcher,
    last_checkpoint: Instant,
    last_sequence: Option<String>,
    last_arrival_ms: i64,
}

/// Stage 2's state.
struct WindowStage {
    leases: StageLeases,
    shards: BTreeMap<String, WindowShard>,
    rules: Vec<Rule>,
    rule_index: HashMap<String, usize>,
    /// Oldest read-through time of the source shards (ms) and when it was read.
    source_low: Option<(i64, Instant)>,
    last_low_read: Option<Instant>,
    /// Alerts another replica has claimed and may be delivering, with when to ask again.
    in_flight: Vec<(Alert, Instant)>,
    /// How old a `pending` claim must be to be taken over (the lease timeout).
    stale_ms: i64,
    /// After a failed scan of the sent alerts: when to try again.
    sent_scan_after: Option<Instant>,
}

/// Runs until SIGTERM/SIGINT (or a non-retryable error).
pub fn run(
    opts: &KinesisOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<KinesisCounters, KinesisRunError> {
    crate::runtime()?.block_on(run_async(opts, rules, sink))
}

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

    let (max_window, memory) = crate::live::rule_spans(&rules);
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
    let mut stage1 = opts.role.matches().then(|| {
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
            prefilter: Some(Prefilter::new(engine.rules())).filter(|p| !p.passes_everything()),
            matcher: engine.matcher(),
            rule_ids: rules.iter().map(|r| r.id.clone()).collect(),
        }
    });
    let mut stage2 = opts.role.windows().then(|| WindowStage {
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

    let mut counters = KinesisCounters::default();
    // /healthz, /readyz, /metrics as in the polling run. Ready: the lease table answered
    // and every stage this replica runs has read its stream within three poll intervals
    // (plus 30 s, the time a lease round may take).
    let read_names: Vec<String> = [
        opts.role.matches().then(|| source.name().to_owned()),
        opts.role.windows().then(|| matches.name().to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let service = Arc::new(Mutex::new(ServiceMetrics::new(
        &read_names,
        opts.poll_interval * 3 + Duration::from_secs(30),
    )));
    lock(&service).state_loaded();
    if let Some(addr) = opts.http_addr {
        let bound = crate::service::serve(addr, service.clone())?;
        tracing::info!("authwatch run: serving /healthz /readyz /metrics on http://{bound}");
    }
    let mut next_snapshot = Instant::now();
    let mut next_tick = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(30);
    let mut shutdown = std::pin::pin!(crate::live::shutdown_signal());
    let mut result: Result<(), KinesisRunError> = Ok(());

    'run: loop {
        // The steps follow the leases the rounds (on their own task) hold; checked every
        // 200 ms, about five times a round.
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + Duration::from_millis(200);
            if let Some(st) = &mut stage1 {
                follow_leases_match(
                    st,
                    &kinesis,
                    &source,
                    start_ms,
                    opts.poll_interval,
                    &mut counters,
                )
                .await;
            }
            if let Some(st) = &mut stage2 {
                if let Err(e) = follow_leases_window(
                    st,
                    &kinesis,
                    &matches,
                    start_ms - horizon_ms,
                    horizon_ms,
                    &window_config,
                    opts.poll_interval,
                    &mut counters,
                )
                .await
                {
                    tracing::warn!("authwatch run: window stage leases: {e}");
                }
            }
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(30);
            tracing::info!(
                "authwatch run: {}",
                serde_json::to_string(&counters).unwrap_or_default()
            );
        }
        let step = async {
            if let Some(st) = &mut stage1 {
                match_step(st, &kinesis, &matches, &mut counters).await?;
            }
            if let Some(st) = &mut stage2 {
                window_step(
                    st,
                    &table,
                    source.name(),
                    &opts.replica_id,
                    opts.max_lateness,
                    sink,
                    &mut counters,
                )
                .await?;
            }
            Ok::<(), KinesisRunError>(())
        };
        let stop = {
            let mut step = std::pin::pin!(step);
            tokio::select! {
                biased;
                signal = &mut shutdown => {
                    // Not dropped mid-way: a step cut between handing an alert to the sinks
                    // and marking its claim sent would have the replica that takes over send
                    // it again.
                    tracing::info!(
                        "authwatch run: {signal}: stopping after the current step (at most {STOP_GRACE:?})"
                    );
                    match tokio::time::timeout(STOP_GRACE, &mut step).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => result = Err(e),
                        Err(_) => tracing::warn!(
                            "authwatch run: the current step did not end within {STOP_GRACE:?} (AWS retries); stopping anyway: an alert being delivered may be sent again, with the same alert_id, by the replica that takes over"
                        ),
                    }
                    true
                }
                r = &mut step => match r {
                    Ok(()) => false,
                    Err(e) => {
                        result = Err(e);
                        true
                    }
                },
            }
        };
        if stop {
            break 'run;
        }
        {
            // A step that returned read every stream this replica holds.
            let mut m = lock(&service);
            for name in &read_names {
                m.read_ok(name);
            }
        }
        if Instant::now() >= next_snapshot {
            next_snapshot = Instant::now() + Duration::from_secs(1);
            let active_keys = stage2.as_ref().map_or(0, |st| {
                st.shards.values().map(|w| w.engine.active_keys()).sum()
            });
            lock(&service).update(snapshot(
                &counters,
                &*sink,
                (source.name(), matches.name()),
                active_keys,
            ));
        }
        tokio::select! {
            biased;
            signal = &mut shutdown => {
                tracing::info!("authwatch run: {signal}: stopping");
                break 'run;
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    // A clean stop gives the leases up so others take them at once.
    if let Some(st) = &stage1 {
        st.leases.release().await;
    }
    if let Some(st) = &stage2 {
        st.leases.release().await;
    }
    sink.flush()?;
    tracing::info!(
        "authwatch run: stopped: {}",
        serde_json::to_string(&counters).unwrap_or_default()
    );
    result.map(|()| counters)
}

fn lock(m: &Mutex<ServiceMetrics>) -> std::sync::MutexGuard<'_, ServiceMetrics> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The run's figures in the shape `/metrics` serves: records by stream, events by outcome
/// (`parsed`, `prefiltered`, `other_stream`, `control_message`, `match_written`,
/// `match_read`, `already_sent`), alerts by rule and severity, the sinks.
fn snapshot(
    c: &KinesisCounters,
    sink: &dyn AlertSink,
    (source, matches): (&str, &str),
    active_keys: usize,
) -> crate::service::Snapshot {
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
    let mut parse_errors = BTreeMap::new();
    parse_errors.insert("undecodable".to_owned(), c.parse_errors);
    let mut sinks = BTreeMap::new();
    sink.figures(&mut sinks);
    crate::service::Snapshot {
        records,
        events,
        parse_errors,
        alerts: c.alerts_by_rule_severity.clone(),
        sinks,
        active_keys: active_keys as u64,
        ..crate::service::Snapshot::default()
    }
}

/// Where a shard taken over starts: after its checkpoint; a shard read before while it had
/// no record at all, from the time it was read through (not `start_ms`: records that came
/// while no replica ran would be skipped); a child of a split or merge (its parents read to
/// their end) from its start; otherwise at `start_ms`.
fn start_of(l: &Lease, start_ms: i64) -> StartPosition {
    match (&l.checkpoint, l.read_through_ms) {
        (Some(seq), _) => StartPosition::AfterSequence(seq.clone()),
        (None, Some(t)) => StartPosition::AtTimestamp(t),
        (None, None) if !l.parents.is_empty() => StartPosition::TrimHorizon,
        (None, None) => StartPosition::AtTimestamp(start_ms),
    }
}

/// Stage 1 follows the leases held: a reader for each lease taken, none for one lost, and
/// closed shards marked.
async fn follow_leases_match(
    st: &mut MatchStage,
    kinesis: &aws_sdk_kinesis::Client,
    source: &StreamRef,
    start_ms: i64,
    poll: Duration,
    counters: &mut KinesisCounters,
) {
    let held = readable(&*st.leases.coord.lock().await);
    for l in follow_held(&mut st.readers, held, "match", counters) {
        tracing::info!(
            "authwatch run: match stage: took {} (checkpoint {:?})",
            l.shard_id,
            l.checkpoint
        );
        counters.leases_gained += 1;
        let reader = ShardReader::new(
            kinesis.clone(),
            source.clone(),
            &l.shard_id,
            start_of(&l, start_ms),
            poll,
        );
        st.readers.insert(l.shard_id.clone(), reader);
    }
    for shard in st.leases.closed() {
        if let Some(r) = st.readers.get_mut(&shard) {
            r.set_closed();
        }
    }
}

/// One lease round of a stage: list the shards, add lease items for new ones, renew, take
/// and balance. The renewal runs even when listing failed, so a ListShards or DynamoDB
/// hiccup does not cost the leases held.
async fn lease_round(
    coord: &mut Coordinator,
    kinesis: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> (
    Result<Vec<authwatch_aws::kinesis::ShardInfo>, KinesisRunError>,
    Result<(), KinesisRunError>,
) {
    let listed = list_shards(kinesis, stream)
        .await
        .map_err(KinesisRunError::from);
    if let Ok(shards) = &listed {
        // Lease items only for shards the table did not show last round (new shards, or the
        // first round): a conditional PutItem per shard per round would be wasted writes.
        let new_shards: Vec<_> = shards
            .iter()
            .filter(|sh| !coord.snapshot().iter().any(|l| l.shard_id == sh.shard_id))
            .cloned()
            .collect();
        if let Err(e) = coord.table().add_shards(stream.name(), &new_shards).await {
            tracing::warn!(
                "authwatch run: adding lease items for {}: {e}",
                stream.name()
            );
        }
    }
    let ticked = coord
        .tick()
        .await
        .map(|_| ())
        .map_err(KinesisRunError::from);
    (listed, ticked)
}

/// Drops from `by_shard` (a stage's readers or engines) the shards no longer held, counting
/// each loss, and returns the held leases it has nothing for yet.
fn follow_held<V>(
    by_shard: &mut BTreeMap<String, V>,
    held: Vec<Lease>,
    stage: &str,
    counters: &mut KinesisCounters,
) -> Vec<Lease> {
    by_shard.retain(|shard, _| {
        let keep = held.iter().any(|l| &l.shard_id == shard);
        if !keep {
            tracing::info!("authwatch run: {stage} stage: lost {shard}");
            counters.leases_lost += 1;
        }
        keep
    });
    held.into_iter()
        .filter(|l| !by_shard.contains_key(&l.shard_id))
        .collect()
}

/// The leases held that still have records to read (not read to their end).
fn readable(coord: &Coordinator) -> Vec<Lease> {
    coord.held().filter(|l| !l.ended()).cloned().collect()
}

#[allow(clippy::too_many_arguments)]
async fn follow_leases_window(
    st: &mut WindowStage,
    kinesis: &aws_sdk_kinesis::Client,
    matches: &StreamRef,
    start_ms: i64,
    horizon_ms: i64,
    engine_config: &EngineConfig,
    poll: Duration,
    counters: &mut KinesisCounters,
) -> Result<(), KinesisRunError> {
    let held = readable(&*st.leases.coord.lock().await);
    let new = follow_held(&mut st.shards, held, "window", counters);
    // Rebuild the windows: read again from the checkpoint's arrival time minus the horizon;
    // alerts already sent are dropped by the claim in the lease table, and the engine is told
    // them so that it keeps the cooldowns they started (else a sustained attack is paged
    // again, out of phase, after a failover).
    let starts: Vec<(Lease, StartPosition, i64)> = new
        .into_iter()
        .map(|l| match l.read_through_ms {
            // Read before (records or not): rebuild from the horizon before that.
            Some(t) => (
                l,
                StartPosition::AtTimestamp(t - horizon_ms),
                t - horizon_ms,
            ),
            _ => {
                let start = start_of(&l, start_ms);
                (l, start, start_ms)
            }
        })
        .collect();
    let sent = match starts.iter().map(|(_, _, from)| *from).min() {
        // A failed scan is retried a little later (the engines wait for it: without the sent
        // alerts they could page an attack again).
        Some(_) if st.sent_scan_after.is_some_and(|t| Instant::now() < t) => return Ok(()),
        Some(from) => {
            let max_cooldown_ms = st.rules.iter().map(|r| r.cooldown).max().unwrap_or(0) / 1000;
            // Events re-read from `from` may be up to the lateness bound older; the ones
            // whose window ends inside an alert's cooldown need that alert.
            let table = st.leases.coord.lock().await.table().clone();
            match table.sent_alerts(from - horizon_ms - max_cooldown_ms).await {
                Ok(sent) => {
                    st.sent_scan_after = None;
                    sent
                }
                Err(e) => {
                    st.sent_scan_after = Some(Instant::now() + Duration::from_secs(2));
                    return Err(e.into());
                }
            }
        }
        None => Vec::new(),
    };
    for (l, start, _) in starts {
        counters.leases_gained += 1;
        tracing::info!(
            "authwatch run: window stage: took {} from {start:?}",
            l.shard_id
        );
        let mut engine = Engine::new(st.rules.clone(), engine_config.clone());
        crate::live::remember_sent(&mut engine, &sent);
        let matcher = engine.matcher();
        st.shards.insert(
            l.shard_id.clone(),
            WindowShard {
                reader: ShardReader::new(
                    kinesis.clone(),
                    matches.clone(),
                    &l.shard_id,
                    start,
                    poll,
                ),
                engine,
                matcher,
                last_checkpoint: Instant::now(),
                last_sequence: l.checkpoint.clone(),
                last_arrival_ms: l.read_through_ms.unwrap_or(0),
            },
        );
    }
    for shard in st.leases.closed() {
        if let Some(w) = st.shards.get_mut(&shard) {
            w.reader.set_closed();
        }
    }
    Ok(())
}

/// Stage 1: one call on each ready shard; match records written, then the checkpoint.
async fn match_step(
    st: &mut MatchStage,
    kinesis: &aws_sdk_kinesis::Client,
    matches: &StreamRef,
    counters: &mut KinesisCounters,
) -> Result<(), KinesisRunError> {
    let ready: Vec<String> = st
        .readers
        .iter()
        .filter(|(_, r)| r.ready(Instant::now()))
        .map(|(s, _)| s.clone())
        .collect();
    for shard in ready {
        let Some(reader) = st.readers.get_mut(&shard) else {
            continue;
        };
        let called_ms = now_ms();
        let batch = match reader.poll().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("authwatch run: {shard}: {e}; retrying");
                continue;
            }
        };
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for rec in &batch.records {
            counters.source_records += 1;
            match_record(st, &rec.data, &mut out, counters);
        }
        let n = out.len() as u64;
        if !out.is_empty() {
            // Not checkpointed until written: a failure here re-reads the batch later.
            match put_all(kinesis, matches, out).await {
                Ok(o) => {
                    counters.matches_written += n - o.too_large;
                    if o.too_large > 0 {
                        counters.matches_too_large += o.too_large;
                        tracing::warn!(
                            "authwatch run: {} match record(s) of {shard} over Kinesis's 1 MiB record limit were not written (counted in matches_too_large)",
                            o.too_large
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("authwatch run: writing matches of {shard}: {e}; re-reading");
                    st.readers.remove(&shard);
                    st.leases.coord.lock().await.forget(&shard);
                    continue;
                }
            }
        }
        checkpoint_match(st, &shard, &batch, called_ms).await?;
    }
    Ok(())
}

async fn checkpoint_match(
    st: &mut MatchStage,
    shard: &str,
    batch: &Batch,
    called_ms: i64,
) -> Result<(), KinesisRunError> {
    // Read through: a caught-up shard has everything that arrived before the call (less a
    // second for Kinesis's own propagation); otherwise the last record's arrival.
    let read_through = if batch.millis_behind == 0 || batch.ended {
        called_ms - 1000
    } else {
        match batch.records.last() {
            Some(r) => r.arrival_ms,
            // Behind and nothing read (Kinesis passing over a gap): nothing new to record,
            // and a read-through of 0 would hold every window back.
            None => return Ok(()),
        }
    };
    let due = st
        .last_checkpoint
        .get(shard)
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
    if batch.ended {
        let finished = skip_transient(
            st.leases
                .coord
                .lock()
                .await
                .finish_shard(shard, read_through)
                .await,
            "match stage: marking the end of",
            shard,
        )?;
        st.readers.remove(shard);
        match finished {
            Some(()) => tracing::info!("authwatch run: match stage: {shard} read to its end"),
            // Whoever takes the lease next reads the shard to its end again.
            None => st.leases.coord.lock().await.forget(shard),
        }
        return Ok(());
    }
    if !(due || !batch.records.is_empty() && batch.millis_behind > 0) {
        return Ok(());
    }
    let seq = match batch.records.last() {
        Some(r) => r.sequence.clone(),
        None => {
            let held = st
                .leases
                .coord
                .lock()
                .await
                .held()
                .find(|l| l.shard_id == shard)
                .map(|l| l.checkpoint.clone().unwrap_or_default());
            match held {
                Some(seq) => seq,
                None => return Ok(()),
            }
        }
    };
    st.last_checkpoint.insert(shard.to_owned(), Instant::now());
    let written = skip_transient(
        st.leases
            .coord
            .lock()
            .await
            .checkpoint(shard, &seq, read_through)
            .await,
        "match stage: checkpointing",
        shard,
    )?;
    if written == Some(false) {
        tracing::info!("authwatch run: match stage: {shard} was taken by another replica");
        st.readers.remove(shard);
    }
    Ok(())
}

/// Decodes one subscription record and appends its match records.
fn match_record(
    st: &mut MatchStage,
    data: &[u8],
    out: &mut Vec<(String, Vec<u8>)>,
    counters: &mut KinesisCounters,
) {
    let plain;
    let doc: &[u8] = if is_gzip(data) {
        match gunzip_bounded(data) {
            Ok(p) => {
                plain = p;
                &plain
            }
            Err(_) => {
                counters.parse_errors += 1;
                return;
            }
        }
    } else {
        data
    };
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "messageType", borrow)]
        message_type: Option<std::borrow::Cow<'a, str>>,
    }
    if let Ok(k) = serde_json::from_slice::<Kind<'_>>(doc) {
        if k.message_type.as_deref() == Some("CONTROL_MESSAGE") {
            counters.control_messages += 1;
            return;
        }
    }
    let MatchStage {
        prefilter,
        matcher,
        rule_ids,
        ..
    } = st;
    records_in_document(
        Format::Subscription,
        doc,
        Origin::default(),
        &mut |record| {
            let record = match record {
                Ok(r) => r,
                Err(_) => {
                    counters.parse_errors += 1;
                    return;
                }
            };
            if record
                .stream
                .is_some_and(|s| !s.starts_with(AUDIT_STREAM_PREFIX))
            {
                counters.other_streams += 1;
                return;
            }
            counters.log_events += 1;
            if prefilter
                .as_ref()
                .is_some_and(|p| !p.may_match(record.message))
            {
                counters.prefiltered += 1;
                return;
            }
            let Ok(message) = std::str::from_utf8(record.message) else {
                counters.parse_errors += 1;
                return;
            };
            visit_events(&record, &mut |ev| {
                let Ok(view) = ev else {
                    counters.parse_errors += 1;
                    return;
                };
                let prepared = matcher.prepare(&view);
                for (rule, key) in prepared.partitions() {
                    let Some(rule_id) = rule_ids.get(rule) else {
                        continue;
                    };
                    let m = MatchRecord {
                        r: Cow::Borrowed(rule_id),
                        k: key,
                        g: record.log_group.map(Cow::Borrowed),
                        s: record.stream.map(Cow::Borrowed),
                        c: record.cw_timestamp,
                        i: record.event_id.map(Cow::Borrowed),
                        m: Cow::Borrowed(message),
                    };
                    if let Ok(bytes) = serde_json::to_vec(&m) {
                        out.push((route(rule_id, &m.k), bytes));
                    }
                }
            });
        },
    );
}

/// Stage 2: the source's low watermark, then one call on each ready shard; alerts claimed and
/// delivered, then the checkpoint.
async fn window_step(
    st: &mut WindowStage,
    table: &LeaseTable,
    source: &str,
    owner: &str,
    max_lateness: Micros,
    sink: &mut dyn AlertSink,
    counters: &mut KinesisCounters,
) -> Result<(), KinesisRunError> {
    if st.shards.is_empty() {
        return Ok(());
    }
    if st
        .last_low_read
        .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
    {
        st.last_low_read = Some(Instant::now());
        match table.leases(source).await {
            Ok(leases) => st.source_low = source_low(&leases).map(|l| (l, Instant::now())),
            Err(e) => tracing::warn!("authwatch run: reading the source leases: {e}"),
        }
    }
    let ready: Vec<String> = st
        .shards
        .iter()
        .filter(|(_, s)| s.reader.ready(Instant::now()))
        .map(|(s, _)| s.clone())
        .collect();
    let mut alerts: Vec<Alert> = Vec::new();
    for shard in ready {
        let Some(ws) = st.shards.get_mut(&shard) else {
            continue;
        };
        let called = Instant::now();
        let called_ms = now_ms();
        let batch = match ws.reader.poll().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("authwatch run: {shard}: {e}; retrying");
                continue;
            }
        };
        for rec in &batch.records {
            counters.matches_read += 1;
            let Ok(m) = serde_json::from_slice::<MatchRecord<'_>>(&rec.data) else {
                counters.parse_errors += 1;
                continue;
            };
            let Some(&rule) = st.rule_index.get(m.r.as_ref()) else {
                counters.parse_errors += 1;
                continue;
            };
            let record = RawRecord {
                message: m.m.as_bytes(),
                stream: m.s.as_deref(),
                log_group: m.g.as_deref(),
                cw_timestamp: m.c,
                event_id: m.i.as_deref(),
            };
            let (engine, matcher) = (&mut ws.engine, &mut ws.matcher);
            visit_events(&record, &mut |ev| {
                if let Ok(view) = ev {
                    let mut p = matcher.prepare(&view);
                    if p.retain_partition(rule, &m.k) {
                        engine.accept(p, &mut alerts);
                    }
                }
            });
            ws.last_sequence = Some(rec.sequence.clone());
            ws.last_arrival_ms = rec.arrival_ms;
        }
        // Caught up after the source's low mark was read: every match of events up to it
        // is in, so matches up to it less the lateness bound can be counted.
        if batch.millis_behind == 0 {
            if let Some((low, read_at)) = st.source_low {
                if read_at <= called {
                    ws.engine.advance_watermark(
                        low.saturating_mul(1000).saturating_sub(max_lateness),
                        &mut alerts,
                    );
                }
            }
        }
        if batch.ended {
            // The shard is closed (a resharded match stream): what the reorder buffer still
            // holds is counted now, or its alerts would be lost with the engine.
            ws.engine.finish(&mut alerts);
        }
        let now = Instant::now();
        let due: Vec<Alert> = {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.in_flight)
                .into_iter()
                .partition(|(_, at)| *at <= now);
            st.in_flight = later;
            due.into_iter()
                .map(|(a, _)| a)
                .chain(alerts.drain(..))
                .collect()
        };
        for a in due {
            match claim(table, &a.alert_id, owner, st.stale_ms).await? {
                Claim::Deliver => {
                    sink.deliver(&a)?;
                    sink.flush()?;
                    retrying!(
                        "marking an alert sent",
                        table.alert_sent(&a.alert_id, &FiredAlert::of(&a))
                    )?;
                    counters.alerts_delivered += 1;
                    *counters
                        .alerts_by_rule_severity
                        .entry((a.rule.clone(), a.severity.as_str().to_owned()))
                        .or_default() += 1;
                }
                Claim::AlreadySent => counters.alerts_already_sent += 1,
                Claim::InFlight { claimed_ms } => {
                    // Another replica is delivering it; if it dies first, its claim goes
                    // stale and this replica delivers it.
                    let wait = (claimed_ms + st.stale_ms - now_ms()).clamp(0, st.stale_ms);
                    st.in_flight
                        .push((a, now + Duration::from_millis(wait as u64 + 100)));
                }
            }
        }
        sink.flush()?;
        let through = if batch.millis_behind == 0 {
            called_ms - 1000
        } else {
            ws.last_arrival_ms
        };
        if batch.ended {
            // A resharded match stream: the children start with empty windows (a gap the
            // README names); the parent's alerts are all out.
            let finished = skip_transient(
                st.leases
                    .coord
                    .lock()
                    .await
                    .finish_shard(&shard, through)
                    .await,
                "window stage: marking the end of",
                &shard,
            )?;
            st.shards.remove(&shard);
            if finished.is_none() {
                // Whoever takes the lease next reads the shard to its end again.
                st.leases.coord.lock().await.forget(&shard);
            }
            continue;
        }
        if ws.last_checkpoint.elapsed() >= Duration::from_secs(1) {
            if let Some(seq) = ws.last_sequence.clone() {
                ws.last_checkpoint = Instant::now();
                let written = skip_transient(
                    st.leases
                        .coord
                        .lock()
                        .await
                        .checkpoint(&shard, &seq, through)
                        .await,
                    "window stage: checkpointing",
                    &shard,
                )?;
                if written == Some(false) {
                    tracing::info!(
                        "authwatch run: window stage: {shard} was taken by another replica"
                    );
                    st.shards.remove(&shard);
                }
            }
        }
    }
    Ok(())
}

/// A checkpoint write that failed transiently (throttling, a 5xx, a timeout) is skipped, not
/// fatal: the next checkpoint covers the same records, and until then a restart reads a
/// little more again. `None` when skipped.
fn skip_transient<T>(
    r: Result<T, LeaseError>,
    what: &str,
    shard: &str,
) -> Result<Option<T>, LeaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.class.is_transient() => {
            tracing::warn!("authwatch run: {what} {shard}: {e}; will try again");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Claims an alert, retrying transient errors a while.
async fn claim(
    table: &LeaseTable,
    id: &str,
    owner: &str,
    stale_ms: i64,
) -> Result<Claim, KinesisRunError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match table.claim_alert(id, owner, now_ms(), stale_ms).await {
            Ok(c) => return Ok(c),
            Err(e) if e.class.is_transient() && backoff.attempts() < 50 => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The oldest time up to which every source shard is read (ms), or `None` while a readable
/// shard has no read-through time yet (no one has read it).
fn source_low(leases: &[Lease]) -> Option<i64> {
    let mut low: Option<i64> = None;
    for l in authwatch_aws::lease::readable(leases) {
        let t = l.read_through_ms?;
        low = Some(low.map_or(t, |x| x.min(t)));
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(
        shard: &str,
        parents: &[&str],
        checkpoint: Option<&str>,
        through: Option<i64>,
    ) -> Lease {
        Lease {
            stream: "s".into(),
            shard_id: shard.into(),
            owner: None,
            counter: 0,
            checkpoint: checkpoint.map(str::to_owned),
            read_through_ms: through,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn a_shard_read_before_without_records_restarts_where_it_was_read_through() {
        use StartPosition::*;
        let at = |l: &Lease| start_of(l, 5_000);
        assert_eq!(
            at(&lease("a", &[], Some("42"), Some(9_000))),
            AfterSequence("42".into())
        );
        // Quiet until the replica stopped: from its read-through, not from the new start.
        assert_eq!(at(&lease("a", &[], None, Some(1_000))), AtTimestamp(1_000));
        assert_eq!(at(&lease("a", &["p"], None, None)), TrimHorizon);
        assert_eq!(at(&lease("a", &[], None, None)), AtTimestamp(5_000));
    }

    #[test]
    fn the_low_mark_is_the_slowest_readable_shard() {
        let ls = [
            lease("a", &[], Some("1"), Some(100)),
            lease("b", &[], Some("2"), Some(50)),
        ];
        assert_eq!(source_low(&ls), Some(50));
        // A shard nobody has read holds the mark back.
        let ls = [
            lease("a", &[], Some("1"), Some(100)),
            lease("b", &[], None, None),
        ];
        assert_eq!(source_low(&ls), None);
        // An ended parent no longer counts; its children count once it has ended.
        let ls = [
            lease("p", &[], Some(authwatch_aws::lease::SHARD_END), Some(10)),
            lease("c1", &["p"], Some("5"), Some(200)),
            lease("c2", &["p"], Some("6"), Some(150)),
        ];
        assert_eq!(source_low(&ls), Some(150));
        // Children of an open parent are not read yet: the parent counts.
        let ls = [
            lease("p", &[], Some("4"), Some(70)),
            lease("c1", &["p"], None, None),
        ];
        assert_eq!(source_low(&ls), Some(70));
    }
}
