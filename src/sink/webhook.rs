//! The webhook sink: POSTs each result envelope (`application/json`) or each event
//! (`application/cloudevents+json`) signed the Standard Webhooks way (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), and turns the answer into
//! a [`Disposition`].
//!
//! The signing secret lives in a `SecretBox` from the config to the HMAC and is never formatted;
//! error messages name the URL without its query (which may carry a token) and the status.
//!
//! Its configuration is at the end of this file: [`RawWebhookSink`] (the table as written), [`WebhookSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Delivery, Disposition, EventSink, Receipt, Sink, SinkError};
use crate::config::checks::{duration, is_loopback, read_secret_file};
use crate::config::{Origins, Problem};
use crate::events::Event;

/// The Standard Webhooks prefix of a base64-encoded secret.
const SECRET_PREFIX: &str = "whsec_";

/// Content type of event bodies (CloudEvents structured mode).
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// POSTs signed JSON to one URL.
pub struct WebhookSink {
    name: String,
    url: reqwest::Url,
    /// `url` without query and fragment, for messages and receipts.
    shown_url: String,
    key: SecretSlice<u8>,
    http: reqwest::Client,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written by hand so the key can never show, whatever SecretBox's Debug does.
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The HMAC key of a configured secret: `whsec_` + base64 is decoded (the Standard Webhooks
/// convention), anything else is used as its UTF-8 bytes. The error never echoes the secret.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix(SECRET_PREFIX) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the secret starts with `whsec_` but the rest is not valid base64".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` value: `v1,` + base64 of HMAC-SHA256(key, `{id}.{timestamp}.{body}`).
pub fn sign_webhook(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; the `Err` arm cannot happen, and an empty signature (which
    // every receiver rejects) is a safer answer than a panic.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// What an HTTP status means for a delivery: `None` for success (2xx).
pub fn classify_status(status: u16) -> Option<Disposition> {
    match status {
        200..=299 => None,
        // The receiver says the endpoint is gone for good (Standard Webhooks convention).
        410 => Some(Disposition::Disable),
        // Timeout, rate limit and server errors pass.
        408 | 429 | 500..=599 => Some(Disposition::Retry),
        // The receiver refused this payload, or redirected (not followed: the URL is wrong);
        // sending it again unchanged would not help.
        300..=499 => Some(Disposition::Park),
        // 1xx as a final answer or nonsense codes: a broken proxy, likely passing.
        _ => Some(Disposition::Retry),
    }
}

impl WebhookSink {
    /// A sink for `config`. Fails if the URL does not parse, the secret is not usable or the HTTP
    /// client cannot be built; none of that changes by retrying, so the error says `Disable`.
    pub fn new(config: &WebhookSinkConfig) -> Result<Self, SinkError> {
        let fail = |message: String| SinkError {
            kind: "webhook",
            name: config.name.clone(),
            message,
            disposition: Disposition::Disable,
            source: None,
        };
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| fail(format!("url is not valid ({e})")))?;
        let shown_url = shown(&url);
        let key = webhook_key(config.secret.expose_secret()).map_err(fail)?;
        let http = crate::tls::client_builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect would replay a signed body to a URL nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("scenewatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: config.name.clone(),
            url,
            shown_url,
            key: SecretSlice::from(key),
            http,
        })
    }

    fn error(&self, message: String, disposition: Disposition) -> SinkError {
        SinkError {
            kind: "webhook",
            name: self.name.clone(),
            message,
            disposition,
            source: None,
        }
    }

    /// POSTs one signed body and classifies the answer.
    async fn post(&self, id: &str, content_type: &str, body: Vec<u8>) -> Result<(), SinkError> {
        let timestamp = crate::clock::wall_now_ms() / 1000;
        let signature = sign_webhook(self.key.expose_secret(), id, timestamp, &body);
        let answer = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                // Without the URL reqwest would put in (it may have a query holding a token).
                let e = e.without_url();
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                let mut err = self.error(
                    format!(
                        "POST {} {what}: {}",
                        self.shown_url,
                        crate::cause::chain(&e)
                    ),
                    Disposition::Retry,
                );
                err.source = crate::cause::of(e);
                return Err(err);
            }
        };
        let status = response.status();
        match classify_status(status.as_u16()) {
            None => Ok(()),
            Some(disposition) => {
                let hint = match disposition {
                    Disposition::Disable => "; the receiver says the endpoint is gone",
                    _ if status.is_redirection() => {
                        "; redirects are not followed, configure the final URL"
                    }
                    _ => "",
                };
                Err(self.error(
                    format!("POST {} answered {status}{hint}", self.shown_url),
                    disposition,
                ))
            }
        }
    }
}

