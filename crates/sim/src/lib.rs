//! The Media Intelligence simulator (`scenewatch simulate`, the demo's backend, the tests' double),
//! written from `shared/docs/ncp-media-intelligence-api.md` and sharing no code with the client
//! (`scenewatch::ncp`), so that it can catch the client's mistakes. It is a crate of its own, with
//! no dependency on `scenewatch`, so the compiler enforces that. `scenewatch` re-exports it as
//! `scenewatch::sim`. See `docs/simulator.md`.
//!
//! Layout: `scenario` (the TOML file), `draw` (the per-run draws of the [guess] answers),
//! `state` (the status machine, the assets and their indexes), `auth` (signature v2), `api` (the
//! documented routes), `discovery` (asset listing, index status, index list), `faults`,
//! `control` (`/__sim/` test routes), `server` (shared state and router), `text` / `rng` /
//! `clock` (pure helpers).

mod api;
mod auth;
mod clock;
mod control;
mod discovery;
mod draw;
mod faults;
mod rng;
mod scenario;
mod server;
mod state;
mod text;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use draw::{NOT_READY_CODES, NOT_READY_MESSAGES, NOT_READY_STATUSES};
pub use faults::FaultKind;
pub use scenario::{
    AnalysisStatus, ApiSpec, AssetSpec, Choice, CountRange, CredentialSpec, DurationRange,
    ErrorCode, ErrorEnvelope, FaultRates, GenerateSpec, HumanDuration, ListingSpec, Outcome,
    Scenario, Status,
};

/// Simulator failures: bad scenarios and unusable listeners.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("scenario is not valid: {0}")]
    Toml(String),
    #[error("scenario is invalid: {0}")]
    Invalid(String),
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A parse or validation error of one file; the message already carries the detail.
    #[error("scenario {path}: {message}")]
    InFile { path: PathBuf, message: String },
    #[error("cannot use the listener: {0}")]
    Listener(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The demo scenario, `config/simulator/demo.toml`, compiled in.
pub fn demo_scenario() -> Scenario {
    // The file ships with the binary and a test parses it, so failure here is a build bug.
    #[allow(clippy::expect_used, reason = "compiled-in file, parsed by a test")]
    Scenario::from_toml_str(include_str!("../../../config/simulator/demo.toml"))
        .expect("config/simulator/demo.toml is a valid scenario")
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// `http://IP:PORT`, ready to be the client's endpoint.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server has stopped (after the shutdown token is cancelled).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "Simulator task ended abnormally.");
        }
    }
}

/// Serves `scenario` on `listener` until `shutdown` is cancelled.
pub async fn spawn(
    scenario: Scenario,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<SimHandle, SimError> {
    let addr = listener.local_addr().map_err(SimError::Listener)?;
    let sim = Arc::new(server::Sim::new(scenario, shutdown.clone())?);
    let app = server::router(sim);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Simulator server failed.");
        }
    });
    Ok(SimHandle { addr, task })
}

/// `scenewatch simulate`: binds, logs the address and the accepted access keys (never secrets),
/// serves until `stop` resolves (the binary passes its ctrl-c / SIGTERM future, so signal
/// handling stays in one place, `scenewatch::signals`).
pub async fn run_cli(
    listen: SocketAddr,
    scenario: Option<PathBuf>,
    stop: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let scenario = match scenario {
        Some(path) => Scenario::load(&path)?,
        None => demo_scenario(),
    };
    let access_keys: Vec<String> = scenario
        .credentials
        .iter()
        .map(|c| c.access_key.clone())
        .collect();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let handle = spawn(scenario, listener, shutdown.clone()).await?;
    tracing::info!(addr = %handle.addr, "Simulator listening on {}.", handle.base_url());
    tracing::info!(access_keys = ?access_keys, "Accepting these access keys.");
    stop.await;
    tracing::info!("Shutting down the simulator.");
    shutdown.cancel();
    handle.join().await;
    Ok(())
}
