//! Durations as rules write them (`90s`, `5m`, `1h30m`).

use authwatch_event::Micros;

/// Parses a duration as rules write it: `90s`, `5m`, `1h`, `1d`, or combinations (`1h30m`).
///
/// ```
/// use authwatch_rules::rule::parse_duration;
/// assert_eq!(parse_duration("5m"), Some(300_000_000));
/// assert_eq!(parse_duration("1h30m"), Some(5_400_000_000));
/// assert_eq!(parse_duration("5"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Micros> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(i64::from(d))?,
            );
        } else {
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return None,
            };
            total = total.checked_add(num.take()?.checked_mul(unit)?)?;
        }
    }
    if num.is_some() {
        return None;
    }
    total.checked_mul(1_000_000)
}
