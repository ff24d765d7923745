//! The ledger contract, tested once and run against every implementation (memory, SQLite and
//! PostgreSQL: the last only with `SCENEWATCH_TEST_PG`, each test in a fresh schema it drops;
//! without it they are compiled ignored, naming the variable). Only trait methods are used, so what is checked is what
//! the engine can rely on. Implementation-specific tests (schema, damaged files, group commit)
//! live beside their implementation.

use std::time::Duration;

use super::*;
use crate::config::WatchSpec;
use crate::domain::WatchKey;
use crate::events::Event;
use crate::ncp::RemoteStatus;
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
        version_id: VersionId::of(&key(index), at),
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

async fn phase_of(l: &dyn Ledger, index: &str) -> Phase {
    let rows = l.status().await.unwrap();
    rows.into_iter()
        .find(|r| r.key == key(index))
        .unwrap()
        .phase
}

async fn pending_events(l: &dyn Ledger, sink: &str) -> usize {
    l.due_events(sink, u64::MAX, 1_000).await.unwrap().len()
}

/// Each contract test, once per implementation.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_ledger {
            $(
                #[tokio::test]
                async fn $name() {
                    let l = crate::state::MemoryLedger::new(super::sinks(), super::event_sinks());
                    super::$name(&l).await;
                }
            )*
        }
        mod sqlite_ledger {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let l = crate::state::SqliteLedger::open(
                        dir.path(),
                        super::sinks(),
                        super::event_sinks(),
                    )
                    .await
                    .unwrap();
                    super::$name(&l).await;
                    let _ = crate::state::Ledger::close(&l).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres_ledger {
            $(
                #[tokio::test]
                #[cfg_attr(
                    not(sw_test_pg),
                    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
                )]
                async fn $name() {
                    let db = crate::state::postgres::testing::Schema::fresh(stringify!($name)).await;
                    let l = crate::state::PostgresLedger::open(
                        &db.target,
                        super::sinks(),
                        super::event_sinks(),
                    )
                    .await
                    .unwrap();
                    super::$name(&l).await;
                    let _ = crate::state::Ledger::close(&l).await;
                    db.drop_it().await;
                }
            )*
        }
    };
}

contract!(
    new_watches_are_pending_and_steps_round_trip,
    removed_watches_are_kept_flagged_and_readded_ones_keep_their_state,
    a_new_version_queues_one_delivery_per_sink_with_the_result_byte_for_byte,
    delivery_succeeded_is_idempotent_and_flips_to_watching_when_all_sinks_are_done,
    completed_does_not_flip_when_a_newer_version_is_the_last_one,
    parked_deliveries_are_not_due_but_counted_and_failures_back_off,
    events_are_queued_once_per_id_and_due_in_emission_order,
    a_sink_removed_from_the_configuration_no_longer_holds_watches_in_completed,
    sinks_added_later_get_rows_for_new_versions_only,
    reset_puts_only_ended_watches_back_to_pending,
    unpark_makes_parked_rows_due_again,
    sink_health_and_facts_are_kept,
    a_closed_ledger_answers_closed,
    discovered_watches_keep_their_origin_and_go_with_their_selector,
    versions_of_a_watch_reach_a_sink_in_order,
    retention_forgets_only_what_is_done_old_and_cannot_come_again,
    timing_only_steps_are_seen_by_reads_and_a_later_full_step_wins,
    a_backlog_of_large_results_comes_a_few_at_a_time_and_all_of_it_comes,
);

/// `i1` polled again and again while it stays as it was: only its timing moves.
fn timing_step(record: &WatchRecord, polls: u64) -> StepCommit {
    let mut r = record.clone();
    r.state.polls = polls;
    r.state.attempt = u32::try_from(polls % 7).unwrap_or(0);
    r.state.consecutive_errors = u32::try_from(polls % 3).unwrap_or(0);
    r.state.last_error = (!polls.is_multiple_of(3)).then(|| format!("HTTP 503 at poll {polls}"));
    r.next_poll_at_ms = Some(1_700_000_000_000 + polls * 1_000);
    StepCommit {
        record: r,
        events: vec![],
        new_version: None,
    }
}

