//! One poll step as a pure decision: a classified API answer in; the next watch state, the action
//! to take and when to poll next out. No IO, no clock, no sleeping, no global randomness: time
//! and the jitter seed are passed in (STYLE.md §4, §6), the timing comes from [`Policy`].

use std::fmt;
use std::time::Duration;

use crate::ncp::{RemoteStatus, SummaryResult, SummaryStatus, Verdict};
use crate::policy::Policy;

/// Where a watch is in its life (DESIGN.md "A watch").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Never polled.
    Pending,
    /// Queued or running remotely (or not requested yet, within the grace); polled on a growing
    /// interval.
    Waiting,
    /// A result version was fetched; deliveries are pending.
    Completed,
    /// Delivered; rechecked at a slow interval for a newer version.
    Watching,
    /// `SUMMARIZE_FAIL`.
    Failed,
    /// `SUMMARIZE_CANCELED`.
    Canceled,
    /// `BEFORE_SUMMARIZE` for longer than the grace.
    NotRequested,
    /// `max_wait` passed before completion.
    TimedOut,
    /// A permanent API error; needs an operator.
    Rejected,
    /// A re-index replaced the watch's index; a watch that follows the asset's latest index goes
    /// on as a new watch of the new index.
    Superseded,
}

impl Phase {
    /// Every phase, in display order.
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Waiting,
        Phase::Completed,
        Phase::Watching,
        Phase::Failed,
        Phase::Canceled,
        Phase::NotRequested,
        Phase::TimedOut,
        Phase::Rejected,
        Phase::Superseded,
    ];

    /// The name used in logs, events, the ledger and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Waiting => "waiting",
            Phase::Completed => "completed",
            Phase::Watching => "watching",
            Phase::Failed => "failed",
            Phase::Canceled => "canceled",
            Phase::NotRequested => "not_requested",
            Phase::TimedOut => "timed_out",
            Phase::Rejected => "rejected",
            Phase::Superseded => "superseded",
        }
    }

    /// Parses [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Terminal phases end polling; they stay in the ledger until reset.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Failed
                | Phase::Canceled
                | Phase::NotRequested
                | Phase::TimedOut
                | Phase::Rejected
                | Phase::Superseded
        )
    }

    /// True once a result was delivered (the success outcome of `scenewatch once`).
    pub fn is_success(self) -> bool {
        matches!(self, Phase::Watching)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which calls a watch uses, decided once (on its first poll, or when the API changes under it)
/// and kept in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Asset-level status and result: the index is the asset's latest.
    Asset,
    /// Index-level status (with the scene summary id) and result.
    IndexWithId,
    /// Asset-level status (the index is the asset's latest) and the index-level result: an
    /// index-level watch without a scene summary id still sees failures as they happen.
    AssetStatusIndexResult,
    /// Only the index-level result: the index is not the latest and no scene summary id is
    /// known, so "not completed" cannot be told from failed (it ends timed_out).
    IndexResultOnly,
}

impl Route {
    /// The ledger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Asset => "asset",
            Route::IndexWithId => "index",
            Route::AssetStatusIndexResult => "asset-status+index-result",
            Route::IndexResultOnly => "index-result",
        }
    }

    /// Parses [`Route::as_str`].
    pub fn parse(s: &str) -> Option<Route> {
        [
            Route::Asset,
            Route::IndexWithId,
            Route::AssetStatusIndexResult,
            Route::IndexResultOnly,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Uses an index-level path (gone once NAVER removes that API).
    pub fn uses_index_api(self) -> bool {
        !matches!(self, Route::Asset)
    }
}

/// What the step needs to know of the watch's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline from the first poll to completion.
    pub max_wait: Duration,
    /// How long `BEFORE_SUMMARIZE` may last.
    pub not_requested_grace: Duration,
    /// Intervals between polls and retries.
    pub policy: Policy,
}

