//! The large-file splitter: a file's `[[watch]]` tables are taken out before the rest is merged,
//! deserialized straight into [`RawWatch`] (or kept as TOML for the walk when one does not fit),
//! and a file above [`CHUNKED_ABOVE_BYTES`] is read and parsed one `[[watch]]` table at a time,
//! so that 100,000 watches cost neither the `config` crate's value tree nor the TOML parser's
//! peak, nor the whole text of the file.
//! Syntax errors are described from the parser's span, never by quoting the file.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use super::{ConfigErrors, Origin, Problem, RawWatch};

/// Files above this size are parsed one `[[watch]]` table at a time: the `toml` parser needs
/// about 25 times a document's size while it works, which for 100,000 watches (11 MB) would be
/// nearly 300 MiB at start.
pub(super) const CHUNKED_ABOVE_BYTES: usize = 1 << 20;

/// Splits a file into (the TOML text of everything but `watch`, the watches). Watches are
/// deserialized straight into [`RawWatch`] when they fit; one that does not comes back as a TOML
/// value for the key-by-key walk that names its problems.
pub(super) fn split_watches(
    text: &str,
    path: &Path,
) -> Result<(String, Vec<WatchItem>), ConfigErrors> {
    split_watches_above(text, path, CHUNKED_ABOVE_BYTES)
}

pub(super) fn split_watches_above(
    text: &str,
    path: &Path,
    chunk_above: usize,
) -> Result<(String, Vec<WatchItem>), ConfigErrors> {
    let mut splitter = Splitter::new(path);
    for (first_line, chunk) in chunks(text, chunk_above) {
        splitter.piece(first_line, chunk)?;
    }
    splitter.finish()
}

/// [`split_watches`] of a large file read as it is parsed, one `[[watch]]` table at a time (the
/// pieces of [`chunks`]), so that its whole text is never held: at a million watches that text
/// was 112 MiB of the start's peak. A read error, or text that is not UTF-8, is the same
/// problem as a file that cannot be read at all.
pub(super) fn split_watches_streamed(
    mut reader: impl BufRead,
    path: &Path,
) -> Result<(String, Vec<WatchItem>), ConfigErrors> {
    let mut splitter = Splitter::new(path);
    let (mut chunk, mut line) = (String::new(), String::new());
    let (mut first_line, mut line_no) = (0, 0);
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| ConfigErrors(vec![cannot_read(path, &e)]))?;
        if read == 0 || (is_watch_header(&line) && !chunk.is_empty()) {
            splitter.piece(first_line, &chunk)?;
            chunk.clear();
            first_line = line_no;
        }
        if read == 0 {
            break;
        }
        chunk.push_str(&line);
        line_no += 1;
    }
    splitter.finish()
}

/// The state of a split: everything but `watch` merged so far, and the watches.
struct Splitter<'p> {
    path: &'p Path,
    rest: toml::Table,
    items: Vec<WatchItem>,
}

impl<'p> Splitter<'p> {
    fn new(path: &'p Path) -> Self {
        Splitter {
            path,
            rest: toml::Table::new(),
            items: Vec::new(),
        }
    }

