//! The self-contained HTML report: inline CSS, inline SVG charts, a small inline script for
//! sorting and filtering tables. No external URL of any kind.
//!
//! Markup is built with `maud`, which escapes every interpolated value: a user agent of
//! `<script>alert(1)</script>` becomes text. As a second line of defence the page's
//! Content-Security-Policy only lets the one script carrying this page's nonce run, so even an
//! injected element could neither run a script nor an inline event handler, and nothing can be
//! fetched from the network.

use authwatch_event::time::{format_millis, parse_timestamp};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::agg::{clean, DimReport, Report};
use super::sketch::hash64;

const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2329;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.muted{color:#57606a}.totals span{display:inline-block;margin-right:18px}
table{border-collapse:collapse;width:100%;background:#fff;margin-top:6px}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f0f3f6;cursor:pointer;user-select:none}th:after{content:" \2195";color:#8c959f}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.v{font-family:ui-monospace,Menlo,monospace;word-break:break-all;max-width:420px}
input.filter{margin:6px 0;padding:3px 6px;width:260px}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
details summary{cursor:pointer}svg text{font:11px system-ui,sans-serif;fill:#1d2329}
.grid{display:grid;grid-template-columns:minmax(300px,1fr) 2fr;gap:16px;align-items:start}
"#;

const JS: &str = r#"
(function(){
  function key(cell){var v=cell.getAttribute('data-v');return v===null?cell.textContent:v;}
  document.querySelectorAll('table.sortable').forEach(function(t){
    var ths=t.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths,function(th,i){
      th.addEventListener('click',function(){
        var asc=th.getAttribute('data-dir')!=='asc';th.setAttribute('data-dir',asc?'asc':'desc');
        var rows=Array.prototype.slice.call(t.tBodies[0].rows);
        rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);var nx=parseFloat(x),ny=parseFloat(y);
          var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
        rows.forEach(function(r){t.tBodies[0].appendChild(r);});
      });
    });
  });
  document.querySelectorAll('input.filter').forEach(function(inp){
    var t=document.getElementById(inp.getAttribute('data-table'));
    inp.addEventListener('input',function(){
      var q=inp.value.toLowerCase();
      Array.prototype.forEach.call(t.tBodies[0].rows,function(r){r.hidden=q!==''&&r.textContent.toLowerCase().indexOf(q)<0;});
    });
  });
})();
"#;

const C401: &str = "#d1242f";
const C403: &str = "#fb8f44";
const COTHER: &str = "#8c959f";

/// The report as one HTML document.
pub fn render(r: &Report) -> String {
    let nonce = format!(
        "{:016x}",
        hash64(&format!(
            "{:?}{}{}",
            std::time::SystemTime::now(),
            std::process::id(),
            r.totals.events
        ))
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'"
    );
    let title = match &r.key {
        Some(k) => format!("authwatch investigate: {} = {}", k.path, k.value),
        None => "authwatch investigate".to_owned(),
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(csp);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { (title) }
                p.muted { "Selected: " (r.filter) }
                (totals(r))
                h2 { "Timeline: 401 and 403 per " (r.bucket_seconds) " s bucket, alert windows shaded" }
                (timeline(r))
                @for (i, d) in r.dimensions.iter().enumerate() {
                    (dimension(i, d, r))
                }
                (alerts(r))
                @if !r.sample_audit_ids.is_empty() {
                    h2 { "Sample audit IDs (first and last)" }
                    ul id="audit-ids" {
                        @for id in &r.sample_audit_ids { li { code { (id) } } }
                    }
                }
                p.muted { "Made by authwatch investigate. Counts marked ± are Space-Saving estimates (over by at most the number shown); counterparts marked ~ are HyperLogLog estimates (±3.3 %)." }
                script nonce=(nonce) { (PreEscaped(JS)) }
            }
        }
    };
    page.into_string()
}

