//! `authwatch investigate`: where do the denied requests come from? One pass over the same
//! inputs as `replay`: the selected events (default: response code 401 or 403) by API server,
//! source address, user, user agent, verb and resource, and code, over time; the alerts the
//! rules raise over the same span; text, JSON, CSV, or a self-contained HTML report.

pub mod agg;
pub mod html;
pub mod render;
pub mod sketch;
pub mod top;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use authwatch_event::time::parse_timestamp;
use authwatch_event::{visit_events, Micros, RawRecord};
use authwatch_rules::field::EventFacts;
use authwatch_rules::rule::parse_duration;
use authwatch_rules::{load_rules, Alert, Engine, EngineConfig, Prefilter, Rule};

use crate::pipeline::{Pipeline, Seen};
use crate::rule_files;
use crate::sinks::AlertSink;
use crate::sources::files::{plan, FormatChoice};

use agg::{Aggregator, KeyReport, Observation, ReportHead};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// Tables with sparklines (colours on a terminal only).
    Text,
    /// One JSON object (shape in docs/investigate.md).
    Json,
    /// One row per dimension and value.
    Csv,
}

/// `authwatch investigate`.
#[derive(Debug, clap::Args)]
pub struct InvestigateArgs {
    /// Files, directories (CloudWatch S3 export trees), or `-` for standard input.
    #[arg(required_unless_present = "log_group", value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Read this CloudWatch Logs group over [--start, --end] instead of files (repeatable).
    #[arg(long = "log-group", value_name = "GROUP", conflicts_with = "inputs", requires_all = ["start", "end"])]
    pub log_group: Vec<String>,
    /// Start of the CloudWatch range (RFC 3339), with --log-group.
    #[arg(long, value_name = "TIME", requires = "log_group")]
    pub start: Option<String>,
    /// End of the CloudWatch range (RFC 3339), with --log-group.
    #[arg(long, value_name = "TIME", requires = "log_group")]
    pub end: Option<String>,
    /// AWS region for --log-group (default: the SDK's chain, e.g. AWS_REGION).
    #[arg(long, requires = "log_group")]
    pub region: Option<String>,
    /// CloudWatch Logs calls per second for --log-group.
    #[arg(long, default_value_t = 2.0, requires = "log_group")]
    pub api_rate: f64,
    /// Input framing: auto (by content), jsonl, cw-export, filter-log-events, subscription.
    #[arg(long, default_value = "auto", value_parser = FormatChoice::parse_arg)]
    pub input_format: FormatChoice,
    /// Rule files or directories (default: the bundled rules); used for the alerts and --rule.
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Select the events this rule matches (its match and exclude) instead of 401/403.
    #[arg(long, value_name = "ID")]
    pub rule: Option<String>,
    /// Narrow to events where PATH has VALUE (any dotted path; repeatable, all must hold).
    #[arg(long = "where", value_name = "PATH=VALUE")]
    pub wheres: Vec<String>,
    /// Drill into one key (e.g. sourceIPs=203.0.113.7, as an alert's `group` names it).
    #[arg(long, value_name = "PATH=VALUE")]
    pub key: Option<String>,
    /// Values listed per dimension.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Time bucket of the timelines (default: from the span, at most 48 buckets; widened to
    /// a multiple if the span would need more than 10,000).
    #[arg(long, value_parser = parse_bucket)]
    pub bucket: Option<Micros>,
    /// Distinct values per dimension counted exactly; beyond, Space-Saving estimates.
    #[arg(long, default_value_t = 100_000)]
    pub exact_limit: usize,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutFormat,
    /// Also write a self-contained HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Do not run the rules (no alerts section; faster).
    #[arg(long)]
    pub no_alerts: bool,
    /// Decode every record, even those the filter cannot select.
    #[arg(long)]
    pub no_prefilter: bool,
    /// Never colour the text output (colours are only used on a terminal anyway).
    #[arg(long)]
    pub no_color: bool,
    /// How late an event may arrive and still be counted in order by the rules.
    #[arg(long, default_value = "2m", value_parser = parse_lateness)]
    pub max_lateness: Micros,
    /// Cluster name to put on alerts.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Threads that decode and select (default: one per core, less one for gzip inputs, as
    /// replay; 1 = one thread). The report is the same with any number.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(clap::Parser)]
#[command(name = "investigate")]
struct Standalone {
    #[command(flatten)]
    args: InvestigateArgs,
}

impl InvestigateArgs {
    /// Parses arguments as `authwatch investigate` takes them (without the command name), for
    /// tests and embedding.
    pub fn parse_args<I, T>(args: I) -> Result<InvestigateArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        let argv = std::iter::once(std::ffi::OsString::from("investigate"))
            .chain(args.into_iter().map(Into::into));
        Standalone::try_parse_from(argv).map(|s| s.args)
    }
}

