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
        let expired = |l: &Lease, seen: &HashMap<String, (u64, Instant)>| {
            l.owner.is_none()
                || seen
                    .get(&l.shard_id)
                    .is_some_and(|(c, t)| *c == l.counter && now.duration_since(*t) >= self.timeout)
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
            if self
                .table
                .write_owner(l, &self.owner, l.counter + 1, None)
                .await?
            {
                let mut l = (*l).clone();
                l.counter += 1;
                l.owner = Some(self.owner.clone());
                self.seen.insert(l.shard_id.clone(), (l.counter, now));
                self.held.insert(l.shard_id.clone(), l.clone());
                changes.gained.push(l);
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
                        if self
                            .table
                            .write_owner(l, &self.owner, l.counter + 1, None)
                            .await?
                        {
                            let mut l = (*l).clone();
                            l.counter += 1;
                            l.owner = Some(self.owner.clone());
                            self.seen.insert(l.shard_id.clone(), (l.counter, now));
                            self.held.insert(l.shard_id.clone(), l.clone());
                            changes.gained.push(l);
                        }
                    }
                }
            }
        }
        self.last = leases;
        Ok(changes)
    }

    /// Marks a held shard read to its end (its children become leasable) and gives it up.
    pub async fn finish_shard(
        &mut self,
        shard: &str,
        read_through_ms: i64,
    ) -> Result<(), LeaseError> {
        self.checkpoint(shard, SHARD_END, read_through_ms).await?;
        if let Some(l) = self.held.remove(shard) {
            let mut l2 = l.clone();
            l2.counter = l.counter;
            let _ = self
                .table
                .write_owner(&l2, "", l.counter + 1, Some(&self.owner))
                .await?;
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
        for l in held.values() {
            self.table
                .write_owner(l, "", l.counter + 1, Some(&self.owner))
                .await?;
        }
        Ok(())
    }
}
