//! The request budget shared by every poll of one API host and credential: a token bucket whose
//! rate halves on throttling (once per burst of 429s) and recovers gradually on success. Time
//! comes from tokio, so tests can pause it.
//!
//! Requests waiting for budget are served by priority, not by arrival: a job about to finish
//! must not wait behind hundreds of rechecks of indexes that have not changed in days. The
//! classes, best first: [`Class::Waiting`] (jobs queued or running remotely), [`Class::First`]
//! (first polls of watches never polled, discovery), [`Class::Fetch`] (result fetches), and
//! [`Class::Recheck`] (delivered watches looking for a newer version); within a class, the
//! earliest due first. A lower class gets what the higher ones leave, except that while it
//! waits, at least one grant in [`SHARE_EVERY`] goes to it, so none is ever starved.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What a request is for, best first (see the module's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A job queued or running remotely: its news is the most valuable.
    Waiting = 0,
    /// The first poll of a watch never polled (and discovery calls, which find new watches).
    First = 1,
    /// Fetching a result the status call said is complete.
    Fetch = 2,
    /// Rechecking a delivered watch for a newer version.
    Recheck = 3,
}

impl Class {
    /// Every class, best first.
    pub const ALL: [Class; 4] = [Class::Waiting, Class::First, Class::Fetch, Class::Recheck];

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Waiting => "waiting",
            Class::First => "first",
            Class::Fetch => "fetch",
            Class::Recheck => "recheck",
        }
    }
}

/// While a lower class waits, it is served after at most this many minus one choices for better
/// classes: its guaranteed share, one grant (and one launch) in ten (one in twelve when all
/// three lower classes wait at once), which keeps first polls, result fetches and rechecks from
/// starving behind a crowd of waiting jobs.
pub const SHARE_EVERY: u32 = 10;

/// Picks which class goes next, best first, with the guaranteed share of the lower classes
/// (see [`SHARE_EVERY`]). Used by the budget for grants and by the engine for launches.
#[derive(Debug, Default, Clone)]
pub struct Share {
    /// Per class: choices made for a better class while this one waited.
    passed_over: [u32; 4],
}

impl Share {
    /// The class to serve among those `waiting` (index: `Class as usize`), without noting it.
    pub fn choose(&self, waiting: [bool; 4]) -> Option<Class> {
        let owed = Class::ALL[1..]
            .iter()
            .copied()
            .find(|c| waiting[*c as usize] && self.passed_over[*c as usize] + 1 >= SHARE_EVERY);
        owed.or_else(|| Class::ALL.into_iter().find(|c| waiting[*c as usize]))
    }

    /// Chooses, and notes the choice.
    pub fn pick(&mut self, waiting: [bool; 4]) -> Option<Class> {
        let chosen = self.choose(waiting)?;
        self.served(chosen, waiting);
        Some(chosen)
    }

    /// Notes that `chosen` was served while the classes in `waiting` waited.
    fn served(&mut self, chosen: Class, waiting: [bool; 4]) {
        for c in Class::ALL {
            let i = c as usize;
            if c == chosen {
                self.passed_over[i] = 0;
            } else if waiting[i] && c > chosen {
                self.passed_over[i] += 1;
            }
        }
    }
}

/// The request budget of one API host: a token bucket whose rate halves on throttling and
/// recovers gradually on success.
#[derive(Debug)]
pub struct RequestBudget {
    max_rate: f64,
    burst: f64,
    state: Mutex<BudgetState>,
    /// Wakes waiters when a grant or a departure may make another one the next.
    turn: Notify,
}

/// A waiting request: its class, when it was due (ms), and its arrival number.
type Ticket = (Class, u64, u64);

#[derive(Debug)]
struct BudgetState {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    waiters: BTreeSet<Ticket>,
    next_ticket: u64,
    share: Share,
    /// Grants by class since start.
    granted: [u64; 4],
    /// This process's part of the configured budget (replicas: its shards over all shards).
    portion: f64,
}

impl BudgetState {
    /// Pauses every grant until `until` at least (a longer pause already set is kept).
    fn hold_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Which classes have waiters.
    fn waiting(&self) -> [bool; 4] {
        Class::ALL.map(|c| {
            self.waiters
                .range((c, 0, 0)..)
                .next()
                .is_some_and(|t| t.0 == c)
        })
    }

    /// The waiter the next token goes to: the earliest of the class [`Share`] chooses.
    fn next(&self) -> Option<Ticket> {
        let class = self.share.choose(self.waiting())?;
        self.waiters.range((class, 0, 0)..).next().copied()
    }
}

/// How long until the bucket holds a whole token, rounded up to whole milliseconds: tokio's
/// timers have millisecond ticks, and a sleep shorter than what is left of the current tick
/// ends without the clock moving, so a waiter would ask again, and again, at the same instant.
fn until_token(tokens: f64, rate: f64) -> Duration {
    let secs = ((1.0 - tokens) / rate).clamp(0.0, 3600.0);
    Duration::from_millis((secs * 1000.0).ceil().max(1.0) as u64)
}

