//! The one TLS crypto provider of the process: rustls with *ring*.
//!
//! Every TLS client of scenewatch (the API client and webhooks through reqwest, the S3 sink
//! through object_store's reqwest client, PostgreSQL through tokio-postgres-rustls, NATS through
//! async-nats) uses rustls, and every one of them is built with *ring*, not aws-lc-rs: aws-lc-rs
//! compiles a C library of its own, the largest single item of a cold release build and some
//! megabytes of the binary, for primitives (TLS 1.2/1.3 with ECDHE, AES-GCM, ChaCha20, ECDSA,
//! RSA, Ed25519) that *ring* has as well (docs/benchmarks.md, "Build time and binary size").
//!
//! reqwest is built with `rustls-no-provider`, so it takes the process-wide default provider,
//! which [`install`] sets. Every reqwest client is built from [`client_builder`], which installs
//! it first (cheap and idempotent), so that no client, in the daemon or in a test, can be built
//! without it; the clients that build their own (object_store, async-nats) call [`install`].

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider, for the clients that take one explicitly (PostgreSQL).
pub fn provider() -> Arc<CryptoProvider> {
    install();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A reqwest client builder on the process's provider: how every reqwest client of scenewatch
/// (and of its tests) starts.
pub fn client_builder() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}

/// Installs *ring* as the process's default rustls provider, once. Called before any reqwest
/// client is built; calling it again does nothing.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only if a provider is installed already, which then serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_builds_once_the_provider_is_installed() {
        install();
        install();
        assert!(CryptoProvider::get_default().is_some());
        client_builder()
            .build()
            .expect("an HTTP client with the process's TLS provider");
        assert!(!provider().cipher_suites.is_empty());
    }
}
