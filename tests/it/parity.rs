//! One engine: `demo`, `once` and `run` produce the same events for the same scenario (the demo's
//! simulator scenario and the demo's configuration), because they are one poll engine over two
//! ledgers. Compared per watch, in order, with what differs between runs by nature left out:
//! event ids and version ids (they hash `lastAnalyzedAt`, a wall-clock time of the simulator),
//! times, and the output directory in locations.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use scenewatch::sim;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{self, Daemon};

/// Per watch key, its events in order, each as `type field=value …` without run-specific fields.
type Story = BTreeMap<String, Vec<String>>;

/// The events in a log (JSON lines): one line per event carries `event_type` and `watch`.
fn story(log: &str, out: &Path) -> Story {
    let out = out.display().to_string();
    let mut story = Story::new();
    for line in log.lines() {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(kind) = fields.get("event_type").and_then(Value::as_str) else {
            continue;
        };
        let Some(watch) = fields.get("watch").and_then(Value::as_str) else {
            continue;
        };
        let mut said = kind.trim_start_matches("com.scenewatch.").to_owned();
        for (k, v) in &fields {
            if matches!(
                k.as_str(),
                "timestamp"
                    | "level"
                    | "message"
                    | "target"
                    | "event_id"
                    | "event_type"
                    | "watch"
                    | "version"
                    | "last_analyzed_at"
            ) {
                continue;
            }
            let v = match v {
                Value::String(s) => s.replace(&out, "OUT"),
                other => other.to_string(),
            };
            said.push_str(&format!(" {k}={v}"));
        }
        story.entry(watch.to_owned()).or_default().push(said);
    }
    story
}

/// Serves the demo scenario on a loopback port until the token is cancelled.
async fn demo_sim() -> (String, CancellationToken, sim::SimHandle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let handle = sim::spawn(sim::demo_scenario(), listener, stop.clone())
        .await
        .unwrap();
    (handle.base_url(), stop, handle)
}

fn ends(story: &Story) -> usize {
    story
        .values()
        .filter(|events| {
            events
                .iter()
                .any(|e| e.starts_with("summary.delivered") || e.starts_with("summary.failed"))
        })
        .count()
}

/// `scenewatch demo`: the simulator in-process, the embedded configuration.
async fn demo_story(tmp: &Path) -> Story {
    let out_dir = tmp.join("demo");
    let mut cmd = support::scenewatch();
    cmd.args(["demo", "--log-format", "json", "--no-progress", "--out"])
        .arg(&out_dir)
        .timeout(Duration::from_secs(120));
    let out = support::run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::text(&out));
    story(
        &String::from_utf8_lossy(&out.stdout),
        &out_dir.canonicalize().unwrap(),
    )
}

/// `scenewatch once`: the demo's configuration against a simulator of the demo's scenario.
async fn once_story(tmp: &Path) -> Story {
    let (url, stop, _sim) = demo_sim().await;
    let out_dir = tmp.join("once");
    std::fs::create_dir_all(&out_dir).unwrap();
    let config = out_dir.join("scenewatch.toml");
    std::fs::write(&config, scenewatch::demo::demo_config_toml(&url, &out_dir)).unwrap();
    let mut cmd = support::scenewatch();
    cmd.args(["once", "--log-format", "json", "--no-progress", "--config"])
        .arg(&config)
        .timeout(Duration::from_secs(120));
    let out = support::run(cmd).await;
    stop.cancel();
    // 2: a watch failed (the demo's failing asset); the demo itself counts that as expected.
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out));
    story(&String::from_utf8_lossy(&out.stdout), &out_dir)
}

/// `scenewatch run`: the daemon over its durable ledger, stopped once every watch has ended.
async fn run_story(tmp: &Path) -> Story {
    let (url, stop, _sim) = demo_sim().await;
    let out_dir = tmp.join("run");
    std::fs::create_dir_all(&out_dir).unwrap();
    let config = out_dir.join("scenewatch.toml");
    // The metrics server on a free port (tests run side by side).
    let toml = scenewatch::demo::demo_config_toml(&url, &out_dir);
    std::fs::write(
        &config,
        format!("{toml}\n[server]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let mut daemon = Daemon::start(&config, &out_dir, &[("SCENEWATCH_LOG_FORMAT", "json")]);
    let all_ended = support::wait_for(Duration::from_secs(120), || {
        ends(&story(&daemon.log_text(), &out_dir)) == 5
    })
    .await;
    assert!(all_ended, "{}", daemon.log_text());
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).await.is_some());
    stop.cancel();
    story(&daemon.log_text(), &out_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_and_run_tell_the_same_story() {
    let tmp = tempfile::tempdir().unwrap();
    let (demo, once, run) = tokio::join!(
        demo_story(tmp.path()),
        once_story(tmp.path()),
        run_story(tmp.path())
    );
    assert_eq!(demo.len(), 5, "five watches in the demo: {demo:#?}");
    assert_eq!(once, demo, "once and demo differ");
    assert_eq!(run, demo, "run and demo differ");
    // The story is the demo's: four results delivered (one a partial re-run), one failure.
    let all: Vec<&String> = demo.values().flatten().collect();
    let delivered = all
        .iter()
        .filter(|e| e.starts_with("summary.delivered"))
        .count();
    assert_eq!(delivered, 4, "{demo:#?}");
    assert!(
        all.iter()
            .any(|e| e.starts_with("summary.failed") && e.contains("SUMMARIZE_FAIL")),
        "{demo:#?}"
    );
}
