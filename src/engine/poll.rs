//! One poll of one watch, as a task: the API call(s) inside the request budget, the pure step,
//! the events it stands for, and one ledger commit of all of it. What it reports back is the
//! committed record (or the old one, if nothing could be committed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, error};

use super::budget::Class;
use super::facts::{self, Fetched};
use super::{Observer, RequestBudget, Update, Wakes};
use crate::clock::Clock;
use crate::config::GenerationChoice;
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::forecast::{History, Observed, Polled, Timing};
use crate::health::Health;
use crate::ncp::{Api, ApiError, ErrorOrigin, Generation, SummaryResult, SummaryStatus, Verdict};
use crate::policy::{Policy, jitter_seed};
use crate::state::shards::ShardSet;
use crate::state::{NewVersion, SharedLedger, StepCommit, WatchRecord};
use crate::watch::{self, Action, Answer, Limits, PauseReason, Phase, Route, Step, WatchState};

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
    /// Set once the index-level API answered "URL not found." (kept as a deployment fact).
    pub index_api_gone: Arc<AtomicBool>,
    /// Log every failed poll at info level (`once`: few watches, someone watching), not only
    /// a watch that keeps failing.
    pub every_failure: bool,
    /// The recheck interval the budget can carry, in ms, when longer than `policy`'s (0: the
    /// configured one); set by the engine every second (see `policy::fitted_recheck`).
    pub fitted_recheck_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Queue and run times learned from this deployment's jobs (kept in the ledger as a fact
    /// and saved by the engine once a minute).
    pub history: Arc<std::sync::Mutex<History>>,
    /// `poll.policy = "adaptive"`: waiting jobs' next polls come from `history`.
    pub adaptive: bool,
    /// `state.replicated`: this replica (its throttles are shared through the ledger).
    pub replica: Option<Arc<super::replica::ReplicaCtx>>,
    /// The shards whose watches this process polls: every shard unless it is one of several
    /// replicas; the one copy, read by the engine too and written by its `shards`.
    pub held: Arc<std::sync::RwLock<ShardSet>>,
}

impl PollCtx {
    /// Whether this process still holds the watch `key`'s shard.
    pub fn holds(&self, key: &WatchKey) -> bool {
        self.held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .holds(key)
    }
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
    /// It found the index-level API gone.
    pub index_api_gone: bool,
    /// It found the watch's index replaced by this one, and the watch follows the latest.
    pub successor: Option<String>,
    /// The watch's timing after a step (`None`: unchanged).
    pub timing: Option<Timing>,
}

impl PollCtx {
    fn limits(&self, spec: &WatchSpec) -> Limits {
        Limits {
            max_wait: spec.max_wait,
            not_requested_grace: self.grace,
            policy: Policy {
                recheck: self.policy.recheck.max(Duration::from_millis(
                    self.fitted_recheck_ms.load(Ordering::Relaxed),
                )),
                ..self.policy
            },
        }
    }
}

/// One API call inside the request budget, measured; good answers win budget back (throttling
/// is handled by the step's action).
pub(crate) async fn call<T>(
    ctx: &PollCtx,
    (class, due_ms): (Class, u64),
    operation: &'static str,
    request: impl std::future::Future<Output = Verdict<T>>,
) -> (Verdict<T>, u64) {
    ctx.budget.acquire(class, due_ms).await;
    send(ctx, operation, request).await
}

/// [`call`] for the first request of a watch's poll, which a replica makes only if it still
/// holds the watch's shard once the budget lets it go (a poll launched just before its shard
/// moved may wait for budget a while): `None`, with the budget given back, when it does not.
async fn call_if_held<T>(
    ctx: &PollCtx,
    key: &WatchKey,
    (class, due_ms): (Class, u64),
    operation: &'static str,
    request: impl std::future::Future<Output = Verdict<T>>,
) -> Option<(Verdict<T>, u64)> {
    ctx.budget.acquire(class, due_ms).await;
    if !ctx.holds(key) {
        ctx.budget.give_back();
        return None;
    }
    Some(send(ctx, operation, request).await)
}

