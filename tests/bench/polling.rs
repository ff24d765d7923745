//! Benchmark of poll policies in simulated time (not a test: it prints figures, asserts
//! nothing). A pure discrete-event simulation of one deployment's request budget over the real
//! step and policy code: `watch::step` decides every poll of the backoff and adaptive policies,
//! `watch::adapt` and `forecast::History` time the adaptive one (learning from what the polls
//! observed, as the engine does), `engine::Share` splits the budget between classes and
//! `policy::fitted_recheck` stretches rechecks, as the daemon does.
//!
//! The workload: `N` jobs submitted over the first hour, each watched from its submission; a
//! job waits in the queue U(0, 30 min), then runs for a log-normal time around its project's
//! median (50 projects, medians log-uniform from 1 min to 6 h, spread σ = 0.2 within a
//! project); plus `M` delivered watches rechecked hourly (stretched to fit the budget). The
//! budget is a token bucket of `B` requests a second with a burst of `2B` (the defaults' ratio);
//! waiting jobs' polls come first, result fetches next, rechecks last with their share of one
//! grant in ten. A status call that says completed is followed by one result fetch.
//!
//! Policies: `fixed 15s` (Vector's http_client style), `aws waiter` (2 s → 120 s exponential,
//! never reset), `backoff` (scenewatch's `poll.policy = "backoff"`: 10 s → 5 min, reset on a
//! status change), `adaptive` (the default: history of the projects' earlier jobs, learned by
//! running the same workload once before with another seed), and `oracle` (one poll exactly at
//! completion). For each: polls per completion (status calls plus the fetch), the p50 and p95
//! detection delay (from completion to the poll that saw it) as a share of the job's length
//! (submission to completion) and in seconds, the p95 lateness of job polls against their due
//! time, and the most requests the API saw in any one second.
//!
//! Run: `cargo bench --bench polling`. Knobs: `SCENEWATCH_BENCH_POINTS` (`N:M:B` triples,
//! comma-separated; default `1000:0:10,1000:100000:10,10000:1000000:16`), `SCENEWATCH_BENCH_SEED`.
//! Figures: docs/benchmarks.md.

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures real time; clippy.toml's clock rule is for the crate"
)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use scenewatch::domain::WatchKey;
use scenewatch::engine::{Class, Share};
use scenewatch::forecast::{History, Polled, Timing};
use scenewatch::ncp::{RemoteStatus, SummaryStatus, Verdict};
use scenewatch::policy::{self, Policy};
use scenewatch::watch::{self, Action, Answer, Limits, WatchState};

const PROJECTS: usize = 50;
const SPREAD: f64 = 0.2;
const SUBMIT_OVER_S: f64 = 3600.0;
const QUEUE_MAX_S: f64 = 1800.0;
/// Earlier batches of the same projects' jobs the adaptive policy learns from before the
/// measured one (the first is polled mostly on the backoff series, before there is history).
const WARM_UP: u64 = 2;
const RECHECK: Duration = Duration::from_secs(3600);

/// SplitMix64: a small, seedable generator (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Fixed15,
    AwsWaiter,
    Backoff,
    Adaptive,
    Oracle,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fixed15 => "fixed 15s",
            Kind::AwsWaiter => "aws waiter 2s-120s",
            Kind::Backoff => "backoff 10s-5m",
            Kind::Adaptive => "adaptive",
            Kind::Oracle => "oracle",
        }
    }
}

struct Job {
    key: WatchKey,
    submit_ms: u64,
    run_from_ms: u64,
    done_ms: u64,
    state: WatchState,
    last_change_ms: Option<u64>,
    timing: Timing,
    polls: u32,
    detected_ms: Option<u64>,
}

impl Job {
    fn status_at(&self, t: u64) -> RemoteStatus {
        if t >= self.done_ms {
            RemoteStatus::Completed
        } else if t >= self.run_from_ms {
            RemoteStatus::Summarizing
        } else {
            RemoteStatus::WaitSummarize
        }
    }
}

