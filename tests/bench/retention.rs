//! Benchmark of retention (`state.retention`): the SQLite ledger's size over a simulated month
//! at 100,000 watches (not a test: it prints figures, asserts nothing).
//!
//! Time is simulated through the ledger's `now` arguments, never waited for. Day 0 records N
//! watches, each with a first version delivered to one result sink and its events sent to one
//! event sink. Then, every simulated day, `SCENEWATCH_BENCH_CHANGES` watches (round robin) go
//! through one re-analysis: a `summary.waiting` event, a new version with `summary.completed`
//! and `summary.updated`, its delivery with `summary.delivered`, every event sent. At the end of
//! each day one retention round runs (`state::retention::round`, batches of 500, each its own
//! transaction) with the cutoff `now - retention`, and the ledger's size is printed: the
//! database file, the WAL, pages in use, free pages SQLite reuses, and rows per table.
//!
//! Run: `cargo bench --bench retention`. Knobs (environment): `SCENEWATCH_BENCH_WATCHES`
//! (default 100000), `SCENEWATCH_BENCH_DAYS` (default 30), `SCENEWATCH_BENCH_CHANGES`
//! (re-analyses per day, default 10000), `SCENEWATCH_BENCH_RETENTION` (default `7d`, so the
//! month shows the plateau; `off` never prunes, for comparison). Figures: docs/benchmarks.md.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures real time; clippy.toml's clock rule is for the crate"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use scenewatch::config::{GenerationChoice, WatchSpec};
use scenewatch::domain::{VersionId, WatchKey};
use scenewatch::events::Event;
use scenewatch::ncp::RemoteStatus;
use scenewatch::state::{
    Ledger, NewVersion, Pruned, SqliteLedger, StepCommit, WatchRecord, retention,
};
use scenewatch::watch::{Phase, WatchState};

const DAY_MS: u64 = 86_400_000;
/// 2026-01-01T00:00:00Z.
const START_MS: u64 = 1_767_225_600_000;
/// Ledger calls in flight at once (the writer thread groups them into transactions).
const IN_FLIGHT: usize = 512;

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn key(i: u64) -> WatchKey {
    WatchKey::new("ws", "1", format!("a{i}"), format!("{}", 1_000_000 + i)).unwrap()
}

fn result_json(i: u64, at: &str) -> String {
    format!(
        r#"{{"indexId":{},"sceneSummaryInfo":{{"lastAnalyzedAt":"{at}"}},"sceneSummaries":[{{"scene":1,"startMs":0,"endMs":5000,"summary":{{"description":"{}"}}}}]}}"#,
        1_000_000 + i,
        "x".repeat(1_500)
    )
}

