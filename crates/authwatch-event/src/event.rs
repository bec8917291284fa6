//! The audit `Event`, decoded lean.
//!
//! Only the fields that rules and alerts use are materialized, borrowed from the input bytes
//! where JSON escaping allows; everything else (`requestObject`, `responseObject`, ...) is
//! skipped by the parser without allocation. Fields not listed here are still reachable through
//! [`AuditEvent::lookup`], which re-reads the raw bytes on demand (rare: only for rules that
//! name such a field).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

pub use crate::structure::check_structure;
use crate::time::{parse_timestamp, Micros};

/// A JSON string borrowed from the input when it has no escapes, owned otherwise.
///
/// A newtype because serde only borrows a `Cow<str>` when told to at field level, which does
/// not reach inside `Vec`s or maps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Text<'_> {
    /// The string itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `user` / `impersonatedUser`.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    /// `username`; absent on 401 events (`"user":{}`).
    #[serde(borrow, default)]
    pub username: Option<Text<'a>>,
    /// `uid`.
    #[serde(borrow, default)]
    pub uid: Option<Text<'a>>,
    /// `extra`, undecoded until an alert or a rule asks (see [`UserInfo::extra`]). On EKS it
    /// holds the IAM principal behind the Kubernetes user: `arn`, `canonicalArn`,
    /// `sessionName`, `accessKeyId`, `principalId`, each a list of one string.
    #[serde(borrow, default)]
    pub extra: Option<&'a RawValue>,
}

impl UserInfo<'_> {
    /// The values of one `extra` key, taken whole (keys such as
    /// `authentication.kubernetes.io/pod-name` contain dots and slashes). The API server
    /// writes each as a list of strings; a lone string is taken as a list of one.
    ///
    /// ```
    /// use authwatch_event::event::{decode, Decoded};
    /// let line = br#"{"auditID":"a","user":{"username":"admin","extra":{"accessKeyId":["ASIAEXAMPLE"],
    ///     "canonicalArn":["arn:aws:iam::111122223333:role/ops"]}}}"#;
    /// let Ok(Decoded::Event(ev)) = decode(line) else { panic!("not an event") };
    /// assert_eq!(ev.user.extra("canonicalArn"), ["arn:aws:iam::111122223333:role/ops"]);
    /// assert_eq!(ev.iam_principal().as_deref(), Some("arn:aws:iam::111122223333:role/ops"));
    /// assert!(ev.user.extra("sessionName").is_empty());
    /// ```
    pub fn extra(&self, key: &str) -> Vec<String> {
        let Some(raw) = self.extra else {
            return Vec::new();
        };
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany<'x> {
            Many(#[serde(borrow)] Vec<Text<'x>>),
            One(#[serde(borrow)] Text<'x>),
        }
        let Ok(map) =
            serde_json::from_str::<std::collections::HashMap<Text<'_>, OneOrMany<'_>>>(raw.get())
        else {
            return Vec::new();
        };
        match map.get(&Text(Cow::Borrowed(key))) {
            Some(OneOrMany::Many(v)) => v.iter().map(|t| t.as_str().to_owned()).collect(),
            Some(OneOrMany::One(t)) => vec![t.as_str().to_owned()],
            None => Vec::new(),
        }
    }
}

/// `objectRef`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    /// `objectRef.resource`, e.g. `secrets`.
    #[serde(borrow, default)]
    pub resource: Option<Text<'a>>,
    /// `objectRef.subresource`, e.g. `exec`.
    #[serde(borrow, default)]
    pub subresource: Option<Text<'a>>,
    /// `objectRef.namespace`.
    #[serde(borrow, default)]
    pub namespace: Option<Text<'a>>,
    /// `objectRef.name`.
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    /// `objectRef.apiGroup`.
    #[serde(borrow, default)]
    pub api_group: Option<Text<'a>>,
    /// `objectRef.apiVersion`.
    #[serde(borrow, default)]
    pub api_version: Option<Text<'a>>,
}

