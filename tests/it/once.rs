//! `scenewatch once` end to end: the real binary against the simulator on loopback.

use crate::support::{run, run_once, scenewatch, start_sim, text, watch, watcher_config};

const SECRET: &str = "SK-never-printed-9f3a";

fn scenario(faults: &str) -> String {
    format!(
        r#"seed = 7
[[credentials]]
access_key = "AK"
secret_key = "{SECRET}"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "10"
index_id = "20"
scene_summary_id = "30"
scenes = 3
queue = "200ms"
run = "300ms"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "11"
index_id = "21"
scenes = 5
queue = "100ms"
run = "400ms"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "12"
index_id = "22"
scene_summary_id = "32"
scenes = 4
queue = "100ms"
run = "200ms"
rerun_scene_ids = [2]

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "13"
index_id = "23"
scenes = 2
queue = "100ms"
run = "200ms"
outcome = "failed"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "14"
index_id = "24"
scenes = 2
initial = "BEFORE_SUMMARIZE"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "15"
index_id = "25"
scenes = 2
queue = "1h"
{faults}
"#
    )
}

/// The result text the simulator serves for an index-level watch without the envelope.
async fn fetch_result_text(url: &str, asset: &str, index: &str) -> String {
    use scenewatch::ncp::{Client, ClientOptions, Credentials, Generation, Target, Verdict};
    let client = Client::new(ClientOptions {
        endpoint: url.to_string(),
        credentials: Credentials::new("AK", SECRET),
        timeout: std::time::Duration::from_secs(5),
        max_body_bytes: 1 << 20,
        pending_codes: vec!["10100".into()],
        user_agent: "test".into(),
    })
    .unwrap();
    let target = Target {
        workspace: "w".into(),
        project_id: "1".into(),
        asset_id: asset.into(),
        index_id: index.into(),
        scene_summary_id: None,
    };
    match client.result(Generation::Index, &target).await {
        Verdict::Ok(r) => r.raw.get().to_string(),
        other => panic!("result of {asset}/{index}: {other:?}"),
    }
}

