//! `authwatch rules check|test`, and loading the rules every command runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::rule_files;
use authwatch_rules::RuleKind;

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Validate rules and list them (id, kind, keys, window, threshold), with warnings.
    Check {
        /// Rule files or directories (default: the bundled set).
        paths: Vec<PathBuf>,
    },
    /// Run the rules' `tests:`; prints PASS/FAIL per case, exits 1 on a failure.
    Test {
        /// Rule files or directories (default: the bundled set).
        paths: Vec<PathBuf>,
    },
}

/// Loads rules (the bundled set when `paths` is empty); a bad rule file is reported and is
/// exit status 2.
pub(crate) fn load_rules(paths: &[PathBuf]) -> Result<Vec<authwatch_rules::Rule>, ExitCode> {
    rule_files::load(paths).map_err(|e| {
        eprintln!("authwatch: {e}");
        ExitCode::from(2)
    })
}

/// Prints each rule's warnings (conditions that can never hold) on stderr; returns how many.
pub(crate) fn print_warnings(rules: &[authwatch_rules::Rule]) -> usize {
    let mut n = 0;
    for r in rules {
        for w in r.warnings() {
            n += 1;
            eprintln!("authwatch: warning: {}: rule `{}`: {w}", r.source, r.id);
        }
    }
    n
}

pub fn rules_check(paths: &[PathBuf]) -> ExitCode {
    let rules = match load_rules(paths) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!("id\tkind\tseverity\tgroup_by\twindow\tthreshold\ttests\tfile");
    for r in &rules {
        let threshold = match &r.kind {
            RuleKind::Threshold => format!("{} events", r.threshold),
            RuleKind::Distinct { name, .. } => format!("{} distinct {name}", r.threshold),
            RuleKind::Spike { baseline, ratio } => format!(
                "{ratio}x the rate of the previous {}s, at least {}",
                baseline / 1_000_000,
                r.threshold
            ),
            RuleKind::Absence(a) => format!(
                "no close within the window{}",
                if a.cancel.is_some() {
                    " (or a cancel)"
                } else {
                    ""
                }
            ),
        };
        println!(
            "{}\t{}\t{}\t[{}]\t{}s\t{}\t{}\t{}",
            r.id,
            r.kind.as_str(),
            r.severity,
            r.group_by
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.window / 1_000_000,
            threshold,
            r.tests.len(),
            r.source
        );
    }
    // Which rules need the request body: at the Metadata audit level they stay quiet.
    for r in &rules {
        let paths = r.body_paths();
        if !paths.is_empty() {
            eprintln!(
                "authwatch: note: rule `{}` reads the request body ({}): it sees only events logged at the Request or RequestResponse level",
                r.id,
                paths.join(", ")
            );
        }
    }
    let warnings = print_warnings(&rules);
    eprintln!("{} rule(s) valid, {warnings} warning(s)", rules.len());
    ExitCode::SUCCESS
}

pub fn rules_test(paths: &[PathBuf]) -> ExitCode {
    let rules = match load_rules(paths) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (mut passed, mut failed) = (0, 0);
    for rule in &rules {
        if rule.tests.is_empty() {
            println!("NONE {}: no tests", rule.id);
        }
        let outcomes = authwatch_rules::run_tests(rule, &mut |rel| {
            rule_files::load_fixture(&rule.source, rel)
        });
        for o in outcomes {
            if o.passed {
                passed += 1;
                println!("PASS {}: {}", o.rule, o.case);
            } else {
                failed += 1;
                println!("FAIL {}: {}: {}", o.rule, o.case, o.detail);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
