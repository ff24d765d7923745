//! Tracing setup: JSON lines when stdout is not a terminal (or `--log-format json`), readable
//! lines otherwise; `RUST_LOG`-style filtering; no timestamps of our own under journald, which
//! stamps every line itself.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
pub fn init(format: LogFormat, default_filter: &str, progress: Option<ProgressWriter>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // journald adds its own timestamp to every line (JOURNAL_STREAM is set by systemd).
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (format.resolve(), progress) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (_, Some(w)) => builder
            .with_target(false)
            .with_ansi(crate::progress::colour_allowed(
                std::io::stderr().is_terminal(),
            ))
            .with_writer(w)
            .try_init(),
        (_, None) if under_journald => builder
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (_, None) => builder
            .with_ansi(crate::progress::colour_allowed(
                std::io::stdout().is_terminal(),
            ))
            .with_writer(std::io::stdout)
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber; nothing to do.
    let _ = result;
}
