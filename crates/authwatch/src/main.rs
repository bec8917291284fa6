//! `authwatch`: alarm on piling-up 401/403 responses in Kubernetes audit logs.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use authwatch::generate::{GenFormat, GenOptions};
use authwatch::input::FormatChoice;
use authwatch::replay::{replay, ReplayError, ReplayOptions};
use authwatch::rule_files;
use authwatch::sinks::cloudwatch_metrics::{MetricsConfig, MetricsFormat};
use authwatch::sinks::json_lines::{JsonLinesSink, JsonLinesTarget};
use authwatch::sinks::sns::{SnsConfig, SnsNotifier};
use authwatch::sinks::spool::SpoolLimits;
use authwatch::sinks::{self, AlertSink};
use authwatch_event::time::parse_timestamp;
use authwatch_rules::rule::parse_duration;
use authwatch_rules::RuleKind;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "authwatch",
    version,
    about = "Alarm on piling-up 401/403 responses in Kubernetes (EKS) audit logs, and say which host, source IPs and user they come from."
)]
struct Cli {
    /// Log lines on stderr as `text` or `json` (one object per line, for log collectors);
    /// levels from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "AUTHWATCH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs through `tracing` on stderr; colours only on a terminal.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Replay exported audit logs (files, directories, `-` for stdin) through the rules.
    Replay(ReplayArgs),
    /// Replay the bundled sample export with the bundled rules (no AWS account needed).
    Demo,
    /// Where do denied requests come from: top offenders, timelines, drill-down (text, JSON,
    /// CSV, HTML).
    Investigate(authwatch::investigate::InvestigateArgs),
    /// A live terminal view of the top denied addresses, users and API servers, and alerts.
    Top(authwatch::investigate::top::TopArgs),
    /// Write a synthetic EKS audit data set with planted attacks.
    Generate(GenerateArgs),
    /// Follow EKS audit logs in CloudWatch Logs and alert as they arrive (runs until killed).
    Run(RunArgs),
    /// Check rule files, or run their tests.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Manage the CloudWatch alarms that go with the rules.
    #[command(subcommand)]
    Alarms(AlarmsCommand),
    /// Check a `run` configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a running authwatch's /healthz (or /readyz): exit 0 when it answers 200. For
    /// container health checks in images without a shell or curl.
    Healthcheck {
        /// Its HTTP address.
        #[arg(long, default_value = "127.0.0.1:9180")]
        addr: String,
        /// Ask /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate `run`'s settings (flags, AUTHWATCH_* variables, --config FILE) and print the
    /// effective configuration with where each value came from.
    Check(Box<RunArgs>),
}

#[derive(Subcommand)]
enum AlarmsCommand {
    /// Create or update one alarm per rule (on AlertsFired) and the alarm on a rise of
    /// DeniedRequests, each notifying the SNS topic. A second run changes nothing.
    Sync(AlarmsSyncArgs),
}

#[derive(clap::Args)]
struct AlarmsSyncArgs {
    /// Rule files or directories (default: the bundled set).
    #[arg(long = "rules", value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// The SNS topic the alarms notify.
    #[arg(long, value_name = "ARN")]
    sns_topic_arn: String,
    /// The cluster (the `Cluster` dimension `run` and `replay` put on metrics: the EKS
    /// cluster name from the log group, or `--cluster`).
    #[arg(long, default_value = "unknown")]
    cluster: String,
    /// The metrics namespace (as given to `--cloudwatch-namespace`).
    #[arg(long, default_value = "Authwatch")]
    namespace: String,
    /// Alarm name prefix; alarms are named `<prefix><cluster>-<rule>`.
    #[arg(long, default_value = "authwatch-")]
    prefix: String,
    /// Period of the per-rule alarms (10, 30, or a multiple of 60 seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    period: i64,
    /// The denied-requests alarm fires above this many 401/403 responses per --denied-period.
    #[arg(long, default_value_t = 50.0)]
    denied_threshold: f64,
    /// Period of the denied-requests alarm.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    denied_period: i64,
    /// Also an anomaly-detection alarm on DeniedRequests, with a band this many standard
    /// deviations wide (e.g. 2).
    #[arg(long, value_name = "STDDEVS")]
    anomaly_band: Option<f64>,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete alarms tagged as authwatch's for this cluster whose rule is gone (never
    /// others).
    #[arg(long)]
    prune: bool,
    /// AWS region (default: the SDK's chain).
    #[arg(long)]
    region: Option<String>,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate rules and list them (id, kind, keys, window, threshold), with warnings.
    Check {
        /// Rule files or directories (default: the bundled set).
        paths: Vec<PathBuf>,
    },
    /// Run the rules' `tests:`; prints PASS/FAIL per case, exits 1 on a failure.
    Test {
        /// Rule files or directories (default: the bundled set).
        paths: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Rule files or directories of *.yaml (repeatable; default: the bundled rules).
    #[arg(long = "rules", value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// Input framing: auto (by content), jsonl, cw-export, filter-log-events, subscription.
    #[arg(long, default_value = "auto", value_parser = FormatChoice::parse_arg)]
    format: FormatChoice,
    /// Append alert lines to FILE (the same as `--sink file:FILE`).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// How late (in event time) an event may arrive and still be counted in order.
    #[arg(long, default_value = "2m", value_parser = parse_duration_arg)]
    max_lateness: i64,
    /// Cluster name to put on alerts (default: from the log group, when the input has one).
    #[arg(long)]
    cluster: Option<String>,
    /// No progress bar (it is only ever shown on a terminal).
    #[arg(long)]
    no_progress: bool,
    /// No summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Decode every record, even those no rule can match (slower; every malformed field is
    /// then counted, not only malformed structure).
    #[arg(long)]
    no_prefilter: bool,
    /// Threads that decode and match (default: one per core; 1 = everything on one thread).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Files, directories (CloudWatch S3 export trees), or `-` for standard input.
    #[arg(required_unless_present = "log_group", value_name = "PATH")]
    inputs: Vec<PathBuf>,
    /// Read this CloudWatch Logs group over [--start, --end] instead of files (repeatable).
    #[arg(long = "log-group", value_name = "GROUP", conflicts_with = "inputs", requires_all = ["start", "end"])]
    log_group: Vec<String>,
    /// Start of the CloudWatch range (RFC 3339), with --log-group.
    #[arg(long, value_name = "TIME", requires = "log_group")]
    start: Option<String>,
    /// End of the CloudWatch range (RFC 3339), with --log-group.
    #[arg(long, value_name = "TIME", requires = "log_group")]
    end: Option<String>,
    /// AWS region for --log-group, SNS and CloudWatch (default: the SDK's chain, e.g.
    /// AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Where the SNS spool is kept (only used with --sns-topic-arn).
    #[arg(long, default_value = "./authwatch-state")]
    state_dir: PathBuf,
    #[command(flatten)]
    sink: SinkArgs,
    /// CloudWatch Logs calls per second for --log-group.
    #[arg(long, default_value_t = 2.0, requires = "log_group")]
    api_rate: f64,
}

/// Where alerts (and metrics) go; the same flags on `run` and `replay`.
#[derive(clap::Args)]
struct SinkArgs {
    /// Where alert lines go: `stdout`, `file:PATH` (appended), or `none`; repeatable
    /// (default: stdout).
    #[arg(long = "sink", value_name = "SINK", value_parser = parse_sink)]
    sinks: Vec<Option<JsonLinesTarget>>,
    /// Also publish each alert to this SNS topic (an ARN; a `.fifo` topic is FIFO). Alerts
    /// wait in a spool under --state-dir until SNS accepts them.
    #[arg(long, value_name = "ARN")]
    sns_topic_arn: Option<String>,
    /// Most notifications the SNS spool holds; more are dropped (counted and logged).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    sns_spool_max: usize,
    /// At the end of a replay, how long to wait for SNS to accept what is spooled.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg, value_name = "DURATION")]
    sns_drain_timeout: i64,
    /// Publish CloudWatch metrics in this namespace (default `Authwatch` when
    /// --metrics-format is given).
    #[arg(long, value_name = "NS")]
    cloudwatch_namespace: Option<String>,
    /// Time between metric publications.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg, value_name = "DURATION")]
    metrics_interval: i64,
    /// `api` (PutMetricData) or `emf` (Embedded Metric Format lines, no API calls).
    #[arg(long, value_enum, value_name = "FORMAT")]
    metrics_format: Option<MetricsFormat>,
    /// Where EMF lines go: a file (appended), or `-` for standard output (the default).
    #[arg(long, value_name = "PATH")]
    emf_output: Option<PathBuf>,
}

fn parse_sink(s: &str) -> Result<Option<JsonLinesTarget>, String> {
    match s {
        "stdout" | "-" => Ok(Some(JsonLinesTarget::Stdout)),
        "none" => Ok(None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(Some(JsonLinesTarget::File(PathBuf::from(p)))),
            _ => Err(format!(
                "`{s}` is not a sink: expected stdout, file:PATH or none (SNS and CloudWatch have their own flags: --sns-topic-arn, --cloudwatch-namespace)"
            )),
        },
    }
}

/// The sinks of one run.
struct Sinks {
    lines: Vec<JsonLinesSink>,
    sns: Option<SnsNotifier>,
}

impl Sinks {
    fn all(&mut self) -> Vec<&mut dyn AlertSink> {
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
    fn close(&mut self) -> Result<(), ExitCode> {
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
    fn open(
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
    fn metrics(&self, region: Option<String>) -> Option<MetricsConfig> {
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

#[derive(clap::Args)]
struct RunArgs {
    /// A YAML file of run's flags (`state-dir: /var/lib/authwatch`); every flag can also be
    /// set as AUTHWATCH_<FLAG>. Precedence: flags, then environment, then file, then defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log group to follow, e.g. /aws/eks/prod/cluster (repeatable).
    #[arg(
        long = "log-group",
        value_name = "GROUP",
        required_unless_present_any = ["cluster", "kinesis_stream"]
    )]
    log_group: Vec<String>,
    /// EKS cluster name: follows /aws/eks/<NAME>/cluster (repeatable).
    #[arg(long = "cluster", value_name = "NAME")]
    cluster: Vec<String>,
    /// AWS region (default: the SDK's chain: AWS_REGION, profile, instance metadata).
    #[arg(long)]
    region: Option<String>,
    /// Rule files or directories of *.yaml (repeatable; default: the bundled rules).
    #[arg(long = "rules", value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// Append alert lines to FILE (the same as `--sink file:FILE`).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// How far behind the newest position a poll re-reads, for late deliveries.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    lookback: i64,
    /// Re-read the whole look-back only this often, and 15 s on the polls in between (on AWS
    /// a busy group's look-back is many FilterLogEvents pages a poll). 0s: every poll.
    #[arg(long, default_value = "0s", value_parser = parse_duration_arg)]
    lookback_every: i64,
    /// Where the position and the delivered alert ids are kept.
    #[arg(long, default_value = "./authwatch-state")]
    state_dir: PathBuf,
    /// Without a saved position: `now`, an RFC 3339 time, or `-<duration>` (default: now minus
    /// the longest rule window).
    #[arg(long, value_name = "WHEN", value_parser = parse_start_at)]
    start_at: Option<authwatch::live::StartAt>,
    /// What to do when the saved state is corrupt.
    #[arg(long, value_enum, default_value = "fail")]
    on_corrupt_state: authwatch::live::CorruptStatePolicy,
    /// CloudWatch Logs API calls per second, all log groups together.
    #[arg(long, default_value_t = 2.0)]
    api_rate: f64,
    /// How long one CloudWatch Logs call may take before it is abandoned and retried with
    /// backoff (a hung connection must not stall reading).
    #[arg(long, default_value = "20s", value_parser = parse_duration_arg)]
    aws_timeout: i64,
    /// Time between polls once caught up.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    poll_interval: i64,
    /// How often audit streams are listed again.
    #[arg(long, default_value = "1m", value_parser = parse_duration_arg)]
    rediscover_interval: i64,
    /// How late (in event time) an event may arrive and still be counted in order; a match is
    /// held back this long before it can fire (late events are still counted in open windows).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    max_lateness: i64,
    /// Wait between retries after an authorization or missing-log-group error.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    slow_retry: i64,
    #[command(flatten)]
    sink: SinkArgs,
    /// Serve /healthz, /readyz and /metrics (Prometheus) here; `off` for none. Use
    /// 0.0.0.0:9180 in a container.
    #[arg(long, default_value = "127.0.0.1:9180")]
    http_addr: String,
    /// Read the log group's subscription from this Kinesis stream (name or ARN) instead of
    /// polling CloudWatch Logs; several replicas share its shards (needs --match-stream).
    #[arg(long, value_name = "NAME|ARN")]
    kinesis_stream: Option<String>,
    /// The Kinesis stream between the match stage and the window stage (name or ARN):
    /// matches are routed by rule and key, so one replica owns each key's window.
    #[arg(long, value_name = "NAME|ARN", requires = "kinesis_stream")]
    match_stream: Option<String>,
    /// DynamoDB table of shard leases (created if missing; default authwatch-<kinesis stream
    /// name>); claimed and delivered alerts are kept beside it in TABLE-alerts.
    #[arg(long, value_name = "TABLE", requires = "kinesis_stream")]
    lease_table: Option<String>,
    /// Which stages this replica runs: `all`, `match` (source → match stream) or `window`
    /// (match stream → alerts).
    #[arg(long, value_enum, default_value = "all")]
    role: authwatch::kinesis_run::Role,
    /// A shard lease not renewed for this long is taken over by another replica.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    lease_timeout: i64,
    /// How far behind the newest match a window replica counts by itself while the source
    /// shards' low mark does not move (a source shard unread that long). A failover rebuilds
    /// windows from this much further back, so it is also the extra re-read of a takeover.
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
    low_mark_fallback: i64,
    /// This replica's name in the lease table (default: host name, process id and start time).
    #[arg(long, value_name = "ID")]
    replica_id: Option<String>,
}

fn parse_http_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:9180 or `off`: {e}"))
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Output framing.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: GenFormat,
    /// Output file (jsonl, filter-log-events; `-` for stdout) or directory (cw-export).
    #[arg(long, short)]
    out: PathBuf,
    /// PRNG seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time of the first event (RFC 3339).
    #[arg(long, default_value = "2026-11-20T10:00:00Z")]
    start: String,
    /// Events per second of simulated time.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Number of API servers (log streams).
    #[arg(long, default_value_t = 3)]
    streams: usize,
}

fn parse_duration_arg(s: &str) -> Result<i64, String> {
    parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 30s, 2m, 1h"))
}

fn parse_start_at(s: &str) -> Result<authwatch::live::StartAt, String> {
    authwatch::live::StartAt::parse(s)
        .ok_or_else(|| format!("`{s}` is not `now`, an RFC 3339 time, or `-<duration>`"))
}

fn micros_to_duration(us: i64) -> std::time::Duration {
    std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The command line with `run`'s settings from `--config` and `AUTHWATCH_*` merged in (see
/// `authwatch::config`), and where each came from.
fn expanded_args() -> Result<
    (
        Vec<std::ffi::OsString>,
        std::collections::BTreeMap<String, authwatch::config::Origin>,
    ),
    authwatch::config::ConfigError,
> {
    use clap::CommandFactory;
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let word = |i: usize| raw.get(i).and_then(|a| a.to_str()).unwrap_or("");
    let root = Cli::command();
    let sub = match (word(1), word(2)) {
        ("run", _) => root.find_subcommand("run").cloned(),
        ("config", "check") => root
            .find_subcommand("config")
            .and_then(|c| c.find_subcommand("check"))
            .cloned(),
        _ => None,
    };
    match sub {
        Some(cmd) => authwatch::config::expand(raw, &cmd, &|k| std::env::var(k).ok()),
        None => Ok((raw, Default::default())),
    }
}

fn main() -> ExitCode {
    let (args, origins) = match expanded_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args.clone());
    init_logs(cli.log_format);
    if let Command::Config(ConfigCommand::Check(run)) = cli.command {
        return config_check(*run, &args, &origins);
    }
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Demo => run_demo(),
        Command::Investigate(args) => authwatch::investigate::main(args),
        Command::Top(args) => authwatch::investigate::top::main(args),
        Command::Run(args) => run_live(args),
        Command::Generate(args) => exit_on(run_generate(args)),
        Command::Rules(RulesCommand::Check { paths }) => rules_check(&paths),
        Command::Rules(RulesCommand::Test { paths }) => rules_test(&paths),
        Command::Alarms(AlarmsCommand::Sync(args)) => alarms_sync(args),
        Command::Config(_) => ExitCode::SUCCESS,
        Command::Healthcheck { addr, ready } => healthcheck(&addr, ready),
    }
}

fn healthcheck(addr: &str, ready: bool) -> ExitCode {
    use std::io::{Read, Write};
    let path = if ready { "/readyz" } else { "/healthz" };
    let answer = (|| -> std::io::Result<String> {
        let sock: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(3))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(t) if t.split_whitespace().nth(1) == Some("200") => ExitCode::SUCCESS,
        Ok(t) => {
            eprintln!("authwatch: {path}: {}", t.lines().last().unwrap_or(""));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("authwatch: {path} on {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `authwatch config check`: validates like `run` would at start-up (rules, addresses, ARNs)
/// and prints every setting with its origin; secrets (none of run's flags is one today) are
/// redacted.
fn config_check(
    run: RunArgs,
    args: &[std::ffi::OsString],
    origins: &std::collections::BTreeMap<String, authwatch::config::Origin>,
) -> ExitCode {
    use clap::CommandFactory;
    let rules = match load_rules(&run.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let warnings = print_warnings(&rules);
    if let Err(e) = parse_http_addr(&run.http_addr) {
        eprintln!("authwatch: --http-addr: {e}");
        return ExitCode::from(2);
    }
    if let Some(arn) = &run.sink.sns_topic_arn {
        if !arn.starts_with("arn:") {
            eprintln!("authwatch: --sns-topic-arn `{arn}` is not an ARN");
            return ExitCode::from(2);
        }
    }
    if run.kinesis_stream.is_some() && run.match_stream.is_none() {
        eprintln!("authwatch: {KINESIS_NEEDS_MATCH_STREAM}");
        return ExitCode::from(2);
    }
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(check) = matches
        .subcommand_matches("config")
        .and_then(|m| m.subcommand_matches("check"))
    else {
        return ExitCode::from(2);
    };
    let cmd = Cli::command();
    let Some(check_cmd) = cmd
        .find_subcommand("config")
        .and_then(|c| c.find_subcommand("check"))
    else {
        return ExitCode::from(2);
    };
    println!("# effective configuration of `authwatch run`");
    for arg in check_cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "config" {
            continue;
        }
        let id = arg.get_id().as_str();
        let values: Vec<String> = check
            .get_raw(id)
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let origin = match origins.get(long) {
            Some(o) => o.to_string(),
            None => match check.value_source(id) {
                Some(clap::parser::ValueSource::DefaultValue) => "default".into(),
                Some(_) => "flag".into(),
                None => "unset".into(),
            },
        };
        let shown = if authwatch::config::is_secret(long) && !values.is_empty() {
            "<redacted>".to_owned()
        } else if values.is_empty() {
            if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                "false".into()
            } else {
                "~".into()
            }
        } else if values.len() == 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            format!("{:?}", values[0])
        } else {
            format!("{values:?}")
        };
        println!("{long}: {shown}  # {origin}");
    }
    eprintln!(
        "authwatch: configuration valid; {} rule(s), {warnings} warning(s)",
        rules.len()
    );
    ExitCode::SUCCESS
}

fn period_secs(us: i64, what: &str) -> Result<i32, ExitCode> {
    let s = us / 1_000_000;
    if s == 10 || s == 30 || (s >= 60 && s % 60 == 0 && s <= 86_400) {
        Ok(s as i32)
    } else {
        eprintln!("authwatch: {what} must be 10s, 30s or a multiple of 60s up to 1d");
        Err(ExitCode::from(2))
    }
}

fn alarms_sync(args: AlarmsSyncArgs) -> ExitCode {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (rule_period, denied_period) = match (
        period_secs(args.period, "--period"),
        period_secs(args.denied_period, "--denied-period"),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let opts = authwatch::alarms::AlarmOptions {
        cluster: args.cluster,
        namespace: args.namespace,
        topic_arn: args.sns_topic_arn,
        prefix: args.prefix,
        rule_period,
        denied_threshold: args.denied_threshold,
        denied_period,
        anomaly_band: args.anomaly_band,
    };
    let desired = authwatch::alarms::plan(&rules, &opts);
    let rt = match authwatch::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let shared = authwatch_aws::sdk_config(&authwatch_aws::ClientConfig {
            region: args.region.clone(),
            attempt_timeout: None,
        })
        .await;
        let client = aws_sdk_cloudwatch::Client::new(&shared);
        let changes = authwatch::alarms::diff(&client, &desired, &opts, args.prune).await?;
        for c in &changes {
            println!("{}", c.describe());
        }
        let writes = changes.iter().filter(|c| c.writes()).count();
        if writes == 0 {
            println!("no change ({} alarms)", changes.len());
        } else if args.dry_run {
            println!("dry run: {writes} change(s) not applied");
        } else {
            authwatch::alarms::apply(&client, &changes, &opts).await?;
            println!("applied {writes} change(s)");
        }
        Ok::<(), authwatch::alarms::SyncError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: alarms sync: {e}");
            ExitCode::from(1)
        }
    }
}

/// Loads rules (the bundled set when `paths` is empty); a bad rule file is reported and is
/// exit status 2.
fn load_rules(paths: &[PathBuf]) -> Result<Vec<authwatch_rules::Rule>, ExitCode> {
    rule_files::load(paths).map_err(|e| {
        eprintln!("authwatch: {e}");
        ExitCode::from(2)
    })
}

/// Prints each rule's warnings (conditions that can never hold) on stderr; returns how many.
fn print_warnings(rules: &[authwatch_rules::Rule]) -> usize {
    let mut n = 0;
    for r in rules {
        for w in r.warnings() {
            n += 1;
            eprintln!("authwatch: warning: {}: rule `{}`: {w}", r.source, r.id);
        }
    }
    n
}

fn rules_check(paths: &[PathBuf]) -> ExitCode {
    let rules = match load_rules(paths) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!("id\tkind\tseverity\tgroup_by\twindow\tthreshold\ttests\tfile");
    for r in &rules {
        let threshold = match &r.kind {
            RuleKind::Threshold => format!("{} events", r.threshold),
            RuleKind::Distinct { name, .. } => format!("{} distinct {name}", r.threshold),
            RuleKind::Spike { baseline, ratio } => format!(
                "{ratio}x the rate of the previous {}s, at least {}",
                baseline / 1_000_000,
                r.threshold
            ),
        };
        println!(
            "{}\t{}\t{}\t[{}]\t{}s\t{}\t{}\t{}",
            r.id,
            r.kind.as_str(),
            r.severity,
            r.group_by
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.window / 1_000_000,
            threshold,
            r.tests.len(),
            r.source
        );
    }
    let warnings = print_warnings(&rules);
    eprintln!("{} rule(s) valid, {warnings} warning(s)", rules.len());
    ExitCode::SUCCESS
}

fn rules_test(paths: &[PathBuf]) -> ExitCode {
    let rules = match load_rules(paths) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (mut passed, mut failed) = (0, 0);
    for rule in &rules {
        if rule.tests.is_empty() {
            println!("NONE {}: no tests", rule.id);
        }
        let outcomes = authwatch_rules::run_tests(rule, &mut |rel| {
            rule_files::load_fixture(&rule.source, rel)
        });
        for o in outcomes {
            if o.passed {
                passed += 1;
                println!("PASS {}: {}", o.rule, o.case);
            } else {
                failed += 1;
                println!("FAIL {}: {}: {}", o.rule, o.case, o.detail);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn exit_on(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_live(mut args: RunArgs) -> ExitCode {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    print_warnings(&rules);
    if args.kinesis_stream.is_some() && args.match_stream.is_none() {
        eprintln!("authwatch: {KINESIS_NEEDS_MATCH_STREAM}");
        return ExitCode::from(2);
    }
    // At shutdown the SNS spool gets at most 5 s to drain (the rest stays spooled).
    args.sink.sns_drain_timeout = args.sink.sns_drain_timeout.min(5_000_000);
    let mut sinks = match args
        .sink
        .open(args.output.clone(), &args.state_dir, args.region.clone())
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(stream) = args.kinesis_stream.clone() {
        return run_kinesis(args, stream, rules, sinks);
    }
    let mut log_groups = args.log_group;
    log_groups.extend(args.cluster.iter().map(|c| format!("/aws/eks/{c}/cluster")));
    let opts = authwatch::live::RunOptions {
        log_groups,
        region: args.region.clone(),
        lookback_ms: args.lookback / 1000,
        lookback_every: micros_to_duration(args.lookback_every),
        state_dir: args.state_dir,
        start_at: args.start_at,
        on_corrupt: args.on_corrupt_state,
        api_rate: args.api_rate,
        aws_timeout: match args.aws_timeout {
            t if t >= 100_000 => micros_to_duration(t),
            _ => {
                eprintln!("authwatch: --aws-timeout must be at least 100ms");
                return ExitCode::from(2);
            }
        },
        poll_interval: micros_to_duration(args.poll_interval),
        rediscover_every: micros_to_duration(args.rediscover_interval),
        max_lateness: args.max_lateness,
        slow_retry: micros_to_duration(args.slow_retry),
        metrics: args.sink.metrics(args.region.clone()),
        http_addr: match parse_http_addr(&args.http_addr) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("authwatch: --http-addr: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let result = authwatch::live::run(&opts, rules, &mut sinks::Fanout::new(sinks.all()));
    match result {
        // Stopped by a signal: what SNS has not taken yet stays in the spool for the next
        // start (Kubernetes and ECS wait 30 s; we leave after at most 5 s of draining).
        Ok(()) => match sinks.close() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => {
                eprintln!("authwatch: the notifications above stay spooled and are sent by the next start");
                ExitCode::SUCCESS
            }
        },
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

const KINESIS_NEEDS_MATCH_STREAM: &str =
    "--kinesis-stream needs --match-stream (the stream between the match and window stages)";

/// `run --kinesis-stream`: the two-stage, multi-replica path (authwatch::kinesis_run).
fn run_kinesis(
    args: RunArgs,
    stream: String,
    rules: Vec<authwatch_rules::Rule>,
    mut sinks: Sinks,
) -> ExitCode {
    let Some(match_stream) = args.match_stream.clone() else {
        eprintln!("authwatch: {KINESIS_NEEDS_MATCH_STREAM}");
        return ExitCode::from(2);
    };
    let replica_id = args.replica_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "authwatch".into());
        // The pid alone is 1 in most containers: two replicas on one host name (host
        // networking, a reused name) must still not share an id, or each would take the
        // other's alert claims for its own. The start time in ns makes it unique.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}-{}-{nanos:09}", std::process::id())
    });
    let opts = authwatch::kinesis_run::KinesisOptions {
        source: stream,
        match_stream,
        lease_table: args.lease_table.clone(),
        role: args.role,
        lease_timeout: micros_to_duration(args.lease_timeout),
        replica_id,
        region: args.region.clone(),
        start_at: args.start_at,
        max_lateness: args.max_lateness,
        low_mark_fallback: args.low_mark_fallback,
        poll_interval: micros_to_duration(args.poll_interval),
        http_addr: match parse_http_addr(&args.http_addr) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("authwatch: --http-addr: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let result = authwatch::kinesis_run::run(&opts, rules, &mut sinks::Fanout::new(sinks.all()));
    let closed = sinks.close();
    match result {
        Ok(c) => {
            eprintln!(
                "authwatch run: {}",
                serde_json::to_string(&c).unwrap_or_default()
            );
            if closed.is_err() {
                eprintln!("authwatch: the notifications above stay spooled and are sent by the next start");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(1)
        }
    }
}

fn replay_log_groups(args: ReplayArgs, rules: Vec<authwatch_rules::Rule>) -> ExitCode {
    let parse = |name: &str, v: &Option<String>| {
        v.as_deref()
            .and_then(parse_timestamp)
            .map(|us| us.div_euclid(1000))
            .ok_or_else(|| format!("--{name} must be an RFC 3339 time"))
    };
    let (start_ms, end_ms) = match (parse("start", &args.start), parse("end", &args.end)) {
        (Ok(s), Ok(e)) if s <= e => (s, e),
        (Ok(_), Ok(_)) => {
            eprintln!("authwatch: --start is after --end");
            return ExitCode::from(2);
        }
        (Err(m), _) | (_, Err(m)) => {
            eprintln!("authwatch: {m}");
            return ExitCode::from(2);
        }
    };
    let mut sinks = match args
        .sink
        .open(args.output.clone(), &args.state_dir, args.region.clone())
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let opts = authwatch::live::RangeOptions {
        log_groups: args.log_group,
        region: args.region.clone(),
        start_ms,
        end_ms,
        api_rate: args.api_rate,
        max_lateness: args.max_lateness,
        cluster: args.cluster,
        metrics: args.sink.metrics(args.region.clone()),
    };
    let result = authwatch::live::replay_range(&opts, rules, &mut sinks::Fanout::new(sinks.all()));
    match result {
        Ok(c) => {
            if let Err(code) = sinks.close() {
                return code;
            }
            if !args.quiet {
                eprintln!(
                    "authwatch: {} records, {} events, {} parse errors, {} alerts",
                    c.records, c.events_parsed, c.parse_errors, c.alerts
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_replay(args: ReplayArgs) -> ExitCode {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    print_warnings(&rules);
    if !args.log_group.is_empty() {
        return replay_log_groups(args, rules);
    }
    let mut sinks = match args
        .sink
        .open(args.output.clone(), &args.state_dir, args.region.clone())
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let opts = ReplayOptions {
        inputs: args.inputs,
        format: args.format,
        max_lateness: args.max_lateness,
        cluster: args.cluster,
        progress: !args.no_progress && !args.quiet,
        prefilter: !args.no_prefilter,
        threads: threads_or_cores(args.threads),
        metrics: args.sink.metrics(args.region.clone()),
    };
    let result = replay(&opts, rules, sinks.all());
    match result {
        Ok(summary) => {
            if let Err(code) = sinks.close() {
                return code;
            }
            if !args.quiet {
                eprint!("{}", summary.to_text());
            }
            if let Some(path) = args.summary_json {
                let written = serde_json::to_vec_pretty(&summary)
                    .map_err(std::io::Error::other)
                    .and_then(|json| std::fs::write(&path, json));
                if let Err(e) = written {
                    eprintln!("authwatch: writing {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(replay_exit(&e))
        }
    }
}

fn threads_or_cores(n: usize) -> usize {
    if n > 0 {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn replay_exit(e: &ReplayError) -> u8 {
    e.exit_code()
}

fn run_demo() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("authwatch: creating a temporary directory: {e}");
            return ExitCode::from(1);
        }
    };
    let root = match authwatch::demo::unpack(dir.path()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: unpacking the demo sample: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("authwatch demo: replaying the bundled sample (a CloudWatch S3 export of 3 API servers) with the bundled rules\n");
    let rules = match load_rules(&[]) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut sink = match JsonLinesSink::open(&JsonLinesTarget::Stdout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = ReplayOptions {
        inputs: vec![root],
        format: FormatChoice::Auto,
        max_lateness: 120_000_000,
        cluster: Some("demo".into()),
        progress: false,
        prefilter: true,
        threads: 1,
        metrics: None,
    };
    match replay(&opts, rules, vec![&mut sink]) {
        Ok(summary) => {
            let _ = std::io::stdout().flush();
            eprint!("\n{}", summary.to_text());
            eprintln!("\nNext: `authwatch replay <your export dir or file>`; see README.md for every format.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let start = parse_timestamp(&args.start)
        .with_context(|| format!("--start `{}` is not an RFC 3339 time", args.start))?;
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    let opts = GenOptions {
        events: args.events,
        seed: args.seed,
        start,
        rate: args.rate,
        streams: args.streams,
    };
    authwatch::generate::write(&opts, args.format, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))
}
