//! The NATS JetStream event sink against a real nats-server with JetStream: what a consumer
//! reads, duplicates dropped by `Nats-Msg-Id`, and a server stopped and restarted mid-run.
//!
//! `SCENEWATCH_TEST_NATS` is the server URL (`nats://127.0.0.1:4222` in CI); unset, the tests
//! that need it are compiled ignored (build.rs turns `cfg(sw_test_nats)` on when it is set), so
//! `cargo test` counts and names them. Tests on the shared server use a stream and subjects of
//! their own and delete the stream at the end. The restart test starts its own nats-server (the
//! binary `SCENEWATCH_TEST_NATS_SERVER` names; ignored without it) on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use scenewatch::config::NatsEventSinkConfig;
use scenewatch::domain::WatchKey;
use scenewatch::events::Event;
use scenewatch::sink::nats::{NatsSink, subject_for};
use scenewatch::sink::{Disposition, EventSink};

/// The server's URL. Without `SCENEWATCH_TEST_NATS` these tests are compiled ignored, so
/// reaching here without it means the test was asked for by name: a failure saying so.
fn server(test: &str) -> Option<String> {
    match std::env::var("SCENEWATCH_TEST_NATS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => panic!(
            "{test} needs SCENEWATCH_TEST_NATS (the nats:// URL of a server with JetStream; \
             .ci/run sets nats://127.0.0.1:4222)"
        ),
    }
}

/// A token no other run or test shares, usable in stream names and subjects.
fn unique(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}_{}_{nanos}", std::process::id())
}

fn config(url: &str, tag: &str) -> NatsEventSinkConfig {
    NatsEventSinkConfig {
        name: "bus".into(),
        urls: vec![url.to_string()],
        subject: format!("swtest.{tag}.{{type}}"),
        stream: format!("SWTEST_{tag}"),
        create_stream: true,
        credentials_file: None,
        token: None,
        // Generous: the machine may be busy compiling; the restart test sets its own.
        timeout: Duration::from_secs(10),
    }
}

fn events(n: u64, salt: &str) -> Vec<Event> {
    let key = WatchKey::new("demo", "100", "2001", "3001").unwrap();
    (0..n)
        .map(|i| match i % 3 {
            0 => Event::completed(
                &key,
                &format!("{salt}v{i}"),
                "2026-11-24T08:55:39",
                i,
                None,
                i,
            ),
            1 => Event::delivered(&key, &format!("{salt}v{i}"), "files", "/tmp/x.json", i),
            _ => Event::sink_recovered(&format!("{salt}s{i}"), i, i),
        })
        .collect()
}

/// Every message of the stream, in order.
async fn read_stream(url: &str, stream: &str) -> Vec<jetstream::message::StreamMessage> {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    let state = s.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        out.push(s.get_raw_message(seq).await.unwrap());
    }
    out
}

async fn delete_stream(url: &str, stream: &str) {
    if let Ok(client) = async_nats::connect(url).await {
        let _ = jetstream::new(client).delete_stream(stream).await;
    }
}

