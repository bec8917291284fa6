//! [`LedgerSink`]: hands each alert to the real sinks at most once across restarts.
//!
//! A restart rebuilds window state by re-reading events the previous process already saw,
//! so the engine fires some of the same alerts again (same `alert_id`). The ledger remembers
//! the ids already delivered — in the checkpoint, plus a small fsync'd journal appended right
//! after each delivery so that an alert sent between two checkpoints is known too — and
//! drops the repeats. It only looks at `alert_id` and `window_end`: it never sees events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use authwatch_aws::SentAlert;
use authwatch_rules::Alert;

use super::AlertSink;

/// The journal file inside the state directory.
pub const JOURNAL_FILE: &str = "sent-alerts.journal";

/// The set of alert ids already delivered, with their `window_end` (ms) for pruning.
#[derive(Debug)]
pub struct SentLedger {
    ids: HashMap<String, i64>,
    journal_path: PathBuf,
    journal: Option<File>,
}

impl SentLedger {
    /// The ledger for `state_dir`: the ids from the checkpoint plus those in the journal.
    pub fn open(state_dir: &Path, from_checkpoint: &[SentAlert]) -> io::Result<SentLedger> {
        fs::create_dir_all(state_dir)?;
        let journal_path = state_dir.join(JOURNAL_FILE);
        let mut ids: HashMap<String, i64> = from_checkpoint
            .iter()
            .map(|s| (s.id.clone(), s.window_end_ms))
            .collect();
        match fs::read_to_string(&journal_path) {
            Ok(text) => {
                // A line cut short by a crash has no window_end and is ignored; the alert it
                // names was being recorded, so at worst it is delivered once more.
                for line in text.lines() {
                    if let Some((id, end)) = line.split_once(' ') {
                        if let Ok(end) = end.parse::<i64>() {
                            ids.insert(id.to_owned(), end);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(SentLedger {
            ids,
            journal_path,
            journal: None,
        })
    }

    /// Whether the alert with this id was delivered already.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Records a delivered alert, durably.
    pub fn record(&mut self, alert: &Alert) -> io::Result<()> {
        let end_ms = alert.window_end.div_euclid(1000);
        self.ids.insert(alert.alert_id.clone(), end_ms);
        if self.journal.is_none() {
            self.journal = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.journal_path)?,
            );
        }
        if let Some(f) = &mut self.journal {
            writeln!(f, "{} {end_ms}", alert.alert_id)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Forgets ids whose window ended before `min_end_ms` (no rebuild reaches back there) and
    /// returns the rest, oldest first, for the checkpoint.
    pub fn prune_and_snapshot(&mut self, min_end_ms: i64) -> Vec<SentAlert> {
        self.ids.retain(|_, end| *end >= min_end_ms);
        let mut v: Vec<SentAlert> = self
            .ids
            .iter()
            .map(|(id, end)| SentAlert {
                id: id.clone(),
                window_end_ms: *end,
            })
            .collect();
        v.sort_by(|a, b| (a.window_end_ms, &a.id).cmp(&(b.window_end_ms, &b.id)));
        v
    }

    /// Empties the journal once a checkpoint holding its ids is durable.
    pub fn clear_journal(&mut self) -> io::Result<()> {
        self.journal = None;
        match fs::remove_file(&self.journal_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A sink that passes each alert to `inner` unless the ledger says it was delivered before,
/// then records it.
pub struct LedgerSink<'a> {
    ledger: Rc<RefCell<SentLedger>>,
    inner: &'a mut dyn AlertSink,
    suppressed: u64,
    journal_failures: u64,
}

impl<'a> LedgerSink<'a> {
    /// Wraps `inner` (several sinks: a [`super::Fanout`]).
    pub fn new(ledger: Rc<RefCell<SentLedger>>, inner: &'a mut dyn AlertSink) -> Self {
        LedgerSink {
            ledger,
            inner,
            suppressed: 0,
            journal_failures: 0,
        }
    }

    /// Alerts dropped as already delivered.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl AlertSink for LedgerSink<'_> {
    fn name(&self) -> &str {
        "ledger"
    }

    fn deliver(&mut self, alert: &Alert) -> io::Result<()> {
        if self.ledger.borrow().contains(&alert.alert_id) {
            self.suppressed += 1;
            return Ok(());
        }
        self.inner.deliver(alert)?;
        // Delivered; if it cannot be journalled (state directory full or read-only), a
        // restart may deliver it once more (same alert_id): a duplicate, never a loss.
        if let Err(e) = self.ledger.borrow_mut().record(alert) {
            self.journal_failures += 1;
            tracing::error!(
                "authwatch: recording delivered alert {} in the journal: {e} ({} failures)",
                alert.alert_id,
                self.journal_failures
            );
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn close(&mut self) -> io::Result<()> {
        self.inner.close()
    }

    fn figures(&self, out: &mut std::collections::BTreeMap<String, super::SinkFigures>) {
        self.inner.figures(out);
    }
}
