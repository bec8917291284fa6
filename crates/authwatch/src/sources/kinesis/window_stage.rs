//! Stage 2, per match-stream shard: its own [`Engine`] moved by the source low mark; alerts
//! claimed in the lease table before they reach the sinks, so a window rebuilt by another
//! replica never sends twice; the shard checkpointed after.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use authwatch_aws::backoff::Backoff;
use authwatch_aws::kinesis::{ShardReader, StartPosition, StreamRef};
use authwatch_aws::lease::{Claim, Lease, LeaseTable};
use authwatch_aws::FiredAlert;
use authwatch_event::{visit_events, Micros, RawRecord};
use authwatch_rules::{Alert, Engine, EngineConfig, Matcher, Rule};

use super::leases::{follow_held, readable, skip_transient, source_low, start_of, StageLeases};
use super::record::MatchRecord;
use super::{now_ms, KinesisCounters, KinesisRunError};
use crate::pipeline::Accounting;
use crate::sinks::AlertSink;

/// One match-stream shard held by stage 2: its reader and its own engine.
pub(super) struct WindowShard {
    pub(super) reader: ShardReader,
    pub(super) engine: Engine,
    pub(super) matcher: Matcher,
    pub(super) last_checkpoint: Instant,
    pub(super) last_sequence: Option<String>,
    pub(super) last_arrival_ms: i64,
}

/// Stage 2's state.
pub(super) struct WindowStage {
    pub(super) leases: StageLeases,
    pub(super) shards: BTreeMap<String, WindowShard>,
    pub(super) rules: Vec<Rule>,
    pub(super) rule_index: HashMap<String, usize>,
    /// Oldest read-through time of the source shards (ms) and when it was read.
    pub(super) source_low: Option<(i64, Instant)>,
    pub(super) last_low_read: Option<Instant>,
    /// Alerts another replica has claimed and may be delivering, with when to ask again.
    pub(super) in_flight: Vec<(Alert, Instant)>,
    /// How old a `pending` claim must be to be taken over (the lease timeout).
    pub(super) stale_ms: i64,
    /// After a failed scan of the sent alerts: when to try again.
    pub(super) sent_scan_after: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn follow_leases_window(
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
        crate::sources::remember_sent(&mut engine, &sent);
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

/// Stage 2: the source's low watermark, then one call on each ready shard; alerts claimed and
/// delivered, then the checkpoint.
#[allow(clippy::too_many_arguments)]
pub(super) async fn window_step(
    st: &mut WindowStage,
    table: &LeaseTable,
    source: &str,
    owner: &str,
    max_lateness: Micros,
    sink: &mut dyn AlertSink,
    counters: &mut KinesisCounters,
    acc: &mut Accounting,
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
                    acc.delivered(&a);
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
            // docs/limits.md names); the parent's alerts are all out.
            st.leases
                .finish_shard(&shard, through, "window stage")
                .await?;
            st.shards.remove(&shard);
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

/// Claims an alert, retrying transient errors a while.
pub(super) async fn claim(
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
