//! Tests of the engine itself under paused tokio time: `engine::run` over a `MemoryLedger`, a
//! scripted [`Api`] (answers are a function of the watch, the call and the time), in-memory sinks
//! that record what they got and can be told to fail, and an [`Observer`] that records every
//! update and wakes the test. The memory ledger answers at once, so paused time only moves when
//! every task waits on a timer: the times asserted below are the engine's own, to the
//! millisecond. Tests wait for conditions (an update seen, a call made), never for a fixed time;
//! every wait has a deadline in virtual time, so a missing behaviour fails instead of hanging.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Command, Finished, Mode, ONCE_DELIVERY_ATTEMPTS, Observer, Setup, Update};
use crate::clock::Clock;
use crate::config::{self, Config, Sources};
use crate::events::{Event, EventType};
use crate::health::Health;
use crate::ncp::{
    AnalysisStatus, Api, ApiError, ApiFactory, AssetPage, ErrorOrigin, Generation, IndexStatus,
    Operation, RemoteStatus, SummaryResult, SummaryStatus, Target, Verdict,
};
use crate::policy::first_poll_offset;
use crate::sink::{Delivery, Disposition, EventSink, Receipt, Sink, SinkError};
use crate::state::{MemoryLedger, SharedLedger};
use crate::watch::Phase;

/// The wall clock the engine's clock starts at; times in the tests are milliseconds after it.
const T0: u64 = 1_800_000_000_000;
const S: u64 = 1000;

// ---------------------------------------------------------------------------------------------
// The scripted API

/// Which call the engine made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Status,
    Result,
}

/// One call the engine made, as the fake API saw it.
#[derive(Debug, Clone)]
struct Call {
    /// The watch's asset id (every test watch has index id = asset id).
    asset: String,
    op: Op,
    /// When it was made, ms after the start.
    at: u64,
    /// How many calls of this op this watch made before this one.
    n: usize,
    /// The access key of the client that made it (changes with a reload).
    access_key: String,
}

/// What the fake API answers.
#[derive(Debug, Clone)]
enum Reply {
    /// The status endpoint says this; the result endpoint says "not completed yet".
    Status(RemoteStatus),
    /// Completed: the status endpoint says so, the result endpoint serves this version.
    Done(&'static str),
    /// 503 (with a `Retry-After`, if given).
    Unavailable(Option<Duration>),
    /// 429 rate limit (with a `Retry-After`, if given).
    Throttled(Option<Duration>),
    /// 401.
    Auth,
    /// 429 with gateway errorCode 400, Quota Exceeded.
    Quota,
    /// 404: a permanent error.
    NotFound,
    /// This answer, after this long.
    Slow(Duration, Box<Reply>),
}

fn waiting() -> Reply {
    Reply::Status(RemoteStatus::WaitSummarize)
}

fn summarizing() -> Reply {
    Reply::Status(RemoteStatus::Summarizing)
}

fn slow(d: Duration, r: Reply) -> Reply {
    Reply::Slow(d, Box::new(r))
}

type ScriptFn = dyn Fn(&Call) -> Reply + Send + Sync;

/// What every fake client of one test shares: the script and the record of calls.
struct Script {
    clock: Clock,
    reply: Box<ScriptFn>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    wake: Arc<Notify>,
}

/// One client, as the engine's `ApiFactory` built it for one configuration.
struct FakeApi {
    script: Arc<Script>,
    access_key: String,
}

fn api_error(op: Op, status: u16, code: Option<&str>) -> ApiError {
    ApiError {
        operation: match op {
            Op::Status => Operation::Status,
            Op::Result => Operation::Result,
        },
        path: "/fake".into(),
        http_status: Some(status),
        code: code.map(String::from),
        message: format!("fake {status}"),
        details: None,
        trace_id: Some("trace-fake".into()),
        origin: ErrorOrigin::Gateway,
    }
}

fn result_of(version: &str) -> SummaryResult {
    SummaryResult::from_result_json(format!(
        r#"{{"indexId":1,"sceneSummaryInfo":{{"lastAnalyzedAt":"{version}","analyzedSceneIds":null}},"sceneSummaries":[{{"scene":1,"startMs":0,"endMs":1000,"sceneSummary":{{"description":"A scene.","metadataChangedAfterSummary":false,"analyzedAt":"{version}"}}}}]}}"#
    ))
    .expect("the fake result parses")
}

/// The verdict `reply` stands for at `op`, or the error it carries.
fn verdict<T>(op: Op, reply: &Reply, ok: impl FnOnce(&Reply) -> Option<T>) -> Verdict<T> {
    match reply {
        Reply::Unavailable(after) => Verdict::Retryable {
            after: *after,
            error: api_error(op, 503, None),
        },
        Reply::Throttled(retry_after) => Verdict::Throttled {
            retry_after: *retry_after,
            error: api_error(op, 429, Some("420")),
        },
        Reply::Auth => Verdict::AuthFailure(api_error(op, 401, Some("200"))),
        Reply::Quota => Verdict::QuotaExceeded {
            retry_after: None,
            error: api_error(op, 429, Some("400")),
        },
        Reply::NotFound => Verdict::Permanent(api_error(op, 404, Some("10040"))),
        other => match ok(other) {
            Some(t) => Verdict::Ok(t),
            None => Verdict::Pending(api_error(op, 400, Some("10100"))),
        },
    }
}

impl FakeApi {
    async fn answer(&self, op: Op, t: &Target) -> Reply {
        let call = {
            let mut calls = self.script.calls.lock().unwrap();
            let n = calls
                .iter()
                .filter(|c| c.asset == t.asset_id && c.op == op)
                .count();
            let call = Call {
                asset: t.asset_id.clone(),
                op,
                at: self.script.clock.now_ms() - T0,
                n,
                access_key: self.access_key.clone(),
            };
            calls.push(call.clone());
            call
        };
        let now = self.script.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.script.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.script.wake.notify_waiters();
        let mut reply = (self.script.reply)(&call);
        while let Reply::Slow(d, r) = reply {
            tokio::time::sleep(d).await;
            reply = *r;
        }
        self.script.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply
    }
}

impl Api for FakeApi {
    fn status<'a>(
        &'a self,
        _generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryStatus>> {
        Box::pin(async move {
            let reply = self.answer(Op::Status, t).await;
            verdict(Op::Status, &reply, |r| match r {
                Reply::Status(s) => Some(SummaryStatus { status: s.clone() }),
                Reply::Done(_) => Some(SummaryStatus {
                    status: RemoteStatus::Completed,
                }),
                _ => None,
            })
        })
    }

    fn result<'a>(
        &'a self,
        _generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryResult>> {
        Box::pin(async move {
            let reply = self.answer(Op::Result, t).await;
            verdict(Op::Result, &reply, |r| match r {
                Reply::Done(v) => Some(result_of(v)),
                _ => None,
            })
        })
    }

    /// Every watch's index is its asset's latest (not recorded as a call: the scripts are about
    /// the summary calls).
    fn index_status<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Verdict<IndexStatus>> {
        Box::pin(async move {
            Verdict::Ok(IndexStatus {
                status: AnalysisStatus::Completed,
                index_id: (!t.index_id.is_empty()).then(|| t.index_id.clone()),
                message: None,
            })
        })
    }

