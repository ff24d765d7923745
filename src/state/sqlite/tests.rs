//! Ledger tests on real SQLite files in temp dirs: restart round trips, outbox atomicity,
//! idempotence, refusals that leave the file untouched, and the query plans of the due queries.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::WatchSpec;
use crate::domain::WatchKey;
use crate::events::Event;
use crate::ncp::RemoteStatus;
use crate::state::{Ledger as _, NewVersion};
use crate::watch::{Phase, WatchState};

fn key(index: &str) -> WatchKey {
    WatchKey::new("ws", "p1", "a1", index).unwrap()
}

fn spec(index: &str) -> WatchSpec {
    WatchSpec {
        key: key(index),
        scene_summary_id: Some(format!("ss-{index}").into()),
        generation: crate::config::GenerationChoice::Index,
        max_wait: Duration::from_secs(3600),
        declared_at: format!("watch {index} in test").into(),
        origin: None,
    }
}

fn sinks() -> Vec<String> {
    vec!["files".into(), "hook".into()]
}

fn event_sinks() -> Vec<String> {
    vec!["log".into()]
}

async fn open(dir: &Path) -> SqliteLedger {
    match SqliteLedger::open(dir, sinks(), event_sinks()).await {
        Ok(l) => l,
        Err(e) => panic!("open failed: {e}"),
    }
}

fn waiting_record(index: &str) -> WatchRecord {
    WatchRecord {
        key: key(index),
        state: WatchState {
            phase: Phase::Waiting,
            remote: Some(RemoteStatus::Summarizing),
            polls: 7,
            consecutive_errors: 2,
            attempt: 3,
            route: Some(crate::watch::Route::AssetStatusIndexResult),
            started_at: Some(Duration::from_millis(1_700_000_000_123)),
            before_since: Some(Duration::from_millis(1_700_000_000_456)),
            last_version: None,
            last_error: Some("HTTP 503 from the gateway".into()),
        },
        next_poll_at_ms: Some(1_700_000_060_000),
        last_version_id: None,
        last_change_at_ms: Some(1_700_000_000_999),
        stale_version_id: None,
    }
}

fn version(index: &str, at: &str) -> NewVersion {
    NewVersion {
        version_id: crate::domain::VersionId::of(&key(index), at),
        key: key(index),
        last_analyzed_at: at.into(),
        fetched_at_ms: 1_000,
        scene_count: 2,
        analyzed_scene_ids: Some(vec!["1".into(), "2".into()]),
        result_json: r#"{ "sceneSummaries" : [ ], "x":1.50 }"#.into(),
    }
}

fn completed_step(index: &str, at: &str, events: Vec<Event>) -> StepCommit {
    let v = version(index, at);
    let mut record = waiting_record(index);
    record.state.phase = Phase::Completed;
    record.state.remote = Some(RemoteStatus::Completed);
    record.state.last_version = Some(at.into());
    record.last_version_id = Some(v.version_id.clone());
    StepCommit {
        record,
        events,
        new_version: Some(v),
    }
}

fn waiting_event(index: &str, status: &str, time_ms: u64) -> Event {
    Event::waiting(&key(index), status, "", time_ms)
}

/// Commits the watch `index` as [`waiting_record`] makes it, and returns that record.
async fn commit_waiting(ledger: &SqliteLedger, index: &str) -> WatchRecord {
    let record = waiting_record(index);
    ledger
        .commit_step(StepCommit {
            record: record.clone(),
            events: vec![],
            new_version: None,
        })
        .await
        .unwrap();
    record
}

