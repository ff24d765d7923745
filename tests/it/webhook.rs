//! Webhooks end to end: the daemon POSTs results and events to a receiver on loopback, the
//! signatures verify with an independent implementation (the Python verifier printed in
//! docs/events.md, run as is), `410 Gone` disables the sink with an event, other 4xx park.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::support::{Daemon, free_port, json_lines, run, scenewatch, start_sim, text, wait_for};

const SECRET: &str = "SK-webhook-test-8e21";
const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

type Seen = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

/// Once set, `/hook/bad` answers 204 too (the receiver was fixed).
static BAD_FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A receiver: `/hook/ok` answers 204, `/hook/gone` 410, `/hook/bad` 400 (until `BAD_FIXED`);
/// every request kept.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook/{kind}",
            post(
                |State(seen): State<Seen>,
                 UrlPath(kind): UrlPath<String>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    seen.lock().unwrap().push((kind.clone(), headers, body));
                    match kind.as_str() {
                        "gone" => StatusCode::GONE,
                        "bad" if !BAD_FIXED.load(std::sync::atomic::Ordering::SeqCst) => {
                            StatusCode::BAD_REQUEST
                        }
                        _ => StatusCode::NO_CONTENT,
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

fn scenario() -> String {
    format!(
        "seed = 5\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"1\"\nindex_id = \"1\"\nscenes = 4\nqueue = \"200ms\"\nrun = \"300ms\"\n"
    )
}

fn config(sim: &str, hooks: &str, dir: &Path, sinks: &str) -> String {
    format!(
        r#"state_dir = "{dir}/state"
[api]
endpoint = "{sim}"
access_key = "AK"
[poll]
initial_interval = "100ms"
max_interval = "300ms"
[server]
listen = "127.0.0.1:{port}"
[[event_sink]]
type = "jsonl"
path = "{dir}/events.jsonl"
[[event_sink]]
type = "webhook"
url = "{hooks}/hook/ok"
secret_env = "SCENEWATCH_TEST_HOOK_SECRET"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "1"
index_id = "1"
generation = "asset"
{sinks}"#,
        dir = dir.display(),
        port = free_port(),
    )
}

fn sink(name: &str, hooks: &str, kind: &str) -> String {
    format!(
        "[[sink]]\ntype = \"webhook\"\nname = \"{name}\"\nurl = \"{hooks}/hook/{kind}\"\nsecret_env = \"SCENEWATCH_TEST_HOOK_SECRET\"\n"
    )
}

/// The second Python block of docs/events.md: the documented verifier.
fn documented_verifier() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events.md"))
        .unwrap();
    let blocks: Vec<&str> = doc
        .split("```python\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let verifier = blocks
        .iter()
        .find(|b| b.contains("def verify("))
        .expect("docs/events.md has a verify() example");
    verifier.to_string()
}

/// Runs the documented verifier on one captured request; None when python3 is missing.
fn python_verifies(headers: &HeaderMap, body: &[u8]) -> Option<bool> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body"), body).unwrap();
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let script = format!(
        "{}\nimport sys\nheaders = {{'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]}}\nprint(verify(sys.argv[1], headers, open(sys.argv[5], 'rb').read()))\n",
        documented_verifier()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(HOOK_SECRET)
        .arg(h("webhook-id"))
        .arg(h("webhook-timestamp"))
        .arg(h("webhook-signature"))
        .arg(dir.path().join("body"))
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim() == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_documented_python_verifier() {
    let sim = start_sim(&scenario()).await;
    let (hooks, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&sim.url, &hooks, dir.path(), &sink("results", &hooks, "ok")),
    )
    .unwrap();
    let env = [
        ("SCENEWATCH__API__SECRET_KEY", SECRET),
        ("SCENEWATCH_TEST_HOOK_SECRET", HOOK_SECRET),
    ];
    let mut d = Daemon::start(&cfg, dir.path(), &env);
    let got = wait_for(Duration::from_secs(30), || {
        let s = seen.lock().unwrap();
        s.iter().any(|(_, h, _)| {
            h.get("content-type")
                .is_some_and(|c| c == "application/json")
        }) && s
            .iter()
            .filter(|(_, h, _)| {
                h.get("content-type")
                    .is_some_and(|c| c == "application/cloudevents+json")
            })
            .count()
            >= 3
    })
    .await;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert!(got, "{log}");
    assert!(
        !log.contains(HOOK_SECRET) && !log.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "webhook secret leaked"
    );
    let requests = seen.lock().unwrap().clone();
    for (_, headers, body) in &requests {
        let Some(ok) = python_verifies(headers, body) else {
            crate::support::skip(
                "python3 is not available to verify webhook signatures independently",
            );
            return;
        };
        assert!(ok, "signature did not verify: {headers:?}");
        // A changed body must not verify.
        let mut tampered = body.to_vec();
        tampered.extend_from_slice(b" ");
        assert_eq!(python_verifies(headers, &tampered), Some(false));
    }
    // The result POST carries the version id and the envelope, the result unchanged inside.
    let (_, h, body) = requests
        .iter()
        .find(|(_, h, _)| {
            h.get("content-type")
                .is_some_and(|c| c == "application/json")
        })
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        h.get("webhook-id").unwrap().to_str().unwrap(),
        envelope["version"].as_str().unwrap()
    );
    assert_eq!(
        envelope["result"]["sceneSummaries"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_sink_with_an_event_and_other_refusals_park() {
    let sim = start_sim(&scenario()).await;
    let (hooks, _seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let sinks = [
        sink("gone", &hooks, "gone"),
        sink("picky", &hooks, "bad"),
        sink("fine", &hooks, "ok"),
    ]
    .concat();
    std::fs::write(&cfg, config(&sim.url, &hooks, dir.path(), &sinks)).unwrap();
    let env = [
        ("SCENEWATCH__API__SECRET_KEY", SECRET),
        ("SCENEWATCH_TEST_HOOK_SECRET", HOOK_SECRET),
    ];
    let mut d = Daemon::start(&cfg, dir.path(), &env);
    let events = || json_lines(&dir.path().join("events.jsonl"));
    let settled = wait_for(Duration::from_secs(30), || {
        let ev = events();
        ev.iter()
            .any(|e| e["type"] == "com.scenewatch.sink.failing" && e["data"]["sink"] == "gone")
            && ev.iter().any(|e| {
                e["type"] == "com.scenewatch.summary.delivered" && e["data"]["sink"] == "fine"
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert!(settled, "{log}");
    assert!(log.contains("Sink disabled"), "{log}");
    assert!(log.contains("parked"), "{log}");
    // The refused version is kept and reported, not dropped.
    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(rows[0]["parkedDeliveries"], 1, "{}", text(&out));
    assert!(
        rows[0]["pendingDeliveries"].as_u64().unwrap() >= 1,
        "the disabled sink keeps its backlog"
    );
}
