//! The scheduler: one loop that knows every watch's next poll time (a min-heap, no timer per
//! watch), launches due polls under the concurrency cap, and feeds each answer through the pure
//! step in [`crate::watch`]. A poll's whole outcome (watch row, events, new version and its
//! deliveries) is committed in one ledger transaction before the watch is scheduled again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Health;
use super::facts::{self, Fetched};
use crate::config::{self, Config, PollConfig, Sources, WatchSpec};
use crate::domain::WatchKey;
use crate::ncp::{ApiError, Client, Generation, SummaryResult, Verdict};
use crate::schedule::{Clock, RequestBudget, first_poll_offset, poll_delay};
use crate::state::{NewVersion, SharedLedger, StepCommit, WatchRecord};
use crate::watch::{self, Action, Answer, Limits, Phase};

/// Messages to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Re-read the configuration and the watch directory.
    Reload,
}

/// Who to wake when the ledger gains work.
pub struct Wakes {
    /// One per result sink.
    pub results: Vec<Arc<Notify>>,
    /// One per event sink.
    pub events: Arc<[Arc<Notify>]>,
}

struct Entry {
    spec: WatchSpec,
    record: WatchRecord,
    /// When it is due, if scheduled; heap items that disagree are stale and skipped.
    due_ms: Option<u64>,
    in_flight: bool,
}

/// The first pause after refused credentials, doubling up to the maximum.
const PAUSE_INITIAL: Duration = Duration::from_secs(30);
const PAUSE_MAX: Duration = Duration::from_secs(600);
/// When the ledger cannot be written, the poll is retried after this long.
const LEDGER_RETRY: Duration = Duration::from_secs(5);

/// See the module documentation.
pub struct Scheduler {
    config: Config,
    sources: Sources,
    ledger: SharedLedger,
    clock: Clock,
    health: Arc<Health>,
    wakes: Arc<Wakes>,
    client: Client,
    budget: Arc<RequestBudget>,
    entries: HashMap<WatchKey, Entry>,
    queue: BinaryHeap<Reverse<(u64, WatchKey)>>,
    /// Set while the credentials are refused: no polls but one probe at this time.
    paused_until: Option<u64>,
    pause_level: u32,
    probing: bool,
    /// Watches put off until the end of the pause; polled again as soon as it ends.
    paused_watches: Vec<WatchKey>,
}

/// What a poll task reports back.
struct Outcome {
    key: WatchKey,
    /// The committed record (or the old one if nothing could be committed).
    record: WatchRecord,
    /// The credentials were refused.
    auth_refused: bool,
}

/// What poll tasks share.
struct PollCtx {
    health: Arc<Health>,
    ledger: SharedLedger,
    clock: Clock,
    budget: Arc<RequestBudget>,
    poll: PollConfig,
    wakes: Arc<Wakes>,
}

impl Scheduler {
    /// A scheduler over `records` (as returned by the ledger for the configured watches).
    pub fn new(
        config: Config,
        sources: Sources,
        ledger: SharedLedger,
        clock: Clock,
        health: Arc<Health>,
        wakes: Wakes,
        records: Vec<WatchRecord>,
    ) -> anyhow::Result<Self> {
        let client = crate::app::client(&config)?;
        let budget = Arc::new(RequestBudget::new(
            config.api.requests_per_second,
            config.api.burst,
        ));
        let mut s = Self {
            sources,
            ledger,
            clock,
            health,
            wakes: Arc::new(wakes),
            client,
            budget,
            entries: HashMap::new(),
            queue: BinaryHeap::new(),
            paused_until: None,
            pause_level: 0,
            probing: false,
            paused_watches: Vec::new(),
            config,
        };
        s.add_watches(records);
        s.refresh_phases();
        Ok(s)
    }

    /// Adds `records` with their specs, taken out of the configuration: the entries keep the
    /// one copy of each spec (with 100,000 watches a second copy would be tens of MiB).
    fn add_watches(&mut self, records: Vec<WatchRecord>) {
        let mut specs: HashMap<WatchKey, WatchSpec> = std::mem::take(&mut self.config.watches)
            .into_iter()
            .map(|w| (w.key.clone(), w))
            .collect();
        let now = self.clock.now_ms();
        for record in records {
            let Some(spec) = specs.remove(&record.key) else {
                continue;
            };
            let key = record.key.clone();
            let due = self.initial_due(&record, now);
            self.entries.insert(
                key.clone(),
                Entry {
                    spec,
                    record,
                    due_ms: None,
                    in_flight: false,
                },
            );
            if let Some(due) = due {
                self.schedule(&key, due);
            }
        }
    }