    /// One piece of the file, starting at line `first_line` (0-based): its errors are placed by
    /// that line.
    fn piece(&mut self, first_line: usize, chunk: &str) -> Result<(), ConfigErrors> {
        let path = self.path;
        let syntax = |e: &toml::de::Error| invalid(path, describe_toml_error(e, chunk, first_line));
        let Rest { rest: part } = toml::from_str(chunk).map_err(|e| syntax(&e))?;
        for (k, v) in part {
            match (self.rest.get_mut(&k), v) {
                (None, v) => {
                    self.rest.insert(k, v);
                }
                // `[[sink]]` tables on both sides of some watches: one array, in order.
                (Some(toml::Value::Array(a)), toml::Value::Array(b)) => a.extend(b),
                (Some(_), _) => {
                    return Err(invalid(
                        self.path,
                        format!(
                            "not valid TOML (in the [[watch]] table starting at line {}): duplicate key `{k}`",
                            first_line + 1
                        ),
                    ));
                }
            }
        }
        match toml::from_str::<Fast>(chunk) {
            Ok(fast) => self
                .items
                .extend(fast.watch.into_iter().map(WatchItem::Typed)),
            Err(_) => {
                let mut table: toml::Table = toml::from_str(chunk).map_err(|e| syntax(&e))?;
                match table.remove("watch") {
                    Some(toml::Value::Array(a)) => {
                        self.items.extend(a.into_iter().map(WatchItem::Raw));
                    }
                    // Not an array of tables: the walker says so.
                    Some(other) => {
                        self.rest.insert("watch".into(), other);
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(String, Vec<WatchItem>), ConfigErrors> {
        // Writing back what was just read fails only for values TOML cannot write; the message
        // names the kind of problem, not the value.
        let rest_text = toml::to_string(&self.rest)
            .map_err(|e| invalid(self.path, format!("cannot be re-encoded as TOML: {e}")))?;
        Ok((rest_text, self.items))
    }
}

/// Where a TOML syntax error is and what it is: `not valid TOML at line L, column C: description`,
/// where `text` is what was parsed and `first_line` (0-based) the line of the file it starts at.
/// The parser's own message quotes the offending line, which may be a secret's (`secret_key =
/// "…` unterminated), so it is rebuilt from the error's span and description alone.
pub(super) fn describe_toml_error(e: &toml::de::Error, text: &str, first_line: usize) -> String {
    let place = e.span().map(|span| {
        let start = span.start.min(text.len());
        // A span inside a multi-byte character cannot happen; floor it to be safe.
        let start = (0..=start)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let before = &text[..start];
        let line = first_line + before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        format!("at line {line}, column {column}")
    });
    let message = e.message().trim();
    // Descriptions are the parser's fixed texts ("invalid basic string", "expected `=`"); a
    // serde message that quotes a value ("invalid type: string \"…\"") is cut to its kind.
    let message = match message.split_once(": ") {
        Some((kind, _)) if kind.starts_with("invalid ") => kind.to_string(),
        _ => message.replace('\n', "; "),
    };
    match place {
        Some(place) => format!("not valid TOML {place}: {message}"),
        None => format!("not valid TOML: {message}"),
    }
}

/// The document as (first line, text) pieces: whole when small, else cut before every line that
/// is a `[[watch]]` header. Each piece is a valid TOML document of its own exactly when the
/// whole is (keys after a header belong to that table in both).
pub(super) fn chunks(text: &str, chunk_above: usize) -> Vec<(usize, &str)> {
    if text.len() <= chunk_above {
        return vec![(0, text)];
    }
    let mut out = Vec::new();
    let (mut start, mut start_line, mut pos) = (0, 0, 0);
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        if is_watch_header(line) && pos > start {
            out.push((start_line, &text[start..pos]));
            start = pos;
            start_line = line_no;
        }
        pos += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

/// The file at `path` could not be read (opened, or read to its end as UTF-8 text).
pub(super) fn cannot_read(path: &Path, e: &std::io::Error) -> Problem {
    Problem {
        key: "(file)".into(),
        origin: Origin::File(path.to_path_buf()),
        message: format!("cannot read the configuration file: {e}"),
    }
}

/// A problem with the whole file at `path`.
fn invalid(path: &Path, message: String) -> ConfigErrors {
    ConfigErrors(vec![Problem {
        key: "(file)".into(),
        origin: Origin::File(path.to_path_buf()),
        message,
    }])
}

/// A line that opens a `[[watch]]` table (a comment may follow).
fn is_watch_header(line: &str) -> bool {
    line.trim()
        .strip_prefix("[[watch]]")
        .is_some_and(|after| after.trim_start().is_empty() || after.trim_start().starts_with('#'))
}

/// Everything but `watch`, which is skipped without being built (serde's `flatten` would buffer
/// the whole document first, watches included).
struct Rest {
    rest: toml::Table,
}

impl<'de> serde::Deserialize<'de> for Rest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Rest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML document")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Rest, A::Error> {
                let mut rest = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "watch" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    } else {
                        let value = map.next_value::<toml::Value>()?;
                        rest.insert(key, value);
                    }
                }
                Ok(Rest { rest })
            }
        }
        d.deserialize_map(V)
    }
}

/// Only `watch`, as typed watches.
#[derive(serde::Deserialize)]
struct Fast {
    #[serde(default)]
    watch: Vec<RawWatch>,
}

/// One `[[watch]]` table of a file.
#[derive(Debug, PartialEq)]
pub(super) enum WatchItem {
    /// Deserialized.
    Typed(RawWatch),
    /// Does not fit: walked key by key for the messages.
    Raw(toml::Value),
}
