//! `scenewatch check`: load and validate the configuration, print its warnings and a summary
//! (watches counted by shape); every problem at once, placed by `file:line:column` (exit 78)
//! otherwise. `--online` then signs one harmless call with the API credentials, connects to a
//! PostgreSQL ledger (read-only), and runs every sink's healthcheck, one line per item (exit 69
//! when one fails). `--print` first prints the
//! effective configuration, secrets redacted, each value with its origin.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Outcome;
use crate::config::{
    self, Config, EventSinkConfig, Loaded, Origin, SelectorKind, SinkConfig, Sources,
};
use crate::exit;
use crate::ncp::{Client, Verdict};

/// Validates the configuration at `path` (with the process environment).
pub async fn run(path: &Path, online: bool, print: bool) -> Outcome {
    let sources = Sources::file_and_process_env(path);
    if print {
        print!("{}", effective(&config::load_all(&sources)));
    }
    let c = config::load(&sources)?;
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: configuration is valid: {}",
        path.display(),
        summary(&c)
    );
    if !online {
        return Ok(exit::OK);
    }
    let results = online_checks(&c).await;
    let failed = results.iter().filter(|r| !r.passed).count();
    for r in &results {
        println!(
            "{} {}: {}",
            if r.passed { "ok  " } else { "FAIL" },
            r.item,
            r.detail
        );
    }
    println!("online: {} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::ONLINE_CHECK_FAILED
    })
}

/// `2 index watch(es), 1 asset watch(es), 1 project selector(s), 1 sink(s), 0 event sink(s),
/// endpoint …`.
pub fn summary(c: &Config) -> String {
    let assets = c
        .selectors
        .iter()
        .filter(|s| matches!(s.kind, SelectorKind::Asset { .. }))
        .count();
    let projects = c.selectors.len() - assets;
    format!(
        "{} index watch(es), {assets} asset watch(es), {projects} project selector(s), {} sink(s), {} event sink(s), endpoint {}",
        c.watches.len(),
        c.sinks.len(),
        c.event_sinks.len(),
        c.api.endpoint
    )
}

/// One online check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What was checked: `api credentials`, `sink files`, `event sink bus`.
    pub item: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was done and what came back (never a secret).
    pub detail: String,
}

/// Signs one read-only call with the credentials (one item of the asset list of the first
/// project a watch names), connects to a PostgreSQL ledger (read-only), and runs every sink's
/// and event sink's healthcheck.
pub async fn online_checks(c: &Config) -> Vec<Checked> {
    let mut out = vec![credentials(c).await];
    #[cfg(feature = "postgres")]
    if let crate::state::Backend::Postgres(target) = &c.ledger {
        out.push(match crate::state::PostgresLedger::probe(target).await {
            Ok(detail) => Checked {
                item: "ledger (postgres)".into(),
                passed: true,
                detail,
            },
            Err(e) => Checked {
                item: "ledger (postgres)".into(),
                passed: false,
                detail: e.to_string(),
            },
        });
    }
    for s in &c.sinks {
        let item = format!("sink {}", s.name());
        // A webhook is only reached by a delivery (a test request would be one), stdout always
        // takes: their healthcheck checks nothing, and the line says so.
        let unchecked = matches!(s, SinkConfig::Webhook(_) | SinkConfig::Stdout(_));
        out.push(match crate::sink::build(s) {
            Ok(sink) => health(item, sink.healthcheck().await, unchecked),
            Err(e) => health(item, Err(e), unchecked),
        });
    }
    for s in &c.event_sinks {
        let item = format!("event sink {}", s.name());
        let unchecked = matches!(s, EventSinkConfig::Webhook(_) | EventSinkConfig::Stdout(_));
        out.push(match crate::sink::build_event_sink(s) {
            Ok(sink) => health(item, sink.healthcheck().await, unchecked),
            Err(e) => health(item, Err(e), unchecked),
        });
    }
    out
}

fn health(item: String, r: Result<(), crate::sink::SinkError>, unchecked: bool) -> Checked {
    match r {
        Ok(()) => Checked {
            item,
            passed: true,
            detail: if unchecked {
                "built; this kind has no healthcheck (its receiver is reached by deliveries only)"
                    .into()
            } else {
                "healthcheck passed".into()
            },
        },
        Err(e) => Checked {
            item,
            passed: false,
            detail: format!("healthcheck failed: {e}"),
        },
    }
}

async fn credentials(c: &Config) -> Checked {
    let item = format!("api credentials ({})", c.api.credentials.access_key);
    let project = c
        .watches
        .iter()
        .map(|w| {
            (
                w.key.workspace().to_string(),
                w.key.project_id().to_string(),
            )
        })
        .chain(c.selectors.iter().map(|s| match &s.kind {
            SelectorKind::Asset {
                workspace,
                project_id,
                ..
            }
            | SelectorKind::Project {
                workspace,
                project_id,
            } => (workspace.clone(), project_id.clone()),
        }))
        .next();
    let Some((workspace, project)) = project else {
        return Checked {
            item,
            passed: false,
            detail: "no watch names a project to make a call in; add a [[watch]]".into(),
        };
    };
    let client = match Client::new(c.api.client_options()) {
        Ok(c) => c,
        Err(e) => {
            return Checked {
                item,
                passed: false,
                detail: format!("cannot build the HTTP client: {e}"),
            };
        }
    };
    let call = format!("GET the asset list of {workspace}/{project} (1 item)");
    match client.list_assets(&workspace, &project, 1, 1).await {
        Verdict::Ok(_) => Checked {
            item,
            passed: true,
            detail: format!("{call}: signed and accepted"),
        },
        Verdict::AuthFailure(e) => Checked {
            item,
            passed: false,
            detail: format!("{call}: the credentials were refused: {e}"),
        },
        Verdict::QuotaExceeded { error, .. } => Checked {
            item,
            passed: false,
            detail: format!("{call}: the account's quota is used up: {error}"),
        },
        Verdict::Throttled { error: e, .. }
        | Verdict::Retryable { error: e, .. }
        | Verdict::Permanent(e)
        | Verdict::Pending(e)
        | Verdict::NotReady(e) => Checked {
            item,
            passed: false,
            detail: format!("{call}: {e}"),
        },
    }
}