/// `responseStatus`.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus<'a> {
    /// HTTP status code.
    #[serde(default)]
    pub code: Option<i64>,
    /// `Forbidden`, `Unauthorized`, ...
    #[serde(borrow, default)]
    pub reason: Option<Text<'a>>,
    /// `Success` / `Failure`.
    #[serde(borrow, default)]
    pub status: Option<Text<'a>>,
}

/// The wire shape of one JSON object on an audit line: an event's fields plus the few that a
/// log shipper's wrapper (`log`, `message`, `host`) or an `EventList` (`items`) has.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    api_version: Option<Text<'a>>,
    #[serde(borrow, default, rename = "auditID")]
    audit_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    stage: Option<Text<'a>>,
    #[serde(borrow, default, rename = "requestURI")]
    request_uri: Option<Text<'a>>,
    #[serde(borrow, default)]
    verb: Option<Text<'a>>,
    #[serde(borrow, default)]
    user: Option<UserInfo<'a>>,
    #[serde(borrow, default)]
    impersonated_user: Option<UserInfo<'a>>,
    #[serde(borrow, default, rename = "sourceIPs")]
    source_ips: Option<SmallVec<[Text<'a>; 2]>>,
    #[serde(borrow, default)]
    user_agent: Option<Text<'a>>,
    #[serde(borrow, default)]
    object_ref: Option<ObjectRef<'a>>,
    #[serde(borrow, default)]
    response_status: Option<ResponseStatus<'a>>,
    #[serde(borrow, default)]
    request_received_timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    stage_timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    annotations: Option<&'a RawValue>,
    // Not audit fields: what shippers and the webhook backend put around events.
    #[serde(borrow, default)]
    host: Option<Text<'a>>,
    #[serde(borrow, default)]
    log: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Text<'a>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// Why a record is not an audit event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON (truncated, plain text, invalid UTF-8...).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Valid JSON that is not an audit event (`{"kind":0}`, an unrelated object, an array).
    #[error("not an audit event: {0}")]
    NotAnEvent(&'static str),
    /// An empty line.
    #[error("empty record")]
    Empty,
}

impl DecodeError {
    /// A short stable name for counting errors by kind.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "invalid_json",
            DecodeError::NotAnEvent(_) => "not_an_event",
            DecodeError::Empty => "empty",
        }
    }
}

/// One decoded audit event: the fields rules need, borrowed from the record's bytes.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// `apiVersion` (`audit.k8s.io/v1`, `v1beta1`, or absent).
    pub api_version: Option<Text<'a>>,
    /// `auditID`: one per request, shared by its stages.
    pub audit_id: Option<Text<'a>>,
    /// `stage`: `ResponseStarted`, `ResponseComplete`, `Panic`...
    pub stage: Option<Text<'a>>,
    /// `requestURI`.
    pub request_uri: Option<Text<'a>>,
    /// `verb`.
    pub verb: Option<Text<'a>>,
    /// `user`.
    pub user: UserInfo<'a>,
    /// `impersonatedUser`, if the request impersonated someone.
    pub impersonated_user: Option<UserInfo<'a>>,
    /// `sourceIPs`: client per X-Forwarded-For first, the peer address last.
    pub source_ips: SmallVec<[Text<'a>; 2]>,
    /// `userAgent`.
    pub user_agent: Option<Text<'a>>,
    /// `objectRef`.
    pub object_ref: Option<ObjectRef<'a>>,
    /// `responseStatus`.
    pub response_status: Option<ResponseStatus<'a>>,
    /// `requestReceivedTimestamp`.
    pub request_received_timestamp: Option<Text<'a>>,
    /// `stageTimestamp`.
    pub stage_timestamp: Option<Text<'a>>,
    /// The old `timestamp` field (early v1, v1alpha1).
    pub timestamp: Option<Text<'a>>,
    /// `annotations`, undecoded until a rule asks for one.
    pub annotations: Option<&'a RawValue>,
    /// A `host` field on the record itself (added by log shippers).
    pub host: Option<Text<'a>>,
    /// The whole JSON object, for fields not materialized above.
    pub raw: &'a [u8],
}

