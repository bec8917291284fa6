//! The record stage 1 writes to the match stream and stage 2 reads: one per (rule, key) of a
//! matched event, partitioned by rule and key so that every record of a key lands on one
//! match-stream shard (one window owner).

use std::borrow::Cow;

use authwatch_event::Micros;
use serde::{Deserialize, Serialize};

/// One match as stage 1 writes it: the rule, the key, and the audit event with what the
/// record around it said (stage 2 matches it again against that one rule and key, so the
/// engine's input is exactly the single-process one).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MatchRecord<'a> {
    /// Rule id.
    #[serde(borrow)]
    pub(super) r: Cow<'a, str>,
    /// Encoded group key.
    #[serde(borrow)]
    pub(super) k: Cow<'a, str>,
    /// Log group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub(super) g: Option<Cow<'a, str>>,
    /// Log stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub(super) s: Option<Cow<'a, str>>,
    /// CloudWatch timestamp, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) c: Option<Micros>,
    /// CloudWatch event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(borrow)]
    pub(super) i: Option<Cow<'a, str>>,
    /// The audit event (JSON text).
    #[serde(borrow)]
    pub(super) m: Cow<'a, str>,
}

/// The partition key of a (rule, key) pair.
pub(super) fn route(rule: &str, key: &str) -> String {
    format!("{rule}\u{1f}{key}")
}
