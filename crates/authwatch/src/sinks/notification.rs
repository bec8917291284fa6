//! Human-readable renderings of an alert (a notification subject and body), safe to show.
//!
//! Every value in an alert that came from an event (user names, hosts, key values, audit
//! IDs, verbs) is attacker-controlled: a request to the API server chooses its own user agent
//! and, when unauthenticated, much of what ends up in the audit log. Before such a value is
//! put in a subject line, an e-mail or a chat message it goes through [`clean`]: control
//! characters (newlines, carriage returns, ANSI escapes, C1 controls) and bidirectional
//! overrides are removed, markup-significant characters are replaced by look-alikes that no
//! renderer interprets, and its length is capped. The JSON rendering needs none of that:
//! `serde_json` escapes every control character, so no value can add a field.

use std::fmt::Write as _;

use authwatch_event::time::format_millis;
use authwatch_rules::Alert;

/// Longest event-derived value kept in a human-readable text, in characters.
pub const MAX_VALUE_CHARS: usize = 200;

/// SNS's limit on `Subject`: 100 ASCII characters, no line breaks.
pub const MAX_SUBJECT_CHARS: usize = 100;

/// Whether a character must not reach a terminal, a mail header or a chat renderer as is.
fn is_unsafe_control(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates reorder what a reader sees.
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        // Zero-width and line/paragraph separators.
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// Makes an event-derived value safe for human-readable text: control characters become a
/// space (so words do not run together), runs of spaces collapse, markup-significant
/// characters are replaced (`<` `>` → `‹` `›`, `&` → `＆`, `` ` `` → `'`, `@` → `＠` so a chat
/// renderer cannot be told to mention `@channel`), and the result is at most `max` characters
/// (ending in `…` when cut).
pub fn clean(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max * 4));
    let mut chars = 0usize;
    let mut last_space = false;
    for c in value.chars() {
        let c = if is_unsafe_control(c) { ' ' } else { c };
        let c = match c {
            '<' => '‹',
            '>' => '›',
            '&' => '＆',
            '`' => '\'',
            '@' => '＠',
            c => c,
        };
        if c == ' ' {
            if last_space || chars == 0 {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if chars == max {
            // Cut: drop a trailing space and mark the cut.
            while out.ends_with(' ') {
                out.pop();
            }
            out.push('…');
            return out;
        }
        out.push(c);
        chars += 1;
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// [`clean`], then ASCII only (other characters become `?`), for a mail subject.
fn clean_ascii(value: &str, max: usize) -> String {
    clean(value, max)
        .chars()
        .map(|c| match c {
            '‹' => '<',
            '›' => '>',
            '＆' => '&',
            '＠' => '@',
            '…' => '~',
            c if c.is_ascii() => c,
            _ => '?',
        })
        .collect()
}

/// Whether every counted response code is 401 or 403 (the rule is about denied requests).
fn all_denied(alert: &Alert) -> bool {
    !alert.codes.is_empty() && alert.codes.keys().all(|c| c == "401" || c == "403")
}

/// The key's values, e.g. `198.51.100.7` or `alice, 10.0.0.1`.
fn key_values(alert: &Alert) -> String {
    alert
        .group
        .0
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A one-line headline: what happened, how much, from where.
fn headline_parts(alert: &Alert) -> (String, String) {
    if let Some(e) = &alert.evidence {
        // One request: say what it was, of which object, by whom.
        let o = &e.object;
        let object = match (&o.namespace, &o.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            (Some(ns), None) => format!("{ns}/-"),
            (None, None) => "-".to_owned(),
        };
        let what = format!(
            "{}: {} {} {object} by {}",
            alert.rule,
            e.verb.as_deref().unwrap_or("-"),
            o.kind.as_deref().unwrap_or("-"),
            e.user.as_deref().unwrap_or("-")
        );
        return (what, String::new());
    }
    let what = match alert.kind {
        "distinct" => format!(
            "{} distinct values",
            alert.distinct_count.unwrap_or(alert.count)
        ),
        "key-cardinality" => format!(
            "too many keys in {} ({} evicted)",
            alert.rule,
            alert.evicted_keys.unwrap_or(0)
        ),
        _ if all_denied(alert) => format!("{} denied requests", alert.count),
        _ => format!("{} matching events", alert.count),
    };
    let what = if alert.kind == "spike" {
        match alert.ratio {
            Some(r) => format!("spike: {what} ({r:.1}x baseline)"),
            None => format!("spike: {what} (none before)"),
        }
    } else {
        what
    };
    (what, key_values(alert))
}

/// `Subject` for SNS (and e-mail): `[authwatch] high: 47 denied requests from 198.51.100.7
/// (prod)`, ASCII, no line breaks, at most [`MAX_SUBJECT_CHARS`].
pub fn subject(alert: &Alert) -> String {
    let (what, key) = headline_parts(alert);
    let mut s = format!("[authwatch] {}: {what}", alert.severity.as_str());
    let cluster = alert
        .cluster
        .as_deref()
        .map(|c| format!(" ({})", clean_ascii(c, 40)))
        .unwrap_or_default();
    if !key.is_empty() {
        // The key gets what room is left, so the severity and count are never cut off.
        let room = MAX_SUBJECT_CHARS
            .saturating_sub(s.len() + cluster.len() + " from ".len())
            .max(1);
        s.push_str(" from ");
        s.push_str(&clean_ascii(&key, room));
    }
    s.push_str(&cluster);
    let mut s = clean_ascii(&s, MAX_SUBJECT_CHARS);
    s.truncate(MAX_SUBJECT_CHARS);
    s
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{}={n}", clean(k, 40)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One value, cleaned, or `-`.
fn one(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| clean(v, MAX_VALUE_CHARS))
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values
        .iter()
        .map(|v| clean(v, MAX_VALUE_CHARS))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A plain-text body for e-mail and chat: the headline, the key, the window, then who, from
/// where and on which API server, sample audit IDs, and how to investigate.
pub fn text_body(alert: &Alert) -> String {
    let (what, _) = headline_parts(alert);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "authwatch alert: {} ({}) - {}",
        clean(&alert.rule, 100),
        alert.severity.as_str(),
        // A one-request headline holds the request's own values.
        clean(&what, 400)
    );
    if let Some(c) = &alert.cluster {
        let _ = writeln!(t, "Cluster:      {}", clean(c, 100));
    }
    for (field, value) in &alert.group.0 {
        let _ = writeln!(
            t,
            "Key:          {} = {}",
            clean(field, 100),
            clean(value, MAX_VALUE_CHARS)
        );
    }
    let _ = writeln!(
        t,
        "Window:       {} to {} ({} s)",
        format_millis(alert.window_start),
        format_millis(alert.window_end),
        alert.window_seconds
    );
    let _ = writeln!(
        t,
        "Count:        {} (threshold {})",
        alert.count, alert.threshold
    );
    if let (Some(base), Some(r)) = (alert.baseline_count, alert.ratio) {
        let _ = writeln!(t, "Baseline:     {base} events before ({r:.1}x)");
    }
    if let Some(d) = alert.distinct_count {
        let _ = writeln!(t, "Distinct:     {d}");
    }
    if let Some(s) = &alert.distinct_sample {
        let _ = writeln!(t, "Some values:  {}", list(s));
    }
    if !alert.codes.is_empty() {
        let _ = writeln!(t, "Codes:        {}", counts(&alert.codes));
    }
    let _ = writeln!(t, "Users:        {}", list(&alert.users));
    // The IAM principal behind the Kubernetes user (EKS): what CloudTrail is searched by.
    for (label, values, total) in [
        (
            "IAM:          ",
            &alert.iam_principals,
            alert.iam_principal_count,
        ),
        (
            "Access keys:  ",
            &alert.access_key_ids,
            alert.access_key_id_count,
        ),
    ] {
        if !values.is_empty() {
            let more = if total > values.len() as u64 {
                format!(" ({total} in all)")
            } else {
                String::new()
            };
            let _ = writeln!(t, "{label}{}{more}", list(values));
        }
    }
    let _ = writeln!(t, "API servers:  {}", list(&alert.hosts));
    if !alert.verbs.is_empty() {
        let _ = writeln!(t, "Verbs:        {}", counts(&alert.verbs));
    }
    let _ = writeln!(t, "Audit IDs:    {}", list(&alert.sample_audit_ids));
    // A one-request alert: the request itself.
    if let Some(e) = &alert.evidence {
        let o = &e.object;
        let _ = writeln!(
            t,
            "Object:       kind {} namespace {} name {}{}",
            one(o.kind.as_deref()),
            one(o.namespace.as_deref()),
            one(o.name.as_deref()),
            o.subresource
                .as_deref()
                .map(|s| format!(" subresource {}", clean(s, MAX_VALUE_CHARS)))
                .unwrap_or_default()
        );
        let _ = writeln!(
            t,
            "Request:      {} {} -> {}",
            one(e.verb.as_deref()),
            one(e.request_uri.as_deref()),
            e.code.map_or_else(|| "-".to_owned(), |c| c.to_string())
        );
        for c in &e.containers {
            let mut flags = Vec::new();
            if c.privileged == Some(true) {
                flags.push("privileged");
            }
            if c.allow_privilege_escalation == Some(true) {
                flags.push("allowPrivilegeEscalation");
            }
            let _ = writeln!(
                t,
                "Container:    {} image {}{}",
                one(c.name.as_deref()),
                one(c.image.as_deref()),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", flags.join(", "))
                }
            );
        }
        if !e.host_access.is_empty() {
            let _ = writeln!(t, "Host access:  {}", list(&e.host_access));
        }
        let _ = writeln!(
            t,
            "By:           {} (IAM {}) from {} via {} ({})",
            one(e.user.as_deref()),
            one(e.iam_principal.as_deref()),
            list(&e.source_ips),
            one(e.host.as_deref()),
            one(e.user_agent.as_deref())
        );
    }
    if !alert.description.is_empty() {
        let _ = writeln!(t, "\n{}", clean(&alert.description, 2000));
    }
    // Shell-quoted, so that pasting the line cannot run a command hidden in a value.
    let key = alert
        .group
        .0
        .first()
        .map(|(f, v)| {
            let kv = format!("{}={}", clean(f, 100), clean(v, MAX_VALUE_CHARS));
            format!(" --key '{}'", kv.replace('\'', "'\\''"))
        })
        .unwrap_or_default();
    let _ = writeln!(t, "\nInvestigate: authwatch investigate INPUTS{key}");
    let _ = writeln!(t, "Alert id:     {}", clean(&alert.alert_id, 40));
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use authwatch_rules::alert::Group;
    use authwatch_rules::rule::Severity;
    use std::collections::BTreeMap;

    pub(crate) fn alert_with(key: &str, user: &str) -> Alert {
        Alert {
            rule: "denied-by-source-ip".into(),
            severity: Severity::High,
            group: Group(vec![("sourceIPs".into(), key.into())]),
            count: 47,
            threshold: 20,
            window_seconds: 300,
            window_start: 1_700_000_000_000_000,
            window_end: 1_700_000_300_000_000,
            codes: BTreeMap::from([("403".into(), 40), ("401".into(), 7)]),
            sample_audit_ids: vec!["a1".into()],
            hosts: vec!["kube-apiserver-audit-1".into()],
            users: vec![user.into()],
            verbs: BTreeMap::from([("list".into(), 47)]),
            iam_principals: Vec::new(),
            iam_principal_count: 0,
            access_key_ids: Vec::new(),
            access_key_id_count: 0,
            cluster: Some("prod".into()),
            alert_id: "0123456789abcdef".into(),
            kind: "threshold",
            description: String::new(),
            distinct_count: None,
            distinct_sample: None,
            baseline_count: None,
            ratio: None,
            evicted_keys: None,
            evidence: None,
        }
    }

    #[test]
    fn subject_reads_like_the_issue_example() {
        let a = alert_with("198.51.100.7", "alice");
        assert_eq!(
            subject(&a),
            "[authwatch] high: 47 denied requests from 198.51.100.7 (prod)"
        );
    }

    #[test]
    fn hostile_values_cannot_break_a_subject_or_body() {
        let hostile = [
            "x\r\nSubject: forged\r\nBcc: evil@example.com",
            "\u{1b}[2J\u{1b}]0;owned\u{7}",
            "<script>alert(1)</script>",
            "\"><img src=x onerror=alert(1)>",
            "@channel @here",
            "x'; rm -rf ~; echo '",
            "\u{202E}gpj.exe",
            "\u{85}next-line\u{2028}sep",
        ];
        for h in hostile {
            let a = alert_with(h, h);
            let s = subject(&a);
            assert!(s.len() <= MAX_SUBJECT_CHARS, "{s:?}");
            assert!(s.is_ascii(), "{s:?}");
            assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
            let body = text_body(&a);
            for line in body.lines() {
                assert!(!line.starts_with("Subject:"), "{line:?}");
                assert!(!line.starts_with("Bcc:"), "{line:?}");
            }
            assert!(!body.contains('\u{1b}'), "{body:?}");
            assert!(!body.contains('\r'), "{body:?}");
            assert!(!body.contains('<') && !body.contains('>'), "{body:?}");
            assert!(!body.contains('@'), "{body:?}");
            assert!(!body.contains('\u{202E}') && !body.contains('\u{85}'));
            let investigate = body
                .lines()
                .find(|l| l.starts_with("Investigate:"))
                .unwrap();
            let quoted = investigate.split_once("--key ").unwrap().1;
            assert!(
                quoted.starts_with('\'') && quoted.ends_with('\''),
                "{quoted}"
            );
            let inner = &quoted[1..quoted.len() - 1];
            assert!(!inner.replace("'\\''", "").contains('\''), "{quoted}");
            // Every line is one the template wrote (a label, a blank line, or the headline).
            assert_eq!(
                body.lines().count(),
                text_body(&alert_with("k", "u")).lines().count()
            );
        }
    }

    #[test]
    fn the_body_names_the_iam_principals_and_access_keys_cleaned() {
        let mut a = alert_with("198.51.100.7", "admin");
        assert!(
            !text_body(&a).contains("IAM:"),
            "no line without a principal"
        );
        a.iam_principals = vec![
            "arn:aws:iam::111122223333:role/ops".into(),
            "arn:aws:iam::111122223333:role/x\r\nSubject: forged <b>".into(),
        ];
        a.iam_principal_count = 12;
        a.access_key_ids = vec!["ASIAEXAMPLE".into()];
        a.access_key_id_count = 1;
        let body = text_body(&a);
        let iam = body.lines().find(|l| l.starts_with("IAM:")).unwrap();
        assert!(iam.contains("arn:aws:iam::111122223333:role/ops"), "{iam}");
        assert!(iam.ends_with("(12 in all)"), "{iam}");
        let keys = body
            .lines()
            .find(|l| l.starts_with("Access keys:"))
            .unwrap();
        assert_eq!(keys, "Access keys:  ASIAEXAMPLE");
        for line in body.lines() {
            assert!(!line.starts_with("Subject:"), "{line:?}");
        }
        assert!(!body.contains('\r') && !body.contains('<'), "{body:?}");
    }

    #[test]
    fn a_one_request_alert_shows_its_request_cleaned() {
        use authwatch_rules::alert::{Evidence, ObjectEvidence};
        let mut a = alert_with("prod/web", "admin");
        a.evidence = Some(Evidence {
            audit_id: Some("a1".into()),
            verb: Some("create".into()),
            request_uri: Some("/api/v1/namespaces/prod/pods".into()),
            code: Some(201),
            object: ObjectEvidence {
                kind: Some("Pod".into()),
                namespace: Some("prod".into()),
                name: Some("web\r\nSubject: forged".into()),
                ..Default::default()
            },
            user: Some("admin".into()),
            iam_principal: Some("arn:aws:iam::111122223333:role/ops".into()),
            source_ips: vec!["198.51.100.7".into()],
            user_agent: Some("kubectl/v1.31 <script>".into()),
            host: Some("kube-apiserver-audit-1".into()),
            containers: vec![authwatch_rules::alert::ContainerEvidence {
                name: Some("app".into()),
                image: Some("docker.io/evil/miner:latest\nSubject: x".into()),
                privileged: Some(true),
                allow_privilege_escalation: None,
            }],
            host_access: vec!["hostPID".into(), "hostPath /".into()],
            ..Default::default()
        });
        let subject = subject(&a);
        assert!(
            subject.starts_with("[authwatch] high: denied-by-source-ip: create Pod prod/web"),
            "{subject}"
        );
        assert!(
            !subject.contains('\r') && !subject.contains('\n'),
            "{subject}"
        );
        let body = text_body(&a);
        let object = body.lines().find(|l| l.starts_with("Object:")).unwrap();
        assert!(
            object.contains("kind Pod namespace prod name web"),
            "{object}"
        );
        let request = body.lines().find(|l| l.starts_with("Request:")).unwrap();
        assert_eq!(
            request,
            "Request:      create /api/v1/namespaces/prod/pods -> 201"
        );
        let container = body.lines().find(|l| l.starts_with("Container:")).unwrap();
        assert!(
            container.starts_with("Container:    app image docker.io/evil/miner:latest")
                && container.ends_with("(privileged)"),
            "{container}"
        );
        let host = body
            .lines()
            .find(|l| l.starts_with("Host access:"))
            .unwrap();
        assert_eq!(host, "Host access:  hostPID, hostPath /");
        let by = body.lines().find(|l| l.starts_with("By:")).unwrap();
        assert!(by.contains("arn:aws:iam::111122223333:role/ops"), "{by}");
        assert!(by.contains("198.51.100.7"), "{by}");
        assert!(!body.lines().any(|l| l.starts_with("Subject:")), "{body}");
        assert!(!body.contains('<') && !body.contains('\r'), "{body}");
    }

    #[test]
    fn long_values_are_capped() {
        let big = "a".repeat(200_000);
        let a = alert_with(&big, &big);
        assert_eq!(subject(&a).len(), MAX_SUBJECT_CHARS);
        assert!(subject(&a).starts_with("[authwatch] high: 47 denied requests from aaa"));
        let body = text_body(&a);
        assert!(body.len() < 4_000, "{}", body.len());
        assert!(body.contains('…'));
    }

    #[test]
    fn clean_collapses_and_cuts() {
        assert_eq!(clean("  a\n\n b\t", 10), "a b");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("a&b`c", 10), "a＆b'c");
    }
}
