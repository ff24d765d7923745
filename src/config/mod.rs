//! Configuration: the TOML file layered under `SCENEWATCH__…` environment variables, checked in two
//! stages (shape, then meaning) with every problem reported at once, each naming its key and source.
//!
//! Stage one ([`load_raw`]) merges the sources with the `config` crate and walks the merged tree
//! key by key, so one unknown key or wrong type does not hide the next. Stage two
//! ([`validate::validate`]) turns the raw strings into strong types. The only IO here is reading
//! the config file and the secret key file.

pub(crate) mod checks;
mod raw;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Map, Value, ValueKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use raw::{RawApi, RawConfig, RawPoll, RawServer, RawWatch};
pub use validate::{ApiConfig, Config, PollConfig, WatchSpec, validate};
// Each sink kind's table, raw and validated, lives beside its sink; named here too so that
// `config::…` stays the one place to find every part of the configuration.
pub use crate::sink::config::{EventSinkConfig, RawEventSink, RawSink, SinkConfig};
pub use crate::sink::file::{FileSinkConfig, RawFileSink};
pub use crate::sink::jsonl::{JsonlSinkConfig, RawJsonlSink};
pub use crate::sink::nats::{NatsEventSinkConfig, RawNatsEventSink};
pub use crate::sink::postgres::{PostgresSinkConfig, RawPostgresSink};
pub use crate::sink::s3::{RawS3Sink, S3SinkConfig};
pub use crate::sink::stdout::{RawStdoutSink, StdoutSinkConfig};
pub use crate::sink::webhook::{RawWebhookSink, WebhookSinkConfig};

/// Prefix of environment variables: `SCENEWATCH__API__ACCESS_KEY` sets `api.access_key`.
pub const ENV_PREFIX: &str = "SCENEWATCH";
/// Separator between the levels of an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Where `--config` points when it is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/scenewatch/scenewatch.toml";
/// The documented defaults, embedded so that `scenewatch demo` needs no file.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A configuration file.
    File(PathBuf),
    /// An environment variable (its full name).
    Env(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "in {}", p.display()),
            Origin::Env(v) => write!(f, "from environment variable {v}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// One problem with the configuration. Never carries a configured value (it could be a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `watch[2].asset_id`.
    pub key: String,
    /// Where the offending value came from.
    pub origin: Origin,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.key, self.message, self.origin)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Knows where each key came from, to name it in problems found after merging.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    by_key: HashMap<String, Origin>,
    /// Runs of `watch[start..end]` read from one file, recorded once instead of per key.
    watch_runs: Vec<(usize, usize, Origin)>,
}

impl Origins {
    /// The origin of `key`, or [`Origin::Default`] when nothing set it.
    pub fn of(&self, key: &str) -> Origin {
        if let Some(o) = self.by_key.get(key) {
            return o.clone();
        }
        // Watches read on the fast path record one origin per table or per run of tables.
        if let Some(o) = key
            .rsplit_once('.')
            .and_then(|(parent, _)| self.by_key.get(parent))
        {
            return o.clone();
        }
        let index = key
            .strip_prefix("watch[")
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse::<usize>().ok());
        index
            .and_then(|i| {
                self.watch_runs
                    .iter()
                    .find(|(start, end, _)| (*start..*end).contains(&i))
            })
            .map(|(_, _, o)| o.clone())
            .unwrap_or(Origin::Default)
    }

    /// A problem at `key`, with its origin filled in.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            key: key.to_string(),
            origin: self.of(key),
            message: message.into(),
        }
    }
}

/// Where configuration comes from: an optional file and an environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// Inline TOML used instead of a file (the demo, tests), with a name for messages.
    pub inline: Option<(String, String)>,
    /// Environment variables to consider; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), looked up for `ncp-secret-key`.
    pub credentials_directory: Option<PathBuf>,
}

