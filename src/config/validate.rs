//! Stage two of configuration: a pure check that turns the raw shape into strong types and
//! reports every problem at once: the top-level keys, `[api]`, `[poll]` and `[[watch]]` here,
//! each sink kind in its own file under `src/sink/` (through [`crate::sink::config::validate`]),
//! all into the one list of problems. The only IO is reading the secret key file.

use std::collections::HashMap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::checks::{duration, is_loopback};
use super::{ConfigErrors, EventSinkConfig, Origins, Problem, RawConfig, SinkConfig};
use crate::domain::{WatchKey, validate_id};
use crate::key_index::{KeyIndex, give_back};
use crate::ncp::signing::Credentials;
use std::fmt;

/// Name of the systemd credential (`LoadCredential=ncp-secret-key:…`) holding the secret key.
pub const CREDENTIAL_NAME: &str = "ncp-secret-key";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// The API.
    pub api: ApiConfig,
    /// The polling policy.
    pub poll: PollConfig,
    /// Watches of one index, in file order, unique by key.
    pub watches: Vec<WatchSpec>,
    /// Watches of an asset's latest index or of every asset of a project, in file order: the
    /// engine finds their indexes (and so their watches) through the API.
    pub selectors: Vec<Selector>,
    /// Sinks in file order.
    pub sinks: Vec<SinkConfig>,
    /// Event sinks in file order.
    pub event_sinks: Vec<EventSinkConfig>,
    /// The watch directory, if any.
    pub watch_dir: Option<PathBuf>,
    /// How long a graceful shutdown may take.
    pub shutdown_timeout: Duration,
    /// How often an idle sink's healthcheck runs.
    pub sink_healthcheck_interval: Duration,
    /// Address of the health and metrics endpoints.
    pub listen: std::net::SocketAddr,
    /// `state.retention`: how long done deliveries and sent events are kept in the ledger.
    pub retention: Duration,
    /// `state.backend` and its settings: where the ledger is.
    pub ledger: crate::state::Backend,
    /// Things worth saying that do not stop a run.
    pub warnings: Vec<String>,
}

/// `[api]`, validated.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    /// The key pair (the secret is redacted from `Debug`).
    pub credentials: Credentials,
    /// Default generation of watches.
    pub generation: GenerationChoice,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Largest accepted response body.
    pub max_body_bytes: u64,
    /// Steady request rate per host.
    pub requests_per_second: f64,
    /// Burst size.
    pub burst: u32,
    /// Result-endpoint service codes that mean "not completed yet".
    pub pending_codes: Vec<String>,
}

impl ApiConfig {
    /// The client's options: the one place they are built from the configuration.
    pub fn client_options(&self) -> crate::ncp::ClientOptions {
        crate::ncp::ClientOptions {
            endpoint: self.endpoint.clone(),
            credentials: self.credentials.clone(),
            timeout: self.timeout,
            max_body_bytes: self.max_body_bytes,
            pending_codes: self.pending_codes.clone(),
            user_agent: format!("scenewatch/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// `[poll]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// First interval.
    pub initial_interval: Duration,
    /// Longest interval.
    pub max_interval: Duration,
    /// Default deadline of a watch.
    pub max_wait: Duration,
    /// Recheck interval after delivery.
    pub recheck_interval: Duration,
    /// Grace for `BEFORE_SUMMARIZE`.
    pub not_requested_grace: Duration,
    /// Polls in flight at once.
    pub concurrency: usize,
    /// How often a watched project's asset list is read again.
    pub discovery_interval: Duration,
    /// How waiting jobs' next polls are timed.
    pub policy: PollPolicy,
}

/// `poll.policy`: how the next poll of a waiting job is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollPolicy {
    /// From the distribution of the project's past queue and run times, where there is enough
    /// history (see `crate::forecast`); the backoff series otherwise.
    #[default]
    Adaptive,
    /// The exponential backoff series alone.
    Backoff,
}

impl PollPolicy {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PollPolicy::Adaptive => "adaptive",
            PollPolicy::Backoff => "backoff",
        }
    }
}

