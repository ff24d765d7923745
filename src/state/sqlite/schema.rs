//! The ledger's SQLite schema, its migrations, and the checks run before anything is written.
//!
//! # Identification and version
//!
//! A scenewatch database carries `PRAGMA application_id = 0x53635774` ("ScWt") and
//! `PRAGMA user_version = <schema version>`, both set by the migration transaction. On open:
//!
//! - a file SQLite cannot read, or a SQLite file with another application id, or with tables but
//!   no id, is refused as "not a scenewatch state database" (and never written to);
//! - a schema newer than [`SCHEMA_VERSION`] is refused, naming both versions;
//! - an older one is migrated: `MIGRATIONS[from..]` run in order inside one `BEGIN IMMEDIATE`
//!   transaction that also sets `user_version`, so a crash mid-migration leaves the old schema.
//!
//! These checks only read, and they run before `journal_mode=WAL` is set (switching the journal
//! mode rewrites the file header), so a refused file stays byte for byte as it was.
//!
//! # Tables (schema 3)
//!
//! ```text
//! meta             key TEXT PK, value TEXT            -- created_by, written_by (crate versions),
//!                                                     probe (the readiness probe's scratch row)
//! watches          watch_id INTEGER PK, (workspace, project_id, asset_id, index_id) UNIQUE,
//!                  scene_summary_id, generation, phase, remote_status, polls,
//!                  consecutive_errors, attempt, started_at_ms, before_since_ms, next_poll_at_ms,
//!                  last_analyzed_at, last_version_id, last_change_at_ms, stale_version_id,
//!                  last_error, removed (0/1), added_at_ms, removed_at_ms (when it was last
//!                  flagged removed; for a future retention of long-removed watches),
//!                  origin (schema 2: the `[[watch]]` selector that found it, NULL if
//!                  configured), route (schema 2: which calls it uses, NULL until decided)
//! versions         version_id TEXT PK, watch_id, last_analyzed_at, fetched_at_ms, scene_count,
//!                  analyzed_scene_ids (JSON array or NULL), result_json (the API's `result`,
//!                  byte for byte: a BLOB of its UTF-8 text, written in place by incremental
//!                  I/O; TEXT in rows written before; `CAST(result_json AS TEXT)` reads both)
//! deliveries       (version_id, sink) PK WITHOUT ROWID, state pending|done|parked, attempts,
//!                  next_attempt_at_ms, last_error, location, created_at_ms, done_at_ms
//! events           seq INTEGER PK AUTOINCREMENT, id TEXT UNIQUE, type, watch_key, time_ms,
//!                  body (the CloudEvent JSON)
//! event_deliveries (sink, seq) PK WITHOUT ROWID, state pending|done|parked, attempts,
//!                  next_attempt_at_ms, last_error
//! sink_health      sink TEXT PK, failing (0/1), episode
//! ```
//!
//! Times are milliseconds since the Unix epoch. Watches are never deleted (removed ones are
//! flagged). Versions with their delivery rows, and events with theirs, are deleted by retention
//! (`state.retention`, [`crate::state::Ledger::prune`]) once they are done, older than the
//! retention and no longer what recognises a replayed fact: a watch's last version and the
//! events of its current cycle stay, and so do `watch.discovered` and `watch.superseded`.
//!
//! # Indexes, and the queries that need them
//!
//! Done rows outnumber open ones by far (100,000 watches, many versions each), so the hot
//! queries go through *partial* indexes over open rows only (`state <> 'done'`). SQLite uses a
//! partial index only when the query repeats its `WHERE` term literally, which is why the queries
//! in `store.rs` say `state = 'pending' AND state <> 'done'`.
//!
//! - `deliveries_open (sink, state, next_attempt_at_ms) WHERE state <> 'done'`: the per-second
//!   due query of each sink (equality on sink and state, range and order on the due time), the
//!   backlog counts (covering), and the per-watch open counts of `status`.
//! - `event_deliveries_open (sink, state, seq) WHERE state <> 'done'`: due events in emission
//!   order, and their backlog counts.
//! - `versions_by_watch (watch_id)`: versions of a watch.
//! - `event_deliveries_by_seq (seq)` (schema 3): retention's check that an event is sent to
//!   every event sink, and the deletion of its rows.
//! - retention walks `versions` by rowid and `events` by `seq` (insertion order, so oldest
//!   first), a bounded batch per transaction.
//! - the primary keys serve `delivery_succeeded` / `delivery_failed` (by version and sink) and the
//!   unique `events.id` serves `events_sent` / `events_failed` and INSERT OR IGNORE by id.
//!
//! `tests.rs` checks with `EXPLAIN QUERY PLAN` that the due queries use these indexes.
//!
//! No foreign keys: rows are only written by this module, always inside one transaction per
//! step, and enforcing them would cost an index probe per insert on the hottest path.

use std::path::Path;

use rusqlite::Connection;

use super::{SCHEMA_VERSION, StateError, sql_error};

/// `PRAGMA application_id` of a scenewatch ledger: "ScWt".
pub const APPLICATION_ID: i32 = 0x5363_5774;

/// Schema 1: the first schema.
const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE watches (
    watch_id           INTEGER PRIMARY KEY,
    workspace          TEXT NOT NULL,
    project_id         TEXT NOT NULL,
    asset_id           TEXT NOT NULL,
    index_id           TEXT NOT NULL,
    scene_summary_id   TEXT,
    generation         TEXT,
    phase              TEXT NOT NULL,
    remote_status      TEXT,
    polls              INTEGER NOT NULL DEFAULT 0,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    attempt            INTEGER NOT NULL DEFAULT 0,
    started_at_ms      INTEGER,
    before_since_ms    INTEGER,
    next_poll_at_ms    INTEGER,
    last_analyzed_at   TEXT,
    last_version_id    TEXT,
    last_change_at_ms  INTEGER,
    stale_version_id   TEXT,
    last_error         TEXT,
    removed            INTEGER NOT NULL DEFAULT 0,
    added_at_ms        INTEGER,
    removed_at_ms      INTEGER,
    UNIQUE (workspace, project_id, asset_id, index_id)
);

