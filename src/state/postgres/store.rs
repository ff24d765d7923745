//! The SQL of each PostgreSQL ledger operation, one transaction each (or one statement, which
//! is its own transaction). The queries are the SQLite ledger's (`src/state/sqlite/store.rs`),
//! in PostgreSQL's dialect; sets of rows travel as arrays (`unnest`) so that a sync of 100,000
//! watches is a handful of statements, not 100,000 round trips.

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::leases::{EVENT_SHARD, fence};
use super::{Fail, Inner, shard_of};
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::ncp::RemoteStatus;
use crate::state::{
    Backlog, PendingDelivery, Pruned, SinkHealth, StatusRow, StepCommit, WatchRecord,
};
use crate::watch::{Phase, Route, WatchState};

/// Milliseconds as stored. Saturates: no real timestamp reaches `i64::MAX` ms.
pub(crate) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn u64_of(v: i64, what: &str) -> Result<u64, Fail> {
    u64::try_from(v).map_err(|_| Fail::Bad(format!("{what} is {v}")))
}

fn opt_u64_of(v: Option<i64>, what: &str) -> Result<Option<u64>, Fail> {
    v.map(|v| u64_of(v, what)).transpose()
}

fn u32_of(v: i64, what: &str) -> Result<u32, Fail> {
    u32::try_from(v).map_err(|_| Fail::Bad(format!("{what} is {v}")))
}

fn key_at(row: &Row, first: usize) -> Result<WatchKey, Fail> {
    WatchKey::new(
        row.try_get::<_, String>(first)?,
        row.try_get::<_, String>(first + 1)?,
        row.try_get::<_, String>(first + 2)?,
        row.try_get::<_, String>(first + 3)?,
    )
    .map_err(|e| Fail::Bad(format!("stored watch key: {e}")))
}

fn phase_at(row: &Row, col: usize) -> Result<Phase, Fail> {
    let s: String = row.try_get(col)?;
    Phase::parse(&s).ok_or_else(|| Fail::Bad(format!("unknown phase `{s}`")))
}

/// Columns read by [`watch_record`], in order.
const WATCH_COLUMNS: &str = "workspace, project_id, asset_id, index_id, phase, remote_status, \
     polls, consecutive_errors, started_at_ms, before_since_ms, last_analyzed_at, last_error, \
     attempt, next_poll_at_ms, last_version_id, last_change_at_ms, stale_version_id, route";

fn watch_record(row: &Row) -> Result<WatchRecord, Fail> {
    let remote: Option<String> = row.try_get(5)?;
    let started = opt_u64_of(row.try_get(8)?, "started_at_ms")?;
    let before = opt_u64_of(row.try_get(9)?, "before_since_ms")?;
    // Every field is named so that a field added to `WatchState` fails to compile here until
    // it is persisted too.
    let state = WatchState {
        phase: phase_at(row, 4)?,
        remote: remote.as_deref().map(RemoteStatus::from_wire),
        polls: u64_of(row.try_get(6)?, "polls")?,
        consecutive_errors: u32_of(row.try_get(7)?, "consecutive_errors")?,
        attempt: u32_of(row.try_get(12)?, "attempt")?,
        route: match row.try_get::<_, Option<String>>(17)? {
            None => None,
            Some(r) => {
                Some(Route::parse(&r).ok_or_else(|| Fail::Bad(format!("unknown route `{r}`")))?)
            }
        },
        started_at: started.map(Duration::from_millis),
        before_since: before.map(Duration::from_millis),
        last_version: row.try_get(10)?,
        last_error: row.try_get(11)?,
    };
    Ok(WatchRecord {
        key: key_at(row, 0)?,
        state,
        next_poll_at_ms: opt_u64_of(row.try_get(13)?, "next_poll_at_ms")?,
        last_version_id: row
            .try_get::<_, Option<String>>(14)?
            .map(VersionId::from_stored),
        last_change_at_ms: opt_u64_of(row.try_get(15)?, "last_change_at_ms")?,
        stale_version_id: row
            .try_get::<_, Option<String>>(16)?
            .map(VersionId::from_stored),
    })
}

/// Keys as four arrays, for `unnest($1::text[], $2::text[], $3::text[], $4::text[])`.
struct KeyArrays<'a> {
    ws: Vec<&'a str>,
    p: Vec<&'a str>,
    a: Vec<&'a str>,
    i: Vec<&'a str>,
}

impl<'a> KeyArrays<'a> {
    fn of(keys: impl Iterator<Item = &'a WatchKey>) -> Self {
        let mut k = KeyArrays {
            ws: Vec::new(),
            p: Vec::new(),
            a: Vec::new(),
            i: Vec::new(),
        };
        for key in keys {
            k.ws.push(key.workspace());
            k.p.push(key.project_id());
            k.a.push(key.asset_id());
            k.i.push(key.index_id());
        }
        k
    }
}

/// Inserts watches, or refreshes their settings and un-removes them (their state is kept); only
/// rows that change are written.
const UPSERT_WATCHES: &str = "
    INSERT INTO {s}.watches AS w
      (workspace, project_id, asset_id, index_id, shard, scene_summary_id, generation, phase,
       added_at_ms, origin)
    SELECT u.ws, u.p, u.a, u.i, u.shard, u.ssid, u.gen, 'pending', $9, u.origin
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[],
                $7::text[], $8::text[]) AS u(ws, p, a, i, shard, ssid, gen, origin)
    ON CONFLICT (workspace, project_id, asset_id, index_id) DO UPDATE SET
      scene_summary_id = excluded.scene_summary_id, generation = excluded.generation,
      origin = excluded.origin, removed = false, removed_at_ms = NULL
    WHERE w.removed
       OR w.scene_summary_id IS DISTINCT FROM excluded.scene_summary_id
       OR w.generation IS DISTINCT FROM excluded.generation
       OR w.origin IS DISTINCT FROM excluded.origin";

