//! A gzip input inflated on a thread of its own, ahead of its reader.
//!
//! Inflating is most of the work of reading a gzip file or a CloudWatch S3 export (zlib-rs
//! gives about 1.2 GB/s of output on one core, the rest of replay about as much again), and
//! it is sequential within one gzip stream. On its own thread it runs beside the framing and
//! the workers, and the streams of an export tree, which the merge reads side by side, are
//! inflated in parallel. The bytes, and so the records and their order, are exactly those
//! read inline; an error (a corrupt stream, the decompression-bomb bound) reaches the reader
//! at the point it would have inline, and a thread that stops early is an error, never an
//! early end of input.
//!
//! Memory is bounded: at most [`CHUNKS_AHEAD`] chunks of [`CHUNK_BYTES`] wait per input,
//! and at most [`MAX_INFLATERS`] inputs are inflated ahead at once (an export tree with more
//! streams inflates the rest inline, as before).

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::files::open_decoded;

/// Bytes handed over at a time.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// Chunks that may wait for the reader, per input (1 MiB). A merge of an export tree reads
/// the stream whose next line is earliest, so it waits on whichever inflater has run dry;
/// with two chunks it did so often on two cores (cw-export of 2M events: 1.82 s median of 7
/// runs, 1.68 s with eight; peak RSS 19 -> 23 MiB).
pub const CHUNKS_AHEAD: usize = 8;

/// Inputs inflated ahead at once, across the process.
pub const MAX_INFLATERS: usize = 16;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

enum Piece {
    Bytes(Vec<u8>),
    End,
    Failed(io::Error),
}

enum State {
    Reading,
    Ended,
    Failed(io::ErrorKind, String),
}

/// The decompressed content of a gzip input, inflated on its own thread (see the module).
pub struct InflateAhead {
    rx: Receiver<Piece>,
    /// Read chunks go back to the thread to be filled again (no allocation, no page faults).
    used: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    state: State,
}

/// Frees an inflater's place when its thread ends, however it ends.
struct Place;