    /// No project is listed in these tests.
    fn list_assets<'a>(
        &'a self,
        _workspace: &'a str,
        _project_id: &'a str,
        _page_num: u64,
        _page_size: u64,
    ) -> BoxFuture<'a, Verdict<AssetPage>> {
        Box::pin(async move {
            Verdict::Ok(AssetPage {
                asset_ids: Vec::new(),
                malformed: 0,
                total_count: Some(0),
                total_page: Some(0),
                page_no: None,
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks

/// A result sink in memory: records every attempt, fails while told to.
struct MemSink {
    clock: Clock,
    down: AtomicBool,
    /// (asset, version id, ms after the start, delivered)
    attempts: Mutex<Vec<(String, String, u64, bool)>>,
}

impl MemSink {
    fn delivered(&self) -> Vec<(String, String, u64)> {
        let a = self.attempts.lock().unwrap();
        a.iter()
            .filter(|x| x.3)
            .map(|(k, v, t, _)| (k.clone(), v.clone(), *t))
            .collect()
    }

    fn attempts(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }
}

impl Sink for MemSink {
    fn name(&self) -> &str {
        "mem"
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let down = self.down.load(Ordering::SeqCst);
            self.attempts.lock().unwrap().push((
                d.key.asset_id().to_string(),
                d.version_id.to_string(),
                self.clock.now_ms() - T0,
                !down,
            ));
            if down {
                return Err(SinkError {
                    kind: "memory",
                    name: "mem".into(),
                    message: "the fake sink is down".into(),
                    disposition: Disposition::Retry,
                    source: None,
                });
            }
            Ok(Receipt {
                location: format!("mem://{}/{}", d.key, d.version_id),
            })
        })
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// An event sink in memory: records every event it confirmed.
#[derive(Default)]
struct MemEvents {
    got: Mutex<Vec<Event>>,
}

impl MemEvents {
    fn kinds(&self) -> Vec<EventType> {
        self.got.lock().unwrap().iter().map(|e| e.kind).collect()
    }
}

impl EventSink for MemEvents {
    fn name(&self) -> &str {
        "ev"
    }

    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.got.lock().unwrap().extend_from_slice(events);
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The observer

/// One update, as the observer recorded it.
#[derive(Debug, Clone)]
enum Note {
    Polled {
        asset: String,
        at: u64,
        phase: Phase,
        /// The next poll, ms after the start.
        next: Option<u64>,
        events: Vec<EventType>,
    },
    Delivered {
        asset: String,
        at: u64,
        complete: bool,
    },
    DeliveryFailed {
        asset: String,
        gave_up: bool,
    },
}

struct Seen {
    clock: Clock,
    notes: Mutex<Vec<Note>>,
    wake: Arc<Notify>,
}

impl Observer for Seen {
    fn update(&self, update: &Update<'_>) {
        let at = self.clock.now_ms() - T0;
        let note = match update {
            Update::Polled {
                spec,
                record,
                events,
            } => Note::Polled {
                asset: spec.key.asset_id().to_string(),
                at,
                phase: record.state.phase,
                next: record.next_poll_at_ms.map(|t| t - T0),
                events: events.iter().map(|e| e.kind).collect(),
            },
            Update::Delivered { key, complete, .. } => Note::Delivered {
                asset: key.asset_id().to_string(),
                at,
                complete: *complete,
            },
            Update::DeliveryFailed { key, gave_up, .. } => Note::DeliveryFailed {
                asset: key.asset_id().to_string(),
                gave_up: *gave_up,
            },
        };
        self.notes.lock().unwrap().push(note);
        self.wake.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------
// The harness

/// `[[watch]]` tables for these assets (index id = asset id, the asset-level API, so every poll
/// asks the status first).
fn watches(assets: &[&str]) -> String {
    assets
        .iter()
        .map(|a| {
            format!(
                "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{a}\"\nindex_id = \"{a}\"\ngeneration = \"asset\"\n"
            )
        })
        .collect()
}

/// A validated configuration: `[api]` and `[poll]` additions, the fake sinks' names, watches.
fn config(access_key: &str, api: &str, poll: &str, assets: &[&str]) -> Config {
    let toml = format!(
        "[api]\naccess_key = \"{access_key}\"\nsecret_key = \"fake-secret\"\n{api}\n[poll]\n{poll}\n\
         [[sink]]\ntype = \"stdout\"\nname = \"mem\"\n[[event_sink]]\ntype = \"stdout\"\nname = \"ev\"\n{}",
        watches(assets)
    );
    config::load(&Sources {
        inline: Some(("engine-test.toml".into(), toml)),
        env: Some(Default::default()),
        ..Sources::default()
    })
    .unwrap_or_else(|e| panic!("test configuration: {e}"))
}

struct Harness {
    clock: Clock,
    script: Arc<Script>,
    sink: Arc<MemSink>,
    events: Arc<MemEvents>,
    seen: Arc<Seen>,
    health: Arc<Health>,
    ledger: SharedLedger,
    wake: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<anyhow::Result<Finished>>>,
}

impl Harness {
    /// Starts the engine on `config` with `script` answering every call.
    async fn start(
        config: Config,
        mode: Mode,
        script: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) -> Harness {
        Self::start_with(config, mode, None, script).await
    }

    /// [`Harness::start`], as a replica holding `replica.owned` when given.
    async fn start_with(
        config: Config,
        mode: Mode,
        replica: Option<super::ReplicaStart>,
        script: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) -> Harness {
        let clock = Clock::anchored_at(T0);
        let wake = Arc::new(Notify::new());
        let script = Arc::new(Script {
            clock,
            reply: Box::new(script),
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            wake: wake.clone(),
        });
        let factory: ApiFactory = {
            let script = script.clone();
            Arc::new(move |c: &crate::config::ApiConfig| {
                Ok(Arc::new(FakeApi {
                    script: script.clone(),
                    access_key: c.credentials.access_key.clone(),
                }) as Arc<dyn Api>)
            })
        };
        let sink = Arc::new(MemSink {
            clock,
            down: AtomicBool::new(false),
            attempts: Mutex::new(Vec::new()),
        });
        let events = Arc::new(MemEvents::default());
        let seen = Arc::new(Seen {
            clock,
            notes: Mutex::new(Vec::new()),
            wake: wake.clone(),
        });
        let health = Arc::new(Health::default());
        let ledger: SharedLedger =
            Arc::new(MemoryLedger::new(vec!["mem".into()], vec!["ev".into()]));
        let records = ledger
            .sync_watches(&config.watches, &[], clock.now_ms())
            .await
            .unwrap();
        let (commands, rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let setup = Setup {
            config,
            ledger: ledger.clone(),
            records,
            paged: false,
            sinks: vec![sink.clone() as Arc<dyn Sink>],
            event_sinks: vec![events.clone() as Arc<dyn EventSink>],
            health: health.clone(),
            clock,
            mode,
            observer: Some(seen.clone() as Arc<dyn Observer>),
            api: factory,
            replica,
        };
        let engine = tokio::spawn(super::run(setup, rx, shutdown.clone()));
        Harness {
            clock,
            script,
            sink,
            events,
            seen,
            health,
            ledger,
            wake,
            commands,
            shutdown,
            engine: Some(engine),
        }
    }

    /// Milliseconds since the start.
    fn now(&self) -> u64 {
        self.clock.now_ms() - T0
    }

    fn calls(&self) -> Vec<Call> {
        self.script.calls.lock().unwrap().clone()
    }

    /// When `asset`'s polls started (its status calls), ms after the start.
    fn polls(&self, asset: &str) -> Vec<u64> {
        self.calls()
            .iter()
            .filter(|c| c.asset == asset && c.op == Op::Status)
            .map(|c| c.at)
            .collect()
    }

    fn notes(&self) -> Vec<Note> {
        self.seen.notes.lock().unwrap().clone()
    }

    /// The committed polls of `asset`: (time, phase, next poll, events).
    fn polled(&self, asset: &str) -> Vec<(u64, Phase, Option<u64>, Vec<EventType>)> {
        self.notes()
            .into_iter()
            .filter_map(|n| match n {
                Note::Polled {
                    asset: a,
                    at,
                    phase,
                    next,
                    events,
                } if a == asset => Some((at, phase, next, events)),
                _ => None,
            })
            .collect()
    }

    fn phase(&self, asset: &str) -> Option<Phase> {
        self.polled(asset).last().map(|p| p.1)
    }

    /// Waits until `cond` holds, at most `within` of virtual time; panics with what was seen
    /// otherwise. Woken by every call and every update, and lets the engine finish handling
    /// what it was just told before each look (the test and the engine share one thread).
    async fn until(&self, within: Duration, what: &str, cond: impl Fn(&Harness) -> bool) {
        let deadline = crate::clock::instant_now() + within;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            settle().await;
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                settle().await;
                if cond(self) {
                    return;
                }
                panic!(
                    "not within {within:?} (at {} ms): {what}\ncalls: {:#?}\nupdates: {:#?}",
                    self.now(),
                    self.calls(),
                    self.notes()
                );
            }
        }
    }

    /// Sends a new configuration, as a reload does.
    async fn apply(&self, config: Config) {
        self.commands
            .send(Command::Apply(Box::new(config)))
            .await
            .unwrap();
        settle().await;
    }

    /// Asks for shutdown and returns what the engine came to.
    async fn stop(&mut self) -> Finished {
        self.shutdown.cancel();
        self.finished().await
    }

    /// Waits for the engine to end on its own (`once`), at most a virtual day.
    async fn finished(&mut self) -> Finished {
        let handle = self.engine.take().expect("the engine runs");
        tokio::time::timeout(Duration::from_secs(86_400), handle)
            .await
            .expect("the engine ends")
            .expect("the engine task does not panic")
            .expect("the engine runs without error")
    }
}

/// Lets every task that is ready run (none of them waits on time).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// The gaps between consecutive times.
fn gaps(times: &[u64]) -> Vec<u64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Term `n` of the series from `initial` to `max` (ms): between the plain term and twice it,
/// capped at `max` (see `policy::backoff`).
fn term_bounds(initial: u64, max: u64, n: u32) -> (u64, u64) {
    let plain = initial.saturating_mul(1 << n.min(40)).min(max);
    (plain, plain.saturating_mul(2).min(max))
}

fn key(asset: &str) -> crate::domain::WatchKey {
    crate::domain::WatchKey::new("w", "1", asset, asset).unwrap()
}

fn offset_ms(asset: &str, window: Duration) -> u64 {
    first_poll_offset(&key(asset), window).as_millis() as u64
}

fn daemon() -> Mode {
    Mode::Daemon
}

fn once(timeout: Option<Duration>) -> Mode {
    Mode::Once { timeout }
}

fn end_of<'a>(f: &'a Finished, asset: &str) -> &'a super::WatchEnd {
    f.watches
        .iter()
        .find(|w| w.spec.key.asset_id() == asset)
        .unwrap_or_else(|| panic!("{asset} is in the report"))
}

// ---------------------------------------------------------------------------------------------
// Intervals

#[tokio::test(start_paused = true)]
async fn the_interval_grows_from_initial_to_max_and_resets_when_the_status_changes() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"10s\"\nmax_interval = \"80s\"",
        &["a"],
    );
    // Queued for ten minutes, then running.
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.at < 600 * S {
            waiting()
        } else {
            summarizing()
        }
    })
    .await;
    h.until(
        Duration::from_secs(1200),
        "three polls after the change",
        |h| h.polls("a").iter().filter(|&&t| t >= 600 * S).count() >= 3,
    )
    .await;
    h.stop().await;
    let polls = h.polls("a");
    let g = gaps(&polls);
    let change = polls.iter().position(|&t| t >= 600 * S).unwrap();
    // Before the change, the gap after poll n is term n of the series.
    for (n, gap) in g[..change].iter().enumerate() {
        let (lo, hi) = term_bounds(10 * S, 80 * S, n as u32);
        assert!(
            (lo..=hi).contains(gap),
            "gap {n} is {gap} ms, not in {lo}..={hi}: {polls:?}"
        );
    }
    assert!(g[0] < 20 * S + 1, "starts at the initial interval: {g:?}");
    assert!(
        g[..change].iter().filter(|&&x| x == 80 * S).count() >= 3,
        "reaches the maximum and stays there: {g:?}"
    );
    // The poll that saw SUMMARIZING starts the series over.
    let (lo0, hi0) = term_bounds(10 * S, 80 * S, 0);
    let (lo1, hi1) = term_bounds(10 * S, 80 * S, 1);
    assert!((lo0..=hi0).contains(&g[change]), "reset: {g:?}");
    assert!((lo1..=hi1).contains(&g[change + 1]), "grows again: {g:?}");
    // Waiting was said once per remote status.
    let waiting_events = h
        .polled("a")
        .iter()
        .flat_map(|p| p.3.clone())
        .filter(|e| *e == EventType::Waiting)
        .count();
    assert_eq!(waiting_events, 2);
}

#[tokio::test(start_paused = true)]
async fn first_polls_are_spread_over_the_initial_interval() {
    let assets: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = assets.iter().map(String::as_str).collect();
    let cfg = config("AK", "", "initial_interval = \"10s\"", &names);
    let mut h = Harness::start(cfg, daemon(), |_| waiting()).await;
    h.until(Duration::from_secs(11), "every watch polled once", |h| {
        names.iter().all(|a| !h.polls(a).is_empty())
    })
    .await;
    h.stop().await;
    let firsts: Vec<u64> = names.iter().map(|a| h.polls(a)[0]).collect();
    for (a, t) in names.iter().zip(&firsts) {
        assert!(*t < 10 * S, "{a} first polled at {t} ms");
        assert_eq!(
            *t,
            offset_ms(a, Duration::from_secs(10)),
            "{a}: its key's spot"
        );
    }
    let mut distinct = firsts.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 15, "not together: {firsts:?}");
    assert!(
        distinct.last().unwrap() - distinct[0] >= 5 * S,
        "spread over the interval: {firsts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_back_off_from_a_second_and_a_retry_after_is_honoured_up_to_max_interval() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"10s\"\nmax_interval = \"60s\"",
        &["a", "b", "c"],
    );
    let mut h = Harness::start(cfg, daemon(), |c| match c.asset.as_str() {
        "a" => Reply::Unavailable(None),
        "b" => Reply::Unavailable(Some(Duration::from_secs(7))),
        _ => Reply::Unavailable(Some(Duration::from_secs(3600))),
    })
    .await;
    h.until(Duration::from_secs(600), "retries", |h| {
        h.polls("a").len() >= 8 && h.polls("b").len() >= 3 && h.polls("c").len() >= 3
    })
    .await;
    h.stop().await;
    let a = gaps(&h.polls("a"));
    // min(initial 10 s, 1 s) = 1 s, doubling up to the maximum.
    for (n, gap) in a.iter().enumerate() {
        let (lo, hi) = term_bounds(S, 60 * S, n as u32);
        assert!((lo..=hi).contains(gap), "retry {n} after {gap} ms: {a:?}");
    }
    assert!(a[0] <= 2 * S, "the first retry comes within 2 s: {a:?}");
    assert_eq!(*a.last().unwrap(), 60 * S, "{a:?}");
    assert!(
        gaps(&h.polls("b")).iter().all(|&g| g == 7 * S),
        "Retry-After: 7 s"
    );
    assert!(
        gaps(&h.polls("c")).iter().all(|&g| g == 60 * S),
        "an hour's Retry-After is bounded by max_interval"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_back_off_from_the_initial_interval_when_it_is_shorter_than_a_second() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"300ms\"\nmax_interval = \"5s\"",
        &["a"],
    );
    let mut h = Harness::start(cfg, daemon(), |_| Reply::Unavailable(None)).await;
    h.until(Duration::from_secs(60), "retries", |h| {
        h.polls("a").len() >= 6
    })
    .await;
    h.stop().await;
    let a = gaps(&h.polls("a"));
    for (n, gap) in a.iter().enumerate() {
        let (lo, hi) = term_bounds(300, 5 * S, n as u32);
        assert!((lo..=hi).contains(gap), "retry {n} after {gap} ms: {a:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_holds_every_watch_for_that_long() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nmax_interval = \"10s\"",
        &["a", "b"],
    );
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "a" && c.n == 0 {
            Reply::Throttled(Some(Duration::from_secs(5)))
        } else {
            waiting()
        }
    })
    .await;
    h.until(Duration::from_secs(60), "polling after the throttle", |h| {
        h.polls("a").len() >= 3 && h.polls("b").len() >= 3
    })
    .await;
    h.stop().await;
    let ta = h.polls("a")[0];
    let inside: Vec<Call> = h
        .calls()
        .into_iter()
        .filter(|c| c.at > ta && c.at < ta + 5 * S)
        .collect();
    assert!(inside.is_empty(), "calls while throttled: {inside:?}");
    assert_eq!(
        h.polls("a")[1],
        ta + 5 * S,
        "the throttled watch retries on time"
    );
    assert!(h.polls("b").iter().any(|&t| t >= ta + 5 * S));
    // A poll the budget held is not repeated as soon as it gets through: its next poll counts
    // from when it was sent.
    for w in ["a", "b"] {
        let g = gaps(&h.polls(w));
        assert!(
            g.iter().all(|&g| g >= S),
            "{w} polled twice in a row: {g:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_asking_for_an_hour_holds_polling_only_up_to_max_interval() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nmax_interval = \"20s\"",
        &["a", "b"],
    );
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "a" && c.n == 0 {
            Reply::Throttled(Some(Duration::from_secs(3600)))
        } else {
            waiting()
        }
    })
    .await;
    h.until(
        Duration::from_secs(120),
        "polling after the throttle",
        |h| h.polls("a").len() >= 2 && h.polls("b").len() >= 2,
    )
    .await;
    h.stop().await;
    let ta = h.polls("a")[0];
    assert_eq!(h.polls("a")[1], ta + 20 * S);
    assert!(
        h.calls().iter().all(|c| c.at <= ta || c.at >= ta + 20 * S),
        "{:?}",
        h.calls()
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines

#[tokio::test(start_paused = true)]
async fn max_wait_ends_a_waiting_watch_timed_out_exactly_on_time_despite_long_intervals() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"10s\"\nmax_interval = \"1h\"\nmax_wait = \"100s\"",
        &["a"],
    );
    let mut h = Harness::start(cfg, once(None), |_| waiting()).await;
    let f = h.finished().await;
    let t0 = h.polls("a")[0];
    let end = end_of(&f, "a");
    assert_eq!(end.record.state.phase, Phase::TimedOut);
    assert_eq!(
        end.settled_at_ms,
        Some(T0 + t0 + 100 * S),
        "to the millisecond"
    );
    let last = h.polled("a").last().cloned().unwrap();
    assert_eq!((last.0, last.1), (t0 + 100 * S, Phase::TimedOut));
    assert_eq!(last.3, vec![EventType::TimedOut]);
    assert!(
        h.polls("a").iter().all(|&t| t < t0 + 100 * S),
        "no call at the deadline: {:?}",
        h.polls("a")
    );
    assert_eq!(h.now(), t0 + 100 * S, "once ends then");
    assert!(h.events.kinds().contains(&EventType::TimedOut));
}

