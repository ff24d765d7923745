//! The gateway's signature v2 check, written from the API document (§4) on purpose: the
//! simulator shares no code with `ncp::signing`, so a client signing bug cannot hide here.

use std::collections::HashMap;

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const H_TIMESTAMP: &str = "x-ncp-apigw-timestamp";
pub const H_ACCESS_KEY: &str = "x-ncp-iam-access-key";
pub const H_SIGNATURE: &str = "x-ncp-apigw-signature-v2";

/// The doc's window: more than 5 minutes either way is refused.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;

/// Why a request was not authenticated; each has its own `details` text (docs/simulator.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing(&'static str),
    TimestampNotANumber,
    TimestampOutOfWindow,
    UnknownAccessKey,
    SignatureMismatch,
}

impl AuthFailure {
    pub fn details(&self) -> String {
        match self {
            AuthFailure::Missing(h) => format!("Required header {h} is missing."),
            AuthFailure::TimestampNotANumber => {
                "Invalid timestamp: x-ncp-apigw-timestamp must be milliseconds since the epoch."
                    .into()
            }
            AuthFailure::TimestampOutOfWindow => {
                "Timestamp is more than 5 minutes away from the gateway clock.".into()
            }
            AuthFailure::UnknownAccessKey => "Invalid access key.".into(),
            AuthFailure::SignatureMismatch => "Signature does not match.".into(),
        }
    }
}

/// Checks one request. `path_with_query` is the raw request target, exactly as received.
pub fn verify(
    headers: &HeaderMap,
    method: &str,
    path_with_query: &str,
    secrets: &HashMap<String, String>,
    now_ms: i64,
) -> Result<(), AuthFailure> {
    let get = |name: &'static str| {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| name))
            .ok_or(AuthFailure::Missing(name))
    };
    let timestamp = get(H_TIMESTAMP)?.map_err(|_| AuthFailure::TimestampNotANumber)?;
    let access_key = get(H_ACCESS_KEY)?.map_err(|_| AuthFailure::UnknownAccessKey)?;
    let signature = get(H_SIGNATURE)?.map_err(|_| AuthFailure::SignatureMismatch)?;

    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthFailure::TimestampNotANumber);
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| AuthFailure::TimestampOutOfWindow)?;
    if now_ms.abs_diff(ts) > WINDOW_MS as u64 {
        return Err(AuthFailure::TimestampOutOfWindow);
    }
    let secret = secrets
        .get(access_key)
        .ok_or(AuthFailure::UnknownAccessKey)?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| AuthFailure::SignatureMismatch)?;
    // The exact timestamp string from the header is what was signed (§4).
    let string_to_sign = format!("{method} {path_with_query}\n{timestamp}\n{access_key}");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map_err(|_| AuthFailure::SignatureMismatch)?;
    mac.update(string_to_sign.as_bytes());
    // verify_slice compares in constant time, so timing does not leak the expected signature.
    mac.verify_slice(&given)
        .map_err(|_| AuthFailure::SignatureMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ts: &str, ak: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(H_ACCESS_KEY, HeaderValue::from_str(ak).unwrap());
        h.insert(H_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    /// The doc's vectors, checked by this independent implementation.
    #[test]
    fn accepts_documented_vectors_and_refuses_changes() {
        let secrets = HashMap::from([("AK_TEST".to_string(), "SK_TEST".to_string())]);
        let now = 1_700_000_000_000;
        let ok = [
            (
                "GET",
                "/api/v1/workspaces/my-workspace/projects/1234/assets/5678/scene-summary",
                "2APdY258Qo0UKztQG+jT3+kZHYuQazarWPQh106jaTY=",
            ),
            (
                "GET",
                "/photos/puppy.jpg?query1=&query2",
                "/mJ1EzdbBgHdNQmHAnXGxQ8RfeESiw9oMTj/W/jyAFE=",
            ),
            (
                "POST",
                "/vserver/v2/createServerInstances?regionCode=KR",
                "xBcE26XFU55BMjppdPT7ZY3oDrqoOedfPyAn3Cq4lUw=",
            ),
        ];
        for (m, p, s) in ok {
            let h = headers("1700000000000", "AK_TEST", s);
            assert_eq!(verify(&h, m, p, &secrets, now), Ok(()), "{m} {p}");
            assert_eq!(
                verify(&h, m, &format!("{p}x"), &secrets, now),
                Err(AuthFailure::SignatureMismatch)
            );
            assert_eq!(
                verify(&h, m, p, &secrets, now + WINDOW_MS + 1),
                Err(AuthFailure::TimestampOutOfWindow)
            );
            assert_eq!(verify(&h, m, p, &secrets, now - WINDOW_MS), Ok(()));
        }
        let h = headers("1700000000000", "OTHER", ok[0].2);
        assert_eq!(
            verify(&h, "GET", ok[0].1, &secrets, now),
            Err(AuthFailure::UnknownAccessKey)
        );
        let h = headers("17e11", "AK_TEST", ok[0].2);
        assert_eq!(
            verify(&h, "GET", ok[0].1, &secrets, now),
            Err(AuthFailure::TimestampNotANumber)
        );
        let mut h = headers("1700000000000", "AK_TEST", "not base64!");
        assert_eq!(
            verify(&h, "GET", ok[0].1, &secrets, now),
            Err(AuthFailure::SignatureMismatch)
        );
        h.remove(H_ACCESS_KEY);
        assert_eq!(
            verify(&h, "GET", ok[0].1, &secrets, now),
            Err(AuthFailure::Missing(H_ACCESS_KEY))
        );
    }
}
