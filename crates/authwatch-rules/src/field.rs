//! Field paths into an event, and the values found there.
//!
//! The fields that EKS audit rules use most are read from the decoded
//! [`AuditEvent`](authwatch_event::AuditEvent) directly; any other dotted path falls back to
//! the raw JSON, parsed at most once per event ([`EventFacts`]), and only when a condition on
//! such a path is reached (conditions on decoded fields are evaluated first, see
//! [`Cond::cost`](crate::condition::Cond::cost)).
//!
//! Paths into the raw event go through arrays with `[*]` after a segment
//! (`requestObject.spec.containers[*].image`: each element); a final array is always expanded.
//! `pod.<path>` is the pod spec of the request body wherever the object's kind keeps it
//! ([`FieldPath::Pod`]).

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
    /// `user.extra.<key>`, the key taken whole: on EKS the IAM principal behind the user
    /// (`canonicalArn`, `arn`, `accessKeyId`, `sessionName`, `principalId`). A list: a
    /// condition holds when any value does, and group keys fan out over the values.
    UserExtra(String),
    /// Any other path, looked up in the raw event.
    Other(Vec<String>),
    /// A path into the raw event through arrays (`requestObject.subjects[*].name`).
    Each(Vec<Segment>),
    /// `object.name`: the object's name as a group key that objects created with
    /// `generateName` also have: `objectRef.name`, else the name the server generated
    /// (`responseObject.metadata.name`), else the requested prefix
    /// (`requestObject.metadata.generateName`). The body is read only when `objectRef` has
    /// no name.
    ObjectName,
    /// `pod.<path>`: a path into the pod spec of the request body (see [`pod_spec`]);
    /// `pod.containers` covers `containers`, `initContainers` and `ephemeralContainers`.
    Pod(Vec<Segment>),
}

/// One step of a path through the raw event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// `[*]`: each element of an array.
    Each,
}