    /// Where a watch resumes: its persisted next poll, or (for new watches and overdue ones) a
    /// spot spread over the initial interval by its key, so a restart after a long stop does
    /// not fire every watch at once.
    fn initial_due(&self, record: &WatchRecord, now: u64) -> Option<u64> {
        if record.state.phase.is_terminal() {
            return None;
        }
        let spread = now
            + first_poll_offset(&record.key, self.config.poll.initial_interval).as_millis() as u64;
        Some(match record.next_poll_at_ms {
            Some(t) if t >= now => t,
            _ => spread,
        })
    }

    fn schedule(&mut self, key: &WatchKey, due: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.due_ms = Some(due);
            self.queue.push(Reverse((due, key.clone())));
        }
    }

    /// Runs until `shutdown`, then waits up to `deadline` for in-flight polls.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        deadline: Duration,
    ) {
        let ctx = Arc::new(PollCtx {
            health: self.health.clone(),
            ledger: self.ledger.clone(),
            clock: self.clock,
            budget: self.budget.clone(),
            poll: self.config.poll.clone(),
            wakes: self.wakes.clone(),
        });
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let mut commands_open = true;
        let mut phase_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let now = self.clock.now_ms();
            self.health.last_tick_ms.store(now, Ordering::Relaxed);
            self.launch_due(&ctx, &mut tasks, now);
            let next = self.next_wake(now);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                    Ok(o) => self.finish(o),
                    Err(e) => error!(error = %e, "A poll task failed unexpectedly."),
                },
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Reload) => self.reload().await,
                    None => commands_open = false,
                },
                _ = phase_tick.tick() => self.refresh_phases(),
                _ = tokio::time::sleep(next) => {}
            }
        }
        // Draining: no new polls; in-flight ones finish and commit.
        let drained = tokio::time::timeout(deadline, async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(o) = done {
                    self.finish(o);
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                in_flight = tasks.len(),
                "Polls still in flight at the shutdown deadline are abandoned."
            );
            tasks.abort_all();
        }
        self.refresh_phases();
    }

    fn next_wake(&self, now: u64) -> Duration {
        let due = match self.paused_until {
            Some(p) if !self.probing => Some(p),
            Some(_) => None,
            None => self.queue.peek().map(|Reverse((t, _))| *t),
        };
        due.map(|t| Duration::from_millis(t.saturating_sub(now).max(1)))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    fn launch_due(&mut self, ctx: &Arc<PollCtx>, tasks: &mut JoinSet<Outcome>, now: u64) {
        let cap = self.config.poll.concurrency;
        while tasks.len() < cap {
            if let Some(p) = self.paused_until {
                // Paused: one probe at a time, when the pause is over.
                if self.probing || now < p {
                    return;
                }
            }
            let Some(Reverse((due, _))) = self.queue.peek() else {
                return;
            };
            if *due > now && self.paused_until.is_none() {
                return;
            }
            let Some(Reverse((due, key))) = self.queue.pop() else {
                return;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.in_flight || entry.due_ms != Some(due) {
                continue; // stale heap item
            }
            entry.in_flight = true;
            entry.due_ms = None;
            if self.paused_until.is_some() {
                self.probing = true;
            }
            tasks.spawn(poll(
                ctx.clone(),
                self.client.clone(),
                entry.spec.clone(),
                entry.record.clone(),
            ));
        }
    }

    fn finish(&mut self, o: Outcome) {
        let now = self.clock.now_ms();
        if o.auth_refused {
            let first = self.paused_until.is_none();
            // The pause grows with each failed probe, not with each of the polls that were
            // already in flight when the credentials stopped working.
            let pause = poll_delay(PAUSE_INITIAL, PAUSE_MAX, self.pause_level);
            if first || self.probing {
                self.pause_level = self.pause_level.saturating_add(1);
                self.paused_until = Some(now + pause.as_millis() as u64);
            }
            self.probing = false;
            self.health.auth_paused.store(true, Ordering::Relaxed);
            if first {
                error!(
                    error = o.record.state.last_error.as_deref().unwrap_or(""),
                    retry_in = %humantime::format_duration(pause),
                    "The API refused the credentials; polling of every watch is paused. Check api.access_key and the secret key (scenewatch sign helps); a reload with new credentials resumes at once."
                );
            }
        } else if self.paused_until.is_some() && o.record.state.consecutive_errors == 0 {
            info!("The API accepts the credentials again; polling resumes.");
            self.unpause();
        } else if self.probing {
            // The probe failed for another reason: try again after the same pause.
            self.probing = false;
            let pause = poll_delay(PAUSE_INITIAL, PAUSE_MAX, self.pause_level);
            self.paused_until = Some(now + pause.as_millis() as u64);
        }
        let due = {
            let Some(entry) = self.entries.get_mut(&o.key) else {
                return; // removed by a reload while in flight
            };
            entry.in_flight = false;
            entry.record = o.record;
            if o.auth_refused {
                self.paused_until
            } else {
                entry.record.next_poll_at_ms
            }
        };
        if o.auth_refused {
            self.paused_watches.push(o.key.clone());
        }
        if let Some(due) = due {
            self.schedule(&o.key, due);
        }
    }

    /// Ends the auth pause: the watches it put off are polled again now (spread over the
    /// initial interval), not at the end of the pause they were scheduled for.
    fn unpause(&mut self) {
        self.paused_until = None;
        self.pause_level = 0;
        self.probing = false;
        self.health.auth_paused.store(false, Ordering::Relaxed);
        let now = self.clock.now_ms();
        for key in std::mem::take(&mut self.paused_watches) {
            let in_flight = self.entries.get(&key).is_none_or(|e| e.in_flight);
            if !in_flight {
                let spread =
                    first_poll_offset(&key, self.config.poll.initial_interval).as_millis() as u64;
                self.schedule(&key, now + spread);
            }
        }
    }

    fn refresh_phases(&self) {
        self.health
            .metrics
            .set_budget_rate(self.budget.current_rate());
        let mut counts = HashMap::new();
        for e in self.entries.values() {
            *counts.entry(e.record.state.phase).or_insert(0u64) += 1;
        }
        self.health.set_phases(counts);
    }

    /// Applies a new configuration: the watch list (added, removed, kept with their state and
    /// timers) and the API client. An invalid configuration changes nothing.
    async fn reload(&mut self) {
        let new = match config::load(&self.sources) {
            Ok(c) => c,
            Err(e) => {
                error!(problems = %e, "Reload refused: the configuration is invalid; the running one stays.");
                return;
            }
        };
        let old_sinks: Vec<&str> = self.config.sinks.iter().map(|s| s.name()).collect();
        let new_sinks: Vec<&str> = new.sinks.iter().map(|s| s.name()).collect();
        let old_events: Vec<&str> = self.config.event_sinks.iter().map(|s| s.name()).collect();
        let new_events: Vec<&str> = new.event_sinks.iter().map(|s| s.name()).collect();
        if old_sinks != new_sinks || old_events != new_events {
            warn!(
                "Sink changes take effect at the next restart; the watch list and API settings were reloaded."
            );
        }
        let client = match crate::app::client(&new) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "Reload refused: cannot build the API client; the running configuration stays.");
                return;
            }
        };
        let records = match self
            .ledger
            .sync_watches(&new.watches, self.clock.now_ms())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "Reload refused: cannot record the watch list in the ledger.");
                return;
            }
        };
        self.client = client;
        if self.paused_until.is_some() {
            info!("Credentials reloaded; polling resumes.");
            self.unpause();
        }
        if new.api.requests_per_second != self.config.api.requests_per_second
            || new.api.burst != self.config.api.burst
        {
            self.budget = Arc::new(RequestBudget::new(
                new.api.requests_per_second,
                new.api.burst,
            ));
        }
        let new_keys: HashSet<WatchKey> = new.watches.iter().map(|w| w.key.clone()).collect();
        let removed: Vec<WatchKey> = self
            .entries
            .keys()
            .filter(|k| !new_keys.contains(*k))
            .cloned()
            .collect();
        for k in &removed {
            self.entries.remove(k);
        }
        let mut kept = 0;
        let mut reset = Vec::new();
        let ledger_records: HashMap<&WatchKey, &WatchRecord> =
            records.iter().map(|r| (&r.key, r)).collect();
        for w in &new.watches {
            if let Some(e) = self.entries.get_mut(&w.key) {
                e.spec = w.clone();
                kept += 1;
                // `scenewatch reset` put a terminal watch back to pending in the ledger.
                if e.record.state.phase.is_terminal()
                    && !e.in_flight
                    && let Some(r) = ledger_records.get(&w.key)
                    && !r.state.phase.is_terminal()
                {
                    e.record = (*r).clone();
                    reset.push(w.key.clone());
                }
            }
        }
        let now = self.clock.now_ms();
        for key in &reset {
            info!(watch = %key, "Watch reset by an operator; polling it again.");
            self.schedule(key, now);
        }
        let added: Vec<WatchRecord> = records
            .into_iter()
            .filter(|r| !self.entries.contains_key(&r.key))
            .collect();
        let n_added = added.len();
        self.config = new;
        self.add_watches(added);
        self.refresh_phases();
        info!(
            added = n_added,
            removed = removed.len(),
            kept,
            reset = reset.len(),
            "Configuration reloaded."
        );
    }
}