impl Sources {
    /// The file at `path` and the process environment.
    pub fn file_and_process_env(path: &Path) -> Self {
        Self {
            file: Some(path.to_path_buf()),
            inline: None,
            env: None,
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

/// Loads and validates: the single entry point for commands that need a configuration.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let (raw, origins) = load_raw(sources)?;
    validate(&raw, &origins, sources.credentials_directory.as_deref())
}

/// Stage one: merges the sources and checks the shape of every key.
pub fn load_raw(sources: &Sources) -> Result<(RawConfig, Origins), ConfigErrors> {
    let mut builder = config::Config::builder();
    // `[[watch]]` tables are taken out of each file and read directly: with 100,000 watches the
    // `config` crate's value tree (copied while merging, an origin string per value) would cost
    // hundreds of MiB, and arrays of tables cannot be layered from the environment anyway.
    let mut file_watches: Vec<(PathBuf, Vec<WatchItem>)> = Vec::new();
    if let Some(path) = &sources.file {
        // Read it ourselves so that a missing or unreadable file gets a message naming it.
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                key: "(file)".into(),
                origin: Origin::File(path.clone()),
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        let (rest, watches) = split_watches(&text, path)?;
        file_watches.push((path.clone(), watches));
        builder = builder.add_source(NamedToml::new(path.display().to_string(), rest));
    }
    if let Some((name, text)) = &sources.inline {
        let (rest, watches) = split_watches(text, Path::new(name))?;
        file_watches.push((PathBuf::from(name), watches));
        builder = builder.add_source(NamedToml::new(name.clone(), rest));
    }
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(sources.env.clone().map(|m| m.into_iter().collect()));
    builder = builder.add_source(env);
    let merged = builder.build().map_err(|e| {
        let file = sources
            .file
            .clone()
            .unwrap_or_else(|| PathBuf::from("(inline)"));
        // Only our own sources' messages can come back here (see `NamedToml`), never quoting
        // the file.
        ConfigErrors(vec![Problem {
            key: "(file)".into(),
            origin: Origin::File(file),
            message: e.to_string(),
        }])
    })?;
    let root = config::Source::collect(&merged).map_err(|e| {
        ConfigErrors(vec![Problem {
            key: "(file)".into(),
            origin: Origin::Default,
            message: e.to_string(),
        }])
    })?;
    let mut walker = Walker::default();
    let mut raw = walker.root(root);
    for (path, tables) in file_watches {
        walker.file_watches(&path, tables, &mut raw.watches);
    }
    if !raw.watch_dir.trim().is_empty() {
        let dir = PathBuf::from(raw.watch_dir.trim());
        walker.watch_dir(&dir, &mut raw.watches);
    }
    if walker.problems.is_empty() {
        Ok((raw, walker.origins))
    } else {
        Err(ConfigErrors(walker.problems))
    }
}

/// Files above this size are parsed one `[[watch]]` table at a time: the `toml` parser needs
/// about 25 times a document's size while it works, which for 100,000 watches (11 MB) would be
/// nearly 300 MiB at start.
const CHUNKED_ABOVE_BYTES: usize = 1 << 20;

/// Splits a file into (the TOML text of everything but `watch`, the watches). Watches are
/// deserialized straight into [`RawWatch`] when they fit; one that does not comes back as a TOML
/// value for the key-by-key walk that names its problems.
fn split_watches(text: &str, path: &Path) -> Result<(String, Vec<WatchItem>), ConfigErrors> {
    split_watches_above(text, path, CHUNKED_ABOVE_BYTES)
}

fn split_watches_above(
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
fn describe_toml_error(e: &toml::de::Error, text: &str, first_line: usize) -> String {
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
fn chunks(text: &str, chunk_above: usize) -> Vec<(usize, &str)> {
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
enum WatchItem {
    /// Deserialized.
    Typed(RawWatch),
    /// Does not fit: walked key by key for the messages.
    Raw(toml::Value),
}

/// A TOML source whose values carry the file's name as their origin.
#[derive(Debug, Clone)]
struct NamedToml {
    name: String,
    text: String,
}

impl NamedToml {
    fn new(name: String, text: String) -> Self {
        Self { name, text }
    }
}

impl config::Source for NamedToml {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        // Checked with `toml` first: the `config` crate's parse errors quote the offending
        // line, which may hold a secret, and say nothing we cannot say from the span.
        if let Err(e) = toml::from_str::<toml::Table>(&self.text) {
            return Err(config::ConfigError::Message(describe_toml_error(
                &e, &self.text, 0,
            )));
        }
        let file = File::from_str(&self.text, FileFormat::Toml);
        // `File::from_str` has no name; re-tag every value with ours. Its error is not shown:
        // it would quote the source, and the document was valid TOML a moment ago.
        let table = config::Source::collect(&file).map_err(|_| {
            config::ConfigError::Message("cannot be read as TOML by the config crate".into())
        })?;
        Ok(retag(table, &self.name))
    }
}

fn retag(table: Map<String, Value>, name: &str) -> Map<String, Value> {
    let origin = name.to_string();
    table
        .into_iter()
        .map(|(k, v)| (k, retag_value(v, &origin)))
        .collect()
}

fn retag_value(v: Value, origin: &String) -> Value {
    let kind = match v.kind {
        ValueKind::Table(t) => ValueKind::Table(
            t.into_iter()
                .map(|(k, v)| (k, retag_value(v, origin)))
                .collect(),
        ),
        ValueKind::Array(a) => {
            ValueKind::Array(a.into_iter().map(|v| retag_value(v, origin)).collect())
        }
        other => other,
    };
    Value::new(Some(origin), kind)
}

/// Walks the merged tree, recording origins and every shape problem.
#[derive(Default)]
struct Walker {
    origins: Origins,
    problems: Vec<Problem>,
}

impl Walker {
    fn root(&mut self, root: Map<String, Value>) -> RawConfig {
        let mut out = RawConfig::default();
        // Sorted so that problems come out in a stable order.
        let root: BTreeMap<_, _> = root.into_iter().collect();
        let mut scalars = Map::new();
        for (k, v) in root {
            match k.as_str() {
                "api" => {
                    if let Some(t) = self.table("api", v) {
                        out.api = self.fields("api", t).unwrap_or_default();
                    }
                }
                "poll" => {
                    if let Some(t) = self.table("poll", v) {
                        out.poll = self.fields("poll", t).unwrap_or_default();
                    }
                }
                "watch" => {
                    for (i, item) in self.array("watch", v).into_iter().enumerate() {
                        let path = format!("watch[{i}]");
                        if let Some(t) = self.table(&path, item) {
                            out.watches.push(self.fields(&path, t).unwrap_or_default());
                        }
                    }
                }
                "server" => {
                    if let Some(t) = self.table("server", v) {
                        out.server = self.fields("server", t).unwrap_or_default();
                    }
                }
                "sink" => {
                    for (i, item) in self.array("sink", v).into_iter().enumerate() {
                        let path = format!("sink[{i}]");
                        if let Some(t) = self.table(&path, item)
                            && let Some(s) = self.sink(&path, t)
                        {
                            out.sinks.push(s);
                        }
                    }
                }
                "event_sink" => {
                    for (i, item) in self.array("event_sink", v).into_iter().enumerate() {
                        let path = format!("event_sink[{i}]");
                        if let Some(t) = self.table(&path, item)
                            && let Some(s) = self.event_sink(&path, t)
                        {
                            out.event_sinks.push(s);
                        }
                    }
                }
                _ => {
                    scalars.insert(k, v);
                }
            }
        }
        // Top-level scalars (state_dir) and unknown top-level keys.
        let top: Option<TopLevel> = self.fields("", scalars);
        if let Some(top) = top {
            if let Some(v) = top.state_dir {
                out.state_dir = v;
            }
            if let Some(v) = top.watch_dir {
                out.watch_dir = v;
            }
            if let Some(v) = top.shutdown_timeout {
                out.shutdown_timeout = v;
            }
            if let Some(v) = top.sink_healthcheck_interval {
                out.sink_healthcheck_interval = v;
            }
        }
        out
    }

    /// Appends the `[[watch]]` tables of one file: typed ones directly (one origin recorded per
    /// run of them), the others through the key-by-key walk for their problems.
    fn file_watches(&mut self, file: &Path, items: Vec<WatchItem>, watches: &mut Vec<RawWatch>) {
        let origin = Origin::File(file.to_path_buf());
        let mut run_start = watches.len();
        for item in items {
            let path = format!("watch[{}]", watches.len());
            match item {
                WatchItem::Typed(w) => watches.push(w),
                WatchItem::Raw(value) => {
                    if run_start < watches.len() {
                        self.origins
                            .watch_runs
                            .push((run_start, watches.len(), origin.clone()));
                    }
                    let w = self.raw_watch(file, &path, value, &origin);
                    watches.push(w);
                    run_start = watches.len();
                }
            }
        }
        if run_start < watches.len() {
            self.origins
                .watch_runs
                .push((run_start, watches.len(), origin));
        }
    }

    /// The slow path for one watch table that does not deserialize: the same key-by-key walk as
    /// every other table, for its messages.
    fn raw_watch(
        &mut self,
        file: &Path,
        path: &str,
        value: toml::Value,
        origin: &Origin,
    ) -> RawWatch {
        let toml::Value::Table(t) = value else {
            self.problems.push(Problem {
                key: path.to_string(),
                origin: origin.clone(),
                message: "expected a table ([[watch]])".into(),
            });
            return RawWatch::default();
        };
        let mut one = toml::Table::new();
        one.insert("w".into(), toml::Value::Table(t));
        let text = toml::to_string(&one).unwrap_or_default();
        let collected = config::Source::collect(&NamedToml::new(file.display().to_string(), text));
        match collected
            .ok()
            .and_then(|mut m| m.remove("w"))
            .map(|v| v.kind)
        {
            Some(ValueKind::Table(t)) => self.fields(path, t).unwrap_or_default(),
            _ => {
                self.problems.push(Problem {
                    key: path.to_string(),
                    origin: origin.clone(),
                    message: "cannot be read as a watch table".into(),
                });
                RawWatch::default()
            }
        }
    }

    /// Appends the watches of every `*.toml` file in `dir` (sorted by name), one watch per file.
    fn watch_dir(&mut self, dir: &Path, watches: &mut Vec<RawWatch>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                let origin = self.origins.of("watch_dir");
                self.problems.push(Problem {
                    key: "watch_dir".into(),
                    origin,
                    message: format!("cannot read directory {}: {e}", dir.display()),
                });
                return;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let path = format!("watch[{}]", watches.len());
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    self.problems.push(Problem {
                        key: path,
                        origin: Origin::File(file.clone()),
                        message: format!("cannot read the watch file: {e}"),
                    });
                    continue;
                }
            };
            let source = NamedToml::new(file.display().to_string(), text);
            match config::Source::collect(&source) {
                Ok(table) => {
                    if let Some(w) = self.fields(&path, table) {
                        watches.push(w);
                    } else {
                        // Keep numbering stable so later files name their own index.
                        watches.push(RawWatch::default());
                    }
                }
                // `NamedToml` says where and what, without quoting the file.
                Err(e) => self.problems.push(Problem {
                    key: path,
                    origin: Origin::File(file.clone()),
                    message: e.to_string(),
                }),
            }
        }
    }

    /// Reads and removes `type`, recording a problem when it is missing or not a string.
    fn sink_type(
        &mut self,
        path: &str,
        t: &mut Map<String, Value>,
        types: &[&str],
    ) -> Option<(String, String, Origin)> {
        let key = format!("{path}.type");
        let Some(kind) = t.remove("type") else {
            self.problems.push(Problem {
                key,
                origin: first_origin_in(t),
                message: format!("missing; one of {}", types.join(", ")),
            });
            return None;
        };
        let origin = origin_of(&kind, &key);
        self.origins.by_key.insert(key.clone(), origin.clone());
        let name = kind
            .into_string()
            .unwrap_or_else(|_| "(not a string)".into());
        Some((name, key, origin))
    }

    fn unknown_type(&mut self, key: String, origin: Origin, name: &str, types: &[&str]) {
        self.problems.push(Problem {
            key,
            origin,
            message: format!("unknown type {name:?}; one of {}", types.join(", ")),
        });
    }

    fn sink(&mut self, path: &str, mut t: Map<String, Value>) -> Option<RawSink> {
        let (name, key, origin) = self.sink_type(path, &mut t, RawSink::TYPES)?;
        match name.as_str() {
            "file" => self.fields(path, t).map(RawSink::File),
            "stdout" => self.fields(path, t).map(RawSink::Stdout),
            "jsonl" => self.fields(path, t).map(RawSink::Jsonl),
            "webhook" => self.fields(path, t).map(RawSink::Webhook),
            "postgres" => self.fields(path, t).map(RawSink::Postgres),
            "s3" => self.fields(path, t).map(RawSink::S3),
            other => {
                self.unknown_type(key, origin, other, RawSink::TYPES);
                None
            }
        }
    }

    fn event_sink(&mut self, path: &str, mut t: Map<String, Value>) -> Option<RawEventSink> {
        let (name, key, origin) = self.sink_type(path, &mut t, RawEventSink::TYPES)?;
        match name.as_str() {
            "stdout" => self.fields(path, t).map(RawEventSink::Stdout),
            "jsonl" => self.fields(path, t).map(RawEventSink::Jsonl),
            "webhook" => self.fields(path, t).map(RawEventSink::Webhook),
            "nats" => self.fields(path, t).map(RawEventSink::Nats),
            other => {
                self.unknown_type(key, origin, other, RawEventSink::TYPES);
                None
            }
        }
    }

    fn table(&mut self, path: &str, v: Value) -> Option<Map<String, Value>> {
        let origin = origin_of(&v, path);
        match v.kind {
            ValueKind::Table(t) => Some(t),
            _ => {
                self.problems.push(Problem {
                    key: path.to_string(),
                    origin,
                    message: "expected a table".into(),
                });
                None
            }
        }
    }

    fn array(&mut self, path: &str, v: Value) -> Vec<Value> {
        let origin = origin_of(&v, path);
        match v.kind {
            ValueKind::Array(a) => a,
            _ => {
                self.problems.push(Problem {
                    key: path.to_string(),
                    origin,
                    message: format!("expected an array of tables ([[{path}]])"),
                });
                Vec::new()
            }
        }
    }

    /// Checks each key of `t` against the fields of `T` on its own (so every problem is
    /// found), then deserializes the whole table.
    fn fields<T>(&mut self, path: &str, t: Map<String, Value>) -> Option<T>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        let known: Vec<String> = match serde_json::to_value(T::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let before = self.problems.len();
        let t: BTreeMap<String, Value> = t.into_iter().collect();
        for (k, v) in &t {
            let key = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let origin = origin_of(v, &key);
            self.origins.by_key.insert(key.clone(), origin.clone());
            if !known.iter().any(|n| n == k) {
                let hint = closest(k, &known)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                self.problems.push(Problem {
                    key,
                    origin,
                    message: format!("unknown key{hint}"),
                });
                continue;
            }
            let mut single = Map::new();
            single.insert(k.clone(), v.clone());
            if let Err(e) = T::deserialize(Value::new(None, ValueKind::Table(single))) {
                self.problems.push(Problem {
                    key,
                    origin,
                    message: describe_type_error(&e),
                });
            }
        }
        if self.problems.len() != before {
            return None;
        }
        let table: Map<String, Value> = t.into_iter().collect();
        match T::deserialize(Value::new(None, ValueKind::Table(table))) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(Problem {
                    key: if path.is_empty() {
                        "(top level)".into()
                    } else {
                        path.into()
                    },
                    origin: Origin::Default,
                    message: describe_type_error(&e),
                });
                None
            }
        }
    }
}

