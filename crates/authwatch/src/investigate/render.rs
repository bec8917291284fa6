//! Text, JSON and CSV renderings of a [`Report`]. Every value in a report was cleaned of
//! control characters when it was built ([`super::agg::clean`]).

use std::fmt::Write as _;

use super::agg::{DimReport, Report};

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// At most this many characters per sparkline: more buckets are summed in groups.
const SPARK_WIDTH: usize = 60;

/// A sparkline scaled to the row's maximum; empty buckets are blank.
pub fn sparkline(counts: &[u64]) -> String {
    let squeezed: Vec<u64>;
    let counts = if counts.len() > SPARK_WIDTH {
        let per = counts.len().div_ceil(SPARK_WIDTH);
        squeezed = counts.chunks(per).map(|c| c.iter().sum()).collect();
        &squeezed[..]
    } else {
        counts
    };
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&c| {
            if c == 0 || max == 0 {
                ' '
            } else {
                let i = ((c * 8).saturating_sub(1) / max) as usize;
                SPARKS[i.min(7)]
            }
        })
        .collect()
}

/// Shortens to `width` characters with an ellipsis in the middle: both ends of API server
/// names and user agents tell them apart.
pub fn cut(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    let head = width.saturating_sub(1) / 2;
    let tail = width.saturating_sub(1) - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// `2026-11-20T10:00:03.905Z` → `2026-11-20 10:00:03`.
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

struct Style {
    on: bool,
}

impl Style {
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

fn bucket_words(secs: i64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The terminal report. `color` adds ANSI styles (only ever on a terminal).
pub fn text(r: &Report, color: bool) -> String {
    let st = Style { on: color };
    let mut o = String::new();
    let t = &r.totals;
    let _ = writeln!(o, "{}", st.bold(&format!("Investigating: {}", r.filter)));
    if let Some(k) = &r.key {
        let _ = writeln!(o, "Key: {} = {}", k.path, k.value);
    }
    let codes: Vec<String> = t.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let span = match (&r.first_seen, &r.last_seen) {
        (Some(a), Some(b)) => format!("{a} .. {b}"),
        _ => "no events".into(),
    };
    let _ = writeln!(
        o,
        "{} {} selected events ({}) from {} addresses, {span}; {} duplicate copies not counted; read {} records, {} events, {} parse errors",
        st.bold("Total:"),
        st.red(&t.events.to_string()),
        if codes.is_empty() { "-".into() } else { codes.join(", ") },
        t.distinct_addresses,
        t.duplicates,
        t.records,
        t.events_read,
        t.parse_errors
    );
    let _ = writeln!(
        o,
        "Timeline, {} buckets of {} from {}:  401 |{}|  403 |{}|",
        r.series.total.len(),
        bucket_words(r.bucket_seconds),
        short_time(&r.series.start),
        sparkline(&r.series.code_401),
        sparkline(&r.series.code_403)
    );
    if r.series.other.iter().any(|&c| c > 0) {
        let _ = writeln!(o, "  other codes |{}|", sparkline(&r.series.other));
    }
    for d in &r.dimensions {
        o.push('\n');
        dim_text(&mut o, d, &st);
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "{}",
        st.bold(&format!(
            "Alerts the rules raise over this input: {}{}",
            r.alerts_total,
            if r.key.is_some() {
                format!(" ({} for this key)", r.alerts.len())
            } else {
                String::new()
            }
        ))
    );
    for a in &r.alerts {
        let group: Vec<String> = a
            .group
            .0
            .iter()
            .map(|(k, v)| format!("{k}={}", super::agg::clean(v)))
            .collect();
        let _ = writeln!(
            o,
            "  {}  {:<40} {:<40} count {}",
            short_time(&authwatch_event::time::format_millis(a.window_end)),
            a.rule,
            cut(&group.join(","), 40),
            a.count
        );
    }
    if (r.alerts.len() as u64) < r.alerts_total && r.key.is_none() {
        let _ = writeln!(
            o,
            "  ({} more not listed)",
            r.alerts_total - r.alerts.len() as u64
        );
    }
    if !r.sample_audit_ids.is_empty() {
        let _ = writeln!(
            o,
            "\nSample audit IDs (first and last): {}",
            r.sample_audit_ids.join(" ")
        );
    }
    if let Some(k) = &r.key {
        let _ = writeln!(
            o,
            "\nLook them up: filter auditID in [...] in Logs Insights, or `authwatch investigate --where auditID=<id> ...`; key {}={}",
            k.path, k.value
        );
    }
    o
}

fn dim_text(o: &mut String, d: &DimReport, st: &Style) {
    let exact = if d.exact {
        "exact".to_owned()
    } else {
        format!(
            "estimated: beyond the exact limit, counts may be over by at most {} (bound {} = events / exact limit)",
            d.max_error, d.error_bound
        )
    };
    let _ = writeln!(
        o,
        "{}",
        st.bold(&format!(
            "{}: {} distinct, {} events{}, {exact}",
            d.name,
            d.distinct,
            d.events,
            if d.missing > 0 {
                format!(", {} events without it", d.missing)
            } else {
                String::new()
            }
        ))
    );
    let _ = writeln!(
        o,
        "  {:<44} {:>9} {:>6}  {:<19}  {:<19}  {:>9}  timeline",
        "value", "count", "share", "first seen", "last seen", d.counterpart_label
    );
    for v in &d.values {
        let count = if v.count_error > 0 {
            format!("{}±{}", v.count, v.count_error)
        } else {
            v.count.to_string()
        };
        let cps = if v.counterparts_exact {
            v.counterparts.to_string()
        } else {
            format!("~{}", v.counterparts)
        };
        let _ = writeln!(
            o,
            "  {:<44} {:>9} {:>5.1}%  {:<19}  {:<19}  {:>9}  {}",
            cut(&v.value, 44),
            count,
            v.share,
            short_time(&v.first_seen),
            short_time(&v.last_seen),
            cps,
            st.dim(&format!("|{}|", sparkline(&v.series)))
        );
    }
}

/// The report as one JSON object (pretty-printed, with a trailing newline).
pub fn json(r: &Report) -> String {
    let mut s =
        serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// A CSV field: quoted when needed; a leading `=`, `+`, `-` or `@` is prefixed with `'` so
/// that spreadsheets do not evaluate it.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One row per dimension and value.
pub fn csv(r: &Report) -> String {
    let mut o = String::from(
        "dimension,value,count,count_error,share,first_seen,last_seen,counterpart,counterparts,counterparts_exact\n",
    );
    for d in &r.dimensions {
        for v in &d.values {
            let _ = writeln!(
                o,
                "{},{},{},{},{},{},{},{},{},{}",
                d.name,
                csv_field(&v.value),
                v.count,
                v.count_error,
                v.share,
                v.first_seen,
                v.last_seen,
                d.counterpart,
                v.counterparts,
                v.counterparts_exact
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_max() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), " ▁▄█");
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("x\"y"), "\"x\"\"y\"");
    }
}
