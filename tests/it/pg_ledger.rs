//! The daemon on a PostgreSQL ledger (`[state] backend = "postgres"`), the real binary against
//! the simulator and a real server (`SCENEWATCH_TEST_PG`): killed with SIGKILL mid-run and
//! restarted, nothing is lost and `status` reads the watches from PostgreSQL; a second daemon
//! on the same ledger is refused; a SQLite ledger a daemon built is moved with `scenewatch
//! ledger migrate` and the daemon goes on on PostgreSQL without delivering anything again.
//! Each test works in a schema of its own and drops it.
//!
//! Without `SCENEWATCH_TEST_PG` the tests are compiled ignored (build.rs), naming the variable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use scenewatch::domain::{VersionId, WatchKey};

use crate::support::{Daemon, free_port, json_lines, run, scenewatch, start_sim, text, wait_for};

const ENV: &str = "SCENEWATCH_TEST_PG";
pub(crate) const SECRET: &str = "SK-pgledger-secret-81d3";

/// The server's URL; reaching here without it means the test was asked for by name.
pub(crate) fn server(test: &str) -> String {
    match std::env::var(ENV) {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => panic!(
            "{test} needs {ENV} (a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
        ),
    }
}

/// A schema name unique to this test run.
pub(crate) fn fresh_schema(test: &str) -> String {
    format!("sw_it_{test}_{}", std::process::id())
}

pub(crate) async fn exec(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test server answers");
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// `count` generated assets completing within a few seconds of the start, with `queue` and
/// `run` ranges.
pub(crate) fn scenario(count: u32, queue: &str, run: &str) -> String {
    format!(
        "seed = 7\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[generate]]\ncount = {count}\nworkspace = \"w\"\nproject_id = \"1\"\n\
         asset_id_prefix = \"g\"\nindex_id_start = 1000\nscene_summary_id_start = 5000\n\
         scenes = \"3..12\"\nqueue = \"{queue}\"\nrun = \"{run}\"\n"
    )
}

fn watches(count: u32) -> String {
    (1..=count)
        .map(|n| {
            format!(
                "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"g{n}\"\n\
                 index_id = \"{}\"\ngeneration = \"{}\"\n",
                1000 + n - 1,
                if n % 2 == 0 { "index" } else { "asset" }
            )
        })
        .collect()
}

/// A file sink keeping every version, a JSON-lines result sink (one line per delivery: a
/// repeated delivery shows as a second line) and a JSON-lines event sink; `state` is the
/// `[state]` table's body.
fn config(url: &str, dir: &Path, port: u16, state: &str, count: u32) -> String {
    format!(
        r#"state_dir = "{dir}/state"
shutdown_timeout = "5s"
[api]
endpoint = "{url}"
access_key = "AK"
requests_per_second = 100.0
burst = 20
timeout = "2s"
[poll]
initial_interval = "100ms"
max_interval = "400ms"
recheck_interval = "1s"
max_wait = "10m"
[server]
listen = "127.0.0.1:{port}"
[state]
{state}
[[sink]]
type = "file"
name = "files"
dir = "{dir}/results"
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
        watches = watches(count),
    )
}

fn pg_state(url: &str, schema: &str) -> String {
    format!("backend = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"")
}

/// The version id of every index the simulator has completed.
pub(crate) async fn completed_versions(sim: &str) -> Result<BTreeSet<String>, String> {
    let v: serde_json::Value = reqwest::get(format!("{sim}/__sim/state"))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    for a in v["assets"].as_array().into_iter().flatten() {
        let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
        if s("status") != "SUMMARIZE_COMPLETED" {
            return Err(format!("{} is still {}", s("asset_id"), s("status")));
        }
        let key = WatchKey::new(
            s("workspace"),
            s("project_id"),
            s("asset_id"),
            s("index_id"),
        )
        .unwrap();
        out.insert(VersionId::of(&key, &s("last_analyzed_at")).to_string());
    }
    Ok(out)
}

/// How many times each version was written to the JSON-lines result sink.
fn lines_per_version(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in json_lines(&dir.join("results.jsonl")) {
        if let Some(v) = l["version"].as_str() {
            *out.entry(v.to_string()).or_default() += 1;
        }
    }
    out
}

/// Every `version` of every JSON document under the file sink's directory.
pub(crate) fn file_sink_versions(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.join("results")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && let Some(v) = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|d| d["version"].as_str().map(String::from))
            {
                out.insert(v);
            }
        }
    }
    out
}

