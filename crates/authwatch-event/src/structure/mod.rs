//! The structure pass: one walk over a record that tells, without decoding, whether it could
//! be an audit event ([`check_structure`]) and, for a plain event line, reads on its way the
//! top-level fields rules test most ([`TopFields`]), exactly as [`decode`] would read them.
//! The prefilter tests those fields instead of searching for their words in the whole line,
//! and a record it rules out is never decoded.

use crate::event::{decode, trim_ascii, DecodeError};

mod blocks;
mod byte_walk;

/// A field the structure pass read from a plain event line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// Not in the event, or `null`: [`decode`] reads none.
    #[default]
    Absent,
    /// A string without escapes (its bytes are its text).
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// There, in a form the pass does not read (escaped text, another type, the key twice, a
    /// parent object that is not one): only decoding tells.
    Unknown,
}

/// The top-level fields of a plain event line (one audit event: not a shipper's wrapper nor
/// an `EventList`), as [`decode`] would read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopFields<'a> {
    /// `verb`.
    pub verb: Scalar<'a>,
    /// `responseStatus.code`.
    pub code: Scalar<'a>,
    /// `objectRef.resource`.
    pub resource: Scalar<'a>,
    /// `objectRef.subresource`.
    pub subresource: Scalar<'a>,
    /// `objectRef.namespace`.
    pub namespace: Scalar<'a>,
    /// `objectRef.name`.
    pub name: Scalar<'a>,
    /// `objectRef.apiGroup`.
    pub api_group: Scalar<'a>,
    /// `user.username`.
    pub username: Scalar<'a>,
    /// `requestReceivedTimestamp`, the event's time when it parses.
    pub request_received_timestamp: Scalar<'a>,
    /// Whether the event has a request body: `Str("")` when `requestObject` is there and not
    /// `null` (the body itself is not read), `Absent` when not (a `Metadata`-level event).
    pub request_object: Scalar<'a>,
}

impl TopFields<'_> {
    /// The first field this pass read differently from the decoder's `ev` (of the same
    /// line), or `None` when every field it read agrees. For the differential test and the
    /// fuzz target that hold the pass to [`decode`]; `Unknown` agrees with anything.
    pub fn disagreement(&self, ev: &crate::AuditEvent<'_>) -> Option<&'static str> {
        fn text<'t>(t: Option<&'t crate::Text<'_>>) -> Option<&'t str> {
            t.map(crate::Text::as_str)
        }
        fn same(scanned: Scalar<'_>, decoded: Option<&str>) -> bool {
            match scanned {
                Scalar::Str(s) => decoded == Some(s),
                Scalar::Absent => decoded.is_none(),
                Scalar::Int(_) => false,
                Scalar::Unknown => true,
            }
        }
        let o = ev.object_ref.as_ref();
        let code = match self.code {
            Scalar::Int(n) => ev.code() == Some(n),
            Scalar::Absent => ev.code().is_none(),
            Scalar::Str(_) => false,
            Scalar::Unknown => true,
        };
        [
            ("verb", same(self.verb, text(ev.verb.as_ref()))),
            ("responseStatus.code", code),
            (
                "objectRef.resource",
                same(self.resource, text(o.and_then(|o| o.resource.as_ref()))),
            ),
            (
                "objectRef.subresource",
                same(
                    self.subresource,
                    text(o.and_then(|o| o.subresource.as_ref())),
                ),
            ),
            (
                "objectRef.namespace",
                same(self.namespace, text(o.and_then(|o| o.namespace.as_ref()))),
            ),
            (
                "objectRef.name",
                same(self.name, text(o.and_then(|o| o.name.as_ref()))),
            ),
            (
                "objectRef.apiGroup",
                same(self.api_group, text(o.and_then(|o| o.api_group.as_ref()))),
            ),
            ("user.username", same(self.username, ev.username())),
            (
                "requestReceivedTimestamp",
                same(
                    self.request_received_timestamp,
                    text(ev.request_received_timestamp.as_ref()),
                ),
            ),
            ("requestObject", {
                let body = serde_json::from_slice::<serde_json::Value>(ev.raw)
                    .ok()
                    .and_then(|v| v.get("requestObject").cloned())
                    .filter(|b| !b.is_null());
                match self.request_object {
                    Scalar::Str(_) => body.is_some(),
                    Scalar::Absent => body.is_none(),
                    Scalar::Int(_) => false,
                    Scalar::Unknown => true,
                }
            }),
        ]
        .into_iter()
        .find_map(|(what, ok)| (!ok).then_some(what))
    }
}

