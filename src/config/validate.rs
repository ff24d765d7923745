//! Stage two of configuration: a pure check that turns the raw shape into strong types and
//! reports every problem at once. The only IO is reading the secret key file.

use std::collections::HashMap;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use secrecy::SecretString;

use super::{
    ConfigErrors, Origins, Problem, RawConfig, RawEventSink, RawJsonlSink, RawNatsEventSink,
    RawPostgresSink, RawS3Sink, RawSink, RawStdoutSink, RawWebhookSink,
};
use crate::domain::{WatchKey, validate_id};
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
}

/// One watch, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// Its identity.
    pub key: WatchKey,
    /// Known scene summary id, if any.
    pub scene_summary_id: Option<String>,
    /// Which endpoints it uses.
    pub generation: GenerationChoice,
    /// Its deadline.
    pub max_wait: Duration,
    /// Where it was declared, for messages (e.g. `watch[3] in /etc/scenewatch/scenewatch.toml`).
    pub declared_at: String,
    /// `None` for a watch of a configured index; for a watch found through a [`Selector`], that
    /// selector's [`Selector::origin`]: such a watch follows its asset's latest index.
    pub origin: Option<String>,
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
    pub declared_at: String,
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
            declared_at: format!("found through {}", self.declared_at),
            origin: Some(self.origin()),
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
            scene_summary_id: self.scene_summary_id.clone(),
        }
    }
}

/// A result sink, validated.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// The file sink.
    File(FileSinkConfig),
    /// JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// JSON lines appended to a file.
    Jsonl(JsonlSinkConfig),
    /// Signed POSTs.
    Webhook(WebhookSinkConfig),
    /// PostgreSQL rows.
    Postgres(PostgresSinkConfig),
    /// S3-compatible objects.
    S3(S3SinkConfig),
}

impl SinkConfig {
    /// The sink's name in logs, metrics and the ledger.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File(f) => &f.name,
            SinkConfig::Stdout(s) => &s.name,
            SinkConfig::Jsonl(j) => &j.name,
            SinkConfig::Webhook(w) => &w.name,
            SinkConfig::Postgres(p) => &p.name,
            SinkConfig::S3(o) => &o.name,
        }
    }
}

/// An event sink, validated.
#[derive(Debug, Clone)]
pub enum EventSinkConfig {
    /// CloudEvents as JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// CloudEvents as JSON lines appended to a file.
    Jsonl(JsonlSinkConfig),
    /// Signed POSTs of CloudEvents.
    Webhook(WebhookSinkConfig),
    /// JetStream publishes.
    Nats(NatsEventSinkConfig),
}

impl EventSinkConfig {
    /// The sink's name in logs, metrics and the ledger.
    pub fn name(&self) -> &str {
        match self {
            EventSinkConfig::Stdout(s) => &s.name,
            EventSinkConfig::Jsonl(j) => &j.name,
            EventSinkConfig::Webhook(w) => &w.name,
            EventSinkConfig::Nats(n) => &n.name,
        }
    }
}

/// `[[sink]] type = "file"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkConfig {
    /// Name in logs.
    pub name: String,
    /// Output directory.
    pub dir: PathBuf,
    /// Keep every version too.
    pub keep_versions: bool,
}

/// `type = "stdout"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StdoutSinkConfig {
    /// Name in logs.
    pub name: String,
}

/// `type = "jsonl"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlSinkConfig {
    /// Name in logs.
    pub name: String,
    /// The file appended to.
    pub path: PathBuf,
    /// Rotation size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep_files: u32,
}

/// `type = "webhook"`, validated.
#[derive(Debug, Clone)]
pub struct WebhookSinkConfig {
    /// Name in logs.
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// The Standard Webhooks signing secret (raw bytes of the configured string; a `whsec_`
    /// prefix is base64-decoded as the spec says).
    pub secret: SecretString,
    /// Timeout of one POST.
    pub timeout: Duration,
}

