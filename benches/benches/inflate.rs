//! Inflate backends side by side (issue #18), in one run, on the same data: MB/s of
//! *decompressed* output (MB = 10^6 bytes).
//!
//! - `flate2 (zlib-rs)`: the workspace's flate2 (`zlib-rs` backend), `MultiGzDecoder` over the
//!   compressed bytes in memory, read into a 256 KiB buffer.
//! - `authwatch open_decoded`: the production file path (`sources::files::open_decoded`: the
//!   file, a 256 KiB `BufReader`, flate2's `MultiGzDecoder`, the ratio bound), read to the end.
//! - `miniz_oxide`: what flate2's default backend does (raw inflate stream, gzip header and
//!   trailer, CRC-32 by crc32fast), driven directly because the workspace's flate2 now uses
//!   zlib-rs and Cargo unifies one flate2 per build.
//! - `libdeflate`: `libdeflater`, whole buffer only (the output is sized from the gzip trailer;
//!   one member): no streaming, so only for bounded payloads.
//! - `ISA-L`: with `--features isal`, authwatch's own reader over Intel's ISA-L
//!   (`sources::igzip::IgzipDecoder`) over the compressed bytes in memory, like flate2's row;
//!   `open_decoded` then uses it too.
//! - `zcat`: `zcat FILE > /dev/null`, the floor.
//!
//! Payloads: the first file's content cut at line ends into pieces that compress (level 6) to
//! about 50 KB each, like Kinesis records; each backend returns a `Vec` per payload, flate2's
//! row being `framing::gunzip_bounded` itself.
//!
//! Run: `cargo bench -p authwatch-benches --bench inflate [--features isal] -- FILE.gz...
//! [--reps N]`, e.g. on
//! `authwatch generate` output compressed with `gzip -1` and `gzip -6`. Measures only; nothing
//! is asserted about speed (outputs are checked to agree).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

const BUF: usize = 256 * 1024;
const PAYLOAD_TARGET: usize = 50_000;

/// Reads `r` to its end into `buf`: the bytes read. `what` names it in a panic.
fn drain(mut r: impl Read, buf: &mut [u8], what: &str) -> u64 {
    let mut n = 0u64;
    loop {
        match r.read(buf).unwrap_or_else(|e| panic!("{what}: {e}")) {
            0 => return n,
            k => {
                std::hint::black_box(&buf[..k]);
                n += k as u64;
            }
        }
    }
}

fn flate2_stream(gz: &[u8], buf: &mut [u8]) -> u64 {
    drain(flate2::read::MultiGzDecoder::new(gz), buf, "flate2 inflate")
}

/// ISA-L through authwatch's reader, over the bytes in memory, read into `buf`.
#[cfg(feature = "isal")]
fn isal_stream(gz: &[u8], buf: &mut [u8]) -> u64 {
    drain(
        authwatch::sources::igzip::IgzipDecoder::new(gz),
        buf,
        "ISA-L inflate",
    )
}

fn open_decoded_file(path: &str, buf: &mut [u8]) -> u64 {
    let file = std::fs::File::open(path).expect("open");
    let (r, _head) = authwatch::sources::files::open_decoded(Box::new(file)).expect("open_decoded");
    drain(r, buf, "open_decoded read")
}

/// Length of the gzip member header at the start of `b` (RFC 1952).
fn gzip_header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 10 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return None;
    }
    let flg = b[3];
    let mut i = 10;
    if flg & 4 != 0 {
        let n = u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
        i += 2 + n;
    }
    for bit in [8u8, 16] {
        if flg & bit != 0 {
            i += b.get(i..)?.iter().position(|&c| c == 0)? + 1;
        }
    }
    if flg & 2 != 0 {
        i += 2;
    }
    (i <= b.len()).then_some(i)
}