#[tokio::test(start_paused = true)]
async fn before_summarize_beyond_the_grace_ends_not_requested() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"10s\"\nmax_interval = \"20s\"\nnot_requested_grace = \"60s\"",
        &["a"],
    );
    let mut h = Harness::start(cfg, once(None), |_| {
        Reply::Status(RemoteStatus::BeforeSummarize)
    })
    .await;
    let f = h.finished().await;
    assert_eq!(end_of(&f, "a").record.state.phase, Phase::NotRequested);
    let polled = h.polled("a");
    let t0 = polled[0].0;
    let (t_end, phase, _, events) = polled.last().cloned().unwrap();
    assert_eq!(phase, Phase::NotRequested);
    assert_eq!(events, vec![EventType::NotRequested]);
    assert!(
        t_end >= t0 + 60 * S && t_end <= t0 + 80 * S,
        "ended by the first poll past the grace: {t0} → {t_end}"
    );
    assert!(
        polled[..polled.len() - 1]
            .iter()
            .all(|p| p.0 < t0 + 60 * S && p.1 == Phase::Waiting),
        "{polled:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency and the request budget

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_bounds_the_polls_in_flight() {
    let assets: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = assets.iter().map(String::as_str).collect();
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nconcurrency = 3",
        &names,
    );
    let mut h = Harness::start(cfg, daemon(), |_| slow(Duration::from_secs(5), waiting())).await;
    // The slots go to watches already waiting first; first polls get their guaranteed share
    // (one launch in ten), so all ten are polled, later than by arrival.
    h.until(Duration::from_secs(300), "every watch polled", |h| {
        names.iter().all(|a| !h.polls(a).is_empty())
    })
    .await;
    h.stop().await;
    assert_eq!(
        h.script.max_in_flight.load(Ordering::SeqCst),
        3,
        "up to the cap, never above it"
    );
    // The fourth poll starts when the first one ends.
    let mut starts: Vec<u64> = h.calls().iter().map(|c| c.at).collect();
    starts.sort();
    assert_eq!(starts[3], starts[0] + 5 * S, "{starts:?}");
}