/// The state of one watch. Times are offsets on the caller's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchState {
    /// The phase.
    pub phase: Phase,
    /// The last remote status seen, if any.
    pub remote: Option<RemoteStatus>,
    /// Answers received (successful or not).
    pub polls: u64,
    /// Failed attempts since the last good answer.
    pub consecutive_errors: u32,
    /// Position in the poll interval series since the remote status last changed.
    pub attempt: u32,
    /// Which calls it uses; `None` until decided.
    pub route: Option<Route>,
    /// When the watch started waiting (its first poll).
    pub started_at: Option<Duration>,
    /// When `BEFORE_SUMMARIZE` was first seen in the current stretch.
    pub before_since: Option<Duration>,
    /// `lastAnalyzedAt` of the last version fetched.
    pub last_version: Option<String>,
    /// The last error, for display (never holds secrets: API errors do not).
    pub last_error: Option<String>,
}

impl Default for WatchState {
    fn default() -> Self {
        Self {
            phase: Phase::Pending,
            remote: None,
            polls: 0,
            consecutive_errors: 0,
            attempt: 0,
            route: None,
            started_at: None,
            before_since: None,
            last_version: None,
            last_error: None,
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Poll the status (or result) again after the next backoff delay; start the backoff over
    /// when `reset_backoff` (the remote status changed).
    PollAgain {
        /// The remote status changed: interval back to `initial_interval`.
        reset_backoff: bool,
    },
    /// The status says completed: fetch the result now.
    FetchResult,
    /// A new version was fetched: record and deliver it, then call [`delivered`].
    Deliver {
        /// Its `lastAnalyzedAt`.
        version: String,
    },
    /// The version fetched was already delivered: recheck after `recheck_interval`.
    Recheck,
    /// A transient failure: retry the same call after the error backoff (or `after`).
    Retry {
        /// A delay suggested by the server.
        after: Option<Duration>,
    },
    /// The gateway throttled us: slow the whole request budget, then retry.
    Throttle {
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// The credentials were refused, or the quota is used up: pause every watch of this client.
    PauseClient(PauseReason),
    /// A terminal phase was reached.
    Stop,
}

/// Why the whole client pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// The API refused the credentials (401).
    Auth,
    /// The account's quota is used up (gateway 429 with errorCode 400).
    Quota,
}

impl PauseReason {
    /// `auth` or `quota`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Auth => "auth",
            PauseReason::Quota => "quota",
        }
    }
}

/// A classified answer from the API.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// From the status endpoint.
    Status(&'a Verdict<SummaryStatus>),
    /// From the result endpoint.
    Result(&'a Verdict<SummaryResult>),
}

/// The outcome of one step: the whole decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The next state.
    pub state: WatchState,
    /// What to do.
    pub action: Action,
    /// When to poll next, on the caller's clock (like `now`); `None` when the action decides
    /// (fetch now, pause the client, stop).
    pub next_poll: Option<Duration>,
}

/// Answers over `api.max_body_bytes` in a row before a watch ends `rejected`.
pub const TOO_LARGE_TRIES: u32 = 3;

/// Checks the deadline before a poll; `Some` when the watch has timed out.
pub fn check_deadline(state: &WatchState, now: Duration, limits: Limits) -> Option<Step> {
    let started = state.started_at?;
    let waiting = matches!(state.phase, Phase::Pending | Phase::Waiting);
    if waiting && now.saturating_sub(started) >= limits.max_wait {
        let mut next = state.clone();
        next.phase = Phase::TimedOut;
        return Some(Step {
            state: next,
            action: Action::Stop,
            next_poll: None,
        });
    }
    None
}

/// Decides what an answer means for the watch, and when it is polled next. `seed` draws the
/// jitter of the next interval (see [`crate::policy::jitter_seed`]).
pub fn step(
    state: &WatchState,
    now: Duration,
    limits: Limits,
    answer: Answer<'_>,
    seed: u64,
) -> Step {
    let (mut state, action) = decide(state, now, limits, answer);
    match &action {
        Action::PollAgain {
            reset_backoff: true,
        } => state.attempt = 0,
        Action::PollAgain { .. } => state.attempt = state.attempt.saturating_add(1),
        Action::Deliver { .. } | Action::Recheck => state.attempt = 0,
        _ => {}
    }
    let next_poll = next_poll(&state, &action, now, limits, seed);
    Step {
        state,
        action,
        next_poll,
    }
}

