//! Live progress for `once` and `demo` on a terminal: one line per watch (phase, remote status,
//! polls, elapsed, where the result went), redrawn in place on stderr, and the closing summary
//! both verbs print. The [`Board`] is an engine [`Observer`]: it reads the engine's updates
//! (committed polls, deliveries), nothing else.
//!
//! The block stays intact at any width: every line is fitted to the terminal's width as it is
//! at each redraw (measured in terminal cells, so `…`, `✔` and wide characters count for what
//! they take), a result path is elided in the middle (its file name is what matters), anything
//! else is cut at the end; at most the terminal's height less one line is drawn (the rest is
//! counted on one line), so no line ever wraps or scrolls away, and a redraw moves up exactly
//! the lines the last one drew. Log lines written meanwhile go through [`ProgressWriter`],
//! which clears the block, writes the line (it stays above) and draws the block again below it.
//! Text from the API (remote statuses, error messages) is shown with control characters escaped
//! ([`crate::status::escape_controls`]). Colour only on a terminal, and never with `NO_COLOR`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

use crate::engine::{Observer, Update};
use crate::once::OnceReport;
use crate::status::escape_controls;
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
    pub note: Option<Note>,
}

/// The last column of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Where a sink put the result (a path, URL or key): elided in the middle when too long.
    Location(String),
    /// The last error: cut at the end when too long.
    Problem(String),
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
                    match &s.last_error {
                        Some(e) => r.note = Some(Note::Problem(e.clone())),
                        // A location stays; an error that went away goes.
                        None if matches!(r.note, Some(Note::Problem(_))) => r.note = None,
                        None => {}
                    }
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
                    r.note = Some(Note::Location(location.to_string()));
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
                    r.note = Some(Note::Problem(error.to_string()));
                    if *gave_up {
                        r.ended_after.get_or_insert_with(|| r.started.elapsed());
                    }
                });
            }
        }
    }
}

/// How many terminal cells `s` takes.
pub fn cells(s: &str) -> usize {
    s.width()
}

/// `s` cut to at most `width` cells, with `…` at the end when something was cut.
pub fn fit_end(s: &str, width: usize) -> String {
    if cells(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width - 1 {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// `s` cut to at most `width` cells by taking characters out of its middle (a third of what is
/// kept from the start, the rest from the end, where a path's file name is).
pub fn elide_middle(s: &str, width: usize) -> String {
    if cells(s) <= width {
        return s.to_string();
    }
    if width < 3 {
        return fit_end(s, width);
    }
    let budget = width - 1;
    let head_cells = budget / 3;
    let mut head = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > head_cells {
            break;
        }
        head.push(c);
        used += w;
    }
    let tail_cells = budget - used;
    let mut tail: Vec<char> = Vec::new();
    let mut tail_used = 0;
    for c in s.chars().rev() {
        let w = c.width().unwrap_or(0);
        if tail_used + w > tail_cells {
            break;
        }
        tail.push(c);
        tail_used += w;
    }
    head.push('…');
    head.extend(tail.into_iter().rev());
    head
}

/// `s` padded with spaces to `width` cells (never cut).
fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(cells(s))));
    out
}

/// The widths of the aligned columns, from the rows shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    key: usize,
    phase: usize,
    remote: usize,
}

impl Columns {
    /// Wide enough for every row (the remote status at most 24 cells).
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Self {
        let mut c = Columns::default();
        for r in rows {
            c.key = c.key.max(cells(&r.key));
            c.phase = c.phase.max(r.phase.as_str().len());
            let remote = r
                .remote
                .as_deref()
                .map_or(1, |x| cells(&escape_controls(x)));
            c.remote = c.remote.max(remote.min(24));
        }
        c
    }
}

/// The shortest room worth giving the note; below it the note is left out.
const MIN_NOTE: usize = 8;

/// Formats one row in at most `width` cells; with `colour`, the mark is coloured (escape
/// sequences take no cells).
pub fn render_row(row: &Row, now: Instant, columns: Columns, width: usize, colour: bool) -> String {
    let elapsed = row
        .ended_after
        .unwrap_or_else(|| now.saturating_duration_since(row.started));
    let secs = elapsed.as_secs();
    let (mark, sgr) = match row.phase {
        Phase::Watching => ("✔", "32"),
        p if p.is_terminal() => ("✘", "31"),
        _ => ("…", "33"),
    };
    let remote = fit_end(
        &escape_controls(row.remote.as_deref().unwrap_or("-")),
        columns.remote,
    );
    let fixed = format!(
        " {}  {}  {}  polls {:>3}  {:>3}m{:02}s",
        pad(&row.key, columns.key),
        pad(row.phase.as_str(), columns.phase),
        pad(&remote, columns.remote),
        row.polls,
        secs / 60,
        secs % 60,
    );
    let mut line = fit_end(&fixed, width.saturating_sub(1));
    let room = width.saturating_sub(1 + cells(&line) + 2);
    match &row.note {
        Some(note) if room >= MIN_NOTE && cells(&line) == cells(&fixed) => {
            line.push_str("  ");
            match note {
                Note::Location(l) => line.push_str(&elide_middle(&escape_controls(l), room)),
                Note::Problem(p) => line.push_str(&fit_end(&escape_controls(p), room)),
            }
        }
        _ => {}
    }
    if width == 0 {
        return String::new();
    }
    if colour {
        format!("\x1b[{sgr}m{mark}\x1b[0m{line}")
    } else {
        format!("{mark}{line}")
    }
}

