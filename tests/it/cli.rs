//! The command line as a user meets it: `check` on every shipped config and on broken ones,
//! `sign` against the documented vectors, `demo` from start to summary, and `--help`.

use crate::support::{run, scenewatch, text};

#[test]
fn check_accepts_every_shipped_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = scenewatch()
                .arg("check")
                .arg("--config")
                .arg(&path)
                .env("SCENEWATCH__API__ACCESS_KEY", "AK")
                .env("SCENEWATCH__API__SECRET_KEY", "SK")
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "default.toml and example.toml at least");
}

#[test]
fn check_reports_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broken.toml");
    std::fs::write(
        &cfg,
        r#"
[api]
access_key = "AK"
secret_key = "TOP-SECRET-VALUE"
timeout = "soon"
[poll]
max_wait = "-1"
[[watch]]
workspace = "team a"
project_id = "1"
asset_id = "../etc"
index_id = "3"
"#,
    )
    .unwrap();
    let out = scenewatch()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(78), "{all}");
    let file = cfg.display().to_string();
    for needle in [
        "api.timeout: \"soon\" is not a duration",
        "poll.max_wait: \"-1\" is not a duration",
        "watch[0].workspace: \"team a\" contains ' '",
        "watch[0].asset_id: \"../etc\" contains '/'",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(all.contains(&format!("(in {file}:")), "{all}");
    assert!(all.contains("4 configuration problems"), "{all}");
    assert!(!all.contains("TOP-SECRET-VALUE"), "{all}");

    // Environment overrides are named as such; unknown keys get a suggestion.
    std::fs::write(&cfg, "[api]\naccess_key = \"AK\"\nburts = 3\n").unwrap();
    let out = scenewatch()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .env("SCENEWATCH__POLL__CONCURRENCY", "lots")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(78), "{all}");
    assert!(
        all.contains("api.burts: unknown key (did you mean `burst`?)"),
        "{all}"
    );
    assert!(
        all.contains("from environment variable SCENEWATCH__POLL__CONCURRENCY"),
        "{all}"
    );
}

#[test]
fn check_names_a_missing_secret_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[api]\naccess_key = \"AK\"\n").unwrap();
    let out = scenewatch()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out).contains("api.secret_key: missing"),
        "{}",
        text(&out)
    );

    let out = scenewatch()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));
}

/// A TOML syntax error on the line of a secret: `check` and `run` name the file, the line and
/// the column, and never print the line (the parsers' own messages quote it).
#[test]
fn a_broken_secret_line_is_located_but_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let watches = dir.path().join("watches.d");
    std::fs::create_dir(&watches).unwrap();
    let cfg = dir.path().join("scenewatch.toml");
    for (broken, file, line) in [
        ("secret_key = \"SK_LEAKED_VALUE", &cfg, 4),
        ("secret_key = SK_LEAKED_VALUE", &cfg, 4),
        // In a file of the watch directory, which is read separately.
        ("asset_id = SK_LEAKED_VALUE", &watches.join("a.toml"), 3),
    ] {
        let main = if *file == cfg {
            format!(
                "state_dir = \"{}\"\n[api]\naccess_key = \"AK\"\n{broken}\n",
                state.display()
            )
        } else {
            std::fs::write(
                file,
                format!("workspace = \"w\"\nproject_id = \"1\"\n{broken}\n"),
            )
            .unwrap();
            format!(
                "state_dir = \"{}\"\nwatch_dir = \"{}\"\n[api]\naccess_key = \"AK\"\n",
                state.display(),
                watches.display()
            )
        };
        std::fs::write(&cfg, main).unwrap();
        for verb in ["check", "run"] {
            let out = scenewatch()
                .arg(verb)
                .arg("--config")
                .arg(&cfg)
                .env("SCENEWATCH__API__SECRET_KEY", "SK")
                .timeout(std::time::Duration::from_secs(60))
                .output()
                .unwrap();
            let all = text(&out);
            assert_eq!(out.status.code(), Some(78), "{verb} {broken:?}: {all}");
            assert!(
                !all.contains("SK_LEAKED"),
                "{verb} {broken:?} echoes it:\n{all}"
            );
            assert!(all.contains(&file.display().to_string()), "{verb}: {all}");
            assert!(
                all.contains(&format!("not valid TOML at line {line}, column ")),
                "{verb} {broken:?}: {all}"
            );
        }
    }
}

