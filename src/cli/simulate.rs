//! `scenewatch simulate`: serve the Media Intelligence simulator until a stop signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Outcome;
use crate::exit;

/// Serves the simulator on `listen`, the demo scenario unless `scenario` names a file.
pub async fn run(listen: SocketAddr, scenario: Option<PathBuf>) -> Outcome {
    crate::sim::run_cli(listen, scenario, crate::signals::terminate()).await?;
    Ok(exit::OK)
}