/// The lines of the block for a terminal of `width` × `height` cells: one per row while they
/// fit in `height - 1` lines (the line the cursor waits on stays free, so nothing scrolls),
/// otherwise the open watches first and one line counting the rest.
pub fn frame(rows: &[Row], now: Instant, width: usize, height: usize, colour: bool) -> Vec<String> {
    let max_lines = height.saturating_sub(1);
    if rows.is_empty() || max_lines == 0 || width == 0 {
        return Vec::new();
    }
    let shown: Vec<&Row> = if rows.len() <= max_lines {
        rows.iter().collect()
    } else {
        // Open watches first, then settled ones, each in board order, then shown in board order.
        let keep = max_lines - 1;
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| (rows[i].ended_after.is_some(), i));
        let mut picked: Vec<usize> = order.into_iter().take(keep).collect();
        picked.sort_unstable();
        picked.into_iter().map(|i| &rows[i]).collect()
    };
    let columns = Columns::of(shown.iter().copied());
    let mut lines: Vec<String> = shown
        .iter()
        .map(|r| render_row(r, now, columns, width, colour))
        .collect();
    let hidden = rows.len() - shown.len();
    if hidden > 0 {
        let settled = rows.iter().filter(|r| r.ended_after.is_some()).count()
            - shown.iter().filter(|r| r.ended_after.is_some()).count();
        lines.push(fit_end(
            &format!(
                "  … {hidden} more watches ({settled} settled, {} open)",
                hidden - settled
            ),
            width,
        ));
    }
    lines
}

/// The terminal's size in cells (columns, lines) as stderr sees it; `COLUMNS`/`LINES`, then
/// 80 × 24, when it cannot be asked.
pub fn terminal_size() -> (usize, usize) {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(default)
    };
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(ws) if ws.ws_col > 0 && ws.ws_row > 0 => {
            (usize::from(ws.ws_col), usize::from(ws.ws_row))
        }
        _ => (env("COLUMNS", 80), env("LINES", 24)),
    }
}

/// Whether to colour output on a stream that is (`tty`) or is not a terminal: only on a
/// terminal, and not when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn colour_allowed(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// What the block occupies on the terminal now.
#[derive(Debug, Default)]
struct Screen {
    /// The cells each line of the last frame took (each ended with a newline).
    drawn: Vec<usize>,
    /// The last frame was drawn: log lines go below it as plain lines.
    finished: bool,
}

impl Screen {
    /// Moves the cursor back to the first line of the block and clears to the end of the
    /// screen. A terminal narrowed since the frame was drawn may have wrapped its lines: each
    /// counts for the lines it now takes.
    fn clear(&mut self, out: &mut String, width: usize) {
        let lines: usize = self
            .drawn
            .iter()
            .map(|&w| w.div_ceil(width.max(1)).max(1))
            .sum();
        if lines > 0 {
            let _ = write!(out, "\x1b[{lines}A\r\x1b[J");
        }
        self.drawn.clear();
    }
}

/// The board, what is on the screen, and how to draw.
#[derive(Debug)]
struct Display {
    board: Arc<Board>,
    screen: Mutex<Screen>,
    colour: bool,
}

impl Display {
    fn screen(&self) -> std::sync::MutexGuard<'_, Screen> {
        self.screen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends to `out` the frame of now, recording the lines it takes.
    fn frame_into(&self, screen: &mut Screen, out: &mut String, width: usize, height: usize) {
        let lines = frame(
            &self.board.snapshot(),
            crate::clock::instant_now(),
            width,
            height,
            self.colour,
        );
        for line in lines {
            screen.drawn.push(cells(&strip_sgr(&line)));
            out.push_str(&line);
            out.push('\n');
        }
    }

