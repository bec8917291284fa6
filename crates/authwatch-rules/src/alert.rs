//! The alert record of detection.md: the one thing every sink receives.

use std::collections::BTreeMap;

use authwatch_event::time::format_millis;
use authwatch_event::Micros;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::rule::Severity;

/// The values of a rule's `group_by` for one key, in rule order and spelled as in the rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group(pub Vec<(String, String)>);

impl Serialize for Group {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// One alert (detection.md, "Alert line"). Field order and names are the contract's; the
/// extra fields (`alert_id`, `kind`, `description`) are allowed by it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Rule id.
    pub rule: String,
    /// Rule severity.
    pub severity: Severity,
    /// The key: `group_by` entry → value.
    pub group: Group,
    /// Counted events in the window when the alert fired.
    pub count: u64,
    /// The rule's threshold.
    pub threshold: u64,
    /// The rule's window in seconds.
    pub window_seconds: i64,
    /// `window_end − window`.
    #[serde(serialize_with = "ser_time")]
    pub window_start: Micros,
    /// The event time that fired the alert.
    #[serde(serialize_with = "ser_time")]
    pub window_end: Micros,
    /// Counted events by response code.
    pub codes: BTreeMap<String, u64>,
    /// A few audit IDs of counted events, the most recent last.
    pub sample_audit_ids: Vec<String>,
    /// API servers (log streams or shipper hosts) the events came through, at most 10.
    pub hosts: Vec<String>,
    /// `user.username`s of counted events, at most 10.
    pub users: Vec<String>,
    /// Counted events by verb.
    pub verbs: BTreeMap<String, u64>,
    /// The IAM principals behind the counted events' users (EKS `user.extra.canonicalArn`,
    /// else `user.extra.arn`), at most 10, sorted; absent when no event carried one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub iam_principals: Vec<String>,
    /// How many distinct IAM principals the counted events carried (may exceed the list).
    #[serde(skip_serializing_if = "is_zero")]
    pub iam_principal_count: u64,
    /// The access key IDs the counted requests were signed with (`user.extra.accessKeyId`),
    /// at most 10, sorted; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_key_ids: Vec<String>,
    /// How many distinct access key IDs (may exceed the list).
    #[serde(skip_serializing_if = "is_zero")]
    pub access_key_id_count: u64,
    /// The cluster, when known (from the log group or configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Stable id of this alert: the same rule, key and firing time always give the same id,
    /// so re-processing the same events can be recognized downstream.
    pub alert_id: String,
    /// Rule kind: `threshold`, `distinct`, `spike`, or `key-cardinality` for the built-in
    /// alert that a rule is tracking more keys than its `max_keys`.
    pub kind: &'static str,
    /// The rule's description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `distinct` rules: distinct values of `distinct_of` in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_count: Option<u64>,
    /// `distinct` rules: some of those values (at most 10, sorted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_sample: Option<Vec<String>>,
    /// `spike` rules: the count in the baseline period before the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_count: Option<u64>,
    /// `spike` rules: the window's rate over the baseline's (absent when the baseline was
    /// empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// `key-cardinality` alerts: keys evicted from the rule so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evicted_keys: Option<u64>,
    /// Rules that fire on one request (`threshold: 1`): the request that fired it, so the
    /// alert explains itself without a trip to the audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// The request behind a one-request alert: what was asked, of which object, by whom and from
/// where. Values are copied as the audit event has them (sinks escape them for their medium).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Evidence {
    /// `auditID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
    /// `verb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// `requestURI`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_uri: Option<String>,
    /// `responseStatus.code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The object asked for.
    pub object: ObjectEvidence,
    /// `user.username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `impersonatedUser.username`, when the request impersonated someone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<String>,
    /// The IAM principal behind the user (EKS `user.extra.canonicalArn`, else `arn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_principal: Option<String>,
    /// `user.extra.accessKeyId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `sourceIPs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// `userAgent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The API server (log stream or shipper host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the body holds a pod spec (a pod, a workload's template, an ephemeral
    /// container): its containers (all of `containers`, `initContainers`,
    /// `ephemeralContainers`), at most 10, with the security flags the posture rules read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerEvidence>,
    /// The pod spec's `hostNetwork`, `hostPID`, `hostIPC` set to true, and its hostPath
    /// volumes' paths (at most 10).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_access: Vec<String>,
}

/// One container of a pod spec in an alert's evidence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ContainerEvidence {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `image`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `securityContext.privileged`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// `securityContext.allowPrivilegeEscalation`, when set (unset means allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
}

/// The object of a one-request alert.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ObjectEvidence {
    /// `requestObject.kind`, else `objectRef.resource` (a patch body has no kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `objectRef.apiGroup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// `objectRef.namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `objectRef.name`, else `requestObject.metadata.name` (a create names it in the body),
    /// else its `generateName` prefix (a controller's create: the API server adds a suffix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `objectRef.subresource` (`exec`, `ephemeralcontainers`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn ser_time<S: Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(*t))
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Alert {
    /// The alert as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, maps and integers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// FNV-1a, 64-bit: a stable hash (unlike `std`'s, it is the same across runs and builds).
pub(crate) fn stable_id(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
