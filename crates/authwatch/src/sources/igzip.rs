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
    /// The error that ended the stream, given again to every later `read`.
    failed: Option<(io::ErrorKind, String)>,
}

impl<R: BufRead> IgzipDecoder<R> {
    /// A decoder at the start of `inner`'s first gzip member.
    pub fn new(inner: R) -> Self {
        let mut state = Box::<isal::inflate_state>::new_uninit();
        // SAFETY: `isal_inflate_init` writes every field of the state it is given.
        let mut state = unsafe {
            isal::isal_inflate_init(state.as_mut_ptr());
            state.assume_init()
        };
        state.crc_flag = isal::ISAL_GZIP;
        IgzipDecoder {
            inner,
            state,
            failed: None,
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.failed = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }

    /// Whether the last member read so far is complete (its trailer checked).
    fn at_member_end(&self) -> bool {
        self.state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH
    }
}

impl<R: BufRead> Read for IgzipDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
            if self.state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH {
                if at_eof {
                    return Ok(0);
                }
                // Another member follows (or garbage, which its header check refuses).
                // SAFETY: the state was initialized by `isal_inflate_init`.
                unsafe { isal::isal_inflate_reset(&mut *self.state) };
                self.state.crc_flag = isal::ISAL_GZIP;
            }
            let in_len = input.len().min(u32::MAX as usize);
            self.state.next_in = input.as_ptr().cast_mut();
            self.state.avail_in = in_len as u32;
            self.state.next_out = buf.as_mut_ptr();
            self.state.avail_out = out_len as u32;
            // SAFETY: `next_in`/`avail_in` describe `input` and `next_out`/`avail_out` describe
            // `buf`, both alive for the call; ISA-L only reads the input. The pointers are
            // cleared after the call so that none outlives its slice.
            let ret = unsafe { isal::isal_inflate(&mut *self.state) };
            let consumed = in_len - self.state.avail_in as usize;
            let produced = out_len - self.state.avail_out as usize;
            self.state.next_in = std::ptr::null_mut();
            self.state.avail_in = 0;
            self.state.next_out = std::ptr::null_mut();
            self.state.avail_out = 0;
            self.inner.consume(consumed);
            if ret < 0 {
                let e = self.fail(io::ErrorKind::InvalidData, describe(ret));
                // What was inflated before the error is handed on first; the next read
                // returns the error.
                return if produced > 0 { Ok(produced) } else { Err(e) };
            }
            if produced > 0 {
                return Ok(produced);
            }
            if self.at_member_end() {
                continue;
            }
            if at_eof {
                return Err(self.fail(
                    io::ErrorKind::UnexpectedEof,
                    "gzip stream ends before its member does (truncated)".to_string(),
                ));
            }
            if consumed == 0 {
                // ISA-L returns without an error on some bad headers while taking nothing.
                return Err(self.fail(
                    io::ErrorKind::InvalidData,
                    "corrupt gzip stream: the inflater takes no more input".to_string(),
                ));
            }
        }
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
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// Gzip with bytes flipped: never a panic or a hang, the same verdict as flate2 (an
        /// error or a clean end), and the same bytes when clean.
        #[test]
        fn agrees_with_flate2_on_corrupt_input(
            lines in 1usize..400,
            seed in any::<u64>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            in_buf in prop::sample::select(vec![1usize, 5, 64, 4096, 256 * 1024]),
            chunk in prop::sample::select(vec![1usize, 17, 4096, 128 * 1024]),
        ) {
            let mut gz = gzip(&text(lines, seed), (seed % 10) as u32);
            for (at, x) in &flips {
                let i = at.index(gz.len());
                gz[i] ^= x;
            }
            let (got, err) = igzip(&gz, in_buf, chunk);
            let (want, want_err) = flate(&gz, 64 * 1024);
            prop_assert_eq!(err.is_some(), want_err.is_some(), "verdicts differ");
            if err.is_none() {
                prop_assert!(got == want);
            }
        }
    }
}
