//! `authwatch run --config FILE`: a YAML file and `AUTHWATCH_*` environment variables as
//! sources of `run`'s flags.
//!
//! Every key of the file is a flag of `run`, spelled as the flag without its dashes
//! (`state-dir: /var/lib/authwatch`; `state_dir` is accepted too), and every flag can also
//! come from the environment as `AUTHWATCH_<FLAG>` (`AUTHWATCH_STATE_DIR`). Precedence, from
//! strongest: flags on the command line, then the environment, then the file, then the
//! built-in defaults. A list (`log-group: [a, b]`, or in the environment `a,b`) gives a
//! repeatable flag several values. Unknown keys are errors naming the key.
//!
//! The merge happens on the argument list before clap parses it, so a value from the file
//! or the environment is checked exactly like the same flag typed by hand.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line.
    Flag,
    /// An `AUTHWATCH_*` variable.
    Env(String),
    /// The config file.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => write!(f, "flag"),
            Origin::Env(v) => write!(f, "environment {v}"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A config file or variable that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML or not a mapping.
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A key that is not a flag.
    #[error("config {path}: unknown key `{key}` (keys are run's flags without dashes: {known})")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The keys there are.
        known: String,
    },
    /// A value of the wrong shape.
    #[error("config {path}: key `{key}`: {detail}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// One flag of `run` that a file or the environment may set.
#[derive(Debug, Clone)]
struct FlagInfo {
    long: String,
    repeatable: bool,
    switch: bool,
}

fn flags_of(cmd: &clap::Command) -> Vec<FlagInfo> {
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_owned();
            if long == "config" || long == "help" || long == "version" {
                return None;
            }
            Some(FlagInfo {
                long,
                repeatable: matches!(a.get_action(), ArgAction::Append),
                switch: matches!(a.get_action(), ArgAction::SetTrue),
            })
        })
        .collect()
}

/// `AUTHWATCH_STATE_DIR` for `state-dir`.
pub fn env_name(long: &str) -> String {
    format!("AUTHWATCH_{}", long.replace('-', "_").to_ascii_uppercase())
}

fn given_on_command_line(args: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_eq = format!("--{long}=");
    args.iter().any(|a| {
        a.to_str()
            .is_some_and(|s| s == flag || s.starts_with(&with_eq))
    })
}

fn yaml_scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads a config file into flag → values.
fn read_file(
    path: &Path,
    flags: &[FlagInfo],
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    let map = match doc {
        serde_norway::Value::Mapping(m) => m,
        serde_norway::Value::Null => return Ok(BTreeMap::new()),
        _ => {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                detail: "the top level must be a mapping of flag: value".into(),
            })
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let key = yaml_scalar(&k).unwrap_or_default();
        let long = key.replace('_', "-");
        let Some(flag) = flags.iter().find(|f| f.long == long) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known: flags
                    .iter()
                    .map(|f| f.long.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let bad = |detail: &str| ConfigError::Value {
            path: path.to_owned(),
            key: key.clone(),
            detail: detail.to_owned(),
        };
        let values = match &v {
            serde_norway::Value::Sequence(items) if flag.repeatable => items
                .iter()
                .map(|i| yaml_scalar(i).ok_or_else(|| bad("list items must be scalars")))
                .collect::<Result<Vec<_>, _>>()?,
            serde_norway::Value::Sequence(_) => {
                return Err(bad("takes one value, not a list"));
            }
            other => vec![yaml_scalar(other).ok_or_else(|| bad("must be a scalar or a list"))?],
        };
        out.insert(long, values);
    }
    Ok(out)
}

