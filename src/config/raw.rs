//! The raw configuration: a struct that mirrors the TOML file exactly, with the documented defaults.
//!
//! Every field here has the same name, and the same default, as in `config/default.toml`; a test
//! keeps the two equal. Values stay loosely typed (durations are strings) so that validation can
//! report every problem at once, naming the key and where it came from. Each sink kind's table
//! is beside its sink (`src/sink/{kind}.rs`), the `type`-tagged enums in `src/sink/config.rs`.

use serde::{Deserialize, Serialize};

use crate::sink::config::{RawEventSink, RawSink};

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
    /// The ledger's retention.
    pub state: RawState,
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
            state: RawState::default(),
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
    /// `adaptive` (next polls from the project's history) or `backoff`.
    pub policy: String,
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
            policy: "adaptive".into(),
        }
    }
}

/// One `[[watch]]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWatch {
    /// Workspace name.
    pub workspace: RawText,
    /// Project id.
    pub project_id: RawText,
    /// Asset id; empty: every asset of the project.
    pub asset_id: RawText,
    /// Index id; empty: the asset's latest index.
    pub index_id: RawText,
    /// Scene summary id, when known (lets the index-level status endpoint be used).
    pub scene_summary_id: Option<RawText>,
    /// Overrides `api.generation` for this watch.
    pub generation: Option<RawText>,
    /// Overrides `poll.max_wait` for this watch.
    pub max_wait: Option<RawText>,
}

/// A text of a [`RawWatch`]: held in place when it is short (ids, names, durations: nearly
/// always), in a box otherwise; the size of a `String`.
///
/// A file of a million `[[watch]]` tables is read whole before it is checked, and its watches'
/// texts as `String`s were five million small allocations alive together, freed one watch at a
/// time as the checked keys were made among them: glibc could give none of those pages back
/// (80 MB of holes at a million watches, docs/benchmarks.md "Memory at a million watches").
#[derive(Clone, PartialEq, Eq)]
pub struct RawText(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; RAW_TEXT_INLINE],
    },
    Boxed(Box<str>),
}

/// The longest text a [`RawText`] holds in place (with its length and the variant's tag, 24
/// bytes like a `String`).
const RAW_TEXT_INLINE: usize = 22;

impl RawText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever filled from a `&str` (see `From<&str>`), cut at its end.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Boxed(b) => b,
        }
    }
}

impl Default for RawText {
    fn default() -> Self {
        RawText(Repr::Inline {
            len: 0,
            bytes: [0; RAW_TEXT_INLINE],
        })
    }
}

impl From<&str> for RawText {
    fn from(s: &str) -> Self {
        if s.len() <= RAW_TEXT_INLINE {
            let mut bytes = [0; RAW_TEXT_INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            RawText(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            RawText(Repr::Boxed(s.into()))
        }
    }
}

impl From<String> for RawText {
    fn from(s: String) -> Self {
        if s.len() <= RAW_TEXT_INLINE {
            RawText::from(s.as_str())
        } else {
            RawText(Repr::Boxed(s.into_boxed_str()))
        }
    }
}

impl std::ops::Deref for RawText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RawText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for RawText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RawText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for RawText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for RawText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RawText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RawText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawText, E> {
                Ok(RawText::from(s))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<RawText, E> {
                Ok(RawText::from(s))
            }
        }
        d.deserialize_str(V)
    }
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

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// How long done deliveries and sent events are kept.
    pub retention: String,
    /// Where the ledger is: `sqlite` (`{state_dir}/scenewatch.db`) or `postgres`.
    pub backend: String,
    /// `backend = "postgres"`: `postgres://user@host:port/database?sslmode=…`.
    pub url: String,
    /// A file holding the PostgreSQL password.
    pub password_file: String,
    /// The name of an environment variable holding the PostgreSQL password.
    pub password_env: String,
    /// The PostgreSQL schema of the ledger's tables.
    pub schema: String,
    /// PEM file of CA certificates for TLS to PostgreSQL (default: the system's roots).
    pub ca_file: String,
    /// `backend = "postgres"`: several daemons share the ledger, each holding shard leases.
    pub replicated: bool,
    /// How long a replica's shard lease lasts without renewal.
    pub lease: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            retention: "30d".into(),
            backend: "sqlite".into(),
            url: String::new(),
            password_file: String::new(),
            password_env: String::new(),
            schema: "scenewatch".into(),
            ca_file: String::new(),
            replicated: false,
            lease: "15s".into(),
        }
    }
}
