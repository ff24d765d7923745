//! Times as text, in one place: RFC 3339 with milliseconds (event times, `fetchedAt`, status
//! columns), the lenient ISO 8601 of the API's `lastAnalyzedAt`, and the HTTP-date of
//! `Retry-After`; and the proleptic Gregorian calendar they need. Pure: no clock (callers pass
//! the time), no dependency beyond humantime, which writes every RFC 3339 text here. The
//! simulator (`crates/sim`) keeps its own, since it shares nothing with the client.
//!
//! Parsing is our own rather than humantime's: its `parse_rfc3339` takes a leap second `:60` as
//! `:59`, an empty fraction and more than nine fraction digits, and refuses `t`, `z` and
//! `-00:00`; the event times read back from the ledger and from CloudEvents are pinned to the
//! stricter forms below.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest instant RFC 3339 can write with a four-digit year: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds, e.g. `2026-04-17T10:30:00.123Z`, of milliseconds since the
/// Unix epoch. Times past the year 9999 are clamped to its last millisecond rather than written
/// in a form parsers reject.
pub fn format_rfc3339_ms(time_ms: u64) -> String {
    let ms = time_ms.min(MAX_TIME_MS);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// [`format_rfc3339_ms`] of a `SystemTime`: sub-millisecond parts dropped, times before 1970
/// written as the epoch, times past 9999 clamped (humantime would panic on either).
pub fn format_rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format_rfc3339_ms(ms)
}

/// Parses RFC 3339 in UTC (`Z` or `+00:00`), with 0 to 9 fractional digits (truncated to
/// milliseconds); `None` before 1970 or when malformed.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || d < 1
        || d > u64::from(days_in_month(y as i64, mo as u32))
        || h > 23
        || mi > 59
    {
        return None;
    }
    // A leap second (:60) is not representable in Unix time; refuse rather than guess.
    if sec > 59 || y < 1970 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        // Pad or truncate to exactly three digits: milliseconds.
        for i in 0..3 {
            let digit = if i < digits {
                frac.as_bytes()[i] - b'0'
            } else {
                0
            };
            millis = millis * 10 + u64::from(digit);
        }
        rest = &frac[digits..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "-00:00") {
        return None;
    }
    // 1970 or later (checked above): the day count is not negative.
    let days = u64::try_from(days_from_civil(y as i64, mo as u32, d as u32)).ok()?;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + millis)
}

/// Nanoseconds since 1970-01-01T00:00:00 UTC of an ISO 8601 date-time:
/// `YYYY-MM-DD`, then optionally `T` (or a space) and `HH:MM`, `:SS`, a fraction (`.` or `,`,
/// digits beyond nanoseconds ignored), and an offset (`Z`, `±HH`, `±HHMM`, `±HH:MM`). A time
/// without an offset (as the API sends it) is taken as UTC: what matters is comparing it with
/// others of the same kind. `None` for anything else, out-of-range fields included.
pub fn parse_iso8601_ns(s: &str) -> Option<i128> {
    let b = s.trim().as_bytes();
    let mut p = Parser { b, i: 0 };
    let year = i64::from(p.digits(4)?);
    p.expect(b'-')?;
    let month = p.digits(2)?;
    p.expect(b'-')?;
    let day = p.digits(2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (mut hour, mut minute, mut second, mut nanos) = (0, 0, 0, 0u32);
    if p.eat(b'T') || p.eat(b't') || p.eat(b' ') {
        hour = p.digits(2)?;
        p.expect(b':')?;
        minute = p.digits(2)?;
        if p.eat(b':') {
            second = p.digits(2)?;
            if p.eat(b'.') || p.eat(b',') {
                let start = p.i;
                let mut scale = 100_000_000u32;
                while let Some(d) = p.peek().filter(u8::is_ascii_digit) {
                    nanos += u32::from(d - b'0') * scale;
                    scale /= 10;
                    p.i += 1;
                }
                if p.i == start {
                    return None;
                }
            }
        }
        // 60 is a leap second.
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
    }
    let mut offset_minutes = 0i64;
    match p.peek() {
        None => {}
        Some(b'Z' | b'z') => p.i += 1,
        Some(sign @ (b'+' | b'-')) => {
            p.i += 1;
            let h = i64::from(p.digits(2)?);
            let m = if p.eat(b':') || p.peek().is_some() {
                i64::from(p.digits(2)?)
            } else {
                0
            };
            if h > 23 || m > 59 {
                return None;
            }
            offset_minutes = (h * 60 + m) * if sign == b'-' { -1 } else { 1 };
        }
        Some(_) => return None,
    }
    if p.i != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60
        - offset_minutes * 60
        + i64::from(second);
    Some(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
}

/// [`parse_iso8601_ns`] as a `SystemTime` (for a `timestamp` column).
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let nanos = parse_iso8601_ns(s)?;
    let magnitude = Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).ok()?);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.b.get(self.i..self.i + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(part.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
    }
}

