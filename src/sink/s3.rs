//! The S3-compatible object storage sink (NCP Object Storage, AWS S3, MinIO, …) through
//! `object_store`: one object per version, `{prefix}/{workspace}/{project}/{asset}/{index}/
//! {lastAnalyzedAt}.json`, then `{…}/{index}/latest.json`, both the compact envelope.
//!
//! A single PUT is atomic in S3 semantics (a reader sees the old object or the new one, never a
//! part), so no temporary key is needed. The version object is written before `latest.json`, so
//! `latest.json` never names a version that is not there yet. The same version always maps to the
//! same key and the same bytes, so a retried delivery overwrites rather than duplicates.
//!
//! `latest.json` only moves forward: before writing it, the sink asks what it holds (a HEAD
//! reading the `scenewatch-*` metadata it writes with every object, or, for an object without
//! it, a GET of the envelope) and leaves it if that version is newer (see [`super::latest`]); an
//! older version still gets its own object. The look and the PUT do not race with another
//! delivery because one drainer per sink delivers one version at a time; two sinks (or two
//! daemons) writing the same prefix for the same watch are not supported.
//!
//! The secret access key goes from the config's `SecretString` straight into the store's
//! credential provider; this type's `Debug` and every message leave it out.
//!
//! Its configuration is at the end of this file: [`RawS3Sink`] (the table as written), [`S3SinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::time::Duration;

use futures_util::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, ObjectStore, PutOptions,
    PutPayload, RetryConfig,
};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::file::is_safe_file_name;
use super::latest::{Stamp, envelope_stamp, supersedes};
use super::{Delivery, Disposition, Receipt, Sink, SinkError};
use crate::config::checks::{duration, is_loopback, secret_from};
use crate::config::{Origins, Problem};

/// The name of the object that holds the latest version of a watch.
pub const LATEST: &str = "latest.json";

/// User metadata (`x-amz-meta-…`) written with every object, so that what `latest.json` holds
/// can be learned with a HEAD instead of a GET of a body that may be megabytes.
pub const META_VERSION: &str = "scenewatch-version";
/// See [`META_VERSION`]: the envelope's `lastAnalyzedAt`.
pub const META_LAST_ANALYZED_AT: &str = "scenewatch-last-analyzed-at";
/// See [`META_VERSION`]: the envelope's `fetchedAt`.
pub const META_FETCHED_AT: &str = "scenewatch-fetched-at";

/// An outer bound for a healthcheck, whose listing may page: generous, but finite.
const HEALTHCHECK_BOUND: Duration = Duration::from_secs(60);

/// Writes result versions as objects in one bucket.
pub struct S3Sink {
    name: String,
    bucket: String,
    prefix: String,
    /// The endpoint as shown in messages (`AWS` when none is configured).
    shown_endpoint: String,
    region: String,
    store: AmazonS3,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written by hand: the store holds the credentials, so it is left out entirely rather
        // than trusting every layer's Debug to redact.
        f.debug_struct("S3Sink")
            .field("name", &self.name)
            .field("endpoint", &self.shown_endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Sink {
    /// A sink for `config`. Nothing is sent until the first delivery or healthcheck; the error
    /// (an endpoint the store cannot use) does not change by retrying, so it says `Disable`.
    pub fn new(config: &S3SinkConfig) -> Result<Self, SinkError> {
        let fail = |message: String| SinkError {
            kind: "s3",
            name: config.name.clone(),
            message,
            disposition: Disposition::Disable,
            source: None,
        };
        let client = ClientOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout)
            .with_allow_http(config.allow_http);
        // The outbox retries with its own backoff and keeps the delivery; the store's own
        // retries are kept short so a down server fails a delivery in bounded time.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: config.timeout,
            ..RetryConfig::default()
        };
        // object_store builds its reqwest client on the process's provider.
        crate::tls::install();
        let mut builder = AmazonS3Builder::new()
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(config.secret_access_key.expose_secret())
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(client)
            .with_retry(retry);
        let shown_endpoint = match &config.endpoint {
            Some(e) => {
                let endpoint = store_endpoint(e, &config.bucket, config.path_style)
                    .map_err(|m| fail(format!("endpoint {e}: {m}")))?;
                builder = builder.with_endpoint(endpoint);
                e.clone()
            }
            None => "AWS".to_string(),
        };
        let store = builder
            .build()
            .map_err(|e| fail(format!("cannot build the S3 client: {e}")))?;
        Ok(Self {
            name: config.name.clone(),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            shown_endpoint,
            region: config.region.clone(),
            store,
        })
    }

