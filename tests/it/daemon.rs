//! `scenewatch run` end to end: the real daemon against the simulator on loopback. Delivery to
//! every sink, events exactly once, throttling, a sink that is down, partial re-runs, reloads,
//! graceful shutdown and a refused state database.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    Daemon, SimControl, free_port, json_lines, run, scenewatch, start_sim, text, wait_for, watch,
};

const SECRET: &str = "SK-daemon-secret-1d7e";

fn asset(asset: &str, index: &str, sid: Option<&str>, extra: &str) -> String {
    let sid = sid
        .map(|s| format!("scene_summary_id = \"{s}\"\n"))
        .unwrap_or_default();
    // `extra` may set its own queue time.
    let queue = if extra.contains("queue =") {
        ""
    } else {
        "queue = \"200ms\"\n"
    };
    format!(
        "[[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{asset}\"\nindex_id = \"{index}\"\n{sid}scenes = 3\n{queue}run = \"300ms\"\n{extra}\n"
    )
}

fn scenario(assets: &str, faults: &str) -> String {
    format!(
        "seed = 11\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n{assets}\n{faults}\n"
    )
}

/// A daemon configuration: file + jsonl result sinks, a jsonl event sink, fast intervals.
fn config(url: &str, dir: &Path, port: u16, results_jsonl: &Path, extra: &str) -> String {
    format!(
        r#"state_dir = "{dir}/state"
shutdown_timeout = "5s"
[api]
endpoint = "{url}"
access_key = "AK"
requests_per_second = 50.0
timeout = "2s"
[poll]
initial_interval = "100ms"
max_interval = "400ms"
recheck_interval = "1s"
max_wait = "60s"
[server]
listen = "127.0.0.1:{port}"
[[sink]]
type = "file"
dir = "{dir}/results"
keep_versions = true
[[sink]]
type = "jsonl"
path = "{results}"
[[event_sink]]
type = "jsonl"
path = "{dir}/events.jsonl"
{extra}"#,
        dir = dir.display(),
        results = results_jsonl.display(),
    )
}

fn events_of(dir: &Path) -> Vec<serde_json::Value> {
    json_lines(&dir.join("events.jsonl"))
}

fn count(events: &[serde_json::Value], suffix: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.ends_with(suffix)))
        .count()
}

/// Writes the daemon configuration (results to files and to `dir/r.jsonl`) and starts it.
fn start_daemon(sim: &str, dir: &Path, watches: &str) -> (std::path::PathBuf, Daemon) {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        config(sim, dir, free_port(), &dir.join("r.jsonl"), watches),
    )
    .unwrap();
    let d = Daemon::start(&cfg, dir, &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    (cfg, d)
}

