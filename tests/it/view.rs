//! The live progress view of `demo` and `once` as a person sees it: the real binary on a
//! pseudo-terminal of a given size, everything it wrote fed to a terminal emulator (`vt100`),
//! then the final screen and the whole scrollback read back. A view that miscounts its lines
//! leaves stale copies of rows in the scrollback; one that writes rows wider than the terminal
//! wraps them; a log line written into the block tears a row.

use std::fs::File;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

use crate::support::{start_sim, watch, watcher_config};

/// What the binary wrote to the terminal, and how it exited.
struct Session {
    bytes: Vec<u8>,
    code: Option<i32>,
}

/// Runs the binary with `args` on a new pseudo-terminal of `cols` × `rows` (stdout and stderr
/// both on it, as in a shell), `env` added, until it exits (killed after `within`).
fn run_in_pty(
    args: &[&str],
    env: &[(&str, &str)],
    cols: u16,
    rows: u16,
    within: Duration,
) -> Session {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("set the window size");
    let slave: File = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .expect("open the pty's terminal side")
    .into();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scenewatch"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("SCENEWATCH")
            || ["RUST_LOG", "NO_COLOR", "COLUMNS", "LINES", "JOURNAL_STREAM"].contains(&&*k)
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("TERM", "xterm-256color")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().expect("spawn scenewatch");
    // The terminal side is now held by the child alone: reads end (EIO) when it exits.
    drop(cmd);
    let mut master = File::from(master);
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        bytes
    });
    let until = Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Session {
        bytes: reader.join().unwrap(),
        code,
    }
}

/// One line of what the terminal holds, scrollback first.
struct Line {
    text: String,
    /// The terminal wrapped it: it was longer than the width.
    wrapped: bool,
}

/// Every line the terminal holds after `bytes`: the scrollback, oldest first, then the screen.
fn history(bytes: &[u8], cols: u16, rows: u16) -> (Vec<Line>, Vec<String>) {
    let nz = |n: u16| std::num::NonZeroU16::new(n).expect("a size above 0");
    let mut parser = vt100::Parser::new(nz(rows), nz(cols), 100_000);
    parser.process(bytes);
    let screen = parser.screen_mut();
    let back = screen.scrollback_len();
    let mut lines = Vec::new();
    for offset in (1..=back).rev() {
        screen.set_scrollback(offset);
        let text = screen.rows(0, cols).next().unwrap_or_default();
        lines.push(Line {
            text,
            wrapped: screen.row_wrapped(0),
        });
    }
    screen.set_scrollback(0);
    let visible: Vec<String> = screen.rows(0, cols).collect();
    for (i, text) in visible.iter().enumerate() {
        lines.push(Line {
            text: text.clone(),
            wrapped: screen.row_wrapped(u16::try_from(i).unwrap()),
        });
    }
    (lines, visible)
}

/// A row of the view: a mark, a space, a watch key, … `polls N  XmYYs`.
fn is_view_row(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some('✔' | '✘' | '…'))
        && chars.next() == Some(' ')
        && text.contains(" polls ")
}

/// A complete row: after `polls`, the count and the elapsed time; nothing from a log line.
fn assert_row_whole(text: &str) {
    let after = text.split(" polls ").nth(1).unwrap_or_default();
    let mut words = after.split_whitespace();
    let polls = words.next().unwrap_or_default();
    let elapsed = words.next().unwrap_or_default();
    assert!(polls.parse::<u64>().is_ok(), "torn row (polls): {text:?}");
    assert!(
        elapsed.ends_with('s') && elapsed.contains('m'),
        "torn row (elapsed): {text:?}"
    );
    for log in [" INFO ", " WARN ", " ERROR ", "scenewatch::"] {
        assert!(!text.contains(log), "a log line tore a row: {text:?}");
    }
}

/// The checks every run shares: each watch has exactly one view row in the whole history (no
/// stale copies, no duplicates), no row of the view wrapped, no row is torn, and the final
/// screen shows the last frame of every watch. Returns the last row of each key.
fn assert_view_intact(session: &Session, cols: u16, rows: u16, keys: &[&str]) -> Vec<String> {
    let (lines, _visible) = history(&session.bytes, cols, rows);
    let all: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    let view: Vec<&Line> = lines.iter().filter(|l| is_view_row(&l.text)).collect();
    for l in &view {
        assert!(
            !l.wrapped,
            "a row wider than {cols} columns wrapped: {:?}\n{all}",
            l.text
        );
        assert_row_whole(&l.text);
    }
    let mut last = Vec::new();
    for key in keys {
        let mine: Vec<&&Line> = view
            .iter()
            .filter(|l| l.text.contains(&format!(" {key} ")))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "{key} has {} rows in the terminal's history at {cols} columns (stale or duplicated rows):\n{all}",
            mine.len()
        );
        last.push(mine[0].text.clone());
    }
    assert_eq!(view.len(), keys.len(), "rows of unknown watches:\n{all}");
    // No two identical marked lines anywhere (summary lines included).
    let mut marked: Vec<&str> = lines
        .iter()
        .map(|l| l.text.trim_end())
        .filter(|t| t.trim_start().starts_with(['✔', '✘']))
        .collect();
    let n = marked.len();
    marked.sort_unstable();
    marked.dedup();
    assert_eq!(marked.len(), n, "duplicated lines:\n{all}");
    last
}

const DEMO_KEYS: [&str; 5] = [
    "demo/100/2001/3001",
    "demo/100/2002/3002",
    "demo/100/2003/3003",
    "demo/100/2004/3004",
    "demo/100/2005/3005",
];