/// An HTTP-date (RFC 9110 §5.6.7) as IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, the only
/// form senders may generate (`Retry-After`); `None` for the obsolete forms and anything else.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.split_ascii_whitespace();
    let dow = it.next()?;
    if !dow.ends_with(',') {
        return None;
    }
    let day: u32 = it.next()?.parse().ok()?;
    let month: u32 = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let h: u32 = hms.next()?.parse().ok()?;
    let m: u32 = hms.next()?.parse().ok()?;
    let sec: u32 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || it.next()? != "GMT" || it.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// True in a leap year of the proleptic Gregorian calendar.
pub fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days of `month` (1 to 12) in `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date, negative before it (Howard Hinnant's
/// `days_from_civil`). `month` is 1 to 12; the day is not checked against the month.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_776_421_800_123; // 2026-04-17T10:30:00.123Z
    const NANOS: i128 = 1_000_000_000;

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(T), "2026-04-17T10:30:00.123Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(format_rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
        // Agrees with humantime where both apply.
        for ms in [1u64, 86_399_999, 1_000_000_000_000, 4_102_444_800_000, T] {
            let st = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            assert_eq!(
                format_rfc3339_ms(ms),
                humantime::format_rfc3339_millis(st).to_string()
            );
        }
    }

    #[test]
    fn time_parses_back() {
        for ms in [0u64, 1, 999, 86_400_000, T, 951_782_400_000, MAX_TIME_MS] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(parse_rfc3339_ms("2026-04-17T10:30:00Z"), Some(T - 123));
        assert_eq!(parse_rfc3339_ms("2026-04-17T10:30:00.1Z"), Some(T - 23));
        assert_eq!(
            parse_rfc3339_ms("2026-04-17T10:30:00.123456789+00:00"),
            Some(T)
        );
        for bad in [
            "",
            "2026-04-17",
            "2026-04-17T10:30:00",
            "2026-04-17T10:30:00+09:00",
            "2026-02-30T10:30:00Z",
            "2026-13-01T10:30:00Z",
            "2026-04-17T24:00:00Z",
            "2026-04-17T10:30:60Z",
            "1969-12-31T23:59:59Z",
            "2026-04-17T10:30:00.Z",
            "2026-04-17T10:30:00.1234567890Z",
            "+026-04-17T10:30:00Z",
            "2026-04-17T10:30:00Zjunk",
            "２026-04-17T10:30:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn iso_times_parse_to_the_instant_they_name() {
        assert_eq!(parse_iso8601_ns("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_iso8601_ns("1970-01-01"), Some(0));
        assert_eq!(parse_iso8601_ns("1969-12-31T23:59:59Z"), Some(-NANOS));
        // 2026-04-17T10:30:00 UTC, in the forms ISO 8601 allows.
        let t = 1_776_421_800 * NANOS;
        for s in [
            "2026-04-17T10:30:00",
            "2026-04-17 10:30:00",
            "2026-04-17t10:30",
            "2026-04-17T10:30:00Z",
            "2026-04-17T10:30:00.000",
            "2026-04-17T10:30:00,0",
            "2026-04-17T19:30:00+09:00",
            "2026-04-17T19:30:00+0900",
            "2026-04-17T19:30:00+09",
            "2026-04-17T07:00:00-03:30",
            " 2026-04-17T10:30:00 ",
        ] {
            assert_eq!(parse_iso8601_ns(s), Some(t), "{s}");
        }
        assert_eq!(
            parse_iso8601_ns("2026-04-17T10:30:00.123456789123"),
            Some(t + 123_456_789)
        );
        assert_eq!(
            parse_iso8601_ns("2024-02-29T00:00:00"),
            Some(1_709_164_800 * NANOS)
        );
    }

    #[test]
    fn anything_else_does_not_parse() {
        for s in [
            "",
            "t",
            "1776421800",
            "2026-4-17T10:30:00",
            "2026-04-17T10:30:00.",
            "2026-13-01T00:00:00",
            "2026-02-29T00:00:00",
            "2026-04-31T00:00:00",
            "2026-04-17T24:00:00",
            "2026-04-17T10:60:00",
            "2026-04-17T10:30:00+9",
            "2026-04-17T10:30:00+24:00",
            "2026-04-17T10:30:00 KST",
            "2026-04-17T10:30:00Zjunk",
            "２０２６-04-17",
        ] {
            assert_eq!(parse_iso8601_ns(s), None, "{s:?}");
        }
    }

    #[test]
    fn days_from_civil_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1994, 11, 6), 784_111_777 / 86_400);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn system_times_out_of_range_are_clamped_not_panicking() {
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_millis(T) + Duration::from_micros(999)),
            "2026-04-17T10:30:00.123Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn http_dates_are_imf_fixdate_only() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(at(951_782_400))
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_calendar_agrees_with_itself() {
        let mut days = days_from_civil(1969, 1, 1);
        for year in 1969..2101 {
            for month in 1..=12 {
                assert_eq!(days_from_civil(year, month, 1), days, "{year}-{month}");
                days += i64::from(days_in_month(year, month));
            }
        }
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    proptest::proptest! {
        #[test]
        fn time_round_trips(ms in 0..=MAX_TIME_MS) {
            proptest::prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }

        #[test]
        fn time_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339_ms(&s);
        }
    }
}
