//! Kinesis Data Streams for authwatch (issue #10): the shards of a stream, one shard's
//! records within the per-shard read limits, and batched writes (the match stream).
//!
//! A [`ShardReader`] never sleeps: it says when its next `GetRecords` call is allowed
//! ([`ShardReader::ready`]), so one loop can serve all the shards a replica holds without one
//! shard's wait holding up another. The limits are Kinesis's: 5 `GetRecords` calls per second
//! and 2 MB/s read per shard (a call that read `n` bytes pushes the next one back by
//! `n / 2 MB` seconds), and a caught-up shard is polled no more often than the poll interval.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use aws_sdk_kinesis::Client;

use crate::backoff::{classify, Backoff, ErrorClass};

/// Kinesis's per-shard read throughput, bytes per second.
pub const SHARD_READ_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;
/// Kinesis's per-shard `GetRecords` call rate: at most 5 a second.
pub const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// `PutRecords` takes at most 500 records a call.
pub const PUT_RECORDS_MAX: usize = 500;
/// A partition key is at most 256 characters.
pub const MAX_PARTITION_KEY: usize = 256;

/// A failed Kinesis call.
#[derive(Debug, thiserror::Error)]
#[error("kinesis {op}: {}", class.detail())]
pub struct KinesisError {
    /// The operation.
    pub op: &'static str,
    /// What the error means for a retry.
    pub class: ErrorClass,
}

fn err<E>(
    op: &'static str,
    e: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> KinesisError
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    KinesisError {
        op,
        class: classify(e),
    }
}

/// A stream named by name or ARN (`--kinesis-stream NAME|ARN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    /// What the operator gave.
    pub given: String,
}

impl StreamRef {
    /// A stream by name or ARN.
    pub fn new(given: &str) -> StreamRef {
        StreamRef {
            given: given.to_owned(),
        }
    }

    /// The ARN, when an ARN was given.
    pub fn arn(&self) -> Option<&str> {
        self.given
            .starts_with("arn:")
            .then_some(self.given.as_str())
    }

    /// The stream's name (the part after `stream/` of an ARN).
    pub fn name(&self) -> &str {
        match self.arn() {
            Some(a) => a.rsplit_once("stream/").map_or(a, |(_, n)| n),
            None => &self.given,
        }
    }
}

/// One shard as `ListShards` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-000000000000`.
    pub shard_id: String,
    /// The parent shards (a split has one, a merge two): read to their end first.
    pub parents: Vec<String>,
    /// Closed by a split or merge (it has an ending sequence number): no new records come.
    pub closed: bool,
}

/// Lists every shard of the stream (open and closed, within retention), following pages.
pub async fn list_shards(
    client: &Client,
    stream: &StreamRef,
) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // With a NextToken the stream must not be named again.
        let mut req = client.list_shards();
        req = match &token {
            Some(t) => req.next_token(t),
            None => match stream.arn() {
                Some(a) => req.stream_arn(a),
                None => req.stream_name(stream.name()),
            },
        };
        let resp = req.send().await.map_err(|e| err("ListShards", &e))?;
        for s in resp.shards() {
            let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            let closed = s
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some();
            out.push(ShardInfo {
                shard_id: s.shard_id().to_owned(),
                parents,
                closed,
            });
        }
        match resp.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(out),
        }
    }
}

/// Where a shard is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// Just after a checkpointed record.
    AfterSequence(String),
    /// The first record that arrived at or after this time (ms since the epoch).
    AtTimestamp(i64),
    /// The oldest record kept (a child shard whose parents are read to their end).
    TrimHorizon,
}

/// One record of a shard.
#[derive(Debug, Clone)]
pub struct ShardRecord {
    /// Its sequence number (the checkpoint).
    pub sequence: String,
    /// The payload.
    pub data: Vec<u8>,
    /// When Kinesis took it, ms since the epoch.
    pub arrival_ms: i64,
}

/// What one `GetRecords` call gave.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, in shard order.
    pub records: Vec<ShardRecord>,
    /// How far behind the newest record of the shard this batch ends (0 = caught up).
    pub millis_behind: i64,
    /// The shard is closed (split or merged) and read to its end.
    pub ended: bool,
}

/// Reads one shard (see the module docs for the limits it keeps).
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream: StreamRef,
    shard_id: String,
    start: StartPosition,
    iterator: Option<String>,
    /// The last record handed out: where a new iterator starts after an expired one.
    last_sequence: Option<String>,
    next_call: Instant,
    poll_interval: Duration,
    backoff: Backoff,
    ended: bool,
    closed: bool,
    /// Calls made, by outcome (`ok`, `throttled`, `error`).
    pub calls: std::collections::BTreeMap<&'static str, u64>,
}

