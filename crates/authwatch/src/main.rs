//! `authwatch`: alarm on piling-up 401/403 responses in Kubernetes audit logs.
//!
//! The front door: the command line's structs and the commands' runners are in
//! `authwatch::cli`; here it is parsed, logging set up, and the command dispatched.

use std::process::ExitCode;

use authwatch::cli::alarms::{alarms_sync, AlarmsCommand};
use authwatch::cli::config::{config_check, expanded_args, ConfigCommand};
use authwatch::cli::rules::{rules_check, rules_test, RulesCommand};
use authwatch::cli::{demo, generate, healthcheck, replay, run, Cli, Command, LogFormat};
use clap::Parser;

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

fn exit_on(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: {e:#}");
            ExitCode::from(1)
        }
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
        Command::Replay(args) => replay::run_replay(args),
        Command::Demo => demo::run_demo(),
        Command::Investigate(args) => authwatch::investigate::main(args),
        Command::Top(args) => authwatch::investigate::top::main(args),
        Command::Run(args) => run::run_live(args),
        Command::Generate(args) => exit_on(generate::run_generate(args)),
        Command::Rules(RulesCommand::Check { paths }) => rules_check(&paths),
        Command::Rules(RulesCommand::Test { paths }) => rules_test(&paths),
        Command::Alarms(AlarmsCommand::Sync(args)) => alarms_sync(args),
        Command::Config(_) => ExitCode::SUCCESS,
        Command::Healthcheck { addr, ready } => healthcheck::healthcheck(&addr, ready),
    }
}