fn parse_bucket(s: &str) -> Result<Micros, String> {
    match parse_duration(s) {
        // Whole seconds: every series slot must divide the bucket.
        Some(d) if d >= 1_000_000 && d % 1_000_000 == 0 => Ok(d),
        Some(_) => Err("must be a whole number of seconds, at least 1s".into()),
        None => Err(format!("`{s}` is not a duration like 30s, 5m, 1h")),
    }
}

fn parse_lateness(s: &str) -> Result<Micros, String> {
    parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 30s, 2m"))
}

/// Why an investigation could not run.
#[derive(Debug, thiserror::Error)]
pub enum InvestigateError {
    /// Bad arguments or rules (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// An input or output failed (exit status 1).
    #[error("{0}")]
    Io(String),
}

/// How many alerts a report lists.
const MAX_ALERTS: usize = 1000;

#[derive(Default)]
struct Collect {
    alerts: Vec<Alert>,
    total: u64,
}

impl AlertSink for Collect {
    fn name(&self) -> &str {
        "investigate"
    }
    fn deliver(&mut self, alert: &Alert) -> std::io::Result<()> {
        self.total += 1;
        if self.alerts.len() < MAX_ALERTS {
            self.alerts.push(alert.clone());
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Splits `path=value`.
fn split_pair(s: &str, what: &str) -> Result<(String, String), InvestigateError> {
    match s.split_once('=') {
        Some((p, v)) if !p.is_empty() => Ok((p.to_owned(), v.to_owned())),
        _ => Err(InvestigateError::Usage(format!(
            "{what} `{s}`: expected PATH=VALUE, e.g. sourceIPs=203.0.113.7"
        ))),
    }
}

/// A rule whose `match` is one equality condition, compiled by the rules crate (so `--where`
/// means what a rule's `path: value` means). JSON text is valid YAML and escapes any value.
fn equality_rule(path: &str, value: &str) -> Result<Rule, InvestigateError> {
    let path = match path {
        "verb+resource" => {
            return Err(InvestigateError::Usage(
                "verb+resource is a breakdown, not a field: use --where verb=... --where objectRef.resource=...".into(),
            ))
        }
        "code" => "responseStatus.code",
        p => p,
    };
    let doc = serde_json::json!({
        "id": "investigate",
        "match": { path: value },
        "window": "1m",
        "threshold": 1,
    });
    let mut rules = load_rules("--where", &doc.to_string())
        .map_err(|e| InvestigateError::Usage(e.to_string()))?;
    rules
        .pop()
        .ok_or_else(|| InvestigateError::Usage("empty --where".into()))
}

/// The selection: a rule's conditions (default: code 401 or 403), narrowed by `--where` and
/// `--key`. Returns it and its description.
pub fn build_filter(
    rules: &[Rule],
    rule: Option<&str>,
    wheres: &[String],
    key: Option<&str>,
) -> Result<(Rule, String), InvestigateError> {
    let (mut filter, mut words) = match rule {
        Some(id) => {
            let r = rules.iter().find(|r| r.id == id).ok_or_else(|| {
                InvestigateError::Usage(format!(
                    "--rule `{id}`: no such rule (rules: {})",
                    rules
                        .iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            (r.clone(), format!("events rule `{id}` matches"))
        }
        None => {
            let doc = r#"{"id":"investigate","match":{"responseStatus.code":[401,403]},"window":"1m","threshold":1}"#;
            let mut r = load_rules("investigate", doc)
                .map_err(|e| InvestigateError::Usage(e.to_string()))?;
            let r = r
                .pop()
                .ok_or_else(|| InvestigateError::Usage("no default filter".into()))?;
            (r, "responseStatus.code in [401, 403]".to_owned())
        }
    };
    for w in wheres.iter().map(String::as_str).chain(key) {
        let (p, v) = split_pair(w, "--where/--key")?;
        let extra = equality_rule(&p, &v)?;
        filter.conditions.extend(extra.conditions);
        words.push_str(&format!(", {p} = {v}"));
    }
    Ok((filter, agg::clean(&words)))
}

/// Runs `authwatch investigate`; the exit status.
pub fn main(args: InvestigateArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(match e {
                InvestigateError::Usage(_) => 2,
                InvestigateError::Io(_) => 1,
            })
        }
    }
}

/// Reads the inputs once and builds the report.
pub fn investigate(args: &InvestigateArgs) -> Result<agg::Report, InvestigateError> {
    let rules =
        rule_files::load(&args.rules).map_err(|e| InvestigateError::Usage(e.to_string()))?;
    let (filter, words) = build_filter(
        &rules,
        args.rule.as_deref(),
        &args.wheres,
        args.key.as_deref(),
    )?;
    let key = match &args.key {
        Some(k) => {
            let (path, value) = split_pair(k, "--key")?;
            Some(KeyReport {
                path: agg::clean(&path),
                value: agg::clean(&value),
            })
        }
        None => None,
    };
    let prefilter = (!args.no_prefilter)
        .then(|| Prefilter::new(std::slice::from_ref(&filter)))
        .filter(|p| !p.passes_everything());
    let range = if args.log_group.is_empty() {
        None
    } else {
        let ms = |name: &str, v: &Option<String>| {
            v.as_deref()
                .and_then(parse_timestamp)
                .map(|us| us.div_euclid(1000))
                .ok_or_else(|| {
                    InvestigateError::Usage(format!("--{name} must be an RFC 3339 time"))
                })
        };
        let (start, end) = (ms("start", &args.start)?, ms("end", &args.end)?);
        if start > end {
            return Err(InvestigateError::Usage("--start is after --end".into()));
        }
        Some((start, end))
    };
    let mut agg = Aggregator::new(args.exact_limit.max(1), args.bucket);
    let mut collect = Collect::default();
    let engine = Engine::new(
        if args.no_alerts { Vec::new() } else { rules },
        EngineConfig {
            max_lateness: args.max_lateness,
            cluster: args.cluster.clone(),
            ..EngineConfig::default()
        },
    );
    let mut pipeline = Pipeline::new(engine, vec![&mut collect], !args.no_prefilter);
    let prefilter = prefilter.as_ref();
    match range {
        Some(range) => crate::sources::log_group_range::for_each_range_record(
            &args.log_group,
            args.region.clone(),
            range,
            args.api_rate,
            &mut |r, loc| {
                pipeline.on_record_seeing(Ok(r), loc, &mut |r, seen| {
                    select(r, seen, prefilter, &filter, &mut |o| agg.add(o))
                })
            },
        )
        .map_err(|e| InvestigateError::Io(e.to_string()))?,
        None => {
            let mut plan = plan(&args.inputs, args.input_format)
                .map_err(|e| InvestigateError::Io(e.to_string()))?;
            let workers = plan.choose_threads(args.threads);
            if workers > 1 {
                crate::replay::run_parallel(
                    &plan,
                    &Arc::new(AtomicU64::new(0)),
                    &mut pipeline,
                    workers,
                    &|_| {},
                    &|r, seen, out: &mut Vec<Observation>| {
                        select(r, seen, prefilter, &filter, &mut |o| out.push(o))
                    },
                    &mut |observed| observed.into_iter().for_each(|o| agg.add(o)),
                )
                .map_err(|e| InvestigateError::Io(e.to_string()))?;
            } else {
                plan.run(&Arc::new(AtomicU64::new(0)), &mut |record, loc| {
                    pipeline.on_record_seeing(record, loc, &mut |r, seen| {
                        select(r, seen, prefilter, &filter, &mut |o| agg.add(o))
                    })
                })
                .map_err(|e| InvestigateError::Io(e.to_string()))?;
            }
        }
    }
    pipeline
        .finish()
        .map_err(|e| InvestigateError::Io(e.to_string()))?;
    let counters = pipeline.counters().clone();
    drop(pipeline);
    let mut alerts: Vec<Alert> = collect.alerts.into_iter().map(agg::clean_alert).collect();
    if let Some(k) = &key {
        alerts.retain(|a| a.group.0.iter().any(|(_, v)| *v == k.value));
    }
    let head = ReportHead {
        filter: words,
        key,
        records: counters.records,
        events_read: counters.events_parsed,
        parse_errors: counters.parse_errors,
        alerts_total: collect.total,
    };
    Ok(agg.report(args.top, head, alerts))
}

/// What investigate counts of one record: each event in it the filter selects (the
/// prefilter first rules out records it cannot select).
fn select(
    r: &RawRecord<'_>,
    seen: Seen<'_, '_>,
    prefilter: Option<&Prefilter>,
    filter: &Rule,
    take: &mut dyn FnMut(Observation),
) {
    // The fields the pipeline's structure pass read, when it read them: the same verdict
    // for every record the filter can match, without searching the record again.
    let may_match = |p: &Prefilter| match seen {
        Some(top) => p.may_match_read(r.message, top),
        None => p.may_match(r.message),
    };
    if prefilter.is_some_and(|p| !may_match(p)) {
        return;
    }
    visit_events(r, &mut |ev| {
        let Ok(view) = ev else { return };
        let Some(t) = view.time else { return };
        if filter.matches(&EventFacts::new(&view)) {
            take(Observation::of(&view, t));
        }
    });
}

fn run(args: &InvestigateArgs) -> Result<(), InvestigateError> {
    let report = investigate(args)?;
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report))
            .map_err(|e| InvestigateError::Io(format!("writing {}: {e}", path.display())))?;
    }
    let stdout = std::io::stdout();
    let color = args.format == OutFormat::Text
        && !args.no_color
        && stdout.is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let text = match args.format {
        OutFormat::Text => render::text(&report, color),
        OutFormat::Json => render::json(&report),
        OutFormat::Csv => render::csv(&report),
    };
    let mut out = stdout.lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| InvestigateError::Io(format!("writing stdout: {e}")))
}