/// Sends one request whose budget was granted, and counts its answer.
async fn send<T>(
    ctx: &PollCtx,
    operation: &'static str,
    request: impl std::future::Future<Output = Verdict<T>>,
) -> (Verdict<T>, u64) {
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
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one poll, passed down once; a struct would only rename them"
)]
pub(crate) async fn poll(
    ctx: Arc<PollCtx>,
    client: Arc<dyn Api>,
    index: usize,
    spec: WatchSpec,
    before: WatchRecord,
    probe: bool,
    first_of_run: bool,
    class: Class,
    timing: Timing,
) -> Outcome {
    let mut now_ms = ctx.clock.now_ms();
    // Its place among the requests waiting for budget: its class, then when it was due.
    let priority = (class, before.next_poll_at_ms.unwrap_or(now_ms));
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
        index_api_gone: false,
        successor: None,
        timing: None,
    };
    // The deadline is checked before asking, except on a watch's first poll since the process
    // started: a clock that jumped forward across a restart (or a long stop) must not end every
    // waiting watch `timed_out` without one request; the answer decides, then the deadline.
    let early = if first_of_run {
        None
    } else {
        watch::check_deadline(&before.state, now, limits)
    };
    if let Some(step) = early {
        let mut record = before.clone();
        record.state = step.state;
        record.next_poll_at_ms = None;
        record.last_change_at_ms = Some(now_ms);
        let events = facts::step_events(&key, &before, &record.state, None, None, now_ms);
        let record = commit(&ctx, &spec, before, record, events, None).await;
        return done(record, None, None, true);
    }
    let target = spec.target();
    let seed = jitter_seed(&key, before.state.polls);
    let gone = ctx.index_api_gone.load(Ordering::Relaxed);

    // Which calls this watch uses (decided once, kept in its record).
    let (route, keep_route) = match route_of(&spec, before.state.route, gone) {
        RouteChoice::Use(r) => (r, true),
        RouteChoice::Check => {
            let Some((v, sent)) = call_if_held(
                &ctx,
                &key,
                priority,
                "index_status",
                client.index_status(&target),
            )
            .await
            else {
                return done(before, None, None, true);
            };
            (now_ms, now) = (sent, Duration::from_millis(sent));
            match v.split::<SummaryStatus>() {
                Ok(st) => {
                    let (route, keep) = route_for_latest(&spec, st.index_id.as_deref());
                    if gone && route.uses_index_api() {
                        match st.index_id.as_deref() {
                            // Not the latest, and only the latest can be read: it ends.
                            Some(latest) if keep => {
                                return superseded(
                                    &ctx,
                                    &spec,
                                    before.clone(),
                                    before.state.clone(),
                                    Route::Asset,
                                    latest,
                                    true,
                                    now,
                                    limits,
                                    seed,
                                    probe,
                                    index,
                                )
                                .await;
                            }
                            // Not known yet: the asset-level calls, whose results say the index.
                            _ => (Route::Asset, false),
                        }
                    } else {
                        (route, keep)
                    }
                }
                Err(failed) => {
                    // The check failed like any call fails: the step decides (retry, pause,
                    // reject on a permanent answer such as an unknown asset).
                    let error = failed.error().cloned();
                    let step =
                        watch::step(&before.state, now, limits, Answer::Status(&failed), seed);
                    return finish(
                        &ctx, &spec, before, step, error, None, now_ms, probe, index, timing,
                    )
                    .await;
                }
            }
        }
    };
    let mut exchange = Exchange::default();
    let mut state = before.state.clone();
    if keep_route {
        state.route = Some(route);
    }
    let (status_gen, result_gen) = generations(route);
    let mut step = match status_gen {
        Some(g) => {
            let held =
                call_if_held(&ctx, &key, priority, "status", client.status(g, &target)).await;
            let Some((v, sent)) = held else {
                return done(before, None, None, true);
            };
            (now_ms, now) = (sent, Duration::from_millis(sent));
            exchange.observe(&v, g);
            watch::step(&state, now, limits, Answer::Status(&v), seed)
        }
        None if !ctx.holds(&key) => return done(before, None, None, true),
        None => {
            fetch(
                &ctx,
                &*client,
                &spec,
                &state,
                result_gen,
                now,
                limits,
                seed,
                &mut exchange,
            )
            .await
        }
    };
    if step.action == Action::FetchResult && !exchange.index_gone {
        step = fetch(
            &ctx,
            &*client,
            &spec,
            &step.state,
            result_gen,
            now,
            limits,
            seed,
            &mut exchange,
        )
        .await;
    }
    if exchange.index_gone {
        return index_api_gone(&ctx, &spec, before, state, exchange, now_ms, probe, index).await;
    }
    if let Some(new_index) = exchange.other_index.clone() {
        return superseded(
            &ctx, &spec, before, state, route, &new_index, gone, now, limits, seed, probe, index,
        )
        .await;
    }
    let error = exchange.error.take();
    let fetched = exchange.fetched.take();
    let step = match watch::check_deadline(&step.state, now, limits) {
        Some(late)
            if first_of_run
                && matches!(
                    step.action,
                    Action::PollAgain { .. } | Action::Retry { .. } | Action::Throttle { .. }
                ) =>
        {
            late
        }
        _ => step,
    };
    finish(
        &ctx, &spec, before, step, error, fetched, now_ms, probe, index, timing,
    )
    .await
}