/// Runs one query on the ledger thread and returns its single integer.
async fn count(ledger: &SqliteLedger, sql: &'static str) -> i64 {
    let r = ledger
        .with_store(move |s| {
            s.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(|e| sql_error(&s.path, "read", e))
        })
        .await;
    match r {
        Ok(n) => n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn the_daemon_s_start_reads_the_synced_records_a_page_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let names: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
    let specs: Vec<WatchSpec> = names.iter().map(|n| spec(n)).collect();
    ledger.sync_watches(&specs[..4], &[], 1).await.unwrap();
    let record = commit_waiting(&ledger, "i2").await;

    let n = ledger
        .sync_watches_paged(&specs, &[], 2)
        .expect("the SQLite ledger pages")
        .await
        .unwrap();
    assert_eq!(n, 10);
    let mut read = Vec::new();
    let mut from = Some(0);
    let mut pages = 0;
    while let Some(at) = from {
        let (page, next) = ledger.synced_records(at, 3).await.unwrap();
        assert!(page.len() <= 3);
        read.extend(page);
        from = next;
        pages += 1;
    }
    assert_eq!(pages, 4, "3 + 3 + 3 + 1");
    let keys: Vec<WatchKey> = read.iter().map(|r| r.key.clone()).collect();
    let wanted: Vec<WatchKey> = specs.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys, wanted, "every record once, in the specs' order");
    assert_eq!(read[2], record, "the stored state, not a fresh one");
    assert_eq!(read[7].state, WatchState::default());
    // The list is dropped with its last page.
    let (after, next) = ledger.synced_records(0, 3).await.unwrap();
    assert!(after.is_empty() && next.is_none());
    assert_eq!(
        count(&ledger, "SELECT count(*) FROM temp.sync_seen").await,
        0
    );

    // A configured watch no longer listed is flagged removed, as `sync_watches` does.
    ledger
        .sync_watches_paged(&specs[1..], &[], 3)
        .unwrap()
        .await
        .unwrap();
    let (first, _) = ledger.synced_records(0, 100).await.unwrap();
    assert_eq!(first.len(), 9);
    assert_eq!(first[0].key, key("i1"));
    assert_eq!(
        count(&ledger, "SELECT count(*) FROM watches WHERE removed = 1").await,
        1
    );
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn restart_resumes_each_watch_at_its_persisted_state() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [spec("i1"), spec("i2")];
    let ledger = open(dir.path()).await;
    let fresh = ledger.sync_watches(&specs, &[], 10).await.unwrap();
    assert_eq!(fresh.len(), 2);
    assert_eq!(fresh[0].key, key("i1"));
    assert_eq!(fresh[0].state, WatchState::default());
    assert_eq!(fresh[0].next_poll_at_ms, None);

    let record = commit_waiting(&ledger, "i1").await;
    ledger.close().await.unwrap();

    let ledger = open(dir.path()).await;
    let back = ledger.sync_watches(&specs, &[], 20).await.unwrap();
    assert_eq!(back[0], record, "every field survives the restart");
    assert_eq!(back[0].next_poll_at_ms, Some(1_700_000_060_000));
    assert_eq!(back[1].state.phase, Phase::Pending);
    ledger.close().await.unwrap();
}

#[tokio::test]
async fn removed_watches_are_kept_flagged_and_readded_ones_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger
        .sync_watches(&[spec("i1"), spec("i2")], &[], 0)
        .await
        .unwrap();
    let record = commit_waiting(&ledger, "i2").await;

    let active = ledger.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    assert_eq!(active.len(), 1);
    let status = ledger.status().await.unwrap();
    assert_eq!(status.len(), 2, "the removed watch is kept");
    let i2 = status.iter().find(|r| r.key == key("i2")).unwrap();
    assert!(i2.removed);
    assert_eq!(i2.phase, Phase::Waiting);
    assert_eq!(i2.polls, 7);
    assert!(!status.iter().find(|r| r.key == key("i1")).unwrap().removed);

    let mut changed = spec("i2");
    changed.scene_summary_id = Some("other".into());
    changed.generation = crate::config::GenerationChoice::Asset;
    let active = ledger
        .sync_watches(&[changed, spec("i1")], &[], 2)
        .await
        .unwrap();
    assert_eq!(active[0], record, "re-added with its state, in specs order");
    assert_eq!(active[1].key, key("i1"));
    assert!(ledger.status().await.unwrap().iter().all(|r| !r.removed));
    let generation = ledger
        .with_store(|s| {
            s.conn
                .query_row(
                    "SELECT generation || '/' || scene_summary_id FROM watches
                     WHERE index_id = 'i2'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .map_err(|e| sql_error(&s.path, "read", e))
        })
        .await
        .unwrap();
    assert_eq!(generation, "asset/other");
}

