//! Benchmark of `scenewatch run` at scale (not a test: it prints figures, asserts nothing).
//!
//! For each size N it starts the simulator as its own process with N generated indexes that
//! stay queued (`queue = "1h"`, so every poll is a status poll), writes a configuration with N
//! `[[watch]]` tables and a request budget well above the polling demand, starts the release
//! binary, and measures from outside:
//!
//! - polls per second: the simulator's request counter (`/__sim/stats`) over a fixed window,
//!   after every watch has been polled once (the first polls are spread over the interval);
//! - CPU time per poll: the daemon's utime + stime (`/proc/PID/stat`) over the same window;
//! - peak RSS: the daemon's `VmHWM` (`/proc/PID/status`) at the end of the window;
//! - start and restart time: from spawning the process to `/readyz` answering 200, and to the
//!   first poll the simulator sees; the restart follows a SIGTERM with the ledger holding N
//!   watches.
//!
//! Then, side by side in the same run (issue 14):
//!
//! - CPU per poll at about 10 and about 1,000 polls/s (`SCENEWATCH_BENCH_RATES`): R × 10
//!   watches polled every 10 s, measured after every watch was polled once, as the daemon's
//!   on-CPU time (`/proc/PID/task/*/schedstat`, nanoseconds) over the window, and its context
//!   switches per poll (`/proc/PID/task/*/status`), the thread hand-offs;
//! - the floor at the same rates, against the same simulator and the same status route right
//!   after the daemon stopped: a minimal keep-alive HTTP/1.1 client written here on a
//!   current-thread tokio runtime (one connection, a timer per request, the request written by
//!   hand and signed with an HMAC keyed once, the answer read by its `content-length`), its
//!   thread's on-CPU time per request;
//! - bytes per watch (`SCENEWATCH_BENCH_MEMORY`, default 1,000, 10,000 and 100,000 watches; add
//!   1000000 for the million): the daemon's `VmRSS` 10 s after `/readyz` first answered, over a
//!   daemon with no watch, divided by the watch count (and the peak, `VmHWM`).
//!
//! Run: `cargo bench --bench daemon`. Knobs (environment):
//! `SCENEWATCH_BENCH_SIZES` (the scale section, default `10000,100000`; empty skips it),
//! `SCENEWATCH_BENCH_SECS` (the window, default 30 s for up to 10,000 watches and 60 s above),
//! `SCENEWATCH_BENCH_RPS` (the daemon's request budget, default 5000), `SCENEWATCH_BENCH_INTERVAL`
//! (each watch's poll interval in the scale section, default `5s`),
//! `SCENEWATCH_BENCH_CONCURRENCY` (`poll.concurrency`, default 128), `SCENEWATCH_BENCH_RATES`
//! (default `10,1000`; empty skips the section), `SCENEWATCH_BENCH_MEMORY` (default
//! `1000,10000,100000`; empty skips it), `SCENEWATCH_BENCH_BIN` (the daemon binary to measure,
//! default the one cargo built; the simulator and the floor are always this build's, so two
//! binaries compare on equal terms).
//! Results and their reading: docs/benchmarks.md.

#![allow(
    clippy::disallowed_methods,
    reason = "these drive the real binary in real time; clippy.toml's clock rule is for the crate"
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

struct Knobs {
    rps: u64,
    interval: String,
    concurrency: u64,
}

fn config(dir: &Path, sim_port: u16, port: u16, n: u64, k: &Knobs) -> String {
    let mut s = format!(
        r#"state_dir = "{dir}/state"
shutdown_timeout = "20s"
[api]
endpoint = "http://127.0.0.1:{sim_port}"
access_key = "AK"
generation = "index"
requests_per_second = {rps}.0
burst = 1000
timeout = "10s"
[poll]
initial_interval = "{interval}"
max_interval = "{interval}"
max_wait = "24h"
concurrency = {concurrency}
[server]
listen = "127.0.0.1:{port}"
[[sink]]
type = "file"
dir = "{dir}/results"
"#,
        dir = dir.display(),
        rps = k.rps,
        interval = k.interval,
        concurrency = k.concurrency,
    );
    push_watches(&mut s, n);
    s
}

