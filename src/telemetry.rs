//! Tracing setup: JSON lines when stdout is not a terminal (or `--log-format json`), readable
//! lines otherwise; `RUST_LOG`-style filtering. Under journald (stdout is the journal's stream)
//! JSON records go to the journal's native socket, each field a journal field of its own
//! (`PRIORITY` from the level, `MESSAGE`, `WATCH`, `EVENT_TYPE`, …), and when that socket
//! cannot be used, or for readable lines, each line carries its priority as an sd-daemon `<N>`
//! prefix (and readable lines no timestamp of their own, since journald stamps every record).

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
    let native = if journal {
        NativeJournal::open().map(std::sync::Arc::new)
    } else {
        None
    };
    let result = match (format.resolve(), progress) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(Stdout { journal, native })
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
            .with_writer(Stdout {
                journal,
                native: None,
            })
            .try_init(),
        (_, None) => builder
            .with_ansi(crate::progress::colour_allowed(
                std::io::stdout().is_terminal(),
            ))
            .with_writer(Stdout {
                journal,
                native: None,
            })
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

/// The journal's priority of a tracing level (`<3>` error, `<4>` warning, `<6>` info, `<7>`
/// debug and trace): the digit the native protocol's `PRIORITY` and the stream's prefix carry.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// The sd-daemon priority prefix (`sd-daemon(3)`) of a tracing level.
pub fn journal_prefix(level: &Level) -> &'static [u8] {
    match priority(level) {
        "3" => b"<3>",
        "4" => b"<4>",
        "6" => b"<6>",
        _ => b"<7>",
    }
}

/// Standard output, with each line prefixed by its level's priority under journald; with
/// `native`, JSON records go to the journal's socket instead (falling back to the line).
#[derive(Debug, Clone)]
struct Stdout {
    journal: bool,
    native: Option<std::sync::Arc<NativeJournal>>,
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            prefix: None,
            at_line_start: true,
            native: None,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            prefix: self.journal.then(|| journal_prefix(meta.level())),
            at_line_start: true,
            native: self.native.clone().map(|j| (j, *meta.level())),
        }
    }
}

/// The environment variable naming the journal's native socket (tests; unusual setups). Unset:
/// systemd's `/run/systemd/journal/socket`.
pub const JOURNAL_SOCKET_ENV: &str = "SCENEWATCH_JOURNAL_SOCKET";

/// The journal's native protocol (`systemd-journald.service(8)`, "Native Protocol"): one
/// datagram per record, `KEY=value` lines, or `KEY`, a 64-bit little-endian length and the
/// bytes for a value holding a newline.
#[derive(Debug)]
pub struct NativeJournal {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl NativeJournal {
    /// The journal's socket, if it is there and can be written to.
    fn open() -> Option<Self> {
        use std::os::unix::fs::FileTypeExt as _;
        let path = std::env::var_os(JOURNAL_SOCKET_ENV)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/run/systemd/journal/socket".into());
        if !std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            return None;
        }
        let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
        Some(Self { socket, path })
    }

    /// Sends one record; false if it could not be (the caller writes the line instead).
    fn send(&self, level: &Level, json: &[u8]) -> bool {
        native_record(level, json).is_some_and(|d| {
            self.socket
                .send_to(&d, &self.path)
                .is_ok_and(|n| n == d.len())
        })
    }
}

/// A journal field name for a JSON key: upper case, `_` for anything but letters and digits,
/// no leading `_` or digit (journald drops such names, or keeps them for trusted fields).
fn journal_name(key: &str) -> Option<String> {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    (!name.is_empty()).then(|| name.chars().take(64).collect())
}

