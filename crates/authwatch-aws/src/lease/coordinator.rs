//! One replica's share of a stream's leases ([`Coordinator`]): rounds that renew held
//! leases, take free or expired ones and balance the load, and checkpoints of held shards.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{readable, Lease, LeaseError, LeaseTable, SHARD_END};

/// What a round of [`Coordinator::tick`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leases taken this round (read them from their checkpoint).
    pub gained: Vec<Lease>,
    /// Leases lost this round (stop reading them; another replica has them).
    pub lost: Vec<String>,
}

/// One replica's view of one stream's leases.
#[derive(Debug)]
pub struct Coordinator {
    table: LeaseTable,
    stream: String,
    owner: String,
    timeout: Duration,
    /// Leases held, by shard.
    held: BTreeMap<String, Lease>,
    /// Every lease's counter and when it was first seen at that counter.
    seen: HashMap<String, (u64, Instant)>,
    /// The last full view of the table.
    last: Vec<Lease>,
}

impl Coordinator {
    /// A coordinator of `stream`'s leases for replica `owner`; a lease not renewed for
    /// `timeout` is taken over.
    pub fn new(table: LeaseTable, stream: &str, owner: &str, timeout: Duration) -> Coordinator {
        Coordinator {
            table,
            stream: stream.to_owned(),
            owner: owner.to_owned(),
            timeout,
            held: BTreeMap::new(),
            seen: HashMap::new(),
            last: Vec::new(),
        }
    }

    /// The table.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// The leases held.
    pub fn held(&self) -> impl Iterator<Item = &Lease> {
        self.held.values()
    }

    /// Whether this replica holds `shard`.
    pub fn holds(&self, shard: &str) -> bool {
        self.held.contains_key(shard)
    }

    /// The table as last read (every lease of the stream).
    pub fn snapshot(&self) -> &[Lease] {
        &self.last
    }

    /// Writes a checkpoint for a held shard; `false` (and the lease is dropped) when it was
    /// taken by another replica meanwhile.
    pub async fn checkpoint(
        &mut self,
        shard: &str,
        sequence: &str,
        read_through_ms: i64,
    ) -> Result<bool, LeaseError> {
        let ok = self
            .table
            .checkpoint(&self.stream, shard, &self.owner, sequence, read_through_ms)
            .await?;
        match self.held.get_mut(shard) {
            Some(l) if ok => {
                l.checkpoint = Some(sequence.to_owned());
                l.read_through_ms = Some(read_through_ms);
            }
            _ => {
                self.held.remove(shard);
            }
        }
        Ok(ok)
    }

    /// One round: renew held leases, take free or expired ones, balance. Call every
    /// `timeout / 3` or so.
    pub async fn tick(&mut self) -> Result<Changes, LeaseError> {
        let now = Instant::now();
        let mut changes = Changes::default();
        let leases = self.table.leases(&self.stream).await?;
        for l in &leases {
            let e = self
                .seen
                .entry(l.shard_id.clone())
                .or_insert((l.counter, now));
            if e.0 != l.counter {
                *e = (l.counter, now);
            }
        }
        // Renew (or notice the loss of) what is held.
        let held: Vec<String> = self.held.keys().cloned().collect();
        for shard in held {
            let current = leases.iter().find(|l| l.shard_id == shard);
            let still = current.is_some_and(|l| l.owner.as_deref() == Some(self.owner.as_str()));
            let renewed = match current {
                Some(l) if still => {
                    self.table
                        .write_owner(l, &self.owner, l.counter + 1, Some(&self.owner))
                        .await?
                }
                _ => false,
            };
            match (renewed, current) {
                (true, Some(l)) => {
                    let mut l = l.clone();
                    l.counter += 1;
                    self.seen.insert(shard.clone(), (l.counter, now));
                    // Keep the checkpoint written by this replica (the scan may be older).
                    if let Some(h) = self.held.get(&shard) {
                        l.checkpoint = h.checkpoint.clone().or(l.checkpoint);
                        l.read_through_ms = h.read_through_ms.or(l.read_through_ms);
                    }
                    self.held.insert(shard, l);
                }
                _ => {
                    self.held.remove(&shard);
                    changes.lost.push(shard);
                }
            }
        }
        let leasable = readable(&leases);
        let timeout = self.timeout;
        let expired = |l: &Lease, seen: &HashMap<String, (u64, Instant)>| {
            l.owner.is_none()
                || seen
                    .get(&l.shard_id)
                    .is_some_and(|(c, t)| *c == l.counter && now.duration_since(*t) >= timeout)
        };
        // Live replicas: this one and every owner of a lease that is not expired.
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        load.insert(self.owner.clone(), 0);
        for l in &leasable {
            if let Some(o) = &l.owner {
                if !expired(l, &self.seen) && o != &self.owner {
                    *load.entry(o.clone()).or_default() += 1;
                }
            }
        }
        let target = leasable.len().div_ceil(load.len().max(1));
        let mut mine = self.held.len();
        // Free or expired leases first.
        for l in &leasable {
            if mine >= target {
                break;
            }
            if self.held.contains_key(&l.shard_id) || !expired(l, &self.seen) {
                continue;
            }
            if self.take(l, now, &mut changes).await? {
                mine += 1;
            }
        }
        // Then one lease from the most loaded replica, if that evens things out (it holds at
        // least two more than this one). Comparing with the target alone can stall: a replica
        // holding nothing is invisible to the others' count of live replicas.
        if mine < target || load.values().any(|c| *c >= mine + 2) {
            if let Some((victim, count)) = load
                .iter()
                .filter(|(o, _)| **o != self.owner)
                .max_by_key(|(_, c)| **c)
            {
                if *count >= mine + 2 {
                    if let Some(l) = leasable
                        .iter()
                        .find(|l| l.owner.as_deref() == Some(victim.as_str()))
                    {
                        self.take(l, now, &mut changes).await?;
                    }
                }
            }
        }
        self.last = leases;
        Ok(changes)
    }

