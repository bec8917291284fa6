//! [`CheckpointStore`]: the durable position of a live run.
//!
//! The file holds, per log group, how far the reader has processed (`position_ms`) and where
//! the run first started (`floor_ms`), plus a bounded record of the alert ids already handed
//! to the sinks. It is written only after a pass's events were processed and their alerts
//! delivered, atomically (temp file, fsync, rename, fsync of the directory), with a checksum
//! so that a torn or edited file is detected instead of being taken for a fresh start.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The file name inside the state directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const FORMAT_VERSION: u32 = 1;

/// Where one log group's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPosition {
    /// Every event with a CloudWatch timestamp at or before this (ms since epoch) that had
    /// arrived by the time it was read has been processed.
    pub position_ms: i64,
    /// Where this run first started reading (`--start-at`); a rebuild never reads before it,
    /// so a restart does not report what the first run was told to ignore.
    pub floor_ms: i64,
}

/// One alert handed to the sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentAlert {
    /// [`authwatch_rules::Alert::alert_id`].
    pub id: String,
    /// The alert's `window_end`, ms since epoch; records older than the rebuild horizon are
    /// forgotten, which keeps the record bounded.
    pub window_end_ms: i64,
    /// What fired, so that a rebuilt engine keeps the cooldown this alert started
    /// (`authwatch_rules::Engine::remember_sent`). Absent in state written by earlier
    /// versions: those alerts are still recognized by id, but their cooldowns are not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<FiredAlert>,
}

/// The rule, key and exact firing time of a sent alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredAlert {
    /// Rule id.
    pub rule: String,
    /// The key's values, in `group_by` order.
    pub key: Vec<String>,
    /// `window_end`, µs since epoch.
    pub window_end_us: i64,
}

impl FiredAlert {
    /// What fired `alert`.
    pub fn of(alert: &authwatch_rules::Alert) -> FiredAlert {
        FiredAlert {
            rule: alert.rule.clone(),
            key: alert.group.0.iter().map(|(_, v)| v.clone()).collect(),
            window_end_us: alert.window_end,
        }
    }
}

/// Everything a restart needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Per log group.
    pub groups: BTreeMap<String, GroupPosition>,
    /// Alerts already delivered, oldest first.
    pub sent_alerts: Vec<SentAlert>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    version: u32,
    checksum: String,
    state: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    version: u32,
    checksum: String,
    #[serde(borrow)]
    state: &'a RawValue,
}

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file exists but is not a valid checkpoint.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Loads and saves the checkpoint in a state directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    /// Fault injection: a pause in the middle of writing the temporary file.
    write_pause: Option<std::time::Duration>,
}

impl CheckpointStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> CheckpointStore {
        CheckpointStore {
            dir: dir.into(),
            write_pause: None,
        }
    }

    /// Fault injection for crash tests: every save writes half of the temporary file, syncs
    /// it, waits `pause`, then writes the rest, so that a `kill -9` can land inside a state
    /// write on purpose (`AUTHWATCH_FAULT_STATE_WRITE_PAUSE_MS` in `authwatch run`).
    pub fn with_write_pause(mut self, pause: std::time::Duration) -> CheckpointStore {
        self.write_pause = Some(pause);
        self
    }

    /// The checkpoint file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// The stored checkpoint, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.clone(),
            reason,
        };
        let env: EnvelopeIn<'_> =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        if env.version != FORMAT_VERSION {
            return Err(corrupt(format!("unknown format version {}", env.version)));
        }
        let sum = checksum(env.state.get().as_bytes());
        if sum != env.checksum {
            return Err(corrupt(format!(
                "checksum mismatch (stored {}, computed {sum})",
                env.checksum
            )));
        }
        let state: Checkpoint = serde_json::from_str(env.state.get())
            .map_err(|e| corrupt(format!("bad state: {e}")))?;
        Ok(Some(state))
    }

    /// Writes `state` atomically: a reader (or a restart after `kill -9` or power loss) sees
    /// either the old file or the new one, never a mix.
    pub fn save(&self, state: &Checkpoint) -> Result<(), CheckpointError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let body = serde_json::to_string(state).map_err(|e| CheckpointError::Io {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        let raw = RawValue::from_string(body).map_err(|e| CheckpointError::Io {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        let env = EnvelopeOut {
            version: FORMAT_VERSION,
            checksum: checksum(raw.get().as_bytes()),
            state: &raw,
        };
        let mut text = serde_json::to_vec(&env).map_err(|e| CheckpointError::Io {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut rest = &text[..];
            if let Some(pause) = self.write_pause {
                let (head, tail) = text.split_at(text.len() / 2);
                f.write_all(head).map_err(io_err(&tmp))?;
                f.sync_all().map_err(io_err(&tmp))?;
                std::thread::sleep(pause);
                rest = tail;
            }
            f.write_all(rest).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        let path = self.path();
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The rename itself is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

/// FNV-1a 64 of the state text, as 16 hex digits: enough to catch torn writes and edits
/// (this is an integrity check, not a signature).
fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut c = Checkpoint::default();
        c.groups.insert(
            "/aws/eks/prod/cluster".into(),
            GroupPosition {
                position_ms: 1_700_000_000_000,
                floor_ms: 1_699_999_000_000,
            },
        );
        c.sent_alerts.push(SentAlert {
            id: "abc".into(),
            window_end_ms: 1_700_000_000_000,
            fired: Some(FiredAlert {
                rule: "r".into(),
                key: vec!["198.51.100.7".into(), "a user\nwith a newline".into()],
                window_end_us: 1_700_000_000_000_123,
            }),
        });
        c.sent_alerts.push(SentAlert {
            id: "def".into(),
            window_end_ms: 1_700_000_000_001,
            fired: None,
        });
        c
    }

    #[test]
    fn round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("state"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample()));
        assert!(!dir.path().join("state/checkpoint.json.tmp").exists());
    }

    #[test]
    fn a_flipped_byte_or_truncation_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.save(&sample()).unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        let edited = text.replace("1700000000000", "1700000000001");
        fs::write(store.path(), edited).unwrap();
        assert!(matches!(store.load(), Err(CheckpointError::Corrupt { .. })));
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        assert!(matches!(store.load(), Err(CheckpointError::Corrupt { .. })));
    }
}
