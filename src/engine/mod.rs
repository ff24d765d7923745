//! The poll engine: the one loop that runs every watch, for `scenewatch run` (over the SQLite
//! ledger, forever), `scenewatch once` and the demo (over the in-memory ledger, until every watch
//! is settled). It knows every watch's next poll time (a min-heap, no timer per watch), launches
//! due polls under the concurrency cap and the request budget, pauses the whole client when the
//! credentials are refused or the quota is used up, and runs the outbox drainers that deliver
//! what the polls committed.
//!
//! Decisions are elsewhere: [`crate::watch::step`] decides a poll's outcome and its next poll
//! time, [`facts`] which events it stands for, [`pause::ClientPause`] when polling resumes. This
//! module sleeps, spawns, commits and keeps the books.

mod budget;
mod discovery;
pub mod facts;
mod history;
mod kept;
mod outbox;
pub mod pause;
mod poll;
mod replica;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use budget::{Class, RequestBudget, SHARE_EVERY, Share};

use crate::clock::Clock;
use crate::config::{Config, GenerationChoice, Selector, WatchSpec};
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::health::Health;
use crate::key_index::{KeyIndex, give_back};
use crate::ncp::{Api, ApiFactory, AssetPage, IndexStatus, Target, Verdict};
use crate::policy::first_poll_offset;
use crate::sink::{EventSink, Sink};
use crate::state::shards::ShardSet;
use crate::state::{SharedLedger, WatchRecord};
use crate::watch::{self, PauseReason, Phase};
use discovery::{AssetRef, Discovery, Found};
use kept::{Kept, Ms};
use pause::{ClientPause, Probe, Refusal};

/// The deployment fact recorded once the index-level API answered "URL not found.".
pub const INDEX_API_FACT: &str = "index_api";

/// How often the poll history is saved to the ledger (when it changed).
const HISTORY_SAVE_EVERY: Duration = Duration::from_secs(60);

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `scenewatch run`: until shutdown; delivered watches are rechecked.
    Daemon,
    /// `scenewatch once` and the demo: until every watch is settled (ended, delivered to every
    /// sink, or given up on by a sink), or `timeout`. Refused credentials are probed once, after
    /// the first pause; if the probe is refused too, the run ends.
    Once {
        /// The overall time limit (`once --timeout`).
        timeout: Option<Duration>,
    },
}

/// How many times `once` tries one delivery to one sink before giving up on it (the daemon
/// keeps trying, with backoff, for as long as it runs).
pub const ONCE_DELIVERY_ATTEMPTS: u32 = 5;

/// Everything the engine runs on.
pub struct Setup {
    /// The validated configuration; the engine owns it from here (100,000 watches are not
    /// copied).
    pub config: Config,
    /// The ledger, already synced with `config.watches`.
    pub ledger: SharedLedger,
    /// The records `Ledger::sync_watches` returned for `config.watches`; empty when `paged`.
    pub records: Vec<WatchRecord>,
    /// `Ledger::sync_watches_paged` synced `config.watches`: the engine reads their records a
    /// page at a time (`Ledger::synced_records`) as it makes their entries.
    pub paged: bool,
    /// Result sinks, in configuration order.
    pub sinks: Vec<Arc<dyn Sink>>,
    /// Event sinks, in configuration order.
    pub event_sinks: Vec<Arc<dyn EventSink>>,
    /// Live facts, shared with the server.
    pub health: Arc<Health>,
    /// The clock.
    pub clock: Clock,
    /// Daemon or once.
    pub mode: Mode,
    /// Told about every committed poll and every delivery (the progress display, tests).
    pub observer: Option<Arc<dyn Observer>>,
    /// Builds the API client from the configuration (and again on reload).
    pub api: ApiFactory,
    /// `state.replicated`: this replica and the shards it holds at start (`None`: a single
    /// daemon, which polls every watch).
    pub replica: Option<ReplicaStart>,
}

/// A replica's start (see [`Setup::replica`]).
#[derive(Debug, Clone)]
pub struct ReplicaStart {
    /// Its id (unique among the replicas).
    pub id: String,
    /// The shards it holds after its first lease renewal.
    pub owned: ShardSet,
}

/// What changed in a replica's shards (sent by the lease task, `daemon/replica.rs`).
#[derive(Debug, Default)]
pub struct ShardNews {
    /// The shards it holds now: only their watches are polled and delivered.
    pub owned: ShardSet,
    /// The watches of shards just gained, as the ledger has them (their last owner may have
    /// polled them since): each replaces what the engine had. With the selector that found it
    /// (`None`: configured as an index watch).
    pub reloaded: Vec<(Option<String>, WatchRecord)>,
    /// Watches another replica added to the ledger in the held shards (found by discovery,
    /// which runs on one replica): added unless known.
    pub added: Vec<(Option<String>, WatchRecord)>,
}

/// Messages to a running engine.
#[derive(Debug)]
pub enum Command {
    /// Apply a new, validated configuration: the watch list (added, removed, kept with their
    /// state and timers), the API settings and credentials.
    Apply(Box<Config>),
    /// A replica's shards changed.
    Shards(Box<ShardNews>),
}

/// What the engine tells an [`Observer`].
#[derive(Debug)]
pub enum Update<'a> {
    /// A poll step was committed.
    Polled {
        /// The watch.
        spec: &'a WatchSpec,
        /// Its new record.
        record: &'a WatchRecord,
        /// The events the step emitted.
        events: &'a [Event],
    },
    /// A sink confirmed a version.
    Delivered {
        /// The watch.
        key: &'a WatchKey,
        /// The sink's name.
        sink: &'a str,
        /// Where it is now.
        location: &'a str,
        /// Every configured sink has the version now.
        complete: bool,
    },
    /// A delivery failed (`gave_up`: `once` will not retry it).
    DeliveryFailed {
        /// The watch.
        key: &'a WatchKey,
        /// The sink's name.
        sink: &'a str,
        /// What failed.
        error: &'a str,
        /// No more attempts.
        gave_up: bool,
    },
}

/// Watches the engine: called on the engine's tasks, so it must be quick and must not block.
pub trait Observer: Send + Sync {
    /// Something happened.
    fn update(&self, update: &Update<'_>);
}

/// How one watch ended up, for `once`'s report.
#[derive(Debug, Clone)]
pub struct WatchEnd {
    /// The watch.
    pub spec: WatchSpec,
    /// Its last record.
    pub record: WatchRecord,
    /// Where its result went, one per sink that confirmed it.
    pub locations: Vec<String>,
    /// The delivery error a sink ended with, if one gave up.
    pub sink_error: Option<String>,
    /// When it was settled (ended, delivered, or given up on), on the engine's clock.
    pub settled_at_ms: Option<u64>,
}

/// What a run of the engine came to.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Every watch, in configuration order, for the report of `once` and the demo; empty for
    /// the daemon (nothing reads it, and a copy of 100,000 watches at SIGTERM would be the
    /// process's highest memory).
    pub watches: Vec<WatchEnd>,
    /// Set when the run ended with polling paused on refused credentials (the error).
    pub auth_refused: Option<String>,
    /// Set when the run ended with polling paused on a used-up quota (the error).
    pub quota_exceeded: Option<String>,
    /// `once --timeout` passed before every watch was settled.
    pub timed_out: bool,
    /// Shutdown was asked for.
    pub interrupted: bool,
    /// `once`: assets of watched assets or projects that never got an index to watch.
    pub unresolved: Vec<String>,
}

/// What the outbox drainers tell the engine.
#[derive(Debug)]
pub(crate) enum Notice {
    /// A sink confirmed `version`; `complete` when every configured sink has it now.
    Delivered {
        key: WatchKey,
        version: VersionId,
        location: String,
        complete: bool,
    },
    /// `once` stopped trying a delivery.
    GaveUp { key: WatchKey, error: String },
}

/// What the budget leaves for rechecks, measured, and the recheck interval that fits in it.
#[derive(Debug, Default)]
struct RecheckFit {
    /// Requests a second granted to waiting jobs and first polls, smoothed over about 30 s.
    higher_rate: f64,
    /// Requests a second granted to rechecks and to result fetches, likewise: a recheck whose
    /// status cannot tell the version costs a fetch too.
    recheck_rate: f64,
    fetch_rate: f64,
    last: Option<([u64; 4], tokio::time::Instant)>,
    /// The interval in use (zero until the first update).
    fitted: Duration,
}

