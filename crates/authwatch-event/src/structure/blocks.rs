//! The structure pass 64 bytes at a time, after simdjson's stage 1 (Langdale and Lemire,
//! "Parsing Gigabytes of JSON per Second", 2019): each block of the record becomes bit masks
//! (quotes, backslashes, brackets and colons, bytes that are not ASCII, bytes below 0x20);
//! escapes and string spans are computed on the masks with a few integer operations, so
//! the bytes inside strings, most of an audit event, are never looked at one by one. The
//! [`Walk`] then sees only the brackets and colons outside strings, as the byte walk does.
//!
//! The verdict is the byte walk's on every input. The one place the two readings could part
//! is a backslash outside every string (not JSON): the masks would read it as an escape, the
//! byte walk as a stray byte. A record with one is left to the byte walk. Up to the first such
//! backslash both readings agree on every string, so the check on the masks finds it.

use super::{scan_bytes, truncated, Scanned, Walk};

/// One block's bytes of interest, bit `k` for byte `k`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Masks {
    quote: u64,
    backslash: u64,
    /// `{`, `[`, `}`, `]` and `:`, inside strings or not.
    token: u64,
    /// Bytes of 0x80 and above.
    high: u64,
    /// Bytes below 0x20.
    low: u64,
}

/// Whether this CPU runs the AVX2 block classifier.
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The walk with AVX2 where this CPU has it; `None` leaves `b` to the byte walk (also where
/// it has not: the portable classifier is slower than the byte walk).
pub(super) fn scan_best(b: &[u8]) -> Option<Scanned<'_>> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and PCLMULQDQ (checked just above).
        return unsafe { x86::scan(b) };
    }
    let _ = b;
    None
}

/// The walk with the portable classifier.
pub(super) fn scan_portable(b: &[u8]) -> Option<Scanned<'_>> {
    scan_with(b, classify, prefix_xor)
}

/// The walk over `b` (trimmed, starting with `{`), given a block classifier and a prefix XOR.
/// Inlined into each caller so that the classifier's instructions are those the caller's
/// target features allow.
#[inline(always)]
fn scan_with(
    b: &[u8],
    classify: impl Fn(&[u8; 64]) -> Masks,
    prefix_xor: impl Fn(u64) -> u64,
) -> Option<Scanned<'_>> {
    let mut w = Walk::new(b);
    let mut high = 0u64;
    let mut control = false;
    // All ones when the previous block ended inside a string.
    let mut in_string = 0u64;
    // 1 when the previous block ended with a backslash that escapes this block's first byte.
    let mut escape_carry = 0u64;
    // Where the last opening quote before this block is.
    let mut last_open = None;
    let mut verdict = None;
    let mut base = 0;
    while base < b.len() {
        let block = match b.get(base..base + 64) {
            Some(full) => classify(full.try_into().ok()?),
            None => {
                // The last, short block, padded with spaces (neutral in every mask).
                let mut pad = [b' '; 64];
                pad[..b.len() - base].copy_from_slice(&b[base..]);
                classify(&pad)
            }
        };
        high |= block.high;
        control |= block.low != 0 && has_forbidden_control(b, base, block.low);
        let escaped = if block.backslash | escape_carry == 0 {
            0
        } else {
            escaped(block.backslash, &mut escape_carry)
        };
        let quotes = block.quote & !escaped;
        let inside = prefix_xor(quotes) ^ in_string;
        in_string = ((inside as i64) >> 63) as u64;
        if block.backslash & !inside != 0 {
            return None;
        }
        // Opening quotes are the ones inside (a string's span starts at its opening quote).
        let opens = quotes & inside;
        let mut tokens = block.token & !inside;
        while tokens != 0 {
            let k = tokens.trailing_zeros();
            let i = base + k as usize;
            tokens &= tokens - 1;
            match b[i] {
                b':' => {
                    if w.reads_keys() {
                        let before = opens & ((1u64 << k) - 1);
                        let open = if before == 0 {
                            last_open
                        } else {
                            Some(base + 63 - before.leading_zeros() as usize)
                        };
                        if let Some(text) = open.and_then(|open| key_before(b, open, i)) {
                            w.key(text, i + 1);
                        }
                    }
                }
                c @ (b'{' | b'[') => w.open(c),
                _ => {
                    if let Some(v) = w.close(i) {
                        verdict = Some(v);
                        break;
                    }
                }
            }
        }
        if opens != 0 {
            last_open = Some(base + 63 - opens.leading_zeros() as usize);
        }
        base += 64;
        if verdict.is_some() {
            break;
        }
    }
    // A verdict before the end ("data after the JSON object"): the other checks still see
    // every byte, since they come first.
    if let Some(rest) = b.get(base..).filter(|r| !r.is_empty()) {
        let (non_ascii, forbidden) = scan_bytes(rest);
        high |= u64::from(non_ascii);
        control |= forbidden;
    }
    Some(Scanned {
        walk: verdict.unwrap_or_else(|| Err(truncated())),
        non_ascii: high != 0,
        control,
    })
}

