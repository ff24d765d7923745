//! Wiring and lifecycle of `scenewatch once` (and so of the demo): build the client, the request
//! budget and the sinks from a validated [`Config`], poll every watch until it is terminal or
//! delivered, and report. The decisions live in [`crate::watch`]; this file sleeps and calls.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, WatchSpec};
use crate::ncp::{Client, ClientOptions, Generation, Verdict};
use crate::progress::Board;
use crate::schedule::{PollBackoff, RequestBudget, first_poll_offset};
use crate::sink::{self, Delivery, Sink};
use crate::watch::{self, Action, Answer, Limits, Phase, WatchState};

/// Exit codes of `once` (and `demo`), documented in the README and `--help`.
pub mod exit {
    /// Every watch completed and was delivered to every sink.
    pub const OK: u8 = 0;
    /// Something else went wrong (see the error).
    pub const ERROR: u8 = 1;
    /// At least one watch ended failed, canceled, not_requested, timed_out or rejected.
    pub const NOT_ALL_COMPLETED: u8 = 2;
    /// Command-line usage error (sysexits EX_USAGE).
    pub const USAGE: u8 = 64;
    /// A sink could not write (sysexits EX_IOERR).
    pub const SINK: u8 = 74;
    /// The API refused the credentials (sysexits EX_NOPERM).
    pub const AUTH: u8 = 77;
    /// The configuration is invalid (sysexits EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// Interrupted by SIGINT or SIGTERM before the end.
    pub const INTERRUPTED: u8 = 130;
}

/// How many times `once` tries one delivery to one sink before giving up on it.
const DELIVERY_ATTEMPTS: u32 = 5;

/// How one watch ended.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// The watch.
    pub spec: WatchSpec,
    /// Its final state.
    pub state: WatchState,
    /// Where the result was written, one per sink.
    pub locations: Vec<String>,
    /// The delivery error, if a sink failed.
    pub sink_error: Option<String>,
    /// Time from its first poll to its end.
    pub elapsed: Duration,
}

/// What `once` did.
#[derive(Debug, Clone, Default)]
pub struct OnceReport {
    /// One per watch, in config order.
    pub outcomes: Vec<WatchOutcome>,
    /// Set when the API refused the credentials (every watch stopped).
    pub auth_failure: Option<String>,
    /// Set when the run was interrupted.
    pub interrupted: bool,
}

impl OnceReport {
    /// The process exit code: see [`exit`].
    pub fn exit_code(&self) -> u8 {
        if self.auth_failure.is_some() {
            exit::AUTH
        } else if self.interrupted {
            exit::INTERRUPTED
        } else if self.outcomes.iter().any(|o| o.sink_error.is_some()) {
            exit::SINK
        } else if self.outcomes.iter().all(|o| o.state.phase.is_success()) {
            exit::OK
        } else {
            exit::NOT_ALL_COMPLETED
        }
    }
}

/// Builds the API client of a configuration.
pub fn client(config: &Config) -> anyhow::Result<Client> {
    let client = Client::new(ClientOptions {
        endpoint: config.api.endpoint.clone(),
        credentials: config.api.credentials.clone(),
        timeout: config.api.timeout,
        max_body_bytes: config.api.max_body_bytes,
        pending_codes: config.api.pending_codes.clone(),
        user_agent: format!("scenewatch/{}", env!("CARGO_PKG_VERSION")),
    })?;
    Ok(client)
}

/// Builds the sinks and checks that each can take deliveries; the error names the sink at fault.
pub async fn sinks(config: &Config) -> Result<Vec<Arc<dyn Sink>>, sink::SinkError> {
    let mut out = Vec::new();
    for c in &config.sinks {
        let s = sink::build(c)?;
        s.healthcheck().await?;
        out.push(s);
    }
    Ok(out)
}

/// Everything the watch tasks share.
struct Shared {
    client: Client,
    budget: RequestBudget,
    permits: Semaphore,
    sinks: Vec<Arc<dyn Sink>>,
    board: Arc<Board>,
    config: Config,
    /// Cancelled on shutdown or when the credentials are refused.
    stop: CancellationToken,
    auth_failure: std::sync::Mutex<Option<String>>,
}

