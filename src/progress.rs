//! Live progress for `once` and `demo` on a terminal: one line per watch (phase, remote status,
//! polls, elapsed), redrawn in place on stderr. The [`Board`] is an engine [`Observer`]: it reads
//! the engine's updates (committed polls, deliveries), nothing else. Log lines written meanwhile
//! go through [`ProgressWriter`], which clears the block first so the two never garble each other.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Observer, Update};
use crate::watch::Phase;

/// One watch as shown.
#[derive(Debug, Clone)]
pub struct Row {
    /// The watch key, `workspace/project/asset/index`.
    pub key: String,
    /// Its phase.
    pub phase: Phase,
    /// The last remote status, as the API spells it.
    pub remote: Option<String>,
    /// Answers received.
    pub polls: u64,
    /// When the watch started.
    pub started: Instant,
    /// Set when the watch ended, freezing the elapsed time.
    pub ended_after: Option<Duration>,
    /// A short note: the last error, or where the result went.
    pub note: Option<String>,
}

/// The rows of every watch, updated from the engine's updates and read by the renderer.
#[derive(Debug, Default)]
pub struct Board {
    rows: Mutex<Vec<Row>>,
}

impl Board {
    /// Adds a watch; returns its index for [`Board::update`].
    pub fn add(&self, key: String) -> usize {
        let mut rows = self.lock();
        if let Some(i) = rows.iter().position(|r| r.key == key) {
            return i;
        }
        rows.push(Row {
            key,
            phase: Phase::Pending,
            remote: None,
            polls: 0,
            started: crate::clock::instant_now(),
            ended_after: None,
            note: None,
        });
        rows.len() - 1
    }

    /// Changes one row.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut Row)) {
        if let Some(row) = self.lock().get_mut(i) {
            f(row);
        }
    }

    /// Changes the row of `key` (added if new: watches found while running).
    pub fn update_key(&self, key: &str, f: impl FnOnce(&mut Row)) {
        let i = self.add(key.to_string());
        self.update(i, f);
    }

    /// A copy of every row.
    pub fn snapshot(&self) -> Vec<Row> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Row>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Observer for Board {
    fn update(&self, update: &Update<'_>) {
        match update {
            Update::Polled { record, .. } => {
                let s = &record.state;
                self.update_key(&record.key.to_string(), |r| {
                    r.phase = s.phase;
                    r.remote = s.remote.as_ref().map(|x| x.as_str().to_string());
                    r.polls = s.polls;
                    r.note = s.last_error.clone();
                    if s.phase.is_terminal() && r.ended_after.is_none() {
                        r.ended_after = Some(r.started.elapsed());
                    }
                });
            }
            Update::Delivered {
                key,
                location,
                complete,
                ..
            } => {
                self.update_key(&key.to_string(), |r| {
                    r.note = Some(location.to_string());
                    if *complete {
                        r.phase = Phase::Watching;
                        r.ended_after.get_or_insert_with(|| r.started.elapsed());
                    }
                });
            }
            Update::DeliveryFailed {
                key,
                error,
                gave_up,
                ..
            } => {
                self.update_key(&key.to_string(), |r| {
                    r.note = Some(error.to_string());
                    if *gave_up {
                        r.ended_after.get_or_insert_with(|| r.started.elapsed());
                    }
                });
            }
        }
    }
}

/// Formats one row for the terminal.
pub fn render_row(row: &Row, now: Instant, key_width: usize) -> String {
    let elapsed = row
        .ended_after
        .unwrap_or_else(|| now.saturating_duration_since(row.started));
    let secs = elapsed.as_secs();
    let mark = match row.phase {
        Phase::Watching => "✔",
        p if p.is_terminal() => "✘",
        _ => "…",
    };
    let mut line = format!(
        "{mark} {:<key_width$}  {:<13} {:<20} polls {:>3}  {:>3}m{:02}s",
        row.key,
        row.phase.as_str(),
        row.remote.as_deref().unwrap_or("-"),
        row.polls,
        secs / 60,
        secs % 60,
    );
    if let Some(note) = &row.note {
        line.push_str("  ");
        line.push_str(note);
    }
    line
}

/// Shared between the renderer and the log writer: how many lines the block occupies now.
#[derive(Debug, Default)]
struct Screen {
    lines_drawn: usize,
}

/// Draws the board on stderr until cancelled, then draws it a last time.
#[derive(Debug, Clone)]
pub struct Progress {
    board: Arc<Board>,
    screen: Arc<Mutex<Screen>>,
}

impl Progress {
    /// True when stderr is a terminal, so redrawing in place makes sense.
    pub fn available() -> bool {
        std::io::stderr().is_terminal()
    }

    /// A progress display of `board`.
    pub fn new(board: Arc<Board>) -> Self {
        Self {
            board,
            screen: Arc::new(Mutex::new(Screen::default())),
        }
    }

    /// The writer logs must use while the display runs.
    pub fn log_writer(&self) -> ProgressWriter {
        ProgressWriter {
            screen: self.screen.clone(),
        }
    }

    /// The board drawn.
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Redraws every 250 ms until `stop`, then once more.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => self.draw(),
                _ = stop.cancelled() => break,
            }
        }
        self.draw();
    }

    fn draw(&self) {
        let rows = self.board.snapshot();
        let now = crate::clock::instant_now();
        let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
        let mut screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        clear_block(&mut out, screen.lines_drawn);
        for row in &rows {
            out.push_str(&render_row(row, now, width));
            out.push('\n');
        }
        // A failed write to the terminal is not worth stopping for.
        let _ = std::io::stderr().write_all(out.as_bytes());
        screen.lines_drawn = rows.len();
    }
}

fn clear_block(out: &mut String, lines: usize) {
    if lines > 0 {
        // Cursor up `lines`, to column 0, clear to the end of the screen.
        out.push_str(&format!("\x1b[{lines}A\r\x1b[J"));
    }
}

/// A `tracing` writer that clears the progress block before each log line; the next redraw
/// puts the block back below it.
#[derive(Debug, Clone)]
pub struct ProgressWriter {
    screen: Arc<Mutex<Screen>>,
}

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        clear_block(&mut out, screen.lines_drawn);
        screen.lines_drawn = 0;
        let mut err = std::io::stderr().lock();
        err.write_all(out.as_bytes())?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ProgressWriter {
    type Writer = ProgressWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn row_shows_phase_status_polls_and_elapsed() {
        let board = Board::default();
        let i = board.add("w/1/2/3".into());
        tokio::time::advance(Duration::from_secs(75)).await;
        board.update(i, |r| {
            r.phase = Phase::Waiting;
            r.remote = Some("SUMMARIZING".into());
            r.polls = 4;
        });
        let line = render_row(&board.snapshot()[0], crate::clock::instant_now(), 7);
        assert_eq!(
            line,
            "… w/1/2/3  waiting       SUMMARIZING          polls   4    1m15s"
        );
    }
}