/// What the calls of one poll came to, besides the step.
#[derive(Default)]
struct Exchange {
    /// The error of the last call, if it failed.
    error: Option<ApiError>,
    /// The result, if one was fetched (and is for this watch's index).
    fetched: Option<SummaryResult>,
    /// An index-level call got the gateway's "URL not found.": that API is gone.
    index_gone: bool,
    /// The result is for another index: the asset was re-indexed.
    other_index: Option<String>,
}

impl Exchange {
    fn observe<T>(&mut self, v: &Verdict<T>, generation: Generation) {
        self.error = v.error().filter(|_| !v.is_good_answer()).cloned();
        if generation == Generation::Index && is_url_not_found(v) {
            self.index_gone = true;
        }
    }
}

/// The gateway's 404 "URL not found." (errorCode 300): the path does not exist (API doc §6).
fn is_url_not_found<T>(v: &Verdict<T>) -> bool {
    matches!(v, Verdict::Permanent(e)
        if e.origin == ErrorOrigin::Gateway
            && e.http_status == Some(404)
            && e.code.as_deref() == Some("300"))
}

/// The result call and its step; a result of another index is kept aside (not stepped on, so
/// it cannot become a version of this watch).
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one poll, passed down once; a struct would only rename them"
)]
async fn fetch(
    ctx: &PollCtx,
    client: &dyn Api,
    spec: &WatchSpec,
    state: &WatchState,
    generation: Generation,
    now: Duration,
    limits: Limits,
    seed: u64,
    exchange: &mut Exchange,
) -> Step {
    let target = spec.target();
    let priority = (Class::Fetch, ctx.clock.now_ms());
    let (r, _) = call(ctx, priority, "result", client.result(generation, &target)).await;
    exchange.observe(&r, generation);
    if let Verdict::Ok(result) = &r
        && let Some(other) = other_index(&spec.key, result)
    {
        if generation == Generation::Asset {
            exchange.other_index = Some(other);
            return watch::step(state, now, limits, Answer::Result(&r), seed);
        }
        // The index-level result of one index naming another: not the service's word on this
        // index. Nothing is delivered; the call is tried again.
        tracing::warn!(watch = %spec.key, index_id = %other, "The index-level result call answered with a result of another index; nothing is delivered and the call is tried again.");
        let garbled: Verdict<SummaryResult> = Verdict::Retryable {
            after: None,
            error: ApiError {
                operation: crate::ncp::Operation::Result,
                path: String::new(),
                http_status: Some(200),
                code: None,
                message: format!(
                    "the result is for index {other}, not {}",
                    spec.key.index_id()
                ),
                details: None,
                trace_id: None,
                origin: ErrorOrigin::Decode,
            },
        };
        exchange.error = garbled.error().cloned();
        return watch::step(state, now, limits, Answer::Result(&garbled), seed);
    }
    let step = watch::step(state, now, limits, Answer::Result(&r), seed);
    exchange.fetched = r.ok();
    step
}

