//! Shared helpers: the simulator on a loopback port, configurations pointed at it, the binary.

use std::path::Path;

use scenewatch::sim::{self, Scenario, SimHandle};
use tokio_util::sync::CancellationToken;

/// A simulator serving `scenario_toml` on 127.0.0.1; stops when the guard drops.
pub struct Sim {
    /// Kept so the server task lives as long as the guard.
    _handle: SimHandle,
    pub url: String,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_sim(scenario_toml: &str) -> Sim {
    let scenario = Scenario::from_toml_str(scenario_toml).expect("test scenario parses");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let handle = sim::spawn(scenario, listener, stop.clone()).await.unwrap();
    let url = handle.base_url();
    Sim {
        _handle: handle,
        url,
        stop,
    }
}

/// A watcher configuration for the simulator at `url`, fast intervals, files under `dir`.
pub fn watcher_config(url: &str, dir: &Path, extra: &str) -> String {
    format!(
        r#"state_dir = "{dir}"
[api]
endpoint = "{url}"
access_key = "AK"
requests_per_second = 50.0
timeout = "2s"
[poll]
initial_interval = "100ms"
max_interval = "400ms"
max_wait = "30s"
[[sink]]
type = "file"
dir = "{dir}/results"
{extra}"#,
        dir = dir.display()
    )
}

/// `[[watch]]` for workspace w, project 1.
pub fn watch(asset: &str, index: &str, sid: Option<&str>, generation: &str) -> String {
    let sid = sid
        .map(|s| format!("scene_summary_id = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{asset}\"\nindex_id = \"{index}\"\ngeneration = \"{generation}\"\n{sid}"
    )
}

/// The scenewatch binary, with an environment free of the caller's scenewatch settings.
pub fn scenewatch() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("scenewatch").unwrap();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCENEWATCH") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

/// Runs a prepared command off the async runtime (the simulator keeps serving meanwhile).
pub async fn run(mut cmd: assert_cmd::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// stdout and stderr together, for assertions on what a user sees.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
