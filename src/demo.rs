//! `scenewatch demo`: `scenewatch once` against the simulator started in-process, with a handful
//! of assets, results written as files. Needs no credentials or network.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Sources};
use crate::exit;
use crate::once::{self, OnceOptions, OnceReport};
use crate::progress::Board;
use crate::watch::Phase;

/// The demo's watches: five assets of the demo scenario (`config/simulator/demo.toml`), one index
/// each, on the default `generation = "auto"` (the asset-level calls, since each index is its
/// asset's latest) but for one that asks for the asset-level API outright.
const DEMO_WATCHES: &str = r#"
# A short video, with its scene_summary_id. Completes after ~4 s.
[[watch]]
workspace = "demo"
project_id = "100"
asset_id = "2001"
index_id = "3001"
scene_summary_id = "4001"

# Without a scene_summary_id: the asset's index status says index 3002 is its latest, so the
# asset-level status call is read. ~9 s, 40 scenes.
[[watch]]
workspace = "demo"
project_id = "100"
asset_id = "2002"
index_id = "3002"

# The asset-level API, chosen explicitly. The summary fails after ~7 s, and is seen failing.
[[watch]]
workspace = "demo"
project_id = "100"
asset_id = "2003"
index_id = "3003"
generation = "asset"

# A partial re-run of scenes 2 and 5 after an earlier full run. ~12 s.
[[watch]]
workspace = "demo"
project_id = "100"
asset_id = "2004"
index_id = "3004"
scene_summary_id = "4004"

# Asset-level, a long video: 1,500 scenes. ~18 s.
[[watch]]
workspace = "demo"
project_id = "100"
asset_id = "2005"
index_id = "3005"
generation = "asset"
"#;

/// The demo's configuration, pointed at a simulator on `endpoint` and writing under `out`.
pub fn demo_config_toml(endpoint: &str, out: &Path) -> String {
    let out = out
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"state_dir = "{out}"

[api]
endpoint = "{endpoint}"
access_key = "DEMO_ACCESS_KEY"
secret_key = "DEMO_SECRET_KEY_NOT_SECRET"
requests_per_second = 20.0

[poll]
initial_interval = "500ms"
max_interval = "2s"
max_wait = "2m"
not_requested_grace = "30s"

[[sink]]
type = "file"
dir = "{out}/results"
keep_versions = true
{DEMO_WATCHES}"#
    )
}

/// What the demo did.
#[derive(Debug)]
pub struct DemoRun {
    /// The simulator's base URL.
    pub simulator: String,
    /// Where results went.
    pub results_dir: PathBuf,
    /// The `once` report.
    pub report: OnceReport,
}

impl DemoRun {
    /// Exit code: 0 when every watch reached its end and every result was written (the demo's
    /// failing asset is expected to fail), otherwise the code `once` would give.
    pub fn exit_code(&self) -> u8 {
        match self.report.exit_code() {
            exit::NOT_ALL_COMPLETED => exit::OK,
            other => other,
        }
    }

    /// The closing summary: what was written where.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nscenewatch demo: {} watches against the built-in simulator at {}",
            self.report.outcomes.len(),
            self.simulator
        );
        s.push_str(&crate::progress::summary(&self.report));
        let written = self
            .report
            .outcomes
            .iter()
            .filter(|o| o.state.phase == Phase::Watching && !o.locations.is_empty())
            .count();
        let _ = writeln!(
            s,
            "\n{written} result(s) written under {} (latest version per index, plus every version in {{index_id}}/).",
            self.results_dir.display()
        );
        if let Some(first) = self
            .report
            .outcomes
            .iter()
            .find_map(|o| o.locations.first())
        {
            let _ = writeln!(s, "Look at one: jq '.result.sceneSummaries[0]' {first}");
        }
        s
    }
}

/// Runs the demo: simulator up, watches polled to their end, results under `out/results`.
pub async fn run(
    out: &Path,
    board: Arc<Board>,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoRun> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the demo directory {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve the demo directory {}", out.display()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port for the simulator")?;
    let sim_stop = CancellationToken::new();
    let sim = crate::sim::spawn(crate::sim::demo_scenario(), listener, sim_stop.clone())
        .await
        .context("cannot start the simulator")?;
    let endpoint = sim.base_url();
    let sources = Sources {
        inline: Some((
            "(demo configuration)".into(),
            demo_config_toml(&endpoint, &out),
        )),
        env: Some(Default::default()),
        ..Sources::default()
    };
    let config = config::load(&sources)
        .map_err(|e| anyhow::anyhow!("the demo configuration is invalid: {e}"))?;
    let results_dir = out.join("results");
    let options = OnceOptions {
        timeout: None,
        observer: Some(board),
        dry_run: false,
    };
    let report = once::once(config, options, shutdown).await?;
    sim_stop.cancel();
    sim.join().await;
    Ok(DemoRun {
        simulator: endpoint,
        results_dir,
        report,
    })
}
