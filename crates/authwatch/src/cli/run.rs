//! `authwatch run`: follow CloudWatch Logs (polling), or a Kinesis subscription stream.

use std::path::PathBuf;
use std::process::ExitCode;

use super::parse::{micros_to_duration, parse_duration_arg, parse_http_addr, parse_start_at};
use super::rules::{load_rules, print_warnings};
use super::sink::{SinkArgs, Sinks};
use crate::sinks;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A YAML file of run's flags (`state-dir: /var/lib/authwatch`); every flag can also be
    /// set as AUTHWATCH_<FLAG>. Precedence: flags, then environment, then file, then defaults.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log group to follow, e.g. /aws/eks/prod/cluster (repeatable).
    #[arg(
        long = "log-group",
        value_name = "GROUP",
        required_unless_present_any = ["cluster", "kinesis_stream"]
    )]
    pub(crate) log_group: Vec<String>,
    /// EKS cluster name: follows /aws/eks/<NAME>/cluster (repeatable).
    #[arg(long = "cluster", value_name = "NAME")]
    pub(crate) cluster: Vec<String>,
    /// AWS region (default: the SDK's chain: AWS_REGION, profile, instance metadata).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Rule files or directories of *.yaml (repeatable; default: the bundled rules).
    #[arg(long = "rules", value_name = "PATH")]
    pub(crate) rules: Vec<PathBuf>,
    /// Append alert lines to FILE (the same as `--sink file:FILE`).
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// How far behind the newest position a poll re-reads, for late deliveries.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    pub(crate) lookback: i64,
    /// Re-read the whole look-back only this often, and 15 s on the polls in between (on AWS
    /// a busy group's look-back is many FilterLogEvents pages a poll). 0s: every poll.
    #[arg(long, default_value = "0s", value_parser = parse_duration_arg)]
    pub(crate) lookback_every: i64,
    /// Where the position and the delivered alert ids are kept.
    #[arg(long, default_value = "./authwatch-state")]
    pub(crate) state_dir: PathBuf,
    /// Without a saved position: `now`, an RFC 3339 time, or `-<duration>` (default: now minus
    /// the longest rule window).
    #[arg(long, value_name = "WHEN", value_parser = parse_start_at, allow_hyphen_values = true)]
    pub(crate) start_at: Option<crate::sources::StartAt>,
    /// What to do when the saved state is corrupt.
    #[arg(long, value_enum, default_value = "fail")]
    pub(crate) on_corrupt_state: crate::sources::cloudwatch::CorruptStatePolicy,
    /// CloudWatch Logs API calls per second, all log groups together.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) api_rate: f64,
    /// How long one CloudWatch Logs call may take before it is abandoned and retried with
    /// backoff (a hung connection must not stall reading).
    #[arg(long, default_value = "20s", value_parser = parse_duration_arg)]
    pub(crate) aws_timeout: i64,
    /// Time between polls once caught up.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    pub(crate) poll_interval: i64,
    /// How often audit streams are listed again.
    #[arg(long, default_value = "1m", value_parser = parse_duration_arg)]
    pub(crate) rediscover_interval: i64,
    /// How late (in event time) an event may arrive and still be counted in order; a match is
    /// held back this long before it can fire (late events are still counted in open windows).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub(crate) max_lateness: i64,
    /// Wait between retries after an authorization or missing-log-group error.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub(crate) slow_retry: i64,
    #[command(flatten)]
    pub(crate) sink: SinkArgs,
    /// Serve /healthz, /readyz and /metrics (Prometheus) here; `off` for none. Use
    /// 0.0.0.0:9180 in a container.
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub(crate) http_addr: String,
    /// Read the log group's subscription from this Kinesis stream (name or ARN) instead of
    /// polling CloudWatch Logs; several replicas share its shards (needs --match-stream).
    #[arg(long, value_name = "NAME|ARN")]
    pub(crate) kinesis_stream: Option<String>,
    /// The Kinesis stream between the match stage and the window stage (name or ARN):
    /// matches are routed by rule and key, so one replica owns each key's window.
    #[arg(long, value_name = "NAME|ARN", requires = "kinesis_stream")]
    pub(crate) match_stream: Option<String>,
    /// DynamoDB table of shard leases (created if missing; default authwatch-<kinesis stream
    /// name>); claimed and delivered alerts are kept beside it in TABLE-alerts.
    #[arg(long, value_name = "TABLE", requires = "kinesis_stream")]
    pub(crate) lease_table: Option<String>,
    /// Which stages this replica runs: `all`, `match` (source → match stream) or `window`
    /// (match stream → alerts).
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) role: crate::sources::kinesis::Role,
    /// A shard lease not renewed for this long is taken over by another replica.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub(crate) lease_timeout: i64,
    /// How far behind the newest match a window replica counts by itself while the source
    /// shards' low mark does not move (a source shard unread that long). A failover rebuilds
    /// windows from this much further back, so it is also the extra re-read of a takeover.
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
    pub(crate) low_mark_fallback: i64,
    /// This replica's name in the lease table (default: host name, process id and start time).
    #[arg(long, value_name = "ID")]
    pub(crate) replica_id: Option<String>,
}

