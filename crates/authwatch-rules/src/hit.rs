//! What the engine keeps of one matched event for its alerts ([`HitInfo`]: auditID, code,
//! verb, user, host, cluster, IAM principal and access key), built once per event by [`hit_info`] and shared by every key
//! the event counts toward; and the [`Interner`] that shares the text of those low-cardinality
//! fields between events. Moved out of engine.rs (issue #19).

use std::sync::Arc;

use authwatch_event::{cluster_from_log_group, EventView};

use crate::alert::{ContainerEvidence, Evidence, ObjectEvidence};
use crate::audit_id::AuditId;
use crate::field::{EventFacts, FieldPath, Value};

/// What an alert needs to know about one counted event; shared by every key it fans out to.
#[derive(Debug)]
pub(crate) struct HitInfo {
    pub(crate) audit_id: Option<AuditId>,
    pub(crate) code: Option<i64>,
    pub(crate) verb: Option<Arc<str>>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) host: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    /// The IAM principal behind the user (EKS `user.extra.canonicalArn`, else `arn`).
    pub(crate) iam_principal: Option<Arc<str>>,
    /// The access key the request was signed with (`user.extra.accessKeyId`).
    pub(crate) access_key_id: Option<Arc<str>>,
    /// The whole request, kept only when a one-request rule (`threshold: 1`) matched it.
    pub(crate) evidence: Option<Box<Evidence>>,
}

/// Shares the text of low-cardinality fields (verbs, API servers, clusters, users) between
/// the events that carry them, up to a bound, past which text is simply not shared.
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    set: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    const CAP: usize = 100_000;

    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.set.len() < Self::CAP {
            self.set.insert(a.clone());
        }
        a
    }
}

pub(crate) fn hit_info(
    view: &EventView<'_, '_>,
    cluster: Option<&Arc<str>>,
    interner: &mut Interner,
) -> HitInfo {
    let ev = view.event;
    HitInfo {
        audit_id: ev.audit_id.as_ref().map(|a| AuditId::new(a.as_str())),
        code: ev.code(),
        verb: ev.verb.as_ref().map(|v| interner.get(v.as_str())),
        user: ev.username().map(|u| interner.get(u)),
        host: view.host.map(|h| interner.get(h)),
        cluster: cluster.cloned().or_else(|| {
            view.log_group
                .and_then(cluster_from_log_group)
                .map(|c| interner.get(c))
        }),
        // Decoded only here, for matched events: most events never reach an alert.
        iam_principal: ev.iam_principal().map(|a| interner.get(&a)),
        access_key_id: ev.access_key_id().map(|k| interner.get(&k)),
        evidence: None,
    }
}

/// The evidence of one request (see [`Evidence`]), read from the decoded event; the body is
/// read (through `facts`, parsed at most once) only for the object's kind and a created
/// object's name.
pub(crate) fn evidence(facts: &EventFacts<'_, '_, '_>) -> Evidence {
    let view = facts.view;
    let ev = view.event;
    let owned = |t: &Option<authwatch_event::Text<'_>>| t.as_ref().map(|t| t.as_str().to_owned());
    let body = |path: &[&str]| {
        facts
            .values(&FieldPath::Other(
                path.iter().map(|s| (*s).to_owned()).collect(),
            ))
            .into_iter()
            .next()
            .and_then(|v| match v {
                Value::Str(s) => Some(s.into_owned()),
                _ => None,
            })
    };
    let o = ev.object_ref.as_ref();
    Evidence {
        audit_id: owned(&ev.audit_id),
        verb: owned(&ev.verb),
        request_uri: owned(&ev.request_uri),
        code: ev.code(),
        object: ObjectEvidence {
            kind: body(&["requestObject", "kind"]).or_else(|| o.and_then(|o| owned(&o.resource))),
            api_group: o.and_then(|o| owned(&o.api_group)),
            namespace: o.and_then(|o| owned(&o.namespace)),
            name: o
                .and_then(|o| owned(&o.name))
                .or_else(|| body(&["requestObject", "metadata", "name"]))
                .or_else(|| body(&["requestObject", "metadata", "generateName"])),
            subresource: o.and_then(|o| owned(&o.subresource)),
        },
        user: ev.username().map(str::to_owned),
        impersonated_user: ev
            .impersonated_user
            .as_ref()
            .and_then(|u| owned(&u.username)),
        iam_principal: ev.iam_principal(),
        access_key_id: ev.access_key_id(),
        source_ips: ev
            .source_ips
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        user_agent: owned(&ev.user_agent),
        host: view.host.map(str::to_owned),
        containers: facts.pod().map(containers).unwrap_or_default(),
        host_access: facts.pod().map(host_access).unwrap_or_default(),
    }
}

/// At most this many containers or host accesses in evidence.
const EVIDENCE_CAP: usize = 10;

fn containers(spec: &serde_json::Value) -> Vec<ContainerEvidence> {
    let text =
        |c: &serde_json::Value, k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let flag = |c: &serde_json::Value, k: &str| {
        c.get("securityContext")
            .and_then(|s| s.get(k))
            .and_then(serde_json::Value::as_bool)
    };
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(k).and_then(serde_json::Value::as_array))
        .flatten()
        .take(EVIDENCE_CAP)
        .map(|c| ContainerEvidence {
            name: text(c, "name"),
            image: text(c, "image"),
            privileged: flag(c, "privileged"),
            allow_privilege_escalation: flag(c, "allowPrivilegeEscalation"),
        })
        .collect()
}

fn host_access(spec: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k).and_then(serde_json::Value::as_bool) == Some(true))
        .map(|k| (*k).to_owned())
        .collect();
    for v in spec
        .get("volumes")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = v
            .get("hostPath")
            .and_then(|h| h.get("path"))
            .and_then(serde_json::Value::as_str)
        {
            out.push(format!("hostPath {p}"));
        }
    }
    out.truncate(EVIDENCE_CAP);
    out
}