async fn upsert_watches(
    i: &Inner,
    c: &impl GenericClient,
    specs: &[&WatchSpec],
    now_ms: u64,
) -> Result<(), Fail> {
    let keys = KeyArrays::of(specs.iter().map(|s| &s.key));
    let shards: Vec<i32> = specs.iter().map(|s| shard_of(&s.key)).collect();
    let ssid: Vec<Option<&str>> = specs
        .iter()
        .map(|s| s.scene_summary_id.as_deref())
        .collect();
    let generation: Vec<&str> = specs.iter().map(|s| s.generation.as_str()).collect();
    let origin: Vec<Option<&str>> = specs.iter().map(|s| s.origin.as_deref()).collect();
    let st = c.prepare_cached(&i.sql(UPSERT_WATCHES)).await?;
    c.execute(
        &st,
        &[
            &keys.ws,
            &keys.p,
            &keys.a,
            &keys.i,
            &shards,
            &ssid,
            &generation,
            &origin,
            &ms(now_ms),
        ],
    )
    .await?;
    Ok(())
}

/// The records of `keys` that are not removed, in `keys` order.
async fn records_of(
    i: &Inner,
    c: &impl GenericClient,
    keys: &[&WatchKey],
) -> Result<Vec<WatchRecord>, Fail> {
    let k = KeyArrays::of(keys.iter().copied());
    let st = c
        .prepare_cached(&i.sql(&format!(
            "SELECT {WATCH_COLUMNS}
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                  WITH ORDINALITY AS u(ws, p, a, i, ord)
             JOIN {{s}}.watches AS w
               ON w.workspace = u.ws AND w.project_id = u.p AND w.asset_id = u.a
              AND w.index_id = u.i
             WHERE NOT w.removed
             ORDER BY u.ord"
        )))
        .await?;
    c.query(&st, &[&k.ws, &k.p, &k.a, &k.i])
        .await?
        .iter()
        .map(watch_record)
        .collect()
}

pub(super) async fn sync_watches(
    i: &Inner,
    c: &mut Object,
    specs: &[WatchSpec],
    origins: &[String],
    now_ms: u64,
) -> Result<Vec<WatchRecord>, Fail> {
    // A key listed twice (config forbids it) is taken once: one statement may not update a row
    // twice.
    let mut seen = HashSet::new();
    let specs: Vec<&WatchSpec> = specs.iter().filter(|s| seen.insert(&s.key)).collect();
    let tx = c.transaction().await?;
    upsert_watches(i, &tx, &specs, now_ms).await?;
    let keys = KeyArrays::of(specs.iter().map(|s| &s.key));
    // Configured watches not listed any more, and watches found by a selector that is not
    // configured any more: flagged removed, kept.
    let st = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.watches AS w SET removed = true, removed_at_ms = $5
             WHERE NOT w.removed AND w.origin IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                        AS u(ws, p, a, i)
                   WHERE u.ws = w.workspace AND u.p = w.project_id AND u.a = w.asset_id
                     AND u.i = w.index_id)",
        ))
        .await?;
    tx.execute(&st, &[&keys.ws, &keys.p, &keys.a, &keys.i, &ms(now_ms)])
        .await?;
    let st = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.watches SET removed = true, removed_at_ms = $2
             WHERE NOT removed AND origin IS NOT NULL AND NOT (origin = ANY($1::text[]))",
        ))
        .await?;
    tx.execute(&st, &[&origins, &ms(now_ms)]).await?;
    let keys: Vec<&WatchKey> = specs.iter().map(|s| &s.key).collect();
    let records = records_of(i, &tx, &keys).await?;
    tx.commit().await?;
    Ok(records)
}

pub(super) async fn add_watch(
    i: &Inner,
    c: &mut Object,
    spec: &WatchSpec,
    now_ms: u64,
) -> Result<WatchRecord, Fail> {
    let tx = c.transaction().await?;
    upsert_watches(i, &tx, &[spec], now_ms).await?;
    let st = tx
        .prepare_cached(&i.sql(&format!(
            "SELECT {WATCH_COLUMNS} FROM {{s}}.watches
             WHERE workspace = $1 AND project_id = $2 AND asset_id = $3 AND index_id = $4"
        )))
        .await?;
    let [w, p, a, x] = spec.key.parts();
    let row = tx.query_one(&st, &[&w, &p, &a, &x]).await?;
    let record = watch_record(&row)?;
    tx.commit().await?;
    Ok(record)
}

pub(super) async fn remove_watches(
    i: &Inner,
    c: &mut Object,
    keys: &[WatchKey],
    now_ms: u64,
) -> Result<(), Fail> {
    let k = KeyArrays::of(keys.iter());
    let st = c
        .prepare_cached(&i.sql(
            "UPDATE {s}.watches AS w SET removed = true, removed_at_ms = $5
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(ws, p, a, i)
             WHERE u.ws = w.workspace AND u.p = w.project_id AND u.a = w.asset_id
               AND u.i = w.index_id AND NOT w.removed",
        ))
        .await?;
    c.execute(&st, &[&k.ws, &k.p, &k.a, &k.i, &ms(now_ms)])
        .await?;
    Ok(())
}