/// The result's `indexId` when it names an index other than the watch's. Not comparable (no
/// `indexId`, or a configured index id that is not a number) counts as the same.
fn other_index(key: &WatchKey, result: &SummaryResult) -> Option<String> {
    let got = result.index_id?;
    let mine: i64 = key.index_id().parse().ok()?;
    (got != mine).then(|| got.to_string())
}

/// How a watch's route is chosen.
enum RouteChoice {
    Use(Route),
    /// Read the asset's index status to find out whether the watch's index is the latest.
    Check,
}

fn route_of(spec: &WatchSpec, known: Option<Route>, index_api_gone: bool) -> RouteChoice {
    use GenerationChoice as G;
    let with_id = spec.scene_summary_id.is_some();
    match (spec.generation, known) {
        (G::Asset, _) => RouteChoice::Use(Route::Asset),
        (G::Index, _) if with_id => RouteChoice::Use(Route::IndexWithId),
        (G::Index, Some(r)) if r != Route::Asset => RouteChoice::Use(r),
        (G::Index, _) => RouteChoice::Check,
        // Watches found through a selector follow the asset's latest index: asset-level.
        (G::Auto, _) if spec.origin.is_some() => RouteChoice::Use(Route::Asset),
        // The index-level API is gone: the asset-level calls, if the index is the latest
        // (checked, unless known).
        (G::Auto, Some(Route::Asset)) => RouteChoice::Use(Route::Asset),
        (G::Auto, _) if index_api_gone => RouteChoice::Check,
        (G::Auto, Some(r)) => RouteChoice::Use(r),
        (G::Auto, None) => RouteChoice::Check,
    }
}

/// The route once the asset's latest index is known (`None`: its analysis has not completed,
/// so it cannot be told; decided again at the next poll). Returns whether to keep it.
fn route_for_latest(spec: &WatchSpec, latest: Option<&str>) -> (Route, bool) {
    let with_id = spec.scene_summary_id.is_some();
    let is_latest = latest.map(|l| l == spec.key.index_id());
    let route = match (spec.generation, is_latest) {
        (GenerationChoice::Index, Some(true)) => Route::AssetStatusIndexResult,
        (_, Some(true)) => Route::Asset,
        _ if with_id => Route::IndexWithId,
        _ => Route::IndexResultOnly,
    };
    if route == Route::IndexResultOnly && is_latest == Some(false) {
        tracing::info!(
            watch = %spec.key,
            latest_index_id = latest.unwrap_or(""),
            "The watch's index is not the asset's latest, so its status cannot be read: only its result call is polled, and a failed or canceled summary shows as timed_out (give the watch its scene_summary_id to see it)."
        );
    }
    (route, is_latest.is_some())
}

/// The generation of the status call (if any) and of the result call of a route.
fn generations(route: Route) -> (Option<Generation>, Generation) {
    match route {
        Route::Asset => (Some(Generation::Asset), Generation::Asset),
        Route::IndexWithId => (Some(Generation::Index), Generation::Index),
        Route::AssetStatusIndexResult => (Some(Generation::Asset), Generation::Index),
        Route::IndexResultOnly => (None, Generation::Index),
    }
}

/// The index-level API answered "URL not found.": NAVER removed it. An `auto` watch moves to
/// the asset-level calls and is polled again at once; an `index` one ends, saying what to change.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one poll, passed down once; a struct would only rename them"
)]
async fn index_api_gone(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: WatchRecord,
    mut state: WatchState,
    exchange: Exchange,
    now_ms: u64,
    probe: bool,
    index: usize,
) -> Outcome {
    ctx.index_api_gone.store(true, Ordering::Relaxed);
    let mut record = before.clone();
    let mut events = Vec::new();
    let mut error = exchange.error;
    if spec.generation == GenerationChoice::Index {
        state.phase = Phase::Rejected;
        let message = index_api_gone_message(spec);
        if let Some(e) = &mut error {
            e.message = message.clone();
        }
        state.last_error = Some(message);
        record.next_poll_at_ms = None;
        record.last_change_at_ms = Some(now_ms);
        events = facts::step_events(&spec.key, &before, &state, error.as_ref(), None, now_ms);
    } else {
        state.route = Some(Route::Asset);
        record.next_poll_at_ms = Some(now_ms + 1);
        error = None;
    }
    record.state = state;
    let record = commit(ctx, spec, before, record, events, None).await;
    Outcome {
        index,
        record,
        refusal: None,
        error,
        ok: true,
        probe,
        index_api_gone: true,
        successor: None,
        timing: None,
    }
}

