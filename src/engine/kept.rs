//! A watch's record as the engine keeps it between polls: the fields of a [`WatchRecord`] less
//! its key (the entry's spec holds the same one), in 64 bytes instead of 216.
//!
//! At 100,000 watches the entries were the largest part of the daemon's memory (304 bytes
//! each, 30 MB; docs/benchmarks.md, "The entry kept small"). Most of a record's room went to
//! what most watches do not have: the last error, the last version's `lastAnalyzedAt`, three
//! version ids, an unknown remote status's text, each an `Option` of 16 or 24 bytes. Those
//! live together in one box that only a watch with one of them pays for; optional times are
//! a `u64` with a sentinel (ms, or ns for the two `Duration`s); the remote status is a byte.
//! A poll takes the whole [`WatchRecord`] out ([`Kept::record`], the same copy the entry's
//! `clone` was) and puts the committed one back ([`Kept::set`], reusing the box).
//!
//! Invariant: `Kept::new(r).record(&r.key) == r` for every record (tests below), except that
//! a time of `u64::MAX` ms reads back one ms earlier (the sentinel; 584 million years on), and
//! a `started_at` or `before_since` from `u64::MAX` ns on (the year 2554) reads back as one ns
//! before it.

use std::time::Duration;

use crate::domain::{VersionId, WatchKey};
use crate::ncp::RemoteStatus;
use crate::state::WatchRecord;
use crate::watch::{Phase, Route, WatchState};

/// An optional time in ms: `u64::MAX` is "none" (8 bytes against `Option<u64>`'s 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ms(u64);

impl Ms {
    pub(super) const NONE: Ms = Ms(u64::MAX);

    pub(super) fn new(t: Option<u64>) -> Ms {
        Ms(t.map_or(u64::MAX, |t| t.min(u64::MAX - 1)))
    }

    pub(super) fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }
}

/// An optional `Duration` in ns: `u64::MAX` is "none" (8 bytes against 16). Exact up to some
/// 584 years, which a time since 1970 is until 2554; later ones read back as the last ns kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nanos(u64);

impl Nanos {
    fn new(t: Option<Duration>) -> Nanos {
        Nanos(t.map_or(u64::MAX, |t| {
            u64::try_from(t.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1))
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 != u64::MAX).then(|| Duration::from_nanos(self.0))
    }
}

/// The remote status as a byte; an unknown status's text is kept in [`Texts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    None,
    BeforeSummarize,
    WaitSummarize,
    Summarizing,
    Completed,
    Failed,
    Canceled,
    Unknown,
}

/// What few watches have, or have only after a while: boxed, so the others pay 8 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Texts {
    /// The text of `RemoteStatus::Unknown`.
    unknown_status: Option<String>,
    last_version: Option<String>,
    last_error: Option<String>,
    last_version_id: Option<VersionId>,
    stale_version_id: Option<VersionId>,
    /// Not part of the record: the latest version every sink confirmed (see `Entry`).
    delivered: Option<VersionId>,
}

impl Texts {
    fn is_empty(&self) -> bool {
        *self == Texts::default()
    }
}

/// See the module's documentation.
#[derive(Debug)]
pub(super) struct Kept {
    /// `state.phase`.
    pub(super) phase: Phase,
    route: Option<Route>,
    remote: Remote,
    consecutive_errors: u32,
    attempt: u32,
    polls: u64,
    started_at: Nanos,
    before_since: Nanos,
    next_poll_at_ms: Ms,
    last_change_at_ms: Ms,
    texts: Option<Box<Texts>>,
}

impl Kept {
    /// Keeps `record` (its key is dropped: the caller holds it).
    pub(super) fn new(record: WatchRecord) -> Kept {
        let mut kept = Kept {
            phase: Phase::Pending,
            route: None,
            remote: Remote::None,
            consecutive_errors: 0,
            attempt: 0,
            polls: 0,
            started_at: Nanos(u64::MAX),
            before_since: Nanos(u64::MAX),
            next_poll_at_ms: Ms::NONE,
            last_change_at_ms: Ms::NONE,
            texts: None,
        };
        kept.set(record);
        kept
    }

