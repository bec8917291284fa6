//! Alerts as JSON lines (detection.md) on standard output or in a file.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use authwatch_rules::Alert;

use super::AlertSink;

/// Where JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLinesTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to (so a re-run never destroys earlier alerts).
    File(PathBuf),
}

/// Writes each alert as one JSON line, flushed at once: an alert is not held in a buffer
/// while the replay goes on.
pub struct JsonLinesSink {
    name: String,
    out: BufWriter<Box<dyn Write>>,
}

impl JsonLinesSink {
    /// Opens the target.
    pub fn open(target: &JsonLinesTarget) -> io::Result<JsonLinesSink> {
        let (name, w): (String, Box<dyn Write>) = match target {
            JsonLinesTarget::Stdout => ("stdout".into(), Box::new(io::stdout())),
            JsonLinesTarget::File(p) => (
                format!("file:{}", p.display()),
                Box::new(OpenOptions::new().create(true).append(true).open(p)?),
            ),
        };
        Ok(JsonLinesSink {
            name,
            out: BufWriter::new(w),
        })
    }
}

impl AlertSink for JsonLinesSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        self.out.write_all(alert.to_json_line().as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
