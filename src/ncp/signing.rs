//! Signature v2 of the NCP API gateway, as a pure function of its inputs (no clock, no env).
//!
//! ```text
//! string_to_sign = METHOD + " " + PATH_WITH_QUERY + "\n" + TIMESTAMP + "\n" + ACCESS_KEY
//! signature      = base64_standard(hmac_sha256(key = SECRET_KEY, msg = string_to_sign))
//! ```
//!
//! The HMAC is keyed once, when the [`Credentials`] are made (the key's inner and outer pads
//! hashed); each signature clones that state and feeds it the string to sign piece by piece, so
//! a poll neither re-keys nor builds the string unless it is asked for ([`sign`]).

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

/// An NCP key pair, with the HMAC keyed by its secret half. The secret is a [`SecretString`]
/// and the keyed state is derived from it: `Debug` shows neither.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id; not secret, shown in logs and by `scenewatch sign`.
    pub access_key: String,
    /// The secret key; only ever exposed to the HMAC below.
    secret_key: SecretString,
    /// HMAC-SHA256 keyed with the secret key, cloned for each signature.
    keyed: Hmac<Sha256>,
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
        let secret_key = SecretString::from(secret_key.into());
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret_key.expose_secret().as_bytes())
                .expect("hmac accepts any key length");
        Self {
            access_key: access_key.into(),
            secret_key,
            keyed,
        }
    }

    /// The secret key.
    pub fn secret_key(&self) -> &SecretString {
        &self.secret_key
    }

    /// The signature of one request (what [`sign`] puts in [`SignedHeaders::signature`]),
    /// without building the string to sign: the keyed HMAC is cloned and fed its pieces.
    pub fn signature(&self, method: &str, path_with_query: &str, timestamp_ms: u64) -> Signature {
        let mut mac = self.keyed.clone();
        mac.update(method.as_bytes());
        mac.update(b" ");
        mac.update(path_with_query.as_bytes());
        mac.update(b"\n");
        mac.update(Timestamp::new(timestamp_ms).as_str().as_bytes());
        mac.update(b"\n");
        mac.update(self.access_key.as_bytes());
        let mut out = [0u8; 44];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(mac.finalize().into_bytes(), &mut out)
            .expect("32 bytes are 44 characters of base64");
        debug_assert_eq!(n, 44);
        Signature(out)
    }
}

/// A signature: 44 characters of standard base64, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 44]);

impl Signature {
    /// The signature as text.
    pub fn as_str(&self) -> &str {
        // Base64 is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The signature as bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A timestamp in decimal, kept on the stack (`u64::MAX` has 20 digits).
#[derive(Clone, Copy)]
pub struct Timestamp {
    digits: [u8; 20],
    start: usize,
}

impl Timestamp {
    /// `ms` in decimal, as the timestamp header and the string to sign carry it.
    pub fn new(mut ms: u64) -> Self {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (ms % 10) as u8;
            ms /= 10;
            if ms == 0 {
                break;
            }
        }
        Self { digits, start }
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[self.start..]).unwrap_or_default()
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
    SignedHeaders {
        string_to_sign: string_to_sign(
            method,
            path_with_query,
            timestamp_ms,
            &credentials.access_key,
        ),
        timestamp: timestamp_ms.to_string(),
        access_key: credentials.access_key.clone(),
        signature: credentials
            .signature(method, path_with_query, timestamp_ms)
            .as_str()
            .to_owned(),
    }
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

    /// The keyed state prepared once and fed in pieces signs what a fresh HMAC over the whole
    /// string to sign does, and a clone is not changed by signing with the original.
    #[test]
    fn prepared_key_signs_as_a_fresh_one() {
        let creds = Credentials::new("AK_TEST", "SK_TEST");
        let copy = creds.clone();
        for (method, path, ts) in [
            ("GET", "/a/b", 0),
            ("POST", "/x?y=z", 1),
            ("DELETE", "/", u64::MAX),
            ("GET", "/api/v1/workspaces/w%20x/projects/1", TS),
        ] {
            let mut fresh = <Hmac<Sha256> as KeyInit>::new_from_slice(b"SK_TEST").unwrap();
            fresh.update(string_to_sign(method, path, ts, "AK_TEST").as_bytes());
            let want =
                base64::engine::general_purpose::STANDARD.encode(fresh.finalize().into_bytes());
            assert_eq!(creds.signature(method, path, ts).as_str(), want);
            assert_eq!(copy.signature(method, path, ts).as_str(), want);
            assert_eq!(sign(&creds, method, path, ts).signature, want);
        }
        assert_eq!(Timestamp::new(0).as_str(), "0");
        assert_eq!(Timestamp::new(u64::MAX).as_str(), u64::MAX.to_string());
        assert_eq!(Timestamp::new(TS).as_str(), "1700000000000");
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