/// Runs the demo in a terminal `cols` wide, into a directory with a long path (the rows show
/// result paths, which must be elided to fit).
fn demo_at(cols: u16, rows: u16) -> (Session, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir
        .path()
        .join("a-rather-long-directory-name-for-results")
        .join("scenewatch-demo");
    let out = out.to_str().unwrap().to_string();
    let session = run_in_pty(
        &["demo", "--out", &out],
        &[],
        cols,
        rows,
        Duration::from_secs(90),
    );
    (session, dir, out)
}

#[test]
fn the_demo_view_stays_intact_at_80_and_200_columns() {
    let wide = std::thread::spawn(|| demo_at(200, 50));
    let (narrow, _d80, out80) = demo_at(80, 24);
    let (wide, _d200, out200) = wide.join().unwrap();
    for (session, cols, rows, out) in [(&narrow, 80, 24, &out80), (&wide, 200, 50, &out200)] {
        let text = String::from_utf8_lossy(&session.bytes);
        assert_eq!(session.code, Some(0), "{text}");
        let last = assert_view_intact(session, cols, rows, &DEMO_KEYS);
        // The final frame: four delivered, the failing one failed.
        let done = last.iter().filter(|r| r.starts_with('✔')).count();
        assert_eq!(done, 4, "{last:#?}");
        assert!(
            last[2].starts_with("✘ demo/100/2003/3003  failed"),
            "{last:#?}"
        );
        // Result paths: whole at 200 columns, elided in the middle (file name kept) at 80.
        let path = format!("{out}/results/demo/100/2001/3001.json");
        if cols == 200 {
            assert!(last[0].trim_end().ends_with(&path), "{}", last[0]);
        } else {
            assert!(
                last[0].trim_end().ends_with("…/3001.json") || !last[0].contains(".json"),
                "{}",
                last[0]
            );
            assert!(!last[0].contains(&path), "{}", last[0]);
        }
        // Colour on a terminal, when NO_COLOR is unset; the summary follows the view.
        assert!(
            text.contains("\x1b[32m✔\x1b[0m") && has_sgr(&text),
            "no colour on a terminal"
        );
        assert!(text.contains("5 watches: 4 watching, 1 failed"), "{text}");
    }
}

const SECRET: &str = "SK-view";

/// Whether `text` holds a colour or style sequence (`ESC [ … m`); cursor moves do not count.
fn has_sgr(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        let params = rest.find(|c: char| !c.is_ascii_digit() && c != ';');
        params.is_some_and(|i| rest[i..].starts_with('m'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_keeps_its_view_whole_between_log_lines_and_without_colour_under_no_color() {
    let assets: String = (10..16)
        .map(|i| {
            format!(
                "[[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{i}\"\nindex_id = \"{}\"\nscenes = 2\nqueue = \"{}ms\"\nrun = \"{}ms\"\n",
                i + 10,
                100 * (i - 9),
                300 * (i - 9)
            )
        })
        .collect();
    let sim = start_sim(&format!(
        "seed = 3\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n[faults]\nhttp_503 = 0.25\n{assets}"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("x".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let watches: String = (10..16)
        .map(|i| watch(&i.to_string(), &(i + 10).to_string(), None, "index"))
        .collect();
    let cfg = deep.join("c.toml");
    std::fs::write(&cfg, watcher_config(&sim.url, &deep, &watches)).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let session = tokio::task::spawn_blocking(move || {
        run_in_pty(
            &["once", "--config", &cfg],
            &[
                ("SCENEWATCH__API__SECRET_KEY", SECRET),
                // Every poll, failure and delivery logged: many lines between frames.
                ("RUST_LOG", "scenewatch=info"),
                ("NO_COLOR", "1"),
            ],
            80,
            12,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&session.bytes);
    assert_eq!(session.code, Some(0), "{text}");
    assert!(!text.contains(SECRET));
    let keys: Vec<String> = (10..16).map(|i| format!("w/1/{i}/{}", i + 10)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let last = assert_view_intact(&session, 80, 12, &keys);
    assert!(last.iter().all(|r| r.starts_with('✔')), "{last:#?}");
    // Log lines were written while the view ran (above it), and none has colour.
    let (lines, _) = history(&session.bytes, 80, 12);
    let logs = lines.iter().filter(|l| l.text.contains(" INFO ")).count();
    assert!(logs >= 6, "{text}");
    assert!(!has_sgr(&text), "colour despite NO_COLOR: {text:?}");
    // The summary of once, on the terminal after the view.
    assert!(text.contains("6 watches: 6 watching"), "{text}");
    assert!(text.contains("  ✔ w/1/10/20  completed in "), "{text}");
    assert!(
        text.contains(&format!("→ {}/results/w/1/10/20.json", deep.display())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_draws_no_view_when_a_stdout_sink_prints_on_the_same_terminal() {
    let sim = start_sim(&format!(
        "seed = 4\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"10\"\nindex_id = \"20\"\nscenes = 2\nqueue = \"100ms\"\nrun = \"300ms\"\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let extra = format!(
        "[[sink]]\ntype = \"stdout\"\n{}",
        watch("10", "20", None, "index")
    );
    std::fs::write(&cfg, watcher_config(&sim.url, dir.path(), &extra)).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let session = tokio::task::spawn_blocking(move || {
        run_in_pty(
            &["once", "--config", &cfg],
            &[("SCENEWATCH__API__SECRET_KEY", SECRET)],
            80,
            24,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&session.bytes);
    assert_eq!(session.code, Some(0), "{text}");
    assert!(!text.contains(" polls "), "a view was drawn: {text}");
    // The result line is whole: one JSON document on its own line.
    let results: Vec<serde_json::Value> = text
        .split("\r\n")
        .filter(|l| l.starts_with("{\"source\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(results.len(), 1, "{text}");
    assert!(text.contains("1 watch: 1 watching"), "{text}");
}
