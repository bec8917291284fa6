//! Shard leases in DynamoDB, after the Kinesis Client Library's scheme (issue #10): several
//! replicas share the shards of a stream, each shard read by one replica at a time.
//!
//! One item per shard (`leaseKey` = `lease#<stream>#<shardId>`) with its owner, a lease
//! counter, the checkpoint (sequence number, or `SHARD_END`), the checkpoint's arrival time
//! and the parent shards. Every write is conditional:
//! - an owner renews by incrementing the counter, on condition that it still owns the lease
//!   at the counter it last saw; a failed condition means the lease was taken;
//! - a replica that sees a lease's counter unchanged for longer than the lease timeout takes
//!   it (on condition that the counter is still the one it saw), as it takes a free lease;
//! - a checkpoint is written only by the owner (`leaseOwner = me`).
//!
//! Balance: each replica aims at `ceil(shards / live replicas)` leases; one with fewer takes
//! free or expired leases first, then steals one lease per round from the replica holding the
//! most, if that one holds more than the target. A replica that stops cleanly gives its
//! leases up (owner cleared) so others take them at once.
//!
//! A shard is ready to be leased only when its parents are read to their end (`SHARD_END`),
//! so a key's records are read in order across a split or a merge.
//!
//! A second table, `<lease table>-alerts` ([`claims_table_name`]), keeps the ids of claimed
//! and delivered alerts (hash key `alertId`, written with `attribute_not_exists`), so that two
//! replicas, or one that rebuilt a window after a failover, do not send one alert twice, and
//! a claim whose replica died before the sinks got the alert is taken over
//! ([`LeaseTable::claim_alert`]). A table of its own because every window replica scans the
//! lease table twice a second for the source shards' read-through times: with two days of
//! claims in it, each scan would read them all.
//!
//! The code is split by job: this file holds the errors, the shared helpers and [`Lease`];
//! `table.rs` the DynamoDB calls ([`LeaseTable`], lease items and alert claims);
//! `coordinator.rs` one replica's rounds ([`Coordinator`]).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::backoff::{classify, ErrorClass};

mod coordinator;
mod table;

pub use coordinator::{Changes, Coordinator};
pub use table::{Claim, LeaseTable};

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";
const KEY: &str = "leaseKey";
/// The hash key of the alert claims table.
const CLAIM_KEY: &str = "alertId";

/// The alert claims table that goes with lease table `lease_table`.
pub fn claims_table_name(lease_table: &str) -> String {
    format!("{lease_table}-alerts")
}
/// The attribute DynamoDB's time to live reads (epoch seconds): alert claims expire.
pub const EXPIRES_AT: &str = "expiresAt";
/// How long an alert claim is kept: far longer than any rebuild reaches back (a rule's
/// window and cooldown, hours at most), short enough that the table, which every window
/// replica scans, does not grow with every alert ever sent.
pub const ALERT_CLAIM_TTL: Duration = Duration::from_secs(2 * 86_400);

/// A failed DynamoDB call.
#[derive(Debug, thiserror::Error)]
#[error("dynamodb {op}: {}", class.detail())]
pub struct LeaseError {
    /// The operation.
    pub op: &'static str,
    /// What the error means for a retry.
    pub class: ErrorClass,
}

fn err<E>(
    op: &'static str,
    e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> LeaseError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    LeaseError {
        op,
        class: classify(e),
    }
}

fn conditional_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The leases whose shards can be read now: not read to their end, and every parent that
/// has a lease read to its end (a parent without one aged out of the stream), so a key's
/// records are read parent first across a split or a merge.
pub fn readable(leases: &[Lease]) -> Vec<&Lease> {
    let ended: std::collections::HashSet<&str> = leases
        .iter()
        .filter(|l| l.ended())
        .map(|l| l.shard_id.as_str())
        .collect();
    let known: std::collections::HashSet<&str> =
        leases.iter().map(|l| l.shard_id.as_str()).collect();
    leases
        .iter()
        .filter(|l| !l.ended())
        .filter(|l| {
            l.parents
                .iter()
                .all(|p| ended.contains(p.as_str()) || !known.contains(p.as_str()))
        })
        .collect()
}

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The stream (its name).
    pub stream: String,
    /// The shard.
    pub shard_id: String,
    /// Who holds it (`None`: free).
    pub owner: Option<String>,
    /// Incremented by every renewal and take-over.
    pub counter: u64,
    /// The last processed record's sequence number, or [`SHARD_END`].
    pub checkpoint: Option<String>,
    /// When the checkpointed record arrived in Kinesis (ms); for a caught-up shard, the time
    /// up to which it is known to be read. Stage 2 takes its watermark from these.
    pub read_through_ms: Option<i64>,
    /// Parent shards.
    pub parents: Vec<String>,
}

impl Lease {
    /// Whether the shard is read to its end.
    pub fn ended(&self) -> bool {
        self.checkpoint.as_deref() == Some(SHARD_END)
    }

    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
        let get_s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let get_n = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        Some(Lease {
            stream: get_s("stream")?,
            shard_id: get_s("shardId")?,
            owner: get_s("leaseOwner").filter(|o| !o.is_empty()),
            counter: u64::try_from(get_n("leaseCounter").unwrap_or(0)).unwrap_or(0),
            checkpoint: get_s("checkpoint").filter(|c| !c.is_empty()),
            read_through_ms: get_n("readThroughMs"),
            parents: get_s("parents")
                .map(|p| {
                    p.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

fn lease_key(stream: &str, shard: &str) -> String {
    format!("lease#{stream}#{shard}")
}