/// Stops the daemon with SIGTERM and checks it leaves in time with exit 0.
async fn stop(mut d: Daemon) -> String {
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "daemon did not stop cleanly:\n{log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_delivers_to_every_sink_and_emits_each_event_once() {
    let assets = [
        asset("10", "20", Some("30"), ""),
        asset("11", "21", None, ""),
        asset("12", "22", Some("32"), "rerun_scene_ids = [2]"),
        asset("13", "23", None, "outcome = \"failed\""),
    ]
    .concat();
    let sim = start_sim(&scenario(&assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let watches = [
        watch("10", "20", Some("30"), "index"),
        watch("11", "21", None, "index"),
        watch("12", "22", Some("32"), "index"),
        watch("13", "23", Some("33"), "asset"),
    ]
    .concat();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&sim.url, dir.path(), free_port(), &results, &watches),
    )
    .unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    let done = wait_for(Duration::from_secs(30), || {
        let ev = events_of(dir.path());
        count(&ev, ".delivered") >= 6 && count(&ev, ".failed") >= 1
    })
    .await;
    // Rechecks go on (recheck_interval 1s): wait until each watch has had a couple, which must
    // not repeat any event.
    let rechecked = SimControl::new(&sim.url)
        .wait_for_more_requests(8, Duration::from_secs(20))
        .await;
    assert!(rechecked, "no rechecks after delivery");
    let log = stop(d).await;
    assert!(done, "not everything was delivered:\n{log}");
    assert!(!log.contains(SECRET), "the secret key leaked into the logs");
    // Nor into the state files, the event stream or the results.
    for name in [
        "state/scenewatch.db",
        "state/scenewatch.db-wal",
        "events.jsonl",
        "results.jsonl",
    ] {
        // The WAL may be checkpointed away at a clean stop; the others must exist.
        let bytes = match std::fs::read(dir.path().join(name)) {
            Ok(b) => b,
            Err(_) if name.ends_with("-wal") => Vec::new(),
            Err(e) => panic!("{name}: {e}"),
        };
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret key is in {name}"
        );
    }

    let events = events_of(dir.path());
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was emitted twice:\n{events:#?}");
    assert_eq!(count(&events, ".completed"), 3, "{events:#?}");
    assert_eq!(
        count(&events, ".delivered"),
        6,
        "3 versions x 2 sinks: {events:#?}"
    );
    assert_eq!(count(&events, ".failed"), 1);
    assert_eq!(
        count(&events, ".updated"),
        0,
        "no re-run happened: {events:#?}"
    );
    assert!(count(&events, ".waiting") >= 4, "{events:#?}");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(
            e["source"]
                .as_str()
                .unwrap()
                .starts_with("/workspaces/w/projects/1/assets/")
        );
    }
    // Every version in both result sinks, once in the jsonl stream.
    let lines = json_lines(&results);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (a, i) in [("10", "20"), ("11", "21"), ("12", "22")] {
        assert!(
            dir.path()
                .join(format!("results/w/1/{a}/{i}.json"))
                .exists()
        );
    }
    // The log has the same events as structured lines, with their ids.
    let completed_logged = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event_type"] == "com.scenewatch.summary.completed")
        .count();
    assert_eq!(completed_logged, 3, "{log}");

    // The ledger says the same: `status` reads it after the daemon stopped.
    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let phases: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["assetId"].as_str().unwrap(), r["phase"].as_str().unwrap()))
        .collect();
    assert!(phases.contains(&("10", "watching")), "{phases:?}");
    assert!(phases.contains(&("13", "failed")), "{phases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_storm_slows_the_whole_budget_and_is_survived() {
    let assets: String = (0..6)
        .map(|i| {
            asset(
                &format!("4{i}"),
                &format!("5{i}"),
                Some(&format!("6{i}")),
                "",
            )
        })
        .collect();
    // Rate limits (410, 420, Retry-After), not a used-up quota (400): that pauses the client
    // for minutes, which engine tests cover.
    let faults = "[faults]\nthrottle_420 = 0.2\nthrottle_410 = 0.05\nthrottle_retry_after = 0.05\nretry_after = \"1s\"\n";
    let sim = start_sim(&scenario(&assets, faults)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let watches: String = (0..6)
        .map(|i| {
            watch(
                &format!("4{i}"),
                &format!("5{i}"),
                Some(&format!("6{i}")),
                "index",
            )
        })
        .collect();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(
            &sim.url,
            dir.path(),
            port,
            &dir.path().join("r.jsonl"),
            &watches,
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    let (mut throttled, mut cuts) = (0.0, 0.0);
    let done = wait_for(Duration::from_secs(60), || {
        if let Some(m) = scrape(port) {
            throttled = metric(&m, "scenewatch_throttled_total").unwrap_or(0.0);
            cuts = metric(&m, "scenewatch_request_budget_cuts_total").unwrap_or(0.0);
        }
        count(&events_of(dir.path()), ".delivered") >= 12
    })
    .await;
    // One last look: the counters only grow.
    if let Some(m) = scrape(port) {
        throttled = metric(&m, "scenewatch_throttled_total").unwrap_or(throttled);
        cuts = metric(&m, "scenewatch_request_budget_cuts_total").unwrap_or(cuts);
    }
    let log = stop(d).await;
    assert!(done, "the storm was not survived:\n{log}");
    assert!(throttled > 0.0, "no 429 was seen");
    // The whole budget was cut (not just the throttled watch), and 429s that arrive together
    // count once.
    assert!(
        cuts >= 1.0 && cuts <= throttled,
        "cuts {cuts}, throttled {throttled}"
    );
    assert_eq!(count(&events_of(dir.path()), ".completed"), 6);
}

/// GET /metrics (blocking, short timeout); None while the server is not up.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_for_a_while_loses_nothing_and_recovers() {
    let assets = [
        asset("70", "80", Some("90"), ""),
        asset("71", "81", None, ""),
    ]
    .concat();
    let sim = start_sim(&scenario(&assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    // The jsonl sink's directory is a plain file: every write fails until it is replaced.
    let blocker = dir.path().join("down");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let results = blocker.join("results.jsonl");
    let cfg = dir.path().join("c.toml");
    let watches = [
        watch("70", "80", Some("90"), "index"),
        watch("71", "81", None, "index"),
    ]
    .concat();
    std::fs::write(
        &cfg,
        config(&sim.url, dir.path(), free_port(), &results, &watches),
    )
    .unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    // The file sink delivers both; the jsonl sink fails and says so once.
    let failing = wait_for(Duration::from_secs(30), || {
        let ev = events_of(dir.path());
        count(&ev, ".delivered") >= 2 && count(&ev, "sink.failing") >= 1
    })
    .await;
    assert!(failing, "{}", d.log_text());
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let recovered = wait_for(Duration::from_secs(30), || {
        let ev = events_of(dir.path());
        count(&ev, ".delivered") >= 4 && count(&ev, "sink.recovered") >= 1
    })
    .await;
    let log = stop(d).await;
    assert!(recovered, "{log}");
    let events = events_of(dir.path());
    assert_eq!(
        count(&events, "sink.failing"),
        1,
        "one failing episode: {events:#?}"
    );
    assert_eq!(count(&events, "sink.recovered"), 1);
    let lines = json_lines(&results);
    let mut versions: Vec<&str> = lines
        .iter()
        .map(|l| l["version"].as_str().unwrap())
        .collect();
    versions.sort();
    versions.dedup();
    assert_eq!(
        versions.len(),
        2,
        "both versions reached the recovered sink: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_rerun_is_a_new_version_and_an_update() {
    use scenewatch::ncp::{Client, ClientOptions, Credentials, Generation, Target, Verdict};
    let sim = start_sim(&scenario(&asset("30", "40", Some("50"), ""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let watches = watch("30", "40", None, "asset");
    let (_, d) = start_daemon(&sim.url, dir.path(), &watches);
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".delivered"
        ) >= 2)
        .await,
        "{}",
        d.log_text()
    );
    // Someone re-analyses scenes 1 and 3, as a user would through the API.
    let client = Client::new(ClientOptions::new(
        sim.url.clone(),
        Credentials::new("AK", SECRET),
    ))
    .unwrap();
    let target = Target {
        workspace: "w".into(),
        project_id: "1".into(),
        asset_id: "30".into(),
        index_id: "40".into(),
        scene_summary_id: None,
    };
    let accepted = client
        .request(Generation::Asset, &target, Some(&[1, 3]), None)
        .await;
    assert!(matches!(accepted, Verdict::Ok(_)), "{accepted:?}");
    let updated = wait_for(Duration::from_secs(30), || {
        let ev = events_of(dir.path());
        count(&ev, ".updated") >= 1 && count(&ev, ".delivered") >= 4
    })
    .await;
    let log = stop(d).await;
    assert!(updated, "{log}");
    let events = events_of(dir.path());
    assert_eq!(count(&events, ".completed"), 2);
    assert_eq!(count(&events, ".updated"), 1);
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results/w/1/30/40.json")).unwrap())
            .unwrap();
    assert_eq!(latest["analyzedSceneIds"], serde_json::json!(["1", "3"]));
    let kept = std::fs::read_dir(dir.path().join("results/w/1/30/40"))
        .unwrap()
        .count();
    assert_eq!(kept, 2, "both versions kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_keeps_watches() {
    let assets = [
        asset("1", "1", None, ""),
        asset("2", "2", None, "queue = \"1h\""),
        asset("3", "3", None, ""),
    ]
    .concat();
    let sim = start_sim(&scenario(&assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let wd = dir.path().join("watches.d");
    std::fs::create_dir(&wd).unwrap();
    let file = |a: &str| {
        format!(
            "workspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{a}\"\nindex_id = \"{a}\"\ngeneration = \"asset\"\n"
        )
    };
    std::fs::write(wd.join("one.toml"), file("1")).unwrap();
    std::fs::write(wd.join("two.toml"), file("2")).unwrap();
    let cfg = dir.path().join("c.toml");
    let extra = format!("watch_dir = \"{}\"\n", wd.display());
    let text_cfg = config(
        &sim.url,
        dir.path(),
        free_port(),
        &dir.path().join("r.jsonl"),
        "",
    )
    .replacen("shutdown_timeout", &format!("{extra}shutdown_timeout"), 1);
    std::fs::write(&cfg, text_cfg).unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".delivered"
        ) >= 2)
        .await,
        "{}",
        d.log_text()
    );

    // Drop watch 2 (still waiting), add watch 3; the directory watcher notices.
    std::fs::remove_file(wd.join("two.toml")).unwrap();
    std::fs::write(wd.join("three.toml"), file("3")).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".delivered"
        ) >= 4)
        .await,
        "{}",
        d.log_text()
    );
    // An invalid watch file: the reload is refused, the running set stays.
    std::fs::write(wd.join("bad.toml"), "workspace = \"w w\"\n").unwrap();
    d.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(10), || d
            .log_text()
            .contains("Reload refused"))
        .await,
        "{}",
        d.log_text()
    );
    let log = stop(d).await;
    assert!(
        log.contains("bad.toml"),
        "the refusal names the file: {log}"
    );
    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |a: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["assetId"] == a)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("1")["phase"], "watching");
    assert_eq!(find("1")["removed"], false);
    assert_eq!(
        find("2")["removed"],
        true,
        "removed watches keep their row, marked"
    );
    assert_eq!(find("3")["phase"], "watching");
    // Watch 1 kept its state through the reload: exactly one completion for it.
    let events = events_of(dir.path());
    let completed_1 = events
        .iter()
        .filter(|e| {
            e["type"] == "com.scenewatch.summary.completed"
                && e["source"].as_str().unwrap().contains("/assets/1/")
        })
        .count();
    assert_eq!(completed_1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_in_time_with_a_consistent_ledger() {
    let assets = "[[generate]]\ncount = 300\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id_prefix = \"g\"\nindex_id_start = 1000\nqueue = \"1h\"\nrun = \"1h\"\n";
    let sim = start_sim(&scenario(assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let watches: String = (1..=300)
        .map(|i| format!("[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"g{i}\"\nindex_id = \"{}\"\ngeneration = \"asset\"\n", 1000 + i))
        .collect();
    let cfg = dir.path().join("c.toml");
    let c = config(
        &sim.url,
        dir.path(),
        free_port(),
        &dir.path().join("r.jsonl"),
        &watches,
    )
    .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"3s\"");
    std::fs::write(&cfg, c).unwrap();
    let mut d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".waiting"
        ) >= 100)
        .await,
        "{}",
        d.log_text()
    );
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10)).await;
    let log = d.log_text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "not stopped in time:\n{log}"
    );
    assert!(log.contains("Shutting down"), "{log}");

    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 300);
    let polled = rows
        .iter()
        .filter(|r| r["polls"].as_u64().unwrap() > 0)
        .count();
    assert!(polled >= 100, "{polled} polled");
    // Restarting resumes: nothing already emitted is emitted again.
    let before = events_of(dir.path()).len();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    // Until it has polled a good share of the watches again.
    let resumed = SimControl::new(&sim.url)
        .wait_for_more_requests(100, Duration::from_secs(30))
        .await;
    let log = stop(d).await;
    assert!(resumed, "the restarted daemon did not poll:\n{log}");
    let events = events_of(dir.path());
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        n,
        "events re-emitted after restart ({before} before):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_database_is_refused_and_left_alone() {
    let sim = start_sim(&scenario(&asset("1", "1", None, ""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let garbage = b"this is not a database, and must survive the attempt".repeat(200);
    std::fs::write(state.join("scenewatch.db"), &garbage).unwrap();
    let (_, mut d) = start_daemon(&sim.url, dir.path(), &watch("1", "1", None, "index"));
    let status = d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_ne!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("scenewatch.db"), "{log}");
    assert_eq!(
        std::fs::read(state.join("scenewatch.db")).unwrap(),
        garbage,
        "the file was changed"
    );
}

/// A watch row the start cannot read (here an edited phase) stops the daemon with an error
/// naming the file and the value, and the file is left as it was: the records are read a page
/// at a time after the sync, so the failure comes from the engine's read, not the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_row_the_start_cannot_read_stops_the_daemon_with_the_file_and_the_value() {
    let sim = start_sim(&scenario(&asset("1", "1", None, "queue = \"1h\""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = start_daemon(&sim.url, dir.path(), &watch("1", "1", None, "index"));
    assert!(
        wait_for(Duration::from_secs(15), || first
            .log_text()
            .contains("Daemon started."))
        .await
    );
    stop(first).await;
    let db = dir.path().join("state").join("scenewatch.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("UPDATE watches SET phase = 'bogus'", [])
            .unwrap();
    }
    let (_, mut again) = start_daemon(&sim.url, dir.path(), &watch("1", "1", None, "index"));
    let status = again.wait_exit(Duration::from_secs(15)).await;
    let log = again.log_text();
    assert_ne!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("scenewatch.db"), "{log}");
    assert!(log.contains("bogus"), "{log}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let phase: String = conn
        .query_row("SELECT phase FROM watches", [], |r| r.get(0))
        .unwrap();
    assert_eq!(phase, "bogus", "the row was left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_is_refused() {
    let sim = start_sim(&scenario(&asset("1", "1", None, "queue = \"1h\""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, first) = start_daemon(&sim.url, dir.path(), &watch("1", "1", None, "index"));
    assert!(
        wait_for(Duration::from_secs(15), || first
            .log_text()
            .contains("Daemon started."))
        .await
    );
    // Same configuration, same state directory: the lock is checked before anything else.
    let other = tempfile::tempdir().unwrap();
    let mut second = Daemon::start(
        &cfg,
        other.path(),
        &[("SCENEWATCH__API__SECRET_KEY", SECRET)],
    );
    let status = second.wait_exit(Duration::from_secs(15)).await;
    let log = second.log_text();
    assert_ne!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(
        log.contains("another scenewatch daemon is running"),
        "{log}"
    );
    stop(first).await;
}

/// The ledger deleted under a running daemon is noticed: one error line naming the file, and
/// nothing more is recorded into the deleted file (nor delivered from it); deleting a file in
/// the state directory does not let a second daemon in either (the lock is on the directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_deleted_under_the_daemon_is_noticed_and_the_lock_holds() {
    let sim = start_sim(&scenario(&asset("1", "1", None, "queue = \"1h\""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, first) = start_daemon(&sim.url, dir.path(), &watch("1", "1", None, "index"));
    assert!(
        wait_for(Duration::from_secs(15), || first
            .log_text()
            .contains("Daemon started."))
        .await
    );
    let state = dir.path().join("state");
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let noticed = wait_for(Duration::from_secs(30), || {
        first
            .log_text()
            .contains("the file was deleted while the daemon has it open")
    })
    .await;
    let other = tempfile::tempdir().unwrap();
    let mut second = Daemon::start(
        &cfg,
        other.path(),
        &[("SCENEWATCH__API__SECRET_KEY", SECRET)],
    );
    let status = second.wait_exit(Duration::from_secs(15)).await;
    let second_log = second.log_text();
    let log = stop(first).await;
    assert!(noticed, "{log}");
    assert!(log.contains("scenewatch.db"), "{log}");
    assert_ne!(status.and_then(|s| s.code()), Some(0), "{second_log}");
    assert!(
        second_log.contains("another scenewatch daemon is running"),
        "{second_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_metadata_raises_stale_once_per_version() {
    let sim = start_sim(&scenario(&asset("60", "61", None, ""), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let watches = watch("60", "61", None, "asset");
    let (_, d) = start_daemon(&sim.url, dir.path(), &watches);
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".delivered"
        ) >= 2)
        .await,
        "{}",
        d.log_text()
    );
    // Someone edits person labels of scenes 1 and 3 after the summary was made.
    let marked = crate::support::http()
        .post(format!("{}/__sim/assets/w/1/60/metadata-changed", sim.url))
        .json(&serde_json::json!({"scenes": [1, 3]}))
        .send()
        .await
        .unwrap();
    assert!(marked.status().is_success(), "{:?}", marked.text().await);
    let stale = wait_for(Duration::from_secs(20), || {
        count(&events_of(dir.path()), ".stale") >= 1
    })
    .await;
    // Several more rechecks (every second) must not repeat it.
    let rechecked = SimControl::new(&sim.url)
        .wait_for_more_requests(3, Duration::from_secs(20))
        .await;
    assert!(rechecked, "no rechecks after the stale event");
    let log = stop(d).await;
    assert!(stale, "{log}");
    let events = events_of(dir.path());
    let stale: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "com.scenewatch.summary.stale")
        .collect();
    assert_eq!(stale.len(), 1, "{events:#?}");
    assert_eq!(stale[0]["data"]["scenes"], serde_json::json!([1, 3]));
    assert_eq!(
        count(&events, ".completed"),
        1,
        "metadata edits are not a new version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resets_an_ended_watch_and_the_running_daemon_polls_it_again() {
    let sim = start_sim(&scenario(
        &asset("80", "81", None, "outcome = \"failed\""),
        "",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let watches = watch("80", "81", None, "asset");
    let (cfg, d) = start_daemon(&sim.url, dir.path(), &watches);
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &events_of(dir.path()),
            ".failed"
        ) >= 1)
        .await,
        "{}",
        d.log_text()
    );
    // The team re-runs the summary by hand and it succeeds.
    let forced = crate::support::http()
        .post(format!("{}/__sim/assets/w/1/80/force", sim.url))
        .json(&serde_json::json!({"status": "SUMMARIZE_COMPLETED"}))
        .send()
        .await
        .unwrap();
    assert!(forced.status().is_success(), "{:?}", forced.text().await);
    // (A key the ledger does not hold is exit 65 and resets nothing: tests/it/cli.rs.)
    let mut cmd = scenewatch();
    cmd.args(["reset", "--config"]).arg(&cfg).arg("w/1/80/81");
    let out = run(cmd).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("reset w/1/80/81"), "{said}");
    d.signal("HUP");
    let delivered = wait_for(Duration::from_secs(30), || {
        count(&events_of(dir.path()), ".delivered") >= 2
    })
    .await;
    let log = stop(d).await;
    assert!(delivered, "{log}");
    assert!(log.contains("Watch reset by an operator"), "{log}");
    assert_eq!(count(&events_of(dir.path()), ".failed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_everything_until_a_reload_brings_the_right_key() {
    let assets: String = (0..5)
        .map(|i| asset(&format!("9{i}"), &format!("9{i}"), None, ""))
        .collect();
    let sim = start_sim(&scenario(&assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("ncp-secret-key");
    std::fs::write(&key_file, "an-old-revoked-key").unwrap();
    let watches: String = (0..5)
        .map(|i| watch(&format!("9{i}"), &format!("9{i}"), None, "asset"))
        .collect();
    let cfg = dir.path().join("c.toml");
    let text = config(
        &sim.url,
        dir.path(),
        free_port(),
        &dir.path().join("r.jsonl"),
        &watches,
    )
    .replace(
        "access_key = \"AK\"",
        &format!(
            "access_key = \"AK\"\nsecret_key_file = \"{}\"",
            key_file.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[]);
    assert!(
        wait_for(Duration::from_secs(20), || d
            .log_text()
            .contains("The API refused the credentials"))
        .await,
        "{}",
        d.log_text()
    );
    // Rotate the key and reload: polling resumes at once, everything is delivered.
    std::fs::write(&key_file, SECRET).unwrap();
    d.signal("HUP");
    let delivered = wait_for(Duration::from_secs(30), || {
        count(&events_of(dir.path()), ".delivered") >= 10
    })
    .await;
    let log = stop(d).await;
    assert!(delivered, "{log}");
    assert_eq!(
        log.matches("The API refused the credentials").count(),
        1,
        "one error for five watches:\n{log}"
    );
    assert!(log.contains("polling resumes"), "{log}");
    assert!(
        !log.contains(SECRET) && !log.contains("an-old-revoked-key"),
        "a key leaked into the log"
    );
}
