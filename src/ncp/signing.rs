//! Signature v2 of the NCP API gateway, as a pure function of its inputs (no clock, no env).
//!
//! ```text
//! string_to_sign = METHOD + " " + PATH_WITH_QUERY + "\n" + TIMESTAMP + "\n" + ACCESS_KEY
//! signature      = base64_standard(hmac_sha256(key = SECRET_KEY, msg = string_to_sign))
//! ```

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Header carrying the request time in milliseconds since the Unix epoch.
pub const HEADER_TIMESTAMP: &str = "x-ncp-apigw-timestamp";
/// Header carrying the access key.
pub const HEADER_ACCESS_KEY: &str = "x-ncp-iam-access-key";
/// Header carrying the signature.
pub const HEADER_SIGNATURE: &str = "x-ncp-apigw-signature-v2";

/// An NCP key pair. The secret half is a [`SecretString`]: `Debug` never shows it.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id; not secret, shown in logs and by `scenewatch sign`.
    pub access_key: String,
    /// The secret key; only ever exposed to the HMAC below.
    pub secret_key: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    /// A key pair from its two halves.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: SecretString::from(secret_key.into()),
        }
    }
}

/// Everything a signed request needs, ready to be sent as headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The exact string that was signed (contains the access key, never the secret).
    pub string_to_sign: String,
    /// Value of `x-ncp-apigw-timestamp`.
    pub timestamp: String,
    /// Value of `x-ncp-iam-access-key`.
    pub access_key: String,
    /// Value of `x-ncp-apigw-signature-v2`: 44 characters of standard base64.
    pub signature: String,
}

impl SignedHeaders {
    /// The three headers as (name, value) pairs.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_TIMESTAMP, self.timestamp.as_str()),
            (HEADER_ACCESS_KEY, self.access_key.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
        ]
    }
}

/// The string the gateway signs: `METHOD path?query\nTIMESTAMP\nACCESS_KEY`.
pub fn string_to_sign(
    method: &str,
    path_with_query: &str,
    timestamp_ms: u64,
    access_key: &str,
) -> String {
    format!("{method} {path_with_query}\n{timestamp_ms}\n{access_key}")
}

/// Signs one request. `method` is sent as given (callers pass upper case), `path_with_query`
/// has no scheme or host, `timestamp_ms` is the exact value sent in the timestamp header.
pub fn sign(
    credentials: &Credentials,
    method: &str,
    path_with_query: &str,
    timestamp_ms: u64,
) -> SignedHeaders {
    let string_to_sign = string_to_sign(
        method,
        path_with_query,
        timestamp_ms,
        &credentials.access_key,
    );
    let signature = hmac_base64(
        credentials.secret_key.expose_secret().as_bytes(),
        string_to_sign.as_bytes(),
    );
    SignedHeaders {
        string_to_sign,
        timestamp: timestamp_ms.to_string(),
        access_key: credentials.access_key.clone(),
        signature,
    }
}

/// Standard base64 of HMAC-SHA256(key, msg).
fn hmac_base64(key: &[u8], msg: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TS: u64 = 1_700_000_000_000;

    /// Every vector of `shared/docs/ncp-media-intelligence-api.md` §4.
    #[test]
    fn documented_vectors() {
        let creds = Credentials::new("AK_TEST", "SK_TEST");
        let cases = [
            (
                "POST",
                "/vserver/v2/createServerInstances?regionCode=KR",
                "xBcE26XFU55BMjppdPT7ZY3oDrqoOedfPyAn3Cq4lUw=",
            ),
            (
                "GET",
                "/api/v1/workspaces/my-workspace/projects/1234/assets/5678/indexes/1001/scene-summaries",
                "D2GxRJT52clK9QUAP3jGfFnxjOXjQwickrtn9+ondrs=",
            ),
            (
                "GET",
                "/api/v1/workspaces/my-workspace/projects/1234/assets/5678/indexes/1001/scene-summaries/101/status",
                "PHGY70vieUycl71Ngf6wKJWLtxcReBgE5asFFKmHMso=",
            ),
            (
                "GET",
                "/api/v1/workspaces/my-workspace/projects/1234/assets/5678/scene-summary/status",
                "hbVT3o59bXBN3Q1sJdcy82apODfpymoidL+KnEryfYE=",
            ),
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
        ];
        for (method, path, want) in cases {
            let got = sign(&creds, method, path, TS);
            assert_eq!(got.signature, want, "{method} {path}");
            assert_eq!(got.timestamp, "1700000000000");
            assert_eq!(got.access_key, "AK_TEST");
        }
    }

    #[test]
    fn string_to_sign_has_no_trailing_newline_and_no_secret() {
        let creds = Credentials::new("AK_TEST", "SK_TEST");
        let s = sign(&creds, "GET", "/a?b=c", TS);
        assert_eq!(s.string_to_sign, "GET /a?b=c\n1700000000000\nAK_TEST");
        assert!(!s.string_to_sign.contains("SK_TEST"));
        assert!(!format!("{creds:?}").contains("SK_TEST"));
    }

    proptest! {
        #[test]
        fn any_input_change_changes_the_signature(
            ak in "[A-Za-z0-9]{1,20}", sk in "[A-Za-z0-9]{1,40}",
            method in "(GET|POST|DELETE|PUT)", path in "/[a-z0-9/?=&-]{0,60}", ts in 0u64..4_000_000_000_000,
        ) {
            let base = sign(&Credentials::new(ak.clone(), sk.clone()), &method, &path, ts);
            prop_assert_eq!(base.signature.len(), 44);
            prop_assert!(base.signature.ends_with('='));
            let variants = [
                sign(&Credentials::new(format!("{ak}x"), sk.clone()), &method, &path, ts),
                sign(&Credentials::new(ak.clone(), format!("{sk}x")), &method, &path, ts),
                sign(&Credentials::new(ak.clone(), sk.clone()), &format!("{method}X"), &path, ts),
                sign(&Credentials::new(ak.clone(), sk.clone()), &method, &format!("{path}x"), ts),
                sign(&Credentials::new(ak.clone(), sk.clone()), &method, &path, ts + 1),
            ];
            for v in variants {
                prop_assert_eq!(v.signature.len(), 44);
                prop_assert_ne!(&v.signature, &base.signature);
            }
        }
    }
}
