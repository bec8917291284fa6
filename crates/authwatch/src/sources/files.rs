//! Replay inputs: files, directories (CloudWatch Logs' S3 export trees among them) and
//! standard input, each recognized by content.
//!
//! [`plan`] looks at every input once (gzip by magic bytes, then the framing by the first
//! decompressed bytes) and groups cw-export files into streams: in an export tree
//! `<taskId>/<logStream>/000000.gz`, the directory a file sits in names its log stream, which
//! becomes the events' `host`. [`Plan::run`] then reads everything, merging the streams of an
//! export tree by time (the files of one stream are already in time order).

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use authwatch_event::framing::{self, detect, is_gzip, Format, FramingError, Origin};
use authwatch_event::{Micros, RawRecord};

use super::inflate_ahead::InflateAhead;

/// Longest record (line) read. A longer one is consumed without being kept in memory and
/// counted as `record_too_long`: a hostile 100 MB line costs time, not memory. (CloudWatch
/// events are at most 256 KB; audit events with the largest request objects a few MB.)
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Reads one line (with its newline) into `buf`, which is cleared first. Returns the line's
/// length, 0 at the end of input. A line longer than `max` is read to its end but not kept:
/// `buf` is then empty and the length returned is above `max`.
pub fn read_line_bounded(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.clear();
    let mut total = 0;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(total);
        }
        let (n, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if total + n <= max {
            buf.extend_from_slice(&available[..n]);
        } else {
            buf.clear();
        }
        total += n;
        r.consume(n);
        if done {
            return Ok(total);
        }
    }
}

/// Gzip inputs may decompress to at most this many times the compressed bytes read so far,
/// plus [`GZIP_SLACK_BYTES`]. Audit logs compress about 10:1 (the shared corpus: 9.6:1; the
/// demo export about 8:1); deflate cannot exceed about 1032:1, which is what a gzip bomb
/// (gigabytes of zeros) uses. Past the bound the input stops with an error that names it:
/// the bomb costs neither memory nor unbounded time.
pub const MAX_GZIP_RATIO: u64 = 200;

/// Decompressed bytes always allowed before [`MAX_GZIP_RATIO`] applies (64 MiB).
pub const GZIP_SLACK_BYTES: u64 = 64 << 20;

/// Largest whole document (filter-log-events output, subscription payloads as a file)
/// read into memory: 1 GiB. Line framings stream and have no such limit.
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 30;

/// Counts the compressed bytes a decoder pulls.
struct CountCompressed<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountCompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A gzip decoder whose output is bounded by a ratio to its input (see [`MAX_GZIP_RATIO`]).
struct RatioBounded<R> {
    decoder: R,
    compressed: Arc<AtomicU64>,
    decompressed: u64,
}

impl<R: Read> Read for RatioBounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        self.decompressed += n as u64;
        let compressed = self.compressed.load(Ordering::Relaxed);
        let allowed = compressed
            .saturating_mul(MAX_GZIP_RATIO)
            .saturating_add(GZIP_SLACK_BYTES);
        if self.decompressed > allowed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "gzip decompresses to more than {MAX_GZIP_RATIO} times its size \
                     ({} bytes from {compressed}): refused as a decompression bomb",
                    self.decompressed
                ),
            ));
        }
        Ok(n)
    }
}

/// How many leading bytes are looked at to recognize a framing.
const PEEK: usize = 64 * 1024;

/// CloudWatch writes this probe file at the root of an export; it holds no events.
const EXPORT_PROBE_FILE: &str = "aws-logs-write-test";

/// `--format`: recognize by content, or force one framing for every input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// Detect each input's framing from its content.
    Auto,
    /// Use this framing for every input.
    Fixed(Format),
}

impl FormatChoice {
    /// Parses `--format`: `auto` or a framing name (a clap value parser for every command
    /// that reads inputs).
    pub fn parse_arg(s: &str) -> Result<FormatChoice, String> {
        if s == "auto" {
            return Ok(FormatChoice::Auto);
        }
        s.parse::<Format>().map(FormatChoice::Fixed).map_err(|e| {
            format!("{e} (expected auto, jsonl, cw-export, filter-log-events, subscription)")
        })
    }
}

/// An input that cannot be read. Always names the input.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct InputError {
    /// The file or directory (`-` for standard input).
    pub path: String,
    /// What went wrong.
    #[source]
    pub error: io::Error,
}

impl InputError {
    fn new(path: &Path, error: io::Error) -> InputError {
        InputError {
            path: path.display().to_string(),
            error,
        }
    }
}

/// What [`Plan::run`] calls for each record (or framing error) with where it came from.
/// An error (from a sink downstream) stops the run.
pub type RecordHandler<'h> =
    dyn FnMut(Result<RawRecord<'_>, FramingError>, Location<'_>) -> io::Result<()> + 'h;

