//! The key-by-key walk of the merged tree: every table is checked one key at a time against its
//! raw struct (unknown keys with a "did you mean", wrong types without the value), so one problem
//! does not hide the next; sinks are dispatched on `type`; the origin of every key (file or
//! environment variable) is recorded for the messages validation writes later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Map, Value, ValueKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::load::NamedToml;
use super::split::WatchItem;
use super::{Origin, Origins, Problem, RawConfig, RawEventSink, RawSink, RawWatch, env_var_name};

/// Walks the merged tree, recording origins and every shape problem.
#[derive(Default)]
pub(super) struct Walker {
    pub(super) origins: Origins,
    pub(super) problems: Vec<Problem>,
}

impl Walker {
    pub(super) fn root(&mut self, root: Map<String, Value>) -> RawConfig {
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
                        let w = self.table(&path, item).and_then(|t| self.fields(&path, t));
                        out.watches.push(w.unwrap_or_default());
                    }
                }
                "server" => {
                    if let Some(t) = self.table("server", v) {
                        out.server = self.fields("server", t).unwrap_or_default();
                    }
                }
                "state" => {
                    if let Some(t) = self.table("state", v) {
                        out.state = self.fields("state", t).unwrap_or_default();
                    }
                }
                "sink" => {
                    for (i, item) in self.array("sink", v).into_iter().enumerate() {
                        let path = format!("sink[{i}]");
                        match self.table(&path, item).and_then(|t| self.sink(&path, t)) {
                            Some(s) => out.sinks.push(s),
                            // Keeps the numbering of the next ones; the problem is recorded.
                            None => out.sinks.push(RawSink::Stdout(placeholder(&path))),
                        }
                    }
                }
                "event_sink" => {
                    for (i, item) in self.array("event_sink", v).into_iter().enumerate() {
                        let path = format!("event_sink[{i}]");
                        match self
                            .table(&path, item)
                            .and_then(|t| self.event_sink(&path, t))
                        {
                            Some(s) => out.event_sinks.push(s),
                            None => out
                                .event_sinks
                                .push(RawEventSink::Stdout(placeholder(&path))),
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
    pub(super) fn file_watches(
        &mut self,
        file: &Path,
        items: Vec<WatchItem>,
        watches: &mut Vec<RawWatch>,
    ) {
        let origin = Origin::File(file.to_path_buf());
        let mut run_start = watches.len();
        let mut next = watches.len();
        let converted = items.into_iter().map(|item| {
            let i = next;
            next += 1;
            match item {
                WatchItem::Typed(w) => w,
                WatchItem::Raw(value) => {
                    if run_start < i {
                        self.origins.watch_runs.push((run_start, i, origin.clone()));
                    }
                    run_start = i + 1;
                    self.raw_watch(file, &format!("watch[{i}]"), value, &origin)
                }
            }
        });
        if watches.is_empty() {
            // Collected in the items' own allocation (a `Vec`'s in-place collect): at 100,000
            // watches a second list beside the first, grown by doubling, was the start's peak.
            *watches = converted.collect();
        } else {
            watches.extend(converted);
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

    /// A sink of a kind whose cargo feature this build leaves out: a problem at its `type`
    /// naming the sink (its `name`, or the name it would default to) and the feature.
    #[cfg(not(all(feature = "postgres", feature = "s3", feature = "nats")))]
    fn compiled_out(
        &mut self,
        key: String,
        origin: Origin,
        t: &Map<String, Value>,
        list: &str,
        kind: &str,
    ) {
        let name = t
            .get("name")
            .and_then(|v| v.clone().into_string().ok())
            .unwrap_or_else(|| crate::sink::config::default_name(list, kind));
        let feature = crate::sink::config::FEATURE_SINKS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map_or(kind, |(_, feature, _)| *feature);
        self.problems.push(Problem {
            key,
            origin,
            message: crate::sink::config::compiled_out(list, kind, &name, feature),
        });
    }

    fn sink(&mut self, path: &str, mut t: Map<String, Value>) -> Option<RawSink> {
        let (name, key, origin) = self.sink_type(path, &mut t, RawSink::TYPES)?;
        match name.as_str() {
            "file" => self.fields(path, t).map(RawSink::File),
            "stdout" => self.fields(path, t).map(RawSink::Stdout),
            "jsonl" => self.fields(path, t).map(RawSink::Jsonl),
            "webhook" => self.fields(path, t).map(RawSink::Webhook),
            #[cfg(feature = "postgres")]
            "postgres" => self.fields(path, t).map(RawSink::Postgres),
            #[cfg(feature = "s3")]
            "s3" => self.fields(path, t).map(RawSink::S3),
            #[cfg(not(feature = "postgres"))]
            "postgres" => {
                self.compiled_out(key, origin, &t, "sink", "postgres");
                None
            }
            #[cfg(not(feature = "s3"))]
            "s3" => {
                self.compiled_out(key, origin, &t, "sink", "s3");
                None
            }
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
            #[cfg(feature = "nats")]
            "nats" => self.fields(path, t).map(RawEventSink::Nats),
            #[cfg(not(feature = "nats"))]
            "nats" => {
                self.compiled_out(key, origin, &t, "event_sink", "nats");
                None
            }
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
    pub(super) fn fields<T>(&mut self, path: &str, t: Map<String, Value>) -> Option<T>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        let defaults = match serde_json::to_value(T::default()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let known: Vec<String> = defaults.keys().cloned().collect();
        let mut t: BTreeMap<String, Value> = t.into_iter().collect();
        // A list key set from the environment holds the variable's text: split it.
        for (k, v) in t.iter_mut() {
            if defaults.get(k).is_some_and(serde_json::Value::is_array)
                && let Some(origin) = v
                    .origin()
                    .filter(|o| o.starts_with(super::env::ORIGIN_PREFIX))
                && let ValueKind::String(text) = &v.kind
            {
                *v = super::env::list(text, origin);
            }
        }
        let mut bad = Vec::new();
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
                bad.push(k.clone());
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
                bad.push(k.clone());
            }
        }
        // The keys that are fine are kept, so that their meaning is checked in the same pass
        // (the problems recorded above make the whole load fail anyway).
        for k in bad {
            t.remove(&k);
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

/// Stands in for a sink table that could not be read, so that the next ones keep their
/// numbers; its own problem is recorded, so it never reaches a run.
fn placeholder(path: &str) -> crate::config::RawStdoutSink {
    crate::config::RawStdoutSink {
        name: Some(format!("({path} not read)")),
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
    #[serde(skip_deserializing)]
    state: (),
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
        Some(o) if o.starts_with(super::env::ORIGIN_PREFIX) => {
            Origin::Env(o[super::env::ORIGIN_PREFIX.len()..].to_string())
        }
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

/// The known key nearest to `k` by edit distance, when it is near enough to be a typo.
fn closest<'a>(k: &str, known: &'a [String]) -> Option<&'a str> {
    crate::exit::nearest(k, known.iter().map(String::as_str))
        .first()
        .copied()
}