/// A parent object whose fields are read (`user`, `objectRef`, `responseStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// Not seen, or `null`: its fields are absent.
    Absent,
    /// An object.
    Object,
    /// Another type, or the key twice: its fields are unknown.
    Wrong,
}

/// What the walk collects: each field `None` until seen.
#[derive(Default, Clone, Copy)]
struct Collect<'a> {
    verb: Option<Scalar<'a>>,
    rrt: Option<Scalar<'a>>,
    request_object: Option<Scalar<'a>>,
    code: Option<Scalar<'a>>,
    resource: Option<Scalar<'a>>,
    subresource: Option<Scalar<'a>>,
    namespace: Option<Scalar<'a>>,
    name: Option<Scalar<'a>>,
    api_group: Option<Scalar<'a>>,
    username: Option<Scalar<'a>>,
    user: Option<Parent>,
    object_ref: Option<Parent>,
    response_status: Option<Parent>,
}

/// Records a field; a second sighting makes it unknown (the decoder refuses a duplicate).
fn seen<T: Copy>(slot: &mut Option<T>, value: T, twice: T) {
    *slot = Some(if slot.is_some() { twice } else { value });
}

fn field<'a>(slot: Option<Scalar<'a>>, parent: Option<Parent>) -> Scalar<'a> {
    match parent.unwrap_or(Parent::Absent) {
        Parent::Wrong => Scalar::Unknown,
        Parent::Absent => Scalar::Absent,
        Parent::Object => slot.unwrap_or(Scalar::Absent),
    }
}

/// Which parent object a depth-2 key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    User,
    ObjectRef,
    ResponseStatus,
    Other,
}

/// How the structure pass finds the bytes that matter. Every method gives the same verdict
/// and fields on every input (the differential tests hold them to each other); [`scan_structure`]
/// takes the fastest this machine has.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One byte at a time (strings skipped eight bytes at a time): the reference; what runs
    /// on a CPU without AVX2, and on a record with a backslash outside its strings (not JSON,
    /// but it must be judged the same).
    ByteWalk,
    /// 64 bytes at a time with portable code: the block walk's logic without vector
    /// registers, for the tests (about 2.7 times slower than the byte walk: the compiler
    /// does not turn its mask building into vector code).
    Blocks,
    /// 64 bytes at a time with AVX2 and carry-less multiplication, where the CPU has them
    /// (checked at run time); [`Method::ByteWalk`] where it has not.
    BlocksAvx2,
}

impl Method {
    /// The fastest method this CPU runs.
    pub fn best() -> Method {
        if blocks::has_avx2() {
            Method::BlocksAvx2
        } else {
            Method::ByteWalk
        }
    }
}

/// Checks, without decoding, that a record could be an audit event: valid UTF-8, one
/// well-formed JSON object (strings closed, brackets balanced, nothing after it), `kind`
/// absent or a string naming `Event`/`EventList`, and one of the keys an event, a wrapper or
/// a list has. Several times faster than [`decode`]; used for records the prefilter rules out,
/// so that truncated, empty and non-event lines are still counted. Scalars inside are not
/// checked (`{"auditID":"a","code":4x}` passes).
///
/// ```
/// use authwatch_event::event::check_structure;
/// assert!(check_structure(br#"{"kind":"Event","auditID":"a","user":{"username":"x"}}"#).is_ok());
/// assert_eq!(check_structure(br#"{"kind": 0}"#).unwrap_err().reason(), "not_an_event");
/// assert_eq!(check_structure(br#"{"auditID":"a","verb":"li"#).unwrap_err().reason(), "invalid_json");
/// ```
pub fn check_structure(raw: &[u8]) -> Result<(), DecodeError> {
    scan_structure(raw).map(|_| ())
}

