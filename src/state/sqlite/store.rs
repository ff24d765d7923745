//! The SQL of each ledger operation, run on the ledger thread inside the group transaction that
//! `worker.rs` opened. Nothing here begins or commits a transaction, except the open sequence,
//! the writability probe and close.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::blob::ZeroBlob;
use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension, Row, params};

use super::schema::{self, Found};
use super::{
    Backlog, DB_FILE, PendingDelivery, Pruned, SCHEMA_VERSION, SinkHealth, StateError, StatusRow,
    StepCommit, WatchRecord, sql_error,
};
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::ncp::RemoteStatus;
use crate::state::WatchTiming;
use crate::watch::{Phase, Route, WatchState};

/// How long a statement waits for a lock held by another connection (a `status` reader
/// checkpointing, a backup tool) before failing loudly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache of the writer, in KiB (negative `cache_size` means KiB). Pages it does not hold
/// are read from the kernel's page cache, which keeps the whole file of a busy ledger anyway;
/// at 32 MiB this cache was a third of the daemon's memory at 100,000 watches, and at 8 MiB
/// still 6 MB of it, for a few microseconds per poll: 2 MiB hold the B-trees' inner pages and
/// the recent leaves (docs/benchmarks.md, "Memory per watch" and "SQLite's share and the
/// index without its keys").
const CACHE_KIB: i64 = 2 * 1024;

/// Prepared statements kept per connection: more than the ledger has (about 50), so each is
/// prepared once (rusqlite keeps 16 by default, and evicting one means parsing it again).
const STATEMENT_CACHE: usize = 128;

/// The WAL is truncated back to this size after a checkpoint, so one large sync does not leave a
/// large file behind.
const WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// What `sync_watches` needs of a configured watch.
#[derive(Debug, Clone)]
pub(crate) struct SpecRow {
    key: WatchKey,
    scene_summary_id: Option<Arc<str>>,
    generation: &'static str,
    origin: Option<Arc<str>>,
}

impl From<&WatchSpec> for SpecRow {
    fn from(spec: &WatchSpec) -> Self {
        SpecRow {
            key: spec.key.clone(),
            scene_summary_id: spec.scene_summary_id.clone(),
            generation: spec.generation.as_str(),
            origin: spec.origin.clone(),
        }
    }
}

/// The open database and what the ledger thread knows besides.
pub(crate) struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// Result sinks: one delivery row each per new version.
    pub(crate) sinks: Vec<String>,
    /// Event sinks: one delivery row each per new event.
    pub(crate) event_sinks: Vec<String>,
    pub(crate) read_only: bool,
    /// The last write failure, until a write commits again (readiness reports it).
    pub(crate) last_write_error: Option<StateError>,
    /// Device and inode of the database file when it was opened.
    pub(crate) file_id: Option<(u64, u64)>,
    /// Where retention's walk is (see [`Store::prune`]).
    pub(crate) prune_walk: PruneWalk,
    /// The keys of the watches the last sync listed in `temp.sync_seen`, by position, while
    /// their records are still to be read ([`Store::synced_page`]).
    pub(crate) synced: Option<Vec<WatchKey>>,
}

/// The position of one retention walk over `versions` (by rowid) and `events` (by seq).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PruneWalk {
    versions_after: i64,
    versions_done: bool,
    events_after: i64,
    events_done: bool,
}

/// Device and inode of a file, if it is there (Unix; elsewhere the check is skipped).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Milliseconds as SQLite stores them. Saturates: no real timestamp reaches `i64::MAX` ms.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A row value this build cannot interpret, reported as a conversion failure so `sql_error`
/// classifies it as a damaged database.
fn bad_value(col: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
}

/// Columns read by [`watch_record`], in order.
const WATCH_COLUMNS: &str = "workspace, project_id, asset_id, index_id, phase, remote_status, \
     polls, consecutive_errors, started_at_ms, before_since_ms, last_analyzed_at, last_error, \
     attempt, next_poll_at_ms, last_version_id, last_change_at_ms, stale_version_id, route";

/// A non-negative integer column (rusqlite reads `u64` only with a feature this crate does not
/// enable); a negative value means the file was edited or damaged.
fn u64_at(row: &Row<'_>, col: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(col)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(col, v))
}

/// [`u64_at`] of a nullable column.
fn opt_u64_at(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(col)? {
        None => Ok(None),
        Some(v) => u64::try_from(v)
            .map(Some)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(col, v)),
    }
}

/// A key from four columns; ids that are not valid (an edited file) read as a damaged ledger.
fn key_at(row: &Row<'_>, first: usize) -> rusqlite::Result<WatchKey> {
    WatchKey::new(
        str_at(row, first)?,
        str_at(row, first + 1)?,
        str_at(row, first + 2)?,
        str_at(row, first + 3)?,
    )
    .map_err(|e| bad_value(first, format!("stored watch key: {e}")))
}

/// [`key_at`], or `known` when the four columns spell it (no copy of the text is made: the
/// start reads every configured watch's row, and 100,000 keys made here to be dropped for the
/// configuration's were 4 MB of small allocations on the ledger's thread).
fn key_known_at(
    row: &Row<'_>,
    first: usize,
    known: Option<&WatchKey>,
) -> rusqlite::Result<WatchKey> {
    let Some(k) = known else {
        return key_at(row, first);
    };
    for (i, part) in k.parts().iter().enumerate() {
        if str_at(row, first + i)? != *part {
            return key_at(row, first);
        }
    }
    Ok(k.clone())
}

/// A text column, borrowed from the row.
fn str_at<'r>(row: &'r Row<'_>, col: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(col)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn phase_at(row: &Row<'_>, col: usize) -> rusqlite::Result<Phase> {
    let s: String = row.get(col)?;
    Phase::parse(&s).ok_or_else(|| bad_value(col, format!("unknown phase `{s}`")))
}

fn watch_record(row: &Row<'_>) -> rusqlite::Result<WatchRecord> {
    watch_record_of(row, None)
}

/// [`watch_record`] of a row that should be the watch `known`'s (see [`key_known_at`]).
fn watch_record_of(row: &Row<'_>, known: Option<&WatchKey>) -> rusqlite::Result<WatchRecord> {
    let remote: Option<String> = row.get(5)?;
    let started = opt_u64_at(row, 8)?;
    let before = opt_u64_at(row, 9)?;
    // Every field is named so that a field added to `WatchState` fails to compile here until
    // it is persisted too.
    let state = WatchState {
        phase: phase_at(row, 4)?,
        remote: remote.as_deref().map(RemoteStatus::from_wire),
        polls: u64_at(row, 6)?,
        consecutive_errors: row.get(7)?,
        attempt: row.get(12)?,
        route: match row.get::<_, Option<String>>(17)? {
            None => None,
            Some(r) => Some(
                Route::parse(&r).ok_or_else(|| bad_value(17, format!("unknown route `{r}`")))?,
            ),
        },
        started_at: started.map(Duration::from_millis),
        before_since: before.map(Duration::from_millis),
        last_version: row.get(10)?,
        last_error: row.get(11)?,
    };
    Ok(WatchRecord {
        key: key_known_at(row, 0, known)?,
        state,
        next_poll_at_ms: opt_u64_at(row, 13)?,
        last_version_id: row
            .get::<_, Option<String>>(14)?
            .map(VersionId::from_stored),
        last_change_at_ms: opt_u64_at(row, 15)?,
        stale_version_id: row
            .get::<_, Option<String>>(16)?
            .map(VersionId::from_stored),
    })
}

