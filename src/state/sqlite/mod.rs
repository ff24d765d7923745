//! The SQLite ledger: everything in one database file, `{state_dir}/scenewatch.db`.
//!
//! One dedicated thread owns the read-write connection (`worker.rs`); async callers send it
//! closures over a channel and await a oneshot reply, so SQLite never blocks the runtime. Commands
//! that arrive together are committed in one transaction (group commit), each inside its own
//! savepoint so one failing command does not take the others down; every caller is answered only
//! after the `COMMIT` that made its data durable (`synchronous=FULL`), except a poll step that
//! changes only the watch's timing: that one is answered at once and written with the others
//! queued within [`FLUSH_EVERY`] (see `worker.rs` and [`Ledger::commit_step`]).
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

use super::{
    Backlog, Ledger, LedgerFuture, PendingDelivery, Pruned, SinkHealth, StateError, StatusRow,
    StepCommit, WatchRecord,
};
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;

use store::Store;
pub use worker::FLUSH_EVERY;
use worker::Msg;

/// The database file inside `state_dir`.
pub const DB_FILE: &str = "scenewatch.db";

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = 3;

/// Turns a SQLite error into the variant a caller can act on: a damaged or foreign file is
/// `Corrupt` (restore a backup), a value this build cannot read back is `Corrupt` too (someone
/// edited the file, or a newer build wrote it without bumping the schema), everything else is
/// `Io` with a hint for the common causes.
pub(crate) fn sql_error(path: &Path, op: &'static str, e: rusqlite::Error) -> StateError {
    use rusqlite::Error as E;
    use rusqlite::ErrorCode;
    let path = path.to_path_buf();
    match &e {
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => {
            return StateError::Corrupt {
                path,
                detail: format!("a stored value cannot be read back: {e}"),
                source: crate::cause::of(e),
            };
        }
        _ => {}
    }
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            return StateError::Corrupt {
                path,
                detail: e.to_string(),
                source: crate::cause::of(e),
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
    StateError::Io {
        path,
        op,
        detail,
        source: crate::cause::of(e),
    }
}

/// The SQLite ledger's handle. Cheap to clone: a channel sender to the thread that owns the database.
#[derive(Clone)]
pub struct SqliteLedger {
    tx: mpsc::Sender<Msg>,
    path: Arc<PathBuf>,
    read_only: bool,
}

impl fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl SqliteLedger {
    /// Creates `state_dir` if needed, opens or creates the DB, checks integrity
    /// (`PRAGMA quick_check`), migrates, and starts the writer thread. `sinks` / `event_sinks`
    /// are the configured sink names: new versions get one delivery row per result sink, new
    /// events one row per event sink.
    pub async fn open(
        state_dir: &Path,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<SqliteLedger, StateError> {
        let dir = state_dir.to_path_buf();
        let path = dir.join(DB_FILE);
        let tx = worker::start(path.clone(), move || {
            Store::open_rw(&dir, sinks, event_sinks)
        })
        .await?;
        Ok(SqliteLedger {
            tx,
            path: Arc::new(path),
            read_only: false,
        })
    }

    /// A read-only view for `status`: creates no database, migrates nothing, refuses a newer
    /// schema with the same message as [`SqliteLedger::open`]. Works while a daemon has the database
    /// open (WAL readers do not block the writer). Write operations fail with
    /// [`StateError::Io`]. Like any WAL reader, SQLite may leave empty `-wal` / `-shm` files next
    /// to the database (its shared-memory index); the daemon reuses them.
    pub async fn open_read_only(state_dir: &Path) -> Result<SqliteLedger, StateError> {
        let dir = state_dir.to_path_buf();
        let path = dir.join(DB_FILE);
        let tx = worker::start(path.clone(), move || Store::open_ro(&dir)).await?;
        Ok(SqliteLedger {
            tx,
            path: Arc::new(path),
            read_only: true,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the ledger thread, inside the current group transaction, and returns its
    /// result once that transaction is committed. For commands that neither read nor rewrite
    /// the watches' rows (the outbox, sink health, facts); see [`SqliteLedger::run_watches`].
    async fn run<T, F>(&self, write: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        self.send_job(write, false, f).await
    }

    /// Like [`SqliteLedger::run`], for a command that reads or rewrites watch rows: the queued
    /// timing-only steps are written first, in the same transaction, so it sees them and
    /// nothing queued earlier overwrites what it writes.
    async fn run_watches<T, F>(&self, write: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        self.send_job(write, true, f).await
    }

    async fn send_job<T, F>(&self, write: bool, watches: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        if write && self.read_only {
            return Err(self.read_only_error());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job {
                work: worker::job(f, reply),
                write,
                watches,
            })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Like [`SqliteLedger::run`] for a writing command, in a transaction of its own.
    async fn run_alone<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        if self.read_only {
            return Err(self.read_only_error());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Alone(worker::job(f, reply)))
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
            source: None,
        }
    }

    /// Runs arbitrary code on the ledger thread, for tests that inspect or sabotage the database.
    #[cfg(test)]
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
    {
        self.run_watches(false, f).await
    }
}

impl Ledger for SqliteLedger {
    fn describe(&self) -> String {
        format!("the state database {}", self.path.display())
    }

    fn set_sinks(&self, sinks: Vec<String>, event_sinks: Vec<String>) -> LedgerFuture<'_, ()> {
        Box::pin(self.run(false, move |s| {
            s.sinks = sinks;
            s.event_sinks = event_sinks;
            Ok(())
        }))
    }

    fn sync_watches<'a>(
        &'a self,
        specs: &'a [WatchSpec],
        origins: &'a [String],
        now_ms: u64,
    ) -> LedgerFuture<'a, Vec<WatchRecord>> {
        let specs: Vec<store::SpecRow> = specs.iter().map(store::SpecRow::from).collect();
        let origins = origins.to_vec();
        Box::pin(self.run_watches(true, move |s| s.sync_watches(specs, &origins, now_ms)))
    }

    fn sync_watches_paged<'a>(
        &'a self,
        specs: &'a [WatchSpec],
        origins: &'a [String],
        now_ms: u64,
    ) -> Option<LedgerFuture<'a, usize>> {
        let specs: Vec<store::SpecRow> = specs.iter().map(store::SpecRow::from).collect();
        let origins = origins.to_vec();
        Some(Box::pin(self.run_watches(true, move |s| {
            s.sync_watches_paged(specs, &origins, now_ms)
        })))
    }

    fn synced_records(
        &self,
        from: usize,
        max: usize,
    ) -> LedgerFuture<'_, (Vec<WatchRecord>, Option<usize>)> {
        // A write: the last page drops the list (`temp.sync_seen`).
        Box::pin(self.run_watches(true, move |s| s.synced_page(from, max)))
    }

    fn add_watch<'a>(&'a self, spec: &'a WatchSpec, now_ms: u64) -> LedgerFuture<'a, WatchRecord> {
        let spec = store::SpecRow::from(spec);
        Box::pin(self.run_watches(true, move |s| s.add_watch(&spec, now_ms)))
    }

    fn remove_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, ()> {
        Box::pin(self.run_watches(true, move |s| s.remove_watches(&keys, now_ms)))
    }

    fn discovered(&self) -> LedgerFuture<'_, Vec<(String, WatchRecord)>> {
        Box::pin(self.run_watches(false, Store::discovered))
    }

    fn reset_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, Vec<WatchKey>> {
        Box::pin(self.run_watches(true, move |s| s.reset_watches(&keys, now_ms)))
    }

    fn unpark(&self, sink: Option<String>, now_ms: u64) -> LedgerFuture<'_, u64> {
        Box::pin(self.run(true, move |s| s.unpark(sink.as_deref(), now_ms)))
    }

    /// A timing-only step (see [`StepCommit::timing_only`]) is answered once queued on the
    /// ledger thread and written within [`FLUSH_EVERY`]; any other step once committed.
    fn commit_step(&self, commit: StepCommit) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if self.read_only {
                return Err(self.read_only_error());
            }
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Msg::Step(Box::new(commit), reply))
                .await
                .map_err(|_| self.closed())?;
            rx.await.map_err(|_| self.closed())?
        })
    }

    fn due_deliveries<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<PendingDelivery>> {
        let sink = sink.to_string();
        Box::pin(self.run(false, move |s| s.due_deliveries(&sink, now_ms, limit)))
    }

    fn delivery_succeeded<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        location: &'a str,
        events: Vec<Event>,
        now_ms: u64,
    ) -> LedgerFuture<'a, bool> {
        let (version_id, sink, location) = (
            version_id.to_string(),
            sink.to_string(),
            location.to_string(),
        );
        Box::pin(self.run(true, move |s| {
            s.delivery_succeeded(&version_id, &sink, &location, &events, now_ms)
        }))
    }

    fn delivery_failed<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        let (version_id, sink, error) =
            (version_id.to_string(), sink.to_string(), error.to_string());
        Box::pin(self.run(true, move |s| {
            s.delivery_failed(&version_id, &sink, &error, next_attempt_at_ms, park)
        }))
    }

    fn record_events(&self, events: Vec<Event>) -> LedgerFuture<'_, ()> {
        Box::pin(self.run(true, move |s| s.record_events(&events)))
    }

    fn due_events<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<Event>> {
        let sink = sink.to_string();
        // A write in the rare case of an undecodable event (it is parked), so not read-only.
        Box::pin(self.run(!self.read_only, move |s| s.due_events(&sink, now_ms, limit)))
    }

    fn events_sent<'a>(&'a self, sink: &'a str, ids: &'a [String]) -> LedgerFuture<'a, ()> {
        let (sink, ids) = (sink.to_string(), ids.to_vec());
        Box::pin(self.run(true, move |s| s.events_sent(&sink, &ids)))
    }

    fn events_failed<'a>(
        &'a self,
        sink: &'a str,
        ids: &'a [String],
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        let (sink, ids, error) = (sink.to_string(), ids.to_vec(), error.to_string());
        Box::pin(self.run(true, move |s| {
            s.events_failed(&sink, &ids, &error, next_attempt_at_ms, park)
        }))
    }

    fn sink_health<'a>(&'a self, sink: &'a str) -> LedgerFuture<'a, SinkHealth> {
        let sink = sink.to_string();
        Box::pin(self.run(false, move |s| s.sink_health(&sink)))
    }

    fn set_sink_health<'a>(&'a self, sink: &'a str, health: SinkHealth) -> LedgerFuture<'a, ()> {
        let sink = sink.to_string();
        Box::pin(self.run(true, move |s| s.set_sink_health(&sink, health)))
    }

    fn fact<'a>(&'a self, name: &'a str) -> LedgerFuture<'a, Option<String>> {
        let name = name.to_string();
        Box::pin(self.run(false, move |s| s.fact(&name)))
    }

    fn set_fact<'a>(&'a self, name: &'a str, value: &'a str) -> LedgerFuture<'a, ()> {
        let (name, value) = (name.to_string(), value.to_string());
        Box::pin(self.run(true, move |s| s.set_fact(&name, &value)))
    }

    fn status(&self) -> LedgerFuture<'_, Vec<StatusRow>> {
        Box::pin(self.run_watches(false, Store::status))
    }

    fn backlog(&self) -> LedgerFuture<'_, Vec<Backlog>> {
        Box::pin(self.run(false, Store::backlog))
    }

    /// One batch in a transaction of its own (see [`Ledger::prune`]); the walk's position is
    /// kept by the ledger thread between calls.
    fn prune(&self, before_ms: u64, limit: usize) -> LedgerFuture<'_, Pruned> {
        Box::pin(self.run_alone(move |s| s.prune(before_ms, limit)))
    }

    /// Takes the write lock and writes in a transaction that is rolled back. After a failed
    /// commit (disk full, say) it commits a real tiny write instead, so readiness recovers only
    /// once writing works again.
    fn probe_writable(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if self.read_only {
                return Err(self.read_only_error());
            }
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Msg::Probe(reply))
                .await
                .map_err(|_| self.closed())?;
            rx.await.map_err(|_| self.closed())?
        })
    }

    /// Stops the writer thread after the commands queued before this one, writes the queued
    /// timing-only steps and checkpoints the WAL into the database file. Commands sent later by any clone fail with
    /// [`StateError::Closed`].
    fn close(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Msg::Close(reply))
                .await
                .map_err(|_| self.closed())?;
            rx.await.map_err(|_| self.closed())?
        })
    }
}
