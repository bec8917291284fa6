//! Value parsers of the flags, and the conversions their values need.

use std::path::PathBuf;

use crate::sinks::json_lines::JsonLinesTarget;
use authwatch_rules::rule::parse_duration;

pub fn parse_sink(s: &str) -> Result<Option<JsonLinesTarget>, String> {
    match s {
        "stdout" | "-" => Ok(Some(JsonLinesTarget::Stdout)),
        "none" => Ok(None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(Some(JsonLinesTarget::File(PathBuf::from(p)))),
            _ => Err(format!(
                "`{s}` is not a sink: expected stdout, file:PATH or none (SNS and CloudWatch have their own flags: --sns-topic-arn, --cloudwatch-namespace)"
            )),
        },
    }
}

pub fn parse_http_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:9180 or `off`: {e}"))
}

pub fn parse_duration_arg(s: &str) -> Result<i64, String> {
    parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 30s, 2m, 1h"))
}

pub fn parse_start_at(s: &str) -> Result<crate::sources::StartAt, String> {
    crate::sources::StartAt::parse(s)
        .ok_or_else(|| format!("`{s}` is not `now`, an RFC 3339 time, or `-<duration>`"))
}

pub fn micros_to_duration(us: i64) -> std::time::Duration {
    std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0))
}
