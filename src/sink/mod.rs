//! Sinks: where results go. One file per sink kind behind the small [`Sink`] trait, the envelope
//! every sink writes, and the stable version id that makes deliveries idempotent. Each kind's
//! file also holds its configuration (raw table, validated struct, `validate`); `config.rs` has
//! the `type`-tagged enums of them and the validation pass over `[[sink]]` and `[[event_sink]]`.
//!
//! Failure semantics: `deliver` returns `Ok` only once the output is durable (fsync'd file,
//! committed row, 2xx answer). An `Err` means nothing is confirmed and the same delivery may be
//! retried; sinks are idempotent on [`Delivery::version_id`], so a retry never duplicates.

pub mod config;
pub mod file;
pub mod jsonl;
pub mod latest;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "s3")]
pub mod s3;
pub mod stdout;
pub mod webhook;

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::{VersionId, WatchKey};
use crate::ncp::SummaryResult;
pub use config::{EventSinkConfig, SinkConfig};

/// A sink failed; the message names the sink and the thing at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} sink `{name}`: {message}")]
pub struct SinkError {
    /// The sink kind (`file`, …).
    pub kind: &'static str,
    /// The sink's configured name.
    pub name: String,
    /// What failed, naming the path, URL or table.
    pub message: String,
    /// What the outbox does with the delivery.
    pub disposition: Disposition,
    /// The underlying error, where there is one (its text is already in `message`).
    #[source]
    pub source: Option<crate::cause::Cause>,
}

impl SinkError {
    /// The same error with `source` as its cause.
    pub fn with_source(mut self, source: Option<crate::cause::Cause>) -> Self {
        self.source = source;
        self
    }
}

/// What to do with a delivery that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient (disk full, server down, 5xx, 429, timeout): retry with backoff.
    Retry,
    /// The receiver refused this delivery for good (a 4xx): keep it parked and report it;
    /// retrying would not help, dropping it would lose it.
    Park,
    /// The endpoint is gone (webhook 410): stop sending to it and report it.
    Disable,
}

/// What a sink confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Where the version now is (a path, a URL, a row key).
    pub location: String,
}

/// One sink. Implementations must be idempotent on the version id.
pub trait Sink: Send + Sync {
    /// The configured name, for logs.
    fn name(&self) -> &str;
    /// Writes one version durably.
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>>;
    /// Checks that the sink can take deliveries (directory writable, server reachable).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    /// Where [`Sink::deliver`] would put `delivery` (each file, object, row or request), worked
    /// out without reading or writing anything: what `once --dry-run` prints.
    fn targets(&self, delivery: &Delivery) -> Vec<String> {
        let _ = delivery;
        vec![format!("sink `{}`", self.name())]
    }
}

/// Builds the sink a configuration names.
pub fn build(config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkError> {
    match config {
        SinkConfig::File(f) => Ok(Arc::new(file::FileSink::new(f.clone()))),
        SinkConfig::Stdout(s) => Ok(Arc::new(stdout::StdoutSink::new(s))),
        SinkConfig::Jsonl(j) => Ok(Arc::new(jsonl::JsonlSink::new(j))),
        SinkConfig::Webhook(w) => Ok(Arc::new(webhook::WebhookSink::new(w)?)),
        #[cfg(feature = "postgres")]
        SinkConfig::Postgres(c) => Ok(Arc::new(postgres::PostgresSink::new(c)?)),
        #[cfg(feature = "s3")]
        SinkConfig::S3(c) => Ok(Arc::new(s3::S3Sink::new(c)?)),
    }
}

/// An event destination. `send` returns Ok only once every event of the batch is confirmed
/// (written and flushed/fsync'd, or acknowledged with 2xx); events carry stable ids, so a retried
/// batch can be deduped by consumers.
///
/// An `Err` means some events of the batch may have gone out and some not: the caller retries
/// the whole batch (at-least-once), as the error's [`Disposition`] says.
pub trait EventSink: Send + Sync {
    /// The configured name, for logs.
    fn name(&self) -> &str;
    /// Sends a batch of events, in order.
    fn send<'a>(
        &'a self,
        events: &'a [crate::events::Event],
    ) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Checks that the sink can take events.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the event sink a configuration names.
pub fn build_event_sink(config: &EventSinkConfig) -> Result<Arc<dyn EventSink>, SinkError> {
    match config {
        EventSinkConfig::Stdout(s) => Ok(Arc::new(stdout::StdoutSink::new(s))),
        EventSinkConfig::Jsonl(j) => Ok(Arc::new(jsonl::JsonlSink::new(j))),
        EventSinkConfig::Webhook(w) => Ok(Arc::new(webhook::WebhookSink::new(w)?)),
        #[cfg(feature = "nats")]
        EventSinkConfig::Nats(c) => Ok(Arc::new(nats::NatsSink::new(c)?)),
    }
}

/// One result version on its way to the sinks.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The watch it belongs to.
    pub key: WatchKey,
    /// Stable id of `(key, lastAnalyzedAt)`, see [`VersionId::of`].
    pub version_id: VersionId,
    /// The version's `lastAnalyzedAt`.
    pub last_analyzed_at: String,
    /// When scenewatch fetched it.
    pub fetched_at: SystemTime,
    /// The fetched result.
    pub result: Arc<SummaryResult>,
}

