//! Three replicas of the real binary sharing one PostgreSQL ledger (`[state] replicated =
//! true`, `SCENEWATCH_TEST_PG`) against one simulator: every version reaches every result sink,
//! no watch is polled by two replicas once their shards are settled (the simulator's request
//! log names the replica in each request's User-Agent), the deployment's request rate stays
//! within its one budget; a replica killed with SIGKILL has its watches taken over within the
//! lease time with nothing lost; one stopped with SIGSTOP past its lease has its writes refused
//! by the fencing check when it resumes, and rejoins.
//!
//! Without `SCENEWATCH_TEST_PG` the tests are compiled ignored (build.rs), naming the variable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pg_ledger::{
    SECRET, completed_versions, exec, file_sink_versions, fresh_schema, scenario, server,
    status_json,
};
use crate::support::{Daemon, free_port, json_lines, start_sim};

/// The lease of these tests: short, so takeovers come quickly, yet long enough that a replica
/// starved of CPU for a moment on a loaded two-core machine keeps its leases.
const LEASE_S: u64 = 5;
/// The deployment's budget.
const RATE: f64 = 30.0;
const BURST: u32 = 10;

/// One replica: its own state_dir, log, port and JSON-lines sink file; the file sink's
/// directory and the event sink's file are the deployment's, shared.
struct Replica {
    dir: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
}

fn watches(count: u32) -> String {
    (1..=count)
        .map(|n| {
            format!(
                "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"g{n}\"\n\
                 index_id = \"{}\"\n",
                1000 + n - 1
            )
        })
        .collect()
}

fn config(
    sim: &str,
    shared: &Path,
    dir: &Path,
    port: u16,
    pg: &str,
    schema: &str,
    count: u32,
) -> String {
    format!(
        r#"state_dir = "{dir}/state"
shutdown_timeout = "5s"
[api]
endpoint = "{sim}"
access_key = "AK"
requests_per_second = {RATE:.1}
burst = {BURST}
timeout = "2s"
[poll]
initial_interval = "200ms"
max_interval = "1s"
recheck_interval = "1s"
max_wait = "10m"
[server]
listen = "127.0.0.1:{port}"
[state]
backend = "postgres"
url = "{pg}"
schema = "{schema}"
replicated = true
lease = "{LEASE_S}s"
[[sink]]
type = "file"
name = "files"
dir = "{shared}/results"
keep_versions = true
[[sink]]
type = "jsonl"
name = "lines"
path = "{dir}/results.jsonl"
[[event_sink]]
type = "jsonl"
name = "events"
path = "{dir}/events.jsonl"
{watches}"#,
        dir = dir.display(),
        shared = shared.display(),
        watches = watches(count),
    )
}

/// A running deployment: the simulator, the shared directory and the replicas.
struct Deployment {
    sim: crate::support::Sim,
    shared: tempfile::TempDir,
    replicas: Vec<Replica>,
    pg: String,
    schema: String,
    count: u32,
}

