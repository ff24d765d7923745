//! The ledger and outbox behind one trait: per-watch state, fetched result versions, one delivery
//! row per version and sink, and queued events. The engine knows only [`Ledger`]; it is
//! implemented in memory (`memory.rs`, for `scenewatch once` and the demo), in SQLite
//! (`sqlite/`, the daemon's default durable ledger in `{state_dir}/scenewatch.db`) and in
//! PostgreSQL (`postgres/`, `[state] backend = "postgres"`): every call is one transaction, the
//! poll step's whole outcome is one [`Ledger::commit_step`], and deliveries and events are
//! claimed by sink. [`open`] and [`open_read_only`] choose the durable one from the
//! configuration.
//!
//! The contract every implementation keeps is written down in the trait's documentation and
//! checked by the same tests against each (`contract.rs`).

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod retention;
pub mod shards;
pub mod sqlite;

#[cfg(test)]
mod contract;

use std::fmt;
use std::path::PathBuf;

use futures_util::future::BoxFuture;

use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::watch::{Phase, WatchState};

pub use memory::MemoryLedger;
#[cfg(feature = "postgres")]
pub use postgres::{LeaseTick, PostgresLedger, PostgresTarget, ShardWatch};
pub use sqlite::{DB_FILE, SCHEMA_VERSION, SqliteLedger};

/// The stored results one batch of due deliveries holds at most, beyond its last row (which may
/// be larger: a batch always has at least one): a backlog of long videos' results (a sink that
/// was down) is delivered a few at a time, not a whole batch of them held at once.
pub const DUE_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// The rule of [`DUE_RESULT_BYTES`] for a ledger that reads a batch's results one by one (the
/// PostgreSQL ledger applies it in its query): a row is taken while the results before it are
/// under the budget.
#[derive(Debug, Default)]
pub(crate) struct ResultBudget {
    taken: usize,
}

impl ResultBudget {
    /// Whether the batch takes another row.
    pub(crate) fn has_room(&self) -> bool {
        self.taken < DUE_RESULT_BYTES
    }

    /// Counts a row's result of `len` bytes.
    pub(crate) fn spend(&mut self, len: usize) {
        self.taken = self.taken.saturating_add(len);
    }
}

/// A ledger operation failed. Every message names the ledger (the database file).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The file was written by a newer scenewatch; this one must not touch it.
    #[error(
        "the state database {} was written by a newer scenewatch (schema {found}, this one knows \
         {supported}): run that version, or restore a backup; the file was left untouched",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// Not a SQLite file, another application's database, or damaged.
    #[error(
        "{} is not a scenewatch state database or is damaged ({detail}): move it aside and \
         restore a backup (see docs/operations.md); the file was left untouched",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was found.
        detail: String,
        /// The underlying error (its text is in `detail`).
        #[source]
        source: Option<crate::cause::Cause>,
    },
    /// The file could not be created, opened, read or written (permissions, disk full, a
    /// read-only file system, a lock held by another process).
    #[error("cannot {op} the state database {}: {detail}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// The operation, as a verb phrase (`open`, `write`, `migrate`, …).
        op: &'static str,
        /// The cause, with a hint where there is one.
        detail: String,
        /// The underlying error (its text is in `detail`).
        #[source]
        source: Option<crate::cause::Cause>,
    },
    /// The ledger is closed (after `close`; SQLite: or its writer thread could not continue).
    #[error("the ledger {} is closed", path.display())]
    Closed {
        /// The database file, or the PostgreSQL ledger as [`Ledger::describe`] names it.
        path: PathBuf,
    },
    /// The PostgreSQL ledger's schema was written by a newer scenewatch.
    #[error(
        "the PostgreSQL ledger {at} was written by a newer scenewatch (schema {found}, this one \
         knows {supported}): run that version, or configure another state.schema; nothing was \
         changed"
    )]
    NewerPgSchema {
        /// `postgres://user@host:port/db (schema "name")`, never with a password.
        at: String,
        /// Its schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A PostgreSQL ledger operation failed: the server could not be reached, refused the
    /// login, a statement failed, the schema holds something else, or a stored value cannot be
    /// read back. The message never holds the password.
    #[error("cannot {op} the PostgreSQL ledger {at}: {detail}")]
    Postgres {
        /// `postgres://user@host:port/db (schema "name")`, never with a password.
        at: String,
        /// The operation, as a verb phrase (`connect to`, `write`, `migrate`, …).
        op: &'static str,
        /// The server's message (with its hint) or the cause.
        detail: String,
        /// The underlying error (its text is in `detail`).
        #[source]
        source: Option<crate::cause::Cause>,
    },
    /// A replica's write to a watch of a shard it no longer holds (its lease expired or was
    /// taken over: the process was paused, cut off, or too slow to renew). Nothing was written;
    /// the shard's new owner polls and delivers the watch.
    #[error(
        "cannot write to the PostgreSQL ledger {at}: this replica no longer owns shard {shard} \
         (lease lost): the write was refused"
    )]
    LeaseLost {
        /// `postgres://user@host:port/db (schema "name")`, never with a password.
        at: String,
        /// The watch's shard.
        shard: i32,
    },
}

