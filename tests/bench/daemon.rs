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
//! Run: `cargo bench --bench daemon`. Knobs (environment):
//! `SCENEWATCH_BENCH_SIZES` (default `10000,100000`), `SCENEWATCH_BENCH_SECS` (the window,
//! default 30 s for up to 10,000 watches and 60 s above), `SCENEWATCH_BENCH_RPS` (the daemon's
//! request budget, default 5000), `SCENEWATCH_BENCH_INTERVAL` (each watch's poll interval,
//! default `5s`), `SCENEWATCH_BENCH_CONCURRENCY` (`poll.concurrency`, default 128).
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

fn bench(bin: &Path, n: u64, window: Duration, k: &Knobs, tck: f64) -> Figures {
    let mut f = Figures {
        n,
        ..Figures::default()
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let sim_port = free_port();
    let port = free_port();
    let scenario_file = d.join("scenario.toml");
    std::fs::write(&scenario_file, scenario(n)).expect("write the scenario");
    let cfg = d.join("scenewatch.toml");
    std::fs::write(&cfg, config(d, sim_port, port, n, k)).expect("write the configuration");

    let listen = format!("127.0.0.1:{sim_port}");
    let sim_args = [
        "simulate",
        "--listen",
        &listen,
        "--scenario",
        scenario_file.to_str().expect("a UTF-8 temporary path"),
    ];
    // Warnings only: a log line per request would cost the simulator more than the answer.
    let sim = spawn(
        bin,
        &sim_args,
        &d.join("sim.log"),
        &[("RUST_LOG", "warn")],
        "simulator",
    );
    if wait_until(Duration::from_secs(120), || sim_total(sim_port).is_some()).is_none() {
        f.note = format!(
            "the simulator did not come up: {}",
            std::fs::read_to_string(d.join("sim.log")).unwrap_or_default()
        );
        return f;
    }

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
    let sizes: Vec<u64> = env_or("SCENEWATCH_BENCH_SIZES", "10000,100000")
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SCENEWATCH_BENCH_SIZES: {s:?} is not a number"))
        })
        .collect();
    let fixed_window = std::env::var("SCENEWATCH_BENCH_SECS")
        .is_ok()
        .then(|| env_num("SCENEWATCH_BENCH_SECS", 30));
    let knobs = Knobs {
        rps: env_num("SCENEWATCH_BENCH_RPS", 5000),
        interval: env_or("SCENEWATCH_BENCH_INTERVAL", "5s"),
        concurrency: env_num("SCENEWATCH_BENCH_CONCURRENCY", 128),
    };
    // Cargo sets this for benchmarks: the binary built with the same (release) profile.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_scenewatch"));
    let tck = clock_ticks_per_sec();
    println!("scenewatch daemon benchmark");
    println!("binary:  {} (CARGO_BIN_EXE_scenewatch)", bin.display());
    println!("machine: {}", machine());
    let set: Vec<String> = [
        "SCENEWATCH_BENCH_SIZES",
        "SCENEWATCH_BENCH_SECS",
        "SCENEWATCH_BENCH_RPS",
        "SCENEWATCH_BENCH_INTERVAL",
        "SCENEWATCH_BENCH_CONCURRENCY",
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
        let f = bench(&bin, n, window, &knobs, tck);
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