#[test]
fn sign_prints_the_documented_vector_and_never_the_secret() {
    let out = scenewatch()
        .args([
            "sign",
            "--method",
            "GET",
            "--path",
            "/api/v1/workspaces/my-workspace/projects/1234/assets/5678/scene-summary/status",
            "--timestamp",
            "1700000000000",
        ])
        .env("SCENEWATCH__API__ACCESS_KEY", "AK_TEST")
        .env("SCENEWATCH__API__SECRET_KEY", "SK_TEST")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("x-ncp-apigw-signature-v2: hbVT3o59bXBN3Q1sJdcy82apODfpymoidL+KnEryfYE="),
        "{all}"
    );
    assert!(all.contains("  GET /api/v1/workspaces/my-workspace/projects/1234/assets/5678/scene-summary/status\n  1700000000000\n  AK_TEST\n"), "{all}");
    assert!(!all.contains("SK_TEST"), "{all}");
}

#[test]
fn help_explains_each_verb_with_an_example() {
    for verb in [
        "run",
        "status",
        "reset",
        "retry-parked",
        "health",
        "once",
        "check",
        "simulate",
        "demo",
        "sign",
        "completions",
        "man",
        "ledger migrate",
    ] {
        let out = scenewatch()
            .args(verb.split(' ').chain(["--help"]))
            .output()
            .unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{verb}: {all}");
        assert!(
            all.contains("Example: scenewatch"),
            "{verb} --help has no example:\n{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_results_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo-out");
    let mut cmd = scenewatch();
    cmd.arg("demo").arg("--out").arg(&out_dir);
    let out = run(cmd).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let results = out_dir.canonicalize().unwrap().join("results");
    assert!(
        all.contains(&format!("4 result(s) written under {}", results.display())),
        "{all}"
    );
    for (asset, index) in [
        ("2001", "3001"),
        ("2002", "3002"),
        ("2004", "3004"),
        ("2005", "3005"),
    ] {
        let p = results.join(format!("demo/100/{asset}/{index}.json"));
        assert!(p.exists(), "{} missing:\n{all}", p.display());
    }
    assert!(
        !results.join("demo/100/2003/3003.json").exists(),
        "the failing asset writes nothing"
    );
    assert!(all.contains("✘ demo/100/2003/3003  failed"), "{all}");
    let long: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("demo/100/2005/3005.json")).unwrap())
            .unwrap();
    assert_eq!(long["sceneCount"], 1500);
}

#[test]
fn version_names_the_commit_and_completions_and_man_page_are_generated() {
    let out = scenewatch().arg("--version").output().unwrap();
    let v = text(&out);
    assert!(
        v.starts_with("scenewatch ") && v.contains("(commit "),
        "{v}"
    );
    // The optional sinks the binary has: what this test build was compiled with.
    let sinks: Vec<&str> = [
        cfg!(feature = "postgres").then_some("postgres"),
        cfg!(feature = "s3").then_some("s3"),
        cfg!(feature = "nats").then_some("nats"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let sinks = if sinks.is_empty() {
        "none".to_string()
    } else {
        sinks.join(" ")
    };
    assert!(v.contains(&format!("; optional sinks: {sinks})")), "{v}");
    let out = scenewatch().args(["completions", "bash"]).output().unwrap();
    let bash = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        bash.contains("complete") && bash.contains("reset"),
        "{bash}"
    );
    let out = scenewatch().arg("man").output().unwrap();
    let man = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        man.starts_with(".ie") || man.contains(".TH scenewatch"),
        "{}",
        &man[..man.len().min(300)]
    );
    for verb in ["run", "once", "check", "status", "reset"] {
        assert!(man.contains(verb), "man page lacks {verb}");
    }
}

