//! [`LogGroupReader`]: follows the `kube-apiserver-audit-*` streams of one log group with
//! `FilterLogEvents`, pass after pass.
//!
//! Each pass asks for `[position − lookback, end]` (`end` is now, or less while catching up),
//! restricted by `logStreamNames` in batches of at most 100, and follows `nextToken` to the
//! end. Re-reading the look-back catches events CloudWatch delivers minutes late; the
//! `eventId`s seen in the look-back are remembered so that each event is returned once. The
//! position only moves when a pass has been read completely, and the caller persists it
//! only after processing what the pass returned.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::Client;
use tokio::time::Instant;

use crate::backoff::{classify, Backoff, ErrorClass};
use crate::token_bucket::TokenBucket;

/// Streams per `FilterLogEvents` call: the API takes at most 100 names.
pub const MAX_STREAMS_PER_CALL: usize = 100;

/// What a reader is asked to do.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The log group, e.g. `/aws/eks/prod/cluster`.
    pub log_group: String,
    /// Stream name prefix (`kube-apiserver-audit-`; the API log streams share
    /// `kube-apiserver-`, so the longer prefix matters).
    pub stream_prefix: String,
    /// How far behind the position a full pass re-reads, ms.
    pub lookback_ms: i64,
    /// How often a pass re-reads the whole look-back; `Duration::ZERO`: every pass. The
    /// passes in between re-read only [`QUICK_OVERLAP_MS`] (or the look-back, if shorter):
    /// on AWS a busy group's look-back is many `FilterLogEvents` pages, and re-reading it on
    /// every pass spends the call budget (and the lag) on events already counted.
    pub full_lookback_every: Duration,
    /// How often streams are listed again (API servers come and go).
    pub rediscover_every: Duration,
    /// The widest time range one pass covers beyond the position, ms, so that catching up on
    /// a backlog checkpoints as it goes and holds a bounded number of events.
    pub max_pass_span_ms: i64,
    /// How errors are handled.
    pub retry: RetryPolicy,
}

/// How far behind the position a pass between full look-backs re-reads, ms: CloudWatch
/// delivers most events within seconds; the full look-back catches the stragglers.
pub const QUICK_OVERLAP_MS: i64 = 15_000;

/// How a reader retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff step for transient errors.
    pub base: Duration,
    /// Longest backoff for transient errors.
    pub cap: Duration,
    /// The wait after an authorization, not-found or other non-transient error.
    pub slow_retry: Duration,
    /// `true` for a live run: retry non-transient errors slowly for ever. `false` for a closed
    /// range: return them.
    pub forever: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            slow_retry: Duration::from_secs(30),
            forever: true,
        }
    }
}

/// One CloudWatch Logs event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// CloudWatch `eventId`.
    pub event_id: String,
    /// The log stream.
    pub stream: String,
    /// CloudWatch timestamp, ms since epoch.
    pub timestamp_ms: i64,
    /// The message (one audit event as JSON).
    pub message: String,
}

/// What a pass returned.
#[derive(Debug, Default)]
pub struct Pass {
    /// Events not returned before, by (timestamp, eventId).
    pub events: Vec<LogEvent>,
    /// The new position (the end of the range read), ms.
    pub position_ms: i64,
    /// API calls made (including retries).
    pub calls: u64,
}

/// A non-transient error, returned only when [`RetryPolicy::forever`] is off.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on {log_group}: {class:?}")]
pub struct ReadError {
    /// `FilterLogEvents` or `DescribeLogStreams`.
    pub operation: &'static str,
    /// The log group.
    pub log_group: String,
    /// What went wrong.
    pub class: ErrorClass,
}

/// Reads one log group (see the module docs).
pub struct LogGroupReader {
    client: Client,
    bucket: Arc<TokenBucket>,
    config: ReaderConfig,
    streams: Vec<String>,
    discovered_at: Option<Instant>,
    position_ms: i64,
    /// The start of the next pass when it must go further back than the look-back (a restart
    /// rebuilding window state).
    rewind_to_ms: Option<i64>,
    /// When the last pass that re-read the whole look-back finished.
    last_full: Option<Instant>,
    seen: HashSet<String>,
    seen_by_time: BTreeSet<(i64, String)>,
    calls: u64,
    call_outcomes: CallOutcomes,
}

/// API calls made, by (operation, outcome): `ok`, `throttled`, `transient_error`,
/// `unauthorized`, `not_found`, `rejected`.
pub type CallOutcomes = std::collections::BTreeMap<(&'static str, &'static str), u64>;

