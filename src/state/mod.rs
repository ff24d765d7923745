//! The durable ledger and outbox: per-watch state, fetched result versions, one delivery row per
//! version and sink, and queued events, in one SQLite database (`{state_dir}/scenewatch.db`).
//!
//! One dedicated thread owns the read-write connection (`worker.rs`); async callers send it
//! closures over a channel and await a oneshot reply, so SQLite never blocks the runtime. Commands
//! that arrive together are committed in one transaction (group commit), each inside its own
//! savepoint so one failing command does not take the others down; every caller is answered only
//! after the `COMMIT` that made its data durable (`synchronous=FULL`).
//!
//! The schema, its migrations and the open-time checks are in `schema.rs`; the SQL of each
//! operation is in `store.rs`.

pub mod schema;
mod store;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::watch::{Phase, WatchState};

use store::Store;
use worker::Msg;

/// The database file inside `state_dir`.
pub const DB_FILE: &str = "scenewatch.db";

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// A ledger operation failed. Every message names the database file.
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
    },
    /// The ledger thread has stopped (after `close`, or it could not continue).
    #[error("the ledger of {} is closed: its writer thread has stopped", path.display())]
    Closed {
        /// The database file.
        path: PathBuf,
    },
}

/// Turns a SQLite error into the variant a caller can act on: a damaged or foreign file is
/// `Corrupt` (restore a backup), a value this build cannot read back is `Corrupt` too (someone
/// edited the file, or a newer build wrote it without bumping the schema), everything else is
/// `Io` with a hint for the common causes.
pub(crate) fn sql_error(path: &Path, op: &'static str, e: &rusqlite::Error) -> StateError {
    use rusqlite::Error as E;
    use rusqlite::ErrorCode;
    let path = path.to_path_buf();
    match e {
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => {
            return StateError::Corrupt {
                path,
                detail: format!("a stored value cannot be read back: {e}"),
            };
        }
        _ => {}
    }
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            return StateError::Corrupt {
                path,
                detail: e.to_string(),
            };
        }
        Some(ErrorCode::DiskFull) => {
            "free some space on its file system; everything committed before is kept"
        }
        Some(ErrorCode::ReadOnly) => {
            "make the file and its directory writable by the user scenewatch runs as"
        }
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            "check that its directory exists and that the user scenewatch runs as may write to it"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "another process holds it locked; is another scenewatch running with this state_dir?"
        }
        _ => "",
    };
    let detail = if hint.is_empty() {
        e.to_string()
    } else {
        format!("{e} ({hint})")
    };
    StateError::Io { path, op, detail }
}

/// The durable state of one watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRecord {
    /// Its identity.
    pub key: WatchKey,
    /// The poll state. Its times (`started_at`, `before_since`) are durations since the Unix
    /// epoch, stored in whole milliseconds (sub-millisecond parts are dropped).
    pub state: WatchState,
    /// Position in the poll backoff since the last status change.
    pub attempt: u32,
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

