//! [`LedgerSink`]: hands each alert to the real sinks at most once across restarts.
//!
//! A restart rebuilds window state by re-reading events the previous process already saw,
//! so the engine fires some of the same alerts again (same `alert_id`). The ledger remembers
//! the ids already delivered — in the checkpoint, plus a small fsync'd journal appended right
//! after each delivery so that an alert sent between two checkpoints is known too — and
//! drops the repeats. It also keeps each sent alert's rule, key and `window_end`, which the
//! rebuilt engine is told ([`authwatch_rules::Engine::remember_sent`]) so that it keeps the
//! cooldowns the previous process had started. It never sees events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use authwatch_aws::{FiredAlert, SentAlert};
use authwatch_rules::Alert;

use super::AlertSink;

/// The journal file inside the state directory.
pub const JOURNAL_FILE: &str = "sent-alerts.journal";

/// The set of alert ids already delivered, with their `window_end` (ms) for pruning and
/// what fired them.
#[derive(Debug)]
pub struct SentLedger {
    ids: HashMap<String, (i64, Option<FiredAlert>)>,
    journal_path: PathBuf,
    journal: Option<File>,
    /// The journal ends in a line cut short by a crash: the next record starts a new line.
    torn_tail: bool,
}

impl SentLedger {
    /// The ledger for `state_dir`: the ids from the checkpoint plus those in the journal.
    pub fn open(state_dir: &Path, from_checkpoint: &[SentAlert]) -> io::Result<SentLedger> {
        fs::create_dir_all(state_dir)?;
        let journal_path = state_dir.join(JOURNAL_FILE);
        let mut ids: HashMap<String, (i64, Option<FiredAlert>)> = from_checkpoint
            .iter()
            .map(|s| (s.id.clone(), (s.window_end_ms, s.fired.clone())))
            .collect();
        let mut torn_tail = false;
        // Bytes, not text: a line cut inside a multi-byte character must not stop the run.
        match fs::read(&journal_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                torn_tail = !text.is_empty() && !text.ends_with('\n');
                // `<id> <window_end ms> <fired, JSON>` (earlier versions: no JSON). A line cut
                // short by a crash before its window_end is ignored: the alert it names was
                // being recorded, so at worst it is delivered once more. One cut inside the
                // JSON still records the id.
                for line in text.lines() {
                    let mut parts = line.splitn(3, ' ');
                    let (Some(id), Some(end)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    if let Ok(end) = end.parse::<i64>() {
                        let fired = parts.next().and_then(|j| serde_json::from_str(j).ok());
                        ids.insert(id.to_owned(), (end, fired));
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
            torn_tail,
        })
    }

    /// Whether the alert with this id was delivered already.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Records a delivered alert, durably.
    pub fn record(&mut self, alert: &Alert) -> io::Result<()> {
        let end_ms = alert.window_end.div_euclid(1000);
        let fired = FiredAlert::of(alert);
        // serde_json escapes every control character: the line stays one line whatever the
        // key holds.
        let fired_json = serde_json::to_string(&fired).unwrap_or_default();
        self.ids
            .insert(alert.alert_id.clone(), (end_ms, Some(fired)));
        if self.journal.is_none() {
            self.journal = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.journal_path)?,
            );
        }
        if let Some(f) = &mut self.journal {
            if self.torn_tail {
                f.write_all(b"\n")?;
                self.torn_tail = false;
            }
            writeln!(f, "{} {end_ms} {fired_json}", alert.alert_id)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Forgets ids whose window ended before `min_end_ms` (no rebuild reaches back there) and
    /// returns the rest, oldest first, for the checkpoint.
    pub fn prune_and_snapshot(&mut self, min_end_ms: i64) -> Vec<SentAlert> {
        self.ids.retain(|_, (end, _)| *end >= min_end_ms);
        let mut v: Vec<SentAlert> = self
            .ids
            .iter()
            .map(|(id, (end, fired))| SentAlert {
                id: id.clone(),
                window_end_ms: *end,
                fired: fired.clone(),
            })
            .collect();
        v.sort_by(|a, b| (a.window_end_ms, &a.id).cmp(&(b.window_end_ms, &b.id)));
        v
    }

    /// Empties the journal once a checkpoint holding its ids is durable.
    pub fn clear_journal(&mut self) -> io::Result<()> {
        self.journal = None;
        self.torn_tail = false;
        match fs::remove_file(&self.journal_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// What fired the alerts held (those recorded by versions that kept it), for
    /// [`authwatch_rules::Engine::remember_sent`].
    pub fn fired(&self) -> impl Iterator<Item = &FiredAlert> {
        self.ids.values().filter_map(|(_, fired)| fired.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use authwatch_rules::alert::Group;

    fn alert(id: &str, key: &str, end_us: i64) -> Alert {
        let mut a = crate::sinks::notification::tests::alert_with("198.51.100.7", key);
        a.rule = "r".into();
        a.group = Group(vec![
            ("sourceIPs".into(), "198.51.100.7".into()),
            ("user.username".into(), key.into()),
        ]);
        a.window_end = end_us;
        a.alert_id = id.into();
        a
    }

    #[test]
    fn the_journal_keeps_what_fired_whatever_the_key_holds_and_reads_older_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = SentLedger::open(dir.path(), &[]).unwrap();
        let hostile = "eve \r\n0000 1 {\"rule\":\"forged\"} \u{1b}[2J";
        ledger
            .record(&alert("a1", hostile, 1_700_000_000_000_123))
            .unwrap();
        drop(ledger);
        // A line of an earlier version, one torn inside its JSON, one torn before its end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        write!(
            f,
            "old 1700000000001\ntorn 1700000000002 {{\"rule\":\"r\",\"ke\nshort"
        )
        .unwrap();
        drop(f);
        let mut ledger = SentLedger::open(dir.path(), &[]).unwrap();
        assert!(ledger.contains("a1") && ledger.contains("old") && ledger.contains("torn"));
        assert!(!ledger.contains("short"));
        assert_eq!(ledger.len(), 3);
        // The next record after a restart starts its own line: it is not glued to the torn one.
        ledger
            .record(&alert("next", "bob", 1_700_000_000_003_000))
            .unwrap();
        drop(ledger);
        let ledger = SentLedger::open(dir.path(), &[]).unwrap();
        assert!(ledger.contains("next"), "{ledger:?}");
        assert_eq!(ledger.len(), 4);
        let mut fired: Vec<&FiredAlert> = ledger.fired().collect();
        fired.sort_by_key(|f| f.window_end_us);
        assert_eq!(
            fired[0],
            &FiredAlert {
                rule: "r".into(),
                key: vec!["198.51.100.7".into(), hostile.into()],
                window_end_us: 1_700_000_000_000_123,
            }
        );
        assert_eq!(fired.len(), 2);
    }

    #[test]
    fn a_journal_cut_inside_a_multibyte_character_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes =
            b"a1 1700000000000 {\"rule\":\"r\",\"key\":[\"\xc3\xa9\"],\"window_end_us\":1}\n"
                .to_vec();
        bytes.extend_from_slice(b"a2 1700000000001 {\"rule\":\"r\",\"key\":[\"\xc3");
        std::fs::write(dir.path().join(JOURNAL_FILE), bytes).unwrap();
        let ledger = SentLedger::open(dir.path(), &[]).unwrap();
        assert!(ledger.contains("a1") && ledger.contains("a2"));
        assert_eq!(
            ledger
                .fired()
                .map(|f| f.key[0].as_str())
                .collect::<Vec<_>>(),
            ["é"]
        );
    }

    #[test]
    fn the_snapshot_carries_what_fired_and_prunes_by_window_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = SentLedger::open(dir.path(), &[]).unwrap();
        ledger.record(&alert("early", "bob", 1_000_000)).unwrap();
        ledger.record(&alert("late", "bob", 5_000_000)).unwrap();
        let snap = ledger.prune_and_snapshot(2_000);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].id, "late");
        assert_eq!(snap[0].window_end_ms, 5_000);
        assert_eq!(
            snap[0].fired.as_ref().map(|f| f.window_end_us),
            Some(5_000_000)
        );
        let reopened = SentLedger::open(tempfile::tempdir().unwrap().path(), &snap).unwrap();
        assert_eq!(reopened.fired().count(), 1);
    }
}