fn header<'m>(m: &'m jetstream::message::StreamMessage, name: &str) -> &'m str {
    m.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .as_str()
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_nats),
    ignore = "needs SCENEWATCH_TEST_NATS (a NATS server with JetStream); .ci/run sets it"
)]
async fn nats_events_arrive_as_documented() {
    let Some(url) = server("nats_events_arrive_as_documented") else {
        return;
    };
    let tag = unique("doc");
    let c = config(&url, &tag);
    let sink = NatsSink::new(&c).unwrap();
    sink.healthcheck().await.unwrap();
    let sent = events(5, "doc");
    sink.send(&sent).await.unwrap();

    let got = read_stream(&url, &c.stream).await;
    assert_eq!(got.len(), sent.len());
    for (m, e) in got.iter().zip(&sent) {
        assert_eq!(m.subject.as_str(), subject_for(&c.subject, e.kind));
        assert!(
            m.subject.starts_with(&format!("swtest.{tag}.summary."))
                || m.subject.starts_with(&format!("swtest.{tag}.sink."))
        );
        assert_eq!(header(m, "Nats-Msg-Id"), e.id);
        assert_eq!(header(m, "Content-Type"), "application/cloudevents+json");
        assert_eq!(m.payload.as_ref(), e.to_cloudevent_bytes());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(Event::from_cloudevent(&v).as_ref(), Some(e));
    }
    delete_stream(&url, &c.stream).await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_nats),
    ignore = "needs SCENEWATCH_TEST_NATS (a NATS server with JetStream); .ci/run sets it"
)]
async fn nats_same_events_twice_are_stored_once() {
    let Some(url) = server("nats_same_events_twice_are_stored_once") else {
        return;
    };
    let c = config(&url, &unique("twice"));
    let sink = NatsSink::new(&c).unwrap();
    let sent = events(4, "twice");
    sink.send(&sent).await.unwrap();
    // A replayed batch (the outbox after a crash) is acknowledged as duplicates: success.
    sink.send(&sent).await.unwrap();
    sink.send(&sent[1..3]).await.unwrap();
    let got = read_stream(&url, &c.stream).await;
    let ids: Vec<&str> = got.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
    let want: Vec<&str> = sent.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want);
    delete_stream(&url, &c.stream).await;
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_nats),
    ignore = "needs SCENEWATCH_TEST_NATS (a NATS server with JetStream); .ci/run sets it"
)]
async fn nats_missing_stream_without_create_is_retried_with_a_hint() {
    let Some(url) = server("nats_missing_stream_without_create_is_retried_with_a_hint") else {
        return;
    };
    let mut c = config(&url, &unique("nostream"));
    c.create_stream = false;
    let sink = NatsSink::new(&c).unwrap();
    let err = sink.send(&events(1, "nostream")).await.unwrap_err();
    assert_eq!(err.disposition, Disposition::Retry, "{err}");
    assert!(err.to_string().contains(&c.stream), "{err}");
    assert!(err.to_string().contains("create_stream"), "{err}");
    assert!(sink.healthcheck().await.is_err());
}

/// The nats-server binary `SCENEWATCH_TEST_NATS_SERVER` names, or (when the test was asked for
/// by name without it) one on PATH or in /usr/sbin.
fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCENEWATCH_TEST_NATS_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/sbin/nats-server"));
    candidates.into_iter().find(|p| p.is_file())
}

/// One nats-server process; killed when dropped.
struct NatsServer(Child);

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_nats(bin: &Path, store: &Path, port: u16) -> NatsServer {
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = NatsServer(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not listen on 127.0.0.1:{port}");
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_nats_server),
    ignore = "needs SCENEWATCH_TEST_NATS_SERVER (the path of a nats-server binary); .ci/run sets it"
)]
async fn nats_server_stopped_mid_run_and_restarted_loses_nothing() {
    let Some(bin) = nats_server_binary() else {
        panic!(
            "needs SCENEWATCH_TEST_NATS_SERVER (the path of a nats-server binary; none on PATH \
             or in /usr/sbin either; apt-get install nats-server)"
        );
    };
    let store = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("nats://127.0.0.1:{port}");
    let mut c = config(&url, "restart");
    c.timeout = Duration::from_secs(2);
    let sink = NatsSink::new(&c).unwrap();
    let before = events(6, "before");
    let during = events(6, "during");

    let server = start_nats(&bin, store.path(), port).await;
    sink.send(&before).await.unwrap();
    drop(server);

    // Down: the batch fails as a retry, in bounded time, instead of hanging.
    let started = std::time::Instant::now();
    let err = sink.send(&during).await.unwrap_err();
    assert_eq!(err.disposition, Disposition::Retry, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // Back with the same store: the outbox retries the failed batch until it is acknowledged.
    let _server = start_nats(&bin, store.path(), port).await;
    let mut last = None;
    for _ in 0..40 {
        match sink.send(&during).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert!(last.is_none(), "never recovered: {last:?}");

    // Every event once: none of the first batch lost, none of the second doubled (some of it
    // may have reached the server from the client's reconnect buffer before the retry).
    let got = read_stream(&url, &c.stream).await;
    let mut ids: Vec<&str> = got.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
    let mut want: Vec<&str> = before
        .iter()
        .chain(&during)
        .map(|e| e.id.as_str())
        .collect();
    ids.sort_unstable();
    want.sort_unstable();
    assert_eq!(ids, want);
}