/// The start's list of configured watches is a temporary table in memory: once a sync is done
/// its pages are given back (not left on the temporary database's free list), and a second
/// sync of the same watches works the same.
#[tokio::test]
async fn the_start_list_of_watches_gives_its_memory_back_after_each_sync() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let specs: Vec<WatchSpec> = (0..20_000).map(|i| spec(&format!("i{i}"))).collect();
    for at in [0, 1] {
        let records = ledger.sync_watches(&specs, &[], at).await.unwrap();
        assert_eq!(records.len(), specs.len());
        assert_eq!(records[19_999].key, key("i19999"), "in specs order");
        // 20,000 rows fill over a hundred pages while the sync runs.
        assert!(count(&ledger, "PRAGMA temp.page_count").await < 10);
    }
}

#[tokio::test]
async fn a_step_that_fails_midway_leaves_no_trace_and_others_in_the_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger
        .sync_watches(&[spec("i1"), spec("i2")], &[], 0)
        .await
        .unwrap();
    ledger
        .with_store(|s| {
            s.exec(
                "write",
                "CREATE TEMP TRIGGER boom BEFORE INSERT ON events WHEN NEW.id LIKE '%boom%'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
        })
        .await
        .unwrap();
    let mut bad_event = waiting_event("i1", "SUMMARIZING", 5);
    bad_event.id = "boom".into();
    let bad = completed_step("i1", "v1", vec![bad_event]);
    let good = completed_step("i2", "v1", vec![waiting_event("i2", "SUMMARIZING", 5)]);
    // Sent together, so the ledger thread most likely runs them in one group transaction.
    let (bad_result, good_result) = tokio::join!(ledger.commit_step(bad), ledger.commit_step(good));
    let err = bad_result.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(err.to_string().contains("scenewatch.db"), "{err}");
    good_result.unwrap();

    assert_eq!(count(&ledger, "SELECT count(*) FROM versions").await, 1);
    assert_eq!(count(&ledger, "SELECT count(*) FROM deliveries").await, 2);
    assert_eq!(count(&ledger, "SELECT count(*) FROM events").await, 1);
    let status = ledger.status().await.unwrap();
    let i1 = status.iter().find(|r| r.key == key("i1")).unwrap();
    assert_eq!(
        i1.phase,
        Phase::Pending,
        "the watch row was rolled back too"
    );
    assert_eq!(i1.pending_deliveries, 0);
    let i2 = status.iter().find(|r| r.key == key("i2")).unwrap();
    assert_eq!(i2.phase, Phase::Completed);
    assert_eq!(i2.pending_deliveries, 2);
}

#[tokio::test]
async fn an_undecodable_stored_event_is_parked_not_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let a = waiting_event("i1", "WAIT_SUMMARIZE", 1);
    let b = waiting_event("i1", "SUMMARIZING", 2);
    ledger.record_events(vec![a, b.clone()]).await.unwrap();
    ledger
        .with_store(|s| {
            s.exec(
                "write",
                "UPDATE events SET body = '{\"garbage\"' WHERE seq = 1",
            )
        })
        .await
        .unwrap();
    assert_eq!(ledger.due_events("log", 10, 10).await.unwrap(), vec![b]);
    let log = ledger.backlog().await.unwrap();
    assert_eq!(log.iter().find(|b| b.sink == "log").unwrap().parked, 1);
}

