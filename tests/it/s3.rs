//! The S3 sink against a real S3-protocol server that verifies SigV4 signatures (s3s-fs in CI,
//! started by `.ci/run`): what a delivery leaves there, idempotence, refused signatures, and a
//! server restart in the middle of a run.
//!
//! `SCENEWATCH_TEST_S3` is the endpoint URL (path-style), `SCENEWATCH_TEST_S3_ACCESS_KEY` /
//! `SCENEWATCH_TEST_S3_SECRET_KEY` its credentials, `SCENEWATCH_TEST_S3_BUCKET` an existing
//! bucket (default `scenewatch-test`). Unset, the tests that need it are compiled ignored
//! (build.rs turns `cfg(sw_test_s3)` on when it is set), so `cargo test` counts and names them.
//! The restart test starts its own `s3s-fs` (the binary `SCENEWATCH_TEST_S3S_FS` names; ignored
//! without it).

use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use scenewatch::config::S3SinkConfig;
use scenewatch::domain::WatchKey;
use scenewatch::ncp::SummaryResult;
use scenewatch::sink::s3::S3Sink;
use scenewatch::sink::{Delivery, Disposition, Sink};
use secrecy::SecretString;

/// The test server's coordinates.
#[derive(Clone)]
struct Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
}

fn server(test: &str) -> Option<Server> {
    // Without it these tests are compiled ignored: reaching here means one was asked for by
    // name, a failure saying what is missing.
    let Some(endpoint) = std::env::var("SCENEWATCH_TEST_S3")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        panic!(
            "{test} needs SCENEWATCH_TEST_S3 (an S3 endpoint URL; .ci/run starts s3s-fs and sets it)"
        );
    };
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    Some(Server {
        endpoint,
        access_key: var("SCENEWATCH_TEST_S3_ACCESS_KEY", "scenewatch"),
        secret_key: var("SCENEWATCH_TEST_S3_SECRET_KEY", "scenewatch-secret"),
        bucket: var("SCENEWATCH_TEST_S3_BUCKET", "scenewatch-test"),
    })
}

/// A prefix no other run or test shares.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it/{test}-{}-{nanos}", std::process::id())
}

