//! [`RawRecord`]: what every source yields, and [`visit_events`]: the one way to turn it into
//! audit events, whatever wrapper the bytes came in.

use crate::event::{decode, AuditEvent, DecodeError, Decoded};
use crate::time::Micros;

/// One record as a source read it, before decoding.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRecord<'a> {
    /// The message bytes: one audit event (or a shipper's wrapper around one, or an EventList).
    pub message: &'a [u8],
    /// The CloudWatch log stream it came from (one per API-server instance), if known.
    pub stream: Option<&'a str>,
    /// The CloudWatch log group it came from, if known.
    pub log_group: Option<&'a str>,
    /// The CloudWatch event timestamp, if known.
    pub cw_timestamp: Option<Micros>,
    /// The CloudWatch event id, if known.
    pub event_id: Option<&'a str>,
}

/// The cluster name in an EKS control-plane log group (`/aws/eks/<cluster>/cluster`).
///
/// ```
/// use authwatch_event::record::cluster_from_log_group;
/// assert_eq!(cluster_from_log_group("/aws/eks/prod-eu/cluster"), Some("prod-eu"));
/// assert_eq!(cluster_from_log_group("/my/group"), None);
/// ```
pub fn cluster_from_log_group(group: &str) -> Option<&str> {
    let name = group.strip_prefix("/aws/eks/")?.strip_suffix("/cluster")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// One decoded event with the context its record gave it.
#[derive(Debug)]
pub struct EventView<'e, 'a> {
    /// The event.
    pub event: &'e AuditEvent<'a>,
    /// The `host` group key: the record's own `host` field, else the log stream.
    pub host: Option<&'e str>,
    /// The log group, if known.
    pub log_group: Option<&'e str>,
    /// Event time (see [`AuditEvent::time`]); `None` when the event has no usable time.
    pub time: Option<Micros>,
}

/// Decodes `record` and calls `f` once per audit event it holds (an `EventList` holds several,
/// a shipper's wrapper one), or once with the error if the record is not an event.
///
/// Wrappers are followed one level deep: a wrapper inside a wrapper is an error, not a loop.
pub fn visit_events(
    record: &RawRecord<'_>,
    f: &mut dyn FnMut(Result<EventView<'_, '_>, DecodeError>),
) {
    visit(record, record.message, None, 0, f);
}

fn visit(
    record: &RawRecord<'_>,
    bytes: &[u8],
    wrapper_host: Option<&str>,
    depth: u8,
    f: &mut dyn FnMut(Result<EventView<'_, '_>, DecodeError>),
) {
    match decode(bytes) {
        Err(e) => f(Err(e)),
        Ok(Decoded::Event(event)) => {
            let host = event
                .host
                .as_ref()
                .map(|h| h.as_str())
                .or(wrapper_host)
                .or(record.stream);
            let time = event.time(record.cw_timestamp);
            f(Ok(EventView {
                event: &event,
                host,
                log_group: record.log_group,
                time,
            }))
        }
        Ok(Decoded::Wrapped { inner, host }) => {
            if depth > 0 {
                return f(Err(DecodeError::NotAnEvent("wrapper inside a wrapper")));
            }
            let host = host.as_ref().map(|h| h.as_str()).or(wrapper_host);
            visit(record, inner.as_str().as_bytes(), host, depth + 1, f)
        }
        Ok(Decoded::List(items)) => {
            if depth > 1 {
                return f(Err(DecodeError::NotAnEvent("nested EventList")));
            }
            for item in items {
                visit(record, item.get().as_bytes(), wrapper_host, depth + 2, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (host, auditID), or the error's reason.
    type Got = Result<(Option<String>, Option<String>), &'static str>;

    fn collect(rec: &RawRecord<'_>) -> Vec<Got> {
        let mut out = Vec::new();
        visit_events(rec, &mut |r| {
            out.push(
                r.map(|v| {
                    (
                        v.host.map(str::to_owned),
                        v.event.audit_id.as_ref().map(|a| a.as_str().to_owned()),
                    )
                })
                .map_err(|e| e.reason()),
            )
        });
        out
    }

    #[test]
    fn host_prefers_the_record_then_the_wrapper_then_the_stream() {
        let rec = RawRecord {
            message: br#"{"auditID":"a","host":"own"}"#,
            stream: Some("kube-apiserver-audit-1"),
            ..Default::default()
        };
        assert_eq!(
            collect(&rec),
            vec![Ok((Some("own".into()), Some("a".into())))]
        );
        let rec = RawRecord {
            message: br#"{"log":"{\"auditID\":\"a\"}","host":"wrap"}"#,
            stream: Some("kube-apiserver-audit-1"),
            ..Default::default()
        };
        assert_eq!(
            collect(&rec),
            vec![Ok((Some("wrap".into()), Some("a".into())))]
        );
        let rec = RawRecord {
            message: br#"{"auditID":"a"}"#,
            stream: Some("kube-apiserver-audit-1"),
            ..Default::default()
        };
        assert_eq!(
            collect(&rec),
            vec![Ok((
                Some("kube-apiserver-audit-1".into()),
                Some("a".into())
            ))]
        );
    }

    #[test]
    fn lists_yield_each_item_and_wrappers_do_not_nest() {
        let rec = RawRecord {
            message:
                br#"{"kind":"EventList","items":[{"auditID":"a"},{"kind":0},{"auditID":"b"}]}"#,
            ..Default::default()
        };
        assert_eq!(
            collect(&rec),
            vec![
                Ok((None, Some("a".into()))),
                Err("not_an_event"),
                Ok((None, Some("b".into())))
            ]
        );
        let rec = RawRecord {
            message: br#"{"log":"{\"log\":\"{}\"}"}"#,
            ..Default::default()
        };
        assert_eq!(collect(&rec), vec![Err("not_an_event")]);
    }
}