/// The top-level scalar keys, checked like any other table.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct TopLevel {
    state_dir: Option<String>,
    watch_dir: Option<String>,
    shutdown_timeout: Option<String>,
    sink_healthcheck_interval: Option<String>,
    // The tables are walked separately; listed so they are not reported as unknown.
    #[serde(skip_deserializing)]
    api: (),
    #[serde(skip_deserializing)]
    poll: (),
    #[serde(skip_deserializing)]
    watch: (),
    #[serde(skip_deserializing)]
    sink: (),
    #[serde(skip_deserializing)]
    event_sink: (),
    #[serde(skip_deserializing)]
    server: (),
}

/// A type error without the offending value: the value could be a secret.
fn describe_type_error(e: &config::ConfigError) -> String {
    let text = e.to_string();
    // The config crate says `invalid type: string "…", expected …`; keep only the kinds.
    if let Some(rest) = text.strip_prefix("invalid type: ") {
        let found = rest.split([' ', ',']).next().unwrap_or("value");
        let expected = rest
            .split("expected ")
            .nth(1)
            .map(|s| s.split(" for key").next().unwrap_or(s))
            .unwrap_or("another type");
        return format!("wrong type: found {found}, expected {expected}");
    }
    if text.contains("invalid value") || text.contains("invalid digit") || text.contains("parse") {
        return "wrong type or out of range for this key".into();
    }
    // Other messages (missing field, unknown variant) name keys, not values.
    text.split(" for key").next().unwrap_or(&text).to_string()
}

fn origin_of(v: &Value, key: &str) -> Origin {
    match v.origin() {
        Some("the environment") => Origin::Env(env_var_name(key)),
        Some(file) => Origin::File(PathBuf::from(file)),
        None => Origin::Default,
    }
}

fn first_origin_in(t: &Map<String, Value>) -> Origin {
    t.values()
        .find_map(|v| v.origin().map(|o| Origin::File(PathBuf::from(o))))
        .unwrap_or(Origin::Default)
}

/// `api.access_key` → `SCENEWATCH__API__ACCESS_KEY`.
pub fn env_var_name(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for part in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

/// The known key nearest to `k` by edit distance, when it is near enough to be a typo.
fn closest<'a>(k: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|n| (edit_distance(k, n), n.as_str()))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
