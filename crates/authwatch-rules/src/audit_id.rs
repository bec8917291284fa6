//! Audit IDs as the engine keeps them ([`AuditId`]): a canonical UUID as its 16 bytes, other
//! ids inline or in one shared allocation. They break ties in the reorder buffer and the
//! windows, key the de-duplication (dedup.rs), and are the sample ids alerts carry. Moved out
//! of engine.rs (issue #19).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// An auditID as the engine keeps it, in 24 bytes. Kubernetes writes UUIDs (36 characters of
/// text): those in canonical form (lowercase, hyphenated) are kept as their 16 bytes, with no
/// allocation, and turn back into the same text; other ids up to [`INLINE_ID`] bytes are kept
/// inline, longer ones in one shared allocation. The same id always takes the same form, so
/// equality and hashing are those of the text, and [`Ord`] is the text's order (the bytes of a
/// canonical UUID compare like its lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AuditId {
    Uuid([u8; 16]),
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Text(Arc<str>),
}

/// Longest auditID kept inline when it is not a UUID.
const INLINE_ID: usize = 22;

impl AuditId {
    pub(crate) fn new(s: &str) -> AuditId {
        if let Some(b) = parse_uuid(s) {
            return AuditId::Uuid(b);
        }
        if s.len() <= INLINE_ID {
            let mut bytes = [0u8; INLINE_ID];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            return AuditId::Inline {
                len: s.len() as u8,
                bytes,
            };
        }
        AuditId::Text(Arc::from(s))
    }

    /// Calls `f` with the id's text (rendered on the stack for a UUID).
    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            AuditId::Uuid(b) => {
                let buf = render_uuid(b);
                f(std::str::from_utf8(&buf).unwrap_or_default())
            }
            AuditId::Inline { len, bytes } => f(std::str::from_utf8(
                bytes.get(..usize::from(*len)).unwrap_or_default(),
            )
            .unwrap_or_default()),
            AuditId::Text(t) => f(t),
        }
    }
}

impl Ord for AuditId {
    fn cmp(&self, o: &Self) -> Ordering {
        match (self, o) {
            (AuditId::Uuid(a), AuditId::Uuid(b)) => a.cmp(b),
            (AuditId::Text(a), AuditId::Text(b)) => a.cmp(b),
            _ => self.with_str(|a| o.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for AuditId {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Positions of the hyphens in a canonical UUID.
fn is_uuid_hyphen(i: usize) -> bool {
    matches!(i, 8 | 13 | 18 | 23)
}

/// The 16 bytes of a UUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex;
/// `None` for anything else (uppercase included: it would not render back the same).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if is_uuid_hyphen(i) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
        n += 1;
    }
    Some(out)
}

fn render_uuid(b: &[u8; 16]) -> [u8; 36] {
    let mut out = [b'-'; 36];
    let mut n = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if is_uuid_hyphen(i) {
            continue;
        }
        let byte = b[n / 2];
        let v = if n % 2 == 0 { byte >> 4 } else { byte & 15 };
        *slot = HEX[usize::from(v)];
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_are_kept_as_bytes_and_render_back_the_same() {
        let s = "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1b";
        let id = AuditId::new(s);
        assert!(matches!(id, AuditId::Uuid(_)));
        assert_eq!(id.to_string(), s);
        for other in [
            "0F8E7D6C-5B4A-4939-8271-605F4E3D2C1B-and-some-more",
            "0F8E7D6C-5B4A-4939-8271-605F4E3D2C1B",
            "0f8e7d6c5b4a49398271605f4e3d2c1b",
            "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1",
            "0f8e7d6c-5b4a-4939-8271-605f4e3d2c1g",
            "",
        ] {
            let id = AuditId::new(other);
            assert!(!matches!(id, AuditId::Uuid(_)), "{other}");
            assert_eq!(id.to_string(), other);
        }
    }

    #[test]
    fn audit_ids_order_like_their_text() {
        let texts = [
            "00000000-0000-4000-8000-000000000000",
            "0000000a-0000-4000-8000-000000000000",
            "00000009-0000-4000-8000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "0000000A-0000-4000-8000-000000000000",
            "a",
            "0",
            "00000000-0000-4000-8000-00000000000",
            "00000000-0000-4000-8000-0000000000000",
            "g",
            "s-1",
            "s-10",
            "s-9",
            "a-rather-long-audit-id-that-is-not-a-uuid",
            "a-rather-long-audit-id-that-is-not-a-uuie",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(AuditId::new(a).cmp(&AuditId::new(b)), a.cmp(b), "{a} {b}");
                assert_eq!(AuditId::new(a) == AuditId::new(b), a == b, "{a} {b}");
            }
        }
    }
}