/// The URL as shown in messages and receipts: without query and fragment, which may hold tokens.
fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let had_query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if had_query {
        format!("{u}?…")
    } else {
        u.to_string()
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn targets(&self, _d: &Delivery) -> Vec<String> {
        vec![format!("POST {}", self.shown_url)]
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let body = d.body("webhook", &self.name, true)?;
            self.post(&d.version_id, "application/json", body).await?;
            Ok(Receipt {
                location: self.shown_url.clone(),
            })
        })
    }
}

impl EventSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// One POST per event, in order; stops at the first failure (the caller retries the batch,
    /// and receivers dedupe the ones that got through by `webhook-id`).
    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            for e in events {
                self.post(&e.id, CLOUDEVENTS_JSON, e.to_cloudevent_bytes())
                    .await?;
            }
            Ok(())
        })
    }
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

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

/// `type = "webhook"`, validated (problems under `base`; a secret written in the file is a
/// warning); `default_name` when no name is given.
pub(crate) fn validate(
    origins: &Origins,
    p: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
    base: &str,
    w: &RawWebhookSink,
    default_name: &str,
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
            if let crate::config::Origin::File(f) = origins.of(&format!("{base}.secret")) {
                warnings.push(format!(
                    "{base}.secret is written in {}; prefer secret_file or secret_env",
                    f.display()
                ));
            }
            Some(w.secret.clone())
        }
        1 if !w.secret_file.is_empty() => match read_secret_file(w.secret_file.trim()) {
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
        name: w.name.clone().unwrap_or_else(|| default_name.into()),
        url: w.url.trim().to_string(),
        secret: SecretString::from(secret?),
        timeout: timeout?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn signature_matches_an_independent_vector() {
        // python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
        //   b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",
        //   hashlib.sha256).digest()).decode())'
        // (the key is the base64 decoding of the Standard Webhooks example secret
        // `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`).
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign_webhook(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // A plain secret is its UTF-8 bytes.
        let sig = sign_webhook(b"plain-secret", "abc", 1, b"{}");
        assert_eq!(sig, PLAIN_VECTOR);
    }

    // python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b"plain-secret",
    //   b"abc.1.{}", hashlib.sha256).digest()).decode())'
    const PLAIN_VECTOR: &str = "v1,vQOS/djIkskUmuw2oOTQ9KedxPbJf7hqeKkU9Au9TVg=";

    #[test]
    fn secrets_decode_and_never_echo() {
        assert_eq!(webhook_key("plain").unwrap(), b"plain");
        assert_eq!(webhook_key("whsec_aGVsbG8=").unwrap(), b"hello");
        let err = webhook_key("whsec_not*base64!").unwrap_err();
        assert!(!err.contains("not*base64"), "{err}");
    }

    #[test]
    fn statuses_classify() {
        for (status, want) in [
            (200, None),
            (204, None),
            (299, None),
            (301, Some(Disposition::Park)),
            (400, Some(Disposition::Park)),
            (401, Some(Disposition::Park)),
            (404, Some(Disposition::Park)),
            (408, Some(Disposition::Retry)),
            (410, Some(Disposition::Disable)),
            (413, Some(Disposition::Park)),
            (429, Some(Disposition::Retry)),
            (500, Some(Disposition::Retry)),
            (503, Some(Disposition::Retry)),
            (599, Some(Disposition::Retry)),
            (100, Some(Disposition::Retry)),
        ] {
            assert_eq!(classify_status(status), want, "{status}");
        }
    }

    const SECRET: &str = "whsec_c2NlbmV3YXRjaC10ZXN0LXNlY3JldA==";

    /// What the test receiver saw: headers and body of each request.
    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// A receiver on 127.0.0.1:0: `/ok` answers 204, `/status/{code}` that code, `/slow` after
    /// two seconds.
    async fn receiver() -> (SocketAddr, Seen) {
        async fn ok(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
            seen.lock().unwrap().push((headers, body));
            StatusCode::NO_CONTENT
        }
        async fn status(Path(code): Path<u16>) -> StatusCode {
            StatusCode::from_u16(code).unwrap()
        }
        async fn slow() -> StatusCode {
            tokio::time::sleep(Duration::from_secs(2)).await;
            StatusCode::OK
        }
        let seen = Seen::default();
        let app = Router::new()
            .route("/ok", post(ok))
            .route("/status/{code}", post(status))
            .route("/slow", post(slow))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, seen)
    }

    fn sink(url: String, timeout: Duration) -> WebhookSink {
        WebhookSink::new(&WebhookSinkConfig {
            name: "hook".into(),
            url,
            secret: SecretString::from(SECRET),
            timeout,
        })
        .unwrap()
    }

    fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
        h.get(name).unwrap().to_str().unwrap()
    }

    /// Verifies a request the way docs/events.md tells receivers to.
    fn verify(h: &HeaderMap, body: &[u8]) {
        let id = header(h, "webhook-id");
        let ts: u64 = header(h, "webhook-timestamp").parse().unwrap();
        let now = crate::clock::wall_now_ms() / 1000;
        assert!(now.abs_diff(ts) < 300, "{ts} vs {now}");
        let key = webhook_key(SECRET).unwrap();
        assert_eq!(
            header(h, "webhook-signature"),
            sign_webhook(&key, id, ts, body)
        );
    }

    #[tokio::test]
    async fn results_and_events_arrive_signed() {
        let (addr, seen) = receiver().await;
        let s = sink(
            format!("http://{addr}/ok?token=t0ps3cret"),
            Duration::from_secs(5),
        );
        let d = crate::sink::stdout::test_delivery("{\n \"x\": 1\n}");
        let receipt = s.deliver(&d).await.unwrap();
        assert_eq!(receipt.location, format!("http://{addr}/ok?…"));
        let events = [
            Event::completed(&d.key, &d.version_id, "t", 0, None, 1),
            Event::sink_recovered("files", 2, 3),
        ];
        EventSink::send(&s, &events).await.unwrap();

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        let (h, body) = &seen[0];
        assert_eq!(header(h, "content-type"), "application/json");
        assert_eq!(header(h, "webhook-id"), d.version_id.as_str());
        assert_eq!(body.as_ref(), d.envelope_json_compact().unwrap());
        verify(h, body);
        for ((h, body), e) in seen[1..].iter().zip(&events) {
            assert_eq!(header(h, "content-type"), CLOUDEVENTS_JSON);
            assert_eq!(header(h, "webhook-id"), e.id);
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(Event::from_cloudevent(&v).as_ref(), Some(e));
            verify(h, body);
        }
    }

    #[tokio::test]
    async fn answers_become_dispositions_and_messages_name_the_url() {
        let (addr, _) = receiver().await;
        let e = [Event::sink_recovered("files", 1, 0)];
        for (code, want) in [
            (500, Disposition::Retry),
            (503, Disposition::Retry),
            (429, Disposition::Retry),
            (400, Disposition::Park),
            (410, Disposition::Disable),
            (302, Disposition::Park),
        ] {
            let s = sink(
                format!("http://{addr}/status/{code}"),
                Duration::from_secs(5),
            );
            let err = EventSink::send(&s, &e).await.unwrap_err();
            assert_eq!(err.disposition, want, "{code}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("http://{addr}/status/{code}")),
                "{msg}"
            );
            assert!(msg.contains(&code.to_string()), "{msg}");
            assert!(!msg.contains("c2NlbmV3YXRjaC10ZXN0LXNlY3JldA"), "{msg}");
        }
    }

    #[tokio::test]
    async fn timeouts_and_refused_connections_retry() {
        let (addr, _) = receiver().await;
        let e = [Event::sink_recovered("files", 1, 0)];
        let s = sink(
            format!("http://{addr}/slow?sig=t0ps3cret"),
            Duration::from_millis(200),
        );
        let err = EventSink::send(&s, &e).await.unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("timed out"), "{msg}");
        assert!(!msg.contains("t0ps3cret"), "{msg}");

        // A port nothing listens on: bind one, note it, close it.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let s = sink(format!("http://{dead}/hook"), Duration::from_secs(2));
        let err = s
            .deliver(&crate::sink::stdout::test_delivery("{}"))
            .await
            .unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
        assert!(
            err.to_string().contains(&format!("http://{dead}/hook")),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = sink("https://example.com/hook".into(), Duration::from_secs(1));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("c2NlbmV3YXRjaC10ZXN0LXNlY3JldA"), "{dbg}");
        assert!(!dbg.contains("scenewatch-test-secret"), "{dbg}");
        assert!(dbg.contains("example.com/hook"), "{dbg}");
    }

    #[test]
    fn bad_secrets_fail_at_build_without_echo() {
        let err = WebhookSink::new(&WebhookSinkConfig {
            name: "hook".into(),
            url: "https://example.com/".into(),
            secret: SecretString::from("whsec_%%%s3cr3t"),
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert_eq!(err.disposition, Disposition::Disable);
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
