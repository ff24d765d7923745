//! Running it in production: `/healthz`, `/readyz` (ready, not ready, draining), `/metrics` as
//! OpenMetrics with the documented names, systemd's notify protocol, and `scenewatch health`.

use std::path::Path;
use std::time::Duration;

use crate::support::{Daemon, free_port, run, scenewatch, start_sim, text, wait_for};

const SECRET: &str = "SK-ops-secret-55c1";

fn scenario(extra: &str) -> String {
    format!(
        "seed = 3\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"1\"\nindex_id = \"1\"\nscenes = 2\nqueue = \"300ms\"\nrun = \"300ms\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"2\"\nscenes = 2\nqueue = \"1h\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"3\"\nindex_id = \"3\"\nscenes = 2\nqueue = \"1h\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"3\"\nindex_id = \"4\"\nscenes = 2\nqueue = \"1h\"\n{extra}"
    )
}

fn config(url: &str, state: &Path, dir: &Path, port: u16) -> String {
    format!(
        r#"state_dir = "{state}"
shutdown_timeout = "8s"
[api]
endpoint = "{url}"
access_key = "AK"
timeout = "6s"
[poll]
initial_interval = "100ms"
max_interval = "300ms"
[server]
listen = "127.0.0.1:{port}"
[[sink]]
type = "file"
dir = "{dir}/results"
[[event_sink]]
type = "jsonl"
path = "{dir}/events.jsonl"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "1"
index_id = "1"
generation = "asset"
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "2"
index_id = "2"
generation = "asset"
# Index 3 is not asset 3's latest (4 is) and no scene_summary_id is given: only its result call
# can be polled, whose "not completed yet" code the client was not told about, so the
# unrecognised-answers metric gets a sample.
[[watch]]
workspace = "w"
project_id = "1"
asset_id = "3"
index_id = "3"
generation = "index"
"#,
        state = state.display(),
        dir = dir.display()
    )
}

