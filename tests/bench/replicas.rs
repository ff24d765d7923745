//! Benchmark of three replicas of `scenewatch run` sharing one PostgreSQL ledger (`[state]
//! backend = "postgres"`, `replicated = true`) at 100,000 watches (not a test: it prints
//! figures, asserts nothing).
//!
//! It starts the simulator as its own process with N generated indexes that stay queued (every
//! poll is a status poll, as in `daemon.rs`), creates a database of its own on the server of
//! `SCENEWATCH_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`; a fresh schema in
//! that URL's database when it may not create one), writes one
//! configuration per replica (the same N `[[watch]]` tables, its own `state_dir` and
//! `[server] listen` port), starts replica 0 and, once it is ready, replicas 1 and 2, waits
//! until the three hold all 256 shards in fair shares (their `/readyz` `replica` block) and
//! every watch has been polled once, and measures from outside:
//!
//! - polls per second over a fixed window: the simulator's request counter (`/__sim/stats`) for
//!   the deployment and each replica's `scenewatch_polls_total` (`/metrics`);
//! - PostgreSQL transactions per poll: the rise of `xact_commit` in `pg_stat_database` for the
//!   database over the window, divided by the polls the replicas counted (the counter is the
//!   whole database's: other clients of that database count too, and the benchmark says how
//!   many were connected);
//! - CPU per poll of the replicas, of the simulator and of the replicas' PostgreSQL backends
//!   (`/proc/PID/stat`, when the server runs on this machine);
//! - takeover: SIGKILL replica 2, then the time until replicas 0 and 1 hold all 256 shards
//!   between them, and, from the simulator's request log (`POST /__sim/requests/log`, each
//!   request's `User-Agent` names its replica), the time from the killed replica's last
//!   request until its watches are polled again by the others.
//!
//! The deployment's request budget is set far above what two cores can poll (50,000 requests
//! per second by default, each replica spending its share), so the figures are those of
//! scenewatch and PostgreSQL, not of the budget. The database (or schema) is dropped at the end.
//!
//! Run: `cargo bench --features postgres --bench replicas` (needs the `postgres` feature). Without a
//! reachable server it prints that it was skipped and why. Knobs (environment):
//! `SCENEWATCH_TEST_PG`, `SCENEWATCH_BENCH_WATCHES` (default 100000), `SCENEWATCH_BENCH_SECS`
//! (the window, default 60), `SCENEWATCH_BENCH_RPS` (the deployment's budget, default 50000),
//! `SCENEWATCH_BENCH_INTERVAL` (default `5s`), `SCENEWATCH_BENCH_CONCURRENCY` (each replica's
//! `poll.concurrency`, default 128), `SCENEWATCH_BENCH_LEASE` (default `15s`).
//! Results and their reading: docs/benchmarks.md, "Replicas on PostgreSQL".

#![allow(
    clippy::disallowed_methods,
    reason = "these drive the real binary in real time; clippy.toml's clock rule is for the crate"
)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const REPLICAS: usize = 3;
const SHARDS: u64 = 256;

/// The URL as it may be printed: without its password.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (a, h),
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A client of the benchmark's own on a runtime of its own (the benchmark is blocking code).
struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    fn connect(url: &str) -> Result<Pg, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime: {e}"))?;
        let client = rt.block_on(async {
            let (client, conn) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_postgres::connect(url, tokio_postgres::NoTls),
            )
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok::<_, String>(client)
        })?;
        Ok(Pg { rt, client })
    }

    fn exec(&self, sql: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| e.to_string())
    }

    /// Transactions committed so far in database `db` (this connection's when `None`):
    /// `pg_stat_database.xact_commit`.
    fn commits(&self, db: Option<&str>) -> Option<i64> {
        let row = self
            .rt
            .block_on(self.client.query_one(
                "SELECT xact_commit FROM pg_stat_database
                 WHERE datname = coalesce($1, current_database())",
                &[&db],
            ))
            .ok()?;
        row.try_get(0).ok()
    }

    /// (pids of the backends named `app`, client backends of other applications) in database
    /// `db` (this connection's when `None`).
    fn backends(&self, db: Option<&str>, app: &str) -> (Vec<u32>, u64) {
        let rows = self
            .rt
            .block_on(self.client.query(
                "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity
                 WHERE datname = coalesce($1, current_database())
                   AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[&db],
            ))
            .unwrap_or_default();
        let mut ours = Vec::new();
        let mut others = 0;
        for r in rows {
            let pid: i32 = r.get(0);
            let name: String = r.get(1);
            if name == app {
                ours.push(pid as u32);
            } else {
                others += 1;
            }
        }
        (ours, others)
    }
}

