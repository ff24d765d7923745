//! The Media Intelligence HTTP client: the only code that knows its URLs, headers and JSON.
//!
//! Each call builds its URL once, into one string that starts with the endpoint parsed when the
//! client was made, signs its path afresh with the wall clock (the HMAC keyed once, in
//! [`Credentials`]), sends it with the headers that never change prepared once, reads the answer
//! under a size cap and hands it to [`classify`](super::classify) for the one [`Verdict`] the
//! scheduler reads. It does not retry or sleep: when to call again is the
//! scheduler's decision (DESIGN.md "Polling policy").

use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::value::RawValue;

use super::classify::{Answer, Ctx, Success, classify};
use super::error::{ErrorOrigin, Operation, Verdict};
use super::model::{
    AssetPage, Generation, IndexStatus, RequestAccepted, SummaryResult, SummaryStatus, Target,
    decode_accepted, decode_asset_page, decode_index_status, decode_result_in, decode_status,
    range_in,
};
use super::signing::{
    Credentials, HEADER_ACCESS_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, Timestamp,
};

/// Default whole-request timeout (`api.timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a decompressed answer body (`api.max_body_bytes`): results of long videos
/// run to megabytes, so this is generous, but bounded so a broken server cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Service codes of the result endpoint known to mean "not completed yet". NAVER documents none
/// (API doc §2), so the default is empty: every service error of the result call is taken as
/// "not ready" anyway (`Verdict::NotReady`); a code listed here only spares its warning.
pub const DEFAULT_PENDING_CODES: &[&str] = &[];
/// `User-Agent` sent when the caller does not choose one.
pub const DEFAULT_USER_AGENT: &str = concat!("scenewatch/", env!("CARGO_PKG_VERSION"));

/// Header with the gateway's request id, which NCP support asks for.
pub const HEADER_TRACE_ID: &str = "x-ncp-trace-id";
/// Header the gateway sets on answers it produced itself.
pub const HEADER_APIGW_ORIGIN: &str = "x-ncp-apigw-response-origin";

/// Error bodies are only read for their code and message, so a few KiB are plenty; capping them
/// separately keeps a huge 5xx page classified by its status instead of as "too large".
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// Everything the client needs; validated by [`Client::new`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://mi.apigw.ntruss.com` or `http://127.0.0.1:PORT`; a trailing slash
    /// is ignored, a path prefix is kept (and signed).
    pub endpoint: String,
    pub credentials: Credentials,
    /// Whole request: connect, send, and read the full body.
    pub timeout: Duration,
    /// Cap on the decompressed body of a success answer.
    pub max_body_bytes: u64,
    /// Service codes on the result endpoint that mean "not completed yet".
    pub pending_codes: Vec<String>,
    pub user_agent: String,
}

impl ClientOptions {
    /// Options with every default but the endpoint and the key pair.
    pub fn new(endpoint: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            endpoint: endpoint.into(),
            credentials,
            timeout: DEFAULT_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            pending_codes: DEFAULT_PENDING_CODES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
        }
    }
}

/// Why a [`Client`] could not be built. Config validation should catch these first; this is the
/// last line.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("invalid api endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("api timeout must be more than zero")]
    ZeroTimeout,
    #[error("api.max_body_bytes must be more than zero")]
    ZeroBodyCap,
    #[error("building the http client failed: {0}")]
    Http(#[source] reqwest::Error),
}

/// The Media Intelligence client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The endpoint without a trailing slash.
    base: String,
    /// The endpoint as the URL parser writes it (scheme and host in lower case, the path
    /// prefix percent-encoded), without a trailing slash: the start of every request's URL.
    url_start: String,
    /// How much of `url_start` is scheme, host and port; the rest (the path prefix) is signed.
    origin_len: usize,
    /// The headers every request sends (content type, accept, the access key), made once.
    headers: HeaderMap,
    /// Why the access key cannot be sent as a header, if it cannot.
    bad_access_key: Option<String>,
    credentials: Credentials,
    timeout: Duration,
    max_body_bytes: u64,
    pending_codes: Vec<String>,
    /// Codes already warned about (see [`Client::result`]).
    warned_codes: std::sync::Mutex<std::collections::HashSet<(Operation, String)>>,
}

/// Distinct unrecognised codes warned about, at most; a server that invents a new code per
/// answer gets one last warning saying so, then silence (the metric keeps counting).
const MAX_WARNED_CODES: usize = 64;

