//! `scenewatch health`: GET a running daemon's `/readyz`, for container HEALTHCHECKs without
//! curl: healthy (exit 0) on a 2xx, unhealthy (exit 1) otherwise, saying why. `--url` is the
//! full URL of the endpoint or the server's base address (`http://127.0.0.1:9464`, no path),
//! which means its `/readyz`; a URL that cannot be parsed is a usage error (exit 64).

use std::time::Duration;

use super::Outcome;
use crate::exit::{self, UsageError};

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A 2xx answer.
    Healthy,
    /// Any other answer, or none.
    Unhealthy,
}

impl Probe {
    /// The exit code: 0 or 1.
    pub fn exit_code(self) -> u8 {
        match self {
            Probe::Healthy => exit::OK,
            Probe::Unhealthy => exit::ERROR,
        }
    }
}

/// Probes `url` within `timeout`, printing the answer.
pub async fn run(url: &str, timeout: Duration) -> Outcome {
    let url = endpoint(url)?;
    Ok(probe(&url, timeout).await.exit_code())
}

/// The URL to probe: `url` itself when it has a path, its `/readyz` when it is a base address
/// (no path, or only `/`).
pub fn endpoint(url: &str) -> anyhow::Result<String> {
    let mut u = reqwest::Url::parse(url.trim()).map_err(|e| {
        UsageError(format!(
            "--url {url:?} is not a URL ({e}); give the daemon's address, e.g. http://127.0.0.1:9464 or http://127.0.0.1:9464/readyz"
        ))
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(UsageError(format!("--url {url:?}: the scheme must be http or https")).into());
    }
    if u.path() == "/" || u.path().is_empty() {
        u.set_path("/readyz");
    }
    Ok(u.to_string())
}

async fn probe(url: &str, timeout: Duration) -> Probe {
    let client = match crate::tls::client_builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unhealthy: cannot build an HTTP client: {e}");
            return Probe::Unhealthy;
        }
    };
    match client.get(url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status.is_success() {
                println!("healthy: {url} answered {status} {}", body.trim());
                Probe::Healthy
            } else {
                println!("unhealthy: {url} answered {status} {}", body.trim());
                Probe::Unhealthy
            }
        }
        Err(e) => {
            println!("unhealthy: {url}: {e}");
            Probe::Unhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_address_means_its_readyz_and_a_full_url_is_kept() {
        assert_eq!(
            endpoint("http://127.0.0.1:9464").unwrap(),
            "http://127.0.0.1:9464/readyz"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9464/").unwrap(),
            "http://127.0.0.1:9464/readyz"
        );
        assert_eq!(
            endpoint("http://h:1/healthz").unwrap(),
            "http://h:1/healthz"
        );
        assert_eq!(
            endpoint("http://h:1/readyz?x=1").unwrap(),
            "http://h:1/readyz?x=1"
        );
        for bad in ["127.0.0.1:9464/readyz", "not a url", "ftp://h/readyz"] {
            let e = endpoint(bad).unwrap_err();
            assert_eq!(exit::code_of(&e), exit::USAGE, "{bad}: {e}");
        }
    }
}
