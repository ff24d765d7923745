//! `scenewatch ledger migrate`: copies a SQLite ledger (`{state_dir}/scenewatch.db`, daemon
//! stopped) into an empty PostgreSQL ledger, every row of every table, in one PostgreSQL
//! transaction: watches (with their ids, and their shard computed on the way), versions with
//! their stored results, deliveries, events, event deliveries, sink health and facts. Done rows
//! stay done, so the daemon started on PostgreSQL delivers nothing again, and open rows stay
//! open, so it loses nothing. The SQLite file is only read.

use std::path::Path;

use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use super::{Fail, Inner, PostgresLedger, shard_of};
use crate::domain::WatchKey;
use crate::state::{DB_FILE, SCHEMA_VERSION as SQLITE_SCHEMA_VERSION, StateError};

/// Rows copied, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Watches.
    pub watches: u64,
    /// Result versions.
    pub versions: u64,
    /// Delivery rows (one per version and sink).
    pub deliveries: u64,
    /// Events.
    pub events: u64,
    /// Event-delivery rows (one per event and event sink).
    pub event_deliveries: u64,
    /// Sink health rows.
    pub sink_health: u64,
    /// Deployment facts.
    pub facts: u64,
}

#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int,
    Bool,
}

/// One table: the SQLite query (columns in order) and the PostgreSQL columns with their types.
struct Table {
    name: &'static str,
    select: &'static str,
    columns: &'static [(&'static str, Ty)],
}

use Ty::{Bool, Int, Text};

const WATCHES: Table = Table {
    name: "watches",
    select: "SELECT watch_id, workspace, project_id, asset_id, index_id, scene_summary_id,
                    generation, phase, remote_status, polls, consecutive_errors, attempt,
                    started_at_ms, before_since_ms, next_poll_at_ms, last_analyzed_at,
                    last_version_id, last_change_at_ms, stale_version_id, last_error, removed,
                    added_at_ms, removed_at_ms, origin, route
             FROM watches ORDER BY watch_id",
    columns: &[
        ("watch_id", Int),
        ("workspace", Text),
        ("project_id", Text),
        ("asset_id", Text),
        ("index_id", Text),
        ("scene_summary_id", Text),
        ("generation", Text),
        ("phase", Text),
        ("remote_status", Text),
        ("polls", Int),
        ("consecutive_errors", Int),
        ("attempt", Int),
        ("started_at_ms", Int),
        ("before_since_ms", Int),
        ("next_poll_at_ms", Int),
        ("last_analyzed_at", Text),
        ("last_version_id", Text),
        ("last_change_at_ms", Int),
        ("stale_version_id", Text),
        ("last_error", Text),
        ("removed", Bool),
        ("added_at_ms", Int),
        ("removed_at_ms", Int),
        ("origin", Text),
        ("route", Text),
        // Not in SQLite: computed from the key on the way (see `copy`).
        ("shard", Int),
    ],
};

const TABLES: &[Table] = &[
    WATCHES,
    Table {
        name: "versions",
        // The SQLite ledger stores a result as a BLOB of its UTF-8 text (rows written before
        // that: TEXT); PostgreSQL's column is text.
        select: "SELECT rowid, version_id, watch_id, last_analyzed_at, fetched_at_ms,
                        scene_count, analyzed_scene_ids, CAST(result_json AS TEXT)
                 FROM versions ORDER BY rowid",
        columns: &[
            ("seq", Int),
            ("version_id", Text),
            ("watch_id", Int),
            ("last_analyzed_at", Text),
            ("fetched_at_ms", Int),
            ("scene_count", Int),
            ("analyzed_scene_ids", Text),
            ("result_json", Text),
        ],
    },
    Table {
        name: "deliveries",
        select: "SELECT version_id, sink, state, attempts, next_attempt_at_ms, last_error,
                        location, created_at_ms, done_at_ms
                 FROM deliveries ORDER BY version_id, sink",
        columns: &[
            ("version_id", Text),
            ("sink", Text),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at_ms", Int),
            ("last_error", Text),
            ("location", Text),
            ("created_at_ms", Int),
            ("done_at_ms", Int),
        ],
    },
    Table {
        name: "events",
        select: "SELECT seq, id, type, watch_key, time_ms, body FROM events ORDER BY seq",
        columns: &[
            ("seq", Int),
            ("id", Text),
            ("type", Text),
            ("watch_key", Text),
            ("time_ms", Int),
            ("body", Text),
        ],
    },
    Table {
        name: "event_deliveries",
        select: "SELECT sink, seq, state, attempts, next_attempt_at_ms, last_error
                 FROM event_deliveries ORDER BY seq, sink",
        columns: &[
            ("sink", Text),
            ("seq", Int),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at_ms", Int),
            ("last_error", Text),
        ],
    },
    Table {
        name: "sink_health",
        select: "SELECT sink, failing, episode FROM sink_health ORDER BY sink",
        columns: &[("sink", Text), ("failing", Bool), ("episode", Int)],
    },
    Table {
        name: "meta",
        // The facts only: created_by, written_by and the probe row belong to each ledger.
        select: "SELECT key, value FROM meta WHERE key LIKE 'fact:%' ORDER BY key",
        columns: &[("key", Text), ("value", Text)],
    },
];