impl Drop for Place {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InflateAhead {
    /// Starts inflating `gzip` (a gzip input from its first byte) on a new thread. Gives the
    /// input back when [`MAX_INFLATERS`] are already running or no thread can be started:
    /// the caller then inflates it inline.
    pub fn start<R: Read + Send + 'static>(gzip: R) -> Result<InflateAhead, R> {
        let taken = RUNNING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_INFLATERS).then_some(n + 1)
        });
        if taken.is_err() {
            return Err(gzip);
        }
        let place = Place;
        let (tx, rx) = sync_channel(CHUNKS_AHEAD);
        let (used, used_rx) = sync_channel::<Vec<u8>>(CHUNKS_AHEAD + 1);
        // The input goes to the thread once it runs: if it cannot be started, the input is
        // still here to give back.
        let (start_tx, start_rx) = sync_channel::<R>(1);
        let spawned = std::thread::Builder::new()
            .name("authwatch-inflate".into())
            .spawn(move || {
                let _place = place;
                let Ok(gzip) = start_rx.recv() else { return };
                let mut reader = match open_decoded(Box::new(gzip)) {
                    Ok((reader, _)) => reader,
                    Err(e) => {
                        let _ = tx.send(Piece::Failed(e));
                        return;
                    }
                };
                loop {
                    let mut chunk = used_rx.try_recv().unwrap_or_default();
                    chunk.resize(CHUNK_BYTES, 0);
                    let mut n = 0;
                    let mut failed = None;
                    while n < chunk.len() {
                        match reader.read(&mut chunk[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    chunk.truncate(n);
                    // The bytes before an error first, as an inline reader would see them.
                    if n > 0 && tx.send(Piece::Bytes(chunk)).is_err() {
                        return; // The reader is gone.
                    }
                    if let Some(e) = failed {
                        let _ = tx.send(Piece::Failed(e));
                        return;
                    }
                    if n == 0 {
                        let _ = tx.send(Piece::End);
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => match start_tx.send(gzip) {
                Ok(()) => Ok(InflateAhead {
                    rx,
                    used,
                    chunk: Vec::new(),
                    pos: 0,
                    state: State::Reading,
                }),
                // The thread ended before taking its input (it cannot: it waits for it).
                Err(e) => Err(e.0),
            },
            Err(_) => Err(gzip),
        }
    }
}

impl Read for InflateAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for InflateAhead {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match &self.state {
                State::Reading => {}
                State::Ended => return Ok(&[]),
                State::Failed(kind, message) => return Err(io::Error::new(*kind, message.clone())),
            }
            match self.rx.recv() {
                Ok(Piece::Bytes(chunk)) => {
                    let done = std::mem::replace(&mut self.chunk, chunk);
                    // Full (the thread is behind) or gone: the chunk is simply freed.
                    let _ = self.used.try_send(done);
                    self.pos = 0;
                }
                Ok(Piece::End) => self.state = State::Ended,
                Ok(Piece::Failed(e)) => {
                    // Kept, so that a reader that asks again gets the error again.
                    self.state = State::Failed(e.kind(), e.to_string());
                    return Err(e);
                }
                Err(_) => {
                    self.state = State::Failed(
                        io::ErrorKind::Other,
                        "the inflate thread stopped before the end of its input".into(),
                    );
                }
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.chunk.len());
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn gzip_members(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(part).unwrap();
            out.extend(enc.finish().unwrap());
        }
        out
    }

    fn inline(gzip: Vec<u8>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let result = open_decoded(Box::new(Cursor::new(gzip)))
            .and_then(|(mut r, _)| r.read_to_end(&mut out));
        (out, result.err().map(|e| e.to_string()))
    }

    fn ahead(gzip: Vec<u8>) -> (Vec<u8>, Option<String>) {
        let mut reader = match InflateAhead::start(Cursor::new(gzip)) {
            Ok(r) => r,
            Err(_) => panic!("no inflater place in a test"),
        };
        let mut out = Vec::new();
        let result = reader.read_to_end(&mut out);
        (out, result.err().map(|e| e.to_string()))
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{{\"auditID\":\"{i}\",\"verb\":\"get\"}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn gives_the_bytes_an_inline_reader_gives_across_members_and_chunks() {
        let (a, b) = (text(20_000), text(3));
        let gzip = gzip_members(&[&a, &b, b"", &a]);
        let (got, err) = ahead(gzip.clone());
        assert_eq!(err, None);
        assert!(got.len() > 2 * CHUNK_BYTES);
        assert_eq!(got, inline(gzip).0);
    }

    #[test]
    fn a_corrupt_stream_is_the_same_error_after_the_same_bytes_not_an_early_end() {
        let mut gzip = gzip_members(&[&text(50_000)]);
        let cut = gzip.len() / 2;
        gzip.truncate(cut);
        let (got, err) = ahead(gzip.clone());
        let (want, want_err) = inline(gzip);
        assert!(want_err.is_some(), "the cut stream reads clean inline");
        assert_eq!(err, want_err);
        assert_eq!(got, want);
    }

    #[test]
    fn the_decompression_bomb_bound_holds_on_the_thread() {
        let bomb = crate::sources::files::tests::gzip_bomb();
        let Ok(mut reader) = InflateAhead::start(Cursor::new(bomb)) else {
            panic!("no inflater place in a test");
        };
        crate::sources::files::tests::assert_bomb_cut_off(&mut reader);
    }

    #[test]
    fn a_reader_that_asks_again_after_an_error_gets_it_again() {
        let mut gzip = gzip_members(&[&text(1000)]);
        gzip.truncate(gzip.len() - 4);
        let mut reader = match InflateAhead::start(Cursor::new(gzip)) {
            Ok(r) => r,
            Err(_) => panic!("no inflater place in a test"),
        };
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).is_err());
        assert!(reader.fill_buf().is_err());
    }
}
