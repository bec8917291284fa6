//! Input framings: how audit events are laid out in the files users have.
//!
//! | framing | unit | what a record gets |
//! |---|---|---|
//! | [`Format::Jsonl`] | a line | the line (an event, a shipper's wrapper, or an EventList) |
//! | [`Format::CwExport`] | a line `<RFC3339> <message>` | message, CloudWatch time; stream from the path |
//! | [`Format::FilterLogEvents`] | a JSON document (several may be concatenated) | `events[].message`, `logStreamName`, `timestamp`, `eventId` |
//! | [`Format::Subscription`] | a gzip JSON payload, or one per line base64-encoded | `logEvents[]` with `logGroup`/`logStream` |
//!
//! Detection looks at content only ([`detect`]); gzip is recognized by its magic bytes
//! ([`is_gzip`]), never by a file name.

use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;

use crate::event::Text;
use crate::record::RawRecord;
use crate::time::{parse_timestamp, Micros};

/// Largest decompressed subscription payload accepted (CloudWatch sends at most about 1 MB
/// compressed per record; this leaves ample room and bounds a gzip bomb).
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 20;

/// An input framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON Lines: one event (or wrapper, or EventList) per line.
    Jsonl,
    /// CloudWatch Logs' S3 export: lines `<RFC3339 timestamp> <message>`.
    CwExport,
    /// `aws logs filter-log-events` / `get-log-events` output, one or more documents.
    FilterLogEvents,
    /// CloudWatch Logs subscription payloads: gzip JSON, or one base64 gzip payload per line.
    Subscription,
}

impl Format {
    /// The name users type (`--format`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::CwExport => "cw-export",
            Format::FilterLogEvents => "filter-log-events",
            Format::Subscription => "subscription",
        }
    }

    /// Whether records can be taken line by line (streaming) rather than per document.
    pub fn is_line_based(self, first_bytes: &[u8]) -> bool {
        match self {
            Format::Jsonl | Format::CwExport => true,
            Format::FilterLogEvents => false,
            Format::Subscription => first_non_ws(first_bytes) != Some(b'{'),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "jsonl" => Format::Jsonl,
            "cw-export" => Format::CwExport,
            "filter-log-events" => Format::FilterLogEvents,
            "subscription" => Format::Subscription,
            _ => return Err(format!("unknown format `{s}`")),
        })
    }
}

/// Why a unit of input yielded no records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A cw-export line without its leading timestamp.
    #[error("cw-export line without a `<timestamp> ` prefix")]
    NoTimestampPrefix,
    /// A JSON document that does not parse as this framing.
    #[error("bad {format} document: {detail}")]
    BadDocument {
        /// The framing's name.
        format: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A base64 line that does not decode.
    #[error("bad base64: {0}")]
    Base64(String),
    /// A gzip stream that does not decompress, or is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("bad gzip payload: {0}")]
    Gzip(String),
    /// A record longer than the reader accepts (it was skipped without being kept in memory).
    #[error("record of {0} bytes is longer than the limit")]
    TooLong(usize),
}

impl FramingError {
    /// A short stable name for counting errors by kind.
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::NoTimestampPrefix => "no_timestamp_prefix",
            FramingError::BadDocument { .. } => "bad_document",
            FramingError::Base64(_) => "bad_base64",
            FramingError::Gzip(_) => "bad_gzip",
            FramingError::TooLong(_) => "record_too_long",
        }
    }
}

/// What the surrounding source knows about a unit of input (the cw-export stream directory).
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// Log stream name, e.g. from `<taskId>/<logStream>/000000.gz`.
    pub stream: Option<&'a str>,
    /// Log group name, if known.
    pub log_group: Option<&'a str>,
}

/// A callback receiving records (or the reason a unit of input yielded none).
pub type RecordSink<'f> = dyn FnMut(Result<RawRecord<'_>, FramingError>) + 'f;

/// True if `b` starts with the gzip magic bytes.
pub fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

fn first_non_ws(b: &[u8]) -> Option<u8> {
    b.iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace() && *c != 0xEF && *c != 0xBB && *c != 0xBF)
}

