//! Build script: records the commit for `scenewatch --version` and `scenewatch_build_info`.
//! `SCENEWATCH_COMMIT` from the environment wins when set and not empty (container builds, whose
//! context has no `.git`: `docker build --build-arg SCENEWATCH_COMMIT=$(git rev-parse --short=12
//! HEAD) …`); otherwise `git rev-parse`; "unknown" when neither is there (a source tarball).
//!
//! It also tells the integration tests which outside servers they have: for each variable of
//! [`TEST_SERVERS`] that is set and not empty, a `--cfg` of that name, so that a test needing
//! a missing server is compiled `#[ignore = "needs …"]` and `cargo test`'s summary counts it
//! as ignored, with the reason, instead of passing without running (a test cannot ignore
//! itself at run time on stable Rust). Setting or unsetting one reruns this script and
//! rebuilds the crate. The cfgs are declared in every build; the PostgreSQL, S3 and NATS tests
//! that read them are compiled only with their sink's cargo feature, so a build without it has
//! no such test at all (not one ignored).

use std::process::Command;

/// (environment variable, cfg it turns on): the servers and binaries the tests in `tests/it`
/// use when they are there (README, "Tests").
const TEST_SERVERS: &[(&str, &str)] = &[
    ("SCENEWATCH_TEST_PG", "sw_test_pg"),
    ("SCENEWATCH_TEST_NATS", "sw_test_nats"),
    ("SCENEWATCH_TEST_NATS_SERVER", "sw_test_nats_server"),
    ("SCENEWATCH_TEST_S3", "sw_test_s3"),
    ("SCENEWATCH_TEST_S3S_FS", "sw_test_s3s_fs"),
];

fn main() {
    for (var, cfg) in TEST_SERVERS {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    println!("cargo:rerun-if-env-changed=SCENEWATCH_COMMIT");
    // Where HEAD really is: `.git` is a file in a worktree, and watching a path that does not
    // exist would make cargo rerun this script (and rebuild the crate) on every build.
    for path in git(&["rev-parse", "--git-path", "HEAD"])
        .into_iter()
        .chain(git(&["rev-parse", "--git-path", "refs/heads"]))
    {
        println!("cargo:rerun-if-changed={path}");
    }
    let from_env = std::env::var("SCENEWATCH_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(c) = &from_env {
        // It ends up in --version and in a metric label: a commit id, nothing else.
        let plain = c.len() <= 64
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '+'));
        assert!(
            plain,
            "SCENEWATCH_COMMIT={c:?} is not a commit id (at most 64 letters, digits, '.', '-', '_', '+')"
        );
    }
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCENEWATCH_COMMIT={commit}");
    // The optional sinks this build has, for --version: the default build is the lean one,
    // and an operator needs to know whether a binary can take a PostgreSQL, S3 or NATS sink
    // (README, "Cargo features"). Cargo reruns this script when the features change.
    let features: Vec<&str> = ["postgres", "s3", "nats"]
        .into_iter()
        .filter(|f| std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some())
        .collect();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(" ")
    };
    println!("cargo:rustc-env=SCENEWATCH_FEATURES={features}");
}

/// The trimmed output of a git command, when git is there and it succeeds.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