/// One datagram of the native protocol for a JSON log record; `None` if it is not one.
fn native_record(level: &Level, json: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(json).ok()?.trim_end();
    let serde_json::Value::Object(map) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let mut out = Vec::with_capacity(text.len() + 64);
    put_field(&mut out, "PRIORITY", priority(level));
    put_field(&mut out, "SYSLOG_IDENTIFIER", "scenewatch");
    for (key, value) in &map {
        let name = match key.as_str() {
            // journald stamps every record and has the level as PRIORITY.
            "timestamp" | "level" => continue,
            "message" => "MESSAGE".to_owned(),
            other => match journal_name(other) {
                // Fields journald sets itself, or that would say something else there.
                Some(n) if matches!(n.as_str(), "PRIORITY" | "SYSLOG_IDENTIFIER" | "MESSAGE") => {
                    format!("SCENEWATCH_{n}")
                }
                Some(n) => n,
                None => continue,
            },
        };
        match value {
            serde_json::Value::String(s) => put_field(&mut out, &name, s),
            other => put_field(&mut out, &name, &other.to_string()),
        }
    }
    Some(out)
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    } else {
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'\n');
}

/// Writes one record to stdout, `prefix` before each of its lines (journald takes every line
/// of a stream as a record of its own, so a multi-line message keeps its priority).
#[derive(Debug)]
pub struct LineWriter {
    prefix: Option<&'static [u8]>,
    at_line_start: bool,
    native: Option<(std::sync::Arc<NativeJournal>, Level)>,
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
        // The formatter writes a record at once: to the journal's socket when it takes it.
        if let Some((journal, level)) = &self.native
            && self.at_line_start
            && buf.ends_with(b"\n")
            && journal.send(level, buf)
        {
            return Ok(buf.len());
        }
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
                native: None,
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
            native: None,
        };
        assert_eq!(plain.prefixed(b"x\n"), b"x\n");
    }

    /// The fields of a native-protocol datagram, as journald parses it.
    fn parse_native(mut d: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !d.is_empty() {
            let end = d.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let name = String::from_utf8(d[..end].to_vec()).unwrap();
            if d[end] == b'=' {
                let nl = d[end..].iter().position(|&b| b == b'\n').unwrap() + end;
                fields.push((name, String::from_utf8(d[end + 1..nl].to_vec()).unwrap()));
                d = &d[nl + 1..];
            } else {
                let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
                let v = &d[end + 9..end + 9 + len];
                assert_eq!(d[end + 9 + len], b'\n');
                fields.push((name, String::from_utf8(v.to_vec()).unwrap()));
                d = &d[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn a_json_record_becomes_native_journal_fields() {
        let json = br#"{"timestamp":"2026-12-02T10:00:00Z","level":"WARN","message":"Summary failed","watch":"w/1/2/3","scene_count":8,"_secret":"x","9lives":"y","priority":"p","detail":"two\nlines","target":"scenewatch::events"}"#;
        let mut line = json.to_vec();
        line.push(b'\n');
        let d = native_record(&Level::WARN, &line).unwrap();
        let fields = parse_native(&d);
        let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.as_str());
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("scenewatch"));
        assert_eq!(get("MESSAGE"), Some("Summary failed"));
        assert_eq!(get("WATCH"), Some("w/1/2/3"));
        assert_eq!(get("SCENE_COUNT"), Some("8"));
        assert_eq!(get("TARGET"), Some("scenewatch::events"));
        // Names journald would drop or take for its own are made safe.
        assert_eq!(get("SECRET"), Some("x"));
        assert_eq!(get("LIVES"), Some("y"));
        assert_eq!(get("SCENEWATCH_PRIORITY"), Some("p"));
        // A value with a newline in the binary form.
        assert_eq!(get("DETAIL"), Some("two\nlines"));
        // journald stamps and levels records itself.
        assert!(
            get("TIMESTAMP").is_none() && get("LEVEL").is_none(),
            "{fields:?}"
        );
        assert_eq!(native_record(&Level::INFO, b"not json\n"), None);
        assert_eq!(native_record(&Level::INFO, b"[1]\n"), None);
    }
}