#[tokio::test(start_paused = true)]
async fn the_request_budget_bounds_calls_per_second() {
    let assets: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let names: Vec<&str> = assets.iter().map(String::as_str).collect();
    let cfg = config(
        "AK",
        "requests_per_second = 2.0\nburst = 2",
        "initial_interval = \"1s\"\nmax_interval = \"2s\"",
        &names,
    );
    let mut h = Harness::start(cfg, daemon(), |_| waiting()).await;
    h.until(Duration::from_secs(60), "40 calls", |h| {
        h.calls().len() >= 40
    })
    .await;
    h.stop().await;
    let mut at: Vec<u64> = h.calls().iter().map(|c| c.at).collect();
    at.sort();
    // A token bucket of 2 per second with a burst of 2: at most 2 + 2·t calls in any t seconds.
    for (i, &start) in at.iter().enumerate() {
        for span in [S, 5 * S, 10 * S] {
            let n = at[i..].iter().take_while(|&&t| t < start + span).count() as u64;
            assert!(
                n <= 2 + 2 * span / S,
                "{n} calls in {span} ms from {start}: {at:?}"
            );
        }
    }
    // Demand is far above it, so the budget is used: the 40th call comes by 20 s.
    assert!(at[39] <= 20 * S, "{at:?}");
    // A poll that waited for the budget counts its next one from when it was sent: never due
    // already when it is committed (it would be launched again at once and spend the scarce
    // budget twice on one watch).
    for n in h.notes() {
        if let Note::Polled {
            asset, at, next, ..
        } = n
        {
            assert!(
                next.is_some_and(|t| t > at),
                "{asset} at {at} ms: next poll {next:?}"
            );
        }
    }
}

