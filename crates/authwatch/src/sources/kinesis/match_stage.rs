//! Stage 1, per source shard: decode the subscription records, run them through the shared
//! [`Worker`](crate::pipeline::Worker), and write one match record per (rule, key) to the match
//! stream; a shard is checkpointed once its match records are written.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use authwatch_aws::kinesis::{put_all, Batch, ShardReader, StreamRef};
use authwatch_event::framing::{gunzip_bounded, is_gzip, records_in_document, Format, Origin};
use serde::Deserialize;

use super::leases::{follow_held, readable, skip_transient, start_of, StageLeases};
use super::record::{route, MatchRecord};
use super::{now_ms, KinesisCounters, KinesisRunError};
use crate::pipeline::{Accounting, Outcome, Worker};
use crate::sources::files::Location;
use crate::sources::AUDIT_STREAM_PREFIX;

/// Stage 1's state: the source shards held and what they need.
pub(super) struct MatchStage {
    pub(super) leases: StageLeases,
    pub(super) readers: BTreeMap<String, ShardReader>,
    pub(super) last_checkpoint: HashMap<String, Instant>,
    /// The shared stateless stage (prefilter, decode, match).
    pub(super) worker: Worker,
    /// Its outcomes for one record, reused.
    pub(super) outcomes: Vec<Outcome>,
    pub(super) rule_ids: Vec<String>,
}

/// Stage 1 follows the leases held: a reader for each lease taken, none for one lost, and
/// closed shards marked.
pub(super) async fn follow_leases_match(
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

/// Stage 1: one call on each ready shard; match records written, then the checkpoint.
pub(super) async fn match_step(
    st: &mut MatchStage,
    kinesis: &aws_sdk_kinesis::Client,
    matches: &StreamRef,
    counters: &mut KinesisCounters,
    acc: &mut Accounting,
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
            let loc = Location {
                name: &shard,
                index: counters.source_records,
                is_line: false,
            };
            match_record(st, &rec.data, &loc, &mut out, counters, acc);
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

pub(super) async fn checkpoint_match(
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
        let finished = st
            .leases
            .finish_shard(shard, read_through, "match stage")
            .await?;
        st.readers.remove(shard);
        if finished {
            tracing::info!("authwatch run: match stage: {shard} read to its end");
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

/// Decodes one subscription record through the shared [`Worker`] and [`Accounting`]
/// (prefilter, structure check, future-skew guard, counts and metrics, exactly as every other
/// source) and appends a match record per (rule, key) of each event it admits.
pub(super) fn match_record(
    st: &mut MatchStage,
    data: &[u8],
    loc: &Location<'_>,
    out: &mut Vec<(String, Vec<u8>)>,
    counters: &mut KinesisCounters,
    acc: &mut Accounting,
) {
    let plain;
    let doc: &[u8] = if is_gzip(data) {
        match gunzip_bounded(data) {
            Ok(p) => {
                plain = p;
                &plain
            }
            Err(e) => {
                acc.admit(Outcome::Error {
                    reason: e.reason(),
                    detail: e.to_string(),
                    location: loc.to_string(),
                });
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
        worker,
        outcomes,
        rule_ids,
        ..
    } = st;
    records_in_document(
        Format::Subscription,
        doc,
        Origin::default(),
        &mut |record| {
            let kept = match record {
                Ok(r)
                    if r.stream
                        .is_some_and(|s| !s.starts_with(AUDIT_STREAM_PREFIX)) =>
                {
                    counters.other_streams += 1;
                    return;
                }
                Ok(r) => Some(r),
                Err(_) => None,
            };
            worker.process(record, loc, outcomes);
            for o in outcomes.drain(..) {
                let (Some(prepared), Some(record)) = (acc.admit(o), kept) else {
                    continue;
                };
                let Ok(message) = std::str::from_utf8(record.message) else {
                    counters.parse_errors += 1;
                    continue;
                };
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
            }
        },
    );
}