/// What a watch with `generation = "index"` says when that API is gone.
pub(crate) fn index_api_gone_message(spec: &WatchSpec) -> String {
    let how = if spec.generation == GenerationChoice::Index {
        "this watch sets generation = \"index\""
    } else {
        "api.generation is \"index\""
    };
    format!(
        "the index-level API is gone (its paths answer the gateway's 404 \"URL not found.\"); \
         {how}: set generation = \"auto\" (or \"asset\") and reload; see docs/migration.md"
    )
}

/// The asset-level result names another index: a re-index replaced the watch's. A watch that
/// follows the latest index ends `superseded` and the engine starts one of the new index; a
/// configured index goes on through the index-level calls while they exist, and ends
/// `superseded` when they do not (or when it asked for the asset-level API).
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one poll, passed down once; a struct would only rename them"
)]
async fn superseded(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: WatchRecord,
    mut state: WatchState,
    route: Route,
    new_index: &str,
    index_api_gone: bool,
    now: Duration,
    limits: Limits,
    seed: u64,
    probe: bool,
    index: usize,
) -> Outcome {
    let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
    let follows = spec.origin.is_some();
    let keeps_on = !follows
        && !index_api_gone
        && spec.generation == GenerationChoice::Auto
        && route == Route::Asset;
    let mut record = before.clone();
    state.polls += 1;
    state.consecutive_errors = 0;
    if keeps_on {
        tracing::info!(watch = %spec.key, new_index_id = new_index, "A re-index made another index the asset's latest; this watch's index is polled through the index-level calls from now on.");
        state.route = Some(if spec.scene_summary_id.is_some() {
            Route::IndexWithId
        } else {
            Route::IndexResultOnly
        });
        record.next_poll_at_ms = Some(now_ms + ms_of(limits.policy.poll_delay(0, seed)).min(1_000));
    } else {
        if !follows {
            tracing::warn!(watch = %spec.key, new_index_id = new_index, "A re-index made another index the asset's latest, and this watch's index cannot be polled any more; it ends superseded. Watch the asset without index_id to follow its latest index.");
        }
        state.phase = Phase::Superseded;
        record.next_poll_at_ms = None;
        record.last_change_at_ms = Some(now_ms);
    }
    record.state = state;
    let events = vec![Event::superseded(&spec.key, new_index, follows, now_ms)];
    let record = commit(ctx, spec, before, record, events, None).await;
    Outcome {
        index,
        record,
        refusal: None,
        error: None,
        ok: true,
        probe,
        index_api_gone: false,
        successor: follows.then(|| new_index.to_string()),
        timing: None,
    }
}