// Written by hand so the shape is explicit; `Credentials` redacts the secret anyway.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.base)
            .field("access_key", &self.inner.credentials.access_key)
            .field("timeout", &self.inner.timeout)
            .field("max_body_bytes", &self.inner.max_body_bytes)
            .field("pending_codes", &self.inner.pending_codes)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, ClientBuildError> {
        let base = opts.endpoint.trim().trim_end_matches('/').to_owned();
        let bad = |reason: &str| ClientBuildError::Endpoint {
            endpoint: opts.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        // User info would be sent on every request and shown in every log line.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain a user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not contain a query or fragment"));
        }
        // Without a query or fragment (refused above) the parser's text is origin + path.
        let origin_len = url.as_str().len() - url.path().len();
        let url_start = url.as_str().trim_end_matches('/').to_owned();
        let mut headers = HeaderMap::with_capacity(8);
        // Documented as required on GETs too (API doc §4).
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let bad_access_key = match HeaderValue::from_str(&opts.credentials.access_key) {
            Ok(v) => {
                headers.insert(HeaderName::from_static(HEADER_ACCESS_KEY), v);
                None
            }
            // Refused at every call, as the request builder would (config validation should
            // have caught it first).
            Err(e) => Some(format!("the access key is not a valid header value: {e}")),
        };
        if opts.timeout.is_zero() {
            return Err(ClientBuildError::ZeroTimeout);
        }
        if opts.max_body_bytes == 0 {
            return Err(ClientBuildError::ZeroBodyCap);
        }
        let http = crate::tls::client_builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .user_agent(opts.user_agent.clone())
            // A redirect would change the signed path and could carry the signature to another
            // host: surface it as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ClientBuildError::Http)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                url_start,
                origin_len,
                headers,
                bad_access_key,
                credentials: opts.credentials,
                timeout: opts.timeout,
                max_body_bytes: opts.max_body_bytes,
                pending_codes: opts.pending_codes,
                warned_codes: std::sync::Mutex::default(),
            }),
        })
    }

    /// The endpoint as configured, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        &self.inner.base
    }

    /// The path (no host) of one call, for logs and `scenewatch sign`. For the index-level
    /// status and cancel of a target without a scene summary id, the id segment is the literal
    /// placeholder `{scene_summary_id}`; those calls are refused before sending.
    pub fn path_for(&self, op: Operation, generation: Generation, t: &Target) -> String {
        path_for(op, generation, t)
    }

    /// The HTTP method of one call.
    pub fn method_for(&self, op: Operation, generation: Generation) -> &'static str {
        method_name(op, generation)
    }

    /// Reads the summary status. The index-level endpoint needs `t.scene_summary_id`; without it
    /// the answer is `Permanent` (origin `Client`): poll [`Client::result`] instead.
    pub async fn status(&self, generation: Generation, t: &Target) -> Verdict<SummaryStatus> {
        let op = Operation::Status;
        if let Some(v) = self.refuse_without_sid(op, generation, t) {
            return v;
        }
        self.call(op, generation, t, None, |ctx, s| {
            let Some(result) = s.result else {
                return ctx.decode_failure(None, "answer has no result object");
            };
            match decode_status(result) {
                Ok(st) => Verdict::Ok(st),
                Err(e) => ctx.decode_failure(None, format!("unexpected status result: {e}")),
            }
        })
        .await
    }

    /// Reads the summary result. "Not completed yet" (a code in `pending_codes`) is `Pending`;
    /// any other service error is `NotReady`, warned about once per code (with its message and
    /// trace id) for the life of this client; a well-formed result without `sceneSummaryInfo` is
    /// `Ok` with `info: None`.
    pub async fn result(&self, generation: Generation, t: &Target) -> Verdict<SummaryResult> {
        let op = Operation::Result;
        let url = self.url_for(op, generation, t);
        // Decoded in the answer's own buffer: a result of megabytes is not copied (the body
        // becomes `raw`).
        let v = self
            .call_owned(
                op,
                method_for(op, generation),
                url,
                None,
                |ctx, body, at| {
                    let Some(at) = at else {
                        return ctx.decode_failure(None, "answer has no result object");
                    };
                    match decode_result_in(body, at) {
                        Ok(r) => Verdict::Ok(r),
                        Err(e) => {
                            ctx.decode_failure(None, format!("unexpected summary result: {e}"))
                        }
                    }
                },
            )
            .await;
        if let Verdict::NotReady(e) = &v {
            self.warn_unrecognised(e);
        }
        v
    }

    /// One warning the first time a code is taken as "not ready" without being known.
    fn warn_unrecognised(&self, e: &super::ApiError) {
        let code = e.code.clone().unwrap_or_default();
        let first = {
            let mut seen = self
                .inner
                .warned_codes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = seen.len();
            match n {
                _ if seen.contains(&(e.operation, code.clone())) => None,
                _ if n < MAX_WARNED_CODES => {
                    seen.insert((e.operation, code.clone()));
                    Some(false)
                }
                MAX_WARNED_CODES => {
                    seen.insert((e.operation, String::new()));
                    Some(true)
                }
                _ => None,
            }
        };
        match first {
            Some(false) => tracing::warn!(
                operation = %e.operation,
                http_status = e.http_status.unwrap_or_default(),
                code = %code,
                message = %e.message,
                trace_id = e.trace_id.as_deref().unwrap_or(""),
                "The result call answered with a service error whose code is not in api.pending_codes; it is taken as \"not completed yet\" and the watch keeps waiting (until max_wait). Add the code to api.pending_codes to silence this warning; it is shown once per code."
            ),
            Some(true) => tracing::warn!(
                operation = %e.operation,
                "More than {MAX_WARNED_CODES} distinct unrecognised codes from the result call; no more warnings about new ones (scenewatch_unrecognised_answers_total keeps counting)."
            ),
            None => {}
        }
    }

    /// Requests a summary: all scenes when `scene_ids` is `None`, else a partial re-run of those
    /// scenes. `locale` exists only for full runs on the asset-level API and is ignored (with a
    /// debug line) otherwise.
    pub async fn request(
        &self,
        generation: Generation,
        t: &Target,
        scene_ids: Option<&[u64]>,
        locale: Option<&str>,
    ) -> Verdict<RequestAccepted> {
        let body = request_body(generation, scene_ids, locale);
        if locale.is_some() && (generation == Generation::Index || scene_ids.is_some()) {
            tracing::debug!(
                index_id = %t.index_id,
                "Locale ignored: only full asset-level runs take one."
            );
        }
        self.call(Operation::Request, generation, t, Some(body), |_, s| {
            Verdict::Ok(decode_accepted(s.result, s.body))
        })
        .await
    }

    /// Cancels a running or queued summary. The index-level endpoint needs `t.scene_summary_id`.
    pub async fn cancel(&self, generation: Generation, t: &Target) -> Verdict<()> {
        let op = Operation::Cancel;
        if let Some(v) = self.refuse_without_sid(op, generation, t) {
            return v;
        }
        // The asset-level cancel is a POST; an empty object is the least surprising body.
        let body = (generation == Generation::Asset).then(|| b"{}".to_vec());
        self.call(op, generation, t, body, |_, _| Verdict::Ok(()))
            .await
    }

    fn refuse_without_sid<T>(
        &self,
        op: Operation,
        generation: Generation,
        t: &Target,
    ) -> Option<Verdict<T>> {
        if generation != Generation::Index || t.scene_summary_id.is_some() {
            return None;
        }
        let ctx = Ctx {
            op,
            path: &path_for(op, generation, t),
            http_status: None,
            trace_id: None,
        };
        let hint = match op {
            Operation::Status => "; poll the result endpoint instead",
            _ => "",
        };
        Some(Verdict::Permanent(ctx.error(
            ErrorOrigin::Client,
            None,
            format!(
                "the index-level {op} call needs a scene summary id, and the watch has none{hint}"
            ),
            None,
        )))
    }

    /// Reads the asset's index (analysis) status: its latest index, once analysis completed
    /// (API doc §6).
    pub async fn index_status(&self, t: &Target) -> Verdict<IndexStatus> {
        let mut url = self.url_buf();
        push_asset_path(&mut url, t);
        url.push_str("/index/status");
        self.call_at(Operation::IndexStatus, Method::GET, url, None, |ctx, s| {
            let Some(result) = s.result else {
                return ctx.decode_failure(None, "answer has no result object");
            };
            match decode_index_status(result) {
                Ok(st) => Verdict::Ok(st),
                Err(e) => ctx.decode_failure(None, format!("unexpected index status: {e}")),
            }
        })
        .await
    }

    /// Reads page `page_num` (of `page_size`, at most 1,000) of a project's assets (API doc §6).
    pub async fn list_assets(
        &self,
        workspace: &str,
        project_id: &str,
        page_num: u64,
        page_size: u64,
    ) -> Verdict<AssetPage> {
        let url = self.list_url(workspace, project_id, page_num, page_size);
        self.call_at(Operation::ListAssets, Method::GET, url, None, |ctx, s| {
            let Some(result) = s.result else {
                return ctx.decode_failure(None, "answer has no result object");
            };
            match decode_asset_page(result) {
                Ok(p) => Verdict::Ok(p),
                Err(e) => ctx.decode_failure(None, format!("unexpected asset list: {e}")),
            }
        })
        .await
    }

    /// One signed exchange, classified, then decoded by `decode` on success.
    async fn call<T>(
        &self,
        op: Operation,
        generation: Generation,
        t: &Target,
        body: Option<Vec<u8>>,
        decode: impl FnOnce(&Ctx<'_>, Success<'_>) -> Verdict<T>,
    ) -> Verdict<T> {
        let method = method_for(op, generation);
        let url = self.url_for(op, generation, t);
        self.call_at(op, method, url, body, decode).await
    }

    /// The URL of one call on `t`.
    fn url_for(&self, op: Operation, generation: Generation, t: &Target) -> String {
        let mut url = self.url_buf();
        push_path(&mut url, op, generation, t);
        url
    }

    /// The URL of one page of a project's assets.
    fn list_url(&self, workspace: &str, project_id: &str, page_num: u64, page_size: u64) -> String {
        let mut url = self.url_buf();
        url.push_str("/api/v1/workspaces/");
        push_seg(&mut url, workspace);
        url.push_str("/projects/");
        push_seg(&mut url, project_id);
        let _ = write!(url, "/assets?pageNum={page_num}&pageSize={page_size}");
        url
    }

    /// A string holding the start of every request's URL (the endpoint), with room for a path.
    fn url_buf(&self) -> String {
        let mut url = String::with_capacity(self.inner.url_start.len() + 160);
        url.push_str(&self.inner.url_start);
        url
    }

    /// [`Client::call`] for a URL built by the caller on [`Client::url_buf`].
    async fn call_at<T>(
        &self,
        op: Operation,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        decode: impl FnOnce(&Ctx<'_>, Success<'_>) -> Verdict<T>,
    ) -> Verdict<T> {
        self.call_owned(op, method, url, body, |ctx, body, at| {
            // `at` is where the envelope's parser found `result`, so it is one JSON value.
            let result = match at.map(|at| {
                body.get(at)
                    .and_then(|b| serde_json::from_slice::<&RawValue>(b).ok())
            }) {
                None => None,
                Some(Some(r)) => Some(r),
                Some(None) => return ctx.decode_failure(None, "answer has no result object"),
            };
            decode(
                ctx,
                Success {
                    result,
                    body: &body,
                },
            )
        })
        .await
    }

    /// One signed exchange, classified, then decoded on success by `decode`, which is given the
    /// answer's body and where its `result` lies in it (`None`: no result).
    async fn call_owned<T>(
        &self,
        op: Operation,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        decode: impl FnOnce(&Ctx<'_>, Vec<u8>, Option<Range<usize>>) -> Verdict<T>,
    ) -> Verdict<T> {
        let mut raw = match self.exchange(op, method, url, body).await {
            Ok(raw) => raw,
            Err(v) => return v,
        };
        let body_bytes = raw.body.len();
        let answer = Answer {
            http_status: raw.status,
            retry_after: raw.retry_after.as_deref(),
            trace_id: raw.trace_id.as_deref(),
            apigw_origin: raw.apigw_origin,
            body: &raw.body,
        };
        let classified = classify(
            op,
            &raw.path,
            &answer,
            &self.inner.pending_codes,
            crate::clock::wall_now(),
        )
        .split::<T>()
        .map(|s| s.result.map(|r| range_in(&raw.body, r.get())));
        let ctx = Ctx {
            op,
            path: &raw.path,
            http_status: Some(raw.status),
            trace_id: raw.trace_id.as_deref(),
        };
        let verdict = match classified {
            Ok(Some(None)) => ctx.decode_failure(None, "answer has no result object"),
            Ok(at) => decode(&ctx, std::mem::take(&mut raw.body), at.flatten()),
            Err(failure) => failure,
        };
        tracing::debug!(
            operation = %op,
            path = %raw.path,
            http_status = raw.status,
            trace_id = raw.trace_id.as_deref().unwrap_or(""),
            body_bytes,
            verdict = verdict.kind(),
            "Media Intelligence answered."
        );
        verdict
    }

    /// Sends one signed request and reads the answer under the cap. `Err` carries the verdict of
    /// an exchange that produced no classifiable answer (transport failure, oversized body).
    #[allow(
        clippy::result_large_err,
        reason = "the Err is the verdict the caller returns as is; boxing it would only add an allocation"
    )]
    async fn exchange<T>(
        &self,
        op: Operation,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<RawAnswer, Verdict<T>> {
        let (parsed, path) = match self.split_url(url) {
            Ok(u) => u,
            Err((url, e)) => {
                let ctx = Ctx {
                    op,
                    path: &url,
                    http_status: None,
                    trace_id: None,
                };
                return Err(Verdict::Permanent(ctx.error(
                    ErrorOrigin::Client,
                    None,
                    format!("cannot build the request url: {e}"),
                    None,
                )));
            }
        };
        let ctx = Ctx {
            op,
            path: &path,
            http_status: None,
            trace_id: None,
        };
        if let Some(why) = &self.inner.bad_access_key {
            return Err(Verdict::Permanent(ctx.error(
                ErrorOrigin::Client,
                None,
                format!("cannot build the request: {why}"),
                None,
            )));
        }
        let ts = now_ms();
        let signature = self.inner.credentials.signature(method.as_str(), &path, ts);
        let mut headers = self.inner.headers.clone();
        // Digits and base64: always valid header values.
        if let (Ok(ts), Ok(sig)) = (
            HeaderValue::from_str(Timestamp::new(ts).as_str()),
            HeaderValue::from_bytes(signature.as_bytes()),
        ) {
            headers.insert(HeaderName::from_static(HEADER_TIMESTAMP), ts);
            headers.insert(HeaderName::from_static(HEADER_SIGNATURE), sig);
        }
        let mut req = reqwest::Request::new(method, parsed);
        *req.headers_mut() = headers;
        if let Some(b) = body {
            *req.body_mut() = Some(b.into());
        }
        let mut resp = match self.inner.http.execute(req).await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failure(&ctx, &e, "sending the request failed")),
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let trace_id = header(HEADER_TRACE_ID);
        let retry_after = header(RETRY_AFTER.as_str());
        let apigw_origin =
            header(HEADER_APIGW_ORIGIN).is_some_and(|v| v.eq_ignore_ascii_case("APIGW"));
        let ctx = Ctx {
            http_status: Some(status),
            trace_id: trace_id.as_deref(),
            ..ctx
        };
        let success = (200..300).contains(&status);
        let cap = self.inner.max_body_bytes;
        let too_large = |seen: &str| {
            Verdict::Retryable {
                after: None,
                error: ctx.error(
                ErrorOrigin::TooLarge,
                None,
                format!(
                    "answer body {seen} exceeds api.max_body_bytes = {cap}; raise it if this result is genuine"
                ),
                None,
            ),
            }
        };
        // Content-Length is the compressed size when gzip is on (reqwest then reports none), so
        // this is only a shortcut; the count while reading is the real guard.
        if success && resp.content_length().is_some_and(|n| n > cap) {
            let n = resp.content_length().unwrap_or_default();
            return Err(too_large(&format!("of {n} bytes (content-length)")));
        }
        let limit = if success {
            cap
        } else {
            cap.min(ERROR_BODY_LIMIT)
        };
        // One buffer of the announced size (capped), so a large body is read without the
        // buffer doubling and copying itself. Without an announced size (gzip, chunked) it grows
        // as the body arrives. A server announcing more than it sends costs at most the cap.
        let mut buf: Vec<u8> = Vec::with_capacity(
            usize::try_from(resp.content_length().unwrap_or(0).min(limit)).unwrap_or(0),
        );
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = usize::try_from(limit)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(buf.len());
                    if chunk.len() > room {
                        if success {
                            return Err(too_large(&format!("of more than {cap} bytes")));
                        }
                        // An error body is only read for its code: keep the start, drop the rest.
                        buf.extend_from_slice(&chunk[..room]);
                        break;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // Where the status alone decides the verdict, a cut-off error body does not
                // matter; elsewhere (a 4xx whose code we need) the answer is incomplete.
                Err(_) if status == 401 || status == 429 || status >= 500 => break,
                Err(e) => {
                    return Err(self.transport_failure(&ctx, &e, "reading the answer body failed"));
                }
            }
        }
        Ok(RawAnswer {
            path,
            status,
            retry_after,
            trace_id,
            apigw_origin,
            body: buf,
        })
    }

    /// Parses a URL built on [`Client::url_buf`] and gives it back with the path (and query)
    /// to sign: exactly what goes on the wire, after the parser's normalisation, including any
    /// prefix of the endpoint. That is the path as built (the string itself, the endpoint cut
    /// off, no copy) whenever the parser left it as it was, which [`seg`]'s encoding makes
    /// always; else the parser's. `Err` gives the URL back with the parser's complaint.
    fn split_url(&self, url: String) -> Result<(reqwest::Url, String), (String, String)> {
        let parsed = match reqwest::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => return Err((url, e.to_string())),
        };
        let origin = self.inner.origin_len;
        let built = url.get(origin..).unwrap_or_default();
        let as_built = url.starts_with(parsed.as_str().get(..origin).unwrap_or_default())
            && match built.split_once('?') {
                Some((p, q)) => parsed.path() == p && parsed.query() == Some(q),
                None => parsed.path() == built && parsed.query().is_none(),
            };
        let path = if as_built {
            let mut path = url;
            path.replace_range(..origin, "");
            path
        } else {
            match parsed.query() {
                Some(q) => format!("{}?{q}", parsed.path()),
                None => parsed.path().to_owned(),
            }
        };
        Ok((parsed, path))
    }

    fn transport_failure<T>(&self, ctx: &Ctx<'_>, e: &reqwest::Error, what: &str) -> Verdict<T> {
        if e.is_builder() {
            // An invalid header value (say, an access key with a newline): no retry will fix it.
            return Verdict::Permanent(ctx.error(
                ErrorOrigin::Client,
                None,
                format!("cannot build the request: {}", error_chain(e)),
                None,
            ));
        }
        let message = if e.is_timeout() {
            format!(
                "{what}: timed out after {}",
                humantime::format_duration(self.inner.timeout)
            )
        } else {
            format!("{what}: {}", error_chain(e))
        };
        Verdict::Retryable {
            after: None,
            error: ctx.error(ErrorOrigin::Transport, None, message, None),
        }
    }
}

