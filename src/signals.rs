//! Process signals: SIGINT/SIGTERM to stop (a second one exits at once), shared by the daemon,
//! `once`, the demo and the simulator.

use tokio_util::sync::CancellationToken;

/// Exit code after a second stop signal.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Waits for SIGINT (ctrl-c) or SIGTERM.
pub async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot watch SIGTERM; only ctrl-c stops the process.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A token cancelled on the first SIGINT or SIGTERM; a second one exits the process at once
/// (the ledger stays consistent: SQLite rolls back what was not committed).
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        terminate().await;
        tracing::warn!("Signal received; stopping (send it again to exit at once).");
        t.cancel();
        terminate().await;
        std::process::exit(EXIT_INTERRUPTED);
    });
    token
}