/// [`check_structure`], and for a plain event line the fields it read on the way (`None` for
/// a wrapper, an `EventList`, or a record that does not start with `{`).
///
/// ```
/// use authwatch_event::structure::{scan_structure, Scalar};
/// let line = br#"{"auditID":"a","verb":"get","user":{"username":"bob"},"responseStatus":{"code":403}}"#;
/// let top = scan_structure(line).unwrap().unwrap();
/// assert_eq!(top.verb, Scalar::Str("get"));
/// assert_eq!(top.code, Scalar::Int(403));
/// assert_eq!(top.username, Scalar::Str("bob"));
/// assert_eq!(top.resource, Scalar::Absent);
/// // Escaped text is left to the decoder.
/// let top = scan_structure(br#"{"auditID":"a","verb":"g\u0065t"}"#).unwrap().unwrap();
/// assert_eq!(top.verb, Scalar::Unknown);
/// // A wrapper holds its event in a string: nothing read.
/// assert_eq!(scan_structure(br#"{"log":"{}"}"#).unwrap(), None);
/// ```
pub fn scan_structure(raw: &[u8]) -> Result<Option<TopFields<'_>>, DecodeError> {
    scan_structure_with(raw, Method::best())
}

/// [`scan_structure`] by a chosen [`Method`]: for the tests and benchmarks that compare them.
#[doc(hidden)]
pub fn scan_structure_with(
    raw: &[u8],
    method: Method,
) -> Result<Option<TopFields<'_>>, DecodeError> {
    let b = trim_ascii(raw);
    if b.is_empty() {
        return Err(DecodeError::Empty);
    }
    if b[0] != b'{' {
        // Rare: let the decoder classify it.
        return decode(b).map(|_| None);
    }
    let scanned = match method {
        Method::ByteWalk => None,
        Method::Blocks => blocks::scan_portable(b),
        Method::BlocksAvx2 => blocks::scan_best(b),
    };
    let scanned = scanned.unwrap_or_else(|| {
        let (non_ascii, control) = scan_bytes(b);
        Scanned {
            walk: byte_walk::walk(b),
            non_ascii,
            control,
        }
    });
    if scanned.non_ascii && std::str::from_utf8(b).is_err() {
        return Err(DecodeError::Json("invalid UTF-8".into()));
    }
    // Raw control characters are invalid anywhere in JSON but as whitespace between tokens.
    if scanned.control {
        return Err(DecodeError::Json("control character in JSON".into()));
    }
    scanned.walk
}

/// What a walk over a whole record found: its verdict on the structure, and whether the
/// record has a byte that is not ASCII or a control character JSON forbids (these two
/// verdicts come first).
struct Scanned<'a> {
    walk: Result<Option<TopFields<'a>>, DecodeError>,
    non_ascii: bool,
    control: bool,
}

fn truncated() -> DecodeError {
    DecodeError::Json("truncated or malformed JSON".into())
}

/// The state both walks share: the depth, the keys that make a record an event, a wrapper or
/// a list, and the fields read so far. A walk hands it the tokens outside strings in order:
/// each key at a depth it reads ([`Walk::reads_keys`]) and each bracket.
struct Walk<'a> {
    b: &'a [u8],
    depth: u32,
    has_event_key: bool,
    /// auditID, verb or requestURI: what makes `decode` read the object as an event.
    event_key: bool,
    is_list: bool,
    kind_error: Option<&'static str>,
    within: In,
    got: Collect<'a>,
}

impl<'a> Walk<'a> {
    fn new(b: &'a [u8]) -> Self {
        Walk {
            b,
            depth: 0,
            has_event_key: false,
            event_key: false,
            is_list: false,
            kind_error: None,
            within: In::Other,
            got: Collect::default(),
        }
    }

    /// Whether a key here is one the walk reads: the event's own, or one of its `user`,
    /// `objectRef` and `responseStatus`.
    fn reads_keys(&self) -> bool {
        self.depth == 1 || (self.depth == 2 && self.within != In::Other)
    }