/// An answer as read off the wire, owned so classification can borrow from it.
struct RawAnswer {
    path: String,
    status: u16,
    retry_after: Option<String>,
    trace_id: Option<String>,
    apigw_origin: bool,
    body: Vec<u8>,
}

/// The error and its sources on one line, as reqwest nests the useful part (connection reset,
/// refused) a few levels down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn now_ms() -> u64 {
    // A clock before 1970 cannot be signed meaningfully; the gateway will answer 401 and say so.
    crate::clock::wall_now_ms()
}

/// The wire name of the method of one call (API doc §1).
fn method_name(op: Operation, generation: Generation) -> &'static str {
    match (op, generation) {
        (
            Operation::Status | Operation::Result | Operation::IndexStatus | Operation::ListAssets,
            _,
        ) => "GET",
        (Operation::Request, _) => "POST",
        (Operation::Cancel, Generation::Index) => "DELETE",
        (Operation::Cancel, Generation::Asset) => "POST",
    }
}

fn method_for(op: Operation, generation: Generation) -> Method {
    match method_name(op, generation) {
        "POST" => Method::POST,
        "DELETE" => Method::DELETE,
        _ => Method::GET,
    }
}

/// Appends `/api/v1/workspaces/{w}/projects/{p}/assets/{a}`, the start of every asset's path.
fn push_asset_path(p: &mut String, t: &Target) {
    p.push_str("/api/v1/workspaces/");
    push_seg(p, &t.workspace);
    p.push_str("/projects/");
    push_seg(p, &t.project_id);
    p.push_str("/assets/");
    push_seg(p, &t.asset_id);
}