/// Rows per INSERT.
const BATCH: usize = 2_000;

/// One column of a batch, typed for PostgreSQL.
enum Col {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

impl Col {
    fn new(ty: Ty) -> Col {
        match ty {
            Text => Col::Text(Vec::new()),
            Int => Col::Int(Vec::new()),
            Bool => Col::Bool(Vec::new()),
        }
    }

    fn push(&mut self, v: Value, table: &str, column: &str) -> Result<(), String> {
        let bad = |what: &str| format!("{table}.{column} holds {what}");
        match (self, v) {
            (Col::Text(c), Value::Null) => c.push(None),
            (Col::Int(c), Value::Null) => c.push(None),
            (Col::Bool(c), Value::Null) => c.push(None),
            (Col::Text(c), Value::Text(s)) => c.push(Some(s)),
            (Col::Int(c), Value::Integer(n)) => c.push(Some(n)),
            (Col::Bool(c), Value::Integer(n)) => c.push(Some(n != 0)),
            (_, Value::Real(_)) => return Err(bad("a real number")),
            (_, Value::Blob(_)) => return Err(bad("a blob")),
            (_, _) => return Err(bad("a value of another type")),
        }
        Ok(())
    }

    fn clear(&mut self) {
        match self {
            Col::Text(c) => c.clear(),
            Col::Int(c) => c.clear(),
            Col::Bool(c) => c.clear(),
        }
    }

    fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Col::Text(c) => c,
            Col::Int(c) => c,
            Col::Bool(c) => c,
        }
    }
}

fn pg_type(ty: Ty) -> &'static str {
    match ty {
        Text => "text[]",
        Int => "int8[]",
        Bool => "bool[]",
    }
}

/// Reads every row of `state_dir`'s SQLite ledger. The caller holds the state directory's lock,
/// so no daemon writes it meanwhile; the file is opened read-only.
fn read_sqlite(state_dir: &Path) -> Result<Vec<Vec<Vec<Value>>>, StateError> {
    let path = state_dir.join(DB_FILE);
    let io = |detail: String| StateError::Io {
        path: path.clone(),
        op: "read",
        detail,
        source: None,
    };
    if !path.is_file() {
        return Err(io(
            "no such file: there is no SQLite ledger to migrate in this state_dir".into(),
        ));
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| crate::state::sqlite::sql_error(&path, "open", e))?;
    match crate::state::sqlite::schema::preflight(&conn, &path)? {
        crate::state::sqlite::schema::Found::Ledger(SQLITE_SCHEMA_VERSION) => {}
        crate::state::sqlite::schema::Found::Fresh => {
            return Err(io("the file holds no ledger".into()));
        }
        crate::state::sqlite::schema::Found::Ledger(v) => {
            return Err(io(format!(
                "it has schema {v} of an older scenewatch; start this scenewatch once with \
                 backend = \"sqlite\" to migrate it to schema {SQLITE_SCHEMA_VERSION}, stop it, \
                 then migrate"
            )));
        }
    }
    crate::state::sqlite::schema::quick_check(&conn, &path)?;
    // One read transaction: a consistent snapshot of every table.
    conn.execute_batch("BEGIN")
        .map_err(|e| crate::state::sqlite::sql_error(&path, "read", e))?;
    let mut out = Vec::new();
    for t in TABLES {
        let mut st = conn
            .prepare(t.select)
            .map_err(|e| crate::state::sqlite::sql_error(&path, "read", e))?;
        let n = st.column_count();
        let rows = st
            .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .and_then(|rows| rows.collect::<Result<Vec<Vec<Value>>, _>>())
            .map_err(|e| crate::state::sqlite::sql_error(&path, "read", e))?;
        out.push(rows);
    }
    let _ = conn.execute_batch("COMMIT");
    Ok(out)
}