#[tokio::test]
async fn sink_health_and_sinks_persist() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    assert_eq!(
        ledger.sink_health("hook").await.unwrap(),
        SinkHealth::default()
    );
    let h = SinkHealth {
        failing: true,
        episode: 3,
    };
    ledger.set_sink_health("hook", h).await.unwrap();
    ledger.close().await.unwrap();
    let ledger = open(dir.path()).await;
    assert_eq!(ledger.sink_health("hook").await.unwrap(), h);

    // A sink added on reload gets rows for versions fetched from then on.
    ledger.set_sinks(vec!["s3".into()], vec![]).await.unwrap();
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    ledger
        .commit_step(completed_step(
            "i1",
            "v1",
            vec![waiting_event("i1", "X", 1)],
        ))
        .await
        .unwrap();
    assert_eq!(
        ledger.due_deliveries("s3", 1_000, 10).await.unwrap().len(),
        1
    );
    assert!(
        ledger
            .due_deliveries("files", 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        count(&ledger, "SELECT count(*) FROM event_deliveries").await,
        0
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_file_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    ledger
        .with_store(|s| s.exec("write", "PRAGMA user_version = 7"))
        .await
        .unwrap();
    ledger.close().await.unwrap();
    let path = dir.path().join(DB_FILE);
    let before = std::fs::read(&path).unwrap();

    let err = SqliteLedger::open(dir.path(), sinks(), event_sinks())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::NewerSchema {
                found: 7,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "newer scenewatch (schema 7, this one knows {SCHEMA_VERSION})"
        )),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("left untouched"), "{msg}");
    let err = SqliteLedger::open_read_only(dir.path()).await.unwrap_err();
    assert!(matches!(err, StateError::NewerSchema { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn a_garbage_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteLedger::open(dir.path(), sinks(), event_sinks())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(msg.contains("not a scenewatch state database"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("move it aside and restore a backup"), "{msg}");
    assert!(SqliteLedger::open_read_only(dir.path()).await.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

/// A real ledger with a damaged page (header intact) is caught by the integrity check on open.
#[tokio::test]
async fn a_damaged_ledger_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let specs: Vec<WatchSpec> = (0..300).map(|i| spec(&format!("i{i}"))).collect();
    ledger.sync_watches(&specs, &[], 0).await.unwrap();
    let page_size = count(&ledger, "PRAGMA page_size").await as usize;
    let pages = count(&ledger, "PRAGMA page_count").await as usize;
    ledger.close().await.unwrap();
    assert!(pages > 4, "{pages}");
    let path = dir.path().join(DB_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    // Every page after the schema page is a b-tree page here; smash the headers of a few.
    for page in 2..pages.min(6) {
        let start = (page - 1) * page_size;
        bytes[start..start + 64].fill(0xA5);
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = SqliteLedger::open(dir.path(), sinks(), event_sinks())
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("not a scenewatch state database or is damaged"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn another_applications_sqlite_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('hi');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = SqliteLedger::open(dir.path(), sinks(), event_sinks())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a scenewatch state database"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// A state_dir that cannot be created fails the same loud way, and this one runs as root too.
#[tokio::test]
async fn an_uncreatable_state_dir_gives_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let state = file.join("state");
    let err = SqliteLedger::open(&state, sinks(), event_sinks())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Io { .. }), "{err:?}");
    assert!(
        msg.contains(&state.join(DB_FILE).display().to_string()),
        "{msg}"
    );
    assert!(
        msg.starts_with("cannot create the directory of the state database"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_read_only_state_dir_gives_an_error_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions, so there is nothing to observe when running as root
    // (containers, CI): detect that by trying, and skip the assertion then.
    if std::fs::write(state.join("probe"), b"x").is_ok() {
        eprintln!("skipped: running as root, permissions are not enforced");
        return;
    }
    let err = SqliteLedger::open(&state, sinks(), event_sinks())
        .await
        .unwrap_err();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Io { .. }), "{err:?}");
    assert!(
        msg.contains(&state.join(DB_FILE).display().to_string()),
        "{msg}"
    );
    assert!(msg.starts_with("cannot "), "{msg}");
}

#[tokio::test]
async fn open_read_only_sees_rows_while_a_writer_is_open_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        SqliteLedger::open_read_only(dir.path()).await.is_err(),
        "no file, no ledger"
    );
    assert!(
        !dir.path().join(DB_FILE).exists(),
        "read-only open creates nothing"
    );
    let writer = open(dir.path()).await;
    writer.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    writer
        .commit_step(completed_step("i1", "v1", vec![]))
        .await
        .unwrap();

    let reader = SqliteLedger::open_read_only(dir.path()).await.unwrap();
    let rows = reader.status().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].phase, Phase::Completed);
    assert_eq!(rows[0].pending_deliveries, 2);
    assert_eq!(reader.backlog().await.unwrap().len(), 2);

    // The writer goes on while the reader is open, and the reader sees the new commits.
    writer
        .sync_watches(&[spec("i1"), spec("i2")], &[], 1)
        .await
        .unwrap();
    assert_eq!(reader.status().await.unwrap().len(), 2);

    let err = reader.sync_watches(&[], &[], 2).await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(reader.probe_writable().await.is_err());
    reader.close().await.unwrap();
    writer.probe_writable().await.unwrap();
    writer.close().await.unwrap();

    // And with no daemon running.
    let reader = SqliteLedger::open_read_only(dir.path()).await.unwrap();
    assert_eq!(reader.status().await.unwrap().len(), 2);
    reader.close().await.unwrap();
}

/// SQLITE_FULL is provoked with `max_page_count`: the failing command gets a loud error naming
/// the file and the op, readiness reports it, and what was committed before is intact.
#[tokio::test]
async fn disk_full_is_loud_and_loses_nothing_already_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    ledger
        .commit_step(completed_step("i1", "v1", vec![]))
        .await
        .unwrap();
    let pages = count(&ledger, "PRAGMA page_count").await;
    ledger
        .with_store(move |s| s.exec("write", &format!("PRAGMA max_page_count = {pages}")))
        .await
        .unwrap();
    let mut big = completed_step("i1", "v2", vec![]);
    if let Some(v) = big.new_version.as_mut() {
        v.result_json = "x".repeat(200_000);
    }
    let err = ledger.commit_step(big).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Io { op: "write", .. }), "{err:?}");
    assert!(msg.contains("full"), "{msg}");
    assert!(msg.contains(DB_FILE), "{msg}");
    // SQLite's own error stays attached, with its code, for code that acts on it.
    let code =
        crate::cause::find::<rusqlite::Error>(&err).and_then(rusqlite::Error::sqlite_error_code);
    assert_eq!(code, Some(rusqlite::ErrorCode::DiskFull), "{err:?}");
    // Readiness remembers the failure until a write commits again. (The probe itself could pass
    // here: `max_page_count` does not limit the WAL, a real full disk would.)
    let remembered = ledger
        .with_store(|s| Ok(s.last_write_error.is_some()))
        .await
        .unwrap();
    assert!(remembered);
    // And the probe says so, even when its own tiny commit fits.
    assert!(ledger.probe_writable().await.is_err());

    let status = ledger.status().await.unwrap();
    assert_eq!(status[0].phase, Phase::Completed);
    assert_eq!(
        status[0].pending_deliveries, 2,
        "v1 and its deliveries are intact"
    );
    assert_eq!(count(&ledger, "SELECT count(*) FROM versions").await, 1);

    // Space comes back: writes and readiness recover.
    ledger
        .with_store(|s| s.exec("write", "PRAGMA max_page_count = 1073741823"))
        .await
        .unwrap();
    // Until a real write commits, readiness still says the ledger cannot commit.
    assert!(ledger.probe_writable().await.is_err());
    ledger
        .commit_step(completed_step("i1", "v2", vec![]))
        .await
        .unwrap();
    ledger.probe_writable().await.unwrap();
    assert_eq!(count(&ledger, "SELECT count(*) FROM versions").await, 2);
}

