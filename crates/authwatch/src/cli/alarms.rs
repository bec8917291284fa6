//! `authwatch alarms sync`: the CloudWatch alarms that go with the rules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::parse::parse_duration_arg;
use super::rules::load_rules;

#[derive(Subcommand)]
pub enum AlarmsCommand {
    /// Create or update one alarm per rule (on AlertsFired) and the alarm on a rise of
    /// DeniedRequests, each notifying the SNS topic. A second run changes nothing.
    Sync(AlarmsSyncArgs),
}

#[derive(clap::Args)]
pub struct AlarmsSyncArgs {
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

fn period_secs(us: i64, what: &str) -> Result<i32, ExitCode> {
    let s = us / 1_000_000;
    if s == 10 || s == 30 || (s >= 60 && s % 60 == 0 && s <= 86_400) {
        Ok(s as i32)
    } else {
        eprintln!("authwatch: {what} must be 10s, 30s or a multiple of 60s up to 1d");
        Err(ExitCode::from(2))
    }
}

pub fn alarms_sync(args: AlarmsSyncArgs) -> ExitCode {
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
    let opts = crate::alarms::AlarmOptions {
        cluster: args.cluster,
        namespace: args.namespace,
        topic_arn: args.sns_topic_arn,
        prefix: args.prefix,
        rule_period,
        denied_threshold: args.denied_threshold,
        denied_period,
        anomaly_band: args.anomaly_band,
    };
    let desired = crate::alarms::plan(&rules, &opts);
    let rt = match crate::runtime() {
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
        let changes = crate::alarms::diff(&client, &desired, &opts, args.prune).await?;
        for c in &changes {
            println!("{}", c.describe());
        }
        let writes = changes.iter().filter(|c| c.writes()).count();
        if writes == 0 {
            println!("no change ({} alarms)", changes.len());
        } else if args.dry_run {
            println!("dry run: {writes} change(s) not applied");
        } else {
            crate::alarms::apply(&client, &changes, &opts).await?;
            println!("applied {writes} change(s)");
        }
        Ok::<(), crate::alarms::SyncError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: alarms sync: {e}");
            ExitCode::from(1)
        }
    }
}
