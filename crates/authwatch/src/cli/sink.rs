//! `--sink`, `--sns-topic-arn` and the metrics flags, shared by `run` and `replay`, and the
//! sinks they open.

use std::path::PathBuf;
use std::process::ExitCode;

use super::parse::{micros_to_duration, parse_duration_arg, parse_sink};
use crate::sinks::json_lines::{JsonLinesSink, JsonLinesTarget};
use crate::sinks::sns::{SnsConfig, SnsNotifier};
use crate::sinks::spool::SpoolLimits;
use crate::sinks::AlertSink;
use crate::telemetry::cloudwatch_metrics::{MetricsConfig, MetricsFormat};

/// Where alerts (and metrics) go; the same flags on `run` and `replay`.
#[derive(clap::Args)]
pub struct SinkArgs {
    /// Where alert lines go: `stdout`, `file:PATH` (appended), or `none`; repeatable
    /// (default: stdout).
    #[arg(long = "sink", value_name = "SINK", value_parser = parse_sink)]
    pub(crate) sinks: Vec<Option<JsonLinesTarget>>,
    /// Also publish each alert to this SNS topic (an ARN; a `.fifo` topic is FIFO). Alerts
    /// wait in a spool under --state-dir until SNS accepts them.
    #[arg(long, value_name = "ARN")]
    pub(crate) sns_topic_arn: Option<String>,
    /// Most notifications the SNS spool holds; more are dropped (counted and logged).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub(crate) sns_spool_max: usize,
    /// At the end of a replay, how long to wait for SNS to accept what is spooled.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub(crate) sns_drain_timeout: i64,
    /// Publish CloudWatch metrics in this namespace (default `Authwatch` when
    /// --metrics-format is given).
    #[arg(long, value_name = "NS")]
    pub(crate) cloudwatch_namespace: Option<String>,
    /// Time between metric publications.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub(crate) metrics_interval: i64,
    /// `api` (PutMetricData) or `emf` (Embedded Metric Format lines, no API calls).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) metrics_format: Option<MetricsFormat>,
    /// Where EMF lines go: a file (appended), or `-` for standard output (the default).
    #[arg(long, value_name = "PATH")]
    pub(crate) emf_output: Option<PathBuf>,
}

/// The sinks of one run.
pub(crate) struct Sinks {
    pub(crate) lines: Vec<JsonLinesSink>,
    pub(crate) sns: Option<SnsNotifier>,
}

impl Sinks {
    pub(crate) fn all(&mut self) -> Vec<&mut dyn AlertSink> {
        let mut v: Vec<&mut dyn AlertSink> = Vec::new();
        for s in &mut self.lines {
            v.push(s);
        }
        if let Some(s) = &mut self.sns {
            v.push(s);
        }
        v
    }

    /// Closes every sink (SNS waits for its spool to drain); reports failures.
    pub(crate) fn close(&mut self) -> Result<(), ExitCode> {
        let mut ok = true;
        for s in self.all() {
            if let Err(e) = s.close() {
                eprintln!("authwatch: {}: {e}", s.name());
                ok = false;
            }
        }
        if ok {
            Ok(())
        } else {
            Err(ExitCode::from(1))
        }
    }
}

impl SinkArgs {
    /// Opens the alert sinks. `output` is the older `--output FILE`, a `file:` sink.
    pub(crate) fn open(
        &self,
        output: Option<PathBuf>,
        state_dir: &std::path::Path,
        region: Option<String>,
    ) -> Result<Sinks, ExitCode> {
        let mut targets: Vec<JsonLinesTarget> = self.sinks.iter().flatten().cloned().collect();
        targets.extend(output.map(JsonLinesTarget::File));
        if self.sinks.is_empty() && targets.is_empty() {
            targets.push(JsonLinesTarget::Stdout);
        }
        let mut lines = Vec::new();
        for t in &targets {
            lines.push(JsonLinesSink::open(t).map_err(|e| {
                eprintln!("authwatch: opening {t:?}: {e}");
                ExitCode::from(1)
            })?);
        }
        let sns = match &self.sns_topic_arn {
            None => None,
            Some(arn) => {
                if !arn.starts_with("arn:") {
                    eprintln!("authwatch: --sns-topic-arn `{arn}` is not an ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)");
                    return Err(ExitCode::from(2));
                }
                let config = SnsConfig {
                    topic_arn: arn.clone(),
                    spool_dir: state_dir.join("spool").join("sns"),
                    spool_limits: SpoolLimits {
                        max_messages: self.sns_spool_max.max(1),
                        ..SpoolLimits::default()
                    },
                    region,
                    drain_timeout: micros_to_duration(self.sns_drain_timeout),
                };
                Some(SnsNotifier::start(config).map_err(|e| {
                    eprintln!(
                        "authwatch: starting the SNS sink (spool in {}): {e}",
                        state_dir.display()
                    );
                    ExitCode::from(1)
                })?)
            }
        };
        Ok(Sinks { lines, sns })
    }

    /// The metrics configuration, when metrics were asked for.
    pub(crate) fn metrics(&self, region: Option<String>) -> Option<MetricsConfig> {
        if self.cloudwatch_namespace.is_none() && self.metrics_format.is_none() {
            return None;
        }
        Some(MetricsConfig {
            namespace: self
                .cloudwatch_namespace
                .clone()
                .unwrap_or_else(|| "Authwatch".into()),
            interval: micros_to_duration(self.metrics_interval)
                .max(std::time::Duration::from_secs(1)),
            format: self.metrics_format.unwrap_or(MetricsFormat::Api),
            emf_output: match &self.emf_output {
                Some(p) if p.as_os_str() != "-" => JsonLinesTarget::File(p.clone()),
                _ => JsonLinesTarget::Stdout,
            },
            region,
        })
    }
}
