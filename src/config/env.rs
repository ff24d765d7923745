//! Environment overrides: `SCENEWATCH__` then the key path, levels separated by `__`, names
//! case-insensitive. A number indexes an array of tables: `SCENEWATCH__SINK__0__DIR=/x` sets
//! `dir` of the first `[[sink]]`, `SCENEWATCH__WATCH__2__ASSET_ID` the third `[[watch]]`'s
//! `asset_id`; the index one past the last adds a table (`SCENEWATCH__SINK__1__TYPE=jsonl` with
//! one `[[sink]]` in the file). A list key takes a comma-separated value or a JSON array:
//! `SCENEWATCH__API__PENDING_CODES=3001,3002` or `'["3001","3002"]'`. Every value keeps the
//! variable's full name as its origin, for the messages.

use std::collections::{BTreeMap, HashMap};

use config::{Map, Value, ValueKind};

use super::walk::Walker;
use super::{ENV_PREFIX, ENV_SEPARATOR, Origin, Problem, RawWatch};

/// The origin string a value from the environment carries (`env:` and the variable's name).
pub(super) const ORIGIN_PREFIX: &str = "env:";

/// One `SCENEWATCH__…` variable.
#[derive(Debug, Clone)]
pub(super) struct Override {
    /// The variable's name.
    pub(super) name: String,
    /// The key path, lowercase: `["sink", "0", "dir"]`.
    pub(super) path: Vec<String>,
    /// The value.
    pub(super) value: String,
}

impl Override {
    fn origin(&self) -> String {
        format!("{ORIGIN_PREFIX}{}", self.name)
    }

    fn problem(&self, key: String, message: impl Into<String>) -> Problem {
        Problem {
            key,
            origin: Origin::Env(self.name.clone()),
            message: message.into(),
        }
    }
}

/// The key path as problems name it: `sink[0].dir`.
pub(super) fn key_of(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if is_index(seg) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn is_index(seg: &str) -> bool {
    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
}

/// The `SCENEWATCH__…` variables of `env`, ordered so that a table is added before its keys
/// are set and indexes count as numbers (`…__2__…` before `…__10__…`).
pub(super) fn overrides(
    env: &HashMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<Override> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let mut out = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push(Problem {
                key: "(environment)".into(),
                origin: Origin::Env(name.clone()),
                message: format!(
                    "not a configuration key: an empty level between `{ENV_SEPARATOR}`s"
                ),
            });
            continue;
        }
        out.push(Override {
            name: name.clone(),
            path,
            value: value.clone(),
        });
    }
    out.sort_by_key(|o| order(&o.path));
    out
}

fn order(path: &[String]) -> Vec<(u8, u64, String)> {
    path.iter()
        .map(|s| match s.parse::<u64>() {
            Ok(n) if is_index(s) => (0, n, String::new()),
            _ => (1, 0, s.clone()),
        })
        .collect()
}

/// Sets one variable's value in the merged tree (everything but `[[watch]]`).
pub(super) fn apply(root: &mut Map<String, Value>, o: &Override, problems: &mut Vec<Problem>) {
    if let Err(p) = set(root, &o.path, 0, o) {
        problems.push(p);
    }
}

