//! Gzip inflated by Intel's ISA-L (`igzip`), behind the `isal` feature.
//!
//! ISA-L inflates the generated audit logs about 1.4 times as fast as zlib-rs on this
//! project's machine (docs/performance.md, "Inflate backends"), and the gzip paths of a replay
//! are bound by one stream's inflate. The `isal-rs` crate's reader is not used: a `read` that
//! ends in an error throws away what it inflated during that call, so the events just before a
//! truncated or corrupt stream would be lost while the error is reported. [`IgzipDecoder`]
//! hands on every byte inflated before an error, then the error, and keeps flate2's
//! `MultiGzDecoder` behaviour: members follow one another, the input ends only at a member's
//! end, and anything after a member that is not a gzip member is an error.
//!
//! The one `unsafe` part is the FFI: ISA-L's state is a plain C struct that points at our
//! input and output slices only during the call to `isal_inflate`.

use std::io::{self, BufRead, Read};

use isal_sys::igzip_lib as isal;

/// A multi-member gzip decoder over a buffered reader, with ISA-L's inflate.
pub struct IgzipDecoder<R> {
    inner: R,
    state: Box<isal::inflate_state>,
    /// The current member's header while it is read. `isal_inflate` reads a header with a
    /// header record of its own on each call, so a header that spans two calls loses its
    /// flags (and its header CRC) there; this one lives across calls.
    header: isal::isal_gzip_header,
    /// Output ISA-L had inflated into its own buffer when it found an error: handed on before
    /// the error.
    pending: io::Cursor<Vec<u8>>,
    /// The error that ended the stream, given again to every later `read` (after `pending`).
    failed: Option<(io::ErrorKind, String)>,
}

/// The gzip FLG bits that RFC 1952 reserves (flate2 refuses them too).
const RESERVED_FLAGS: u32 = 0xe0;

impl<R: BufRead> IgzipDecoder<R> {
    /// A decoder at the start of `inner`'s first gzip member.
    pub fn new(inner: R) -> Self {
        // SAFETY: every field of `inflate_state` is an integer, an array of integers, a raw
        // pointer or a union of integers, so all zeros is a valid value; `isal_inflate_init`
        // then sets the fields it uses (it leaves the tables and buffers as they are).
        let mut state = unsafe {
            let mut state = Box::<isal::inflate_state>::new_zeroed().assume_init();
            isal::isal_inflate_init(&mut *state);
            state
        };
        state.crc_flag = isal::ISAL_GZIP;
        IgzipDecoder {
            inner,
            state,
            header: new_header(),
            pending: io::Cursor::default(),
            failed: None,
        }
    }
}

/// Whether the last member read so far is complete (its trailer checked).
fn member_done(state: &isal::inflate_state) -> bool {
    state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH
}

/// A header record that keeps none of the optional fields (name, comment, extra).
fn new_header() -> isal::isal_gzip_header {
    // SAFETY: all zeros is a valid `isal_gzip_header` (integers and null pointers), and
    // `isal_gzip_header_init` sets every field.
    unsafe {
        let mut header = std::mem::MaybeUninit::<isal::isal_gzip_header>::zeroed().assume_init();
        isal::isal_gzip_header_init(&mut header);
        header
    }
}

