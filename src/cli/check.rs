//! `scenewatch check`: load and validate the configuration, print its warnings and a one-line
//! summary; every problem at once (exit 78) otherwise.

use std::path::Path;

use super::Outcome;
use crate::config::{self, Sources};
use crate::exit;

/// Validates the configuration at `path` (with the process environment).
pub fn run(path: &Path) -> Outcome {
    let c = config::load(&Sources::file_and_process_env(path))?;
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: configuration is valid: {} watch(es), {} sink(s), endpoint {}",
        path.display(),
        c.watches.len(),
        c.sinks.len(),
        c.api.endpoint
    );
    Ok(exit::OK)
}