fn set(
    table: &mut Map<String, Value>,
    path: &[String],
    at: usize,
    o: &Override,
) -> Result<(), Problem> {
    let seg = &path[at];
    let here = key_of(&path[..=at]);
    let origin = o.origin();
    if is_index(seg) {
        return Err(o.problem(
            here,
            "a number must follow the name of an array of tables (`SINK__0__DIR`)",
        ));
    }
    if at + 1 == path.len() {
        table.insert(
            seg.clone(),
            Value::new(Some(&origin), ValueKind::String(o.value.clone())),
        );
        return Ok(());
    }
    let next = &path[at + 1];
    if is_index(next) {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| Value::new(Some(&origin), ValueKind::Array(Vec::new())));
        let ValueKind::Array(items) = &mut entry.kind else {
            return Err(o.problem(here, "not an array of tables here; drop the index"));
        };
        let i: usize = next
            .parse()
            .map_err(|_| o.problem(here.clone(), "index too large"))?;
        if i > items.len() {
            return Err(o.problem(
                key_of(&path[..=at + 1]),
                format!(
                    "there {} {} [[{seg}]] table{} (from 0), so the next new one is {}",
                    if items.len() == 1 { "is" } else { "are" },
                    items.len(),
                    if items.len() == 1 { "" } else { "s" },
                    items.len()
                ),
            ));
        }
        if i == items.len() {
            items.push(Value::new(Some(&origin), ValueKind::Table(Map::new())));
        }
        if at + 2 == path.len() {
            return Err(o.problem(
                key_of(&path[..=at + 1]),
                format!("name a key of the table: {}__KEY", o.name),
            ));
        }
        let ValueKind::Table(t) = &mut items[i].kind else {
            return Err(o.problem(key_of(&path[..=at + 1]), "not a table"));
        };
        return set(t, path, at + 2, o);
    }
    let entry = table
        .entry(seg.clone())
        .or_insert_with(|| Value::new(Some(&origin), ValueKind::Table(Map::new())));
    let ValueKind::Table(t) = &mut entry.kind else {
        return Err(o.problem(here, "not a table, so it has no keys to set"));
    };
    set(t, path, at + 1, o)
}

/// Applies the `SCENEWATCH__WATCH__N__KEY` variables to the watches read from the files (they
/// are not in the merged tree): each touched watch is walked again, key by key, with its
/// file's origin on the keys the file set.
pub(super) fn apply_to_watches(
    walker: &mut Walker,
    watches: &mut Vec<RawWatch>,
    overrides: &[Override],
) {
    let mut by_index: BTreeMap<usize, Vec<&Override>> = BTreeMap::new();
    for o in overrides {
        match o
            .path
            .get(1)
            .filter(|s| is_index(s))
            .and_then(|s| s.parse().ok())
        {
            Some(i) if o.path.len() == 3 => by_index.entry(i).or_default().push(o),
            _ => walker.problems.push(o.problem(
                key_of(&o.path),
                "a watch is set by its index and key: SCENEWATCH__WATCH__0__ASSET_ID",
            )),
        }
    }
    for (i, list) in by_index {
        if i > watches.len() {
            let n = watches.len();
            for o in list {
                walker.problems.push(o.problem(
                    format!("watch[{i}]"),
                    format!("there are {n} watches (from 0), so the next new one is {n}"),
                ));
            }
            continue;
        }
        let path = format!("watch[{i}]");
        let mut table = Map::new();
        if let Some(w) = watches.get(i) {
            let origin = match walker.origins.of(&path) {
                Origin::File(p) | Origin::Line(p, _, _) => Some(p.display().to_string()),
                _ => None,
            };
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(w) {
                for (k, v) in fields {
                    if let serde_json::Value::String(s) = v {
                        table.insert(k, Value::new(origin.as_ref(), ValueKind::String(s)));
                    }
                }
            }
        }
        for o in list {
            table.insert(
                o.path[2].clone(),
                Value::new(Some(&o.origin()), ValueKind::String(o.value.clone())),
            );
        }
        let w = walker.fields::<RawWatch>(&path, table).unwrap_or_default();
        if i == watches.len() {
            watches.push(w);
        } else {
            watches[i] = w;
        }
    }
}

/// A list value from the environment: a JSON array, or comma-separated (spaces around items
/// trimmed, empty items dropped).
pub(super) fn list(value: &str, origin: &str) -> Value {
    let o = origin.to_string();
    let items: Vec<Value> = match serde_json::from_str::<Vec<serde_json::Value>>(value.trim()) {
        Ok(items) if value.trim_start().starts_with('[') => items
            .into_iter()
            .map(|v| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                Value::new(Some(&o), ValueKind::String(s))
            })
            .collect(),
        _ => value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::new(Some(&o), ValueKind::String(s.to_string())))
            .collect(),
    };
    Value::new(Some(&o), ValueKind::Array(items))
}
