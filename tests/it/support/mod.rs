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

/// `scenewatch once --config cfg` with `secret` as the API's secret key, run to its end.
pub async fn run_once(cfg: &std::path::Path, secret: &str) -> std::process::Output {
    let mut cmd = scenewatch();
    cmd.arg("once")
        .arg("--config")
        .arg(cfg)
        .env("SCENEWATCH__API__SECRET_KEY", secret);
    run(cmd).await
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

/// A `scenewatch run` child process, its output in `dir/daemon.log`; killed on drop.
pub struct Daemon {
    child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Starts `scenewatch run --config config` with `env` added.
    pub fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join("daemon.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("scenewatch"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SCENEWATCH") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err);
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, HUP, KILL, INT).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -s {sig} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub async fn wait_exit(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if tokio::time::Instant::now() > until {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms (real time) until it holds or `within` passes.
pub async fn wait_for(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The JSON lines of a file (missing file: none; a torn last line is skipped).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An HTTP client for the tests' own requests, on the process's TLS provider
/// (`scenewatch::tls`: reqwest is built without one of its own).
pub fn http() -> reqwest::Client {
    scenewatch::tls::client_builder()
        .build()
        .expect("an HTTP client for the test")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The simulator's control routes (docs/simulator.md), for tests that steer it or wait on it.
pub struct SimControl {
    url: String,
    http: reqwest::Client,
}

impl SimControl {
    /// The control client of the simulator at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            http: crate::support::http(),
        }
    }

    /// `GET /__sim/stats`: API requests answered, by route, status and fault.
    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/__sim/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many API requests the simulator has answered (control routes not counted).
    pub async fn requests(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap_or(0)
    }

    /// Waits until the simulator has answered `more` API requests beyond those answered when
    /// called: proof that the watcher kept polling (rechecks ran), where a fixed sleep would
    /// only hope so. False if `within` passes first.
    pub async fn wait_for_more_requests(&self, more: u64, within: std::time::Duration) -> bool {
        let target = self.requests().await + more;
        let until = tokio::time::Instant::now() + within;
        loop {
            if self.requests().await >= target {
                return true;
            }
            if tokio::time::Instant::now() > until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `POST /__sim/faults/next`: the next `count` API requests get fault `kind`.
    pub async fn next_faults(&self, kind: &str, count: u32) {
        let answer = self
            .http
            .post(format!("{}/__sim/faults/next", self.url))
            .json(&serde_json::json!({"kind": kind, "count": count}))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
    }
}

/// A check that cannot run here for want of a tool found only at run time (python3 and its
/// prometheus_client, mount rights, a TLS certificate on the test server): says so on stderr
/// and returns, so the test passes without that check. Under `SCENEWATCH_TEST_STRICT=1`
/// (`.ci/run` sets it, and provides all of them) it fails instead. Missing servers are not
/// this: their tests are compiled ignored (build.rs).
pub fn skip(reason: &str) {
    if std::env::var_os("SCENEWATCH_TEST_STRICT").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{reason}; SCENEWATCH_TEST_STRICT is set, so this is a failure, not a skip");
    }
    eprintln!("skipped: {reason}");
}
