//! What the PostgreSQL sink and the PostgreSQL ledger share: the connection URL (its `sslmode`
//! handled here, the password never kept in it), TLS with libpq's modes, the driver's error text,
//! identifier quoting, advisory-lock keys, and the configuration checks of a URL, its password
//! (`password_file` / `password_env`) and a schema name. Nothing here logs; no message it writes
//! holds a password.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use reqwest::Url;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::checks::secret_from;
use crate::config::{Origins, Problem};

/// How the connection is protected, from the URL's `sslmode` (libpq's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is checked only against
    /// `ca_file` when one is given (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only against `ca_file` when given.
    Require,
    /// TLS, with a certificate chaining to `ca_file` or the system's roots; any host name.
    VerifyCa,
    /// TLS, with a certificate chaining to `ca_file` or the system's roots, for the host name.
    VerifyFull,
}

impl TlsMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// What a connection URL says, split into what the driver takes and what scenewatch handles.
#[derive(Debug)]
pub struct Target {
    /// Driver settings, without password; `sslmode` is already mapped.
    pub pg: tokio_postgres::Config,
    /// The TLS mode asked for (default `prefer`, as libpq).
    pub tls: TlsMode,
    /// `postgres://user@host:port/db`, for messages and receipts.
    pub shown: String,
}

/// Parses a `postgres://` URL. The driver knows only `disable`/`prefer`/`require`, so `sslmode`
/// is taken out and handled here; everything else is the driver's. Errors never echo the URL's
/// password (validated configs have none in the URL anyway).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let mut u = Url::parse(url).map_err(|e| format!("url is not valid ({e})"))?;
    let _ = u.set_password(None);
    let mut tls = TlsMode::Prefer;
    let mut rest = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                tls = TlsMode::parse(&v).ok_or_else(|| {
                    format!(
                        "sslmode={v:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
                    )
                })?
            }
            "sslrootcert" | "sslcert" | "sslkey" => {
                return Err(format!(
                    "{k} in the URL is not supported; set ca_file for the CA certificates (client certificates are not supported)"
                ));
            }
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    let mut pg = tokio_postgres::Config::from_str(u.as_str())
        .map_err(|e| format!("url is not valid for PostgreSQL ({e})"))?;
    pg.ssl_mode(match tls {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    if pg.get_application_name().is_none() {
        // Lets a DBA see who holds the connections in pg_stat_activity.
        pg.application_name("scenewatch");
    }
    let mut shown = u.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    Ok(Target {
        pg,
        tls,
        shown: shown.to_string(),
    })
}

/// The advisory lock key of a schema's migrations: stable across processes and builds, so two
/// daemons (or two sinks) migrating the same schema take turns.
pub fn migration_lock_key(schema: &str) -> i64 {
    lock_key("scenewatch schema migration", schema)
}

/// `"name"`, with quotes doubled; the config allows only `[a-z0-9_]`, this is belt and braces.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error text of the driver: the server's message with detail and hint when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            m
        }
        None => {
            // The driver's Display, with its cause chain (refused, reset, timed out).
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                let t = s.to_string();
                if !m.contains(&t) {
                    m.push_str(&format!(": {t}"));
                }
                src = s.source();
            }
            m
        }
    }
}

/// The connector for every mode (`disable` never uses it, but the pool takes one type).
pub(crate) fn tls_connector(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<MakeRustlsConnect, String> {
    let provider = crate::tls::provider();
    let roots = match (mode, ca_file) {
        (TlsMode::Disable, _) => None,
        (_, Some(path)) => Some(roots_from_file(path)?),
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => Some(system_roots()?),
        (TlsMode::Prefer | TlsMode::Require, None) => None,
    };
    let chain = match roots {
        Some(r) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(r), provider.clone())
                .build()
                .map_err(|e| format!("cannot use the CA certificates: {e}"))?,
        ),
        None => None,
    };
    let verifier = Verifier {
        chain,
        check_name: mode == TlsMode::VerifyFull,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(
            "the system has no CA certificates (install ca-certificates or set ca_file)".into(),
        );
    }
    Ok(roots)
}

/// Checks the server's certificate as the TLS mode says. Handshake signatures are always
/// verified (so the session key belongs to the presented certificate); the chain only when
/// there are roots to check against; the host name only for `verify-full`.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            // `prefer`/`require` without ca_file: encryption without authentication, as libpq.
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An advisory lock key for `purpose` on `schema` (stable across processes and builds).
pub(crate) fn lock_key(purpose: &str, schema: &str) -> i64 {
    let digest = Sha256::digest(format!("{purpose}:{schema}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(b)
}

/// Checks `{base}.url` (a `postgres://` URL with a host and a known `sslmode`) and its password
/// (in the URL, or from exactly one of `{base}.password_file` / `{base}.password_env`). Returns the
/// URL without its password and the password apart; `None` after a problem was pushed.
pub(crate) fn check_url(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    url: &str,
    password_file: &str,
    password_env: &str,
) -> Option<(String, Option<SecretString>)> {
    let before = p.len();
    let url_key = format!("{base}.url");
    let mut password_in_url = None;
    let mut clean_url = String::new();
    match Url::parse(url.trim()) {
        Ok(mut u) if matches!(u.scheme(), "postgres" | "postgresql") => {
            if let Some(pw) = u.password() {
                password_in_url = Some(pw.to_string());
                // Keep the password out of everything that may be logged.
                let _ = u.set_password(None);
            }
            if u.host_str().is_none_or(str::is_empty) {
                p.push(origins.problem(&url_key, "has no host"));
            }
            for (k, v) in u.query_pairs() {
                if k == "sslmode"
                    && !matches!(
                        v.as_ref(),
                        "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
                    )
                {
                    p.push(origins.problem(
                        &url_key,
                        format!("sslmode={v:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                    ));
                }
            }
            clean_url = u.to_string();
        }
        Ok(u) => p.push(origins.problem(
            &url_key,
            format!("scheme {:?} is not supported; use postgres://", u.scheme()),
        )),
        Err(e) => p.push(origins.problem(
            &url_key,
            if url.trim().is_empty() {
                "missing".to_string()
            } else {
                format!("not a URL ({e})")
            },
        )),
    }
    let secret = secret_from(
        origins,
        p,
        base,
        ("password_file", password_file),
        ("password_env", password_env),
    );
    let password = match (secret, password_in_url) {
        (Ok(Some(_)), Some(_)) => {
            p.push(origins.problem(
                &url_key,
                "has a password and password_file or password_env is set too; keep one",
            ));
            None
        }
        (Ok(s), u) => s.or(u),
        (Err(()), _) => None,
    };
    (p.len() == before).then(|| (clean_url, password.map(SecretString::from)))
}

/// Checks `{key}`: a plain schema name (lowercase letters, digits and `_`, at most 63, not
/// starting with a digit), which then needs no quoting (it is quoted all the same).
pub(crate) fn check_schema(
    origins: &Origins,
    p: &mut Vec<Problem>,
    key: &str,
    schema: &str,
) -> Option<String> {
    let schema = schema.trim();
    if schema.is_empty()
        || schema.len() > 63
        || !schema
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        || schema.starts_with(|ch: char| ch.is_ascii_digit())
    {
        p.push(origins.problem(
            key,
            format!("{schema:?} is not a plain identifier: lowercase letters, digits and '_', at most 63, not starting with a digit"),
        ));
        return None;
    }
    Some(schema.to_string())
}