fn totals(r: &Report) -> Markup {
    let t = &r.totals;
    html! {
        div.totals {
            span { b { (t.events) } " selected events" }
            @for (c, n) in &t.codes { span { "code " (c) ": " b { (n) } } }
            span { b { (t.distinct_addresses) } " source addresses" }
            span { (t.duplicates) " duplicate copies not counted" }
            span.muted { "span " (r.first_seen.as_deref().unwrap_or("-")) " .. " (r.last_seen.as_deref().unwrap_or("-")) }
            span.muted { (t.records) " records read, " (t.parse_errors) " parse errors" }
        }
    }
}

fn timeline(r: &Report) -> Markup {
    let s = &r.series;
    let n = s.total.len().max(1);
    let (w, h, pad) = (960.0f64, 220.0f64, 30.0f64);
    let max = s.total.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = (w - 2.0 * pad) / n as f64;
    let y = |v: f64| (h - pad) - v / max * (h - 2.0 * pad);
    let start = parse_timestamp(&s.start).unwrap_or(0);
    let span_us = (s.bucket_seconds.max(1) * 1_000_000) as f64 * n as f64;
    let x_of = |t: i64| pad + ((t - start) as f64 / span_us).clamp(0.0, 1.0) * (w - 2.0 * pad);
    let end = start + (s.bucket_seconds.max(1) * 1_000_000) * n as i64;
    html! {
        div.legend {
            span { span.sw style=(format!("background:{C401}")) {} "401" }
            span { span.sw style=(format!("background:{C403}")) {} "403" }
            span { span.sw style=(format!("background:{COTHER}")) {} "other codes" }
            span { span.sw style="background:rgba(130,80,223,.18);border:1px solid #8250df" {} "alert window" }
        }
        svg id="timeline" width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" {
            title { "Selected events per bucket" }
            @for a in &r.alerts {
                @let x0 = x_of(a.window_start);
                @let x1 = x_of(a.window_end).max(x0 + 1.0);
                rect.alert x=(fmt(x0)) y=(pad - 8.0) width=(fmt(x1 - x0)) height=(h - 2.0 * pad + 8.0) fill="rgba(130,80,223,.18)" stroke="#8250df" stroke-width="0.5" {
                    title { (a.rule) " " (group_text(a)) " at " (format_millis(a.window_end)) }
                }
            }
            @for i in 0..s.total.len() {
                @let a = s.code_401.get(i).copied().unwrap_or(0) as f64;
                @let b = s.code_403.get(i).copied().unwrap_or(0) as f64;
                @let o = s.other.get(i).copied().unwrap_or(0) as f64;
                @let x = pad + i as f64 * bw;
                @if a > 0.0 {
                    rect.b401 x=(fmt(x)) y=(fmt(y(a))) width=(fmt((bw - 1.0).max(0.5))) height=(fmt(h - pad - y(a))) fill=(C401) { title { "401: " (a) } }
                }
                @if b > 0.0 {
                    rect.b403 x=(fmt(x)) y=(fmt(y(a + b))) width=(fmt((bw - 1.0).max(0.5))) height=(fmt(y(a) - y(a + b))) fill=(C403) { title { "403: " (b) } }
                }
                @if o > 0.0 {
                    rect x=(fmt(x)) y=(fmt(y(a + b + o))) width=(fmt((bw - 1.0).max(0.5))) height=(fmt(y(a + b) - y(a + b + o))) fill=(COTHER) {}
                }
            }
            line x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) stroke="#57606a" {}
            text x=(pad) y=(h - 10.0) { (short(&s.start)) }
            text x=(w - pad) y=(h - 10.0) text-anchor="end" { (short(&format_millis(end))) }
            text x=(pad - 4.0) y=(pad) text-anchor="end" { (max as u64) }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn short(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

fn group_text(a: &authwatch_rules::Alert) -> String {
    a.group
        .0
        .iter()
        .map(|(k, v)| format!("{k}={}", clean(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn dimension(i: usize, d: &DimReport, r: &Report) -> Markup {
    let table_id = format!("dim-{i}");
    let max = d.values.iter().map(|v| v.count).max().unwrap_or(0).max(1) as f64;
    let row_h = 20.0;
    let (w, label_w) = (400.0f64, 190.0f64);
    let h = row_h * d.values.len() as f64 + 4.0;
    html! {
        section.dim id=(format!("section-{}", d.name)) {
            h2 { (d.name) ": " (d.distinct) " distinct, " (d.events) " events"
                @if d.missing > 0 { ", " (d.missing) " without it" }
                @if !d.exact { " (estimates: over by at most " (d.max_error) ", bound " (d.error_bound) ")" }
            }
            div.grid {
                svg.bars width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" {
                    title { "Top " (d.name) }
                    @for (j, v) in d.values.iter().enumerate() {
                        @let y = j as f64 * row_h + 2.0;
                        @let bw = (v.count as f64 / max * (w - label_w - 50.0)).max(1.0);
                        text x=(label_w - 4.0) y=(y + 14.0) text-anchor="end" { (cut(&v.value, 26)) }
                        rect.bar x=(label_w) y=(y + 3.0) width=(fmt(bw)) height=(row_h - 6.0) fill="#0969da" { title { (v.value) ": " (v.count) } }
                        text x=(label_w + bw + 4.0) y=(y + 14.0) { (v.count) }
                    }
                }
                div {
                    input.filter type="search" placeholder="filter…" data-table=(table_id);
                    table.sortable id=(table_id) {
                        thead { tr {
                            th { "value" } th { "count" } th { "share %" } th { "first seen" } th { "last seen" } th { (d.counterpart_label) } th { "timeline" }
                        } }
                        tbody {
                            @for v in &d.values {
                                tr {
                                    td.v data-v=(v.value) {
                                        details {
                                            summary { (v.value) }
                                            div.muted { (d.counterpart) " (" (if v.counterparts_exact { "all" } else { "first seen" }) "):" }
                                            ul {
                                                @for e in &v.counterpart_examples { li { code { (e.value) } " × " (e.count) } }
                                            }
                                            div.muted { "per bucket: " (v.series.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")) }
                                            div.muted { "drill down: " code { "authwatch investigate --key '" (d.name) "=" (v.value) "' …" } }
                                        }
                                    }
                                    td.n data-v=(v.count) { (v.count) @if v.count_error > 0 { "±" (v.count_error) } }
                                    td.n { (v.share) }
                                    td { (short(&v.first_seen)) }
                                    td { (short(&v.last_seen)) }
                                    td.n data-v=(v.counterparts) { @if !v.counterparts_exact { "~" } (v.counterparts) }
                                    td { (spark(&v.series, r.series.total.len())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut o: String = s.chars().take(n - 1).collect();
        o.push('…');
        o
    }
}

fn spark(series: &[u64], n: usize) -> Markup {
    let (w, h) = (140.0f64, 22.0f64);
    let max = series.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = w / n.max(1) as f64;
    html! {
        svg.spark width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) {
            @for (i, &c) in series.iter().enumerate() {
                @if c > 0 {
                    @let bh = (c as f64 / max * (h - 2.0)).max(1.0);
                    rect x=(fmt(i as f64 * step)) y=(fmt(h - bh)) width=(fmt(step.max(1.0))) height=(fmt(bh)) fill="#0969da" {}
                }
            }
        }
    }
}

fn alerts(r: &Report) -> Markup {
    html! {
        h2 { "Alerts the rules raise over this input: " (r.alerts_total) @if r.key.is_some() { " (" (r.alerts.len()) " for this key)" } }
        input.filter type="search" placeholder="filter…" data-table="alerts";
        table.sortable id="alerts" {
            thead { tr { th { "fired at" } th { "rule" } th { "severity" } th { "key" } th { "count" } th { "window" } th { "sample audit IDs" } } }
            tbody {
                @for a in &r.alerts {
                    tr {
                        td { (format_millis(a.window_end)) }
                        td { (a.rule) }
                        td { (a.severity.as_str()) }
                        td.v { (group_text(a)) }
                        td.n data-v=(a.count) { (a.count) }
                        td.n data-v=(a.window_seconds) { (a.window_seconds) " s" }
                        td.v { (a.sample_audit_ids.iter().map(|s| clean(s)).collect::<Vec<_>>().join(" ")) }
                    }
                }
            }
        }
    }
}
