//! Loading: the sources of a configuration (a file or inline text, an environment, the watch
//! directory), merged with the `config` crate, the `SCENEWATCH__…` variables applied on top
//! ([`super::env`]), then walked key by key ([`super::walk`]) into the raw shape; `[[watch]]`
//! tables are taken out of each file first ([`super::split`]). Every source is read even when
//! one fails, and problems are placed by line ([`super::spans`]). The only IO of configuration
//! besides the secret files: reading these.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{File, FileFormat, Map, Value, ValueKind};

use super::split::{
    WatchItem, cannot_read, describe_toml_error, split_watches, split_watches_streamed,
};
use super::walk::Walker;
use super::{Config, ConfigErrors, Origin, Origins, Problem, RawConfig, RawWatch, validate};

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

/// Loads and validates: the single entry point for commands that need a configuration. Every
/// problem comes back at once: the shape problems of every source and the meaning of whatever
/// was read (a TOML syntax error stops its own file only), each located at `file:line:column`
/// where the file has it.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut loaded = load_all(sources);
    let shape = loaded.problems.clone();
    // A file that could not be read or parsed contributes nothing: checking the meaning of the
    // rest would report everything it holds as missing.
    let semantic = if loaded.complete {
        match validate(
            &mut loaded.raw,
            &loaded.origins,
            sources.credentials_directory.as_deref(),
        ) {
            Ok(c) if shape.is_empty() => return Ok(c),
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    } else {
        Vec::new()
    };
    let mut all = shape;
    all.extend(semantic.into_iter().filter(|p| !loaded.shaped_away(&p.key)));
    Err(loaded.located(all))
}

/// Stage one: merges the sources and checks the shape of every key.
pub fn load_raw(sources: &Sources) -> Result<(RawConfig, Origins), ConfigErrors> {
    let loaded = load_all(sources);
    if loaded.problems.is_empty() {
        Ok((loaded.raw, loaded.origins))
    } else {
        let problems = loaded.problems.clone();
        Err(loaded.located(problems))
    }
}

/// What stage one found: the raw configuration read so far (defaults where a source or a key
/// could not be read), the origins, every shape problem, and what is needed to place them.
#[derive(Debug)]
pub struct Loaded {
    /// The raw configuration (complete only when `problems` is empty).
    pub raw: RawConfig,
    /// Where each key came from.
    pub origins: Origins,
    /// Every shape problem.
    pub problems: Vec<Problem>,
    /// Every source was read and parsed (problems, if any, are about keys).
    pub complete: bool,
    /// The text of each file read (for locating problems; `None` for a large file, read again
    /// when needed), and the key prefix of its keys (`watch[N]` for a watch file).
    texts: Vec<(PathBuf, Option<String>, String)>,
}

