//! RFC 3339 timestamps and the proleptic Gregorian calendar, without a date
//! crate: import files carry `expired`/`last_refresh` as RFC 3339 strings,
//! exports write them back, and `Retry-After` HTTP-dates reuse the civil-date
//! helpers.
//!
//! Pure functions; every instant is unix milliseconds (`i64`, UTC).
//!
//! Choices:
//! - [`parse`] accepts `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with `t`/`z`
//!   in lower case and a space in place of `T` (RFC 3339 §5.6 note).
//!   Fractions of any length are read to the millisecond (truncated). A
//!   leap second (`:60`) is refused, as Go's and most parsers do.
//! - [`format()`] always writes UTC with a `Z`, and the fraction only when it
//!   is not zero (`.mmm`, exactly three digits). Instants outside the years
//!   0000–9999 are clamped to that range, so the output always parses back.

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1–12) of `year`; 0 for a month out of range.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's
/// `days_from_civil`). `month` is 1–12 and `day` 1–31; the caller checks
/// that the day exists (see [`timestamp_ms`]).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both fit: day ≤ 31, month ≤ 12.
    (year, month as u32, day as u32)
}

/// Unix milliseconds of a UTC civil date and time, or `None` when a field is
/// out of range (month 1–12, an existing day, hour < 24, minute < 60,
/// second < 60, milli < 1000, year 0–9999).
pub fn timestamp_ms(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
) -> Option<i64> {
    let ok = (0..=9999).contains(&year)
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60
        && milli < 1000;
    ok.then(|| {
        let secs = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
        days_from_civil(year, month, day) * MS_PER_DAY + secs * 1000 + i64::from(milli)
    })
}

/// Reads exactly `n` ASCII digits at the front of `s`.
fn digits(s: &[u8], n: usize) -> Option<(u32, &[u8])> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = s[..n]
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    Some((value, &s[n..]))
}