pub fn run_live(mut args: RunArgs) -> ExitCode {
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
    let opts = crate::sources::cloudwatch::RunOptions {
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
    let result =
        crate::sources::cloudwatch::run(&opts, rules, &mut sinks::Fanout::new(sinks.all()));
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

pub(crate) const KINESIS_NEEDS_MATCH_STREAM: &str =
    "--kinesis-stream needs --match-stream (the stream between the match and window stages)";

/// `run --kinesis-stream`: the two-stage, multi-replica path (authwatch::sources::kinesis).
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
    let opts = crate::sources::kinesis::KinesisOptions {
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
        metrics: args.sink.metrics(args.region.clone()),
    };
    let result = crate::sources::kinesis::run(&opts, rules, &mut sinks::Fanout::new(sinks.all()));
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::super::config::ConfigCommand;
    use super::super::{Cli, Command};
    use crate::sources::StartAt;

    /// `--start-at` of `authwatch ARGS` (after the merge of `AUTHWATCH_*` from `env`).
    fn start_at(args: &[&str], env: &[(&str, &str)]) -> Option<StartAt> {
        use clap::CommandFactory as _;
        let argv: Vec<std::ffi::OsString> = std::iter::once("authwatch")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect();
        let root = Cli::command();
        let sub = match args[0] {
            "run" => root.find_subcommand("run"),
            _ => root
                .find_subcommand("config")
                .and_then(|c| c.find_subcommand("check")),
        };
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let (argv, _) =
            crate::config::expand(argv, sub.expect("subcommand"), &lookup).expect("expand");
        match Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Run(run) => run.start_at,
            Command::Config(ConfigCommand::Check(run)) => run.start_at,
            _ => panic!("not run or config check"),
        }
    }

    #[test]
    fn start_at_takes_a_negative_offset_as_its_own_word_or_after_an_equals_sign() {
        let ago = Some(StartAt::Ago(10 * 60 * 1000));
        for sub in [&["run"][..], &["config", "check"][..]] {
            let with = |rest: &[&str]| {
                let args: Vec<&str> = sub.iter().chain(rest).copied().collect();
                start_at(&args, &[])
            };
            assert_eq!(with(&["--log-group", "G", "--start-at", "-10m"]), ago);
            assert_eq!(with(&["--log-group", "G", "--start-at=-10m"]), ago);
            assert_eq!(with(&["--start-at", "-10m", "--log-group", "G"]), ago);
            assert_eq!(
                with(&["--log-group", "G", "--start-at", "-1h30m"]),
                Some(StartAt::Ago(90 * 60 * 1000))
            );
            assert_eq!(
                with(&["--log-group", "G", "--start-at", "now"]),
                Some(StartAt::Now)
            );
        }
    }

    #[test]
    fn start_at_from_the_environment_may_be_a_negative_offset() {
        // The merge puts `--start-at` and the value as two words.
        let env = [("AUTHWATCH_START_AT", "-10m")];
        assert_eq!(
            start_at(&["run", "--log-group", "G"], &env),
            Some(StartAt::Ago(10 * 60 * 1000))
        );
    }

    #[test]
    fn a_bad_start_at_is_still_a_usage_error() {
        for args in [
            &["authwatch", "run", "--log-group", "G", "--start-at", "-10x"][..],
            &[
                "authwatch",
                "run",
                "--log-group",
                "G",
                "--start-at",
                "--region",
            ][..],
        ] {
            let e = Cli::try_parse_from(args).err().expect("an error");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert_eq!(e.exit_code(), 2);
        }
    }
}