/// One watch, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// Its identity.
    pub key: WatchKey,
    /// Known scene summary id, if any.
    pub scene_summary_id: Option<Arc<str>>,
    /// Which endpoints it uses.
    pub generation: GenerationChoice,
    /// Its deadline.
    pub max_wait: Duration,
    /// Where it was declared, for messages (e.g. `watch[3] (/etc/scenewatch/scenewatch.toml)`);
    /// for a watch a selector found, the selector's place.
    pub declared_at: Declared,
    /// `None` for a watch of a configured index; for a watch found through a [`Selector`], that
    /// selector's [`Selector::origin`]: such a watch follows its asset's latest index.
    pub origin: Option<Arc<str>>,
}

/// Which endpoint generation a watch uses (`api.generation`, per watch `generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenerationChoice {
    /// The asset-level calls when the watch's index is the asset's latest (or no index is
    /// named), the index-level calls otherwise; off the index-level API by itself when NAVER
    /// removes it.
    Auto,
    /// The original index-level API (deprecated upstream, removal announced for January 2027).
    Index,
    /// The asset-level API: always the asset's latest index.
    Asset,
}

impl GenerationChoice {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationChoice::Auto => "auto",
            GenerationChoice::Index => "index",
            GenerationChoice::Asset => "asset",
        }
    }
}

impl fmt::Display for GenerationChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a watch without an index names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    /// One asset: its latest index, followed through re-indexes.
    Asset {
        /// Workspace name.
        workspace: String,
        /// Project id.
        project_id: String,
        /// Asset id.
        asset_id: String,
    },
    /// Every asset of a project, found by listing it (again every `poll.discovery_interval`).
    Project {
        /// Workspace name.
        workspace: String,
        /// Project id.
        project_id: String,
    },
}

/// A `[[watch]]` without `index_id`: the watches it stands for are found through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// What it names.
    pub kind: SelectorKind,
    /// The generation of the watches it finds (`auto` or `asset`).
    pub generation: GenerationChoice,
    /// Their deadline.
    pub max_wait: Duration,
    /// Where it was declared, for messages.
    pub declared_at: Declared,
}

/// Where a watch or a selector was declared, for messages: `watch[3] (/etc/scenewatch.toml)`.
/// The place is one text shared by the watches read from the same source (100,000 watches of
/// one file do not each hold its path), and by the watches a selector found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Its `[[watch]]` table's number, if it is one.
    table: Option<u32>,
    /// The source (file, line, environment variable), or the whole text when `table` is `None`.
    place: Arc<str>,
}

impl Declared {
    /// Table `table` of `place`.
    pub fn table(table: usize, place: Arc<str>) -> Declared {
        Declared {
            table: u32::try_from(table).ok(),
            place,
        }
    }
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.table {
            Some(i) => write!(f, "watch[{i}] ({})", self.place),
            None => f.write_str(&self.place),
        }
    }
}

impl From<&str> for Declared {
    fn from(text: &str) -> Declared {
        Declared {
            table: None,
            place: text.into(),
        }
    }
}

impl From<String> for Declared {
    fn from(text: String) -> Declared {
        Declared {
            table: None,
            place: text.into(),
        }
    }
}

impl Selector {
    /// A stable name, kept in the ledger with every watch the selector found:
    /// `asset:{w}/{p}/{a}` or `project:{w}/{p}`.
    pub fn origin(&self) -> String {
        match &self.kind {
            SelectorKind::Asset {
                workspace,
                project_id,
                asset_id,
            } => format!("asset:{workspace}/{project_id}/{asset_id}"),
            SelectorKind::Project {
                workspace,
                project_id,
            } => format!("project:{workspace}/{project_id}"),
        }
    }

    /// For messages: "asset w/p/a" or "project w/p".
    pub fn describe(&self) -> String {
        self.origin().replacen(':', " ", 1)
    }