    fn redraw(&self, last: bool) {
        let (width, height) = terminal_size();
        let mut screen = self.screen();
        if screen.finished {
            return;
        }
        let mut out = String::new();
        screen.clear(&mut out, width);
        self.frame_into(&mut screen, &mut out, width, height);
        screen.finished = last;
        // A failed write to the terminal is not worth stopping for.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }
}

/// `line` without the colour sequences [`render_row`] adds.
fn strip_sgr(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Draws the board on stderr until cancelled, then draws it a last time.
#[derive(Debug, Clone)]
pub struct Progress {
    display: Arc<Display>,
}

impl Progress {
    /// True when stderr is a terminal, so redrawing in place makes sense.
    pub fn available() -> bool {
        std::io::stderr().is_terminal()
    }

    /// A progress display of `board`.
    pub fn new(board: Arc<Board>) -> Self {
        Self {
            display: Arc::new(Display {
                board,
                screen: Mutex::new(Screen::default()),
                colour: colour_allowed(std::io::stderr().is_terminal()),
            }),
        }
    }

    /// The writer logs must use while the display runs.
    pub fn log_writer(&self) -> ProgressWriter {
        ProgressWriter {
            display: self.display.clone(),
        }
    }

    /// The board drawn.
    pub fn board(&self) -> &Arc<Board> {
        &self.display.board
    }

    /// Never draws (something else writes to the same terminal): log lines go through the
    /// writer as plain lines.
    pub fn stand_down(&self) {
        self.display.screen().finished = true;
    }

    /// Redraws every 250 ms until `stop`, then once more, for the last time.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => self.display.redraw(false),
                _ = stop.cancelled() => break,
            }
        }
        self.display.redraw(true);
    }
}

/// A `tracing` writer for log lines beside the block: it clears the block, writes the line
/// (which so stays above it) and draws the block again, all under the lock the redraws take,
/// so a log line and a frame never interleave. After the last frame it writes plain lines.
#[derive(Debug, Clone)]
pub struct ProgressWriter {
    display: Arc<Display>,
}

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let display = &self.display;
        let mut screen = display.screen();
        let mut err = std::io::stderr().lock();
        if screen.finished {
            err.write_all(buf)?;
            return Ok(buf.len());
        }
        let (width, height) = terminal_size();
        let mut out = String::new();
        screen.clear(&mut out, width);
        err.write_all(out.as_bytes())?;
        err.write_all(buf)?;
        if !buf.ends_with(b"\n") {
            err.write_all(b"\n")?;
        }
        let mut out = String::new();
        display.frame_into(&mut screen, &mut out, width, height);
        err.write_all(out.as_bytes())?;
        err.flush()?;
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

