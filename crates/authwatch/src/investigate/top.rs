//! `authwatch top`: a live terminal view of the top denied addresses, users and API servers
//! over the last 5, 15 or 60 minutes (of event time: the newest event seen is "now"), and the
//! alerts as the rules raise them. One thread reads and counts, the terminal thread redraws
//! every `--refresh` and on every key.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use authwatch_event::time::format_millis;
use authwatch_event::{visit_events, Micros};
use authwatch_rules::field::EventFacts;
use authwatch_rules::{Alert, Engine, EngineConfig, Prefilter};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};

use super::agg::{clean, dim_values};
use super::build_filter;
use crate::pipeline::Pipeline;
use crate::rule_files;
use crate::sinks::AlertSink;
use crate::sources::files::{plan, FormatChoice};

/// `authwatch top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Files, directories, or `-` for standard input (e.g. `tail -F audit.log | authwatch top -`).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Input framing: auto (by content), jsonl, cw-export, filter-log-events, subscription.
    #[arg(long, default_value = "auto", value_parser = crate::sources::files::FormatChoice::parse_arg)]
    pub input_format: FormatChoice,
    /// Rule files or directories (default: the bundled rules), for the alerts.
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Seconds between redraws.
    #[arg(long, default_value_t = 2)]
    pub refresh: u64,
}

/// The dimensions `top` shows (indexes into [`dim_values`]).
const DIMS: [(usize, &str); 3] = [(1, "sourceIPs"), (2, "user.username"), (0, "host")];
/// The windows, in minutes.
const WINDOWS: [i64; 3] = [5, 15, 60];
/// Distinct values kept per dimension and minute; more are counted as `(other)`.
const MAX_KEYS_PER_MINUTE: usize = 50_000;
const MINUTE: Micros = 60_000_000;

#[derive(Default)]
struct Minute {
    index: i64,
    counts: [HashMap<String, u64>; 3],
}

/// What the reader has counted so far.
#[derive(Default)]
pub struct TopState {
    minutes: VecDeque<Minute>,
    newest: Option<Micros>,
    records: u64,
    denied: u64,
    alerts: VecDeque<Alert>,
    alerts_total: u64,
    finished: Option<String>,
}

impl TopState {
    fn add(&mut self, t: Micros, values: &[Vec<String>; 7]) {
        self.denied += 1;
        let newest = self.newest.map_or(t, |n| n.max(t));
        self.newest = Some(newest);
        let m = t.div_euclid(MINUTE);
        let oldest = newest.div_euclid(MINUTE) - (WINDOWS[2] - 1);
        if m < oldest {
            return;
        }
        while self.minutes.front().is_some_and(|f| f.index < oldest) {
            self.minutes.pop_front();
        }
        let pos = match self.minutes.iter().rposition(|b| b.index <= m) {
            Some(p) if self.minutes[p].index == m => p,
            Some(p) => {
                self.minutes.insert(
                    p + 1,
                    Minute {
                        index: m,
                        ..Default::default()
                    },
                );
                p + 1
            }
            None => {
                self.minutes.push_front(Minute {
                    index: m,
                    ..Default::default()
                });
                0
            }
        };
        let bucket = &mut self.minutes[pos];
        for (slot, (d, _)) in DIMS.iter().enumerate() {
            for v in &values[*d] {
                let map = &mut bucket.counts[slot];
                let key = if map.len() < MAX_KEYS_PER_MINUTE || map.contains_key(v) {
                    clean(v)
                } else {
                    "(other)".to_owned()
                };
                *map.entry(key).or_default() += 1;
            }
        }
    }