/// Whether a byte flagged in `low` (below 0x20) is one JSON forbids: all but tab, newline and
/// carriage return. Rare, so byte by byte.
#[cold]
fn has_forbidden_control(b: &[u8], base: usize, mut low: u64) -> bool {
    while low != 0 {
        let k = low.trailing_zeros() as usize;
        low &= low - 1;
        // Past the end is padding (spaces), never flagged.
        if let Some(&c) = b.get(base + k) {
            if !matches!(c, b'\t' | b'\n' | b'\r') {
                return true;
            }
        }
    }
    false
}

/// The key before the colon at `colon` (outside strings), given the last opening quote
/// before it: the raw text of the string that ends, after whitespace, right before the
/// colon; `None` when no string does (not JSON). No quote opens between a key's opening
/// quote and its colon (a quote inside the key is escaped), so the last one is the key's.
fn key_before(b: &[u8], open: usize, colon: usize) -> Option<&[u8]> {
    let mut close = colon.checked_sub(1)?;
    while b[close].is_ascii_whitespace() {
        close = close.checked_sub(1)?;
    }
    // The colon is outside strings, so a quote right before it closes a string.
    (b[close] == b'"' && open < close).then(|| &b[open + 1..close])
}

/// The bytes escaped by a backslash (the byte after an odd run of backslashes), given this
/// block's backslashes and the carry from the previous block (1 when its last backslash
/// escapes this block's first byte), which it updates. simdjson's branchless form: runs
/// that start on odd and even bits are told apart by one addition.
fn escaped(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows_escape = (backslash << 1) | *carry;
    let odd_starts = backslash & !EVEN & !follows_escape;
    let (even_runs, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    let invert = even_runs << 1;
    (EVEN ^ invert) & follows_escape
}

/// Bit `k` of the result is the XOR of bits `0..=k` of `x`: set from an opening quote up to
/// (not including) its closing one.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// The masks of one block, byte by byte (written so the compiler can vectorize it).
fn classify(block: &[u8; 64]) -> Masks {
    let mut m = Masks::default();
    for (k, &c) in block.iter().enumerate() {
        let folded = c | 0x20;
        m.quote |= u64::from(c == b'"') << k;
        m.backslash |= u64::from(c == b'\\') << k;
        m.token |= u64::from(c == b':' || folded == b'{' || folded == b'}') << k;
        m.high |= u64::from(c >= 0x80) << k;
        m.low |= u64::from(c < 0x20) << k;
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Masks, Scanned};
    use std::arch::x86_64::*;

    /// [`super::scan_with`] with AVX2 masks and a carry-less multiply for the prefix XOR.
    ///
    /// # Safety
    /// The CPU must have AVX2 and PCLMULQDQ.
    #[target_feature(enable = "avx2,pclmulqdq")]
    pub(super) unsafe fn scan(b: &[u8]) -> Option<Scanned<'_>> {
        // SAFETY (both closures): this function runs only where the features are.
        super::scan_with(
            b,
            |block| unsafe { classify(block) },
            |x| unsafe { prefix_xor(x) },
        )
    }

    /// The low 32 bits from `lo`'s byte sign bits, the high 32 from `hi`'s.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn bits(lo: __m256i, hi: __m256i) -> u64 {
        let lo = _mm256_movemask_epi8(lo) as u32;
        let hi = _mm256_movemask_epi8(hi) as u32;
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Bytes of `v` equal to `c`, as 0xFF.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn eq(v: __m256i, c: u8) -> __m256i {
        _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8))
    }

    /// Bytes of `v` that are `:`, `{`, `[`, `}` or `]` (the brackets differ from each other in
    /// bit 0x20 only), as 0xFF.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tokens(v: __m256i) -> __m256i {
        let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
        _mm256_or_si256(
            eq(v, b':'),
            _mm256_or_si256(eq(folded, b'{'), eq(folded, b'}')),
        )
    }

    /// Bytes of `v` below 0x20, as 0xFF.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn low(v: __m256i) -> __m256i {
        _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v)
    }

    // Not inlined: inlined, LLVM reads the movemask results back bit by bit (hundreds of
    // instructions a block instead of a few dozen).
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    unsafe fn classify(block: &[u8; 64]) -> Masks {
        // SAFETY: two unaligned 32-byte loads inside the 64-byte block.
        let lo = _mm256_loadu_si256(block.as_ptr().cast());
        let hi = _mm256_loadu_si256(block.as_ptr().add(32).cast());
        Masks {
            quote: bits(eq(lo, b'"'), eq(hi, b'"')),
            backslash: bits(eq(lo, b'\\'), eq(hi, b'\\')),
            token: bits(tokens(lo), tokens(hi)),
            high: bits(lo, hi),
            low: bits(low(lo), low(hi)),
        }
    }

    /// [`super::prefix_xor`] as one carry-less multiplication by all ones.
    #[target_feature(enable = "pclmulqdq")]
    #[inline]
    unsafe fn prefix_xor(x: u64) -> u64 {
        let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
        _mm_cvtsi128_si64(product) as u64
    }

    #[cfg(test)]
    #[test]
    fn the_avx2_masks_are_the_portable_ones() {
        if !super::has_avx2() {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        }
        let mut block = [0u8; 64];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000 {
            for c in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Every byte value, weighted toward the ones the masks flag.
                const FLAGGED: &[u8] = b"\"\\:{}[]\x00\x1f\x20\x7f\x80\xff\x5b\x5d\x7b\x7d\x3a\x1a";
                *c = if round % 2 == 0 {
                    state as u8
                } else {
                    FLAGGED[(state % FLAGGED.len() as u64) as usize]
                };
            }
            // SAFETY: checked above that the CPU has both features.
            let (fast, xor) = unsafe { (classify(&block), prefix_xor(state)) };
            assert_eq!(fast, super::classify(&block), "{block:?}");
            assert_eq!(xor, super::prefix_xor(state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The escaped bytes, one at a time: what [`escaped`] must give.
    fn escaped_slowly(backslash: u64, carry: &mut u64) -> u64 {
        let mut out = 0;
        let mut next = *carry == 1;
        for k in 0..64 {
            if next {
                out |= 1 << k;
                next = false;
            } else if backslash >> k & 1 == 1 {
                next = true;
            }
        }
        *carry = u64::from(next);
        out
    }

    #[test]
    fn escapes_are_those_of_a_byte_at_a_time_reading() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Dense, sparse and long runs of backslashes.
            let backslash = match round % 4 {
                0 => state,
                1 => state & (state >> 1),
                2 => state | (state << 1) | (state << 2),
                _ => !(state & (state >> 3)),
            };
            for carry in [0, 1] {
                let (mut fast, mut slow) = (carry, carry);
                assert_eq!(
                    escaped(backslash, &mut fast),
                    escaped_slowly(backslash, &mut slow),
                    "{backslash:064b} carry {carry}"
                );
                assert_eq!(fast, slow, "carry out of {backslash:064b}");
            }
        }
        for backslash in [0, u64::MAX, 1 << 63, u64::MAX >> 1, 0x5555_5555_5555_5555] {
            for carry in [0, 1] {
                let (mut fast, mut slow) = (carry, carry);
                assert_eq!(
                    escaped(backslash, &mut fast),
                    escaped_slowly(backslash, &mut slow)
                );
                assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn prefix_xor_marks_each_string_from_its_opening_quote() {
        assert_eq!(prefix_xor(0b1001), 0b0111);
        assert_eq!(prefix_xor(0b1), u64::MAX);
        assert_eq!(prefix_xor(1 << 63), 1 << 63);
    }

    #[test]
    fn a_key_is_the_string_right_before_its_colon() {
        let b = br#"{"a" : 1,"x\"verb":2,"b\\":3,"":4, 5:6}"#;
        let open = |text: &str| {
            b.windows(text.len())
                .position(|w| w == text.as_bytes())
                .unwrap()
        };
        let colon_after = |at: usize| at + b[at..].iter().position(|&c| c == b':').unwrap();
        for (key, want) in [
            ("\"a\"", &b"a"[..]),
            ("\"x\\", br#"x\"verb"#),
            ("\"b\\", br"b\\"),
            ("\"\":4", b""),
        ] {
            let at = open(key);
            assert_eq!(key_before(b, at, colon_after(at)), Some(want), "{key}");
        }
        // `5:` has no string before its colon.
        let five = open("5:");
        assert_eq!(key_before(b, open("\"\":4"), five + 1), None);
    }
}