/// When the watch is polled next after `action`: the poll series for "still waiting", the error
/// series for failures (or the server's `Retry-After`, bounded), the recheck interval after a
/// delivery; never past the deadline of a watch that is still waiting, so the deadline check
/// runs on time.
fn next_poll(
    state: &WatchState,
    action: &Action,
    now: Duration,
    limits: Limits,
    seed: u64,
) -> Option<Duration> {
    let p = &limits.policy;
    let delay = match action {
        Action::PollAgain { .. } => p.poll_delay(state.attempt, seed),
        // A failure is retried on the error series (or after what the server asked, bounded),
        // but never sooner than the watch would be polled if the answer had been good: a flaky
        // API must not be polled faster than a healthy one.
        //
        // (A watch at the start of its series, `attempt` 0, retries on the error series alone,
        // from min(initial, 1 s): an error on its first polls is worth a quick retry.)
        Action::Retry { after } | Action::Throttle { retry_after: after } => {
            let healthy = if state.attempt > 0 {
                p.poll_delay(state.attempt, seed)
            } else {
                Duration::ZERO
            };
            match after {
                Some(d) => p.server_delay(*d).max(healthy),
                None => p.error_delay(state.consecutive_errors, seed).max(healthy),
            }
        }
        Action::Deliver { .. } | Action::Recheck => p.recheck,
        Action::FetchResult | Action::PauseClient(_) | Action::Stop => return None,
    };
    Some(within_deadline(state, now, limits, delay))
}

/// `now + delay`, but never past the deadline of a watch that is still waiting, so the deadline
/// check runs on time.
fn within_deadline(state: &WatchState, now: Duration, limits: Limits, delay: Duration) -> Duration {
    let mut at = now.saturating_add(delay);
    if matches!(state.phase, Phase::Pending | Phase::Waiting)
        && let Some(started) = state.started_at
    {
        let deadline = started.saturating_add(limits.max_wait);
        at = at.min(deadline.max(now + Duration::from_millis(1)));
    }
    at
}

/// The adaptive policy's timing for a step that polls again: the next poll `forecast` after
/// `now` (see [`crate::forecast`]), bounded by `initial_interval` and `max_interval` and by the
/// deadline. Any other step is returned as it is.
pub fn adapt(mut step: Step, now: Duration, limits: Limits, forecast: Duration) -> Step {
    if matches!(step.action, Action::PollAgain { .. }) {
        let p = &limits.policy;
        let delay = forecast.clamp(p.initial, p.max);
        step.next_poll = Some(within_deadline(&step.state, now, limits, delay));
    }
    step
}