/// The durable state of one watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRecord {
    /// Its identity.
    pub key: WatchKey,
    /// The poll state. Its times (`started_at`, `before_since`) are durations since the Unix
    /// epoch, stored in whole milliseconds (sub-millisecond parts are dropped).
    pub state: WatchState,
    /// When to poll next, in ms since the Unix epoch; `None` before the first schedule.
    pub next_poll_at_ms: Option<u64>,
    /// Id of the last version fetched.
    pub last_version_id: Option<VersionId>,
    /// When the remote status or the version last changed.
    pub last_change_at_ms: Option<u64>,
    /// The version for which `summary.stale` was already emitted.
    pub stale_version_id: Option<VersionId>,
}

/// What one poll step commits, atomically.
#[derive(Debug, Clone)]
pub struct StepCommit {
    /// The watch's new state.
    pub record: WatchRecord,
    /// Events of the step (INSERT OR IGNORE by id).
    pub events: Vec<Event>,
    /// A result version fetched by the step.
    pub new_version: Option<NewVersion>,
}

/// The part of a watch's record that a poll which changes nothing else moves on: how many
/// answers, the error streak and its message, the backoff step, and when to poll next. A step
/// whose only change is this is *timing-only* (see [`StepCommit::timing_only`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTiming {
    /// `state.polls`.
    pub polls: u64,
    /// `state.consecutive_errors`.
    pub consecutive_errors: u32,
    /// `state.attempt`.
    pub attempt: u32,
    /// `state.last_error`.
    pub last_error: Option<String>,
    /// `next_poll_at_ms`.
    pub next_poll_at_ms: Option<u64>,
}

impl WatchTiming {
    /// The timing fields of `record`.
    pub fn of(record: &WatchRecord) -> WatchTiming {
        WatchTiming {
            polls: record.state.polls,
            consecutive_errors: record.state.consecutive_errors,
            attempt: record.state.attempt,
            last_error: record.state.last_error.clone(),
            next_poll_at_ms: record.next_poll_at_ms,
        }
    }

    /// Sets the timing fields of `record` to these.
    pub fn apply(&self, record: &mut WatchRecord) {
        record.state.polls = self.polls;
        record.state.consecutive_errors = self.consecutive_errors;
        record.state.attempt = self.attempt;
        record.state.last_error.clone_from(&self.last_error);
        record.next_poll_at_ms = self.next_poll_at_ms;
    }
}