/// One re-analysis of watch `i` at `now`: the step that fetched version `n`, its delivery, and
/// every event sent.
async fn cycle(
    l: &SqliteLedger,
    i: u64,
    n: u64,
    now: u64,
    previous: Option<VersionId>,
) -> VersionId {
    let k = key(i);
    let at = format!("2026-01-01T00:00:00.{n:06}Z");
    let vid = VersionId::of(&k, &at);
    let cycle = previous
        .as_ref()
        .map_or_else(|| "first".to_string(), |v| v.to_string());
    let mut events = vec![
        Event::waiting(&k, "summarizing", &cycle, now.saturating_sub(60_000)),
        Event::completed(&k, &vid, &at, 1, None, now),
    ];
    if let Some(p) = &previous {
        events.push(Event::updated(&k, &vid, p, &at, None, now));
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let record = WatchRecord {
        key: k.clone(),
        state: WatchState {
            phase: Phase::Completed,
            remote: Some(RemoteStatus::Completed),
            polls: n,
            last_version: Some(at.clone()),
            ..WatchState::default()
        },
        next_poll_at_ms: Some(now + 3_600_000),
        last_version_id: Some(vid.clone()),
        last_change_at_ms: Some(now),
        stale_version_id: None,
    };
    l.commit_step(StepCommit {
        record,
        events,
        new_version: Some(NewVersion {
            version_id: vid.clone(),
            key: k.clone(),
            last_analyzed_at: at.clone(),
            fetched_at_ms: now,
            scene_count: 1,
            analyzed_scene_ids: None,
            result_json: result_json(i, &at),
        }),
    })
    .await
    .unwrap();
    let delivered = Event::delivered(&k, &vid, "files", "/results/x.json", now + 1_000);
    let mut sent = ids;
    sent.push(delivered.id.clone());
    l.delivery_succeeded(
        &vid,
        "files",
        "/results/x.json",
        vec![delivered],
        now + 1_000,
    )
    .await
    .unwrap();
    l.events_sent("events", &sent).await.unwrap();
    vid
}

struct Size {
    db: u64,
    wal: u64,
    pages: i64,
    free: i64,
    page_size: i64,
    rows: [i64; 4],
}

fn size(dir: &Path) -> Size {
    let db = dir.join("scenewatch.db");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    Size {
        db: len(&db),
        wal: len(&dir.join("scenewatch.db-wal")),
        pages: one("PRAGMA page_count"),
        free: one("PRAGMA freelist_count"),
        page_size: one("PRAGMA page_size"),
        rows: [
            one("SELECT count(*) FROM versions"),
            one("SELECT count(*) FROM deliveries"),
            one("SELECT count(*) FROM events"),
            one("SELECT count(*) FROM event_deliveries"),
        ],
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let watches = env_num("SCENEWATCH_BENCH_WATCHES", 100_000);
    let days = env_num("SCENEWATCH_BENCH_DAYS", 30);
    let changes = env_num("SCENEWATCH_BENCH_CHANGES", 10_000).min(watches);
    let retention_text =
        std::env::var("SCENEWATCH_BENCH_RETENTION").unwrap_or_else(|_| "7d".into());
    let retention_ms = match retention_text.trim() {
        "off" => None,
        t => Some(
            u64::try_from(
                humantime::parse_duration(t)
                    .unwrap_or_else(|e| panic!("SCENEWATCH_BENCH_RETENTION={t:?}: {e}"))
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
        ),
    };
    println!(
        "retention benchmark: {watches} watches, {days} days, {changes} re-analyses a day, \
         retention {retention_text}"
    );
    println!("command: cargo bench --bench retention");
    let dir = tempfile::tempdir().unwrap();
    let l = SqliteLedger::open(dir.path(), vec!["files".into()], vec!["events".into()])
        .await
        .unwrap();
    let specs: Vec<WatchSpec> = (0..watches)
        .map(|i| WatchSpec {
            key: key(i),
            scene_summary_id: None,
            generation: GenerationChoice::Asset,
            max_wait: Duration::from_secs(86_400),
            declared_at: format!("watch[{i}]").into(),
            origin: None,
        })
        .collect();
    let began = Instant::now();
    l.sync_watches(&specs, &[], START_MS).await.unwrap();
    drop(specs);
    let mut last: Vec<Option<VersionId>> = vec![None; watches as usize];
    let mut versions_made: Vec<u64> = vec![0; watches as usize];

    // Runs one cycle for each of `ids` at times spread over the day starting at `day_ms`.
    async fn run_cycles(
        l: &SqliteLedger,
        ids: &[u64],
        day_ms: u64,
        last: &mut [Option<VersionId>],
        made: &mut [u64],
    ) {
        // Spread over the first 20 hours of the day.
        let spread = (DAY_MS * 5 / 6) / (ids.len() as u64).max(1);
        for (c, chunk) in ids.chunks(IN_FLIGHT).enumerate() {
            let futs = chunk.iter().enumerate().map(|(j, &i)| {
                let n = made[i as usize] + 1;
                let prev = last[i as usize].clone();
                let now = day_ms + ((c * IN_FLIGHT + j) as u64) * spread;
                async move { (i, n, cycle(l, i, n, now, prev).await) }
            });
            for (i, n, vid) in futures_util::future::join_all(futs).await {
                last[i as usize] = Some(vid);
                made[i as usize] = n;
            }
        }
    }

    let all: Vec<u64> = (0..watches).collect();
    run_cycles(&l, &all, START_MS, &mut last, &mut versions_made).await;
    let s = size(dir.path());
    println!(
        "day 0 (every watch with one delivered version) in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    println!(
        "| day | pruned rows | round | longest batch | db file | WAL | in use | free pages | versions | deliveries | events | event rows |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let print = |day: u64, pruned: &Pruned, round: Duration, longest: Duration, s: &Size| {
        println!(
            "| {day} | {} | {:.2} s | {:.1} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {} | {} | {} |",
            pruned.rows(),
            round.as_secs_f64(),
            longest.as_secs_f64() * 1e3,
            mib(s.db),
            mib(s.wal),
            mib(((s.pages - s.free) * s.page_size) as u64),
            s.free,
            s.rows[0],
            s.rows[1],
            s.rows[2],
            s.rows[3],
        );
    };
    print(0, &Pruned::default(), Duration::ZERO, Duration::ZERO, &s);
    let mut next = 0u64;
    for day in 1..=days {
        let day_ms = START_MS + day * DAY_MS;
        let ids: Vec<u64> = (0..changes).map(|j| (next + j) % watches).collect();
        next = (next + changes) % watches;
        run_cycles(&l, &ids, day_ms, &mut last, &mut versions_made).await;
        let end_of_day = day_ms + DAY_MS - 1;
        let (mut total, mut longest) = (Pruned::default(), Duration::ZERO);
        let round_began = Instant::now();
        if let Some(r) = retention_ms {
            let before = end_of_day.saturating_sub(r);
            // The daemon's round, timed batch by batch (no pause between batches here).
            loop {
                let t = Instant::now();
                let b = l.prune(before, retention::BATCH).await.unwrap();
                longest = longest.max(t.elapsed());
                total.versions += b.versions;
                total.deliveries += b.deliveries;
                total.events += b.events;
                total.event_deliveries += b.event_deliveries;
                if !b.more {
                    break;
                }
            }
        }
        let round = round_began.elapsed();
        print(day, &total, round, longest, &size(dir.path()));
    }
    l.close().await.unwrap();
    println!(
        "total {:.1} s; after close (WAL checkpointed): db file {:.1} MiB",
        began.elapsed().as_secs_f64(),
        mib(size(dir.path()).db)
    );
}
