//! Helpers shared by the end-to-end tests.

use std::io;
use std::path::{Path, PathBuf};

use authwatch::replay::{replay, ReplayOptions};
use authwatch::sinks::AlertSink;
use authwatch::sources::files::FormatChoice;
use authwatch::summary::Summary;
use authwatch_rules::{load_rules, Alert, Rule};

/// The shared corpus, beside the checkout (`../shared/corpus`).
pub fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus")
        .join(rel)
}

/// A file of this test crate.
pub fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Keeps alerts in memory (a sink for tests).
#[derive(Default)]
pub struct Collect(pub Vec<Alert>);

impl AlertSink for Collect {
    fn name(&self) -> &str {
        "memory"
    }
    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        self.0.push(alert.clone());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Loads a rule file of this crate (`rules/…`).
pub fn rules(rel: &str) -> Vec<Rule> {
    let path = here(rel);
    let text = std::fs::read_to_string(&path).expect("rule file");
    load_rules(&path.display().to_string(), &text).expect("valid rules")
}

/// Replays `inputs` with `rules`; returns the alerts and the summary. Runs three times: with
/// and without the prefilter, and on several threads, and checks that all agree.
pub fn run(
    inputs: &[PathBuf],
    format: FormatChoice,
    rules: Vec<Rule>,
    cluster: Option<&str>,
) -> (Vec<Alert>, Summary) {
    let with = run_with(inputs, format, rules.clone(), cluster, true, 1);
    let without = run_with(inputs, format, rules.clone(), cluster, false, 1);
    // The prefilter only saves work: alerts and counts are the same without it.
    assert_eq!(
        lines(&with.0),
        lines(&without.0),
        "prefilter changed the alerts"
    );
    assert_eq!(with.1.events_parsed, without.1.events_parsed);
    assert_eq!(with.1.events_matched, without.1.events_matched);
    assert_eq!(
        with.1.parse_errors_by_reason,
        without.1.parse_errors_by_reason
    );
    // Neither do threads: the engine sees the same events in the same order.
    let parallel = run_with(inputs, format, rules, cluster, true, 3);
    assert_eq!(
        lines(&with.0),
        lines(&parallel.0),
        "threads changed the alerts"
    );
    let (a, b) = (&with.1, &parallel.1);
    assert_eq!(
        (
            a.records,
            a.events_parsed,
            a.events_matched,
            a.duplicates,
            a.late_events,
            a.parse_errors
        ),
        (
            b.records,
            b.events_parsed,
            b.events_matched,
            b.duplicates,
            b.late_events,
            b.parse_errors
        )
    );
    assert_eq!(a.parse_error_samples, b.parse_error_samples);
    with
}

/// Replays with the prefilter on or off, on `threads` decoding threads.
pub fn run_with(
    inputs: &[PathBuf],
    format: FormatChoice,
    rules: Vec<Rule>,
    cluster: Option<&str>,
    prefilter: bool,
    threads: usize,
) -> (Vec<Alert>, Summary) {
    let mut sink = Collect::default();
    let opts = ReplayOptions {
        inputs: inputs.to_vec(),
        format,
        max_lateness: 120_000_000,
        cluster: cluster.map(str::to_owned),
        progress: false,
        prefilter,
        threads,
        metrics: None,
    };
    let summary = replay(&opts, rules, vec![&mut sink]).expect("replay succeeds");
    (sink.0, summary)
}

/// Alerts as JSON lines, for comparisons that show a readable diff.
pub fn lines(alerts: &[Alert]) -> Vec<String> {
    alerts.iter().map(Alert::to_json_line).collect()
}

/// One alert as the posture tests compare them: (rule, key values, window_end).
pub type Fired = (String, Vec<String>, String);

/// The alerts as [`Fired`], sorted.
pub fn fired(alerts: &[Alert]) -> Vec<Fired> {
    let mut v: Vec<Fired> = alerts
        .iter()
        .map(|a| {
            (
                a.rule.clone(),
                a.group.0.iter().map(|(_, v)| v.clone()).collect(),
                authwatch_event::time::format_millis(a.window_end),
            )
        })
        .collect();
    v.sort();
    v
}

/// Expected alerts written as (rule, key values, window_end), sorted like [`fired`].
pub fn expected(want: &[(&str, &[&str], &str)]) -> Vec<Fired> {
    let mut v: Vec<Fired> = want
        .iter()
        .map(|(r, g, t)| {
            (
                (*r).to_owned(),
                g.iter().map(|s| (*s).to_owned()).collect(),
                (*t).to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}