fn outcome_of(err: &ErrorClass) -> &'static str {
    match err {
        ErrorClass::Transient(d) if d.contains("Throttl") || d.contains("TooManyRequests") => {
            "throttled"
        }
        ErrorClass::Transient(_) => "transient_error",
        ErrorClass::Unauthorized(_) => "unauthorized",
        ErrorClass::NotFound(_) => "not_found",
        ErrorClass::Permanent(_) => "rejected",
    }
}

impl LogGroupReader {
    /// A reader whose first pass starts at `from_ms` and whose position is `position_ms`.
    pub fn new(
        client: Client,
        bucket: Arc<TokenBucket>,
        config: ReaderConfig,
        from_ms: i64,
        position_ms: i64,
    ) -> LogGroupReader {
        LogGroupReader {
            client,
            bucket,
            config,
            streams: Vec::new(),
            discovered_at: None,
            position_ms,
            rewind_to_ms: Some(from_ms.min(position_ms)),
            last_full: None,
            seen: HashSet::new(),
            seen_by_time: BTreeSet::new(),
            calls: 0,
            call_outcomes: CallOutcomes::new(),
        }
    }

    /// The log group.
    pub fn log_group(&self) -> &str {
        &self.config.log_group
    }

    /// The position: everything up to here has been returned.
    pub fn position_ms(&self) -> i64 {
        self.position_ms
    }

    /// The audit streams currently known.
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    /// API calls made so far (including retries).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// API calls made so far, by operation and outcome.
    pub fn call_outcomes(&self) -> &CallOutcomes {
        &self.call_outcomes
    }

