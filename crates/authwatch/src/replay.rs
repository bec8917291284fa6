//! `authwatch replay`: exported logs in, alerts and a summary out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use authwatch_event::Micros;
use authwatch_rules::{Engine, EngineConfig, Rule, RuleError};

use crate::input::{plan, FormatChoice, InputError, Plan};
use crate::pipeline::Pipeline;
use crate::sinks::AlertSink;
use crate::summary::Summary;

/// What `authwatch replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Files, directories, or `-`.
    pub inputs: Vec<PathBuf>,
    /// `--format`.
    pub format: FormatChoice,
    /// `--max-lateness`.
    pub max_lateness: Micros,
    /// `--cluster`: put on every alert instead of the name derived from the log group.
    pub cluster: Option<String>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Skip decoding records no rule can match (see [`Pipeline::new`]).
    pub prefilter: bool,
}

/// Why a replay failed; [`ReplayError::exit_code`] maps it to the process status.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A rule file is wrong.
    #[error("{0}")]
    Rules(#[from] RuleError),
    /// An input cannot be read.
    #[error("{0}")]
    Input(#[from] InputError),
    /// Alerts cannot be written.
    #[error("writing alerts: {0}")]
    Output(std::io::Error),
}

impl ReplayError {
    /// 2 for configuration errors, 1 for I/O failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplayError::Rules(_) => 2,
            ReplayError::Input(_) | ReplayError::Output(_) => 1,
        }
    }
}

/// Plans and runs a replay of `opts.inputs` with `rules`, delivering alerts to `sinks`.
pub fn replay(
    opts: &ReplayOptions,
    rules: Vec<Rule>,
    sinks: Vec<&mut dyn AlertSink>,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let plan = plan(&opts.inputs, opts.format)?;
    run_plan(&plan, opts, rules, sinks, started)
}

fn run_plan(
    plan: &Plan,
    opts: &ReplayOptions,
    rules: Vec<Rule>,
    sinks: Vec<&mut dyn AlertSink>,
    started: Instant,
) -> Result<Summary, ReplayError> {
    let engine = Engine::new(
        rules,
        EngineConfig {
            max_lateness: opts.max_lateness,
            cluster: opts.cluster.clone(),
            ..EngineConfig::default()
        },
    );
    let mut pipeline = Pipeline::new(engine, sinks, opts.prefilter);
    let bytes = Arc::new(AtomicU64::new(0));
    let bar =
        (opts.progress && std::io::stderr().is_terminal()).then(|| progress_bar(plan.total_bytes));
    let mut n = 0u64;
    let mut sink_error = None;
    let result = plan.run(&bytes, &mut |record, loc| {
        n += 1;
        if n.is_multiple_of(8192) {
            if let Some(bar) = &bar {
                bar.set_position(bytes.load(Ordering::Relaxed));
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!("{:.0} events/s", n as f64 / secs));
            }
        }
        pipeline.on_record(record, loc).inspect_err(|e| {
            sink_error = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    });
    if let Some(e) = sink_error {
        return Err(ReplayError::Output(e));
    }
    result?;
    pipeline.finish().map_err(ReplayError::Output)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let total_bytes = bytes.load(Ordering::Relaxed);
    Ok(Summary::new(
        plan.files,
        total_bytes,
        plan.formats.clone(),
        pipeline.counters(),
        pipeline.engine_stats(),
        started.elapsed().as_secs_f64(),
    ))
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = if total > 0 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
