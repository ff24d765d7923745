//! Configuration: the TOML file layered under `SCENEWATCH__…` environment variables, checked in two
//! stages (shape, then meaning) with every problem reported at once, each naming its key and source
//! (`file:line:column` for a key read from a file, the variable's name for one from the
//! environment).
//!
//! Stage one ([`load_all`]) merges the sources with the `config` crate, applies the environment
//! ([`env`]: `SCENEWATCH__SINK__0__DIR`, lists as `a,b` or JSON) and walks the merged tree key by
//! key, so one unknown key or wrong type does not hide the next; a TOML syntax error stops its own
//! file only. Stage two ([`validate::validate`]) turns the raw strings into strong types, on
//! whatever stage one read (a meaning problem that repeats a shape problem is dropped). The only
//! IO here is reading the config file, the watch directory and the secret files.
//!
//! Layout: `load.rs` the sources, their merging and the one pass; `env.rs` the environment
//! overrides; `split.rs` the large-file splitter (one `[[watch]]` table at a time); `walk.rs`
//! the key-by-key walk that records origins and shape problems; `spans.rs` the line and column
//! of each key (from the TOML parser's spans); `raw.rs` the file's shape; `validate.rs` and
//! `checks.rs` the meaning (each sink kind's in its own file under `src/sink/`); this file the
//! problems, origins and names they share.

pub(crate) mod checks;
mod env;
mod load;
mod raw;
mod spans;
mod split;
mod validate;
mod walk;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

pub use load::{Loaded, Sources, load, load_all, load_raw};
pub use raw::{RawApi, RawConfig, RawPoll, RawServer, RawState, RawText, RawWatch};
pub(crate) use validate::check_state;
pub use validate::{
    ApiConfig, Config, Declared, GenerationChoice, PollConfig, PollPolicy, Selector, SelectorKind,
    WatchSpec, validate,
};
// Each sink kind's table, raw and validated, lives beside its sink; named here too so that
// `config::…` stays the one place to find every part of the configuration.
pub use crate::sink::config::{EventSinkConfig, RawEventSink, RawSink, SinkConfig};
pub use crate::sink::file::{FileSinkConfig, RawFileSink};
pub use crate::sink::jsonl::{JsonlSinkConfig, RawJsonlSink};
#[cfg(feature = "nats")]
pub use crate::sink::nats::{NatsEventSinkConfig, RawNatsEventSink};
#[cfg(feature = "postgres")]
pub use crate::sink::postgres::{PostgresSinkConfig, RawPostgresSink};
#[cfg(feature = "s3")]
pub use crate::sink::s3::{RawS3Sink, S3SinkConfig};
pub use crate::sink::stdout::{RawStdoutSink, StdoutSinkConfig};
pub use crate::sink::webhook::{RawWebhookSink, WebhookSinkConfig};

/// Prefix of environment variables: `SCENEWATCH__API__ACCESS_KEY` sets `api.access_key`,
/// `SCENEWATCH__SINK__0__DIR` the `dir` of the first `[[sink]]` (see [`env`]).
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
    /// A key's place in a configuration file: the file, the line and the column (from 1).
    Line(PathBuf, usize, usize),
    /// An environment variable (its full name).
    Env(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "in {}", p.display()),
            Origin::Line(p, line, column) => write!(f, "in {}:{line}:{column}", p.display()),
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

/// `api.access_key` → `SCENEWATCH__API__ACCESS_KEY`.
pub fn env_var_name(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for part in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests;
