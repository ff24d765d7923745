//! The pure classification of one complete HTTP answer into a [`Verdict`] (STYLE §4, §5): no IO,
//! no clock (the caller passes `now` for `Retry-After` dates), tested by tables.
//!
//! | answer | verdict |
//! |---|---|
//! | 2xx, envelope with `code` "0" (or absent) and, for status/result, a `result` | `Ok` |
//! | 2xx, not JSON / not the envelope / `code` ≠ "0" / no `result` where one is needed | `Retryable` (decode), or `Pending` for a pending code on the result call |
//! | 2xx with an empty body, for request and cancel | `Ok` (a 204-style acknowledgement) |
//! | gateway errorCode 400 (Quota Exceeded) whatever the status | `QuotaExceeded` |
//! | 429, or gateway errorCode 410 / 420 whatever the status | `Throttled` (+ `Retry-After`) |
//! | 401, or gateway errorCode 200 / 210 | `AuthFailure` |
//! | result call, 4xx (not 401/403/413/429) or 2xx error body from the service, code in `pending_codes` | `Pending` |
//! | the same with any other code (NAVER documents none) | `NotReady` |
//! | 5xx, 408, gateway errorCode 500 / 510 / 900, or a broken JSON error body | `Retryable` (+ `Retry-After`) |
//! | any other status (4xx, 3xx: redirects are not followed, the signature covers the path) | `Permanent` |

use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;

use super::error::{ApiError, ErrorOrigin, Operation, Verdict};
use super::model::{Envelope, ErrorBody};

/// One complete answer, as read off the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer<'a> {
    pub http_status: u16,
    /// Raw `Retry-After` header value.
    pub retry_after: Option<&'a str>,
    /// `x-ncp-trace-id`.
    pub trace_id: Option<&'a str>,
    /// `x-ncp-apigw-response-origin: APIGW` was present.
    pub apigw_origin: bool,
    pub body: &'a [u8],
}

/// A successful envelope: the borrowed `result` (if any) and the whole body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Success<'a> {
    pub result: Option<&'a RawValue>,
    pub body: &'a [u8],
}

/// How much of an error body is quoted in `details` when it is not JSON.
const SNIPPET_CHARS: usize = 200;

/// Builds the [`ApiError`] fields that every verdict of one answer shares.
pub(crate) struct Ctx<'a> {
    pub op: Operation,
    pub path: &'a str,
    pub http_status: Option<u16>,
    pub trace_id: Option<&'a str>,
}

impl Ctx<'_> {
    pub fn error(
        &self,
        origin: ErrorOrigin,
        code: Option<String>,
        message: impl Into<String>,
        details: Option<String>,
    ) -> ApiError {
        ApiError {
            operation: self.op,
            path: self.path.to_owned(),
            http_status: self.http_status,
            code,
            message: message.into(),
            details,
            trace_id: self.trace_id.map(str::to_owned),
            origin,
        }
    }

    /// A garbled success answer: transient, since a retry usually gets a clean one.
    pub fn decode_failure<T>(
        &self,
        code: Option<String>,
        message: impl Into<String>,
    ) -> Verdict<T> {
        Verdict::Retryable {
            after: None,
            error: self.error(ErrorOrigin::Decode, code, message, None),
        }
    }
}