impl Deployment {
    async fn start(test: &str, count: u32, queue: &str, run: &str) -> Deployment {
        let pg = server(test);
        let schema = fresh_schema(test);
        exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
        let sim = start_sim(&scenario(count, queue, run)).await;
        let http = crate::support::http();
        http.post(format!("{}/__sim/requests/log", sim.url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let shared = tempfile::tempdir().unwrap();
        let mut d = Deployment {
            sim,
            shared,
            replicas: Vec::new(),
            pg,
            schema,
            count,
        };
        for n in 0..3 {
            let dir = d.shared.path().join(format!("replica-{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            std::fs::write(
                dir.join("scenewatch.toml"),
                config(
                    &d.sim.url,
                    d.shared.path(),
                    &dir,
                    port,
                    &d.pg,
                    &d.schema,
                    count,
                ),
            )
            .unwrap();
            d.replicas.push(Replica {
                dir,
                port,
                daemon: None,
            });
            d.launch(n);
        }
        d
    }

    fn launch(&mut self, n: usize) {
        let r = &mut self.replicas[n];
        r.daemon = Some(Daemon::start(
            &r.dir.join("scenewatch.toml"),
            &r.dir,
            &[("SCENEWATCH__API__SECRET_KEY", SECRET)],
        ));
    }

    fn daemon(&self, n: usize) -> &Daemon {
        self.replicas[n].daemon.as_ref().unwrap()
    }

    fn logs(&self) -> String {
        (0..self.replicas.len())
            .map(|n| format!("--- replica {n}:\n{}", self.daemon(n).log_text()))
            .collect()
    }

    /// `/readyz`'s replica block of replica `n` (`None` while it does not answer).
    async fn standing(&self, n: usize) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/readyz", self.replicas[n].port);
        let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        Some(v["replica"].clone()).filter(|r| r.is_object())
    }

    /// Waits until the replicas in `live` hold all 256 shards between them, each its fair
    /// share give or take one, and see each other; returns how long that took.
    async fn wait_balanced(&self, live: &[usize], within: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        let share = 256 / live.len() as u64;
        loop {
            let mut total = 0;
            let mut ok = true;
            for &n in live {
                match self.standing(n).await {
                    Some(r) => {
                        let shards = r["shards"].as_u64().unwrap_or(0);
                        total += shards;
                        ok &= r["replicas"].as_u64() == Some(live.len() as u64)
                            && shards >= share.saturating_sub(1)
                            && shards <= share + 1;
                    }
                    None => ok = false,
                }
            }
            if ok && total == 256 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "replicas {live:?} not balanced within {within:?}: {:?}\n{}",
                futures_join(self, live).await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every replica in `live` has renewed its leases after `since` (its engine
    /// has then heard of every change before that renewal).
    async fn wait_renewed_since(
        &self,
        live: &[usize],
        since: tokio::time::Instant,
        within: Duration,
    ) {
        loop {
            let elapsed = since.elapsed().as_millis() as u64;
            let mut all = true;
            for &n in live {
                let ago = self
                    .standing(n)
                    .await
                    .and_then(|r| r["lastRenewalAgoMs"].as_u64());
                // Renewed after `since`: its last renewal is more recent than `since` is.
                all &= ago.is_some_and(|a| a + 50 < elapsed);
            }
            if all {
                return;
            }
            assert!(
                since.elapsed() < within,
                "replicas {live:?} did not renew within {within:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The simulator's request log: (ms since its start, path, User-Agent).
    async fn request_log(&self) -> Vec<(u64, String, String)> {
        let v: serde_json::Value = reqwest::get(format!("{}/__sim/requests/log", self.sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["t_ms"].as_u64().unwrap(),
                    r["path"].as_str().unwrap().to_string(),
                    r["agent"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// `Ok` once the simulator completed everything, every completed version is in the file
    /// sink and in one replica's JSON-lines sink, and the ledger has every watch `watching`
    /// with nothing open.
    async fn settled(&self) -> Result<(), String> {
        let versions = completed_versions(&self.sim.url).await?;
        let files = file_sink_versions(self.shared.path());
        let mut lines = BTreeSet::new();
        for r in &self.replicas {
            for l in json_lines(&r.dir.join("results.jsonl")) {
                if let Some(v) = l["version"].as_str() {
                    lines.insert(v.to_string());
                }
            }
        }
        for v in &versions {
            if !files.contains(v) || !lines.contains(v) {
                return Err(format!("version {v} not yet in both sinks"));
            }
        }
        let rows = status_json(&self.replicas[0].dir.join("scenewatch.toml")).await?;
        if rows.len() != self.count as usize {
            return Err(format!(
                "{} ledger rows for {} watches",
                rows.len(),
                self.count
            ));
        }
        for r in &rows {
            if r["phase"] != "watching" || r["pendingDeliveries"] != 0 || r["parkedDeliveries"] != 0
            {
                return Err(format!("not settled: {r}"));
            }
        }
        Ok(())
    }

    async fn wait_settled(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            match self.settled().await {
                Ok(()) => return,
                Err(why) if tokio::time::Instant::now() > until => {
                    panic!("not settled within {within:?}: {why}\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    async fn finish(mut self) {
        for r in &mut self.replicas {
            if let Some(d) = &r.daemon {
                d.signal("TERM");
            }
            if let Some(mut d) = r.daemon.take() {
                d.wait_exit(Duration::from_secs(20)).await;
            }
        }
        exec(
            &self.pg,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        )
        .await;
    }
}

async fn futures_join(d: &Deployment, live: &[usize]) -> Vec<Option<serde_json::Value>> {
    let mut out = Vec::new();
    for &n in live {
        out.push(d.standing(n).await);
    }
    out
}

/// The asset of a request path (`…/g12/…`), the watch it is for.
fn asset_of(path: &str) -> Option<&str> {
    path.split('/')
        .find(|s| s.len() > 1 && s.starts_with('g') && s[1..].bytes().all(|b| b.is_ascii_digit()))
}

/// The replica id in a User-Agent (`scenewatch/x.y.z replica/ID`).
fn replica_of(agent: &str) -> Option<&str> {
    agent.split(' ').find_map(|p| p.strip_prefix("replica/"))
}

/// A counter's value in `/metrics` of replica `n`.
async fn metric(d: &Deployment, n: usize, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", d.replicas[n].port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn three_replicas_share_the_watches_the_sinks_and_one_budget() {
    const COUNT: u32 = 150;
    let d = Deployment::start("replicas_share", COUNT, "1s..20s", "500ms..4s").await;
    d.wait_balanced(&[0, 1, 2], Duration::from_secs(60)).await;
    // Shards settled: from the next renewal of each replica on, no shard moves.
    let log_from = d.request_log().await.len();
    d.wait_renewed_since(
        &[0, 1, 2],
        tokio::time::Instant::now(),
        Duration::from_secs(3 * LEASE_S),
    )
    .await;
    d.wait_balanced(&[0, 1, 2], Duration::from_secs(5)).await;
    let stable_from = d.request_log().await.len();
    d.wait_settled(Duration::from_secs(120)).await;
    d.wait_balanced(&[0, 1, 2], Duration::from_secs(5)).await;

    let log = d.request_log().await;
    let stable = &log[stable_from..];
    // Every request names its replica; each watch is polled by one replica only.
    let mut pollers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut per_replica: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, path, agent) in stable {
        let r = replica_of(agent).unwrap_or_else(|| panic!("no replica in {agent:?}"));
        *per_replica.entry(r).or_default() += 1;
        if let Some(a) = asset_of(path) {
            pollers.entry(a).or_default().insert(r);
        }
    }
    let shared: Vec<_> = pollers.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "watches polled by two replicas with the shards settled: {shared:?}"
    );
    assert_eq!(per_replica.len(), 3, "each replica polls: {per_replica:?}");
    assert!(
        pollers.len() as u32 >= COUNT / 2,
        "{} watches polled",
        pollers.len()
    );
    // The deployment's rate stays within its one budget, over every 2-second window (a
    // budget per replica would allow three times as much; the watches ask for more).
    let times: Vec<u64> = log[log_from..].iter().map(|(t, _, _)| *t).collect();
    let window = 2_000;
    let limit = (RATE * 2.0) as usize + BURST as usize + 3;
    let mut busiest = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while times[start] + window <= *t {
            start += 1;
        }
        busiest = busiest.max(end + 1 - start);
    }
    assert!(
        busiest <= limit,
        "{busiest} requests in 2 s, over the deployment's budget ({limit} with the burst)"
    );
    assert!(
        busiest as f64 >= RATE,
        "the budget was never used: at most {busiest} requests in 2 s"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_killed_replica_is_taken_over_and_a_stopped_one_is_fenced_and_rejoins() {
    const COUNT: u32 = 90;
    let mut d = Deployment::start("replicas_takeover", COUNT, "1s..30s", "500ms..5s").await;
    d.wait_balanced(&[0, 1, 2], Duration::from_secs(60)).await;

    // SIGKILL: its leases are not given up; the others take them when they expire.
    let killed = d.daemon(2).pid();
    d.daemon(2).signal("KILL");
    let took = d
        .wait_balanced(&[0, 1], Duration::from_secs(4 * LEASE_S + 10))
        .await;
    eprintln!("takeover of a SIGKILLed replica's shards: {took:?} (lease {LEASE_S}s)");
    let taken: f64 = metric(&d, 0, "scenewatch_lease_takeovers_total").await
        + metric(&d, 1, "scenewatch_lease_takeovers_total").await;
    assert!(taken >= 80.0, "{taken} shards taken over\n{}", d.logs());
    assert!(
        d.logs().contains(&format!("-{killed}")),
        "the logs name the replica ids"
    );

    // SIGSTOP replica 1 past its lease: replica 0 takes everything; on SIGCONT replica 1's
    // writes are refused, it finds its shards lost, and rejoins.
    d.daemon(1).signal("STOP");
    d.wait_balanced(&[0], Duration::from_secs(4 * LEASE_S + 10))
        .await;
    d.daemon(1).signal("CONT");
    d.launch(2);
    d.wait_balanced(&[0, 1, 2], Duration::from_secs(60)).await;
    let lost = metric(&d, 1, "scenewatch_shards_lost_total").await;
    assert!(lost >= 80.0, "replica 1 lost {lost} shards\n{}", d.logs());
    d.wait_settled(Duration::from_secs(150)).await;
    let log1 = d.daemon(1).log_text();
    assert!(
        log1.contains("no longer owns shard") || log1.contains("Shards lost"),
        "the resumed replica says it lost its shards: {log1}"
    );
    // Nothing lost: every version is in the sinks (wait_settled), and the ledger never
    // took a write of the paused replica after the takeover (fencing): each version's file
    // is there once, whoever wrote it.
    let files = file_sink_versions(d.shared.path());
    assert_eq!(
        files.len(),
        completed_versions(&d.sim.url).await.unwrap().len()
    );
    for r in 0..3 {
        assert!(
            !d.daemon(r).log_text().contains(SECRET),
            "the secret key stays out of the logs"
        );
    }
    d.finish().await;
}
