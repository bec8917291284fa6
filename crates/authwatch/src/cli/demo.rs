//! `authwatch demo`: the bundled sample export replayed with the bundled rules.

use std::io::Write as _;
use std::process::ExitCode;

use super::rules::load_rules;
use crate::replay::{replay, ReplayOptions};
use crate::sinks::json_lines::{JsonLinesSink, JsonLinesTarget};
use crate::sources::files::FormatChoice;

pub fn run_demo() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("authwatch: creating a temporary directory: {e}");
            return ExitCode::from(1);
        }
    };
    let root = match crate::demo::unpack(dir.path()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authwatch: unpacking the demo sample: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("authwatch demo: replaying the bundled sample (a CloudWatch S3 export of 3 API servers) with the bundled rules\n");
    let rules = match load_rules(&[]) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut sink = match JsonLinesSink::open(&JsonLinesTarget::Stdout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("authwatch: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = ReplayOptions {
        inputs: vec![root],
        format: FormatChoice::Auto,
        max_lateness: 120_000_000,
        cluster: Some("demo".into()),
        progress: false,
        prefilter: true,
        threads: 1,
        metrics: None,
    };
    match replay(&opts, rules, vec![&mut sink]) {
        Ok(summary) => {
            let _ = std::io::stdout().flush();
            eprint!("\n{}", summary.to_text());
            eprintln!("\nNext: `authwatch replay <your export dir or file>`; see docs/replay.md for every format.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