/// `type = "postgres"`, validated.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    /// Name in logs.
    pub name: String,
    /// The connection URL without its password (safe to log).
    pub url: String,
    /// The password, from the URL, `password_file` or `password_env`.
    pub password: Option<SecretString>,
    /// The schema to create and write.
    pub schema: String,
    /// Pool size.
    pub pool_size: usize,
    /// Connect and statement timeout.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
}

/// `type = "s3"`, validated.
#[derive(Debug, Clone)]
pub struct S3SinkConfig {
    /// Name in logs.
    pub name: String,
    /// Endpoint URL, `None` for AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Key prefix, no leading or trailing slash (may be empty).
    pub prefix: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// Request timeout.
    pub timeout: Duration,
    /// Whether plain HTTP is allowed (loopback or `allow_insecure_http`).
    pub allow_http: bool,
}

/// `[[event_sink]] type = "nats"`, validated.
#[derive(Debug, Clone)]
pub struct NatsEventSinkConfig {
    /// Name in logs.
    pub name: String,
    /// Server URLs.
    pub urls: Vec<String>,
    /// Subject template with `{type}`.
    pub subject: String,
    /// Stream name.
    pub stream: String,
    /// Create the stream when missing.
    pub create_stream: bool,
    /// `.creds` file.
    pub credentials_file: Option<PathBuf>,
    /// Token.
    pub token: Option<SecretString>,
    /// Connect and ack timeout.
    pub timeout: Duration,
}