impl Store {
    /// Opens (creating if needed) for the daemon: pre-flight (read only), integrity check,
    /// durability settings, migration.
    pub(crate) fn open_rw(
        dir: &Path,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<Store, StateError> {
        let path = dir.join(DB_FILE);
        std::fs::create_dir_all(dir).map_err(|e| StateError::Io {
            path: path.clone(),
            op: "create the directory of",
            detail: e.to_string(),
            source: crate::cause::of(e),
        })?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| sql_error(&path, "open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error(&path, "open", e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let found = schema::preflight(&conn, &path)?;
        // SQLite silently opens a write-protected file read-only; say so now rather than at the
        // first poll step.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| sql_error(&path, "open", e))?
        {
            return Err(StateError::Io {
                path,
                op: "open for writing",
                detail: "the file is read-only (make the file and its directory writable by the \
                         user scenewatch runs as)"
                    .into(),
                source: None,
            });
        }
        if found != Found::Fresh {
            schema::quick_check(&conn, &path)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| sql_error(&path, "open", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::Io {
                path,
                op: "open",
                detail: format!(
                    "the file system does not support write-ahead logging (journal mode \
                     stayed `{mode}`); put state_dir on a local file system"
                ),
                source: None,
            });
        }
        // FULL: the WAL is fsync'd at every commit, so a power cut cannot lose a transaction
        // whose caller was told it was recorded (NORMAL would, in WAL mode).
        conn.execute_batch(&format!(
            "PRAGMA synchronous = FULL;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -{CACHE_KIB};
             PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};"
        ))
        .map_err(|e| sql_error(&path, "open", e))?;
        schema::migrate(&conn, &path)?;
        // The start's list of configured watches (`sync_watches`) lives in memory; with the
        // temporary database vacuumed at each commit, its pages (2.6 MB at 100,000 watches)
        // are freed once the list is emptied, for the entries to reuse, instead of staying
        // on the temporary database's free list for as long as the daemon runs.
        conn.execute_batch(
            "PRAGMA temp.auto_vacuum = FULL;
             CREATE TEMP TABLE IF NOT EXISTS sync_seen (pos INTEGER PRIMARY KEY, watch_id INTEGER NOT NULL UNIQUE)",
        )
        .map_err(|e| sql_error(&path, "open", e))?;
        let file_id = file_id(&path);
        Ok(Store {
            conn,
            path,
            sinks,
            event_sinks,
            read_only: false,
            last_write_error: None,
            file_id,
            prune_walk: PruneWalk::default(),
            synced: None,
        })
    }

    /// Opens an existing ledger read-only, for `status`: no file is created, nothing migrated.
    pub(crate) fn open_ro(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join(DB_FILE);
        match path.try_exists() {
            Ok(true) => {}
            Ok(false) => {
                return Err(StateError::Io {
                    path,
                    op: "open",
                    detail: "no such file: scenewatch has not run with this state_dir yet".into(),
                    source: None,
                });
            }
            Err(e) => {
                return Err(StateError::Io {
                    path,
                    op: "open",
                    detail: e.to_string(),
                    source: None,
                });
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| sql_error(&path, "open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error(&path, "open", e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        match schema::preflight(&conn, &path)? {
            Found::Ledger(SCHEMA_VERSION) => {}
            Found::Fresh => {
                return Err(StateError::Io {
                    path,
                    op: "read",
                    detail: "the file holds no ledger yet (the daemon creates it on start)".into(),
                    source: None,
                });
            }
            Found::Ledger(v) => {
                return Err(StateError::Io {
                    path,
                    op: "read",
                    detail: format!(
                        "it has schema {v} of an older scenewatch; start the daemon once to \
                         migrate it to schema {SCHEMA_VERSION}"
                    ),
                    source: None,
                });
            }
        }
        // Belt and braces: even a bug here cannot write through this connection.
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(|e| sql_error(&path, "open", e))?;
        Ok(Store {
            conn,
            path,
            sinks: Vec::new(),
            event_sinks: Vec::new(),
            read_only: true,
            last_write_error: None,
            file_id: None,
            prune_walk: PruneWalk::default(),
            synced: None,
        })
    }

    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |e| sql_error(&self.path, op, e)
    }

    /// Runs SQL without results (set-up, tests).
    pub(crate) fn exec(&self, op: &'static str, sql: &str) -> Result<(), StateError> {
        self.conn.execute_batch(sql).map_err(self.err(op))
    }

    /// Runs one transaction-control statement (`BEGIN`, `SAVEPOINT job`, `COMMIT`, …), prepared
    /// once and kept: the ledger thread runs several per command.
    pub(crate) fn tx(&self, op: &'static str, sql: &str) -> Result<(), StateError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(self.err(op))
    }

    /// Begins a group transaction. The writer takes the write lock up front (`IMMEDIATE`), so a
    /// lock conflict shows at `BEGIN`, where `busy_timeout` applies, and not mid-transaction.
    pub(crate) fn begin(&self) -> Result<(), StateError> {
        if self.read_only {
            self.tx("read", "BEGIN")
        } else {
            // Nothing is written into a file that is not at the ledger's path any more.
            self.check_identity()?;
            self.tx("write", "BEGIN IMMEDIATE")
        }
    }

    /// Rolls back the open transaction, if SQLite has not done so already.
    pub(crate) fn rollback(&self) {
        if !self.conn.is_autocommit() {
            // A failed rollback leaves nothing more to do: SQLite then rolls back on its own.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Remembers a write failure for the readiness probe.
    pub(crate) fn note_failure(&mut self, e: &StateError) {
        if !self.read_only && matches!(e, StateError::Io { .. }) {
            self.last_write_error = Some(e.clone());
        }
    }

    /// See [`crate::state::Ledger::probe_writable`].
    pub(crate) fn probe_writable(&mut self) -> Result<(), StateError> {
        const PROBE: &str = "INSERT INTO meta (key, value) VALUES ('probe', 'ok')
             ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        self.begin()?;
        let wrote = self.conn.execute(PROBE, []).map_err(self.err("write"));
        // A real, durable commit (WAL append and fsync): a rolled-back write can succeed on a
        // full disk, where every step's commit fails.
        let settled = match wrote {
            Err(e) => Err(e),
            Ok(_) => self.tx("write", "COMMIT"),
        };
        match settled {
            // A tiny probe can fit where a poll's step does not (space a checkpoint freed in
            // the WAL): a failure of a real write is cleared only by a real write committing
            // (the engine retries failed steps within seconds, the drainers their deliveries).
            Ok(()) => match &self.last_write_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            },
            Err(e) => {
                self.rollback();
                self.note_failure(&e);
                Err(e)
            }
        }
    }

    /// The file at the ledger's path is still the one this connection writes: deleted or
    /// replaced under a running daemon, everything written would be lost at the next start.
    fn check_identity(&self) -> Result<(), StateError> {
        let Some(want) = self.file_id else {
            return Ok(());
        };
        let now = file_id(&self.path);
        if now == Some(want) {
            return Ok(());
        }
        let what = if now.is_none() { "deleted" } else { "replaced" };
        Err(StateError::Io {
            path: self.path.clone(),
            op: "keep",
            detail: format!(
                "the file was {what} while the daemon has it open, so what it records is lost at \
                 the next start; stop the daemon, restore the file (or keep the new one) and \
                 start it again"
            ),
            source: None,
        })
    }

    /// Checkpoints the WAL into the database file (the daemon is stopping).
    pub(crate) fn close(self) -> Result<(), StateError> {
        if !self.read_only {
            self.exec("checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        let path = self.path;
        self.conn
            .close()
            .map_err(|(_, e)| sql_error(&path, "close", e))
    }

    /// Id of a watch row, if present.
    fn watch_id(&self, key: &WatchKey) -> Result<Option<i64>, StateError> {
        self.conn
            .prepare_cached(
                "SELECT watch_id FROM watches
                 WHERE workspace = ?1 AND project_id = ?2 AND asset_id = ?3 AND index_id = ?4",
            )
            .and_then(|mut st| {
                st.query_row(
                    params![
                        key.workspace(),
                        key.project_id(),
                        key.asset_id(),
                        key.index_id()
                    ],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(self.err("read"))
    }

    /// `Ledger::sync_watches`: [`Store::sync_write`], then every record read at once.
    pub(crate) fn sync_watches(
        &mut self,
        specs: Vec<SpecRow>,
        origins: &[String],
        now_ms: u64,
    ) -> Result<Vec<WatchRecord>, StateError> {
        self.sync_write(specs, origins, now_ms)?;
        let (records, _) = self.synced_page(0, usize::MAX)?;
        Ok(records)
    }

    /// `Ledger::sync_watches_paged`: the watches recorded, the list of them kept in
    /// `temp.sync_seen` (and their keys here) for [`Store::synced_page`]. Returns how many.
    pub(crate) fn sync_watches_paged(
        &mut self,
        specs: Vec<SpecRow>,
        origins: &[String],
        now_ms: u64,
    ) -> Result<usize, StateError> {
        self.sync_write(specs, origins, now_ms)?;
        Ok(self.synced.as_ref().map_or(0, Vec::len))
    }

    /// Upserts `specs`, lists them in `temp.sync_seen` by position, flags removed the watches
    /// no longer configured, and keeps the specs' keys in `self.synced` for the read.
    fn sync_write(
        &mut self,
        specs: Vec<SpecRow>,
        origins: &[String],
        now_ms: u64,
    ) -> Result<(), StateError> {
        self.synced = None;
        let w = self.err("write");
        self.conn
            .execute("DELETE FROM temp.sync_seen", [])
            .map_err(&w)?;
        for (pos, spec) in specs.iter().enumerate() {
            let id = self.upsert_watch(spec, now_ms)?;
            let pos = i64::try_from(pos).unwrap_or(i64::MAX);
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO temp.sync_seen (pos, watch_id) VALUES (?1, ?2)",
                )
                .and_then(|mut st| st.execute([pos, id]))
                .map_err(&w)?;
        }
        // Configured watches not listed any more, and watches found by a selector that is not
        // configured any more: flagged removed, kept.
        self.conn
            .execute(
                "UPDATE watches SET removed = 1, removed_at_ms = ?1
                 WHERE removed = 0 AND origin IS NULL
                   AND watch_id NOT IN (SELECT watch_id FROM temp.sync_seen)",
                [ms(now_ms)],
            )
            .map_err(&w)?;
        // Only the keys are needed from here on (the records share them): the rest of the list
        // (a copy of every configured watch's settings, 10 MB at 100,000) is given back before
        // the records are read.
        let mut keys: Vec<WatchKey> = specs.into_iter().map(|s| s.key).collect();
        keys.shrink_to_fit();
        let kept: std::collections::HashSet<&str> = origins.iter().map(String::as_str).collect();
        let found: Vec<(i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT watch_id, origin FROM watches WHERE removed = 0 AND origin IS NOT NULL",
            )
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(&w)?;
        for (id, origin) in found {
            if !kept.contains(origin.as_str()) {
                self.conn
                    .prepare_cached(
                        "UPDATE watches SET removed = 1, removed_at_ms = ?2 WHERE watch_id = ?1",
                    )
                    .and_then(|mut st| st.execute(params![id, ms(now_ms)]))
                    .map_err(&w)?;
            }
        }
        drop(w);
        self.synced = Some(keys);
        Ok(())
    }

    /// Up to `max` records of the watches [`Store::sync_write`] listed, from position `from` of
    /// its specs on, in their order, and the position to read next; `None` once every record
    /// is read, when the list is dropped. Without a list (none made, or dropped): nothing.
    pub(crate) fn synced_page(
        &mut self,
        from: usize,
        max: usize,
    ) -> Result<(Vec<WatchRecord>, Option<usize>), StateError> {
        let Some(keys) = self.synced.take() else {
            return Ok((Vec::new(), None));
        };
        // In `specs` order (the scan of `sync_seen` by `pos` meets each watch by its key, no
        // sort), straight into a list of the right size: at 100,000 watches a map of the
        // records by id and the list grown by doubling were 57 MB at the start's peak. A key
        // listed twice (config forbids it) is returned once.
        let mut records = Vec::with_capacity(keys.len().saturating_sub(from).min(max));
        let mut next = None;
        {
            let r = self.err("read");
            let mut st = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {WATCH_COLUMNS}, s.pos FROM temp.sync_seen s JOIN watches w ON w.watch_id = s.watch_id
                     WHERE w.removed = 0 AND s.pos >= ?1 ORDER BY s.pos LIMIT ?2"
                ))
                .map_err(&r)?;
            let from_pos = i64::try_from(from).unwrap_or(i64::MAX);
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            // The row at `pos` is the watch of `keys[pos]`: its key is shared, not re-made.
            let rows = st
                .query_map([from_pos, limit], |row| {
                    let pos = usize::try_from(row.get::<_, i64>(18)?).ok();
                    Ok((pos, watch_record_of(row, pos.and_then(|p| keys.get(p)))?))
                })
                .map_err(&r)?;
            for row in rows {
                let (pos, record) = row.map_err(&r)?;
                records.push(record);
                next = pos.map(|p| p + 1);
            }
        }
        if records.len() == max && next.is_some() {
            self.synced = Some(keys);
            return Ok((records, next));
        }
        self.conn
            .execute("DELETE FROM temp.sync_seen", [])
            .map_err(self.err("write"))?;
        Ok((records, None))
    }

    /// Inserts a watch, or refreshes its settings and un-removes it (its state is kept). Only
    /// rows that change are written: a reload of 100,000 unchanged watches is 100,000 index
    /// lookups, not 100,000 row rewrites.
    fn upsert_watch(&self, spec: &SpecRow, now_ms: u64) -> Result<i64, StateError> {
        let w = self.err("write");
        let k = &spec.key;
        let existing = self
            .conn
            .prepare_cached(
                "SELECT watch_id, scene_summary_id, generation, removed, origin FROM watches
                 WHERE workspace = ?1 AND project_id = ?2 AND asset_id = ?3 AND index_id = ?4",
            )
            .and_then(|mut st| {
                st.query_row(k.parts(), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(&w)?;
        Ok(match existing {
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO watches
                           (workspace, project_id, asset_id, index_id, scene_summary_id,
                            generation, phase, added_at_ms, origin)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            k.workspace(),
                            k.project_id(),
                            k.asset_id(),
                            k.index_id(),
                            spec.scene_summary_id.as_deref(),
                            spec.generation,
                            ms(now_ms),
                            spec.origin.as_deref(),
                        ])
                    })
                    .map_err(&w)?;
                self.conn.last_insert_rowid()
            }
            Some((id, summary_id, generation, removed, origin)) => {
                if removed
                    || summary_id.as_deref() != spec.scene_summary_id.as_deref()
                    || generation.as_deref() != Some(spec.generation)
                    || origin.as_deref() != spec.origin.as_deref()
                {
                    self.conn
                        .prepare_cached(
                            "UPDATE watches
                             SET scene_summary_id = ?2, generation = ?3, origin = ?4,
                                 removed = 0, removed_at_ms = NULL
                             WHERE watch_id = ?1",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                id,
                                spec.scene_summary_id.as_deref(),
                                spec.generation,
                                spec.origin.as_deref()
                            ])
                        })
                        .map_err(&w)?;
                }
                id
            }
        })
    }