/// Of what the budget leaves for rechecks, the share planned for: headroom for bursts of the
/// higher classes.
const RECHECK_HEADROOM: f64 = 0.9;

impl RecheckFit {
    /// Measures, refits, says so when the interval is stretched or back, and returns it.
    fn update(
        &mut self,
        configured: Duration,
        watching: u64,
        rate: f64,
        granted: [u64; 4],
        now: tokio::time::Instant,
    ) -> Duration {
        if let Some((before, at)) = self.last {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let per_sec =
                    |c: Class| granted[c as usize].saturating_sub(before[c as usize]) as f64 / secs;
                let weight = (secs / 30.0).min(1.0);
                let higher = per_sec(Class::Waiting) + per_sec(Class::First);
                self.higher_rate += (higher - self.higher_rate) * weight;
                self.recheck_rate += (per_sec(Class::Recheck) - self.recheck_rate) * weight;
                self.fetch_rate += (per_sec(Class::Fetch) - self.fetch_rate) * weight;
            }
        }
        self.last = Some((granted, now));
        let floor = rate / f64::from(budget::SHARE_EVERY);
        let left = (rate - self.higher_rate).max(floor) * RECHECK_HEADROOM;
        // Fetches are counted against rechecks: after the first completions, most are theirs.
        let calls_each = if self.recheck_rate > 0.0 {
            (self.recheck_rate + self.fetch_rate) / self.recheck_rate
        } else {
            1.0
        };
        let fitted = crate::policy::fitted_recheck(configured, watching, calls_each, left);
        let current = if self.fitted.is_zero() {
            configured
        } else {
            self.fitted
        };
        // Moves of less than a tenth are not worth rescheduling for (nor a log line).
        let moved = fitted.as_secs_f64() > current.as_secs_f64() * 1.1
            || fitted.as_secs_f64() < current.as_secs_f64() / 1.1
            || (fitted == configured && current != configured);
        if !moved && !self.fitted.is_zero() {
            return self.fitted;
        }
        if fitted > configured && current == configured {
            warn!(
                watching,
                needed_per_second = format!("{:.2}", watching as f64 * calls_each / configured.as_secs_f64()),
                left_per_second = format!("{:.2}", left / RECHECK_HEADROOM),
                recheck_interval = %humantime::format_duration(configured),
                effective_recheck_interval = %humantime::format_duration(round_s(fitted)),
                "Rechecking {watching} delivered watches every {} needs {:.2} requests a second, but the request budget leaves {:.2} after waiting jobs and first polls: rechecking every {} instead. Raise api.requests_per_second if the account's quota allows, or set poll.recheck_interval to at least that.",
                humantime::format_duration(configured),
                watching as f64 * calls_each / configured.as_secs_f64(),
                left / RECHECK_HEADROOM,
                humantime::format_duration(round_s(fitted)),
            );
        } else if fitted == configured && current != configured {
            info!(
                recheck_interval = %humantime::format_duration(configured),
                "The request budget carries the configured recheck interval again."
            );
        }
        self.fitted = fitted;
        fitted
    }
}

/// Whole seconds, for messages.
fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// The budget class of a watch's next poll (see `budget`).
fn class_of(e: &Entry) -> Class {
    match e.kept.phase {
        Phase::Pending => Class::First,
        Phase::Watching => Class::Recheck,
        _ => Class::Waiting,
    }
}

/// Records read a page at a time at the start (see `Engine::add_watches`): some 0.9 MB each.
const START_PAGE: usize = 4096;

/// The start's progress through the configured watches (see `Engine::add_watches`).
struct Start {
    /// The specs not yet paired, reversed: the next one in line is last.
    specs: Vec<WatchSpec>,
    /// The specs by key, once a record came out of their order.
    rest: Option<HashMap<WatchKey, WatchSpec>>,
    /// Watches loaded `completed`, to settle.
    completed: Vec<WatchKey>,
    now: u64,
}

/// Watches per phase, kept incrementally (see `Engine::counts`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PhaseCounts([u64; Phase::ALL.len()]);

impl PhaseCounts {
    /// An entry counted under `was` (`None`: not counted) is now counted under `now`.
    fn moved(&mut self, was: Option<Phase>, now: Option<Phase>) {
        if was == now {
            return;
        }
        if let Some(p) = was {
            self.0[p as usize] = self.0[p as usize].saturating_sub(1);
        }
        if let Some(p) = now {
            self.0[p as usize] += 1;
        }
    }

    fn of(entries: &[Entry]) -> PhaseCounts {
        let mut c = PhaseCounts::default();
        for e in entries {
            c.moved(None, e.counted());
        }
        c
    }

    fn get(&self, p: Phase) -> u64 {
        self.0[p as usize]
    }

    fn to_map(&self) -> HashMap<Phase, u64> {
        Phase::ALL
            .into_iter()
            .filter(|p| self.get(*p) > 0)
            .map(|p| (p, self.get(p)))
            .collect()
    }
}

/// One watch as the engine holds it.
struct Entry {
    /// Its settings, held here and nowhere else (a poll takes a copy): as an `Arc` of its own
    /// it was a 144-byte allocation per watch among the small ones the start leaves behind.
    spec: WatchSpec,
    /// Its record, less the key (`spec.key` is the same), and the latest version every sink
    /// confirmed (so a commit racing with the last delivery cannot leave the watch
    /// `completed`).
    kept: Kept,
    /// When it is due, if scheduled; heap items that disagree are stale and skipped.
    due: Ms,
    /// Its recent polls' timing, for the poll history (`forecast::Timing`, 16 bytes here).
    last_poll: Ms,
    change_est: Ms,
    in_flight: bool,
    /// No longer configured (kept so indexes stay stable; not polled).
    removed: bool,
    /// Polled since the process started (see `poll`: the deadline of a first poll).
    polled: bool,
    /// Reloaded from the ledger while a poll of it was in flight (a replica regained its
    /// shard): that poll's outcome is older news than the ledger's, and is not applied.
    reloaded: bool,
    /// Its shard is this process's (always, unless it is one of several replicas): only held
    /// watches are polled and counted.
    held: bool,
}

/// What `once` reports of a watch beyond its record (see [`WatchEnd`]), kept beside the entries
/// (`Engine::reports`): the daemon reports no watch, and its entries do not pay for it.
#[derive(Debug, Default)]
struct Report {
    locations: Vec<String>,
    sink_error: Option<String>,
    settled_at_ms: Option<u64>,
}

impl Entry {
    /// A watch the engine has not seen yet: unscheduled, never polled here.
    fn new(spec: WatchSpec, record: WatchRecord, owned: &ShardSet) -> Entry {
        debug_assert!(record.key == spec.key);
        Entry {
            held: owned.holds(&spec.key),
            spec,
            kept: Kept::new(record),
            due: Ms::NONE,
            in_flight: false,
            removed: false,
            polled: false,
            last_poll: Ms::NONE,
            change_est: Ms::NONE,
            reloaded: false,
        }
    }

    /// Its key.
    fn key(&self) -> &WatchKey {
        &self.spec.key
    }

    /// Its record (a copy).
    fn record(&self) -> WatchRecord {
        self.kept.record(&self.spec.key)
    }

    /// When it is due, if scheduled.
    fn due_ms(&self) -> Option<u64> {
        self.due.get()
    }

    /// Its recent polls' timing.
    fn timing(&self) -> crate::forecast::Timing {
        crate::forecast::Timing {
            last_poll_ms: self.last_poll.get(),
            change_est_ms: self.change_est.get(),
        }
    }

    fn set_timing(&mut self, t: crate::forecast::Timing) {
        self.last_poll = Ms::new(t.last_poll_ms);
        self.change_est = Ms::new(t.change_est_ms);
    }

    /// The phase it is counted under (`None` once removed, or when another replica holds it).
    fn counted(&self) -> Option<Phase> {
        (!self.removed && self.held).then_some(self.kept.phase)
    }
}

/// Who to wake when the ledger gains work.
pub(crate) struct Wakes {
    /// One per result sink.
    pub results: Vec<Arc<Notify>>,
    /// One per event sink.
    pub events: Arc<[Arc<Notify>]>,
}