#[tokio::test]
async fn closed_ledger_answers_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let other = ledger.clone();
    ledger.close().await.unwrap();
    let err = other.status().await.unwrap_err();
    assert!(matches!(err, StateError::Closed { .. }), "{err:?}");
    assert!(format!("{other:?}").contains("scenewatch.db"));
}

#[tokio::test]
async fn many_concurrent_steps_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let specs: Vec<WatchSpec> = (0..300).map(|i| spec(&format!("i{i}"))).collect();
    ledger.sync_watches(&specs, &[], 0).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let index = format!("i{i}");
            l.commit_step(completed_step(
                &index,
                "v1",
                vec![waiting_event(&index, "S", 1)],
            ))
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(count(&ledger, "SELECT count(*) FROM versions").await, 300);
    assert_eq!(count(&ledger, "SELECT count(*) FROM deliveries").await, 600);
    assert_eq!(
        count(&ledger, "SELECT count(*) FROM event_deliveries").await,
        300
    );
    ledger.close().await.unwrap();
    let ledger = open(dir.path()).await;
    assert_eq!(
        ledger.sync_watches(&specs, &[], 1).await.unwrap().len(),
        300
    );
}

/// The per-second due queries must go through the partial indexes, not scan the tables.
#[tokio::test]
async fn due_queries_use_the_open_row_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    let plans = ledger
        .with_store(|s| {
            let mut out = Vec::new();
            for (sql, n) in [
                (store::DUE_DELIVERIES, 3),
                (store::DUE_EVENTS, 2),
                (store::PRUNE_VERSIONS, 3),
                (store::PRUNE_EVENTS, 2),
            ] {
                let explain = format!("EXPLAIN QUERY PLAN {sql}");
                let mut st = s
                    .conn
                    .prepare(&explain)
                    .map_err(|e| sql_error(&s.path, "read", e))?;
                let params: Vec<i64> = vec![0; n];
                let rows = st
                    .query_map(rusqlite::params_from_iter(params), |r| {
                        r.get::<_, String>(3)
                    })
                    .map_err(|e| sql_error(&s.path, "read", e))?;
                let mut plan = Vec::new();
                for r in rows {
                    plan.push(r.map_err(|e| sql_error(&s.path, "read", e))?);
                }
                out.push(plan.join(" | "));
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert!(plans[0].contains("deliveries_open"), "{}", plans[0]);
    assert!(plans[1].contains("event_deliveries_open"), "{}", plans[1]);
    // Retention's walks go by rowid and seq from where they stopped, and look up each row's
    // deliveries by key: a batch costs its size, never the table's.
    assert!(plans[3].contains("event_deliveries_by_seq"), "{}", plans[3]);
    for plan in &plans {
        assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
        assert!(
            !plan.split(" | ").any(|p| p.starts_with("SCAN ")),
            "no full scan: {plan}"
        );
    }
}

#[test]
fn migrations_match_the_schema_version() {
    assert_eq!(schema::MIGRATIONS.len(), SCHEMA_VERSION as usize);
}

/// Any record (within the stored ranges: integers up to `i64::MAX`, times in whole ms) comes
/// back from the database exactly as committed.
mod round_trip {
    use proptest::prelude::*;

    use super::*;

    fn phase() -> impl Strategy<Value = Phase> {
        (0..Phase::ALL.len()).prop_map(|i| Phase::ALL[i])
    }

    fn remote() -> impl Strategy<Value = Option<RemoteStatus>> {
        proptest::option::of(prop_oneof![
            Just(RemoteStatus::BeforeSummarize),
            Just(RemoteStatus::WaitSummarize),
            Just(RemoteStatus::Summarizing),
            Just(RemoteStatus::Completed),
            Just(RemoteStatus::Failed),
            Just(RemoteStatus::Canceled),
            "[A-Z_]{1,12}".prop_map(|s| RemoteStatus::from_wire(&s)),
        ])
    }

    fn ms() -> impl Strategy<Value = Option<u64>> {
        proptest::option::of(0..=i64::MAX as u64)
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,40}")
    }

    fn record(index: String) -> impl Strategy<Value = WatchRecord> {
        (
            (
                phase(),
                remote(),
                0..=i64::MAX as u64,
                any::<u32>(),
                ms(),
                ms(),
            ),
            (text(), text(), any::<u32>(), ms(), text(), ms(), text()),
        )
            .prop_map(move |((ph, rem, polls, errs, started, before), rest)| {
                let (last_version, last_error, attempt, next, vid, change, stale) = rest;
                WatchRecord {
                    key: key(&index),
                    state: WatchState {
                        phase: ph,
                        remote: rem,
                        polls,
                        consecutive_errors: errs,
                        attempt,
                        route: [
                            None,
                            Some(crate::watch::Route::Asset),
                            Some(crate::watch::Route::IndexResultOnly),
                        ][(attempt % 3) as usize],
                        started_at: started.map(Duration::from_millis),
                        before_since: before.map(Duration::from_millis),
                        last_version,
                        last_error,
                    },
                    next_poll_at_ms: next,
                    last_version_id: vid.map(crate::domain::VersionId::from_stored),
                    last_change_at_ms: change,
                    stale_version_id: stale.map(crate::domain::VersionId::from_stored),
                }
            })
    }

    #[test]
    fn any_record_survives_commit_and_reopen() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ledger = rt.block_on(open(dir.path()));
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
        // Each case gets its own watch (the runner's closure is `Fn`, hence the cell).
        let n = std::cell::Cell::new(0u32);
        let strategy = record("placeholder".into());
        runner
            .run(&strategy, |mut r| {
                n.set(n.get() + 1);
                r.key = key(&format!("prop{}", n.get()));
                let back = rt.block_on(async {
                    ledger
                        .commit_step(StepCommit {
                            record: r.clone(),
                            events: vec![],
                            new_version: None,
                        })
                        .await
                        .unwrap();
                    let mut s = spec("x");
                    s.key = r.key.clone();
                    ledger.sync_watches(&[s], &[], 0).await.unwrap()
                });
                prop_assert_eq!(back, vec![r]);
                Ok(())
            })
            .unwrap();
    }
}