impl StepCommit {
    /// This step's timing, if that is all it changes of `stored` (the record the ledger holds
    /// for the watch): no event, no new version, and every other field of the record (phase,
    /// remote status, route, start and deadline times, versions, last change) equal to the
    /// stored one. The one place that decides what a timing-only step is.
    ///
    /// The ledger decides it against the row it holds, not the engine against the record it
    /// started from: whatever changed the row meanwhile (a delivery flipping `completed` to
    /// `watching`, an operator's reset, a step whose commit was rolled back) makes the step a
    /// full commit, so writing only the timing columns always leaves the row exactly as the full
    /// upsert would. Any field added to [`WatchRecord`] or [`WatchState`] counts as a change
    /// until it is added to [`WatchTiming`].
    pub fn timing_only(&self, stored: &WatchRecord) -> Option<WatchTiming> {
        if !self.events.is_empty() || self.new_version.is_some() || stored.key != self.record.key {
            return None;
        }
        let timing = WatchTiming::of(&self.record);
        let mut moved = stored.clone();
        timing.apply(&mut moved);
        (moved == self.record).then_some(timing)
    }
}

/// A fetched result version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// `VersionId::of(key, last_analyzed_at)`.
    pub version_id: VersionId,
    /// The watch.
    pub key: WatchKey,
    /// `lastAnalyzedAt`, as sent.
    pub last_analyzed_at: String,
    /// When scenewatch fetched it; its deliveries are due from then.
    pub fetched_at_ms: u64,
    /// Number of scenes.
    pub scene_count: u64,
    /// Scene ids of the last partial run, if any.
    pub analyzed_scene_ids: Option<Vec<String>>,
    /// The API's raw `result` text, stored byte for byte.
    pub result_json: String,
}

/// A due delivery with the stored result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// The version.
    pub version_id: VersionId,
    /// Its watch.
    pub key: WatchKey,
    /// Its `lastAnalyzedAt`.
    pub last_analyzed_at: String,
    /// When it was fetched.
    pub fetched_at_ms: u64,
    /// The API's `result`, byte for byte as fetched.
    pub result_json: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Persisted health of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkHealth {
    /// The sink is in a failure episode.
    pub failing: bool,
    /// Failure episodes so far (numbers `sink.failing` / `sink.recovered` event ids).
    pub episode: u64,
}

/// One watch, for `scenewatch status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// The watch.
    pub key: WatchKey,
    /// Its phase.
    pub phase: Phase,
    /// The last remote status seen, as the API spells it.
    pub remote_status: Option<String>,
    /// Answers received.
    pub polls: u64,
    /// When the status or version last changed.
    pub last_change_at_ms: Option<u64>,
    /// When it is polled next.
    pub next_poll_at_ms: Option<u64>,
    /// Deliveries of its versions not done yet (and not parked).
    pub pending_deliveries: u64,
    /// Deliveries parked (refused for good by a sink; kept, not retried).
    pub parked_deliveries: u64,
    /// No longer configured (kept, not polled).
    pub removed: bool,
    /// The last error, for display.
    pub last_error: Option<String>,
}

/// Open deliveries of one sink (result or event sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The sink name.
    pub sink: String,
    /// Pending (to be delivered, now or after a backoff).
    pub pending: u64,
    /// Parked (not retried).
    pub parked: u64,
}

/// What one [`Ledger::prune`] call removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Result versions forgotten (their row and stored result).
    pub versions: u64,
    /// Delivery rows removed with them (one per sink).
    pub deliveries: u64,
    /// Events forgotten.
    pub events: u64,
    /// Event-delivery rows removed with them (one per event sink).
    pub event_deliveries: u64,
    /// The walk stopped at its limit: call again for the rest. `false` once a walk reached the
    /// rows younger than the cutoff; the next call starts a new walk from the oldest rows.
    pub more: bool,
}

impl Pruned {
    /// Rows removed, every table together.
    pub fn rows(&self) -> u64 {
        self.versions + self.deliveries + self.events + self.event_deliveries
    }
}