/// The URL with another database in its path.
fn with_database(url: &str, db: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let host = before_query
        .split_once('/')
        .map_or(before_query, |(h, _)| h);
    Some(match query {
        Some(q) => format!("{scheme}://{host}/{db}?{q}"),
        None => format!("{scheme}://{host}/{db}"),
    })
}

/// Where the replicas' ledger lives: a database of the benchmark's own on the server when it
/// may create one (so `xact_commit` counts the replicas' transactions only), else a schema in
/// the given database. Dropped when the guard goes (a panicking benchmark leaves nothing).
struct Place<'a> {
    pg: &'a Pg,
    /// The database created, if one was.
    database: Option<String>,
    /// The replicas' URL (without their application name).
    url: String,
    schema: String,
}

impl<'a> Place<'a> {
    fn make(pg: &'a Pg, url: &str) -> Result<Place<'a>, String> {
        let tag = format!("sw_bench_replicas_{}", std::process::id());
        let schema = tag.clone();
        if let Some(own) = with_database(url, &tag)
            && pg.exec(&format!("DROP DATABASE IF EXISTS {tag}")).is_ok()
            && pg.exec(&format!("CREATE DATABASE {tag}")).is_ok()
        {
            return Ok(Place {
                pg,
                database: Some(tag),
                url: own,
                schema,
            });
        }
        pg.exec(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(Place {
            pg,
            database: None,
            url: url.to_string(),
            schema,
        })
    }

    /// The database the replicas use, as `pg_stat_database` names it.
    fn datname(&self) -> Option<&str> {
        self.database.as_deref()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let sql = match &self.database {
            Some(db) => format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            None => format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        };
        if let Err(e) = self.pg.exec(&sql) {
            eprintln!("could not clean up ({sql}): {e}");
        }
    }
}

struct Knobs {
    n: u64,
    window: Duration,
    rps: u64,
    interval: String,
    concurrency: u64,
    lease: String,
}

#[allow(clippy::too_many_arguments, reason = "one configuration's every part")]
fn config(
    dir: &Path,
    shared: &Path,
    sim_port: u16,
    port: u16,
    url: &str,
    schema: &str,
    k: &Knobs,
) -> String {
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
[state]
backend = "postgres"
url = "{url}"
schema = "{schema}"
replicated = true
lease = "{lease}"
[[sink]]
type = "file"
dir = "{shared}/results"
"#,
        dir = dir.display(),
        shared = shared.display(),
        rps = k.rps,
        interval = k.interval,
        concurrency = k.concurrency,
        lease = k.lease,
    );
    push_watches(&mut s, k.n);
    s
}

/// `(shards, replicas)` from a replica's `/readyz` `replica` block.
fn standing(port: u16) -> Option<(u64, u64)> {
    let (_, body) = http_get(port, "/readyz")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = &v["replica"];
    Some((r["shards"].as_u64()?, r["replicas"].as_u64()?))
}

/// Whether the replicas on `ports` hold all shards, each its fair share give or take one,
/// and see each other.
fn balanced(ports: &[u16]) -> bool {
    let share = SHARDS / ports.len() as u64;
    let mut total = 0;
    for &p in ports {
        let Some((shards, replicas)) = standing(p) else {
            return false;
        };
        if replicas != ports.len() as u64 || shards + 1 < share || shards > share + 1 {
            return false;
        }
        total += shards;
    }
    total == SHARDS
}

/// The shards the replicas on `ports` hold between them.
fn held(ports: &[u16]) -> u64 {
    ports.iter().filter_map(|&p| standing(p)).map(|s| s.0).sum()
}

/// The simulator's request log: (ms since its start, asset of the path, User-Agent).
fn request_log(sim_port: u16) -> Option<Vec<(u64, String, String)>> {
    let (status, body) = http_get(sim_port, "/__sim/requests/log")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["requests"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let path = r["path"].as_str()?;
                let asset = path.split("/assets/").nth(1)?.split('/').next()?;
                Some((
                    r["t_ms"].as_u64()?,
                    asset.to_string(),
                    r["agent"].as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// What the request log says about the killed replica's watches.
#[derive(Default)]
struct Repolls {
    /// Its watches (those it polled while the log ran).
    watches: usize,
    /// For each of them polled again by another replica: ms from the killed replica's last
    /// request to that poll, sorted.
    since_kill: Vec<u64>,
    /// ... and how late that poll was: ms past the watch's due time (its last poll by the
    /// killed replica plus the interval), sorted.
    late: Vec<u64>,
}

fn repolls(log: &[(u64, String, String)], killed: &str, interval_ms: u64) -> Repolls {
    let is_killed = |agent: &str| agent.ends_with(killed);
    let Some(last) = log
        .iter()
        .filter(|(_, _, a)| is_killed(a))
        .map(|(t, _, _)| *t)
        .max()
    else {
        return Repolls::default();
    };
    // Watch -> (its last poll by the killed replica, the first by another after the kill).
    let mut theirs: HashMap<&str, (u64, Option<u64>)> = HashMap::new();
    for (t, w, a) in log {
        if is_killed(a) {
            theirs.insert(w.as_str(), (*t, None));
            continue;
        }
        if *t > last
            && let Some(slot) = theirs.get_mut(w.as_str())
            && slot.1.is_none()
        {
            slot.1 = Some(*t);
        }
    }
    let mut r = Repolls {
        watches: theirs.len(),
        ..Repolls::default()
    };
    for (polled, again) in theirs.values() {
        if let Some(again) = again {
            r.since_kill.push(again - last);
            r.late.push(again.saturating_sub(polled + interval_ms));
        }
    }
    r.since_kill.sort_unstable();
    r.late.sort_unstable();
    r
}

fn pct(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn main() {
    let url = std::env::var("SCENEWATCH_TEST_PG")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG.to_string());
    let url = url.trim().to_string();
    let k = Knobs {
        n: env_num("SCENEWATCH_BENCH_WATCHES", 100_000),
        window: Duration::from_secs(env_num("SCENEWATCH_BENCH_SECS", 60)),
        rps: env_num("SCENEWATCH_BENCH_RPS", 50_000),
        interval: env_or("SCENEWATCH_BENCH_INTERVAL", "5s"),
        concurrency: env_num("SCENEWATCH_BENCH_CONCURRENCY", 128),
        lease: env_or("SCENEWATCH_BENCH_LEASE", "15s"),
    };
    println!("scenewatch replicas benchmark");
    let interval_ms = humantime::parse_duration(&k.interval)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_else(|e| panic!("SCENEWATCH_BENCH_INTERVAL={:?}: {e}", k.interval));
    let pg = match Pg::connect(&url) {
        Ok(pg) => pg,
        Err(e) => {
            println!(
                "skipped: PostgreSQL at {} is not reachable ({e}); set SCENEWATCH_TEST_PG to a server's URL",
                shown(&url)
            );
            return;
        }
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_scenewatch"));
    let tck = clock_ticks_per_sec();
    println!("binary:  {} (CARGO_BIN_EXE_scenewatch)", bin.display());
    println!("machine: {}", machine());
    let set: Vec<String> = [
        "SCENEWATCH_TEST_PG",
        "SCENEWATCH_BENCH_WATCHES",
        "SCENEWATCH_BENCH_SECS",
        "SCENEWATCH_BENCH_RPS",
        "SCENEWATCH_BENCH_INTERVAL",
        "SCENEWATCH_BENCH_CONCURRENCY",
        "SCENEWATCH_BENCH_LEASE",
    ]
    .iter()
    .filter_map(|v| {
        std::env::var(v).ok().map(|x| {
            let x = if *v == "SCENEWATCH_TEST_PG" {
                shown(&x)
            } else {
                x
            };
            format!("{v}={x} ")
        })
    })
    .collect();
    println!(
        "command: {}cargo bench --features postgres --bench replicas",
        set.concat()
    );
    println!(
        "setup:   {REPLICAS} replicas, one PostgreSQL ledger on {}, lease {}; \
         {} watches, every index queued (status polls only); deployment budget {} rps (each \
         replica its share), burst 1000, poll interval {} (initial = max), concurrency {} per \
         replica; simulator in its own process",
        shown(&url),
        k.lease,
        k.n,
        k.rps,
        k.interval,
        k.concurrency
    );

    let place = match Place::make(&pg, &url) {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: cannot use PostgreSQL at {} ({e})", shown(&url));
            return;
        }
    };
    match &place.database {
        Some(db) => println!(
            "ledger:  database {db} created for the benchmark (schema {}), dropped at the end",
            place.schema
        ),
        None => println!(
            "ledger:  schema {} in the given database (no right to create a database: \
             xact_commit counts every client of that database)",
            place.schema
        ),
    }
    let app = format!("scenewatch-bench-{}", std::process::id());
    let url = place.url.clone();
    let sep = if url.contains('?') { '&' } else { '?' };
    let replica_url = format!("{url}{sep}application_name={app}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let sim_port = free_port();
    let sim = match start_simulator(&bin, d, sim_port, &scenario(k.n), Duration::from_secs(120)) {
        Ok(sim) => sim,
        Err(e) => {
            println!("{e}");
            return;
        }
    };

    let mut ports = Vec::new();
    let mut cfgs = Vec::new();
    for r in 0..REPLICAS {
        let rd = d.join(format!("replica-{r}"));
        std::fs::create_dir_all(&rd).expect("a replica directory");
        let port = free_port();
        let cfg = rd.join("scenewatch.toml");
        std::fs::write(
            &cfg,
            config(&rd, d, sim_port, port, &replica_url, &place.schema, &k),
        )
        .expect("write a configuration");
        ports.push(port);
        cfgs.push(cfg.to_str().expect("a UTF-8 temporary path").to_string());
    }
    let env = [("SCENEWATCH__API__SECRET_KEY", SECRET)];
    let logs: Vec<PathBuf> = (0..REPLICAS)
        .map(|r| d.join(format!("replica-{r}/daemon.log")))
        .collect();
    let launch = |r: usize| {
        spawn(
            &bin,
            &["run", "--config", cfgs[r].as_str()],
            &logs[r],
            &env,
            "replica",
        )
    };

    // Replica 0 creates the schema and records the watches; then the other two join.
    let before = sim_total(sim_port).unwrap_or(0);
    let started = Instant::now();
    let mut replicas = vec![launch(0)];
    let first_ready = wait_until(Duration::from_secs(600), || {
        ready(ports[0]) || replicas[0].exited().is_some()
    });
    if let Some(s) = replicas[0].exited() {
        println!(
            "replica 0 exited ({s}) before it was ready; log tail:\n{}",
            tail(&logs[0])
        );
        return;
    }
    let joining = Instant::now();
    replicas.push(launch(1));
    replicas.push(launch(2));
    let others_ready = wait_until(Duration::from_secs(600), || {
        (1..REPLICAS).all(|r| ready(ports[r]) || replicas[r].exited().is_some())
    });
    for (r, p) in replicas.iter_mut().enumerate() {
        if let Some(s) = p.exited() {
            println!("replica {r} exited ({s}); log tail:\n{}", tail(&logs[r]));
            return;
        }
    }
    let balanced_after = wait_until(Duration::from_secs(300), || balanced(&ports));
    let balanced_s = balanced_after.map(|_| joining.elapsed().as_secs_f64());
    let first_round = wait_until(Duration::from_secs(300), || {
        sim_total(sim_port).unwrap_or(0) >= before + k.n
    });
    let first_round_s = first_round.map(|_| started.elapsed().as_secs_f64());
    println!(
        "\nstart: replica 0 ready after {} s (schema, {} watches recorded); replicas 1 and 2 ready \
         {} s after they were started, the three balanced over {SHARDS} shards {} s after; \
         {} polls (one per watch) {} s after replica 0 was started",
        opt(secs(first_ready), 2),
        k.n,
        opt(secs(others_ready), 2),
        opt(balanced_s, 1),
        k.n,
        opt(first_round_s, 1),
    );
    if balanced_after.is_none() {
        println!(
            "   note: not balanced within 300 s: {:?}; measuring anyway",
            ports.iter().map(|&p| standing(p)).collect::<Vec<_>>()
        );
    }

    // The window.
    let (ours, others) = pg.backends(place.datname(), &app);
    let read = |replicas: &[Proc]| {
        (
            sim_total(sim_port).unwrap_or(0),
            ports
                .iter()
                .map(|&p| daemon_polls(p).unwrap_or(f64::NAN))
                .collect::<Vec<f64>>(),
            replicas
                .iter()
                .map(|p| cpu_ticks(p.pid()))
                .collect::<Vec<u64>>(),
            cpu_ticks(sim.pid()),
            ours.iter().map(|&p| cpu_ticks(p)).sum::<u64>(),
            pg.commits(place.datname()),
            Instant::now(),
        )
    };
    let (s0, dp0, c0, sc0, pc0, x0, t0) = read(&replicas);
    std::thread::sleep(k.window);
    let (s1, dp1, c1, sc1, pc1, x1, t1) = read(&replicas);
    let (_, others_after) = pg.backends(place.datname(), &app);
    let dt = (t1 - t0).as_secs_f64();
    let sim_polls = s1.saturating_sub(s0) as f64;
    let per: Vec<f64> = dp0.iter().zip(&dp1).map(|(a, b)| b - a).collect();
    let replica_polls: f64 = per.iter().sum();
    let commits = x0.zip(x1).map(|(a, b)| (b - a) as f64);
    let cpu: Vec<f64> = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| b.saturating_sub(*a) as f64 / tck)
        .collect();
    let cpu_all: f64 = cpu.iter().sum();
    let pg_cpu = pc1.saturating_sub(pc0) as f64 / tck;
    println!(
        "\n== window {dt:.0} s, {} watches over {REPLICAS} replicas",
        k.n
    );
    println!(
        "   deployment: {:.0} polls/s (simulator), {:.0} polls/s (the replicas' scenewatch_polls_total)",
        sim_polls / dt,
        replica_polls / dt
    );
    for (r, polls) in per.iter().enumerate() {
        println!(
            "   replica {r}: {:.0} polls/s, {} shards, CPU {} ms/poll ({:.0}% of a core), RSS {:.1} MiB (peak {:.1})",
            polls / dt,
            opt(standing(ports[r]).map(|s| s.0 as f64), 0),
            opt(ratio(cpu[r] * 1000.0, *polls), 3),
            cpu[r] / dt * 100.0,
            mib(status_kb(replicas[r].pid(), "VmRSS")),
            mib(status_kb(replicas[r].pid(), "VmHWM")),
        );
    }
    println!(
        "   PostgreSQL: {} transactions/poll ({} commits/s in the database; {} backends of the \
         replicas, {} ms of their CPU per poll, {:.0}% of a core; other client backends in the \
         database: {others} at the start, {others_after} at the end)",
        opt(commits.and_then(|c| ratio(c, replica_polls)), 3),
        opt(commits.map(|c| c / dt), 0),
        ours.len(),
        opt(
            (!ours.is_empty())
                .then_some(())
                .and_then(|_| ratio(pg_cpu * 1000.0, replica_polls)),
            3
        ),
        pg_cpu / dt * 100.0,
    );
    println!(
        "   CPU per poll: replicas {} ms, simulator {} ms per request ({:.0}% of a core)",
        opt(ratio(cpu_all * 1000.0, replica_polls), 3),
        opt(
            ratio(sc1.saturating_sub(sc0) as f64 / tck * 1000.0, sim_polls),
            3
        ),
        sc1.saturating_sub(sc0) as f64 / tck / dt * 100.0,
    );

    // Takeover: the request log on, SIGKILL replica 2, the others take its shards.
    let _ = http_post(sim_port, "/__sim/requests/log", "");
    let logged_from = sim_total(sim_port).unwrap_or(0);
    let _ = wait_until(Duration::from_secs(60), || {
        sim_total(sim_port).unwrap_or(0) >= logged_from + 15_000
    });
    let victim = REPLICAS - 1;
    let killed = format!("-{}", replicas[victim].pid());
    replicas[victim].signal("KILL");
    let kill_at = Instant::now();
    let _ = replicas[victim].wait_exit(Duration::from_secs(10));
    let live = &ports[..victim];
    let took = wait_until(Duration::from_secs(180), || held(live) == SHARDS);
    let rebalanced = took.and_then(|_| {
        wait_until(Duration::from_secs(60), || balanced(live)).map(|_| kill_at.elapsed())
    });
    // Its watches polled again: read the log until each has been, or 120 s after the kill, or
    // the log nears its 200,000 entries.
    let mut last = None;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let Some(log) = request_log(sim_port) else {
            break;
        };
        let r = repolls(&log, &killed, interval_ms);
        let full = log.len() >= 190_000;
        let done = r.watches > 0 && r.since_kill.len() == r.watches;
        last = Some((r, log.len()));
        if done || full || kill_at.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    println!(
        "\n== takeover (SIGKILL replica {victim}, lease {})",
        k.lease
    );
    println!(
        "   replicas 0 and 1 hold all {SHARDS} shards {} s after the kill (balanced 128/128 after {} s)",
        opt(secs(took), 2),
        opt(secs(rebalanced), 2),
    );
    match &last {
        Some((r, len)) if r.watches > 0 => {
            println!(
                "   its {} watches seen in the request log ({len} requests), polled again by the \
                 others ({} of them): after its last request, the first after {} s, half after \
                 {} s, 99% after {} s, the last after {} s",
                r.watches,
                r.since_kill.len(),
                opt(pct(&r.since_kill, 0.0), 2),
                opt(pct(&r.since_kill, 0.5), 2),
                opt(pct(&r.since_kill, 0.99), 2),
                opt(pct(&r.since_kill, 1.0), 2),
            );
            println!(
                "   lateness past the due time (last poll + {}): median {} s, 99% {} s; for \
                 comparison, one round over all watches at the window's rate takes {} s, so a \
                 saturated deployment polls every watch about {} s late anyway",
                k.interval,
                opt(pct(&r.late, 0.5), 2),
                opt(pct(&r.late, 0.99), 2),
                opt(ratio(k.n as f64, sim_polls / dt), 1),
                opt(
                    ratio(k.n as f64, sim_polls / dt).map(|s| s - interval_ms as f64 / 1000.0),
                    1
                ),
            );
        }
        _ => println!("   the request log showed none of its watches"),
    }
    let mut per_agent: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(log) = request_log(sim_port) {
        for (_, _, a) in &log {
            *per_agent.entry(a.clone()).or_default() += 1;
        }
    }
    println!("   requests in the log per User-Agent: {per_agent:?}");

    for p in &replicas[..victim] {
        p.signal("TERM");
    }
    for p in &mut replicas[..victim] {
        let _ = p.wait_exit(Duration::from_secs(60));
    }
    sim.signal("TERM");
    drop(replicas);
    drop(place);
    println!(
        "\nledger dropped; done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
