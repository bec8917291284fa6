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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use crate::backoff::{classify, ErrorClass};
use crate::checkpoint::FiredAlert;
use crate::kinesis::ShardInfo;

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

/// The lease table, and the alert claims table beside it.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    claims: String,
}

impl LeaseTable {
    /// The lease table `table` and its claims table [`claims_table_name`] (see
    /// [`LeaseTable::ensure`]).
    pub fn new(client: Client, table: &str) -> LeaseTable {
        LeaseTable {
            client,
            table: table.to_owned(),
            claims: claims_table_name(table),
        }
    }

    /// The lease table's name.
    pub fn name(&self) -> &str {
        &self.table
    }

    /// The alert claims table's name.
    pub fn claims_name(&self) -> &str {
        &self.claims
    }

    /// Creates both tables if missing (on-demand capacity; hash key `leaseKey`, and `alertId`
    /// for the claims, with time to live on [`EXPIRES_AT`]) and waits until they are active.
    pub async fn ensure(&self) -> Result<(), LeaseError> {
        self.ensure_table(&self.table, KEY, false).await?;
        self.ensure_table(&self.claims, CLAIM_KEY, true).await
    }

    async fn ensure_table(&self, table: &str, key: &str, expires: bool) -> Result<(), LeaseError> {
        let perm = |e: aws_sdk_dynamodb::error::BuildError| LeaseError {
            op: "CreateTable",
            class: ErrorClass::Permanent(e.to_string()),
        };
        let created = self
            .client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(perm)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(perm)?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        let mut created_here = true;
        if let Err(e) = created {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception());
            if !exists {
                return Err(err("CreateTable", &e));
            }
            created_here = false;
        }
        for _ in 0..120 {
            let d = self
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| err("DescribeTable", &e))?;
            if d.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                if created_here && expires {
                    self.expire_alert_claims().await;
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(LeaseError {
            op: "DescribeTable",
            class: ErrorClass::Transient(format!("table {table} not active after 60 s")),
        })
    }

