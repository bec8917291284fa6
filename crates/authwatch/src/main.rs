//! `authwatch`: alarm on piling-up 401/403 responses in Kubernetes audit logs.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use authwatch::generate::{GenFormat, GenOptions};
use authwatch::input::FormatChoice;
use authwatch::replay::{replay, ReplayError, ReplayOptions};
use authwatch::rule_files;
use authwatch::sinks::json_lines::{JsonLinesSink, JsonLinesTarget};
use authwatch::sinks::AlertSink;
use authwatch_event::framing::Format;
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
    #[command(subcommand)]
    command: Command,
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
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: FormatChoice,
    /// Append alert lines to FILE instead of writing them to stdout.
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
    /// AWS region for --log-group (default: the SDK's chain, e.g. AWS_REGION).
    #[arg(long, requires = "log_group")]
    region: Option<String>,
    /// CloudWatch Logs calls per second for --log-group.
    #[arg(long, default_value_t = 2.0, requires = "log_group")]
    api_rate: f64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Log group to follow, e.g. /aws/eks/prod/cluster (repeatable).
    #[arg(
        long = "log-group",
        value_name = "GROUP",
        required_unless_present = "cluster"
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
    /// Append alert lines to FILE instead of writing them to stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// How far behind the newest position each poll re-reads, for late deliveries.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    lookback: i64,
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

fn parse_format(s: &str) -> Result<FormatChoice, String> {
    if s == "auto" {
        return Ok(FormatChoice::Auto);
    }
    s.parse::<Format>().map(FormatChoice::Fixed).map_err(|e| {
        format!("{e} (expected auto, jsonl, cw-export, filter-log-events, subscription)")
    })
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Demo => run_demo(),
        Command::Investigate(args) => authwatch::investigate::main(args),
        Command::Top(args) => authwatch::investigate::top::main(args),
        Command::Run(args) => run_live(args),
        Command::Generate(args) => exit_on(run_generate(args)),
        Command::Rules(RulesCommand::Check { paths }) => rules_check(&paths),
        Command::Rules(RulesCommand::Test { paths }) => rules_test(&paths),
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

fn open_alert_sink(output: Option<PathBuf>) -> Result<JsonLinesSink, ExitCode> {
    let target = output.map_or(JsonLinesTarget::Stdout, JsonLinesTarget::File);
    JsonLinesSink::open(&target).map_err(|e| {
        eprintln!("authwatch: opening {target:?}: {e}");
        ExitCode::from(1)
    })
}

fn run_live(args: RunArgs) -> ExitCode {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    print_warnings(&rules);
    let mut sink = match open_alert_sink(args.output) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut log_groups = args.log_group;
    log_groups.extend(args.cluster.iter().map(|c| format!("/aws/eks/{c}/cluster")));
    let opts = authwatch::live::RunOptions {
        log_groups,
        region: args.region,
        lookback_ms: args.lookback / 1000,
        state_dir: args.state_dir,
        start_at: args.start_at,
        on_corrupt: args.on_corrupt_state,
        api_rate: args.api_rate,
        poll_interval: micros_to_duration(args.poll_interval),
        rediscover_every: micros_to_duration(args.rediscover_interval),
        max_lateness: args.max_lateness,
        slow_retry: micros_to_duration(args.slow_retry),
    };
    match authwatch::live::run(&opts, rules, &mut sink) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(e.exit_code())
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
    let mut sink = match open_alert_sink(args.output) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let opts = authwatch::live::RangeOptions {
        log_groups: args.log_group,
        region: args.region,
        start_ms,
        end_ms,
        api_rate: args.api_rate,
        max_lateness: args.max_lateness,
        cluster: args.cluster,
    };
    match authwatch::live::replay_range(&opts, rules, &mut sink) {
        Ok(c) => {
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
    let target = args
        .output
        .clone()
        .map_or(JsonLinesTarget::Stdout, JsonLinesTarget::File);
    let mut sink = match JsonLinesSink::open(&target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("authwatch: opening {target:?}: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = ReplayOptions {
        inputs: args.inputs,
        format: args.format,
        max_lateness: args.max_lateness,
        cluster: args.cluster,
        progress: !args.no_progress && !args.quiet,
        prefilter: !args.no_prefilter,
        threads: threads_or_cores(args.threads),
    };
    let sinks: Vec<&mut dyn AlertSink> = vec![&mut sink];
    match replay(&opts, rules, sinks) {
        Ok(summary) => {
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