async fn timing_only_steps_are_seen_by_reads_and_a_later_full_step_wins(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1"), spec("i2")], &[], 0)
        .await
        .unwrap();
    let waiting = waiting_record("i1");
    let first = StepCommit {
        record: waiting.clone(),
        events: vec![waiting_event("i1", "SUMMARIZING", 5)],
        new_version: None,
    };
    assert!(
        first
            .timing_only(&l.sync_watches(&[spec("i1")], &[], 1).await.unwrap()[0])
            .is_none(),
        "pending to waiting is a transition"
    );
    l.commit_step(first).await.unwrap();
    let mut last = None;
    for polls in 8..=60 {
        let step = timing_step(&waiting, polls);
        assert!(step.timing_only(&waiting).is_some());
        last = Some(step.record.clone());
        l.commit_step(step).await.unwrap();
    }
    let last = last.unwrap();
    // Every read of watch rows sees the latest timing.
    let row = l
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.key == key("i1"))
        .unwrap();
    assert_eq!(row.polls, 60);
    assert_eq!(row.next_poll_at_ms, last.next_poll_at_ms);
    assert_eq!(row.last_error, last.state.last_error);
    assert_eq!(row.phase, Phase::Waiting);
    let back = l.sync_watches(&[spec("i1")], &[], 2).await.unwrap();
    assert_eq!(back[0], last, "every field as the last step left it");

    // More timing, then a transition carrying other timing values: the transition wins, and
    // nothing queued before it comes back over it.
    for polls in 61..=70 {
        l.commit_step(timing_step(&waiting, polls)).await.unwrap();
    }
    let mut done = completed_step("i1", "v1", vec![]);
    done.record.state.polls = 71;
    done.record.state.attempt = 0;
    done.record.state.consecutive_errors = 0;
    done.record.state.last_error = None;
    done.record.next_poll_at_ms = None;
    l.commit_step(done.clone()).await.unwrap();
    let row = l
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.key == key("i1"))
        .unwrap();
    assert_eq!(row.phase, Phase::Completed);
    assert_eq!(row.polls, 71);
    assert_eq!(row.next_poll_at_ms, None);
    assert_eq!(row.pending_deliveries, 2);
    let back = l.sync_watches(&[spec("i1")], &[], 3).await.unwrap();
    assert_eq!(back[0], done.record);

    // Timing of a watch after its transition, beside another watch's transition.
    let mut recheck = timing_step(&done.record, 72);
    recheck.record.next_poll_at_ms = Some(9_000);
    l.commit_step(recheck.clone()).await.unwrap();
    l.commit_step(completed_step("i2", "v1", vec![]))
        .await
        .unwrap();
    let back = l
        .sync_watches(&[spec("i1"), spec("i2")], &[], 4)
        .await
        .unwrap();
    assert_eq!(back[0], recheck.record);
    assert_eq!(back[1].state.phase, Phase::Completed);
}

async fn new_watches_are_pending_and_steps_round_trip(l: &dyn Ledger) {
    let records = l
        .sync_watches(&[spec("i1"), spec("i2")], &[], 5)
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.state.phase == Phase::Pending));
    assert_eq!(records[0].key, key("i1"), "in specs order");
    let mut r = waiting_record("i2");
    r.last_version_id = Some(VersionId::of(&key("i2"), "v0"));
    r.stale_version_id = r.last_version_id.clone();
    l.commit_step(StepCommit {
        record: r.clone(),
        events: vec![],
        new_version: None,
    })
    .await
    .unwrap();
    let again = l
        .sync_watches(&[spec("i1"), spec("i2")], &[], 6)
        .await
        .unwrap();
    assert_eq!(again[1], r, "every field of the record comes back");
}

