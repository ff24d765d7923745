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
        declared_at: format!("watch {index} in test").into(),
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
        replicated: None,
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
    assert_eq!(versions, vec![1, 2], "each migration applied once");
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

/// Ticks `replicas` in turn until `done` holds of their owned shards, for at most `within`.
async fn tick_until(
    replicas: &[&PostgresLedger],
    within: Duration,
    done: impl Fn(&[Vec<i32>]) -> bool,
) -> Vec<LeaseTick> {
    let deadline = crate::clock::instant_now() + within;
    let mut ticks = Vec::new();
    loop {
        for r in replicas {
            ticks.push(r.lease_tick().await.unwrap());
        }
        let owned: Vec<Vec<i32>> = replicas.iter().map(|r| r.owned_shards()).collect();
        if done(&owned) {
            return ticks;
        }
        assert!(
            crate::clock::instant_now() < deadline,
            "shards did not settle within {within:?}: {:?}",
            owned.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn epoch_of(l: &PostgresLedger, shard: i32) -> i64 {
    l.run("read", false, async |i, c| {
        Ok(c.query_one(
            &i.sql("SELECT epoch FROM {s}.shard_leases WHERE shard = $1"),
            &[&shard],
        )
        .await?
        .get(0))
    })
    .await
    .unwrap()
}

/// A step of `record` with a new version, so that it queues a delivery to `files`.
fn step_with_version(record: &WatchRecord, polls: u64, at: &str) -> StepCommit {
    let mut record = record.clone();
    let key = record.key.clone();
    record.state.polls = polls;
    record.state.phase = crate::watch::Phase::Completed;
    let vid = VersionId::of(&key, at);
    record.last_version_id = Some(vid.clone());
    StepCommit {
        events: vec![Event::waiting(&key, "SUMMARIZING", at, polls)],
        new_version: Some(crate::state::NewVersion {
            version_id: vid,
            key,
            last_analyzed_at: at.into(),
            fetched_at_ms: polls,
            scene_count: 1,
            analyzed_scene_ids: None,
            result_json: "{}".into(),
        }),
        record,
    }
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn two_replicas_split_the_shards_and_one_that_stops_renewing_is_taken_over_and_fenced() {
    let db = Schema::fresh("leases_takeover").await;
    let open = || PostgresLedger::open(&db.target, vec!["files".into()], vec!["log".into()]);
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let lease = Duration::from_secs(2);
    a.join("replica-a", lease);
    b.join("replica-b", lease);
    // Before its first tick a replica holds nothing and may write nothing.
    let records = a.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    let shard = shard_of(&records[0].key);
    let e = a
        .commit_step(step_with_version(&records[0], 1, "2026-01-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StateError::LeaseLost { shard: s, .. } if s == shard),
        "{e:?}"
    );

    // The first replica takes everything; the second joins and they settle at 128 each.
    a.lease_tick().await.unwrap();
    assert_eq!(a.owned_shards().len(), 256);
    let ticks = tick_until(&[&a, &b], Duration::from_secs(10), |o| {
        o[0].len() == 128 && o[1].len() == 128
    })
    .await;
    // Making room for the second is a hand-over: released, not lost.
    let released: usize = ticks.iter().map(|t| t.released.len()).sum();
    assert_eq!(released, 128, "{ticks:?}");
    assert!(ticks.iter().all(|t| t.lost.is_empty()), "{ticks:?}");
    let (oa, ob) = (a.owned_shards(), b.owned_shards());
    let all: std::collections::BTreeSet<i32> = oa.iter().chain(&ob).copied().collect();
    assert_eq!(all.len(), 256, "disjoint and every shard held");

    // The watch's owner commits; the other is refused and sees none of its outbox.
    let (owner, other) = if oa.contains(&shard) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    owner
        .commit_step(step_with_version(&records[0], 1, "2026-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        owner
            .due_deliveries("files", u64::MAX, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        other
            .due_deliveries("files", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        owner.due_events("log", u64::MAX, 10).await.unwrap().len(),
        1
    );
    assert!(
        other
            .due_events("log", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let e = other
        .commit_step(step_with_version(&records[0], 5, "2026-01-02T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::LeaseLost { .. }), "{e:?}");
    let before = epoch_of(owner, shard).await;

    // The owner stops renewing (paused, cut off): once its lease is past, the other takes
    // every shard over, each at a higher epoch.
    let ticks = tick_until(&[other], Duration::from_secs(15), |o| o[0].len() == 256).await;
    let taken: u64 = ticks.iter().map(|t| t.taken_over).sum();
    assert!(
        taken >= 128,
        "took over the silent replica's shards: {taken}"
    );
    assert!(epoch_of(owner, shard).await > before);

    // The old owner's writes are refused and change nothing.
    let e = owner
        .commit_step(step_with_version(&records[0], 9, "2026-01-03T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StateError::LeaseLost { shard: s, .. } if s == shard),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!(
            "this replica no longer owns shard {shard} (lease lost)"
        )),
        "{e}"
    );
    let pending = other.due_deliveries("files", u64::MAX, 10).await.unwrap();
    assert_eq!(pending.len(), 1, "the new owner drains the outbox");
    let e = owner
        .delivery_succeeded(&pending[0].version_id, "files", "x", vec![], 20)
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::LeaseLost { .. }), "{e:?}");
    let e = owner
        .delivery_failed(&pending[0].version_id, "files", "boom", 30, false)
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::LeaseLost { .. }), "{e:?}");
    let ids: Vec<String> = other
        .due_events("log", u64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 1);
    assert!(matches!(
        owner.events_sent("log", &ids).await.unwrap_err(),
        StateError::LeaseLost { .. }
    ));
    let status = other.status().await.unwrap();
    assert_eq!(status[0].polls, 1, "the refused step wrote nothing");
    let still = other.due_deliveries("files", u64::MAX, 10).await.unwrap();
    assert_eq!(
        (still.len(), still[0].attempts),
        (1, 0),
        "nor the refused marks"
    );
    assert_eq!(
        other.due_events("log", u64::MAX, 10).await.unwrap().len(),
        1
    );
    // The new owner goes on.
    other
        .delivery_succeeded(&pending[0].version_id, "files", "x", vec![], 20)
        .await
        .unwrap();
    other.events_sent("log", &ids).await.unwrap();
    assert!(
        other
            .due_deliveries("files", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The silent one comes back: it ticks, learns what it lost, and they settle again.
    let t = owner.lease_tick().await.unwrap();
    assert!(t.lost.contains(&shard) && t.renewed == 0, "{t:?}");
    tick_until(&[&a, &b], Duration::from_secs(10), |o| {
        o[0].len() == 128 && o[1].len() == 128
    })
    .await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_replica_that_closes_hands_its_shards_over_at_once() {
    let db = Schema::fresh("leases_release").await;
    let open = || PostgresLedger::open(&db.target, vec![], vec![]);
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    // A lease far longer than the test: only the release can free the shards in time.
    let lease = Duration::from_secs(600);
    a.join("replica-a", lease);
    b.join("replica-b", lease);
    tick_until(&[&a, &b], Duration::from_secs(10), |o| {
        o[0].len() == 128 && o[1].len() == 128
    })
    .await;
    // Each replica loads exactly the watches of its shards.
    let specs: Vec<WatchSpec> = (0..60).map(|n| spec(&format!("i{n}"))).collect();
    a.sync_watches(&specs, &[], 1).await.unwrap();
    let mut loaded = 0;
    for r in [&a, &b] {
        let owned = r.owned_shards();
        let got: Vec<_> = r
            .records_in_shards(&owned, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.record)
            .collect();
        assert!(got.iter().all(|w| owned.contains(&shard_of(&w.key))));
        let want = specs
            .iter()
            .filter(|s| owned.contains(&shard_of(&s.key)))
            .count();
        assert_eq!(got.len(), want);
        loaded += got.len();
    }
    assert_eq!(loaded, 60, "every watch in one replica's shards");
    // After the highest id seen, only watches added since (by any replica) are read.
    let last = a.last_watch_id().await.unwrap();
    let all: Vec<i32> = (0..256).collect();
    assert!(a.records_in_shards(&all, last).await.unwrap().is_empty());
    let added = spec("i-later");
    b.add_watch(&added, 2).await.unwrap();
    let got = a.records_in_shards(&all, last).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].record.key, added.key);
    assert!(got[0].watch_id > last);
    let b_had = b.owned_shards();
    let epochs_before = epoch_of(&a, b_had[0]).await;
    b.close().await.unwrap();
    let t = a.lease_tick().await.unwrap();
    assert_eq!(t.owned.len(), 256, "one tick after the release: {t:?}");
    // Handed over, not taken over: nothing expired.
    assert_eq!((t.gained, t.taken_over, t.members), (b_had.clone(), 0, 1));
    assert_eq!(epoch_of(&a, b_had[0]).await, epochs_before + 1);
    a.close().await.unwrap();
    db.drop_it().await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_lease_that_expired_refuses_writes_until_claimed_again_at_a_new_epoch() {
    let db = Schema::fresh("leases_expired").await;
    let l = PostgresLedger::open(&db.target, vec![], vec![])
        .await
        .unwrap();
    l.join("replica-a", Duration::from_secs(1));
    let records = l.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    let shard = shard_of(&records[0].key);
    l.lease_tick().await.unwrap();
    let first = epoch_of(&l, shard).await;
    let mut step = StepCommit {
        record: records[0].clone(),
        events: vec![],
        new_version: None,
    };
    l.commit_step(step.clone()).await.unwrap();
    // Paused past its lease (nobody else took the shard): its next write is still refused.
    let deadline = crate::clock::instant_now() + Duration::from_secs(10);
    loop {
        step.record.state.polls += 1;
        match l.commit_step(step.clone()).await {
            Ok(()) => {}
            Err(StateError::LeaseLost { shard: s, .. }) if s == shard => break,
            Err(e) => panic!("{e}"),
        }
        assert!(
            crate::clock::instant_now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let polls = l.status().await.unwrap()[0].polls;
    assert_eq!(
        polls,
        step.record.state.polls - 1,
        "the refused step wrote nothing"
    );
    // Its next tick cannot renew an expired lease: it claims the shard again, a new epoch.
    let t = l.lease_tick().await.unwrap();
    assert_eq!(
        (t.renewed, t.owned.len(), t.taken_over),
        (0, 256, 0),
        "{t:?}"
    );
    assert_eq!(epoch_of(&l, shard).await, first + 1);
    l.commit_step(step).await.unwrap();
    l.close().await.unwrap();
    db.drop_it().await;
}
