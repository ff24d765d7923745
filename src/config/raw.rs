//! The raw configuration: a struct that mirrors the TOML file exactly, with the documented defaults.
//!
//! Every field here has the same name, and the same default, as in `config/default.toml`; a test
//! keeps the two equal. Values stay loosely typed (durations are strings) so that validation can
//! report every problem at once, naming the key and where it came from.

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Directory for the state database and default outputs.
    pub state_dir: String,
    /// How to reach Media Intelligence.
    pub api: RawApi,
    /// The polling policy.
    pub poll: RawPoll,
    /// The indexes to follow.
    #[serde(rename = "watch")]
    pub watches: Vec<RawWatch>,
    /// Where results go.
    #[serde(rename = "sink")]
    pub sinks: Vec<RawSink>,
    /// Where events go.
    #[serde(rename = "event_sink")]
    pub event_sinks: Vec<RawEventSink>,
    /// A directory of watch files (one `*.toml` per watch); empty for none.
    pub watch_dir: String,
    /// How long a graceful shutdown may take.
    pub shutdown_timeout: String,
    /// How often an idle sink's healthcheck runs.
    pub sink_healthcheck_interval: String,
    /// The HTTP server for health and metrics.
    pub server: RawServer,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/scenewatch".into(),
            api: RawApi::default(),
            poll: RawPoll::default(),
            watches: Vec::new(),
            sinks: Vec::new(),
            event_sinks: Vec::new(),
            watch_dir: String::new(),
            shutdown_timeout: "20s".into(),
            sink_healthcheck_interval: "30s".into(),
            server: RawServer::default(),
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Base URL of the API gateway.
    pub endpoint: String,
    /// Allow `http://` to hosts other than loopback.
    pub allow_insecure_http: bool,
    /// The NCP access key id.
    pub access_key: String,
    /// The secret key itself; better given by `secret_key_file` or the environment.
    pub secret_key: String,
    /// A file holding the secret key.
    pub secret_key_file: String,
    /// Default endpoint generation: "auto", "index" or "asset".
    pub generation: String,
    /// Timeout of one request, connection included.
    pub timeout: String,
    /// Largest accepted response body, in bytes.
    pub max_body_bytes: u64,
    /// Steady request rate per API host.
    pub requests_per_second: f64,
    /// Requests that may go out at once after a quiet period.
    pub burst: u32,
    /// Service error codes from the result endpoint known to mean "not completed yet" (others are
    /// taken as that too, with one warning per code).
    pub pending_codes: Vec<String>,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            endpoint: "https://mi.apigw.ntruss.com".into(),
            allow_insecure_http: false,
            access_key: String::new(),
            secret_key: String::new(),
            secret_key_file: String::new(),
            generation: "auto".into(),
            timeout: "10s".into(),
            max_body_bytes: 32 * 1024 * 1024,
            requests_per_second: 10.0,
            burst: 20,
            pending_codes: Vec::new(),
        }
    }
}

/// `[poll]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPoll {
    /// First interval between status polls.
    pub initial_interval: String,
    /// Longest interval between status polls.
    pub max_interval: String,
    /// Give up on a watch that has not completed after this long.
    pub max_wait: String,
    /// Recheck interval of delivered watches.
    pub recheck_interval: String,
    /// How long `BEFORE_SUMMARIZE` may last before the watch ends as `not_requested`.
    pub not_requested_grace: String,
    /// Polls in flight at once.
    pub concurrency: u32,
    /// How often a watched project's asset list is read again.
    pub discovery_interval: String,
}

impl Default for RawPoll {
    fn default() -> Self {
        Self {
            initial_interval: "10s".into(),
            max_interval: "5m".into(),
            max_wait: "24h".into(),
            recheck_interval: "1h".into(),
            not_requested_grace: "1h".into(),
            concurrency: 32,
            discovery_interval: "5m".into(),
        }
    }
}

/// One `[[watch]]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWatch {
    /// Workspace name.
    pub workspace: String,
    /// Project id.
    pub project_id: String,
    /// Asset id; empty: every asset of the project.
    pub asset_id: String,
    /// Index id; empty: the asset's latest index.
    pub index_id: String,
    /// Scene summary id, when known (lets the index-level status endpoint be used).
    pub scene_summary_id: Option<String>,
    /// Overrides `api.generation` for this watch.
    pub generation: Option<String>,
    /// Overrides `poll.max_wait` for this watch.
    pub max_wait: Option<String>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address of the health and metrics endpoints.
    pub listen: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// One `[[sink]]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawSink {
    /// One JSON document per index, written atomically.
    File(RawFileSink),
    /// One JSON line per version on standard output.
    Stdout(RawStdoutSink),
    /// One JSON line per version appended to a file, rotated by size.
    Jsonl(RawJsonlSink),
    /// A signed POST per version.
    Webhook(RawWebhookSink),
    /// Rows in PostgreSQL: one per version, one per scene.
    Postgres(RawPostgresSink),
    /// Objects in S3-compatible storage: one per version plus `latest.json`.
    S3(RawS3Sink),
}