impl Wakes {
    pub fn results(&self) {
        for w in &self.results {
            w.notify_one();
        }
    }

    pub fn events(&self) {
        for w in self.events.iter() {
            w.notify_one();
        }
    }
}

/// Runs the engine until `shutdown` (or, for `once`, until every watch is settled), then drains:
/// in-flight polls commit, the drainers send one last batch, all within the configured
/// `shutdown_timeout`. The caller closes the ledger.
pub async fn run(
    setup: Setup,
    commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) -> anyhow::Result<Finished> {
    let Setup {
        config,
        ledger,
        records,
        paged,
        sinks,
        event_sinks,
        health,
        clock,
        mode,
        observer,
        api,
        replica,
    } = setup;
    let client = api(&config.api)?;
    let deadline = config.shutdown_timeout;
    let (notices_tx, notices) = mpsc::unbounded_channel();
    let wakes = Arc::new(Wakes {
        results: sinks.iter().map(|_| Arc::new(Notify::new())).collect(),
        events: event_sinks
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect(),
    });
    let stop_work = CancellationToken::new();
    let tracker = TaskTracker::new();
    let outbox = outbox::Outbox {
        ledger: ledger.clone(),
        clock,
        health: health.clone(),
        stop: stop_work.clone(),
        healthcheck_every: config.sink_healthcheck_interval,
        events_wake: wakes.events.clone(),
        notices: notices_tx,
        give_up_after: match mode {
            Mode::Daemon => None,
            Mode::Once { .. } => Some(ONCE_DELIVERY_ATTEMPTS),
        },
        observer: observer.clone(),
    };
    for (s, wake) in sinks.iter().zip(&wakes.results) {
        tracker.spawn(outbox::drain_results(
            outbox.clone(),
            s.clone(),
            wake.clone(),
        ));
    }
    for (s, wake) in event_sinks.iter().zip(wakes.events.iter()) {
        tracker.spawn(outbox::drain_events(
            outbox.clone(),
            s.clone(),
            wake.clone(),
        ));
    }
    drop(outbox);

    let budget = Arc::new(RequestBudget::new(
        config.api.requests_per_second,
        config.api.burst,
    ));
    let owned = replica.as_ref().map_or(ShardSet::ALL, |r| r.owned);
    let replica = replica.map(|r| Arc::new(replica::ReplicaCtx::new(&r.id)));
    if let Some(me) = &replica {
        budget.set_portion(owned.share());
        tracker.spawn(replica::follow(
            ledger.clone(),
            budget.clone(),
            clock,
            me.clone(),
            stop_work.clone(),
        ));
    }
    // A remembered observation of the API, not state to protect: if the ledger cannot say (it
    // failed just now; its own error is logged and shown by readiness), the removal is learned
    // again from the first gateway 404, as it was the first time.
    let index_api_gone = match ledger.fact(INDEX_API_FACT).await {
        Ok(v) => v.as_deref() == Some("gone"),
        Err(e) => {
            warn!(error = %e, "Cannot read from the ledger whether the index-level API is gone; assuming it is not until the API says so.");
            false
        }
    };
    let now = clock.now_ms();
    let discovery = Discovery::new(
        config.selectors.clone(),
        config.poll.discovery_interval,
        config.poll.initial_interval,
        now,
    );
    let mut engine = Engine {
        ctx: Arc::new(poll::PollCtx {
            health: health.clone(),
            ledger: ledger.clone(),
            clock,
            budget,
            grace: config.poll.not_requested_grace,
            policy: crate::policy::Policy::from_config(&config.poll),
            wakes,
            observer,
            index_api_gone: Arc::new(std::sync::atomic::AtomicBool::new(index_api_gone)),
            every_failure: matches!(mode, Mode::Once { .. }),
            fitted_recheck_ms: Arc::default(),
            history: Arc::new(std::sync::Mutex::new(history::load(ledger.as_ref()).await)),
            adaptive: config.poll.policy == crate::config::PollPolicy::Adaptive,
            replica,
            held: Arc::new(std::sync::RwLock::new(owned)),
        }),
        client,
        api,
        config,
        mode,
        entries: Vec::new(),
        reports: Vec::new(),
        index: KeyIndex::default(),
        queues: Default::default(),
        launch_share: Share::default(),
        recheck_fit: RecheckFit::default(),
        counts: PhaseCounts::default(),
        pause: ClientPause::default(),
        put_off: Vec::new(),
        last_refusal: None,
        probe_watch: None,
        give_up: None,
        discovery,
        index_api_noted: index_api_gone,
        probe_discovery: false,
    };
    if index_api_gone {
        warn!(
            "The index-level API was found gone earlier (recorded in the ledger): watches with generation = \"auto\" use the asset-level calls; those with generation = \"index\" end rejected."
        );
    }
    let added = if paged {
        engine.add_watches_paged().await
    } else {
        engine.add_watches(records).await;
        Ok(())
    };
    if let Err(e) = added {
        // Nothing was polled yet; the drainers stop with what they were doing.
        stop_work.cancel();
        tracker.close();
        tracker.wait().await;
        return Err(anyhow::Error::new(e)
            .context("cannot read the configured watches' records from the ledger"));
    }
    engine.load_discovered().await;
    engine.deprecation_notice();
    engine.refresh_phases();
    let (mut finished, drain_started) = engine.run(commands, notices, shutdown.clone()).await;
    finished.interrupted = shutdown.is_cancelled();

    // Deliveries and events in progress finish; each drainer sends one last batch of what is
    // due, then stops (see `outbox`). In-flight polls and this share one deadline.
    stop_work.cancel();
    tracker.close();
    let left = deadline.saturating_sub(drain_started.elapsed());
    if tokio::time::timeout(left, tracker.wait()).await.is_err() {
        warn!(
            "Shutdown timeout reached while delivering; what is left is kept in the ledger and delivered on the next start."
        );
    }
    Ok(finished)
}

/// The loop's state.
struct Engine {
    ctx: Arc<poll::PollCtx>,
    client: Arc<dyn Api>,
    api: ApiFactory,
    config: Config,
    mode: Mode,
    entries: Vec<Entry>,
    /// `once`'s report of each entry, at the entry's position; empty in the daemon (whose
    /// reports would otherwise gain a location at every delivery for as long as it runs).
    reports: Vec<Report>,
    /// Entries by key (their positions in `entries`).
    index: KeyIndex,
    /// The next polls, one min-heap per [`Class`] (index: `Class as usize`): due polls are
    /// launched best class first, with the recheck share (see `budget`).
    queues: [BinaryHeap<Reverse<(u64, usize)>>; 4],
    launch_share: Share,
    recheck_fit: RecheckFit,
    /// Watches per phase (removed ones not counted), kept up to date at every change of an
    /// entry's record or removal, so the per-second refresh does not scan every watch.
    counts: PhaseCounts,
    pause: ClientPause,
    /// Watches put off by the pause; polled again as soon as it ends.
    put_off: Vec<usize>,
    /// The error that started the current pause.
    last_refusal: Option<String>,
    /// The watch whose poll is the current probe.
    probe_watch: Option<usize>,
    /// Set when `once` gives up on refused credentials.
    give_up: Option<PauseReason>,
    /// Watches by asset or project: what to list and read.
    discovery: Discovery,
    /// The index-level API's removal was logged (and recorded) already.
    index_api_noted: bool,
    /// The pause's probe is a discovery call.
    probe_discovery: bool,
}

impl Engine {
    /// Adds `records` with their specs, taken out of the configuration: the entries keep the one
    /// copy of each spec.
    async fn add_watches(&mut self, records: Vec<WatchRecord>) {
        let mut start = self.start(records.len());
        self.add_records(&mut start, records);
        self.settle_start(start).await;
    }

    /// [`Engine::add_watches`] of the records the ledger keeps (`Ledger::sync_watches_paged`),
    /// read a page at a time.
    async fn add_watches_paged(&mut self) -> Result<(), crate::state::StateError> {
        let mut start = self.start(0);
        let mut from = Some(0);
        while let Some(at) = from {
            let (page, next) = self.ctx.ledger.synced_records(at, START_PAGE).await?;
            self.add_records(&mut start, page);
            from = next;
        }
        self.settle_start(start).await;
        Ok(())
    }

