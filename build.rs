//! Build script: records the commit for `scenewatch --version` and `scenewatch_build_info`.
//! `SCENEWATCH_COMMIT` from the environment wins when set and not empty (container builds, whose
//! context has no `.git`: `docker build --build-arg SCENEWATCH_COMMIT=$(git rev-parse --short=12
//! HEAD) …`); otherwise `git rev-parse`; "unknown" when neither is there (a source tarball).

use std::process::Command;

fn main() {
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