    /// Reads one pass up to `until_ms` (at most `max_pass_span_ms` beyond the position).
    /// With [`RetryPolicy::forever`] this only returns `Ok`.
    pub async fn pass(&mut self, until_ms: i64) -> Result<Pass, ReadError> {
        let calls_before = self.calls;
        let due = self
            .discovered_at
            .is_none_or(|t| t.elapsed() >= self.config.rediscover_every);
        if due {
            self.discover().await?;
        }
        let full = self.config.full_lookback_every.is_zero()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.config.full_lookback_every);
        let behind = if full {
            self.config.lookback_ms
        } else {
            QUICK_OVERLAP_MS.min(self.config.lookback_ms)
        };
        let from = self
            .rewind_to_ms
            .unwrap_or(self.position_ms - behind)
            .max(0);
        let end = until_ms
            .min(
                self.position_ms
                    .saturating_add(self.config.max_pass_span_ms),
            )
            .max(self.position_ms);
        let mut events = Vec::new();
        let streams = self.streams.clone();
        for batch in streams.chunks(MAX_STREAMS_PER_CALL) {
            self.read_range(batch, from, end, &mut events).await?;
        }
        events.sort_by(|a, b| {
            (a.timestamp_ms, a.event_id.len(), &a.event_id).cmp(&(
                b.timestamp_ms,
                b.event_id.len(),
                &b.event_id,
            ))
        });
        self.rewind_to_ms = None;
        if full {
            self.last_full = Some(Instant::now());
        }
        self.position_ms = end;
        self.forget_before(end - self.config.lookback_ms);
        Ok(Pass {
            events,
            position_ms: end,
            calls: self.calls - calls_before,
        })
    }

    /// Drops remembered eventIds older than the look-back: no later pass asks for them.
    fn forget_before(&mut self, cutoff_ms: i64) {
        while let Some(first) = self.seen_by_time.first() {
            if first.0 >= cutoff_ms {
                break;
            }
            if let Some((_, id)) = self.seen_by_time.pop_first() {
                self.seen.remove(&id);
            }
        }
    }

    /// Lists the audit streams (all pages).
    async fn discover(&mut self) -> Result<(), ReadError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (client, group, prefix) = (
                &self.client,
                self.config.log_group.clone(),
                self.config.stream_prefix.clone(),
            );
            let tok = token.clone();
            let out = call(
                &self.bucket,
                &self.config.retry,
                &mut self.calls,
                &mut self.call_outcomes,
                "DescribeLogStreams",
                &self.config.log_group,
                || {
                    client
                        .describe_log_streams()
                        .log_group_name(group.clone())
                        .log_stream_name_prefix(prefix.clone())
                        .set_next_token(tok.clone())
                        .send()
                },
            )
            .await?;
            names.extend(
                out.log_streams()
                    .iter()
                    .filter_map(|s| s.log_stream_name())
                    .filter(|n| n.starts_with(&self.config.stream_prefix))
                    .map(str::to_owned),
            );
            match out.next_token() {
                // A repeated token would loop for ever.
                Some(t) if !t.is_empty() && Some(t) != token.as_deref() => {
                    token = Some(t.to_owned())
                }
                _ => break,
            }
        }
        names.sort();
        names.dedup();
        let added: Vec<&String> = names.iter().filter(|n| !self.streams.contains(n)).collect();
        if !added.is_empty() && self.discovered_at.is_some() {
            tracing::warn!(
                "authwatch: {}: new audit stream(s): {}",
                self.config.log_group,
                added
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.streams = names;
        self.discovered_at = Some(Instant::now());
        Ok(())
    }

    /// `FilterLogEvents` over `[from, end]` for `streams`, all pages; keeps unseen events.
    async fn read_range(
        &mut self,
        streams: &[String],
        from: i64,
        end: i64,
        out: &mut Vec<LogEvent>,
    ) -> Result<(), ReadError> {
        let mut token: Option<String> = None;
        loop {
            let client = &self.client;
            let group = self.config.log_group.clone();
            let tok = token.clone();
            let names = streams.to_vec();
            let page = call(
                &self.bucket,
                &self.config.retry,
                &mut self.calls,
                &mut self.call_outcomes,
                "FilterLogEvents",
                &self.config.log_group,
                || {
                    client
                        .filter_log_events()
                        .log_group_name(group.clone())
                        .set_log_stream_names(Some(names.clone()))
                        .start_time(from)
                        .end_time(end)
                        .set_next_token(tok.clone())
                        .send()
                },
            )
            .await?;
            for e in page.events() {
                let (Some(id), Some(ts)) = (e.event_id(), e.timestamp()) else {
                    continue;
                };
                if !self.seen.insert(id.to_owned()) {
                    continue;
                }
                self.seen_by_time.insert((ts, id.to_owned()));
                out.push(LogEvent {
                    event_id: id.to_owned(),
                    stream: e.log_stream_name().unwrap_or_default().to_owned(),
                    timestamp_ms: ts,
                    message: e.message().unwrap_or_default().to_owned(),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() && Some(t) != token.as_deref() => {
                    token = Some(t.to_owned())
                }
                _ => return Ok(()),
            }
        }
    }
}

/// One API call through the shared budget, retried per `policy`.
async fn call<T, E, F, Fut>(
    bucket: &TokenBucket,
    policy: &RetryPolicy,
    calls: &mut u64,
    outcomes: &mut CallOutcomes,
    operation: &'static str,
    log_group: &str,
    mut f: F,
) -> Result<T, ReadError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<T, SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>>,
    >,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut backoff = Backoff::new(policy.base, policy.cap);
    let mut last_reported: Option<ErrorClass> = None;
    // Whether a failure was logged: only then is "working again" worth a line.
    let mut warned = false;
    loop {
        bucket.acquire().await;
        *calls += 1;
        let err = match f().await {
            Ok(v) => {
                *outcomes.entry((operation, "ok")).or_default() += 1;
                if warned {
                    tracing::warn!("authwatch: {operation} on {log_group}: working again");
                }
                return Ok(v);
            }
            Err(e) => classify(&e),
        };
        *outcomes.entry((operation, outcome_of(&err))).or_default() += 1;
        let wait = if err.is_transient() {
            let d = backoff.next_delay();
            // Say so once a problem persists, not on every throttled call.
            if backoff.attempts() == 5 {
                warned = true;
                tracing::warn!(
                    "authwatch: {operation} on {log_group}: still failing after 5 attempts, retrying with backoff: {}",
                    err.detail()
                );
            }
            d
        } else {
            if !policy.forever {
                return Err(ReadError {
                    operation,
                    log_group: log_group.to_owned(),
                    class: err,
                });
            }
            let same_kind = last_reported
                .as_ref()
                .is_some_and(|l| std::mem::discriminant(l) == std::mem::discriminant(&err));
            if !same_kind {
                warned = true;
                tracing::warn!(
                    "authwatch: {operation} on {log_group}: {}; retrying every {}s",
                    explain(operation, log_group, &err),
                    policy.slow_retry.as_secs()
                );
            }
            policy.slow_retry
        };
        last_reported = Some(err);
        tokio::time::sleep(wait).await;
    }
}

/// An operator-facing sentence for a non-transient error: which permission or resource.
pub fn explain(operation: &str, log_group: &str, err: &ErrorClass) -> String {
    match err {
        ErrorClass::Unauthorized(d) => format!(
            "not authorized: the credentials need logs:{operation} on log group {log_group} ({d})"
        ),
        ErrorClass::NotFound(d) => format!("log group {log_group} does not exist ({d})"),
        ErrorClass::Permanent(d) | ErrorClass::Transient(d) => format!("request rejected: {d}"),
    }
}
