//! Field paths into an event, and the values found there.
//!
//! The fields that EKS audit rules use most are read from the decoded
//! [`AuditEvent`](authwatch_event::AuditEvent) directly; any other dotted path falls back to
//! the raw JSON, parsed at most once per event ([`EventFacts`]).

use std::borrow::Cow;
use std::cell::OnceCell;

use authwatch_event::event::lookup_value;
use authwatch_event::{EventView, Text};
use smallvec::SmallVec;

/// A path into an event, resolved once when the rule is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    /// `host`: the record's host, else its log stream (detection.md).
    Host,
    /// `sourceIPs`: a list; group keys fan out over it.
    SourceIps,
    /// `user.username`, also spelled `k8s_user.username`.
    Username,
    /// `impersonatedUser.username`.
    ImpersonatedUsername,
    /// `user.uid`.
    UserUid,
    /// `verb`.
    Verb,
    /// `requestURI`.
    RequestUri,
    /// `userAgent`.
    UserAgent,
    /// `stage`.
    Stage,
    /// `auditID`.
    AuditId,
    /// `apiVersion`.
    ApiVersion,
    /// `responseStatus.code`.
    Code,
    /// `responseStatus.reason`.
    Reason,
    /// `responseStatus.status`.
    Status,
    /// `objectRef.<field>`.
    Object(ObjectField),
    /// `annotations.<key>`, the key taken whole (it contains dots).
    Annotation(String),
    /// Any other path, looked up in the raw event.
    Other(Vec<String>),
}

/// The `objectRef` fields that are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ObjectField {
    Resource,
    Subresource,
    Namespace,
    Name,
    ApiGroup,
    ApiVersion,
}

impl FieldPath {
    /// Resolves a dotted path as rules spell it.
    ///
    /// ```
    /// use authwatch_rules::field::FieldPath;
    /// assert_eq!(FieldPath::parse("k8s_user.username"), FieldPath::Username);
    /// assert_eq!(
    ///     FieldPath::parse("annotations.authorization.k8s.io/reason"),
    ///     FieldPath::Annotation("authorization.k8s.io/reason".into())
    /// );
    /// ```
    pub fn parse(path: &str) -> FieldPath {
        match path {
            "host" => FieldPath::Host,
            "sourceIPs" => FieldPath::SourceIps,
            "user.username" | "k8s_user.username" => FieldPath::Username,
            "impersonatedUser.username" => FieldPath::ImpersonatedUsername,
            "user.uid" => FieldPath::UserUid,
            "verb" => FieldPath::Verb,
            "requestURI" => FieldPath::RequestUri,
            "userAgent" => FieldPath::UserAgent,
            "stage" => FieldPath::Stage,
            "auditID" => FieldPath::AuditId,
            "apiVersion" => FieldPath::ApiVersion,
            "responseStatus.code" => FieldPath::Code,
            "responseStatus.reason" => FieldPath::Reason,
            "responseStatus.status" => FieldPath::Status,
            "objectRef.resource" => FieldPath::Object(ObjectField::Resource),
            "objectRef.subresource" => FieldPath::Object(ObjectField::Subresource),
            "objectRef.namespace" => FieldPath::Object(ObjectField::Namespace),
            "objectRef.name" => FieldPath::Object(ObjectField::Name),
            "objectRef.apiGroup" => FieldPath::Object(ObjectField::ApiGroup),
            "objectRef.apiVersion" => FieldPath::Object(ObjectField::ApiVersion),
            _ => match path.strip_prefix("annotations.") {
                Some(key) if !key.is_empty() => FieldPath::Annotation(key.to_owned()),
                _ => FieldPath::Other(path.split('.').map(str::to_owned).collect()),
            },
        }
    }
}