/// Detects the framing of (already decompressed) content from its first bytes.
///
/// ```
/// use authwatch_event::framing::{detect, Format};
/// assert_eq!(detect(br#"{"kind":"Event","auditID":"a"}"#), Format::Jsonl);
/// assert_eq!(detect(b"2026-11-20T10:00:00.120Z {\"auditID\":\"a\"}\n"), Format::CwExport);
/// assert_eq!(detect(b"{\n  \"events\": [\n"), Format::FilterLogEvents);
/// assert_eq!(detect(br#"{"messageType":"DATA_MESSAGE","logEvents":[]}"#), Format::Subscription);
/// ```
pub fn detect(head: &[u8]) -> Format {
    let start = head
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(head.len());
    let head = head[start..]
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&head[start..]);
    let first_line = head.split(|&c| c == b'\n').next().unwrap_or_default();
    match head.first() {
        Some(b'{') => {
            #[derive(Deserialize)]
            struct Keys {
                #[serde(rename = "messageType")]
                message_type: Option<serde::de::IgnoredAny>,
                events: Option<Vec<serde::de::IgnoredAny>>,
                kind: Option<serde::de::IgnoredAny>,
                #[serde(rename = "auditID")]
                audit_id: Option<serde::de::IgnoredAny>,
            }
            match serde_json::from_slice::<Keys>(first_line) {
                Ok(k) if k.message_type.is_some() => Format::Subscription,
                Ok(k) if k.events.is_some() && k.kind.is_none() && k.audit_id.is_none() => {
                    Format::FilterLogEvents
                }
                Ok(_) => Format::Jsonl,
                // A document spread over lines (pretty-printed), longer than the head, or a
                // damaged first line. Key order is not relied on: serializers sort keys.
                Err(_) => {
                    let audit_at = memchr::memmem::find(head, b"\"auditID\"").unwrap_or(usize::MAX);
                    if key_then(head, b"logEvents", b'[').is_some_and(|i| i < audit_at)
                        || key_then(head, b"messageType", b'"').is_some_and(|i| i < audit_at)
                    {
                        Format::Subscription
                    } else if key_then(head, b"events", b'[').is_some_and(|i| i < audit_at) {
                        Format::FilterLogEvents
                    } else {
                        Format::Jsonl
                    }
                }
            }
        }
        _ if cw_export_split(first_line).is_some() => Format::CwExport,
        _ if looks_like_base64_gzip(first_line) => Format::Subscription,
        _ => Format::Jsonl,
    }
}

/// Position of the first `"key"` followed (after whitespace and `:`) by the byte `next`.
fn key_then(hay: &[u8], key: &[u8], next: u8) -> Option<usize> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    memchr::memmem::find_iter(hay, &quoted).find(|&i| {
        let mut rest = hay[i + quoted.len()..]
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace());
        rest.next() == Some(b':') && rest.next() == Some(next)
    })
}

fn looks_like_base64_gzip(line: &[u8]) -> bool {
    let line = trim_line(line);
    // "H4sI" is how base64 of a gzip header (1f 8b 08) begins.
    line.starts_with(b"H4sI")
        && line
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let Some((&last, rest)) = l.split_last() {
        if last == b'\n' || last == b'\r' {
            l = rest;
        } else {
            break;
        }
    }
    l
}

/// Splits a cw-export line into its CloudWatch time and message.
fn cw_export_split(line: &[u8]) -> Option<(Micros, &[u8])> {
    let sp = memchr::memchr(b' ', line.get(..40.min(line.len()))?)?;
    let ts = std::str::from_utf8(&line[..sp]).ok()?;
    if !ts.contains('T') {
        return None;
    }
    Some((parse_timestamp(ts)?, &line[sp + 1..]))
}

/// Turns one line of a line-based framing into records.
///
/// For [`Format::FilterLogEvents`] (never line-based) the line is parsed as a whole document.
pub fn records_in_line(format: Format, line: &[u8], origin: Origin<'_>, f: &mut RecordSink<'_>) {
    let line = trim_line(line);
    match format {
        Format::Jsonl => f(Ok(RawRecord {
            message: line,
            stream: origin.stream,
            log_group: origin.log_group,
            ..Default::default()
        })),
        Format::CwExport => match cw_export_split(line) {
            Some((ts, message)) => f(Ok(RawRecord {
                message,
                stream: origin.stream,
                log_group: origin.log_group,
                cw_timestamp: Some(ts),
                event_id: None,
            })),
            None => f(Err(FramingError::NoTimestampPrefix)),
        },
        Format::Subscription => {
            if line.iter().all(|c| c.is_ascii_whitespace()) {
                return;
            }
            match base64::engine::general_purpose::STANDARD.decode(line) {
                Ok(bytes) => records_in_document(Format::Subscription, &bytes, origin, f),
                Err(e) => f(Err(FramingError::Base64(e.to_string()))),
            }
        }
        Format::FilterLogEvents => records_in_document(format, line, origin, f),
    }
}

/// The CloudWatch time of a cw-export line, for merging streams by time.
pub fn cw_export_time(line: &[u8]) -> Option<Micros> {
    cw_export_split(line).map(|(t, _)| t)
}

