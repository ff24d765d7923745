//! The client-wide pause: when the API refuses the credentials (401) or says the account's quota
//! is used up (gateway 429 `Quota Exceeded`), every watch would fail alike, so polling stops as a
//! whole and one probe at a time finds out when it works again. Pure state: the engine tells it
//! what happened and asks it what to do; times are passed in.
//!
//! Rules:
//! - The first refusal starts the pause (one error line, by the engine); refusals of polls that
//!   were already in flight do not lengthen it.
//! - Only a probe ends it: a poll launched while paused, when the pause is over. Successes of
//!   polls that were in flight when the pause began do not, so one refused watch cannot make the
//!   client pause and resume in turn.
//! - The first probe repeats the refused watch's call; a failed probe doubles the pause and the
//!   next probe tries another watch. If another watch's probe succeeds while the refused one
//!   keeps being refused, the refusal is that watch's own (a project the key may not read): the
//!   pause ends, and the next refusal of that watch is reported as [`Refusal::WatchOnly`].

use std::time::Duration;

use crate::watch::PauseReason;

/// The first pause after refused credentials, doubling per failed probe up to the maximum.
pub const AUTH_PAUSE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(600));
/// A used-up quota (gateway errorCode 400) lasts much longer than a rate limit: start at five
/// minutes, doubling up to an hour.
pub const QUOTA_PAUSE: (Duration, Duration) = (Duration::from_secs(300), Duration::from_secs(3600));

/// How long a pause of `reason` lasts after `failed_probes` failed probes.
pub fn pause_length(reason: PauseReason, failed_probes: u32) -> Duration {
    let (initial, max) = match reason {
        PauseReason::Auth => AUTH_PAUSE,
        PauseReason::Quota => QUOTA_PAUSE,
    };
    // No jitter: there is one pause per client, not one per watch.
    let mut d = initial;
    for _ in 0..failed_probes.min(32) {
        d = (d * 2).min(max);
    }
    d.min(max)
}

/// What a refusal meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It started the pause: say so, once.
    Started,
    /// The client was paused already (a poll in flight, or a failed probe).
    AlreadyPaused,
    /// This watch alone is refused (others work): end it, do not pause the client.
    WatchOnly,
}

/// Which watch the next probe polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Repeat the refused watch's call.
    Refused(usize),
    /// Any other watch that is due.
    Other,
}

#[derive(Debug, Clone)]
struct Paused {
    reason: PauseReason,
    until_ms: u64,
    failed_probes: u32,
    /// The watch whose refusal started the pause.
    refused: usize,
    probe_in_flight: Option<usize>,
    probe_other_next: bool,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct ClientPause {
    paused: Option<Paused>,
    /// A watch refused while other watches' probes succeeded.
    suspect: Option<usize>,
}

impl ClientPause {
    /// Paused, and why.
    pub fn reason(&self) -> Option<PauseReason> {
        self.paused.as_ref().map(|p| p.reason)
    }

    /// When the next probe may go, while paused.
    pub fn until_ms(&self) -> Option<u64> {
        self.paused.as_ref().map(|p| p.until_ms)
    }

    /// Failed probes in the current pause.
    pub fn failed_probes(&self) -> u32 {
        self.paused.as_ref().map_or(0, |p| p.failed_probes)
    }

    /// Watch `watch` was refused for `reason`; `probe` tells whether it was the probe.
    pub fn refused(
        &mut self,
        watch: usize,
        reason: PauseReason,
        probe: bool,
        now_ms: u64,
    ) -> Refusal {
        if self.suspect == Some(watch) && self.paused.is_none() && reason == PauseReason::Auth {
            return Refusal::WatchOnly;
        }
        match &mut self.paused {
            None => {
                self.paused = Some(Paused {
                    reason,
                    until_ms: now_ms.saturating_add(ms(pause_length(reason, 0))),
                    failed_probes: 0,
                    refused: watch,
                    probe_in_flight: None,
                    probe_other_next: false,
                });
                Refusal::Started
            }
            Some(p) => {
                if probe && p.probe_in_flight == Some(watch) {
                    p.probe_in_flight = None;
                    p.failed_probes = p.failed_probes.saturating_add(1);
                    // A quota refusal outranks an auth one: it lasts longer.
                    if reason == PauseReason::Quota {
                        p.reason = PauseReason::Quota;
                    }
                    p.until_ms = now_ms.saturating_add(ms(pause_length(p.reason, p.failed_probes)));
                    p.probe_other_next = !p.probe_other_next;
                }
                Refusal::AlreadyPaused
            }
        }
    }

    /// Watch `watch` answered without a refusal (`ok`: a good answer, not a transient error).
    /// True when this ended the pause.
    pub fn answered(&mut self, watch: usize, probe: bool, ok: bool, now_ms: u64) -> bool {
        let Some(p) = &mut self.paused else {
            if ok && self.suspect == Some(watch) {
                self.suspect = None; // it works again: not a suspect any more
            }
            return false;
        };
        if !(probe && p.probe_in_flight == Some(watch)) {
            return false; // in flight from before the pause: it proves nothing
        }
        p.probe_in_flight = None;
        if ok {
            if watch != p.refused {
                self.suspect = Some(p.refused);
            }
            self.paused = None;
            true
        } else {
            // The probe failed for another reason (a 503): try again after the same pause.
            p.until_ms = now_ms.saturating_add(ms(pause_length(p.reason, p.failed_probes)));
            false
        }
    }