pub(crate) fn classify<'a>(
    op: Operation,
    path: &str,
    answer: &Answer<'a>,
    pending_codes: &[String],
    now: SystemTime,
) -> Verdict<Success<'a>> {
    let ctx = Ctx {
        op,
        path,
        http_status: Some(answer.http_status),
        trace_id: answer.trace_id,
    };
    let status = answer.http_status;
    // The result call before completion "returns an error", code undocumented (API doc §2):
    // a code in `pending_codes` is known to mean that; any other service code on the result
    // call most likely means it too, and must not end a watch (see `not_ready`).
    let not_ready = |error: ApiError| -> Verdict<Success<'a>> {
        let known = error
            .code
            .as_deref()
            .is_some_and(|c| pending_codes.iter().any(|p| p == c));
        if known {
            Verdict::Pending(error)
        } else {
            Verdict::NotReady(error)
        }
    };

    if (200..300).contains(&status) {
        let env: Envelope<'a> = match serde_json::from_slice(answer.body) {
            Ok(env) => env,
            Err(_)
                if matches!(op, Operation::Request | Operation::Cancel)
                    && answer.body.trim_ascii().is_empty() =>
            {
                return Verdict::Ok(Success {
                    result: None,
                    body: answer.body,
                });
            }
            Err(e) => {
                return ctx.decode_failure(None, format!("malformed answer body: {e}"));
            }
        };
        // A 2xx that carries a service error instead of a result: on the result call that is the
        // service saying "not yet" with a success status; elsewhere a garbled answer.
        let service_refusal = |code: Option<String>, message: Option<String>, details| {
            if op == Operation::Result && !answer.apigw_origin && code.is_some() {
                let message = message
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "summary not completed yet".into());
                return Some(not_ready(ctx.error(
                    ErrorOrigin::Service,
                    code,
                    message,
                    details,
                )));
            }
            None
        };
        if env.error.is_some() || env.response_error.is_some() {
            let eb = ErrorBody::from_nested(env.error, env.response_error);
            if !eb.gateway
                && let Some(v) = service_refusal(eb.code.clone(), eb.message.clone(), eb.details)
            {
                return v;
            }
            let msg = format!(
                "success status with an error body: {}",
                eb.message.as_deref().unwrap_or("no message")
            );
            return ctx.decode_failure(eb.code, msg);
        }
        let (code, message) = match env.code {
            Some(c) => (Some(c), env.message),
            None => (env.return_code, env.return_message.or(env.message)),
        };
        match code.as_deref() {
            None | Some("0") => {}
            Some(c) => {
                let c = c.to_owned();
                if let Some(v) = service_refusal(Some(c.clone()), message.clone(), None) {
                    return v;
                }
                let message = message.unwrap_or_default();
                return ctx.decode_failure(
                    Some(c.clone()),
                    format!("success status with code {c}: {message}"),
                );
            }
        }
        let result = env.result.filter(|r| r.get() != "null");
        if result.is_none()
            && matches!(
                op,
                Operation::Status
                    | Operation::Result
                    | Operation::IndexStatus
                    | Operation::ListAssets
            )
        {
            return ctx.decode_failure(None, "answer has no result object");
        }
        return Verdict::Ok(Success {
            result,
            body: answer.body,
        });
    }

    let retry_after = answer.retry_after.and_then(|v| parse_retry_after(v, now));
    let parsed = ErrorBody::parse(answer.body);
    let parsed_none = parsed.is_none();
    let service_shaped = parsed
        .as_ref()
        .is_some_and(|b| !b.gateway && (b.code.is_some() || b.message.is_some()));
    // The gateway's own shape, its origin header, or anything unreadable (a proxy's page): all
    // come from in front of the service.
    let origin = if service_shaped && !answer.apigw_origin {
        ErrorOrigin::Service
    } else {
        ErrorOrigin::Gateway
    };
    let gateway_code = parsed
        .as_ref()
        .filter(|b| b.gateway)
        .and_then(|b| b.code.clone());
    let (code, message, details) = match parsed {
        Some(b) if b.code.is_some() || b.message.is_some() || b.details.is_some() => (
            b.code,
            b.message.unwrap_or_else(|| reason(status)),
            b.details,
        ),
        _ => (None, reason(status), snippet(answer.body)),
    };
    let error = ctx.error(origin, code, message, details);
    let gw = gateway_code.as_deref();

    if gw == Some("400") {
        return Verdict::QuotaExceeded { retry_after, error };
    }
    if status == 429 || matches!(gw, Some("410" | "420")) {
        return Verdict::Throttled { retry_after, error };
    }
    if status == 401 || matches!(gw, Some("200" | "210")) {
        return Verdict::AuthFailure(error);
    }
    // The result call's "not completed yet", whatever its code: any 4xx the service itself
    // sent, except the statuses whose meaning is settled (auth, forbidden, too large,
    // throttled). Whether it is "not yet" or something permanent cannot be told from an
    // undocumented code; `watch::step` keeps waiting, bounded by `max_wait`.
    if op == Operation::Result
        && (400..500).contains(&status)
        && !matches!(status, 401 | 403 | 413 | 429)
        && origin == ErrorOrigin::Service
    {
        return not_ready(error);
    }
    // Half a JSON object is a garbled answer, not the service's word: retry rather than give up
    // on a watch. (A non-JSON page, say a proxy's HTML 404, is taken at its status.)
    let garbled = parsed_none && answer.body.trim_ascii_start().starts_with(b"{");
    if status >= 500 || status == 408 || matches!(gw, Some("500" | "510" | "900")) || garbled {
        return Verdict::Retryable {
            after: retry_after,
            error,
        };
    }
    Verdict::Permanent(error)
}