impl<R: BufRead> Read for IgzipDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pending.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let out_len = buf.len().min(u32::MAX as usize);
        loop {
            let input = match self.inner.fill_buf() {
                Ok(input) => input,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let at_eof = input.is_empty();
            if member_done(&self.state) {
                if at_eof {
                    return Ok(0);
                }
                // Another member follows (or garbage, which its header check refuses).
                // SAFETY: the state was initialized by `isal_inflate_init`.
                unsafe { isal::isal_inflate_reset(&mut *self.state) };
                self.state.crc_flag = isal::ISAL_GZIP;
                self.header = new_header();
            }
            let in_len = input.len().min(u32::MAX as usize);
            self.state.next_in = input.as_ptr().cast_mut();
            self.state.avail_in = in_len as u32;
            if self.state.wrapper_flag == 0 {
                // The member's header, read here with a header record that lives across
                // calls (see `header`); `isal_inflate` then skips it.
                // SAFETY: `next_in`/`avail_in` describe `input`, alive for the call; ISA-L
                // only reads it, and keeps no pointer to `header` (name, comment and extra
                // are null: skipped). The input pointer is cleared after the call.
                let ret =
                    unsafe { isal::isal_read_gzip_header(&mut *self.state, &mut self.header) };
                let consumed = in_len.saturating_sub(self.state.avail_in as usize);
                self.state.next_in = std::ptr::null_mut();
                self.state.avail_in = 0;
                self.inner.consume(consumed);
                if ret < 0 {
                    return Err(self.fail(io::ErrorKind::InvalidData, describe(ret)));
                }
                if ret == isal::ISAL_DECOMP_OK as i32 {
                    if self.header.flags & RESERVED_FLAGS != 0 {
                        return Err(self.fail(
                            io::ErrorKind::InvalidData,
                            "invalid gzip header (reserved flag bits set)".to_string(),
                        ));
                    }
                    continue;
                }
                // More input is needed for the header.
                if at_eof {
                    return Err(self.truncated());
                }
                continue;
            }
            self.state.next_out = buf.as_mut_ptr();
            self.state.avail_out = out_len as u32;
            // SAFETY: `next_in`/`avail_in` describe `input` and `next_out`/`avail_out` describe
            // `buf`, both alive for the call; ISA-L only reads the input. The pointers are
            // cleared after the call so that none outlives its slice.
            let ret = unsafe { isal::isal_inflate(&mut *self.state) };
            // Saturating: on some errors (an invalid distance) ISA-L leaves `avail_in` at
            // u32::MAX; the stream ends there, so what is consumed no longer matters.
            let consumed = in_len.saturating_sub(self.state.avail_in as usize);
            let produced = out_len.saturating_sub(self.state.avail_out as usize);
            self.state.next_in = std::ptr::null_mut();
            self.state.avail_in = 0;
            self.state.next_out = std::ptr::null_mut();
            self.state.avail_out = 0;
            self.inner.consume(consumed);
            if ret < 0 {
                self.fail_inflate(ret);
                // What was inflated before the error is handed on first: this call's output,
                // then `pending` (the next read gives it, then the error).
                return if produced > 0 {
                    Ok(produced)
                } else {
                    self.read(buf)
                };
            }
            if produced > 0 {
                return Ok(produced);
            }
            if member_done(&self.state) {
                continue;
            }
            if at_eof {
                return Err(self.truncated());
            }
            if consumed == 0 {
                // Not seen: ISA-L takes whatever input it cannot decode yet into a buffer of
                // its own. Refused rather than spun on, should a corrupt stream ever do it.
                return Err(self.fail(
                    io::ErrorKind::InvalidData,
                    "corrupt gzip stream: the inflater takes no more input".to_string(),
                ));
            }
        }
    }
}

impl<R> IgzipDecoder<R> {
    /// Records the error that ends the stream; every later read returns it again.
    fn fail(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.failed = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }

    /// Records a deflate error of `isal_inflate`, keeping what ISA-L had inflated into its
    /// buffer but not yet copied out (up to 64 KiB): it is handed on first.
    fn fail_inflate(&mut self, ret: i32) {
        let st = &self.state;
        let (from, to) = (st.tmp_out_processed, st.tmp_out_valid);
        if let (Ok(from), Ok(to)) = (usize::try_from(from), usize::try_from(to)) {
            if let Some(rest) = st.tmp_out_buffer.get(from..to) {
                self.pending = io::Cursor::new(rest.to_vec());
            }
        }
        self.fail(io::ErrorKind::InvalidData, describe(ret));
    }

    fn truncated(&mut self) -> io::Error {
        self.fail(
            io::ErrorKind::UnexpectedEof,
            "gzip stream ends before its member does (truncated)".to_string(),
        )
    }
}

