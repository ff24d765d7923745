//! `scenewatch reset`: put watches that ended back to pending, in the ledger.

use std::path::Path;

use super::Outcome;
use crate::domain::WatchKey;
use crate::exit::{self, UnknownName, UsageError};

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
    let result = reset(&*ledger, keys.clone()).await;
    let _ = ledger.close().await;
    let done = result?;
    for k in &done {
        println!("reset {k}");
    }
    for k in keys.iter().filter(|k| !done.contains(k)) {
        println!("not reset {k}: it has not ended, or it is removed (no longer configured)");
    }
    println!(
        "{} watch(es) reset; a running daemon polls them after its next reload (systemctl reload scenewatch, or kill -HUP its pid).",
        done.len()
    );
    Ok(exit::OK)
}

/// Resets `keys` after checking that the ledger holds every one of them: a key it does not hold
/// (a typo, another configuration's ledger) is an error naming it, with the nearest keys it
/// does hold, and nothing is reset.
async fn reset(
    ledger: &dyn crate::state::Ledger,
    keys: Vec<WatchKey>,
) -> anyhow::Result<Vec<WatchKey>> {
    if !keys.is_empty() {
        let held: Vec<String> = ledger
            .status()
            .await?
            .into_iter()
            .map(|r| r.key.to_string())
            .collect();
        let unknown: Vec<String> = keys
            .iter()
            .map(ToString::to_string)
            .filter(|k| !held.contains(k))
            .collect();
        if !unknown.is_empty() {
            let lines: Vec<String> = unknown
                .iter()
                .map(|k| {
                    let near = exit::nearest(k, held.iter().map(String::as_str));
                    format!("{k}{}", exit::did_you_mean(&near))
                })
                .collect();
            return Err(UnknownName(format!(
                "the ledger ({}) holds no watch {}; nothing was reset (scenewatch status lists the watches it holds)",
                ledger.describe(),
                lines.join(", no watch ")
            ))
            .into());
        }
    }
    Ok(ledger
        .reset_watches(keys, crate::clock::wall_now_ms())
        .await?)
}