    /// A key (its raw text between the quotes) at a depth that [`Walk::reads_keys`], whose
    /// value starts at `v`.
    fn key(&mut self, text: &[u8], v: usize) {
        let (b, got) = (self.b, &mut self.got);
        if self.depth != 1 {
            let slot = match (self.within, text) {
                (In::User, b"username") => Some((&mut got.username, false)),
                (In::ObjectRef, b"resource") => Some((&mut got.resource, false)),
                (In::ObjectRef, b"subresource") => Some((&mut got.subresource, false)),
                (In::ObjectRef, b"namespace") => Some((&mut got.namespace, false)),
                (In::ObjectRef, b"name") => Some((&mut got.name, false)),
                (In::ObjectRef, b"apiGroup") => Some((&mut got.api_group, false)),
                (In::ResponseStatus, b"code") => Some((&mut got.code, true)),
                _ => None,
            };
            if let Some((slot, want_int)) = slot {
                seen(slot, peek(b, v, want_int), Scalar::Unknown);
            }
            return;
        }
        self.within = match text {
            b"auditID" | b"requestURI" => {
                self.has_event_key = true;
                self.event_key = true;
                In::Other
            }
            b"verb" => {
                self.has_event_key = true;
                self.event_key = true;
                seen(&mut got.verb, peek(b, v, false), Scalar::Unknown);
                In::Other
            }
            b"log" | b"message" | b"items" => {
                self.has_event_key = true;
                In::Other
            }
            b"requestReceivedTimestamp" => {
                seen(&mut got.rrt, peek(b, v, false), Scalar::Unknown);
                In::Other
            }
            b"requestObject" => {
                let present = if skip_ws(b, v).starts_with(b"null") {
                    Scalar::Absent
                } else {
                    Scalar::Str("")
                };
                seen(&mut got.request_object, present, Scalar::Unknown);
                In::Other
            }
            b"user" => {
                seen(&mut got.user, parent(b, v), Parent::Wrong);
                In::User
            }
            b"objectRef" => {
                seen(&mut got.object_ref, parent(b, v), Parent::Wrong);
                In::ObjectRef
            }
            b"responseStatus" => {
                seen(&mut got.response_status, parent(b, v), Parent::Wrong);
                In::ResponseStatus
            }
            b"kind" => {
                let rest = skip_ws(b, v);
                self.is_list = rest.starts_with(b"\"EventList\"");
                if !(rest.starts_with(b"\"Event\"") || self.is_list) {
                    // Reported only if the whole object is well-formed.
                    self.kind_error = Some(if rest.first() == Some(&b'"') {
                        "kind is not Event"
                    } else {
                        "a field has the wrong type"
                    });
                }
                In::Other
            }
            _ => In::Other,
        };
    }

    /// `{` or `[` outside a string. No recursion, so no depth limit is needed (a line is at
    /// most 16 MiB).
    fn open(&mut self, c: u8) {
        // A depth-1 value that is an array holds nothing read.
        if self.depth == 1 && c == b'[' {
            self.within = In::Other;
        }
        self.depth += 1;
    }

    /// `}` or `]` outside a string, at `i`: the verdict when it closes the record.
    fn close(&mut self, i: usize) -> Option<Result<Option<TopFields<'a>>, DecodeError>> {
        let Some(depth) = self.depth.checked_sub(1) else {
            return Some(Err(truncated()));
        };
        self.depth = depth;
        if depth == 1 {
            self.within = In::Other;
        }
        if depth != 0 {
            return None;
        }
        if i + 1 != self.b.len() {
            return Some(Err(DecodeError::Json("data after the JSON object".into())));
        }
        let got = self.got;
        Some(match self.kind_error {
            Some(why) => Err(DecodeError::NotAnEvent(why)),
            None if self.has_event_key => {
                Ok((self.event_key && !self.is_list).then(|| TopFields {
                    verb: got.verb.unwrap_or(Scalar::Absent),
                    request_received_timestamp: got.rrt.unwrap_or(Scalar::Absent),
                    request_object: got.request_object.unwrap_or(Scalar::Absent),
                    code: field(got.code, got.response_status),
                    resource: field(got.resource, got.object_ref),
                    subresource: field(got.subresource, got.object_ref),
                    namespace: field(got.namespace, got.object_ref),
                    name: field(got.name, got.object_ref),
                    api_group: field(got.api_group, got.object_ref),
                    username: field(got.username, got.user),
                }))
            }
            None => Err(DecodeError::NotAnEvent("no auditID, verb or requestURI")),
        })
    }
}

fn skip_ws(b: &[u8], mut v: usize) -> &[u8] {
    while v < b.len() && b[v].is_ascii_whitespace() {
        v += 1;
    }
    &b[v..]
}

/// The kind of a parent object's value at `v`.
fn parent(b: &[u8], v: usize) -> Parent {
    let rest = skip_ws(b, v);
    match rest.first() {
        Some(b'{') => Parent::Object,
        Some(b'n') if rest.starts_with(b"null") => Parent::Absent,
        _ => Parent::Wrong,
    }
}