/// The effective configuration, one `key = value  # origin` line per key, sorted by key within
/// each table, secrets redacted (`check` lists the problems after it).
pub fn effective(loaded: &Loaded) -> String {
    let value = serde_json::to_value(&loaded.raw).unwrap_or_default();
    let mut leaves = Vec::new();
    flatten("", &value, &mut leaves);
    let positions = loaded.positions();
    let width = leaves
        .iter()
        .map(|(k, v)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0)
        .min(72);
    let mut out = String::from(
        "# The effective configuration (secrets redacted), each value with its origin.\n",
    );
    for (key, v) in &leaves {
        let shown = redact(key, v);
        let origin = describe(&positions, key, loaded.origins.of(key));
        let line = format!("{key} = {shown}");
        let _ = writeln!(out, "{line:<width$}  # {origin}");
    }
    out
}

fn describe(
    positions: &HashMap<PathBuf, HashMap<String, (usize, usize)>>,
    key: &str,
    origin: Origin,
) -> String {
    match origin {
        Origin::File(p) | Origin::Line(p, _, _) => match positions.get(&p).and_then(|i| i.get(key))
        {
            Some((line, column)) => format!("{}:{line}:{column}", p.display()),
            // A watch read on the fast path names its file for every key, set or not.
            None if key.starts_with("watch[") => "default".into(),
            None => p.display().to_string(),
        },
        Origin::Env(name) => format!("env {name}"),
        Origin::Default => "default".into(),
    }
}

/// (key path, value as TOML would show it): tables by `.`, arrays of tables by `[i]`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::Object(_) => flatten(&join(k), v, out),
                    serde_json::Value::Array(items)
                        if !items.is_empty() && items.iter().all(|i| i.is_object()) =>
                    {
                        for (i, item) in items.iter().enumerate() {
                            flatten(&format!("{}[{i}]", join(k)), item, out);
                        }
                    }
                    serde_json::Value::Array(items) if items.is_empty() && is_tables(k) => {}
                    serde_json::Value::Null => out.push((join(k), "(unset)".into())),
                    other => out.push((join(k), other.to_string())),
                }
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The arrays of tables, shown as nothing when empty.
fn is_tables(k: &str) -> bool {
    matches!(k, "watch" | "sink" | "event_sink")
}

/// Secrets as `(redacted)`, and the user information of URLs (a password or token).
fn redact(key: &str, shown: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if matches!(leaf, "secret_key" | "secret" | "password" | "token") {
        return if shown == "\"\"" || shown == "(unset)" {
            shown.to_string()
        } else {
            "(redacted)".into()
        };
    }
    match shown.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://(redacted)@{}", &rest[at + 1..]),
                None => shown.to_string(),
            }
        }
        None => shown.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_redacted() {
        assert_eq!(redact("api.secret_key", "\"abc\""), "(redacted)");
        assert_eq!(redact("api.secret_key", "\"\""), "\"\"");
        assert_eq!(redact("sink[1].secret", "\"whsec_x\""), "(redacted)");
        assert_eq!(
            redact("sink[2].url", "\"postgres://u:pw@db:5432/x\""),
            "\"postgres://(redacted)@db:5432/x\""
        );
        assert_eq!(
            redact("event_sink[0].url", "\"nats://tok@h:4222\""),
            "\"nats://(redacted)@h:4222\""
        );
        assert_eq!(
            redact("api.endpoint", "\"https://h/a@b\""),
            "\"https://h/a@b\""
        );
    }

    #[test]
    fn the_effective_configuration_names_each_origin_and_never_a_secret() {
        let env: HashMap<String, String> = [
            ("SCENEWATCH__API__SECRET_KEY", "SK-never-printed-77"),
            ("SCENEWATCH__SINK__0__DIR", "/env/dir"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let loaded = config::load_all(&Sources {
            inline: Some((
                "c.toml".into(),
                "[api]\naccess_key = \"AK\"\n[[sink]]\ntype = \"file\"\n".into(),
            )),
            env: Some(env),
            ..Sources::default()
        });
        let text = effective(&loaded);
        assert!(!text.contains("SK-never-printed-77"), "{text}");
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{k} = ")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .to_string()
        };
        assert!(line("api.access_key").ends_with("# c.toml:2:1"), "{text}");
        assert!(
            line("api.secret_key").contains("(redacted)")
                && line("api.secret_key").ends_with("# env SCENEWATCH__API__SECRET_KEY"),
            "{text}"
        );
        assert!(line("sink[0].type").ends_with("# c.toml:4:1"), "{text}");
        assert!(
            line("sink[0].dir").contains("\"/env/dir\"")
                && line("sink[0].dir").ends_with("# env SCENEWATCH__SINK__0__DIR"),
            "{text}"
        );
        assert!(line("poll.max_wait").ends_with("# default"), "{text}");
    }
}
