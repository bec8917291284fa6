//! Helpers shared by the end-to-end tests.

use std::io;
use std::path::{Path, PathBuf};

use authwatch::input::FormatChoice;
use authwatch::replay::{replay, ReplayOptions};
use authwatch::sinks::AlertSink;
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

/// Replays `inputs` with `rules`; returns the alerts and the summary. Runs twice, with and
/// without the prefilter, and checks that both agree.
pub fn run(
    inputs: &[PathBuf],
    format: FormatChoice,
    rules: Vec<Rule>,
    cluster: Option<&str>,
) -> (Vec<Alert>, Summary) {
    let with = run_with(inputs, format, rules.clone(), cluster, true);
    let without = run_with(inputs, format, rules, cluster, false);
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
    with
}

/// Replays with the prefilter on or off.
pub fn run_with(
    inputs: &[PathBuf],
    format: FormatChoice,
    rules: Vec<Rule>,
    cluster: Option<&str>,
    prefilter: bool,
) -> (Vec<Alert>, Summary) {
    let mut sink = Collect::default();
    let opts = ReplayOptions {
        inputs: inputs.to_vec(),
        format,
        max_lateness: 120_000_000,
        cluster: cluster.map(str::to_owned),
        progress: false,
        prefilter,
    };
    let summary = replay(&opts, rules, vec![&mut sink]).expect("replay succeeds");
    (sink.0, summary)
}

/// Alerts as JSON lines, for comparisons that show a readable diff.
pub fn lines(alerts: &[Alert]) -> Vec<String> {
    alerts.iter().map(Alert::to_json_line).collect()
}