    /// The record of the watch `key` (a copy: the texts are cloned, the version ids shared).
    pub(super) fn record(&self, key: &WatchKey) -> WatchRecord {
        let t = self.texts.as_deref();
        let remote = match self.remote {
            Remote::None => None,
            Remote::BeforeSummarize => Some(RemoteStatus::BeforeSummarize),
            Remote::WaitSummarize => Some(RemoteStatus::WaitSummarize),
            Remote::Summarizing => Some(RemoteStatus::Summarizing),
            Remote::Completed => Some(RemoteStatus::Completed),
            Remote::Failed => Some(RemoteStatus::Failed),
            Remote::Canceled => Some(RemoteStatus::Canceled),
            Remote::Unknown => Some(RemoteStatus::Unknown(
                t.and_then(|t| t.unknown_status.clone()).unwrap_or_default(),
            )),
        };
        WatchRecord {
            key: key.clone(),
            state: WatchState {
                phase: self.phase,
                remote,
                polls: self.polls,
                consecutive_errors: self.consecutive_errors,
                attempt: self.attempt,
                route: self.route,
                started_at: self.started_at.get(),
                before_since: self.before_since.get(),
                last_version: t.and_then(|t| t.last_version.clone()),
                last_error: t.and_then(|t| t.last_error.clone()),
            },
            next_poll_at_ms: self.next_poll_at_ms.get(),
            last_version_id: t.and_then(|t| t.last_version_id.clone()),
            last_change_at_ms: self.last_change_at_ms.get(),
            stale_version_id: t.and_then(|t| t.stale_version_id.clone()),
        }
    }

    /// Keeps `record` in place of what was kept (the confirmed version stays).
    pub(super) fn set(&mut self, record: WatchRecord) {
        let WatchRecord {
            key: _,
            state,
            next_poll_at_ms,
            last_version_id,
            last_change_at_ms,
            stale_version_id,
        } = record;
        let (remote, unknown_status) = match state.remote {
            None => (Remote::None, None),
            Some(RemoteStatus::BeforeSummarize) => (Remote::BeforeSummarize, None),
            Some(RemoteStatus::WaitSummarize) => (Remote::WaitSummarize, None),
            Some(RemoteStatus::Summarizing) => (Remote::Summarizing, None),
            Some(RemoteStatus::Completed) => (Remote::Completed, None),
            Some(RemoteStatus::Failed) => (Remote::Failed, None),
            Some(RemoteStatus::Canceled) => (Remote::Canceled, None),
            Some(RemoteStatus::Unknown(s)) => (Remote::Unknown, Some(s)),
        };
        self.phase = state.phase;
        self.route = state.route;
        self.remote = remote;
        self.consecutive_errors = state.consecutive_errors;
        self.attempt = state.attempt;
        self.polls = state.polls;
        self.started_at = Nanos::new(state.started_at);
        self.before_since = Nanos::new(state.before_since);
        self.next_poll_at_ms = Ms::new(next_poll_at_ms);
        self.last_change_at_ms = Ms::new(last_change_at_ms);
        let delivered = self.texts.as_mut().and_then(|t| t.delivered.take());
        self.put_texts(Texts {
            unknown_status,
            last_version: state.last_version,
            last_error: state.last_error,
            last_version_id,
            stale_version_id,
            delivered,
        });
    }

    /// Boxes `texts`, in the box already held when there is one; none when all are empty.
    fn put_texts(&mut self, texts: Texts) {
        if texts.is_empty() {
            self.texts = None;
        } else if let Some(b) = &mut self.texts {
            **b = texts;
        } else {
            self.texts = Some(Box::new(texts));
        }
    }

    /// `next_poll_at_ms`.
    pub(super) fn next_poll_at_ms(&self) -> Option<u64> {
        self.next_poll_at_ms.get()
    }

    /// `last_version_id`.
    pub(super) fn last_version_id(&self) -> Option<&VersionId> {
        self.texts.as_ref()?.last_version_id.as_ref()
    }

    /// The latest version every sink confirmed, if any.
    pub(super) fn delivered(&self) -> Option<&VersionId> {
        self.texts.as_ref()?.delivered.as_ref()
    }