impl ShardReader {
    /// A reader of `shard_id` from `start`; a caught-up shard is asked again after
    /// `poll_interval`.
    pub fn new(
        client: Client,
        stream: StreamRef,
        shard_id: &str,
        start: StartPosition,
        poll_interval: Duration,
    ) -> ShardReader {
        let last_sequence = match &start {
            StartPosition::AfterSequence(s) => Some(s.clone()),
            _ => None,
        };
        ShardReader {
            client,
            stream,
            shard_id: shard_id.to_owned(),
            start,
            iterator: None,
            last_sequence,
            next_call: Instant::now(),
            poll_interval: poll_interval.max(MIN_CALL_SPACING),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            ended: false,
            closed: false,
            calls: Default::default(),
        }
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Whether the shard is closed and read to its end.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Marks the shard closed (`ListShards` shows an ending sequence number).
    pub fn set_closed(&mut self) {
        self.closed = true;
    }

    /// Whether the next call is allowed at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        !self.ended && now >= self.next_call
    }

    /// When the next call is allowed.
    pub fn next_call(&self) -> Instant {
        self.next_call
    }

    async fn iterator(&mut self) -> Result<String, KinesisError> {
        if let Some(it) = &self.iterator {
            return Ok(it.clone());
        }
        let mut req = self.client.get_shard_iterator().shard_id(&self.shard_id);
        req = match self.stream.arn() {
            Some(a) => req.stream_arn(a),
            None => req.stream_name(self.stream.name()),
        };
        req = match (&self.last_sequence, &self.start) {
            (Some(seq), _) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            (None, StartPosition::AtTimestamp(ms)) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            (None, _) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let resp = req.send().await.map_err(|e| err("GetShardIterator", &e))?;
        let it = resp.shard_iterator().unwrap_or_default().to_owned();
        self.iterator = Some(it.clone());
        Ok(it)
    }

    /// One `GetRecords` call (call only when [`ShardReader::ready`]). Errors push the next call
    /// back (backoff); an expired iterator is renewed from the last record handed out.
    pub async fn poll(&mut self) -> Result<Batch, KinesisError> {
        match self.poll_once().await {
            Ok(b) => {
                self.backoff.reset();
                *self.calls.entry("ok").or_default() += 1;
                Ok(b)
            }
            Err(e) => {
                *self
                    .calls
                    .entry(if e.class.is_transient() {
                        "throttled_or_transient"
                    } else {
                        "error"
                    })
                    .or_default() += 1;
                self.iterator = None;
                self.next_call = Instant::now() + self.backoff.next_delay().max(MIN_CALL_SPACING);
                Err(e)
            }
        }
    }

    async fn poll_once(&mut self) -> Result<Batch, KinesisError> {
        let it = self.iterator().await?;
        let started = Instant::now();
        let resp = self
            .client
            .get_records()
            .shard_iterator(it)
            .limit(10_000)
            .send()
            .await
            .map_err(|e| err("GetRecords", &e))?;
        let mut batch = Batch {
            millis_behind: resp.millis_behind_latest().unwrap_or(0),
            ..Batch::default()
        };
        let mut bytes = 0usize;
        for r in resp.records() {
            bytes += r.data().as_ref().len();
            batch.records.push(ShardRecord {
                sequence: r.sequence_number().to_owned(),
                data: r.data().as_ref().to_vec(),
                arrival_ms: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
            });
        }
        if let Some(last) = batch.records.last() {
            self.last_sequence = Some(last.sequence.clone());
        }
        // The end of a closed shard: Kinesis returns no next iterator. moto's emulation
        // keeps returning one, so a closed shard that gives nothing and is caught up is
        // at its end too.
        let at_end = self.closed && batch.records.is_empty() && batch.millis_behind == 0;
        match resp.next_shard_iterator() {
            Some(next) if !at_end => self.iterator = Some(next.to_owned()),
            _ => {
                self.iterator = None;
                self.ended = true;
                batch.ended = true;
            }
        }
        // 5 calls/s, 2 MB/s, and no busy polling of a caught-up shard.
        let mut wait = MIN_CALL_SPACING.max(Duration::from_secs_f64(
            bytes as f64 / SHARD_READ_BYTES_PER_SEC,
        ));
        if batch.records.is_empty() || batch.millis_behind == 0 {
            wait = wait.max(self.poll_interval);
        }
        self.next_call = started + wait;
        Ok(batch)
    }
}

/// A partition key for `key` within Kinesis's 256 characters: the key itself when short,
/// else a stable 64-bit hash of it (Kinesis hashes partition keys with MD5 to pick the
/// shard, so equal keys still land on one shard).
pub fn partition_key(key: &str) -> String {
    if key.len() <= MAX_PARTITION_KEY && !key.is_empty() {
        return key.to_owned();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("h{h:016x}")
}

/// Largest `PutRecords` request: 5 MiB of data and partition keys.
pub const PUT_RECORDS_MAX_BYTES: usize = 5 << 20;
/// Largest record Kinesis takes: 1 MiB of data and partition key.
pub const RECORD_MAX_BYTES: usize = 1 << 20;

/// What [`put_all`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// `PutRecords` calls made.
    pub calls: u64,
    /// Records over [`RECORD_MAX_BYTES`], which Kinesis can never take: skipped, and the
    /// caller counts and reports them (retrying them would stop the shard for ever).
    pub too_large: u64,
}

/// Splits `records` into `PutRecords` requests: at most 500 records and 5 MiB each.
fn requests(records: &[(String, Vec<u8>)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (pk, data)) in records.iter().enumerate() {
        let size = partition_key(pk).len() + data.len();
        if i > start && (i - start == PUT_RECORDS_MAX || bytes + size > PUT_RECORDS_MAX_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

/// Writes `(partition key, data)` records with `PutRecords` (requests of at most 500 records
/// and 5 MiB), re-sending only the records a call reports as failed (throttled), with
/// backoff, until every one is written or a non-transient error stops it. Records too large
/// for Kinesis are skipped and counted in the outcome.
pub async fn put_all(
    client: &Client,
    stream: &StreamRef,
    records: Vec<(String, Vec<u8>)>,
) -> Result<PutOutcome, KinesisError> {
    let mut outcome = PutOutcome::default();
    let (records, too_large): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(pk, data)| partition_key(pk).len() + data.len() <= RECORD_MAX_BYTES);
    outcome.too_large = too_large.len() as u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    for range in requests(&records) {
        let mut pending: Vec<&(String, Vec<u8>)> = records[range].iter().collect();
        while !pending.is_empty() {
            let mut entries = Vec::with_capacity(pending.len());
            for (pk, data) in &pending {
                let entry = PutRecordsRequestEntry::builder()
                    .partition_key(partition_key(pk))
                    .data(Blob::new(data.clone()))
                    .build()
                    .map_err(|e| KinesisError {
                        op: "PutRecords",
                        class: ErrorClass::Permanent(e.to_string()),
                    })?;
                entries.push(entry);
            }
            let mut req = client.put_records().set_records(Some(entries));
            req = match stream.arn() {
                Some(a) => req.stream_arn(a),
                None => req.stream_name(stream.name()),
            };
            outcome.calls += 1;
            match req.send().await {
                Ok(resp) => {
                    if resp.failed_record_count().unwrap_or(0) == 0 {
                        backoff.reset();
                        break;
                    }
                    // Only the failed ones again: the others are written, and re-sending
                    // them would count an event without an auditID twice. (A key's order
                    // across a retry is the window stage's lateness bound to absorb.)
                    let failed: Vec<bool> = resp
                        .records()
                        .iter()
                        .map(|r| r.error_code().is_some())
                        .collect();
                    pending = pending
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| failed.get(*i).copied().unwrap_or(true))
                        .map(|(_, r)| r)
                        .collect();
                }
                Err(e) => {
                    let e = err("PutRecords", &e);
                    if !e.class.is_transient() {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_hold_at_most_500_records_and_5_mib() {
        let small: Vec<(String, Vec<u8>)> =
            (0..1_201).map(|i| (format!("k{i}"), vec![0; 10])).collect();
        let r = requests(&small);
        assert_eq!(r, vec![0..500, 500..1_000, 1_000..1_201]);
        // 900 KB records: five fit in 5 MiB (4.6 MB), the sixth starts a new request.
        let big: Vec<(String, Vec<u8>)> = (0..12)
            .map(|i| (format!("k{i}"), vec![0; 900_000]))
            .collect();
        let r = requests(&big);
        assert_eq!(r, vec![0..5, 5..10, 10..12]);
        for range in r {
            let bytes: usize = big[range]
                .iter()
                .map(|(k, d)| partition_key(k).len() + d.len())
                .sum();
            assert!(bytes <= PUT_RECORDS_MAX_BYTES);
        }
        assert!(requests(&[]).is_empty());
    }

    #[test]
    fn stream_names_and_arns() {
        let s = StreamRef::new("arn:aws:kinesis:us-east-1:123456789012:stream/audit");
        assert_eq!(s.name(), "audit");
        assert!(s.arn().is_some());
        let s = StreamRef::new("audit");
        assert_eq!(s.name(), "audit");
        assert!(s.arn().is_none());
    }

    #[test]
    fn long_partition_keys_are_hashed_stably() {
        assert_eq!(partition_key("r\u{1f}1:a"), "r\u{1f}1:a");
        let long = "x".repeat(300);
        let k = partition_key(&long);
        assert_eq!(k, partition_key(&long));
        assert!(k.len() <= MAX_PARTITION_KEY);
        assert_ne!(k, partition_key(&"y".repeat(300)));
    }
}
