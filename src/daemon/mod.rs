//! `scenewatch run`: the long-running watcher. Wiring and lifecycle: open the ledger, resume
//! every watch at its persisted time, run the scheduler and the outbox drainers, reload on
//! SIGHUP or a watch-directory change, and drain on shutdown within `shutdown_timeout`.

mod facts;
mod outbox;
mod scheduler;
mod systemd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config, Sources};
use crate::metrics::Metrics;
use crate::schedule::Clock;
use crate::sink::{self, EventSink, Sink};
use crate::state::{SharedLedger, SqliteLedger};
use crate::watch::Phase;

pub use scheduler::Command;

/// Live facts about the daemon, for readiness, metrics and systemd's STATUS line.
#[derive(Debug, Default)]
pub struct Health {
    /// Wall-clock ms of the scheduler loop's last turn.
    pub last_tick_ms: AtomicU64,
    /// The API refused the credentials; polling is paused.
    pub auth_paused: AtomicBool,
    /// Shutdown has begun.
    pub draining: AtomicBool,
    /// The configuration is loaded and the ledger open.
    pub started: AtomicBool,
    sinks_failing: Mutex<HashMap<String, bool>>,
    phases: Mutex<HashMap<Phase, u64>>,
    /// The metrics, updated where things happen and read by `/metrics`.
    pub metrics: Metrics,
}

impl Health {
    /// Records whether a sink is failing.
    pub fn set_sink_failing(&self, sink: &str, failing: bool) {
        lock(&self.sinks_failing).insert(sink.to_string(), failing);
        self.metrics.set_sink_failing(sink, failing);
    }

    /// Names of the sinks failing now.
    pub fn failing_sinks(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sinks_failing)
            .iter()
            .filter(|(_, f)| **f)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Replaces the count of watches per phase.
    pub fn set_phases(&self, counts: HashMap<Phase, u64>) {
        *lock(&self.phases) = counts;
    }

    /// Watches per phase, in phase order.
    pub fn phases(&self) -> Vec<(Phase, u64)> {
        let p = lock(&self.phases);
        Phase::ALL
            .iter()
            .map(|ph| (*ph, p.get(ph).copied().unwrap_or(0)))
            .collect()
    }