/// Multi-member gunzip with miniz_oxide, as flate2's `rust_backend` does it.
fn miniz_stream(mut gz: &[u8], buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> u64 {
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let mut total = 0u64;
    loop {
        gz = &gz[gzip_header_len(gz).expect("gzip header")..];
        state.reset(DataFormat::Raw);
        let mut crc = crc32fast::Hasher::new();
        let mut member = 0u64;
        loop {
            let r = inflate(&mut state, gz, buf, MZFlush::None);
            gz = &gz[r.bytes_consumed..];
            let out = &buf[..r.bytes_written];
            crc.update(out);
            sink(out);
            member += out.len() as u64;
            match r.status {
                Ok(MZStatus::StreamEnd) => break,
                Ok(_) => {}
                Err(e) => panic!("miniz_oxide inflate: {e:?}"),
            }
        }
        let t = gz.get(..8).expect("gzip trailer");
        assert_eq!(u32::from_le_bytes([t[0], t[1], t[2], t[3]]), crc.finalize());
        assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), member as u32);
        gz = &gz[8..];
        total += member;
        if gz.is_empty() {
            return total;
        }
    }
}

/// The decompressed size a one-member gzip declares (its trailer's ISIZE).
fn isize_of(gz: &[u8]) -> usize {
    let t = &gz[gz.len() - 4..];
    u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
}

fn libdeflate_whole(d: &mut libdeflater::Decompressor, gz: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; isize_of(gz)];
    let n = d.gzip_decompress(gz, &mut out).expect("libdeflate");
    out.truncate(n);
    out
}

/// The old `gunzip_bounded`: `read_to_end` with no size hint (the `Vec` grows by doubling).
fn flate2_unsized(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(gz)
        .take(authwatch_event::framing::MAX_PAYLOAD_BYTES + 1)
        .read_to_end(&mut out)
        .expect("flate2");
    out
}

fn zcat(path: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new("zcat")
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("zcat");
    assert!(st.success());
    t.elapsed().as_secs_f64()
}

