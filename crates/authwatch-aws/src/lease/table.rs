//! The lease table in DynamoDB ([`LeaseTable`]): the lease items (shards, owners, counters,
//! checkpoints) and the alert claims table beside it ([`Claim`]). Every DynamoDB call of the
//! lease module is made here.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::{
    claims_table_name, conditional_failed, err, lease_key, n, s, Lease, LeaseError,
    ALERT_CLAIM_TTL, CLAIM_KEY, EXPIRES_AT, KEY,
};
use crate::backoff::ErrorClass;
use crate::checkpoint::FiredAlert;
use crate::kinesis::ShardInfo;

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
    pub(super) async fn write_owner(
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