    /// The workspace and project.
    pub fn project(&self) -> (&str, &str) {
        match &self.kind {
            SelectorKind::Asset {
                workspace,
                project_id,
                ..
            }
            | SelectorKind::Project {
                workspace,
                project_id,
            } => (workspace, project_id),
        }
    }

    /// The spec of the watch of `key` this selector found.
    pub fn spec_for(&self, key: WatchKey) -> WatchSpec {
        WatchSpec {
            key,
            scene_summary_id: None,
            generation: self.generation,
            max_wait: self.max_wait,
            declared_at: self.declared_at.clone(),
            origin: Some(self.origin().into()),
        }
    }
}

impl WatchSpec {
    /// The target handed to the client.
    pub fn target(&self) -> crate::ncp::Target {
        crate::ncp::Target {
            workspace: self.key.workspace().to_string(),
            project_id: self.key.project_id().to_string(),
            asset_id: self.key.asset_id().to_string(),
            index_id: self.key.index_id().to_string(),
            scene_summary_id: self.scene_summary_id.as_deref().map(str::to_owned),
        }
    }
}

fn generation(
    origins: &Origins,
    problems: &mut Vec<Problem>,
    key: &str,
    v: &str,
) -> Option<GenerationChoice> {
    match v {
        "auto" => Some(GenerationChoice::Auto),
        "index" => Some(GenerationChoice::Index),
        "asset" => Some(GenerationChoice::Asset),
        other => {
            problems.push(origins.problem(
                key,
                format!("{other:?} is not a generation; use \"auto\", \"index\" or \"asset\""),
            ));
            None
        }
    }
}

