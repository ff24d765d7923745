//! Benchmark of the result sinks (not a test: it prints figures, asserts nothing): the wall time
//! and peak memory to deliver one 20,000-scene result to each sink that can run here.
//!
//! Peak RSS (`VmHWM` in /proc/self/status) is process-wide and never goes down by itself, so
//! each sink is measured in a fresh child process: the bench runs itself again with
//! `--child SINK`. A child builds the result (as the outbox does:
//! `SummaryResult::from_result_json` of the stored text), resets the peak to the current RSS
//! (`/proc/self/clear_refs`), prepares the sink (healthcheck: for PostgreSQL, connecting and
//! migrating), then times the first delivery and a repeated one (the idempotent path). What a
//! delivery adds is the peak after the deliveries minus the RSS before them. The `none` row only
//! builds the result.
//!
//! Sinks: `file`, `jsonl` always; `postgres` when `SCENEWATCH_TEST_PG` is set (a schema
//! `sw_bench_<pid>` is created and dropped); `s3` and `nats` when `SCENEWATCH_TEST_S3` and
//! `SCENEWATCH_TEST_NATS` are set (see `s3` and `nats` below for what they measure). To add one,
//! write a `fn x(dir) -> Prepared` next to `postgres` below and list it in `SINKS`; it can skip
//! itself when its server is not configured. The PostgreSQL, S3 and NATS sinks are cargo
//! features: a build without one reports it skipped.
//!
//! Run: `cargo bench --bench sinks`. Knobs: `SCENEWATCH_BENCH_SCENES` (default 20000).
//! Results and their reading: docs/benchmarks.md, "Sinks".

#![allow(
    clippy::disallowed_methods,
    reason = "these drive the real binary in real time; clippy.toml's clock rule is for the crate"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
#[cfg(feature = "postgres")]
use scenewatch::config::PostgresSinkConfig;
use scenewatch::config::{FileSinkConfig, JsonlSinkConfig};
use scenewatch::domain::WatchKey;
use scenewatch::ncp::SummaryResult;
use scenewatch::sink::{Delivery, Sink};

/// A sink ready to measure, what to do afterwards, or why it cannot run here.
enum Prepared {
    Ready {
        sink: Arc<dyn Sink>,
        cleanup: Option<BoxFuture<'static, ()>>,
    },
    Skip(String),
}

type Setup = fn(&Path) -> Prepared;

/// Every sink the bench knows, in the order measured.
const SINKS: &[(&str, Setup)] = &[
    ("none", |_| Prepared::Skip(String::new())),
    ("file", file),
    ("jsonl", jsonl),
    ("postgres", postgres),
    ("webhook", webhook),
    ("s3", s3),
    ("nats", nats),
];

fn file(dir: &Path) -> Prepared {
    Prepared::Ready {
        sink: Arc::new(scenewatch::sink::file::FileSink::new(FileSinkConfig {
            name: "file".into(),
            dir: dir.join("results"),
            keep_versions: false,
        })),
        cleanup: None,
    }
}

fn jsonl(dir: &Path) -> Prepared {
    Prepared::Ready {
        sink: Arc::new(scenewatch::sink::jsonl::JsonlSink::new(&JsonlSinkConfig {
            name: "jsonl".into(),
            path: dir.join("results.jsonl"),
            max_bytes: 1 << 30,
            keep_files: 1,
        })),
        cleanup: None,
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &Path) -> Prepared {
    Prepared::Skip("built without the `postgres` feature".into())
}

#[cfg(feature = "postgres")]
fn postgres(_: &Path) -> Prepared {
    let url = match std::env::var("SCENEWATCH_TEST_PG") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => return Prepared::Skip("SCENEWATCH_TEST_PG is not set".into()),
    };
    let schema = format!("sw_bench_{}", std::process::id());
    let config = PostgresSinkConfig {
        name: "postgres".into(),
        url: url.clone(),
        password: None,
        schema: schema.clone(),
        pool_size: 2,
        timeout: Duration::from_secs(60),
        ca_file: None,
    };
    let sink = match scenewatch::sink::postgres::PostgresSink::new(&config) {
        Ok(s) => s,
        Err(e) => return Prepared::Skip(e.to_string()),
    };
    Prepared::Ready {
        sink: Arc::new(sink),
        cleanup: Some(Box::pin(async move {
            let Ok(t) = scenewatch::sink::postgres::parse_url(&url) else {
                return;
            };
            if let Ok((client, conn)) = t.pg.connect(tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
            }
        })),
    }
}