/// Parses `a.b[*].c` into segments; errors say what is wrong.
fn segments(path: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for (i, piece) in path.split('.').enumerate() {
        let (name, mut rest) = match piece.find(['[', ']']) {
            Some(at) => piece.split_at(at),
            None => (piece, ""),
        };
        if name.is_empty() {
            return Err(if piece.is_empty() {
                format!("empty segment at position {} in `{path}`", i + 1)
            } else {
                format!("`{piece}` in `{path}`: `[*]` must follow a field name")
            });
        }
        out.push(Segment::Key(name.to_owned()));
        while !rest.is_empty() {
            match rest.strip_prefix("[*]") {
                Some(r) => {
                    out.push(Segment::Each);
                    rest = r;
                }
                None => {
                    return Err(format!(
                        "`{piece}` in `{path}`: only `[*]` (each element) may follow a field name"
                    ))
                }
            }
        }
    }
    Ok(out)
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
    /// assert_eq!(
    ///     FieldPath::parse("user.extra.canonicalArn"),
    ///     FieldPath::UserExtra("canonicalArn".into())
    /// );
    /// ```
    ///
    /// A malformed path (`containers[`, `[x]`, an empty segment) falls back to a plain lookup
    /// that finds nothing; rules are loaded with [`FieldPath::parse_checked`], which refuses it.
    pub fn parse(path: &str) -> FieldPath {
        FieldPath::parse_checked(path)
            .unwrap_or_else(|_| FieldPath::Other(path.split('.').map(str::to_owned).collect()))
    }

    /// Resolves a path, refusing malformed ones (`containers[`, `a[x]`, `[*]`, `a..b`).
    ///
    /// ```
    /// use authwatch_rules::field::{FieldPath, Segment};
    /// assert_eq!(
    ///     FieldPath::parse_checked("pod.volumes[*].hostPath.path").unwrap(),
    ///     FieldPath::Pod(vec![
    ///         Segment::Key("volumes".into()),
    ///         Segment::Each,
    ///         Segment::Key("hostPath".into()),
    ///         Segment::Key("path".into()),
    ///     ])
    /// );
    /// assert!(FieldPath::parse_checked("requestObject.spec.containers[").is_err());
    /// assert!(FieldPath::parse_checked("requestObject.spec..x").is_err());
    /// ```
    pub fn parse_checked(path: &str) -> Result<FieldPath, String> {
        Ok(match path {
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
            "object.name" => FieldPath::ObjectName,
            _ => {
                if let Some(key) = path.strip_prefix("annotations.").filter(|k| !k.is_empty()) {
                    return Ok(FieldPath::Annotation(key.to_owned()));
                }
                if let Some(key) = path
                    .strip_prefix("user.extra.")
                    .or_else(|| path.strip_prefix("k8s_user.extra."))
                    .filter(|k| !k.is_empty())
                {
                    return Ok(FieldPath::UserExtra(key.to_owned()));
                }
                if let Some(rest) = path.strip_prefix("pod.") {
                    FieldPath::Pod(segments(rest)?)
                } else {
                    let segs = segments(path)?;
                    if segs.contains(&Segment::Each) {
                        FieldPath::Each(segs)
                    } else {
                        FieldPath::Other(path.split('.').map(str::to_owned).collect())
                    }
                }
            }
        })
    }

    /// Whether reading this path needs the raw event parsed (the expensive part of matching).
    pub fn needs_raw(&self) -> bool {
        matches!(
            self,
            FieldPath::Other(_) | FieldPath::Each(_) | FieldPath::Pod(_)
        )
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
    /// A JSON Patch request body as the object it writes ([`json_patch_as_object`]).
    patched: OnceCell<Option<serde_json::Value>>,
}

impl<'v, 'e, 'a> EventFacts<'v, 'e, 'a> {
    /// Wraps a view.
    pub fn new(view: &'v EventView<'e, 'a>) -> Self {
        EventFacts {
            view,
            raw: OnceCell::new(),
            patched: OnceCell::new(),
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
            FieldPath::UserExtra(key) => ev
                .user
                .extra(key)
                .into_iter()
                .map(|v| Value::Str(Cow::Owned(v)))
                .collect(),
            FieldPath::ObjectName => {
                let named = ev
                    .object_ref
                    .as_ref()
                    .and_then(|o| o.name.as_ref())
                    .filter(|n| !n.as_str().is_empty());
                if let Some(n) = named {
                    return smallvec::smallvec![Value::Str(Cow::Borrowed(n.as_str()))];
                }
                let raw = self.raw();
                let at = |body: &str, key: &str| {
                    raw.and_then(|r| r.get(body))
                        .and_then(|b| b.get("metadata"))
                        .and_then(|m| m.get(key))
                        .and_then(serde_json::Value::as_str)
                        .filter(|n| !n.is_empty())
                };
                at("responseObject", "name")
                    .or_else(|| at("requestObject", "generateName"))
                    .map(|n| Value::Str(Cow::Borrowed(n)))
                    .into_iter()
                    .collect()
            }
            FieldPath::Each(segs) => {
                let mut out = Values::new();
                if let Some(raw) = self.raw() {
                    collect(raw, segs, &mut out);
                }
                out
            }
            FieldPath::Pod(segs) => {
                let mut out = Values::new();
                let Some(spec) = self.pod() else {
                    return out;
                };
                match segs.split_first() {
                    Some((Segment::Key(k), rest)) if k == "containers" => {
                        for key in ["containers", "initContainers", "ephemeralContainers"] {
                            if let Some(list) = spec.get(key) {
                                collect(list, rest, &mut out);
                            }
                        }
                    }
                    _ => collect(spec, segs, &mut out),
                }
                out
            }
            FieldPath::Other(segments) => {
                let raw = self.raw();
                let segs: SmallVec<[&str; 4]> = segments.iter().map(String::as_str).collect();
                match raw.and_then(|r| lookup_value(r, &segs)) {
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

impl EventFacts<'_, '_, '_> {
    /// Whether the raw event has been parsed (for tests of evaluation order).
    #[cfg(test)]
    pub(crate) fn raw_parsed(&self) -> bool {
        self.raw.get().is_some()
    }

    /// The pod spec of the request body, if it holds one (see [`pod_spec`]).
    pub(crate) fn pod(&self) -> Option<&serde_json::Value> {
        let o = self.view.event.object_ref.as_ref();
        let resource = o.and_then(|o| o.resource.as_ref()).map(Text::as_str);
        let subresource = o.and_then(|o| o.subresource.as_ref()).map(Text::as_str);
        self.request_body()
            .and_then(|body| pod_spec(body, resource, subresource))
    }

    /// The request body as the object it writes: `requestObject`, except that a JSON Patch
    /// (an array of operations, `kubectl patch --type=json`) is read as the object its
    /// `add` and `replace` operations write ([`json_patch_as_object`]), so that a patch
    /// setting `privileged: true` by pointer is seen like a merge patch that does.
    fn request_body(&self) -> Option<&serde_json::Value> {
        let body = self.raw()?.get("requestObject")?;
        match body {
            serde_json::Value::Array(ops) => self
                .patched
                .get_or_init(|| json_patch_as_object(ops))
                .as_ref(),
            other => Some(other),
        }
    }

    /// The raw event, parsed on first use.
    fn raw(&self) -> Option<&serde_json::Value> {
        self.raw
            .get_or_init(|| serde_json::from_slice(self.view.event.raw).ok())
            .as_ref()
    }
}

/// The object a JSON Patch (RFC 6902) writes: the values of its `add` and `replace`
/// operations set at their paths (JSON Pointers, `~1` and `~0` unescaped) in an empty
/// object. An index (or `-`) makes an array with the value at that place (`null` before it,
/// which no path reads); an index past [`MAX_PATCH_INDEX`] is taken as `-`, so a hostile
/// pointer cannot make a huge array. `remove`, `move`, `copy` and `test` write no new value
/// the patch shows and are passed over. `None` if the array is not a patch (an element that
/// is not an operation) or writes nothing.
///
/// ```
/// use authwatch_rules::field::json_patch_as_object;
/// let ops = serde_json::json!([
///     {"op": "add", "path": "/spec/containers/0/securityContext/privileged", "value": true},
///     {"op": "replace", "path": "/spec/replicas", "value": 3},
/// ]);
/// let body = json_patch_as_object(ops.as_array().unwrap()).unwrap();
/// assert_eq!(body["spec"]["containers"][0]["securityContext"]["privileged"], true);
/// assert_eq!(body["spec"]["replicas"], 3);
/// ```
pub fn json_patch_as_object(ops: &[serde_json::Value]) -> Option<serde_json::Value> {
    let mut root = serde_json::Value::Object(serde_json::Map::new());
    let mut wrote = false;
    for op in ops {
        let kind = op.get("op")?.as_str()?;
        if !matches!(kind, "add" | "replace") {
            continue;
        }
        let (Some(path), Some(value)) = (op.get("path").and_then(|p| p.as_str()), op.get("value"))
        else {
            continue;
        };
        if path.is_empty() {
            root = value.clone();
        } else if let Some(pointer) = path.strip_prefix('/') {
            let tokens: Vec<String> = pointer
                .split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            set_at(&mut root, &tokens, value.clone());
        } else {
            continue;
        }
        wrote = true;
    }
    wrote.then_some(root)
}

/// The largest array index [`json_patch_as_object`] places as written.
pub const MAX_PATCH_INDEX: usize = 64;

fn set_at(node: &mut serde_json::Value, tokens: &[String], value: serde_json::Value) {
    let Some((first, rest)) = tokens.split_first() else {
        *node = value;
        return;
    };
    let index = match first.as_str() {
        "-" => Some(usize::MAX),
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            Some(t.parse::<usize>().unwrap_or(usize::MAX))
        }
        _ => None,
    };
    let child = match index {
        // An index into an array, unless the node is already an object (a key that is all
        // digits, as in a label map).
        Some(i) if !node.is_object() => {
            if !node.is_array() {
                *node = serde_json::Value::Array(Vec::new());
            }
            let serde_json::Value::Array(items) = node else {
                return;
            };
            let i = if i > MAX_PATCH_INDEX { items.len() } else { i };
            if items.len() <= i {
                items.resize(i + 1, serde_json::Value::Null);
            }
            &mut items[i]
        }
        _ => {
            if !node.is_object() {
                *node = serde_json::Value::Object(serde_json::Map::new());
            }
            let serde_json::Value::Object(map) = node else {
                return;
            };
            map.entry(first.clone()).or_insert(serde_json::Value::Null)
        }
    };
    set_at(child, rest, value);
}

/// The pod spec in a request body: kind `Pod` (and the `pods/ephemeralcontainers`
/// subresource) → `spec`; Deployment, ReplicaSet, StatefulSet, DaemonSet, Job,
/// ReplicationController → `spec.template.spec`; PodTemplate → `template.spec`; CronJob →
/// `spec.jobTemplate.spec.template.spec`. The kind is the body's `kind`, else (patch bodies
/// carry none) `objectRef.resource`. Other subresources (`pods/status`, `deployments/scale`)
/// cannot change a pod spec: none. A JSON Patch body is read through
/// [`json_patch_as_object`] first.
pub fn pod_spec<'j>(
    body: &'j serde_json::Value,
    resource: Option<&str>,
    subresource: Option<&str>,
) -> Option<&'j serde_json::Value> {
    let path: &[&str] = match subresource {
        Some("ephemeralcontainers") => &["spec"],
        Some(s) if !s.is_empty() => return None,
        _ => {
            let kind = match body.get("kind").and_then(serde_json::Value::as_str) {
                Some(k) => k,
                None => match resource? {
                    "pods" => "Pod",
                    "deployments" => "Deployment",
                    "replicasets" => "ReplicaSet",
                    "statefulsets" => "StatefulSet",
                    "daemonsets" => "DaemonSet",
                    "jobs" => "Job",
                    "replicationcontrollers" => "ReplicationController",
                    "podtemplates" => "PodTemplate",
                    "cronjobs" => "CronJob",
                    _ => return None,
                },
            };
            match kind {
                "Pod" => &["spec"],
                "Deployment"
                | "ReplicaSet"
                | "StatefulSet"
                | "DaemonSet"
                | "Job"
                | "ReplicationController" => &["spec", "template", "spec"],
                "PodTemplate" => &["template", "spec"],
                "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
                _ => return None,
            }
        }
    };
    let spec = path.iter().try_fold(body, |v, k| v.get(k))?;
    spec.is_object().then_some(spec)
}

/// Adds the scalars at `segs` under `v` to `out`: `Each` steps into every element of an array,
/// a final array is expanded, and (as [`lookup_value`] does) a run of keys may match one key
/// with dots in it, the longest first.
fn collect<'j>(v: &'j serde_json::Value, segs: &[Segment], out: &mut Values<'j>) {
    match segs.split_first() {
        None => match v {
            serde_json::Value::Array(items) => out.extend(items.iter().filter_map(json_scalar)),
            v => out.extend(json_scalar(v)),
        },
        Some((Segment::Each, rest)) => {
            if let serde_json::Value::Array(items) = v {
                for item in items {
                    collect(item, rest, out);
                }
            }
        }
        Some((Segment::Key(first), rest)) => {
            let Some(obj) = v.as_object() else {
                return;
            };
            let run = 1 + rest
                .iter()
                .take_while(|s| matches!(s, Segment::Key(_)))
                .count();
            for take in (1..=run).rev() {
                let found = if take == 1 {
                    obj.get(first.as_str())
                } else {
                    let key: Vec<&str> = segs[..take]
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Key(k) => Some(k.as_str()),
                            Segment::Each => None,
                        })
                        .collect();
                    obj.get(&key.join("."))
                };
                if let Some(next) = found {
                    let before = out.len();
                    collect(next, &segs[take..], out);
                    if out.len() > before {
                        return;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use authwatch_event::event::{decode, Decoded};

    /// The values at `path` in the event `json`, as text.
    fn at(json: &str, path: &str) -> Vec<String> {
        let Ok(Decoded::Event(ev)) = decode(json.as_bytes()) else {
            panic!("not an event: {json}");
        };
        let view = EventView {
            event: &ev,
            host: None,
            log_group: None,
            time: None,
        };
        let facts = EventFacts::new(&view);
        let field = FieldPath::parse_checked(path).expect(path);
        let out: Vec<String> = facts.values(&field).iter().map(Value::to_key).collect();
        out
    }

    fn event(resource: &str, sub: Option<&str>, body: &str) -> String {
        let sub = sub.map_or(String::new(), |s| format!(r#","subresource":"{s}""#));
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","verb":"create","objectRef":{{"resource":"{resource}","namespace":"default","name":"x"{sub}}},"requestObject":{body}}}"#
        )
    }

    const CONTAINERS: &str = r#"{"containers":[{"name":"a","image":"nginx","securityContext":{"privileged":false}},{"name":"b","image":"my.reg:5000/b","securityContext":{"privileged":true}}],"initContainers":[{"name":"i","image":"busybox"}],"hostPID":true,"volumes":[{"name":"v","hostPath":{"path":"/etc"}},{"name":"w","emptyDir":{}}]}"#;

    #[test]
    fn paths_go_through_arrays() {
        let ev = event(
            "rolebindings",
            None,
            r#"{"kind":"RoleBinding","subjects":[{"kind":"User","name":"alice"},{"kind":"Group","name":"system:anonymous"}],"roleRef":{"name":"cluster-admin"},"rules":[{"verbs":["get","list"]},{"verbs":["*"]}],"metadata":{"labels":{"app.kubernetes.io/name":"x"}}}"#,
        );
        assert_eq!(
            at(&ev, "requestObject.subjects[*].name"),
            ["alice", "system:anonymous"]
        );
        assert_eq!(at(&ev, "requestObject.subjects[*].kind"), ["User", "Group"]);
        assert_eq!(at(&ev, "requestObject.roleRef.name"), ["cluster-admin"]);
        // A final array is expanded, with or without `[*]`.
        assert_eq!(
            at(&ev, "requestObject.rules[*].verbs"),
            ["get", "list", "*"]
        );
        assert_eq!(
            at(&ev, "requestObject.rules[*].verbs[*]"),
            ["get", "list", "*"]
        );
        // `[*]` on something that is not an array finds nothing.
        assert!(at(&ev, "requestObject.roleRef[*].name").is_empty());
        assert!(at(&ev, "requestObject.nothing[*].name").is_empty());
        // Keys with dots are matched whole, as in plain paths.
        assert_eq!(
            at(&ev, "requestObject.metadata.labels.app.kubernetes.io/name"),
            ["x"]
        );
        assert_eq!(at(&ev, "objectRef.name"), ["x"]);
    }

    #[test]
    fn a_json_patch_is_read_as_the_object_it_writes() {
        let ops = |v: serde_json::Value| json_patch_as_object(v.as_array().unwrap());
        // A whole container appended, a flag by pointer into the first, escaped pointers.
        let body = ops(serde_json::json!([
            {"op": "add", "path": "/spec/containers/-", "value": {"name": "x", "image": "evil.io/x"}},
            {"op": "replace", "path": "/spec/initContainers/0/securityContext/privileged", "value": true},
            {"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "v"},
            {"op": "remove", "path": "/spec/hostNetwork"},
        ]))
        .unwrap();
        assert_eq!(body["spec"]["containers"][0]["image"], "evil.io/x");
        assert_eq!(
            body["spec"]["initContainers"][0]["securityContext"]["privileged"],
            true
        );
        assert_eq!(body["metadata"]["annotations"]["a/b~c"], "v");
        assert!(body["spec"].get("hostNetwork").is_none());
        // A hostile index makes no huge array; a key of digits in an object stays a key.
        let body = ops(serde_json::json!([
            {"op": "add", "path": "/metadata/labels", "value": {}},
            {"op": "add", "path": "/metadata/labels/123", "value": "x"},
            {"op": "add", "path": "/spec/containers/999999999999999999999/image", "value": "i"},
        ]))
        .unwrap();
        assert_eq!(body["metadata"]["labels"]["123"], "x");
        assert_eq!(body["spec"]["containers"].as_array().map(Vec::len), Some(1));
        // Not a patch, or one that writes nothing.
        assert!(ops(serde_json::json!([1, 2])).is_none());
        assert!(ops(serde_json::json!([{"op": "remove", "path": "/spec"}])).is_none());
        // Through pod.*: the resource says where the spec is.
        let ev = event(
            "deployments",
            None,
            r#"[{"op":"add","path":"/spec/template/spec/containers/1","value":{"image":"nginx","securityContext":{"privileged":true}}}]"#,
        );
        assert_eq!(
            at(&ev, "pod.containers[*].securityContext.privileged"),
            ["true"]
        );
        assert_eq!(at(&ev, "pod.containers[*].image"), ["nginx"]);
    }

    #[test]
    fn pod_is_the_pod_spec_wherever_the_kind_keeps_it() {
        let pod = format!(r#"{{"kind":"Pod","spec":{CONTAINERS}}}"#);
        let template = |kind: &str| {
            format!(
                r#"{{"kind":"{kind}","spec":{{"replicas":2,"template":{{"spec":{CONTAINERS}}}}}}}"#
            )
        };
        let cron = format!(
            r#"{{"kind":"CronJob","spec":{{"jobTemplate":{{"spec":{{"template":{{"spec":{CONTAINERS}}}}}}}}}}}"#
        );
        let cases = [
            event("pods", None, &pod),
            event("deployments", None, &template("Deployment")),
            event("replicasets", None, &template("ReplicaSet")),
            event("statefulsets", None, &template("StatefulSet")),
            event("daemonsets", None, &template("DaemonSet")),
            event("jobs", None, &template("Job")),
            event(
                "replicationcontrollers",
                None,
                &template("ReplicationController"),
            ),
            event("cronjobs", None, &cron),
            // Patch bodies have no kind: the resource says where the spec is.
            event(
                "deployments",
                None,
                &template("").replace(r#""kind":"","#, ""),
            ),
            event("pods", Some("ephemeralcontainers"), &pod),
        ];
        for ev in &cases {
            assert_eq!(
                at(ev, "pod.containers[*].image"),
                ["nginx", "my.reg:5000/b", "busybox"],
                "{ev}"
            );
            assert_eq!(
                at(ev, "pod.containers[*].securityContext.privileged"),
                ["false", "true"],
                "{ev}"
            );
            assert_eq!(at(ev, "pod.hostPID"), ["true"], "{ev}");
            assert!(at(ev, "pod.hostNetwork").is_empty(), "{ev}");
            assert_eq!(at(ev, "pod.volumes[*].hostPath.path"), ["/etc"], "{ev}");
        }
        let eph = event(
            "pods",
            Some("ephemeralcontainers"),
            r#"{"kind":"Pod","spec":{"containers":[{"name":"app","image":"app"}],"ephemeralContainers":[{"name":"debugger","image":"busybox","targetContainerName":"app"}]}}"#,
        );
        assert_eq!(at(&eph, "pod.containers[*].image"), ["app", "busybox"]);
        assert_eq!(at(&eph, "pod.ephemeralContainers[*].name"), ["debugger"]);
        // A JSON Patch: the values it writes, where they sit.
        let json_patch = event(
            "deployments",
            None,
            r#"[{"op":"replace","path":"/spec/template/spec/hostPID","value":true}]"#,
        );
        assert_eq!(at(&json_patch, "pod.hostPID"), ["true"]);
        for quiet in [
            // A patch of the replicas only.
            event("deployments", None, r#"{"spec":{"replicas":3}}"#),
            // A JSON Patch of the replicas only.
            event(
                "deployments",
                None,
                r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
            ),
            // Status writes cannot change the spec.
            event("pods", Some("status"), &pod),
            // Not a workload.
            event(
                "configmaps",
                None,
                r#"{"kind":"ConfigMap","spec":{"hostPID":true}}"#,
            ),
            event(
                "deployments",
                Some("scale"),
                r#"{"kind":"Scale","spec":{"replicas":1}}"#,
            ),
            // A delete's body.
            event(
                "pods",
                None,
                r#"{"kind":"DeleteOptions","spec":{"hostPID":true}}"#,
            ),
        ] {
            assert!(at(&quiet, "pod.hostPID").is_empty(), "{quiet}");
            assert!(at(&quiet, "pod.containers[*].image").is_empty(), "{quiet}");
        }
        // No body at all (Metadata level).
        let meta =
            r#"{"kind":"Event","auditID":"a","verb":"create","objectRef":{"resource":"pods"}}"#;
        assert!(at(meta, "pod.hostPID").is_empty());
        assert!(at(meta, "requestObject.spec.containers[*].image").is_empty());
    }

    #[test]
    fn object_name_falls_back_to_the_generated_name() {
        let named = event("pods", None, r#"{"kind":"Pod","metadata":{"name":"p"}}"#);
        assert_eq!(at(&named, "object.name"), ["x"], "objectRef.name first");
        let generated = r#"{"kind":"Event","auditID":"a","verb":"create","objectRef":{"resource":"pods","namespace":"default"},"requestObject":{"kind":"Pod","metadata":{"generateName":"web-"}},"responseObject":{"kind":"Pod","metadata":{"name":"web-x7k2p","generateName":"web-"}}}"#;
        assert_eq!(at(generated, "object.name"), ["web-x7k2p"]);
        assert!(at(generated, "objectRef.name").is_empty());
        let request_only = r#"{"kind":"Event","auditID":"a","verb":"create","objectRef":{"resource":"pods","namespace":"default"},"requestObject":{"kind":"Pod","metadata":{"generateName":"web-"}}}"#;
        assert_eq!(at(request_only, "object.name"), ["web-"]);
        let metadata = r#"{"kind":"Event","auditID":"a","verb":"create","objectRef":{"resource":"pods","namespace":"default"}}"#;
        assert!(at(metadata, "object.name").is_empty());
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "containers[",
            "requestObject.spec.containers[",
            "a[x]",
            "[x]",
            "[*]",
            "a.[*]",
            "a..b",
            ".a",
            "a.",
            "a[*]b",
            "a]",
            "pod.",
            "pod.a[0]",
        ] {
            assert!(FieldPath::parse_checked(bad).is_err(), "{bad}");
        }
        assert_eq!(
            FieldPath::parse_checked("requestObject.kind"),
            Ok(FieldPath::Other(vec![
                "requestObject".into(),
                "kind".into()
            ]))
        );
        assert_eq!(
            FieldPath::parse_checked("a[*][*]"),
            Ok(FieldPath::Each(vec![
                Segment::Key("a".into()),
                Segment::Each,
                Segment::Each
            ]))
        );
        // Annotation keys are taken whole, brackets and all.
        assert_eq!(
            FieldPath::parse_checked("annotations.x[y]"),
            Ok(FieldPath::Annotation("x[y]".into()))
        );
    }
}