/// The records (not removed) of the watches in `shards`, in insertion order: what a replica
/// loads for shards it has just claimed.
pub(super) async fn records_in_shards(
    i: &Inner,
    c: &mut Object,
    shards: &[i32],
    after_id: i64,
) -> Result<Vec<super::ShardWatch>, Fail> {
    let st = c
        .prepare_cached(&i.sql(&format!(
            "SELECT {WATCH_COLUMNS}, origin, watch_id FROM {{s}}.watches
             WHERE NOT removed AND shard = ANY($1::int4[]) AND watch_id > $2
             ORDER BY watch_id"
        )))
        .await?;
    c.query(&st, &[&shards, &after_id])
        .await?
        .iter()
        .map(|row| {
            Ok(super::ShardWatch {
                origin: row.try_get(18)?,
                watch_id: row.try_get(19)?,
                record: watch_record(row)?,
            })
        })
        .collect()
}

pub(super) async fn discovered(
    i: &Inner,
    c: &mut Object,
) -> Result<Vec<(String, WatchRecord)>, Fail> {
    let st = c
        .prepare_cached(&i.sql(&format!(
            "SELECT {WATCH_COLUMNS}, origin FROM {{s}}.watches
             WHERE NOT removed AND origin IS NOT NULL
             ORDER BY workspace COLLATE \"C\", project_id COLLATE \"C\",
                      asset_id COLLATE \"C\", index_id COLLATE \"C\""
        )))
        .await?;
    c.query(&st, &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<_, String>(18)?, watch_record(row)?)))
        .collect()
}

pub(super) async fn reset_watches(
    i: &Inner,
    c: &mut Object,
    keys: &[WatchKey],
    now_ms: u64,
) -> Result<Vec<WatchKey>, Fail> {
    let k = KeyArrays::of(keys.iter());
    let st = c
        .prepare_cached(&i.sql(
            "WITH r AS (
                 UPDATE {s}.watches AS w SET phase = 'pending', remote_status = NULL,
                   consecutive_errors = 0, attempt = 0, started_at_ms = NULL,
                   before_since_ms = NULL, last_error = NULL, next_poll_at_ms = $5,
                   last_change_at_ms = $5
                 WHERE w.phase IN ('failed', 'canceled', 'not_requested', 'timed_out',
                                   'rejected', 'superseded')
                   AND NOT w.removed
                   AND (cardinality($1::text[]) = 0 OR EXISTS (
                        SELECT 1 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                             AS u(ws, p, a, i)
                        WHERE u.ws = w.workspace AND u.p = w.project_id
                          AND u.a = w.asset_id AND u.i = w.index_id))
                 RETURNING watch_id, workspace, project_id, asset_id, index_id)
             SELECT workspace, project_id, asset_id, index_id FROM r ORDER BY watch_id",
        ))
        .await?;
    c.query(&st, &[&k.ws, &k.p, &k.a, &k.i, &ms(now_ms)])
        .await?
        .iter()
        .map(|r| key_at(r, 0))
        .collect()
}