#[test]
fn man_pages_exist_for_every_command_and_every_reference_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("share/man/man1");
    let out = scenewatch()
        .args(["man", "--dir"])
        .arg(&man1)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pages: std::collections::BTreeSet<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();

    // Every command `scenewatch --help` lists has its page (clap's own `help` needs none).
    let help = text(&scenewatch().arg("--help").output().unwrap());
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    assert!(commands.len() >= 12, "{commands:?} from:\n{help}");
    assert!(pages.contains("scenewatch.1"), "{pages:?}");
    for c in &commands {
        assert!(
            pages.contains(&format!("scenewatch-{c}.1")),
            "no page for {c}: {pages:?}"
        );
    }
    // The main page, one per command, and one per subcommand (`ledger migrate`).
    assert!(pages.contains("scenewatch-ledger-migrate.1"), "{pages:?}");
    assert_eq!(pages.len(), commands.len() + 2, "{pages:?}");

    // Every NAME(1) a page refers to is one of the pages written.
    for name in &pages {
        let roff = std::fs::read_to_string(man1.join(name)).unwrap();
        assert!(roff.contains(".SH \"SEE ALSO\""), "{name} has no SEE ALSO");
        let plain = roff
            .replace("\\fB", "")
            .replace("\\fR", "")
            .replace("\\fI", "")
            .replace("\\-", "-");
        let mut refs = Vec::new();
        for (at, _) in plain.match_indices("(1)") {
            let before = &plain[..at];
            let start = before
                .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-'))
                .map_or(0, |i| i + 1);
            refs.push(before[start..].to_string());
        }
        assert!(!refs.is_empty(), "{name} refers to no page");
        for r in &refs {
            assert!(
                pages.contains(&format!("{r}.1")),
                "{name} refers to {r}(1), which does not exist: {pages:?}"
            );
        }
        if name == "scenewatch.1" {
            for c in &commands {
                let want = format!("scenewatch-{c}");
                assert!(
                    refs.contains(&want),
                    "scenewatch(1) does not name {want}(1)"
                );
            }
        } else {
            assert!(refs.iter().any(|r| r == "scenewatch"), "{name}: {refs:?}");
        }
    }

    // One page on stdout: the same text as the file; an unknown command is a usage error.
    let out = scenewatch().args(["man", "run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(man1.join("scenewatch-run.1")).unwrap()
    );
    let out = scenewatch().args(["man", "runn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("run, "), "{}", text(&out));
}

/// Usage mistakes are 64 (clap's own 2 would read as "a watch failed"), with clap's hint;
/// `--help` and `--version` are 0.
#[test]
fn usage_errors_exit_64_and_help_and_version_exit_0() {
    for args in [
        &[][..],
        &["--bogus"],
        &["frobnicate"],
        &["check", "--no-such-flag"],
        &["once", "--timeout", "soon"],
        &["health", "--timeout", "x"],
        &["health", "--url", "not a url"],
        &["completions", "tcsh"],
        &["reset", "--all-ended", "w/1/2/3"],
    ] {
        let out = scenewatch().args(args).output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {all}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--"),
            "{args:?} gives no hint on stderr: {all}"
        );
    }
    for args in [
        &["--help"][..],
        &["--version"],
        &["check", "--help"],
        &["help"],
    ] {
        let out = scenewatch().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing on stdout");
    }
}

/// A state directory whose ledger holds the watch `w/1/80/81`, and a configuration naming it
/// (with one jsonl sink called `hooks`).
async fn ledger_with_one_watch(dir: &std::path::Path) -> std::path::PathBuf {
    use scenewatch::config::{GenerationChoice, WatchSpec};
    use scenewatch::state::Ledger as _;
    let state = dir.join("state");
    let ledger = scenewatch::state::SqliteLedger::open(&state, vec!["hooks".into()], vec![])
        .await
        .unwrap();
    let spec = WatchSpec {
        key: "w/1/80/81".parse().unwrap(),
        scene_summary_id: None,
        generation: GenerationChoice::Auto,
        max_wait: std::time::Duration::from_secs(60),
        declared_at: "watch[0]".into(),
        origin: None,
    };
    ledger.sync_watches(&[spec], &[], 0).await.unwrap();
    ledger.close().await.unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[api]\naccess_key = \"AK\"\nsecret_key = \"SK\"\n[[sink]]\ntype = \"jsonl\"\nname = \"hooks\"\npath = \"{}\"\n",
            state.display(),
            dir.join("r.jsonl").display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn reset_of_a_watch_the_ledger_does_not_hold_is_exit_65_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ledger_with_one_watch(dir.path()).await;
    let mut cmd = scenewatch();
    cmd.args(["reset", "--config"])
        .arg(&cfg)
        .args(["w/1/80/81", "w/1/80/82"]);
    let out = run(cmd).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(65), "{all}");
    assert!(
        all.contains("holds no watch w/1/80/82 (did you mean `w/1/80/81`?)"),
        "{all}"
    );
    assert!(all.contains("nothing was reset"), "{all}");
    assert!(!all.contains("reset w/1/80/81\n"), "{all}");
    // A held watch that has not ended is not an error: it says so.
    let mut cmd = scenewatch();
    cmd.args(["reset", "--config"]).arg(&cfg).arg("w/1/80/81");
    let out = run(cmd).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("not reset w/1/80/81: it has not ended"),
        "{all}"
    );
}

