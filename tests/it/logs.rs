//! The log lines as the journal and log shippers read them: under journald, records on its
//! native socket with priorities and fields of their own, or (without the socket) the sd-daemon
//! priority prefixes on the stream (per level); and one schema across verbs (a field name has one JSON type in
//! every line of `once` and of the daemon).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Daemon, start_sim, wait_for, watch, watcher_config};

const SECRET: &str = "SK-logs-71c2";

fn scenario() -> String {
    format!(
        r#"seed = 5
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
queue = "100ms"
run = "300ms"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "11"
index_id = "21"
scenes = 4
queue = "100ms"
run = "200ms"
rerun_scene_ids = [2]

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "12"
index_id = "22"
scenes = 2
queue = "100ms"
run = "200ms"
outcome = "failed"
"#
    )
}

fn watches() -> String {
    [
        watch("10", "20", Some("30"), "index"),
        watch("11", "21", None, "asset"),
        watch("12", "22", None, "asset"),
    ]
    .concat()
}

/// A receiver that refuses every request with 400: its deliveries are parked, an error line.
async fn refusing_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app =
        axum::Router::new().fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, "no") });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

/// `scenewatch once --config cfg` with stdout into `out` and `JOURNAL_STREAM` set by
/// `journal_stream` (given the file's metadata); debug logs of scenewatch.
async fn once_into(
    cfg: &Path,
    out: &Path,
    journal_stream: impl Fn(&std::fs::Metadata) -> String,
    journal_socket: &Path,
) -> i32 {
    let file = std::fs::File::create(out).unwrap();
    let stream = journal_stream(&file.metadata().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenewatch"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCENEWATCH") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SCENEWATCH__API__SECRET_KEY", SECRET)
        .env("RUST_LOG", "scenewatch=debug")
        .env("JOURNAL_STREAM", stream)
        .env("SCENEWATCH_JOURNAL_SOCKET", journal_socket)
        .args(["once", "--timeout", "20s", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.status().unwrap().code().unwrap_or(-1))
        .await
        .unwrap()
}

/// The simulator, a configuration in a new directory with the watches and a webhook sink that
/// refuses everything (so `once` logs at every level, an error included).
async fn with_a_refusing_webhook() -> (crate::support::Sim, tempfile::TempDir, std::path::PathBuf) {
    let sim = start_sim(&scenario()).await;
    let hook = refusing_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let extra = format!(
        "[[sink]]\ntype = \"webhook\"\nurl = \"{hook}\"\nsecret = \"whsec_aGVsbG8td29ybGQtMTIzNDU2Nzg5MA==\"\n{}",
        watches()
    );
    std::fs::write(&cfg, watcher_config(&sim.url, dir.path(), &extra)).unwrap();
    (sim, dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_every_line_carries_the_priority_of_its_level() {
    let (_sim, dir, cfg) = with_a_refusing_webhook().await;
    let out = dir.path().join("journal.out");
    // The journal's stream is stdout itself, as systemd sets it.
    // No native socket to be had (the fallback): the priority prefixes on stdout.
    let no_socket = dir.path().join("no-journal.sock");
    let code = once_into(
        &cfg,
        &out,
        |m| format!("{}:{}", m.dev(), m.ino()),
        &no_socket,
    )
    .await;
    let text = std::fs::read_to_string(&out).unwrap();
    // The refused webhook makes it 74; what matters here is the lines.
    assert_eq!(code, 74, "{text}");
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        let (prefix, rest) = line.split_at_checked(3).unwrap_or_default();
        let record: serde_json::Value = serde_json::from_str(rest)
            .unwrap_or_else(|e| panic!("not `<N>` then a JSON object ({e}): {line:?}"));
        let level = record["level"].as_str().unwrap().to_string();
        let want = match level.as_str() {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            "DEBUG" | "TRACE" => "<7>",
            other => panic!("level {other}"),
        };
        assert_eq!(prefix, want, "{line}");
        *seen.entry(level).or_insert(0) += 1;
    }
    for level in ["ERROR", "WARN", "INFO", "DEBUG"] {
        assert!(
            seen.contains_key(level),
            "no {level} line: {seen:?}\n{text}"
        );
    }

    // A JOURNAL_STREAM inherited from elsewhere (another device and inode): no prefixes.
    let code = once_into(
        &cfg,
        &out,
        |m| format!("{}:{}", m.dev(), m.ino() + 1),
        &no_socket,
    )
    .await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(code, 74, "{text}");
    assert!(text.lines().count() > 5, "{text}");
    for line in text.lines() {
        assert!(line.starts_with('{'), "{line}");
    }
    assert!(!text.contains(SECRET));
}

/// The fields of one native-protocol datagram, as journald reads them (`KEY=value` lines, or
/// `KEY`, a 64-bit little-endian length and the bytes).
fn journal_fields(mut d: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !d.is_empty() {
        let end = d
            .iter()
            .position(|&b| b == b'\n' || b == b'=')
            .expect("a field name ends");
        let name = String::from_utf8(d[..end].to_vec()).unwrap();
        if d[end] == b'=' {
            let nl = d[end..].iter().position(|&b| b == b'\n').unwrap() + end;
            fields.insert(name, String::from_utf8(d[end + 1..nl].to_vec()).unwrap());
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            fields.insert(
                name,
                String::from_utf8(d[end + 9..end + 9 + len].to_vec()).unwrap(),
            );
            d = &d[end + 10 + len..];
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_records_go_to_its_socket_with_priorities_and_fields() {
    let (_sim, dir, cfg) = with_a_refusing_webhook().await;
    // A stand-in for journald's socket, read as journald reads it.
    let socket = dir.path().join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut quiet = 0;
        while quiet < 25 {
            match journal.recv(&mut buf) {
                Ok(n) => {
                    quiet = 0;
                    records.push(buf[..n].to_vec());
                }
                Err(_) => quiet += 1,
            }
        }
        records
    });
    let out = dir.path().join("journal.out");
    let code = once_into(&cfg, &out, |m| format!("{}:{}", m.dev(), m.ino()), &socket).await;
    assert_eq!(code, 74);
    let records: Vec<BTreeMap<String, String>> = reader
        .join()
        .unwrap()
        .iter()
        .map(|d| journal_fields(d))
        .collect();
    assert!(records.len() > 5, "{records:#?}");
    // Nothing went to the stream as well.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
    let mut priorities = BTreeSet::new();
    for r in &records {
        assert_eq!(
            r.get("SYSLOG_IDENTIFIER").map(String::as_str),
            Some("scenewatch"),
            "{r:?}"
        );
        assert!(r.contains_key("MESSAGE"), "{r:?}");
        assert!(
            !r.contains_key("TIMESTAMP") && !r.contains_key("LEVEL"),
            "{r:?}"
        );
        priorities.insert(r["PRIORITY"].clone());
        assert!(!r.values().any(|v| v.contains(SECRET)), "{r:?}");
    }
    for p in ["3", "4", "6", "7"] {
        assert!(priorities.contains(p), "no PRIORITY={p}: {priorities:?}");
    }
    // The fields are journal fields of their own: `journalctl EVENT_TYPE=… WATCH=…` finds them.
    assert!(
        records.iter().any(|r| {
            r.get("EVENT_TYPE").map(String::as_str) == Some("com.scenewatch.summary.completed")
                && r.get("WATCH").is_some_and(|w| w.starts_with("w/1/"))
                && r.get("PRIORITY").map(String::as_str) == Some("6")
        }),
        "{records:#?}"
    );
}

/// The JSON type of a value, by name.
fn type_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_f64() => "float",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// field → type → (verb, one line having it).
type Types = BTreeMap<String, BTreeMap<&'static str, (&'static str, String)>>;

fn collect(types: &mut Types, verb: &'static str, text: &str) -> usize {
    let mut n = 0;
    for line in text.lines() {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        n += 1;
        for (k, v) in o {
            types
                .entry(k)
                .or_default()
                .entry(type_of(&v))
                .or_insert_with(|| (verb, line.to_string()));
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_and_the_daemon_log_one_schema_with_one_type_per_field() {
    let sim = start_sim(&scenario()).await;
    let mut types = Types::new();

    // once, JSON on stdout (not a terminal), every scenewatch debug line.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, watcher_config(&sim.url, dir.path(), &watches())).unwrap();
    let out = dir.path().join("once.out");
    let code = once_into(&cfg, &out, |_| "0:0".into(), &dir.path().join("no.sock")).await;
    let once = std::fs::read_to_string(&out).unwrap();
    assert_eq!(code, 2, "{once}");
    assert!(collect(&mut types, "once", &once) > 10, "{once}");

    // The daemon, over the same assets, until both results are written.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        watcher_config(&sim.url, dir.path(), &watches())
            .replace("[api]", "[server]\nlisten = \"127.0.0.1:0\"\n[api]"),
    )
    .unwrap();
    let mut daemon = Daemon::start(
        &cfg,
        dir.path(),
        &[
            ("SCENEWATCH__API__SECRET_KEY", SECRET),
            ("RUST_LOG", "scenewatch=debug"),
        ],
    );
    let results = [
        dir.path().join("results/w/1/10/20.json"),
        dir.path().join("results/w/1/11/21.json"),
    ];
    assert!(
        wait_for(Duration::from_secs(30), || results
            .iter()
            .all(|p| p.exists()))
        .await,
        "{}",
        daemon.log_text()
    );
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).await.is_some());
    let run = daemon.log_text();
    assert!(collect(&mut types, "run", &run) > 10, "{run}");

    let clashes: Vec<String> = types
        .iter()
        .filter(|(_, t)| t.len() > 1)
        .map(|(field, t)| {
            let each: Vec<String> = t
                .iter()
                .map(|(ty, (verb, line))| format!("  {ty} in {verb}: {line}"))
                .collect();
            format!("{field}:\n{}", each.join("\n"))
        })
        .collect();
    assert!(
        clashes.is_empty(),
        "fields with more than one type:\n{}",
        clashes.join("\n")
    );
    // Every documented field that was logged has its documented type.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/logging.md")).unwrap();
    let fields = doc
        .split("## Fields")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/logging.md has a Fields section");
    let mut documented = 0;
    for row in fields.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let ty = cells[1].trim();
        for field in cells[0].split('`').skip(1).step_by(2) {
            documented += 1;
            if let Some(t) = types.get(field) {
                let got: BTreeSet<&str> = t.keys().copied().collect();
                assert_eq!(
                    got,
                    BTreeSet::from([ty]),
                    "{field}: docs/logging.md says {ty}"
                );
            }
        }
    }
    assert!(
        documented > 20,
        "the field table of docs/logging.md was not found"
    );
    for field in [
        "watch",
        "event_id",
        "version",
        "sink",
        "scene_count",
        "remote_status",
    ] {
        assert!(types.contains_key(field), "{field} never logged");
    }
}