    /// The start of [`Engine::add_watches`]: the configuration's specs taken, room made.
    ///
    /// The ledger returns the records of the configured watches in their order, so at the start
    /// each record meets its spec next in line and no map of 100,000 specs is built; the map is
    /// the fallback for records out of that order (a reload adds a subset). The specs are taken
    /// from their end (reversed in place first), and their room is given back as they empty;
    /// the records come a page at a time from the ledger (the daemon), or as one list taken
    /// from its end alike, so the start does not hold them whole beside the entries.
    fn start(&mut self, records: usize) -> Start {
        let mut specs = std::mem::take(&mut self.config.watches);
        specs.reverse();
        // Sized once: grown by doubling, the entries and the index would hold up to twice
        // their room at the start's peak.
        let room = specs.len().max(records);
        self.entries.reserve(room);
        let entries = &self.entries;
        self.index.reserve(room, |i| entries[i].key());
        Start {
            specs,
            rest: None,
            completed: Vec::new(),
            now: self.ctx.clock.now_ms(),
        }
    }

    /// The end of [`Engine::add_watches`]: watches loaded `completed` are settled.
    /// What the start made and freed on the way (pages of records, the specs' list) is then
    /// handed back to the system (`crate::memory`).
    async fn settle_start(&mut self, start: Start) {
        if !start.completed.is_empty() {
            self.settle_completed(&start.completed).await;
        }
        drop(start);
        if let Some(took) = crate::memory::give_back() {
            debug!(
                watches = self.entries.len(),
                took_ms = took.as_millis() as u64,
                "Freed memory handed back to the system."
            );
        }
    }

    /// [`Engine::add_watches`] of one list of records, in the specs' order.
    fn add_records(&mut self, start: &mut Start, mut records: Vec<WatchRecord>) {
        records.reverse();
        while let Some(mut record) = records.pop() {
            give_back(&mut records);
            let specs = &mut start.specs;
            let spec = if start.rest.is_none() && specs.last().is_some_and(|w| w.key == record.key)
            {
                let spec = specs.pop();
                give_back(specs);
                spec
            } else {
                start
                    .rest
                    .get_or_insert_with(|| specs.drain(..).map(|w| (w.key.clone(), w)).collect())
                    .remove(&record.key)
            };
            let Some(spec) = spec else {
                continue;
            };
            // The record and the spec share one key text.
            record.key = spec.key.clone();
            let due = self.record_due(&record, start.now);
            if record.state.phase == Phase::Completed {
                start.completed.push(record.key.clone());
            }
            let i = self.insert_entry(spec, record);
            if let Some(due) = due {
                self.schedule(i, due);
            }
        }
    }

    /// Watches loaded `completed` whose deliveries are all done already (the last one finished
    /// while their step was committed) are `watching`.
    async fn settle_completed(&mut self, keys: &[WatchKey]) {
        let Ok(rows) = self.ctx.ledger.status().await else {
            return;
        };
        let wanted: HashSet<&WatchKey> = keys.iter().collect();
        for row in rows {
            if wanted.contains(&row.key)
                && row.pending_deliveries == 0
                && row.parked_deliveries == 0
                && let Some(i) = self.find(&row.key)
            {
                let e = &mut self.entries[i];
                let was = e.counted();
                e.kept.set_delivered(e.kept.last_version_id().cloned());
                apply_delivered(e);
                self.counts.moved(was, e.counted());
            }
        }
    }

    /// Where a watch resumes: its persisted next poll, or (for new watches and overdue ones) a
    /// spot spread over the initial interval by its key, so a restart after a long stop does not
    /// fire every watch at once. Ended watches are not scheduled; in `once`, delivered ones
    /// neither.
    fn initial_due(
        &self,
        key: &WatchKey,
        phase: Phase,
        next_poll_at_ms: Option<u64>,
        now: u64,
    ) -> Option<u64> {
        if phase.is_terminal() || (self.once() && phase == Phase::Watching) {
            return None;
        }
        let spread =
            now + first_poll_offset(key, self.config.poll.initial_interval).as_millis() as u64;
        // No schedule is ever further ahead than the longest interval (rechecks, the longest
        // pause): a time beyond that was saved by a clock that ran ahead (or this one jumped
        // back across a restart) and is not waited for.
        let p = &self.config.poll;
        let horizon = p
            .max_interval
            .max(p.recheck_interval)
            .max(pause::QUOTA_PAUSE.1)
            .as_millis() as u64;
        Some(match next_poll_at_ms {
            Some(t) if t >= now && t <= now.saturating_add(horizon) => t,
            _ => spread,
        })
    }

    /// [`Engine::initial_due`] of a record not yet in an entry.
    fn record_due(&self, record: &WatchRecord, now: u64) -> Option<u64> {
        self.initial_due(&record.key, record.state.phase, record.next_poll_at_ms, now)
    }

    /// [`Engine::initial_due`] of entry `i`.
    fn entry_due(&self, i: usize, now: u64) -> Option<u64> {
        let e = &self.entries[i];
        self.initial_due(e.key(), e.kept.phase, e.kept.next_poll_at_ms(), now)
    }

    fn once(&self) -> bool {
        matches!(self.mode, Mode::Once { .. })
    }

    /// `once` is done with entry `i`: ended, delivered to every sink, or given up on by a sink.
    fn settled(&self, i: usize) -> bool {
        let phase = self.entries[i].kept.phase;
        phase.is_terminal()
            || phase == Phase::Watching
            || self.reports.get(i).is_some_and(|r| r.sink_error.is_some())
    }

    /// Notes when entry `i` became settled, the first time it is (`once` only).
    fn note_settled(&mut self, i: usize, now_ms: u64) {
        let settled = self.settled(i);
        if let Some(r) = self.reports.get_mut(i)
            && r.settled_at_ms.is_none()
            && settled
        {
            r.settled_at_ms = Some(now_ms);
        }
    }

