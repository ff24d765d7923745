//! Fault injection: which fault a request gets (a queue set by tests first, then the seeded
//! rates) and the broken bodies themselves (reset, truncated, malformed, oversized).

use std::collections::VecDeque;
use std::io;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::rng::SplitMix64;
use super::scenario::FaultRates;

/// The fault kinds; names match the `[faults]` rate keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FaultKind {
    /// No fault: lets a test reserve clean requests while rates are on.
    #[serde(rename = "none")]
    None,
    #[serde(rename = "throttle_400")]
    Throttle400,
    #[serde(rename = "throttle_410")]
    Throttle410,
    #[serde(rename = "throttle_420")]
    Throttle420,
    #[serde(rename = "throttle_retry_after")]
    ThrottleRetryAfter,
    #[serde(rename = "http_500")]
    Http500,
    #[serde(rename = "http_503")]
    Http503,
    #[serde(rename = "http_504")]
    Http504,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "slow")]
    Slow,
    #[serde(rename = "malformed_json")]
    MalformedJson,
    #[serde(rename = "truncated")]
    Truncated,
    #[serde(rename = "oversized")]
    Oversized,
}

/// The order of `FaultRates::table`, so a draw maps to a kind.
const ORDER: [FaultKind; 12] = [
    FaultKind::Throttle400,
    FaultKind::Throttle410,
    FaultKind::Throttle420,
    FaultKind::ThrottleRetryAfter,
    FaultKind::Http500,
    FaultKind::Http503,
    FaultKind::Http504,
    FaultKind::Reset,
    FaultKind::Slow,
    FaultKind::MalformedJson,
    FaultKind::Truncated,
    FaultKind::Oversized,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::None => "none",
            FaultKind::Throttle400 => "throttle_400",
            FaultKind::Throttle410 => "throttle_410",
            FaultKind::Throttle420 => "throttle_420",
            FaultKind::ThrottleRetryAfter => "throttle_retry_after",
            FaultKind::Http500 => "http_500",
            FaultKind::Http503 => "http_503",
            FaultKind::Http504 => "http_504",
            FaultKind::Reset => "reset",
            FaultKind::Slow => "slow",
            FaultKind::MalformedJson => "malformed_json",
            FaultKind::Truncated => "truncated",
            FaultKind::Oversized => "oversized",
        }
    }

    /// The gateway answer for the kinds that stop a request before the service sees it:
    /// (HTTP status, errorCode, message, details).
    pub fn gateway(self) -> Option<(StatusCode, &'static str, &'static str, &'static str)> {
        let tmr = StatusCode::TOO_MANY_REQUESTS;
        Some(match self {
            FaultKind::Throttle400 => (tmr, "400", "Quota Exceeded", "Quota exceeded."),
            FaultKind::Throttle410 => (tmr, "410", "Throttle Limited", "Throttle limited."),
            FaultKind::Throttle420 | FaultKind::ThrottleRetryAfter => {
                (tmr, "420", "Rate Limited", "Rate limited.")
            }
            FaultKind::Http500 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "900",
                "Unexpected Error",
                "An unexpected error occurred.",
            ),
            FaultKind::Http503 => (
                StatusCode::SERVICE_UNAVAILABLE,
                "500",
                "Endpoint Error",
                "The endpoint is unavailable.",
            ),
            FaultKind::Http504 => (
                StatusCode::GATEWAY_TIMEOUT,
                "510",
                "Endpoint Timeout",
                "The endpoint timed out.",
            ),
            _ => return None,
        })
    }
}

/// One queued fault: its kind and, for the gateway kinds (throttles, 5xx), a `Retry-After`
/// header sent verbatim instead of the default (none, or `retry_after` for
/// `throttle_retry_after`), so a test can send `0`, an HTTP date or garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub kind: FaultKind,
    pub retry_after: Option<String>,
}

impl From<FaultKind> for Queued {
    fn from(kind: FaultKind) -> Self {
        Queued {
            kind,
            retry_after: None,
        }
    }
}

/// Chooses faults: queued ones first (deterministic, for tests), then one seeded draw.
#[derive(Debug)]
pub struct FaultPlan {
    pub rates: FaultRates,
    pub queued: VecDeque<Queued>,
}

