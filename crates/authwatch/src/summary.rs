//! The end-of-run summary: human text on stderr, JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use authwatch_rules::EngineStats;
use serde::Serialize;

use crate::pipeline::Counters;

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Files read.
    pub files: u64,
    /// Bytes read from disk or stdin (compressed size for gzip).
    pub bytes: u64,
    /// Records read (lines, CloudWatch events).
    pub records: u64,
    /// Audit events read (decoded, or structure-checked and ruled out by the prefilter).
    pub events_parsed: u64,
    /// Of those, ruled out by the prefilter without decoding.
    pub prefiltered: u64,
    /// Events that matched at least one rule.
    pub events_matched: u64,
    /// Rule matches ignored because the auditID was already counted for the rule.
    pub duplicates: u64,
    /// Events that arrived behind the lateness bound.
    pub late_events: u64,
    /// Late rule matches whose windows had all closed (not counted).
    pub late_dropped: u64,
    /// Rule matches not counted because a group_by field was absent.
    pub missing_group_key: u64,
    /// Rule matches whose fan-out over a list (sourceIPs) was cut to 16 keys.
    pub fanout_capped: u64,
    /// Events dated more than 15 minutes beyond the wall clock: dropped, so that they cannot
    /// move the event clock.
    pub future_events: u64,
    /// Records or events that could not be used, with reasons and samples.
    pub parse_errors: u64,
    /// By reason.
    pub parse_errors_by_reason: BTreeMap<&'static str, u64>,
    /// Where the first few are.
    pub parse_error_samples: Vec<crate::pipeline::ErrorSample>,
    /// Alerts delivered.
    pub alerts: u64,
    /// By rule (every loaded rule, zeros included).
    pub alerts_by_rule: BTreeMap<String, u64>,
    /// Framing of each file.
    pub formats: BTreeMap<String, &'static str>,
    /// Wall time.
    pub elapsed_seconds: f64,
    /// Records per second of wall time.
    pub events_per_second: f64,
    /// Megabytes (10^6) read per second.
    pub mb_per_second: f64,
}

impl Summary {
    /// Builds the summary from the run's counters.
    pub fn new(
        files: u64,
        bytes: u64,
        formats: BTreeMap<String, &'static str>,
        c: &Counters,
        e: &EngineStats,
        elapsed_seconds: f64,
    ) -> Summary {
        let per_sec = |n: f64| {
            if elapsed_seconds > 0.0 {
                n / elapsed_seconds
            } else {
                0.0
            }
        };
        Summary {
            files,
            bytes,
            records: c.records,
            events_parsed: c.events_parsed,
            prefiltered: c.prefiltered,
            events_matched: e.matched,
            duplicates: e.duplicates,
            late_events: e.late_events,
            late_dropped: e.late_dropped,
            missing_group_key: e.missing_group_key,
            fanout_capped: e.fanout_capped,
            future_events: c.future_events,
            parse_errors: c.parse_errors,
            parse_errors_by_reason: c.parse_errors_by_reason.clone(),
            parse_error_samples: c.parse_error_samples.clone(),
            alerts: c.alerts,
            alerts_by_rule: e.alerts_by_rule.clone(),
            formats,
            elapsed_seconds,
            events_per_second: per_sec(c.records as f64),
            mb_per_second: per_sec(bytes as f64 / 1e6),
        }
    }

    /// The human form, several lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "authwatch: {} file(s), {} bytes, {} records, {} events parsed ({} ruled out by the prefilter), {} matched, {} duplicates, {} late ({} too late to count), {} parse errors",
            self.files,
            self.bytes,
            self.records,
            self.events_parsed,
            self.prefiltered,
            self.events_matched,
            self.duplicates,
            self.late_events,
            self.late_dropped,
            self.parse_errors
        );
        let rules: Vec<String> = self
            .alerts_by_rule
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(s, "alerts: {} ({})", self.alerts, rules.join(", "));
        if self.missing_group_key > 0 {
            let _ = writeln!(
                s,
                "not counted for lack of a group_by field: {}",
                self.missing_group_key
            );
        }
        if self.fanout_capped > 0 {
            let _ = writeln!(
                s,
                "matches whose sourceIPs fan-out was cut to 16 keys (forged lists?): {}",
                self.fanout_capped
            );
        }
        if self.future_events > 0 {
            let _ = writeln!(
                s,
                "events dated more than 15 min beyond the wall clock, not counted: {}",
                self.future_events
            );
        }
        if self.parse_errors > 0 {
            let reasons: Vec<String> = self
                .parse_errors_by_reason
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let _ = writeln!(s, "parse errors by reason: {}", reasons.join(", "));
            for e in &self.parse_error_samples {
                let _ = writeln!(s, "  {}: {}: {}", e.location, e.reason, e.detail);
            }
        }
        let _ = writeln!(
            s,
            "elapsed {:.3} s, {:.0} events/s, {:.1} MB/s",
            self.elapsed_seconds, self.events_per_second, self.mb_per_second
        );
        s
    }
}