/// The scalar value at `v` as the decoder reads it: a string field takes a string without
/// escapes (or `null`); an integer field an integer (or `null`); anything else is unknown.
/// The walk checks the bytes themselves; this only reads them.
fn peek(b: &[u8], v: usize, want_int: bool) -> Scalar<'_> {
    let rest = skip_ws(b, v);
    match rest.first() {
        Some(b'n') if rest.starts_with(b"null") => Scalar::Absent,
        Some(b'"') if !want_int => {
            let at = b.len() - rest.len() + 1;
            match find_quote_or_backslash(b, at) {
                Some(k) if b[k] == b'"' => ascii_or_utf8(&b[at..k])
                    .map(Scalar::Str)
                    .unwrap_or(Scalar::Unknown),
                _ => Scalar::Unknown,
            }
        }
        Some(c) if want_int && (c.is_ascii_digit() || *c == b'-') => {
            let len = rest
                .iter()
                .skip(1)
                .position(|c| !c.is_ascii_digit())
                .map_or(rest.len(), |p| p + 1);
            let after = rest.get(len).copied();
            // `4e2` and `403.0` are not integers to the decoder.
            if matches!(after, Some(b'.' | b'e' | b'E')) {
                return Scalar::Unknown;
            }
            std::str::from_utf8(&rest[..len])
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .map_or(Scalar::Unknown, Scalar::Int)
        }
        _ => Scalar::Unknown,
    }
}

/// `text` as a `str`: checked as ASCII a word at a time (what nearly every value of an audit
/// event is), else validated as UTF-8. Half the cost of `from_utf8` alone on short values.
fn ascii_or_utf8(text: &[u8]) -> Option<&str> {
    if text.is_ascii() {
        // SAFETY: every byte was just checked to be ASCII, and ASCII is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(text) });
    }
    std::str::from_utf8(text).ok()
}

/// One pass over a record: whether it has any non-ASCII byte (only then must UTF-8 be
/// validated: most audit records are pure ASCII), and whether it has a control character that
/// JSON forbids (below 0x20 but tab, newline and carriage return). Both over fixed-size
/// chunks without an early exit, so the compiler vectorizes it; this replaces a UTF-8
/// validation and a byte-at-a-time search, the same verdicts in one cheaper pass.
fn scan_bytes(b: &[u8]) -> (bool, bool) {
    let mut high = 0u8;
    let mut control = 0u8;
    let mut chunks = b.chunks_exact(64);
    for chunk in &mut chunks {
        for &c in chunk {
            high |= c;
            control |= u8::from((c < 0x20) & (c != b'\t') & (c != b'\n') & (c != b'\r'));
        }
    }
    for &c in chunks.remainder() {
        high |= c;
        control |= u8::from((c < 0x20) & (c != b'\t') & (c != b'\n') & (c != b'\r'));
    }
    (high >= 0x80, control != 0)
}

/// The first `"` or `\\` at or after `from`. Most strings in an audit event are short (keys,
/// verbs, names): eight bytes at a time in a register, without the call and setup of a
/// vector search, for the first 32 bytes; `memchr2` past them.
fn find_quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Bytes of `w` equal to `c` get their high bit set. The lowest flagged byte is always a
    // true match (a borrow only flags bytes above a real match), which is all we use.
    let flag = |w: u64, c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut i = from;
    let short_end = from.saturating_add(32).min(b.len());
    while i + 8 <= short_end {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[i..i + 8]);
        let w = u64::from_le_bytes(word);
        let hit = flag(w, b'"') | flag(w, b'\\');
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', b.get(i..)?).map(|k| k + i)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_word_search_finds_what_memchr2_finds() {
        let mut text: Vec<u8> = Vec::new();
        for n in 0..200u32 {
            text.push(match n % 37 {
                0 => b'"',
                11 => b'\\',
                _ => b'a' + (n % 26) as u8,
            });
        }
        text.extend_from_slice(&[0x80, 0xff, 0x01, 0x22, 0x21, 0x23, 0x5b, 0x5c, 0x5d]);
        for from in 0..=text.len() {
            for end in from..=text.len() {
                let b = &text[..end];
                let want = memchr::memchr2(b'"', b'\\', &b[from..]).map(|k| k + from);
                assert_eq!(
                    super::find_quote_or_backslash(b, from),
                    want,
                    "{from} {end}"
                );
            }
        }
    }
}