    /// See [`crate::state::Ledger::add_watch`].
    pub(crate) fn add_watch(
        &mut self,
        spec: &SpecRow,
        now_ms: u64,
    ) -> Result<WatchRecord, StateError> {
        let id = self.upsert_watch(spec, now_ms)?;
        self.conn
            .prepare_cached(&format!(
                "SELECT {WATCH_COLUMNS} FROM watches WHERE watch_id = ?1"
            ))
            .and_then(|mut st| st.query_row([id], watch_record))
            .map_err(self.err("read"))
    }

    /// See [`crate::state::Ledger::remove_watches`].
    pub(crate) fn remove_watches(
        &mut self,
        keys: &[WatchKey],
        now_ms: u64,
    ) -> Result<(), StateError> {
        let mut st = self
            .conn
            .prepare_cached(
                "UPDATE watches SET removed = 1, removed_at_ms = ?5
                 WHERE workspace = ?1 AND project_id = ?2 AND asset_id = ?3 AND index_id = ?4
                   AND removed = 0",
            )
            .map_err(self.err("write"))?;
        for k in keys {
            let [w, p, a, i] = k.parts();
            st.execute(params![w, p, a, i, ms(now_ms)])
                .map_err(self.err("write"))?;
        }
        Ok(())
    }

    /// See [`crate::state::Ledger::discovered`].
    pub(crate) fn discovered(&mut self) -> Result<Vec<(String, WatchRecord)>, StateError> {
        let r = self.err("read");
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {WATCH_COLUMNS}, origin FROM watches
                 WHERE removed = 0 AND origin IS NOT NULL
                 ORDER BY workspace, project_id, asset_id, index_id"
            ))
            .map_err(&r)?;
        let rows = st
            .query_map([], |row| {
                Ok((row.get::<_, String>(18)?, watch_record(row)?))
            })
            .map_err(&r)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&r)
    }

    /// Puts terminal watches (failed, canceled, not_requested, timed_out, rejected) back to
    /// `pending`, due now; `keys` empty means every terminal watch. Returns the keys reset.
    pub(crate) fn reset_watches(
        &mut self,
        keys: &[WatchKey],
        now_ms: u64,
    ) -> Result<Vec<WatchKey>, StateError> {
        let w = self.err("write");
        let terminal = "phase IN ('failed', 'canceled', 'not_requested', 'timed_out', 'rejected', 'superseded') AND removed = 0";
        let mut select = self
            .conn
            .prepare_cached(&format!(
                "SELECT watch_id, workspace, project_id, asset_id, index_id FROM watches WHERE {terminal}"
            ))
            .map_err(&w)?;
        let rows: Vec<(i64, WatchKey)> = select
            .query_map([], |r| Ok((r.get(0)?, key_at(r, 1)?)))
            .map_err(&w)?
            .collect::<Result<_, _>>()
            .map_err(&w)?;
        drop(select);
        let mut update = self
            .conn
            .prepare_cached(
                "UPDATE watches SET phase = 'pending', remote_status = NULL, consecutive_errors = 0,
                   attempt = 0, started_at_ms = NULL, before_since_ms = NULL, last_error = NULL,
                   next_poll_at_ms = ?2, last_change_at_ms = ?2
                 WHERE watch_id = ?1",
            )
            .map_err(&w)?;
        let mut reset = Vec::new();
        for (id, key) in rows {
            if keys.is_empty() || keys.contains(&key) {
                update.execute(params![id, ms(now_ms)]).map_err(&w)?;
                reset.push(key);
            }
        }
        Ok(reset)
    }

    /// Makes parked deliveries and events due again (an operator fixed the receiver); `sink`
    /// limits it to one sink. Returns how many rows were unparked.
    pub(crate) fn unpark(&mut self, sink: Option<&str>, now_ms: u64) -> Result<u64, StateError> {
        let w = self.err("write");
        let mut n = 0;
        for table in ["deliveries", "event_deliveries"] {
            n += self
                .conn
                .execute(
                    &format!(
                        "UPDATE {table} SET state = 'pending', next_attempt_at_ms = ?1
                         WHERE state = 'parked' AND (?2 IS NULL OR sink = ?2)"
                    ),
                    params![ms(now_ms), sink],
                )
                .map_err(&w)? as u64;
        }
        Ok(n)
    }

    /// The record the ledger holds for `key` (what a step is compared with, see
    /// [`StepCommit::timing_only`]).
    pub(crate) fn stored_record(&self, key: &WatchKey) -> Result<Option<WatchRecord>, StateError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {WATCH_COLUMNS} FROM watches
                 WHERE workspace = ?1 AND project_id = ?2 AND asset_id = ?3 AND index_id = ?4"
            ))
            .and_then(|mut st| st.query_row(key.parts(), watch_record).optional())
            .map_err(self.err("read"))
    }

    /// Writes queued timing-only steps: only the timing columns of each watch's row.
    pub(crate) fn write_timing(&self, batch: &[(WatchKey, WatchTiming)]) -> Result<(), StateError> {
        let w = self.err("write");
        let mut st = self
            .conn
            .prepare_cached(
                "UPDATE watches
                 SET polls = ?5, consecutive_errors = ?6, attempt = ?7, last_error = ?8,
                     next_poll_at_ms = ?9
                 WHERE workspace = ?1 AND project_id = ?2 AND asset_id = ?3 AND index_id = ?4",
            )
            .map_err(&w)?;
        for (k, t) in batch {
            let [ws, p, a, i] = k.parts();
            st.execute(params![
                ws,
                p,
                a,
                i,
                ms(t.polls),
                t.consecutive_errors,
                t.attempt,
                t.last_error,
                t.next_poll_at_ms.map(ms),
            ])
            .map_err(&w)?;
        }
        Ok(())
    }

    pub(crate) fn commit_step(&mut self, c: &StepCommit) -> Result<(), StateError> {
        let w = self.err("write");
        let r = &c.record;
        let s = &r.state;
        let k = &r.key;
        // An upsert, so a step for a watch that was never synced (a test, a race with a reload)
        // still records its state instead of failing.
        self.conn
            .prepare_cached(
                "INSERT INTO watches
                   (workspace, project_id, asset_id, index_id, phase, remote_status, polls,
                    consecutive_errors, started_at_ms, before_since_ms, last_analyzed_at,
                    last_error, attempt, next_poll_at_ms, last_version_id, last_change_at_ms,
                    stale_version_id, route)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18)
                 ON CONFLICT (workspace, project_id, asset_id, index_id) DO UPDATE SET
                   phase = excluded.phase, remote_status = excluded.remote_status,
                   polls = excluded.polls, consecutive_errors = excluded.consecutive_errors,
                   started_at_ms = excluded.started_at_ms,
                   before_since_ms = excluded.before_since_ms,
                   last_analyzed_at = excluded.last_analyzed_at,
                   last_error = excluded.last_error, attempt = excluded.attempt,
                   next_poll_at_ms = excluded.next_poll_at_ms,
                   last_version_id = excluded.last_version_id,
                   last_change_at_ms = excluded.last_change_at_ms,
                   stale_version_id = excluded.stale_version_id, route = excluded.route",
            )
            .and_then(|mut st| {
                st.execute(params![
                    k.workspace(),
                    k.project_id(),
                    k.asset_id(),
                    k.index_id(),
                    s.phase.as_str(),
                    s.remote.as_ref().map(RemoteStatus::as_str),
                    ms(s.polls),
                    s.consecutive_errors,
                    s.started_at.map(duration_ms),
                    s.before_since.map(duration_ms),
                    s.last_version,
                    s.last_error,
                    s.attempt,
                    r.next_poll_at_ms.map(ms),
                    r.last_version_id.as_deref(),
                    r.last_change_at_ms.map(ms),
                    r.stale_version_id.as_deref(),
                    s.route.map(Route::as_str),
                ])
            })
            .map_err(&w)?;

        if let Some(v) = &c.new_version {
            let watch_id = self.watch_id(&v.key)?.ok_or_else(|| StateError::Io {
                path: self.path.clone(),
                op: "record a version in",
                detail: format!(
                    "version {} is for watch {}, which the ledger does not hold",
                    v.version_id, v.key
                ),
                source: None,
            })?;
            let ids = match &v.analyzed_scene_ids {
                Some(ids) => Some(serde_json::to_string(ids).map_err(|e| StateError::Io {
                    path: self.path.clone(),
                    op: "record a version in",
                    detail: e.to_string(),
                    source: crate::cause::of(e),
                })?),
                None => None,
            };
            // The result (megabytes for a long video) goes in as a zero-filled BLOB of its
            // size, written in place through SQLite's incremental I/O: bound as text it was
            // copied twice by SQLite (the bound value and the row built from it), and the
            // poll's peak held three copies of the body at once (docs/benchmarks.md, "One
            // large result"). So the column holds the result's UTF-8 bytes as a BLOB (rows
            // of older versions: as TEXT); `read_result` reads either.
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO versions
                       (version_id, watch_id, last_analyzed_at, fetched_at_ms, scene_count,
                        analyzed_scene_ids, result_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        v.version_id.as_str(),
                        watch_id,
                        v.last_analyzed_at,
                        ms(v.fetched_at_ms),
                        ms(v.scene_count),
                        ids,
                        ZeroBlob(v.result_json.len() as u64),
                    ])
                })
                .map_err(&w)?;
            if inserted == 1 && !v.result_json.is_empty() {
                let rowid = self.conn.last_insert_rowid();
                self.conn
                    .blob_open(MAIN_DB, "versions", "result_json", rowid, false)
                    .and_then(|mut blob| {
                        blob.write_at(v.result_json.as_bytes(), 0)?;
                        blob.close()
                    })
                    .map_err(&w)?;
            }
            // OR IGNORE: a version fetched again keeps its rows (a done delivery stays done);
            // a sink added since gets its row.
            let mut st = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO deliveries
                       (version_id, sink, state, attempts, next_attempt_at_ms, created_at_ms)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
                )
                .map_err(&w)?;
            for sink in &self.sinks {
                st.execute(params![v.version_id.as_str(), sink, ms(v.fetched_at_ms)])
                    .map_err(&w)?;
            }
        }
        // Events last: if one fails, the savepoint takes the watch and version rows back with
        // it (the atomicity test relies on this order to show it).
        self.insert_events(&c.events)
    }

    fn insert_events(&self, events: &[Event]) -> Result<(), StateError> {
        let w = self.err("write");
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO events (id, type, watch_key, time_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(&w)?;
        let mut queue = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO event_deliveries
                   (sink, seq, state, attempts, next_attempt_at_ms)
                 VALUES (?1, ?2, 'pending', 0, ?3)",
            )
            .map_err(&w)?;
        for ev in events {
            let body = ev.to_cloudevent().to_string();
            let inserted = insert
                .execute(params![
                    ev.id,
                    ev.kind.as_str(),
                    ev.watch,
                    ms(ev.time_ms),
                    body
                ])
                .map_err(&w)?;
            // Only a new event is queued: the same fact recorded again is not sent again.
            if inserted == 1 {
                let seq = self.conn.last_insert_rowid();
                for sink in &self.event_sinks {
                    queue
                        .execute(params![sink, seq, ms(ev.time_ms)])
                        .map_err(&w)?;
                }
            }
        }
        Ok(())
    }

    /// One batch of retention (see [`crate::state::Ledger::prune`]): at most `limit` versions
    /// and `limit` events looked at, from where the walk stopped. Each walk ends at the first row
    /// younger than the cutoff (rows are in insertion order, so the rest are younger too, up to
    /// a clock that went back: those wait for the next walk).
    pub(crate) fn prune(&mut self, before_ms: u64, limit: usize) -> Result<Pruned, StateError> {
        let limit = limit.max(1);
        let mut out = Pruned::default();
        let mut walk = self.prune_walk;
        if !walk.versions_done {
            let (after, done) =
                self.prune_versions(walk.versions_after, before_ms, limit, &mut out)?;
            walk.versions_after = after;
            walk.versions_done = done;
        }
        if !walk.events_done {
            let (after, done) = self.prune_events(walk.events_after, before_ms, limit, &mut out)?;
            walk.events_after = after;
            walk.events_done = done;
        }
        out.more = !(walk.versions_done && walk.events_done);
        // A finished walk starts again from the oldest rows next time.
        self.prune_walk = if out.more { walk } else { PruneWalk::default() };
        Ok(out)
    }

    /// Versions after rowid `after`: returns the new position and whether the walk is over.
    fn prune_versions(
        &mut self,
        after: i64,
        before_ms: u64,
        limit: usize,
        out: &mut Pruned,
    ) -> Result<(i64, bool), StateError> {
        let w = self.err("prune");
        let cutoff = ms(before_ms);
        let rows: Vec<(i64, String, i64, bool, i64)> = self
            .conn
            .prepare_cached(PRUNE_VERSIONS)
            .and_then(|mut st| {
                st.query_map(
                    params![after, cutoff, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?
                .collect::<Result<_, _>>()
            })
            .map_err(&w)?;
        let end_of_table = rows.len() < limit;
        let mut at = after;
        for (rowid, version_id, fetched_at_ms, is_last, unfinished) in rows {
            if fetched_at_ms >= cutoff {
                return Ok((at, true));
            }
            at = rowid;
            if is_last || unfinished > 0 {
                continue;
            }
            out.deliveries += self
                .conn
                .prepare_cached("DELETE FROM deliveries WHERE version_id = ?1")
                .and_then(|mut st| st.execute([&version_id]))
                .map_err(&w)? as u64;
            out.versions += self
                .conn
                .prepare_cached("DELETE FROM versions WHERE rowid = ?1")
                .and_then(|mut st| st.execute([rowid]))
                .map_err(&w)? as u64;
        }
        Ok((at, end_of_table))
    }

    /// Events after seq `after`: returns the new position and whether the walk is over.
    fn prune_events(
        &mut self,
        after: i64,
        before_ms: u64,
        limit: usize,
        out: &mut Pruned,
    ) -> Result<(i64, bool), StateError> {
        let w = self.err("prune");
        let cutoff = ms(before_ms);
        let rows: Vec<(i64, String, Option<String>, i64, i64)> = self
            .conn
            .prepare_cached(PRUNE_EVENTS)
            .and_then(|mut st| {
                st.query_map(
                    params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?
                .collect::<Result<_, _>>()
            })
            .map_err(&w)?;
        let end_of_table = rows.len() < limit;
        let mut at = after;
        for (seq, kind, watch_key, time_ms, open) in rows {
            if time_ms >= cutoff {
                return Ok((at, true));
            }
            at = seq;
            if open > 0 || !crate::state::retention::event_type_may_go(&kind) {
                continue;
            }
            if let Some(key) = watch_key.as_deref()
                && self.in_current_cycle(key, time_ms)?
            {
                continue;
            }
            out.event_deliveries += self
                .conn
                .prepare_cached(
                    "DELETE FROM event_deliveries INDEXED BY event_deliveries_by_seq
                     WHERE seq = ?1",
                )
                .and_then(|mut st| st.execute([seq]))
                .map_err(&w)? as u64;
            out.events += self
                .conn
                .prepare_cached("DELETE FROM events WHERE seq = ?1")
                .and_then(|mut st| st.execute([seq]))
                .map_err(&w)? as u64;
        }
        Ok((at, end_of_table))
    }

    /// Whether an event of the watch `key` (`w/p/a/i`) at `time_ms` belongs to the watch's
    /// current cycle: the watch has no version yet, or the event is not older than the fetch of
    /// its last version. A key the ledger does not hold has no cycle.
    fn in_current_cycle(&self, key: &str, time_ms: i64) -> Result<bool, StateError> {
        let parts: Vec<&str> = key.split('/').collect();
        let [ws, project, asset, index] = parts[..] else {
            return Ok(false);
        };
        let found: Option<Option<i64>> = self
            .conn
            .prepare_cached(
                "SELECT v.fetched_at_ms FROM watches AS w
                 LEFT JOIN versions AS v ON v.version_id = w.last_version_id
                 WHERE w.workspace = ?1 AND w.project_id = ?2 AND w.asset_id = ?3
                   AND w.index_id = ?4",
            )
            .and_then(|mut st| {
                st.query_row(params![ws, project, asset, index], |r| r.get(0))
                    .optional()
            })
            .map_err(self.err("prune"))?;
        Ok(match found {
            None => false,
            Some(None) => true,
            Some(Some(fetched_at_ms)) => time_ms >= fetched_at_ms,
        })
    }

    pub(crate) fn record_events(&mut self, events: &[Event]) -> Result<(), StateError> {
        self.insert_events(events)
    }

    pub(crate) fn due_deliveries(
        &mut self,
        sink: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StateError> {
        let r = self.err("read");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self.conn.prepare_cached(DUE_DELIVERIES).map_err(&r)?;
        let rows = st
            .query_map(params![sink, ms(now_ms), limit], |row| {
                Ok((
                    row.get::<_, i64>(7)?,
                    PendingDelivery {
                        version_id: VersionId::from_stored(row.get(0)?),
                        key: key_at(row, 1)?,
                        last_analyzed_at: row.get(5)?,
                        fetched_at_ms: u64_at(row, 6)?,
                        result_json: String::new(),
                        attempts: row.get(8)?,
                    },
                ))
            })
            .map_err(&r)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&r)?;
        // Results are read one by one, and the batch ends once they hold `DUE_RESULT_BYTES`:
        // a backlog of long videos' results (a sink that was down) is then delivered a few at
        // a time, not 64 of them held at once; the rest is due at the next round.
        let mut out = Vec::with_capacity(rows.len());
        let mut budget = crate::state::ResultBudget::default();
        for (rowid, mut due) in rows {
            if !budget.has_room() {
                break;
            }
            due.result_json = self.read_result(rowid, &due.version_id)?;
            budget.spend(due.result_json.len());
            out.push(due);
        }
        Ok(out)
    }

    /// The stored result of the version at `rowid`, read through SQLite's incremental I/O
    /// into one buffer of its size: a column read is SQLite's copy of the value and then
    /// ours. Reads the BLOB the ledger writes and the TEXT that older versions wrote alike.
    fn read_result(&self, rowid: i64, version: &VersionId) -> Result<String, StateError> {
        let r = self.err("read");
        let bytes = self
            .conn
            .blob_open(MAIN_DB, "versions", "result_json", rowid, true)
            .and_then(|blob| {
                let mut bytes = vec![0; usize::try_from(blob.size()).unwrap_or(0)];
                blob.read_at_exact(&mut bytes, 0)?;
                Ok(bytes)
            })
            .map_err(&r)?;
        String::from_utf8(bytes).map_err(|e| StateError::Io {
            path: self.path.clone(),
            op: "read",
            detail: format!(
                "the stored result of version {version} is not UTF-8 text ({}): the ledger \
                 file is damaged",
                e.utf8_error()
            ),
            source: None,
        })
    }

    pub(crate) fn delivery_succeeded(
        &mut self,
        version_id: &str,
        sink: &str,
        location: &str,
        events: &[Event],
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let w = self.err("write");
        self.conn
            .prepare_cached(
                "UPDATE deliveries
                 SET state = 'done', location = ?3, done_at_ms = ?4, last_error = NULL
                 WHERE version_id = ?1 AND sink = ?2 AND state <> 'done'",
            )
            .and_then(|mut st| st.execute(params![version_id, sink, location, ms(now_ms)]))
            .map_err(&w)?;
        self.insert_events(events)?;
        // Only the sinks configured now count: rows of a sink that was removed from the
        // configuration stay (nothing is dropped) but no longer hold the watch in `completed`.
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached("SELECT sink, state FROM deliveries WHERE version_id = ?1")
            .and_then(|mut st| {
                st.query_map([version_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(&w)?;
        let current: Vec<&(String, String)> = rows
            .iter()
            .filter(|(s, _)| self.sinks.iter().any(|c| c == s))
            .collect();
        let complete = !current.is_empty() && current.iter().all(|(_, state)| state == "done");
        if complete {
            // Every configured sink has it: the stored result (megabytes for long videos) is
            // no longer needed, and keeping it would grow the ledger by every version forever.
            self.conn
                .prepare_cached(
                    "UPDATE versions SET result_json = '' WHERE version_id = ?1 AND octet_length(result_json) > 0",
                )
                .and_then(|mut st| st.execute([version_id]))
                .map_err(&w)?;
            self.conn
                .prepare_cached(
                    "UPDATE watches SET phase = 'watching'
                     WHERE watch_id = (SELECT watch_id FROM versions WHERE version_id = ?1)
                       AND last_version_id = ?1 AND phase = 'completed'",
                )
                .and_then(|mut st| st.execute([version_id]))
                .map_err(&w)?;
        }
        Ok(complete)
    }

    pub(crate) fn delivery_failed(
        &mut self,
        version_id: &str,
        sink: &str,
        error: &str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "UPDATE deliveries
                 SET attempts = attempts + 1, last_error = ?3, next_attempt_at_ms = ?4,
                     state = CASE WHEN ?5 THEN 'parked' ELSE state END
                 WHERE version_id = ?1 AND sink = ?2 AND state <> 'done'",
            )
            .and_then(|mut st| {
                st.execute(params![
                    version_id,
                    sink,
                    error,
                    ms(next_attempt_at_ms),
                    park
                ])
            })
            .map_err(self.err("write"))?;
        Ok(())
    }

    pub(crate) fn due_events(
        &mut self,
        sink: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StateError> {
        let r = self.err("read");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut undecodable = Vec::new();
        {
            let mut st = self.conn.prepare_cached(DUE_EVENTS).map_err(&r)?;
            let mut rows = st.query(params![sink, limit]).map_err(&r)?;
            while let Some(row) = rows.next().map_err(&r)? {
                let seq: i64 = row.get(0).map_err(&r)?;
                let due = u64_at(row, 1).map_err(&r)?;
                // Strict emission order: the first event still in backoff holds back the rest.
                if due > now_ms {
                    break;
                }
                let id: String = row.get(2).map_err(&r)?;
                let body: String = row.get(3).map_err(&r)?;
                let event = serde_json::from_str(&body)
                    .ok()
                    .and_then(|v| Event::from_cloudevent(&v));
                match event {
                    Some(ev) => out.push(ev),
                    None => undecodable.push((seq, id)),
                }
            }
        }
        if !undecodable.is_empty() {
            if self.read_only {
                return Err(StateError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("stored event {} cannot be decoded", undecodable[0].1),
                    source: None,
                });
            }
            let mut park = self
                .conn
                .prepare_cached(
                    "UPDATE event_deliveries SET state = 'parked',
                       last_error = 'the stored event cannot be decoded by this scenewatch'
                     WHERE sink = ?1 AND seq = ?2",
                )
                .map_err(self.err("write"))?;
            for (seq, id) in &undecodable {
                tracing::error!(
                    sink,
                    event = %id,
                    path = %self.path.display(),
                    "Stored event cannot be decoded; parked it so the queue goes on."
                );
                park.execute(params![sink, seq])
                    .map_err(self.err("write"))?;
            }
        }
        Ok(out)
    }

    pub(crate) fn events_sent(&mut self, sink: &str, ids: &[String]) -> Result<(), StateError> {
        let w = self.err("write");
        let mut st = self
            .conn
            .prepare_cached(
                "UPDATE event_deliveries SET state = 'done', last_error = NULL
                 WHERE sink = ?1 AND seq = (SELECT seq FROM events WHERE id = ?2)
                   AND state <> 'done'",
            )
            .map_err(&w)?;
        for id in ids {
            st.execute(params![sink, id]).map_err(&w)?;
        }
        Ok(())
    }

    pub(crate) fn events_failed(
        &mut self,
        sink: &str,
        ids: &[String],
        error: &str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> Result<(), StateError> {
        let w = self.err("write");
        let mut st = self
            .conn
            .prepare_cached(
                "UPDATE event_deliveries
                 SET attempts = attempts + 1, last_error = ?3, next_attempt_at_ms = ?4,
                     state = CASE WHEN ?5 THEN 'parked' ELSE state END
                 WHERE sink = ?1 AND seq = (SELECT seq FROM events WHERE id = ?2)
                   AND state <> 'done'",
            )
            .map_err(&w)?;
        for id in ids {
            st.execute(params![sink, id, error, ms(next_attempt_at_ms), park])
                .map_err(&w)?;
        }
        Ok(())
    }

    pub(crate) fn sink_health(&mut self, sink: &str) -> Result<SinkHealth, StateError> {
        let found = self
            .conn
            .prepare_cached("SELECT failing, episode FROM sink_health WHERE sink = ?1")
            .and_then(|mut st| {
                st.query_row([sink], |r| {
                    Ok(SinkHealth {
                        failing: r.get(0)?,
                        episode: u64_at(r, 1)?,
                    })
                })
                .optional()
            })
            .map_err(self.err("read"))?;
        Ok(found.unwrap_or_default())
    }

    pub(crate) fn set_sink_health(
        &mut self,
        sink: &str,
        health: SinkHealth,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO sink_health (sink, failing, episode) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sink) DO UPDATE SET
                   failing = excluded.failing, episode = excluded.episode",
            )
            .and_then(|mut st| st.execute(params![sink, health.failing, ms(health.episode)]))
            .map_err(self.err("write"))?;
        Ok(())
    }

    /// A deployment-wide fact, kept in `meta` under `fact:{name}`.
    pub(crate) fn fact(&mut self, name: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row([format!("fact:{name}")], |r| r.get(0))
                    .optional()
            })
            .map_err(self.err("read"))
    }

    pub(crate) fn set_fact(&mut self, name: &str, value: &str) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut st| st.execute(params![format!("fact:{name}"), value]))
            .map_err(self.err("write"))?;
        Ok(())
    }

    pub(crate) fn status(&mut self) -> Result<Vec<StatusRow>, StateError> {
        let r = self.err("read");
        let mut st = self.conn.prepare_cached(STATUS).map_err(&r)?;
        let rows = st
            .query_map([], |row| {
                Ok(StatusRow {
                    key: key_at(row, 0)?,
                    phase: phase_at(row, 4)?,
                    remote_status: row.get(5)?,
                    polls: u64_at(row, 6)?,
                    last_change_at_ms: opt_u64_at(row, 7)?,
                    next_poll_at_ms: opt_u64_at(row, 8)?,
                    removed: row.get(9)?,
                    last_error: row.get(10)?,
                    pending_deliveries: u64_at(row, 11)?,
                    parked_deliveries: u64_at(row, 12)?,
                })
            })
            .map_err(&r)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&r)
    }

    pub(crate) fn backlog(&mut self) -> Result<Vec<Backlog>, StateError> {
        let r = self.err("read");
        let mut by_sink: std::collections::BTreeMap<String, (u64, u64)> = self
            .sinks
            .iter()
            .chain(&self.event_sinks)
            .map(|s| (s.clone(), (0, 0)))
            .collect();
        let mut st = self.conn.prepare_cached(BACKLOG).map_err(&r)?;
        let rows = st
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, u64_at(row, 1)?, u64_at(row, 2)?))
            })
            .map_err(&r)?;
        for row in rows {
            let (sink, pending, parked) = row.map_err(&r)?;
            // A result sink and an event sink may share a name; their counts add up.
            let entry = by_sink.entry(sink).or_default();
            entry.0 += pending;
            entry.1 += parked;
        }
        Ok(by_sink
            .into_iter()
            .map(|(sink, (pending, parked))| Backlog {
                sink,
                pending,
                parked,
            })
            .collect())
    }
}

