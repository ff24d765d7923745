//! `scenewatch status`: the ledger read-only, one row per watch, as a table or JSON (rendered
//! by [`crate::status`]).

use std::path::Path;

use super::Outcome;
use crate::exit;

/// Prints the ledger of the configuration at `config`.
pub async fn run(config: &Path, json: bool) -> Outcome {
    let (state_dir, backend) = super::ledger::location(config)?;
    let ledger = crate::state::open_read_only(&backend, &state_dir).await?;
    let rows = ledger.status().await;
    // The poll history only adds the expected finish of waiting jobs: without a readable one,
    // the column says "-".
    let history = match ledger.fact(crate::forecast::HISTORY_FACT).await {
        Ok(Some(json)) => crate::forecast::History::from_json(&json).unwrap_or_default(),
        _ => crate::forecast::History::default(),
    };
    let _ = ledger.close().await;
    let rows = rows?;
    let now = crate::clock::wall_now_ms();
    print!("{}", crate::status::render(&rows, &history, now, json));
    Ok(exit::OK)
}