async fn removed_watches_are_kept_flagged_and_readded_ones_keep_their_state(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1"), spec("i2")], &[], 0)
        .await
        .unwrap();
    let record = waiting_record("i2");
    l.commit_step(StepCommit {
        record: record.clone(),
        events: vec![],
        new_version: None,
    })
    .await
    .unwrap();

    let active = l.sync_watches(&[spec("i1")], &[], 1).await.unwrap();
    assert_eq!(active.len(), 1);
    let status = l.status().await.unwrap();
    assert_eq!(status.len(), 2, "the removed watch is kept");
    let i2 = status.iter().find(|r| r.key == key("i2")).unwrap();
    assert!(i2.removed);
    assert_eq!(i2.phase, Phase::Waiting);
    assert_eq!(i2.polls, 7);
    assert!(!status.iter().find(|r| r.key == key("i1")).unwrap().removed);

    let mut changed = spec("i2");
    changed.scene_summary_id = Some("other".into());
    changed.generation = crate::config::GenerationChoice::Asset;
    let active = l
        .sync_watches(&[changed, spec("i1")], &[], 2)
        .await
        .unwrap();
    assert_eq!(active[0], record, "re-added with its state, in specs order");
    assert_eq!(active[1].key, key("i1"));
    assert!(l.status().await.unwrap().iter().all(|r| !r.removed));
}