/// Due deliveries of one sink. `state <> 'done'` repeats the partial index's condition so that
/// SQLite can use `deliveries_open` (see `schema.rs`); `INDEXED BY` pins that plan, since without
/// statistics the planner may prefer the primary key and walk every done row of the sink.
pub(crate) const DUE_DELIVERIES: &str = "
    SELECT d.version_id, w.workspace, w.project_id, w.asset_id, w.index_id,
           v.last_analyzed_at, v.fetched_at_ms, v.rowid, d.attempts
    FROM deliveries AS d INDEXED BY deliveries_open
    JOIN versions AS v ON v.version_id = d.version_id
    JOIN watches AS w ON w.watch_id = v.watch_id
    WHERE d.sink = ?1 AND d.state = 'pending' AND d.state <> 'done'
      AND d.next_attempt_at_ms <= ?2
      -- Versions of one watch reach one sink in the order they were fetched: a newer one waits
      -- while an older one is still pending for the sink (a parked one does not hold it up).
      AND NOT EXISTS (
          SELECT 1 FROM versions AS ov
          JOIN deliveries AS od ON od.version_id = ov.version_id AND od.sink = d.sink
          WHERE ov.watch_id = v.watch_id AND od.state = 'pending'
            AND (ov.fetched_at_ms < v.fetched_at_ms
                 OR (ov.fetched_at_ms = v.fetched_at_ms AND ov.version_id < v.version_id)))
    ORDER BY d.next_attempt_at_ms, d.version_id
    LIMIT ?3";