fn sink_config(s: &Server, prefix: &str, secret: &str) -> S3SinkConfig {
    S3SinkConfig {
        name: "objects".into(),
        endpoint: Some(s.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: s.bucket.clone(),
        prefix: prefix.into(),
        path_style: true,
        access_key_id: s.access_key.clone(),
        secret_access_key: SecretString::from(secret.to_string()),
        // Generous: the machine may be busy compiling; the restart test sets its own.
        timeout: Duration::from_secs(10),
        allow_http: true,
    }
}

/// An independent client for reading back what the sink wrote.
fn reader(s: &Server) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(&s.endpoint)
        .with_region("us-east-1")
        .with_bucket_name(&s.bucket)
        .with_access_key_id(&s.access_key)
        .with_secret_access_key(&s.secret_key)
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// The API's `result` as it arrives (compact, with a non-ASCII description and escapes).
fn raw_result(last: &str, scenes: usize) -> String {
    let scenes: Vec<String> = (1..=scenes)
        .map(|n| {
            format!(
                r#"{{"scene":{n},"startMs":{},"endMs":{},"sceneSummary":{{"description":"장면 {n} \"quoted\"\n","metadataChangedAfterSummary":false,"analyzedAt":"{last}"}}}}"#,
                n * 1000,
                n * 1000 + 999
            )
        })
        .collect();
    format!(
        r#"{{"indexId":3001,"sceneSummaryInfo":{{"lastAnalyzedAt":"{last}","analyzedSceneIds":null}},"sceneSummaries":[{}]}}"#,
        scenes.join(",")
    )
}

fn delivery(last: &str, scenes: usize) -> Delivery {
    let key = WatchKey::new("demo", "100", "2001", "3001").unwrap();
    let result = SummaryResult::from_result_json(raw_result(last, scenes)).unwrap();
    Delivery::new(key, Arc::new(result), SystemTime::now()).unwrap()
}

async fn get(store: &AmazonS3, key: &str) -> Vec<u8> {
    store
        .get(&Path::from(key))
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn keys_under(store: &AmazonS3, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let mut keys: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Checks the object at `key` is the documented envelope of `d`, its `result` byte-identical.
async fn assert_envelope(store: &AmazonS3, key: &str, d: &Delivery) {
    let body = get(store, key).await;
    assert_eq!(body, d.envelope_json_compact().unwrap(), "{key}");
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Envelope<'a> {
        version: String,
        last_analyzed_at: String,
        scene_count: usize,
        #[serde(borrow)]
        result: &'a serde_json::value::RawValue,
    }
    let e: Envelope = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.version, d.version_id.as_str());
    assert_eq!(e.last_analyzed_at, d.last_analyzed_at);
    assert_eq!(e.scene_count, d.result.scene_count);
    assert_eq!(e.result.get(), d.result.raw.get());
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_s3),
    ignore = "needs SCENEWATCH_TEST_S3 (an S3 endpoint that checks signatures); .ci/run sets it"
)]
async fn s3_delivered_versions_are_readable_as_documented() {
    let Some(s) = server("s3_delivered_versions_are_readable_as_documented") else {
        return;
    };
    let prefix = unique_prefix("documented");
    let sink = S3Sink::new(&sink_config(&s, &prefix, &s.secret_key)).unwrap();
    sink.healthcheck().await.unwrap();
    let store = reader(&s);
    let watch = format!("{prefix}/demo/100/2001/3001");

    let v1 = delivery("2026-11-24T08:55:39", 3);
    let receipt = sink.deliver(&v1).await.unwrap();
    assert_eq!(
        receipt.location,
        format!("s3://{}/{watch}/2026-11-24T08:55:39.json", s.bucket)
    );
    assert_envelope(&store, &format!("{watch}/2026-11-24T08:55:39.json"), &v1).await;
    assert_envelope(&store, &format!("{watch}/latest.json"), &v1).await;
    let meta = store
        .get(&Path::from(format!("{watch}/latest.json")))
        .await
        .unwrap();
    assert_eq!(
        meta.attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/json")
    );

    // A later version: kept beside the first, and latest.json follows it.
    let v2 = delivery("2026-11-25T01:00:00", 4);
    sink.deliver(&v2).await.unwrap();
    assert_envelope(&store, &format!("{watch}/2026-11-24T08:55:39.json"), &v1).await;
    assert_envelope(&store, &format!("{watch}/2026-11-25T01:00:00.json"), &v2).await;
    assert_envelope(&store, &format!("{watch}/latest.json"), &v2).await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_s3),
    ignore = "needs SCENEWATCH_TEST_S3 (an S3 endpoint that checks signatures); .ci/run sets it"
)]
async fn s3_an_older_version_delivered_late_leaves_latest_json_alone() {
    let Some(s) = server("s3_an_older_version_delivered_late_leaves_latest_json_alone") else {
        return;
    };
    let prefix = unique_prefix("late");
    let sink = S3Sink::new(&sink_config(&s, &prefix, &s.secret_key)).unwrap();
    let store = reader(&s);
    let watch = format!("{prefix}/demo/100/2001/3001");
    let latest = format!("{watch}/latest.json");
    let a = delivery("2026-11-24T08:55:39", 2);
    let b = delivery("2026-11-25T01:00:00", 3);

    // B is delivered while A waits out a backoff; then A's retry lands.
    sink.deliver(&b).await.unwrap();
    let receipt = sink.deliver(&a).await.unwrap();
    assert_eq!(
        receipt.location,
        format!("s3://{}/{watch}/2026-11-24T08:55:39.json", s.bucket),
        "the older version is delivered to its own object"
    );
    assert_envelope(&store, &format!("{watch}/2026-11-24T08:55:39.json"), &a).await;
    assert_envelope(&store, &format!("{watch}/2026-11-25T01:00:00.json"), &b).await;
    assert_envelope(&store, &latest, &b).await;
    // What latest.json holds is in its metadata, for a HEAD to read.
    let head = store
        .get_opts(
            &Path::from(latest.as_str()),
            object_store::GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let meta = |k: &'static str| {
        head.attributes
            .get(&object_store::Attribute::Metadata(k.into()))
            .map(|v| v.as_ref().to_string())
    };
    assert_eq!(meta("scenewatch-version"), Some(b.version_id.to_string()));
    assert_eq!(
        meta("scenewatch-last-analyzed-at"),
        Some(b.last_analyzed_at.clone())
    );

    // A latest.json written without the metadata (by an earlier scenewatch) is read instead.
    store
        .put_opts(
            &Path::from(latest.as_str()),
            b.envelope_json_compact().unwrap().into(),
            object_store::PutOptions::default(),
        )
        .await
        .unwrap();
    sink.deliver(&a).await.unwrap();
    assert_envelope(&store, &latest, &b).await;

    // A newer version still moves it forward.
    let c = delivery("2026-11-26T00:00:00", 1);
    sink.deliver(&c).await.unwrap();
    assert_envelope(&store, &latest, &c).await;
    assert_eq!(keys_under(&store, &prefix).await.len(), 4);
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_s3),
    ignore = "needs SCENEWATCH_TEST_S3 (an S3 endpoint that checks signatures); .ci/run sets it"
)]
async fn s3_same_version_twice_leaves_one_copy() {
    let Some(s) = server("s3_same_version_twice_leaves_one_copy") else {
        return;
    };
    let prefix = unique_prefix("twice");
    let sink = S3Sink::new(&sink_config(&s, &prefix, &s.secret_key)).unwrap();
    let store = reader(&s);
    let d = delivery("2026-11-24T08:55:39", 2);
    let first = sink.deliver(&d).await.unwrap();
    let second = sink.deliver(&d).await.unwrap();
    assert_eq!(first, second);
    let watch = format!("{prefix}/demo/100/2001/3001");
    assert_eq!(
        keys_under(&store, &prefix).await,
        [
            format!("{watch}/2026-11-24T08:55:39.json"),
            format!("{watch}/latest.json")
        ]
    );
    assert_envelope(&store, &format!("{watch}/latest.json"), &d).await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_s3),
    ignore = "needs SCENEWATCH_TEST_S3 (an S3 endpoint that checks signatures); .ci/run sets it"
)]
async fn s3_wrong_secret_is_refused_retried_and_never_printed() {
    let Some(s) = server("s3_wrong_secret_is_refused_retried_and_never_printed") else {
        return;
    };
    let prefix = unique_prefix("badkey");
    let bad = "wr0ng-s3cret-value";
    let sink = S3Sink::new(&sink_config(&s, &prefix, bad)).unwrap();
    let err = sink
        .deliver(&delivery("2026-11-24T08:55:39", 1))
        .await
        .unwrap_err();
    assert_eq!(err.disposition, Disposition::Retry, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("check access_key_id"), "{msg}");
    assert!(!msg.contains(bad), "{msg}");
    assert!(!format!("{err:?}{sink:?}").contains(bad));
    let err = sink.healthcheck().await.unwrap_err();
    assert!(!err.to_string().contains(bad), "{err}");
    // Nothing was written with the refused signature.
    assert!(keys_under(&reader(&s), &prefix).await.is_empty());

    // A bucket that does not exist: the healthcheck (what readiness uses) says which. (s3s-fs
    // creates a missing bucket's directory on PUT, where S3 answers NoSuchBucket, so only the
    // listing is checked here.)
    let mut missing = s.clone();
    missing.bucket = "scenewatch-no-such-bucket".into();
    let sink = S3Sink::new(&sink_config(&missing, &prefix, &s.secret_key)).unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    assert_eq!(err.disposition, Disposition::Retry, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("scenewatch-no-such-bucket"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
}

/// The s3s-fs binary `SCENEWATCH_TEST_S3S_FS` names, or (when the test was asked for by name
/// without it) one on PATH or where `cargo install` puts it.
fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCENEWATCH_TEST_S3S_FS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// One s3s-fs process; killed when dropped.
struct S3sFs(Child);

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_s3s_fs(bin: &FsPath, root: &FsPath, port: u16, s: &Server) -> S3sFs {
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", &s.access_key, "--secret-key", &s.secret_key])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = S3sFs(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s3s-fs did not listen on 127.0.0.1:{port}");
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_s3s_fs),
    ignore = "needs SCENEWATCH_TEST_S3S_FS (the path of an s3s-fs binary); .ci/run sets it"
)]
async fn s3_server_stopped_mid_run_and_restarted_loses_nothing() {
    let Some(bin) = s3s_fs_binary() else {
        panic!(
            "needs SCENEWATCH_TEST_S3S_FS (the path of an s3s-fs binary; none on PATH or in \
             ~/.cargo/bin either; cargo install --locked s3s-fs@0.14.1 --features binary)"
        );
    };
    let root = tempfile::tempdir().unwrap();
    // s3s-fs serves each directory under its root as a bucket.
    std::fs::create_dir(root.path().join("restart")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: "restart-ak".into(),
        secret_key: "restart-sk-s3cret".into(),
        bucket: "restart".into(),
    };
    let mut config = sink_config(&s, "p", &s.secret_key);
    config.timeout = Duration::from_secs(3);
    let sink = S3Sink::new(&config).unwrap();
    let versions: Vec<Delivery> = (0..4)
        .map(|i| delivery(&format!("2026-11-24T08:55:0{i}"), 2))
        .collect();

    let server = start_s3s_fs(&bin, root.path(), port, &s).await;
    sink.deliver(&versions[0]).await.unwrap();
    sink.deliver(&versions[1]).await.unwrap();
    drop(server);

    // Down: the delivery fails in bounded time, as a retry, naming the endpoint.
    let started = std::time::Instant::now();
    let err = sink.deliver(&versions[2]).await.unwrap_err();
    assert_eq!(err.disposition, Disposition::Retry, "{err}");
    assert!(err.to_string().contains(&s.endpoint), "{err}");
    assert!(!err.to_string().contains(&s.secret_key), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(sink.healthcheck().await.is_err());

    // Back on the same port and root: the retried delivery and the next go through, and
    // nothing written before the stop is lost.
    let _server = start_s3s_fs(&bin, root.path(), port, &s).await;
    sink.healthcheck().await.unwrap();
    sink.deliver(&versions[2]).await.unwrap();
    sink.deliver(&versions[3]).await.unwrap();
    let store = reader(&s);
    let watch = "p/demo/100/2001/3001";
    let mut want: Vec<String> = versions
        .iter()
        .map(|v| format!("{watch}/{}.json", v.last_analyzed_at))
        .collect();
    want.push(format!("{watch}/latest.json"));
    assert_eq!(keys_under(&store, "p").await, want);
    for v in &versions {
        assert_envelope(&store, &format!("{watch}/{}.json", v.last_analyzed_at), v).await;
    }
    assert_envelope(&store, &format!("{watch}/latest.json"), &versions[3]).await;
}