/// A bound on `faults/next` counts so a typo cannot eat memory.
pub const MAX_QUEUED: usize = 100_000;

impl FaultPlan {
    pub fn next(&mut self, rng: &mut SplitMix64) -> Queued {
        if let Some(q) = self.queued.pop_front() {
            return q;
        }
        let table = self.rates.table();
        if table.iter().all(|(_, r)| *r == 0.0) {
            // Draw nothing when no rate is set, so rates=0 never consumes the stream.
            return FaultKind::None.into();
        }
        let u = rng.next_f64();
        let mut acc = 0.0;
        for ((_, rate), kind) in table.iter().zip(ORDER) {
            acc += rate;
            if u < acc {
                return kind.into();
            }
        }
        FaultKind::None.into()
    }
}

fn json_headers(resp: &mut Response) {
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
}

fn simulated(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, format!("simulated {what}"))
}

/// Headers, then a body that fails at once: hyper aborts the connection, so the client never
/// gets a complete answer.
pub fn reset(status: StatusCode) -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, io::Error>(simulated(
            io::ErrorKind::ConnectionReset,
            "connection reset",
        ))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    json_headers(&mut resp);
    resp
}

/// A Content-Length for the whole body, half of it, then an abort.
pub fn truncated(status: StatusCode, body: Vec<u8>) -> Response {
    let full = body.len();
    let half = Bytes::from(body).slice(..full / 2);
    let stream = futures_util::stream::iter([
        Ok(half),
        Err(simulated(io::ErrorKind::UnexpectedEof, "truncated body")),
    ]);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    json_headers(&mut resp);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    resp
}

/// The first half of the real body followed by an HTML fragment: never valid JSON.
pub fn malformed(status: StatusCode, body: &[u8]) -> Response {
    let mut out = body.get(..body.len() / 2).unwrap_or_default().to_vec();
    out.extend_from_slice(b"<html><body>502 Bad Gateway</body></html>");
    let mut resp = Response::new(Body::from(out));
    *resp.status_mut() = status;
    json_headers(&mut resp);
    resp
}

/// A valid-looking JSON envelope of about `bytes` bytes, streamed in 64 KiB chunks of one shared
/// buffer (never held whole); stops early when the simulator shuts down.
pub fn oversized(bytes: u64, shutdown: CancellationToken) -> Response {
    const CHUNK: usize = 64 * 1024;
    let head =
        Bytes::from_static(b"{\"code\":\"0\",\"message\":\"success\",\"result\":{\"padding\":\"");
    let tail = Bytes::from_static(b"\"}}");
    let filler = Bytes::from(vec![b'x'; CHUNK]);
    let mut left = bytes.saturating_sub((head.len() + tail.len()) as u64);
    let middle = futures_util::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        left -= n as u64;
        Some(filler.slice(..n))
    }));
    let stream = futures_util::stream::iter([head])
        .chain(middle)
        .chain(futures_util::stream::iter([tail]))
        .take_until(shutdown.cancelled_owned())
        .map(Ok::<Bytes, io::Error>);
    let mut resp = Response::new(Body::from_stream(stream));
    json_headers(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_first_then_rates_and_zero_rates_draw_nothing() {
        let mut rng = SplitMix64::new(1);
        let mut plan = FaultPlan {
            rates: FaultRates::default(),
            queued: VecDeque::from([FaultKind::Http504.into(), FaultKind::Reset.into()]),
        };
        assert_eq!(plan.next(&mut rng).kind, FaultKind::Http504);
        assert_eq!(plan.next(&mut rng).kind, FaultKind::Reset);
        let before = rng.clone().next_u64();
        assert_eq!(plan.next(&mut rng).kind, FaultKind::None);
        assert_eq!(
            rng.next_u64(),
            before,
            "zero rates must not consume randomness"
        );
        plan.rates.http_503 = 1.0;
        assert_eq!(plan.next(&mut rng).kind, FaultKind::Http503);
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let mut rng = SplitMix64::new(2);
        let mut plan = FaultPlan {
            rates: FaultRates {
                throttle_410: 0.25,
                oversized: 0.25,
                ..FaultRates::default()
            },
            queued: VecDeque::new(),
        };
        let n = 10_000;
        let hits = (0..n)
            .filter(|_| plan.next(&mut rng).kind == FaultKind::Oversized)
            .count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }
}
