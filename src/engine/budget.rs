//! The request budget shared by every poll of one API host and credential: a token bucket whose
//! rate halves on throttling (once per burst of 429s) and recovers gradually on success. Time
//! comes from tokio, so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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
/// The longest one 429 can pause the whole budget, whatever `Retry-After` says.
const MAX_PAUSE: Duration = Duration::from_secs(300);

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
                refilled_at: crate::clock::instant_now(),
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
                let now = crate::clock::instant_now();
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
    /// `retry_after` when given (the caller bounds it). True when this 429 cut the rate (see
    /// `CUT_WINDOW`).
    pub fn throttled(&self, retry_after: Option<Duration>) -> bool {
        let mut s = self.lock();
        let now = crate::clock::instant_now();
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
        let until = now + pause.min(MAX_PAUSE);
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

    #[tokio::test(start_paused = true)]
    async fn budget_limits_rate_and_slows_on_throttle() {
        let budget = RequestBudget::new(10.0, 5);
        let start = crate::clock::instant_now();
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
        let t = crate::clock::instant_now();
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