impl Delivery {
    /// A delivery of `result`, which must have `sceneSummaryInfo` (callers only deliver
    /// completed results); `None` otherwise.
    pub fn new(key: WatchKey, result: Arc<SummaryResult>, fetched_at: SystemTime) -> Option<Self> {
        let last = result.info.as_ref()?.last_analyzed_at.clone();
        Some(Self {
            version_id: VersionId::of(&key, &last),
            key,
            last_analyzed_at: last,
            fetched_at,
            result,
        })
    }

    /// The envelope to write (compact on one line, or pretty), or the error a sink reports when
    /// it cannot be encoded. Encoding the same version fails the same way every time, so the
    /// delivery is parked, never retried.
    pub fn body(
        &self,
        sink_kind: &'static str,
        sink_name: &str,
        compact: bool,
    ) -> Result<Vec<u8>, SinkError> {
        let encoded = if compact {
            self.envelope_json_compact()
        } else {
            self.envelope_json()
        };
        encoded.map_err(|e| self.encode_error(sink_kind, sink_name, &e))
    }

    /// The error a sink reports when this version cannot be encoded: parked, since encoding it
    /// again fails the same way.
    pub fn encode_error(
        &self,
        sink_kind: &'static str,
        sink_name: &str,
        e: &serde_json::Error,
    ) -> SinkError {
        SinkError {
            kind: sink_kind,
            name: sink_name.to_string(),
            message: format!("cannot encode version {}: {e}", self.version_id),
            disposition: Disposition::Park,
            source: None,
        }
    }

    /// The JSON document sinks write: an envelope around the API's `result`, unchanged.
    pub fn envelope_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(self.result.raw.get().len() + 1024);
        self.write_envelope(&mut out)?;
        Ok(out)
    }

    /// [`Delivery::envelope_json`], written to `w` as it is encoded (the file sink streams it
    /// to the file, so a large result is not held a second time). An error writing to `w` is
    /// the error's [`serde_json::Error::io_error_kind`].
    pub fn write_envelope(&self, mut w: impl std::io::Write) -> Result<(), serde_json::Error> {
        serde_json::to_writer_pretty(&mut w, &self.envelope(&self.result.raw))?;
        w.write_all(b"\n").map_err(serde_json::Error::io)
    }

    /// The envelope as one line (no trailing newline), for line-oriented sinks (stdout, JSON
    /// lines) and webhook bodies. The API's `result` keeps every byte except whitespace between
    /// tokens: the API may send it pretty-printed, and a newline would split the line.
    pub fn envelope_json_compact(&self) -> Result<Vec<u8>, serde_json::Error> {
        let raw = self.result.raw.get();
        let compact;
        let result: &RawValue = if raw.contains(['\n', '\r']) {
            compact = RawValue::from_string(minify_json(raw))?;
            &compact
        } else {
            &self.result.raw
        };
        // Sized for the result and the envelope's few fields: no doubling copies on the way.
        let mut out = Vec::with_capacity(result.get().len() + 1024);
        serde_json::to_writer(&mut out, &self.envelope(result))?;
        Ok(out)
    }

    fn envelope<'a>(&'a self, result: &'a RawValue) -> Envelope<'a> {
        let info = self.result.info.as_ref();
        Envelope {
            source: self.key.source(),
            watch: EnvelopeWatch {
                workspace: self.key.workspace(),
                project_id: self.key.project_id(),
                asset_id: self.key.asset_id(),
                index_id: self.key.index_id(),
            },
            version: &self.version_id,
            last_analyzed_at: &self.last_analyzed_at,
            analyzed_scene_ids: info.and_then(|i| i.analyzed_scene_ids.as_deref()),
            scene_count: self.result.scene_count,
            fetched_at: latest::fetched_at_text(self.fetched_at),
            result,
        }
    }
}

/// Drops whitespace outside strings from valid JSON. Inside strings a raw newline cannot occur
/// (JSON escapes it), so the result is one line with every other byte kept.
fn minify_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    source: String,
    watch: EnvelopeWatch<'a>,
    version: &'a str,
    last_analyzed_at: &'a str,
    analyzed_scene_ids: Option<&'a [String]>,
    scene_count: usize,
    fetched_at: String,
    result: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeWatch<'a> {
    workspace: &'a str,
    project_id: &'a str,
    asset_id: &'a str,
    index_id: &'a str,
}