/// Polls every configured watch until each is terminal or delivered, then returns the report.
/// `shutdown` interrupts the run (the report then says so).
pub async fn once(
    config: Config,
    sinks: Vec<Arc<dyn Sink>>,
    board: Arc<Board>,
    shutdown: CancellationToken,
) -> anyhow::Result<OnceReport> {
    let client = client(&config)?;
    let shared = Arc::new(Shared {
        client,
        budget: RequestBudget::new(config.api.requests_per_second, config.api.burst),
        permits: Semaphore::new(config.poll.concurrency),
        sinks,
        board,
        stop: shutdown.child_token(),
        auth_failure: std::sync::Mutex::new(None),
        config,
    });
    let tracker = TaskTracker::new();
    let mut handles = Vec::new();
    for spec in shared.config.watches.clone() {
        let row = shared.board.add(spec.key.to_string());
        handles.push(tracker.spawn(run_watch(shared.clone(), spec, row)));
    }
    tracker.close();
    let mut report = OnceReport::default();
    for h in handles {
        report.outcomes.push(h.await?);
    }
    report.auth_failure = shared
        .auth_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    report.interrupted = shutdown.is_cancelled();
    Ok(report)
}

/// Which endpoint the next call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Status,
    Result,
}

/// Follows one watch to its end.
async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, row: usize) -> WatchOutcome {
    let poll = &shared.config.poll;
    let limits = Limits {
        max_wait: spec.max_wait,
        not_requested_grace: poll.not_requested_grace,
    };
    let key = spec.key.to_string();
    let target = spec.target();
    // Without a status endpoint (index generation, no scene summary id) the result endpoint
    // is polled and its "not completed yet" answer means pending.
    let default_call = if spec.generation == Generation::Asset || spec.scene_summary_id.is_some() {
        Call::Status
    } else {
        Call::Result
    };
    let started = Instant::now();
    let mut state = WatchState::default();
    let mut backoff = PollBackoff::new(poll.initial_interval, poll.max_interval);
    let mut errors = PollBackoff::new(
        poll.initial_interval.min(Duration::from_secs(1)),
        poll.max_interval,
    );
    let mut call = default_call;
    let outcome = |state: WatchState, locations, sink_error| WatchOutcome {
        spec: spec.clone(),
        state,
        locations,
        sink_error,
        elapsed: started.elapsed(),
    };

    // Spread first polls over the initial interval so many watches do not fire together.
    if !sleep_or_stop(
        &shared.stop,
        first_poll_offset(&spec.key, poll.initial_interval),
    )
    .await
    {
        return outcome(state, Vec::new(), None);
    }
    loop {
        let now = started.elapsed();
        if let Some(s) = watch::check_deadline(&state, now, limits) {
            warn!(watch = %key, max_wait = %humantime::format_duration(limits.max_wait), "Watch timed out before completion.");
            state = s.state;
            break;
        }
        let answer = tokio::select! {
            a = request(&shared, spec.generation, &target, call) => a,
            _ = shared.stop.cancelled() => return outcome(state, Vec::new(), None),
        };
        let now = started.elapsed();
        let step = match &answer {
            Answered::Status(v) => watch::step(&state, now, limits, Answer::Status(v)),
            Answered::Result(v) => watch::step(&state, now, limits, Answer::Result(v)),
        };
        log_transition(&key, &state, &step.state, &step.action);
        state = step.state;
        shared.board.update(row, |r| {
            r.phase = state.phase;
            r.remote = state.remote.as_ref().map(|s| s.as_str().to_string());
            r.polls = state.polls;
            r.note = state.last_error.clone();
        });
        let delay = match step.action {
            Action::PollAgain { reset_backoff } => {
                if reset_backoff {
                    backoff.reset();
                }
                errors.reset();
                call = default_call;
                backoff.next_delay()
            }
            Action::FetchResult => {
                call = Call::Result;
                continue;
            }
            Action::Deliver { version } => {
                let Answered::Result(Verdict::Ok(result)) = answer else {
                    // `Deliver` only ever follows a result; keep polling if that ever changes.
                    continue;
                };
                let (locations, sink_error) = deliver_all(&shared, &spec, result).await;
                if sink_error.is_none() {
                    state = watch::delivered(&state, &version);
                }
                finish_row(
                    &shared,
                    row,
                    &state,
                    started,
                    locations.first().cloned().or(sink_error.clone()),
                );
                return outcome(state, locations, sink_error);
            }
            Action::Recheck => break,
            Action::Retry { after } => after.unwrap_or_else(|| errors.next_delay()),
            Action::Throttle { retry_after } => {
                shared.budget.throttled(retry_after);
                retry_after.unwrap_or_else(|| errors.next_delay())
            }
            Action::PauseClient => {
                let message = state.last_error.clone().unwrap_or_default();
                let mut first = shared
                    .auth_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    // One clear error for the whole client, not one per watch.
                    error!(error = %message, "The API refused the credentials; every watch stops. Check api.access_key and the secret key (scenewatch sign helps).");
                    *first = Some(message);
                }
                drop(first);
                shared.stop.cancel();
                break;
            }
            Action::Stop => break,
        };
        // Never sleep past the deadline: the deadline check must run on time.
        let remaining = limits.max_wait.saturating_sub(
            started
                .elapsed()
                .saturating_sub(state.started_at.unwrap_or_default()),
        );
        if !sleep_or_stop(&shared.stop, delay.min(remaining)).await {
            break;
        }
    }
    finish_row(&shared, row, &state, started, state.last_error.clone());
    outcome(state, Vec::new(), None)
}

