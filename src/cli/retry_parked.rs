//! `scenewatch retry-parked`: make parked deliveries and events due again, in the ledger.

use std::path::Path;

use super::Outcome;
use crate::config::{self, Sources};
use crate::exit::{self, UnknownName};
use crate::state::Ledger;

/// Unparks every parked row, or only those of `sink`; a sink name that is neither configured
/// nor in the ledger is an error (exit 65) naming it and the sinks there are.
pub async fn run(config: &Path, sink: Option<String>) -> Outcome {
    let ledger = super::ledger::open(config).await?;
    let result = unpark(&*ledger, config, sink.clone()).await;
    let _ = ledger.close().await;
    let n = result?;
    println!(
        "{n} parked deliveries and events{} are due again; a running daemon sends them within seconds.",
        sink.map(|s| format!(" of sink `{s}`")).unwrap_or_default()
    );
    Ok(exit::OK)
}

async fn unpark(ledger: &dyn Ledger, config: &Path, sink: Option<String>) -> anyhow::Result<u64> {
    if let Some(name) = &sink {
        // The sinks the ledger has open rows for (a removed sink's too), and the configured
        // ones when the whole configuration loads (it may not here: secrets of the daemon's
        // environment); either is enough to know the name.
        let mut known: Vec<String> = ledger
            .backlog()
            .await?
            .into_iter()
            .map(|b| b.sink)
            .collect();
        if let Ok(c) = config::load(&Sources::file_and_process_env(config)) {
            known.extend(c.sinks.iter().map(|s| s.name().to_string()));
            known.extend(c.event_sinks.iter().map(|s| s.name().to_string()));
        }
        known.sort();
        known.dedup();
        if !known.contains(name) {
            let near = exit::nearest(name, known.iter().map(String::as_str));
            let list = if known.is_empty() {
                "none is configured or has rows in the ledger".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            return Err(UnknownName(format!(
                "no sink named `{name}`{} ({list}); nothing was changed",
                exit::did_you_mean(&near)
            ))
            .into());
        }
    }
    Ok(ledger.unpark(sink, crate::clock::wall_now_ms()).await?)
}
