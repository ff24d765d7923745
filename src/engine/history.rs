//! The poll history ([`crate::forecast::History`]) in the ledger: read once at start, saved as
//! one fact once a minute when it changed, and at shutdown. A crash loses at most a minute of
//! learning; a stored history that cannot be read is reported and learning starts over (it only
//! times polls: nothing is lost with it).

use tracing::{info, warn};

use crate::forecast::{HISTORY_FACT, History};
use crate::state::Ledger;

/// The stored history, or an empty one (with a warning that says why) when there is none that
/// can be read.
pub(super) async fn load(ledger: &dyn Ledger) -> History {
    match ledger.fact(HISTORY_FACT).await {
        Ok(None) => History::default(),
        Ok(Some(json)) => match History::from_json(&json) {
            Ok(h) => {
                if h.groups() > 0 {
                    info!(
                        projects = h.groups(),
                        "Poll history loaded: waiting jobs of these projects are timed from their past queue and run times."
                    );
                }
                h
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "The stored poll history is ignored; it is learned again from the next jobs (until then the backoff series times polls)."
                );
                History::default()
            }
        },
        Err(e) => {
            warn!(
                error = %e,
                "Cannot read the poll history from the ledger; it is learned again from the next jobs."
            );
            History::default()
        }
    }
}

/// Saves the history if it changed since the last save.
pub(super) async fn save(ledger: &dyn Ledger, history: &std::sync::Mutex<History>) {
    let json = {
        let mut h = match history.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !h.take_dirty() {
            return;
        }
        h.to_json()
    };
    if let Err(e) = ledger.set_fact(HISTORY_FACT, &json).await {
        warn!(error = %e, "Cannot save the poll history to the ledger; it is tried again in a minute.");
        if let Ok(mut h) = history.lock() {
            h.mark_dirty();
        }
    }
}