/// The message for one of `isal_inflate`'s error codes.
fn describe(ret: i32) -> String {
    let what = match ret {
        isal::ISAL_INVALID_BLOCK => "invalid deflate block",
        isal::ISAL_INVALID_SYMBOL => "invalid deflate symbol",
        isal::ISAL_INVALID_LOOKBACK => "invalid deflate distance",
        isal::ISAL_INVALID_WRAPPER => "invalid gzip header",
        isal::ISAL_UNSUPPORTED_METHOD => "unsupported gzip compression method",
        isal::ISAL_INCORRECT_CHECKSUM => "gzip checksum or length mismatch",
        _ => "corrupt gzip stream",
    };
    format!("{what} (ISA-L error {ret})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::{BufReader, Write};

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).expect("writing to a Vec");
        e.finish().expect("writing to a Vec")
    }

    fn text(n: usize, seed: u64) -> Vec<u8> {
        (0..n)
            .map(|i| {
                let x = (i as u64)
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(seed);
                format!(
                    "{{\"auditID\":\"{x:016x}\",\"verb\":\"get\",\"code\":{}}}\n",
                    200 + (x >> 60) * 50
                )
            })
            .collect::<String>()
            .into_bytes()
    }

    /// Reads to the first error with `chunk`-byte reads: the bytes, and the error if any.
    fn read_all(mut r: impl Read, chunk: usize) -> (Vec<u8>, Option<io::ErrorKind>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (out, Some(e.kind())),
            }
        }
    }

    fn igzip(gz: &[u8], in_buf: usize, chunk: usize) -> (Vec<u8>, Option<io::ErrorKind>) {
        read_all(
            IgzipDecoder::new(BufReader::with_capacity(in_buf, gz)),
            chunk,
        )
    }

    fn flate(gz: &[u8], chunk: usize) -> (Vec<u8>, Option<io::ErrorKind>) {
        read_all(flate2::read::MultiGzDecoder::new(gz), chunk)
    }

    #[test]
    fn inflates_what_flate2_inflates_across_members_levels_and_buffer_sizes() {
        let (a, b) = (text(30_000, 1), text(7, 2));
        let mut gz = gzip(&a, 1);
        gz.extend(gzip(&b, 6));
        gz.extend(gzip(b"", 9));
        gz.extend(gzip(&a, 0));
        let want: Vec<u8> = [&a[..], &b[..], &a[..]].concat();
        for (in_buf, chunk) in [(1, 1), (7, 3), (4096, 100_000), (256 * 1024, 128 * 1024)] {
            let (got, err) = igzip(&gz, in_buf, chunk);
            assert_eq!(err, None, "in_buf {in_buf}, chunk {chunk}");
            assert!(
                got == want,
                "in_buf {in_buf}, chunk {chunk}: {} bytes",
                got.len()
            );
        }
    }

    #[test]
    fn a_stream_cut_anywhere_hands_on_what_flate2_hands_on_then_an_error() {
        let data = text(20_000, 3);
        let gz = gzip(&data, 6);
        let mut cuts: Vec<usize> = (0..40).collect();
        cuts.extend((1..200).map(|i| gz.len() * i / 200));
        cuts.extend(gz.len() - 12..gz.len());
        for cut in cuts {
            let (want, want_err) = flate(&gz[..cut], 64 * 1024);
            let (got, err) = igzip(&gz[..cut], 256 * 1024, 64 * 1024);
            assert!(
                want_err.is_some() && err.is_some(),
                "cut at {cut}: no error"
            );
            // Every whole line flate2 gives, ISA-L gives; at most the partial line at the cut
            // may differ, and it is never whole.
            let lines = |v: &[u8]| v.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            assert_eq!(
                &got[..lines(&got)],
                &want[..lines(&want)],
                "cut at {cut}: {} against {} bytes",
                got.len(),
                want.len()
            );
            assert!(
                data.starts_with(&got),
                "cut at {cut}: bytes not in the input"
            );
        }
    }

    /// A member with every optional header field flate2 writes (extra, name, comment).
    fn gzip_with_header_fields(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .extra(vec![7u8; 300])
            .filename("audit.log")
            .comment("exported by a test")
            .write(Vec::new(), Compression::new(6));
        e.write_all(data).expect("writing to a Vec");
        e.finish().expect("writing to a Vec")
    }

    /// A member with a name and a header CRC (FHCRC), which flate2 does not write.
    fn gzip_with_header_crc(data: &[u8]) -> Vec<u8> {
        let mut header = vec![0x1f, 0x8b, 8, 0x02 | 0x08, 0, 0, 0, 0, 0, 255];
        header.extend_from_slice(b"name.jsonl\0");
        let mut crc = flate2::Crc::new();
        crc.update(&header);
        header.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
        let mut d = flate2::write::DeflateEncoder::new(header, Compression::new(6));
        d.write_all(data).expect("writing to a Vec");
        let mut out = d.finish().expect("writing to a Vec");
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn headers_with_optional_fields_split_anywhere_between_reads() {
        let data = text(300, 7);
        let mut gz = gzip_with_header_fields(&data);
        gz.extend(gzip_with_header_crc(&data));
        gz.extend(gzip(&data, 1));
        let (want, want_err) = flate(&gz, 64 * 1024);
        assert_eq!(want_err, None);
        assert_eq!(want.len(), 3 * data.len());
        for in_buf in (1..=40).chain([333, 4096]) {
            let (got, err) = igzip(&gz, in_buf, 4096);
            assert_eq!(err, None, "input buffer of {in_buf} bytes");
            assert!(got == want, "input buffer of {in_buf} bytes");
        }
        // A wrong header CRC is refused, however the header is split.
        let mut bad = gzip_with_header_crc(&data);
        bad[21] ^= 1;
        for in_buf in [1, 5, 13, 4096] {
            let (got, err) = igzip(&bad, in_buf, 4096);
            assert_eq!(
                err,
                Some(io::ErrorKind::InvalidData),
                "input buffer {in_buf}"
            );
            assert!(got.is_empty());
        }
    }

    #[test]
    fn reserved_header_flags_are_refused_like_flate2() {
        for flag in [0x20u8, 0x40, 0x80] {
            let mut gz = gzip(&text(50, 8), 6);
            gz[3] |= flag;
            let (got, err) = igzip(&gz, 4096, 4096);
            assert_eq!(err, Some(io::ErrorKind::InvalidData), "flag {flag:#x}");
            assert!(got.is_empty());
            assert!(flate(&gz, 4096).1.is_some(), "flate2 takes flag {flag:#x}");
        }
    }

    /// Lines before a deflate error, with reads of any size: the bytes flate2 gives agree
    /// with ours where both have them, and we give at least flate2's whole lines (ISA-L
    /// inflates into a buffer of its own first: what it holds at the error is handed on).
    #[test]
    fn a_corrupt_block_hands_on_every_line_inflated_before_it() {
        let data = text(30_000, 9);
        let clean = gzip(&data, 6);
        let lines = |v: &[u8]| v.iter().filter(|&&c| c == b'\n').count();
        let mut early = 0;
        for (k, x) in (1..120).flat_map(|k| [(k, 0xffu8), (k, 0x10)]) {
            let at = clean.len() * k / 120;
            let mut gz = clean.clone();
            gz[at] ^= x;
            let (want, want_err) = flate(&gz, 1 << 20);
            // Only flips that stop flate2 well before the end (an invalid code, not a
            // checksum found wrong after all the bytes).
            if want_err.is_none() || want.len() + 20_000 > data.len() {
                continue;
            }
            early += 1;
            for (in_buf, chunk) in [(256 * 1024, 1 << 20), (256 * 1024, 4096), (4096, 7)] {
                let (got, err) = igzip(&gz, in_buf, chunk);
                assert!(err.is_some(), "flip at {at}, reads of {chunk}: no error");
                let common = got.len().min(want.len());
                assert!(
                    got[..common] == want[..common],
                    "flip at {at}, reads of {chunk}"
                );
                assert!(
                    lines(&got) >= lines(&want),
                    "flip at {at}, reads of {chunk}: {} lines against flate2's {}",
                    lines(&got),
                    lines(&want)
                );
            }
        }
        assert!(early >= 3, "only {early} flips stopped the stream early");
    }

    #[test]
    fn garbage_after_a_member_is_an_error_after_the_whole_member() {
        let data = text(5_000, 4);
        for tail in [
            &b"\0"[..],
            b"garbage after",
            b"\x1f\x8b",
            b"\x1f\x8b\x08\0\0\0",
        ] {
            let mut gz = gzip(&data, 6);
            gz.extend_from_slice(tail);
            let (got, err) = igzip(&gz, 256 * 1024, 64 * 1024);
            let (want, want_err) = flate(&gz, 64 * 1024);
            assert!(err.is_some() && want_err.is_some(), "tail {tail:?}");
            assert_eq!(got, want, "tail {tail:?}");
            assert_eq!(got, data, "tail {tail:?}");
        }
    }

    #[test]
    fn a_wrong_checksum_or_length_is_an_error_after_the_bytes() {
        let data = text(2_000, 5);
        for at in [8, 4] {
            let mut gz = gzip(&data, 6);
            let i = gz.len() - at;
            gz[i] ^= 1;
            let (got, err) = igzip(&gz, 256 * 1024, 64 * 1024);
            assert_eq!(err, Some(io::ErrorKind::InvalidData), "trailer byte -{at}");
            assert_eq!(got, data, "trailer byte -{at}");
        }
    }

    #[test]
    fn an_error_is_given_again_not_an_end() {
        let gz = gzip(&text(100, 6), 6);
        let mut d = IgzipDecoder::new(BufReader::new(&gz[..gz.len() - 3]));
        let mut out = Vec::new();
        assert!(d.read_to_end(&mut out).is_err());
        assert!(d.read(&mut [0u8; 10]).is_err());
        // After a deflate error too, with bytes handed on before it.
        let mut gz = gzip(&text(6_000, 6), 6);
        let at = gz.len() / 2;
        gz[at] ^= 0x55;
        let mut d = IgzipDecoder::new(BufReader::new(&gz[..]));
        let mut buf = [0u8; 4096];
        let mut bytes = 0;
        let err = loop {
            match d.read(&mut buf) {
                Ok(0) => panic!("a corrupt stream ended cleanly"),
                Ok(n) => bytes += n,
                Err(e) => break e,
            }
        };
        assert!(bytes > 0);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        for _ in 0..3 {
            assert!(d.read(&mut buf).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// Gzip with bytes flipped (anywhere, and in the header): never a panic or a hang,
        /// the same verdict as flate2 (an error or a clean end), the same bytes where both
        /// gave some, and all the same bytes when clean.
        #[test]
        fn agrees_with_flate2_on_corrupt_input(
            lines in 1usize..400,
            seed in any::<u64>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            header_flip in proptest::option::of((0usize..12, 1u8..=255)),
            in_buf in prop::sample::select(vec![1usize, 5, 64, 4096, 256 * 1024]),
            chunk in prop::sample::select(vec![1usize, 17, 4096, 128 * 1024]),
        ) {
            let mut gz = gzip(&text(lines, seed), (seed % 10) as u32);
            for (at, x) in &flips {
                let i = at.index(gz.len());
                gz[i] ^= x;
            }
            if let Some((i, x)) = header_flip {
                gz[i] ^= x;
            }
            let (got, err) = igzip(&gz, in_buf, chunk);
            let (want, want_err) = flate(&gz, 64 * 1024);
            prop_assert_eq!(err.is_some(), want_err.is_some(), "verdicts differ");
            // Where both gave bytes, the same bytes; clean, all of them.
            let common = got.len().min(want.len());
            prop_assert!(got[..common] == want[..common]);
            if err.is_none() {
                prop_assert!(got == want);
            }
        }
    }
}