    /// The key of a version's object. `lastAnalyzedAt` comes from the API, so it is used in the
    /// key only when it is plainly safe; otherwise the version id stands in.
    pub fn version_key(&self, d: &Delivery) -> Path {
        let name = if is_safe_file_name(&d.last_analyzed_at) {
            d.last_analyzed_at.as_str()
        } else {
            d.version_id.as_str()
        };
        self.key(d, &format!("{name}.json"))
    }

    /// The key of a watch's `latest.json`.
    pub fn latest_key(&self, d: &Delivery) -> Path {
        self.key(d, LATEST)
    }

    fn key(&self, d: &Delivery, file: &str) -> Path {
        // Watch ids are validated at config time (letters, digits, '-', '_', '.', no ".."), the
        // prefix has no '.'/'..' segments; each part is still percent-encoded by `Path`.
        let prefix = self.prefix.split('/').filter(|s| !s.is_empty());
        Path::from_iter(prefix.chain([
            d.key.workspace(),
            d.key.project_id(),
            d.key.asset_id(),
            d.key.index_id(),
            file,
        ]))
    }

    fn error(&self, message: String, disposition: Disposition) -> SinkError {
        SinkError {
            kind: "s3",
            name: self.name.clone(),
            message,
            disposition,
            source: None,
        }
    }

    /// Turns a store error into a message that says what to fix. Every store error is worth
    /// retrying: servers come back, buckets get created, keys get fixed and reloaded.
    fn store_error(&self, what: &str, e: object_store::Error) -> SinkError {
        // Listing errors come back as `Generic` whatever the status, so the S3 error code in
        // the answer is looked at too.
        let text = e.to_string();
        let has = |codes: &[&str]| codes.iter().any(|c| text.contains(c));
        let denied = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || has(&[
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
            "403 Forbidden",
        ]);
        let read = what.starts_with("HEAD") || what.starts_with("GET");
        let no_bucket = has(&["NoSuchBucket"])
            || (what.starts_with("PUT") && matches!(e, object_store::Error::NotFound { .. }));
        let hint = if denied && read {
            format!(
                "; the server refused the request: check access_key_id, the secret access key, \
                 region {:?}, the clock, and that the key may read objects in bucket {:?} \
                 (s3:GetObject: the sink reads latest.json before replacing it)",
                self.region, self.bucket
            )
        } else if denied {
            format!(
                "; the server refused the request: check access_key_id, the secret access key, \
                 region {:?}, the clock, and that the key may write to bucket {:?}",
                self.region, self.bucket
            )
        } else if no_bucket {
            format!(
                "; bucket {:?} does not exist at {} (create it, or fix bucket, endpoint or \
                 path_style)",
                self.bucket, self.shown_endpoint
            )
        } else {
            String::new()
        };
        let mut err = self.error(
            format!(
                "{what} s3://{}/… at {}: {e}{hint}",
                self.bucket, self.shown_endpoint
            ),
            Disposition::Retry,
        );
        err.source = crate::cause::of(e);
        err
    }

