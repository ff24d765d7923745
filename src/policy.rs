//! Poll timing as pure functions: the exponential series between polls and between retries
//! (backon, with jitter drawn from a seed the caller passes in), the bound on delays a server
//! asks for, and the spread of first polls. No clock and no global randomness: the same inputs
//! give the same delays, in tests and after a restart.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::PollConfig;
use crate::domain::WatchKey;

/// The timing settings of polling (`[poll]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First interval between polls, and the base of every series.
    pub initial: Duration,
    /// Longest interval between polls; also the longest delay a server can ask for.
    pub max: Duration,
    /// Interval between rechecks of a delivered watch.
    pub recheck: Duration,
}

/// Retries of failing calls start here (or at `initial`, if that is shorter): an outage is
/// noticed to be over quickly, and the series still backs off to `max`.
const ERROR_INITIAL: Duration = Duration::from_secs(1);

impl Policy {
    /// From the validated `[poll]` section.
    pub fn from_config(p: &PollConfig) -> Self {
        Self {
            initial: p.initial_interval,
            max: p.max_interval.max(p.initial_interval),
            recheck: p.recheck_interval,
        }
    }

    /// The delay before poll number `attempt` (0-based) since the last status change.
    pub fn poll_delay(&self, attempt: u32, seed: u64) -> Duration {
        backoff(self.initial, self.max, attempt, seed)
    }

    /// The delay before retry number `consecutive_errors` (1-based) of a failing call.
    pub fn error_delay(&self, consecutive_errors: u32, seed: u64) -> Duration {
        backoff(
            self.initial.min(ERROR_INITIAL),
            self.max,
            consecutive_errors.saturating_sub(1),
            seed,
        )
    }

    /// A delay the server asked for (`Retry-After`), honoured up to [`Policy::max`]: a server
    /// cannot park a watch for hours (or, with an absurd value, wrap a timestamp), and a watch
    /// close to its deadline is still tried before it.
    pub fn server_delay(&self, asked: Duration) -> Duration {
        asked.min(self.max)
    }
}

/// Term `attempt` (0-based) of the exponential series from `initial` to `max` (factor 2, with
/// jitter: each term is drawn between the plain term and twice it, then capped at `max`). The
/// jitter comes from `seed`, so a caller that derives it from the watch and its poll count gets
/// the same series after a restart, and watches of one batch still spread apart.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let max = max.max(initial);
    // Past ~40 doublings every term is `max` anyway; bound the walk.
    let n = attempt.min(64) as usize;
    ExponentialBuilder::default()
        .with_min_delay(initial)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
        .nth(n)
        .unwrap_or(max)
        .min(max)
}

/// The longest recheck interval [`fitted_recheck`] stretches to: a budget so small that even
/// this is too short is reported, not followed to absurd intervals.
pub const MAX_FITTED_RECHECK: Duration = Duration::from_secs(30 * 24 * 3600);

/// The recheck interval the budget can carry: `configured`, or longer when rechecking
/// `watching` delivered watches every `configured`, at `calls_each` requests per recheck (a
/// status call, and a result call when the status cannot tell the version), would need more
/// than `left_per_sec` requests a second (what the budget leaves after waiting jobs and first
/// polls). Stretched so that the rechecks fit in `left_per_sec`, spread over the interval;
/// never shorter than `configured`, never longer than [`MAX_FITTED_RECHECK`].
pub fn fitted_recheck(
    configured: Duration,
    watching: u64,
    calls_each: f64,
    left_per_sec: f64,
) -> Duration {
    let calls = watching as f64 * calls_each.clamp(1.0, 4.0);
    if watching == 0 || configured.is_zero() || !calls.is_finite() {
        return configured;
    }
    let needed = calls / configured.as_secs_f64();
    if !left_per_sec.is_finite() || needed <= left_per_sec {
        return configured;
    }
    if left_per_sec <= 0.0 {
        return MAX_FITTED_RECHECK.max(configured);
    }
    let secs = (calls / left_per_sec).min(MAX_FITTED_RECHECK.as_secs_f64());
    Duration::from_secs_f64(secs).max(configured)
}