/// A ledger written by schema 1 (before watches had an origin and a route) is migrated in place:
/// its watches keep their state, are configured watches (no origin), and get a route on their
/// next step.
#[tokio::test]
async fn a_schema_1_ledger_is_migrated_and_keeps_its_watches() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA user_version = 1; PRAGMA application_id = {};
             INSERT INTO watches (workspace, project_id, asset_id, index_id, phase, polls, generation)
             VALUES ('ws', 'p1', 'a1', 'i1', 'waiting', 4, 'index');",
            schema::APPLICATION_ID
        ))
        .unwrap();
    }
    let ledger = open(dir.path()).await;
    let records = ledger.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    assert_eq!(records[0].state.phase, Phase::Waiting);
    assert_eq!(records[0].state.polls, 4);
    assert_eq!(records[0].state.route, None);
    assert!(ledger.discovered().await.unwrap().is_empty());
    let mut r = records[0].clone();
    r.state.route = Some(crate::watch::Route::Asset);
    ledger
        .commit_step(StepCommit {
            record: r.clone(),
            events: vec![],
            new_version: None,
        })
        .await
        .unwrap();
    let again = ledger.sync_watches(&[spec("i1")], &[], 2).await.unwrap();
    assert_eq!(again[0], r);
}

/// `i1`'s record after a poll that found it as `record` left it: only its timing moves.
fn timing_step(record: &WatchRecord, polls: u64) -> StepCommit {
    let mut r = record.clone();
    r.state.polls = polls;
    r.state.attempt = 1;
    r.next_poll_at_ms = Some(1_700_000_000_000 + polls * 1_000);
    StepCommit {
        record: r,
        events: vec![],
        new_version: None,
    }
}

