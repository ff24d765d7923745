//! `scenewatch once --dry-run` and `--timeout`, end to end: the real binary against the
//! simulator on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{free_port, run, scenewatch, start_sim, text, watch, watcher_config};

const SECRET: &str = "SK-flags-5b1e";

fn scenario() -> String {
    format!(
        r#"seed = 11
[[credentials]]
access_key = "AK"
secret_key = "{SECRET}"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "10"
index_id = "20"
scenes = 3
queue = "100ms"
run = "300ms"

[[asset]]
workspace = "w"
project_id = "1"
asset_id = "11"
index_id = "21"
scenes = 2
queue = "100ms"
run = "200ms"
outcome = "failed"
"#
    )
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_says_what_it_would_have_written() {
    let sim = start_sim(&scenario()).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    // Every sink would fail if it were used: nothing listens on the webhook's port or the
    // database's, and the jsonl files' directory does not exist (nor would be created).
    // The PostgreSQL sink when the build has it (the `postgres` cargo feature).
    let pg = cfg!(feature = "postgres");
    let pg_sink = if pg {
        format!(
            "[[sink]]\ntype = \"postgres\"\nurl = \"postgres://scenewatch@127.0.0.1:{dead}/media\"\n"
        )
    } else {
        String::new()
    };
    let extra = format!(
        "keep_versions = true\n\
         [[sink]]\ntype = \"jsonl\"\npath = \"{d}/out/results.jsonl\"\n\
         [[sink]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/hook\"\nsecret = \"whsec_aGVsbG8td29ybGQtMTIzNDU2Nzg5MA==\"\n\
         {pg_sink}\
         [[event_sink]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"{d}/out/events.jsonl\"\n\
         {}{}",
        watch("10", "20", None, "asset"),
        watch("11", "21", None, "asset"),
        d = dir.path().display(),
    );
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, watcher_config(&sim.url, dir.path(), &extra)).unwrap();
    let before = tree(dir.path());
    let mut cmd = scenewatch();
    cmd.args(["once", "--dry-run", "--config"])
        .arg(&cfg)
        .env("SCENEWATCH__API__SECRET_KEY", SECRET)
        .env("RUST_LOG", "warn");
    let out = run(cmd).await;
    let all = text(&out);
    // The failing asset still decides the exit code, as without --dry-run.
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert_eq!(tree(dir.path()), before, "a dry run wrote files: {all}");
    // After the log lines (JSON on stdout when it is not a terminal), the plan.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let plan = stdout
        .find("Dry run: nothing was written")
        .map(|i| &stdout[i..])
        .unwrap_or_else(|| panic!("no plan: {all}"));
    // One entry per sink for the completed version, naming the version and where it would go.
    let d = dir.path().display();
    let mut sinks = vec![("file", "file"), ("jsonl", "jsonl"), ("webhook", "webhook")];
    if pg {
        sinks.push(("postgres", "postgres"));
    }
    for (sink, kind) in sinks {
        let head = format!("sink `{sink}` ({kind}) would write w/1/10/20 version ");
        let entry = plan
            .split_inclusive('\n')
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("no entry for {sink}: {plan}"));
        let version = entry[head.len()..].split(' ').next().unwrap();
        assert_eq!(version.len(), 32, "{entry}");
        assert!(entry.contains("3 scenes"), "{entry}");
        assert!(entry.contains(" bytes)"), "{entry}");
    }
    assert!(
        plan.contains(&format!(
            "  {d}/results/w/1/10/20.json (unless it holds a newer version)\n"
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("  {d}/results/w/1/10/20/")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("  {d}/out/results.jsonl (one line appended)\n")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("  POST http://127.0.0.1:{dead}/hook\n")),
        "{plan}"
    );
    if pg {
        assert!(plan.contains(".index_versions/"), "{plan}");
        assert!(plan.contains(".scenes (3 rows)"), "{plan}");
    }
    assert!(
        !plan.contains("w/1/11/21 version"),
        "the failed one has no result: {plan}"
    );
    let events = plan
        .lines()
        .find(|l| l.starts_with("event sink `events` (jsonl) would have received "))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        events.contains("1 com.scenewatch.summary.completed")
            && events.contains("1 com.scenewatch.summary.failed"),
        "{events}"
    );
    // The summary, on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 watches: 1 watching, 1 failed"),
        "{stderr}"
    );
    assert!(!all.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ends_a_run_against_an_endpoint_that_does_not_answer_with_75() {
    // A port that accepts nothing: every poll fails and is retried, for max_wait (24 h by
    // default) without --timeout.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let config = watcher_config(
        &format!("http://127.0.0.1:{}", free_port()),
        dir.path(),
        &watch("10", "20", None, "asset"),
    )
    .replace("max_wait = \"30s\"", "max_wait = \"24h\"");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = scenewatch();
    cmd.args(["once", "--timeout", "2s", "--config"])
        .arg(&cfg)
        .env("SCENEWATCH__API__SECRET_KEY", SECRET)
        .timeout(Duration::from_secs(60));
    let started = Instant::now();
    let out = run(cmd).await;
    let took = started.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(75), "{all}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --timeout passed before every watch was settled"),
        "{stderr}"
    );
    // The summary names the open watch and why it is open.
    assert!(stderr.contains("1 watch: 1 "), "{stderr}");
    assert!(stderr.contains("  … w/1/10/20  "), "{stderr}");
}