/// A seed for the jitter of one watch's next delay: stable for the same watch and poll count.
pub fn jitter_seed(key: &WatchKey, polls: u64) -> u64 {
    fnv1a(&key.parts().map(str::as_bytes)) ^ polls.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Offset of a watch's first poll within `window`, from a stable hash of its key, so that
/// thousands of watches loaded at once do not fire together (and land at the same offsets on
/// every start).
pub fn first_poll_offset(key: &WatchKey, window: Duration) -> Duration {
    let window_ms = window.as_millis().max(1) as u64;
    let h = fnv1a(&key.parts().map(str::as_bytes));
    Duration::from_millis(h % window_ms)
}

/// FNV-1a 64 over the parts, with a separator so ("ab","c") and ("a","bc") differ. Stable across
/// Rust versions, unlike `DefaultHasher`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rechecks_are_stretched_to_what_the_budget_leaves_and_no_further() {
        let hour = Duration::from_secs(3600);
        // 100,000 watches hourly need 27.8/s; 8/s left: every 12,500 s.
        assert_eq!(
            fitted_recheck(hour, 100_000, 1.0, 8.0),
            Duration::from_secs(12_500)
        );
        // Two calls a recheck (status and result): twice as long.
        assert_eq!(
            fitted_recheck(hour, 100_000, 2.0, 8.0),
            Duration::from_secs(25_000)
        );
        // Demand within what is left: the configured interval.
        assert_eq!(fitted_recheck(hour, 1_000, 1.0, 8.0), hour);
        assert_eq!(fitted_recheck(hour, 0, 1.0, 0.0), hour);
        // Absurd inputs stay within bounds, without panicking.
        assert_eq!(fitted_recheck(hour, 100_000, 1.0, 0.0), MAX_FITTED_RECHECK);
        assert_eq!(
            fitted_recheck(hour, u64::MAX, 1.0, 1e-300),
            MAX_FITTED_RECHECK
        );
        assert_eq!(fitted_recheck(hour, 10, 1.0, f64::NAN), hour);
        assert_eq!(fitted_recheck(hour, 10, f64::NAN, 1.0), hour);
        assert_eq!(fitted_recheck(hour, 10, 1.0, -1.0), MAX_FITTED_RECHECK);
        assert_eq!(fitted_recheck(Duration::ZERO, 10, 1.0, 1.0), Duration::ZERO);
    }

    fn key(i: u32) -> WatchKey {
        WatchKey::new("w", "p", format!("a{i}"), "i").unwrap()
    }

    fn policy() -> Policy {
        Policy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            recheck: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_series_grows_within_bounds_and_is_a_function_of_its_inputs() {
        let p = policy();
        let delays: Vec<_> = (0..12).map(|n| p.poll_delay(n, 7)).collect();
        for d in &delays {
            assert!(*d >= p.initial && *d <= p.max, "{d:?}");
        }
        assert_eq!(
            *delays.last().unwrap(),
            p.max,
            "reaches the cap: {delays:?}"
        );
        assert!(p.poll_delay(0, 7) < Duration::from_secs(21));
        assert!(p.poll_delay(3, 7) >= Duration::from_secs(80));
        assert_eq!(p.poll_delay(40, 7), p.max);
        assert_eq!(p.poll_delay(u32::MAX, 7), p.max);
        // Pure: the same seed gives the same delay; other seeds spread.
        assert_eq!(p.poll_delay(2, 99), p.poll_delay(2, 99));
        let spread: std::collections::HashSet<_> = (0..50).map(|s| p.poll_delay(2, s)).collect();
        assert!(spread.len() > 10, "jitter spreads: {spread:?}");
    }

    #[test]
    fn retries_start_within_a_second_and_back_off() {
        let p = policy();
        assert!(p.error_delay(1, 1) < Duration::from_secs(2));
        assert!(p.error_delay(5, 1) >= Duration::from_secs(16));
        assert_eq!(p.error_delay(30, 1), p.max);
        let fast = Policy {
            initial: Duration::from_millis(100),
            ..policy()
        };
        assert!(fast.error_delay(1, 1) < Duration::from_millis(201));
    }

    #[test]
    fn server_delays_are_bounded() {
        let p = policy();
        assert_eq!(
            p.server_delay(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(p.server_delay(Duration::from_secs(90_000)), p.max);
        assert_eq!(p.server_delay(Duration::MAX), p.max);
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
}