/// Waits (up to 10 s) until a reader on another connection sees `polls` for `i1`.
async fn reader_sees_polls(reader: &SqliteLedger, polls: u64) {
    let until = crate::clock::instant_now() + Duration::from_secs(10);
    loop {
        let rows = reader.status().await.unwrap();
        if rows.iter().any(|r| r.key == key("i1") && r.polls == polls) {
            return;
        }
        assert!(
            crate::clock::instant_now() < until,
            "the queued timing was not written within 10 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls that change nothing are not committed one by one: 200 of them append far fewer WAL
/// frames than 200 fsync'd commits would (each writes at least the watch's page), a reader on
/// another connection (as `scenewatch status` beside the daemon) sees the latest once the
/// batch is written, with no read on the writer to force it, and a restart keeps it.
#[tokio::test]
async fn timing_only_steps_are_written_in_batches_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let waiting = waiting_record("i1");
    ledger
        .commit_step(StepCommit {
            record: waiting.clone(),
            events: vec![],
            new_version: None,
        })
        .await
        .unwrap();
    let page = u64::try_from(count(&ledger, "PRAGMA page_size").await).unwrap();
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let before = wal_len();
    let mut last = waiting.clone();
    for polls in 8..208 {
        let step = timing_step(&waiting, polls);
        last = step.record.clone();
        ledger.commit_step(step).await.unwrap();
    }
    let reader = SqliteLedger::open_read_only(dir.path()).await.unwrap();
    reader_sees_polls(&reader, 207).await;
    reader.close().await.unwrap();
    let frames = (wal_len() - before) / (page + 24);
    assert!(
        frames < 50,
        "200 timing-only steps appended {frames} WAL frames: committed one by one?"
    );
    ledger.close().await.unwrap();

    let ledger = open(dir.path()).await;
    let back = ledger.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    assert_eq!(
        back[0], last,
        "the latest timing, and everything else as committed"
    );
    ledger.close().await.unwrap();
}

/// A large result is stored as a BLOB of its bytes, written in place, and read back byte for
/// byte (multi-byte text included); a row an older scenewatch stored as TEXT reads the same;
/// once every sink has it, the stored result is released.
#[tokio::test]
async fn a_large_result_is_stored_as_its_bytes_and_read_back_exactly_old_text_rows_too() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let text: String = format!(
        r#"{{"sceneSummaries":[{}],"end":"장면 ✓"}}"#,
        (0..20_000)
            .map(|i| format!(r#"{{"sceneId":{i},"summary":"요약 {i} — \"quoted\""}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut step = completed_step("i1", "v1", vec![]);
    if let Some(v) = step.new_version.as_mut() {
        v.result_json = text.clone();
    }
    ledger.commit_step(step.clone()).await.unwrap();
    assert_eq!(
        count(
            &ledger,
            "SELECT count(*) FROM versions WHERE typeof(result_json) = 'blob'"
        )
        .await,
        1
    );
    let due = ledger.due_deliveries("files", 1_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].result_json == text, "the result came back changed");

    // The same version fetched again keeps its row (and its bytes).
    ledger.commit_step(step).await.unwrap();
    let due = ledger.due_deliveries("files", 1_000, 10).await.unwrap();
    assert!(due[0].result_json == text);

    // A row written as TEXT (scenewatch before this change) reads back the same.
    ledger
        .with_store(|s| {
            s.exec(
                "write",
                "UPDATE versions SET result_json = CAST(result_json AS TEXT)",
            )
        })
        .await
        .unwrap();
    assert_eq!(
        count(
            &ledger,
            "SELECT count(*) FROM versions WHERE typeof(result_json) = 'text'"
        )
        .await,
        1
    );
    let due = ledger.due_deliveries("hook", 1_000, 10).await.unwrap();
    assert!(due[0].result_json == text, "the TEXT row came back changed");

    // Every sink has it: released, whatever its type.
    let id = due[0].version_id.clone();
    for sink in ["files", "hook"] {
        ledger
            .delivery_succeeded(&id, sink, "somewhere", vec![], 2_000)
            .await
            .unwrap();
    }
    assert_eq!(
        count(&ledger, "SELECT octet_length(result_json) FROM versions").await,
        0
    );
}

/// A stored result that is not UTF-8 (a damaged file) is a loud error naming the version and
/// the file, not a panic or a garbled delivery.
#[tokio::test]
async fn a_damaged_stored_result_is_an_error_naming_the_version_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path()).await;
    ledger.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    ledger
        .commit_step(completed_step("i1", "v1", vec![]))
        .await
        .unwrap();
    ledger
        .with_store(|s| s.exec("write", "UPDATE versions SET result_json = X'7B22FF227D'"))
        .await
        .unwrap();
    let err = ledger.due_deliveries("files", 1_000, 10).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not UTF-8"), "{msg}");
    assert!(msg.contains(DB_FILE), "{msg}");
    let id = crate::domain::VersionId::of(&key("i1"), "v1");
    assert!(msg.contains(id.as_str()), "{msg}");
}