/// Stage two: every problem at once, or a [`Config`].
pub fn validate(
    raw: &mut RawConfig,
    origins: &Origins,
    credentials_directory: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let mut p = Vec::new();
    let mut warnings = Vec::new();

    if raw.state_dir.trim().is_empty() {
        p.push(origins.problem("state_dir", "must not be empty"));
    }
    let state_dir = PathBuf::from(&raw.state_dir);

    // [api]
    let a = &raw.api;
    let endpoint = check_endpoint(origins, &mut p, &a.endpoint, a.allow_insecure_http);
    if a.access_key.trim().is_empty() {
        p.push(origins.problem(
            "api.access_key",
            format!(
                "missing; set it in the file or as {}",
                super::env_var_name("api.access_key")
            ),
        ));
    }
    let secret = secret_key(origins, &mut p, &mut warnings, raw, credentials_directory);
    let gen_default = generation(origins, &mut p, "api.generation", &a.generation);
    let timeout = duration(origins, &mut p, "api.timeout", &a.timeout);
    if a.max_body_bytes < 1024 {
        p.push(origins.problem("api.max_body_bytes", "must be at least 1024"));
    }
    if !(a.requests_per_second.is_finite() && a.requests_per_second > 0.0) {
        p.push(origins.problem("api.requests_per_second", "must be a number above zero"));
    }
    if a.burst == 0 {
        p.push(origins.problem("api.burst", "must be at least 1"));
    }

    // [poll]
    let r = &raw.poll;
    let initial = duration(
        origins,
        &mut p,
        "poll.initial_interval",
        &r.initial_interval,
    );
    let max_interval = duration(origins, &mut p, "poll.max_interval", &r.max_interval);
    let max_wait = duration(origins, &mut p, "poll.max_wait", &r.max_wait);
    let recheck = duration(
        origins,
        &mut p,
        "poll.recheck_interval",
        &r.recheck_interval,
    );
    let grace = duration(
        origins,
        &mut p,
        "poll.not_requested_grace",
        &r.not_requested_grace,
    );
    let discovery = duration(
        origins,
        &mut p,
        "poll.discovery_interval",
        &r.discovery_interval,
    );
    let poll_policy = match r.policy.trim() {
        "adaptive" => PollPolicy::Adaptive,
        "backoff" => PollPolicy::Backoff,
        other => {
            p.push(origins.problem(
                "poll.policy",
                format!(
                    "must be \"adaptive\" or \"backoff\", not {:?}",
                    crate::status::escape_controls(other)
                ),
            ));
            PollPolicy::default()
        }
    };
    if let (Some(i), Some(m)) = (initial, max_interval)
        && i > m
    {
        p.push(origins.problem(
            "poll.max_interval",
            format!(
                "is shorter than poll.initial_interval ({})",
                humantime::format_duration(i)
            ),
        ));
    }
    if r.concurrency == 0 {
        p.push(origins.problem("poll.concurrency", "must be at least 1"));
    }

    // [[watch]]: an index of an asset, one asset's latest index, or every asset of a project.
    // Each raw watch is taken from the end of the (reversed) list as its spec is made, and the
    // list's room given back as it empties, so at 100,000 watches the two lists are not both
    // held whole; `seen` holds positions in `watches` (4 bytes each, not a copy of each key).
    let mut raw_watches = std::mem::take(&mut raw.watches);
    raw_watches.reverse();
    let mut watches: Vec<WatchSpec> = Vec::with_capacity(raw_watches.len());
    let mut selectors: Vec<Selector> = Vec::new();
    let mut seen = KeyIndex::default();
    seen.reserve(raw_watches.len(), |i| &watches[i].key);
    let mut seen_selectors: HashMap<String, usize> = HashMap::new();
    // The place of the previous watch: watches of one source share its text.
    let mut last_place: Arc<str> = Arc::from("");
    let mut next = 0;
    while let Some(w) = raw_watches.pop() {
        give_back(&mut raw_watches);
        let i = next;
        next += 1;
        let base = format!("watch[{i}]");
        let mut ok = true;
        let has_asset = !w.asset_id.is_empty();
        let has_index = !w.index_id.is_empty();
        let mut named = vec![("workspace", &w.workspace), ("project_id", &w.project_id)];
        if has_asset {
            named.push(("asset_id", &w.asset_id));
        }
        if has_index {
            named.push(("index_id", &w.index_id));
        }
        for (field, value) in named {
            if let Err(e) = validate_id(value) {
                let key = format!("{base}.{field}");
                // The id is not secret and the user needs to see which one is at fault.
                p.push(origins.problem(&key, format!("{value:?} {e}")));
                ok = false;
            }
        }
        if has_index && !has_asset {
            p.push(origins.problem(
                &format!("{base}.index_id"),
                "needs asset_id: a watch names an index of an asset (workspace, project_id, \
                 asset_id, index_id), one asset's latest index (no index_id) or every asset of \
                 a project (no asset_id, no index_id)",
            ));
            ok = false;
        }
        if let Some(sid) = &w.scene_summary_id {
            if !has_index {
                p.push(origins.problem(
                    &format!("{base}.scene_summary_id"),
                    "names the summary of one index; give index_id too, or leave it out",
                ));
                ok = false;
            } else if let Err(e) = validate_id(sid) {
                p.push(
                    origins.problem(&format!("{base}.scene_summary_id"), format!("{sid:?} {e}")),
                );
                ok = false;
            }
        }
        let generation = match &w.generation {
            Some(g) => generation(origins, &mut p, &format!("{base}.generation"), g),
            None => gen_default,
        };
        if !has_index && generation == Some(GenerationChoice::Index) {
            let what = if w.generation.is_some() {
                "generation = \"index\""
            } else {
                "api.generation = \"index\""
            };
            p.push(origins.problem(
                &format!("{base}.generation"),
                format!(
                    "{what} needs index_id: the index-level API addresses one index; watch the \
                     asset's latest index (or a whole project) with generation = \"auto\" or \
                     \"asset\""
                ),
            ));
            ok = false;
        }
        let wait = match &w.max_wait {
            Some(m) => duration(origins, &mut p, &format!("{base}.max_wait"), m),
            None => max_wait,
        };
        let place = origins.of(&format!("{base}.workspace")).to_string();
        if *last_place != *place {
            last_place = place.into();
        }
        let declared_at = Declared::table(i, Arc::clone(&last_place));
        let (Some(generation), Some(max_wait), true) = (generation, wait, ok) else {
            continue;
        };
        if !has_asset || !has_index {
            let kind = if has_asset {
                SelectorKind::Asset {
                    workspace: w.workspace.to_string(),
                    project_id: w.project_id.to_string(),
                    asset_id: w.asset_id.to_string(),
                }
            } else {
                SelectorKind::Project {
                    workspace: w.workspace.to_string(),
                    project_id: w.project_id.to_string(),
                }
            };
            let selector = Selector {
                kind,
                generation,
                max_wait,
                declared_at,
            };
            let origin = selector.origin();
            if let Some(&first) = seen_selectors.get(&origin) {
                p.push(Problem {
                    key: base.clone(),
                    origin: origins.of(&format!("{base}.workspace")),
                    message: format!(
                        "watches {} again; it is already declared as {}",
                        selector.describe(),
                        selectors[first].declared_at
                    ),
                });
                continue;
            }
            seen_selectors.insert(origin, selectors.len());
            selectors.push(selector);
            continue;
        }
        // Every part was checked above; `new` cannot fail then, but stays the one constructor.
        let Ok(key) = WatchKey::new(&w.workspace, &w.project_id, &w.asset_id, &w.index_id) else {
            continue;
        };
        if let Some(first) = seen.get(&key, |j| &watches[j].key) {
            let first: &WatchSpec = &watches[first];
            p.push(Problem {
                key: base.clone(),
                origin: origins.of(&format!("{base}.workspace")),
                message: format!(
                    "watches {key} again; it is already declared as {}",
                    first.declared_at
                ),
            });
            continue;
        }
        seen.insert(&key, watches.len(), |j| &watches[j].key);
        watches.push(WatchSpec {
            key,
            scene_summary_id: w.scene_summary_id.as_deref().map(Arc::from),
            generation,
            max_wait,
            declared_at,
            origin: None,
        });
    }

    // [[sink]] and [[event_sink]]
    let (sinks, event_sinks) = crate::sink::config::validate(
        origins,
        &mut p,
        &mut warnings,
        &state_dir,
        &raw.sinks,
        &raw.event_sinks,
    );
    let shutdown_timeout = duration(origins, &mut p, "shutdown_timeout", &raw.shutdown_timeout);
    let sink_healthcheck_interval = duration(
        origins,
        &mut p,
        "sink_healthcheck_interval",
        &raw.sink_healthcheck_interval,
    );
    let listen = match raw.server.listen.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(origins.problem(
                "server.listen",
                format!(
                    "{:?} is not an address; write e.g. \"127.0.0.1:9464\"",
                    raw.server.listen
                ),
            ));
            None
        }
    };
    let retention = check_retention(origins, &mut p, &raw.state.retention);
    let ledger = check_state(origins, &mut p, &raw.state);
    let watch_dir = (!raw.watch_dir.trim().is_empty()).then(|| PathBuf::from(raw.watch_dir.trim()));
    if watches.is_empty() && selectors.is_empty() && p.is_empty() {
        warnings.push("no [[watch]] entries: there is nothing to poll".into());
    }

    match (
        p.is_empty(),
        endpoint,
        secret,
        gen_default,
        timeout,
        shutdown_timeout,
        listen,
    ) {
        (
            true,
            Some(endpoint),
            Some(secret),
            Some(generation),
            Some(timeout),
            Some(shutdown_timeout),
            Some(listen),
        ) => Ok(Config {
            state_dir,
            api: ApiConfig {
                endpoint,
                credentials: Credentials::new(a.access_key.trim(), secret),
                generation,
                timeout,
                max_body_bytes: a.max_body_bytes,
                requests_per_second: a.requests_per_second,
                burst: a.burst,
                pending_codes: a.pending_codes.clone(),
            },
            poll: PollConfig {
                initial_interval: initial.unwrap_or_default(),
                max_interval: max_interval.unwrap_or_default(),
                max_wait: max_wait.unwrap_or_default(),
                recheck_interval: recheck.unwrap_or_default(),
                not_requested_grace: grace.unwrap_or_default(),
                concurrency: r.concurrency as usize,
                discovery_interval: discovery.unwrap_or_default(),
                policy: poll_policy,
            },
            watches,
            selectors,
            sinks,
            event_sinks,
            watch_dir,
            shutdown_timeout,
            // A problem would have been recorded above; the default is never used.
            sink_healthcheck_interval: sink_healthcheck_interval.unwrap_or_default(),
            listen,
            retention: retention.unwrap_or(MIN_RETENTION),
            // A problem would have been recorded above; the default is never used.
            ledger: ledger.unwrap_or(crate::state::Backend::Sqlite),
            warnings,
        }),
        _ => Err(ConfigErrors(p)),
    }
}