    fn schedule(&mut self, i: usize, due: u64) {
        if let Some(e) = self.entries.get_mut(i)
            && !e.removed
        {
            e.due = Ms::new(Some(due));
            self.queues[class_of(e) as usize].push(Reverse((due, i)));
        }
    }

    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut notices: mpsc::UnboundedReceiver<Notice>,
        shutdown: CancellationToken,
    ) -> (Finished, tokio::time::Instant) {
        let mut tasks: JoinSet<poll::Outcome> = JoinSet::new();
        let mut discovering: JoinSet<(discovery::Call, Discovered)> = JoinSet::new();
        let mut commands_open = true;
        let mut phase_tick = tokio::time::interval(Duration::from_secs(1));
        let mut history_tick = tokio::time::interval(HISTORY_SAVE_EVERY);
        history_tick.reset();
        let timeout = match self.mode {
            Mode::Once {
                timeout: Some(t), ..
            } => Some(self.ctx.clock.instant() + t),
            _ => None,
        };
        let mut timed_out = false;
        loop {
            if self.once() && (self.all_settled() || self.give_up.is_some()) {
                break;
            }
            let now = self.ctx.clock.now_ms();
            self.ctx.health.last_tick_ms.store(now, Ordering::Relaxed);
            if self.once() {
                for lost in self.discovery.give_up_older_than(now) {
                    warn!("{lost}");
                }
            }
            self.launch_due(&mut tasks, now);
            self.launch_discovery(&mut discovering, now);
            let next = self.next_wake(now);
            let until_timeout = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = until_timeout => {
                    timed_out = true;
                    break;
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                    Ok(o) => self.finish(o).await,
                    Err(e) => error!(error = %e, "A poll task failed unexpectedly."),
                },
                Some(done) = discovering.join_next(), if !discovering.is_empty() => match done {
                    Ok((call, answer)) => self.discovered_answer(call, answer).await,
                    Err(e) => error!(error = %e, "A discovery task failed unexpectedly."),
                },
                Some(n) = notices.recv() => self.notice(n),
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Apply(c)) => self.apply(*c).await,
                    Some(Command::Shards(news)) => self.shards(*news).await,
                    None => commands_open = false,
                },
                _ = phase_tick.tick() => self.refresh_phases(),
                _ = history_tick.tick() => {
                    history::save(self.ctx.ledger.as_ref(), &self.ctx.history).await;
                }
                _ = tokio::time::sleep(next) => {}
            }
        }
        // Draining: no new polls; in-flight ones finish and commit.
        let drain_started = self.ctx.clock.instant();
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(o) = done {
                    self.finish(o).await;
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
        // A listing or index read in flight is simply done again at the next start.
        discovering.abort_all();
        // Notices that arrived meanwhile (the last deliveries).
        while let Ok(n) = notices.try_recv() {
            self.notice(n);
        }
        self.refresh_phases();
        history::save(self.ctx.ledger.as_ref(), &self.ctx.history).await;
        (self.finished(timed_out), drain_started)
    }

    /// Loads the watches selectors found earlier (kept in the ledger) for the selectors still
    /// configured; their assets need no new discovery.
    async fn load_discovered(&mut self) {
        let found = match self.ctx.ledger.discovered().await {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "Cannot read the watches found through projects and assets from the ledger; they are found again.");
                return;
            }
        };
        let now = self.ctx.clock.now_ms();
        for (origin, record) in found {
            let Some(selector) = self.selector(&origin) else {
                continue;
            };
            let key = record.key.clone();
            if self.find(&key).is_some_and(|i| !self.entries[i].removed) {
                continue; // configured as an index watch too: that one wins
            }
            if !record.state.phase.is_terminal() {
                self.discovery.known(asset_of(&key), &origin);
            }
            let due = self.record_due(&record, now);
            let i = self.insert_entry(selector.spec_for(key), record);
            if let Some(due) = due {
                self.schedule(i, due);
            }
        }
    }

    /// The shards whose watches this process polls: all of them, unless it is one of several
    /// replicas (the poll tasks read the same set, `PollCtx::held`).
    fn owned(&self) -> ShardSet {
        *self
            .ctx
            .held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configured selector named by a watch's `origin`.
    fn selector(&self, origin: &str) -> Option<Selector> {
        self.discovery
            .selectors()
            .iter()
            .find(|s| s.origin() == origin)
            .cloned()
    }

    /// One warning at start when watches use the index-level API explicitly.
    fn deprecation_notice(&self) {
        let n = self
            .entries
            .iter()
            .filter(|e| !e.removed && e.spec.generation == GenerationChoice::Index)
            .count();
        if n > 0 {
            warn!(
                watches = n,
                "Watches with generation = \"index\" use NAVER's index-level API, which is announced for removal in January 2027; once it is gone they end rejected. Set generation = \"auto\" (the default), which moves to the asset-level API by itself; see docs/migration.md."
            );
        }
    }

    /// The position of `key`'s entry, if it has one.
    fn find(&self, key: &WatchKey) -> Option<usize> {
        self.index.get(key, |i| self.entries[i].key())
    }

    /// Adds (or replaces) the entry of a watch; returns its index.
    fn insert_entry(&mut self, spec: WatchSpec, record: WatchRecord) -> usize {
        let key = record.key.clone();
        match self.find(&key) {
            Some(i) => {
                let e = &mut self.entries[i];
                let was = e.counted();
                e.spec = spec;
                e.kept.set(record);
                e.removed = false;
                e.due = Ms::NONE;
                self.counts.moved(was, e.counted());
                i
            }
            None => {
                self.entries.push(Entry::new(spec, record, &self.owned()));
                if self.once() {
                    self.reports.push(Report::default());
                }
                let i = self.entries.len() - 1;
                self.counts.moved(None, self.entries[i].counted());
                let entries = &self.entries;
                self.index.insert(&key, i, |j| entries[j].key());
                i
            }
        }
    }

    /// Starts the next discovery call that is due (one at a time: listings are cheap and rare,
    /// and waiting jobs come first).
    fn launch_discovery(&mut self, tasks: &mut JoinSet<(discovery::Call, Discovered)>, now: u64) {
        // Replicas: discovery runs on the one holding shard 0, so listings are not repeated.
        if !tasks.is_empty() || !self.owned().contains(0) {
            return;
        }
        if self.pause.reason().is_some() {
            // Paused: a discovery call may be the probe when no watch is there to be one.
            if self.probe_watch.is_some()
                || self.probe_discovery
                || self.pause.next_probe(now).is_none()
            {
                return;
            }
            let Some(call) = self.discovery.next_call(u64::MAX) else {
                return;
            };
            self.pause.launched(usize::MAX);
            self.probe_discovery = true;
            tasks.spawn(discover(
                self.ctx.clone(),
                self.client.clone(),
                self.discovery.selectors().to_vec(),
                call,
            ));
            return;
        }
        let Some(call) = self.discovery.next_call(now) else {
            return;
        };
        tasks.spawn(discover(
            self.ctx.clone(),
            self.client.clone(),
            self.discovery.selectors().to_vec(),
            call,
        ));
    }

    /// Takes in what a discovery call answered: new watches, assets gone, or a refusal that
    /// pauses the client like a poll's.
    async fn discovered_answer(&mut self, call: discovery::Call, answer: Discovered) {
        let now = self.ctx.clock.now_ms();
        let probe = std::mem::take(&mut self.probe_discovery);
        let found = match &answer {
            Discovered::Page(p) => self
                .discovery
                .answered(&call, discovery::Answer::Page(p), now),
            Discovered::Index(st) => {
                self.discovery
                    .answered(&call, discovery::Answer::Index(st), now)
            }
            Discovered::Failed => self
                .discovery
                .answered(&call, discovery::Answer::Failed, now),
            Discovered::Permanent(why) => {
                self.discovery
                    .answered(&call, discovery::Answer::Permanent(why), now)
            }
            Discovered::Refused(reason, e) => {
                self.discovery
                    .answered(&call, discovery::Answer::Failed, now);
                if self.pause.refused(usize::MAX, *reason, probe, now) == Refusal::Started {
                    let text = e.clone();
                    self.started_pause(*reason, &text);
                    self.last_refusal = Some(text);
                } else if probe && self.once() {
                    self.give_up = Some(*reason);
                }
                Vec::new()
            }
        };
        if !matches!(answer, Discovered::Refused(..))
            && self.pause.answered(
                usize::MAX,
                probe,
                !matches!(answer, Discovered::Failed),
                now,
            )
        {
            info!("The API accepts the requests again; polling resumes.");
            self.ended_pause();
        }
        for f in found {
            match f {
                Found::Index {
                    selector,
                    asset,
                    index_id,
                } => self.add_discovered(selector, &asset, &index_id).await,
                Found::Gone { selector, assets } => self.remove_assets(selector, &assets).await,
            }
        }
    }

    /// A selector found the watch of `asset`'s index `index_id`: record it, announce it, poll it.
    async fn add_discovered(&mut self, selector: usize, asset: &AssetRef, index_id: &str) {
        let Some(sel) = self.discovery.selectors().get(selector).cloned() else {
            return;
        };
        let (w, p, a) = asset;
        let key = match WatchKey::new(w.clone(), p.clone(), a.clone(), index_id) {
            Ok(k) => k,
            Err(e) => {
                warn!(asset = %format!("{w}/{p}/{a}"), error = %e, "The asset's latest index cannot be watched.");
                return;
            }
        };
        if self
            .find(&key)
            .is_some_and(|i| !self.entries[i].removed && self.entries[i].spec.origin.is_none())
        {
            return; // configured as an index watch: that one covers it
        }
        let origin = sel.origin();
        let spec = sel.spec_for(key.clone());
        let now = self.ctx.clock.now_ms();
        let record = match self.ctx.ledger.add_watch(&spec, now).await {
            Ok(r) => r,
            Err(e) => {
                error!(watch = %key, error = %e, "Cannot record a watch found through a project or asset in the ledger; it is looked for again.");
                self.discovery.forget(asset);
                return;
            }
        };
        let ev = Event::discovered(&key, &origin, now);
        match self.ctx.ledger.record_events(vec![ev.clone()]).await {
            Ok(()) => {
                ev.log();
                self.ctx.health.metrics.event(ev.kind.as_str());
                self.ctx.wakes.events();
            }
            Err(e) => {
                error!(watch = %key, error = %e, "Cannot record the discovered event in the ledger.")
            }
        }
        self.discovery.known(asset.clone(), &origin);
        let due = self.record_due(&record, now);
        let i = self.insert_entry(spec, record);
        if let Some(due) = due {
            self.schedule(i, due);
        }
        if let Some(o) = &self.ctx.observer {
            let e = &self.entries[i];
            o.update(&Update::Polled {
                spec: &e.spec,
                record: &e.record(),
                events: std::slice::from_ref(&ev),
            });
        }
    }

    /// Assets gone from their project's list: their watches are removed (kept, not polled).
    async fn remove_assets(&mut self, selector: usize, assets: &[AssetRef]) {
        let Some(origin) = self
            .discovery
            .selectors()
            .get(selector)
            .map(Selector::origin)
        else {
            return;
        };
        let gone: HashSet<&AssetRef> = assets.iter().collect();
        let mut keys = Vec::new();
        for e in &mut self.entries {
            if !e.removed
                && e.spec.origin.as_deref() == Some(origin.as_str())
                && gone.contains(&asset_of(e.key()))
            {
                self.counts.moved(e.counted(), None);
                e.removed = true;
                e.due = Ms::NONE;
                keys.push(e.key().clone());
            }
        }
        if keys.is_empty() {
            return;
        }
        info!(project = %origin, watches = keys.len(), "Assets are gone from their project's list; their watches are removed (kept in the ledger, not polled).");
        if let Err(e) = self
            .ctx
            .ledger
            .remove_watches(keys, self.ctx.clock.now_ms())
            .await
        {
            error!(error = %e, "Cannot record removed watches in the ledger.");
        }
    }

    /// The index-level API is gone: recorded once for the whole deployment, said once.
    async fn note_index_api_gone(&mut self) {
        if self.index_api_noted {
            return;
        }
        self.index_api_noted = true;
        warn!(
            "The index-level API answers the gateway's 404 \"URL not found.\": NAVER has removed it. Watches with generation = \"auto\" move to the asset-level calls; those with generation = \"index\" end rejected with what to change (docs/migration.md)."
        );
        if let Err(e) = self.ctx.ledger.set_fact(INDEX_API_FACT, "gone").await {
            error!(error = %e, "Cannot record in the ledger that the index-level API is gone; it is found out again after a restart.");
        }
    }

    fn all_settled(&self) -> bool {
        self.discovery.settled()
            && (0..self.entries.len()).all(|i| self.entries[i].removed || self.settled(i))
    }

    fn finished(&mut self, timed_out: bool) -> Finished {
        let reason = self.give_up.or(self.pause.reason());
        let refusal = self.last_refusal.clone().unwrap_or_default();
        // Only `once` and the demo report the watches (see `Finished::watches`).
        let watches = if self.once() {
            self.entries
                .iter()
                .zip(&self.reports)
                .filter(|(e, _)| !e.removed)
                .map(|(e, r)| WatchEnd {
                    spec: e.spec.clone(),
                    record: e.record(),
                    locations: r.locations.clone(),
                    sink_error: r.sink_error.clone(),
                    settled_at_ms: r.settled_at_ms,
                })
                .collect()
        } else {
            Vec::new()
        };
        Finished {
            watches,
            auth_refused: (reason == Some(PauseReason::Auth)).then(|| refusal.clone()),
            quota_exceeded: (reason == Some(PauseReason::Quota)).then_some(refusal),
            timed_out: timed_out && !self.all_settled(),
            interrupted: false,
            unresolved: self.discovery.given_up().to_vec(),
        }
    }

    fn next_wake(&self, now: u64) -> Duration {
        let due = match self.pause.until_ms() {
            Some(p) if self.probe_watch.is_none() && !self.probe_discovery => Some(p),
            Some(_) => None,
            None => {
                let poll = self
                    .queues
                    .iter()
                    .filter_map(|q| q.peek().map(|Reverse((t, _))| *t))
                    .min();
                let found = self.discovery.next_due();
                poll.into_iter().chain(found).min()
            }
        };
        due.map(|t| Duration::from_millis(t.saturating_sub(now).max(1)))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    fn launch_due(&mut self, tasks: &mut JoinSet<poll::Outcome>, now: u64) {
        let cap = self.config.poll.concurrency;
        if self.pause.reason().is_some() {
            // Paused: one probe at a time, when the pause is over.
            if tasks.len() >= cap {
                return;
            }
            let probe = match self.pause.next_probe(now) {
                Some(Probe::Refused(i))
                    if self
                        .entries
                        .get(i)
                        .is_some_and(|e| !e.removed && !e.in_flight) =>
                {
                    Some(i)
                }
                // Another watch: a queued one, else one the pause put off (a lone watch, or
                // every watch put off by earlier probes), so the probes go on.
                Some(_) => self.pop_due(u64::MAX).or_else(|| self.take_put_off()),
                None => None,
            };
            if let Some(i) = probe {
                self.pause.launched(i);
                self.probe_watch = Some(i);
                self.launch(tasks, i, true);
            }
            return;
        }
        if self.probe_discovery {
            return;
        }
        while tasks.len() < cap {
            let Some(i) = self.pop_due(now) else {
                return;
            };
            self.launch(tasks, i, false);
        }
    }

    /// A watch the pause put off that can be polled, taken off that list.
    fn take_put_off(&mut self) -> Option<usize> {
        let pos = self.put_off.iter().position(|&i| {
            let e = &self.entries[i];
            !e.removed && !e.in_flight && !e.kept.phase.is_terminal() && e.held
        })?;
        Some(self.put_off.remove(pos))
    }

    /// The next watch due at or before `now`, taken off its queue: the best class with a due
    /// watch (with the recheck share), and in it the earliest due.
    fn pop_due(&mut self, now: u64) -> Option<usize> {
        let mut due = [false; 4];
        for c in Class::ALL {
            due[c as usize] = self.peek_due(c, now).is_some();
        }
        let class = self.launch_share.pick(due)?;
        let i = self.peek_due(class, now)?;
        self.queues[class as usize].pop();
        Some(i)
    }

    /// The earliest live watch due at or before `now` in `class`'s queue (stale items, left
    /// by a reschedule, are dropped on the way).
    fn peek_due(&mut self, class: Class, now: u64) -> Option<usize> {
        let queue = &mut self.queues[class as usize];
        loop {
            let &Reverse((due, i)) = queue.peek()?;
            if due > now {
                return None;
            }
            let e = &mut self.entries[i];
            if e.removed || e.in_flight || e.due_ms() != Some(due) {
                queue.pop(); // stale heap item
                continue;
            }
            if !e.held {
                // Another replica's now: rescheduled from the ledger if its shard comes back.
                e.due = Ms::NONE;
                queue.pop();
                continue;
            }
            return Some(i);
        }
    }

    fn launch(&mut self, tasks: &mut JoinSet<poll::Outcome>, i: usize, probe: bool) {
        let e = &mut self.entries[i];
        e.in_flight = true;
        let class = class_of(e);
        if let Some(due) = std::mem::replace(&mut e.due, Ms::NONE).get() {
            let late = Duration::from_millis(self.ctx.clock.now_ms().saturating_sub(due));
            self.ctx.health.metrics.poll_lateness(class.as_str(), late);
        }
        let first_of_run = !e.polled;
        e.polled = true;
        tasks.spawn(poll::poll(
            self.ctx.clone(),
            self.client.clone(),
            i,
            e.spec.clone(),
            e.record(),
            probe,
            first_of_run,
            class,
            e.timing(),
        ));
    }

    async fn finish(&mut self, o: poll::Outcome) {
        let now = self.ctx.clock.now_ms();
        let i = o.index;
        if o.index_api_gone {
            self.note_index_api_gone().await;
        }
        if let Some(new_index) = &o.successor
            && let Some(e) = self.entries.get(i)
            && let Some(origin) = e.spec.origin.clone()
            && let Some(sel) = self
                .discovery
                .selectors()
                .iter()
                .position(|s| *s.origin() == *origin)
        {
            let asset = asset_of(e.key());
            info!(watch = %e.key(), new_index_id = %new_index, "A re-index replaced the watch's index; following the asset's new latest index.");
            self.discovery.forget(&asset);
            self.add_discovered(sel, &asset, new_index).await;
        }
        let probe = self.probe_watch == Some(i) && o.probe;
        if probe {
            self.probe_watch = None;
        }
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        e.in_flight = false;
        if std::mem::take(&mut e.reloaded) {
            // The ledger's record, loaded while this poll ran, is the newer news (the poll
            // committed before its shard was taken over, or was refused by the fencing check):
            // scheduled as any loaded record is.
            if let Some(due) = self.entry_due(i, now) {
                self.schedule(i, due);
            }
            return;
        }
        if let Some(t) = o.timing {
            e.set_timing(t);
        }
        let mut record = o.record;
        // A job's first completion (a re-run of a delivered watch counts from its start).
        if e.kept.phase == Phase::Waiting
            && record.state.phase == Phase::Completed
            && e.kept.delivered().is_none()
        {
            self.ctx
                .health
                .metrics
                .polls_per_completion(record.state.polls);
        }
        if let Some(reason) = o.refusal {
            match self.pause.refused(i, reason, probe, now) {
                Refusal::Started => {
                    let text = o.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                    self.started_pause(reason, &text);
                    self.last_refusal = Some(text);
                }
                Refusal::AlreadyPaused => {
                    if probe && self.once() {
                        // `once` probes once: refused again, it gives up.
                        self.give_up = Some(reason);
                    }
                }
                Refusal::WatchOnly => {
                    let text = o.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                    error!(
                        watch = %record.key,
                        error = %text,
                        "The API refuses this watch alone (other watches are polled with the same credentials); it is not polled again until an operator resets it (scenewatch reset)."
                    );
                    let spec = self.entries[i].spec.clone();
                    record =
                        poll::reject_alone(&self.ctx, &spec, record, o.error.as_ref(), now).await;
                    let was = self.entries[i].counted();
                    self.entries[i].kept.set(record);
                    self.counts.moved(was, self.entries[i].counted());
                    self.note_settled(i, now);
                    return;
                }
            }
            let e = &mut self.entries[i];
            let was = e.counted();
            e.kept.set(record);
            self.counts.moved(was, e.counted());
            self.put_off.push(i);
            return;
        }
        if self.pause.answered(i, probe, o.ok, now) {
            info!("The API accepts the requests again; polling resumes.");
            self.ended_pause();
        }
        let e = &mut self.entries[i];
        let was = e.counted();
        e.kept.set(record);
        apply_delivered(e);
        self.counts.moved(was, e.counted());
        self.note_settled(i, now);
        let due = if self.once() && self.settled(i) {
            None
        } else {
            self.entries[i].kept.next_poll_at_ms()
        };
        if let Some(due) = due {
            self.schedule(i, due);
        }
    }

    /// A replica's shards changed: poll only the watches of `news.owned`, take the ledger's
    /// records of gained shards and the watches others added, spend the matching portion of
    /// the budget, and let the drainers look for the deliveries and events they now own.
    async fn shards(&mut self, news: ShardNews) {
        let changed = news.owned != self.owned();
        let gained = !news.reloaded.is_empty() || changed;
        if changed {
            *self
                .ctx
                .held
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = news.owned;
            for e in &mut self.entries {
                let held = news.owned.holds(e.key());
                if held != e.held {
                    let was = e.counted();
                    e.held = held;
                    self.counts.moved(was, e.counted());
                }
            }
        }
        self.ctx.budget.set_portion(news.owned.share());
        let now = self.ctx.clock.now_ms();
        let mut completed = Vec::new();
        for (reload, (origin, record)) in news
            .reloaded
            .into_iter()
            .map(|r| (true, r))
            .chain(news.added.into_iter().map(|r| (false, r)))
        {
            let known = self.find(&record.key).filter(|&i| !self.entries[i].removed);
            let i = match (known, origin) {
                (Some(_), _) if !reload => continue,
                (Some(i), _) => {
                    let e = &mut self.entries[i];
                    let was = e.counted();
                    e.reloaded = e.in_flight;
                    e.kept.set(record);
                    e.kept.set_delivered(None);
                    e.set_timing(crate::forecast::Timing::default());
                    self.counts.moved(was, e.counted());
                    i
                }
                (None, Some(origin)) => {
                    let Some(sel) = self.selector(&origin) else {
                        continue; // a selector this replica's configuration does not have
                    };
                    let key = record.key.clone();
                    self.insert_entry(sel.spec_for(key), record)
                }
                // A configured watch this replica's configuration does not have (a rolling
                // update): the replicas running the other configuration poll it.
                (None, None) => continue,
            };
            let e = &self.entries[i];
            if e.kept.phase == Phase::Completed {
                // Its last owner may have finished delivering it (a row the next poll would
                // have made `watching`): as at start.
                completed.push(e.key().clone());
            }
            if !e.in_flight
                && let Some(due) = self.entry_due(i, now)
            {
                self.schedule(i, due);
            }
        }
        if !completed.is_empty() {
            self.settle_completed(&completed).await;
        }
        if gained {
            self.ctx.wakes.results();
            self.ctx.wakes.events();
        }
        self.refresh_phases();
    }

    fn started_pause(&mut self, reason: PauseReason, error_text: &str) {
        let pause = self
            .pause
            .until_ms()
            .map(|u| u.saturating_sub(self.ctx.clock.now_ms()))
            .unwrap_or_default();
        let retry_in = humantime::format_duration(Duration::from_millis(pause));
        match reason {
            PauseReason::Auth => {
                self.ctx.health.auth_paused.store(true, Ordering::Relaxed);
                self.ctx.health.metrics.set_auth_paused(true);
                error!(
                    error = error_text,
                    retry_in = %retry_in,
                    "The API refused the credentials; polling of every watch is paused. Check api.access_key and the secret key (scenewatch sign helps), and the clock if the error's details mention the timestamp; a reload with new credentials resumes at once."
                );
            }
            PauseReason::Quota => {
                self.ctx.health.quota_paused.store(true, Ordering::Relaxed);
                self.ctx.health.metrics.set_quota_paused(true);
                error!(
                    error = error_text,
                    retry_in = %retry_in,
                    "The API says the account's quota is used up (Quota Exceeded); polling of every watch is paused and probed again later. Ask NAVER Cloud for a higher quota, or lower api.requests_per_second."
                );
            }
        }
    }

    /// Ends the pause: the watches it put off are polled again now (spread over the initial
    /// interval), not at the end of the pause they were scheduled for.
    fn ended_pause(&mut self) {
        self.ctx.health.auth_paused.store(false, Ordering::Relaxed);
        self.ctx.health.quota_paused.store(false, Ordering::Relaxed);
        self.ctx.health.metrics.set_auth_paused(false);
        self.ctx.health.metrics.set_quota_paused(false);
        self.last_refusal = None;
        let now = self.ctx.clock.now_ms();
        for i in std::mem::take(&mut self.put_off) {
            let Some(e) = self.entries.get(i) else {
                continue;
            };
            if e.in_flight || e.removed || e.kept.phase.is_terminal() {
                continue;
            }
            let spread =
                first_poll_offset(e.key(), self.config.poll.initial_interval).as_millis() as u64;
            self.schedule(i, now + spread);
        }
    }

    fn notice(&mut self, n: Notice) {
        let now = self.ctx.clock.now_ms();
        match n {
            Notice::Delivered {
                key,
                version,
                location,
                complete,
            } => {
                let Some(i) = self.find(&key) else {
                    return;
                };
                if let Some(r) = self.reports.get_mut(i) {
                    r.locations.push(location);
                }
                if complete {
                    let e = &mut self.entries[i];
                    let was = e.counted();
                    e.kept.set_delivered(Some(version));
                    apply_delivered(e);
                    self.counts.moved(was, e.counted());
                }
                self.note_settled(i, now);
            }
            Notice::GaveUp { key, error } => {
                if let Some(i) = self.find(&key) {
                    if let Some(r) = self.reports.get_mut(i) {
                        r.sink_error.get_or_insert(error);
                    }
                    self.note_settled(i, now);
                }
            }
        }
    }

    fn refresh_phases(&mut self) {
        let rate = self.ctx.budget.current_rate();
        self.ctx.health.metrics.set_budget_rate(rate);
        // Every change of an entry keeps the counts (see `PhaseCounts::moved`); debug builds,
        // which every test runs, check them against a full count.
        debug_assert_eq!(
            self.counts,
            PhaseCounts::of(&self.entries),
            "phase counts drifted"
        );
        let watching = self.counts.get(Phase::Watching);
        self.ctx.health.set_phases(self.counts.to_map());
        let fitted = self.recheck_fit.update(
            self.config.poll.recheck_interval,
            watching,
            rate,
            self.ctx.budget.granted(),
            self.ctx.clock.instant(),
        );
        let ms = if fitted > self.config.poll.recheck_interval {
            u64::try_from(fitted.as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        };
        self.ctx.fitted_recheck_ms.store(ms, Ordering::Relaxed);
        self.ctx.health.metrics.set_recheck_interval(fitted);
    }

    /// Applies a new configuration: the watch list (added, removed, kept with their state and
    /// timers) and the API client. Anything that cannot be applied changes nothing.
    async fn apply(&mut self, new: Config) {
        let old_sinks: Vec<&str> = self.config.sinks.iter().map(|s| s.name()).collect();
        let new_sinks: Vec<&str> = new.sinks.iter().map(|s| s.name()).collect();
        let old_events: Vec<&str> = self.config.event_sinks.iter().map(|s| s.name()).collect();
        let new_events: Vec<&str> = new.event_sinks.iter().map(|s| s.name()).collect();
        if old_sinks != new_sinks || old_events != new_events {
            warn!(
                "Sink changes take effect at the next restart; the watch list and API settings were reloaded."
            );
        }
        let client = match (self.api)(&new.api) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "Reload refused: cannot build the API client; the running configuration stays.");
                return;
            }
        };
        let origins: Vec<String> = new.selectors.iter().map(Selector::origin).collect();
        let records = match self
            .ctx
            .ledger
            .sync_watches(&new.watches, &origins, self.ctx.clock.now_ms())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "Reload refused: cannot record the watch list in the ledger.");
                return;
            }
        };
        self.client = client;
        if self.pause.reason().is_some() {
            info!("Credentials reloaded; polling resumes.");
            self.pause.lift();
            self.probe_watch = None;
            self.ended_pause();
        }
        if new.api.requests_per_second != self.config.api.requests_per_second
            || new.api.burst != self.config.api.burst
        {
            // Poll tasks hold the context; the new budget applies to polls launched from now.
            let ctx = poll::PollCtx {
                budget: Arc::new(RequestBudget::new(
                    new.api.requests_per_second,
                    new.api.burst,
                )),
                ..self.ctx.as_ref().clone()
            };
            self.ctx = Arc::new(ctx);
        }
        if new.poll != self.config.poll {
            let ctx = poll::PollCtx {
                grace: new.poll.not_requested_grace,
                policy: crate::policy::Policy::from_config(&new.poll),
                adaptive: new.poll.policy == crate::config::PollPolicy::Adaptive,
                ..self.ctx.as_ref().clone()
            };
            self.ctx = Arc::new(ctx);
        }
        let new_keys: HashSet<&WatchKey> = new.watches.iter().map(|w| &w.key).collect();
        let kept_origins: HashSet<&str> = origins.iter().map(String::as_str).collect();
        let mut removed = 0;
        for e in &mut self.entries {
            let stays = match &e.spec.origin {
                None => new_keys.contains(e.key()),
                Some(o) => kept_origins.contains(&**o),
            };
            if !e.removed && !stays {
                self.counts.moved(e.counted(), None);
                e.removed = true;
                e.due = Ms::NONE;
                removed += 1;
            }
        }
        let ledger_records: HashMap<&WatchKey, &WatchRecord> =
            records.iter().map(|r| (&r.key, r)).collect();
        let mut kept = 0;
        let mut reset = Vec::new();
        for w in &new.watches {
            let Some(i) = self.find(&w.key) else {
                continue;
            };
            let e = &mut self.entries[i];
            if e.removed {
                continue; // re-added: handled with the new ones below
            }
            e.spec = w.clone();
            kept += 1;
            // `scenewatch reset` put an ended watch back to pending in the ledger.
            if e.kept.phase.is_terminal()
                && !e.in_flight
                && let Some(r) = ledger_records.get(&w.key)
                && !r.state.phase.is_terminal()
            {
                let was = e.counted();
                e.kept.set((*r).clone());
                self.counts.moved(was, e.counted());
                reset.push(i);
            }
        }
        let now = self.ctx.clock.now_ms();
        for &i in &reset {
            info!(watch = %self.entries[i].key(), "Watch reset by an operator; polling it again.");
            self.schedule(i, now);
        }
        let added: Vec<WatchRecord> = records
            .into_iter()
            .filter(|r| self.find(&r.key).is_none_or(|i| self.entries[i].removed))
            .collect();
        let n_added = added.len();
        let now = self.ctx.clock.now_ms();
        let selectors = new.selectors.clone();
        self.config = new;
        self.add_watches(added).await;
        // Selectors: new ones are listed and read now, kept ones keep their timers, the watches
        // of removed ones were removed above (and flagged in the ledger by the sync).
        self.discovery.set_selectors(selectors, now);
        self.load_discovered().await;
        self.refresh_phases();
        info!(
            added = n_added,
            removed,
            kept,
            reset = reset.len(),
            "Configuration reloaded."
        );
    }
}