/// Where a record came from, for parse-error samples.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    /// The input's name.
    pub name: &'a str,
    /// 1-based line (line framings) or record number (document framings).
    pub index: u64,
    /// Whether `index` counts lines.
    pub is_line: bool,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_line {
            write!(f, "{}:{}", self.name, self.index)
        } else {
            write!(f, "{} (record {})", self.name, self.index)
        }
    }
}

/// A log stream of an export tree: its files in name (= time) order.
#[derive(Debug, Clone)]
pub struct ExportStream {
    /// The log stream name (the directory name).
    pub name: String,
    /// Its files.
    pub files: Vec<PathBuf>,
}

/// One unit of replay work.
#[derive(Debug, Clone)]
pub enum Unit {
    /// A single file in one framing.
    File {
        /// The file.
        path: PathBuf,
        /// Its framing.
        format: Format,
    },
    /// Standard input (framing recognized when it is read).
    Stdin,
    /// cw-export streams found under one input path, merged by time.
    ExportTree {
        /// The path the user gave.
        root: PathBuf,
        /// Its streams.
        streams: Vec<ExportStream>,
    },
}

/// Everything a replay will read.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The work, in input order.
    pub units: Vec<Unit>,
    /// Files to read (standard input not included).
    pub files: u64,
    /// Their total size on disk.
    pub total_bytes: u64,
    /// How many of them are gzip.
    pub gzip_files: u64,
    /// Inflate gzip inputs on threads of their own ([`InflateAhead`]); else on the reading
    /// thread. [`plan`] sets it when the machine has more than one core;
    /// [`Plan::choose_threads`] when the decoding threads leave a core for it.
    pub inflate_ahead: bool,
    /// The framing chosen for each file, for the summary.
    pub formats: BTreeMap<String, &'static str>,
    choice: FormatChoice,
}

/// Looks at the inputs and decides how to read each. `-` is standard input.
pub fn plan(inputs: &[PathBuf], choice: FormatChoice) -> Result<Plan, InputError> {
    let mut plan = Plan {
        units: Vec::new(),
        files: 0,
        total_bytes: 0,
        gzip_files: 0,
        inflate_ahead: cores() > 1,
        formats: BTreeMap::new(),
        choice,
    };
    for input in inputs {
        if input.as_os_str() == "-" {
            plan.units.push(Unit::Stdin);
            continue;
        }
        let meta = std::fs::metadata(input).map_err(|e| InputError::new(input, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files).map_err(|e| InputError::new(input, e))?;
            let mut streams: BTreeMap<PathBuf, ExportStream> = BTreeMap::new();
            for file in files {
                if file.file_name().is_some_and(|n| n == EXPORT_PROBE_FILE) {
                    continue;
                }
                let format = plan.add_file(&file)?;
                if format == Format::CwExport {
                    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
                    streams
                        .entry(dir.clone())
                        .or_insert_with(|| ExportStream {
                            name: stream_name(&file),
                            files: Vec::new(),
                        })
                        .files
                        .push(file);
                } else {
                    plan.units.push(Unit::File { path: file, format });
                }
            }
            if !streams.is_empty() {
                plan.units.push(Unit::ExportTree {
                    root: input.clone(),
                    streams: streams.into_values().collect(),
                });
            }
        } else {
            let format = plan.add_file(input)?;
            if format == Format::CwExport {
                plan.units.push(Unit::ExportTree {
                    root: input.clone(),
                    streams: vec![ExportStream {
                        name: stream_name(input),
                        files: vec![input.clone()],
                    }],
                });
            } else {
                plan.units.push(Unit::File {
                    path: input.clone(),
                    format,
                });
            }
        }
    }
    Ok(plan)
}

impl Plan {
    /// The decoding threads for `threads` (`--threads`; 0: one per core, less one when the
    /// inputs include gzip), and with them whether gzip inputs are inflated ahead: when the
    /// decoding threads leave a core. Measured on 2 cores (docs/performance.md): with one
    /// decoding thread, inflating ahead takes a gzip replay from 1.62 s to 0.90 s; beside
    /// two it slows it (1.0 s to 1.2 s: the threads contend), while one decoding thread with
    /// its inflater beside it beats two with the reader inflating (0.90 s against 1.0 s).
    pub fn choose_threads(&mut self, threads: usize) -> usize {
        let cores = cores();
        let workers = match threads {
            0 if self.gzip_files > 0 => cores.saturating_sub(1).max(1),
            0 => cores,
            n => n,
        };
        self.inflate_ahead = cores > workers;
        workers
    }