/// The shortest `state.retention`: below it, an operator looking into the ledger (`status`, a
/// backup) after a night would find yesterday's deliveries gone.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

fn check_retention(origins: &Origins, p: &mut Vec<Problem>, value: &str) -> Option<Duration> {
    let key = "state.retention";
    let d = duration(origins, p, key, value)?;
    if d < MIN_RETENTION {
        p.push(origins.problem(
            key,
            format!(
                "{} is shorter than the minimum of 1h; write e.g. \"30days\" (the default) or \"7days\"",
                humantime::format_duration(d)
            ),
        ));
        return None;
    }
    Some(d)
}

/// `[state]`'s ledger keys: `backend` (`sqlite`, the default, or `postgres`), and for
/// `postgres` its `url` (required), password (`password_file` / `password_env`, or in the URL),
/// `schema` and `ca_file`; PostgreSQL keys set with `backend = "sqlite"` are refused, so a typo in
/// `backend` does not silently keep the ledger in SQLite. Also used by the operator verbs, which
/// read no more of the configuration than they need.
pub(crate) fn check_state(
    origins: &Origins,
    p: &mut Vec<Problem>,
    s: &super::raw::RawState,
) -> Option<crate::state::Backend> {
    match s.backend.trim() {
        "sqlite" => {
            if s.replicated {
                p.push(origins.problem(
                    "state.replicated",
                    "replicas share a PostgreSQL ledger; set state.backend = \"postgres\" (and \
                     state.url), or remove state.replicated",
                ));
                return None;
            }
            let set: Vec<&str> = [
                ("url", s.url.as_str()),
                ("password_file", s.password_file.as_str()),
                ("password_env", s.password_env.as_str()),
                ("ca_file", s.ca_file.as_str()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, _)| k)
            .collect();
            if let Some(first) = set.first() {
                p.push(origins.problem(
                    &format!("state.{first}"),
                    format!(
                        "is for backend = \"postgres\", but state.backend is \"sqlite\"; set \
                         state.backend = \"postgres\" or remove {}",
                        set.join(", ")
                    ),
                ));
                return None;
            }
            Some(crate::state::Backend::Sqlite)
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" => {
            p.push(origins.problem(
                "state.backend",
                "the PostgreSQL ledger is not in this build: scenewatch was compiled without the \
                 cargo feature \"postgres\"; rebuild with --features postgres (or --features \
                 full, every sink), or use backend = \"sqlite\"",
            ));
            None
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let checked = crate::pg::check_url(
                origins,
                p,
                "state",
                &s.url,
                &s.password_file,
                &s.password_env,
            );
            let schema = crate::pg::check_schema(origins, p, "state.schema", &s.schema);
            let lease = check_lease(origins, p, &s.lease);
            let (url, password) = checked?;
            Some(crate::state::Backend::Postgres(
                crate::state::PostgresTarget {
                    url,
                    password,
                    schema: schema?,
                    ca_file: (!s.ca_file.trim().is_empty())
                        .then(|| PathBuf::from(s.ca_file.trim())),
                    replicated: if s.replicated { Some(lease?) } else { None },
                },
            ))
        }
        other => {
            p.push(origins.problem(
                "state.backend",
                format!("{other:?} is not a ledger backend; use \"sqlite\" (the default) or \"postgres\""),
            ));
            None
        }
    }
}

