//! The ledger of a configuration, opened for an operator verb (`status`, `reset`,
//! `retry-parked`, `ledger migrate`): only `state_dir` and `[state]` are read from the
//! configuration (not the API key, not the sinks), and no daemon is needed.

use std::path::{Path, PathBuf};

use crate::config::{self, ConfigErrors, Sources};
use crate::state::{self, Backend, OpenFor, SharedLedger};

/// The `state_dir` and the ledger backend of the configuration at `path` (the file and the
/// process environment); a problem in `[state]` is reported naming its key.
pub fn location(path: &Path) -> Result<(PathBuf, Backend), ConfigErrors> {
    let loaded = config::load_all(&Sources::file_and_process_env(path));
    let mut problems = loaded.problems.clone();
    let backend = if problems.is_empty() {
        config::check_state(&loaded.origins, &mut problems, &loaded.raw.state)
    } else {
        None
    };
    match backend {
        Some(b) if problems.is_empty() => Ok((PathBuf::from(&loaded.raw.state_dir), b)),
        _ => Err(loaded.located(problems)),
    }
}

/// Opens the ledger for writing; safe while a daemon runs (SQLite serialises the writes,
/// PostgreSQL runs them in transactions of their own).
pub async fn open(path: &Path) -> anyhow::Result<SharedLedger> {
    let (state_dir, backend) = location(path)?;
    // The sink lists only matter for new versions, which operator verbs do not create.
    Ok(state::open(
        &backend,
        &state_dir,
        Vec::new(),
        Vec::new(),
        OpenFor::Operator,
    )
    .await?)
}