/// `webhook`: a POST to a minimal receiver on loopback, in a thread of the child, that reads the
/// body in 64 KiB pieces and drops it (so the receiver adds no memory of its own) and answers
/// 204. What is measured is the sink: the envelope, the signature over it, and the upload.
fn webhook(_: &Path) -> Prepared {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return Prepared::Skip(format!("cannot bind a receiver: {e}")),
    };
    let Ok(addr) = listener.local_addr() else {
        return Prepared::Skip("no receiver address".into());
    };
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(write) = stream.try_clone() else {
                continue;
            };
            let mut write = write;
            let mut reader = BufReader::new(stream);
            // Requests on one keep-alive connection, one after the other.
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                let mut saw_request = false;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    saw_request = true;
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                if !saw_request {
                    break;
                }
                let mut buf = vec![0u8; 64 * 1024];
                while length > 0 {
                    let n = buf.len().min(length);
                    if reader.read_exact(&mut buf[..n]).is_err() {
                        return;
                    }
                    length -= n;
                }
                if write
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let config = scenewatch::config::WebhookSinkConfig {
        name: "webhook".into(),
        url: format!("http://{addr}/hook"),
        secret: "bench-webhook-secret".to_string().into(),
        timeout: Duration::from_secs(60),
    };
    match scenewatch::sink::webhook::WebhookSink::new(&config) {
        Ok(s) => Prepared::Ready {
            sink: Arc::new(s),
            cleanup: None,
        },
        Err(e) => Prepared::Skip(e.to_string()),
    }
}

#[cfg(not(feature = "s3"))]
fn s3(_: &Path) -> Prepared {
    Prepared::Skip("built without the `s3` feature".into())
}

/// `s3` when `SCENEWATCH_TEST_S3` is set (the tests' variables; objects go under `bench-<pid>/`).
#[cfg(feature = "s3")]
fn s3(_: &Path) -> Prepared {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let endpoint = var("SCENEWATCH_TEST_S3", "");
    if endpoint.trim().is_empty() {
        return Prepared::Skip("SCENEWATCH_TEST_S3 is not set".into());
    }
    let config = scenewatch::config::S3SinkConfig {
        name: "s3".into(),
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        bucket: var("SCENEWATCH_TEST_S3_BUCKET", "scenewatch-test"),
        prefix: format!("bench-{}", std::process::id()),
        path_style: true,
        access_key_id: var("SCENEWATCH_TEST_S3_ACCESS_KEY", "scenewatch"),
        secret_access_key: var("SCENEWATCH_TEST_S3_SECRET_KEY", "scenewatch-secret").into(),
        timeout: Duration::from_secs(60),
        allow_http: true,
    };
    match scenewatch::sink::s3::S3Sink::new(&config) {
        Ok(s) => Prepared::Ready {
            sink: Arc::new(s),
            cleanup: None,
        },
        Err(e) => Prepared::Skip(e.to_string()),
    }
}

#[cfg(not(feature = "nats"))]
fn nats(_: &Path) -> Prepared {
    Prepared::Skip("built without the `nats` feature".into())
}