    async fn put(&self, key: &Path, body: PutPayload, d: &Delivery) -> Result<(), SinkError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let stamp = Stamp::of(d);
        for (name, value) in [
            (META_VERSION, Some(stamp.version)),
            (META_LAST_ANALYZED_AT, Some(stamp.last_analyzed_at)),
            (META_FETCHED_AT, stamp.fetched_at),
        ] {
            // A value unfit for an HTTP header is left out; the envelope still has it.
            if let Some(v) = value.filter(|v| fits_header(v)) {
                attributes.insert(Attribute::Metadata(name.into()), v.into());
            }
        }
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(key, body, opts)
            .await
            .map(drop)
            .map_err(|e| self.store_error(&format!("PUT {key} to"), e))
    }

    /// What the object at `key` (a `latest.json`) holds: from its metadata when it has them,
    /// otherwise from its envelope; `None` when there is no object, or it is not an envelope
    /// (then the next version replaces it).
    async fn stamp_at(&self, key: &Path) -> Result<Option<Stamp>, SinkError> {
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(key, head).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error(&format!("HEAD {key} at"), e)),
            Ok(r) => {
                if let Some(stamp) = stamp_of_metadata(&r.attributes) {
                    return Ok(Some(stamp));
                }
            }
        }
        // Written by a scenewatch before the metadata, or with values unfit for headers.
        let bytes = match self.store.get_opts(key, GetOptions::default()).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error(&format!("GET {key} at"), e)),
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| self.store_error(&format!("GET {key} at"), e))?,
        };
        Ok(envelope_stamp(&bytes))
    }
}

/// Printable ASCII without surrounding blanks, short: safe as an `x-amz-meta-` value everywhere.
fn fits_header(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.trim() == v && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn stamp_of_metadata(a: &Attributes) -> Option<Stamp> {
    let get = |name: &'static str| {
        a.get(&Attribute::Metadata(name.into()))
            .map(|v: &AttributeValue| v.as_ref().to_string())
    };
    Some(Stamp {
        version: get(META_VERSION)?,
        last_analyzed_at: get(META_LAST_ANALYZED_AT)?,
        fetched_at: get(META_FETCHED_AT),
    })
}

/// The endpoint `object_store` wants: with virtual-hosted-style requests it expects the bucket
/// in the host already, while the configuration names endpoint and bucket separately.
fn store_endpoint(endpoint: &str, bucket: &str, path_style: bool) -> Result<String, String> {
    if path_style {
        return Ok(endpoint.to_string());
    }
    let mut url = Url::parse(endpoint).map_err(|e| format!("not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or_else(|| "has no host".to_string())?
        .to_string();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(
            "is an IP address; virtual-hosted-style needs a host name, set path_style = true"
                .into(),
        );
    }
    if !host.starts_with(&format!("{bucket}.")) {
        url.set_host(Some(&format!("{bucket}.{host}")))
            .map_err(|e| format!("cannot put the bucket in the host name ({e})"))?;
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl Sink for S3Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn targets(&self, d: &Delivery) -> Vec<String> {
        vec![
            format!("s3://{}/{}", self.bucket, self.version_key(d)),
            format!(
                "s3://{}/{} (unless it holds a newer version)",
                self.bucket,
                self.latest_key(d)
            ),
        ]
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let body = d.body("s3", &self.name, true)?;
            // One buffer shared by both PUTs (the payload is reference-counted).
            let payload = PutPayload::from(body);
            let version = self.version_key(d);
            self.put(&version, payload.clone(), d).await?;
            let latest = self.latest_key(d);
            match self.stamp_at(&latest).await? {
                Some(current) if !supersedes(&Stamp::of(d), &current) => {
                    // Delivered all the same: the version has its object, and the newer one
                    // stays the latest.
                    tracing::info!(sink = %self.name, version = %d.version_id, last_analyzed_at = %d.last_analyzed_at, latest_version = %current.version, latest_last_analyzed_at = %current.last_analyzed_at, "latest.json holds a newer version; left as it is.");
                }
                _ => self.put(&latest, payload, d).await?,
            }
            Ok(Receipt {
                location: format!("s3://{}/{version}", self.bucket),
            })
        })
    }

    /// Lists one level under the prefix: cheap, and it proves endpoint, bucket, signature and
    /// read permission (write permission shows on the first delivery).
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
            let listing = tokio::time::timeout(
                HEALTHCHECK_BOUND,
                self.store.list_with_delimiter(prefix.as_ref()),
            )
            .await;
            match listing {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(self.store_error("LIST", e)),
                Err(_) => Err(self.error(
                    format!(
                        "LIST s3://{}/… at {} timed out",
                        self.bucket, self.shown_endpoint
                    ),
                    Disposition::Retry,
                )),
            }
        })
    }
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

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