    /// Takes `l` (free, expired, or another replica's) by a conditional write on its counter;
    /// whether it is now held (false: someone else wrote it first).
    async fn take(
        &mut self,
        l: &Lease,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<bool, LeaseError> {
        if !self
            .table
            .write_owner(l, &self.owner, l.counter + 1, None)
            .await?
        {
            return Ok(false);
        }
        let mut l = l.clone();
        l.counter += 1;
        l.owner = Some(self.owner.clone());
        self.seen.insert(l.shard_id.clone(), (l.counter, now));
        self.held.insert(l.shard_id.clone(), l.clone());
        changes.gained.push(l);
        Ok(true)
    }

    /// Marks a held shard read to its end (its children become leasable) and gives it up.
    pub async fn finish_shard(
        &mut self,
        shard: &str,
        read_through_ms: i64,
    ) -> Result<(), LeaseError> {
        self.checkpoint(shard, SHARD_END, read_through_ms).await?;
        if let Some(l) = self.held.remove(shard) {
            self.give_up(&l).await?;
        }
        Ok(())
    }

    /// Stops holding `shard` without writing anything (its reader failed): the lease expires
    /// after the timeout and is taken again from its checkpoint, by this replica or another.
    pub fn forget(&mut self, shard: &str) {
        self.held.remove(shard);
    }

    /// Gives every held lease up (a clean stop): others take them at their next round
    /// instead of waiting for the timeout.
    pub async fn release_all(&mut self) -> Result<(), LeaseError> {
        let held = std::mem::take(&mut self.held);
        // Every lease is tried even when one fails: a lease not given up is only taken after
        // the timeout, and one failure must not cost the others that wait.
        let mut first_error = None;
        for l in held.values() {
            if let Err(e) = self.give_up(l).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Clears the owner of a lease this replica holds. The counter held in memory may be
    /// behind the table's: a lease round cancelled after its renewal reached DynamoDB but
    /// before it was recorded here (a stop aborts the rounds) leaves the table one ahead. So
    /// a refused write reads the lease again and, while it is still this replica's, retries
    /// at the counter read; a lease another replica has taken is left alone.
    async fn give_up(&self, l: &Lease) -> Result<(), LeaseError> {
        let mut current = l.clone();
        for _ in 0..GIVE_UP_ATTEMPTS {
            if self
                .table
                .write_owner(&current, "", current.counter + 1, Some(&self.owner))
                .await?
            {
                return Ok(());
            }
            let leases = self.table.leases(&self.stream).await?;
            match leases.into_iter().find(|x| x.shard_id == l.shard_id) {
                Some(x) if x.owner.as_deref() == Some(self.owner.as_str()) => current = x,
                _ => return Ok(()),
            }
        }
        tracing::warn!(
            "lease of {} {}: still this replica's after {GIVE_UP_ATTEMPTS} attempts to give it up; it is taken after the timeout",
            self.stream,
            l.shard_id
        );
        Ok(())
    }
}

/// Writes of one lease's release before it is left to expire: the counter moves only with
/// this replica's own renewals, which have stopped, so a second write normally succeeds.
const GIVE_UP_ATTEMPTS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::ShardInfo;

    /// The DynamoDB emulator's endpoint (`.ci/run` starts moto and exports it); under
    /// `CI=true` a missing emulator is a failure, elsewhere the test is skipped.
    fn emulator() -> Option<String> {
        match std::env::var("AWS_ENDPOINT_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but AWS_ENDPOINT_URL is unset: this test needs the DynamoDB emulator (.ci/run starts moto_server)")
            }
            _ => {
                eprintln!("notice: AWS_ENDPOINT_URL is unset; skipping emulator test");
                None
            }
        }
    }

    /// A stop aborts the lease rounds; one cut after its renewal reached DynamoDB but before
    /// the new counter was recorded leaves the table a counter ahead of memory. Giving the
    /// leases up must still clear every owner, or the stopped replica's shards wait out the
    /// lease timeout (the Kinesis SIGTERM test saw one lease left behind so).
    #[tokio::test]
    async fn release_after_an_unrecorded_renewal_still_gives_every_lease_up() {
        let Some(_) = emulator() else { return };
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let name = format!(
            "give-up-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let table = LeaseTable::new(aws_sdk_dynamodb::Client::new(&conf), &name);
        table.ensure().await.unwrap();
        let shards: Vec<ShardInfo> = (0..3)
            .map(|i| ShardInfo {
                shard_id: format!("shardId-{i:012}"),
                parents: Vec::new(),
                closed: false,
            })
            .collect();
        table.add_shards("s", &shards).await.unwrap();
        let mut c = Coordinator::new(table, "s", "a", Duration::from_secs(30));
        for _ in 0..5 {
            if c.held().count() == 3 {
                break;
            }
            c.tick().await.unwrap();
        }
        assert_eq!(c.held().count(), 3);
        // The renewal of a cut round: written to the table, not recorded in `held`.
        let l = c.held["shardId-000000000001"].clone();
        assert!(c
            .table
            .write_owner(&l, "a", l.counter + 1, Some("a"))
            .await
            .unwrap());
        c.release_all().await.unwrap();
        let leases = c.table.leases("s").await.unwrap();
        assert_eq!(leases.len(), 3);
        assert!(
            leases.iter().all(|l| l.owner.is_none()),
            "leases left owned after release_all: {leases:?}"
        );
        assert_eq!(c.held().count(), 0);
    }
}
