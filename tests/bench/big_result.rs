//! Benchmark of one large result (not a test: it prints figures, asserts nothing).
//!
//! The simulator runs as its own process with one asset of N scenes (default 20,000), held in
//! `SUMMARIZING`. The release daemon watches it (asset-level, status polls every second, one
//! file sink). Once the daemon is ready and has polled a few times, the bench reads its resident
//! set (`VmRSS`, the baseline), resets its peak (`echo 5 > /proc/PID/clear_refs`, so `VmHWM`
//! restarts from the current RSS), completes the summary through the simulator's control route,
//! waits until the file sink has delivered the version, and reads `VmHWM` again. The figure is
//! the peak above the baseline, in MiB and as a multiple of the result's body (the bytes of one
//! signed result call, fetched by the bench itself).
//!
//! Each run starts a fresh daemon on a fresh state directory; the glibc allocator's choices
//! (arenas, mmap thresholds) move the figure by a few MiB between runs, so it runs several times
//! and prints each run and the median.
//!
//! Run: `cargo bench --bench big_result`. Knobs (environment): `SCENEWATCH_BENCH_SCENES`
//! (default 20000), `SCENEWATCH_BENCH_RUNS` (default 5), `SCENEWATCH_BENCH_BIN` (another
//! `scenewatch` binary to measure, e.g. one built from an older commit; default the one cargo
//! built). Results and their reading: docs/benchmarks.md, "One large result".

#![allow(
    clippy::disallowed_methods,
    reason = "these drive the real binary in real time; clippy.toml's clock rule is for the crate"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scenewatch::ncp::signing::{Credentials, sign};
use support::*;

const ASSET: &str = "/api/v1/workspaces/bench/projects/1/assets/a1";

fn scenario(scenes: u64) -> String {
    format!(
        "seed = 1\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[asset]]\nworkspace = \"bench\"\nproject_id = \"1\"\nasset_id = \"a1\"\n\
         index_id = \"1000000\"\nscenes = {scenes}\ninitial = \"SUMMARIZING\"\n\
         queue = \"1h\"\nrun = \"1h\"\n"
    )
}

fn config(dir: &Path, sim_port: u16, port: u16) -> String {
    format!(
        r#"state_dir = "{dir}/state"
shutdown_timeout = "20s"
[api]
endpoint = "http://127.0.0.1:{sim_port}"
access_key = "AK"
generation = "asset"
timeout = "60s"
max_body_bytes = 268435456
[poll]
initial_interval = "1s"
max_interval = "1s"
max_wait = "24h"
[server]
listen = "127.0.0.1:{port}"
[[sink]]
type = "file"
dir = "{dir}/results"
[[watch]]
workspace = "bench"
project_id = "1"
asset_id = "a1"
index_id = "1000000"
"#,
        dir = dir.display(),
    )
}