/// Over budget, a job about to finish does not wait behind rechecks of delivered watches: the
/// budget serves waiting jobs first, and rechecks still get their guaranteed share.
#[tokio::test(start_paused = true)]
async fn over_budget_a_waiting_job_goes_before_rechecks_which_keep_a_share() {
    let mut assets: Vec<String> = (0..60).map(|i| format!("d{i}")).collect();
    assets.push("job".into());
    let names: Vec<&str> = assets.iter().map(String::as_str).collect();
    let cfg = config(
        "AK",
        "requests_per_second = 2.0\nburst = 2",
        "initial_interval = \"1s\"\nmax_interval = \"4s\"\nrecheck_interval = \"10s\"",
        &names,
    );
    // 60 delivered watches rechecked every 10 s ask for 6 requests a second, three times the
    // budget; the job completes at 200 s.
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "job" && c.at < 200 * S {
            summarizing()
        } else {
            Reply::Done("2026-04-17T10:00:00")
        }
    })
    .await;
    h.until(Duration::from_secs(400), "the job delivered", |h| {
        h.sink.delivered().iter().any(|d| d.0 == "job")
    })
    .await;
    h.stop().await;
    let calls = h.calls();
    let job: Vec<u64> = calls
        .iter()
        .filter(|c| c.asset == "job")
        .map(|c| c.at)
        .collect();
    // Once the others are delivered (well before 200 s), the job is polled on its own series
    // (never more than max_interval apart, plus the wait for a token), not behind the backlog.
    let late: Vec<u64> = job
        .windows(2)
        .filter(|w| w[0] >= 100 * S)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(!late.is_empty(), "{job:?}");
    assert!(late.iter().all(|&g| g <= 5 * S), "gaps {late:?} in {job:?}");
    let seen = job.iter().find(|&&t| t >= 200 * S).copied();
    assert!(
        seen.is_some_and(|t| t <= 205 * S),
        "completion seen at {seen:?}: {job:?}"
    );
    // Rechecks are not starved: from 100 s on they get at least their share of the calls.
    let after: Vec<&Call> = calls.iter().filter(|c| c.at >= 100 * S).collect();
    let rechecks = after.iter().filter(|c| c.asset != "job").count();
    assert!(
        rechecks * 10 >= after.len(),
        "{rechecks} rechecks in {} calls",
        after.len()
    );
}