pub(crate) async fn status_json(cfg: &Path) -> Result<Vec<serde_json::Value>, String> {
    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(cfg);
    let out = run(cmd).await;
    if out.status.code() != Some(0) {
        return Err(format!("status failed: {}", text(&out)));
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .ok_or_else(|| format!("status printed no JSON array: {}", text(&out)))
}

/// `Ok` once the simulator has completed everything, every completed version is in both result
/// sinks, and the ledger has every watch `watching` with nothing open.
async fn settled(sim: &str, cfg: &Path, dir: &Path, count: usize) -> Result<(), String> {
    let versions = completed_versions(sim).await?;
    let files = file_sink_versions(dir);
    let lines = lines_per_version(dir);
    for v in &versions {
        if !files.contains(v) || !lines.contains_key(v) {
            return Err(format!("version {v} not yet in both sinks"));
        }
    }
    let rows = status_json(cfg).await?;
    if rows.len() != count {
        return Err(format!("{} ledger rows for {count} watches", rows.len()));
    }
    for r in &rows {
        if r["phase"] != "watching" || r["pendingDeliveries"] != 0 || r["parkedDeliveries"] != 0 {
            return Err(format!("not settled: {r}"));
        }
    }
    Ok(())
}

async fn wait_settled(sim: &str, cfg: &Path, dir: &Path, count: usize, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    loop {
        match settled(sim, cfg, dir, count).await {
            Ok(()) => return,
            Err(why) if tokio::time::Instant::now() > until => {
                panic!("not settled within {within:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_daemon_on_postgres_survives_sigkill_and_status_reads_its_watches() {
    let pg = server("a_daemon_on_postgres_survives_sigkill_and_status_reads_its_watches");
    let schema = fresh_schema("sigkill");
    exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    const COUNT: u32 = 12;
    let sim = start_sim(&scenario(COUNT, "300ms..5s", "200ms..3s")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scenewatch.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        config(&sim.url, dir.path(), port, &pg_state(&pg, &schema), COUNT),
    )
    .unwrap();
    let env = [("SCENEWATCH__API__SECRET_KEY", SECRET)];

    let mut d = Daemon::start(&cfg, dir.path(), &env);
    assert!(
        wait_for(Duration::from_secs(30), || file_sink_versions(dir.path())
            .len()
            >= 3)
        .await,
        "no deliveries: {}",
        d.log_text()
    );
    // A second daemon (its own state_dir, the same ledger) is refused while this one runs.
    let other = tempfile::tempdir().unwrap();
    let other_cfg = other.path().join("scenewatch.toml");
    std::fs::write(
        &other_cfg,
        config(
            &sim.url,
            other.path(),
            free_port(),
            &pg_state(&pg, &schema),
            COUNT,
        ),
    )
    .unwrap();
    let mut second = Daemon::start(&other_cfg, other.path(), &env);
    let exited = second.wait_exit(Duration::from_secs(20)).await;
    assert!(
        exited.is_some_and(|s| !s.success()),
        "a second daemon on the ledger ran: {}",
        second.log_text()
    );
    assert!(
        second
            .log_text()
            .contains("another scenewatch daemon is running on this ledger"),
        "{}",
        second.log_text()
    );

    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10)).await.expect("killed");
    let _d = Daemon::start(&cfg, dir.path(), &env);
    wait_settled(
        &sim.url,
        &cfg,
        dir.path(),
        COUNT as usize,
        Duration::from_secs(90),
    )
    .await;

    assert!(
        !dir.path().join("state").join("scenewatch.db").exists(),
        "no SQLite ledger was created"
    );
    let mut cmd = scenewatch();
    cmd.args(["status", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for n in 1..=COUNT {
        let key = format!("w/1/g{n}/{}", 1000 + n - 1);
        assert!(shown.contains(&key), "status lists {key}: {shown}");
    }
    drop(_d);
    exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_migrated_sqlite_ledger_goes_on_in_postgres_delivering_nothing_twice() {
    let pg = server("a_migrated_sqlite_ledger_goes_on_in_postgres_delivering_nothing_twice");
    let schema = fresh_schema("migrate");
    exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    const COUNT: u32 = 10;
    // Spread out: some complete while the daemon runs on SQLite, the rest after the move.
    let sim = start_sim(&scenario(COUNT, "200ms..9s", "200ms..2s")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sqlite_cfg = dir.path().join("sqlite.toml");
    std::fs::write(
        &sqlite_cfg,
        config(&sim.url, dir.path(), port, "backend = \"sqlite\"", COUNT),
    )
    .unwrap();
    let pg_cfg = dir.path().join("postgres.toml");
    std::fs::write(
        &pg_cfg,
        config(&sim.url, dir.path(), port, &pg_state(&pg, &schema), COUNT),
    )
    .unwrap();
    let env = [("SCENEWATCH__API__SECRET_KEY", SECRET)];

    let migrate = |extra: &[&str]| {
        let mut cmd = scenewatch();
        cmd.args(["ledger", "migrate", "--config"])
            .arg(&sqlite_cfg)
            .args(extra);
        cmd
    };
    let to_pg = ["--to-config", pg_cfg.to_str().unwrap()];

    let mut d = Daemon::start(&sqlite_cfg, dir.path(), &env);
    assert!(
        wait_for(Duration::from_secs(30), || file_sink_versions(dir.path())
            .len()
            >= 3)
        .await,
        "no deliveries: {}",
        d.log_text()
    );
    // Refused while the daemon runs: it holds the state directory.
    let out = run(migrate(&to_pg)).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("stop it first"), "{}", text(&out));

    d.signal("TERM");
    d.wait_exit(Duration::from_secs(20)).await.expect("stopped");
    let before = lines_per_version(dir.path());
    let rows_before = status_json(&sqlite_cfg).await.unwrap();

    let out = run(migrate(&to_pg)).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("{COUNT} watches")) && said.contains(&schema),
        "{said}"
    );
    assert!(!said.contains("password"), "{said}");
    // Into a ledger that holds rows: refused, nothing copied twice.
    let out = run(migrate(&to_pg)).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("already holds a ledger"),
        "{}",
        text(&out)
    );

    // The same rows, now read from PostgreSQL.
    let rows_after = status_json(&pg_cfg).await.unwrap();
    assert_eq!(
        rows_after, rows_before,
        "status is the same from either ledger"
    );

    let _d = Daemon::start(&pg_cfg, dir.path(), &env);
    wait_settled(
        &sim.url,
        &pg_cfg,
        dir.path(),
        COUNT as usize,
        Duration::from_secs(90),
    )
    .await;
    let after = lines_per_version(dir.path());
    for (v, n) in &after {
        assert_eq!(*n, 1, "version {v} delivered {n} times to the lines sink");
    }
    for v in before.keys() {
        assert!(after.contains_key(v), "{v} kept");
    }
    assert!(
        after.len() > before.len(),
        "versions completed after the move were delivered from PostgreSQL ({} before, {} after)",
        before.len(),
        after.len()
    );
    drop(_d);
    exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
}

/// A `[state]` for the PostgreSQL ledger with its password in a file under `dir`.
fn state_with_password_file(dir: &Path, url: &str, schema: &str) -> String {
    let pw = dir.join("ledger-password");
    std::fs::write(&pw, "pg-ledger-pw-never-shown\n").unwrap();
    format!(
        "backend = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\npassword_file = \"{}\"",
        pw.display()
    )
}

async fn check_online(cfg: &Path) -> (Option<i32>, String) {
    let mut cmd = scenewatch();
    cmd.args(["check", "--online", "--config"])
        .arg(cfg)
        .env("SCENEWATCH__API__SECRET_KEY", SECRET);
    let out = run(cmd).await;
    (out.status.code(), text(&out))
}

/// `check --online` connects to the PostgreSQL ledger: an unreachable server is a FAIL line
/// naming it, never the password (exit 69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_names_an_unreachable_ledger_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scenewatch.toml");
    let state = state_with_password_file(
        dir.path(),
        "postgres://sw@127.0.0.1:1/ledger?sslmode=disable",
        "scenewatch",
    );
    std::fs::write(
        &cfg,
        config("http://127.0.0.1:1", dir.path(), free_port(), &state, 1),
    )
    .unwrap();
    let (code, all) = check_online(&cfg).await;
    assert_eq!(code, Some(69), "{all}");
    assert!(
        all.contains(
            "FAIL ledger (postgres): cannot connect to the PostgreSQL ledger \
             postgres://sw@127.0.0.1:1/ledger (schema \"scenewatch\")"
        ),
        "{all}"
    );
    assert!(!all.contains("pg-ledger-pw-never-shown"), "{all}");
}

/// `check --online` with the test server: connected, and what the schema holds (nothing is
/// created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn check_online_says_what_the_ledger_schema_holds() {
    let pg = server("check_online_says_what_the_ledger_schema_holds");
    let schema = fresh_schema("check");
    exec(&pg, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scenewatch.toml");
    let state = state_with_password_file(dir.path(), &pg, &schema);
    std::fs::write(
        &cfg,
        config("http://127.0.0.1:1", dir.path(), free_port(), &state, 1),
    )
    .unwrap();
    let (_, all) = check_online(&cfg).await;
    assert!(
        all.contains("ok   ledger (postgres): connected to") && all.contains("holds no ledger yet"),
        "{all}"
    );
    assert!(!all.contains("pg-ledger-pw-never-shown"), "{all}");
    let (_, all) = check_online(&cfg).await;
    assert!(
        all.contains("holds no ledger yet"),
        "check created nothing: {all}"
    );
}
