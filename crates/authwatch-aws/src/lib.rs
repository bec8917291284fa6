//! CloudWatch Logs for authwatch: the live source ([`LogGroupReader`]), the shared API budget
//! ([`TokenBucket`]), retries ([`backoff`]), and the durable position ([`CheckpointStore`]).
//!
//! For several replicas (issue #10): the subscription's Kinesis stream ([`kinesis`]) and the
//! shard leases and delivered-alert ids in DynamoDB ([`lease`]).
//!
//! The reader yields CloudWatch events; turning them into `RawRecord`s, detection and alert
//! delivery stay with the caller, so a source never knows about sinks.

pub mod backoff;
pub mod checkpoint;
pub mod client;
pub mod kinesis;
pub mod lease;
pub mod reader;
pub mod token_bucket;

pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, FiredAlert, GroupPosition, SentAlert,
};
pub use client::{build_client, sdk_config, ClientConfig};
pub use reader::{CallOutcomes, LogEvent, LogGroupReader, Pass, ReaderConfig, RetryPolicy};
pub use token_bucket::TokenBucket;
