//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds and the three HTTP-date
//! forms, read against the caller's clock.

use crate::rfc3339;

/// The longest `Retry-After` honoured (one day), in ms.
pub const MAX_RETRY_AFTER_MS: i64 = 86_400_000;

/// Reads a `Retry-After` value (RFC 9110 §10.2.3) as milliseconds from
/// `now_ms`: delta-seconds, or an HTTP-date (IMF-fixdate, plus the obsolete
/// RFC 850 and asctime forms recipients must accept). A date in the past
/// gives 0; anything over a day is capped at [`MAX_RETRY_AFTER_MS`].
/// Unreadable values give `None`.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    let ms = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for an i64 is still "very long": cap it.
        v.parse::<i64>()
            .map_or(i64::MAX, |s| s.saturating_mul(1000))
    } else {
        http_date_ms(v, now_ms)?.saturating_sub(now_ms)
    };
    Some(ms.clamp(0, MAX_RETRY_AFTER_MS))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn month_number(name: &str) -> Option<u32> {
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    u32::try_from(i + 1).ok()
}

/// A weekday name, short (`Sun`) or long (`Sunday`); it is not checked
/// against the date.
fn is_weekday(name: &str) -> bool {
    WEEKDAYS
        .iter()
        .any(|d| d.eq_ignore_ascii_case(name) || d[..3].eq_ignore_ascii_case(name))
}

fn number(s: &str, min_len: usize, max_len: usize) -> Option<u32> {
    let ok = (min_len..=max_len).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten()
}

/// An HTTP-date as unix ms. RFC 850's two-digit year is read as the latest
/// year with those digits that is not more than 50 years after `now_ms`.
fn http_date_ms(s: &str, now_ms: i64) -> Option<i64> {
    let tokens: Vec<&str> = s.split_ascii_whitespace().collect();
    let weekday = |t: &str| t.strip_suffix(',').is_some_and(is_weekday);
    let (year, month, day, time) = match tokens.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, time, "GMT"] if weekday(wd) => (
            i64::from(number(y, 4, 4)?),
            month_number(m)?,
            number(d, 1, 2)?,
            *time,
        ),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [wd, date, time, "GMT"] if weekday(wd) => {
            let mut parts = date.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let yy = i64::from(number(y, 2, 2)?);
            let (this_year, _, _) =
                rfc3339::civil_from_days(now_ms.div_euclid(rfc3339::MS_PER_DAY));
            let mut year = this_year - this_year.rem_euclid(100) + yy;
            if year > this_year + 50 {
                year -= 100;
            }
            (year, month_number(m)?, number(d, 1, 2)?, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [wd, m, d, time, y] if is_weekday(wd) => (
            i64::from(number(y, 4, 4)?),
            month_number(m)?,
            number(d, 1, 2)?,
            *time,
        ),
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, mi, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    let (h, mi, sec) = (number(h, 2, 2)?, number(mi, 2, 2)?, number(sec, 2, 2)?);
    rfc3339::timestamp_ms(year, month, day, h, mi, sec, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testkit::*;

    #[test]
    fn retry_after() {
        // 2023-11-14T22:13:20Z is NOW, a Tuesday.
        let table = [
            ("0", Some(0)),
            ("5", Some(5_000)),
            (" 120 ", Some(120_000)),
            ("86400", Some(MAX_RETRY_AFTER_MS)),
            ("86401", Some(MAX_RETRY_AFTER_MS)),
            ("99999999999999999999999", Some(MAX_RETRY_AFTER_MS)),
            ("Tue, 14 Nov 2023 22:13:50 GMT", Some(30_000)),
            ("Tue, 14 Nov 2023 22:13:00 GMT", Some(0)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(0)),
            ("Fri, 17 Nov 2023 22:13:20 GMT", Some(MAX_RETRY_AFTER_MS)),
            ("Tuesday, 14-Nov-23 22:14:20 GMT", Some(60_000)),
            ("Tue Nov 14 22:15:20 2023", Some(120_000)),
            ("Tue Nov  4 22:15:20 2023", Some(0)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
            ("Tue, 14 Nov 2023 22:13:50 UTC", None),
            ("Tue, 31 Nov 2023 22:13:50 GMT", None),
            ("Tue, 14 Foo 2023 22:13:50 GMT", None),
            ("Xyz, 14 Nov 2023 22:13:50 GMT", None),
            ("Tue, 14 Nov 2023 25:13:50 GMT", None),
            ("Tue, 14 Nov 2023 22:13 GMT", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_retry_after(value, NOW), want, "{value:?}");
        }
    }

    #[test]
    fn http_dates() {
        let imf = http_date_ms("Wed, 21 Oct 2015 07:28:00 GMT", NOW);
        assert_eq!(imf, Some(1_445_412_480_000));
        assert_eq!(
            http_date_ms("Sunday, 06-Nov-94 08:49:37 GMT", NOW),
            Some(784_111_777_000)
        );
        assert_eq!(
            http_date_ms("Sun Nov  6 08:49:37 1994", NOW),
            Some(784_111_777_000)
        );
        // RFC 850 years: no more than 50 years ahead of now (2023).
        assert_eq!(
            http_date_ms("Monday, 01-Jan-73 00:00:00 GMT", NOW),
            rfc3339::parse("2073-01-01T00:00:00Z")
        );
        assert_eq!(
            http_date_ms("Monday, 01-Jan-74 00:00:00 GMT", NOW),
            rfc3339::parse("1974-01-01T00:00:00Z")
        );
        assert_eq!(http_date_ms("Sunday, 06-Nov-1994 08:49:37 GMT", NOW), None);
    }
}