#[tokio::test]
async fn retry_parked_for_a_sink_nobody_has_is_exit_65_listing_the_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ledger_with_one_watch(dir.path()).await;
    let mut cmd = scenewatch();
    cmd.args(["retry-parked", "--config"])
        .arg(&cfg)
        .args(["--sink", "hook"]);
    let out = run(cmd).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(65), "{all}");
    assert!(
        all.contains("no sink named `hook` (did you mean `hooks`?) (known: hooks)"),
        "{all}"
    );
    let mut cmd = scenewatch();
    cmd.args(["retry-parked", "--config"])
        .arg(&cfg)
        .args(["--sink", "hooks"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("0 parked deliveries"), "{}", text(&out));
}

/// A one-shot HTTP server on loopback: `/readyz` answers 200, anything else 404; the paths it
/// was asked for come back from the thread.
fn readiness_server() -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let (status, body) = if path == "/readyz" {
                ("200 OK", "ready")
            } else {
                ("404 Not Found", "no")
            };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            paths.push(path);
        }
        paths
    });
    (base, handle)
}

#[tokio::test]
async fn health_accepts_the_base_address_as_well_as_the_full_url() {
    let (base, server) = readiness_server();
    for url in [base.clone(), format!("{base}/readyz")] {
        let mut cmd = scenewatch();
        cmd.args(["health", "--url", &url]);
        let out = run(cmd).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(0), "{url}: {all}");
        assert!(
            all.contains(&format!("healthy: {base}/readyz answered 200")),
            "{all}"
        );
    }
    assert_eq!(server.join().unwrap(), ["/readyz", "/readyz"]);
}

const ONLINE_SECRET: &str = "SK-online-check-91";

fn online_config(url: &str, dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{d}/state\"\n[api]\nendpoint = \"{url}\"\naccess_key = \"AK\"\ntimeout = \"3s\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\n[[sink]]\ntype = \"file\"\nname = \"files\"\ndir = \"{d}/results\"\n{extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// `check --online` against the simulator (which checks signatures): one line per item, what
/// passed and what failed, exit 69 when something failed, never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_signs_a_call_and_runs_every_healthcheck() {
    let sim = crate::support::start_sim(&format!(
        "seed = 5\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{ONLINE_SECRET}\"\n[[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"1\"\nindex_id = \"1\"\nscenes = 2\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A jsonl sink whose directory is a file: its healthcheck fails.
    std::fs::write(dir.path().join("a-file"), "x").unwrap();
    let broken = format!(
        "[[sink]]\ntype = \"jsonl\"\nname = \"log\"\npath = \"{}/a-file/r.jsonl\"\n",
        dir.path().display()
    );
    let cfg = online_config(&sim.url, dir.path(), &broken);
    let check = |secret: &str| {
        let mut cmd = scenewatch();
        cmd.args(["check", "--online", "--config"])
            .arg(&cfg)
            .env("SCENEWATCH__API__SECRET_KEY", secret);
        cmd
    };
    let out = run(check(ONLINE_SECRET)).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(69), "{all}");
    assert!(
        all.contains(
            "ok   api credentials (AK): GET the asset list of w/1 (1 item): signed and accepted"
        ),
        "{all}"
    );
    assert!(all.contains("ok   sink files: healthcheck passed"), "{all}");
    assert!(all.contains("FAIL sink log: healthcheck failed"), "{all}");
    assert!(all.contains("online: 2 passed, 1 failed"), "{all}");
    assert!(
        all.contains("1 project selector(s)") && all.contains("0 index watch(es)"),
        "{all}"
    );

    // A wrong secret: the call is refused, and the secret is not printed.
    let out = run(check("SK-wrong-secret-00")).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(69), "{all}");
    assert!(
        all.contains("FAIL api credentials (AK): GET the asset list of w/1 (1 item): the credentials were refused"),
        "{all}"
    );
    assert!(!all.contains("SK-wrong-secret-00"), "{all}");

    // Everything fine: exit 0.
    let cfg = online_config(&sim.url, dir.path(), "");
    let mut cmd = scenewatch();
    cmd.args(["check", "--online", "--config"])
        .arg(&cfg)
        .env("SCENEWATCH__API__SECRET_KEY", ONLINE_SECRET);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("online: 2 passed, 0 failed"),
        "{}",
        text(&out)
    );
}

