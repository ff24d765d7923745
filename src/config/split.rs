//! The large-file splitter: a file's `[[watch]]` tables are taken out before the rest is merged,
//! deserialized straight into [`RawWatch`] (or kept as TOML for the walk when one does not fit),
//! and a file above [`CHUNKED_ABOVE_BYTES`] is parsed one `[[watch]]` table at a time, so that
//! 100,000 watches cost neither the `config` crate's value tree nor the TOML parser's peak.
//! Syntax errors are described from the parser's span, never by quoting the file.

use std::fmt;
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
    let invalid = |message: String| {
        ConfigErrors(vec![Problem {
            key: "(file)".into(),
            origin: Origin::File(path.to_path_buf()),
            message,
        }])
    };
    // Chunks are parsed on their own; their errors are placed by the line the chunk starts at.
    let syntax = |e: &toml::de::Error, chunk: &str, first_line: usize| {
        invalid(describe_toml_error(e, chunk, first_line))
    };
    let mut rest = toml::Table::new();
    let mut items = Vec::new();
    for (first_line, chunk) in chunks(text, chunk_above) {
        let Rest { rest: part } =
            toml::from_str(chunk).map_err(|e| syntax(&e, chunk, first_line))?;
        for (k, v) in part {
            match (rest.get_mut(&k), v) {
                (None, v) => {
                    rest.insert(k, v);
                }
                // `[[sink]]` tables on both sides of some watches: one array, in order.
                (Some(toml::Value::Array(a)), toml::Value::Array(b)) => a.extend(b),
                (Some(_), _) => {
                    return Err(invalid(format!(
                        "not valid TOML (in the [[watch]] table starting at line {}): duplicate key `{k}`",
                        first_line + 1
                    )));
                }
            }
        }
        match toml::from_str::<Fast>(chunk) {
            Ok(fast) => items.extend(fast.watch.into_iter().map(WatchItem::Typed)),
            Err(_) => {
                let mut table: toml::Table =
                    toml::from_str(chunk).map_err(|e| syntax(&e, chunk, first_line))?;
                match table.remove("watch") {
                    Some(toml::Value::Array(a)) => items.extend(a.into_iter().map(WatchItem::Raw)),
                    // Not an array of tables: the walker says so.
                    Some(other) => {
                        rest.insert("watch".into(), other);
                    }
                    None => {}
                }
            }
        }
    }
    // Writing back what was just read fails only for values TOML cannot write; the message
    // names the kind of problem, not the value.
    let rest_text = toml::to_string(&rest)
        .map_err(|e| invalid(format!("cannot be re-encoded as TOML: {e}")))?;
    Ok((rest_text, items))
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
        let t = line.trim();
        let header = t.strip_prefix("[[watch]]").is_some_and(|after| {
            after.trim_start().is_empty() || after.trim_start().starts_with('#')
        });
        if header && pos > start {
            out.push((start_line, &text[start..pos]));
            start = pos;
            start_line = line_no;
        }
        pos += line.len();
    }
    out.push((start_line, &text[start..]));
    out
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
