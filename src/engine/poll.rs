//! One poll of one watch, as a task: the API call(s) inside the request budget, the pure step,
//! the events it stands for, and one ledger commit of all of it. What it reports back is the
//! committed record (or the old one, if nothing could be committed).

use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use super::facts::{self, Fetched};
use super::{Observer, RequestBudget, Update, Wakes};
use crate::clock::Clock;
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::health::Health;
use crate::ncp::{Api, ApiError, Generation, SummaryResult, Verdict};
use crate::policy::{Policy, jitter_seed};
use crate::state::{NewVersion, SharedLedger, StepCommit, WatchRecord};
use crate::watch::{self, Action, Answer, Limits, PauseReason, Phase};

/// When the ledger cannot be written, the poll is retried after this long.
const LEDGER_RETRY: Duration = Duration::from_secs(5);

/// What every poll task shares.
#[derive(Clone)]
pub(crate) struct PollCtx {
    pub health: Arc<Health>,
    pub ledger: SharedLedger,
    pub clock: Clock,
    pub budget: Arc<RequestBudget>,
    /// `poll.not_requested_grace`.
    pub grace: Duration,
    pub policy: Policy,
    pub wakes: Arc<Wakes>,
    pub observer: Option<Arc<dyn Observer>>,
    /// Log every failed poll at info level (`once`: few watches, someone watching), not only
    /// a watch that keeps failing.
    pub every_failure: bool,
}

/// What a poll task reports back.
pub(crate) struct Outcome {
    /// The watch's entry.
    pub index: usize,
    /// The committed record (or the old one if nothing could be committed).
    pub record: WatchRecord,
    /// The whole client should pause.
    pub refusal: Option<PauseReason>,
    /// The error of the last call, if it failed.
    pub error: Option<ApiError>,
    /// The API answered as it should (not an error of any kind).
    pub ok: bool,
    /// It was launched as the pause's probe.
    pub probe: bool,
}

impl PollCtx {
    fn limits(&self, spec: &WatchSpec) -> Limits {
        Limits {
            max_wait: spec.max_wait,
            not_requested_grace: self.grace,
            policy: self.policy,
        }
    }
}

/// One API call inside the request budget, measured; good answers win budget back (throttling
/// is handled by the step's action). Also returns when the request went out (after waiting for
/// the budget), in ms: the step counts from then, so a poll the budget held is not due again
/// the moment it is committed.
async fn call<T>(
    ctx: &PollCtx,
    operation: &'static str,
    request: impl std::future::Future<Output = Verdict<T>>,
) -> (Verdict<T>, u64) {
    ctx.budget.acquire().await;
    let sent_ms = ctx.clock.now_ms();
    let started = ctx.clock.instant();
    let v = request.await;
    ctx.health
        .metrics
        .poll(operation, v.kind(), started.elapsed());
    if v.is_good_answer() {
        ctx.budget.succeeded();
    }
    if let Verdict::NotReady(e) = &v {
        ctx.health
            .metrics
            .unrecognised(operation, e.code.as_deref());
    }
    (v, sent_ms)
}