/// `nats` when `SCENEWATCH_TEST_NATS` is set. NATS takes events, not results, so "delivering"
/// sends as many events as the result has scenes (an event backlog of that size), each awaited
/// to its PubAck; "again" sends them once more, all acknowledged as duplicates. The stream
/// `SWBENCH_<pid>` is deleted afterwards.
#[cfg(feature = "nats")]
fn nats(_: &Path) -> Prepared {
    use scenewatch::events::Event;
    use scenewatch::sink::nats::NatsSink;
    use scenewatch::sink::{EventSink, Receipt, SinkError};
    struct Events(NatsSink);
    impl Sink for Events {
        fn name(&self) -> &str {
            "nats"
        }
        fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
            Box::pin(async move {
                let events: Vec<Event> = (0..d.result.scene_count)
                    .map(|i| Event::delivered(&d.key, &d.version_id, &format!("s{i}"), "-", 0))
                    .collect();
                self.0.send(&events).await?;
                let location = format!("{} events", events.len());
                Ok(Receipt { location })
            })
        }
        fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
            EventSink::healthcheck(&self.0)
        }
    }
    let url = match std::env::var("SCENEWATCH_TEST_NATS") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => return Prepared::Skip("SCENEWATCH_TEST_NATS is not set".into()),
    };
    let stream = format!("SWBENCH_{}", std::process::id());
    let config = scenewatch::config::NatsEventSinkConfig {
        name: "nats".into(),
        urls: vec![url.clone()],
        subject: format!("swbench.{}.{{type}}", std::process::id()),
        stream: stream.clone(),
        create_stream: true,
        credentials_file: None,
        token: None,
        timeout: Duration::from_secs(30),
    };
    match NatsSink::new(&config) {
        Ok(s) => Prepared::Ready {
            sink: Arc::new(Events(s)),
            cleanup: Some(Box::pin(async move {
                if let Ok(c) = async_nats::connect(url).await {
                    let _ = async_nats::jetstream::new(c).delete_stream(stream).await;
                }
            })),
        },
        Err(e) => Prepared::Skip(e.to_string()),
    }
}

