//! Guard timestamps (SPEC §3.3): parsed and compared as instants, never as text.

use chrono::{NaiveDate, NaiveTime};

/// A point in time, UTC, to the nanosecond; ordered chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    secs: i64,
    nanos: u32,
}

/// Parses the timestamp forms the v1 sources produce: RFC 3339 with any
/// offset, `YYYY-MM-DD[T ]HH:MM:SS[.fraction][offset]` with offsets `Z`,
/// `±HH`, `±HHMM` or `±HH:MM`, naive forms (taken as UTC) and bare dates
/// (midnight UTC). Anything else is `None`.
pub fn parse(text: &str) -> Option<Instant> {
    let s = text.trim();
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(digits(&b[0..4])?).ok()?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    if b.len() == 10 {
        return Some(Instant {
            secs: date.and_time(NaiveTime::MIN).and_utc().timestamp(),
            nanos: 0,
        });
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let Some((b'.', tail)) = rest.split_first() {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in tail[..n].iter().enumerate() {
            // Digits past nanoseconds cannot change the order of real data.
            if i < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
        }
        for _ in n..9 {
            nanos *= 10;
        }
        rest = &tail[n..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (h, m) = match tail {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                [h1, h2, b':', m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let off = i64::from(h) * 3600 + i64::from(m) * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    // 24:00:00 is ISO 8601's end of day; PostgreSQL accepts it too.
    let (time, carry) = if hour == 24 && minute == 0 && second == 0 && nanos == 0 {
        (NaiveTime::MIN, 86_400)
    } else {
        (NaiveTime::from_hms_opt(hour, minute, second)?, 0)
    };
    Some(Instant {
        secs: date.and_time(time).and_utc().timestamp() + carry - offset_secs,
        nanos,
    })
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Reads a guard timestamp from a JSON field value: strings are parsed; other
/// JSON types are not timestamps.
pub fn from_json(value: Option<&serde_json::Value>) -> Option<Instant> {
    match value {
        Some(serde_json::Value::String(s)) => parse(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_instant_in_different_forms() {
        let a = parse("2024-03-03T03:45:30.500000+00:00").unwrap();
        for form in [
            "2024-03-03T09:15:30.5+05:30",
            "2024-03-03 03:45:30.5",
            "2024-03-03T03:45:30.50Z",
            "2024-03-02T23:45:30.500-0400",
            "2024-03-03 04:45:30.5+01",
        ] {
            assert_eq!(parse(form), Some(a), "{form}");
        }
    }

    #[test]
    fn orders_chronologically_not_textually() {
        // Textually "2024-03-02T00..." < "2024-03-02 01...", but it is later.
        let a = parse("2024-03-02T00:00:00-05:00").unwrap();
        let b = parse("2024-03-02 01:00:00").unwrap();
        assert!(a > b);
        assert!(parse("2024-03-02T00:00:00.000001Z") > parse("2024-03-02T00:00:00Z"));
        assert!(parse("1970-01-01") < parse("2099-12-31T23:59:59"));
        assert!(parse("9999-12-31T23:59:59.999999+00:00").is_some());
    }

    #[test]
    fn rejects_non_timestamps() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "2024-02-30T00:00:00",
            "2024-03-02T00:00",
            "2024-03-02T00:00:00+5",
            "2024-03-02T00:00:00.",
            "1709337600",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