/// Parses a humantime duration ("10s", "5m", "1h 30m").
fn duration(
    origins: &Origins,
    problems: &mut Vec<Problem>,
    key: &str,
    value: &str,
) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => {
            problems.push(origins.problem(key, "must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(origins.problem(
                key,
                format!("{value:?} is not a duration ({e}); write e.g. \"10s\", \"5m\", \"24h\""),
            ));
            None
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
    raw: &RawConfig,
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
    let mut watches = Vec::new();
    let mut selectors: Vec<Selector> = Vec::new();
    // Borrowed from `raw`, pointing into `watches`: 100,000 watches need no second copy of
    // their keys.
    let mut seen: HashMap<(&str, &str, &str, &str), usize> = HashMap::new();
    let mut seen_selectors: HashMap<String, usize> = HashMap::new();
    for (i, w) in raw.watches.iter().enumerate() {
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
        let declared_at = format!("{base} ({})", origins.of(&format!("{base}.workspace")));
        let (Some(generation), Some(max_wait), true) = (generation, wait, ok) else {
            continue;
        };
        if !has_asset || !has_index {
            let kind = if has_asset {
                SelectorKind::Asset {
                    workspace: w.workspace.clone(),
                    project_id: w.project_id.clone(),
                    asset_id: w.asset_id.clone(),
                }
            } else {
                SelectorKind::Project {
                    workspace: w.workspace.clone(),
                    project_id: w.project_id.clone(),
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
        let Ok(key) = WatchKey::new(
            w.workspace.clone(),
            w.project_id.clone(),
            w.asset_id.clone(),
            w.index_id.clone(),
        ) else {
            continue;
        };
        let id = (
            w.workspace.as_str(),
            w.project_id.as_str(),
            w.asset_id.as_str(),
            w.index_id.as_str(),
        );
        if let Some(first) = seen.get(&id) {
            let first: &WatchSpec = &watches[*first];
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
        seen.insert(id, watches.len());
        watches.push(WatchSpec {
            key,
            scene_summary_id: w.scene_summary_id.clone(),
            generation,
            max_wait,
            declared_at,
            origin: None,
        });
    }

    // [[sink]] and [[event_sink]]
    let mut names: HashMap<String, String> = HashMap::new();
    let mut sinks = Vec::new();
    for (i, s) in raw.sinks.iter().enumerate() {
        let base = format!("sink[{i}]");
        let sink = match s {
            RawSink::File(f) => {
                let dir = if f.dir.trim().is_empty() {
                    state_dir.join("results")
                } else {
                    PathBuf::from(&f.dir)
                };
                Some(SinkConfig::File(FileSinkConfig {
                    name: f.name.clone().unwrap_or_else(|| "file".into()),
                    dir,
                    keep_versions: f.keep_versions,
                }))
            }
            RawSink::Stdout(s) => Some(SinkConfig::Stdout(stdout_sink(s))),
            RawSink::Jsonl(j) => jsonl_sink(origins, &mut p, &base, j).map(SinkConfig::Jsonl),
            RawSink::Webhook(w) => {
                webhook_sink(origins, &mut p, &mut warnings, &base, w).map(SinkConfig::Webhook)
            }
            RawSink::Postgres(c) => {
                postgres_sink(origins, &mut p, &base, c).map(SinkConfig::Postgres)
            }
            RawSink::S3(c) => s3_sink(origins, &mut p, &base, c).map(SinkConfig::S3),
        };
        if let Some(sink) = sink {
            unique_name(origins, &mut p, &mut names, &base, sink.name());
            sinks.push(sink);
        }
    }
    if sinks.is_empty() {
        sinks.push(SinkConfig::File(FileSinkConfig {
            name: "file".into(),
            dir: state_dir.join("results"),
            keep_versions: false,
        }));
    }
    let mut event_sinks = Vec::new();
    for (i, s) in raw.event_sinks.iter().enumerate() {
        let base = format!("event_sink[{i}]");
        let sink = match s {
            // Event sinks default to "{type}-events", so a result sink and an event sink of the
            // same type need no names to be told apart.
            RawEventSink::Stdout(s) => Some(EventSinkConfig::Stdout(StdoutSinkConfig {
                name: s.name.clone().unwrap_or_else(|| "stdout-events".into()),
            })),
            RawEventSink::Jsonl(j) => jsonl_sink(origins, &mut p, &base, j).map(|mut c| {
                if j.name.is_none() {
                    c.name = "jsonl-events".into();
                }
                EventSinkConfig::Jsonl(c)
            }),
            RawEventSink::Webhook(w) => {
                webhook_sink(origins, &mut p, &mut warnings, &base, w).map(|mut c| {
                    if w.name.is_none() {
                        c.name = "webhook-events".into();
                    }
                    EventSinkConfig::Webhook(c)
                })
            }
            RawEventSink::Nats(n) => {
                nats_sink(origins, &mut p, &base, n).map(EventSinkConfig::Nats)
            }
        };
        if let Some(sink) = sink {
            unique_name(origins, &mut p, &mut names, &base, sink.name());
            event_sinks.push(sink);
        }
    }
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
            warnings,
        }),
        _ => Err(ConfigErrors(p)),
    }
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
    match std::fs::read_to_string(&path) {
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

fn unique_name(
    origins: &Origins,
    p: &mut Vec<Problem>,
    names: &mut HashMap<String, String>,
    base: &str,
    name: &str,
) {
    if let Some(first) = names.insert(name.to_string(), base.to_string()) {
        p.push(origins.problem(
            &format!("{base}.name"),
            format!("{name:?} is already the name of {first}; give each sink its own name"),
        ));
    }
}

fn stdout_sink(s: &RawStdoutSink) -> StdoutSinkConfig {
    StdoutSinkConfig {
        name: s.name.clone().unwrap_or_else(|| "stdout".into()),
    }
}

fn jsonl_sink(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    j: &RawJsonlSink,
) -> Option<JsonlSinkConfig> {
    let mut ok = true;
    if j.path.trim().is_empty() {
        p.push(origins.problem(&format!("{base}.path"), "missing; the file to append to"));
        ok = false;
    }
    if j.max_bytes < 4096 {
        p.push(origins.problem(&format!("{base}.max_bytes"), "must be at least 4096"));
        ok = false;
    }
    ok.then(|| JsonlSinkConfig {
        name: j.name.clone().unwrap_or_else(|| "jsonl".into()),
        path: PathBuf::from(j.path.trim()),
        max_bytes: j.max_bytes,
        keep_files: j.keep_files,
    })
}

fn webhook_sink(
    origins: &Origins,
    p: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
    base: &str,
    w: &RawWebhookSink,
) -> Option<WebhookSinkConfig> {
    let before = p.len();
    let url_key = format!("{base}.url");
    match Url::parse(w.url.trim()) {
        Ok(u) => {
            let loopback = is_loopback(&u);
            match u.scheme() {
                "https" => {}
                "http" if loopback || w.allow_insecure_http => {}
                "http" => p.push(origins.problem(
                    &url_key,
                    "plain http:// is only allowed to loopback addresses; use https:// or set allow_insecure_http = true",
                )),
                other => p.push(origins.problem(&url_key, format!("scheme {other:?} is not supported"))),
            }
            if !u.username().is_empty() || u.password().is_some() {
                // The URL is logged; credentials in it would leak.
                p.push(origins.problem(
                    &url_key,
                    "must not carry a user or password; use the signing secret",
                ));
            }
        }
        Err(e) => p.push(origins.problem(
            &url_key,
            if w.url.trim().is_empty() {
                "missing".to_string()
            } else {
                format!("not a URL ({e})")
            },
        )),
    }
    let timeout = duration(origins, p, &format!("{base}.timeout"), &w.timeout);
    let set = [
        !w.secret.is_empty(),
        !w.secret_file.is_empty(),
        !w.secret_env.is_empty(),
    ];
    let secret = match set.iter().filter(|b| **b).count() {
        0 => {
            p.push(origins.problem(
                &format!("{base}.secret"),
                "missing; set secret_file, secret_env (the name of an environment variable) or secret",
            ));
            None
        }
        1 if !w.secret.is_empty() => {
            if let super::Origin::File(f) = origins.of(&format!("{base}.secret")) {
                warnings.push(format!(
                    "{base}.secret is written in {}; prefer secret_file or secret_env",
                    f.display()
                ));
            }
            Some(w.secret.clone())
        }
        1 if !w.secret_file.is_empty() => match std::fs::read_to_string(w.secret_file.trim()) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Ok(_) => {
                p.push(origins.problem(
                    &format!("{base}.secret_file"),
                    format!("{} is empty", w.secret_file),
                ));
                None
            }
            Err(e) => {
                p.push(origins.problem(
                    &format!("{base}.secret_file"),
                    format!("cannot read {}: {e}", w.secret_file),
                ));
                None
            }
        },
        1 => match std::env::var(w.secret_env.trim()) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => {
                p.push(origins.problem(
                    &format!("{base}.secret_env"),
                    format!(
                        "environment variable {} is not set or empty",
                        w.secret_env.trim()
                    ),
                ));
                None
            }
        },
        _ => {
            p.push(origins.problem(
                &format!("{base}.secret"),
                "set only one of secret, secret_file and secret_env",
            ));
            None
        }
    };
    if p.len() != before {
        return None;
    }
    Some(WebhookSinkConfig {
        name: w.name.clone().unwrap_or_else(|| "webhook".into()),
        url: w.url.trim().to_string(),
        secret: SecretString::from(secret?),
        timeout: timeout?,
    })
}

fn is_loopback(url: &Url) -> bool {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// A secret from exactly one of a file or an environment variable (the field names are given
/// for messages); `Ok(None)` when neither is set. Never echoes the secret.
fn secret_from(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    (file_key, file): (&str, &str),
    (env_key, env): (&str, &str),
) -> Result<Option<String>, ()> {
    let (file, env) = (file.trim(), env.trim());
    match (file.is_empty(), env.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            p.push(origins.problem(
                &format!("{base}.{file_key}"),
                format!("set only one of {file_key} and {env_key}"),
            ));
            Err(())
        }
        (false, true) => match std::fs::read_to_string(file) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Ok(_) => {
                p.push(origins.problem(&format!("{base}.{file_key}"), format!("{file} is empty")));
                Err(())
            }
            Err(e) => {
                p.push(origins.problem(
                    &format!("{base}.{file_key}"),
                    format!("cannot read {file}: {e}"),
                ));
                Err(())
            }
        },
        (true, false) => match std::env::var(env) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            _ => {
                p.push(origins.problem(
                    &format!("{base}.{env_key}"),
                    format!("environment variable {env} is not set or empty"),
                ));
                Err(())
            }
        },
    }
}