/// Expands `args` (the whole command line) for the subcommand `cmd`: values from the
/// environment and from `--config FILE` (or `AUTHWATCH_CONFIG`) are added as flags where
/// the command line has none. Returns the new command line and where each setting came from.
pub fn expand(
    args: Vec<OsString>,
    cmd: &clap::Command,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<OsString>, BTreeMap<String, Origin>), ConfigError> {
    let flags = flags_of(cmd);
    let mut origins = BTreeMap::new();
    for f in &flags {
        if given_on_command_line(&args, &f.long) {
            origins.insert(f.long.clone(), Origin::Flag);
        }
    }
    let config_path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            args.iter()
                .find_map(|a| a.to_str()?.strip_prefix("--config=").map(PathBuf::from))
        })
        .or_else(|| env("AUTHWATCH_CONFIG").map(PathBuf::from));
    let from_file = match &config_path {
        Some(p) => read_file(p, &flags)?,
        None => BTreeMap::new(),
    };
    let mut extra: Vec<OsString> = Vec::new();
    for f in &flags {
        if origins.contains_key(&f.long) {
            continue;
        }
        let var = env_name(&f.long);
        let (values, origin) = if let Some(v) = env(&var) {
            let values: Vec<String> = if f.repeatable {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            } else {
                vec![v]
            };
            (values, Origin::Env(var))
        } else if let Some(v) = from_file.get(&f.long) {
            (
                v.clone(),
                Origin::File(config_path.clone().unwrap_or_default()),
            )
        } else {
            continue;
        };
        for v in values {
            if f.switch {
                if v == "true" || v == "1" {
                    extra.push(format!("--{}", f.long).into());
                }
            } else {
                extra.push(format!("--{}", f.long).into());
                extra.push(v.into());
            }
        }
        origins.insert(f.long.clone(), origin);
    }
    // Flags go right after the subcommand's name: before any positional arguments.
    let mut out = args;
    let at = out
        .iter()
        .position(|a| a.to_str() == Some(cmd.get_name()))
        .map_or(out.len(), |i| i + 1);
    out.splice(at..at, extra);
    Ok((out, origins))
}

/// Whether a setting's value must not be printed.
pub fn is_secret(long: &str) -> bool {
    ["secret", "token", "password", "credential", "access-key"]
        .iter()
        .any(|w| long.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("run")
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("state-dir").long("state-dir").default_value("./s"))
            .arg(
                Arg::new("log-group")
                    .long("log-group")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("no-progress")
                    .long("no-progress")
                    .action(ArgAction::SetTrue),
            )
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_beat_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "state_dir: /from/file\nlog-group: [/aws/eks/a/cluster, /aws/eks/b/cluster]\nno-progress: true\n",
        )
        .unwrap();
        let env = |k: &str| (k == "AUTHWATCH_STATE_DIR").then(|| "/from/env".to_owned());
        let (out, origins) = expand(
            args(&["authwatch", "run", "--config", file.to_str().unwrap()]),
            &cmd(),
            &env,
        )
        .unwrap();
        let m = cmd().try_get_matches_from(&out[1..]).unwrap();
        assert_eq!(m.get_one::<String>("state-dir").unwrap(), "/from/env");
        assert_eq!(
            m.get_many::<String>("log-group")
                .unwrap()
                .collect::<Vec<_>>(),
            ["/aws/eks/a/cluster", "/aws/eks/b/cluster"]
        );
        assert!(m.get_flag("no-progress"));
        assert_eq!(
            origins["state-dir"],
            Origin::Env("AUTHWATCH_STATE_DIR".into())
        );
        assert_eq!(origins["log-group"], Origin::File(file.clone()));

        let (out, origins) = expand(
            args(&[
                "authwatch",
                "run",
                "--state-dir",
                "/flag",
                "--config",
                file.to_str().unwrap(),
            ]),
            &cmd(),
            &env,
        )
        .unwrap();
        let m = cmd().try_get_matches_from(&out[1..]).unwrap();
        assert_eq!(m.get_one::<String>("state-dir").unwrap(), "/flag");
        assert_eq!(origins["state-dir"], Origin::Flag);
    }

    #[test]
    fn unknown_keys_and_bad_shapes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "state-dir: x\nstate-dri: y\n").unwrap();
        let e = expand(
            args(&["authwatch", "run", "--config", file.to_str().unwrap()]),
            &cmd(),
            &|_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown key `state-dri`"), "{e}");
        std::fs::write(&file, "state-dir: [a, b]\n").unwrap();
        let e = expand(
            args(&["authwatch", "run", "--config", file.to_str().unwrap()]),
            &cmd(),
            &|_| None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("key `state-dir`: takes one value"),
            "{e}"
        );
    }
}