    /// The probe to launch now, if one is due; the caller then calls [`ClientPause::launched`].
    pub fn next_probe(&self, now_ms: u64) -> Option<Probe> {
        let p = self.paused.as_ref()?;
        if p.probe_in_flight.is_some() || now_ms < p.until_ms {
            return None;
        }
        Some(if p.probe_other_next {
            Probe::Other
        } else {
            Probe::Refused(p.refused)
        })
    }

    /// The probe of `watch` is in flight.
    pub fn launched(&mut self, watch: usize) {
        if let Some(p) = &mut self.paused {
            p.probe_in_flight = Some(watch);
        }
    }

    /// The probe's watch went away (removed by a reload) or cannot be polled: count it as
    /// failed-for-another-reason, so a new probe is chosen after the pause.
    pub fn probe_lost(&mut self, now_ms: u64) {
        if let Some(p) = &mut self.paused {
            p.probe_in_flight = None;
            p.probe_other_next = true;
            p.until_ms = now_ms.saturating_add(ms(pause_length(p.reason, p.failed_probes)));
        }
    }

    /// Ends the pause at once (new credentials were loaded).
    pub fn lift(&mut self) {
        self.paused = None;
        self.suspect = None;
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn only_a_probe_ends_the_pause() {
        let mut p = ClientPause::default();
        assert_eq!(p.refused(1, PauseReason::Auth, false, 0), Refusal::Started);
        assert_eq!(p.until_ms(), Some(30 * S));
        // Other polls that were in flight come back: refused, or fine: nothing changes.
        assert_eq!(
            p.refused(2, PauseReason::Auth, false, 10),
            Refusal::AlreadyPaused
        );
        assert!(!p.answered(3, false, true, 20));
        assert_eq!(
            p.until_ms(),
            Some(30 * S),
            "not lengthened by in-flight refusals"
        );
        assert_eq!(p.next_probe(29 * S), None);
        assert_eq!(p.next_probe(30 * S), Some(Probe::Refused(1)));
        p.launched(1);
        assert_eq!(p.next_probe(31 * S), None, "one probe at a time");
        assert!(p.answered(1, true, true, 31 * S));
        assert_eq!(p.reason(), None);
    }

    #[test]
    fn failed_probes_double_the_pause_and_alternate_the_watch() {
        let mut p = ClientPause::default();
        p.refused(1, PauseReason::Auth, false, 0);
        p.launched(1);
        assert_eq!(
            p.refused(1, PauseReason::Auth, true, 30 * S),
            Refusal::AlreadyPaused
        );
        assert_eq!(p.until_ms(), Some(90 * S), "30 s then 60 s");
        assert_eq!(p.next_probe(90 * S), Some(Probe::Other));
        p.launched(7);
        p.refused(7, PauseReason::Auth, true, 90 * S);
        assert_eq!(p.until_ms(), Some(210 * S), "then 120 s");
        assert_eq!(p.next_probe(210 * S), Some(Probe::Refused(1)));
        assert_eq!(
            pause_length(PauseReason::Auth, 50),
            Duration::from_secs(600)
        );
        // A probe that fails for another reason keeps the pause's length.
        p.launched(1);
        assert!(!p.answered(1, true, false, 210 * S));
        assert_eq!(p.until_ms(), Some(330 * S));
    }

    #[test]
    fn a_refusal_of_one_watch_only_ends_that_watch_not_the_client() {
        let mut p = ClientPause::default();
        p.refused(1, PauseReason::Auth, false, 0);
        p.launched(1);
        p.refused(1, PauseReason::Auth, true, 30 * S);
        // Another watch's probe works: the credentials are fine.
        p.launched(2);
        assert!(p.answered(2, true, true, 90 * S));
        assert_eq!(
            p.refused(1, PauseReason::Auth, false, 100 * S),
            Refusal::WatchOnly
        );
        assert_eq!(p.reason(), None, "the client keeps polling");
        // Once watch 1 works again it is not a suspect any more.
        assert!(!p.answered(1, false, true, 200 * S));
        assert_eq!(
            p.refused(1, PauseReason::Auth, false, 300 * S),
            Refusal::Started
        );
    }

    #[test]
    fn quota_pauses_are_long_and_win_over_auth() {
        let mut p = ClientPause::default();
        assert_eq!(p.refused(4, PauseReason::Quota, false, 0), Refusal::Started);
        assert_eq!(p.until_ms(), Some(300 * S));
        assert_eq!(
            pause_length(PauseReason::Quota, 9),
            Duration::from_secs(3600)
        );
        let mut q = ClientPause::default();
        q.refused(1, PauseReason::Auth, false, 0);
        q.launched(1);
        q.refused(1, PauseReason::Quota, true, 30 * S);
        assert_eq!(q.reason(), Some(PauseReason::Quota));
        assert_eq!(q.until_ms(), Some(30 * S + 600 * S));
        q.lift();
        assert_eq!(q.reason(), None);
    }
}