/// One poll of one watch: request(s), the pure step, events, and one ledger commit.
pub(crate) async fn poll(
    ctx: Arc<PollCtx>,
    client: Arc<dyn Api>,
    index: usize,
    spec: Arc<WatchSpec>,
    before: WatchRecord,
    probe: bool,
) -> Outcome {
    let mut now_ms = ctx.clock.now_ms();
    let mut now = Duration::from_millis(now_ms);
    let limits = ctx.limits(&spec);
    let key = spec.key.clone();
    let done = |record, error, refusal, ok| Outcome {
        index,
        record,
        refusal,
        error,
        ok,
        probe,
    };
    if let Some(step) = watch::check_deadline(&before.state, now, limits) {
        let mut record = before.clone();
        record.state = step.state;
        record.next_poll_at_ms = None;
        record.last_change_at_ms = Some(now_ms);
        let events = facts::step_events(&key, &before, &record.state, None, None, now_ms);
        let record = commit(&ctx, &spec, before, record, events, None).await;
        return done(record, None, None, true);
    }
    let target = spec.target();
    let use_status = spec.generation == Generation::Asset || spec.scene_summary_id.is_some();
    let seed = jitter_seed(&key, before.state.polls);
    let mut error: Option<ApiError>;
    let mut fetched: Option<SummaryResult> = None;
    let mut step = if use_status {
        let v;
        (v, now_ms) = call(&ctx, "status", client.status(spec.generation, &target)).await;
        now = Duration::from_millis(now_ms);
        error = v.error().filter(|_| !v.is_good_answer()).cloned();
        watch::step(&before.state, now, limits, Answer::Status(&v), seed)
    } else {
        let r;
        (r, now_ms) = call(&ctx, "result", client.result(spec.generation, &target)).await;
        now = Duration::from_millis(now_ms);
        error = r.error().filter(|_| !r.is_good_answer()).cloned();
        let s = watch::step(&before.state, now, limits, Answer::Result(&r), seed);
        fetched = r.ok();
        s
    };
    if step.action == Action::FetchResult {
        let (r, _) = call(&ctx, "result", client.result(spec.generation, &target)).await;
        error = r.error().filter(|_| !r.is_good_answer()).cloned();
        step = watch::step(&step.state, now, limits, Answer::Result(&r), seed);
        fetched = r.ok();
    }

    let mut record = before.clone();
    record.state = step.state;
    if record.state.remote != before.state.remote || record.state.phase != before.state.phase {
        record.last_change_at_ms = Some(now_ms);
    }
    let mut new_version = None;
    let mut events = Vec::new();
    let mut refusal = None;
    match &step.action {
        Action::Throttle { retry_after } => {
            let pause = retry_after.map(|d| ctx.policy.server_delay(d));
            if ctx.budget.throttled(pause) {
                ctx.health.metrics.budget_cut(ctx.budget.current_rate());
            }
        }
        Action::Deliver { version } => {
            if before.last_version_id.is_none()
                && let Some(started) = before.state.started_at
            {
                ctx.health.metrics.completed(now.saturating_sub(started));
            }
            if let Some(result) = &fetched {
                let vid = VersionId::of(&key, version);
                new_version = Some(NewVersion {
                    version_id: vid.clone(),
                    key: key.clone(),
                    last_analyzed_at: version.clone(),
                    fetched_at_ms: now_ms,
                    scene_count: result.scenes.len() as u64,
                    analyzed_scene_ids: result
                        .info
                        .as_ref()
                        .and_then(|i| i.analyzed_scene_ids.clone()),
                    result_json: result.raw.get().to_string(),
                });
                events.extend(facts::step_events(
                    &key,
                    &before,
                    &record.state,
                    error.as_ref(),
                    Some(&Fetched {
                        version_id: &vid,
                        result,
                    }),
                    now_ms,
                ));
                if let Some(ev) = facts::stale_event(&key, &record, &vid, result, now_ms) {
                    events.push(ev);
                    record.stale_version_id = Some(vid.clone());
                }
                record.last_version_id = Some(vid);
            }
        }
        Action::Recheck => {
            if let (Some(result), Some(vid)) = (&fetched, record.last_version_id.clone())
                && let Some(ev) = facts::stale_event(&key, &record, &vid, result, now_ms)
            {
                events.push(ev);
                record.stale_version_id = Some(vid);
            }
        }
        Action::PauseClient(reason) => refusal = Some(*reason),
        _ => {}
    }
    record.next_poll_at_ms = step.next_poll.map(ms_of);
    if matches!(step.action, Action::Retry { .. } | Action::Throttle { .. }) {
        log_failed_poll(
            &key,
            &record,
            step.next_poll.map(|t| t.saturating_sub(now)),
            ctx.every_failure,
        );
    }
    if new_version.is_none() && refusal.is_none() {
        events.extend(facts::step_events(
            &key,
            &before,
            &record.state,
            error.as_ref(),
            None,
            now_ms,
        ));
    }
    let ok = error.is_none();
    let record = commit(&ctx, &spec, before, record, events, new_version).await;
    done(record, error, refusal, ok)
}

/// Ends a watch that the API refuses while it accepts the others (see `pause`): `rejected`,
/// with its event, committed like a step.
pub(crate) async fn reject_alone(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: WatchRecord,
    error: Option<&ApiError>,
    now_ms: u64,
) -> WatchRecord {
    let mut record = before.clone();
    record.state.phase = Phase::Rejected;
    record.next_poll_at_ms = None;
    record.last_change_at_ms = Some(now_ms);
    let events = facts::step_events(&record.key, &before, &record.state, error, None, now_ms);
    commit(ctx, spec, before, record, events, None).await
}

fn ms_of(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

/// One line per failed poll at debug level; a warning when a watch keeps failing (at the 4th,
/// 8th, 16th … failure in a row), so 100,000 watches in a brief outage do not flood the log
/// while a watch that stays broken is still seen. `every`: each failure at info (`once`).
fn log_failed_poll(key: &WatchKey, record: &WatchRecord, delay: Option<Duration>, every: bool) {
    let n = record.state.consecutive_errors;
    let error = record.state.last_error.as_deref().unwrap_or("");
    let retry_in = humantime::format_duration(delay.unwrap_or_default());
    if n >= 4 && n.is_power_of_two() {
        tracing::warn!(watch = %key, attempt = n, error, retry_in = %retry_in, "Polls keep failing; retrying.");
    } else if every {
        tracing::info!(watch = %key, attempt = n, error, retry_in = %retry_in, "Poll failed; retrying.");
    } else {
        tracing::debug!(watch = %key, attempt = n, error, retry_in = %retry_in, "Poll failed; retrying.");
    }
}

/// Commits one step; on a ledger error keeps the old record and retries the poll soon. Events
/// are logged (and counted) only once committed: nothing is said that the ledger does not hold.
async fn commit(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: WatchRecord,
    record: WatchRecord,
    events: Vec<Event>,
    new_version: Option<NewVersion>,
) -> WatchRecord {
    let has_version = new_version.is_some();
    let logged = events.clone();
    let started = ctx.clock.instant();
    let committed = ctx
        .ledger
        .commit_step(StepCommit {
            record: record.clone(),
            events,
            new_version,
        })
        .await;
    ctx.health.metrics.ledger_commit(started.elapsed());
    match committed {
        Ok(()) => {
            for ev in &logged {
                ev.log();
                ctx.health.metrics.event(ev.kind.as_str());
            }
            if has_version {
                ctx.wakes.results();
            }
            if !logged.is_empty() {
                ctx.wakes.events();
            }
            if let Some(o) = &ctx.observer {
                o.update(&Update::Polled {
                    spec,
                    record: &record,
                    events: &logged,
                });
            }
            record
        }
        Err(e) => {
            error!(watch = %record.key, error = %e, "Cannot commit a poll to the ledger; nothing of it is recorded and it will be polled again.");
            let mut old = before;
            old.next_poll_at_ms = Some(ctx.clock.now_ms() + LEDGER_RETRY.as_millis() as u64);
            old
        }
    }
}
