//! The lease side of both stages: the lease rounds on their own task, where a shard taken
//! over starts, following the leases held, the source low mark, and checkpoint writes that
//! tolerate transient errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authwatch_aws::kinesis::{list_shards, StartPosition, StreamRef};
use authwatch_aws::lease::{Coordinator, Lease, LeaseError};

use super::{KinesisCounters, KinesisRunError};

/// One stage's leases. The lease rounds (list the shards, renew, take, balance) run on a
/// task of their own, every `--lease-timeout / 3`: renewal must not wait for a step that is
/// retrying a throttled `PutRecords` or alert claim, or a replica under throttling would lose
/// its leases to the others after `--lease-timeout` and the shards would move for nothing.
/// The steps follow the leases held ([`readable`]) and write checkpoints through the same
/// coordinator, behind a lock held only for one DynamoDB call or one round.
pub(super) struct StageLeases {
    pub(super) coord: Arc<tokio::sync::Mutex<Coordinator>>,
    /// Shards the last listing showed closed (resharded): their readers are told.
    pub(super) closed: Arc<Mutex<Vec<String>>>,
    pub(super) rounds: tokio::task::JoinHandle<()>,
}

impl StageLeases {
    pub(super) fn start(
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

    pub(super) fn closed(&self) -> Vec<String> {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks `shard` read to its end through `read_through` (ms) and gives its lease up;
    /// whether that was recorded. On a transient error the lease is forgotten instead, and
    /// whoever takes it next reads the shard to its end again. `stage` names the caller in
    /// the warning.
    pub(super) async fn finish_shard(
        &self,
        shard: &str,
        read_through: i64,
        stage: &str,
    ) -> Result<bool, LeaseError> {
        let finished = skip_transient(
            self.coord
                .lock()
                .await
                .finish_shard(shard, read_through)
                .await,
            &format!("{stage}: marking the end of"),
            shard,
        )?;
        if finished.is_none() {
            self.coord.lock().await.forget(shard);
        }
        Ok(finished.is_some())
    }

    /// Stops the rounds and gives every held lease up (a clean stop). A round holds the lock
    /// for its whole length, so taking the lock first lets a round in progress finish rather
    /// than cutting it between a renewal's write and its record; a round stuck in AWS retries
    /// is cut after [`ROUND_WAIT`], and `release_all` copes with what it left.
    pub(super) async fn release(&self) {
        let waited = tokio::time::timeout(ROUND_WAIT, self.coord.lock()).await;
        // Held: no round is in progress. Timed out: the aborted round lets the lock go.
        self.rounds.abort();
        let mut coord = match waited {
            Ok(coord) => coord,
            Err(_) => self.coord.lock().await,
        };
        if let Err(e) = coord.release_all().await {
            tracing::warn!("authwatch run: releasing leases: {e}");
        }
    }
}

/// How long a stop waits for a lease round in progress before cutting it.
const ROUND_WAIT: Duration = Duration::from_secs(3);

/// Where a shard taken over starts: after its checkpoint; a shard read before while it had
/// no record at all, from the time it was read through (not `start_ms`: records that came
/// while no replica ran would be skipped); a child of a split or merge (its parents read to
/// their end) from its start; otherwise at `start_ms`.
pub(super) fn start_of(l: &Lease, start_ms: i64) -> StartPosition {
    match (&l.checkpoint, l.read_through_ms) {
        (Some(seq), _) => StartPosition::AfterSequence(seq.clone()),
        (None, Some(t)) => StartPosition::AtTimestamp(t),
        (None, None) if !l.parents.is_empty() => StartPosition::TrimHorizon,
        (None, None) => StartPosition::AtTimestamp(start_ms),
    }
}

/// One lease round of a stage: list the shards, add lease items for new ones, renew, take
/// and balance. The renewal runs even when listing failed, so a ListShards or DynamoDB
/// hiccup does not cost the leases held.
pub(super) async fn lease_round(
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
pub(super) fn follow_held<V>(
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
pub(super) fn readable(coord: &Coordinator) -> Vec<Lease> {
    coord.held().filter(|l| !l.ended()).cloned().collect()
}

/// A checkpoint write that failed transiently (throttling, a 5xx, a timeout) is skipped, not
/// fatal: the next checkpoint covers the same records, and until then a restart reads a
/// little more again. `None` when skipped.
pub(super) fn skip_transient<T>(
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

/// The oldest time up to which every source shard is read (ms), or `None` while a readable
/// shard has no read-through time yet (no one has read it).
pub(super) fn source_low(leases: &[Lease]) -> Option<i64> {
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