#[derive(Default)]
struct Figures {
    n: u64,
    window_s: f64,
    polls_per_s: f64,
    daemon_polls_per_s: Option<f64>,
    cpu_ms_per_poll: f64,
    cpu_share: f64,
    sim_cpu_ms_per_req: f64,
    peak_rss_mib: f64,
    /// VmHWM when /readyz first answered 200: the start's own peak (configuration, ledger).
    ready_hwm_mib: f64,
    /// VmRSS at the end of the window: the steady state.
    end_rss_mib: f64,
    first_ready_s: Option<f64>,
    first_round_s: Option<f64>,
    stop_s: Option<f64>,
    restart_ready_s: Option<f64>,
    restart_first_poll_s: Option<f64>,
    ledger_mib: f64,
    note: String,
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn bench(sim_bin: &Path, bin: &Path, n: u64, window: Duration, k: &Knobs, tck: f64) -> Figures {
    let mut f = Figures {
        n,
        ..Figures::default()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let sim_port = free_port();
    let port = free_port();
    let cfg = d.join("scenewatch.toml");
    std::fs::write(&cfg, config(d, sim_port, port, n, k)).expect("write the configuration");
    let sim = match start_simulator(sim_bin, d, sim_port, &scenario(n), Duration::from_secs(120)) {
        Ok(sim) => sim,
        Err(e) => {
            f.note = e;
            return f;
        }
    };

    let cfg_s = cfg.to_str().expect("a UTF-8 temporary path").to_string();
    let run_args = ["run", "--config", cfg_s.as_str()];
    let env = [("SCENEWATCH__API__SECRET_KEY", SECRET)];
    let log = d.join("daemon.log");
    let before = sim_total(sim_port).unwrap_or(0);
    let mut daemon = spawn(bin, &run_args, &log, &env, "daemon");
    let started = Instant::now();
    f.first_ready_s = secs(wait_until(Duration::from_secs(600), || {
        ready(port) || daemon.exited().is_some()
    }));
    if let Some(s) = daemon.exited() {
        f.note = format!(
            "the daemon exited ({s}) before it was ready; log tail:\n{}",
            tail(&log)
        );
        return f;
    }
    f.ready_hwm_mib = mib(status_kb(daemon.pid(), "VmHWM"));
    // Steady state: every watch polled at least once (first polls are spread over the interval).
    let first_round = wait_until(Duration::from_secs(300), || {
        sim_total(sim_port).unwrap_or(0) >= before + n
    });
    f.first_round_s = first_round.map(|_| started.elapsed().as_secs_f64());
    if first_round.is_none() {
        f.note = format!(
            "not every watch was polled within 300 s ({} polls); measuring anyway. ",
            sim_total(sim_port).unwrap_or(0) - before
        );
    }

    let (p0, dp0, c0, s0, t0) = (
        sim_total(sim_port).unwrap_or(0),
        daemon_polls(port),
        cpu_ticks(daemon.pid()),
        cpu_ticks(sim.pid()),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (p1, dp1, c1, s1, t1) = (
        sim_total(sim_port).unwrap_or(0),
        daemon_polls(port),
        cpu_ticks(daemon.pid()),
        cpu_ticks(sim.pid()),
        Instant::now(),
    );
    let dt = (t1 - t0).as_secs_f64();
    let polls = p1.saturating_sub(p0) as f64;
    let cpu_s = (c1.saturating_sub(c0)) as f64 / tck;
    f.window_s = dt;
    f.polls_per_s = polls / dt;
    f.daemon_polls_per_s = dp0.zip(dp1).map(|(a, b)| (b - a) / dt);
    f.cpu_ms_per_poll = if polls > 0.0 {
        cpu_s * 1000.0 / polls
    } else {
        f64::NAN
    };
    f.cpu_share = cpu_s / dt;
    f.sim_cpu_ms_per_req = if polls > 0.0 {
        (s1.saturating_sub(s0)) as f64 / tck * 1000.0 / polls
    } else {
        f64::NAN
    };
    f.peak_rss_mib = mib(status_kb(daemon.pid(), "VmHWM"));
    f.end_rss_mib = mib(status_kb(daemon.pid(), "VmRSS"));

    // Restart: a graceful stop, then a start on the ledger that now holds N watches.
    let stopping = Instant::now();
    daemon.signal("TERM");
    let stopped = daemon.wait_exit(Duration::from_secs(60));
    f.stop_s = stopped.map(|_| stopping.elapsed().as_secs_f64());
    if stopped.is_none() {
        f.note
            .push_str("the daemon did not stop within 60 s after SIGTERM. ");
    }
    drop(daemon);
    f.ledger_mib = dir_size(&d.join("state")) as f64 / (1024.0 * 1024.0);
    let quiet = sim_total(sim_port).unwrap_or(0);
    let mut daemon = spawn(bin, &run_args, &log, &env, "daemon");
    let restarted = Instant::now();
    let mut first_poll = None;
    let mut ready_at = None;
    let _ = wait_until(Duration::from_secs(600), || {
        if first_poll.is_none() && sim_total(sim_port).unwrap_or(0) > quiet {
            first_poll = Some(restarted.elapsed());
        }
        if ready_at.is_none() && ready(port) {
            ready_at = Some(restarted.elapsed());
        }
        (first_poll.is_some() && ready_at.is_some()) || daemon.exited().is_some()
    });
    f.restart_ready_s = secs(ready_at);
    f.restart_first_poll_s = secs(first_poll);
    daemon.signal("TERM");
    let _ = daemon.wait_exit(Duration::from_secs(60));
    sim.signal("TERM");
    f
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let sizes = list("SCENEWATCH_BENCH_SIZES", "10000,100000");
    let rates = list("SCENEWATCH_BENCH_RATES", "10,1000");
    let memory = list("SCENEWATCH_BENCH_MEMORY", "1000,10000,100000");
    let fixed_window = std::env::var("SCENEWATCH_BENCH_SECS")
        .is_ok()
        .then(|| env_num("SCENEWATCH_BENCH_SECS", 30));
    let knobs = Knobs {
        rps: env_num("SCENEWATCH_BENCH_RPS", 5000),
        interval: env_or("SCENEWATCH_BENCH_INTERVAL", "5s"),
        concurrency: env_num("SCENEWATCH_BENCH_CONCURRENCY", 128),
    };
    // Cargo sets this for benchmarks: the binary built with the same (release) profile.
    let sim_bin = PathBuf::from(env!("CARGO_BIN_EXE_scenewatch"));
    let bin =
        std::env::var_os("SCENEWATCH_BENCH_BIN").map_or_else(|| sim_bin.clone(), PathBuf::from);
    let tck = clock_ticks_per_sec();
    println!("scenewatch daemon benchmark");
    println!(
        "binary:  {} (daemon), {} (simulator, floor's build)",
        bin.display(),
        sim_bin.display()
    );
    println!("machine: {}", machine());
    let set: Vec<String> = [
        "SCENEWATCH_BENCH_SIZES",
        "SCENEWATCH_BENCH_SECS",
        "SCENEWATCH_BENCH_RPS",
        "SCENEWATCH_BENCH_INTERVAL",
        "SCENEWATCH_BENCH_CONCURRENCY",
        "SCENEWATCH_BENCH_RATES",
        "SCENEWATCH_BENCH_MEMORY",
        "SCENEWATCH_BENCH_BIN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    println!("command: {}cargo bench --bench daemon", set.concat());
    println!(
        "setup:   simulator in its own process, every index queued (status polls only); \
         daemon budget {} rps, burst 1000, poll interval {} (initial = max), concurrency {}",
        knobs.rps, knobs.interval, knobs.concurrency
    );
    let mut all = Vec::new();
    for &n in &sizes {
        let window = Duration::from_secs(fixed_window.unwrap_or(if n <= 10_000 { 30 } else { 60 }));
        println!("\n== {n} watches, {}s window ...", window.as_secs());
        let f = bench(&sim_bin, &bin, n, window, &knobs, tck);
        println!(
            "   polls/s {:.0} (daemon's own count {}), CPU {:.3} ms/poll ({:.0}% of one core), \
             simulator {:.3} ms/request, peak RSS {:.1} MiB \
             ({:.1} MiB peak when ready, {:.1} MiB resident at the end)",
            f.polls_per_s,
            opt(f.daemon_polls_per_s, 0),
            f.cpu_ms_per_poll,
            f.cpu_share * 100.0,
            f.sim_cpu_ms_per_req,
            f.peak_rss_mib,
            f.ready_hwm_mib,
            f.end_rss_mib,
        );
        println!(
            "   first start: ready after {} s, every watch polled once after {} s; \
             SIGTERM stop {} s; restart with {:.1} MiB ledger: ready after {} s, first poll after {} s",
            opt(f.first_ready_s, 2),
            opt(f.first_round_s, 1),
            opt(f.stop_s, 2),
            f.ledger_mib,
            opt(f.restart_ready_s, 2),
            opt(f.restart_first_poll_s, 2),
        );
        if !f.note.is_empty() {
            println!("   note: {}", f.note);
        }
        all.push(f);
    }
    if !all.is_empty() {
        println!(
            "\n| watches | window s | polls/s | CPU ms/poll | daemon CPU | peak RSS MiB | start → ready s | restart → ready s | restart → first poll s |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &all {
            println!(
                "| {} | {:.0} | {:.0} | {:.3} | {:.0}% | {:.1} | {} | {} | {} |",
                f.n,
                f.window_s,
                f.polls_per_s,
                f.cpu_ms_per_poll,
                f.cpu_share * 100.0,
                f.peak_rss_mib,
                opt(f.first_ready_s, 2),
                opt(f.restart_ready_s, 2),
                opt(f.restart_first_poll_s, 2),
            );
        }
    }
    if !rates.is_empty() {
        let mut side = Vec::new();
        for &r in &rates {
            let window = Duration::from_secs(fixed_window.unwrap_or(30));
            println!(
                "\n== about {r} polls/s ({} watches every {RATE_INTERVAL_S} s), {}s window, then the floor ...",
                r * RATE_INTERVAL_S,
                window.as_secs()
            );
            let f = rate_bench(&sim_bin, &bin, r, window, &knobs);
            println!(
                "   scenewatch: {:.1} polls/s, {:.1} µs CPU per poll ({:.2}% of a core), {:.2} context switches per poll, simulator {:.1} µs per request",
                f.polls_per_s,
                f.cpu_us_per_poll,
                f.cpu_share * 100.0,
                f.switches_per_poll,
                f.sim_us_daemon
            );
            println!(
                "   floor:      {:.1} requests/s ({} not 200), {:.1} µs CPU per request, simulator {:.1} µs per request",
                f.floor_per_s, f.floor_errors, f.floor_us_per_req, f.sim_us_floor
            );
            if !f.note.is_empty() {
                println!("   note: {}", f.note);
            }
            side.push(f);
        }
        println!(
            "\n| target polls/s | watches | scenewatch polls/s | scenewatch CPU per poll | floor requests/s | floor CPU per request | scenewatch / floor |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for f in &side {
            println!(
                "| {} | {} | {:.1} | {:.1} µs | {:.1} | {:.1} µs | {:.1}× |",
                f.rate,
                f.n,
                f.polls_per_s,
                f.cpu_us_per_poll,
                f.floor_per_s,
                f.floor_us_per_req,
                f.cpu_us_per_poll / f.floor_us_per_req
            );
        }
    }
    if !memory.is_empty() {
        println!("\n== bytes per watch: 0 watches (the baseline), then {memory:?} ...");
        let base = memory_bench(&sim_bin, &bin, 0, &knobs);
        println!(
            "   0 watches: VmRSS {:.1} MiB, peak {:.1} MiB, ready after {} s {}",
            mib(base.rss_kb),
            mib(base.hwm_kb),
            opt(base.ready_s, 2),
            base.note
        );
        let mut rows = Vec::new();
        for &n in &memory {
            let m = memory_bench(&sim_bin, &bin, n, &knobs);
            println!(
                "   {n} watches: VmRSS {:.1} MiB, peak {:.1} MiB, ready after {} s, {} polls while waiting {}",
                mib(m.rss_kb),
                mib(m.hwm_kb),
                opt(m.ready_s, 2),
                m.polls,
                m.note
            );
            rows.push(m);
        }
        println!(
            "\n| watches | VmRSS 10 s after ready | bytes per watch (over {:.1} MiB with none) | VmRSS / watches | peak (VmHWM) | start → ready |",
            mib(base.rss_kb)
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for m in &rows {
            let over = m.rss_kb.saturating_sub(base.rss_kb) as f64 * 1024.0 / m.n as f64;
            println!(
                "| {} | {:.1} MiB | {:.0} B | {:.0} B | {:.1} MiB | {} s |",
                m.n,
                mib(m.rss_kb),
                over,
                m.rss_kb as f64 * 1024.0 / m.n as f64,
                mib(m.hwm_kb),
                opt(m.ready_s, 2)
            );
        }
    }
}

fn list(name: &str, default: &str) -> Vec<u64> {
    env_or(name, default)
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {s:?} is not a number"))
        })
        .collect()
}

/// The poll interval of the rate section: R polls/s are R × 10 watches.
const RATE_INTERVAL_S: u64 = 10;

/// A simulator with `n` queued indexes and a daemon with their `n` watches, both running.
struct Pair {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    sim: Proc,
    sim_port: u16,
    port: u16,
    daemon: Proc,
    /// Simulator requests before the daemon started.
    before: u64,
    /// From spawning the daemon to `/readyz` answering 200.
    ready_s: Option<f64>,
}

fn start_pair(
    sim_bin: &Path,
    bin: &Path,
    n: u64,
    interval: &str,
    k: &Knobs,
) -> Result<Pair, String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path().to_path_buf();
    let sim_port = free_port();
    let port = free_port();
    let cfg = d.join("scenewatch.toml");
    let knobs = Knobs {
        rps: k.rps,
        interval: interval.to_string(),
        concurrency: k.concurrency,
    };
    std::fs::write(&cfg, config(&d, sim_port, port, n, &knobs)).expect("write the configuration");
    // The simulator needs at least one index; a daemon without watches does not ask for it.
    let sim = start_simulator(
        sim_bin,
        &d,
        sim_port,
        &scenario(n.max(1)),
        Duration::from_secs(600),
    )?;
    let before = sim_total(sim_port).unwrap_or(0);
    let log = d.join("daemon.log");
    let cfg_s = cfg.to_str().expect("a UTF-8 temporary path").to_string();
    let mut daemon = spawn(
        bin,
        &["run", "--config", cfg_s.as_str()],
        &log,
        &[("SCENEWATCH__API__SECRET_KEY", SECRET)],
        "daemon",
    );
    let ready_s = secs(wait_until(Duration::from_secs(900), || {
        ready(port) || daemon.exited().is_some()
    }));
    if let Some(s) = daemon.exited() {
        return Err(format!(
            "the daemon exited ({s}) before it was ready; log tail:\n{}",
            tail(&log)
        ));
    }
    Ok(Pair {
        _dir: dir,
        dir: d,
        sim,
        sim_port,
        port,
        daemon,
        before,
        ready_s,
    })
}

#[derive(Default)]
struct RateFigures {
    rate: u64,
    n: u64,
    polls_per_s: f64,
    cpu_us_per_poll: f64,
    cpu_share: f64,
    sim_us_daemon: f64,
    switches_per_poll: f64,
    floor_per_s: f64,
    floor_us_per_req: f64,
    floor_errors: u64,
    sim_us_floor: f64,
    note: String,
}

fn rate_bench(sim_bin: &Path, bin: &Path, rate: u64, window: Duration, k: &Knobs) -> RateFigures {
    let n = rate * RATE_INTERVAL_S;
    let mut f = RateFigures {
        rate,
        n,
        ..RateFigures::default()
    };
    let mut pair = match start_pair(sim_bin, bin, n, &format!("{RATE_INTERVAL_S}s"), k) {
        Ok(p) => p,
        Err(e) => {
            f.note = e;
            return f;
        }
    };
    // Steady state: every watch polled once (its first poll records it as waiting; the later
    // ones find it as it was).
    let first = wait_until(Duration::from_secs(RATE_INTERVAL_S * 6), || {
        sim_total(pair.sim_port).unwrap_or(0) >= pair.before + n
    });
    if first.is_none() {
        f.note = "not every watch was polled once before the window; measuring anyway. ".into();
    }
    let x0 = ctx_switches(pair.daemon.pid());
    let (p0, c0, s0, t0) = (
        sim_total(pair.sim_port).unwrap_or(0),
        cpu_ns(pair.daemon.pid()),
        cpu_ns(pair.sim.pid()),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (p1, c1, s1, t1) = (
        sim_total(pair.sim_port).unwrap_or(0),
        cpu_ns(pair.daemon.pid()),
        cpu_ns(pair.sim.pid()),
        Instant::now(),
    );
    let x1 = ctx_switches(pair.daemon.pid());
    let dt = (t1 - t0).as_secs_f64();
    let polls = p1.saturating_sub(p0) as f64;
    f.polls_per_s = polls / dt;
    f.cpu_us_per_poll = c1.saturating_sub(c0) as f64 / 1000.0 / polls;
    f.cpu_share = c1.saturating_sub(c0) as f64 / 1e9 / dt;
    f.sim_us_daemon = s1.saturating_sub(s0) as f64 / 1000.0 / polls;
    f.switches_per_poll = x1.saturating_sub(x0) as f64 / polls;
    pair.daemon.signal("TERM");
    if pair.daemon.wait_exit(Duration::from_secs(60)).is_none() {
        f.note.push_str("the daemon did not stop within 60 s. ");
    }

    let s0 = cpu_ns(pair.sim.pid());
    let fl = floor(pair.sim_port, n, rate, window);
    let s1 = cpu_ns(pair.sim.pid());
    f.floor_per_s = fl.requests as f64 / fl.elapsed_s;
    f.floor_us_per_req = fl.cpu_ns as f64 / 1000.0 / fl.requests as f64;
    f.floor_errors = fl.errors;
    f.sim_us_floor = s1.saturating_sub(s0) as f64 / 1000.0 / fl.requests as f64;
    if let Some(e) = fl.failure {
        f.note.push_str(&format!("the floor client failed: {e}. "));
    }
    pair.sim.signal("TERM");
    let _ = pair.dir;
    f
}

#[derive(Default)]
struct FloorFigures {
    requests: u64,
    errors: u64,
    cpu_ns: u64,
    elapsed_s: f64,
    failure: Option<String>,
}

/// The floor: what one signed status poll costs a client that does nothing else. One kept-alive
/// HTTP/1.1 connection on a current-thread tokio runtime, paced by a tokio interval at `rate`
/// requests per second for `window`, cycling over the `n` watches' status routes (the very
/// requests the daemon sends, signed the same way with an HMAC keyed once); its thread's
/// on-CPU time.
fn floor(port: u16, n: u64, rate: u64, window: Duration) -> FloorFigures {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let mut f = FloorFigures::default();
        let r: Result<(), String> = rt.block_on(async {
            use hmac::{Hmac, KeyInit, Mac};
            use tokio::io::AsyncWriteExt;
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            conn.set_nodelay(true).map_err(|e| e.to_string())?;
            let key = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes())
                .expect("any key length");
            let mut req: Vec<u8> = Vec::with_capacity(1024);
            let mut path = String::with_capacity(160);
            let mut buf = vec![0u8; 64 * 1024];
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut i = 0u64;
            let mut started = None;
            loop {
                tick.tick().await;
                // One request before counting, so the connection and the buffers are warm.
                let (t0, c0) = *started.get_or_insert_with(|| (Instant::now(), thread_cpu_ns()));
                if i > 0 && t0.elapsed() >= window {
                    f.cpu_ns = thread_cpu_ns() - c0;
                    f.elapsed_s = t0.elapsed().as_secs_f64();
                    return Ok(());
                }
                let w = i % n;
                path.clear();
                use std::fmt::Write as _;
                let _ = write!(
                    path,
                    "/api/v1/workspaces/bench/projects/1/assets/a{}/indexes/{}/scene-summaries/{}/status",
                    w + 1,
                    1_000_000 + w,
                    5_000_000 + w
                );
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let mut mac = key.clone();
                mac.update(b"GET ");
                mac.update(path.as_bytes());
                mac.update(format!("\n{ts}\nAK").as_bytes());
                let mut sig = [0u8; 44];
                let _ = base64::Engine::encode_slice(
                    &base64::engine::general_purpose::STANDARD,
                    mac.finalize().into_bytes(),
                    &mut sig,
                );
                req.clear();
                let _ = std::io::Write::write_fmt(
                    &mut req,
                    format_args!(
                        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: application/json\r\n\
                         x-ncp-apigw-timestamp: {ts}\r\nx-ncp-iam-access-key: AK\r\n\
                         x-ncp-apigw-signature-v2: "
                    ),
                );
                req.extend_from_slice(&sig);
                req.extend_from_slice(b"\r\n\r\n");
                conn.write_all(&req).await.map_err(|e| e.to_string())?;
                let mut have = 0;
                let need = loop {
                    have += read_some(&mut conn, &mut buf[have..]).await?;
                    let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
                    if !head.starts_with("HTTP/1.1 200") {
                        f.errors += 1;
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .ok_or("an answer without content-length")?;
                    break end + 4 + len;
                };
                while have < need {
                    have += read_some(&mut conn, &mut buf[have..]).await?;
                }
                if i > 0 {
                    f.requests += 1;
                }
                i += 1;
            }
        });
        f.failure = r.err();
        f
    })
    .join()
    .expect("the floor thread")
}

/// Reads what the floor client's connection has into `buf`: at least one byte, or why not.
async fn read_some(conn: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    use tokio::io::AsyncReadExt;
    match conn.read(buf).await.map_err(|e| e.to_string())? {
        0 => Err("the simulator closed the connection".into()),
        got => Ok(got),
    }
}

struct MemFigures {
    n: u64,
    rss_kb: u64,
    hwm_kb: u64,
    ready_s: Option<f64>,
    polls: u64,
    note: String,
}

/// The daemon's memory with `n` watches (polled every 10 minutes): `VmRSS` and `VmHWM` 10 s
/// after it was ready.
fn memory_bench(sim_bin: &Path, bin: &Path, n: u64, k: &Knobs) -> MemFigures {
    let mut m = MemFigures {
        n,
        rss_kb: 0,
        hwm_kb: 0,
        ready_s: None,
        polls: 0,
        note: String::new(),
    };
    let mut pair = match start_pair(sim_bin, bin, n, "10m", k) {
        Ok(p) => p,
        Err(e) => {
            m.note = e;
            return m;
        }
    };
    m.ready_s = pair.ready_s;
    std::thread::sleep(Duration::from_secs(10));
    m.rss_kb = status_kb(pair.daemon.pid(), "VmRSS");
    m.hwm_kb = status_kb(pair.daemon.pid(), "VmHWM");
    m.polls = sim_total(pair.sim_port)
        .unwrap_or(0)
        .saturating_sub(pair.before);
    pair.daemon.signal("TERM");
    let _ = pair.daemon.wait_exit(Duration::from_secs(120));
    pair.sim.signal("TERM");
    let _ = pair.port;
    m
}