/// Turns a whole document (or several concatenated) into records.
///
/// Subscription payloads may be gzip-compressed (as Kinesis and Lambda deliver them) or plain;
/// Firehose concatenates several, which is handled the same way.
pub fn records_in_document(format: Format, doc: &[u8], origin: Origin<'_>, f: &mut RecordSink<'_>) {
    match format {
        Format::FilterLogEvents => filter_log_events(doc, origin, f),
        Format::Subscription => {
            if is_gzip(doc) {
                match gunzip_bounded(doc) {
                    Ok(plain) => subscription(&plain, origin, f),
                    Err(e) => f(Err(e)),
                }
            } else {
                subscription(doc, origin, f)
            }
        }
        Format::Jsonl | Format::CwExport => {
            for line in doc.split(|&c| c == b'\n') {
                if !line.is_empty() {
                    records_in_line(format, line, origin, f);
                }
            }
        }
    }
}

/// Decompresses (possibly multi-member) gzip, refusing more than [`MAX_PAYLOAD_BYTES`].
///
/// The output is reserved from the size the (last) member's trailer declares, capped by the
/// bound and by deflate's largest ratio (about 1032:1), so that a payload is usually
/// decompressed without regrowing its buffer; the hint is only a hint (a wrong one costs a
/// regrowth, never a wrong result).
pub fn gunzip_bounded(gz: &[u8]) -> Result<Vec<u8>, FramingError> {
    let mut out = Vec::with_capacity(gzip_size_hint(gz));
    flate2::read::MultiGzDecoder::new(gz)
        .take(MAX_PAYLOAD_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| FramingError::Gzip(e.to_string()))?;
    if out.len() as u64 > MAX_PAYLOAD_BYTES {
        return Err(FramingError::Gzip(format!(
            "decompresses to more than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// The decompressed size a gzip stream's trailer (ISIZE, the last 4 bytes) declares, capped
/// by [`MAX_PAYLOAD_BYTES`] + 1 and by 1032 times the compressed size; 0 when too short.
fn gzip_size_hint(gz: &[u8]) -> usize {
    let Some(t) = gz.len().checked_sub(4).and_then(|at| gz.get(at..)) else {
        return 0;
    };
    let declared = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as u64;
    declared
        .min(MAX_PAYLOAD_BYTES + 1)
        .min(gz.len() as u64 * 1032) as usize
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FleDocument<'a> {
    #[serde(borrow, default)]
    events: Vec<FleEvent<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FleEvent<'a> {
    #[serde(borrow, default)]
    log_stream_name: Option<Text<'a>>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(borrow)]
    message: Text<'a>,
    #[serde(borrow, default)]
    event_id: Option<Text<'a>>,
}

fn filter_log_events(doc: &[u8], origin: Origin<'_>, f: &mut RecordSink<'_>) {
    let stream = serde_json::Deserializer::from_slice(doc).into_iter::<FleDocument<'_>>();
    for parsed in stream {
        match parsed {
            Ok(d) => {
                for e in &d.events {
                    f(Ok(RawRecord {
                        message: e.message.as_str().as_bytes(),
                        stream: e
                            .log_stream_name
                            .as_ref()
                            .map(Text::as_str)
                            .or(origin.stream),
                        log_group: origin.log_group,
                        cw_timestamp: e.timestamp.and_then(|ms| ms.checked_mul(1000)),
                        event_id: e.event_id.as_ref().map(Text::as_str),
                    }));
                }
            }
            Err(e) => {
                // The rest of the input cannot be re-synchronized: report and stop.
                f(Err(FramingError::BadDocument {
                    format: Format::FilterLogEvents.name(),
                    detail: e.to_string(),
                }));
                return;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionPayload<'a> {
    #[serde(borrow)]
    message_type: Text<'a>,
    #[serde(borrow, default)]
    log_group: Option<Text<'a>>,
    #[serde(borrow, default)]
    log_stream: Option<Text<'a>>,
    #[serde(borrow, default)]
    log_events: Vec<SubscriptionEvent<'a>>,
}

#[derive(Deserialize)]
struct SubscriptionEvent<'a> {
    /// CloudWatch sends a string of digits; moto's Logs → Kinesis delivery sends a number.
    /// Either way it is taken as its JSON text (quotes removed).
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(borrow)]
    message: Text<'a>,
}

fn subscription(doc: &[u8], origin: Origin<'_>, f: &mut RecordSink<'_>) {
    let stream = serde_json::Deserializer::from_slice(doc).into_iter::<SubscriptionPayload<'_>>();
    for parsed in stream {
        match parsed {
            Ok(p) => {
                // CONTROL_MESSAGE is CloudWatch checking that the destination is reachable.
                if p.message_type.as_str() != "DATA_MESSAGE" {
                    continue;
                }
                for e in &p.log_events {
                    f(Ok(RawRecord {
                        message: e.message.as_str().as_bytes(),
                        stream: p.log_stream.as_ref().map(Text::as_str).or(origin.stream),
                        log_group: p.log_group.as_ref().map(Text::as_str).or(origin.log_group),
                        cw_timestamp: e.timestamp.and_then(|ms| ms.checked_mul(1000)),
                        event_id: e.id.map(|r| r.get().trim_matches('"')),
                    }));
                }
            }
            Err(e) => {
                f(Err(FramingError::BadDocument {
                    format: Format::Subscription.name(),
                    detail: e.to_string(),
                }));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn subscription_event_ids_may_be_strings_or_numbers() {
        let doc = br#"{"messageType":"DATA_MESSAGE","logGroup":"g","logStream":"s","logEvents":[{"id":"3712","timestamp":1,"message":"a"},{"id":279,"timestamp":2,"message":"b"}]}"#;
        let mut ids = Vec::new();
        records_in_document(Format::Subscription, doc, Origin::default(), &mut |r| {
            ids.push(r.map(|r| r.event_id.map(str::to_owned)))
        });
        assert_eq!(
            ids,
            [Ok(Some("3712".to_owned())), Ok(Some("279".to_owned()))]
        );
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// (message, stream, CloudWatch time, event id), or the error's reason.
    type Got = Result<(String, Option<String>, Option<i64>, Option<String>), &'static str>;

    fn collect(format: Format, doc: &[u8], origin: Origin<'_>) -> Vec<Got> {
        let mut out = Vec::new();
        records_in_document(format, doc, origin, &mut |r| {
            out.push(
                r.map(|r| {
                    (
                        String::from_utf8_lossy(r.message).into_owned(),
                        r.stream.map(str::to_owned),
                        r.cw_timestamp,
                        r.event_id.map(str::to_owned),
                    )
                })
                .map_err(|e| e.reason()),
            )
        });
        out
    }

    #[test]
    fn detects_each_framing() {
        assert_eq!(detect(b"\n\n{\"auditID\":\"a\"}\n"), Format::Jsonl);
        assert_eq!(detect(b"{\"log\":\"{}\"}"), Format::Jsonl);
        assert_eq!(
            detect(b"{\"auditID\":\"a\",\"objectRef\":{\"resource\":\"events\"},\"x\":"),
            Format::Jsonl
        );
        assert_eq!(
            detect(b"{\"events\":[],\"searchedLogStreams\":[]}"),
            Format::FilterLogEvents
        );
        assert_eq!(
            detect(b"{\n    \"events\": [\n        {\n"),
            Format::FilterLogEvents
        );
        assert_eq!(
            detect(b"{\n  \"messageType\": \"DATA_MESSAGE\",\n"),
            Format::Subscription
        );
        assert_eq!(
            detect(b"H4sIAAAAAAAA/6tWyk0tSUxPVbJSMjQwMDA=\n"),
            Format::Subscription
        );
        assert_eq!(detect(b"2026-11-20T10:00:00.120Z {}\n"), Format::CwExport);
        assert_eq!(detect(b"hello\n"), Format::Jsonl);
        assert_eq!(detect(b""), Format::Jsonl);
        // Longer than the head, keys sorted: found by key, not by position.
        let long_sub = format!(
            "{{\"logEvents\":[{}",
            "{\"id\":\"1\",\"message\":\"x\"},".repeat(5000)
        );
        assert_eq!(detect(long_sub.as_bytes()), Format::Subscription);
        let long_fle = format!("{{\"events\":[{}", "{\"message\":\"x\"},".repeat(5000));
        assert_eq!(detect(long_fle.as_bytes()), Format::FilterLogEvents);
        let truncated_event =
            "{\"kind\":\"Event\",\"auditID\":\"a\",\"requestObject\":{\"events\":[1,";
        assert_eq!(detect(truncated_event.as_bytes()), Format::Jsonl);
    }

    #[test]
    fn cw_export_lines_carry_their_time() {
        let got = collect(
            Format::CwExport,
            b"2026-11-20T10:00:00.120Z {\"auditID\":\"a\"}\nnot a line\n",
            Origin {
                stream: Some("kube-apiserver-audit-ab"),
                log_group: None,
            },
        );
        assert_eq!(got.len(), 2);
        let (msg, stream, ts, _) = got[0].clone().unwrap();
        assert_eq!(msg, "{\"auditID\":\"a\"}");
        assert_eq!(stream.as_deref(), Some("kube-apiserver-audit-ab"));
        assert_eq!(ts, parse_timestamp("2026-11-20T10:00:00.120Z"));
        assert_eq!(got[1], Err("no_timestamp_prefix"));
    }

    #[test]
    fn filter_log_events_documents_concatenated() {
        let doc = br#"{"events":[{"logStreamName":"s1","timestamp":1000,"message":"{\"auditID\":\"a\"}","ingestionTime":1,"eventId":"e1"}],"searchedLogStreams":[],"nextToken":"t"}
{"events":[{"timestamp":2000,"message":"{\"auditID\":\"b\"}","ingestionTime":1}],"nextForwardToken":"f/1"}"#;
        let got = collect(Format::FilterLogEvents, doc, Origin::default());
        assert_eq!(
            got,
            vec![
                Ok((
                    "{\"auditID\":\"a\"}".into(),
                    Some("s1".into()),
                    Some(1_000_000),
                    Some("e1".into())
                )),
                Ok(("{\"auditID\":\"b\"}".into(), None, Some(2_000_000), None)),
            ]
        );
        let got = collect(
            Format::FilterLogEvents,
            b"{\"events\":[{\"message\":",
            Origin::default(),
        );
        assert_eq!(got, vec![Err("bad_document")]);
    }

    #[test]
    fn subscription_payloads_plain_gzip_and_base64_lines() {
        let payload = br#"{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"/aws/eks/prod/cluster","logStream":"kube-apiserver-audit-1","subscriptionFilters":["f"],"logEvents":[{"id":"i1","timestamp":5,"message":"{\"auditID\":\"a\"}"}]}"#;
        let control = br#"{"messageType":"CONTROL_MESSAGE","logGroup":"","logStream":"","logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination"}]}"#;
        let expect = vec![Ok((
            "{\"auditID\":\"a\"}".to_string(),
            Some("kube-apiserver-audit-1".to_string()),
            Some(5000),
            Some("i1".to_string()),
        ))];
        assert_eq!(
            collect(Format::Subscription, payload, Origin::default()),
            expect
        );
        assert_eq!(
            collect(Format::Subscription, &gz(payload), Origin::default()),
            expect
        );
        assert_eq!(
            collect(Format::Subscription, &gz(control), Origin::default()),
            vec![]
        );
        let mut firehose = gz(control);
        firehose.extend(gz(payload));
        assert_eq!(
            collect(Format::Subscription, &firehose, Origin::default()),
            expect
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz(payload));
        let lines = format!("{b64}\n{b64}\n");
        assert_eq!(detect(lines.as_bytes()), Format::Subscription);
        assert!(Format::Subscription.is_line_based(lines.as_bytes()));
        let mut got = Vec::new();
        for line in lines.lines() {
            records_in_line(
                Format::Subscription,
                line.as_bytes(),
                Origin::default(),
                &mut |r| {
                    got.push(
                        r.map(|r| r.event_id.map(str::to_owned))
                            .map_err(|e| e.reason()),
                    )
                },
            );
        }
        assert_eq!(got, vec![Ok(Some("i1".into())), Ok(Some("i1".into()))]);
        let mut got = Vec::new();
        records_in_line(
            Format::Subscription,
            b"H4sI!!",
            Origin::default(),
            &mut |r| got.push(r.map(|_| ()).map_err(|e| e.reason())),
        );
        assert_eq!(got, vec![Err("bad_base64")]);
    }

    #[test]
    fn gunzip_bounded_takes_every_member_whatever_the_trailer_declares() {
        let mut two = gz(b"first member\n");
        two.extend(gz(b"second one\n"));
        assert_eq!(gunzip_bounded(&two).unwrap(), b"first member\nsecond one\n");
        // The size hint comes from the last trailer: a lie there is caught by the decoder.
        let mut lying = gz(b"some text");
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(gzip_size_hint(&lying), lying.len() * 1032);
        assert_eq!(gunzip_bounded(&lying).unwrap_err().reason(), "bad_gzip");
        assert_eq!(gzip_size_hint(b"\x1f"), 0);
        assert_eq!(gunzip_bounded(b"\x1f").unwrap_err().reason(), "bad_gzip");
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let zeros = vec![0u8; (MAX_PAYLOAD_BYTES + 10) as usize];
        let bomb = gz(&zeros);
        assert!(bomb.len() < (1 << 20));
        assert_eq!(gunzip_bounded(&bomb).unwrap_err().reason(), "bad_gzip");
    }
}
