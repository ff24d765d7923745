//! The verdict on every Media Intelligence answer and the error it carries (STYLE §5, §10).

use std::fmt;
use std::time::Duration;

/// The calls the client makes, named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Status,
    Result,
    Request,
    Cancel,
    /// The asset's index (analysis) status, which names its latest index.
    IndexStatus,
    /// One page of a project's assets.
    ListAssets,
}

impl Operation {
    /// Lowercase name for messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Status => "status",
            Operation::Result => "result",
            Operation::Request => "request",
            Operation::Cancel => "cancel",
            Operation::IndexStatus => "index_status",
            Operation::ListAssets => "list_assets",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which layer produced a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorOrigin {
    /// The NCP API gateway (`{"error":{"errorCode":…}}`), or a non-JSON error page in front of
    /// the service.
    Gateway,
    /// Media Intelligence itself (`{"code":…}` or `{"responseError":{…}}`).
    Service,
    /// Connect, TLS, reset, timeout, body read error: no complete answer arrived.
    Transport,
    /// A complete 2xx answer that is not the documented envelope.
    Decode,
    /// The body exceeded `api.max_body_bytes`.
    TooLarge,
    /// Refused before sending: the call cannot be made with what the target holds (e.g.
    /// index-level status without a scene summary id).
    Client,
}

impl ErrorOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOrigin::Gateway => "gateway",
            ErrorOrigin::Service => "service",
            ErrorOrigin::Transport => "transport",
            ErrorOrigin::Decode => "decode",
            ErrorOrigin::TooLarge => "too_large",
            ErrorOrigin::Client => "client",
        }
    }
}

impl fmt::Display for ErrorOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything known about one failed call. It never holds request headers, so it cannot leak
/// the signature or the secret key; the trace id is what NCP support asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub operation: Operation,
    /// Path without host, as signed.
    pub path: String,
    pub http_status: Option<u16>,
    /// Gateway `errorCode` or service `code`, normalised to a string.
    pub code: Option<String>,
    pub message: String,
    /// Gateway `details`, when sent.
    pub details: Option<String>,
    /// `x-ncp-trace-id` of the answer.
    pub trace_id: Option<String>,
    pub origin: ErrorOrigin,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} failed ({}",
            self.operation, self.path, self.origin
        )?;
        if let Some(s) = self.http_status {
            write!(f, ", http {s}")?;
        }
        if let Some(c) = &self.code {
            write!(f, ", code {c}")?;
        }
        write!(f, "): {}", self.message)?;
        // The gateway's details say which check failed ("Timestamp is more than 5 minutes
        // away…", "Signature does not match."): what an operator needs to fix a 401.
        if let Some(d) = self.details.as_deref().filter(|d| *d != self.message) {
            write!(f, ": {d}")?;
        }
        if let Some(t) = &self.trace_id {
            write!(f, " (trace id {t})")?;
        }
        Ok(())
    }
}

/// The one classification of every answer (STYLE §5). The scheduler reads only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    Ok(T),
    /// The result endpoint said "not completed yet" (a code in `pending_codes`).
    Pending(ApiError),
    /// The result endpoint answered with a service error whose code is not in `pending_codes`
    /// (NAVER documents no "not completed yet" code, API doc §2): most likely "not ready", so
    /// the watch keeps waiting, but the code deserves one warning and a metric.
    NotReady(ApiError),
    /// 5xx, 408, timeouts, resets, malformed or truncated bodies. `after` is the server's
    /// `Retry-After`, when it sent one.
    Retryable {
        after: Option<Duration>,
        error: ApiError,
    },
    /// Gateway errorCode 400 `Quota Exceeded`: the account's quota is used up; a long pause of
    /// the whole client, not a short slow-down.
    QuotaExceeded {
        retry_after: Option<Duration>,
        error: ApiError,
    },
    /// 429 or gateway errorCode 410/420: slow the whole client down.
    Throttled {
        retry_after: Option<Duration>,
        error: ApiError,
    },
    /// 401 or gateway errorCode 200/210: every call with this credential will fail alike.
    AuthFailure(ApiError),
    /// Other 4xx, an oversized body, a call that cannot be made: retrying will not help.
    Permanent(ApiError),
}

impl<T> Verdict<T> {
    /// The error of every verdict but `Ok`.
    pub fn error(&self) -> Option<&ApiError> {
        match self {
            Verdict::Ok(_) => None,
            Verdict::Pending(e)
            | Verdict::NotReady(e)
            | Verdict::AuthFailure(e)
            | Verdict::Permanent(e)
            | Verdict::Retryable { error: e, .. }
            | Verdict::QuotaExceeded { error: e, .. }
            | Verdict::Throttled { error: e, .. } => Some(e),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok(_))
    }

    /// The service answered as it should (a result, or "not ready" in any of its spellings):
    /// the answer wins request budget back.
    pub fn is_good_answer(&self) -> bool {
        matches!(
            self,
            Verdict::Ok(_) | Verdict::Pending(_) | Verdict::NotReady(_)
        )
    }

    /// The success value, dropping any error.
    pub fn ok(self) -> Option<T> {
        match self {
            Verdict::Ok(t) => Some(t),
            _ => None,
        }
    }

    /// Stable lowercase name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Ok(_) => "ok",
            Verdict::Pending(_) => "pending",
            Verdict::NotReady(_) => "not_ready",
            Verdict::Retryable { .. } => "retryable",
            Verdict::Throttled { .. } => "throttled",
            Verdict::QuotaExceeded { .. } => "quota_exceeded",
            Verdict::AuthFailure(_) => "auth_failure",
            Verdict::Permanent(_) => "permanent",
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Verdict<U> {
        match self.split() {
            Ok(t) => Verdict::Ok(f(t)),
            Err(v) => v,
        }
    }

    /// The success value, or the failure retyped for another success type (failures carry none).
    #[allow(
        clippy::result_large_err,
        reason = "the Err is the verdict the caller returns as is; boxing it would only add an allocation"
    )]
    pub fn split<U>(self) -> Result<T, Verdict<U>> {
        match self {
            Verdict::Ok(t) => Ok(t),
            Verdict::Pending(e) => Err(Verdict::Pending(e)),
            Verdict::NotReady(e) => Err(Verdict::NotReady(e)),
            Verdict::Retryable { after, error } => Err(Verdict::Retryable { after, error }),
            Verdict::Throttled { retry_after, error } => {
                Err(Verdict::Throttled { retry_after, error })
            }
            Verdict::QuotaExceeded { retry_after, error } => {
                Err(Verdict::QuotaExceeded { retry_after, error })
            }
            Verdict::AuthFailure(e) => Err(Verdict::AuthFailure(e)),
            Verdict::Permanent(e) => Err(Verdict::Permanent(e)),
        }
    }

    /// Continues with `f` on success; every failure passes through unchanged.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Verdict<U>) -> Verdict<U> {
        match self.split() {
            Ok(t) => f(t),
            Err(v) => v,
        }
    }
}