/// Pending events of one event sink in emission order; the caller stops at the first not due.
/// Pinned to `event_deliveries_open` like [`DUE_DELIVERIES`]: the primary key `(sink, seq)` also
/// gives seq order, and the planner picks it on an unanalysed database, which would walk every
/// event ever sent to the sink before finding a pending one.
pub(crate) const DUE_EVENTS: &str = "
    SELECT q.seq, q.next_attempt_at_ms, e.id, e.body
    FROM event_deliveries AS q INDEXED BY event_deliveries_open
    JOIN events AS e ON e.seq = q.seq
    WHERE q.sink = ?1 AND q.state = 'pending' AND q.state <> 'done'
    ORDER BY q.seq
    LIMIT ?2";

/// Retention's batch of versions, oldest first: whether each is its watch's last version, and
/// how many of its delivery rows are not done before the cutoff (open, or done since).
pub(crate) const PRUNE_VERSIONS: &str = "
    SELECT v.rowid, v.version_id, v.fetched_at_ms,
           coalesce((SELECT w.last_version_id = v.version_id FROM watches AS w
                     WHERE w.watch_id = v.watch_id), 0),
           (SELECT count(*) FROM deliveries AS d
            WHERE d.version_id = v.version_id
              AND (d.state <> 'done' OR d.done_at_ms IS NULL OR d.done_at_ms >= ?2))
    FROM versions AS v
    WHERE v.rowid > ?1
    ORDER BY v.rowid
    LIMIT ?3";