/// What one JSON record turned out to be.
// The event variant is the hot path: boxing it would allocate once per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded<'a> {
    /// An audit event.
    Event(AuditEvent<'a>),
    /// A log shipper's wrapper: the event is the JSON string `inner`; `host` is the wrapper's.
    Wrapped {
        /// The wrapped event's JSON text.
        inner: Text<'a>,
        /// The wrapper's `host` field.
        host: Option<Text<'a>>,
    },
    /// An `EventList` (audit webhook batches): each item is an event.
    List(Vec<&'a RawValue>),
}

/// Decodes one JSON record (a line, a CloudWatch message) without following wrappers.
pub fn decode(raw: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let trimmed = trim_ascii(raw);
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    if trimmed[0] != b'{' {
        // Cheap early exit for plain text; also keeps serde's message short.
        return Err(
            if serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
                DecodeError::NotAnEvent("not a JSON object")
            } else {
                DecodeError::Json("not JSON".into())
            },
        );
    }
    let wire: Wire<'_> = serde_json::from_slice(trimmed).map_err(|e| {
        if e.is_data() {
            DecodeError::NotAnEvent(data_error_reason(&e))
        } else {
            DecodeError::Json(e.to_string())
        }
    })?;
    if let Some(kind) = &wire.kind {
        match kind.as_str() {
            "Event" => {}
            "EventList" => {
                return wire
                    .items
                    .map(Decoded::List)
                    .ok_or(DecodeError::NotAnEvent("EventList without items"))
            }
            _ => return Err(DecodeError::NotAnEvent("kind is not Event")),
        }
    }
    let looks_like_event =
        wire.audit_id.is_some() || wire.verb.is_some() || wire.request_uri.is_some();
    if !looks_like_event {
        if let Some(inner) = wire.log.or(wire.message) {
            return Ok(Decoded::Wrapped {
                inner,
                host: wire.host,
            });
        }
        return Err(DecodeError::NotAnEvent("no auditID, verb or requestURI"));
    }
    Ok(Decoded::Event(AuditEvent {
        api_version: wire.api_version,
        audit_id: wire.audit_id,
        stage: wire.stage,
        request_uri: wire.request_uri,
        verb: wire.verb,
        user: wire.user.unwrap_or_default(),
        impersonated_user: wire.impersonated_user,
        source_ips: wire.source_ips.unwrap_or_default(),
        user_agent: wire.user_agent,
        object_ref: wire.object_ref,
        response_status: wire.response_status,
        request_received_timestamp: wire.request_received_timestamp,
        stage_timestamp: wire.stage_timestamp,
        timestamp: wire.timestamp,
        annotations: wire.annotations,
        host: wire.host,
        raw: trimmed,
    }))
}

fn data_error_reason(e: &serde_json::Error) -> &'static str {
    let msg = e.to_string();
    if msg.contains("invalid type") {
        "a field has the wrong type"
    } else {
        "unexpected structure"
    }
}

pub(crate) fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

impl<'a> AuditEvent<'a> {
    /// Event time as detection.md defines it: `requestReceivedTimestamp`, else
    /// `stageTimestamp`, else the old `timestamp`, else `fallback` (the CloudWatch timestamp).
    ///
    /// A field that is present but malformed is passed over for the next one.
    pub fn time(&self, fallback: Option<Micros>) -> Option<Micros> {
        [
            &self.request_received_timestamp,
            &self.stage_timestamp,
            &self.timestamp,
        ]
        .into_iter()
        .flatten()
        .find_map(|t| parse_timestamp(t.as_str()))
        .or(fallback)
    }

    /// `responseStatus.code`.
    pub fn code(&self) -> Option<i64> {
        self.response_status.as_ref().and_then(|s| s.code)
    }

    /// `user.username`.
    pub fn username(&self) -> Option<&str> {
        self.user.username.as_ref().map(Text::as_str)
    }

    /// The IAM principal behind the Kubernetes user on EKS: `user.extra.canonicalArn` (the
    /// role, stable across sessions), else `user.extra.arn` (the assumed-role session).
    pub fn iam_principal(&self) -> Option<String> {
        let mut v = self.user.extra("canonicalArn");
        if v.is_empty() {
            v = self.user.extra("arn");
        }
        v.into_iter().next()
    }