/// `check --print`: every key with its value and origin (file:line:column, env NAME, default),
/// secrets redacted; `check` alone does not print it.
#[test]
fn check_print_shows_the_effective_configuration_with_origins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[api]\naccess_key = \"AK\"\nsecret_key = \"SK-in-file-31\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n",
    )
    .unwrap();
    let out = scenewatch()
        .args(["check", "--print", "--config"])
        .arg(&cfg)
        .env("SCENEWATCH__POLL__CONCURRENCY", "9")
        .env("SCENEWATCH__SINK__0__TYPE", "stdout")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("SK-in-file-31"), "{all}");
    let line = |k: &str| {
        all.lines()
            .find(|l| l.starts_with(&format!("{k} = ")))
            .unwrap_or_else(|| panic!("no {k} in {all}"))
            .to_string()
    };
    let file = cfg.display().to_string();
    assert!(line("api.secret_key").contains("(redacted)"), "{all}");
    assert!(
        line("api.secret_key").ends_with(&format!("# {file}:3:1")),
        "{all}"
    );
    assert!(
        line("poll.concurrency").starts_with("poll.concurrency = 9 "),
        "{all}"
    );
    assert!(
        line("poll.concurrency").ends_with("# env SCENEWATCH__POLL__CONCURRENCY"),
        "{all}"
    );
    assert!(
        line("sink[0].type").ends_with("# env SCENEWATCH__SINK__0__TYPE"),
        "{all}"
    );
    assert!(
        line("watch[0].asset_id").ends_with(&format!("# {file}:7:1")),
        "{all}"
    );
    assert!(line("poll.max_wait").ends_with("# default"), "{all}");
    assert!(
        all.contains("1 index watch(es), 0 asset watch(es), 0 project selector(s)"),
        "{all}"
    );
    let out = scenewatch()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!text(&out).contains("api.secret_key ="), "{}", text(&out));
}

/// Shape and meaning problems come out of one run, each at file:line:column; a syntax error in
/// a watch file does not hide the main file's problems.
#[test]
fn check_lists_shape_and_meaning_problems_in_one_run_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let watches = dir.path().join("watches");
    std::fs::create_dir(&watches).unwrap();
    std::fs::write(
        watches.join("a.toml"),
        "workspace = \"w\nproject_id = \"1\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "watch_dir = \"{}\"\n[api]\naccess_key = \"AK\"\nburts = 3\ntimeout = \"soon\"\n[[sink]]\ntype = \"fiel\"\n[[sink]]\ntype = \"jsonl\"\npath = \"\"\n",
            watches.display()
        ),
    )
    .unwrap();
    let out = scenewatch()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("SCENEWATCH__API__SECRET_KEY", "SK")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(78), "{all}");
    let file = cfg.display().to_string();
    for (needle, place) in [
        (
            "api.burts: unknown key (did you mean `burst`?)",
            format!("{file}:4:1"),
        ),
        (
            "api.timeout: \"soon\" is not a duration",
            format!("{file}:5:1"),
        ),
        ("sink[0].type: unknown type \"fiel\"", format!("{file}:7:1")),
        ("sink[1].path", format!("{file}:10:1")),
        (
            "watch[0]: not valid TOML at line 1",
            watches.join("a.toml").display().to_string(),
        ),
    ] {
        assert!(
            all.lines()
                .any(|l| l.contains(needle) && l.contains(&place)),
            "missing {needle:?} at {place} in:\n{all}"
        );
    }
}
