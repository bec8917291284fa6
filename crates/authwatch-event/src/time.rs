//! Event timestamps.
//!
//! Audit logs carry RFC 3339 times with micro- or nanoseconds (`Z` or an offset), and some
//! exporters write `2024-11-13 23:50:32.672347000` (UTC, space-separated). All of them become
//! microseconds since the Unix epoch: `i64` microseconds cover far more than any calendar year
//! a log can name, so a hostile year 9999 cannot overflow anything.
//!
//! The parser is hand-written because it runs once per decoded event on the hot path and only
//! has to accept this narrow family of layouts.

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// Microseconds in one second.
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// Parses an RFC 3339 timestamp (or the space-separated UTC form) into [`Micros`].
///
/// Returns `None` for anything malformed or out of range: callers treat that as "no usable time".
///
/// ```
/// use authwatch_event::time::parse_timestamp;
/// assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1_500_000));
/// assert_eq!(parse_timestamp("1970-01-01 00:00:01.500000000"), Some(1_500_000));
/// assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
/// assert_eq!(parse_timestamp("yesterday"), None);
/// ```
pub fn parse_timestamp(s: &str) -> Option<Micros> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let year = digits(b, 0, 4)? as i64;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second; it is folded onto :59 so that ordering is kept.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_micros: i64 = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                frac_micros = frac_micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..6 {
            frac_micros *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)? as i64;
            let om = digits(b, i + 4, 2)? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second.min(59))
            - offset_secs;
    Some(secs * MICROS_PER_SEC + frac_micros)
}

/// Formats [`Micros`] as RFC 3339 UTC with milliseconds, the form alert lines use
/// (`2026-11-20T10:04:12.733Z`).
///
/// ```
/// use authwatch_event::time::format_millis;
/// assert_eq!(format_millis(1_500_000), "1970-01-01T00:00:01.500Z");
/// ```
pub fn format_millis(t: Micros) -> String {
    let secs = t.div_euclid(MICROS_PER_SEC);
    let millis = t.rem_euclid(MICROS_PER_SEC) / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        millis
    )
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_layouts_audit_logs_use() {
        let base = parse_timestamp("2023-01-27T18:28:08Z").unwrap();
        assert_eq!(base, 1_674_844_088 * MICROS_PER_SEC);
        assert_eq!(
            parse_timestamp("2023-01-27T18:28:08.129781Z"),
            Some(base + 129_781)
        );
        assert_eq!(
            parse_timestamp("2023-01-27T18:28:08.129781123Z"),
            Some(base + 129_781)
        );
        assert_eq!(
            parse_timestamp("2023-01-27 18:28:08.129781000"),
            Some(base + 129_781)
        );
        assert_eq!(
            parse_timestamp("2023-01-27T19:28:08.1+01:00"),
            Some(base + 100_000)
        );
        assert_eq!(parse_timestamp("2023-01-27T17:28:08-01:00"), Some(base));
        assert_eq!(
            parse_timestamp("9999-12-31T23:59:59Z"),
            Some(253_402_300_799 * MICROS_PER_SEC)
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2023-01-27",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-01-27T24:00:00Z",
            "2023-01-27T18:28:08.Z",
            "2023-01-27T18:28:08Zjunk",
            "2023/01/27T18:28:08Z",
            "2023-01-27T18:28:08+0100",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn format_round_trips_millis() {
        for s in [
            "1970-01-01T00:00:00.000Z",
            "2026-11-20T10:04:12.733Z",
            "2000-02-29T23:59:59.999Z",
            "1969-12-31T23:59:59.001Z",
        ] {
            assert_eq!(format_millis(parse_timestamp(s).unwrap()), s);
        }
    }
}
