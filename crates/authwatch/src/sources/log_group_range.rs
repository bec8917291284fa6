//! `authwatch replay --log-group` and `investigate --log-group`: the live CloudWatch Logs
//! reader over a closed time range, read once.

use std::sync::Arc;
use std::time::Duration;

use authwatch_aws::{
    build_client, ClientConfig, LogGroupReader, ReaderConfig, RetryPolicy, TokenBucket,
};
use authwatch_event::{Micros, RawRecord};
use authwatch_rules::{Engine, EngineConfig, Rule};

use super::cloudwatch::LiveError;
use super::files::Location;
use super::{default_cluster, AUDIT_STREAM_PREFIX};
use crate::pipeline::Pipeline;
use crate::sinks::AlertSink;
use crate::telemetry::cloudwatch_metrics::{MetricsConfig, MetricsPublisher};

/// What `authwatch replay --log-group` was asked to do.
#[derive(Debug, Clone)]
pub struct RangeOptions {
    /// Log groups to read.
    pub log_groups: Vec<String>,
    /// `--region`.
    pub region: Option<String>,
    /// Range start, ms (inclusive).
    pub start_ms: i64,
    /// Range end, ms (inclusive).
    pub end_ms: i64,
    /// `--api-rate`.
    pub api_rate: f64,
    /// `--max-lateness` (µs).
    pub max_lateness: Micros,
    /// `--cluster` for alerts (default: from the log group).
    pub cluster: Option<String>,
    /// Publish CloudWatch metrics.
    pub metrics: Option<MetricsConfig>,
}

/// Reads `[start, end]` of each log group once, with the live reader, and finishes the
/// engine. API errors other than throttling, 5xx and connection failures end it.
pub fn replay_range(
    opts: &RangeOptions,
    rules: Vec<Rule>,
    sink: &mut dyn AlertSink,
) -> Result<crate::pipeline::Counters, LiveError> {
    let engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: opts.max_lateness,
            cluster: opts.cluster.clone(),
            ..EngineConfig::default()
        },
    );
    let mut pipeline = Pipeline::new(engine, vec![sink], false);
    if let Some(config) = &opts.metrics {
        pipeline = pipeline.with_metrics(
            MetricsPublisher::start(config.clone())?,
            default_cluster(opts.cluster.as_deref(), &opts.log_groups),
        );
    }
    for_each_range_record(
        &opts.log_groups,
        opts.region.clone(),
        (opts.start_ms, opts.end_ms),
        opts.api_rate,
        &mut |record, loc| pipeline.on_record(Ok(record), loc),
    )?;
    pipeline.finish()?;
    Ok(pipeline.counters().clone())
}

/// Calls `f` with every audit record of `log_groups` over `[start_ms, end_ms]`, read once
/// with the live reader (same streams, same passes; API errors other than throttling, 5xx
/// and connection failures end it). `replay --log-group` and `investigate --log-group`.
pub fn for_each_range_record(
    log_groups: &[String],
    region: Option<String>,
    (start_ms, end_ms): (i64, i64),
    api_rate: f64,
    f: &mut dyn FnMut(RawRecord<'_>, Location<'_>) -> std::io::Result<()>,
) -> Result<(), LiveError> {
    crate::runtime()?.block_on(async {
        let client = build_client(&ClientConfig {
            region,
            attempt_timeout: None,
        })
        .await;
        let bucket = Arc::new(TokenBucket::new(api_rate, api_rate.max(1.0)));
        let mut index = 0u64;
        for g in log_groups {
            let config = ReaderConfig {
                log_group: g.clone(),
                stream_prefix: AUDIT_STREAM_PREFIX.into(),
                lookback_ms: 0,
                full_lookback_every: Duration::ZERO,
                rediscover_every: Duration::MAX,
                max_pass_span_ms: 5 * 60 * 1000,
                retry: RetryPolicy {
                    forever: false,
                    ..RetryPolicy::default()
                },
            };
            let mut reader =
                LogGroupReader::new(client.clone(), bucket.clone(), config, start_ms, start_ms);
            loop {
                let pass = reader.pass(end_ms).await?;
                for ev in &pass.events {
                    index += 1;
                    let record = RawRecord {
                        message: ev.message.as_bytes(),
                        stream: Some(&ev.stream),
                        log_group: Some(g),
                        cw_timestamp: Some(ev.timestamp_ms.saturating_mul(1000)),
                        event_id: Some(&ev.event_id),
                    };
                    f(
                        record,
                        Location {
                            name: g,
                            index,
                            is_line: false,
                        },
                    )?;
                }
                if reader.position_ms() >= end_ms {
                    break;
                }
            }
        }
        Ok(())
    })
}