/// Handle on the ledger. Cheap to clone: a channel sender to the thread that owns the database.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    path: Arc<PathBuf>,
    read_only: bool,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Creates `state_dir` if needed, opens or creates the DB, checks integrity
    /// (`PRAGMA quick_check`), migrates, and starts the writer thread. `sinks` / `event_sinks`
    /// are the configured sink names: new versions get one delivery row per result sink, new
    /// events one row per event sink.
    pub async fn open(
        state_dir: &Path,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<Ledger, StateError> {
        let dir = state_dir.to_path_buf();
        let path = dir.join(DB_FILE);
        let tx = worker::start(path.clone(), move || {
            Store::open_rw(&dir, sinks, event_sinks)
        })
        .await?;
        Ok(Ledger {
            tx,
            path: Arc::new(path),
            read_only: false,
        })
    }

    /// A read-only view for `status`: creates no database, migrates nothing, refuses a newer
    /// schema with the same message as [`Ledger::open`]. Works while a daemon has the database
    /// open (WAL readers do not block the writer). Write operations fail with
    /// [`StateError::Io`]. Like any WAL reader, SQLite may leave empty `-wal` / `-shm` files next
    /// to the database (its shared-memory index); the daemon reuses them.
    pub async fn open_read_only(state_dir: &Path) -> Result<Ledger, StateError> {
        let dir = state_dir.to_path_buf();
        let path = dir.join(DB_FILE);
        let tx = worker::start(path.clone(), move || Store::open_ro(&dir)).await?;
        Ok(Ledger {
            tx,
            path: Arc::new(path),
            read_only: true,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the configured sink names (on reload). Existing rows are kept: a removed sink's
    /// open deliveries stay in the backlog, a new sink gets rows for versions fetched from now on.
    pub async fn set_sinks(
        &self,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<(), StateError> {
        self.run(false, move |s| {
            s.sinks = sinks;
            s.event_sinks = event_sinks;
            Ok(())
        })
        .await
    }

    /// Upserts the configured watches (new ones `pending`; scene_summary_id and generation
    /// refreshed; a previously removed one is un-removed with its state), flags the others
    /// removed (kept), and returns the records of the configured ones, in `specs` order.
    pub async fn sync_watches(
        &self,
        specs: &[WatchSpec],
        now_ms: u64,
    ) -> Result<Vec<WatchRecord>, StateError> {
        let specs: Vec<store::SpecRow> = specs.iter().map(store::SpecRow::from).collect();
        self.run(true, move |s| s.sync_watches(&specs, now_ms))
            .await
    }

    /// Puts terminal watches back to `pending`, due now (an operator's `scenewatch reset`);
    /// `keys` empty means every terminal watch. Returns the keys that were reset. A running
    /// daemon picks them up on its next reload.
    pub async fn reset_watches(
        &self,
        keys: Vec<WatchKey>,
        now_ms: u64,
    ) -> Result<Vec<WatchKey>, StateError> {
        self.run(true, move |s| s.reset_watches(&keys, now_ms))
            .await
    }

    /// Makes parked deliveries and events due again, for every sink or one; returns how many.
    /// A running daemon's drainers pick them up within seconds.
    pub async fn unpark(&self, sink: Option<String>, now_ms: u64) -> Result<u64, StateError> {
        self.run(true, move |s| s.unpark(sink.as_deref(), now_ms))
            .await
    }

    /// In one transaction: the watch row, the version row and one delivery row per result sink
    /// (if `new_version`), and the events (INSERT OR IGNORE by id; only new ones are queued).
    pub async fn commit_step(&self, commit: StepCommit) -> Result<(), StateError> {
        self.run(true, move |s| s.commit_step(&commit)).await
    }

    /// Due pending deliveries of one sink (`next_attempt_at_ms <= now_ms`), earliest due first,
    /// with the stored result; at most `limit`.
    pub async fn due_deliveries(
        &self,
        sink: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StateError> {
        let sink = sink.to_string();
        self.run(false, move |s| s.due_deliveries(&sink, now_ms, limit))
            .await
    }

    /// Marks a delivery done (idempotent; a parked one too) and records `events` in the same
    /// transaction. When every delivery row of the version is done, and the watch's last version
    /// is this one and its phase `completed`, the phase becomes `watching`. Returns whether the
    /// version is now fully delivered.
    pub async fn delivery_succeeded(
        &self,
        version_id: &str,
        sink: &str,
        location: &str,
        events: Vec<Event>,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let (version_id, sink, location) = (
            version_id.to_string(),
            sink.to_string(),
            location.to_string(),
        );
        self.run(true, move |s| {
            s.delivery_succeeded(&version_id, &sink, &location, &events, now_ms)
        })
        .await
    }

    /// Records a failed attempt: attempts + 1, the error, the next attempt time; `park` sets the
    /// row `parked` (kept and reported, not retried). A done delivery is left done.
    pub async fn delivery_failed(
        &self,
        version_id: &str,
        sink: &str,
        error: &str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> Result<(), StateError> {
        let (version_id, sink, error) =
            (version_id.to_string(), sink.to_string(), error.to_string());
        self.run(true, move |s| {
            s.delivery_failed(&version_id, &sink, &error, next_attempt_at_ms, park)
        })
        .await
    }

    /// Records events outside a poll step (`sink.failing` / `sink.recovered`): INSERT OR IGNORE by
    /// id, and event-delivery rows for the new ones.
    pub async fn record_events(&self, events: Vec<Event>) -> Result<(), StateError> {
        self.run(true, move |s| s.record_events(&events)).await
    }

    /// Due events of one event sink in emission order, at most `limit`. Order is kept strictly:
    /// the list stops at the first pending event that is not due yet (one in backoff), so a
    /// failed batch holds back the events after it. Parked events are skipped. A stored event
    /// this build cannot decode is parked (and logged) rather than blocking the queue.
    pub async fn due_events(
        &self,
        sink: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StateError> {
        let sink = sink.to_string();
        // A write in the rare case of an undecodable event (it is parked), so not read-only.
        self.run(!self.read_only, move |s| s.due_events(&sink, now_ms, limit))
            .await
    }

    /// Marks events (by id) delivered to an event sink. Idempotent.
    pub async fn events_sent(&self, sink: &str, ids: &[String]) -> Result<(), StateError> {
        let (sink, ids) = (sink.to_string(), ids.to_vec());
        self.run(true, move |s| s.events_sent(&sink, &ids)).await
    }

    /// Records a failed attempt for events (by id) of an event sink; `park` parks them.
    pub async fn events_failed(
        &self,
        sink: &str,
        ids: &[String],
        error: &str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> Result<(), StateError> {
        let (sink, ids, error) = (sink.to_string(), ids.to_vec(), error.to_string());
        self.run(true, move |s| {
            s.events_failed(&sink, &ids, &error, next_attempt_at_ms, park)
        })
        .await
    }

    /// Persisted health of a sink; the default (not failing, episode 0) for an unknown one.
    pub async fn sink_health(&self, sink: &str) -> Result<SinkHealth, StateError> {
        let sink = sink.to_string();
        self.run(false, move |s| s.sink_health(&sink)).await
    }

    /// Persists the health of a sink.
    pub async fn set_sink_health(&self, sink: &str, health: SinkHealth) -> Result<(), StateError> {
        let sink = sink.to_string();
        self.run(true, move |s| s.set_sink_health(&sink, health))
            .await
    }

    /// One row per watch, removed ones too (flagged), ordered by key.
    pub async fn status(&self) -> Result<Vec<StatusRow>, StateError> {
        self.run(false, Store::status).await
    }

    /// Open deliveries per sink name, result and event sinks alike (configured sinks are listed
    /// even when empty), ordered by name.
    pub async fn backlog(&self) -> Result<Vec<Backlog>, StateError> {
        self.run(false, Store::backlog).await
    }

    /// Checks that the database is writable now, for readiness: takes the write lock and writes
    /// in a transaction that is rolled back. After a failed commit (disk full, say) it commits a
    /// real tiny write instead, so readiness recovers only once writing works again.
    pub async fn probe_writable(&self) -> Result<(), StateError> {
        if self.read_only {
            return Err(self.read_only_error());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Probe(reply))
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Stops the writer thread after the commands queued before this one and checkpoints the
    /// WAL into the database file. Commands sent later by other clones fail with
    /// [`StateError::Closed`].
    pub async fn close(self) -> Result<(), StateError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Close(reply))
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Runs `f` on the ledger thread, inside the current group transaction, and returns its
    /// result once that transaction is committed.
    async fn run<T, F>(&self, write: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        if write && self.read_only {
            return Err(self.read_only_error());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job(worker::job(f, reply), write))
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> StateError {
        StateError::Closed {
            path: self.path.to_path_buf(),
        }
    }

    fn read_only_error(&self) -> StateError {
        StateError::Io {
            path: self.path.to_path_buf(),
            op: "write",
            detail: "this ledger was opened read-only (for status)".into(),
        }
    }

    /// Runs arbitrary code on the ledger thread, for tests that inspect or sabotage the database.
    #[cfg(test)]
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        self.run(false, f).await
    }
}