/// `result` text of `n` scenes with summaries of typical length (4–6 sentences), every tenth
/// marked stale, every fiftieth never analyzed. Written straight into one string, so building it
/// costs little more memory than the text itself.
fn result_text(n: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(n * 500 + 200);
    out.push_str(
        r#"{"indexId":1001,"sceneSummaryInfo":{"lastAnalyzedAt":"2026-04-17T10:30:00","analyzedSceneIds":null},"sceneSummaries":["#,
    );
    for i in 1..=n {
        if i > 1 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"scene":{i},"startMs":{},"endMs":{}"#,
            i * 4000,
            i * 4000 + 3999
        );
        if i % 50 != 0 {
            let _ = write!(
                out,
                r#","sceneSummary":{{"description":"Scene {i}. The presenter walks across the studio towards the guest, who is seated by the window. They exchange greetings and the guest says \"it has been a long year\". The camera cuts to archive footage of the harbour at dusk. A caption names the location and the year. Applause is heard.","metadataChangedAfterSummary":{},"analyzedAt":"2026-04-17T10:30:00"}}"#,
                i % 10 == 0
            );
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Resets the process's peak RSS to its current RSS (Linux ≥ 4.0: `5` to `clear_refs`), so the
/// peak read later is the delivery's, not the result building's. False where that is refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `/proc/self/status` field in kB (0 where there is no /proc).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// One measurement, in a process of its own; prints one `RESULT` or `SKIP` line:
/// `RESULT name build_ms setup_ms deliver_ms again_ms rss_before_kb peak_kb peak_was_reset`.
fn child(name: &str, scenes: usize) {
    let Some((_, setup)) = SINKS.iter().find(|(n, _)| *n == name) else {
        println!("SKIP {name} unknown sink");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    rt.block_on(async {
        let t = Instant::now();
        let text = result_text(scenes);
        let result = SummaryResult::from_result_json(text).expect("the generated result parses");
        let key = WatchKey::new("bench", "p", "a", "1001").unwrap();
        let d = Delivery::new(key, Arc::new(result), SystemTime::now()).expect("completed");
        let build = ms(t.elapsed());
        let prepared = setup(dir.path());
        let before = status_kb("VmRSS");
        let reset = reset_peak();
        let (sink, cleanup) = match prepared {
            Prepared::Ready { sink, cleanup } => (sink, cleanup),
            Prepared::Skip(_) if name == "none" => {
                let peak = status_kb("VmHWM");
                println!("RESULT none {build} - - - {before} {peak} {reset}");
                return;
            }
            Prepared::Skip(why) => {
                println!("SKIP {name} {why}");
                return;
            }
        };
        let t = Instant::now();
        if let Err(e) = sink.healthcheck().await {
            println!("SKIP {name} healthcheck failed: {e}");
            return;
        }
        let setup_time = ms(t.elapsed());
        let t = Instant::now();
        let first = sink.deliver(&d).await;
        let first_time = ms(t.elapsed());
        let t = Instant::now();
        let again = sink.deliver(&d).await;
        let again_time = ms(t.elapsed());
        let peak = status_kb("VmHWM");
        if let Some(c) = cleanup {
            c.await;
        }
        match (first, again) {
            (Ok(_), Ok(_)) => println!(
                "RESULT {name} {build} {setup_time} {first_time} {again_time} {before} {peak} {reset}"
            ),
            (Err(e), _) | (_, Err(e)) => println!("SKIP {name} delivery failed: {e}"),
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenes: usize = std::env::var("SCENEWATCH_BENCH_SCENES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(20_000);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args.get(i + 1).map(String::as_str).unwrap_or(""), scenes);
        return;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    println!("Delivering one {scenes}-scene result to each sink, each in a fresh process.");
    let header = [
        "sink",
        "build ms",
        "setup ms",
        "deliver ms",
        "again ms",
        "RSS before MiB",
        "peak MiB",
        "delivery adds MiB",
    ];
    println!("{}", row(&header.map(String::from)));
    let mut all_reset = true;
    for (name, _) in SINKS {
        let out = match Command::new(&exe).args(["--child", name]).output() {
            Ok(o) => o,
            Err(e) => {
                println!("{name:<10} cannot run the child process: {e}");
                continue;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout
            .lines()
            .find(|l| l.starts_with("RESULT ") || l.starts_with("SKIP "))
        else {
            println!(
                "{name:<10} the child printed no result: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "SKIP" || f.len() < 9 {
            println!(
                "{name:<10} skipped: {}",
                f.get(2..).unwrap_or_default().join(" ")
            );
            continue;
        }
        let kb = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        let mib = |v: f64| format!("{:.1}", v / 1024.0);
        let (before, peak) = (kb(f[6]), kb(f[7]));
        all_reset &= f[8] == "true";
        println!(
            "{}",
            row(&[
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
                f[5].to_string(),
                mib(before),
                mib(peak),
                mib((peak - before).max(0.0)),
            ])
        );
    }
    println!(
        "build: generating and parsing the result (not part of a delivery); setup: healthcheck \
         (PostgreSQL: connect, migrate); deliver: the first delivery; again: the same version \
         again (the idempotent path); RSS before: the child's RSS holding the parsed result; \
         peak: its VmHWM after the deliveries; delivery adds: peak minus RSS before."
    );
    if !all_reset {
        println!(
            "note: /proc/self/clear_refs refused to reset the peak, so peaks include building \
             the result; compare a row with `none` instead."
        );
    }
}

fn row(cells: &[String]) -> String {
    let widths = [10, 9, 9, 10, 9, 15, 9, 18];
    cells
        .iter()
        .zip(widths)
        .enumerate()
        .map(|(i, (c, w))| {
            if i == 0 {
                format!("{c:<w$}")
            } else {
                format!("{c:>w$}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