/// The state and action an answer calls for (timing aside).
fn decide(
    state: &WatchState,
    now: Duration,
    limits: Limits,
    answer: Answer<'_>,
) -> (WatchState, Action) {
    let mut next = state.clone();
    next.polls += 1;
    next.started_at.get_or_insert(now);
    if next.phase == Phase::Pending {
        next.phase = Phase::Waiting;
    }
    // Errors are handled alike for both endpoints.
    let failure = match answer {
        Answer::Status(v) => failure_of(v),
        Answer::Result(v) => failure_of(v),
    };
    if let Some((error, mut action)) = failure {
        next.consecutive_errors += 1;
        next.last_error = Some(error.to_string());
        // An answer over the size cap may be a broken one: tried again, a few times, before the
        // watch ends (the message says to raise api.max_body_bytes if the result is genuine).
        if error.origin == crate::ncp::ErrorOrigin::TooLarge
            && next.consecutive_errors >= TOO_LARGE_TRIES
        {
            action = Action::Stop;
        }
        if action == Action::Stop {
            next.phase = Phase::Rejected;
        }
        return (next, action);
    }
    // A good answer ends an error streak, except a status saying "completed": the result call
    // that follows is what has to work, and a result that keeps failing (one that never
    // decodes) must keep backing off instead of starting over at every status poll.
    let completed_status =
        matches!(answer, Answer::Status(Verdict::Ok(s)) if s.status == RemoteStatus::Completed);
    if !completed_status {
        next.consecutive_errors = 0;
        next.last_error = None;
    }

    let action = match answer {
        Answer::Status(Verdict::Ok(s)) => on_status(&mut next, now, limits, &s.status),
        Answer::Result(Verdict::Ok(r)) => match &r.info {
            Some(info) => {
                next.before_since = None;
                next.remote = Some(RemoteStatus::Completed);
                if state.last_version.as_deref() == Some(info.last_analyzed_at.as_str()) {
                    // The same version again. It is `watching` once every sink has it; while a
                    // delivery is still pending (a sink is down) it stays `completed`.
                    if next.phase != Phase::Completed {
                        next.phase = Phase::Watching;
                    }
                    Action::Recheck
                } else {
                    next.phase = Phase::Completed;
                    next.last_version = Some(info.last_analyzed_at.clone());
                    Action::Deliver {
                        version: info.last_analyzed_at.clone(),
                    }
                }
            }
            // A result without sceneSummaryInfo is not complete yet.
            None => Action::PollAgain {
                reset_backoff: false,
            },
        },
        // "Not completed yet" from the result endpoint, in a known code or not: still waiting.
        // After a delivery it means a re-analysis is running: wait for it like a first run,
        // under a new deadline, as the status endpoint's WAIT/SUMMARIZING would.
        Answer::Result(Verdict::Pending(_) | Verdict::NotReady(_))
        | Answer::Status(Verdict::Pending(_) | Verdict::NotReady(_)) => {
            if next.phase == Phase::Watching {
                next.phase = Phase::Waiting;
                next.started_at = Some(now);
            }
            Action::PollAgain {
                reset_backoff: false,
            }
        }
        // Failures were handled above.
        _ => Action::PollAgain {
            reset_backoff: false,
        },
    };
    (next, action)
}

fn on_status(
    next: &mut WatchState,
    now: Duration,
    limits: Limits,
    status: &RemoteStatus,
) -> Action {
    let changed = next.remote.as_ref() != Some(status);
    next.remote = Some(status.clone());
    match status {
        RemoteStatus::BeforeSummarize => {
            let since = *next.before_since.get_or_insert(now);
            if now.saturating_sub(since) >= limits.not_requested_grace {
                next.phase = Phase::NotRequested;
                return Action::Stop;
            }
            Action::PollAgain {
                reset_backoff: changed,
            }
        }
        RemoteStatus::WaitSummarize | RemoteStatus::Summarizing | RemoteStatus::Unknown(_) => {
            next.before_since = None;
            if next.phase == Phase::Watching {
                // A re-analysis started after delivery: poll it like a first run.
                next.phase = Phase::Waiting;
                next.started_at = Some(now);
            }
            Action::PollAgain {
                reset_backoff: changed,
            }
        }
        RemoteStatus::Completed => {
            next.before_since = None;
            Action::FetchResult
        }
        RemoteStatus::Failed => {
            next.phase = Phase::Failed;
            Action::Stop
        }
        RemoteStatus::Canceled => {
            next.phase = Phase::Canceled;
            Action::Stop
        }
    }
}

/// The error of a failed verdict and the action it calls for; `None` for `Ok` and `Pending`.
fn failure_of<T>(v: &Verdict<T>) -> Option<(&crate::ncp::ApiError, Action)> {
    match v {
        Verdict::Ok(_) | Verdict::Pending(_) | Verdict::NotReady(_) => None,
        Verdict::Retryable { after, error } => Some((error, Action::Retry { after: *after })),
        Verdict::Throttled { retry_after, error } => Some((
            error,
            Action::Throttle {
                retry_after: *retry_after,
            },
        )),
        Verdict::AuthFailure(error) => Some((error, Action::PauseClient(PauseReason::Auth))),
        Verdict::QuotaExceeded { error, .. } => {
            Some((error, Action::PauseClient(PauseReason::Quota)))
        }
        Verdict::Permanent(error) => Some((error, Action::Stop)),
    }
}

/// Records that every sink confirmed `version`.
pub fn delivered(state: &WatchState, version: &str) -> WatchState {
    let mut next = state.clone();
    next.phase = Phase::Watching;
    next.last_version = Some(version.to_string());
    next
}

#[cfg(test)]
mod tests;