/// Expects the byte `c` at the front of `s`.
fn expect(s: &[u8], c: u8) -> Option<&[u8]> {
    match s.split_first() {
        Some((&b, rest)) if b == c => Some(rest),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp into unix milliseconds (see the module docs
/// for what is accepted). Surrounding whitespace is ignored.
pub fn parse(s: &str) -> Option<i64> {
    let s = s.trim().as_bytes();
    let (year, s) = digits(s, 4)?;
    let (month, s) = digits(expect(s, b'-')?, 2)?;
    let (day, s) = digits(expect(s, b'-')?, 2)?;
    let s = match s.split_first() {
        Some((b'T' | b't' | b' ', rest)) => rest,
        _ => return None,
    };
    let (hour, s) = digits(s, 2)?;
    let (minute, s) = digits(expect(s, b':')?, 2)?;
    let (second, mut s) = digits(expect(s, b':')?, 2)?;
    let mut milli = 0;
    if let Some(rest) = expect(s, b'.') {
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, b) in rest[..n.min(3)].iter().enumerate() {
            milli += u32::from(b - b'0') * [100, 10, 1][i];
        }
        s = &rest[n..];
    }
    let offset_min: i64 = match s.split_first() {
        Some((b'Z' | b'z', [])) => 0,
        Some((&sign @ (b'+' | b'-'), rest)) => {
            let (oh, rest) = digits(rest, 2)?;
            let (om, rest) = digits(expect(rest, b':')?, 2)?;
            if !rest.is_empty() || oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let local = timestamp_ms(i64::from(year), month, day, hour, minute, second, milli)?;
    Some(local - offset_min * 60_000)
}

/// Earliest instant [`format`] writes: 0000-01-01T00:00:00Z.
const MIN_MS: i64 = -62_167_219_200_000;
/// Latest instant [`format`] writes: 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;

/// Formats unix milliseconds as `YYYY-MM-DDTHH:MM:SS[.mmm]Z` (the fraction
/// only when not zero), clamped to the years 0000–9999.
pub fn format(ms: i64) -> String {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let (days, in_day) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
    let (y, m, d) = civil_from_days(days);
    let (secs, milli) = (in_day / 1000, in_day % 1000);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    if milli == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        // (y, m, d, days since epoch)
        let table = [
            (1970, 1, 1, 0),
            (1969, 12, 31, -1),
            (2000, 2, 29, 11_016),
            (2000, 3, 1, 11_017),
            (1900, 3, 1, -25_508),
            (2024, 2, 29, 19_782),
            (0, 1, 1, -719_528),
            (9999, 12, 31, 2_932_896),
        ];
        for (y, m, d, days) in table {
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert_eq!(civil_from_days(days), (y, m, d), "{days}");
        }
        // Every day over a few centuries round-trips and is consecutive.
        let mut prev = days_from_civil(1599, 12, 31);
        for day in days_from_civil(1600, 1, 1)..days_from_civil(2401, 1, 1) {
            let (y, m, d) = civil_from_days(day);
            assert!(d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), day);
            assert_eq!(day, prev + 1);
            prev = day;
        }
    }

    #[test]
    fn leap_years() {
        for (y, leap) in [
            (2000, true),
            (1900, false),
            (2024, true),
            (2023, false),
            (2100, false),
            (0, true),
        ] {
            assert_eq!(is_leap_year(y), leap, "{y}");
            assert_eq!(days_in_month(y, 2), if leap { 29 } else { 28 });
        }
        assert_eq!(days_in_month(2024, 13), 0);
    }

    #[test]
    fn parses() {
        let table: [(&str, Option<i64>); 30] = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2015-10-21T07:28:00Z", Some(1_445_412_480_000)),
            ("2015-10-21t07:28:00z", Some(1_445_412_480_000)),
            ("2015-10-21 07:28:00Z", Some(1_445_412_480_000)),
            ("  2015-10-21T07:28:00Z\n", Some(1_445_412_480_000)),
            ("2015-10-21T09:28:00+02:00", Some(1_445_412_480_000)),
            ("2015-10-21T02:58:00-04:30", Some(1_445_412_480_000)),
            ("2015-10-21T07:28:00-00:00", Some(1_445_412_480_000)),
            ("2015-10-21T07:28:00.5Z", Some(1_445_412_480_500)),
            ("2015-10-21T07:28:00.123Z", Some(1_445_412_480_123)),
            // Go's RFC3339Nano and Python's microseconds: truncated to ms.
            (
                "2015-10-21T07:28:00.123456789+00:00",
                Some(1_445_412_480_123),
            ),
            ("2025-08-06T20:41:36.232376Z", Some(1_754_512_896_232)),
            ("2024-02-29T23:59:59.999Z", Some(1_709_251_199_999)),
            ("1969-12-31T23:59:59Z", Some(-1000)),
            ("0000-01-01T00:00:00Z", Some(MIN_MS)),
            ("9999-12-31T23:59:59.999Z", Some(MAX_MS)),
            // Out of range fields.
            ("2023-02-29T00:00:00Z", None),
            ("2024-13-01T00:00:00Z", None),
            ("2024-00-01T00:00:00Z", None),
            ("2024-04-31T00:00:00Z", None),
            ("2024-01-01T24:00:00Z", None),
            ("2024-01-01T00:60:00Z", None),
            ("2024-01-01T00:00:60Z", None),
            ("2024-01-01T00:00:00+24:00", None),
            // Garbage and near misses.
            ("", None),
            ("2024-01-01", None),
            ("2024-01-01T00:00:00", None),
            ("2024-01-01T00:00:00.Z", None),
            ("2024-01-01T00:00:00+0100", None),
            ("2024-1-01T00:00:00Z", None),
        ];
        for (s, want) in table {
            assert_eq!(parse(s), want, "{s:?}");
        }
        for s in [
            "2024-01-01T00:00:00Zjunk",
            "２０２４-01-01T00:00:00Z",
            "1700000000",
            "+2024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats() {
        let table = [
            (0, "1970-01-01T00:00:00Z"),
            (1_445_412_480_000, "2015-10-21T07:28:00Z"),
            (1_445_412_480_007, "2015-10-21T07:28:00.007Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (i64::MIN, "0000-01-01T00:00:00Z"),
            (i64::MAX, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in table {
            assert_eq!(format(ms), want, "{ms}");
            assert_eq!(parse(want), Some(ms.clamp(MIN_MS, MAX_MS)), "{want}");
        }
    }

    #[test]
    fn timestamp_checks_ranges() {
        assert_eq!(timestamp_ms(1970, 1, 1, 0, 0, 0, 0), Some(0));
        assert_eq!(timestamp_ms(10_000, 1, 1, 0, 0, 0, 0), None);
        assert_eq!(timestamp_ms(-1, 1, 1, 0, 0, 0, 0), None);
        assert_eq!(timestamp_ms(2024, 1, 0, 0, 0, 0, 0), None);
        assert_eq!(timestamp_ms(2024, 1, 1, 0, 0, 0, 1000), None);
    }
}