async fn a_new_version_queues_one_delivery_per_sink_with_the_result_byte_for_byte(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let step = completed_step("i1", "2025-01-01T00:00:00Z", vec![]);
    let v = step.new_version.clone().unwrap();
    l.commit_step(step.clone()).await.unwrap();
    // The same version committed again (a replayed step) queues nothing more.
    l.commit_step(step).await.unwrap();

    for sink in sinks() {
        let due = l.due_deliveries(&sink, 1_000, 10).await.unwrap();
        assert_eq!(due.len(), 1, "{sink}");
        assert_eq!(due[0].version_id, v.version_id);
        assert_eq!(due[0].key, key("i1"));
        assert_eq!(due[0].result_json, v.result_json);
        assert_eq!(due[0].fetched_at_ms, 1_000);
        assert_eq!(due[0].attempts, 0);
    }
    assert!(
        l.due_deliveries("files", 999, 10).await.unwrap().is_empty(),
        "not due before it was fetched"
    );
    assert!(
        l.due_deliveries("other", 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let backlog = l.backlog().await.unwrap();
    let b = |sink: &str, pending| Backlog {
        sink: sink.into(),
        pending,
        parked: 0,
    };
    assert_eq!(backlog, vec![b("files", 1), b("hook", 1), b("log", 0)]);
}

async fn delivery_succeeded_is_idempotent_and_flips_to_watching_when_all_sinks_are_done(
    l: &dyn Ledger,
) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let step = completed_step("i1", "v1", vec![]);
    let vid = step.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(step).await.unwrap();

    let delivered = Event::delivered(&key("i1"), &vid, "files", "/out/i1.json", 2_000);
    for _ in 0..2 {
        let done = l
            .delivery_succeeded(
                &vid,
                "files",
                "/out/i1.json",
                vec![delivered.clone()],
                2_000,
            )
            .await
            .unwrap();
        assert!(!done, "hook is still pending");
        assert_eq!(phase_of(l, "i1").await, Phase::Completed);
    }
    assert_eq!(pending_events(l, "log").await, 1, "the event is kept once");
    assert!(
        l.due_deliveries("files", 9_999, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let done = l
        .delivery_succeeded(&vid, "hook", "https://example/hook", vec![], 3_000)
        .await
        .unwrap();
    assert!(done);
    assert_eq!(phase_of(l, "i1").await, Phase::Watching);
    // Again: still fully delivered, still watching, nothing else changes.
    assert!(
        l.delivery_succeeded(&vid, "hook", "https://example/hook", vec![], 4_000)
            .await
            .unwrap()
    );
    assert_eq!(phase_of(l, "i1").await, Phase::Watching);
    assert_eq!(l.status().await.unwrap()[0].pending_deliveries, 0);
}

async fn completed_does_not_flip_when_a_newer_version_is_the_last_one(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let old = completed_step("i1", "v1", vec![]);
    let old_id = old.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(old).await.unwrap();
    l.commit_step(completed_step("i1", "v2", vec![]))
        .await
        .unwrap();
    for sink in sinks() {
        l.delivery_succeeded(&old_id, &sink, "x", vec![], 1)
            .await
            .unwrap();
    }
    assert_eq!(phase_of(l, "i1").await, Phase::Completed);
}

async fn parked_deliveries_are_not_due_but_counted_and_failures_back_off(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let step = completed_step("i1", "v1", vec![]);
    let vid = step.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(step).await.unwrap();

    l.delivery_failed(&vid, "files", "disk full", 5_000, false)
        .await
        .unwrap();
    assert!(
        l.due_deliveries("files", 4_999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = l.due_deliveries("files", 5_000, 10).await.unwrap();
    assert_eq!(due[0].attempts, 1);

    l.delivery_failed(&vid, "hook", "HTTP 400", 6_000, true)
        .await
        .unwrap();
    assert!(
        l.due_deliveries("hook", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let backlog = l.backlog().await.unwrap();
    let hook = backlog.iter().find(|b| b.sink == "hook").unwrap();
    assert_eq!((hook.pending, hook.parked), (0, 1));
    let status = l.status().await.unwrap();
    assert_eq!(
        (status[0].pending_deliveries, status[0].parked_deliveries),
        (1, 1)
    );

    // A late failure report cannot undo a success.
    l.delivery_succeeded(&vid, "files", "f", vec![], 7_000)
        .await
        .unwrap();
    l.delivery_failed(&vid, "files", "late", 8_000, false)
        .await
        .unwrap();
    assert!(
        l.due_deliveries("files", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_are_queued_once_per_id_and_due_in_emission_order(l: &dyn Ledger) {
    let a = waiting_event("i1", "WAIT_SUMMARIZE", 300);
    let b = Event::sink_failing("hook", 1, "HTTP 503", 100);
    let c = waiting_event("i1", "SUMMARIZING", 200);
    l.record_events(vec![a.clone(), b.clone()]).await.unwrap();
    l.record_events(vec![b.clone(), c.clone(), a.clone()])
        .await
        .unwrap();
    assert_eq!(pending_events(l, "log").await, 3);

    let due = l.due_events("log", 1_000, 10).await.unwrap();
    assert_eq!(
        due,
        vec![a.clone(), b.clone(), c.clone()],
        "emission order, not time order"
    );
    assert_eq!(l.due_events("log", 1_000, 2).await.unwrap().len(), 2);

    // A failed batch holds back the events after it: order is kept.
    l.events_failed(
        "log",
        std::slice::from_ref(&a.id),
        "broken pipe",
        5_000,
        false,
    )
    .await
    .unwrap();
    assert!(l.due_events("log", 4_999, 10).await.unwrap().is_empty());
    assert_eq!(l.due_events("log", 5_000, 10).await.unwrap().len(), 3);

    l.events_sent("log", &[a.id.clone(), b.id.clone()])
        .await
        .unwrap();
    l.events_sent("log", std::slice::from_ref(&a.id))
        .await
        .unwrap();
    assert_eq!(
        l.due_events("log", 5_000, 10).await.unwrap(),
        vec![c.clone()]
    );

    l.events_failed("log", std::slice::from_ref(&c.id), "400", 0, true)
        .await
        .unwrap();
    assert!(l.due_events("log", u64::MAX, 10).await.unwrap().is_empty());
    let log = l
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.sink == "log")
        .unwrap();
    assert_eq!((log.pending, log.parked), (0, 1));
}

async fn a_sink_removed_from_the_configuration_no_longer_holds_watches_in_completed(
    l: &dyn Ledger,
) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let step = completed_step("i1", "v1", vec![]);
    let vid = step.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(step).await.unwrap();
    // Reconfigured with only the first sink: "hook" was removed.
    let kept = sinks()[0].clone();
    l.set_sinks(vec![kept.clone()], event_sinks())
        .await
        .unwrap();
    let done = l
        .delivery_succeeded(&vid, &kept, "/out/i1.json", vec![], 2_000)
        .await
        .unwrap();
    assert!(done, "the removed sink's row does not count");
    assert_eq!(phase_of(l, "i1").await, Phase::Watching);
    // Its row is still there, pending, for an operator who puts the sink back; the stored
    // result was released once every configured sink had it.
    let hook = l.backlog().await.unwrap();
    assert!(
        hook.iter().any(|b| b.sink == "hook" && b.pending == 1),
        "{hook:?}"
    );
    let due = l.due_deliveries("hook", u64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].result_json, "", "released");
}

async fn sinks_added_later_get_rows_for_new_versions_only(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    l.commit_step(completed_step("i1", "v1", vec![]))
        .await
        .unwrap();
    l.set_sinks(vec!["s3".into()], vec![]).await.unwrap();
    assert!(
        l.due_deliveries("s3", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    l.commit_step(completed_step(
        "i1",
        "v2",
        vec![waiting_event("i1", "X", 1)],
    ))
    .await
    .unwrap();
    assert_eq!(l.due_deliveries("s3", u64::MAX, 10).await.unwrap().len(), 1);
    assert_eq!(
        l.due_deliveries("files", u64::MAX, 10).await.unwrap().len(),
        1,
        "only v1's row"
    );
    assert_eq!(pending_events(l, "log").await, 0, "no event sink any more");
}

async fn reset_puts_only_ended_watches_back_to_pending(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1"), spec("i2"), spec("i3")], &[], 0)
        .await
        .unwrap();
    for (i, phase) in [
        ("i1", Phase::Failed),
        ("i2", Phase::Waiting),
        ("i3", Phase::Rejected),
    ] {
        let mut r = waiting_record(i);
        r.state.phase = phase;
        l.commit_step(StepCommit {
            record: r,
            events: vec![],
            new_version: None,
        })
        .await
        .unwrap();
    }
    let mut done = l
        .reset_watches(vec![key("i1"), key("i2")], 50)
        .await
        .unwrap();
    assert_eq!(done, vec![key("i1")], "a waiting watch is not reset");
    done = l.reset_watches(vec![], 60).await.unwrap();
    assert_eq!(done, vec![key("i3")], "every ended one");
    let records = l
        .sync_watches(&[spec("i1"), spec("i2"), spec("i3")], &[], 70)
        .await
        .unwrap();
    let i1 = &records[0];
    assert_eq!(i1.state.phase, Phase::Pending);
    assert_eq!(i1.next_poll_at_ms, Some(50), "due now");
    assert_eq!(i1.state.consecutive_errors, 0);
    assert_eq!(i1.state.started_at, None);
    assert_eq!(i1.state.polls, 7, "history is kept");
    assert_eq!(records[1].state.phase, Phase::Waiting);
}

async fn unpark_makes_parked_rows_due_again(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &[], 0).await.unwrap();
    let step = completed_step("i1", "v1", vec![waiting_event("i1", "X", 1)]);
    let vid = step.new_version.as_ref().unwrap().version_id.clone();
    let ev = step.events[0].id.clone();
    l.commit_step(step).await.unwrap();
    for sink in sinks() {
        l.delivery_failed(&vid, &sink, "400", 10, true)
            .await
            .unwrap();
    }
    l.events_failed("log", std::slice::from_ref(&ev), "400", 10, true)
        .await
        .unwrap();
    assert_eq!(l.unpark(Some("hook".into()), 20).await.unwrap(), 1);
    assert_eq!(l.due_deliveries("hook", 20, 10).await.unwrap().len(), 1);
    assert!(l.due_deliveries("files", 20, 10).await.unwrap().is_empty());
    assert_eq!(l.unpark(None, 30).await.unwrap(), 2, "files and the event");
    assert_eq!(l.due_events("log", 30, 10).await.unwrap().len(), 1);
    assert_eq!(l.unpark(None, 40).await.unwrap(), 0);
}

async fn sink_health_and_facts_are_kept(l: &dyn Ledger) {
    assert_eq!(l.sink_health("hook").await.unwrap(), SinkHealth::default());
    let h = SinkHealth {
        failing: true,
        episode: 3,
    };
    l.set_sink_health("hook", h).await.unwrap();
    assert_eq!(l.sink_health("hook").await.unwrap(), h);
    assert_eq!(l.fact("index_api").await.unwrap(), None);
    l.set_fact("index_api", "gone").await.unwrap();
    l.set_fact("index_api", "gone since 2027-01-05")
        .await
        .unwrap();
    assert_eq!(
        l.fact("index_api").await.unwrap().as_deref(),
        Some("gone since 2027-01-05")
    );
}

async fn a_closed_ledger_answers_closed(l: &dyn Ledger) {
    l.close().await.unwrap();
    let e = l.status().await.unwrap_err();
    assert!(matches!(e, StateError::Closed { .. }), "{e}");
}

async fn discovered_watches_keep_their_origin_and_go_with_their_selector(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1")], &["project:ws/p1".into()], 0)
        .await
        .unwrap();
    let mut found = spec("i2");
    found.origin = Some("project:ws/p1".into());
    found.scene_summary_id = None;
    let r = l.add_watch(&found, 1).await.unwrap();
    assert_eq!(r.state.phase, Phase::Pending);
    let mut r2 = waiting_record("i2");
    r2.state.route = Some(crate::watch::Route::Asset);
    l.commit_step(StepCommit {
        record: r2.clone(),
        events: vec![],
        new_version: None,
    })
    .await
    .unwrap();
    // A reload that keeps the selector keeps the discovered watch (it is not in `specs`).
    l.sync_watches(&[spec("i1")], &["project:ws/p1".into()], 2)
        .await
        .unwrap();
    let d = l.discovered().await.unwrap();
    assert_eq!(d, vec![("project:ws/p1".to_string(), r2.clone())]);
    // Found again: its state is kept.
    assert_eq!(l.add_watch(&found, 3).await.unwrap(), r2);
    // An asset gone from its list: removed, kept.
    l.remove_watches(vec![key("i2")], 4).await.unwrap();
    assert!(l.discovered().await.unwrap().is_empty());
    let status = l.status().await.unwrap();
    assert!(status.iter().any(|s| s.key == key("i2") && s.removed));
    // Back in the list: un-removed with its state.
    l.add_watch(&found, 5).await.unwrap();
    assert_eq!(l.discovered().await.unwrap().len(), 1);
    // The selector removed from the configuration: its watches go with it.
    l.sync_watches(&[spec("i1")], &[], 6).await.unwrap();
    assert!(l.discovered().await.unwrap().is_empty());
    let status = l.status().await.unwrap();
    assert!(!status.iter().find(|s| s.key == key("i1")).unwrap().removed);
}

async fn versions_of_a_watch_reach_a_sink_in_order(l: &dyn Ledger) {
    l.sync_watches(&[spec("i1"), spec("i2")], &[], 0)
        .await
        .unwrap();
    let mut old = completed_step("i1", "v1", vec![]);
    old.new_version.as_mut().unwrap().fetched_at_ms = 1_000;
    let old_id = old.new_version.as_ref().unwrap().version_id.clone();
    let mut new = completed_step("i1", "v2", vec![]);
    new.new_version.as_mut().unwrap().fetched_at_ms = 2_000;
    let new_id = new.new_version.as_ref().unwrap().version_id.clone();
    let mut other = completed_step("i2", "v1", vec![]);
    other.new_version.as_mut().unwrap().fetched_at_ms = 3_000;
    for s in [old, new, other] {
        l.commit_step(s).await.unwrap();
    }
    // The older version failed and backs off: the newer one of the same watch waits for it;
    // another watch's version does not.
    l.delivery_failed(&old_id, "files", "down", 10_000, false)
        .await
        .unwrap();
    let due: Vec<String> = l
        .due_deliveries("files", 5_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key.index_id().to_string())
        .collect();
    assert_eq!(due, ["i2"], "v2 of i1 waits for v1");
    let due = l.due_deliveries("files", 10_000, 10).await.unwrap();
    assert!(due.iter().any(|d| d.version_id == old_id), "{due:?}");
    assert!(due.iter().all(|d| d.version_id != new_id), "{due:?}");
    // Delivered (or parked), it no longer holds the newer one.
    l.delivery_failed(&old_id, "files", "refused", 10_000, true)
        .await
        .unwrap();
    let due = l.due_deliveries("files", 10_000, 10).await.unwrap();
    assert!(due.iter().any(|d| d.version_id == new_id), "{due:?}");
    // Each sink on its own: the other sink's rows are not held up by this one's.
    assert_eq!(l.due_deliveries("hook", 10_000, 10).await.unwrap().len(), 2);
}

/// A step of `index` that fetched version `at` at `fetched_at_ms`, now its last version.
fn step_fetched_at(index: &str, at: &str, fetched_at_ms: u64) -> StepCommit {
    let mut step = completed_step(index, at, vec![]);
    if let Some(v) = step.new_version.as_mut() {
        v.fetched_at_ms = fetched_at_ms;
    }
    step
}

async fn deliver_everywhere(l: &dyn Ledger, vid: &VersionId, at_ms: u64) {
    for sink in sinks() {
        l.delivery_succeeded(vid, &sink, "/out", vec![], at_ms)
            .await
            .unwrap();
    }
}

/// Every due delivery of a sink, as version ids.
async fn due_ids(l: &dyn Ledger, sink: &str) -> Vec<VersionId> {
    let mut ids: Vec<VersionId> = l
        .due_deliveries(sink, u64::MAX, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.version_id)
        .collect();
    ids.sort();
    ids
}

async fn retention_forgets_only_what_is_done_old_and_cannot_come_again(l: &dyn Ledger) {
    let cutoff = 10_000;
    // i1: an old version delivered everywhere, then its last version (also old, delivered).
    let i1_v1 = step_fetched_at("i1", "v1", 1_000);
    let i1_v1_id = i1_v1.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(i1_v1.clone()).await.unwrap();
    deliver_everywhere(l, &i1_v1_id, 2_000).await;
    let i1_v2 = step_fetched_at("i1", "v2", 3_000);
    let i1_v2_id = i1_v2.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(i1_v2.clone()).await.unwrap();
    deliver_everywhere(l, &i1_v2_id, 4_000).await;
    // i2: an old version one sink has not taken yet (then a newer one, so it is not the last).
    let i2_v1 = step_fetched_at("i2", "v1", 1_000);
    let i2_v1_id = i2_v1.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(i2_v1).await.unwrap();
    l.delivery_succeeded(&i2_v1_id, "files", "/out", vec![], 2_000)
        .await
        .unwrap();
    l.delivery_failed(&i2_v1_id, "hook", "HTTP 503", 2_500, false)
        .await
        .unwrap();
    let i2_v2 = step_fetched_at("i2", "v2", 3_000);
    let i2_v2_id = i2_v2.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(i2_v2).await.unwrap();
    // i3: an old version delivered everywhere, but only recently (within the retention).
    let i3_v1 = step_fetched_at("i3", "v1", 1_000);
    let i3_v1_id = i3_v1.new_version.as_ref().unwrap().version_id.clone();
    l.commit_step(i3_v1).await.unwrap();
    deliver_everywhere(l, &i3_v1_id, 20_000).await;
    let i3_v2 = step_fetched_at("i3", "v2", 21_000);
    l.commit_step(i3_v2).await.unwrap();
    // i4: a watch with no version yet.
    let mut i4 = waiting_record("i4");
    i4.state.phase = Phase::Waiting;
    l.commit_step(StepCommit {
        record: i4,
        events: vec![],
        new_version: None,
    })
    .await
    .unwrap();

    let cycle_v2 = i1_v2_id.to_string();
    let old_sink_event = Event::sink_failing("hook", 1, "HTTP 503", 1_500);
    let unsent = Event::sink_recovered("hook", 1, 1_600);
    let old_cycle = Event::waiting(&key("i1"), "summarizing", "first", 500);
    let current_cycle = Event::waiting(&key("i1"), "summarizing", &cycle_v2, 3_500);
    let discovered = Event::discovered(&key("i1"), "asset:ws/p1/a1", 100);
    let no_version_yet = Event::waiting(&key("i4"), "summarizing", "first", 200);
    let young = Event::sink_failing("hook", 2, "HTTP 503", 60_000);
    let all = vec![
        discovered.clone(),
        no_version_yet.clone(),
        old_cycle.clone(),
        old_sink_event.clone(),
        unsent.clone(),
        current_cycle.clone(),
        young.clone(),
    ];
    l.record_events(all.clone()).await.unwrap();
    let sent: Vec<String> = all
        .iter()
        .filter(|e| e.id != unsent.id)
        .map(|e| e.id.clone())
        .collect();
    l.events_sent("log", &sent).await.unwrap();
    assert_eq!(pending_events(l, "log").await, 1);
    let status_before = l.status().await.unwrap();

    // Batches of one: the walk goes on across calls until it says it is over.
    let mut total = Pruned::default();
    let mut calls = 0;
    loop {
        let p = l.prune(cutoff, 1).await.unwrap();
        calls += 1;
        assert!(
            p.versions <= 1 && p.events <= 1,
            "at most the limit per call: {p:?}"
        );
        total.versions += p.versions;
        total.deliveries += p.deliveries;
        total.events += p.events;
        total.event_deliveries += p.event_deliveries;
        if !p.more {
            break;
        }
        assert!(calls < 100, "the walk never ends");
    }
    assert_eq!(
        (
            total.versions,
            total.deliveries,
            total.events,
            total.event_deliveries
        ),
        (1, 2, 2, 2),
        "i1's first version with its two delivery rows, the sent sink event and i1's old-cycle \
         wait with their event-sink rows: {total:?}"
    );
    assert_eq!(
        l.prune(cutoff, 1_000).await.unwrap(),
        Pruned::default(),
        "a second round finds nothing"
    );

    // Watches and their open rows are untouched.
    assert_eq!(l.status().await.unwrap(), status_before);
    assert!(
        due_ids(l, "hook").await.contains(&i2_v1_id),
        "a version a sink has not taken stays due"
    );
    assert!(
        !due_ids(l, "hook").await.contains(&i2_v2_id),
        "and still holds its watch's newer one back"
    );
    assert_eq!(
        pending_events(l, "log").await,
        1,
        "the unsent event stays queued"
    );

    // What was kept still recognises its fact: fetched again, a kept version is not delivered
    // again, and recorded again, a kept event is not sent again.
    l.commit_step(i1_v2).await.unwrap();
    assert!(due_ids(l, "files").await.iter().all(|v| *v != i1_v2_id));
    l.record_events(vec![
        discovered,
        no_version_yet,
        current_cycle,
        young,
        unsent,
    ])
    .await
    .unwrap();
    assert_eq!(pending_events(l, "log").await, 1);

    // What was forgotten is new again: that is why only facts that cannot come again go (an
    // older version's lastAnalyzedAt returning, a sink-failing episode number reused).
    l.commit_step(i1_v1).await.unwrap();
    assert!(due_ids(l, "files").await.contains(&i1_v1_id));
    l.record_events(vec![old_sink_event]).await.unwrap();
    assert_eq!(pending_events(l, "log").await, 2);
}

/// A backlog of large results is handed out a few at a time (a batch ends once its results
/// reach `DUE_RESULT_BYTES`), in due order, until every one was delivered; small results still
/// come up to the limit at once.
async fn a_backlog_of_large_results_comes_a_few_at_a_time_and_all_of_it_comes(l: &dyn Ledger) {
    let small: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let large: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
    let specs: Vec<WatchSpec> = small.iter().chain(&large).map(|i| spec(i)).collect();
    l.sync_watches(&specs, &[], 0).await.unwrap();
    for i in &small {
        l.commit_step(completed_step(i, "v1", vec![]))
            .await
            .unwrap();
    }
    assert_eq!(l.due_deliveries("files", 10_000, 5).await.unwrap().len(), 5);
    let due = l.due_deliveries("files", 10_000, 64).await.unwrap();
    assert_eq!(due.len(), 12, "small results: all of them at once");
    for d in due {
        l.delivery_succeeded(&d.version_id, "files", "somewhere", vec![], 20_000)
            .await
            .unwrap();
    }

    let big = DUE_RESULT_BYTES / 4 + 1;
    for (n, i) in large.iter().enumerate() {
        let mut step = completed_step(i, "v1", vec![]);
        if let Some(v) = step.new_version.as_mut() {
            v.fetched_at_ms = 1_000 + n as u64;
            v.result_json = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(big));
        }
        l.commit_step(step).await.unwrap();
    }
    let mut seen = Vec::new();
    loop {
        let due = l.due_deliveries("files", 10_000, 64).await.unwrap();
        if due.is_empty() {
            break;
        }
        assert!(due.len() <= 4, "a batch of {} large results", due.len());
        for d in due {
            assert!(d.result_json.len() > big && d.result_json.ends_with("\"}"));
            seen.push(d.key.index_id().to_string());
            l.delivery_succeeded(&d.version_id, "files", "somewhere", vec![], 20_000)
                .await
                .unwrap();
        }
    }
    seen.sort();
    let mut want = large.clone();
    want.sort();
    assert_eq!(seen, want, "every large result was handed out once");
}
