//! The real service, not our guesses (issue 8): the default configuration against a simulator
//! whose "not completed" answer the client was never told, failures seen as they happen on
//! index-level watches, the index-level API's removal, watches by asset and by project (with
//! assets added and re-indexed while the daemon runs), and hostile listings.

use std::path::Path;
use std::time::Duration;

use crate::support::{Daemon, free_port, json_lines, run, scenewatch, start_sim, text, wait_for};

const SECRET: &str = "SK-api-truth-3c1e";

/// A scenario of `assets` (TOML `[[asset]]` tables) with `extra` top-level tables. No `[api]`
/// pins anything: the not-ready answer is drawn from `seed`.
fn scenario(seed: u64, assets: &str, extra: &str) -> String {
    format!(
        "seed = {seed}\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n{extra}\n{assets}"
    )
}

fn asset(asset: &str, index: &str, more: &str) -> String {
    format!(
        "[[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{asset}\"\nindex_id = \"{index}\"\nscenes = 3\nqueue = \"200ms\"\nrun = \"400ms\"\n{more}\n"
    )
}

/// A configuration on the defaults (no generation, no pending codes), fast intervals.
fn config(url: &str, dir: &Path, watches: &str, extra_top: &str) -> String {
    format!(
        r#"state_dir = "{dir}/state"
{extra_top}
[api]
endpoint = "{url}"
access_key = "AK"
requests_per_second = 50.0
timeout = "3s"
[poll]
initial_interval = "100ms"
max_interval = "300ms"
max_wait = "40s"
discovery_interval = "500ms"
recheck_interval = "500ms"
[[sink]]
type = "file"
dir = "{dir}/results"
[[event_sink]]
type = "jsonl"
path = "{dir}/events.jsonl"
{watches}"#,
        dir = dir.display()
    )
}

fn watch(asset: &str, index: Option<&str>, more: &str) -> String {
    let index = index
        .map(|i| format!("index_id = \"{i}\"\n"))
        .unwrap_or_default();
    format!(
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{asset}\"\n{index}{more}\n"
    )
}

/// Events of `kind` (the part after `com.scenewatch.`) in the events file, by watch.
fn events_of(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    json_lines(&dir.join("events.jsonl"))
        .into_iter()
        .filter(|e| e["type"] == format!("com.scenewatch.{kind}"))
        .collect()
}

fn watches_with(dir: &Path, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = events_of(dir, kind)
        .iter()
        .filter_map(|e| {
            e["subject"]
                .as_str()
                .map(|_| e["source"].as_str().unwrap_or("").to_string())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

async fn once(cfg: &Path) -> std::process::Output {
    let mut cmd = scenewatch();
    cmd.args(["once", "--no-progress", "--config"])
        .arg(cfg)
        .env("SCENEWATCH__API__SECRET_KEY", SECRET);
    run(cmd).await
}

/// `once` on the default configuration, across simulator seeds (so across the envelopes,
/// statuses and codes it draws for "not completed"): every completed result is written intact,
/// and the failing job of an index-level watch without a scene summary id ends `failed`, seen
/// through the asset-level status call, not `timed_out` at `max_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_copes_with_an_undocumented_not_ready_answer() {
    for seed in [1u64, 2, 3, 5, 8, 13] {
        let assets = [
            asset("10", "20", ""),
            asset("11", "21", "outcome = \"failed\""),
            // Two indexes: 22 is no longer the latest, so only its result call can be polled.
            asset("12", "22", "initial = \"SUMMARIZE_COMPLETED\""),
            asset("12", "23", "initial = \"BEFORE_SUMMARIZE\""),
        ]
        .concat();
        let sim = start_sim(&scenario(seed, &assets, "")).await;
        let dir = tempfile::tempdir().unwrap();
        let watches = [
            watch("10", Some("20"), "generation = \"index\""),
            watch("11", Some("21"), "generation = \"index\""),
            watch("12", Some("22"), ""),
        ]
        .concat();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config(&sim.url, dir.path(), &watches, "")).unwrap();
        let out = once(&cfg).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "seed {seed}: {all}");
        let failed = watches_with(dir.path(), "summary.failed");
        assert_eq!(
            failed,
            ["/workspaces/w/projects/1/assets/11/indexes/21"],
            "seed {seed}: the failure is seen as it happens: {all}"
        );
        assert!(
            watches_with(dir.path(), "summary.timed_out").is_empty(),
            "seed {seed}: {all}"
        );
        assert!(
            watches_with(dir.path(), "watch.rejected").is_empty(),
            "seed {seed}: {all}"
        );
        for (a, i) in [("10", "20"), ("12", "22")] {
            let path = dir.path().join(format!("results/w/1/{a}/{i}.json"));
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap_or_default())
                    .unwrap_or_else(|_| panic!("seed {seed}: {} missing: {all}", path.display()));
            assert_eq!(doc["result"]["indexId"].to_string(), i, "seed {seed}");
            assert_eq!(doc["sceneCount"], 3, "seed {seed}");
        }
        // One deprecation notice for the two explicit index-level watches.
        assert_eq!(
            all.matches("announced for removal in January 2027").count(),
            1,
            "{all}"
        );
    }
}

