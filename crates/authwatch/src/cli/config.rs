//! `authwatch config check`, and the command line with `run`'s settings from `--config` and
//! `AUTHWATCH_*` merged in.

use std::process::ExitCode;

use clap::Subcommand;

use super::parse::parse_http_addr;
use super::rules::{load_rules, print_warnings};
use super::run::{RunArgs, KINESIS_NEEDS_MATCH_STREAM};
use super::Cli;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate `run`'s settings (flags, AUTHWATCH_* variables, --config FILE) and print the
    /// effective configuration with where each value came from.
    Check(Box<RunArgs>),
}

/// The command line with `run`'s settings from `--config` and `AUTHWATCH_*` merged in (see
/// `authwatch::config`), and where each came from.
pub fn expanded_args() -> Result<
    (
        Vec<std::ffi::OsString>,
        std::collections::BTreeMap<String, crate::config::Origin>,
    ),
    crate::config::ConfigError,
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
        Some(cmd) => crate::config::expand(raw, &cmd, &|k| std::env::var(k).ok()),
        None => Ok((raw, Default::default())),
    }
}

/// `authwatch config check`: validates like `run` would at start-up (rules, addresses, ARNs)
/// and prints every setting with its origin; secrets (none of run's flags is one today) are
/// redacted.
pub fn config_check(
    run: RunArgs,
    args: &[std::ffi::OsString],
    origins: &std::collections::BTreeMap<String, crate::config::Origin>,
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
        let shown = if crate::config::is_secret(long) && !values.is_empty() {
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
