//! Where records come from. Every source turns what it reads into
//! [`RawRecord`](authwatch_event::RawRecord)s and hands them to the one
//! [`Pipeline`](crate::pipeline::Pipeline) (decode, prefilter, skew guard, engine, counts,
//! metrics, delivery); none knows about a sink.
//!
//! - [`files`]: files, directories (CloudWatch S3 export trees), standard input; gzip
//!   inflated ahead on threads of their own ([`inflate_ahead`]).
//! - [`cloudwatch`]: `authwatch run`, polling CloudWatch Logs, with a checkpoint.
//! - [`log_group_range`]: `replay --log-group` and `investigate --log-group`, a closed range.
//! - [`kinesis`]: `run --kinesis-stream`, the two-stage replicas on a subscription stream.

use authwatch_event::Micros;
use authwatch_rules::{Engine, Rule};

use crate::telemetry::cloudwatch_metrics::UNKNOWN_CLUSTER;

pub mod cloudwatch;
pub mod files;
#[cfg(feature = "isal")]
pub mod igzip;
pub mod inflate_ahead;
pub mod kinesis;
pub mod log_group_range;

/// The EKS audit stream prefix (the API log streams share `kube-apiserver-`).
pub const AUDIT_STREAM_PREFIX: &str = "kube-apiserver-audit-";

/// Where a run without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Now.
    Now,
    /// A fixed time, ms since epoch.
    At(i64),
    /// This long before now, ms.
    Ago(i64),
}

impl StartAt {
    /// Parses `now`, `-<duration>` or an RFC 3339 time.
    pub fn parse(s: &str) -> Option<StartAt> {
        if s == "now" {
            return Some(StartAt::Now);
        }
        if let Some(d) = s.strip_prefix('-') {
            return authwatch_rules::rule::parse_duration(d).map(|us| StartAt::Ago(us / 1000));
        }
        authwatch_event::time::parse_timestamp(s).map(|us| StartAt::At(us.div_euclid(1000)))
    }

    fn resolve(self, now_ms: i64) -> i64 {
        match self {
            StartAt::Now => now_ms,
            StartAt::At(t) => t,
            StartAt::Ago(d) => now_ms - d,
        }
    }
}

/// The longest `window` and the longest `window + cooldown` of `rules`, µs.
pub fn rule_spans(rules: &[Rule]) -> (Micros, Micros) {
    let window = rules.iter().map(|r| r.window).max().unwrap_or(0);
    let memory = rules
        .iter()
        .map(|r| r.window.saturating_add(r.cooldown))
        .max()
        .unwrap_or(0);
    (window, memory)
}

/// Tells a rebuilt engine the alerts already sent, so that it keeps their cooldowns
/// ([`Engine::remember_sent`]). Shared by the restart of `run` and the window replicas of
/// the Kinesis mode.
pub fn remember_sent<'a>(
    engine: &mut Engine,
    sent: impl IntoIterator<Item = &'a authwatch_aws::FiredAlert>,
) {
    let (mut kept, mut unknown) = (0u64, 0u64);
    for f in sent {
        if engine.remember_sent(&f.rule, &f.key, f.window_end_us) {
            kept += 1;
        } else if f.rule != authwatch_rules::CARDINALITY_RULE {
            unknown += 1;
        }
    }
    if kept + unknown > 0 {
        tracing::info!(
            "authwatch: the engine keeps the cooldowns of {kept} alerts already sent{}",
            if unknown > 0 {
                format!(" ({unknown} of rules no longer loaded are ignored)")
            } else {
                String::new()
            }
        );
    }
}

/// The `Cluster` of metrics that no log group names: the configured one, else the first log
/// group's.
pub fn default_cluster<'a>(configured: Option<&'a str>, log_groups: &'a [String]) -> &'a str {
    configured
        .or_else(|| {
            log_groups
                .first()
                .and_then(|g| authwatch_event::cluster_from_log_group(g))
        })
        .unwrap_or(UNKNOWN_CLUSTER)
}

/// The wall clock in ms since the epoch (for positions and leases, never for event time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
