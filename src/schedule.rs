//! Which watch is polled when: the poll interval (exponential with jitter, via backon), the spread
//! of first polls, and the request budget shared by every watch of one API host. No HTTP here.
//!
//! Time comes from `tokio::time`, so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::domain::WatchKey;

/// The growing interval between polls of one watch, or between retries of a failing call.
///
/// Each delay is drawn by backon (exponential, factor 2, with jitter) and capped at `max`.
#[derive(Debug)]
pub struct PollBackoff {
    initial: Duration,
    max: Duration,
    delays: ExponentialBackoff,
}

impl PollBackoff {
    /// From `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            delays: Self::build(initial, max),
        }
    }

    fn build(initial: Duration, max: Duration) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // Without a maximum number of times the iterator never ends; `max` is a safe fallback.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts over from `initial` (the remote status changed).
    pub fn reset(&mut self) {
        self.delays = Self::build(self.initial, self.max);
    }
}

/// The delay before poll number `attempt` (0-based) since the last status change: the same
/// exponential-with-jitter series as [`PollBackoff`], computed from the persisted attempt count
/// so that a restart continues the series where it was.
pub fn poll_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let max = max.max(initial);
    // Past ~40 doublings every term is `max` anyway; bound the walk.
    let n = attempt.min(64) as usize;
    PollBackoff::build(initial, max)
        .nth(n)
        .unwrap_or(max)
        .min(max)
}

