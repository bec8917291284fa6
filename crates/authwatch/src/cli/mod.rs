//! The command line: clap's structs, one file per command beside the function that runs it.
//!
//! `main.rs` is the front door: it parses [`Cli`], sets up logging and dispatches to the
//! runners here, which report on stderr and return the exit status.

pub mod alarms;
pub mod config;
pub mod demo;
pub mod generate;
pub mod healthcheck;
pub mod parse;
pub mod replay;
pub mod rules;
pub mod run;
pub mod sink;

use clap::{Parser, Subcommand};

use self::alarms::AlarmsCommand;
use self::config::ConfigCommand;
use self::generate::GenerateArgs;
use self::replay::ReplayArgs;
use self::rules::RulesCommand;
use self::run::RunArgs;

/// `--version`: also which inflater this build reads gzip files with (the `isal` feature).
#[cfg(feature = "isal")]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (gzip files inflated by Intel's ISA-L: the isal feature)"
);
#[cfg(not(feature = "isal"))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (gzip files inflated by zlib-rs; build with --features isal for ISA-L)"
);

#[derive(Parser)]
#[command(
    name = "authwatch",
    version,
    long_version = LONG_VERSION,
    about = "Alarm on piling-up 401/403 responses in Kubernetes (EKS) audit logs, and say which host, source IPs and user they come from."
)]
pub struct Cli {
    /// Log lines on stderr as `text` or `json` (one object per line, for log collectors);
    /// levels from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "AUTHWATCH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Replay exported audit logs (files, directories, `-` for stdin) through the rules.
    Replay(ReplayArgs),
    /// Replay the bundled sample export with the bundled rules (no AWS account needed).
    Demo,
    /// Where do denied requests come from: top offenders, timelines, drill-down (text, JSON,
    /// CSV, HTML).
    Investigate(crate::investigate::InvestigateArgs),
    /// A live terminal view of the top denied addresses, users and API servers, and alerts.
    Top(crate::investigate::top::TopArgs),
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