/// The rest of a poll after its step: timing, versions, events, one commit.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one poll, passed down once; a struct would only rename them"
)]
async fn finish(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: WatchRecord,
    step: Step,
    error: Option<ApiError>,
    mut fetched: Option<SummaryResult>,
    now_ms: u64,
    probe: bool,
    index: usize,
    timing: Timing,
) -> Outcome {
    let now = Duration::from_millis(now_ms);
    let key = spec.key.clone();
    let (step, timing) = learn_and_time(ctx, spec, &before, step, now_ms, timing, error.is_none());
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
            throttled(ctx, *retry_after);
        }
        Action::Deliver { version } => {
            if before.last_version_id.is_none()
                && let Some(started) = before.state.started_at
            {
                ctx.health.metrics.completed(now.saturating_sub(started));
            }
            if let Some(result) = fetched.take() {
                let vid = VersionId::of(&key, version);
                events.extend(facts::step_events(
                    &key,
                    &before,
                    &record.state,
                    error.as_ref(),
                    Some(&Fetched {
                        version_id: &vid,
                        result: &result,
                    }),
                    now_ms,
                ));
                if let Some(ev) = facts::stale_event(&key, &record, &vid, &result, now_ms) {
                    events.push(ev);
                    record.stale_version_id = Some(vid.clone());
                }
                new_version = Some(NewVersion {
                    version_id: vid.clone(),
                    key: key.clone(),
                    last_analyzed_at: version.clone(),
                    fetched_at_ms: now_ms,
                    scene_count: result.scene_count as u64,
                    analyzed_scene_ids: result.info.and_then(|i| i.analyzed_scene_ids),
                    // The fetched text itself, moved, not copied: it can be megabytes.
                    result_json: String::from(Box::<str>::from(result.raw)),
                });
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
    let record = commit(ctx, spec, before, record, events, new_version).await;
    Outcome {
        index,
        record,
        refusal,
        error,
        ok,
        probe,
        index_api_gone: false,
        successor: None,
        timing: Some(timing),
    }
}

/// The history's part in a step: a queue or run time it observed is learned (the queue from
/// the poll that first saw `WAIT_SUMMARIZE` to the one that saw it end; the run likewise, when
/// its start was seen, not when the watch's first poll found it already summarizing); and,
/// under the adaptive policy, a step that polls again is timed from the project's forecast.
fn learn_and_time(
    ctx: &PollCtx,
    spec: &WatchSpec,
    before: &WatchRecord,
    step: Step,
    now_ms: u64,
    timing: Timing,
    answered: bool,
) -> (Step, Timing) {
    let is = step.state.remote.clone();
    let polled = Polled {
        workspace: spec.key.workspace(),
        project: spec.key.project_id(),
        was: before.state.remote.as_ref(),
        was_seen_ms: before.last_change_at_ms,
        is: is.as_ref(),
        started_ms: before.state.started_at.map(ms_of),
        now_ms,
        polls_again: matches!(step.action, Action::PollAgain { .. }),
        answered,
    };
    let learned = match ctx.history.lock() {
        Ok(mut h) => h.learn(polled, timing),
        Err(poisoned) => poisoned.into_inner().learn(polled, timing),
    };
    if let Some((stage, took, Observed::Discarded)) = learned.observed {
        debug!(
            watch = %spec.key,
            stage = stage.as_str(),
            observed = %humantime::format_duration(took),
            "Poll history: an observed {} time longer than 30 days was not learned from (a clock jump?).",
            stage.as_str()
        );
    }
    let (Some(f), true, Some(status)) = (learned.forecast, ctx.adaptive, is.as_ref()) else {
        return (step, learned.timing);
    };
    let limits = ctx.limits(spec);
    let step = watch::adapt(step, Duration::from_millis(now_ms), limits, f.delay);
    debug!(
        watch = %spec.key,
        status = status.as_str(),
        next_poll_in = %humantime::format_duration(Duration::from_millis(
            step.next_poll.map_or(0, |t| ms_of(t).saturating_sub(now_ms))
        )),
        expected_in = %f.remaining.map_or_else(
            || "overdue".to_owned(),
            |r| humantime::format_duration(Duration::from_secs(r.as_secs())).to_string()
        ),
        jobs = f.samples,
        "Adaptive poll timing from the project's history."
    );
    (step, learned.timing)
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

/// The gateway said 429: cut the budget (and, on a replica, tell the others through the
/// ledger that it was cut; see `replica.rs`).
pub(crate) fn throttled(ctx: &PollCtx, retry_after: Option<Duration>) {
    let pause = retry_after.map(|d| ctx.policy.server_delay(d));
    if ctx.budget.throttled(pause) {
        ctx.health.metrics.budget_cut(ctx.budget.current_rate());
        if let Some(me) = &ctx.replica {
            super::replica::publish(&ctx.ledger, me, &ctx.budget, ctx.clock, pause);
        }
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
            if matches!(e, crate::state::StateError::LeaseLost { .. }) {
                // Not a failure of this replica's: the shard is another's now, which polls it.
                tracing::info!(watch = %record.key, error = %e, "A poll's outcome was not recorded: the watch's shard moved to another replica, which polls it from the ledger's record.");
            } else {
                error!(watch = %record.key, error = %e, "Cannot commit a poll to the ledger; nothing of it is recorded and it will be polled again.");
            }
            let mut old = before;
            old.next_poll_at_ms = Some(ctx.clock.now_ms() + LEDGER_RETRY.as_millis() as u64);
            old
        }
    }
}
