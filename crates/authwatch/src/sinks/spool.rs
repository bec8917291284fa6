//! [`Spool`]: a bounded on-disk queue of messages waiting for delivery.
//!
//! A sink that talks to a remote service (SNS) must neither lose an alert when the service
//! is down nor hold up detection while it waits. So the sink writes each message here first
//! (one file per message: written to a temporary name, fsync'd, renamed, the directory
//! fsync'd) and returns; a delivery thread sends them in order and deletes each file once
//! the service has accepted it. Whatever is in the directory when the process stops is sent
//! by the next process started with the same state directory.
//!
//! The spool is bounded by a number of messages and a number of bytes. A message that does
//! not fit is refused ([`Pushed::Overflow`]): the caller counts and logs it. Messages the
//! service rejects as malformed (they would block the queue for ever) are moved to
//! `rejected/` beside it, for an operator to look at.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bounds of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Messages held at most.
    pub max_messages: usize,
    /// Bytes held at most (sum of the message files).
    pub max_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_messages: 10_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The result of [`Spool::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// On disk, with this sequence number.
    Spooled(u64),
    /// The spool is full; the message was not kept.
    Overflow,
}

/// One message in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (delivery order).
    pub seq: u64,
    /// Its bytes.
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    next_seq: u64,
    overflowed: u64,
    rejected: u64,
}

/// A bounded on-disk FIFO shared by one writer (the sink) and one reader (its delivery
/// thread).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    inner: Mutex<Inner>,
    ready: Condvar,
}

const SUFFIX: &str = ".msg";

impl Spool {
    /// Opens (creating) the spool in `dir`, taking over what a previous process left there.
    /// Files that are not whole messages (temporary files of a write cut short) are removed.
    pub fn open(dir: &Path, limits: SpoolLimits) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                // A write that did not reach its rename was never reported as spooled.
                fs::remove_file(entry.path())?;
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((seq, entry.metadata()?.len()));
        }
        found.sort_unstable();
        let bytes = found.iter().map(|(_, n)| n).sum();
        let next_seq = found.last().map_or(0, |(s, _)| s + 1);
        Ok(Spool {
            dir: dir.to_owned(),
            limits,
            inner: Mutex::new(Inner {
                queue: found.into_iter().collect(),
                bytes,
                next_seq,
                overflowed: 0,
                rejected: 0,
            }),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every field is updated after
        // the file operation succeeds), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Writes a message durably, or refuses it when the spool is full.
    pub fn push(&self, body: &[u8]) -> io::Result<Pushed> {
        let mut inner = self.lock();
        let len = body.len() as u64;
        if inner.queue.len() >= self.limits.max_messages
            || inner.bytes.saturating_add(len) > self.limits.max_bytes
        {
            inner.overflowed += 1;
            return Ok(Pushed::Overflow);
        }
        let seq = inner.next_seq;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        inner.next_seq += 1;
        inner.queue.push_back((seq, len));
        inner.bytes += len;
        drop(inner);
        self.ready.notify_all();
        Ok(Pushed::Spooled(seq))
    }

    /// Up to `max` messages from the front, in order, with at most `max_bytes` in all (but
    /// always at least one); waits up to `wait` for one to arrive. Messages stay in the
    /// spool until [`Spool::remove`] or [`Spool::reject`].
    pub fn front(&self, max: usize, max_bytes: u64, wait: Duration) -> io::Result<Vec<Entry>> {
        let mut inner = self.lock();
        if inner.queue.is_empty() {
            inner = self
                .ready
                .wait_timeout_while(inner, wait, |i| i.queue.is_empty())
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        let mut picked = Vec::new();
        let mut total = 0u64;
        for &(seq, len) in inner.queue.iter().take(max) {
            if !picked.is_empty() && total + len > max_bytes {
                break;
            }
            total += len;
            picked.push(seq);
        }
        drop(inner);
        let mut out = Vec::with_capacity(picked.len());
        for seq in picked {
            out.push(Entry {
                seq,
                body: fs::read(self.path(seq))?,
            });
        }
        Ok(out)
    }

    /// Deletes a delivered message.
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        match fs::remove_file(self.path(seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.forget(seq);
        Ok(())
    }

    /// Moves a message the service will never accept to `rejected/`.
    pub fn reject(&self, seq: u64) -> io::Result<PathBuf> {
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir)?;
        let to = dir.join(format!("{seq:020}{SUFFIX}"));
        fs::rename(self.path(seq), &to)?;
        self.forget(seq);
        self.lock().rejected += 1;
        Ok(to)
    }

    fn forget(&self, seq: u64) {
        let mut inner = self.lock();
        if let Some(i) = inner.queue.iter().position(|(s, _)| *s == seq) {
            if let Some((_, len)) = inner.queue.remove(i) {
                inner.bytes = inner.bytes.saturating_sub(len);
            }
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages refused because the spool was full, since it was opened.
    pub fn overflowed(&self) -> u64 {
        self.lock().overflowed
    }

    /// Messages moved to `rejected/`, since it was opened.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wakes a reader blocked in [`Spool::front`] (used when shutting down).
    pub fn wake(&self) {
        self.ready.notify_all();
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits::default();
        let s = Spool::open(dir.path(), limits).unwrap();
        for i in 0..5 {
            assert_eq!(
                s.push(format!("m{i}").as_bytes()).unwrap(),
                Pushed::Spooled(i)
            );
        }
        let first = s.front(2, u64::MAX, Duration::ZERO).unwrap();
        assert_eq!(first[0].body, b"m0");
        s.remove(first[0].seq).unwrap();
        drop(s);
        // A write cut short before its rename is not a message.
        fs::write(dir.path().join("00000000000000000009.tmp"), b"half").unwrap();
        let s = Spool::open(dir.path(), limits).unwrap();
        assert_eq!(s.len(), 4);
        let all = s.front(10, u64::MAX, Duration::ZERO).unwrap();
        let bodies: Vec<_> = all.iter().map(|e| e.body.clone()).collect();
        assert_eq!(
            bodies,
            vec![
                b"m1".to_vec(),
                b"m2".to_vec(),
                b"m3".to_vec(),
                b"m4".to_vec()
            ]
        );
        // New messages go after the old ones.
        assert_eq!(s.push(b"m5").unwrap(), Pushed::Spooled(5));
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
    }

    #[test]
    fn full_spool_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(
            dir.path(),
            SpoolLimits {
                max_messages: 2,
                max_bytes: 1000,
            },
        )
        .unwrap();
        assert!(matches!(s.push(b"a").unwrap(), Pushed::Spooled(_)));
        assert!(matches!(s.push(b"b").unwrap(), Pushed::Spooled(_)));
        assert_eq!(s.push(b"c").unwrap(), Pushed::Overflow);
        assert_eq!(s.overflowed(), 1);
        let e = s.front(1, u64::MAX, Duration::ZERO).unwrap();
        s.remove(e[0].seq).unwrap();
        assert!(matches!(s.push(&[b'x'; 1000]).unwrap(), Pushed::Overflow));
        assert!(matches!(s.push(&[b'x'; 999]).unwrap(), Pushed::Spooled(_)));
    }

    #[test]
    fn front_respects_the_byte_budget_but_returns_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        s.push(&[1; 100]).unwrap();
        s.push(&[2; 100]).unwrap();
        assert_eq!(s.front(10, 150, Duration::ZERO).unwrap().len(), 1);
        assert_eq!(s.front(10, 50, Duration::ZERO).unwrap().len(), 1);
        assert_eq!(s.front(10, 200, Duration::ZERO).unwrap().len(), 2);
        let r = s.reject(0).unwrap();
        assert!(r.exists());
        assert_eq!(s.len(), 1);
        assert_eq!(s.rejected(), 1);
    }
}