/// The shortest and longest `state.lease`: below 3 s a garbage-collection pause or a slow
/// database round trip loses leases of a healthy replica; above 5 min a dead replica's watches
/// wait too long for their takeover.
#[cfg(feature = "postgres")]
pub const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(300));

#[cfg(feature = "postgres")]
fn check_lease(origins: &Origins, p: &mut Vec<Problem>, value: &str) -> Option<Duration> {
    let key = "state.lease";
    let d = duration(origins, p, key, value)?;
    if d < LEASE_RANGE.0 || d > LEASE_RANGE.1 {
        p.push(origins.problem(
            key,
            format!(
                "{} is outside 3s..5m; write e.g. \"15s\" (the default): a dead replica's shards \
                 are taken over within two leases",
                humantime::format_duration(d)
            ),
        ));
        return None;
    }
    Some(d)
}

fn check_endpoint(
    origins: &Origins,
    p: &mut Vec<Problem>,
    endpoint: &str,
    allow_insecure_http: bool,
) -> Option<String> {
    let url = match Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => {
            p.push(origins.problem("api.endpoint", format!("{endpoint:?} is not a URL ({e})")));
            return None;
        }
    };
    let loopback = is_loopback(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback || allow_insecure_http => {}
        "http" => {
            p.push(origins.problem(
                "api.endpoint",
                "plain http:// is only allowed to loopback addresses; use https:// or set api.allow_insecure_http = true",
            ));
            return None;
        }
        other => {
            p.push(origins.problem(
                "api.endpoint",
                format!("scheme {other:?} is not supported; use https://"),
            ));
            return None;
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        p.push(origins.problem(
            "api.endpoint",
            "must be a base URL without user, query or fragment",
        ));
        return None;
    }
    Some(url.as_str().trim_end_matches('/').to_string())
}

