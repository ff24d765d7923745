//! What is particular to the PostgreSQL ledger (the shared contract is in `contract.rs`):
//! secrets kept out of messages, shards, migrations under a lock, newer and foreign schemas
//! refused, the daemon's exclusive lock, the read-only view. Tests that need the server are
//! compiled ignored without `SCENEWATCH_TEST_PG`.

use std::time::Duration;

use secrecy::SecretString;

use super::testing::Schema;
use super::*;
use crate::state::Ledger;

fn spec(index: &str) -> WatchSpec {
    WatchSpec {
        key: WatchKey::new("ws", "p1", "a1", index).unwrap(),
        scene_summary_id: None,
        generation: crate::config::GenerationChoice::Index,
        max_wait: Duration::from_secs(3600),
        declared_at: format!("watch {index} in test"),
        origin: None,
    }
}

#[test]
fn shards_are_stable_and_in_range() {
    let k = WatchKey::new("ws", "p1", "a1", "i1").unwrap();
    assert_eq!(shard_of(&k), shard_of(&k.clone()));
    // Stored in every watch row: a change here would move watches between shards.
    assert_eq!(
        shard_of(&k),
        40,
        "SHA-256 of ws/p1/a1/i1, first four bytes, modulo 256"
    );
    let spread: std::collections::HashSet<i32> = (0..2000)
        .map(|n| shard_of(&WatchKey::new("ws", "p1", "a1", format!("i{n}")).unwrap()))
        .collect();
    assert!(spread.iter().all(|s| (0..SHARDS as i32).contains(s)));
    assert!(
        spread.len() > 200,
        "keys spread over the shards: {}",
        spread.len()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_the_password() {
    let target = PostgresTarget {
        url: "postgres://scenewatch@127.0.0.1:1/ledger?sslmode=disable".into(),
        password: Some(SecretString::from("hunter2-do-not-show".to_string())),
        schema: "scenewatch".into(),
        ca_file: None,
    };
    let e = PostgresLedger::open(&target, vec![], vec![])
        .await
        .unwrap_err();
    let text = format!("{e} / {e:?} / {:#}", anyhow::Error::new(e.clone()));
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("postgres://scenewatch@127.0.0.1:1/ledger") && text.contains("scenewatch"),
        "names the server and schema: {text}"
    );
    assert!(
        matches!(
            e,
            StateError::Postgres {
                op: "connect to",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!format!("{target:?}").contains("hunter2"));
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn replicas_starting_together_migrate_once_and_rows_carry_their_shard() {
    let db = Schema::fresh("migrate_once").await;
    let (a, b) = tokio::join!(
        PostgresLedger::open(&db.target, vec!["files".into()], vec![]),
        PostgresLedger::open(&db.target, vec!["files".into()], vec![]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let versions: Vec<i32> = a
        .run("read", false, async |i, c| {
            let rows = c
                .query(
                    &i.sql("SELECT version FROM {s}.ledger_schema ORDER BY version"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
        .unwrap();
    assert_eq!(versions, vec![1], "each migration applied once");
    a.sync_watches(&[spec("i1"), spec("i2")], &[], 1)
        .await
        .unwrap();
    let shards: Vec<(String, i32)> = b
        .run("read", false, async |i, c| {
            let rows = c
                .query(
                    &i.sql("SELECT index_id, shard FROM {s}.watches ORDER BY index_id"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
        .unwrap();
    let want: Vec<(String, i32)> = ["i1", "i2"]
        .iter()
        .map(|i| (i.to_string(), shard_of(&spec(i).key)))
        .collect();
    assert_eq!(shards, want);
    a.close().await.unwrap();
    b.close().await.unwrap();
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_newer_schema_and_a_foreign_schema_are_refused_untouched() {
    let db = Schema::fresh("newer_schema").await;
    let l = PostgresLedger::open(&db.target, vec![], vec![])
        .await
        .unwrap();
    l.close().await.unwrap();
    db.exec(&format!(
        "INSERT INTO {}.ledger_schema (version, applied_by) VALUES (99, 'the future')",
        db.target.schema
    ))
    .await;
    for e in [
        PostgresLedger::open(&db.target, vec![], vec![])
            .await
            .unwrap_err(),
        PostgresLedger::open_read_only(&db.target)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                StateError::NewerPgSchema {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("schema 99"), "{e}");
    }
    db.drop_it().await;

    let db = Schema::fresh("foreign_schema").await;
    db.exec(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.watches (x int)",
        s = db.target.schema
    ))
    .await;
    let e = PostgresLedger::open(&db.target, vec![], vec![])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not made by the scenewatch ledger") && e.contains("state.schema"),
        "{e}"
    );
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn one_daemon_holds_the_ledger_and_status_reads_it_alongside() {
    let db = Schema::fresh("exclusive").await;
    let e = PostgresLedger::open_read_only(&db.target)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no ledger yet"), "{e}");

    let first = PostgresLedger::open(&db.target, vec![], vec![])
        .await
        .unwrap();
    first.claim_exclusive().await.unwrap();
    first.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    let second = PostgresLedger::open(&db.target, vec![], vec![])
        .await
        .unwrap();
    assert!(second.held_by_a_daemon().await.unwrap());
    let e = second.claim_exclusive().await.unwrap_err().to_string();
    assert!(
        e.contains("another scenewatch daemon is running on this ledger"),
        "{e}"
    );
    // An operator verb and status work meanwhile.
    assert!(second.reset_watches(vec![], 2).await.unwrap().is_empty());
    let view = PostgresLedger::open_read_only(&db.target).await.unwrap();
    assert_eq!(view.status().await.unwrap().len(), 1);
    let e = view.set_fact("x", "y").await.unwrap_err().to_string();
    assert!(e.contains("read-only"), "{e}");
    assert!(view.probe_writable().await.is_err());

    // The lock's connection cut (a restarted server, an administrator): readiness takes the
    // lock again; if another daemon took it first, readiness says so.
    terminate_lock_holder(&db).await;
    assert!(
        first.probe_writable().await.is_ok(),
        "the lock was taken again"
    );
    assert!(second.claim_exclusive().await.is_err());
    terminate_lock_holder(&db).await;
    second.claim_exclusive().await.unwrap();
    let e = first.probe_writable().await.unwrap_err().to_string();
    assert!(
        e.contains("another scenewatch daemon is running on this ledger"),
        "{e}"
    );

    second.close().await.unwrap();
    first.claim_exclusive().await.unwrap();
    assert!(first.probe_writable().await.is_ok());
    first.close().await.unwrap();
    view.close().await.unwrap();
    db.drop_it().await;
}

/// Ends the server session holding the ledger's owner lock, and waits until it is gone.
async fn terminate_lock_holder(db: &Schema) {
    let key = lock_key("scenewatch ledger owner", &db.target.schema);
    let bits = key as u64;
    db.exec(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND classid = {} AND objid = {} AND objsubid = 1",
        bits >> 32,
        bits & 0xffff_ffff
    ))
    .await;
    for _ in 0..100 {
        let (client, conn) = tokio_postgres::connect(
            &super::testing::server_url("terminate_lock_holder"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let task = tokio::spawn(conn);
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                       AND classid = {} AND objid = {} AND objsubid = 1",
                    bits >> 32,
                    bits & 0xffff_ffff
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        drop(client);
        let _ = task.await;
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lock holder's session did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn ten_thousand_watches_sync_in_order_and_a_thousand_concurrent_steps_all_commit() {
    let db = Schema::fresh("bulk_sync").await;
    let l = PostgresLedger::open(&db.target, vec!["files".into()], vec!["log".into()])
        .await
        .unwrap();
    let specs: Vec<WatchSpec> = (0..10_000).map(|n| spec(&format!("i{n}"))).collect();
    let started = crate::clock::instant_now();
    let records = l.sync_watches(&specs, &[], 1).await.unwrap();
    let first_sync = started.elapsed();
    assert_eq!(records.len(), 10_000);
    assert!(
        records.iter().zip(&specs).all(|(r, s)| r.key == s.key),
        "in specs order"
    );
    let started = crate::clock::instant_now();
    let again = l.sync_watches(&specs, &[], 2).await.unwrap();
    let resync = started.elapsed();
    assert_eq!(again, records, "an unchanged reload changes nothing");

    // 1,000 poll steps, 16 at a time, each with a new version and an event.
    let started = crate::clock::instant_now();
    let steps = futures_util::stream::iter(records.into_iter().take(1_000).map(|mut r| {
        let l = l.clone();
        async move {
            let at = "2026-01-01T00:00:00Z";
            let vid = VersionId::of(&r.key, at);
            r.state.phase = crate::watch::Phase::Completed;
            r.last_version_id = Some(vid.clone());
            let ev = Event::waiting(&r.key, "SUMMARIZING", "", 5);
            l.commit_step(StepCommit {
                new_version: Some(crate::state::NewVersion {
                    version_id: vid,
                    key: r.key.clone(),
                    last_analyzed_at: at.into(),
                    fetched_at_ms: 10,
                    scene_count: 1,
                    analyzed_scene_ids: None,
                    result_json: "{}".into(),
                }),
                record: r,
                events: vec![ev],
            })
            .await
        }
    }));
    use futures_util::StreamExt as _;
    let results: Vec<_> = steps.buffer_unordered(16).collect().await;
    let step_time = started.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let backlog = l.backlog().await.unwrap();
    assert_eq!(
        backlog
            .iter()
            .map(|b| (b.sink.as_str(), b.pending))
            .collect::<Vec<_>>(),
        vec![("files", 1_000), ("log", 1_000)]
    );
    eprintln!(
        "PostgreSQL ledger: sync of 10,000 new watches {first_sync:?}, unchanged resync \
         {resync:?}, 1,000 poll steps (16 concurrent) {step_time:?}"
    );
    l.close().await.unwrap();
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_step_the_server_refuses_in_part_records_none_of_it() {
    let db = Schema::fresh("atomic_step").await;
    let l = PostgresLedger::open(&db.target, vec!["files".into()], vec!["log".into()])
        .await
        .unwrap();
    let before = l.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    let key = spec("i1").key;
    let event = Event::waiting(&key, "SUMMARIZING", "", 5);
    // The server refuses this one event (the last write of the step).
    db.exec(&format!(
        "ALTER TABLE {}.events ADD CONSTRAINT refuse_one CHECK (id <> '{}')",
        db.target.schema, event.id
    ))
    .await;
    let mut record = before[0].clone();
    record.state.phase = crate::watch::Phase::Completed;
    record.state.polls = 9;
    let vid = VersionId::of(&key, "2026-01-01T00:00:00Z");
    record.last_version_id = Some(vid.clone());
    let e = l
        .commit_step(StepCommit {
            record,
            events: vec![event],
            new_version: Some(crate::state::NewVersion {
                version_id: vid,
                key: key.clone(),
                last_analyzed_at: "2026-01-01T00:00:00Z".into(),
                fetched_at_ms: 10,
                scene_count: 1,
                analyzed_scene_ids: None,
                result_json: "{}".into(),
            }),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refuse_one"), "{e}");
    assert!(
        l.due_deliveries("files", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(l.due_events("log", u64::MAX, 10).await.unwrap().is_empty());
    let status = l.status().await.unwrap();
    assert_eq!(
        (status[0].phase, status[0].polls),
        (before[0].state.phase, 0)
    );
    assert!(
        l.probe_writable().await.is_err(),
        "readiness reports the failed write until a write commits"
    );
    l.set_fact("x", "y").await.unwrap();
    assert!(l.probe_writable().await.is_ok());
    l.close().await.unwrap();
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_sqlite_ledger_copies_row_for_row_and_the_copy_goes_on() {
    use crate::state::{NewVersion, SqliteLedger};
    let sinks = || vec!["files".to_string(), "hook".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(dir.path(), sinks(), vec!["log".into()])
        .await
        .unwrap();
    let mut found = spec("i2");
    found.origin = Some("project:ws/p1".into());
    sqlite
        .sync_watches(&[spec("i1")], &["project:ws/p1".into()], 1)
        .await
        .unwrap();
    sqlite.add_watch(&found, 2).await.unwrap();
    let key = spec("i1").key;
    let mut versions = Vec::new();
    for (n, at) in ["v1", "v2"].iter().enumerate() {
        let vid = VersionId::of(&key, at);
        let mut r = sqlite
            .sync_watches(&[spec("i1")], &["project:ws/p1".into()], 3)
            .await
            .unwrap()[0]
            .clone();
        r.state.phase = crate::watch::Phase::Completed;
        r.last_version_id = Some(vid.clone());
        sqlite
            .commit_step(StepCommit {
                record: r,
                events: vec![Event::waiting(&key, "SUMMARIZING", at, 10 + n as u64)],
                new_version: Some(NewVersion {
                    version_id: vid.clone(),
                    key: key.clone(),
                    last_analyzed_at: at.to_string(),
                    fetched_at_ms: 100 + n as u64,
                    scene_count: 2,
                    analyzed_scene_ids: Some(vec!["1".into()]),
                    result_json: format!(r#"{{"v": "{at}", "x": 1.50 }}"#),
                }),
            })
            .await
            .unwrap();
        versions.push(vid);
    }
    sqlite
        .delivery_succeeded(&versions[0], "files", "/out/v1", vec![], 200)
        .await
        .unwrap();
    sqlite
        .delivery_failed(&versions[0], "hook", "HTTP 400", 300, true)
        .await
        .unwrap();
    let sent = sqlite.due_events("log", u64::MAX, 1).await.unwrap();
    sqlite
        .events_sent("log", &[sent[0].id.clone()])
        .await
        .unwrap();
    sqlite
        .set_sink_health(
            "hook",
            SinkHealth {
                failing: true,
                episode: 4,
            },
        )
        .await
        .unwrap();
    sqlite.set_fact("index_api", "gone").await.unwrap();

    let db = Schema::fresh("copy").await;
    let pg = PostgresLedger::open(&db.target, sinks(), vec!["log".into()])
        .await
        .unwrap();
    let copied = migrate::copy(dir.path(), &pg).await.unwrap().unwrap();
    assert_eq!(
        copied,
        migrate::Copied {
            watches: 2,
            versions: 2,
            deliveries: 4,
            events: 2,
            event_deliveries: 2,
            sink_health: 1,
            facts: 1,
        }
    );
    // What every caller sees is the same.
    let both: [&dyn Ledger; 2] = [&sqlite, &pg];
    let mut seen = Vec::new();
    for l in both {
        let mut due = Vec::new();
        for s in ["files", "hook"] {
            due.push(l.due_deliveries(s, u64::MAX, 10).await.unwrap());
        }
        seen.push((
            l.status().await.unwrap(),
            l.backlog().await.unwrap(),
            due,
            l.due_events("log", u64::MAX, 10).await.unwrap(),
            l.discovered().await.unwrap(),
            l.sink_health("hook").await.unwrap(),
            l.fact("index_api").await.unwrap(),
        ));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1].2[0].len(), 1, "v2 still due to files");
    assert_eq!(
        seen[1].2[0][0].result_json, r#"{"v": "v2", "x": 1.50 }"#,
        "byte for byte"
    );
    // A second copy is refused, and the copy goes on: new rows get new ids.
    assert!(matches!(
        migrate::copy(dir.path(), &pg).await.unwrap(),
        Err(migrate::Refusal::NotEmpty(_))
    ));
    pg.add_watch(&spec("i3"), 5).await.unwrap();
    pg.record_events(vec![Event::sink_recovered("hook", 4, 500)])
        .await
        .unwrap();
    assert_eq!(pg.due_events("log", u64::MAX, 10).await.unwrap().len(), 2);
    assert_eq!(pg.status().await.unwrap().len(), 3);
    sqlite.close().await.unwrap();
    pg.close().await.unwrap();
    db.drop_it().await;
}