    /// One line: watches by phase (for systemd STATUS= and logs).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .phases()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| format!("{n} {p}"))
            .collect();
        if parts.is_empty() {
            "no watches".into()
        } else {
            format!("watches: {}", parts.join(", "))
        }
    }

    pub(crate) fn observe_delivery(&self, sink: &str, took: Duration) {
        self.metrics.delivery(sink, "ok", Some(took));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handles to a running daemon, for the binary and for tests.
pub struct Running {
    /// Send commands (reload) to the scheduler.
    pub commands: mpsc::Sender<Command>,
    /// Live facts.
    pub health: Arc<Health>,
}

/// Runs the daemon until `shutdown` is cancelled, then drains within the configured shutdown
/// timeout. `on_start` is called once everything is up (READY for systemd).
pub async fn run(
    sources: Sources,
    shutdown: CancellationToken,
    on_start: impl FnOnce(Running),
) -> anyhow::Result<()> {
    let config = config::load(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &config.warnings {
        warn!("{w}");
    }
    let clock = Clock::new();
    let health = Arc::new(Health::default());
    let _lock = lock_state_dir(&config.state_dir)?;
    let result_sinks = build_sinks(&config).await?;
    let event_sinks = build_event_sinks(&config).await?;
    let ledger: SharedLedger = Arc::new(
        SqliteLedger::open(
            &config.state_dir,
            result_sinks.iter().map(|s| s.name().to_string()).collect(),
            event_sinks.iter().map(|s| s.name().to_string()).collect(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot open the state database in {}",
                config.state_dir.display()
            )
        })?,
    );
    let records = ledger
        .sync_watches(&config.watches, clock.now_ms())
        .await
        .context("cannot record the configured watches in the ledger")?;

    let stop_work = CancellationToken::new();
    let tracker = TaskTracker::new();
    let result_wakes: Vec<Arc<Notify>> = result_sinks
        .iter()
        .map(|_| Arc::new(Notify::new()))
        .collect();
    // One wake per event sink: a shared `Notify` would wake only one of them.
    let event_wakes: Arc<[Arc<Notify>]> = event_sinks
        .iter()
        .map(|_| Arc::new(Notify::new()))
        .collect();
    let outbox = outbox::Outbox {
        ledger: ledger.clone(),
        clock,
        health: health.clone(),
        stop: stop_work.clone(),
        healthcheck_every: config.sink_healthcheck_interval,
        events_wake: event_wakes.clone(),
    };
    for (s, wake) in result_sinks.iter().zip(&result_wakes) {
        tracker.spawn(outbox::drain_results(
            outbox.clone(),
            s.clone(),
            wake.clone(),
        ));
    }
    for (s, wake) in event_sinks.iter().zip(event_wakes.iter()) {
        tracker.spawn(outbox::drain_events(
            outbox.clone(),
            s.clone(),
            wake.clone(),
        ));
    }

    let (tx, rx) = mpsc::channel(64);
    // The scheduler owns the configuration from here on (100,000 watches are not copied).
    let watch_dir = config.watch_dir.clone();
    let listen = config.listen;
    let n_watches = config.watches.len();
    let state_dir = config.state_dir.clone();
    let deadline = config.shutdown_timeout;
    let sched = scheduler::Scheduler::new(
        config,
        sources.clone(),
        ledger.clone(),
        clock,
        health.clone(),
        scheduler::Wakes {
            results: result_wakes,
            events: event_wakes,
        },
        records,
    )?;
    if let Some(dir) = watch_dir {
        tracker.spawn(watch_directory(dir, tx.clone(), stop_work.clone()));
    }
    let server_stop = CancellationToken::new();
    let server = crate::server::serve(
        listen,
        health.clone(),
        ledger.clone(),
        clock,
        server_stop.clone(),
    )
    .await?;
    health.started.store(true, Ordering::Relaxed);
    systemd::ready(&health);
    tracker.spawn(systemd::keepalive(health.clone(), stop_work.clone()));
    info!(
        watches = n_watches,
        sinks = result_sinks.len(),
        event_sinks = event_sinks.len(),
        state_dir = %state_dir.display(),
        "Daemon started."
    );
    on_start(Running {
        commands: tx.clone(),
        health: health.clone(),
    });

    // The scheduler stops launching polls on `shutdown` and returns once its in-flight polls
    // are done or the deadline passes.
    let scheduler_task = tokio::spawn(sched.run(rx, shutdown.clone(), deadline));
    shutdown.cancelled().await;
    health.draining.store(true, Ordering::Relaxed);
    systemd::stopping();
    info!(timeout = %humantime::format_duration(deadline), "Shutting down: no new polls; finishing in-flight work.");
    let drained = tokio::time::timeout(deadline, async {
        let _ = scheduler_task.await;
        // Deliveries in progress finish; the drainers stop between two deliveries.
        stop_work.cancel();
        tracker.close();
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            "Shutdown timeout reached; work still in flight is abandoned (the ledger stays consistent and it is retried on the next start)."
        );
        stop_work.cancel();
    }
    server_stop.cancel();
    let _ = server.await;
    if let Err(e) = ledger.close().await {
        error!(error = %e, "Closing the ledger failed.");
    }
    info!("Stopped.");
    Ok(())
}

/// Name of the lock file that keeps two daemons off one state directory.
pub const LOCK_FILE: &str = "scenewatch.lock";

/// Takes an exclusive lock on `{state_dir}/scenewatch.lock` for the life of the daemon: two
/// daemons on one ledger would each poll and deliver every watch. The OS drops the lock when the
/// process ends, however it ends.
fn lock_state_dir(state_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another scenewatch daemon is running with the state directory {} (it holds {}); stop it first, or give this one its own state_dir",
            state_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

async fn build_sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut out = Vec::new();
    for c in &config.sinks {
        let s = sink::build(c)?;
        // A sink that is down at start is not fatal: its backlog waits in the ledger.
        if let Err(e) = s.healthcheck().await {
            warn!(sink = s.name(), error = %e, "Sink is not healthy at start; deliveries will retry.");
        }
        out.push(s);
    }
    Ok(out)
}

async fn build_event_sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn EventSink>>> {
    let mut out = Vec::new();
    for c in &config.event_sinks {
        let s = sink::build_event_sink(c)?;
        if let Err(e) = s.healthcheck().await {
            warn!(sink = s.name(), error = %e, "Event sink is not healthy at start; events will retry.");
        }
        out.push(s);
    }
    Ok(out)
}

/// How often the watch directory is looked at for changes.
const WATCH_DIR_INTERVAL: Duration = Duration::from_secs(2);

/// Sends a reload when the set of files in the watch directory, their sizes or their
/// modification times change. Polling a directory listing is cheap and needs no extra crate.
async fn watch_directory(dir: PathBuf, tx: mpsc::Sender<Command>, stop: CancellationToken) {
    let mut last = dir_signature(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_DIR_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        let now = dir_signature(&dir);
        if now != last {
            last = now;
            info!(dir = %dir.display(), "Watch directory changed; reloading.");
            if tx.send(Command::Reload).await.is_err() {
                return;
            }
        }
    }
}

fn dir_signature(dir: &std::path::Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        m.len(),
                        m.modified().ok(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