fn workload(n: usize, medians: &[f64], spread: f64, rng: &mut Rng) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let project = (rng.next() % medians.len() as u64) as usize;
            let submit = rng.unit() * SUBMIT_OVER_S;
            let queue = rng.unit() * QUEUE_MAX_S;
            let run = (medians[project] * (spread * rng.normal()).exp()).max(1.0);
            let ms = |s: f64| (s * 1000.0) as u64;
            Job {
                key: WatchKey::new("ws", format!("p{project}"), format!("a{i}"), "1").unwrap(),
                submit_ms: ms(submit),
                run_from_ms: ms(submit + queue),
                done_ms: ms(submit + queue + run),
                state: WatchState::default(),
                last_change_ms: None,
                timing: Timing::default(),
                polls: 0,
                detected_ms: None,
            }
        })
        .collect()
}

struct Figures {
    polls_per_completion: f64,
    delay_share: (f64, f64),
    delay_s: (f64, f64),
    lateness_p95_s: f64,
    max_per_second: u32,
    recheck_interval: Duration,
    simulated: Duration,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One run of `jobs` under `kind`, with `m` delivered watches, a budget of `b` per second.
fn simulate(
    kind: Kind,
    mut jobs: Vec<Job>,
    m: usize,
    b: f64,
    limits: Limits,
    history: &mut History,
) -> Figures {
    let burst = 2.0 * b;
    let mut tokens = burst;
    let mut t: u64 = 0;
    let mut refilled: u64 = 0;
    let mut share = Share::default();
    // Due polls: (due ms, job) for jobs; (due ms, watch) for rechecks; fetches in order.
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut rechecks: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut fetches: std::collections::VecDeque<usize> = Default::default();
    for (i, j) in jobs.iter().enumerate() {
        let first = match kind {
            Kind::Oracle => j.done_ms,
            _ => {
                j.submit_ms
                    + policy::first_poll_offset(&j.key, limits.policy.initial).as_millis() as u64
            }
        };
        due.push(Reverse((first, i)));
    }
    for w in 0..m {
        let at = (w as u64 * RECHECK.as_millis() as u64) / m.max(1) as u64;
        rechecks.push(Reverse((at, w as u32)));
    }
    let mut per_second: Vec<u32> = Vec::new();
    let mut lateness: Vec<f64> = Vec::new();
    let mut left = jobs.len();
    let mut recheck_every = RECHECK;
    let (mut window_start, mut job_grants_in_window, mut job_rate) = (0u64, 0u64, 0.0f64);
    while left > 0 {
        // The next moment something is due, and a token is there for it.
        let next_due = [
            due.peek().map(|r| r.0.0),
            rechecks.peek().map(|r| r.0.0),
            (!fetches.is_empty()).then_some(t),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("work is left");
        t = t.max(next_due);
        tokens = (tokens + (t - refilled) as f64 * b / 1000.0).min(burst);
        refilled = t;
        if tokens < 1.0 {
            t += ((1.0 - tokens) * 1000.0 / b).ceil() as u64;
            tokens = (tokens + (t - refilled) as f64 * b / 1000.0).min(burst);
            refilled = t;
        }
        let waiting = [
            due.peek().is_some_and(|r| r.0.0 <= t),
            false,
            !fetches.is_empty(),
            rechecks.peek().is_some_and(|r| r.0.0 <= t),
        ];
        let Some(class) = share.pick(waiting) else {
            continue;
        };
        tokens -= 1.0;
        let sec = (t / 1000) as usize;
        if per_second.len() <= sec {
            per_second.resize(sec + 1, 0);
        }
        per_second[sec] += 1;
        // Waiting jobs' share of the budget, per minute, as the engine's RecheckFit sees it.
        if t >= window_start + 60_000 {
            let rate = job_grants_in_window as f64 / ((t - window_start) as f64 / 1000.0);
            job_rate = 0.5 * job_rate + 0.5 * rate;
            recheck_every = policy::fitted_recheck(RECHECK, m as u64, 1.0, 0.9 * b - job_rate);
            window_start = t;
            job_grants_in_window = 0;
        }
        match class {
            Class::Recheck => {
                let Reverse((_, w)) = rechecks.pop().expect("due");
                rechecks.push(Reverse((t + recheck_every.as_millis() as u64, w)));
            }
            Class::Fetch => {
                let i = fetches.pop_front().expect("due");
                jobs[i].polls += 1;
                left -= 1;
                job_grants_in_window += 1;
            }
            Class::Waiting | Class::First => {
                let Reverse((due_at, i)) = due.pop().expect("due");
                job_grants_in_window += 1;
                lateness.push((t - due_at) as f64 / 1000.0);
                let next = poll(kind, &mut jobs[i], t, limits, history);
                match next {
                    Some(at) => due.push(Reverse((at, i))),
                    None => fetches.push_back(i),
                }
            }
        }
    }
    let mut shares = Vec::new();
    let mut delays = Vec::new();
    let mut polls = 0u64;
    for j in &jobs {
        let detected = j.detected_ms.expect("every job is detected");
        let delay = (detected - j.done_ms) as f64 / 1000.0;
        delays.push(delay);
        shares.push(delay / ((j.done_ms - j.submit_ms) as f64 / 1000.0));
        polls += u64::from(j.polls);
    }
    Figures {
        polls_per_completion: polls as f64 / jobs.len() as f64,
        delay_share: (quantile(&mut shares, 0.5), quantile(&mut shares, 0.95)),
        delay_s: (quantile(&mut delays, 0.5), quantile(&mut delays, 0.95)),
        lateness_p95_s: quantile(&mut lateness, 0.95),
        max_per_second: per_second.iter().copied().max().unwrap_or(0),
        recheck_interval: recheck_every,
        simulated: Duration::from_millis(t),
    }
}

/// One status poll of `job` at `t`: its next poll time, or `None` when it saw the completion.
fn poll(kind: Kind, job: &mut Job, t: u64, limits: Limits, history: &mut History) -> Option<u64> {
    job.polls += 1;
    let status = job.status_at(t);
    if status == RemoteStatus::Completed {
        job.detected_ms = Some(t);
    }
    match kind {
        Kind::Oracle => return None,
        Kind::Fixed15 => return job.detected_ms.is_none().then_some(t + 15_000),
        Kind::AwsWaiter => {
            let d = policy::backoff(
                Duration::from_secs(2),
                Duration::from_secs(120),
                job.polls - 1,
                policy::jitter_seed(&job.key, u64::from(job.polls)),
            );
            return job
                .detected_ms
                .is_none()
                .then_some(t + d.as_millis() as u64);
        }
        Kind::Backoff | Kind::Adaptive => {}
    }
    // The daemon's own path: the pure step, then (adaptive) what the history learned and says.
    let now = Duration::from_millis(t);
    let answer = Verdict::Ok(SummaryStatus { status });
    let seed = policy::jitter_seed(&job.key, job.state.polls);
    let mut step = watch::step(&job.state, now, limits, Answer::Status(&answer), seed);
    let learned = history.learn(
        Polled {
            workspace: job.key.workspace(),
            project: job.key.project_id(),
            was: job.state.remote.as_ref(),
            was_seen_ms: job.last_change_ms,
            is: step.state.remote.as_ref(),
            started_ms: job.state.started_at.map(|s| s.as_millis() as u64),
            now_ms: t,
            polls_again: matches!(step.action, Action::PollAgain { .. }),
            answered: true,
        },
        job.timing,
    );
    job.timing = learned.timing;
    if job.state.remote != step.state.remote {
        job.last_change_ms = Some(t);
    }
    if kind == Kind::Adaptive
        && let Some(f) = learned.forecast
    {
        step = watch::adapt(step, now, limits, f.delay);
    }
    job.state = step.state;
    match step.action {
        Action::FetchResult => None,
        _ => Some(
            step.next_poll
                .expect("a waiting job is polled again")
                .as_millis() as u64,
        ),
    }
}

fn limits(max: Duration) -> Limits {
    Limits {
        max_wait: Duration::from_secs(24 * 3600),
        not_requested_grace: Duration::from_secs(3600),
        policy: Policy {
            initial: Duration::from_secs(10),
            max,
            recheck: RECHECK,
        },
    }
}

fn row(name: &str, f: &Figures) {
    println!(
        "| {name} | {:.1} | {:.2}% | {:.2}% | {:.0} s | {:.0} s | {:.0} s | {} | {} | {:.1} h |",
        f.polls_per_completion,
        100.0 * f.delay_share.0,
        100.0 * f.delay_share.1,
        f.delay_s.0,
        f.delay_s.1,
        f.lateness_p95_s,
        f.max_per_second,
        humantime::format_duration(Duration::from_secs(f.recheck_interval.as_secs())),
        f.simulated.as_secs_f64() / 3600.0,
    );
}

fn header(title: &str) {
    println!("\n{title}\n");
    println!(
        "| policy | polls per completion | delay p50 (share of job) | delay p95 (share) | delay p50 | delay p95 | job poll lateness p95 | most requests in a second | recheck interval | simulated |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn point(n: usize, m: usize, b: f64, medians: &[f64], seed: u64) {
    header(&format!(
        "N = {n} jobs, M = {m} delivered watches, B = {b}/s (burst {})",
        2.0 * b
    ));
    let jobs = |s: u64| workload(n, medians, SPREAD, &mut Rng(s));
    let five = limits(Duration::from_secs(300));
    for kind in [Kind::Fixed15, Kind::AwsWaiter, Kind::Backoff] {
        let f = simulate(kind, jobs(seed), m, b, five, &mut History::default());
        row(kind.name(), &f);
    }
    adaptive_rows(&jobs, seed, m, b);
    let f = simulate(
        Kind::Oracle,
        jobs(seed),
        m,
        b,
        five,
        &mut History::default(),
    );
    row(Kind::Oracle.name(), &f);
}

fn main() {
    let started = Instant::now();
    let seed: u64 = std::env::var("SCENEWATCH_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let points = std::env::var("SCENEWATCH_BENCH_POINTS")
        .unwrap_or_else(|_| "1000:0:10,1000:100000:10,10000:1000000:16".into());
    let mut rng = Rng(seed.wrapping_mul(31));
    let (lo, hi) = (60f64.ln(), 21_600f64.ln());
    let medians: Vec<f64> = (0..PROJECTS)
        .map(|_| (lo + rng.unit() * (hi - lo)).exp())
        .collect();
    println!(
        "cargo bench --bench polling (seed {seed}): {PROJECTS} projects, run medians 1 min to 6 h (log-uniform), spread σ = {SPREAD}, queue U(0, 30 min), submissions over the first hour"
    );
    for p in points.split(',') {
        let parts: Vec<&str> = p.split(':').collect();
        let [n, m, b] = parts[..] else {
            panic!("SCENEWATCH_BENCH_POINTS: {p:?} is not N:M:B");
        };
        point(
            n.parse().expect("N"),
            m.parse().expect("M"),
            b.parse().expect("B"),
            &medians,
            seed,
        );
    }
    // Jobs of one kind seen before: a project whose runs take about an hour.
    for spread in [0.2, 0.1] {
        header(&format!(
            "1-hour jobs of a kind seen before: N = 1000, one project, run median 1 h (spread σ = {spread}), M = 0, B = 10/s"
        ));
        point_one_kind(seed, spread);
    }
    println!(
        "\n(took {:.1} s of real time)",
        started.elapsed().as_secs_f64()
    );
}

fn point_one_kind(seed: u64, spread: f64) {
    let medians = [3600.0];
    let jobs = |s: u64| workload(1000, &medians, spread, &mut Rng(s));
    let five = limits(Duration::from_secs(300));
    let f = simulate(
        Kind::Backoff,
        jobs(seed),
        0,
        10.0,
        five,
        &mut History::default(),
    );
    row(Kind::Backoff.name(), &f);
    adaptive_rows(&jobs, seed, 0, 10.0);
}

/// The adaptive policy's rows, at the default `max_interval` and at 15 minutes: the history of
/// [`WARM_UP`] earlier batches of the same projects' jobs, learned as the daemon learns it (from
/// its own polls), then the measured batch.
fn adaptive_rows(jobs: &dyn Fn(u64) -> Vec<Job>, seed: u64, m: usize, b: f64) {
    for (label, lim) in [
        (
            "adaptive (max_interval 5m)",
            limits(Duration::from_secs(300)),
        ),
        (
            "adaptive (max_interval 15m)",
            limits(Duration::from_secs(900)),
        ),
    ] {
        let mut history = History::default();
        for warm in 1..=WARM_UP {
            simulate(
                Kind::Adaptive,
                jobs(seed ^ (0xabcd * warm)),
                0,
                b,
                lim,
                &mut history,
            );
        }
        let f = simulate(Kind::Adaptive, jobs(seed), m, b, lim, &mut history);
        row(label, &f);
    }
}