/// A value found at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'e> {
    /// A string.
    Str(Cow<'e, str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl Value<'_> {
    /// The value as text, the form group keys take.
    pub fn to_key(&self) -> String {
        match self {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// Values at a path: usually one, several for lists (`sourceIPs`), none when absent.
pub type Values<'e> = SmallVec<[Value<'e>; 2]>;

/// One event as rules see it: the decoded view plus a lazily parsed copy of the raw JSON for
/// paths the decoder does not materialize.
pub struct EventFacts<'v, 'e, 'a> {
    /// The decoded event and its record context.
    pub view: &'v EventView<'e, 'a>,
    raw: OnceCell<Option<serde_json::Value>>,
}

impl<'v, 'e, 'a> EventFacts<'v, 'e, 'a> {
    /// Wraps a view.
    pub fn new(view: &'v EventView<'e, 'a>) -> Self {
        EventFacts {
            view,
            raw: OnceCell::new(),
        }
    }

    /// The values at `path` (empty if absent).
    pub fn values(&self, path: &FieldPath) -> Values<'_> {
        let ev = self.view.event;
        match path {
            FieldPath::Host => self
                .view
                .host
                .map(|h| Value::Str(Cow::Borrowed(h)))
                .into_iter()
                .collect(),
            FieldPath::SourceIps => ev
                .source_ips
                .iter()
                .map(|ip| Value::Str(Cow::Borrowed(ip.as_str())))
                .collect(),
            FieldPath::Username => text(&ev.user.username),
            FieldPath::ImpersonatedUsername => ev
                .impersonated_user
                .as_ref()
                .map_or_else(Values::new, |u| text(&u.username)),
            FieldPath::UserUid => text(&ev.user.uid),
            FieldPath::Verb => text(&ev.verb),
            FieldPath::RequestUri => text(&ev.request_uri),
            FieldPath::UserAgent => text(&ev.user_agent),
            FieldPath::Stage => text(&ev.stage),
            FieldPath::AuditId => text(&ev.audit_id),
            FieldPath::ApiVersion => text(&ev.api_version),
            FieldPath::Code => ev.code().map(Value::Int).into_iter().collect(),
            FieldPath::Reason => ev
                .response_status
                .as_ref()
                .map_or_else(Values::new, |s| text(&s.reason)),
            FieldPath::Status => ev
                .response_status
                .as_ref()
                .map_or_else(Values::new, |s| text(&s.status)),
            FieldPath::Object(f) => ev.object_ref.as_ref().map_or_else(Values::new, |o| {
                text(match f {
                    ObjectField::Resource => &o.resource,
                    ObjectField::Subresource => &o.subresource,
                    ObjectField::Namespace => &o.namespace,
                    ObjectField::Name => &o.name,
                    ObjectField::ApiGroup => &o.api_group,
                    ObjectField::ApiVersion => &o.api_version,
                })
            }),
            FieldPath::Annotation(key) => ev
                .annotation(key)
                .map(|v| Value::Str(Cow::Owned(v)))
                .into_iter()
                .collect(),
            FieldPath::Other(segments) => {
                let raw = self.raw.get_or_init(|| serde_json::from_slice(ev.raw).ok());
                let segs: SmallVec<[&str; 4]> = segments.iter().map(String::as_str).collect();
                match raw.as_ref().and_then(|r| lookup_value(r, &segs)) {
                    Some(serde_json::Value::Array(items)) => {
                        items.iter().filter_map(json_scalar).collect()
                    }
                    Some(v) => json_scalar(v).into_iter().collect(),
                    None => Values::new(),
                }
            }
        }
    }
}

fn text<'x>(t: &'x Option<Text<'_>>) -> Values<'x> {
    t.as_ref()
        .map(|t| Value::Str(Cow::Borrowed(t.as_str())))
        .into_iter()
        .collect()
}

fn json_scalar(v: &serde_json::Value) -> Option<Value<'_>> {
    match v {
        serde_json::Value::String(s) => Some(Value::Str(Cow::Borrowed(s))),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| Some(Value::Str(Cow::Owned(n.to_string())))),
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}