    /// Sets [`Kept::delivered`].
    pub(super) fn set_delivered(&mut self, version: Option<VersionId>) {
        match &mut self.texts {
            // In the box held (a delivery does not reallocate it), dropped once empty.
            Some(b) => {
                b.delivered = version;
                if b.is_empty() {
                    self.texts = None;
                }
            }
            None if version.is_some() => {
                self.texts = Some(Box::new(Texts {
                    delivered: version,
                    ..Texts::default()
                }));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> WatchKey {
        WatchKey::new("ws", "p", "a", "i").unwrap()
    }

    fn full() -> WatchRecord {
        let k = key();
        WatchRecord {
            key: k.clone(),
            state: WatchState {
                phase: Phase::Waiting,
                remote: Some(RemoteStatus::Unknown("SUMMARIZE_PAUSED".into())),
                polls: u64::MAX,
                consecutive_errors: 7,
                attempt: u32::MAX,
                route: Some(Route::AssetStatusIndexResult),
                started_at: Some(Duration::new(1_700_000_000, 123_456_789)),
                before_since: Some(Duration::from_nanos(u64::MAX - 1)),
                last_version: Some("2026-12-07T10:00:00Z".into()),
                last_error: Some("HTTP 503 from the gateway".into()),
            },
            next_poll_at_ms: Some(0),
            last_version_id: Some(VersionId::of(&k, "2026-12-07T10:00:00Z")),
            last_change_at_ms: Some(u64::MAX - 1),
            stale_version_id: Some(VersionId::of(&k, "2026-12-06T10:00:00Z")),
        }
    }

    /// A record with nothing but its key.
    fn bare() -> WatchRecord {
        WatchRecord {
            key: key(),
            state: WatchState::default(),
            next_poll_at_ms: None,
            last_version_id: None,
            last_change_at_ms: None,
            stale_version_id: None,
        }
    }

    #[test]
    fn a_kept_record_reads_back_as_it_was_given() {
        let bare = bare();
        let statuses = [
            None,
            Some(RemoteStatus::BeforeSummarize),
            Some(RemoteStatus::WaitSummarize),
            Some(RemoteStatus::Summarizing),
            Some(RemoteStatus::Completed),
            Some(RemoteStatus::Failed),
            Some(RemoteStatus::Canceled),
            Some(RemoteStatus::Unknown(String::new())),
        ];
        for remote in statuses {
            let mut r = bare.clone();
            r.state.remote = remote;
            assert_eq!(Kept::new(r.clone()).record(&key()), r);
        }
        for phase in Phase::ALL {
            let mut r = full();
            r.state.phase = phase;
            assert_eq!(Kept::new(r.clone()).record(&key()), r);
        }
        let kept = Kept::new(bare.clone());
        assert!(kept.texts.is_none(), "a record without texts boxes nothing");
        assert_eq!(kept.record(&key()), bare);
    }

    #[test]
    fn the_sentinel_time_reads_back_a_millisecond_early() {
        let mut r = full();
        r.next_poll_at_ms = Some(u64::MAX);
        assert_eq!(
            Kept::new(r).next_poll_at_ms(),
            Some(u64::MAX - 1),
            "not taken for none"
        );
    }

    #[test]
    fn a_duration_past_the_year_2554_reads_back_as_the_last_nanosecond_kept() {
        let mut r = full();
        r.state.started_at = Some(Duration::MAX);
        r.state.before_since = Some(Duration::from_nanos(u64::MAX));
        let back = Kept::new(r).record(&key());
        let last = Some(Duration::from_nanos(u64::MAX - 1));
        assert_eq!(back.state.started_at, last, "not taken for none");
        assert_eq!(back.state.before_since, last);
    }

    #[test]
    fn the_confirmed_version_outlives_a_new_record_and_the_box_goes_with_the_last_text() {
        let mut kept = Kept::new(full());
        let v = VersionId::of(&key(), "2026-12-07T10:00:00Z");
        kept.set_delivered(Some(v.clone()));
        let mut next = full();
        next.state.last_error = None;
        kept.set(next.clone());
        assert_eq!(kept.delivered(), Some(&v));
        assert_eq!(kept.record(&key()), next);

        let bare = bare();
        kept.set(bare.clone());
        assert_eq!(kept.delivered(), Some(&v), "kept while other texts go");
        kept.set_delivered(None);
        assert!(kept.texts.is_none());
        assert_eq!(kept.record(&key()), bare);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_entry_s_record_takes_64_bytes() {
        // The figure docs/benchmarks.md and this module's documentation give.
        assert_eq!(size_of::<Kept>(), 64);
    }
}