/// The path of one call (API doc §1).
pub(crate) fn path_for(op: Operation, generation: Generation, t: &Target) -> String {
    let mut p = String::with_capacity(160);
    push_path(&mut p, op, generation, t);
    p
}

/// Appends the path of one call (API doc §1) to `p`.
fn push_path(p: &mut String, op: Operation, generation: Generation, t: &Target) {
    push_asset_path(p, t);
    let sid = |p: &mut String| match t.scene_summary_id.as_deref() {
        Some(sid) => push_seg(p, sid),
        None => p.push_str("{scene_summary_id}"),
    };
    match generation {
        Generation::Index => {
            p.push_str("/indexes/");
            push_seg(p, &t.index_id);
            p.push_str("/scene-summaries");
            match op {
                Operation::Request | Operation::Result => {}
                Operation::IndexStatus | Operation::ListAssets => {}
                Operation::Status => {
                    p.push('/');
                    sid(p);
                    p.push_str("/status");
                }
                Operation::Cancel => {
                    p.push('/');
                    sid(p);
                }
            }
        }
        Generation::Asset => {
            p.push_str("/scene-summary");
            match op {
                Operation::Request | Operation::Result => {}
                Operation::IndexStatus | Operation::ListAssets => {}
                Operation::Status => p.push_str("/status"),
                Operation::Cancel => p.push_str("/cancel"),
            }
        }
    }
}

