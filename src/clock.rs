//! The one place that reads clocks. Everything else gets time from a [`Clock`] (or is handed
//! `now`), so tests can pause and advance time, and a jump of the wall clock is seen in one place.
//! `clippy.toml` forbids `SystemTime::now` and `Instant::now` outside this module.

#![allow(
    clippy::disallowed_methods,
    reason = "this module is where the clocks are read (see clippy.toml)"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Wall-clock milliseconds that advance with tokio's clock: persisted times are real dates,
/// while tests can still pause and advance time. Anchored once, at creation: a jump of the
/// system clock while the process runs does not move it (a restart picks the new time up; the
/// engine checks persisted times against it, see `engine`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Clock {
    /// Anchored at the current wall clock.
    pub fn new() -> Self {
        Self::anchored_at(wall_now_ms())
    }

    /// Anchored at `wall_ms` (tests: a clock that starts at a chosen date).
    pub fn anchored_at(wall_ms: u64) -> Self {
        Self {
            wall_at_start_ms: wall_ms,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_at_start_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which this clock reads `ms` (now if that is past).
    pub fn instant_at(&self, ms: u64) -> Instant {
        let now = self.now_ms();
        Instant::now() + Duration::from_millis(ms.saturating_sub(now))
    }

    /// The current tokio instant (for measuring how long something took).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The system's wall clock, in milliseconds since the Unix epoch (0 before 1970).
pub fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The system's wall clock as a `SystemTime` (request signing, file names, HTTP dates).
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// A monotonic instant for measuring durations (tokio's, so paused time applies).
pub fn instant_now() -> Instant {
    Instant::now()
}
