//! ISO-8601 offset date-times and epoch milliseconds, without a date-time dependency.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use regex::Regex;

/// Whether `s` is an ISO-8601 offset date-time (`2015-06-05T15:12:38.000Z`,
/// `2007-12-03T08:15:30+01:00`), as Java's `OffsetDateTime.parse` accepts.
pub fn valid_offset_date_time(s: &str) -> bool {
    parse_millis(s).is_some()
}

/// Parses an ISO-8601 offset date-time (`2015-06-05T15:12:38.000Z`, `…+01:00`) to milliseconds
/// since the Unix epoch; `None` if it is not one.
pub fn parse_millis(s: &str) -> Option<i64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:[Zz]|[+-](\d{2}):?(\d{2})(?::?\d{2})?)$")
            .expect("static regex")
    });
    let trimmed = s.trim();
    let c = re.captures(trimmed)?;
    let n = |i: usize| {
        c.get(i)
            .map_or(0, |m| m.as_str().parse::<u32>().unwrap_or(99))
    };
    let (y, mo, d, h, mi, sec) = (n(1), n(2), n(3), n(4), n(5), n(6));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !((1..=days).contains(&d) && h < 24 && mi < 60 && sec < 60 && n(7) < 19 && n(8) < 60) {
        return None;
    }
    // Fraction: the digits after the seconds' '.', as milliseconds.
    let frac_ms = match trimmed.get(19..) {
        Some(rest) if rest.starts_with('.') => {
            let digits: String = rest[1..].chars().take_while(char::is_ascii_digit).collect();
            format!("{digits:0<3}")[..3].parse::<i64>().unwrap_or(0)
        }
        _ => 0,
    };
    let offset_min = match (c.get(7), c.get(8)) {
        (Some(oh), Some(om)) => {
            let sign = if trimmed[..oh.start()].ends_with('-') {
                -1
            } else {
                1
            };
            sign * (i64::from(n(7)) * 60 + i64::from(om.as_str().parse::<u32>().ok()?))
        }
        _ => 0,
    };
    let days = days_from_civil(i64::from(y), i64::from(mo), i64::from(d));
    let secs =
        days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_min * 60;
    Some(secs * 1000 + frac_ms)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_iso() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_epoch_millis(now.as_millis() as i64)
}

/// Formats milliseconds since the epoch as an ISO-8601 UTC timestamp.
pub fn format_epoch_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_date_times() {
        for ok in [
            "2015-06-05T15:12:38.000Z",
            "2007-12-03T08:15:30Z",
            "2007-12-03T08:15:30+01:00",
            "2016-02-29T00:00Z",
        ] {
            assert!(valid_offset_date_time(ok), "{ok}");
        }
        for bad in [
            "metrics",
            "2015-06-05",
            "2015-13-05T15:12:38Z",
            "2015-02-30T15:12:38Z",
            "2015-06-05T25:00:00Z",
            "2015-06-05T15:12:38",
        ] {
            assert!(!valid_offset_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn epoch_formatting() {
        assert_eq!(format_epoch_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_epoch_millis(1_433_517_158_000),
            "2015-06-05T15:12:38.000Z"
        );
        assert!(valid_offset_date_time(&now_iso()));
        for ms in [
            0i64,
            1_433_517_158_123,
            951_782_400_000,
            -86_400_000,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_millis(&format_epoch_millis(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_millis("2007-12-03T08:15:30+01:00"),
            parse_millis("2007-12-03T07:15:30Z")
        );
        assert_eq!(
            parse_millis("2007-12-03T08:15:30-01:30"),
            parse_millis("2007-12-03T09:45:30Z")
        );
        assert_eq!(
            parse_millis("2007-12-03T08:15Z"),
            parse_millis("2007-12-03T08:15:00.000Z")
        );
    }
}