/// One API call inside the request budget, measured; good answers win budget back (throttling
/// is handled by the step's action).
async fn call<T>(
    ctx: &PollCtx,
    operation: &'static str,
    request: impl std::future::Future<Output = Verdict<T>>,
) -> Verdict<T> {
    ctx.budget.acquire().await;
    let started = tokio::time::Instant::now();
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
    v
}

/// One poll of one watch: request(s), the pure step, events, and one ledger commit.
async fn poll(ctx: Arc<PollCtx>, client: Client, spec: WatchSpec, before: WatchRecord) -> Outcome {
    let now_ms = ctx.clock.now_ms();
    let now = Duration::from_millis(now_ms);
    let limits = Limits {
        max_wait: spec.max_wait,
        not_requested_grace: ctx.poll.not_requested_grace,
    };
    let key = spec.key.clone();
    if let Some(step) = watch::check_deadline(&before.state, now, limits) {
        let mut record = before.clone();
        record.state = step.state;
        record.next_poll_at_ms = None;
        record.last_change_at_ms = Some(now_ms);
        let events = facts::step_events(&key, &before, &record.state, None, None, now_ms);
        return commit(&ctx, before, record, events, None).await;
    }
    let target = spec.target();
    let use_status = spec.generation == Generation::Asset || spec.scene_summary_id.is_some();
    let mut error: Option<ApiError>;
    let mut fetched: Option<SummaryResult> = None;
    let mut step = if use_status {
        let v = call(&ctx, "status", client.status(spec.generation, &target)).await;
        error = v.error().cloned();
        watch::step(&before.state, now, limits, Answer::Status(&v))
    } else {
        let r = call(&ctx, "result", client.result(spec.generation, &target)).await;
        error = r.error().cloned();
        let s = watch::step(&before.state, now, limits, Answer::Result(&r));
        fetched = r.ok();
        s
    };
    if step.action == Action::FetchResult {
        let r = call(&ctx, "result", client.result(spec.generation, &target)).await;
        error = r.error().cloned();
        step = watch::step(&step.state, now, limits, Answer::Result(&r));
        fetched = r.ok();
    }

    let mut record = before.clone();
    record.state = step.state;
    if record.state.remote != before.state.remote || record.state.phase != before.state.phase {
        record.last_change_at_ms = Some(now_ms);
    }
    let poll = &ctx.poll;
    let mut new_version = None;
    let mut events = Vec::new();
    let mut auth_refused = false;
    let error_delay = |n: u32| {
        poll_delay(
            poll.initial_interval.min(Duration::from_secs(1)),
            poll.max_interval,
            n.saturating_sub(1),
        )
    };
    let delay = match &step.action {
        Action::PollAgain { reset_backoff } => {
            record.attempt = if *reset_backoff {
                0
            } else {
                before.attempt.saturating_add(1)
            };
            Some(poll_delay(
                poll.initial_interval,
                poll.max_interval,
                record.attempt,
            ))
        }
        Action::Retry { after } => {
            Some(after.unwrap_or_else(|| error_delay(record.state.consecutive_errors)))
        }
        Action::Throttle { retry_after } => {
            if ctx.budget.throttled(*retry_after) {
                ctx.health.metrics.budget_cut(ctx.budget.current_rate());
            }
            Some(retry_after.unwrap_or_else(|| error_delay(record.state.consecutive_errors)))
        }
        Action::Deliver { version } => {
            record.attempt = 0;
            if before.last_version_id.is_none()
                && let Some(started) = before.state.started_at
            {
                ctx.health.metrics.completed(now.saturating_sub(started));
            }
            if let Some(result) = &fetched {
                let vid = crate::domain::VersionId::of(&key, version);
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
            Some(poll.recheck_interval)
        }
        Action::Recheck => {
            record.attempt = 0;
            if let (Some(result), Some(vid)) = (&fetched, record.last_version_id.clone())
                && let Some(ev) = facts::stale_event(&key, &record, &vid, result, now_ms)
            {
                events.push(ev);
                record.stale_version_id = Some(vid);
            }
            Some(poll.recheck_interval)
        }
        Action::PauseClient => {
            auth_refused = true;
            None
        }
        Action::Stop => None,
        Action::FetchResult => Some(poll.initial_interval),
    };
    if matches!(step.action, Action::Retry { .. } | Action::Throttle { .. }) {
        log_failed_poll(&key, &record, delay);
    }
    if new_version.is_none() && !auth_refused {
        events.extend(facts::step_events(
            &key,
            &before,
            &record.state,
            error.as_ref(),
            None,
            now_ms,
        ));
    }
    record.next_poll_at_ms = delay.map(|d| {
        let mut at = now_ms + d.as_millis() as u64;
        // Never sleep past the deadline of a watch that is still waiting.
        if matches!(record.state.phase, Phase::Pending | Phase::Waiting)
            && let Some(started) = record.state.started_at
        {
            let deadline = (started + spec.max_wait).as_millis() as u64;
            at = at.min(deadline.max(now_ms + 1));
        }
        at
    });
    let mut o = commit(&ctx, before, record, events, new_version).await;
    o.auth_refused = auth_refused;
    o
}

/// One line per failed poll at debug level; a warning when a watch keeps failing (at the 4th,
/// 8th, 16th … failure in a row), so 100,000 watches in a brief outage do not flood the log
/// while a watch that stays broken is still seen.
fn log_failed_poll(key: &WatchKey, record: &WatchRecord, delay: Option<Duration>) {
    let n = record.state.consecutive_errors;
    let error = record.state.last_error.as_deref().unwrap_or("");
    let retry_in = humantime::format_duration(delay.unwrap_or_default());
    if n >= 4 && n.is_power_of_two() {
        warn!(watch = %key, attempt = n, error, retry_in = %retry_in, "Polls keep failing; retrying.");
    } else {
        tracing::debug!(watch = %key, attempt = n, error, retry_in = %retry_in, "Poll failed; retrying.");
    }
}

/// Commits one step; on a ledger error keeps the old record and retries the poll soon.
async fn commit(
    ctx: &PollCtx,
    before: WatchRecord,
    record: WatchRecord,
    events: Vec<crate::events::Event>,
    new_version: Option<NewVersion>,
) -> Outcome {
    let key = record.key.clone();
    let has_version = new_version.is_some();
    let logged = events.clone();
    let started = tokio::time::Instant::now();
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
                for w in &ctx.wakes.results {
                    w.notify_one();
                }
            }
            if !logged.is_empty() {
                for w in ctx.wakes.events.iter() {
                    w.notify_one();
                }
            }
            Outcome {
                key,
                record,
                auth_refused: false,
            }
        }
        Err(e) => {
            error!(watch = %key, error = %e, "Cannot commit a poll to the ledger; nothing of it is recorded and it will be polled again.");
            let mut old = before;
            old.next_poll_at_ms = Some(ctx.clock.now_ms() + LEDGER_RETRY.as_millis() as u64);
            Outcome {
                key,
                record: old,
                auth_refused: false,
            }
        }
    }
}