/// Appends one path segment, percent-encoded. Ids are validated upstream to `[A-Za-z0-9._-]`,
/// which pass unchanged; anything else is encoded so it can never add a segment or a query.
fn push_seg(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `{"sceneIds":[…]}` for a partial run, `{"locale":…}` for a full asset-level run, else `{}`.
fn request_body(
    generation: Generation,
    scene_ids: Option<&[u64]>,
    locale: Option<&str>,
) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    if let Some(ids) = scene_ids {
        m.insert("sceneIds".into(), serde_json::Value::from(ids.to_vec()));
    }
    // `locale` exists on the asset level only, and for full runs only (API doc §2).
    if let (Some(l), Generation::Asset, None) = (locale, generation, scene_ids) {
        m.insert("locale".into(), serde_json::Value::from(l));
    }
    serde_json::Value::Object(m).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ncp::ApiError;
    use crate::ncp::signing::sign;

    fn seg(s: &str) -> String {
        let mut out = String::new();
        push_seg(&mut out, s);
        out
    }

    fn target(sid: Option<&str>) -> Target {
        Target {
            workspace: "my-workspace".into(),
            project_id: "1234".into(),
            asset_id: "5678".into(),
            index_id: "1001".into(),
            scene_summary_id: sid.map(String::from),
        }
    }

    fn client(endpoint: &str) -> Client {
        Client::new(ClientOptions::new(
            endpoint,
            Credentials::new("AK_TEST", "SK_SECRET_VALUE"),
        ))
        .unwrap()
    }

    #[test]
    fn paths_of_both_generations() {
        let c = client("https://mi.apigw.ntruss.com/");
        let t = target(Some("101"));
        let pre = "/api/v1/workspaces/my-workspace/projects/1234/assets/5678";
        let cases = [
            (
                Operation::Request,
                Generation::Index,
                "POST",
                "/indexes/1001/scene-summaries",
            ),
            (
                Operation::Status,
                Generation::Index,
                "GET",
                "/indexes/1001/scene-summaries/101/status",
            ),
            (
                Operation::Result,
                Generation::Index,
                "GET",
                "/indexes/1001/scene-summaries",
            ),
            (
                Operation::Cancel,
                Generation::Index,
                "DELETE",
                "/indexes/1001/scene-summaries/101",
            ),
            (
                Operation::Request,
                Generation::Asset,
                "POST",
                "/scene-summary",
            ),
            (
                Operation::Status,
                Generation::Asset,
                "GET",
                "/scene-summary/status",
            ),
            (
                Operation::Result,
                Generation::Asset,
                "GET",
                "/scene-summary",
            ),
            (
                Operation::Cancel,
                Generation::Asset,
                "POST",
                "/scene-summary/cancel",
            ),
        ];
        for (op, g, method, tail) in cases {
            assert_eq!(c.path_for(op, g, &t), format!("{pre}{tail}"), "{op} {g}");
            assert_eq!(c.method_for(op, g), method, "{op} {g}");
        }
        assert_eq!(
            c.path_for(Operation::Status, Generation::Index, &target(None)),
            format!("{pre}/indexes/1001/scene-summaries/{{scene_summary_id}}/status")
        );
        assert_eq!(c.endpoint(), "https://mi.apigw.ntruss.com");
    }

    #[test]
    fn odd_ids_are_percent_encoded() {
        let mut t = target(Some("a/b"));
        t.workspace = "w s?x#y%".into();
        let p = path_for(Operation::Status, Generation::Index, &t);
        assert_eq!(
            p,
            "/api/v1/workspaces/w%20s%3Fx%23y%25/projects/1234/assets/5678/indexes/1001/scene-summaries/a%2Fb/status"
        );
        assert_eq!(seg("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(seg("한"), "%ED%95%9C");
    }

    /// The URL a call builds in one string on the parsed endpoint, and the path it signs, are
    /// what the former construction gave: the configured endpoint and the call's path joined,
    /// parsed, and the path (and query) read back from the parsed URL.
    #[test]
    fn built_urls_and_signed_paths_are_the_fresh_ones() {
        let odd = [
            "plain-1.2_3~",
            "w s?x#y%",
            "a/b",
            "한국",
            "%2e%2E",
            "..",
            ";,=&+$@!'()*[]",
            "\\ back\tslash\n",
            "{scene_summary_id}",
        ];
        let endpoints = [
            "https://mi.apigw.ntruss.com",
            "https://mi.apigw.ntruss.com/",
            "HTTP://Example.COM:80/Pre fix/",
            "http://127.0.0.1:8080/a%2Fb/c",
            "http://[::1]:9/x/../y",
        ];
        let ops = [
            (Operation::Status, Generation::Index),
            (Operation::Result, Generation::Index),
            (Operation::Cancel, Generation::Index),
            (Operation::Request, Generation::Asset),
            (Operation::Status, Generation::Asset),
            (Operation::Cancel, Generation::Asset),
        ];
        let fresh = |c: &Client, path: &str| {
            let url = reqwest::Url::parse(&format!("{}{}", c.endpoint(), path)).unwrap();
            let signed = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            (url, signed)
        };
        for ep in endpoints {
            let c = client(ep);
            for id in odd {
                let t = Target {
                    workspace: id.into(),
                    project_id: format!("p{id}"),
                    asset_id: format!("{id}a"),
                    index_id: id.into(),
                    scene_summary_id: Some(id.into()),
                };
                for (op, generation) in ops {
                    let built = c.split_url(c.url_for(op, generation, &t)).unwrap();
                    assert_eq!(
                        built,
                        fresh(&c, &path_for(op, generation, &t)),
                        "{ep} {id:?} {op}"
                    );
                }
                let mut url = c.url_buf();
                push_asset_path(&mut url, &t);
                url.push_str("/index/status");
                let path = format!(
                    "{}/index/status",
                    &path_for(Operation::Request, Generation::Asset, &t)[..path_for(
                        Operation::Request,
                        Generation::Asset,
                        &t
                    )
                    .len()
                        - "/scene-summary".len()]
                );
                assert_eq!(c.split_url(url).unwrap(), fresh(&c, &path), "{ep} {id:?}");
                let path = format!(
                    "/api/v1/workspaces/{}/projects/{}/assets?pageNum=3&pageSize=1000",
                    seg(id),
                    seg(&format!("p{id}"))
                );
                let url = c.list_url(id, &format!("p{id}"), 3, 1000);
                assert_eq!(c.split_url(url).unwrap(), fresh(&c, &path), "{ep} {id:?}");
            }
        }
    }

    #[test]
    fn request_bodies() {
        let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
        assert_eq!(s(request_body(Generation::Index, None, None)), "{}");
        assert_eq!(
            s(request_body(
                Generation::Index,
                Some(&[1, 3, 5]),
                Some("ko")
            )),
            r#"{"sceneIds":[1,3,5]}"#
        );
        assert_eq!(
            s(request_body(Generation::Asset, None, Some("ko"))),
            r#"{"locale":"ko"}"#
        );
        assert_eq!(
            s(request_body(Generation::Asset, Some(&[2]), Some("en"))),
            r#"{"sceneIds":[2]}"#
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let creds = Credentials::new("a", "b");
        for ep in [
            "",
            "mi.apigw.ntruss.com",
            "ftp://x",
            "https://user:pw@x",
            "https://x/?q=1",
            "https://x/#f",
        ] {
            assert!(
                Client::new(ClientOptions::new(ep, creds.clone())).is_err(),
                "{ep:?}"
            );
        }
        let mut o = ClientOptions::new("http://127.0.0.1:1", creds.clone());
        o.timeout = Duration::ZERO;
        assert!(matches!(Client::new(o), Err(ClientBuildError::ZeroTimeout)));
        let mut o = ClientOptions::new("http://127.0.0.1:1", creds);
        o.max_body_bytes = 0;
        assert!(matches!(Client::new(o), Err(ClientBuildError::ZeroBodyCap)));
    }

    /// Log lines written while `f` runs, as text.
    fn captured_logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_unrecognised_code_is_warned_about_once_with_its_trace_id() {
        let c = client("http://127.0.0.1:1");
        let e = |code: &str, trace: &str| ApiError {
            operation: Operation::Result,
            path: "/p".into(),
            http_status: Some(400),
            code: Some(code.into()),
            message: "Scene summary is not ready.".into(),
            details: None,
            trace_id: Some(trace.into()),
            origin: ErrorOrigin::Service,
        };
        let logs = captured_logs(|| {
            for i in 0..5 {
                c.warn_unrecognised(&e("10042", &format!("trace-{i}")));
            }
            c.warn_unrecognised(&e("20001", "trace-x"));
        });
        let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{logs}");
        assert!(
            warnings[0].contains("10042") && warnings[0].contains("trace-0"),
            "{logs}"
        );
        assert!(
            warnings[0].contains("Scene summary is not ready."),
            "{logs}"
        );
        assert!(warnings[1].contains("20001"), "{logs}");

        // A server inventing a code per answer: bounded warnings.
        let logs = captured_logs(|| {
            for i in 0..1000 {
                c.warn_unrecognised(&e(&format!("c{i}"), "t"));
            }
        });
        let n = logs.lines().filter(|l| l.contains("WARN")).count();
        assert_eq!(n, MAX_WARNED_CODES - 2 + 1, "{logs}");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = client("http://127.0.0.1:1");
        let d = format!(
            "{c:?} {:?}",
            ClientOptions::new("x", Credentials::new("AK_TEST", "SK_SECRET_VALUE"))
        );
        assert!(!d.contains("SK_SECRET_VALUE"), "{d}");
        assert!(d.contains("AK_TEST"));
    }

    #[tokio::test]
    async fn index_status_without_id_is_refused_locally() {
        let c = client("http://127.0.0.1:1");
        let v = c.status(Generation::Index, &target(None)).await;
        let Verdict::Permanent(e) = v else {
            panic!("{v:?}")
        };
        assert_eq!(e.origin, ErrorOrigin::Client);
        assert!(e.message.contains("scene summary id"), "{e}");
        assert!(matches!(
            c.cancel(Generation::Index, &target(None)).await,
            Verdict::Permanent(_)
        ));
    }

    /// Nothing listens on port 1, so this exercises the transport path without a server.
    #[tokio::test]
    async fn refused_connection_is_retryable_transport() {
        let c = client("http://127.0.0.1:1");
        let v = c.status(Generation::Asset, &target(None)).await;
        let Verdict::Retryable { after: None, error } = v else {
            panic!("{v:?}")
        };
        assert_eq!(error.origin, ErrorOrigin::Transport);
        assert_eq!(error.http_status, None);
        assert!(!error.to_string().contains("SK_SECRET_VALUE"));
    }

    /// A one-shot HTTP/1.1 server: reads the request head (and a small body), answers `response`
    /// verbatim, and hands the request text back. For what the simulator does not show: exact
    /// headers on the wire and hand-made answers.
    async fn one_shot(response: Vec<u8>) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            sock.write_all(&response).await.unwrap();
            sock.flush().await.unwrap();
            // Hold the connection open briefly, so a client that waits for more body would hang
            // (and time out) rather than see a close.
            tokio::time::sleep(Duration::from_millis(300)).await;
            String::from_utf8_lossy(&req).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    fn http(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
        for h in headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn get_carries_content_type_and_a_fresh_valid_signature() {
        let body = br#"{"code":"0","message":"success","result":{"status":"WAIT_SUMMARIZE"}}"#;
        let cl = format!("content-length: {}", body.len());
        let (base, server) =
            one_shot(http("200 OK", &[&cl, "x-ncp-trace-id: abc-123"], body)).await;
        let c = client(&format!("{base}/prefix/"));
        let v = c.status(Generation::Asset, &target(None)).await;
        assert_eq!(
            v.ok().map(|s| s.status),
            Some(crate::ncp::RemoteStatus::WaitSummarize)
        );
        let req = server.await.unwrap().to_ascii_lowercase();
        let path =
            "/prefix/api/v1/workspaces/my-workspace/projects/1234/assets/5678/scene-summary/status";
        assert!(
            req.starts_with(&format!("get {path} http/1.1\r\n")),
            "{req}"
        );
        assert!(req.contains("content-type: application/json\r\n"), "{req}");
        assert!(req.contains("x-ncp-iam-access-key: ak_test\r\n"), "{req}");
        let header = |name: &str| {
            req.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_owned)
        };
        let ts: u64 = header("x-ncp-apigw-timestamp").unwrap().parse().unwrap();
        assert!(ts.abs_diff(now_ms()) < 60_000, "timestamp {ts} is not now");
        // Recompute with the secret: the signature covers the prefixed path actually sent.
        let want = sign(
            &Credentials::new("AK_TEST", "SK_SECRET_VALUE"),
            "GET",
            path,
            ts,
        );
        assert_eq!(
            header("x-ncp-apigw-signature-v2").unwrap(),
            want.signature.to_ascii_lowercase()
        );
        assert!(!req.contains("sk_secret_value"));
    }

    #[tokio::test]
    async fn content_length_over_the_cap_fails_before_reading() {
        // The server announces 10 MiB and sends none of it: only the header can stop the read.
        let (base, _server) = one_shot(http(
            "200 OK",
            &["content-length: 10485760", "x-ncp-trace-id: t-big"],
            b"",
        ))
        .await;
        let mut o = ClientOptions::new(base, Credentials::new("AK_TEST", "SK_SECRET_VALUE"));
        o.max_body_bytes = 1024;
        o.timeout = Duration::from_secs(30);
        let c = Client::new(o).unwrap();
        let v = c.result(Generation::Asset, &target(None)).await;
        // Retryable: one oversized answer may be a broken one (the step ends the watch only
        // after a few in a row).
        let Verdict::Retryable { error: e, .. } = v else {
            panic!("{v:?}")
        };
        assert_eq!(e.origin, ErrorOrigin::TooLarge);
        assert_eq!(e.trace_id.as_deref(), Some("t-big"));
        assert!(e.message.contains("api.max_body_bytes = 1024"), "{e}");
        assert!(e.message.contains("10485760"), "{e}");
    }

    #[tokio::test]
    async fn a_huge_error_page_is_classified_by_its_status() {
        let page = vec![b'x'; 300 * 1024];
        let cl = format!("content-length: {}", page.len());
        let (base, _server) = one_shot(http(
            "503 Service Unavailable",
            &[&cl, "retry-after: Wed, 21 Oct 2099 07:28:00 GMT"],
            &page,
        ))
        .await;
        let mut o = ClientOptions::new(base, Credentials::new("AK_TEST", "SK_SECRET_VALUE"));
        o.max_body_bytes = 100 * 1024;
        let c = Client::new(o).unwrap();
        let v = c.status(Generation::Asset, &target(None)).await;
        let Verdict::Retryable {
            after: Some(after),
            error,
        } = v
        else {
            panic!("{v:?}")
        };
        assert!(after > Duration::from_secs(365 * 86_400), "{after:?}");
        assert_eq!(error.http_status, Some(503));
        assert_eq!(error.origin, ErrorOrigin::Gateway);
    }
}