pub(super) async fn unpark(
    i: &Inner,
    c: &mut Object,
    sink: Option<&str>,
    now_ms: u64,
) -> Result<u64, Fail> {
    let tx = c.transaction().await?;
    let mut n = 0;
    for table in ["deliveries", "event_deliveries"] {
        let st = tx
            .prepare_cached(&i.sql(&format!(
                "UPDATE {{s}}.{table} SET state = 'pending', next_attempt_at_ms = $1
                 WHERE state = 'parked' AND ($2::text IS NULL OR sink = $2)"
            )))
            .await?;
        n += tx.execute(&st, &[&ms(now_ms), &sink]).await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The watch row of a step: an upsert, so a step for a watch that was never synced still
/// records its state.
const UPSERT_STEP: &str = "
    INSERT INTO {s}.watches AS w
      (workspace, project_id, asset_id, index_id, shard, phase, remote_status, polls,
       consecutive_errors, started_at_ms, before_since_ms, last_analyzed_at, last_error,
       attempt, next_poll_at_ms, last_version_id, last_change_at_ms, stale_version_id, route)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
    ON CONFLICT (workspace, project_id, asset_id, index_id) DO UPDATE SET
      phase = excluded.phase, remote_status = excluded.remote_status, polls = excluded.polls,
      consecutive_errors = excluded.consecutive_errors, started_at_ms = excluded.started_at_ms,
      before_since_ms = excluded.before_since_ms, last_analyzed_at = excluded.last_analyzed_at,
      last_error = excluded.last_error, attempt = excluded.attempt,
      next_poll_at_ms = excluded.next_poll_at_ms, last_version_id = excluded.last_version_id,
      last_change_at_ms = excluded.last_change_at_ms,
      stale_version_id = excluded.stale_version_id, route = excluded.route
    RETURNING watch_id";

pub(super) async fn commit_step(i: &Inner, c: &mut Object, s: &StepCommit) -> Result<(), Fail> {
    let (sinks, _) = i.sinks();
    let r = &s.record;
    let st = &r.state;
    let k = &r.key;
    let upsert = c.prepare_cached(&i.sql(UPSERT_STEP)).await?;
    let tx = c.transaction().await?;
    // Before anything is written: a replica that lost the shard writes nothing.
    fence(i, &tx, shard_of(k)).await?;
    let params: [&(dyn ToSql + Sync); 19] = [
        &k.workspace(),
        &k.project_id(),
        &k.asset_id(),
        &k.index_id(),
        &shard_of(k),
        &st.phase.as_str(),
        &st.remote.as_ref().map(RemoteStatus::as_str),
        &ms(st.polls),
        &i64::from(st.consecutive_errors),
        &st.started_at.map(duration_ms),
        &st.before_since.map(duration_ms),
        &st.last_version,
        &st.last_error,
        &i64::from(st.attempt),
        &r.next_poll_at_ms.map(ms),
        &r.last_version_id.as_deref(),
        &r.last_change_at_ms.map(ms),
        &r.stale_version_id.as_deref(),
        &st.route.map(Route::as_str),
    ];
    let watch_id: i64 = tx.query_one(&upsert, &params).await?.try_get(0)?;
    if let Some(v) = &s.new_version {
        let watch_id = if v.key == *k {
            watch_id
        } else {
            let [w, p, a, x] = v.key.parts();
            let st = tx
                .prepare_cached(&i.sql(
                    "SELECT watch_id FROM {s}.watches
                     WHERE workspace = $1 AND project_id = $2 AND asset_id = $3 AND index_id = $4",
                ))
                .await?;
            match tx.query_opt(&st, &[&w, &p, &a, &x]).await? {
                Some(row) => row.try_get(0)?,
                None => {
                    return Err(Fail::State(crate::state::StateError::Postgres {
                        at: i.at.clone(),
                        op: "record a version in",
                        detail: format!(
                            "version {} is for watch {}, which the ledger does not hold",
                            v.version_id, v.key
                        ),
                        source: None,
                    }));
                }
            }
        };
        let ids = match &v.analyzed_scene_ids {
            Some(ids) => Some(serde_json::to_string(ids).map_err(|e| Fail::Bad(e.to_string()))?),
            None => None,
        };
        let insert = tx
            .prepare_cached(&i.sql(
                "INSERT INTO {s}.versions
                   (version_id, watch_id, last_analyzed_at, fetched_at_ms, scene_count,
                    analyzed_scene_ids, result_json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (version_id) DO NOTHING",
            ))
            .await?;
        tx.execute(
            &insert,
            &[
                &v.version_id.as_str(),
                &watch_id,
                &v.last_analyzed_at,
                &ms(v.fetched_at_ms),
                &ms(v.scene_count),
                &ids,
                &v.result_json,
            ],
        )
        .await?;
        // DO NOTHING: a version fetched again keeps its rows (a done delivery stays done); a
        // sink added since gets its row.
        let queue = tx
            .prepare_cached(&i.sql(
                "INSERT INTO {s}.deliveries
                   (version_id, sink, state, attempts, next_attempt_at_ms, created_at_ms)
                 SELECT $1, s, 'pending', 0, $3, $3 FROM unnest($2::text[]) AS s
                 ON CONFLICT (version_id, sink) DO NOTHING",
            ))
            .await?;
        tx.execute(
            &queue,
            &[&v.version_id.as_str(), &sinks, &ms(v.fetched_at_ms)],
        )
        .await?;
    }
    insert_events(i, &tx, &s.events).await?;
    tx.commit().await?;
    Ok(())
}

/// Events, kept once per id; only new ones are queued, one row per event sink, in one
/// statement (emission order is the order of `events`).
pub(super) async fn insert_events(
    i: &Inner,
    c: &impl GenericClient,
    events: &[Event],
) -> Result<(), Fail> {
    if events.is_empty() {
        return Ok(());
    }
    let (_, event_sinks) = i.sinks();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let watch: Vec<Option<&str>> = events.iter().map(|e| e.watch.as_deref()).collect();
    let times: Vec<i64> = events.iter().map(|e| ms(e.time_ms)).collect();
    let bodies: Vec<String> = events
        .iter()
        .map(|e| e.to_cloudevent().to_string())
        .collect();
    let st = c
        .prepare_cached(&i.sql(
            "WITH new AS (
                 INSERT INTO {s}.events (id, type, watch_key, time_ms, body)
                 SELECT e.id, e.type, e.watch_key, e.time_ms, e.body
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
                      WITH ORDINALITY AS e(id, type, watch_key, time_ms, body, ord)
                 ORDER BY e.ord
                 ON CONFLICT (id) DO NOTHING
                 RETURNING seq, time_ms)
             INSERT INTO {s}.event_deliveries (sink, seq, state, attempts, next_attempt_at_ms)
             SELECT s, new.seq, 'pending', 0, new.time_ms
             FROM new CROSS JOIN unnest($6::text[]) AS s
             ON CONFLICT (sink, seq) DO NOTHING",
        ))
        .await?;
    c.execute(&st, &[&ids, &kinds, &watch, &times, &bodies, &event_sinks])
        .await?;
    Ok(())
}

/// Due deliveries of one sink; as in SQLite, versions of one watch reach one sink in the order
/// they were fetched. A replica (`$4`, NULL otherwise) sees only those of the shards it holds.
/// The batch ends once its results reach `$5` bytes (`DUE_RESULT_BYTES`; at least one row):
/// the window sums `octet_length`, which PostgreSQL reads off a TOASTed value's header without
/// fetching it, over the at most `$3` rows due, and the rows past the budget are never sent.
const DUE_DELIVERIES: &str = "
    SELECT version_id, workspace, project_id, asset_id, index_id,
           last_analyzed_at, fetched_at_ms, result_json, attempts
    FROM (
      SELECT due.*, coalesce(sum(octet_length(due.result_json)) OVER (
                      ORDER BY due.next_attempt_at_ms, due.version_id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before_bytes
      FROM (
    SELECT d.version_id, w.workspace, w.project_id, w.asset_id, w.index_id,
           v.last_analyzed_at, v.fetched_at_ms, v.result_json, d.attempts, d.next_attempt_at_ms
    FROM {s}.deliveries AS d
    JOIN {s}.versions AS v ON v.version_id = d.version_id
    JOIN {s}.watches AS w ON w.watch_id = v.watch_id
    WHERE d.sink = $1 AND d.state = 'pending' AND d.state <> 'done'
      AND d.next_attempt_at_ms <= $2
      AND ($4::text IS NULL OR EXISTS (
          SELECT 1 FROM {s}.shard_leases AS l
          WHERE l.shard = w.shard AND l.owner = $4 AND l.expires_at > now()))
      AND NOT EXISTS (
          SELECT 1 FROM {s}.versions AS ov
          JOIN {s}.deliveries AS od ON od.version_id = ov.version_id AND od.sink = d.sink
          WHERE ov.watch_id = v.watch_id AND od.state = 'pending'
            AND (ov.fetched_at_ms < v.fetched_at_ms
                 OR (ov.fetched_at_ms = v.fetched_at_ms AND ov.version_id < v.version_id)))
    ORDER BY d.next_attempt_at_ms, d.version_id
    LIMIT $3
      ) AS due
    ) AS budgeted
    WHERE before_bytes < $5
    ORDER BY next_attempt_at_ms, version_id";

pub(super) async fn due_deliveries(
    i: &Inner,
    c: &mut Object,
    sink: &str,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<PendingDelivery>, Fail> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let st = c.prepare_cached(&i.sql(DUE_DELIVERIES)).await?;
    let owner = i.fencing_owner();
    let budget = i64::try_from(crate::state::DUE_RESULT_BYTES).unwrap_or(i64::MAX);
    c.query(&st, &[&sink, &ms(now_ms), &limit, &owner, &budget])
        .await?
        .iter()
        .map(|row| {
            Ok(PendingDelivery {
                version_id: VersionId::from_stored(row.try_get(0)?),
                key: key_at(row, 1)?,
                last_analyzed_at: row.try_get(5)?,
                fetched_at_ms: u64_of(row.try_get(6)?, "fetched_at_ms")?,
                result_json: row.try_get(7)?,
                attempts: u32_of(row.try_get(8)?, "attempts")?,
            })
        })
        .collect()
}

pub(super) async fn delivery_succeeded(
    i: &Inner,
    c: &mut Object,
    version_id: &str,
    sink: &str,
    location: &str,
    events: &[Event],
    now_ms: u64,
) -> Result<bool, Fail> {
    let (sinks, _) = i.sinks();
    let tx = c.transaction().await?;
    fence_version(i, &tx, version_id).await?;
    // Two sinks finishing one version at once: the version row is locked first, so the second
    // sees the first one's row done and the last one releases the result and flips the phase.
    let lock = tx
        .prepare_cached(&i.sql("SELECT 1 FROM {s}.versions WHERE version_id = $1 FOR UPDATE"))
        .await?;
    tx.query_opt(&lock, &[&version_id]).await?;
    let done = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.deliveries
             SET state = 'done', location = $3, done_at_ms = $4, last_error = NULL
             WHERE version_id = $1 AND sink = $2 AND state <> 'done'",
        ))
        .await?;
    tx.execute(&done, &[&version_id, &sink, &location, &ms(now_ms)])
        .await?;
    insert_events(i, &tx, events).await?;
    // Only the sinks configured now count: rows of a sink that was removed from the
    // configuration stay (nothing is dropped) but no longer hold the watch in `completed`.
    let rows = tx
        .prepare_cached(&i.sql("SELECT sink, state FROM {s}.deliveries WHERE version_id = $1"))
        .await?;
    let rows = tx.query(&rows, &[&version_id]).await?;
    let mut current = 0;
    let mut all_done = true;
    for row in &rows {
        let s: String = row.try_get(0)?;
        if sinks.contains(&s) {
            current += 1;
            all_done &= row.try_get::<_, String>(1)? == "done";
        }
    }
    let complete = current > 0 && all_done;
    if complete {
        // Every configured sink has it: the stored result is no longer needed.
        let release = tx
            .prepare_cached(&i.sql(
                "UPDATE {s}.versions SET result_json = ''
                 WHERE version_id = $1 AND result_json <> ''",
            ))
            .await?;
        tx.execute(&release, &[&version_id]).await?;
        let flip = tx
            .prepare_cached(&i.sql(
                "UPDATE {s}.watches SET phase = 'watching'
                 WHERE watch_id = (SELECT watch_id FROM {s}.versions WHERE version_id = $1)
                   AND last_version_id = $1 AND phase = 'completed'",
            ))
            .await?;
        tx.execute(&flip, &[&version_id]).await?;
    }
    tx.commit().await?;
    Ok(complete)
}

pub(super) async fn delivery_failed(
    i: &Inner,
    c: &mut Object,
    version_id: &str,
    sink: &str,
    error: &str,
    next_attempt_at_ms: u64,
    park: bool,
) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    fence_version(i, &tx, version_id).await?;
    let st = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.deliveries
             SET attempts = attempts + 1, last_error = $3, next_attempt_at_ms = $4,
                 state = CASE WHEN $5 THEN 'parked' ELSE state END
             WHERE version_id = $1 AND sink = $2 AND state <> 'done'",
        ))
        .await?;
    tx.execute(
        &st,
        &[&version_id, &sink, &error, &ms(next_attempt_at_ms), &park],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The fencing check for the watch of a stored version (none when it is not stored: the
/// update that follows then changes nothing either).
async fn fence_version(i: &Inner, c: &impl GenericClient, version_id: &str) -> Result<(), Fail> {
    if i.fencing_owner().is_none() {
        return Ok(());
    }
    let st = c
        .prepare_cached(&i.sql(
            "SELECT w.shard FROM {s}.versions AS v JOIN {s}.watches AS w ON w.watch_id = v.watch_id
             WHERE v.version_id = $1",
        ))
        .await?;
    if let Some(row) = c.query_opt(&st, &[&version_id]).await? {
        fence(i, c, row.try_get(0)?).await?;
    }
    Ok(())
}

/// The fencing check for the watches of stored events, by id.
async fn fence_events(i: &Inner, c: &impl GenericClient, ids: &[String]) -> Result<(), Fail> {
    if i.fencing_owner().is_none() {
        return Ok(());
    }
    let st = c
        .prepare_cached(&i.sql(&format!(
            "SELECT DISTINCT {EVENT_SHARD} FROM {{s}}.events AS e WHERE e.id = ANY($1::text[])"
        )))
        .await?;
    for row in c.query(&st, &[&ids]).await? {
        fence(i, c, row.try_get(0)?).await?;
    }
    Ok(())
}

pub(super) async fn due_events(
    i: &Inner,
    c: &mut Object,
    sink: &str,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<Event>, Fail> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let st = c
        .prepare_cached(&i.sql(&format!(
            "SELECT q.seq, q.next_attempt_at_ms, e.id, e.body
             FROM {{s}}.event_deliveries AS q
             JOIN {{s}}.events AS e ON e.seq = q.seq
             WHERE q.sink = $1 AND q.state = 'pending' AND q.state <> 'done'
               AND ($3::text IS NULL OR EXISTS (
                   SELECT 1 FROM {{s}}.shard_leases AS l
                   WHERE l.shard = {EVENT_SHARD} AND l.owner = $3 AND l.expires_at > now()))
             ORDER BY q.seq
             LIMIT $2",
        )))
        .await?;
    let owner = i.fencing_owner();
    let rows = c.query(&st, &[&sink, &limit, &owner]).await?;
    let mut out = Vec::new();
    let mut undecodable: Vec<(i64, String)> = Vec::new();
    for row in &rows {
        let due = u64_of(row.try_get(1)?, "next_attempt_at_ms")?;
        // Strict emission order: the first event still in backoff holds back the rest.
        if due > now_ms {
            break;
        }
        let id: String = row.try_get(2)?;
        let body: String = row.try_get(3)?;
        match serde_json::from_str(&body)
            .ok()
            .and_then(|v| Event::from_cloudevent(&v))
        {
            Some(ev) => out.push(ev),
            None => undecodable.push((row.try_get(0)?, id)),
        }
    }
    if !undecodable.is_empty() {
        if i.read_only {
            return Err(Fail::Bad(format!(
                "stored event {} cannot be decoded",
                undecodable[0].1
            )));
        }
        let park = c
            .prepare_cached(&i.sql(
                "UPDATE {s}.event_deliveries SET state = 'parked',
                   last_error = 'the stored event cannot be decoded by this scenewatch'
                 WHERE sink = $1 AND seq = $2",
            ))
            .await?;
        for (seq, id) in &undecodable {
            tracing::error!(
                sink,
                event = %id,
                ledger = %i.at,
                "Stored event cannot be decoded; parked it so the queue goes on."
            );
            c.execute(&park, &[&sink, seq]).await?;
        }
    }
    Ok(out)
}

pub(super) async fn events_sent(
    i: &Inner,
    c: &mut Object,
    sink: &str,
    ids: &[String],
) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    fence_events(i, &tx, ids).await?;
    let st = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.event_deliveries AS q SET state = 'done', last_error = NULL
             FROM {s}.events AS e
             WHERE e.seq = q.seq AND q.sink = $1 AND e.id = ANY($2::text[])
               AND q.state <> 'done'",
        ))
        .await?;
    tx.execute(&st, &[&sink, &ids]).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn events_failed(
    i: &Inner,
    c: &mut Object,
    sink: &str,
    ids: &[String],
    error: &str,
    next_attempt_at_ms: u64,
    park: bool,
) -> Result<(), Fail> {
    let tx = c.transaction().await?;
    fence_events(i, &tx, ids).await?;
    let st = tx
        .prepare_cached(&i.sql(
            "UPDATE {s}.event_deliveries AS q
             SET attempts = q.attempts + 1, last_error = $3, next_attempt_at_ms = $4,
                 state = CASE WHEN $5 THEN 'parked' ELSE q.state END
             FROM {s}.events AS e
             WHERE e.seq = q.seq AND q.sink = $1 AND e.id = ANY($2::text[])
               AND q.state <> 'done'",
        ))
        .await?;
    tx.execute(&st, &[&sink, &ids, &error, &ms(next_attempt_at_ms), &park])
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn sink_health(i: &Inner, c: &mut Object, sink: &str) -> Result<SinkHealth, Fail> {
    let st = c
        .prepare_cached(&i.sql("SELECT failing, episode FROM {s}.sink_health WHERE sink = $1"))
        .await?;
    match c.query_opt(&st, &[&sink]).await? {
        None => Ok(SinkHealth::default()),
        Some(r) => Ok(SinkHealth {
            failing: r.try_get(0)?,
            episode: u64_of(r.try_get(1)?, "episode")?,
        }),
    }
}

pub(super) async fn set_sink_health(
    i: &Inner,
    c: &mut Object,
    sink: &str,
    health: SinkHealth,
) -> Result<(), Fail> {
    let st = c
        .prepare_cached(&i.sql(
            "INSERT INTO {s}.sink_health (sink, failing, episode) VALUES ($1, $2, $3)
             ON CONFLICT (sink) DO UPDATE SET
               failing = excluded.failing, episode = excluded.episode",
        ))
        .await?;
    c.execute(&st, &[&sink, &health.failing, &ms(health.episode)])
        .await?;
    Ok(())
}

/// A deployment-wide fact, kept in `meta` under `fact:{name}`.
pub(super) async fn fact(i: &Inner, c: &mut Object, name: &str) -> Result<Option<String>, Fail> {
    let st = c
        .prepare_cached(&i.sql("SELECT value FROM {s}.meta WHERE key = $1"))
        .await?;
    Ok(match c.query_opt(&st, &[&format!("fact:{name}")]).await? {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

pub(super) async fn set_fact(
    i: &Inner,
    c: &mut Object,
    name: &str,
    value: &str,
) -> Result<(), Fail> {
    let st = c
        .prepare_cached(&i.sql(
            "INSERT INTO {s}.meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        ))
        .await?;
    c.execute(&st, &[&format!("fact:{name}"), &value]).await?;
    Ok(())
}

pub(super) async fn status(i: &Inner, c: &mut Object) -> Result<Vec<StatusRow>, Fail> {
    let st = c
        .prepare_cached(&i.sql(
            "SELECT w.workspace, w.project_id, w.asset_id, w.index_id, w.phase, w.remote_status,
                    w.polls, w.last_change_at_ms, w.next_poll_at_ms, w.removed, w.last_error,
                    coalesce(o.pending, 0), coalesce(o.parked, 0)
             FROM {s}.watches AS w
             LEFT JOIN (
                 SELECT v.watch_id AS watch_id,
                        count(*) FILTER (WHERE d.state = 'pending') AS pending,
                        count(*) FILTER (WHERE d.state = 'parked') AS parked
                 FROM {s}.deliveries AS d JOIN {s}.versions AS v ON v.version_id = d.version_id
                 WHERE d.state <> 'done'
                 GROUP BY v.watch_id
             ) AS o ON o.watch_id = w.watch_id
             ORDER BY w.workspace COLLATE \"C\", w.project_id COLLATE \"C\",
                      w.asset_id COLLATE \"C\", w.index_id COLLATE \"C\"",
        ))
        .await?;
    c.query(&st, &[])
        .await?
        .iter()
        .map(|row| {
            Ok(StatusRow {
                key: key_at(row, 0)?,
                phase: phase_at(row, 4)?,
                remote_status: row.try_get(5)?,
                polls: u64_of(row.try_get(6)?, "polls")?,
                last_change_at_ms: opt_u64_of(row.try_get(7)?, "last_change_at_ms")?,
                next_poll_at_ms: opt_u64_of(row.try_get(8)?, "next_poll_at_ms")?,
                removed: row.try_get(9)?,
                last_error: row.try_get(10)?,
                pending_deliveries: u64_of(row.try_get(11)?, "pending deliveries")?,
                parked_deliveries: u64_of(row.try_get(12)?, "parked deliveries")?,
            })
        })
        .collect()
}

pub(super) async fn backlog(i: &Inner, c: &mut Object) -> Result<Vec<Backlog>, Fail> {
    let (sinks, event_sinks) = i.sinks();
    let mut by_sink: std::collections::BTreeMap<String, (u64, u64)> = sinks
        .iter()
        .chain(&event_sinks)
        .map(|s| (s.clone(), (0, 0)))
        .collect();
    let st = c
        .prepare_cached(&i.sql(
            "SELECT sink, count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'parked')
             FROM {s}.deliveries WHERE state <> 'done' GROUP BY sink
             UNION ALL
             SELECT sink, count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'parked')
             FROM {s}.event_deliveries WHERE state <> 'done' GROUP BY sink",
        ))
        .await?;
    for row in c.query(&st, &[]).await? {
        let sink: String = row.try_get(0)?;
        let pending = u64_of(row.try_get(1)?, "pending count")?;
        let parked = u64_of(row.try_get(2)?, "parked count")?;
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

/// The position of one retention walk over `versions` and `events` (both by `seq`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PruneWalk {
    versions_after: i64,
    versions_done: bool,
    events_after: i64,
    events_done: bool,
}

/// One batch of retention (see [`crate::state::Ledger::prune`]), in one transaction; returns
/// what went and where the walk is now.
pub(super) async fn prune(
    i: &Inner,
    c: &mut Object,
    start: PruneWalk,
    before_ms: u64,
    limit: usize,
) -> Result<(Pruned, PruneWalk), Fail> {
    let limit = limit.max(1);
    let mut out = Pruned::default();
    let mut walk = start;
    let tx = c.transaction().await?;
    if !walk.versions_done {
        let (after, done) =
            prune_versions(i, &tx, walk.versions_after, before_ms, limit, &mut out).await?;
        walk.versions_after = after;
        walk.versions_done = done;
    }
    if !walk.events_done {
        let (after, done) =
            prune_events(i, &tx, walk.events_after, before_ms, limit, &mut out).await?;
        walk.events_after = after;
        walk.events_done = done;
    }
    tx.commit().await?;
    out.more = !(walk.versions_done && walk.events_done);
    // A finished walk starts again from the oldest rows next time.
    let next = if out.more { walk } else { PruneWalk::default() };
    Ok((out, next))
}

async fn prune_versions(
    i: &Inner,
    c: &impl GenericClient,
    after: i64,
    before_ms: u64,
    limit: usize,
    out: &mut Pruned,
) -> Result<(i64, bool), Fail> {
    let cutoff = ms(before_ms);
    let st = c
        .prepare_cached(&i.sql(
            "SELECT v.seq, v.version_id, v.fetched_at_ms,
                    coalesce((SELECT w.last_version_id = v.version_id FROM {s}.watches AS w
                              WHERE w.watch_id = v.watch_id), false),
                    (SELECT count(*) FROM {s}.deliveries AS d
                     WHERE d.version_id = v.version_id
                       AND (d.state <> 'done' OR d.done_at_ms IS NULL OR d.done_at_ms >= $2))
             FROM {s}.versions AS v
             WHERE v.seq > $1
             ORDER BY v.seq
             LIMIT $3",
        ))
        .await?;
    let rows = c
        .query(
            &st,
            &[&after, &cutoff, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?;
    let end_of_table = rows.len() < limit;
    let del_deliveries = c
        .prepare_cached(&i.sql("DELETE FROM {s}.deliveries WHERE version_id = $1"))
        .await?;
    let del_version = c
        .prepare_cached(&i.sql("DELETE FROM {s}.versions WHERE seq = $1"))
        .await?;
    let mut at = after;
    for row in &rows {
        let seq: i64 = row.try_get(0)?;
        let version_id: String = row.try_get(1)?;
        let fetched_at_ms: i64 = row.try_get(2)?;
        let is_last: bool = row.try_get(3)?;
        let unfinished: i64 = row.try_get(4)?;
        if fetched_at_ms >= cutoff {
            return Ok((at, true));
        }
        at = seq;
        if is_last || unfinished > 0 {
            continue;
        }
        out.deliveries += c.execute(&del_deliveries, &[&version_id]).await?;
        out.versions += c.execute(&del_version, &[&seq]).await?;
    }
    Ok((at, end_of_table))
}

async fn prune_events(
    i: &Inner,
    c: &impl GenericClient,
    after: i64,
    before_ms: u64,
    limit: usize,
    out: &mut Pruned,
) -> Result<(i64, bool), Fail> {
    let cutoff = ms(before_ms);
    let st = c
        .prepare_cached(&i.sql(
            "SELECT e.seq, e.type, e.watch_key, e.time_ms,
                    (SELECT count(*) FROM {s}.event_deliveries AS q
                     WHERE q.seq = e.seq AND q.state <> 'done')
             FROM {s}.events AS e
             WHERE e.seq > $1
             ORDER BY e.seq
             LIMIT $2",
        ))
        .await?;
    let rows = c
        .query(&st, &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)])
        .await?;
    let end_of_table = rows.len() < limit;
    let del_rows = c
        .prepare_cached(&i.sql("DELETE FROM {s}.event_deliveries WHERE seq = $1"))
        .await?;
    let del_event = c
        .prepare_cached(&i.sql("DELETE FROM {s}.events WHERE seq = $1"))
        .await?;
    let mut at = after;
    for row in &rows {
        let seq: i64 = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let watch_key: Option<String> = row.try_get(2)?;
        let time_ms: i64 = row.try_get(3)?;
        let open: i64 = row.try_get(4)?;
        if time_ms >= cutoff {
            return Ok((at, true));
        }
        at = seq;
        if open > 0 || !crate::state::retention::event_type_may_go(&kind) {
            continue;
        }
        if let Some(key) = watch_key.as_deref()
            && in_current_cycle(i, c, key, time_ms).await?
        {
            continue;
        }
        out.event_deliveries += c.execute(&del_rows, &[&seq]).await?;
        out.events += c.execute(&del_event, &[&seq]).await?;
    }
    Ok((at, end_of_table))
}

/// Whether an event of the watch `key` (`w/p/a/i`) at `time_ms` belongs to the watch's current
/// cycle (see the SQLite ledger's function of the same name).
async fn in_current_cycle(
    i: &Inner,
    c: &impl GenericClient,
    key: &str,
    time_ms: i64,
) -> Result<bool, Fail> {
    let parts: Vec<&str> = key.split('/').collect();
    let [ws, project, asset, index] = parts[..] else {
        return Ok(false);
    };
    let st = c
        .prepare_cached(&i.sql(
            "SELECT v.fetched_at_ms FROM {s}.watches AS w
             LEFT JOIN {s}.versions AS v ON v.version_id = w.last_version_id
             WHERE w.workspace = $1 AND w.project_id = $2 AND w.asset_id = $3
               AND w.index_id = $4",
        ))
        .await?;
    Ok(
        match c.query_opt(&st, &[&ws, &project, &asset, &index]).await? {
            None => false,
            Some(row) => match row.try_get::<_, Option<i64>>(0)? {
                None => true,
                Some(fetched_at_ms) => time_ms >= fetched_at_ms,
            },
        },
    )
}
