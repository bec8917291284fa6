//! `authwatch replay`: exported files, standard input, or a CloudWatch Logs time range.

use std::path::PathBuf;
use std::process::ExitCode;

use super::parse::parse_duration_arg;
use super::rules::{load_rules, print_warnings};
use super::sink::SinkArgs;
use crate::replay::{replay, ReplayError, ReplayOptions};
use crate::sinks;
use crate::sources::files::FormatChoice;
use authwatch_event::time::parse_timestamp;

#[derive(clap::Args)]
pub struct ReplayArgs {
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
    /// Threads that decode and match (default: one per core, less one for gzip inputs, which
    /// are then inflated on threads of their own; 1 = decoding and matching on one thread).
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
    let opts = crate::sources::log_group_range::RangeOptions {
        log_groups: args.log_group,
        region: args.region.clone(),
        start_ms,
        end_ms,
        api_rate: args.api_rate,
        max_lateness: args.max_lateness,
        cluster: args.cluster,
        metrics: args.sink.metrics(args.region.clone()),
    };
    let result = crate::sources::log_group_range::replay_range(
        &opts,
        rules,
        &mut sinks::Fanout::new(sinks.all()),
    );
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

pub fn run_replay(args: ReplayArgs) -> ExitCode {
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
        threads: args.threads,
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

fn replay_exit(e: &ReplayError) -> u8 {
    e.exit_code()
}