/// What [`copy`] found in the way.
#[derive(Debug)]
pub enum Refusal {
    /// A daemon holds the target ledger.
    DaemonRunning,
    /// The target already holds rows (table, count).
    NotEmpty(Vec<(&'static str, u64)>),
}

/// Copies the SQLite ledger of `state_dir` into `target`, which must be empty and not held by a
/// daemon. Everything commits in one transaction, or nothing does.
pub async fn copy(
    state_dir: &Path,
    target: &PostgresLedger,
) -> Result<Result<Copied, Refusal>, StateError> {
    if target.held_by_a_daemon().await? {
        return Ok(Err(Refusal::DaemonRunning));
    }
    let source = tokio::task::spawn_blocking({
        let dir = state_dir.to_path_buf();
        move || read_sqlite(&dir)
    })
    .await
    .map_err(|e| StateError::Io {
        path: state_dir.join(DB_FILE),
        op: "read",
        detail: format!("the reading task failed: {e}"),
        source: None,
    })??;
    target
        .inner
        .run("copy into", true, async move |i, c| {
            let tx = c.transaction().await?;
            // The daemon's lock, for the copy: a daemon started on the target meanwhile is
            // refused (its try-lock fails) instead of reading a half-copied ledger.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&crate::pg::lock_key("scenewatch ledger owner", &i.schema)],
            )
            .await?;
            let mut found = Vec::new();
            for t in TABLES {
                let n: i64 = tx
                    .query_one(
                        &i.sql(&format!(
                            "SELECT count(*) FROM {{s}}.{}{}",
                            t.name,
                            if t.name == "meta" {
                                " WHERE key LIKE 'fact:%'"
                            } else {
                                ""
                            }
                        )),
                        &[],
                    )
                    .await?
                    .get(0);
                if n > 0 {
                    found.push((t.name, n as u64));
                }
            }
            if !found.is_empty() {
                return Ok(Err(Refusal::NotEmpty(found)));
            }
            let mut counts = Vec::new();
            for (t, rows) in TABLES.iter().zip(source) {
                counts.push(insert_table(i, &tx, t, rows).await?);
            }
            // Identity columns go on after the copied ids.
            for (table, column) in [
                ("watches", "watch_id"),
                ("versions", "seq"),
                ("events", "seq"),
            ] {
                tx.execute(
                    &i.sql(&format!(
                        "SELECT setval(pg_get_serial_sequence('{{s}}.{table}', '{column}'),
                                       coalesce((SELECT max({column}) FROM {{s}}.{table}), 0) + 1,
                                       false)"
                    )),
                    &[],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(Copied {
                watches: counts[0],
                versions: counts[1],
                deliveries: counts[2],
                events: counts[3],
                event_deliveries: counts[4],
                sink_health: counts[5],
                facts: counts[6],
            }))
        })
        .await
}

async fn insert_table(
    i: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Table,
    rows: Vec<Vec<Value>>,
) -> Result<u64, Fail> {
    let names: Vec<&str> = t.columns.iter().map(|(n, _)| *n).collect();
    let params: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(n, (_, ty))| format!("${}::{}", n + 1, pg_type(*ty)))
        .collect();
    let sql = i.sql(&format!(
        "INSERT INTO {{s}}.{} ({}) SELECT * FROM unnest({})",
        t.name,
        names.join(", "),
        params.join(", ")
    ));
    let st = tx.prepare(&sql).await?;
    let mut cols: Vec<Col> = t.columns.iter().map(|(_, ty)| Col::new(*ty)).collect();
    let mut copied = 0;
    let total = rows.len();
    let mut in_batch = 0;
    for (n, row) in rows.into_iter().enumerate() {
        let shard = if t.name == WATCHES.name {
            let text = |k: usize| match &row[k] {
                Value::Text(s) => s.clone(),
                _ => String::new(),
            };
            let key = WatchKey::new(text(1), text(2), text(3), text(4))
                .map_err(|e| Fail::Bad(format!("watches: a stored watch key: {e}")))?;
            Some(i64::from(shard_of(&key)))
        } else {
            None
        };
        for (k, v) in row.into_iter().enumerate() {
            cols[k].push(v, t.name, t.columns[k].0).map_err(Fail::Bad)?;
        }
        if let (Some(s), Some(Col::Int(c))) = (shard, cols.last_mut()) {
            c.push(Some(s));
        }
        in_batch += 1;
        if in_batch == BATCH || n + 1 == total {
            let p: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Col::as_param).collect();
            copied += tx.execute(&st, &p).await?;
            cols.iter_mut().for_each(Col::clear);
            in_batch = 0;
        }
    }
    Ok(copied)
}