impl RawSink {
    /// The `type` names the walker accepts, for error messages.
    pub const TYPES: &'static [&'static str] =
        &["file", "stdout", "jsonl", "webhook", "postgres", "s3"];
}

/// One `[[event_sink]]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawEventSink {
    /// One CloudEvent JSON line per event on standard output.
    Stdout(RawStdoutSink),
    /// One CloudEvent JSON line per event appended to a file, rotated by size.
    Jsonl(RawJsonlSink),
    /// A signed POST per event.
    Webhook(RawWebhookSink),
    /// A JetStream publish per event.
    Nats(RawNatsEventSink),
}

impl RawEventSink {
    /// The `type` names the walker accepts, for error messages.
    pub const TYPES: &'static [&'static str] = &["stdout", "jsonl", "webhook", "nats"];
}

/// `[[sink]] type = "file"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFileSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// Output directory; defaults to `{state_dir}/results`.
    pub dir: String,
    /// Also keep every version as `{index_id}/{lastAnalyzedAt}.json`.
    pub keep_versions: bool,
}

/// `type = "stdout"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStdoutSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
}

/// `type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJsonlSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// The file appended to; required.
    pub path: String,
    /// Rotate when the file would grow beyond this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    pub keep_files: u32,
}

impl Default for RawJsonlSink {
    fn default() -> Self {
        Self {
            name: None,
            path: String::new(),
            max_bytes: 100 * 1024 * 1024,
            keep_files: 5,
        }
    }
}

/// `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhookSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// Where to POST; required.
    pub url: String,
    /// The signing secret itself (better: `secret_file` or `secret_env`).
    pub secret: String,
    /// A file holding the signing secret.
    pub secret_file: String,
    /// The name of an environment variable holding the signing secret.
    pub secret_env: String,
    /// Timeout of one POST.
    pub timeout: String,
    /// Allow `http://` to hosts other than loopback.
    pub allow_insecure_http: bool,
}

impl Default for RawWebhookSink {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            secret: String::new(),
            secret_file: String::new(),
            secret_env: String::new(),
            timeout: "10s".into(),
            allow_insecure_http: false,
        }
    }
}

/// `[[sink]] type = "postgres"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPostgresSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// `postgres://user@host:port/database?sslmode=disable|prefer|require|verify-full`; required.
    /// A password in the URL works but is better given by `password_file` or `password_env`.
    pub url: String,
    /// A file holding the password.
    pub password_file: String,
    /// The name of an environment variable holding the password.
    pub password_env: String,
    /// The schema the sink creates and writes to.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Timeout of connecting and of each statement.
    pub timeout: String,
    /// PEM file of CA certificates for TLS (default: the system's roots).
    pub ca_file: String,
}

impl Default for RawPostgresSink {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            password_file: String::new(),
            password_env: String::new(),
            schema: "scenewatch".into(),
            pool_size: 4,
            timeout: "30s".into(),
            ca_file: String::new(),
        }
    }
}

/// `[[sink]] type = "s3"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3Sink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// Endpoint URL for S3-compatible services (NCP Object Storage, MinIO); empty for AWS.
    pub endpoint: String,
    /// Region (NCP Object Storage: "kr-standard").
    pub region: String,
    /// Bucket; required.
    pub bucket: String,
    /// Key prefix, without leading or trailing slash.
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), as MinIO and many S3-compatible servers need.
    pub path_style: bool,
    /// Access key id; empty: the environment variable `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// A file holding the secret access key.
    pub secret_access_key_file: String,
    /// The name of an environment variable holding the secret access key.
    pub secret_access_key_env: String,
    /// Timeout of one request.
    pub timeout: String,
    /// Allow `http://` endpoints other than loopback.
    pub allow_insecure_http: bool,
}

impl Default for RawS3Sink {
    fn default() -> Self {
        Self {
            name: None,
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key_file: String::new(),
            secret_access_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            timeout: "30s".into(),
            allow_insecure_http: false,
        }
    }
}

/// `[[event_sink]] type = "nats"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNatsEventSink {
    /// Name used in logs and metrics; defaults to "nats-events".
    pub name: Option<String>,
    /// Server URL(s), comma-separated: `nats://host:4222` (`tls://` for TLS).
    pub url: String,
    /// Subject template; `{type}` becomes the event type without `com.scenewatch.`
    /// (e.g. `summary.completed`).
    pub subject: String,
    /// The JetStream stream that captures the subjects.
    pub stream: String,
    /// Create the stream (subjects `{subject with {type} as >}`) when it does not exist.
    pub create_stream: bool,
    /// A `.creds` file (NGS / decentralized auth).
    pub credentials_file: String,
    /// The name of an environment variable holding a token.
    pub token_env: String,
    /// Timeout of connecting and of each publish acknowledgement.
    pub timeout: String,
}

impl Default for RawNatsEventSink {
    fn default() -> Self {
        Self {
            name: None,
            url: "nats://127.0.0.1:4222".into(),
            subject: "scenewatch.events.{type}".into(),
            stream: "SCENEWATCH_EVENTS".into(),
            create_stream: true,
            credentials_file: String::new(),
            token_env: String::new(),
            timeout: "10s".into(),
        }
    }
}
