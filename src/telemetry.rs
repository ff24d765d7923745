//! Tracing setup: JSON lines when stdout is not a terminal (or `--log-format json`), readable
//! lines otherwise; `RUST_LOG`-style filtering; under journald (stdout is the journal's stream)
//! each line carries its priority as an sd-daemon `<N>` prefix, and readable lines no timestamp
//! of their own, since journald stamps every record.

use std::io::{IsTerminal, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::progress::ProgressWriter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl LogFormat {
    /// Resolves `auto` against the terminal.
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stdout().is_terminal() => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// With `progress`, log lines go through the progress display's writer (on stderr).
///
/// When stdout is the journal's stream ([`stdout_is_journal`]), every line starts with the
/// sd-daemon priority prefix of its level (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug
/// and trace), which journald strips and stores as the record's `PRIORITY`, so `journalctl -p
/// warning` finds the warnings; the rest of the line is unchanged (a JSON object by default,
/// whose fields `journalctl -o cat | jq` reads), and readable lines carry no timestamp of their
/// own, since journald stamps every record.
pub fn init(format: LogFormat, default_filter: &str, progress: Option<ProgressWriter>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let journal = progress.is_none() && stdout_is_journal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (format.resolve(), progress) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(Stdout { journal })
            .try_init(),
        (_, Some(w)) => builder
            .with_target(false)
            .with_ansi(crate::progress::colour_allowed(
                std::io::stderr().is_terminal(),
            ))
            .with_writer(w)
            .try_init(),
        (_, None) if journal => builder
            .without_time()
            .with_ansi(false)
            .with_writer(Stdout { journal })
            .try_init(),
        (_, None) => builder
            .with_ansi(crate::progress::colour_allowed(
                std::io::stdout().is_terminal(),
            ))
            .with_writer(Stdout { journal })
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber; nothing to do.
    let _ = result;
}

/// Whether stdout is connected to the journal: `JOURNAL_STREAM` (which systemd sets to
/// `DEVICE:INODE` of the stream it gave the service) names stdout's own device and inode. A
/// child that inherited the variable but writes elsewhere (a pipe, a file) does not match.
pub fn stdout_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The sd-daemon priority prefix (`sd-daemon(3)`) of a tracing level.
pub fn journal_prefix(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"<3>",
        Level::WARN => b"<4>",
        Level::INFO => b"<6>",
        _ => b"<7>",
    }
}

/// Standard output, with each line prefixed by its level's priority under journald.
#[derive(Debug, Clone, Copy)]
struct Stdout {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            prefix: None,
            at_line_start: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            prefix: self.journal.then(|| journal_prefix(meta.level())),
            at_line_start: true,
        }
    }
}

/// Writes one record to stdout, `prefix` before each of its lines (journald takes every line
/// of a stream as a record of its own, so a multi-line message keeps its priority).
#[derive(Debug)]
pub struct LineWriter {
    prefix: Option<&'static [u8]>,
    at_line_start: bool,
}

impl LineWriter {
    /// The bytes to write for `buf`.
    fn prefixed(&mut self, buf: &[u8]) -> Vec<u8> {
        let Some(prefix) = self.prefix else {
            return buf.to_vec();
        };
        let mut out = Vec::with_capacity(buf.len() + prefix.len());
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(prefix);
            }
            out.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        out
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bytes = self.prefixed(buf);
        std::io::stdout().lock().write_all(&bytes)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_has_its_journal_priority_on_every_line() {
        let w = |level: Level, text: &[u8]| {
            let mut lw = LineWriter {
                prefix: Some(journal_prefix(&level)),
                at_line_start: true,
            };
            // Written in two pieces, as a writer may be.
            let (a, b) = text.split_at(text.len() / 2);
            let mut out = lw.prefixed(a);
            out.extend(lw.prefixed(b));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(w(Level::ERROR, b"{\"a\":1}\n"), "<3>{\"a\":1}\n");
        assert_eq!(w(Level::WARN, b"careful\n"), "<4>careful\n");
        assert_eq!(w(Level::INFO, b"two\nlines\n"), "<6>two\n<6>lines\n");
        assert_eq!(w(Level::DEBUG, b"d\n"), "<7>d\n");
        assert_eq!(w(Level::TRACE, b"t\n"), "<7>t\n");
        let mut plain = LineWriter {
            prefix: None,
            at_line_start: true,
        };
        assert_eq!(plain.prefixed(b"x\n"), b"x\n");
    }
}