/// Cuts `plain` at line ends into pieces compressing to about [`PAYLOAD_TARGET`] bytes.
fn payloads(plain: &[u8]) -> Vec<Vec<u8>> {
    let gz = |b: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let probe = &plain[..plain.len().min(1 << 20)];
    let ratio = probe.len() as f64 / gz(probe).len() as f64;
    let piece = (PAYLOAD_TARGET as f64 * ratio) as usize;
    let mut out = Vec::new();
    let mut rest = plain;
    while !rest.is_empty() {
        let mut end = rest.len().min(piece);
        if end < rest.len() {
            end = rest[..end]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(end, |i| i + 1);
        }
        out.push(gz(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

struct Row {
    case: String,
    backend: &'static str,
    out_bytes: u64,
    secs: Vec<f64>,
}

impl Row {
    fn new(case: &str, backend: &'static str) -> Row {
        Row {
            case: case.to_owned(),
            backend,
            out_bytes: 0,
            secs: Vec::new(),
        }
    }
    fn record(&mut self, out_bytes: u64, secs: f64) {
        assert!(
            self.out_bytes == 0 || self.out_bytes == out_bytes,
            "{}: output size changed",
            self.backend
        );
        self.out_bytes = out_bytes;
        self.secs.push(secs);
    }
    fn mbps(&self, s: f64) -> f64 {
        self.out_bytes as f64 / 1e6 / s
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

fn main() {
    let mut files = Vec::new();
    let mut reps = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|n| n.parse().ok()).expect("--reps N"),
            "--bench" => {}
            _ => files.push(a),
        }
    }
    assert!(
        !files.is_empty(),
        "usage: inflate FILE.gz... [--reps N] (gzip files of audit events)"
    );
    let mut buf = vec![0u8; BUF];
    let mut rows: Vec<Row> = Vec::new();
    let mut plain_of_first = Vec::new();

    for path in &files {
        let gz = std::fs::read(path).expect("read file");
        let name = path.rsplit('/').next().unwrap_or(path);
        let case = format!("{name} ({:.1} MB gz)", gz.len() as f64 / 1e6);
        let file_path = if cfg!(feature = "isal") {
            "authwatch open_decoded (file, ISA-L)"
        } else {
            "authwatch open_decoded (file, zlib-rs)"
        };
        let mut r = vec![
            Row::new(&case, "flate2 (zlib-rs), stream"),
            Row::new(&case, file_path),
            Row::new(&case, "miniz_oxide, stream"),
            Row::new(&case, "libdeflate, whole buffer"),
            Row::new(&case, "zcat > /dev/null"),
        ];
        if cfg!(feature = "isal") {
            r.push(Row::new(&case, "ISA-L (authwatch's IgzipDecoder), stream"));
        }
        let mut d = libdeflater::Decompressor::new();
        for _ in 0..reps {
            let (n, s) = timed(|| flate2_stream(&gz, &mut buf));
            r[0].record(n, s);
            let (n, s) = timed(|| open_decoded_file(path, &mut buf));
            r[1].record(n, s);
            let (n, s) = timed(|| {
                miniz_stream(&gz, &mut buf, |b| {
                    std::hint::black_box(b);
                })
            });
            r[2].record(n, s);
            let (v, s) = timed(|| libdeflate_whole(&mut d, &gz));
            r[3].record(v.len() as u64, s);
            if plain_of_first.is_empty() {
                plain_of_first = v;
            }
            let n = r[0].out_bytes;
            r[4].record(n, zcat(path));
            #[cfg(feature = "isal")]
            {
                let (n, s) = timed(|| isal_stream(&gz, &mut buf));
                r[5].record(n, s);
            }
        }
        rows.extend(r);
    }

    let pl = payloads(&plain_of_first);
    let gz_total: usize = pl.iter().map(Vec::len).sum();
    let case = format!(
        "{} payloads of ~{:.0} KB gz",
        pl.len(),
        gz_total as f64 / pl.len() as f64 / 1e3
    );
    let mut r = [
        Row::new(&case, "flate2 (zlib-rs), gunzip_bounded"),
        Row::new(&case, "flate2 (zlib-rs), no size hint"),
        Row::new(&case, "miniz_oxide, to a Vec"),
        Row::new(&case, "libdeflate, whole buffer"),
    ];
    let mut d = libdeflater::Decompressor::new();
    for _ in 0..reps {
        let (n, s) = timed(|| {
            pl.iter()
                .map(|p| {
                    let v = authwatch_event::framing::gunzip_bounded(p).expect("gunzip_bounded");
                    std::hint::black_box(v).len() as u64
                })
                .sum::<u64>()
        });
        r[0].record(n, s);
        let (n, s) = timed(|| {
            pl.iter()
                .map(|p| std::hint::black_box(flate2_unsized(p)).len() as u64)
                .sum::<u64>()
        });
        r[1].record(n, s);
        let (n, s) = timed(|| {
            pl.iter()
                .map(|p| {
                    let mut v = Vec::new();
                    miniz_stream(p, &mut buf[..64 * 1024], |b| v.extend_from_slice(b));
                    std::hint::black_box(v).len() as u64
                })
                .sum::<u64>()
        });
        r[2].record(n, s);
        let (n, s) = timed(|| {
            pl.iter()
                .map(|p| std::hint::black_box(libdeflate_whole(&mut d, p)).len() as u64)
                .sum::<u64>()
        });
        r[3].record(n, s);
    }
    rows.extend(r);

    for w in rows.windows(2) {
        if w[0].case == w[1].case {
            assert_eq!(
                w[0].out_bytes, w[1].out_bytes,
                "backends disagree on {}",
                w[0].case
            );
        }
    }
    println!("reps: {reps} (interleaved); MB/s of decompressed output, best and median\n");
    println!("| input | backend | output MB | best MB/s | median MB/s |");
    println!("|---|---|--:|--:|--:|");
    for row in &mut rows {
        row.secs.sort_by(f64::total_cmp);
        let best = row.secs[0];
        let median = row.secs[row.secs.len() / 2];
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} |",
            row.case,
            row.backend,
            row.out_bytes as f64 / 1e6,
            row.mbps(best),
            row.mbps(median)
        );
    }
}