/// When rechecks ask for more than the budget leaves, their interval is stretched to fit (a
/// gauge says to what) and they settle on it: overdue rechecks do not pile up.
#[tokio::test(start_paused = true)]
async fn rechecks_beyond_the_budget_are_stretched_to_fit_and_stay_on_time() {
    let assets: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
    let names: Vec<&str> = assets.iter().map(String::as_str).collect();
    let cfg = config(
        "AK",
        "requests_per_second = 2.0\nburst = 2",
        "initial_interval = \"1s\"\nmax_interval = \"4s\"\nrecheck_interval = \"10s\"",
        &names,
    );
    // 100 delivered watches rechecked every 10 s would need 10 requests a second: five times
    // the budget.
    let mut h = Harness::start(cfg, daemon(), |_| Reply::Done("2026-04-17T10:00:00")).await;
    h.until(Duration::from_secs(1200), "1,000 s of rechecks", |h| {
        h.now() >= 1000 * S
    })
    .await;
    let metrics = h.health.metrics.render();
    h.stop().await;
    let effective: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scenewatch_recheck_interval_effective_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge in {metrics}"));
    // Each recheck here is two calls (the status cannot tell the version, so the result is
    // fetched too): what the budget leaves (all of it, nothing else waits) with 10 % headroom
    // carries each watch's recheck every 100 × 2 / (2 × 0.9) ≈ 111 s.
    assert!((95.0..=130.0).contains(&effective), "{effective}");
    let calls = h.calls();
    // Within the budget in every 10 s window once settled.
    let at: Vec<u64> = calls
        .iter()
        .map(|c| c.at)
        .filter(|&t| t >= 300 * S)
        .collect();
    for (i, &start) in at.iter().enumerate() {
        let n = at[i..].iter().take_while(|&&t| t < start + 10 * S).count() as u64;
        assert!(n <= 2 + 20, "{n} calls in 10 s from {start}");
    }
    // Each watch is rechecked about every `effective` seconds, not ever later: no backlog.
    let fitted = (effective * 1000.0) as u64;
    for a in &names {
        let polls: Vec<u64> = h.polls(a).into_iter().filter(|&t| t >= 400 * S).collect();
        assert!(polls.len() >= 5, "{a}: {polls:?}");
        for g in gaps(&polls) {
            assert!(
                g <= fitted * 3 / 2,
                "{a}: a gap of {g} ms against {fitted}: {polls:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refused credentials and the quota

/// Ten jobs of project 1 queue for a minute and run for ten; then, added by a reload at
/// `LATER`, one more job of the same kind. Returns the harness once the new job was fetched.
async fn a_job_of_a_kind_seen_before(policy: &str) -> Harness {
    const LATER: u64 = 1_500 * S;
    let poll = format!("initial_interval = \"10s\"\nmax_interval = \"30m\"\npolicy = \"{policy}\"");
    let past: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let mut names: Vec<&str> = past.iter().map(String::as_str).collect();
    let h = Harness::start(config("AK", "", &poll, &names), daemon(), |c| {
        let from = if c.asset == "n" { LATER } else { 0 };
        if c.at < from + 60 * S {
            waiting()
        } else if c.at < from + 660 * S {
            summarizing()
        } else {
            Reply::Done("v1")
        }
    })
    .await;
    h.until(Duration::from_secs(1_400), "the ten jobs delivered", |h| {
        past.iter()
            .all(|a| matches!(h.phase(a), Some(Phase::Completed | Phase::Watching)))
    })
    .await;
    tokio::time::sleep_until(crate::clock::instant_now() + Duration::from_millis(LATER - h.now()))
        .await;
    names.push("n");
    h.apply(config("AK", "", &poll, &names)).await;
    h.until(Duration::from_secs(1_200), "the new job fetched", |h| {
        matches!(h.phase("n"), Some(Phase::Completed | Phase::Watching))
    })
    .await;
    h
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_policy_times_a_job_from_its_projects_history_and_saves_the_history() {
    let mut h = a_job_of_a_kind_seen_before("adaptive").await;
    h.stop().await;
    let polls = h.polls("n");
    let later = 1_500 * S;
    let done = *polls
        .iter()
        .find(|&&t| t >= later + 660 * S)
        .expect("saw it done");
    // The history says a job of this project queues for a minute and runs for ten: no poll
    // asks while completion is unlikely (the backoff series would ask a dozen times) ...
    let idle: Vec<u64> = polls
        .iter()
        .copied()
        .filter(|&t| t > later + 120 * S && t < later + 540 * S)
        .collect();
    assert!(
        idle.is_empty(),
        "polls while completion is unlikely: {polls:?}"
    );
    // ... and the completion is still seen soon (the policy's 4.5 % of the job's age, about
    // half a minute here).
    let late = done - (later + 660 * S);
    assert!(late <= 60 * S, "seen {late} ms late: {polls:?}");
    let backoff = {
        let mut b = a_job_of_a_kind_seen_before("backoff").await;
        b.stop().await;
        b.polls("n").len()
    };
    assert!(
        polls.len() < backoff,
        "adaptive {} polls, backoff {backoff}",
        polls.len()
    );
    // What it learned is in the ledger, for the next start and for `status`.
    let saved = h
        .ledger
        .fact(crate::forecast::HISTORY_FACT)
        .await
        .unwrap()
        .expect("the history is saved");
    let history = crate::forecast::History::from_json(&saved).unwrap();
    let f = history
        .forecast(
            "w",
            "1",
            &RemoteStatus::Summarizing,
            Duration::ZERO,
            Duration::ZERO,
        )
        .expect("project 1 has a forecast");
    let expected = f.remaining.unwrap().as_secs();
    assert!(
        (500..700).contains(&expected),
        "a run takes about 600 s: {f:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_backoff_policy_the_history_is_learned_but_not_used() {
    let mut h = a_job_of_a_kind_seen_before("backoff").await;
    h.stop().await;
    let polls = h.polls("n");
    let running = *polls.iter().find(|&&t| t >= 1_560 * S).expect("saw it run");
    let after_start = polls.iter().find(|&&t| t > running).copied().unwrap();
    let (lo, hi) = term_bounds(10 * S, 1_800 * S, 0);
    assert!(
        (lo..=hi).contains(&(after_start - running)),
        "the series starts over at the status change: {polls:?}"
    );
    assert!(
        h.ledger
            .fact(crate::forecast::HISTORY_FACT)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_pauses_every_watch_and_probes_after_30s_doubling_per_refused_probe() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a", "b", "c"]);
    let mut h = Harness::start(cfg, daemon(), |_| Reply::Auth).await;
    h.until(Duration::from_secs(1000), "three probes", |h| {
        h.calls().len() >= 4
    })
    .await;
    assert!(h.health.auth_paused.load(Ordering::SeqCst));
    h.stop().await;
    let calls = h.calls();
    let t0 = calls[0].at;
    let at: Vec<u64> = calls.iter().map(|c| c.at).collect();
    // One call, nothing for 30 s, then one probe at a time: 30 s, 60 s, 120 s apart.
    assert_eq!(
        at[..4],
        [t0, t0 + 30 * S, t0 + 90 * S, t0 + 210 * S],
        "{calls:#?}"
    );
    assert_eq!(
        calls[1].asset, calls[0].asset,
        "the first probe repeats the refused call"
    );
    assert_ne!(
        calls[2].asset, calls[0].asset,
        "the next tries another watch"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lone_watch_refused_by_the_api_keeps_being_probed() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a"]);
    let mut h = Harness::start(cfg, daemon(), |_| Reply::Auth).await;
    h.until(Duration::from_secs(1000), "three probes", |h| {
        h.calls().len() >= 4
    })
    .await;
    h.stop().await;
    let at: Vec<u64> = h.calls().iter().map(|c| c.at).collect();
    let t0 = at[0];
    assert_eq!(at[..4], [t0, t0 + 30 * S, t0 + 90 * S, t0 + 210 * S]);
}

#[tokio::test(start_paused = true)]
async fn successes_in_flight_when_the_pause_began_do_not_lift_it() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a", "b"]);
    let mut h = Harness::start(cfg, daemon(), |c| match (c.asset.as_str(), c.n) {
        // Refused 3 s after it was sent, while b's slow answer is still on its way.
        ("a", 0) => slow(Duration::from_secs(3), Reply::Auth),
        ("a", _) => Reply::Auth,
        ("b", 0) => slow(Duration::from_secs(10), waiting()),
        _ => waiting(),
    })
    .await;
    h.until(Duration::from_secs(20), "b's slow answer committed", |h| {
        !h.polled("b").is_empty()
    })
    .await;
    assert!(
        h.health.auth_paused.load(Ordering::SeqCst),
        "b's success does not end the pause"
    );
    h.until(Duration::from_secs(100), "the probe", |h| {
        h.calls().len() >= 3
    })
    .await;
    h.stop().await;
    let calls = h.calls();
    let ta = h.polls("a")[0];
    let paused_at = ta + 3 * S;
    assert!(
        h.polled("b")[0].0 > paused_at,
        "b answered during the pause"
    );
    assert_eq!(calls[2].at, paused_at + 30 * S, "{calls:#?}");
    assert_eq!(calls[2].asset, "a");
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_new_credentials_lifts_the_pause_at_once() {
    let names = ["a", "b", "c"];
    let cfg = config("OLD", "", "initial_interval = \"10s\"", &names);
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.access_key == "NEW" {
            waiting()
        } else {
            Reply::Auth
        }
    })
    .await;
    h.until(Duration::from_secs(11), "paused", |h| {
        h.health.auth_paused.load(Ordering::SeqCst)
    })
    .await;
    let reload = h.now();
    h.apply(config("NEW", "", "initial_interval = \"10s\"", &names))
        .await;
    h.until(Duration::from_secs(30), "every watch polled anew", |h| {
        names.iter().all(|a| {
            h.calls()
                .iter()
                .any(|c| c.asset == *a && c.access_key == "NEW")
        })
    })
    .await;
    assert!(!h.health.auth_paused.load(Ordering::SeqCst));
    h.stop().await;
    let calls = h.calls();
    assert_eq!(
        calls.iter().filter(|c| c.access_key == "OLD").count(),
        1,
        "{calls:#?}"
    );
    for c in calls.iter().filter(|c| c.access_key == "NEW") {
        assert!(
            c.at >= reload && c.at < reload + 10 * S,
            "polled again within the initial interval of the reload, not after the pause: {calls:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_401_of_one_watch_while_others_work_rejects_that_watch_instead_of_pausing_again() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nmax_interval = \"2s\"",
        &["a", "b"],
    );
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "a" {
            Reply::Auth
        } else {
            waiting()
        }
    })
    .await;
    h.until(Duration::from_secs(300), "a rejected", |h| {
        h.phase("a") == Some(Phase::Rejected)
    })
    .await;
    let rejected_at = h.polled("a").last().unwrap().0;
    h.until(Duration::from_secs(30), "b polled on", |h| {
        h.polls("b").iter().filter(|&&t| t > rejected_at).count() >= 5
    })
    .await;
    assert!(!h.health.auth_paused.load(Ordering::SeqCst));
    h.stop().await;
    let a = h.polls("a");
    let t0 = a[0];
    // Refused, the probe of a refused, another watch's probe works, a refused once more.
    assert_eq!(a.len(), 3, "{:#?}", h.calls());
    assert_eq!(a[1], t0 + 30 * S);
    assert!(a[2] >= t0 + 90 * S && a[2] < t0 + 91 * S, "{a:?}");
    assert_eq!(h.polled("a").last().unwrap().3, vec![EventType::Rejected]);
    let b_after: Vec<u64> = h
        .polls("b")
        .into_iter()
        .filter(|&t| t >= t0 + 90 * S)
        .collect();
    assert!(
        gaps(&b_after).iter().all(|&g| g <= 2 * S),
        "no second pause: {b_after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_used_up_quota_pauses_every_watch_for_five_minutes() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a", "b"]);
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "a" && c.n == 0 {
            Reply::Quota
        } else {
            waiting()
        }
    })
    .await;
    h.until(Duration::from_secs(2), "paused", |h| {
        h.health.quota_paused.load(Ordering::SeqCst)
    })
    .await;
    assert!(!h.health.auth_paused.load(Ordering::SeqCst));
    h.until(Duration::from_secs(400), "polling resumed", |h| {
        h.polls("b").iter().any(|&t| t > 300 * S)
    })
    .await;
    assert!(!h.health.quota_paused.load(Ordering::SeqCst));
    h.stop().await;
    let ta = h.polls("a")[0];
    let calls = h.calls();
    assert!(
        calls.iter().all(|c| c.at <= ta || c.at >= ta + 300 * S),
        "{calls:#?}"
    );
    assert_eq!(h.polls("a")[1], ta + 300 * S, "the probe");
}

// ---------------------------------------------------------------------------------------------
// Reload and shutdown

#[tokio::test(start_paused = true)]
async fn a_reload_adds_removes_and_keeps_watches_with_their_timers() {
    let poll = "initial_interval = \"10s\"\nmax_interval = \"60s\"";
    let cfg = config("AK", "", poll, &["a", "b"]);
    let mut h = Harness::start(cfg, daemon(), |_| waiting()).await;
    h.until(Duration::from_secs(200), "a few polls", |h| {
        h.polls("a").len() >= 3 && h.polls("b").len() >= 3
    })
    .await;
    let reload = h.now();
    let b_next = h.polled("b").last().unwrap().2.unwrap();
    assert!(b_next > reload);
    h.apply(config("AK", "", poll, &["b", "c"])).await;
    h.until(
        Duration::from_secs(200),
        "b and c polled after the reload",
        |h| h.polls("b").iter().any(|&t| t > reload) && !h.polls("c").is_empty(),
    )
    .await;
    h.stop().await;
    assert!(
        h.polls("a").iter().all(|&t| t <= reload),
        "a removed: {:?}",
        h.polls("a")
    );
    let b_after: Vec<u64> = h.polls("b").into_iter().filter(|&t| t > reload).collect();
    assert_eq!(b_after[0], b_next, "b keeps its timer");
    let b_events_after: Vec<EventType> = h
        .polled("b")
        .iter()
        .filter(|p| p.0 > reload)
        .flat_map(|p| p.3.clone())
        .collect();
    assert!(
        b_events_after.is_empty(),
        "b keeps its state: {b_events_after:?}"
    );
    assert_eq!(
        h.polls("c")[0],
        reload + offset_ms("c", Duration::from_secs(10)),
        "c is new: spread over the initial interval from the reload"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_polls_in_flight_commit_and_launches_no_new_ones() {
    let names = ["a", "b", "c", "d", "e", "f"];
    let cfg = config("AK", "", "initial_interval = \"10s\"", &names);
    let mut h = Harness::start(cfg, daemon(), |_| slow(Duration::from_secs(5), waiting())).await;
    h.until(Duration::from_secs(11), "two polls in flight", |h| {
        h.script.in_flight.load(Ordering::SeqCst) >= 2
    })
    .await;
    let stop_at = h.now();
    let f = h.stop().await;
    assert!(f.interrupted);
    let calls = h.calls();
    assert!(calls.len() < names.len(), "some watches were not due yet");
    assert!(calls.iter().all(|c| c.at <= stop_at), "{calls:#?}");
    for c in &calls {
        let polled = h.polled(&c.asset);
        assert_eq!(polled.len(), 1, "{} committed its poll", c.asset);
        assert_eq!(polled[0].0, c.at + 5 * S);
    }
    assert_eq!(h.now(), calls.iter().map(|c| c.at).max().unwrap() + 5 * S);
}

// ---------------------------------------------------------------------------------------------
// `once`

#[tokio::test(start_paused = true)]
async fn once_ends_when_every_watch_is_settled() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nmax_interval = \"2s\"",
        &["a", "b", "c"],
    );
    let mut h = Harness::start(cfg, once(None), |c| match c.asset.as_str() {
        "a" if c.at < 5 * S => waiting(),
        "a" => Reply::Done("2026-04-17T10:00:00"),
        "b" if c.at < 3 * S => summarizing(),
        "b" => Reply::Status(RemoteStatus::Failed),
        _ => Reply::NotFound,
    })
    .await;
    let f = h.finished().await;
    assert!(!f.timed_out && !f.interrupted && f.auth_refused.is_none());
    let a = end_of(&f, "a");
    assert_eq!(a.record.state.phase, Phase::Watching, "delivered");
    assert_eq!(a.locations.len(), 1);
    assert_eq!(end_of(&f, "b").record.state.phase, Phase::Failed);
    assert_eq!(end_of(&f, "c").record.state.phase, Phase::Rejected);
    let last = f
        .watches
        .iter()
        .filter_map(|w| w.settled_at_ms)
        .max()
        .unwrap();
    assert_eq!(h.now(), last - T0, "ends when the last watch is settled");
    assert_eq!(h.sink.delivered().len(), 1);
    let kinds = h.events.kinds();
    for k in [
        EventType::Waiting,
        EventType::Completed,
        EventType::Delivered,
        EventType::Failed,
        EventType::Rejected,
    ] {
        assert!(kinds.contains(&k), "{k} reached the event sink: {kinds:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn once_honours_its_timeout() {
    let cfg = config("AK", "", "initial_interval = \"10s\"", &["a"]);
    let mut h = Harness::start(cfg, once(Some(Duration::from_secs(45))), |_| waiting()).await;
    let f = h.finished().await;
    assert!(f.timed_out);
    assert_eq!(h.now(), 45 * S);
    assert_eq!(end_of(&f, "a").record.state.phase, Phase::Waiting);
}

#[tokio::test(start_paused = true)]
async fn once_gives_up_after_a_refused_probe() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a", "b"]);
    let mut h = Harness::start(cfg, once(None), |_| Reply::Auth).await;
    let f = h.finished().await;
    let calls = h.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[1].at, calls[0].at + 30 * S);
    assert!(
        f.auth_refused.as_deref().is_some_and(|e| e.contains("401")),
        "{f:?}"
    );
    assert_eq!(h.now(), calls[1].at, "ends with the refused probe");
}

#[tokio::test(start_paused = true)]
async fn once_gives_up_on_a_sink_that_keeps_failing_and_reports_its_error() {
    let cfg = config("AK", "", "initial_interval = \"1s\"", &["a"]);
    let mut h = Harness::start(cfg, once(None), |_| Reply::Done("2026-04-17T10:00:00")).await;
    h.sink.down.store(true, Ordering::SeqCst);
    let f = h.finished().await;
    assert_eq!(h.sink.attempts(), ONCE_DELIVERY_ATTEMPTS as usize);
    let a = end_of(&f, "a");
    assert_eq!(
        a.record.state.phase,
        Phase::Completed,
        "fetched, not delivered"
    );
    assert!(
        a.sink_error
            .as_deref()
            .is_some_and(|e| e.contains("the fake sink is down")),
        "{a:?}"
    );
    assert!(a.locations.is_empty());
    let failed: Vec<bool> = h
        .notes()
        .iter()
        .filter_map(|n| match n {
            Note::DeliveryFailed { asset, gave_up } if asset == "a" => Some(*gave_up),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [false, false, false, false, true]);
}

// ---------------------------------------------------------------------------------------------
// Deliveries

#[tokio::test(start_paused = true)]
async fn a_delivered_version_makes_the_watch_watching_and_the_daemon_rechecks_it() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"10s\"\nrecheck_interval = \"1h\"",
        &["a"],
    );
    let mut h = Harness::start(cfg, daemon(), |_| Reply::Done("2026-04-17T10:00:00")).await;
    h.until(Duration::from_secs(8000), "two rechecks", |h| {
        h.polls("a").len() >= 3
    })
    .await;
    h.stop().await;
    let polls = h.polls("a");
    assert_eq!(gaps(&polls), [3600 * S, 3600 * S], "{polls:?}");
    let polled = h.polled("a");
    assert_eq!(polled[0].1, Phase::Completed);
    assert!(
        polled[1..].iter().all(|p| p.1 == Phase::Watching),
        "{polled:?}"
    );
    assert!(
        h.notes().iter().any(|n| matches!(n, Note::Delivered { asset, complete: true, at } if asset == "a" && *at == polls[0])),
        "{:?}",
        h.notes()
    );
    assert_eq!(h.sink.delivered().len(), 1, "rechecks deliver nothing new");
    let completed = polled
        .iter()
        .flat_map(|p| p.3.clone())
        .filter(|e| *e == EventType::Completed)
        .count();
    assert_eq!(completed, 1);
    assert!(h.health.phases().contains(&(Phase::Watching, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_is_down_holds_its_backlog_while_polling_goes_on() {
    let cfg = config(
        "AK",
        "",
        "initial_interval = \"1s\"\nmax_interval = \"4s\"",
        &["a", "b"],
    );
    let mut h = Harness::start(cfg, daemon(), |c| {
        if c.asset == "a" {
            Reply::Done("2026-04-17T10:00:00")
        } else {
            waiting()
        }
    })
    .await;
    h.sink.down.store(true, Ordering::SeqCst);
    h.until(
        Duration::from_secs(60),
        "failed deliveries, b polled on",
        |h| {
            h.sink.attempts() >= 4
                && h.polls("b").len() >= 8
                && h.events.kinds().contains(&EventType::SinkFailing)
        },
    )
    .await;
    let backlog = h.ledger.backlog().await.unwrap();
    let mem = backlog.iter().find(|b| b.sink == "mem").unwrap();
    assert_eq!((mem.pending, mem.parked), (1, 0), "kept, not dropped");
    assert_eq!(h.phase("a"), Some(Phase::Completed));
    let down_until = h.now();
    h.sink.down.store(false, Ordering::SeqCst);
    h.until(
        Duration::from_secs(600),
        "delivered once the sink is back",
        |h| {
            !h.sink.delivered().is_empty()
                && h.events.kinds().contains(&EventType::SinkRecovered)
                && h.polls("b").iter().any(|&t| t > down_until)
        },
    )
    .await;
    h.stop().await;
    let backlog = h.ledger.backlog().await.unwrap();
    assert_eq!(backlog.iter().find(|b| b.sink == "mem").unwrap().pending, 0);
    let kinds = h.events.kinds();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventType::SinkFailing)
            .count(),
        1
    );
    let b = h.polls("b");
    assert!(
        gaps(&b).iter().all(|&g| g <= 4 * S),
        "b was polled at its own pace throughout: {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_sends_its_last_events_to_the_event_sinks_before_it_ends() {
    // Real time on two threads (not paused): the last delivery's event and the stop that ends
    // `once` reach the event drainer together, in either order, so many runs try both.
    for run in 0..100 {
        let cfg = config("AK", "", "initial_interval = \"5ms\"", &["a"]);
        let mut h = Harness::start(cfg, once(None), |_| Reply::Done("2026-04-17T10:00:00")).await;
        let f = h.finished().await;
        assert_eq!(end_of(&f, "a").record.state.phase, Phase::Watching);
        let kinds = h.events.kinds();
        assert!(
            kinds.contains(&EventType::Delivered),
            "run {run}: the event sink got {kinds:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_polls_and_counts_only_its_shards_and_takes_gained_ones_from_the_ledger() {
    use crate::state::shards::ShardSet;
    let names: Vec<String> = (0..24).map(|n| format!("a{n}")).collect();
    let assets: Vec<&str> = names.iter().map(String::as_str).collect();
    let poll = "initial_interval = \"10s\"\nmax_interval = \"20s\"";
    let half = ShardSet::of(&(0..128).collect::<Vec<_>>());
    let (mine, theirs): (Vec<&str>, Vec<&str>) = assets.iter().partition(|a| half.holds(&key(a)));
    assert!(
        !mine.is_empty() && !theirs.is_empty(),
        "{mine:?} {theirs:?}"
    );
    let replica = super::ReplicaStart {
        id: "replica-1".into(),
        owned: half,
    };
    let mut h = Harness::start_with(
        config("AK", "", poll, &assets),
        daemon(),
        Some(replica),
        |_| waiting(),
    )
    .await;
    h.until(
        Duration::from_secs(120),
        "every held watch polled twice",
        |h| mine.iter().all(|a| h.polls(a).len() >= 2),
    )
    .await;
    assert!(
        theirs.iter().all(|a| h.polls(a).is_empty()),
        "another replica's watches are not polled: {:?}",
        h.calls()
    );
    let counted = |h: &Harness| h.health.phases().iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(
        counted(&h),
        mine.len() as u64,
        "only held watches are counted"
    );

    // The other half is gained, with the records the ledger holds for it.
    let cfg = config("AK", "", poll, &assets);
    let records = h
        .ledger
        .sync_watches(&cfg.watches, &[], h.clock.now_ms())
        .await
        .unwrap();
    let reloaded = records
        .into_iter()
        .filter(|r| !half.holds(&r.key))
        .map(|r| (None, r))
        .collect();
    h.commands
        .send(Command::Shards(Box::new(super::ShardNews {
            owned: ShardSet::ALL,
            reloaded,
            added: Vec::new(),
        })))
        .await
        .unwrap();
    h.until(Duration::from_secs(120), "the gained watches polled", |h| {
        theirs.iter().all(|a| !h.polls(a).is_empty())
    })
    .await;
    assert_eq!(counted(&h), assets.len() as u64);

    // Every shard lost (the leases went unrenewed): nothing is polled any more.
    h.commands
        .send(Command::Shards(Box::default()))
        .await
        .unwrap();
    settle().await;
    let before = h.calls().len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    settle().await;
    let after = h.calls().len();
    assert_eq!(after, before, "no request for a watch of a shard not held");
    assert_eq!(counted(&h), 0);
    h.stop().await;
}

#[test]
#[cfg(target_pointer_width = "64")]
fn a_watch_s_entry_takes_200_bytes() {
    // The per-watch figure docs/benchmarks.md breaks the million-watch memory into.
    assert_eq!(size_of::<super::Entry>(), 200);
}
