//! The live progress display of `once` and the demo: whether there is one (asked for and on a
//! terminal), the board the engine reports to, the writer logs must use around it, and the task
//! that draws it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::progress::{Board, Progress, ProgressWriter};

/// A progress display, or none (the board is then only written to).
pub struct Live {
    progress: Option<Progress>,
    board: Arc<Board>,
}

impl Live {
    /// No display.
    pub fn off() -> Self {
        Self {
            progress: None,
            board: Arc::default(),
        }
    }

    /// A display when wanted (`no_progress` unset) and stderr is a terminal.
    pub fn wanted(no_progress: bool) -> Self {
        let progress = (!no_progress && Progress::available())
            .then(|| Progress::new(Arc::new(Board::default())));
        let board = progress
            .as_ref()
            .map(|p| p.board().clone())
            .unwrap_or_default();
        Self { progress, board }
    }

    /// The writer log lines must go through while the display runs; `None` without one.
    pub fn log_writer(&self) -> Option<ProgressWriter> {
        self.progress.as_ref().map(Progress::log_writer)
    }

    /// No display after all, when `yes` (a `stdout` sink would print results into it); the
    /// log writer then writes plain lines.
    pub fn stand_down_if(mut self, yes: bool) -> Self {
        if yes && let Some(p) = self.progress.take() {
            p.stand_down();
        }
        self
    }

    /// The board the engine reports to.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Starts drawing (when there is a display).
    pub fn start(self) -> Drawing {
        let stop = CancellationToken::new();
        let task = self.progress.map(|p| tokio::spawn(p.run(stop.clone())));
        Drawing { stop, task }
    }
}

/// The progress display's task, if any.
pub struct Drawing {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drawing {
    /// Stops drawing after a last frame.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}