    /// The top `n` values of dimension `slot` over the last `minutes`, and their total.
    pub fn top(&self, slot: usize, minutes: i64, n: usize) -> (Vec<(String, u64)>, u64) {
        let Some(newest) = self.newest else {
            return (Vec::new(), 0);
        };
        let from = newest.div_euclid(MINUTE) - (minutes - 1);
        let mut sum: HashMap<&str, u64> = HashMap::new();
        let mut total = 0;
        for b in self.minutes.iter().filter(|b| b.index >= from) {
            for (k, c) in &b.counts[slot] {
                *sum.entry(k).or_default() += c;
                total += c;
            }
        }
        let mut v: Vec<(String, u64)> = sum.into_iter().map(|(k, c)| (k.to_owned(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        (v, total)
    }
}

fn lock(s: &Mutex<TopState>) -> MutexGuard<'_, TopState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct StateSink(Arc<Mutex<TopState>>);

impl AlertSink for StateSink {
    fn name(&self) -> &str {
        "top"
    }
    fn deliver(&mut self, alert: &Alert) -> std::io::Result<()> {
        let mut s = lock(&self.0);
        s.alerts_total += 1;
        if s.alerts.len() == 50 {
            s.alerts.pop_front();
        }
        s.alerts.push_back(super::agg::clean_alert(alert.clone()));
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the inputs into `state` (on the calling thread) until they end.
fn read(args: &TopArgs, state: &Arc<Mutex<TopState>>) -> Result<(), String> {
    let rules = rule_files::load(&args.rules).map_err(|e| e.to_string())?;
    let (filter, _) = build_filter(&rules, None, &[], None).map_err(|e| e.to_string())?;
    let prefilter = Prefilter::new(std::slice::from_ref(&filter));
    let plan = plan(&args.inputs, args.input_format).map_err(|e| e.to_string())?;
    let mut sink = StateSink(state.clone());
    let engine = Engine::new(rules, EngineConfig::default());
    let mut pipeline = Pipeline::new(engine, vec![&mut sink], true);
    plan.run(&Arc::new(AtomicU64::new(0)), &mut |record, loc| {
        if let Ok(r) = &record {
            lock(state).records += 1;
            if prefilter.may_match(r.message) {
                visit_events(r, &mut |ev| {
                    let Ok(view) = ev else { return };
                    let Some(t) = view.time else { return };
                    if filter.matches(&EventFacts::new(&view)) {
                        lock(state).add(t, &dim_values(&view));
                    }
                });
            }
        }
        pipeline.on_record(record, loc)
    })
    .map_err(|e| e.to_string())?;
    pipeline.finish().map_err(|e| e.to_string())
}

/// Runs `authwatch top`; the exit status.
pub fn main(args: TopArgs) -> ExitCode {
    let state = Arc::new(Mutex::new(TopState::default()));
    // Rule and input errors before the screen is taken over.
    if let Err(e) = rule_files::load(&args.rules) {
        eprintln!("authwatch: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = plan(&args.inputs, args.input_format) {
        eprintln!("authwatch: {e}");
        return ExitCode::from(1);
    }
    let reader_state = state.clone();
    let refresh = Duration::from_secs(args.refresh.max(1));
    std::thread::spawn(move || {
        let outcome = read(&args, &reader_state);
        lock(&reader_state).finished = Some(match outcome {
            Ok(()) => "input ended".to_owned(),
            Err(e) => format!("error: {e}"),
        });
    });
    let mut terminal = ratatui::init();
    let result = ui(&mut terminal, &state, refresh);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authwatch: terminal: {e}");
            ExitCode::from(1)
        }
    }
}

fn ui(
    terminal: &mut ratatui::DefaultTerminal,
    state: &Mutex<TopState>,
    refresh: Duration,
) -> std::io::Result<()> {
    let (mut dim, mut win) = (0usize, 1usize);
    loop {
        terminal.draw(|f| {
            let s = lock(state);
            let areas = Layout::vertical([
                Constraint::Length(4),
                Constraint::Min(6),
                Constraint::Length(9),
            ])
            .split(f.area());
            let now = s.newest.map_or("-".to_owned(), format_millis);
            let status = s.finished.clone().unwrap_or_else(|| "reading".to_owned());
            let tabs: Vec<String> = DIMS
                .iter()
                .enumerate()
                .map(|(i, (_, n))| {
                    if i == dim {
                        format!("[{n}]")
                    } else {
                        n.to_string()
                    }
                })
                .collect();
            let wins: Vec<String> = WINDOWS
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    if i == win {
                        format!("[{m}m]")
                    } else {
                        format!("{m}m")
                    }
                })
                .collect();
            let head = vec![
                Line::from(format!(
                    "denied (401/403): {} of {} records; newest event {now}; {status}",
                    s.denied, s.records
                )),
                Line::from(format!(
                    "{}   window {}   keys: d/Tab dimension, w window, q quit",
                    tabs.join(" "),
                    wins.join(" ")
                )),
            ];
            f.render_widget(
                Paragraph::new(head).block(Block::bordered().title(" authwatch top ")),
                areas[0],
            );
            let rows_fit = usize::from(areas[1].height.saturating_sub(3));
            let (top, total) = s.top(dim, WINDOWS[win], rows_fit.max(1));
            let rows: Vec<Row> = top
                .iter()
                .enumerate()
                .map(|(i, (k, c))| {
                    let share = if total > 0 {
                        *c as f64 * 100.0 / total as f64
                    } else {
                        0.0
                    };
                    Row::new(vec![
                        (i + 1).to_string(),
                        k.clone(),
                        c.to_string(),
                        format!("{share:.1}%"),
                    ])
                })
                .collect();
            let table = Table::new(
                rows,
                [
                    Constraint::Length(4),
                    Constraint::Min(20),
                    Constraint::Length(10),
                    Constraint::Length(8),
                ],
            )
            .header(Row::new(vec!["#", DIMS[dim].1, "count", "share"]).style(Style::new().bold()))
            .block(Block::bordered().title(format!(
                " top {} over the last {} minutes: {total} ",
                DIMS[dim].1, WINDOWS[win]
            )));
            f.render_widget(table, areas[1]);
            let alerts: Vec<Line> = s
                .alerts
                .iter()
                .rev()
                .take(usize::from(areas[2].height.saturating_sub(2)))
                .map(|a| {
                    let group: Vec<String> =
                        a.group.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    Line::from(format!(
                        "{}  {}  {}  count {}",
                        format_millis(a.window_end),
                        a.rule,
                        group.join(","),
                        a.count
                    ))
                })
                .collect();
            f.render_widget(
                Paragraph::new(alerts)
                    .block(Block::bordered().title(format!(" alerts: {} ", s.alerts_total))),
                areas[2],
            );
        })?;
        if event::poll(refresh)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(())
                    }
                    KeyCode::Tab | KeyCode::Char('d') => dim = (dim + 1) % DIMS.len(),
                    KeyCode::Char('w') => win = (win + 1) % WINDOWS.len(),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(ip: &str, user: &str) -> [Vec<String>; 7] {
        [
            vec!["h".into()],
            vec![ip.into()],
            vec![user.into()],
            vec![],
            vec![],
            vec![],
            vec![],
        ]
    }

    #[test]
    fn windows_count_the_last_minutes_of_event_time() {
        let mut s = TopState::default();
        for i in 0..10 {
            s.add(i * MINUTE, &vals("a", "u"));
        }
        s.add(9 * MINUTE, &vals("b", "u"));
        s.add(9 * MINUTE, &vals("b", "u"));
        let (top, total) = s.top(0, 5, 10);
        assert_eq!(top, vec![("a".to_owned(), 5), ("b".to_owned(), 2)]);
        assert_eq!(total, 7);
        let (top, _) = s.top(0, 60, 10);
        assert_eq!(top[0], ("a".to_owned(), 10));
        // Far older than the largest window: not kept.
        s.add(-100 * MINUTE, &vals("old", "u"));
        assert!(s.top(0, 60, 10).0.iter().all(|(k, _)| k != "old"));
    }
}
