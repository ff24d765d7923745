//! The NATS JetStream event sink: each event's CloudEvent JSON is published to
//! `subject` with `{type}` replaced by the event type without `com.scenewatch.` (so
//! `scenewatch.events.summary.completed`), with `Nats-Msg-Id: <event id>` so the stream drops
//! a replayed event within its duplicate window, and counts as sent only once the stream's
//! PubAck arrived (a duplicate ack is a success: the event is stored once).
//!
//! The connection is made on first use, not in [`NatsSink::new`], because sinks are built
//! synchronously at start and a server that is down then must not stop the daemon; the outbox
//! retries. Once connected, async-nats reconnects by itself; every wait (connect, publish, ack)
//! is bounded by the configured timeout, so a publish during an outage fails with `Retry`
//! instead of hanging the drainer.
//!
//! The token (if any) goes from the config's `SecretString` to the connect options only; this
//! type's `Debug` and every message leave it out, and URLs are shown without user info.
//!
//! Its configuration is at the end of this file: [`RawNatsEventSink`] (the table as written), [`NatsEventSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::{ConnectOptions, HeaderMap};
use futures_util::future::BoxFuture;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::webhook::CLOUDEVENTS_JSON;
use super::{Disposition, EventSink, SinkError};
use crate::config::checks::{duration, secret_from};
use crate::config::{Origins, Problem};
use crate::events::{Event, EventType};

/// How long the stream remembers message ids to drop duplicates. A replay later than this
/// after the first publish is stored again; consumers can still dedupe on the CloudEvents `id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Events published before their acks are awaited: enough to keep the connection busy, few
/// enough that a failure leaves a small window to replay.
const PIPELINE: usize = 256;

/// The prefix every event type has and the subject leaves out.
const TYPE_PREFIX: &str = "com.scenewatch.";

/// Publishes events to a JetStream stream.
pub struct NatsSink {
    name: String,
    urls: Vec<String>,
    /// `urls` without user info, for messages.
    shown_urls: String,
    subject: String,
    stream: String,
    create_stream: bool,
    credentials_file: Option<PathBuf>,
    token: Option<SecretString>,
    timeout: Duration,
    /// The JetStream context once connected, and whether the stream is known to exist.
    conn: Mutex<Option<Connected>>,
}