/// The daemon's clock: wall-clock milliseconds that advance with tokio's clock, so persisted
/// times are real dates while tests can still pause and advance time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Clock {
    /// Anchored at the current wall clock.
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Self {
            wall_at_start_ms: wall,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.wall_at_start_ms + self.start.elapsed().as_millis() as u64
    }

    /// The tokio instant at which the wall clock reads `ms` (now if that is past).
    pub fn instant_at(&self, ms: u64) -> Instant {
        let now = self.now_ms();
        Instant::now() + Duration::from_millis(ms.saturating_sub(now))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Offset of a watch's first poll within `window`, from a stable hash of its key, so that
/// thousands of watches loaded at once do not fire together (and land at the same offsets on
/// every start).
pub fn first_poll_offset(key: &WatchKey, window: Duration) -> Duration {
    let window_ms = window.as_millis().max(1) as u64;
    let h = fnv1a(&[
        key.workspace().as_bytes(),
        key.project_id().as_bytes(),
        key.asset_id().as_bytes(),
        key.index_id().as_bytes(),
    ]);
    Duration::from_millis(h % window_ms)
}

/// FNV-1a 64 over the parts, with a separator so ("ab","c") and ("a","bc") differ. Stable across
/// Rust versions, unlike `DefaultHasher`.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The request budget of one API host: a token bucket whose rate halves on throttling and
/// recovers gradually on success.
#[derive(Debug)]
pub struct RequestBudget {
    max_rate: f64,
    burst: f64,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
}

/// The lowest rate throttling can bring the budget to, as a fraction of the configured one.
const MIN_RATE_FRACTION: f64 = 1.0 / 64.0;
/// Each success gives back this fraction of the configured rate plus this fraction of the
/// current one: slow at first, faster as confidence returns.
const RECOVERY_FRACTION: f64 = 1.0 / 64.0;
const RECOVERY_GROWTH: f64 = 1.0 / 16.0;
/// 429s arriving within this window of a cut count as one: requests already in flight when the
/// gateway started refusing all come back throttled, and that is one signal, not many.
const CUT_WINDOW: Duration = Duration::from_secs(1);

impl RequestBudget {
    /// `requests_per_second` steady, up to `burst` at once.
    pub fn new(requests_per_second: f64, burst: u32) -> Self {
        let max_rate = if requests_per_second > 0.0 {
            requests_per_second
        } else {
            1.0
        };
        let burst = f64::from(burst.max(1));
        Self {
            max_rate,
            burst,
            state: Mutex::new(BudgetState {
                rate: max_rate,
                tokens: burst,
                refilled_at: Instant::now(),
                paused_until: None,
                last_cut: None,
            }),
        }
    }

    /// Waits for one request's worth of budget.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        s.paused_until = None;
                        self.refill(&mut s, now);
                        if s.tokens >= 1.0 {
                            s.tokens -= 1.0;
                            return;
                        }
                        Duration::from_secs_f64((1.0 - s.tokens) / s.rate)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn refill(&self, s: &mut BudgetState, now: Instant) {
        let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(self.burst);
        s.refilled_at = now;
    }

    /// The gateway said 429: halve the rate, drop the saved-up burst, and pause for
    /// `retry_after` when given. True when this 429 cut the rate (see `CUT_WINDOW`).
    pub fn throttled(&self, retry_after: Option<Duration>) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        self.refill(&mut s, now);
        let cut = s
            .last_cut
            .is_none_or(|t| now.saturating_duration_since(t) >= CUT_WINDOW);
        if cut {
            s.rate = (s.rate / 2.0).max(self.max_rate * MIN_RATE_FRACTION);
            s.last_cut = Some(now);
        }
        s.tokens = 0.0;
        let pause = retry_after.unwrap_or_else(|| Duration::from_secs_f64(1.0 / s.rate));
        let until = now + pause.min(Duration::from_secs(3600));
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        cut
    }

    /// A request went through: win back some of the rate.
    pub fn succeeded(&self) {
        let mut s = self.lock();
        s.rate = (s.rate + self.max_rate * RECOVERY_FRACTION + s.rate * RECOVERY_GROWTH)
            .min(self.max_rate);
    }

    /// The current rate, in requests per second.
    pub fn current_rate(&self) -> f64 {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // The state stays consistent even if a holder panicked: every update is a plain store.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> WatchKey {
        WatchKey::new("w", "p", format!("a{i}"), "i").unwrap()
    }

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let (initial, max) = (Duration::from_secs(10), Duration::from_secs(300));
        let mut b = PollBackoff::new(initial, max);
        let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        for d in &delays {
            assert!(*d >= initial && *d <= max, "{d:?}");
        }
        assert_eq!(*delays.last().unwrap(), max, "reaches the cap: {delays:?}");
        b.reset();
        assert!(
            b.next_delay() < Duration::from_secs(21),
            "starts over after reset"
        );
    }

    #[test]
    fn persisted_attempts_continue_the_series() {
        let (initial, max) = (Duration::from_secs(10), Duration::from_secs(300));
        assert!(poll_delay(initial, max, 0) < Duration::from_secs(21));
        assert!(poll_delay(initial, max, 3) >= Duration::from_secs(80));
        assert_eq!(poll_delay(initial, max, 40), max);
        assert_eq!(poll_delay(initial, max, u32::MAX), max);
    }

    #[test]
    fn first_polls_are_spread_and_stable() {
        let window = Duration::from_secs(10);
        let offsets: Vec<_> = (0..1000)
            .map(|i| first_poll_offset(&key(i), window))
            .collect();
        assert!(offsets.iter().all(|o| *o < window));
        // Ten one-second buckets each get a fair share (expected 100 each).
        let mut buckets = [0u32; 10];
        for o in &offsets {
            buckets[o.as_secs() as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (50..=150).contains(b)),
            "{buckets:?}"
        );
        assert_eq!(first_poll_offset(&key(7), window), offsets[7]);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_rate_and_slows_on_throttle() {
        let budget = RequestBudget::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..25 {
            budget.acquire().await;
        }
        // 5 from the burst, then 20 at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );

        budget.throttled(Some(Duration::from_secs(3)));
        assert_eq!(budget.current_rate(), 5.0);
        // The other requests that were in flight come back throttled too: one cut, not many.
        budget.throttled(None);
        budget.throttled(None);
        assert_eq!(budget.current_rate(), 5.0);
        let t = Instant::now();
        budget.acquire().await;
        assert!(
            t.elapsed() >= Duration::from_secs(3),
            "Retry-After honoured"
        );

        for _ in 0..100 {
            budget.succeeded();
        }
        assert_eq!(
            budget.current_rate(),
            10.0,
            "recovers, never above the configured rate"
        );
    }
}