/// The bytes of one signed result call (the body the daemon reads), `None` on failure.
fn result_body_bytes(sim_port: u16) -> Option<usize> {
    let path = format!("{ASSET}/scene-summary");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let signed = sign(&Credentials::new("AK", SECRET), "GET", &path, ts);
    let mut s = TcpStream::connect(("127.0.0.1", sim_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in signed.headers() {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    let body = &raw[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        Some(dechunk(&String::from_utf8_lossy(body)).len())
    } else {
        Some(body.len())
    }
}

/// `scenewatch_deliveries_total{…,outcome="ok"}` summed over sinks.
fn delivered(port: u16) -> f64 {
    let Some((_, body)) = http_get(port, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with("scenewatch_deliveries_total{") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Default)]
struct Run {
    baseline_mib: f64,
    ready_hwm_mib: f64,
    peak_mib: f64,
    after_mib: f64,
    hwm_reset: bool,
    delivered_s: Option<f64>,
    file_bytes: u64,
    note: String,
}

fn run_once(bin: &Path, scenes: u64, body_bytes: &mut Option<usize>) -> Run {
    let mut r = Run::default();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let sim_port = free_port();
    let port = free_port();
    let cfg = d.join("scenewatch.toml");
    std::fs::write(&cfg, config(d, sim_port, port)).expect("write the configuration");
    let sim = match start_simulator(
        bin,
        d,
        sim_port,
        &scenario(scenes),
        Duration::from_secs(120),
    ) {
        Ok(sim) => sim,
        Err(e) => {
            r.note = e;
            return r;
        }
    };
    let cfg_s = cfg.to_str().expect("a UTF-8 temporary path").to_string();
    let env = [
        ("SCENEWATCH__API__SECRET_KEY", SECRET),
        ("RUST_LOG", "warn"),
    ];
    let log = d.join("daemon.log");
    let mut daemon = spawn(bin, &["run", "--config", &cfg_s], &log, &env, "daemon");
    let up = wait_until(Duration::from_secs(120), || {
        ready(port) || daemon.exited().is_some()
    });
    if up.is_none() || daemon.exited().is_some() {
        r.note = format!("the daemon did not get ready; log tail:\n{}", tail(&log));
        return r;
    }
    // A few status polls, so the baseline is the daemon at work, not just started.
    let polled = sim_total(sim_port).unwrap_or(0);
    let _ = wait_until(Duration::from_secs(30), || {
        sim_total(sim_port).unwrap_or(0) >= polled + 3
    });
    let pid = daemon.pid();
    r.ready_hwm_mib = mib(status_kb(pid, "VmHWM"));
    r.baseline_mib = mib(status_kb(pid, "VmRSS"));
    // Linux ≥ 4.0: "5" resets the peak resident set size to the current one.
    r.hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    if !r.hwm_reset {
        r.note.push_str(
            "VmHWM could not be reset: the peak includes the daemon's start (at most the 'ready' peak). ",
        );
    }
    let forced = Instant::now();
    let status = http_post(
        sim_port,
        "/__sim/assets/bench/1/a1/force",
        r#"{"status":"SUMMARIZE_COMPLETED"}"#,
    );
    if status != Some(200) {
        r.note = format!("completing the summary failed: {status:?}");
        return r;
    }
    r.delivered_s = wait_until(Duration::from_secs(300), || {
        delivered(port) >= 1.0 || daemon.exited().is_some()
    })
    .map(|_| forced.elapsed().as_secs_f64());
    if r.delivered_s.is_none() || daemon.exited().is_some() {
        r.note
            .push_str(&format!("not delivered; log tail:\n{}", tail(&log)));
    }
    r.peak_mib = mib(status_kb(pid, "VmHWM"));
    r.after_mib = mib(status_kb(pid, "VmRSS"));
    r.file_bytes = std::fs::metadata(d.join("results/bench/1/a1/1000000.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    if body_bytes.is_none() {
        *body_bytes = result_body_bytes(sim_port);
    }
    daemon.signal("TERM");
    let _ = daemon.wait_exit(Duration::from_secs(60));
    sim.signal("TERM");
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let scenes = env_num("SCENEWATCH_BENCH_SCENES", 20_000);
    let runs = env_num("SCENEWATCH_BENCH_RUNS", 5).max(1);
    let bin = std::env::var_os("SCENEWATCH_BENCH_BIN")
        .map(PathBuf::from)
        // Cargo sets this for benchmarks: the binary built with the same (release) profile.
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scenewatch")));
    println!("scenewatch large-result benchmark");
    println!("binary:  {}", bin.display());
    println!("machine: {}", machine());
    let set: Vec<String> = [
        "SCENEWATCH_BENCH_SCENES",
        "SCENEWATCH_BENCH_RUNS",
        "SCENEWATCH_BENCH_BIN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    println!("command: {}cargo bench --bench big_result", set.concat());
    println!(
        "setup:   simulator in its own process, one asset of {scenes} scenes completed on cue; \
         daemon (SQLite ledger, one file sink) polling it every second"
    );
    let mut body = None;
    let mut all = Vec::new();
    for i in 1..=runs {
        let r = run_once(&bin, scenes, &mut body);
        let b = body.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0));
        println!(
            "run {i}: baseline RSS {:.1} MiB (peak at ready {:.1}), peak {:.1} MiB{}, \
             peak above baseline {:.1} MiB = {:.2}x the body; RSS after {:.1} MiB; \
             delivered {} s after completion; file {} bytes",
            r.baseline_mib,
            r.ready_hwm_mib,
            r.peak_mib,
            if r.hwm_reset { "" } else { " (not reset)" },
            r.peak_mib - r.baseline_mib,
            (r.peak_mib - r.baseline_mib) / b,
            r.after_mib,
            opt(r.delivered_s, 2),
            r.file_bytes,
        );
        if !r.note.is_empty() {
            println!("   note: {}", r.note);
        }
        all.push(r);
    }
    let b = body.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0));
    let above = median(all.iter().map(|r| r.peak_mib - r.baseline_mib).collect());
    println!(
        "\n| scenes | body MiB | runs | baseline RSS MiB | peak above baseline MiB (median) | × body | min × body | max × body |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratios: Vec<f64> = all
        .iter()
        .map(|r| (r.peak_mib - r.baseline_mib) / b)
        .collect();
    println!(
        "| {scenes} | {b:.2} | {runs} | {:.1} | {above:.1} | {:.2} | {:.2} | {:.2} |",
        median(all.iter().map(|r| r.baseline_mib).collect()),
        above / b,
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
}
