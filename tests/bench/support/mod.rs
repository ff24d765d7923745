//! What the benchmarks that drive the release binary share (`daemon.rs`, `replicas.rs`,
//! `big_result.rs`): the simulator started on a scenario, child processes that die with the
//! guard, a blocking loopback HTTP client, the simulator's and the daemon's counters, `/proc`
//! readings, the generated scenario, the machine's description.

#![allow(
    dead_code,
    reason = "each benchmark is its own crate and uses part of these helpers"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "SK-bench-secret";

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// Starts the simulator (`bin simulate`, warnings only: a log line per request would cost it
/// more than the answer) on `port` with `scenario` written to `dir/scenario.toml`, and waits up
/// to `within` for it to answer; `Err` says why, with the end of its log.
pub fn start_simulator(
    bin: &Path,
    dir: &Path,
    port: u16,
    scenario: &str,
    within: Duration,
) -> Result<Proc, String> {
    let file = dir.join("scenario.toml");
    std::fs::write(&file, scenario).map_err(|e| format!("writing the scenario: {e}"))?;
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join("sim.log");
    let args = [
        "simulate",
        "--listen",
        &listen,
        "--scenario",
        file.to_str().expect("a UTF-8 temporary path"),
    ];
    let sim = spawn(bin, &args, &log, &[("RUST_LOG", "warn")], "simulator");
    if wait_until(within, || sim_total(port).is_some()).is_none() {
        return Err(format!("the simulator did not come up: {}", tail(&log)));
    }
    Ok(sim)
}

/// A child process that is killed when the guard drops (a panicking bench leaves nothing).
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {sig} {} ({}) failed", self.pid(), self.name);
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(
    bin: &Path,
    args: &[&str],
    log: &Path,
    env: &[(&str, &str)],
    name: &'static str,
) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the log file");
    let err = out.try_clone().expect("clone the log file handle");
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCENEWATCH__") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("SCENEWATCH_CONFIG")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Proc {
        child: cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
        name,
    }
}

/// A blocking HTTP/1.1 GET on loopback: `(status, body)`, `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// A blocking HTTP/1.1 POST of a JSON `body` on loopback: the status, `None` if nothing answers.
pub fn http_post(port: u16, path: &str, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Requests the simulator has answered (every API request; control routes are not counted).
pub fn sim_total(port: u16) -> Option<u64> {
    let (status, body) = http_get(port, "/__sim/stats")?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()?["total"].as_u64()
}

/// The sum of `scenewatch_polls_total` over its labels, from the daemon's /metrics.
pub fn daemon_polls(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    let sum = body
        .lines()
        .filter(|l| {
            l.starts_with("scenewatch_polls_total{") || l.starts_with("scenewatch_polls_total ")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum)
}

pub fn ready(port: u16) -> bool {
    matches!(http_get(port, "/readyz"), Some((200, _)))
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is f[0], so utime (14) is f[11] and stime (15) f[12].
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// A line of /proc/PID/status in kB (`VmHWM`, `VmRSS`).
pub fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Polls `cond` every 20 ms until it holds or `within` passes; the time it took.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` generated indexes (assets `a1`…, indexes from 1,000,000, summaries from 5,000,000) that
/// stay queued for an hour: every poll of them is a status poll.
pub fn scenario(n: u64) -> String {
    format!(
        "seed = 1\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[generate]]\ncount = {n}\nworkspace = \"bench\"\nproject_id = \"1\"\n\
         asset_id_prefix = \"a\"\nindex_id_start = 1000000\nscene_summary_id_start = 5000000\n\
         scenes = \"5..10\"\nqueue = \"1h\"\nrun = \"1h\"\n"
    )
}

pub fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    format!("{cores} cores ({model}), {mem_gib:.0} GiB")
}

/// Appends the `[[watch]]` tables of the `n` indexes of [`scenario`].
pub fn push_watches(s: &mut String, n: u64) {
    s.reserve(n as usize * 130);
    for i in 0..n {
        s.push_str(&format!(
            "[[watch]]\nworkspace = \"bench\"\nproject_id = \"1\"\nasset_id = \"a{}\"\n\
             index_id = \"{}\"\nscene_summary_id = \"{}\"\n",
            i + 1,
            1_000_000 + i,
            5_000_000 + i
        ));
    }
}

/// On-CPU time of every live thread of a process, in nanoseconds (`/proc/PID/task/*/schedstat`,
/// the scheduler's own count): precise where `/proc/PID/stat`'s clock ticks (10 ms) are too
/// coarse for a few hundred polls. A thread that exits between two readings takes its time with
/// it; the daemon's threads (runtime workers, the SQLite writer) live as long as it does.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// On-CPU time of the calling thread, in nanoseconds (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Context switches (voluntary and not) of every live thread of a process: each is a thread
/// going to sleep or being put aside, so their count per poll is the poll's hand-offs.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}