/// With the index-level routes gone: watches on the asset's latest index are delivered through
/// the asset-level calls, an `auto` watch of an older index moves off the index-level API
/// (one log line for the whole client) and ends superseded, and an explicit `index` watch ends
/// rejected saying what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_level_api_removed() {
    let assets = [
        asset("10", "20", ""),
        asset("11", "21", "scene_summary_id = \"31\""),
        asset(
            "12",
            "22",
            "scene_summary_id = \"32\"\ninitial = \"SUMMARIZE_COMPLETED\"",
        ),
        asset("12", "23", ""),
    ]
    .concat();
    let sim = start_sim(&scenario(4, &assets, "[api]\nindex_routes = false\n")).await;
    let dir = tempfile::tempdir().unwrap();
    let watches = [
        watch("10", Some("20"), ""),
        watch(
            "11",
            Some("21"),
            "scene_summary_id = \"31\"\ngeneration = \"index\"",
        ),
        watch("12", Some("22"), "scene_summary_id = \"32\""),
    ]
    .concat();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&sim.url, dir.path(), &watches, "")).unwrap();
    let out = once(&cfg).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(dir.path().join("results/w/1/10/20.json").exists(), "{all}");
    assert_eq!(
        all.matches("NAVER has removed it").count(),
        1,
        "one line for the whole client: {all}"
    );
    let rejected = events_of(dir.path(), "watch.rejected");
    assert_eq!(rejected.len(), 1, "{all}");
    let message = rejected[0]["data"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("set generation = \"auto\""),
        "says what to change: {message}"
    );
    let superseded = events_of(dir.path(), "watch.superseded");
    assert_eq!(superseded.len(), 1, "{all}");
    assert_eq!(superseded[0]["data"]["newIndexId"], "23");
    assert!(
        !dir.path().join("results/w/1/12/22.json").exists(),
        "nothing under the wrong key"
    );
    assert!(
        !dir.path().join("results/w/1/12/23.json").exists(),
        "nor under a key nobody watches"
    );
}