/// The secret key from exactly one of: `api.secret_key` (environment or file), `api.secret_key_file`,
/// or the systemd credential `ncp-secret-key`. Never echoes the key.
fn secret_key(
    origins: &Origins,
    p: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
    raw: &RawConfig,
    credentials_directory: Option<&Path>,
) -> Option<String> {
    let inline = raw.api.secret_key.trim();
    let file = raw.api.secret_key_file.trim();
    if !inline.is_empty() && !file.is_empty() {
        p.push(origins.problem(
            "api.secret_key",
            format!(
                "both api.secret_key and api.secret_key_file ({}) are set; keep one",
                origins.of("api.secret_key_file")
            ),
        ));
        return None;
    }
    if !inline.is_empty() {
        if let super::Origin::File(f) = origins.of("api.secret_key") {
            warnings.push(format!(
                "api.secret_key is written in {}; prefer api.secret_key_file or {}",
                f.display(),
                super::env_var_name("api.secret_key")
            ));
        }
        return Some(inline.to_string());
    }
    let path = if !file.is_empty() {
        Some(("api.secret_key_file", PathBuf::from(file)))
    } else {
        credentials_directory
            .map(|d| d.join(CREDENTIAL_NAME))
            .filter(|p| p.exists())
            .map(|p| ("api.secret_key_file", p))
    };
    let Some((key, path)) = path else {
        p.push(origins.problem(
            "api.secret_key",
            format!(
                "missing; set api.secret_key_file, {} or the systemd credential {CREDENTIAL_NAME}",
                super::env_var_name("api.secret_key")
            ),
        ));
        return None;
    };
    match super::checks::read_secret_file(&path) {
        Ok(s) if s.trim().is_empty() => {
            p.push(origins.problem(key, format!("{} is empty", path.display())));
            None
        }
        Ok(s) => Some(s.trim().to_string()),
        Err(e) => {
            p.push(origins.problem(key, format!("cannot read {}: {e}", path.display())));
            None
        }
    }
}