/// `[[sink]] type = "s3"`, validated (problems under `base`).
pub(crate) fn validate(
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

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn config(endpoint: Option<&str>, path_style: bool) -> S3SinkConfig {
        S3SinkConfig {
            name: "objects".into(),
            endpoint: endpoint.map(str::to_string),
            region: "kr-standard".into(),
            bucket: "media-summaries".into(),
            prefix: "scene/watch".into(),
            path_style,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI-s3cr3t-K7MDENG"),
            timeout: Duration::from_secs(2),
            allow_http: true,
        }
    }

    #[test]
    fn keys_follow_the_documented_layout_and_refuse_hostile_names() {
        let s = S3Sink::new(&config(Some("http://127.0.0.1:9000"), true)).unwrap();
        let mut d = crate::sink::stdout::test_delivery("{}");
        assert_eq!(
            s.version_key(&d).as_ref(),
            "scene/watch/ws/1234/5678/1001/2026-04-17T10:30:00.json"
        );
        assert_eq!(
            s.latest_key(&d).as_ref(),
            "scene/watch/ws/1234/5678/1001/latest.json"
        );
        d.last_analyzed_at = "../../x".into();
        assert_eq!(
            s.version_key(&d).as_ref(),
            format!("scene/watch/ws/1234/5678/1001/{}.json", d.version_id)
        );
    }

    #[test]
    fn metadata_says_which_version_an_object_holds_when_the_values_fit_a_header() {
        let d = crate::sink::stdout::test_delivery("{}");
        let mut a = Attributes::new();
        assert_eq!(stamp_of_metadata(&a), None);
        a.insert(
            Attribute::Metadata(META_VERSION.into()),
            d.version_id.to_string().into(),
        );
        assert_eq!(stamp_of_metadata(&a), None, "lastAnalyzedAt is needed too");
        a.insert(
            Attribute::Metadata(META_LAST_ANALYZED_AT.into()),
            d.last_analyzed_at.clone().into(),
        );
        let s = stamp_of_metadata(&a).unwrap();
        assert_eq!((s.version, s.fetched_at), (d.version_id.to_string(), None));
        assert!(fits_header("2026-04-17T10:30:00.123Z"));
        for bad in ["", " t", "t\n", "장면", &"9".repeat(257)] {
            assert!(!fits_header(bad), "{bad:?}");
        }
    }

    #[test]
    fn virtual_hosted_endpoints_get_the_bucket_in_the_host() {
        assert_eq!(
            store_endpoint("https://kr.object.ncloudstorage.com", "b-1", false).unwrap(),
            "https://b-1.kr.object.ncloudstorage.com"
        );
        assert_eq!(
            store_endpoint("https://b-1.example.com", "b-1", false).unwrap(),
            "https://b-1.example.com"
        );
        assert_eq!(
            store_endpoint("http://127.0.0.1:9000", "b-1", true).unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(store_endpoint("http://127.0.0.1:9000", "b-1", false).is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = S3Sink::new(&config(Some("https://kr.object.ncloudstorage.com"), false)).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("media-summaries"), "{dbg}");
    }

    #[tokio::test]
    async fn a_dead_server_is_retried_and_the_message_names_it_without_the_secret() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let s = S3Sink::new(&config(Some(&format!("http://{dead}")), true)).unwrap();
        let err = s
            .deliver(&crate::sink::stdout::test_delivery("{}"))
            .await
            .unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&dead.to_string()), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        let err = s.healthcheck().await.unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry, "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
