//! The structure pass one byte at a time: the reference the block walk is held to, and what
//! judges a record the block walk leaves (a backslash outside every string, which is not JSON
//! but must get the same verdict as always).

use super::{find_quote_or_backslash, truncated, TopFields, Walk};
use crate::event::DecodeError;

/// The verdict on `b` (trimmed, starting with `{`) and, for a plain event, its fields. The
/// UTF-8 and control-character checks are the caller's.
pub(super) fn walk(b: &[u8]) -> Result<Option<TopFields<'_>>, DecodeError> {
    let mut w = Walk::new(b);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                loop {
                    let k = find_quote_or_backslash(b, j).ok_or_else(truncated)?;
                    if b[k] == b'\\' {
                        j = k + 2;
                        if j > b.len() {
                            return Err(truncated());
                        }
                    } else {
                        j = k;
                        break;
                    }
                }
                i = j + 1;
                if w.reads_keys() {
                    let n = i + b[i..]
                        .iter()
                        .take_while(|c| c.is_ascii_whitespace())
                        .count();
                    if b.get(n) == Some(&b':') {
                        w.key(&b[start..j], n + 1);
                    }
                }
                continue;
            }
            c @ (b'{' | b'[') => w.open(c),
            b'}' | b']' => {
                if let Some(verdict) = w.close(i) {
                    return verdict;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(truncated())
}
