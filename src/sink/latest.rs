//! Which of two versions of a watch is the newer, for the sinks that keep a "latest" copy (the
//! file sink's `{index_id}.json`, the S3 sink's `latest.json`, the PostgreSQL sink's
//! `latest_index_versions` view). Deliveries can arrive out of order (a sink backing off retries
//! an older version after a newer one went through), so the latest copy is replaced only by a
//! version that is not older than the one it holds. Pure: no IO, no clock.
//!
//! The order: `lastAnalyzedAt` compared as a point in time ([`parse_iso8601_ns`]); a time that parses
//! is newer than one that does not; two that do not parse compare as strings (byte order). Equal
//! times are decided by `fetchedAt` (the later fetch wins), as in the PostgreSQL view. The same
//! version id always means the same content, so it may replace itself (a repeated delivery).

use std::cmp::Ordering;
use std::time::SystemTime;

use super::Delivery;
use crate::time::parse_iso8601_ns;

/// What a latest copy says about the version it holds, read back from the sink (the envelope's
/// `version`, `lastAnalyzedAt` and `fetchedAt`, or object metadata holding the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The version id.
    pub version: String,
    /// `lastAnalyzedAt`, as the API sent it.
    pub last_analyzed_at: String,
    /// `fetchedAt` as the envelope writes it (RFC 3339 UTC); `None` when absent.
    pub fetched_at: Option<String>,
}

impl Stamp {
    /// The stamp of the version `d` carries.
    pub fn of(d: &Delivery) -> Self {
        Self {
            version: d.version_id.to_string(),
            last_analyzed_at: d.last_analyzed_at.clone(),
            fetched_at: Some(fetched_at_text(d.fetched_at)),
        }
    }
}

/// The stamp of an envelope as a sink wrote it; `None` when `bytes` is not an envelope with a
/// string `version` and `lastAnalyzedAt` (a file someone else wrote or truncated, which the next
/// version may replace). The `result` is skipped without being built, however deep it nests.
pub fn envelope_stamp(bytes: &[u8]) -> Option<Stamp> {
    serde_json::from_slice::<Head>(bytes).ok().map(Head::stamp)
}

/// [`envelope_stamp`] of what `r` reads, parsed as it is read (the envelope is never held
/// whole). `Err` only when reading fails; anything that is not an envelope is `Ok(None)`.
pub fn envelope_stamp_from(r: impl std::io::Read) -> Result<Option<Stamp>, std::io::Error> {
    match serde_json::from_reader::<_, Head>(r) {
        Ok(h) => Ok(Some(h.stamp())),
        Err(e) if e.is_io() => Err(e.into()),
        Err(_) => Ok(None),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    version: String,
    last_analyzed_at: String,
    #[serde(default)]
    fetched_at: Option<String>,
}

impl Head {
    fn stamp(self) -> Stamp {
        Stamp {
            version: self.version,
            last_analyzed_at: self.last_analyzed_at,
            fetched_at: self.fetched_at,
        }
    }
}

/// `fetchedAt` as every envelope writes it.
pub fn fetched_at_text(t: SystemTime) -> String {
    crate::time::format_rfc3339(t)
}

/// True when `new` may replace `current` as the latest copy: it is the same version, or newer
/// (see the module documentation).
pub fn supersedes(new: &Stamp, current: &Stamp) -> bool {
    if new.version == current.version {
        return true;
    }
    match compare_analyzed_at(&new.last_analyzed_at, &current.last_analyzed_at) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => {
            let parsed = |s: &Option<String>| s.as_deref().and_then(parse_iso8601_ns);
            match (parsed(&new.fetched_at), parsed(&current.fetched_at)) {
                (Some(n), Some(c)) => n > c,
                // A copy without a readable fetchedAt was not written by this scenewatch.
                (_, None) => true,
                (None, Some(_)) => false,
            }
        }
    }
}

/// Orders two `lastAnalyzedAt` values: as points in time when both parse, a parsed one after
/// one that does not parse, otherwise as strings.
pub fn compare_analyzed_at(a: &str, b: &str) -> Ordering {
    match (parse_iso8601_ns(a), parse_iso8601_ns(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANOS: i128 = 1_000_000_000;

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
    fn times_compare_as_instants_not_as_strings() {
        use Ordering::*;
        for (a, b, want) in [
            // As strings "2026-04-17T9…" would sort after "2026-04-17T10…".
            ("2026-04-17T10:30:00", "2026-04-17T10:30:00.5", Less),
            ("2026-04-17T19:00:00+09:00", "2026-04-17T10:30:00Z", Less),
            ("2026-04-17 10:30:01", "2026-04-17T10:30:00", Greater),
            ("2026-04-17T10:30:00", "2026-04-17T10:30:00.000Z", Equal),
            // A time that parses beats one that does not; two that do not compare as strings.
            ("2026-04-17T10:30:00", "zzz", Greater),
            ("v2", "v1", Greater),
        ] {
            assert_eq!(compare_analyzed_at(a, b), want, "{a} vs {b}");
            assert_eq!(compare_analyzed_at(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn stamp(version: &str, last: &str, fetched: Option<&str>) -> Stamp {
        Stamp {
            version: version.into(),
            last_analyzed_at: last.into(),
            fetched_at: fetched.map(str::to_string),
        }
    }

    #[test]
    fn envelopes_give_their_stamp_and_other_files_none() {
        let d = crate::sink::stdout::test_delivery(r#"{"deep":[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]}"#);
        for body in [
            d.envelope_json().unwrap(),
            d.envelope_json_compact().unwrap(),
        ] {
            assert_eq!(envelope_stamp(&body), Some(Stamp::of(&d)));
            assert_eq!(
                envelope_stamp_from(body.as_slice()).unwrap(),
                Some(Stamp::of(&d))
            );
        }
        for junk in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"version":1,"lastAnalyzedAt":"t"}"#,
        ] {
            assert_eq!(envelope_stamp(junk), None);
            assert_eq!(envelope_stamp_from(junk).unwrap(), None);
        }
    }

    #[test]
    fn only_a_version_that_is_not_older_replaces_the_latest() {
        let a = stamp("a", "2026-04-17T10:30:00", Some("2026-04-17T10:31:00.000Z"));
        let b = stamp("b", "2026-04-18T09:00:00", Some("2026-04-18T09:01:00.000Z"));
        assert!(supersedes(&b, &a));
        assert!(!supersedes(&a, &b), "an older version came back");
        assert!(supersedes(&a, &a), "the same version again");
        // Equal instants written differently: the later fetch wins.
        let a2 = stamp(
            "a2",
            "2026-04-17T10:30:00.000",
            Some("2026-04-17T11:00:00.000Z"),
        );
        assert!(supersedes(&a2, &a));
        assert!(!supersedes(&a, &a2));
        assert!(supersedes(&a, &stamp("x", "2026-04-17T10:30:00Z", None)));
    }
}