/// Retention's batch of events, oldest first, with how many of their rows are still open.
pub(crate) const PRUNE_EVENTS: &str = "
    SELECT e.seq, e.type, e.watch_key, e.time_ms,
           (SELECT count(*) FROM event_deliveries AS q INDEXED BY event_deliveries_by_seq
            WHERE q.seq = e.seq AND q.state <> 'done')
    FROM events AS e
    WHERE e.seq > ?1
    ORDER BY e.seq
    LIMIT ?2";

/// Every watch with the open deliveries of its versions.
const STATUS: &str = "
    SELECT w.workspace, w.project_id, w.asset_id, w.index_id, w.phase, w.remote_status, w.polls,
           w.last_change_at_ms, w.next_poll_at_ms, w.removed, w.last_error,
           coalesce(o.pending, 0), coalesce(o.parked, 0)
    FROM watches AS w
    LEFT JOIN (
        SELECT v.watch_id AS watch_id,
               sum(d.state = 'pending') AS pending, sum(d.state = 'parked') AS parked
        FROM deliveries AS d JOIN versions AS v ON v.version_id = d.version_id
        WHERE d.state <> 'done'
        GROUP BY v.watch_id
    ) AS o ON o.watch_id = w.watch_id
    ORDER BY w.workspace, w.project_id, w.asset_id, w.index_id";

/// Open rows per sink, result and event deliveries alike.
const BACKLOG: &str = "
    SELECT sink, sum(state = 'pending'), sum(state = 'parked')
    FROM deliveries WHERE state <> 'done' GROUP BY sink
    UNION ALL
    SELECT sink, sum(state = 'pending'), sum(state = 'parked')
    FROM event_deliveries WHERE state <> 'done' GROUP BY sink";