    /// Turns on the claims table's time to live on [`EXPIRES_AT`] (a table this replica
    /// created; the CloudFormation template sets it itself). Without it claims are only never
    /// deleted, so a failure is reported, not fatal.
    async fn expire_alert_claims(&self) {
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(EXPIRES_AT)
            .build();
        let r = match spec {
            Ok(spec) => self
                .client
                .update_time_to_live()
                .table_name(&self.claims)
                .time_to_live_specification(spec)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| err("UpdateTimeToLive", &e).to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = r {
            tracing::warn!(
                "authwatch: alert claims table {}: could not turn on time to live ({e}); claims will accumulate",
                self.claims
            );
        }
    }

    /// Creates the lease items of shards that have none (a new shard, or a first start).
    pub async fn add_shards(&self, stream: &str, shards: &[ShardInfo]) -> Result<(), LeaseError> {
        for sh in shards {
            let r = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(KEY, s(lease_key(stream, &sh.shard_id)))
                .item("stream", s(stream))
                .item("shardId", s(&sh.shard_id))
                .item("leaseOwner", s(""))
                .item("leaseCounter", n(0))
                .item("parents", s(sh.parents.join(",")))
                .condition_expression("attribute_not_exists(leaseKey)")
                .send()
                .await;
            if let Err(e) = r {
                if !conditional_failed(&e) {
                    return Err(err("PutItem", &e));
                }
            }
        }
        Ok(())
    }

    /// Every lease of `stream` (a `Scan` of the table, following pages).
    pub async fn leases(&self, stream: &str) -> Result<Vec<Lease>, LeaseError> {
        let items = self
            .scan_all(
                &self.table,
                "begins_with(leaseKey, :p)",
                &[(":p", s(format!("lease#{stream}#")))],
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(Lease::from_item)
            .filter(|l| l.stream == stream)
            .collect())
    }

    /// The items of `table` that pass `filter` (a consistent `Scan`, following pages).
    async fn scan_all(
        &self,
        table: &str,
        filter: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LeaseError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(table)
                .filter_expression(filter)
                .set_exclusive_start_key(start.take())
                .consistent_read(true);
            for (name, value) in values {
                req = req.expression_attribute_values(*name, value.clone());
            }
            let resp = req.send().await.map_err(|e| err("Scan", &e))?;
            out.extend(resp.items().iter().cloned());
            match resp.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Sets the owner and the counter, on condition that the counter is still `seen` (and,
    /// with `owner_now`, that the owner is still that one). `false`: someone else wrote first.
    async fn write_owner(
        &self,
        l: &Lease,
        owner: &str,
        counter: u64,
        owner_now: Option<&str>,
    ) -> Result<bool, LeaseError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(lease_key(&l.stream, &l.shard_id)))
            .update_expression("SET leaseOwner = :o, leaseCounter = :n")
            .expression_attribute_values(":o", s(owner))
            .expression_attribute_values(":n", n(counter))
            .expression_attribute_values(":c", n(l.counter));
        req = match owner_now {
            Some(me) => req
                .condition_expression("leaseCounter = :c AND leaseOwner = :me")
                .expression_attribute_values(":me", s(me)),
            None => req.condition_expression("leaseCounter = :c"),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(err("UpdateItem", &e)),
        }
    }

    /// Writes the checkpoint of a lease `owner` holds. `false`: the lease is no longer
    /// `owner`'s (nothing written).
    pub async fn checkpoint(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        sequence: &str,
        read_through_ms: i64,
    ) -> Result<bool, LeaseError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(lease_key(stream, shard)))
            .update_expression("SET checkpoint = :s, readThroughMs = :t")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":s", s(sequence))
            .expression_attribute_values(":t", n(read_through_ms))
            .expression_attribute_values(":me", s(owner))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(err("UpdateItem", &e)),
        }
    }

    /// Claims alert `id` for delivery by `owner` before it goes to the sinks; after the sinks
    /// took it, [`LeaseTable::alert_sent`] marks it sent. Two phases, so that an alert whose
    /// claimer died between the claim and the sinks is not lost: a claim still `pending`
    /// after `stale_ms` is taken over (conditional on the claim time it had) and delivered
    /// again, at least once (the sinks de-duplicate by `alert_id`).
    pub async fn claim_alert(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        stale_ms: i64,
    ) -> Result<Claim, LeaseError> {
        let r = self
            .client
            .put_item()
            .table_name(&self.claims)
            .item(CLAIM_KEY, s(id))
            .item("leaseOwner", s(owner))
            .item("claimedMs", n(now_ms))
            .item("alertState", s("pending"))
            .item(
                EXPIRES_AT,
                n(now_ms / 1000 + ALERT_CLAIM_TTL.as_secs() as i64),
            )
            .condition_expression("attribute_not_exists(alertId)")
            .send()
            .await;
        match r {
            Ok(_) => return Ok(Claim::Deliver),
            Err(e) if conditional_failed(&e) => {}
            Err(e) => return Err(err("PutItem", &e)),
        }
        let item = self
            .client
            .get_item()
            .table_name(&self.claims)
            .key(CLAIM_KEY, s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| err("GetItem", &e))?
            .item
            .unwrap_or_default();
        let get_s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        // A claim from before the two phases (no state) counts as sent.
        if get_s("alertState").is_none_or(|st| st == "sent") {
            return Ok(Claim::AlreadySent);
        }
        let claimed_ms = item
            .get("claimedMs")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if get_s("leaseOwner").as_deref() != Some(owner) && now_ms - claimed_ms < stale_ms {
            return Ok(Claim::InFlight { claimed_ms });
        }
        // Ours from before (a retry), or stale: take it over.
        let r = self
            .client
            .update_item()
            .table_name(&self.claims)
            .key(CLAIM_KEY, s(id))
            .update_expression("SET leaseOwner = :me, claimedMs = :now")
            .condition_expression("alertState = :pending AND claimedMs = :old")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":old", n(claimed_ms))
            .send()
            .await;
        match r {
            Ok(_) => Ok(Claim::Deliver),
            Err(e) if conditional_failed(&e) => Ok(Claim::InFlight { claimed_ms: now_ms }),
            Err(e) => Err(err("UpdateItem", &e)),
        }
    }

    /// Marks a claimed alert as handed to the sinks, with what fired it: a replica that
    /// rebuilds this key's window later reads it back ([`LeaseTable::sent_alerts`]) to keep
    /// the cooldown the alert started.
    pub async fn alert_sent(&self, id: &str, fired: &FiredAlert) -> Result<(), LeaseError> {
        // serde_json cannot fail on strings and numbers.
        let fired_json = serde_json::to_string(fired).unwrap_or_default();
        self.client
            .update_item()
            .table_name(&self.claims)
            .key(CLAIM_KEY, s(id))
            .update_expression("SET alertState = :sent, fired = :f, windowEndMs = :w")
            .expression_attribute_values(":sent", s("sent"))
            .expression_attribute_values(":f", s(fired_json))
            .expression_attribute_values(":w", n(fired.window_end_us.div_euclid(1000)))
            .send()
            .await
            .map_err(|e| err("UpdateItem", &e))?;
        Ok(())
    }

    /// What fired the alerts marked sent whose `window_end` is at or after `min_end_ms` (a
    /// `Scan`, following pages): what a rebuilt window engine is told
    /// (`authwatch_rules::Engine::remember_sent`). Pending claims are left out on purpose:
    /// if their replica died, the rebuilt engine must fire them again to deliver them.
    pub async fn sent_alerts(&self, min_end_ms: i64) -> Result<Vec<FiredAlert>, LeaseError> {
        let items = self
            .scan_all(
                &self.claims,
                "alertState = :sent AND windowEndMs >= :min",
                &[(":sent", s("sent")), (":min", n(min_end_ms))],
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let json = item.get("fired")?.as_s().ok()?;
                serde_json::from_str::<FiredAlert>(json).ok()
            })
            .collect())
    }
}

/// What [`LeaseTable::claim_alert`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This caller delivers it (then calls [`LeaseTable::alert_sent`]).
    Deliver,
    /// It was handed to the sinks before.
    AlreadySent,
    /// Another replica claimed it at `claimed_ms` and may be delivering it now: ask again once
    /// that claim is stale.
    InFlight {
        /// When the current claim was made (ms).
        claimed_ms: i64,
    },
}

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