struct Connected {
    js: jetstream::Context,
    stream_ready: bool,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written by hand so the token can never show.
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("urls", &self.shown_urls)
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// The subject of an event type under a template: `{type}` becomes e.g. `summary.completed`.
pub fn subject_for(template: &str, kind: EventType) -> String {
    let t = kind.as_str();
    template.replace("{type}", t.strip_prefix(TYPE_PREFIX).unwrap_or(t))
}

/// The subjects a created stream takes: `{type}` as the last token becomes `>` (every type,
/// including ones added later); anywhere else, the subject of each known type.
pub fn stream_subjects(template: &str) -> Vec<String> {
    if let Some(head) = template.strip_suffix("{type}")
        && !head.contains("{type}")
        && (head.is_empty() || head.ends_with('.'))
    {
        return vec![format!("{head}>")];
    }
    let mut subjects: Vec<String> = EventType::ALL
        .iter()
        .map(|k| subject_for(template, *k))
        .collect();
    subjects.dedup();
    subjects
}

/// A server URL without user name or password.
fn shown_url(u: &str) -> String {
    match Url::parse(u) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

impl NatsSink {
    /// A sink for `config`; nothing is connected until the first send or healthcheck.
    pub fn new(config: &NatsEventSinkConfig) -> Result<Self, SinkError> {
        Ok(Self {
            name: config.name.clone(),
            urls: config.urls.clone(),
            shown_urls: config
                .urls
                .iter()
                .map(|u| shown_url(u))
                .collect::<Vec<_>>()
                .join(","),
            subject: config.subject.clone(),
            stream: config.stream.clone(),
            create_stream: config.create_stream,
            credentials_file: config.credentials_file.clone(),
            token: config.token.clone(),
            timeout: config.timeout,
            conn: Mutex::new(None),
        })
    }

    fn error(&self, message: String, disposition: Disposition) -> SinkError {
        SinkError {
            kind: "nats",
            name: self.name.clone(),
            message,
            disposition,
            source: None,
        }
    }

    fn retry(&self, message: String) -> SinkError {
        self.error(message, Disposition::Retry)
    }

    async fn connect(&self) -> Result<jetstream::Context, SinkError> {
        // A `tls://` server is reached through rustls on the process's provider.
        crate::tls::install();
        let mut opts = ConnectOptions::new()
            .name(concat!("scenewatch/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout));
        if let Some(path) = &self.credentials_file {
            // Read as every secret file is (at most 64 KiB: a wrong path to a log or a device
            // is refused, not read to the end), then parsed by the client.
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || crate::config::checks::read_secret_file(&path))
                    .await
            };
            let creds = match read {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => {
                    return Err(self
                        .retry(format!(
                            "cannot read credentials_file {}: {e}",
                            path.display()
                        ))
                        .with_source(crate::cause::of(e)));
                }
                Err(e) => return Err(self.retry(format!("credentials reader failed: {e}"))),
            };
            opts = opts.credentials(&creds).map_err(|e| {
                self.retry(format!(
                    "cannot use credentials_file {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.expose_secret().to_string());
        }
        let client = tokio::time::timeout(self.timeout, opts.connect(self.urls.as_slice()))
            .await
            .map_err(|_| self.retry(format!("connecting to {} timed out", self.shown_urls)))?
            .map_err(|e| {
                self.retry(format!(
                    "cannot connect to {}: {e}{}",
                    self.shown_urls,
                    if matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::Authentication
                            | async_nats::ConnectErrorKind::AuthorizationViolation
                    ) {
                        "; check token_env or credentials_file"
                    } else {
                        ""
                    }
                ))
            })?;
        let mut js = jetstream::new(client);
        // Bounds the wait for each PubAck and each JetStream API answer.
        js.set_timeout(self.timeout);
        Ok(js)
    }

    /// The JetStream context, connecting and (with `create_stream`) making sure the stream
    /// exists first.
    async fn context(&self) -> Result<jetstream::Context, SinkError> {
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(Connected {
                js: self.connect().await?,
                stream_ready: false,
            }),
        };
        if !conn.stream_ready {
            self.ensure_stream(&conn.js).await?;
            conn.stream_ready = true;
        }
        Ok(conn.js.clone())
    }

    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), SinkError> {
        if self.create_stream {
            let config = stream::Config {
                name: self.stream.clone(),
                subjects: stream_subjects(&self.subject),
                duplicate_window: DUPLICATE_WINDOW,
                ..stream::Config::default()
            };
            tokio::time::timeout(self.timeout, js.get_or_create_stream(config))
                .await
                .map_err(|_| self.retry(format!("creating stream {} timed out", self.stream)))?
                .map_err(|e| {
                    self.retry(format!(
                        "cannot get or create stream {} on {}: {e}",
                        self.stream, self.shown_urls
                    ))
                })?;
        } else {
            tokio::time::timeout(self.timeout, js.get_stream(&self.stream))
                .await
                .map_err(|_| self.retry(format!("looking up stream {} timed out", self.stream)))?
                .map_err(|e| {
                    self.retry(format!(
                        "stream {} is not usable on {} ({e}); create it or set create_stream = true",
                        self.stream, self.shown_urls
                    ))
                })?;
        }
        Ok(())
    }

    /// After a failure the stream may be gone (a server restarted without its store): look
    /// again before the next publish.
    async fn forget_stream(&self) {
        if let Some(c) = self.conn.lock().await.as_mut() {
            c.stream_ready = false;
        }
    }

    /// Publishes one event; the returned future resolves with its PubAck.
    async fn publish(
        &self,
        js: &jetstream::Context,
        e: &Event,
    ) -> Result<PublishAckFuture, SinkError> {
        let subject = subject_for(&self.subject, e.kind);
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", CLOUDEVENTS_JSON);
        let message = jetstream::message::PublishMessage::build()
            .payload(e.to_cloudevent_bytes().into())
            .headers(headers)
            .message_id(&e.id);
        // The client queues while reconnecting; a full queue would wait here without bound.
        tokio::time::timeout(self.timeout, js.send_publish(subject.clone(), message))
            .await
            .map_err(|_| {
                self.retry(format!(
                    "publishing event {} to {subject} timed out (is {} up?)",
                    e.id, self.shown_urls
                ))
            })?
            .map_err(|err| self.retry(format!("cannot publish event {} to {subject}: {err}", e.id)))
    }

    async fn await_ack(&self, e: &Event, ack: PublishAckFuture) -> Result<(), SinkError> {
        // The context bounds the ack wait already; this outer bound is a belt for the brace.
        let answer = tokio::time::timeout(self.timeout + Duration::from_secs(1), ack)
            .await
            .map_err(|_| self.retry(format!("no PubAck for event {} in time", e.id)))?;
        match answer {
            // A duplicate ack means the stream has this id already: stored once, done.
            Ok(_) => Ok(()),
            Err(err) => {
                let hint = if matches!(
                    err.kind(),
                    jetstream::context::PublishErrorKind::StreamNotFound
                ) {
                    format!(
                        "; no stream takes subject {} (check stream {:?}, subject and create_stream)",
                        subject_for(&self.subject, e.kind),
                        self.stream
                    )
                } else {
                    String::new()
                };
                Err(self.retry(format!(
                    "event {} not acknowledged by {}: {err}{hint}",
                    e.id, self.shown_urls
                )))
            }
        }
    }

    async fn send_all(&self, events: &[Event]) -> Result<(), SinkError> {
        let js = self.context().await?;
        for chunk in events.chunks(PIPELINE) {
            let mut acks = Vec::with_capacity(chunk.len());
            for e in chunk {
                acks.push((e, self.publish(&js, e).await?));
            }
            // Acks come back in publish order; the first failure fails the batch and the
            // outbox replays it, the stream dropping the ids it already has.
            for (e, ack) in acks {
                self.await_ack(e, ack).await?;
            }
        }
        Ok(())
    }
}

impl EventSink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            let result = self.send_all(events).await;
            if result.is_err() {
                self.forget_stream().await;
            }
            result
        })
    }

    /// Connects and looks the stream up (creating it with `create_stream`).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let js = self.context().await?;
            let result = tokio::time::timeout(self.timeout, js.get_stream(&self.stream)).await;
            match result {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    self.forget_stream().await;
                    Err(self.retry(format!(
                        "stream {} is not usable on {}: {e}",
                        self.stream, self.shown_urls
                    )))
                }
                Err(_) => Err(self.retry(format!(
                    "looking up stream {} on {} timed out",
                    self.stream, self.shown_urls
                ))),
            }
        })
    }
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

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