    fn add_file(&mut self, path: &Path) -> Result<Format, InputError> {
        let file = File::open(path).map_err(|e| InputError::new(path, e))?;
        let size = file.metadata().map_err(|e| InputError::new(path, e))?.len();
        let (raw, head) = peek(file).map_err(|e| InputError::new(path, e))?;
        if is_gzip(&head) {
            self.gzip_files += 1;
        }
        let format = match self.choice {
            FormatChoice::Fixed(f) => f,
            FormatChoice::Auto => {
                let (_, head) = decoded(raw, &head).map_err(|e| InputError::new(path, e))?;
                detect(&head)
            }
        };
        self.files += 1;
        self.total_bytes += size;
        self.formats
            .insert(path.display().to_string(), format.name());
        Ok(format)
    }

    /// Reads every unit, calling `sink` for each record (or framing error) with its location.
    /// `progress` counts bytes read from disk (compressed size for gzip).
    pub fn run(
        &self,
        progress: &Arc<AtomicU64>,
        sink: &mut RecordHandler<'_>,
    ) -> Result<(), InputError> {
        self.run_units(progress, &mut Taker::Records(sink))
    }

    /// Reads every unit like [`Plan::run`], but hands the line framings of files and standard
    /// input to `taker` as [`LineBlock`]s of whole lines, read straight into its buffers:
    /// the reading thread then neither looks for each line's end nor copies it, and the
    /// records are the same as [`Plan::run`]'s once [`frame_lines`] frames the blocks.
    /// Everything else (documents, export trees, lines too long to keep) comes to
    /// [`BlockTaker::record`], in input order with the blocks.
    pub fn run_in_blocks(
        &self,
        progress: &Arc<AtomicU64>,
        taker: &mut dyn BlockTaker,
    ) -> Result<(), InputError> {
        self.run_units(progress, &mut Taker::Blocks(taker))
    }

    fn run_units(
        &self,
        progress: &Arc<AtomicU64>,
        taker: &mut Taker<'_, '_>,
    ) -> Result<(), InputError> {
        for unit in &self.units {
            match unit {
                Unit::File { path, format } => {
                    let name = path.display().to_string();
                    let (reader, head) = open_file(path, progress, self.inflate_ahead)?;
                    taker
                        .read(reader, &head, *format, &name)
                        .map_err(|e| InputError::new(path, e))?;
                }
                Unit::Stdin => {
                    let counted = CountingReader::new(io::stdin().lock(), progress.clone());
                    let stdin_path = Path::new("-");
                    let (reader, head) = open_decoded(Box::new(counted))
                        .map_err(|e| InputError::new(stdin_path, e))?;
                    let format = match self.choice {
                        FormatChoice::Fixed(f) => f,
                        FormatChoice::Auto => detect(&head),
                    };
                    taker
                        .read(reader, &head, format, "<stdin>")
                        .map_err(|e| InputError::new(stdin_path, e))?;
                }
                Unit::ExportTree { streams, .. } => taker
                    .records(|sink| merge_streams(streams, progress, self.inflate_ahead, sink))?,
            }
        }
        Ok(())
    }
}

/// Whole lines of a line-framed input, read as one block for a reader that frames them
/// elsewhere ([`Plan::run_in_blocks`]).
#[derive(Debug)]
pub struct LineBlock<'a> {
    /// The input's name.
    pub name: &'a str,
    /// Its framing (a line framing).
    pub format: Format,
    /// The number of the block's first line (1-based).
    pub first_line: u64,
    /// The lines and where they end.
    pub buffers: LineBuffers,
}

/// The buffers of a [`LineBlock`], handed back and forth so that neither is allocated again.
#[derive(Debug, Default)]
pub struct LineBuffers {
    /// The buffer read into: the lines are `bytes[..ends.last()]`, each with its newline but
    /// an input's last, and none longer than [`MAX_RECORD_BYTES`]; what follows is not input.
    pub bytes: Vec<u8>,
    /// Where each line ends in `bytes` (one past its newline). Offsets are below 4 GiB: a
    /// block holds at most [`MAX_RECORD_BYTES`] and [`LINE_BLOCK_BYTES`] more.
    pub ends: Vec<u32>,
}

/// What [`Plan::run_in_blocks`] hands its input to.
pub trait BlockTaker {
    /// A record (or framing error) of an input not read in blocks, or the error of a line too
    /// long to keep. An error stops the run.
    fn record(
        &mut self,
        record: Result<RawRecord<'_>, FramingError>,
        loc: Location<'_>,
    ) -> io::Result<()>;

