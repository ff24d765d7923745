//! The ledger of a configuration, opened for an operator verb (`status`, `reset`,
//! `retry-parked`): only `state_dir` is read from the configuration, and no daemon is needed.

use std::path::{Path, PathBuf};

use crate::config::{self, ConfigErrors, Sources};
use crate::state::SqliteLedger;

/// The `state_dir` of the configuration at `path` (the file and the process environment).
pub fn state_dir(path: &Path) -> Result<PathBuf, ConfigErrors> {
    let (raw, _) = config::load_raw(&Sources::file_and_process_env(path))?;
    Ok(PathBuf::from(raw.state_dir))
}

/// Opens the ledger for writing; safe while a daemon runs (SQLite serialises the writes).
pub async fn open(path: &Path) -> anyhow::Result<SqliteLedger> {
    let state_dir = state_dir(path)?;
    // The sink lists only matter for new versions, which operator verbs do not create.
    Ok(SqliteLedger::open(&state_dir, Vec::new(), Vec::new()).await?)
}