/// `"http 404 not found"`: the message when the body says nothing.
fn reason(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(r) => format!("http {status} {}", r.to_ascii_lowercase()),
        None => format!("http {status}"),
    }
}

/// The start of a non-JSON error body (an HTML page from a proxy), printable, for `details`.
fn snippet(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut s: String = text
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() {
        s.push('…');
    }
    Some(s)
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past means
/// "now". Unparseable values are ignored: the caller's own backoff applies.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of digits saturates rather than failing.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = crate::time::parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const PATH: &str = "/api/v1/workspaces/w/projects/1/assets/2/scene-summary";

    fn pending() -> Vec<String> {
        vec!["10100".into()]
    }

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn run(op: Operation, status: u16, body: &str, retry_after: Option<&str>) -> Verdict<()> {
        let a = Answer {
            http_status: status,
            retry_after,
            trace_id: Some("trace-1"),
            apigw_origin: false,
            body: body.as_bytes(),
        };
        classify(op, PATH, &a, &pending(), now()).map(|_| ())
    }

    /// (what, op, http status, body, expected verdict kind, expected origin, expected code)
    type Case = (
        &'static str,
        Operation,
        u16,
        String,
        &'static str,
        Option<ErrorOrigin>,
        Option<&'static str>,
    );

    #[test]
    fn table() {
        use ErrorOrigin::*;
        use Operation::*;
        let ok_status = r#"{"code":"0","message":"success","result":{"status":"SUMMARIZING"}}"#;
        let gw = |code: &str| {
            format!(r#"{{"error":{{"errorCode":"{code}","message":"m","details":"d"}}}}"#)
        };
        let gwn = |code: u32| format!(r#"{{"error":{{"errorCode":{code},"message":"m"}}}}"#);
        let cases: Vec<Case> = vec![
            ("status ok", Status, 200, ok_status.into(), "ok", None, None),
            (
                "unknown status string is still ok",
                Status,
                200,
                r#"{"code":"0","result":{"status":"NEW_THING"}}"#.into(),
                "ok",
                None,
                None,
            ),
            (
                "numeric code 0",
                Status,
                200,
                r#"{"code":0,"result":{"status":"X"}}"#.into(),
                "ok",
                None,
                None,
            ),
            (
                "absent code",
                Result,
                200,
                r#"{"result":{}}"#.into(),
                "ok",
                None,
                None,
            ),
            (
                "malformed json",
                Status,
                200,
                r#"{"code":"0","result":{"#.into(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "html on 200",
                Result,
                200,
                "<html></html>".into(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "json array",
                Result,
                200,
                "[]".into(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "empty 200 on status",
                Status,
                200,
                String::new(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "empty 200 on cancel",
                Cancel,
                200,
                String::new(),
                "ok",
                None,
                None,
            ),
            (
                "empty 204 on request",
                Request,
                204,
                "  ".into(),
                "ok",
                None,
                None,
            ),
            (
                "cancel without result",
                Cancel,
                200,
                r#"{"code":"0","message":"success"}"#.into(),
                "ok",
                None,
                None,
            ),
            (
                "status missing result",
                Status,
                200,
                r#"{"code":"0"}"#.into(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "status null result",
                Status,
                200,
                r#"{"code":"0","result":null}"#.into(),
                "retryable",
                Some(Decode),
                None,
            ),
            (
                "code not 0 on 200",
                Status,
                200,
                r#"{"code":"10001","message":"x"}"#.into(),
                "retryable",
                Some(Decode),
                Some("10001"),
            ),
            (
                "pending code on 200 result",
                Result,
                200,
                r#"{"code":"10100","message":"not yet"}"#.into(),
                "pending",
                Some(Service),
                Some("10100"),
            ),
            (
                "gateway error on 200",
                Status,
                200,
                gw("200"),
                "retryable",
                Some(Decode),
                Some("200"),
            ),
            (
                "service pending 400",
                Result,
                400,
                r#"{"code":"10100","message":"not completed"}"#.into(),
                "pending",
                Some(Service),
                Some("10100"),
            ),
            (
                "service pending numeric",
                Result,
                400,
                r#"{"code":10100}"#.into(),
                "pending",
                Some(Service),
                Some("10100"),
            ),
            (
                "service pending wrapped",
                Result,
                404,
                r#"{"responseError":{"code":"10100","message":"m"}}"#.into(),
                "pending",
                Some(Service),
                Some("10100"),
            ),
            (
                "pending code on status op is permanent",
                Status,
                400,
                r#"{"code":"10100"}"#.into(),
                "permanent",
                Some(Service),
                Some("10100"),
            ),
            (
                "service 400",
                Request,
                400,
                r#"{"code":"10001","message":"Invalid Request."}"#.into(),
                "permanent",
                Some(Service),
                Some("10001"),
            ),
            (
                "service 404 no summary",
                Result,
                404,
                r#"{"code":"10404","message":"none"}"#.into(),
                "not_ready",
                Some(Service),
                Some("10404"),
            ),
            // The result call's undocumented "not completed yet", in every shape NCP uses.
            (
                "unknown code, top level",
                Result,
                400,
                r#"{"code":"10042","message":"Not completed."}"#.into(),
                "not_ready",
                Some(Service),
                Some("10042"),
            ),
            (
                "unknown numeric code in responseError",
                Result,
                409,
                r#"{"responseError":{"code":20001,"message":"busy"}}"#.into(),
                "not_ready",
                Some(Service),
                Some("20001"),
            ),
            (
                "service shape inside error (no errorCode)",
                Result,
                400,
                r#"{"error":{"code":"SCENE_SUMMARY_NOT_COMPLETED","message":"m"}}"#.into(),
                "not_ready",
                Some(Service),
                Some("SCENE_SUMMARY_NOT_COMPLETED"),
            ),
            (
                "returnCode and returnMessage",
                Result,
                400,
                r#"{"returnCode":"40001","returnMessage":"not yet"}"#.into(),
                "not_ready",
                Some(Service),
                Some("40001"),
            ),
            (
                "message only",
                Result,
                400,
                r#"{"message":"summary is still running"}"#.into(),
                "not_ready",
                Some(Service),
                None,
            ),
            (
                "2xx with an unknown code on the result call",
                Result,
                200,
                r#"{"code":"10042","message":"not yet"}"#.into(),
                "not_ready",
                Some(Service),
                Some("10042"),
            ),
            (
                "2xx with returnCode on the result call",
                Result,
                200,
                r#"{"returnCode":40001,"returnMessage":"not yet"}"#.into(),
                "not_ready",
                Some(Service),
                Some("40001"),
            ),
            (
                "2xx with a service error inside error on the result call",
                Result,
                200,
                r#"{"error":{"code":"10042"}}"#.into(),
                "not_ready",
                Some(Service),
                Some("10042"),
            ),
            (
                "2xx with returnCode 0 and a result is success",
                Result,
                200,
                r#"{"returnCode":"0","result":{}}"#.into(),
                "ok",
                None,
                None,
            ),
            (
                "unknown code on the status call stays permanent",
                Status,
                400,
                r#"{"code":"10042"}"#.into(),
                "permanent",
                Some(Service),
                Some("10042"),
            ),
            (
                "service 403 on the result call is permanent",
                Result,
                403,
                r#"{"code":"10042"}"#.into(),
                "permanent",
                Some(Service),
                Some("10042"),
            ),
            (
                "service 413 on the result call is permanent",
                Result,
                413,
                r#"{"code":"10042"}"#.into(),
                "permanent",
                Some(Service),
                Some("10042"),
            ),
            (
                "gateway 404 on the result call is permanent",
                Result,
                404,
                gw("300"),
                "permanent",
                Some(Gateway),
                Some("300"),
            ),
            (
                "empty object on the result call is not the service speaking",
                Result,
                400,
                "{}".into(),
                "permanent",
                Some(Gateway),
                None,
            ),
            (
                "html 400 on the result call",
                Result,
                400,
                "<html>bad</html>".into(),
                "permanent",
                Some(Gateway),
                None,
            ),
            (
                "gateway 400/100",
                Status,
                400,
                gw("100"),
                "permanent",
                Some(Gateway),
                Some("100"),
            ),
            (
                "gateway 401/200",
                Status,
                401,
                gw("200"),
                "auth_failure",
                Some(Gateway),
                Some("200"),
            ),
            (
                "gateway 401/210 numeric",
                Status,
                401,
                gwn(210),
                "auth_failure",
                Some(Gateway),
                Some("210"),
            ),
            (
                "gateway 200 code on odd status",
                Status,
                400,
                gw("200"),
                "auth_failure",
                Some(Gateway),
                Some("200"),
            ),
            (
                "bare 401",
                Status,
                401,
                String::new(),
                "auth_failure",
                Some(Gateway),
                None,
            ),
            (
                "gateway 403/230",
                Status,
                403,
                gw("230"),
                "permanent",
                Some(Gateway),
                Some("230"),
            ),
            (
                "gateway 404/300",
                Status,
                404,
                gw("300"),
                "permanent",
                Some(Gateway),
                Some("300"),
            ),
            (
                "gateway 413/430",
                Request,
                413,
                gw("430"),
                "permanent",
                Some(Gateway),
                Some("430"),
            ),
            (
                "gateway 429/400 is a used-up quota",
                Status,
                429,
                gw("400"),
                "quota_exceeded",
                Some(Gateway),
                Some("400"),
            ),
            (
                "gateway 429/410",
                Status,
                429,
                gwn(410),
                "throttled",
                Some(Gateway),
                Some("410"),
            ),
            (
                "gateway 429/420",
                Status,
                429,
                gw("420"),
                "throttled",
                Some(Gateway),
                Some("420"),
            ),
            (
                "gateway 420 code on 400 status",
                Status,
                400,
                gw("420"),
                "throttled",
                Some(Gateway),
                Some("420"),
            ),
            (
                "429 with html",
                Status,
                429,
                "<h1>slow down</h1>".into(),
                "throttled",
                Some(Gateway),
                None,
            ),
            (
                "429 with a service body",
                Result,
                429,
                r#"{"code":"10100"}"#.into(),
                "throttled",
                Some(Service),
                Some("10100"),
            ),
            (
                "gateway 503/500",
                Status,
                503,
                gw("500"),
                "retryable",
                Some(Gateway),
                Some("500"),
            ),
            (
                "gateway 504/510",
                Status,
                504,
                gw("510"),
                "retryable",
                Some(Gateway),
                Some("510"),
            ),
            (
                "gateway 500/900",
                Status,
                500,
                gw("900"),
                "retryable",
                Some(Gateway),
                Some("900"),
            ),
            (
                "bare 502",
                Cancel,
                502,
                "bad gateway".into(),
                "retryable",
                Some(Gateway),
                None,
            ),
            (
                "408",
                Status,
                408,
                String::new(),
                "retryable",
                Some(Gateway),
                None,
            ),
            (
                "redirect",
                Status,
                302,
                String::new(),
                "permanent",
                Some(Gateway),
                None,
            ),
            (
                "unknown 4xx",
                Status,
                418,
                "{}".into(),
                "permanent",
                Some(Gateway),
                None,
            ),
        ];
        for (what, op, status, body, kind, origin, code) in cases {
            let v = run(op, status, &body, None);
            assert_eq!(v.kind(), kind, "{what}: {v:?}");
            if let Some(e) = v.error() {
                assert_eq!(Some(e.origin), origin, "{what}: {e:?}");
                assert_eq!(e.code.as_deref(), code, "{what}: {e:?}");
                assert_eq!(e.trace_id.as_deref(), Some("trace-1"), "{what}");
                assert_eq!(e.http_status, Some(status), "{what}");
                assert_eq!(e.operation, op, "{what}");
                assert_eq!(e.path, PATH, "{what}");
            } else {
                assert_eq!(origin, None, "{what}");
            }
        }
    }

    /// A service-shaped body that the gateway produced (its origin header) is the gateway's.
    #[test]
    fn apigw_origin_is_never_not_ready() {
        for (status, body) in [
            (400, r#"{"code":"10042","message":"m"}"#),
            (200, r#"{"code":"10042","message":"m"}"#),
        ] {
            let a = Answer {
                http_status: status,
                retry_after: None,
                trace_id: None,
                apigw_origin: true,
                body: body.as_bytes(),
            };
            let v = classify(Operation::Result, PATH, &a, &pending(), now()).map(|_| ());
            assert!(
                matches!(v, Verdict::Permanent(_) | Verdict::Retryable { .. }),
                "{status}: {v:?}"
            );
        }
    }

    #[test]
    fn success_borrows_the_exact_result() {
        let body = br#"{"code":"0","result": {"a" : 1} }"#;
        let a = Answer {
            http_status: 200,
            retry_after: None,
            trace_id: None,
            apigw_origin: false,
            body,
        };
        match classify(Operation::Result, PATH, &a, &[], now()) {
            Verdict::Ok(s) => assert_eq!(s.result.unwrap().get(), r#"{"a" : 1}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gateway_messages_and_details_are_kept() {
        let v = run(
            Operation::Status,
            401,
            r#"{"error":{"errorCode":"200","message":"Authentication Failed","details":"Invalid authentication information."}}"#,
            None,
        );
        let e = v.error().unwrap();
        assert_eq!(e.message, "Authentication Failed");
        assert_eq!(
            e.details.as_deref(),
            Some("Invalid authentication information.")
        );
        let shown = e.to_string();
        assert!(shown.starts_with("status /api/v1/"), "{shown}");
        for part in [
            "http 401",
            "code 200",
            "Authentication Failed: Invalid authentication information.",
            "trace id trace-1",
        ] {
            assert!(shown.contains(part), "{shown} lacks {part}");
        }
    }

    #[test]
    fn non_json_error_bodies_become_a_snippet() {
        let page = format!("<html>{}</html>", "x".repeat(500));
        let v = run(Operation::Status, 503, &page, None);
        let e = v.error().unwrap();
        assert_eq!(e.message, "http 503 service unavailable");
        let d = e.details.as_deref().unwrap();
        assert!(d.starts_with("<html>xxx") && d.ends_with('…'), "{d}");
        assert!(d.chars().count() <= SNIPPET_CHARS + 1);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let secs = run(Operation::Status, 503, "", Some("7"));
        assert_eq!(
            secs,
            Verdict::Retryable {
                after: Some(Duration::from_secs(7)),
                error: secs.error().unwrap().clone()
            }
        );
        let t = run(
            Operation::Status,
            429,
            "",
            Some("Sun, 06 Nov 1994 08:50:07 GMT"),
        );
        match t {
            Verdict::Throttled { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("{other:?}"),
        }
        let cases = [
            ("0", Some(Duration::ZERO)),
            (" 120 ", Some(Duration::from_secs(120))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(Duration::ZERO)), // in the past
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
            (
                "Tue, 29 Feb 2000 00:00:00 GMT",
                Some(Duration::from_secs(951_782_400 - 784_111_777)),
            ),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
            ("Sun, 06 Nov 1994 08:49 GMT", None),
            ("Sun 06 Nov 1994 08:49:37 GMT", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v, now()), want, "{v:?}");
        }
    }

    proptest::proptest! {
        /// No body, status or header value makes classification panic.
        #[test]
        fn never_panics(status in 0u16..1000, body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                        ra in proptest::option::of(".{0,40}"), op in 0usize..4) {
            let op = [Operation::Status, Operation::Result, Operation::Request, Operation::Cancel][op];
            let a = Answer { http_status: status, retry_after: ra.as_deref(), trace_id: None, apigw_origin: true, body: &body };
            let _ = classify(op, PATH, &a, &pending(), now());
        }
    }
}