fn postgres_sink(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    c: &RawPostgresSink,
) -> Option<PostgresSinkConfig> {
    let before = p.len();
    let url_key = format!("{base}.url");
    let mut password_in_url = None;
    let mut clean_url = String::new();
    match Url::parse(c.url.trim()) {
        Ok(mut u) if matches!(u.scheme(), "postgres" | "postgresql") => {
            if let Some(pw) = u.password() {
                password_in_url = Some(pw.to_string());
                // Keep the password out of everything that may be logged.
                let _ = u.set_password(None);
            }
            if u.host_str().is_none_or(str::is_empty) {
                p.push(origins.problem(&url_key, "has no host"));
            }
            for (k, v) in u.query_pairs() {
                if k == "sslmode"
                    && !matches!(
                        v.as_ref(),
                        "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
                    )
                {
                    p.push(origins.problem(
                        &url_key,
                        format!("sslmode={v:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                    ));
                }
            }
            clean_url = u.to_string();
        }
        Ok(u) => p.push(origins.problem(
            &url_key,
            format!("scheme {:?} is not supported; use postgres://", u.scheme()),
        )),
        Err(e) => p.push(origins.problem(
            &url_key,
            if c.url.trim().is_empty() {
                "missing".to_string()
            } else {
                format!("not a URL ({e})")
            },
        )),
    }
    let secret = secret_from(
        origins,
        p,
        base,
        ("password_file", &c.password_file),
        ("password_env", &c.password_env),
    );
    let password = match (secret, password_in_url) {
        (Ok(Some(_)), Some(_)) => {
            p.push(origins.problem(
                &url_key,
                "has a password and password_file or password_env is set too; keep one",
            ));
            None
        }
        (Ok(s), u) => s.or(u),
        (Err(()), _) => None,
    };
    let schema = c.schema.trim();
    if schema.is_empty()
        || schema.len() > 63
        || !schema
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        || schema.starts_with(|ch: char| ch.is_ascii_digit())
    {
        p.push(origins.problem(
            &format!("{base}.schema"),
            format!("{schema:?} is not a plain identifier: lowercase letters, digits and '_', at most 63, not starting with a digit"),
        ));
    }
    if c.pool_size == 0 {
        p.push(origins.problem(&format!("{base}.pool_size"), "must be at least 1"));
    }
    let timeout = duration(origins, p, &format!("{base}.timeout"), &c.timeout);
    if p.len() != before {
        return None;
    }
    Some(PostgresSinkConfig {
        name: c.name.clone().unwrap_or_else(|| "postgres".into()),
        url: clean_url,
        password: password.map(SecretString::from),
        schema: schema.to_string(),
        pool_size: c.pool_size as usize,
        timeout: timeout?,
        ca_file: (!c.ca_file.trim().is_empty()).then(|| PathBuf::from(c.ca_file.trim())),
    })
}

fn s3_sink(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    c: &RawS3Sink,
) -> Option<S3SinkConfig> {
    let before = p.len();
    let mut allow_http = false;
    let endpoint = c.endpoint.trim();
    if !endpoint.is_empty() {
        match Url::parse(endpoint) {
            Ok(u) => match u.scheme() {
                "https" => {}
                "http" if is_loopback(&u) || c.allow_insecure_http => allow_http = true,
                "http" => p.push(origins.problem(
                    &format!("{base}.endpoint"),
                    "plain http:// is only allowed to loopback addresses; use https:// or set allow_insecure_http = true",
                )),
                other => p.push(origins.problem(&format!("{base}.endpoint"), format!("scheme {other:?} is not supported"))),
            },
            Err(e) => p.push(origins.problem(&format!("{base}.endpoint"), format!("not a URL ({e})"))),
        }
    }
    let bucket = c.bucket.trim();
    if bucket.len() < 3
        || bucket.len() > 63
        || !bucket
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.')
    {
        p.push(origins.problem(
            &format!("{base}.bucket"),
            if bucket.is_empty() {
                "missing".to_string()
            } else {
                format!("{bucket:?} is not a valid bucket name")
            },
        ));
    }
    let prefix = c.prefix.trim().trim_matches('/');
    if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
        p.push(origins.problem(
            &format!("{base}.prefix"),
            "must not contain '.' or '..' segments",
        ));
    }
    if c.region.trim().is_empty() {
        p.push(origins.problem(&format!("{base}.region"), "must not be empty"));
    }
    let access_key_id = if c.access_key_id.trim().is_empty() {
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default()
    } else {
        c.access_key_id.trim().to_string()
    };
    if access_key_id.is_empty() {
        p.push(origins.problem(
            &format!("{base}.access_key_id"),
            "missing; set it or AWS_ACCESS_KEY_ID",
        ));
    }
    let secret = match secret_from(
        origins,
        p,
        base,
        ("secret_access_key_file", &c.secret_access_key_file),
        (
            "secret_access_key_env",
            if c.secret_access_key_file.trim().is_empty() {
                &c.secret_access_key_env
            } else {
                ""
            },
        ),
    ) {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            p.push(origins.problem(
                &format!("{base}.secret_access_key_file"),
                "missing; set secret_access_key_file or secret_access_key_env",
            ));
            None
        }
        Err(()) => None,
    };
    let timeout = duration(origins, p, &format!("{base}.timeout"), &c.timeout);
    if p.len() != before {
        return None;
    }
    Some(S3SinkConfig {
        name: c.name.clone().unwrap_or_else(|| "s3".into()),
        endpoint: (!endpoint.is_empty()).then(|| endpoint.trim_end_matches('/').to_string()),
        region: c.region.trim().to_string(),
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        path_style: c.path_style,
        access_key_id,
        secret_access_key: SecretString::from(secret?),
        timeout: timeout?,
        allow_http,
    })
}

fn nats_sink(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    c: &RawNatsEventSink,
) -> Option<NatsEventSinkConfig> {
    let before = p.len();
    let urls: Vec<String> = c
        .url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        p.push(origins.problem(&format!("{base}.url"), "missing"));
    }
    for u in &urls {
        match Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "nats" | "tls") => {
                // A user part can be a token to NATS, and URLs are logged: no credentials in it.
                if parsed.password().is_some() || !parsed.username().is_empty() {
                    p.push(origins.problem(
                        &format!("{base}.url"),
                        "must not carry a user, token or password; use token_env or credentials_file",
                    ));
                }
            }
            _ => p.push(origins.problem(
                &format!("{base}.url"),
                format!("{u:?} is not a nats:// or tls:// URL"),
            )),
        }
    }
    let subject = c.subject.trim();
    let tokens_ok = subject.replace("{type}", "x").split('.').all(|t| {
        !t.is_empty()
            && t.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    });
    if !tokens_ok {
        p.push(origins.problem(
            &format!("{base}.subject"),
            format!("{subject:?} is not a valid subject (dot-separated tokens of letters, digits, '-', '_', with {{type}} allowed)"),
        ));
    }
    let stream = c.stream.trim();
    if stream.is_empty()
        || !stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        p.push(origins.problem(
            &format!("{base}.stream"),
            format!("{stream:?} is not a valid stream name"),
        ));
    }
    let token = secret_from(
        origins,
        p,
        base,
        ("credentials_file", ""),
        ("token_env", &c.token_env),
    );
    let credentials_file = c.credentials_file.trim();
    if !credentials_file.is_empty() && !std::path::Path::new(credentials_file).is_file() {
        p.push(origins.problem(
            &format!("{base}.credentials_file"),
            format!("{credentials_file} is not a readable file"),
        ));
    }
    let timeout = duration(origins, p, &format!("{base}.timeout"), &c.timeout);
    if p.len() != before {
        return None;
    }
    Some(NatsEventSinkConfig {
        name: c.name.clone().unwrap_or_else(|| "nats-events".into()),
        urls,
        subject: subject.to_string(),
        stream: stream.to_string(),
        create_stream: c.create_stream,
        credentials_file: (!credentials_file.is_empty()).then(|| PathBuf::from(credentials_file)),
        token: token.ok().flatten().map(SecretString::from),
        timeout: timeout?,
    })
}