fn finish_row(
    shared: &Shared,
    row: usize,
    state: &WatchState,
    started: Instant,
    note: Option<String>,
) {
    shared.board.update(row, |r| {
        r.phase = state.phase;
        r.polls = state.polls;
        r.ended_after = Some(started.elapsed());
        r.note = note;
    });
}

/// An answer from either endpoint.
enum Answered {
    Status(Verdict<crate::ncp::SummaryStatus>),
    Result(Verdict<crate::ncp::SummaryResult>),
}

/// One call, inside the request budget and the concurrency cap.
async fn request(
    shared: &Shared,
    generation: Generation,
    target: &crate::ncp::Target,
    call: Call,
) -> Answered {
    shared.budget.acquire().await;
    // The semaphore is never closed, so acquiring cannot fail; if it ever did, go on unpermitted.
    let _permit = shared.permits.acquire().await.ok();
    let answered = match call {
        Call::Status => Answered::Status(shared.client.status(generation, target).await),
        Call::Result => Answered::Result(shared.client.result(generation, target).await),
    };
    let good = match &answered {
        Answered::Status(v) => v.is_good_answer(),
        Answered::Result(v) => v.is_good_answer(),
    };
    if good {
        shared.budget.succeeded();
    }
    answered
}

/// Delivers one version to every sink, retrying each a few times; returns the locations and
/// the first error that outlasted the retries.
async fn deliver_all(
    shared: &Shared,
    spec: &WatchSpec,
    result: crate::ncp::SummaryResult,
) -> (Vec<String>, Option<String>) {
    let Some(delivery) = Delivery::new(spec.key.clone(), Arc::new(result), SystemTime::now())
    else {
        return (Vec::new(), Some("result without sceneSummaryInfo".into()));
    };
    info!(
        watch = %spec.key,
        version = %delivery.version_id,
        last_analyzed_at = %delivery.last_analyzed_at,
        scenes = delivery.result.scenes.len(),
        "Result fetched."
    );
    let mut locations = Vec::new();
    let mut failure = None;
    for sink in &shared.sinks {
        let mut retry = PollBackoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut attempt = 1;
        loop {
            match sink.deliver(&delivery).await {
                Ok(receipt) => {
                    info!(watch = %spec.key, version = %delivery.version_id, sink = sink.name(), location = %receipt.location, "Result delivered.");
                    locations.push(receipt.location);
                    break;
                }
                Err(e) if attempt < DELIVERY_ATTEMPTS => {
                    warn!(watch = %spec.key, sink = sink.name(), attempt, error = %e, "Delivery failed; retrying.");
                    attempt += 1;
                    if !sleep_or_stop(&shared.stop, retry.next_delay()).await {
                        failure.get_or_insert(e.to_string());
                        break;
                    }
                }
                Err(e) => {
                    error!(watch = %spec.key, sink = sink.name(), error = %e, "Delivery failed; giving up.");
                    failure.get_or_insert(e.to_string());
                    break;
                }
            }
        }
    }
    (locations, failure)
}

fn log_transition(key: &str, before: &WatchState, after: &WatchState, action: &Action) {
    if before.remote != after.remote
        && let Some(remote) = &after.remote
    {
        info!(watch = %key, remote_status = remote.as_str(), polls = after.polls, "Remote status changed.");
    }
    if before.phase != after.phase && after.phase.is_terminal() {
        match after.phase {
            Phase::Rejected => {
                error!(watch = %key, phase = after.phase.as_str(), error = after.last_error.as_deref().unwrap_or(""), "Watch stopped by a permanent API error.")
            }
            _ => warn!(watch = %key, phase = after.phase.as_str(), "Watch ended without a result."),
        }
    }
    match action {
        Action::Retry { .. } | Action::Throttle { .. } => {
            warn!(watch = %key, attempt = after.consecutive_errors, error = after.last_error.as_deref().unwrap_or(""), "Poll failed; retrying.");
        }
        _ => {}
    }
}

/// Sleeps for `d` unless `stop` fires first; false when stopped.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}