/// (status code, body) of a GET on the daemon's server, or None while it is not listening.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ready_metrics_and_draining() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&sim.url, &dir.path().join("state"), dir.path(), port),
    )
    .unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    assert!(
        wait_for(Duration::from_secs(20), || get(port, "/readyz")
            .is_some_and(|(c, _)| c == 200))
        .await,
        "{}",
        d.log_text()
    );
    let (code, body) = get(port, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    // `scenewatch health` agrees, for HEALTHCHECKs without curl.
    let mut cmd = scenewatch();
    cmd.args([
        "health",
        "--url",
        &format!("http://127.0.0.1:{port}/readyz"),
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Wait for the first completion and its events so every metric family has samples.
    assert!(
        wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(dir.path().join("events.jsonl"))
                .is_ok_and(|t| t.contains("summary.delivered"))
        })
        .await
    );
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    check_openmetrics(&metrics);
    for name in documented_metric_names() {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "documented metric {name} is not exported:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("asset_id") && !metrics.contains("w/1/"),
        "no per-watch labels"
    );
    assert!(!metrics.contains(SECRET));

    // Draining: a slow answer keeps a poll in flight while the daemon stops.
    let client = crate::support::http();
    let set = client
        .put(format!("{}/__sim/faults/rates", sim.url))
        .json(&serde_json::json!({"slow_delay": "4s"}))
        .send()
        .await
        .unwrap();
    assert!(set.status().is_success(), "{:?}", set.text().await);
    let control = crate::support::SimControl::new(&sim.url);
    control.next_faults("slow", 50).await;
    // Until a slow answer is being held back: a poll is in flight.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while control.stats().await["by_fault"]["slow"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < until,
            "no poll reached the slow answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.signal("TERM");
    let draining = wait_for(Duration::from_secs(5), || {
        get(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("draining"))
    })
    .await;
    let mut d = d;
    let status = d.wait_exit(Duration::from_secs(20)).await;
    let log = d.log_text();
    assert!(draining, "readiness never said draining:\n{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    // Gone: `health` says so.
    let mut cmd = scenewatch();
    cmd.args([
        "health",
        "--url",
        &format!("http://127.0.0.1:{port}/readyz"),
        "--timeout",
        "1s",
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unhealthy"));
}

/// Parses the text with an independent OpenMetrics parser (Python's prometheus_client, which
/// .ci/run installs); says so and checks only the basics when it is not available.
fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfams = list(p(open(sys.argv[1]).read()))\nprint(len(fams))\n";
    match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(file.path())
        .output()
    {
        Ok(out) if out.status.success() => {
            let n: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            assert!(n >= 10, "only {n} metric families parsed");
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            crate::support::skip(
                "the OpenMetrics parse check needs Python's prometheus_client (pip install prometheus-client; .ci/run installs it)",
            );
        }
        Ok(out) => panic!(
            "the metrics do not parse as OpenMetrics:\n{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => crate::support::skip(&format!("the OpenMetrics parse check needs python3 ({e})")),
    }
}

/// The metric names listed in docs/operations.md's metrics table (lines starting with
/// "| `scenewatch_" or, on Linux where they are exported, "| `process_"), so the
/// documentation and the code cannot drift apart.
fn documented_metric_names() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let mut prefixes = vec!["scenewatch_"];
    if cfg!(target_os = "linux") {
        prefixes.push("process_");
    }
    let names: Vec<String> = doc
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `")?;
            prefixes.iter().find(|p| rest.starts_with(**p))?;
            rest.split('`').next().map(String::from)
        })
        .collect();
    assert!(
        names.len() >= 10,
        "docs/operations.md lists too few metrics: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "scenewatch_build_info"),
        "{names:?}"
    );
    if cfg!(target_os = "linux") {
        assert!(
            names.iter().filter(|n| n.starts_with("process_")).count() == 6,
            "{names:?}"
        );
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_make_the_daemon_not_ready_with_one_error() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&sim.url, &dir.path().join("state"), dir.path(), port),
    )
    .unwrap();
    let d = Daemon::start(
        &cfg,
        dir.path(),
        &[("SCENEWATCH__API__SECRET_KEY", "WRONG-KEY-3b")],
    );
    let not_ready = wait_for(Duration::from_secs(20), || {
        get(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("refused the credentials"))
    })
    .await;
    // Still alive: liveness is about the process, not the credentials.
    let live = get(port, "/healthz").map(|(c, _)| c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut d = d;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert!(not_ready, "{log}");
    assert_eq!(live, Some(200));
    assert_eq!(
        log.matches("The API refused the credentials").count(),
        1,
        "one error, not one per watch:\n{log}"
    );
    assert!(!log.contains("WRONG-KEY-3b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_daemon_not_ready_until_the_ledger_is_writable() {
    // Root ignores file permissions, so the state directory is a small tmpfs that the test
    // fills up. Needs mount rights (CI runs as root); skipped with a message otherwise.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        crate::support::skip("cannot mount a tmpfs for the full-disk ledger test (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(state.clone());
    let sim = start_sim(&scenario("")).await;
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&sim.url, &state, dir.path(), port)).unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    assert!(
        wait_for(Duration::from_secs(20), || get(port, "/readyz")
            .is_some_and(|(c, _)| c == 200))
        .await,
        "{}",
        d.log_text()
    );
    let before = std::fs::read(state.join("scenewatch.db"))
        .map(|b| b.len())
        .unwrap_or(0);
    // Fill the volume: every later commit of a poll fails.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let not_ready = wait_for(Duration::from_secs(20), || {
        get(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("ledger not writable"))
    })
    .await;
    std::fs::remove_file(&filler).unwrap();
    let ready_again = wait_for(Duration::from_secs(20), || {
        get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    let mut d = d;
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert!(not_ready, "{log}");
    assert!(ready_again, "{log}");
    // Loud: an error line naming the database and the full disk, from whichever write met it
    // first (a poll's commit, or the outbox recording what it sent).
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("scenewatch.db")
            && l.contains("disk is full")),
        "the ledger error is loud: {log}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    // Nothing recorded before was lost: the ledger still opens and lists every watch.
    let mut cmd = scenewatch();
    cmd.args(["status", "--json", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{}", text(&out));
    assert!(before > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&sim.url, &dir.path().join("state"), dir.path(), port),
    )
    .unwrap();
    let sock_str = sock_path.display().to_string();
    let d = Daemon::start(
        &cfg,
        dir.path(),
        &[
            ("SCENEWATCH__API__SECRET_KEY", SECRET),
            ("NOTIFY_SOCKET", sock_str.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |seen: &mut Vec<String>| {
        while let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && !seen.iter().any(|m| m.contains("WATCHDOG=1")) {
        recv(&mut seen);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.signal("TERM");
    let mut d = d;
    d.wait_exit(Duration::from_secs(15)).await;
    recv(&mut seen);
    let all = seen.join("\n---\n");
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{all}\n{}",
        d.log_text()
    );
    assert!(
        seen.iter()
            .any(|m| m.lines().any(|l| l.starts_with("STATUS=watches: "))),
        "{all}"
    );
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "{all}"
    );
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{all}"
    );
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = seen.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sink_that_breaks_makes_the_daemon_not_ready_until_it_is_back() {
    let sim = start_sim(&scenario("")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    // Only the never-finishing watch: the file sink stays idle, so only its healthcheck can
    // notice that its directory went away.
    let c = config(&sim.url, &dir.path().join("state"), dir.path(), port)
        .replace(
            "shutdown_timeout = \"8s\"",
            "shutdown_timeout = \"8s\"\nsink_healthcheck_interval = \"300ms\"",
        )
        .replace(
            "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"1\"\nindex_id = \"1\"\ngeneration = \"asset\"\n",
            "",
        );
    std::fs::write(&cfg, c).unwrap();
    let d = Daemon::start(&cfg, dir.path(), &[("SCENEWATCH__API__SECRET_KEY", SECRET)]);
    assert!(
        wait_for(Duration::from_secs(20), || get(port, "/readyz")
            .is_some_and(|(c, _)| c == 200))
        .await,
        "{}",
        d.log_text()
    );
    let results = dir.path().join("results");
    std::fs::remove_dir_all(&results).ok();
    std::fs::write(&results, b"a file where the sink's directory was").unwrap();
    let broken = wait_for(Duration::from_secs(15), || {
        get(port, "/readyz").is_some_and(|(c, b)| c == 503 && b.contains("sink `file` is failing"))
    })
    .await;
    std::fs::remove_file(&results).unwrap();
    let back = wait_for(Duration::from_secs(15), || {
        get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    let mut d = d;
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert!(broken, "{log}");
    assert!(back, "{log}");
    let events = crate::support::json_lines(&dir.path().join("events.jsonl"));
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.contains(".sink."))
        .collect();
    assert_eq!(
        kinds,
        [
            "com.scenewatch.sink.failing",
            "com.scenewatch.sink.recovered"
        ],
        "{log}"
    );
}
