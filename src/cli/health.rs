//! `scenewatch health`: GET a running daemon's `/readyz`, for container HEALTHCHECKs without
//! curl: healthy (exit 0) on a 2xx, unhealthy (exit 1) otherwise, saying why.

use std::time::Duration;

use super::Outcome;
use crate::exit;

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
    Ok(probe(url, timeout).await.exit_code())
}

async fn probe(url: &str, timeout: Duration) -> Probe {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
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