/// A watch of a whole project delivers every asset of the first listing under its real ids,
/// `once` waits for all of them, and hostile listings (a list that pages forever, a total that
/// lies, ids that are not safe) are survived with a warning and nothing delivered wrongly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_watches_a_whole_project() {
    for quirk in [
        "",
        "[listing]\npages_forever = true\n",
        "[listing]\nlying_total_count = true\ninjected_asset_ids = [\"../x\", \"a b\"]\n",
    ] {
        let assets = [
            asset("10", "20", ""),
            asset("11", "21", ""),
            asset("12", "22", "initial = \"SUMMARIZE_COMPLETED\""),
        ]
        .concat();
        let sim = start_sim(&scenario(6, &assets, quirk)).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let watches = "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\n";
        std::fs::write(&cfg, config(&sim.url, dir.path(), watches, "")).unwrap();
        let out = once(&cfg).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{quirk}: {all}");
        for (a, i) in [("10", "20"), ("11", "21"), ("12", "22")] {
            assert!(
                dir.path()
                    .join(format!("results/w/1/{a}/{i}.json"))
                    .exists(),
                "{quirk}: {a}: {all}"
            );
        }
        assert_eq!(
            watches_with(dir.path(), "watch.discovered").len(),
            3,
            "{quirk}: {all}"
        );
        let results: Vec<_> = walk(&dir.path().join("results"));
        assert_eq!(results.len(), 3, "{quirk}: {results:?}");
        if quirk.contains("pages_forever") {
            assert!(all.contains("does not end"), "{all}");
        }
        if quirk.contains("injected") {
            assert!(all.contains("not usable asset ids"), "{all}");
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn control(url: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = crate::support::http()
        .post(format!("{url}/__sim/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v = resp.json().await.unwrap_or_default();
    assert!(status.is_success(), "POST {path}: {status} {v}");
    v
}

/// The daemon watching a project and one asset: an asset added to the project while it runs is
/// found and delivered; a re-index of the watched asset supersedes its watch and the new index
/// is followed and delivered under its own ids; `status` lists them all with their real ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_follows_new_assets_and_re_indexes() {
    let assets = [
        asset("10", "20", ""),
        asset("11", "21", ""),
        "[[asset]]\nworkspace = \"w\"\nproject_id = \"2\"\nasset_id = \"50\"\nindex_id = \"60\"\nscenes = 2\nqueue = \"200ms\"\nrun = \"300ms\"\n".to_string(),
    ]
    .concat();
    let sim = start_sim(&scenario(9, &assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let watches = "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\n\
                   [[watch]]\nworkspace = \"w\"\nproject_id = \"2\"\nasset_id = \"50\"\n";
    let cfg = dir.path().join("c.toml");
    let c = config(&sim.url, dir.path(), watches, "shutdown_timeout = \"5s\"");
    std::fs::write(
        &cfg,
        format!("{c}\n[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    let delivered = |n: usize| {
        let dir = dir.path().to_path_buf();
        move || watches_with(&dir, "summary.delivered").len() >= n
    };
    assert!(
        wait_for(Duration::from_secs(30), delivered(3)).await,
        "{}",
        d.log_text()
    );

    // A new asset in the project.
    let new_asset = serde_json::json!({
        "workspace": "w", "project_id": "1", "asset_id": "13", "index_id": "23",
        "scenes": 2, "queue": "200ms", "run": "300ms"
    });
    control(&sim.url, "assets", new_asset).await;
    // A re-index of the watched asset: a new latest index that completes.
    control(
        &sim.url,
        "assets/w/2/50/reindex",
        serde_json::json!({"index_id": "61", "initial": "WAIT_SUMMARIZE"}),
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(40), delivered(5)).await,
        "{}",
        d.log_text()
    );
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");

    let delivered = watches_with(dir.path(), "summary.delivered");
    for w in [
        "/workspaces/w/projects/1/assets/10/indexes/20",
        "/workspaces/w/projects/1/assets/11/indexes/21",
        "/workspaces/w/projects/1/assets/13/indexes/23",
        "/workspaces/w/projects/2/assets/50/indexes/60",
        "/workspaces/w/projects/2/assets/50/indexes/61",
    ] {
        assert!(
            delivered.iter().any(|d| d == w),
            "{w} in {delivered:?}\n{log}"
        );
    }
    let superseded = events_of(dir.path(), "watch.superseded");
    assert_eq!(superseded.len(), 1, "{log}");
    assert_eq!(superseded[0]["data"]["newIndexId"], "61");
    assert_eq!(superseded[0]["data"]["followed"], true);
    assert!(dir.path().join("results/w/2/50/61.json").exists());

    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let phases: Vec<(String, String)> = rows
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["watch"].as_str().unwrap_or("").to_string(),
                        r["phase"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        phases.contains(&("w/2/50/60".into(), "superseded".into())),
        "{phases:?} {}",
        text(&out)
    );
    assert!(phases.iter().any(|(w, _)| w == "w/1/13/23"), "{phases:?}");
}

/// A project watch dropped into the watch directory is picked up by a running daemon, and taking
/// the file away removes its watches (kept in the ledger, flagged removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_watch_comes_and_goes_with_its_watch_file() {
    let assets = [asset("10", "20", ""), asset("11", "21", "")].concat();
    let sim = start_sim(&scenario(12, &assets, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let watch_dir = dir.path().join("watches");
    std::fs::create_dir_all(&watch_dir).unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    let top = format!(
        "shutdown_timeout = \"5s\"\nwatch_dir = \"{}\"",
        watch_dir.display()
    );
    let c = config(&sim.url, dir.path(), "", &top);
    std::fs::write(
        &cfg,
        format!("{c}\n[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    std::fs::write(
        watch_dir.join("newsroom.toml"),
        "workspace = \"w\"\nproject_id = \"1\"\n",
    )
    .unwrap();
    let delivered = {
        let dir = dir.path().to_path_buf();
        move || watches_with(&dir, "summary.delivered").len() >= 2
    };
    assert!(
        wait_for(Duration::from_secs(30), delivered).await,
        "{}",
        d.log_text()
    );
    std::fs::remove_file(watch_dir.join("newsroom.toml")).unwrap();
    let status = || async {
        let mut cmd = scenewatch();
        cmd.args(["status", "--json", "--config"]).arg(&cfg);
        let out = run(cmd).await;
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let mut removed = false;
    for _ in 0..100 {
        let rows = status().await;
        if rows
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|r| r["removed"] == true))
        {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).await;
    assert!(removed, "{}\n{}", status().await, d.log_text());
}