/// Takes a waiter out of the queue if its future is dropped before it was served.
struct Waiting<'a> {
    budget: &'a RequestBudget,
    ticket: Ticket,
    served: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let removed = self.budget.lock().waiters.remove(&self.ticket);
        if removed {
            self.budget.turn.notify_waiters();
        }
    }
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
                waiters: BTreeSet::new(),
                next_ticket: 0,
                share: Share::default(),
                granted: [0; 4],
                portion: 1.0,
            }),
            turn: Notify::new(),
        }
    }

    /// Waits for one request's worth of budget, served by `class` and then by `due_ms` (when
    /// the request was due; see the module's text).
    pub async fn acquire(&self, class: Class, due_ms: u64) {
        let ticket = {
            let mut s = self.lock();
            let t = (class, due_ms, s.next_ticket);
            s.next_ticket += 1;
            s.waiters.insert(t);
            t
        };
        let mut waiting = Waiting {
            budget: self,
            ticket,
            served: false,
        };
        loop {
            let turn = self.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                let now = crate::clock::instant_now();
                match s.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ => {
                        s.paused_until = None;
                        self.refill(&mut s, now);
                        if s.tokens < 1.0 {
                            Some(until_token(s.tokens, s.rate))
                        } else if s.next() == Some(ticket) {
                            s.tokens -= 1.0;
                            let classes_waiting = s.waiting();
                            s.share.served(class, classes_waiting);
                            s.waiters.remove(&ticket);
                            s.granted[class as usize] += 1;
                            drop(s);
                            waiting.served = true;
                            // The next waiter may take a token left over.
                            self.turn.notify_waiters();
                            return;
                        } else {
                            // A token is there for a better waiter, which is awake or wakes now.
                            None
                        }
                    }
                }
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = &mut turn => {}
                    }
                }
                None => turn.await,
            }
        }
    }

    /// Grants made so far, by class (index: `Class as usize`).
    pub fn granted(&self) -> [u64; 4] {
        self.lock().granted
    }

    fn refill(&self, s: &mut BudgetState, now: Instant) {
        let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(self.burst_of(s));
        s.refilled_at = now;
    }

    /// The highest rate now: the configured one times this process's portion.
    fn cap(&self, s: &BudgetState) -> f64 {
        self.max_rate * s.portion
    }

    /// The burst now: the configured one times the portion, at least one request.
    fn burst_of(&self, s: &BudgetState) -> f64 {
        (self.burst * s.portion).max(1.0)
    }

    /// Sets this process's part of the configured budget (a replica: its shards over all
    /// shards), in `1/256..=1`. A rate cut by throttling stays cut by the same fraction.
    pub fn set_portion(&self, portion: f64) {
        let portion = if portion.is_finite() {
            portion.clamp(1.0 / 256.0, 1.0)
        } else {
            1.0
        };
        let mut s = self.lock();
        let fraction = s.rate / self.cap(&s);
        s.portion = portion;
        s.rate = (self.cap(&s) * fraction).min(self.cap(&s));
        s.tokens = s.tokens.min(self.burst_of(&s));
        drop(s);
        self.turn.notify_waiters();
    }

    /// The current rate as a fraction of the highest (1.0 unless throttling cut it).
    pub fn fraction(&self) -> f64 {
        let s = self.lock();
        s.rate / self.cap(&s)
    }

    /// Another replica was throttled (its cut, shared through the ledger): slow to the same
    /// `fraction` of the highest rate (never faster than now) and pause for `pause`.
    pub fn throttled_elsewhere(&self, fraction: f64, pause: Duration) {
        let mut s = self.lock();
        let now = crate::clock::instant_now();
        self.refill(&mut s, now);
        let fraction = if fraction.is_finite() {
            fraction.clamp(MIN_RATE_FRACTION, 1.0)
        } else {
            MIN_RATE_FRACTION
        };
        s.rate = s.rate.min(self.cap(&s) * fraction);
        s.last_cut = Some(now);
        s.tokens = 0.0;
        s.hold_until(now + pause.min(MAX_PAUSE));
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
            s.rate = (s.rate / 2.0).max(self.cap(&s) * MIN_RATE_FRACTION);
            s.last_cut = Some(now);
        }
        s.tokens = 0.0;
        let pause = retry_after.unwrap_or_else(|| Duration::from_secs_f64(1.0 / s.rate));
        s.hold_until(now + pause.min(MAX_PAUSE));
        cut
    }

    /// A granted request was not sent after all: its token goes back to the bucket.
    pub fn give_back(&self) {
        let mut s = self.lock();
        s.tokens = (s.tokens + 1.0).min(self.burst_of(&s));
        drop(s);
        self.turn.notify_waiters();
    }

    /// A request went through: win back some of the rate.
    pub fn succeeded(&self) {
        let mut s = self.lock();
        let cap = self.cap(&s);
        s.rate = (s.rate + cap * RECOVERY_FRACTION + s.rate * RECOVERY_GROWTH).min(cap);
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

    #[test]
    fn the_best_class_goes_first_and_every_lower_one_keeps_its_share() {
        let mut share = Share::default();
        let all = [true; 4];
        let picks: Vec<Class> = (0..100).map(|_| share.pick(all).unwrap()).collect();
        let count = |c| picks.iter().filter(|&&p| p == c).count();
        // Each lower class gets a pick after at most SHARE_EVERY - 1 picks of better classes
        // (plus the other lower classes' shares): one in twelve when all three wait at once.
        for c in [Class::First, Class::Fetch, Class::Recheck] {
            assert!(
                count(c) >= 100 / (SHARE_EVERY as usize + 2),
                "{c:?}: {picks:?}"
            );
            assert!(count(c) <= 100 / SHARE_EVERY as usize, "{c:?}: {picks:?}");
        }
        assert!(count(Class::Waiting) >= 70, "{picks:?}");
        // With one lower class waiting, it has exactly one pick in SHARE_EVERY.
        let mut two = Share::default();
        let picks: Vec<Class> = (0..100)
            .map(|_| two.pick([true, false, false, true]).unwrap())
            .collect();
        let rechecks = picks.iter().filter(|&&p| p == Class::Recheck).count();
        assert_eq!(rechecks, 100 / SHARE_EVERY as usize, "{picks:?}");
        // Alone, a lower class has everything; with nothing waiting, nothing is picked.
        assert_eq!(
            share.pick([false, false, false, true]),
            Some(Class::Recheck)
        );
        assert_eq!(share.pick([false; 4]), None);
        // Just served, the share is not owed: the best class goes first again.
        assert_eq!(share.pick([true, false, false, true]), Some(Class::Waiting));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_job_is_served_before_rechecks_that_queued_earlier() {
        use std::sync::Arc;
        let budget = Arc::new(RequestBudget::new(1.0, 1));
        budget.acquire(Class::Waiting, 0).await; // the burst is spent
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..5u64 {
            let (b, o) = (budget.clone(), order.clone());
            tasks.spawn(async move {
                b.acquire(Class::Recheck, i).await;
                o.lock().unwrap().push(format!("recheck{i}"));
            });
        }
        tokio::task::yield_now().await;
        let (b, o) = (budget.clone(), order.clone());
        tasks.spawn(async move {
            b.acquire(Class::Waiting, 100).await;
            o.lock().unwrap().push("job".to_owned());
        });
        while tasks.join_next().await.is_some() {}
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "job", "{order:?}");
        // Rechecks in the order they were due.
        assert_eq!(
            order[1..],
            ["recheck0", "recheck1", "recheck2", "recheck3", "recheck4"]
        );
        assert_eq!(budget.granted(), [2, 0, 0, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let budget = RequestBudget::new(1.0, 1);
        budget.acquire(Class::Waiting, 0).await;
        // Dropped before it is served (its poll was cancelled): the next one is not blocked.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            budget.acquire(Class::Waiting, 1),
        );
        assert!(gave_up.await.is_err());
        let t = crate::clock::instant_now();
        budget.acquire(Class::Recheck, 2).await;
        assert!(t.elapsed() <= Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(budget.lock().waiters.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_rate_and_slows_on_throttle() {
        let budget = RequestBudget::new(10.0, 5);
        let start = crate::clock::instant_now();
        for _ in 0..25 {
            budget.acquire(Class::Waiting, 0).await;
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
        budget.acquire(Class::Waiting, 0).await;
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

    #[tokio::test(start_paused = true)]
    async fn a_replica_spends_its_portion_and_slows_when_another_is_throttled() {
        // 40/s for the deployment, burst 8; this replica holds a quarter of the shards.
        let budget = RequestBudget::new(40.0, 8);
        budget.set_portion(0.25);
        assert_eq!(budget.current_rate(), 10.0);
        let start = crate::clock::instant_now();
        for _ in 0..22 {
            budget.acquire(Class::Waiting, 0).await;
        }
        // 2 from its part of the burst, then 20 at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
        // Another replica's cut to half reaches this one: half its rate, and the pause.
        budget.throttled_elsewhere(0.5, Duration::from_secs(2));
        assert_eq!(budget.current_rate(), 5.0);
        assert_eq!(budget.fraction(), 0.5);
        let t = crate::clock::instant_now();
        budget.acquire(Class::Waiting, 0).await;
        assert!(t.elapsed() >= Duration::from_secs(2), "the pause is kept");
        // Gaining shards keeps the cut fraction; recovery never goes above the portion.
        budget.set_portion(0.5);
        assert_eq!(budget.current_rate(), 10.0);
        for _ in 0..200 {
            budget.succeeded();
        }
        assert_eq!(budget.current_rate(), 20.0);
        // A garbled fraction from the ledger slows to the floor, not to zero or infinity.
        budget.throttled_elsewhere(f64::NAN, Duration::ZERO);
        assert!(budget.current_rate() > 0.0 && budget.current_rate() < 1.0);
        budget.set_portion(f64::NAN);
        assert!(budget.current_rate().is_finite());
    }
}
