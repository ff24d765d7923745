//! `scenewatch demo`: [`crate::demo::run`] under the progress display, then its summary.

use std::path::Path;

use super::{Live, Outcome};

/// Runs the simulator and a watcher together and prints what they did.
pub async fn run(out: &Path, live: Live) -> Outcome {
    let shutdown = crate::signals::shutdown_on_signal();
    let board = live.board();
    let drawing = live.start();
    let result = crate::demo::run(out, board, shutdown).await;
    drawing.finish().await;
    match result {
        Ok(run) => {
            println!("{}", run.summary());
            Ok(run.exit_code())
        }
        // Every failure of the demo is 1, whatever its type: the demo needs no configuration
        // and writes where it was told, so 78 or 74 would point at things nobody set up.
        Err(e) => {
            eprintln!("error: {}", super::chain(&e));
            Ok(crate::exit::ERROR)
        }
    }
}