CREATE TABLE versions (
    version_id         TEXT PRIMARY KEY,
    watch_id           INTEGER NOT NULL,
    last_analyzed_at   TEXT NOT NULL,
    fetched_at_ms      INTEGER NOT NULL,
    scene_count        INTEGER NOT NULL,
    analyzed_scene_ids TEXT,
    result_json        TEXT NOT NULL
);
CREATE INDEX versions_by_watch ON versions (watch_id);

CREATE TABLE deliveries (
    version_id         TEXT NOT NULL,
    sink               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'done', 'parked')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    location           TEXT,
    created_at_ms      INTEGER NOT NULL,
    done_at_ms         INTEGER,
    PRIMARY KEY (version_id, sink)
) WITHOUT ROWID;
CREATE INDEX deliveries_open ON deliveries (sink, state, next_attempt_at_ms)
    WHERE state <> 'done';

CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    type      TEXT NOT NULL,
    watch_key TEXT,
    time_ms   INTEGER NOT NULL,
    body      TEXT NOT NULL
);

CREATE TABLE event_deliveries (
    sink               TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'done', 'parked')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    last_error         TEXT,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE INDEX event_deliveries_open ON event_deliveries (sink, state, seq)
    WHERE state <> 'done';

CREATE TABLE sink_health (
    sink    TEXT PRIMARY KEY,
    failing INTEGER NOT NULL,
    episode INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema 2: watches found through a `[[watch]]` without an index (an asset's latest index, a
/// whole project) remember which one found them (`origin`, NULL for configured watches), and
/// every watch remembers which calls it uses (`route`, NULL until first decided).
const V2: &str = "
ALTER TABLE watches ADD COLUMN origin TEXT;
ALTER TABLE watches ADD COLUMN route TEXT;
";

/// Schema 3: retention (`state.retention`) deletes an event's delivery rows by `seq`, and checks
/// that none is open; the primary key `(sink, seq)` cannot serve that without a scan per event.
const V3: &str = "
CREATE INDEX event_deliveries_by_seq ON event_deliveries (seq);
";

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: a released entry is
/// never edited, since databases in the field were built by it.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// What the read-only pre-flight found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// An empty file or no file: a new ledger.
    Fresh,
    /// A scenewatch ledger at this schema version (at most [`SCHEMA_VERSION`]).
    Ledger(u32),
}

/// Identifies the file without writing to it: refuses foreign, damaged and newer databases.
pub fn preflight(conn: &Connection, path: &Path) -> Result<Found, StateError> {
    // Reading the header is the first access to the file; a non-SQLite file fails here with
    // SQLITE_NOTADB, which `sql_error` turns into the "not a scenewatch state database" refusal.
    let read = |sql: &str| -> Result<i64, StateError> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(|e| sql_error(path, "read", e))
    };
    let app_id = read("PRAGMA application_id")?;
    let version = read("PRAGMA user_version")?;
    let tables = read("SELECT count(*) FROM sqlite_master")?;
    if app_id != i64::from(APPLICATION_ID) {
        if app_id == 0 && version == 0 && tables == 0 {
            return Ok(Found::Fresh);
        }
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "it is a SQLite database of another application (application_id {app_id}, \
                 {tables} schema objects)"
            ),
            source: None,
        });
    }
    let found = u32::try_from(version).map_err(|_| StateError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("its schema version {version} is not a valid version"),
        source: None,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Found::Ledger(found))
}

/// `PRAGMA quick_check`: an O(N) scan of every page's structure, without the slower index-content
/// cross-check of `integrity_check`, so a 100,000-watch ledger still opens in well under a second.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let mut problems = Vec::new();
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| sql_error(path, "check", e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| sql_error(path, "check", e))?;
    for row in rows {
        let line = row.map_err(|e| sql_error(path, "check", e))?;
        if line != "ok" {
            problems.push(line);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("integrity check failed: {}", problems.join("; ")),
            source: None,
        })
    }
}

/// Brings the schema from `from` to [`SCHEMA_VERSION`] in one transaction. `from` comes from the
/// pre-flight; it is read again under the write lock in case another process migrated meanwhile.
pub fn migrate(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let fail = |e: rusqlite::Error| sql_error(path, "migrate", e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    let result = (|| -> Result<(), StateError> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(fail)?;
        let from = usize::try_from(version).unwrap_or(usize::MAX);
        if from > MIGRATIONS.len() {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION,
            });
        }
        for sql in &MIGRATIONS[from..] {
            conn.execute_batch(sql).map_err(fail)?;
        }
        // Both pragmas are part of the database header, so they commit (or not) with the
        // migration itself.
        conn.execute_batch(&format!(
            "PRAGMA user_version = {SCHEMA_VERSION}; PRAGMA application_id = {APPLICATION_ID};"
        ))
        .map_err(fail)?;
        let crate_version = env!("CARGO_PKG_VERSION");
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', ?1)",
            [crate_version],
        )
        .map_err(fail)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('written_by', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [crate_version],
        )
        .map_err(fail)?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(fail),
        Err(e) => {
            // Best effort: the error that matters is `e`; SQLite may have rolled back already.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}