/// The asset of a watch key.
fn asset_of(key: &WatchKey) -> AssetRef {
    (
        key.workspace().to_string(),
        key.project_id().to_string(),
        key.asset_id().to_string(),
    )
}

/// What a discovery call answered.
enum Discovered {
    Page(AssetPage),
    Index(IndexStatus),
    /// Transient: tried again later.
    Failed,
    /// For good (unknown asset or project): tried again after the discovery interval.
    Permanent(String),
    /// The credentials were refused or the quota is used up: the whole client pauses.
    Refused(PauseReason, String),
}

/// Makes one discovery call, inside the request budget.
async fn discover(
    ctx: Arc<poll::PollCtx>,
    client: Arc<dyn Api>,
    selectors: Vec<Selector>,
    call: discovery::Call,
) -> (discovery::Call, Discovered) {
    fn sort<T>(v: Verdict<T>) -> Result<T, Discovered> {
        match v {
            Verdict::Ok(t) => Ok(t),
            Verdict::AuthFailure(e) => Err(Discovered::Refused(PauseReason::Auth, e.to_string())),
            Verdict::QuotaExceeded { error, .. } => {
                Err(Discovered::Refused(PauseReason::Quota, error.to_string()))
            }
            Verdict::Permanent(e) => Err(Discovered::Permanent(e.to_string())),
            // Transient errors and throttling: looked at again after a backoff.
            _ => Err(Discovered::Failed),
        }
    }
    let answer = match &call {
        discovery::Call::List { selector, page } => {
            let Some((w, p)) = selectors.get(*selector).map(Selector::project) else {
                return (call, Discovered::Failed);
            };
            let (v, _) = poll::call(
                &ctx,
                (Class::First, ctx.clock.now_ms()),
                "list_assets",
                client.list_assets(w, p, *page, discovery::PAGE_SIZE),
            )
            .await;
            if let Verdict::Throttled { retry_after, .. } = &v {
                poll::throttled(&ctx, *retry_after);
            }
            sort(v).map_or_else(|d| d, Discovered::Page)
        }
        discovery::Call::Resolve { asset, .. } => {
            let t = Target {
                workspace: asset.0.clone(),
                project_id: asset.1.clone(),
                asset_id: asset.2.clone(),
                index_id: String::new(),
                scene_summary_id: None,
            };
            let (v, _) = poll::call(
                &ctx,
                (Class::First, ctx.clock.now_ms()),
                "index_status",
                client.index_status(&t),
            )
            .await;
            sort(v).map_or_else(|d| d, Discovered::Index)
        }
    };
    (call, answer)
}

/// A watch whose latest version every sink confirmed is `watching`, even if the step that
/// fetched it committed `completed` after the last confirmation.
fn apply_delivered(e: &mut Entry) {
    if e.kept.phase == Phase::Completed
        && e.kept.delivered().is_some()
        && e.kept.last_version_id() == e.kept.delivered()
    {
        let mut r = e.record();
        if let Some(v) = r.state.last_version.clone() {
            r.state = watch::delivered(&r.state, &v);
            e.kept.set(r);
        }
    }
}

#[cfg(test)]
mod tests;
