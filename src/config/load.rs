//! Loading: the sources of a configuration (a file or inline text, an environment, the watch
//! directory), merged with the `config` crate under `SCENEWATCH__…` variables, then walked key by
//! key ([`super::walk`]) into the raw shape; `[[watch]]` tables are taken out of each file first
//! ([`super::split`]). The only IO of configuration besides the secret files: reading these.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Map, Value, ValueKind};

use super::split::{WatchItem, describe_toml_error, split_watches};
use super::walk::Walker;
use super::{
    Config, ConfigErrors, ENV_PREFIX, ENV_SEPARATOR, Origin, Origins, Problem, RawConfig, RawWatch,
    validate,
};

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
        watch_dir(&mut walker, &dir, &mut raw.watches);
    }
    if walker.problems.is_empty() {
        Ok((raw, walker.origins))
    } else {
        Err(ConfigErrors(walker.problems))
    }
}

/// Appends the watches of every `*.toml` file in `dir` (sorted by name), one watch per file.
fn watch_dir(walker: &mut Walker, dir: &Path, watches: &mut Vec<RawWatch>) {
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