/// The closing summary of `once` (and the body of the demo's): how many watches ended in each
/// phase, one line per watch (where its result went, or how it ended and why), and the assets
/// a project or asset watch found but could not resolve to an index. API text is escaped; paths
/// are given whole, to be copied.
pub fn summary(report: &OnceReport) -> String {
    let mut s = String::new();
    let mut counts = Vec::new();
    for phase in Phase::ALL {
        let n = report
            .outcomes
            .iter()
            .filter(|o| o.state.phase == phase)
            .count();
        if n > 0 {
            counts.push(format!("{n} {phase}"));
        }
    }
    let n = report.outcomes.len();
    let _ = writeln!(
        s,
        "{n} watch{}: {}",
        if n == 1 { "" } else { "es" },
        if counts.is_empty() {
            "none configured or found".to_string()
        } else {
            counts.join(", ")
        }
    );
    for o in &report.outcomes {
        let secs = o.elapsed.as_secs_f32();
        match (o.state.phase, o.locations.first(), &o.sink_error) {
            (Phase::Watching, Some(loc), None) => {
                let _ = write!(s, "  ✔ {}  completed in {secs:.1}s → {loc}", o.spec.key);
                if o.locations.len() > 1 {
                    let _ = write!(s, " (+{} more)", o.locations.len() - 1);
                }
                s.push('\n');
            }
            (phase, _, _) => {
                let mark = if phase.is_terminal() || o.sink_error.is_some() {
                    "✘"
                } else {
                    "…"
                };
                let why = o
                    .sink_error
                    .clone()
                    .or_else(|| o.state.last_error.clone())
                    .or_else(|| o.state.remote.as_ref().map(|r| r.as_str().to_string()))
                    .map(|w| format!(" ({})", escape_controls(&w)))
                    .unwrap_or_default();
                let _ = writeln!(s, "  {mark} {}  {phase} after {secs:.1}s{why}", o.spec.key);
            }
        }
    }
    if !report.unresolved.is_empty() {
        let _ = writeln!(
            s,
            "{} asset(s) found by a project or asset watch did not resolve to an index:",
            report.unresolved.len()
        );
        for u in &report.unresolved {
            let _ = writeln!(s, "  ✘ {}", escape_controls(u));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str) -> Row {
        Row {
            key: key.into(),
            phase: Phase::Waiting,
            remote: Some("SUMMARIZING".into()),
            polls: 4,
            started: crate::clock::instant_now(),
            ended_after: Some(Duration::from_secs(75)),
            note: None,
        }
    }

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
        let rows = board.snapshot();
        let line = render_row(
            &rows[0],
            crate::clock::instant_now(),
            Columns::of(&rows),
            200,
            false,
        );
        assert_eq!(line, "… w/1/2/3  waiting  SUMMARIZING  polls   4    1m15s");
    }

    #[tokio::test]
    async fn a_row_never_takes_more_cells_than_the_width() {
        let mut r = row("demo/100/2001/3001");
        r.note = Some(Note::Location(
            "/tmp/a-rather-long-directory/scenewatch-demo/results/demo/100/2001/3001.json".into(),
        ));
        let cols = Columns::of([&r]);
        for width in [0, 1, 2, 5, 20, 40, 57, 60, 79, 80, 120, 200] {
            let line = render_row(&r, crate::clock::instant_now(), cols, width, false);
            assert!(cells(&line) <= width, "{width}: {line:?}");
            // The colour changes no width.
            let coloured = render_row(&r, crate::clock::instant_now(), cols, width, true);
            assert_eq!(strip_sgr(&coloured), line);
        }
        let at80 = render_row(&r, crate::clock::instant_now(), cols, 80, false);
        assert!(at80.ends_with("  /tmp/…/3001.json"), "{at80}");
        assert_eq!(cells(&at80), 80, "{at80}");
        let at200 = render_row(&r, crate::clock::instant_now(), cols, 200, false);
        assert!(
            at200.ends_with(
                "  /tmp/a-rather-long-directory/scenewatch-demo/results/demo/100/2001/3001.json"
            ),
            "{at200}"
        );
    }

    #[test]
    fn widths_are_cells_not_bytes() {
        assert_eq!(cells("✔ é"), 3);
        assert_eq!(cells("日本"), 4);
        assert_eq!(fit_end("日本語のテキスト", 7), "日本語…");
        assert_eq!(cells(&fit_end("日本語のテキスト", 7)), 7);
        assert_eq!(elide_middle("/abcdef/ghijkl/file.json", 12), "/ab…ile.json");
        assert_eq!(elide_middle("short", 12), "short");
        assert_eq!(cells(&elide_middle("/日本/語のテ/キスト.json", 11)), 11);
    }

    #[test]
    fn api_text_cannot_move_the_cursor() {
        let mut r = row("w/1/2/3");
        r.remote = Some("QUEUED\x1b[2J".into());
        r.note = Some(Note::Problem("bad\r\nanswer\x1b]0;title\x07".into()));
        let line = render_row(
            &r,
            crate::clock::instant_now(),
            Columns::of([&r]),
            200,
            false,
        );
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("QUEUED\\u{1b}[2J"), "{line}");
        assert!(line.contains("bad\\r\\nanswer"), "{line}");
    }

    #[test]
    fn a_frame_fits_the_height_and_counts_what_it_hides() {
        let mut rows: Vec<Row> = (0..30).map(|i| row(&format!("w/1/{i}/9"))).collect();
        for r in rows.iter_mut().skip(5) {
            r.ended_after = Some(Duration::from_secs(1));
            r.phase = Phase::Watching;
        }
        rows[29].ended_after = None;
        rows[29].phase = Phase::Waiting;
        let lines = frame(&rows, crate::clock::instant_now(), 80, 10, false);
        assert_eq!(lines.len(), 9);
        // The open watches (0..5 and 29) are all shown.
        for k in ["w/1/0/9", "w/1/4/9", "w/1/29/9"] {
            assert!(
                lines.iter().any(|l| l.contains(&format!(" {k} "))),
                "{k}: {lines:#?}"
            );
        }
        assert_eq!(lines[8], "  … 22 more watches (22 settled, 0 open)");
        assert_eq!(
            frame(&rows[..3], crate::clock::instant_now(), 80, 10, false).len(),
            3
        );
        assert!(frame(&rows, crate::clock::instant_now(), 80, 1, false).is_empty());
    }

    #[test]
    fn a_narrowed_terminal_clears_the_lines_it_wrapped_into() {
        let mut screen = Screen {
            drawn: vec![80, 80, 10],
            finished: false,
        };
        let mut out = String::new();
        screen.clear(&mut out, 40);
        assert_eq!(out, "\x1b[5A\r\x1b[J");
        assert!(screen.drawn.is_empty());
    }
}