    /// Takes a block of whole lines. Returns the buffers to read the next block into: their
    /// contents are overwritten, and the length of `bytes` is kept (a buffer that comes back
    /// as long as it went out spares zeroing it again). An error stops the run.
    fn block(&mut self, block: LineBlock<'_>) -> io::Result<LineBuffers>;
}

/// Lines are read into [`LineBlock`]s of about this many bytes.
pub const LINE_BLOCK_BYTES: usize = 1 << 20;

/// Hands `sink` the records of a [`LineBlock`]'s lines (`bytes` up to the last of `ends`),
/// the first of which is number `first_line` of the input `name`: the same records, with the
/// same locations, as [`Plan::run`] gives for them.
pub fn frame_lines(
    format: Format,
    lines: &LineBuffers,
    name: &str,
    first_line: u64,
    sink: &mut RecordHandler<'_>,
) -> io::Result<()> {
    let mut start = 0;
    for (index, &end) in (first_line..).zip(&lines.ends) {
        let end = end as usize;
        let loc = Location {
            name,
            index,
            is_line: true,
        };
        frame_line(
            format,
            &lines.bytes[start..end],
            Origin::default(),
            loc,
            sink,
        )?;
        start = end;
    }
    Ok(())
}

/// Who takes what [`Plan::run_units`] reads.
enum Taker<'t, 'h> {
    Records(&'t mut RecordHandler<'h>),
    Blocks(&'t mut dyn BlockTaker),
}

impl Taker<'_, '_> {
    /// Reads one input of a file or standard input.
    fn read(
        &mut self,
        mut reader: Box<dyn BufRead>,
        head: &[u8],
        format: Format,
        name: &str,
    ) -> io::Result<()> {
        if let Taker::Blocks(t) = self {
            if format.is_line_based(head) {
                return read_blocks(reader.as_mut(), format, name, *t, LINE_BLOCK_BYTES);
            }
        }
        self.records(|sink| read_framed(reader, head, format, name, Origin::default(), sink))
    }