/// A ledger shared by the engine, the drainers and the server.
pub type SharedLedger = std::sync::Arc<dyn Ledger>;

/// Where the ledger is (`state.backend`).
#[derive(Debug, Clone)]
pub enum Backend {
    /// `{state_dir}/scenewatch.db` (the default).
    Sqlite,
    /// A schema of a PostgreSQL database (cargo feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(PostgresTarget),
}

/// Who opens the ledger, for [`open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// The daemon: it alone polls and delivers from this ledger (PostgreSQL: a session lock
    /// refuses a second daemon; SQLite: the daemon locks `state_dir` itself).
    Daemon,
    /// An operator verb (`reset`, `retry-parked`): safe beside a running daemon.
    Operator,
}

/// Opens the configured ledger for writing: the one place the backend is chosen (a backend
/// behind a cargo feature is one `#[cfg]` arm here). `sinks` / `event_sinks` are the configured
/// sink names.
pub async fn open(
    backend: &Backend,
    state_dir: &std::path::Path,
    sinks: Vec<String>,
    event_sinks: Vec<String>,
    who: OpenFor,
) -> Result<SharedLedger, StateError> {
    #[cfg(not(feature = "postgres"))]
    let _ = who;
    Ok(match backend {
        Backend::Sqlite => {
            std::sync::Arc::new(SqliteLedger::open(state_dir, sinks, event_sinks).await?)
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(target) => {
            let l = PostgresLedger::open(target, sinks, event_sinks).await?;
            if who == OpenFor::Daemon
                && let Err(e) = l.claim_exclusive().await
            {
                let _ = l.close().await;
                return Err(e);
            }
            std::sync::Arc::new(l)
        }
    })
}

/// Opens the configured ledger read-only, for `status` (see
/// [`SqliteLedger::open_read_only`] and [`PostgresLedger::open_read_only`]).
pub async fn open_read_only(
    backend: &Backend,
    state_dir: &std::path::Path,
) -> Result<SharedLedger, StateError> {
    Ok(match backend {
        Backend::Sqlite => std::sync::Arc::new(SqliteLedger::open_read_only(state_dir).await?),
        #[cfg(feature = "postgres")]
        Backend::Postgres(target) => {
            std::sync::Arc::new(PostgresLedger::open_read_only(target).await?)
        }
    })
}

/// What a ledger call returns.
pub type LedgerFuture<'a, T> = BoxFuture<'a, Result<T, StateError>>;

/// The ledger and outbox. Every method is one atomic change (or one consistent read); an `Ok`
/// means the change is as durable as the implementation promises (SQLite: fsync'd, except
/// timing-only poll steps, which are written in batches, see [`Ledger::commit_step`]; memory:
/// for the life of the process).
pub trait Ledger: Send + Sync + fmt::Debug {
    /// What to call it in messages: the database file, or "the in-memory ledger".
    fn describe(&self) -> String;

    /// Replaces the configured sink names (on reload). Existing rows are kept: a removed sink's
    /// open deliveries stay in the backlog, a new sink gets rows for versions fetched from now
    /// on.
    fn set_sinks(&self, sinks: Vec<String>, event_sinks: Vec<String>) -> LedgerFuture<'_, ()>;

    /// Upserts the configured watches (new ones `pending`; scene_summary_id, generation and
    /// origin refreshed; a previously removed one is un-removed with its state), flags removed
    /// (kept) the configured watches not in `specs` and the watches found by a selector whose
    /// origin is not in `origins`, and returns the records of `specs`, in order.
    fn sync_watches<'a>(
        &'a self,
        specs: &'a [WatchSpec],
        origins: &'a [String],
        now_ms: u64,
    ) -> LedgerFuture<'a, Vec<WatchRecord>>;

    /// [`Ledger::sync_watches`] for the daemon's start: the records of `specs` are kept by the
    /// ledger and handed over a page at a time by [`Ledger::synced_records`], so the start
    /// never holds all of them beside the specs (at 100,000 watches, 21.6 MB of records were
    /// its highest point). Returns how many there are. `None`: this ledger does not keep them
    /// (call `sync_watches`).
    fn sync_watches_paged<'a>(
        &'a self,
        _specs: &'a [WatchSpec],
        _origins: &'a [String],
        _now_ms: u64,
    ) -> Option<LedgerFuture<'a, usize>> {
        None
    }

    /// Up to `max` of the records kept by [`Ledger::sync_watches_paged`], from position `from`
    /// of its specs on, in their order, and the position to ask for next; `None` once all are
    /// read (the ledger then drops its list). Nothing when no list is kept.
    fn synced_records(
        &self,
        _from: usize,
        _max: usize,
    ) -> LedgerFuture<'_, (Vec<WatchRecord>, Option<usize>)> {
        Box::pin(async { Ok((Vec::new(), None)) })
    }

    /// Adds (or un-removes, keeping its state) a watch found by a selector (`spec.origin`) and
    /// returns its record.
    fn add_watch<'a>(&'a self, spec: &'a WatchSpec, now_ms: u64) -> LedgerFuture<'a, WatchRecord>;

    /// Flags watches removed (kept, not polled): an asset gone from its project's list.
    fn remove_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, ()>;

    /// The watches found by selectors that are not removed, with their origin, by key.
    fn discovered(&self) -> LedgerFuture<'_, Vec<(String, WatchRecord)>>;

    /// Puts terminal watches back to `pending`, due now (an operator's `scenewatch reset`);
    /// `keys` empty means every terminal watch. Returns the keys that were reset.
    fn reset_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, Vec<WatchKey>>;

    /// Makes parked deliveries and events due again, for every sink or one; returns how many.
    fn unpark(&self, sink: Option<String>, now_ms: u64) -> LedgerFuture<'_, u64>;

    /// In one transaction: the watch row, the version row and one delivery row per result sink
    /// (if `new_version`), and the events (kept once per id; only new ones are queued, one row
    /// per event sink). Either all of it is recorded or none.
    ///
    /// A *timing-only* step ([`StepCommit::timing_only`] against the row the ledger holds: a
    /// poll that found the watch as it was, "still pending, same status") may be kept in memory
    /// and written with others in a later batch: the SQLite ledger writes such steps at most
    /// [`sqlite::FLUSH_EVERY`] after the first of a batch, before any call that reads or rewrites
    /// watch rows (`status`, `sync_watches`, `add_watch`, `discovered`, `reset_watches`,
    /// `remove_watches`) and at `close`, in one transaction; a later full commit of the same
    /// watch supersedes its queued timing. Every other step is durable when this returns. So a
    /// crash loses at most the last batch of timing updates: those watches are polled again as
    /// if those polls had not happened (their counts and next poll times are the earlier ones),
    /// and no transition, version, event or delivery is lost. Within the process every read sees
    /// the queued timing. The memory and PostgreSQL ledgers commit timing-only steps at once,
    /// like any other.
    fn commit_step(&self, commit: StepCommit) -> LedgerFuture<'_, ()>;

    /// Due pending deliveries of one sink (`next_attempt_at_ms <= now_ms`), earliest due first
    /// (then by version id), with the stored result; at most `limit`, and the batch ends once
    /// its results reach [`DUE_RESULT_BYTES`], so large ones come a few at a time. Versions of
    /// one watch come in the order they were fetched: a newer one is not due while an older one
    /// of the same watch is pending for the sink (parked ones do not hold it up).
    fn due_deliveries<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<PendingDelivery>>;

    /// Marks a delivery done (idempotent; a parked one too) and records `events` with it. When
    /// every delivery row of the version for a configured sink is done, the stored result is
    /// released and, if the watch's last version is this one and its phase `completed`, the
    /// phase becomes `watching`. Returns whether the version is now fully delivered.
    fn delivery_succeeded<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        location: &'a str,
        events: Vec<Event>,
        now_ms: u64,
    ) -> LedgerFuture<'a, bool>;

    /// Records a failed attempt: attempts + 1, the error, the next attempt time; `park` sets the
    /// row `parked` (kept and reported, not retried). A done delivery is left done.
    fn delivery_failed<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()>;

    /// Records events outside a poll step (`sink.failing` / `sink.recovered`): kept once per id,
    /// and one row per event sink for the new ones.
    fn record_events(&self, events: Vec<Event>) -> LedgerFuture<'_, ()>;

    /// Due events of one event sink in emission order, at most `limit`. Order is kept strictly:
    /// the list stops at the first pending event that is not due yet (one in backoff). Parked
    /// events are skipped; a stored event that cannot be decoded is parked (and logged).
    fn due_events<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<Event>>;

    /// Marks events (by id) delivered to an event sink. Idempotent.
    fn events_sent<'a>(&'a self, sink: &'a str, ids: &'a [String]) -> LedgerFuture<'a, ()>;

    /// Records a failed attempt for events (by id) of an event sink; `park` parks them.
    fn events_failed<'a>(
        &'a self,
        sink: &'a str,
        ids: &'a [String],
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()>;

    /// Persisted health of a sink; the default (not failing, episode 0) for an unknown one.
    fn sink_health<'a>(&'a self, sink: &'a str) -> LedgerFuture<'a, SinkHealth>;

    /// Persists the health of a sink.
    fn set_sink_health<'a>(&'a self, sink: &'a str, health: SinkHealth) -> LedgerFuture<'a, ()>;

    /// A fact about the whole deployment (say, that the index-level API is gone), by name.
    fn fact<'a>(&'a self, name: &'a str) -> LedgerFuture<'a, Option<String>>;

    /// Records a fact about the whole deployment.
    fn set_fact<'a>(&'a self, name: &'a str, value: &'a str) -> LedgerFuture<'a, ()>;

    /// One row per watch, removed ones too (flagged), ordered by key.
    fn status(&self) -> LedgerFuture<'_, Vec<StatusRow>>;

    /// Open deliveries per sink name, result and event sinks alike (configured sinks are listed
    /// even when empty), ordered by name.
    fn backlog(&self) -> LedgerFuture<'_, Vec<Backlog>>;

    /// Forgets, in one short transaction, what retention no longer needs (`state.retention`; run
    /// by [`retention::run`] in the background, in batches). Examines at most `limit` versions
    /// and `limit` events, oldest first, from where the previous call of the same walk stopped:
    ///
    /// - a **version** goes, with its delivery rows, when every one of its delivery rows is done
    ///   (none pending or parked, whichever sink), the last of them was done before `before_ms`,
    ///   and it is not its watch's last version (that one stays: a watch that sees its current
    ///   `lastAnalyzedAt` again must recognise it as delivered, not deliver it again);
    /// - an **event** goes, with its event-delivery rows, when it happened before `before_ms`,
    ///   every event sink has it (none pending or parked), and its fact cannot come again:
    ///   events that event-id deduplication still needs are kept, namely `watch.discovered` and
    ///   `watch.superseded` (found again at every start) and every event of a watch's current
    ///   cycle (from the fetch of its last version on, or all of them before its first version:
    ///   a status that goes back and forth, or a repeated delivery, recomputes those ids).
    ///
    /// Watches, sink health and facts are never pruned.
    fn prune(&self, before_ms: u64, limit: usize) -> LedgerFuture<'_, Pruned>;

    /// Checks that a real change can be committed now, for readiness: a probe write commits,
    /// and no real write has failed since the last real write committed.
    fn probe_writable(&self) -> LedgerFuture<'_, ()>;

    /// Finishes what is queued and releases the storage; later calls fail with
    /// [`StateError::Closed`].
    fn close(&self) -> LedgerFuture<'_, ()>;
}
