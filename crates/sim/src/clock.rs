//! Time for the simulator: the tokio clock drives the state machine (so paused-time tests work),
//! the wall clock drives the signature window and the KST-looking `lastAnalyzedAt` strings.
//! The one module of the simulator that reads clocks (the workspace's clippy.toml forbids
//! `SystemTime::now` and `Instant::now` elsewhere).

#![allow(
    clippy::disallowed_methods,
    reason = "this module is where the simulator reads clocks (see clippy.toml)"
)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Maps tokio instants to wall-clock seconds, anchored once at start. Anchoring (instead of
/// reading `SystemTime` at each transition) keeps `lastAnalyzedAt` consistent with paused time.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    start_wall_ms: i64,
    /// Added to the wall clock for the signature window only (`POST /__sim/clock/skew`).
    skew_ms: AtomicI64,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_wall_ms: wall_now_ms(),
            skew_ms: AtomicI64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds from start to `at`. The state machine stores times this way, so texts
    /// seeded from them repeat across runs (absolute wall times would differ every run).
    pub fn rel_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// Wall-clock Unix milliseconds at start: what relative times are displayed against.
    pub fn start_wall_ms(&self) -> i64 {
        self.start_wall_ms
    }

    /// Unix seconds of a relative time.
    pub fn wall_secs_of(&self, rel_ms: i64) -> i64 {
        self.start_wall_ms.saturating_add(rel_ms).div_euclid(1000)
    }

    /// The gateway's idea of now, in Unix milliseconds, for the 5-minute window.
    pub fn gateway_now_ms(&self) -> i64 {
        wall_now_ms().saturating_add(self.skew_ms.load(Ordering::Relaxed))
    }

    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::Relaxed);
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

/// The current tokio instant (paused time applies).
pub fn instant_now() -> Instant {
    Instant::now()
}

/// Wall clock in Unix milliseconds; a clock before 1970 reads as 0 rather than panicking.
pub fn wall_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS` in KST (UTC+9) without an offset, like the doc's example (§3).
pub fn kst_string(unix_secs: i64) -> String {
    let t = unix_secs.saturating_add(9 * 3600);
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian), so no date crate is needed.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kst_formatting() {
        assert_eq!(kst_string(0), "1970-01-01T09:00:00");
        // 2026-04-17T01:30:00Z is 10:30 in Seoul: the doc's example value.
        assert_eq!(kst_string(1_776_389_400), "2026-04-17T10:30:00");
        // Leap day, and a day boundary crossed by the +9h shift.
        assert_eq!(kst_string(1_709_218_800), "2024-03-01T00:00:00");
        assert_eq!(kst_string(1_709_218_799), "2024-02-29T23:59:59");
    }
}