    /// The access key the request was signed with (`user.extra.accessKeyId`), on EKS.
    pub fn access_key_id(&self) -> Option<String> {
        self.user.extra("accessKeyId").into_iter().next()
    }

    /// One annotation by its whole key (keys contain dots and slashes).
    pub fn annotation(&self, key: &str) -> Option<String> {
        let raw = self.annotations?;
        let map: std::collections::HashMap<Text<'_>, Text<'_>> =
            serde_json::from_str(raw.get()).ok()?;
        map.get(&Text(Cow::Borrowed(key)))
            .map(|v| v.as_str().to_owned())
    }

    /// Any dotted path into the raw event, for fields not materialized on this struct.
    ///
    /// At each object level the longest run of remaining segments that is a key wins, so an
    /// annotation key with dots (`authorization.k8s.io/reason`) is matched whole.
    pub fn lookup(&self, segments: &[&str]) -> Option<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_slice(self.raw).ok()?;
        lookup_value(&value, segments).cloned()
    }
}

/// Walks `segments` into a JSON value (see [`AuditEvent::lookup`]).
pub fn lookup_value<'v>(
    value: &'v serde_json::Value,
    segments: &[&str],
) -> Option<&'v serde_json::Value> {
    if segments.is_empty() {
        return Some(value);
    }
    let obj = value.as_object()?;
    for take in (1..=segments.len()).rev() {
        let key = segments[..take].join(".");
        if let Some(v) = obj.get(&key) {
            if let Some(found) = lookup_value(v, &segments[take..]) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(s: &str) -> AuditEvent<'_> {
        match decode(s.as_bytes()) {
            Ok(Decoded::Event(e)) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn decodes_the_fields_rules_need_and_borrows_them() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/secrets","verb":"list","user":{"username":"bob","groups":["g"]},"sourceIPs":["198.51.100.7","10.0.3.4"],"userAgent":"curl/8","objectRef":{"resource":"secrets","namespace":"default"},"responseStatus":{"metadata":{},"code":403,"reason":"Forbidden"},"requestObject":{"huge":[1,2,3,{"x":"y"}]},"requestReceivedTimestamp":"2026-11-20T10:00:00.120000Z","annotations":{"authorization.k8s.io/decision":"forbid"}}"#;
        let e = event(line);
        assert_eq!(e.code(), Some(403));
        assert_eq!(e.username(), Some("bob"));
        assert_eq!(e.source_ips.len(), 2);
        assert!(matches!(e.source_ips[1].0, Cow::Borrowed("10.0.3.4")));
        assert_eq!(
            e.object_ref
                .as_ref()
                .unwrap()
                .resource
                .as_ref()
                .unwrap()
                .as_str(),
            "secrets"
        );
        assert_eq!(
            e.annotation("authorization.k8s.io/decision").as_deref(),
            Some("forbid")
        );
        assert_eq!(
            e.lookup(&["annotations", "authorization", "k8s", "io/decision"]),
            Some(serde_json::json!("forbid"))
        );
        assert_eq!(e.lookup(&["requestObject", "huge"]).unwrap()[2], 3);
        assert!(e.time(None).is_some());
    }

    #[test]
    fn time_falls_back_in_contract_order() {
        let e = event(
            r#"{"auditID":"x","stageTimestamp":"1970-01-01T00:00:02Z","timestamp":"1970-01-01T00:00:03Z"}"#,
        );
        assert_eq!(e.time(Some(9)), Some(2_000_000));
        let e = event(
            r#"{"auditID":"x","requestReceivedTimestamp":"garbage","timestamp":"1970-01-01T00:00:03Z"}"#,
        );
        assert_eq!(e.time(Some(9)), Some(3_000_000));
        let e = event(r#"{"auditID":"x"}"#);
        assert_eq!(e.time(Some(9)), Some(9));
        assert_eq!(e.time(None), None);
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        for (line, reason) in [
            ("", "empty"),
            ("   ", "empty"),
            ("{\"kind\":0}", "not_an_event"),
            ("{\"kind\":\"Pod\",\"auditID\":\"x\"}", "not_an_event"),
            ("{}", "not_an_event"),
            ("[1,2]", "not_an_event"),
            ("hello world", "invalid_json"),
            ("{\"auditID\":\"a\",\"verb\":\"li", "invalid_json"),
            ("{\"auditID\":\"a\",\"user\":\"bob\"}", "not_an_event"),
        ] {
            let err = decode(line.as_bytes()).expect_err(line);
            assert_eq!(err.reason(), reason, "{line}: {err}");
        }
        let bad_utf8 = b"{\"auditID\":\"\xff\xfe\"}";
        assert_eq!(decode(bad_utf8).unwrap_err().reason(), "invalid_json");
    }

    #[test]
    fn structure_check_agrees_with_decode_on_what_is_not_an_event() {
        let lines: &[&[u8]] = &[
            b"",
            b"   ",
            b"{\"kind\":0}",
            b"{\"kind\":\"Pod\",\"auditID\":\"x\"}",
            b"{}",
            b"[1,2]",
            b"hello world",
            b"{\"auditID\":\"a\",\"verb\":\"li",
            b"{\"auditID\":\"a\",\"x\":\"\\\"}",
            b"{\"auditID\":\"a\"}}",
            b"{\"auditID\":\"\xff\xfe\"}",
            br#"{"kind":"Event","auditID":"a","user":{"username":"x","groups":["a","b"]},"objectRef":{"resource":"events"}}"#,
            br#"{"log":"{\"auditID\":\"a\"}","host":"h"}"#,
            br#"{"kind":"EventList","items":[]}"#,
        ];
        for line in lines {
            let full = decode(line).map(|_| ()).map_err(|e| e.reason());
            let quick = check_structure(line).map_err(|e| e.reason());
            assert_eq!(quick, full, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn structure_check_agrees_with_decode_on_every_truncation() {
        let line = br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a1","verb":"list","user":{"username":"bob","groups":["g"]},"sourceIPs":["198.51.100.7"],"responseStatus":{"code":403,"message":"no \"quotes\" \\ here"},"requestObject":{"a":[1,{"b":null}]},"requestReceivedTimestamp":"2026-11-20T10:00:00Z"}"#;
        for cut in 0..=line.len() {
            let part = &line[..cut];
            let full = decode(part).map(|_| ()).map_err(|e| e.reason());
            let quick = check_structure(part).map_err(|e| e.reason());
            assert_eq!(
                quick,
                full,
                "cut at {cut}: {}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn a_body_cut_short_is_invalid_json_never_a_panic() {
        // CloudWatch truncates an oversized event: wherever the cut falls in a request body,
        // the line is a parse error (counted with its reason), and the lean decoder, which
        // does not decode `requestObject`, does not panic on it.
        let line = br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"p1","verb":"create","objectRef":{"resource":"pods","namespace":"default","name":"p"},"responseStatus":{"code":201},"requestObject":{"kind":"Pod","spec":{"containers":[{"name":"a","image":"nginx","securityContext":{"privileged":true}}],"volumes":[{"hostPath":{"path":"/etc"}}]}},"requestReceivedTimestamp":"2026-11-20T10:00:00Z"}"#;
        let body = line
            .windows(16)
            .position(|w| w == b"\"requestObject\":")
            .expect("has a body");
        assert!(matches!(decode(line), Ok(Decoded::Event(_))));
        for cut in body..line.len() {
            let reason = decode(&line[..cut]).map(|_| ()).map_err(|e| e.reason());
            assert_eq!(reason, Err("invalid_json"), "cut at {cut}");
        }
    }

    #[test]
    fn recognizes_wrappers_and_lists() {
        let wrapped = r#"{"log":"{\"auditID\":\"a\",\"verb\":\"get\"}","host":"ip-10-0-0-1","stream":"stdout"}"#;
        match decode(wrapped.as_bytes()).unwrap() {
            Decoded::Wrapped { inner, host } => {
                assert!(inner.as_str().starts_with("{\"auditID\""));
                assert_eq!(host.unwrap().as_str(), "ip-10-0-0-1");
            }
            other => panic!("{other:?}"),
        }
        let list = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a"},{"auditID":"b"}]}"#;
        match decode(list.as_bytes()).unwrap() {
            Decoded::List(items) => assert_eq!(items.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
