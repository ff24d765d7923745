//! `scenewatch completions`: a shell completion script generated from the clap definition.

use clap::CommandFactory as _;

use super::Outcome;
use super::args::Cli;
use crate::exit;

/// Prints the completion script of `shell`.
pub fn run(shell: clap_complete::Shell) -> Outcome {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "scenewatch", &mut std::io::stdout());
    Ok(exit::OK)
}
