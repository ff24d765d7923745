//! `scenewatch once`: load the configuration, run [`crate::once::once`] under the progress
//! display, print the summary (on stderr), say why the run ended when it was not a plain success;
//! the report's exit code.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use super::{Live, Outcome};
use crate::config::{self, Sources};
use crate::once::OnceOptions;
use crate::sink::{EventSinkConfig, SinkConfig};

/// Polls every configured watch until each is settled (or `timeout` passes).
/// With `dry_run`, writes nothing and prints (on stdout) what it would have written.
pub async fn run(config: &Path, timeout: Option<Duration>, dry_run: bool, live: Live) -> Outcome {
    let config = config::load(&Sources::file_and_process_env(config))?;
    // A stdout sink on the terminal the view is drawn on would print into the view.
    let prints = config
        .sinks
        .iter()
        .any(|s| matches!(s, SinkConfig::Stdout(_)))
        || config
            .event_sinks
            .iter()
            .any(|s| matches!(s, EventSinkConfig::Stdout(_)));
    let live = live.stand_down_if(prints && !dry_run && std::io::stdout().is_terminal());
    let shutdown = crate::signals::shutdown_on_signal();
    let options = OnceOptions {
        timeout,
        observer: Some(live.board()),
        dry_run,
    };
    let drawing = live.start();
    let result = crate::once::once(config, options, shutdown).await;
    drawing.finish().await;
    let report = result?;
    if let Some(plan) = &report.dry_run {
        print!("{plan}");
    }
    // On stderr: stdout carries the JSON log lines (and a stdout sink's results).
    eprint!("\n{}", crate::progress::summary(&report));
    if let Some(a) = &report.auth_failure {
        eprintln!("error: the API refused the credentials: {a}");
    }
    if let Some(q) = &report.quota_exceeded {
        eprintln!("error: the API's quota is used up: {q}");
    }
    if report.timed_out {
        eprintln!("error: --timeout passed before every watch was settled");
    }
    Ok(report.exit_code())
}