impl Loaded {
    /// Whether a meaning problem at `key` only repeats a shape problem: the key itself, or a
    /// key inside a table or item that could not be read, was reported already.
    fn shaped_away(&self, key: &str) -> bool {
        self.problems.iter().any(|p| {
            key == p.key
                || key
                    .strip_prefix(p.key.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                || p.key.strip_suffix(".type").is_some_and(|item| {
                    key.strip_prefix(item)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                })
        })
    }

    /// The problems, in order, with the line and column of each key read from a file.
    pub fn located(&self, mut problems: Vec<Problem>) -> ConfigErrors {
        let mut indexes: HashMap<PathBuf, HashMap<String, (usize, usize)>> = HashMap::new();
        for p in &mut problems {
            let Origin::File(path) = &p.origin else {
                continue;
            };
            if !indexes.contains_key(path) {
                let index = self
                    .texts
                    .iter()
                    .filter(|(file, _, _)| file == path)
                    .map(|(file, text, prefix)| positions_in(file, text.as_deref(), prefix))
                    .fold(HashMap::new(), |mut all, one| {
                        all.extend(one);
                        all
                    });
                indexes.insert(path.clone(), index);
            }
            if let Some((line, column)) = super::spans::find(&indexes[path], &p.key) {
                p.origin = Origin::Line(path.clone(), line, column);
            }
        }
        ConfigErrors(problems)
    }

    /// The line and column of every key of every file read, by file (for `scenewatch config`).
    pub fn positions(&self) -> HashMap<PathBuf, HashMap<String, (usize, usize)>> {
        let mut out: HashMap<PathBuf, HashMap<String, (usize, usize)>> = HashMap::new();
        for (file, text, prefix) in &self.texts {
            out.entry(file.clone()).or_default().extend(positions_in(
                file,
                text.as_deref(),
                prefix,
            ));
        }
        out
    }
}

/// The line and column of every key of `file`, from its `text` or, where that was not kept,
/// from the file read again (none if it can no longer be read: the problems keep the file's
/// name without a line).
fn positions_in(file: &Path, text: Option<&str>, prefix: &str) -> HashMap<String, (usize, usize)> {
    match text {
        Some(text) => super::spans::key_positions(text, prefix),
        None => std::fs::read_to_string(file)
            .map(|text| super::spans::key_positions(&text, prefix))
            .unwrap_or_default(),
    }
}

/// Stage one without stopping at the first bad source: every source is read, every key walked.
pub fn load_all(sources: &Sources) -> Loaded {
    let mut problems = Vec::new();
    let mut complete = true;
    let mut texts = Vec::new();
    let mut builder = config::Config::builder();
    // `[[watch]]` tables are taken out of each file and read directly: with 100,000 watches the
    // `config` crate's value tree (copied while merging, an origin string per value) would cost
    // hundreds of MiB.
    let mut file_watches: Vec<(PathBuf, Vec<WatchItem>)> = Vec::new();
    let mut files: Vec<(PathBuf, FileText)> = Vec::new();
    if let Some(path) = &sources.file {
        // Read it ourselves so that a missing or unreadable file gets a message naming it. A
        // large one is read as it is parsed (`split_watches_streamed`) and its text not kept:
        // placing a problem reads it again.
        let large = std::fs::metadata(path)
            .is_ok_and(|m| m.len() > super::split::CHUNKED_ABOVE_BYTES as u64);
        let read = if large {
            std::fs::File::open(path).map(FileText::Streamed)
        } else {
            std::fs::read_to_string(path).map(FileText::Whole)
        };
        match read {
            Ok(text) => files.push((path.clone(), text)),
            Err(e) => {
                complete = false;
                problems.push(cannot_read(path, &e));
            }
        }
    }
    if let Some((name, text)) = &sources.inline {
        files.push((PathBuf::from(name), FileText::Whole(text.clone())));
    }
    for (path, file) in files {
        let (split, text) = match file {
            FileText::Whole(text) => (split_watches(&text, &path), Some(text)),
            FileText::Streamed(f) => {
                let reader = std::io::BufReader::with_capacity(1 << 16, f);
                (split_watches_streamed(reader, &path), None)
            }
        };
        match split {
            Ok((rest, watches)) => {
                file_watches.push((path.clone(), watches));
                builder = builder.add_source(NamedToml::new(path.display().to_string(), rest));
            }
            // A syntax error stops this file (its line and column are in the message); the
            // environment and the watch directory are still checked.
            Err(e) => {
                complete = false;
                problems.extend(e.0);
            }
        }
        texts.push((path, text, String::new()));
    }
    let root = builder
        .build()
        .map_err(|e| e.to_string())
        .and_then(|merged| config::Source::collect(&merged).map_err(|e| e.to_string()));
    let mut root = match root {
        Ok(r) => r,
        Err(message) => {
            // Only our own sources' messages can come back here (see `NamedToml`), never
            // quoting the file.
            complete = false;
            problems.push(Problem {
                key: "(file)".into(),
                origin: Origin::File(
                    sources
                        .file
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("(inline)")),
                ),
                message,
            });
            Map::new()
        }
    };
    let env = match &sources.env {
        Some(m) => m.clone(),
        None => std::env::vars().collect(),
    };
    let overrides = super::env::overrides(&env, &mut problems);
    let (watch_overrides, other): (Vec<_>, Vec<_>) = overrides
        .into_iter()
        .partition(|o| o.path.first().is_some_and(|s| s == "watch"));
    for o in &other {
        super::env::apply(&mut root, o, &mut problems);
    }
    let mut walker = Walker::default();
    let mut raw = walker.root(root);
    for (path, tables) in file_watches {
        walker.file_watches(&path, tables, &mut raw.watches);
    }
    if !raw.watch_dir.trim().is_empty() {
        let dir = PathBuf::from(raw.watch_dir.trim());
        watch_dir(&mut walker, &dir, &mut raw.watches, &mut texts);
    }
    super::env::apply_to_watches(&mut walker, &mut raw.watches, &watch_overrides);
    problems.append(&mut walker.problems);
    Loaded {
        raw,
        origins: walker.origins,
        problems,
        complete,
        texts,
    }
}

/// A configuration file as it was opened: its text, or (above `CHUNKED_ABOVE_BYTES`) the file
/// to read as it is parsed.
enum FileText {
    Whole(String),
    Streamed(std::fs::File),
}

/// Appends the watches of every `*.toml` file in `dir` (sorted by name), one watch per file.
fn watch_dir(
    walker: &mut Walker,
    dir: &Path,
    watches: &mut Vec<RawWatch>,
    texts: &mut Vec<(PathBuf, Option<String>, String)>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let origin = walker.origins.of("watch_dir");
            walker.problems.push(Problem {
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
                walker.problems.push(Problem {
                    key: path,
                    origin: Origin::File(file.clone()),
                    message: format!("cannot read the watch file: {e}"),
                });
                continue;
            }
        };
        texts.push((file.clone(), Some(text.clone()), path.clone()));
        let source = NamedToml::new(file.display().to_string(), text);
        match config::Source::collect(&source) {
            Ok(table) => {
                if let Some(w) = walker.fields(&path, table) {
                    watches.push(w);
                } else {
                    // Keep numbering stable so later files name their own index.
                    watches.push(RawWatch::default());
                }
            }
            // `NamedToml` says where and what, without quoting the file.
            Err(e) => walker.problems.push(Problem {
                key: path,
                origin: Origin::File(file.clone()),
                message: e.to_string(),
            }),
        }
    }
}

/// A TOML source whose values carry the file's name as their origin.
#[derive(Debug, Clone)]
pub(super) struct NamedToml {
    name: String,
    text: String,
}

impl NamedToml {
    pub(super) fn new(name: String, text: String) -> Self {
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

pub(super) fn retag(table: Map<String, Value>, name: &str) -> Map<String, Value> {
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
