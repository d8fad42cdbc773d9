//! Wall-clock times at the API's edge: reading the RFC 3339 times and dates operators and
//! customers send, and writing unix milliseconds back as RFC 3339. Decisions take the
//! milliseconds as plain inputs; only handlers read the clock.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::ControlError;

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2026-12-01T10:00:00Z` (any offset), or a date `2026-12-01` meaning its UTC midnight.
pub(crate) fn parse_time(what: &str, value: &str) -> Result<i64, ControlError> {
    let bad = || {
        ControlError::BadRequest(format!(
            "{what}: {value:?} is not an RFC 3339 time (2026-12-01T10:00:00Z) or a date \
             (2026-12-01)"
        ))
    };
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date =
        Date::parse(value, format_description!("[year]-[month]-[day]")).map_err(|_| bad())?;
    let t = date.midnight().assume_offset(UtcOffset::UTC);
    Ok(t.unix_timestamp() * 1000)
}

/// Unix milliseconds as RFC 3339 UTC.
pub(crate) fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The first day of the month of `ms`, and of the month after, as unix milliseconds.
pub(crate) fn month_of(ms: i64) -> (i64, i64) {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let first = |y: i32, m: time::Month| {
        Date::from_calendar_date(y, m, 1)
            .map(|d| d.midnight().assume_offset(UtcOffset::UTC).unix_timestamp() * 1000)
            .unwrap_or(0)
    };
    let (y, m) = (t.year(), t.month());
    let next_year = if m == time::Month::December { y + 1 } else { y };
    (first(y, m), first(next_year, m.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_and_dates() {
        assert_eq!(parse_time("t", "1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(parse_time("t", "1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("t", "1970-01-01T01:00:00+01:00").unwrap(), 0);
        for bad in ["", "yesterday", "1970-13-01", "1970-01-01T25:00:00Z"] {
            assert!(parse_time("t", bad).is_err(), "{bad}");
        }
        assert_eq!(format_ms(86_400_000), "1970-01-02T00:00:00Z");
    }

    #[test]
    fn months_roll_over_the_year() {
        let dec = parse_time("t", "2026-12-15").unwrap();
        let (from, to) = month_of(dec);
        assert_eq!(format_ms(from), "2026-12-01T00:00:00Z");
        assert_eq!(format_ms(to), "2027-01-01T00:00:00Z");
    }
}
