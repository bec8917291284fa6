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
    /// Write a synthetic EKS audit data set with planted attacks.
    Generate(GenerateArgs),
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
    #[arg(required = true, value_name = "PATH")]
    inputs: Vec<PathBuf>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Demo => run_demo(),
        Command::Generate(args) => exit_on(run_generate(args)),
        Command::Rules(RulesCommand::Check { paths }) => rules_check(&paths),
        Command::Rules(RulesCommand::Test { paths }) => rules_test(&paths),
    }
}

fn rules_check(paths: &[PathBuf]) -> ExitCode {
    let rules = match rule_files::load(paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(2);
        }
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
    let mut warnings = 0;
    for r in &rules {
        for w in r.warnings() {
            warnings += 1;
            eprintln!("warning: {}: rule `{}`: {w}", r.source, r.id);
        }
    }
    eprintln!("{} rule(s) valid, {warnings} warning(s)", rules.len());
    ExitCode::SUCCESS
}

fn rules_test(paths: &[PathBuf]) -> ExitCode {
    let rules = match rule_files::load(paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(2);
        }
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

fn run_replay(args: ReplayArgs) -> ExitCode {
    let rules = match rule_files::load(&args.rules) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(2);
        }
    };
    for r in &rules {
        for w in r.warnings() {
            eprintln!("authwatch: warning: {}: rule `{}`: {w}", r.source, r.id);
        }
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
    let rules = match rule_files::load(&[]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(2);
        }
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
