//! `scenewatch run`: the daemon ([`crate::daemon::run`]) with the process's signals: SIGINT and
//! SIGTERM stop it, SIGHUP reloads it. Its log lines keep the target `scenewatch` they had
//! when the binary wrote them, for the `RUST_LOG` filters and log queries that name it.

use std::path::Path;

use super::Outcome;
use crate::config::Sources;
use crate::daemon::{self, Reload};
use crate::exit;

/// Runs the daemon until a stop signal.
pub async fn run(config: &Path) -> Outcome {
    let shutdown = crate::signals::shutdown_on_signal();
    let sources = Sources::file_and_process_env(config);
    let result = daemon::run(sources, shutdown, |running| {
        tokio::spawn(forward_reloads(running.reload));
    })
    .await;
    match result {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            tracing::error!(target: "scenewatch", error = %super::chain(&e), "The daemon stopped on an error.");
            Err(e)
        }
    }
}

/// Turns SIGHUP into reloads of the daemon.
async fn forward_reloads(commands: tokio::sync::mpsc::Sender<Reload>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(target: "scenewatch", "Cannot listen for SIGHUP; reload by restarting.");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(target: "scenewatch", "SIGHUP received; reloading the configuration.");
            if commands.send(Reload).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(commands);
}
