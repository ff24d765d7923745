//! `scenewatch retry-parked`: make parked deliveries and events due again, in the ledger.

use std::path::Path;

use super::Outcome;
use crate::exit;
use crate::state::Ledger as _;

/// Unparks every parked row, or only those of `sink`.
pub async fn run(config: &Path, sink: Option<String>) -> Outcome {
    let ledger = super::ledger::open(config).await?;
    let now = crate::clock::wall_now_ms();
    let result = ledger.unpark(sink.clone(), now).await;
    let _ = ledger.close().await;
    let n = result?;
    println!(
        "{n} parked deliveries and events{} are due again; a running daemon sends them within seconds.",
        sink.map(|s| format!(" of sink `{s}`")).unwrap_or_default()
    );
    Ok(exit::OK)
}