    /// Runs `f` with a handler of records: the caller's own, or the block taker's
    /// [`BlockTaker::record`].
    fn records<T>(&mut self, f: impl FnOnce(&mut RecordHandler<'_>) -> T) -> T {
        match self {
            Taker::Records(sink) => f(&mut **sink),
            Taker::Blocks(t) => f(&mut |r, loc| t.record(r, loc)),
        }
    }
}

/// Reads a line framing in blocks of whole lines (see [`Plan::run_in_blocks`]): at most
/// `block_bytes` (no more than [`MAX_RECORD_BYTES`]) are read a round, after the last
/// round's partial line. A line longer than [`MAX_RECORD_BYTES`] is not kept: its error goes
/// to [`BlockTaker::record`] in its place, with the length `read_framed` reports.
fn read_blocks(
    reader: &mut dyn BufRead,
    format: Format,
    name: &str,
    taker: &mut dyn BlockTaker,
    block_bytes: usize,
) -> io::Result<()> {
    debug_assert!(block_bytes > 0 && block_bytes <= MAX_RECORD_BYTES);
    let LineBuffers {
        bytes: mut buf,
        mut ends,
    } = LineBuffers::default();
    // Input in `buf[..filled]`; at the top of a round, the start of a line (no newline).
    let mut filled = 0;
    let mut first_line = 1u64;
    let mut tail = Vec::new();
    loop {
        let mut carried = filled;
        let want = carried + block_bytes;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut eof = false;
        // A read that fails ends the input after the whole lines read before it, which are
        // handed on first, as `read_framed` does.
        let mut failed = None;
        while filled < want {
            match reader.read(&mut buf[filled..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Only the line carried over can have grown past the limit: every other line is in
        // this round's bytes, at most `block_bytes`.
        if carried > 0 {
            let first_end = memchr::memchr(b'\n', &buf[carried..filled]).map(|i| carried + i + 1);
            let seen = first_end.unwrap_or(filled);
            if seen > MAX_RECORD_BYTES {
                let len = match first_end {
                    Some(end) => end,
                    None => match failed.take() {
                        // Cut short by the failure: no line to judge, as in `read_framed`.
                        Some(e) => return Err(e),
                        None if eof => filled,
                        None => filled + read_line_bounded(reader, &mut Vec::new(), 0)?,
                    },
                };
                let loc = Location {
                    name,
                    index: first_line,
                    is_line: true,
                };
                taker.record(Err(FramingError::TooLong(len)), loc)?;
                first_line += 1;
                buf.copy_within(seen..filled, 0);
                filled -= seen;
                carried = 0;
            }
        }
        let end = if eof {
            filled
        } else {
            memchr::memrchr(b'\n', &buf[carried..filled]).map_or(0, |i| carried + i + 1)
        };
        if end > 0 {
            // Every line's end is found here, once: the framing then needs no search. Offsets
            // fit in u32 (see `LineBuffers::ends`).
            ends.clear();
            ends.extend(memchr::memchr_iter(b'\n', &buf[..end]).map(|i| (i + 1) as u32));
            if buf[end - 1] != b'\n' {
                ends.push(end as u32);
            }
            let lines = ends.len() as u64;
            tail.clear();
            tail.extend_from_slice(&buf[end..filled]);
            LineBuffers { bytes: buf, ends } = taker.block(LineBlock {
                name,
                format,
                first_line,
                buffers: LineBuffers { bytes: buf, ends },
            })?;
            first_line += lines;
            if buf.len() < tail.len() {
                buf.resize(tail.len(), 0);
            }
            buf[..tail.len()].copy_from_slice(&tail);
            filled = tail.len();
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if eof {
            return Ok(());
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        {
            out.push(p);
        }
    }
    Ok(())
}

fn stream_name(file: &Path) -> String {
    file.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads up to [`PEEK`] bytes without losing them.
/// A reader with its first bytes put back in front.
type Peeked<R> = io::Chain<Cursor<Vec<u8>>, R>;

fn peek<R: Read>(mut r: R) -> io::Result<(Peeked<R>, Vec<u8>)> {
    let mut head = Vec::with_capacity(PEEK);
    (&mut r).take(PEEK as u64).read_to_end(&mut head)?;
    let again = Cursor::new(head.clone()).chain(r);
    Ok((again, head))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Opens a file input: its content (gzip undone, on a thread of its own if `ahead` and there
/// is a place: see [`InflateAhead`]) and its first bytes. `progress` counts the bytes read
/// from disk.
fn open_file(
    path: &Path,
    progress: &Arc<AtomicU64>,
    ahead: bool,
) -> Result<(Box<dyn BufRead>, Vec<u8>), InputError> {
    let at = |e| InputError::new(path, e);
    let file = File::open(path).map_err(at)?;
    let (raw, head) = peek(CountingReader::new(file, progress.clone())).map_err(at)?;
    if !(ahead && is_gzip(&head)) {
        return decoded(raw, &head).map_err(at);
    }
    match InflateAhead::start(raw) {
        Ok(ahead) => {
            let (content, head) = peek(ahead).map_err(at)?;
            Ok((Box::new(content), head))
        }
        Err(raw) => decoded(raw, &head).map_err(at),
    }
}

/// The multi-member gzip decoder of file inputs: ISA-L's with the `isal` feature, flate2's
/// (zlib-rs) without. Both hand on every byte inflated before an error, then the error.
#[cfg(feature = "isal")]
type GzipDecoder<R> = super::igzip::IgzipDecoder<R>;
#[cfg(not(feature = "isal"))]
type GzipDecoder<R> = flate2::read::MultiGzDecoder<R>;

/// Undoes gzip when the magic bytes say so; returns a buffered reader of the content and its
/// first bytes (for framing detection).
pub fn open_decoded(r: Box<dyn Read>) -> io::Result<(Box<dyn BufRead>, Vec<u8>)> {
    let (r, head) = peek(r)?;
    decoded(r, &head)
}

/// [`open_decoded`] of an input already peeked: `raw` from its first byte, `head` its first
/// bytes.
fn decoded(raw: impl Read + 'static, head: &[u8]) -> io::Result<(Box<dyn BufRead>, Vec<u8>)> {
    let (r, head): (Box<dyn Read>, _) = if is_gzip(head) {
        let compressed = Arc::new(AtomicU64::new(0));
        let decoder = GzipDecoder::new(BufReader::with_capacity(
            256 * 1024,
            CountCompressed {
                inner: raw,
                count: compressed.clone(),
            },
        ));
        let (r, head) = peek(RatioBounded {
            decoder,
            compressed,
            decompressed: 0,
        })?;
        (Box::new(r), head)
    } else {
        (Box::new(raw), head.to_vec())
    };
    Ok((Box::new(BufReader::with_capacity(256 * 1024, r)), head))
}

fn read_framed(
    mut reader: Box<dyn BufRead>,
    head: &[u8],
    format: Format,
    name: &str,
    origin: Origin<'_>,
    sink: &mut RecordHandler<'_>,
) -> io::Result<()> {
    if format.is_line_based(head) {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut line_no = 0u64;
        loop {
            let available = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(());
            }
            line_no += 1;
            let loc = Location {
                name,
                index: line_no,
                is_line: true,
            };
            // A line whole in the reader's buffer (all but about one in fifty: the buffer
            // is 256 KiB) is framed where it is, without copying it out first; the same bytes,
            // newline included, as `read_line_bounded` would copy.
            if let Some(end) = memchr::memchr(b'\n', available).filter(|&i| i < MAX_RECORD_BYTES) {
                let result = frame_line(format, &available[..=end], origin, loc, sink);
                reader.consume(end + 1);
                result?;
                continue;
            }
            let len = read_line_bounded(reader.as_mut(), &mut buf, MAX_RECORD_BYTES)?;
            if len == 0 {
                // Not reached with a `BufRead` that keeps what `fill_buf` returned until it
                // is consumed: the buffer just seen is not empty.
                return Ok(());
            }
            if len > MAX_RECORD_BYTES {
                sink(Err(FramingError::TooLong(len)), loc)?;
                continue;
            }
            frame_line(format, &buf, origin, loc, sink)?;
        }
    } else {
        let doc = read_document_bounded(reader.as_mut(), MAX_DOCUMENT_BYTES)?;
        let mut n = 0u64;
        let mut result = Ok(());
        framing::records_in_document(format, &doc, origin, &mut |r| {
            n += 1;
            if result.is_ok() {
                result = sink(
                    r,
                    Location {
                        name,
                        index: n,
                        is_line: false,
                    },
                );
            }
        });
        result
    }
}

/// Hands `sink` the records of one line of a line framing, stopping at its first error.
fn frame_line(
    format: Format,
    line: &[u8],
    origin: Origin<'_>,
    loc: Location<'_>,
    sink: &mut RecordHandler<'_>,
) -> io::Result<()> {
    let mut result = Ok(());
    framing::records_in_line(format, line, origin, &mut |r| {
        if result.is_ok() {
            result = sink(r, loc);
        }
    });
    result
}

/// Reads a whole document, refusing one longer than `max` bytes with an error (after
/// reading at most `max + 1` bytes).
pub fn read_document_bounded<R: Read + ?Sized>(r: &mut R, max: u64) -> io::Result<Vec<u8>> {
    let mut doc = Vec::new();
    Read::take(r, max.saturating_add(1)).read_to_end(&mut doc)?;
    if doc.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("document longer than {max} bytes (the limit for whole-document framings)"),
        ));
    }
    Ok(doc)
}

/// One stream of an export tree being read: its current line and time.
struct StreamCursor<'s> {
    stream: &'s ExportStream,
    next_file: usize,
    reader: Option<Box<dyn BufRead>>,
    file_name: String,
    line_no: u64,
    buf: Vec<u8>,
    /// The current line was longer than [`MAX_RECORD_BYTES`] (its length).
    too_long: Option<usize>,
    time: Micros,
    /// Inflate its gzip files ahead ([`Plan::inflate_ahead`]).
    ahead: bool,
}

impl StreamCursor<'_> {
    /// Moves to the next line; false at the end of the stream's last file.
    fn advance(&mut self, progress: &Arc<AtomicU64>) -> Result<bool, InputError> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.stream.files.get(self.next_file) else {
                    return Ok(false);
                };
                self.next_file += 1;
                let (reader, _) = open_file(path, progress, self.ahead)?;
                self.reader = Some(reader);
                self.file_name = path.display().to_string();
                self.line_no = 0;
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let n = read_line_bounded(reader.as_mut(), &mut self.buf, MAX_RECORD_BYTES).map_err(
                |e| InputError {
                    path: self.file_name.clone(),
                    error: e,
                },
            )?;
            if n == 0 {
                self.reader = None;
                continue;
            }
            self.line_no += 1;
            self.too_long = (n > MAX_RECORD_BYTES).then_some(n);
            // A line without a time keeps its stream's place (its error is reported later).
            if let Some(t) = framing::cw_export_time(&self.buf) {
                self.time = t;
            }
            return Ok(true);
        }
    }
}

fn merge_streams(
    streams: &[ExportStream],
    progress: &Arc<AtomicU64>,
    ahead: bool,
    sink: &mut RecordHandler<'_>,
) -> Result<(), InputError> {
    let mut cursors: Vec<StreamCursor<'_>> = Vec::with_capacity(streams.len());
    let mut heap = BinaryHeap::new();
    for stream in streams {
        let mut c = StreamCursor {
            stream,
            next_file: 0,
            reader: None,
            file_name: String::new(),
            line_no: 0,
            buf: Vec::with_capacity(16 * 1024),
            too_long: None,
            time: Micros::MIN,
            ahead,
        };
        if c.advance(progress)? {
            heap.push(std::cmp::Reverse((c.time, cursors.len())));
        }
        cursors.push(c);
    }
    while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
        let c = &mut cursors[i];
        let origin = Origin {
            stream: Some(c.stream.name.as_str()),
            log_group: None,
        };
        let loc = Location {
            name: &c.file_name,
            index: c.line_no,
            is_line: true,
        };
        let result = match c.too_long {
            Some(len) => sink(Err(FramingError::TooLong(len)), loc),
            None => frame_line(Format::CwExport, &c.buf, origin, loc, sink),
        };
        result.map_err(|e| InputError {
            path: c.file_name.clone(),
            error: e,
        })?;
        if c.advance(progress)? {
            heap.push(std::cmp::Reverse((c.time, i)));
        }
    }
    Ok(())
}

/// Counts bytes read into a shared counter (for progress and the summary).
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, count: Arc<AtomicU64>) -> Self {
        CountingReader { inner, count }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A record as the tests compare them: its line, and its bytes or its error.
    type Entry = (u64, Result<Vec<u8>, String>);

    fn entry(r: Result<RawRecord<'_>, FramingError>, loc: Location<'_>) -> Entry {
        (
            loc.index,
            r.map(|r| r.message.to_vec()).map_err(|e| e.to_string()),
        )
    }

    /// Every record `read_framed` hands on from `reader`, and how it ended.
    fn framed_from(reader: Box<dyn BufRead>, format: Format) -> (Vec<Entry>, io::Result<()>) {
        let mut got = Vec::new();
        let result = read_framed(
            reader,
            b"",
            format,
            "t",
            Origin::default(),
            &mut |r, loc| {
                got.push(entry(r, loc));
                Ok(())
            },
        );
        (got, result)
    }

    /// Every record `read_framed` hands on, as (line, bytes or error).
    fn framed(input: &[u8], format: Format, capacity: usize) -> Vec<Entry> {
        let reader = io::BufReader::with_capacity(capacity, Cursor::new(input.to_vec()));
        let (got, result) = framed_from(Box::new(reader), format);
        result.unwrap();
        got
    }

    #[test]
    fn lines_framed_in_the_buffer_or_copied_out_are_the_same_records() {
        // Lengths that fall inside, across and far past the reader's buffer; CRLF, blank
        // lines, a line over the record limit, and a last line without its newline.
        let mut input = Vec::new();
        for (i, len) in [
            0usize, 1, 5, 6, 7, 8, 999, 1000, 1001, 3000, 0, 70_000, 300_000, 2,
        ]
        .into_iter()
        .enumerate()
        {
            input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
            input.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
        }
        input.extend(std::iter::repeat_n(b'z', MAX_RECORD_BYTES + 10));
        input.extend_from_slice(b"\n{\"auditID\":\"last\"}");
        // What each line gives when copied out first (the behaviour before the in-buffer
        // framing): the reference.
        let mut want = Vec::new();
        for (n, line) in input.split_inclusive(|&c| c == b'\n').enumerate() {
            let n = n as u64 + 1;
            if line.len() > MAX_RECORD_BYTES {
                want.push((n, Err(FramingError::TooLong(line.len()).to_string())));
                continue;
            }
            framing::records_in_line(Format::Jsonl, line, Origin::default(), &mut |r| {
                want.push((n, r.map(|r| r.message.to_vec()).map_err(|e| e.to_string())));
            });
        }
        assert_eq!(want.len(), 16);
        for capacity in [7, 1000, 256 * 1024] {
            assert!(
                framed(&input, Format::Jsonl, capacity) == want,
                "capacity {capacity}"
            );
            for block in [7, 1000, 300_001, LINE_BLOCK_BYTES] {
                assert!(
                    in_blocks(&input, Format::Jsonl, capacity, block) == want,
                    "capacity {capacity}, block {block}"
                );
            }
        }
    }

    /// Frames each block as it comes, and checks what a block promises.
    struct Framer {
        got: Vec<Entry>,
        block: usize,
    }
    impl BlockTaker for Framer {
        fn record(
            &mut self,
            r: Result<RawRecord<'_>, FramingError>,
            loc: Location<'_>,
        ) -> io::Result<()> {
            assert!(
                matches!(r, Err(FramingError::TooLong(_))),
                "only long lines"
            );
            self.got.push(entry(r, loc));
            Ok(())
        }
        fn block(&mut self, b: LineBlock<'_>) -> io::Result<LineBuffers> {
            let ends = &b.buffers.ends;
            assert!(!ends.is_empty() && ends.windows(2).all(|w| w[0] < w[1]));
            assert!(*ends.last().unwrap() as usize <= b.buffers.bytes.len());
            frame_lines(b.format, &b.buffers, b.name, b.first_line, &mut |r, loc| {
                self.got.push(entry(r, loc));
                Ok(())
            })?;
            // Hand back buffers of other lengths and contents now and then: their old
            // bytes and ends must not show.
            let mut next = b.buffers;
            next.bytes.fill(b'#');
            next.bytes.truncate(self.block / 2);
            next.ends.push(7);
            Ok(next)
        }
    }

    /// Every record of `input` read in blocks of `block` bytes and framed by
    /// [`frame_lines`], as [`framed`] gives them.
    fn in_blocks(input: &[u8], format: Format, capacity: usize, block: usize) -> Vec<Entry> {
        let mut reader = io::BufReader::with_capacity(capacity, Cursor::new(input.to_vec()));
        let mut taker = Framer {
            got: Vec::new(),
            block,
        };
        read_blocks(&mut reader, format, "t", &mut taker, block).unwrap();
        taker.got
    }

    proptest::proptest! {
        /// Any bytes, any block size, any reader buffer: the blocks give the records (and
        /// errors, at the same line numbers) that reading line by line gives.
        #[test]
        fn any_input_read_in_blocks_gives_the_records_read_line_by_line(
            input in proptest::collection::vec(
                proptest::sample::select(b"ab{}\":, \r\n\n\n\t\x00\xff".to_vec()),
                0..6000,
            ),
            format in proptest::sample::select(vec![Format::Jsonl, Format::CwExport, Format::Subscription]),
            capacity in proptest::sample::select(vec![7usize, 64, 1000, 256 * 1024]),
            block in 1usize..3000,
        ) {
            let want = framed(&input, format, capacity);
            proptest::prop_assert_eq!(in_blocks(&input, format, capacity, block), want);
        }
    }

    #[test]
    fn an_input_that_fails_keeps_every_whole_line_read_before_the_failure() {
        /// Gives its bytes 5,000 at a time, then fails.
        struct Failing(Cursor<Vec<u8>>);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(5000);
                match self.0.read(&mut out[..n])? {
                    0 => Err(io::Error::other("the disk went away")),
                    n => Ok(n),
                }
            }
        }
        let mut input = Vec::new();
        for i in 0..3000 {
            writeln!(input, "{{\"auditID\":\"{i}\"}}").unwrap();
        }
        // A last line cut short by the failure.
        input.extend_from_slice(b"{\"auditID\":\"cut");
        let failing = || Failing(Cursor::new(input.clone()));
        let (want, result) = framed_from(
            Box::new(io::BufReader::with_capacity(1000, failing())),
            Format::Jsonl,
        );
        let err = result.unwrap_err();
        assert_eq!(err.to_string(), "the disk went away");
        assert_eq!(want.len(), 3000);
        for block in [1000, LINE_BLOCK_BYTES] {
            let mut taker = Framer {
                got: Vec::new(),
                block,
            };
            let mut reader = io::BufReader::with_capacity(1000, failing());
            let err = read_blocks(&mut reader, Format::Jsonl, "t", &mut taker, block).unwrap_err();
            assert_eq!(err.to_string(), "the disk went away");
            assert!(
                taker.got == want,
                "block {block}: {} records",
                taker.got.len()
            );
        }
    }

    #[test]
    fn lines_at_the_record_limit_are_judged_alike_in_blocks_and_lines() {
        // A line of exactly the limit (newline included) is kept, one byte more is not; the
        // same for a last line without its newline.
        for last in [MAX_RECORD_BYTES, MAX_RECORD_BYTES + 1] {
            let mut input = b"{\"a\":1}\n".to_vec();
            input.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES - 1));
            input.push(b'\n');
            input.extend(std::iter::repeat_n(b'y', MAX_RECORD_BYTES));
            input.push(b'\n');
            input.extend_from_slice(b"{\"b\":2}\n");
            input.extend(std::iter::repeat_n(b'z', last));
            let want = framed(&input, Format::Jsonl, 256 * 1024);
            let too_long = Err(FramingError::TooLong(MAX_RECORD_BYTES + 1).to_string());
            let long: Vec<_> = want
                .iter()
                .filter(|(_, r)| *r == too_long)
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(
                long,
                if last > MAX_RECORD_BYTES {
                    vec![3, 5]
                } else {
                    vec![3]
                }
            );
            assert_eq!(want.len(), 5);
            for block in [1000, LINE_BLOCK_BYTES] {
                assert!(
                    in_blocks(&input, Format::Jsonl, 256 * 1024, block) == want,
                    "last line {last}, block {block}"
                );
            }
        }
    }

    #[test]
    fn a_document_over_the_limit_is_refused_after_reading_one_byte_past_it() {
        let mut r = io::repeat(b'x'); // endless
        let err = read_document_bounded(&mut r, 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("longer than 1000 bytes"), "{err}");
        let ok = read_document_bounded(&mut Cursor::new(vec![b'y'; 1000]), 1000).unwrap();
        assert_eq!(ok.len(), 1000);
    }

    #[test]
    fn gzip_within_the_ratio_reads_whole() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"auditID\":\"{i:08x}\"}}\n").into_bytes())
            .collect();
        let (mut r, head) = open_decoded(Box::new(Cursor::new(gz(&text)))).unwrap();
        assert!(text.starts_with(&head));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, text);
    }

    /// 1 GiB of zeros from 100 gzip members of 10 MiB each (about 1 MB compressed).
    pub(crate) fn gzip_bomb() -> Vec<u8> {
        let member = gz(&vec![0u8; 10 << 20]);
        member
            .iter()
            .copied()
            .cycle()
            .take(member.len() * 100)
            .collect()
    }

    /// Reads `r`, the content of [`gzip_bomb`], and checks that the ratio bound stops it with
    /// its error long before its end.
    pub(crate) fn assert_bomb_cut_off(r: &mut dyn Read) {
        let mut sink = [0u8; 1 << 16];
        let mut total = 0u64;
        let err = loop {
            match r.read(&mut sink) {
                Ok(0) => panic!("read the whole bomb: {total} bytes"),
                Ok(n) => total += n as u64,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(total < 1 << 30, "{total}");
    }

    #[test]
    fn a_gzip_bomb_is_cut_off_near_the_slack_not_read_to_its_end() {
        let (mut r, _) = open_decoded(Box::new(Cursor::new(gzip_bomb()))).unwrap();
        assert_bomb_cut_off(&mut r);
    }
}