fn completing_watches() -> String {
    [
        watch("10", "20", Some("30"), "index"),
        watch("11", "21", None, "index"),
        watch("12", "22", Some("32"), "index"),
        watch("11", "21", None, "asset").replace("index_id = \"21\"", "index_id = \"21b\""),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_results_are_written_unchanged_inside_the_envelope() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        watcher_config(&sim.url, dir.path(), &completing_watches()),
    )
    .unwrap();
    let out = run_once(&cfg, SECRET).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        !all.contains(SECRET),
        "the secret key leaked into the output"
    );

    // Index-level with a scene summary id, index-level by result polling, a partial re-run.
    for (asset, index, scenes) in [("10", "20", 3), ("11", "21", 5), ("12", "22", 4)] {
        let path = dir.path().join(format!("results/w/1/{asset}/{index}.json"));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc["source"],
            format!("/workspaces/w/projects/1/assets/{asset}/indexes/{index}")
        );
        assert_eq!(doc["version"].as_str().unwrap().len(), 32);
        let result = &doc["result"];
        assert_eq!(
            result["sceneSummaries"].as_array().unwrap().len(),
            scenes,
            "{path:?}"
        );
        assert_eq!(
            result["sceneSummaryInfo"]["lastAnalyzedAt"],
            doc["lastAnalyzedAt"]
        );
        // Unchanged: the API's `result` text, as the API serves it now, sits verbatim in the file.
        let served = fetch_result_text(&sim.url, asset, index).await;
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(
            raw.contains(&format!("\"result\": {served}")),
            "{path:?}: result not kept verbatim"
        );
    }
    let partial: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results/w/1/12/22.json")).unwrap())
            .unwrap();
    assert_eq!(partial["analyzedSceneIds"], serde_json::json!(["2"]));
    assert_eq!(
        partial["result"]["sceneSummaryInfo"]["analyzedSceneIds"],
        serde_json::json!(["2"])
    );
    // Logs are JSON lines when stdout is not a terminal, one per event, with the watch key: the
    // same event lines as the daemon's.
    let delivered: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["event_type"] == "com.scenewatch.summary.delivered")
        .collect();
    assert_eq!(delivered.len(), 4, "{all}");
    assert!(
        delivered
            .iter()
            .all(|v| v["watch"].as_str().unwrap().starts_with("w/1/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_outcomes_exit_2_and_are_named() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let watches = [
        watch("10", "20", Some("30"), "index"),
        watch("13", "23", None, "asset"),
        watch("14", "24", None, "asset"),
        watch("15", "25", None, "asset").replace(
            "generation = \"asset\"",
            "generation = \"asset\"\nmax_wait = \"1s\"",
        ),
        // Unknown to the service: a permanent 404 ends the watch as rejected.
        watch("99", "99", None, "asset"),
    ]
    .concat();
    let cfg = dir.path().join("c.toml");
    let config = watcher_config(&sim.url, dir.path(), &watches).replace(
        "max_wait = \"30s\"",
        "max_wait = \"30s\"\nnot_requested_grace = \"500ms\"",
    );
    std::fs::write(&cfg, config).unwrap();
    let out = run_once(&cfg, SECRET).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    // The ending events, as the daemon logs them.
    let ended = |asset: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["watch"]
                    .as_str()
                    .is_some_and(|w| w.contains(&format!("/{asset}/")))
            })
            .filter_map(|v| v["event_type"].as_str().map(String::from))
            .next_back()
    };
    assert_eq!(
        ended("13").as_deref(),
        Some("com.scenewatch.summary.failed"),
        "{all}"
    );
    assert_eq!(
        ended("14").as_deref(),
        Some("com.scenewatch.summary.not_requested"),
        "{all}"
    );
    assert_eq!(
        ended("15").as_deref(),
        Some("com.scenewatch.summary.timed_out"),
        "{all}"
    );
    assert_eq!(
        ended("99").as_deref(),
        Some("com.scenewatch.watch.rejected"),
        "{all}"
    );
    assert!(
        dir.path().join("results/w/1/10/20.json").exists(),
        "the completed one is still written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_everything_with_one_error() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        watcher_config(&sim.url, dir.path(), &completing_watches()),
    )
    .unwrap();
    // `once` pauses on refused credentials as the daemon does; --timeout bounds the wait (the
    // first probe would come after 30 s), and the refusal decides the exit code.
    let mut cmd = scenewatch();
    cmd.arg("once")
        .arg("--config")
        .arg(&cfg)
        .arg("--timeout")
        .arg("3s")
        .env("SCENEWATCH__API__SECRET_KEY", "WRONG-SECRET-77");
    let out = run(cmd).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(77), "{all}");
    assert_eq!(
        all.matches("The API refused the credentials").count(),
        1,
        "{all}"
    );
    assert!(
        all.contains("trace id"),
        "the trace id is kept for support: {all}"
    );
    assert!(!all.contains("WRONG-SECRET-77"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_throttling_are_survived() {
    let faults = "[faults]\nthrottle_420 = 0.15\nthrottle_retry_after = 0.05\nhttp_503 = 0.1\nhttp_504 = 0.05\nreset = 0.05\nmalformed_json = 0.05\ntruncated = 0.05\n";
    let sim = start_sim(&scenario(faults)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        watcher_config(&sim.url, dir.path(), &completing_watches()),
    )
    .unwrap();
    let out = run_once(&cfg, SECRET).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("Poll failed; retrying."),
        "faults were injected: {all}"
    );
    assert!(dir.path().join("results/w/1/12/22.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_sink_directory_is_named_and_nothing_starts() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let cfg = dir.path().join("c.toml");
    let config = watcher_config(&sim.url, dir.path(), &completing_watches()).replace(
        &format!("dir = \"{}/results\"", dir.path().display()),
        &format!("dir = \"{}/results\"", blocker.display()),
    );
    std::fs::write(&cfg, config).unwrap();
    let out = run_once(&cfg, SECRET).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(74), "{all}");
    assert!(
        all.contains(&format!("{}/results", blocker.display())),
        "{all}"
    );
    assert!(all.contains("file sink `file`"), "{all}");
}
