//! `scenewatch reset`: put watches that ended back to pending, in the ledger.

use std::path::Path;

use super::Outcome;
use crate::domain::WatchKey;
use crate::exit::{self, UsageError};
use crate::state::Ledger as _;

/// Resets the named watches, or with `all_ended` every watch that ended.
pub async fn run(config: &Path, all_ended: bool, watches: &[String]) -> Outcome {
    if watches.is_empty() != all_ended {
        return Err(UsageError(
            "name the watches to reset (workspace/project_id/asset_id/index_id), or pass --all-ended"
                .into(),
        )
        .into());
    }
    let mut keys = Vec::new();
    for w in watches {
        match w.parse::<WatchKey>() {
            Ok(k) => keys.push(k),
            Err(e) => {
                return Err(UsageError(format!(
                    "{w:?} is not a watch key (workspace/project_id/asset_id/index_id): {e}"
                ))
                .into());
            }
        }
    }
    let ledger = super::ledger::open(config).await?;
    let now = crate::clock::wall_now_ms();
    let result = ledger.reset_watches(keys.clone(), now).await;
    let _ = ledger.close().await;
    let done = result?;
    for k in &done {
        println!("reset {k}");
    }
    for k in keys.iter().filter(|k| !done.contains(k)) {
        println!("not reset {k}: not in the ledger, removed, or not ended");
    }
    println!(
        "{} watch(es) reset; a running daemon polls them after its next reload (systemctl reload scenewatch, or kill -HUP its pid).",
        done.len()
    );
    Ok(exit::OK)
}