/// `[[event_sink]] type = "nats"`, validated (problems under `base`).
pub(crate) fn validate(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &[&str], timeout: Duration) -> NatsEventSinkConfig {
        NatsEventSinkConfig {
            name: "bus".into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            subject: "scenewatch.events.{type}".into(),
            stream: "SCENEWATCH_EVENTS".into(),
            create_stream: true,
            credentials_file: None,
            token: Some(SecretString::from("n4ts-t0ken-s3cret")),
            timeout,
        }
    }

    #[test]
    fn subjects_strip_the_type_prefix() {
        assert_eq!(
            subject_for("scenewatch.events.{type}", EventType::Completed),
            "scenewatch.events.summary.completed"
        );
        assert_eq!(
            subject_for("x.{type}", EventType::SinkFailing),
            "x.sink.failing"
        );
        assert_eq!(subject_for("fixed", EventType::Completed), "fixed");
    }

    #[test]
    fn stream_subjects_cover_every_type() {
        assert_eq!(
            stream_subjects("scenewatch.events.{type}"),
            ["scenewatch.events.>"]
        );
        assert_eq!(stream_subjects("{type}"), [">"]);
        let mid = stream_subjects("a.{type}.b");
        assert_eq!(mid.len(), EventType::ALL.len());
        assert!(mid.contains(&"a.summary.completed.b".to_string()));
        assert_eq!(stream_subjects("fixed"), ["fixed"]);
    }

    #[test]
    fn debug_and_urls_never_show_secrets() {
        let s = NatsSink::new(&config(
            &[
                "nats://user:pw-s3cret@127.0.0.1:4222",
                "tls://n4ts-t0ken-s3cret@h:4222",
            ],
            Duration::from_secs(1),
        ))
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("127.0.0.1:4222"), "{dbg}");
    }

    #[tokio::test]
    async fn a_credentials_file_that_is_not_one_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("creds");
        std::fs::write(&big, vec![b'x'; 200 * 1024]).unwrap();
        let mut c = config(&["nats://127.0.0.1:1"], Duration::from_millis(500));
        c.credentials_file = Some(big);
        let s = NatsSink::new(&c).unwrap();
        let err = s
            .send(&[Event::sink_recovered("files", 1, 0)])
            .await
            .unwrap_err();
        assert!(
            err.message.contains("cannot read credentials_file"),
            "{err}"
        );
        assert!(err.message.contains("larger than 64 KiB"), "{err}");
        assert_eq!(err.disposition, Disposition::Retry);
        assert!(
            crate::cause::find::<std::io::Error>(&err).is_some(),
            "{err:?}"
        );
        // A garbled one is refused by the client's parser, naming the file.
        let bad = dir.path().join("bad.creds");
        std::fs::write(&bad, "not a credentials file").unwrap();
        c.credentials_file = Some(bad);
        let err = NatsSink::new(&c)
            .unwrap()
            .send(&[Event::sink_recovered("files", 1, 0)])
            .await
            .unwrap_err();
        assert!(err.message.contains("bad.creds"), "{err}");
        assert!(!err.message.contains("not a credentials file"), "{err}");
    }

    #[tokio::test]
    async fn a_dead_server_fails_with_retry_in_bounded_time() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let s = NatsSink::new(&config(
            &[&format!("nats://{dead}")],
            Duration::from_millis(500),
        ))
        .unwrap();
        let started = crate::clock::instant_now();
        let err = s
            .send(&[Event::sink_recovered("files", 1, 0)])
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
        assert!(err.to_string().contains(&dead.to_string()), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = s.healthcheck().await.unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
    }
}
