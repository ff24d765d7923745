//! `scenewatch run`: the long-running watcher. Wiring and lifecycle around the engine: lock the
//! state directory, open the ledger (SQLite or PostgreSQL, `state::open`), resume every watch
//! at its persisted time, serve health and metrics, talk to systemd, reload on SIGHUP or a
//! watch-directory change, and drain on shutdown within `shutdown_timeout`. The polling itself is [`crate::engine`].

#[cfg(feature = "postgres")]
mod replica;
mod systemd;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::config::{self, Config, Sources};
use crate::engine::{self, Command, Mode, Setup};
use crate::health::Health;
use crate::sink::{self, EventSink, Sink};
use crate::state::SharedLedger;

/// Ask the daemon to re-read its configuration and watch directory (what SIGHUP does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload;

/// Handles to a running daemon, for the binary and for tests.
pub struct Running {
    /// Send reloads.
    pub reload: mpsc::Sender<Reload>,
    /// Live facts.
    pub health: Arc<Health>,
}

/// Runs the daemon until `shutdown` is cancelled, then drains within the configured shutdown
/// timeout. `on_start` is called once everything is up (READY for systemd). A configuration
/// that does not validate is a [`config::ConfigErrors`] inside the error.
pub async fn run(
    sources: Sources,
    shutdown: CancellationToken,
    on_start: impl FnOnce(Running),
) -> anyhow::Result<()> {
    let config = config::load(&sources)?;
    // What reading the file made and freed (a large one's raw watches and their strings) goes
    // back to the system before the ledger and the engine build theirs (`crate::memory`).
    crate::memory::give_back();
    for w in &config.warnings {
        warn!("{w}");
    }
    let clock = Clock::new();
    let health = Arc::new(Health::default());
    let _lock = lock_state_dir(&config.state_dir)?;
    let result_sinks = build_sinks(&config).await?;
    let event_sinks = build_event_sinks(&config).await?;
    #[cfg(feature = "postgres")]
    let replicated = match &config.ledger {
        crate::state::Backend::Postgres(t) => t.replicated.map(|lease| (t.clone(), lease)),
        crate::state::Backend::Sqlite => None,
    };
    #[cfg(feature = "postgres")]
    let mut joining = None;
    #[cfg(feature = "postgres")]
    let ledger: SharedLedger = if let Some((target, lease)) = replicated {
        // Several daemons share this ledger: no session lock, shard leases instead.
        let l = crate::state::PostgresLedger::open(
            &target,
            result_sinks.iter().map(|s| s.name().to_string()).collect(),
            event_sinks.iter().map(|s| s.name().to_string()).collect(),
        )
        .await
        .context("cannot open the PostgreSQL ledger")?;
        joining = Some((l.clone(), lease));
        Arc::new(l)
    } else {
        open_ledger(&config, &result_sinks, &event_sinks).await?
    };
    #[cfg(not(feature = "postgres"))]
    let ledger: SharedLedger = open_ledger(&config, &result_sinks, &event_sinks).await?;
    let origins: Vec<String> = config.selectors.iter().map(|s| s.origin()).collect();
    // The SQLite ledger keeps the records for the engine to read a page at a time (the start
    // of 100,000 watches does not hold them all at once); the others return them.
    let (records, paged) =
        match ledger.sync_watches_paged(&config.watches, &origins, clock.now_ms()) {
            Some(synced) => {
                synced
                    .await
                    .context("cannot record the configured watches in the ledger")?;
                (Vec::new(), true)
            }
            None => {
                let records = ledger
                    .sync_watches(&config.watches, &origins, clock.now_ms())
                    .await
                    .context("cannot record the configured watches in the ledger")?;
                (records, false)
            }
        };
    #[cfg(feature = "postgres")]
    let replica = match joining {
        Some((l, lease)) => {
            let id = replica::replica_id();
            match replica::Replica::join(l, id, lease, &health, clock).await {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = ledger.close().await;
                    return Err(anyhow::Error::new(e)
                        .context("cannot join the shared PostgreSQL ledger as a replica"));
                }
            }
        }
        None => None,
    };
    #[cfg(feature = "postgres")]
    let replica_start = replica.as_ref().map(|r| engine::ReplicaStart {
        id: r.id.clone(),
        owned: r.owned(),
    });
    #[cfg(not(feature = "postgres"))]
    let replica_start: Option<engine::ReplicaStart> = None;
    let api = match &replica_start {
        Some(r) => replica_api(&r.id),
        None => crate::ncp::http_api(),
    };

    let side_tasks = TaskTracker::new();
    let stop_side = CancellationToken::new();
    let (commands, commands_rx) = mpsc::channel(8);
    #[cfg(feature = "postgres")]
    if let Some(r) = replica {
        side_tasks.spawn(r.run(commands.clone(), health.clone(), clock, stop_side.clone()));
    }
    let (reload_tx, reload_rx) = mpsc::channel(8);
    side_tasks.spawn(apply_reloads(
        sources.clone(),
        reload_rx,
        commands,
        stop_side.clone(),
    ));
    if let Some(dir) = config.watch_dir.clone() {
        side_tasks.spawn(watch_directory(dir, reload_tx.clone(), stop_side.clone()));
    }
    let server_stop = CancellationToken::new();
    let server = crate::server::serve(
        config.listen,
        health.clone(),
        ledger.clone(),
        clock,
        server_stop.clone(),
    )
    .await?;
    // Live from here: /healthz measures the engine loop's turns from now, so a probe between
    // readiness and the loop's first turn does not read "stalled".
    health.last_tick_ms.store(clock.now_ms(), Ordering::Relaxed);
    health.started.store(true, Ordering::Relaxed);
    systemd::ready(&health);
    side_tasks.spawn(systemd::keepalive(health.clone(), stop_side.clone()));
    side_tasks.spawn(watch_ledger(ledger.clone(), stop_side.clone()));
    side_tasks.spawn(crate::state::retention::run(
        ledger.clone(),
        clock,
        config.retention,
        health.clone(),
        stop_side.clone(),
    ));
    info!(
        watches = config.watches.len(),
        watched_assets_and_projects = config.selectors.len(),
        sinks = result_sinks.len(),
        event_sinks = event_sinks.len(),
        state_dir = %config.state_dir.display(),
        ledger = %ledger.describe(),
        "Daemon started."
    );
    on_start(Running {
        reload: reload_tx,
        health: health.clone(),
    });
    side_tasks.spawn(announce_stopping(
        shutdown.clone(),
        health.clone(),
        stop_side.clone(),
        config.shutdown_timeout,
    ));

    let ran = engine::run(
        Setup {
            config,
            ledger: ledger.clone(),
            records,
            paged,
            sinks: result_sinks,
            event_sinks,
            health: health.clone(),
            clock,
            mode: Mode::Daemon,
            observer: None,
            api,
            replica: replica_start,
        },
        commands_rx,
        shutdown,
    )
    .await;
    stop_side.cancel();
    side_tasks.close();
    side_tasks.wait().await;
    server_stop.cancel();
    let _ = server.await;
    if let Err(e) = ledger.close().await {
        error!(error = %e, "Closing the ledger failed.");
    }
    ran?;
    info!("Stopped.");
    Ok(())
}

/// Opens the ledger of a daemon that owns it alone (SQLite, or PostgreSQL under a session lock).
async fn open_ledger(
    config: &Config,
    result_sinks: &[Arc<dyn Sink>],
    event_sinks: &[Arc<dyn EventSink>],
) -> anyhow::Result<SharedLedger> {
    crate::state::open(
        &config.ledger,
        &config.state_dir,
        result_sinks.iter().map(|s| s.name().to_string()).collect(),
        event_sinks.iter().map(|s| s.name().to_string()).collect(),
        crate::state::OpenFor::Daemon,
    )
    .await
    .with_context(|| match &config.ledger {
        crate::state::Backend::Sqlite => format!(
            "cannot open the state database in {}",
            config.state_dir.display()
        ),
        #[cfg(feature = "postgres")]
        crate::state::Backend::Postgres(_) => "cannot open the PostgreSQL ledger".to_string(),
    })
}

/// The API client of a replica: its id in the User-Agent (`scenewatch/x.y.z replica/ID`), so
/// the API's side can tell the replicas apart.
fn replica_api(id: &str) -> crate::ncp::ApiFactory {
    let id = id.to_string();
    Arc::new(move |c: &crate::config::ApiConfig| {
        let mut opts = c.client_options();
        opts.user_agent = format!("{} replica/{id}", opts.user_agent);
        Ok(Arc::new(crate::ncp::Client::new(opts)?) as Arc<dyn crate::ncp::Api>)
    })
}

/// Marks the daemon draining as soon as shutdown begins (readiness fails, systemd is told).
async fn announce_stopping(
    shutdown: CancellationToken,
    health: Arc<Health>,
    stop: CancellationToken,
    deadline: Duration,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = stop.cancelled() => return,
    }
    health.draining.store(true, Ordering::Relaxed);
    systemd::stopping();
    info!(timeout = %humantime::format_duration(deadline), "Shutting down: no new polls; finishing in-flight work.");
}

/// Loads the configuration on every reload (off the engine's loop: a large file takes a while)
/// and hands the engine a valid one; an invalid one changes nothing and logs every problem.
async fn apply_reloads(
    sources: Sources,
    mut reloads: mpsc::Receiver<Reload>,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) {
    loop {
        let got = tokio::select! {
            r = reloads.recv() => r,
            _ = stop.cancelled() => return,
        };
        if got.is_none() {
            return;
        }
        let sources = sources.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = config::load(&sources);
            crate::memory::give_back();
            loaded
        })
        .await;
        match loaded {
            Ok(Ok(c)) => {
                if commands.send(Command::Apply(Box::new(c))).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                error!(problems = %e, "Reload refused: the configuration is invalid; the running one stays.");
            }
            Err(e) => {
                error!(error = %e, "Reload failed unexpectedly; the running configuration stays.")
            }
        }
    }
}

/// Takes an exclusive lock on the state directory itself for the life of the daemon: two daemons
/// on one ledger would each poll and deliver every watch. The lock is on the directory, not on a
/// file in it, so deleting a file cannot let a second daemon in beside the first. The OS drops
/// the lock when the process ends, however it ends.
pub(crate) fn lock_state_dir(state_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let dir = std::fs::File::open(state_dir)
        .with_context(|| format!("cannot open the state directory {}", state_dir.display()))?;
    match dir.try_lock() {
        Ok(()) => Ok(dir),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another scenewatch daemon is running with the state directory {} (it holds a lock on it); stop it first, or give this one its own state_dir",
            state_dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!(
            "cannot lock the state directory {}: {e}",
            state_dir.display()
        )),
    }
}

/// How often the daemon checks that its ledger can still commit (readiness checks it too).
const LEDGER_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Checks the ledger every few seconds and says so once when it stops being able to commit (a
/// full disk, the file deleted or replaced under the daemon) and once when it can again, so the
/// log shows it even when nothing asks `/readyz`.
async fn watch_ledger(ledger: SharedLedger, stop: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEDGER_CHECK_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        match ledger.probe_writable().await {
            Ok(()) if failing => {
                failing = false;
                info!("The ledger commits again.");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                error!(error = %e, "The ledger cannot commit: polls and deliveries are not recorded (and so are retried) until it can; the daemon is not ready meanwhile.");
            }
            Err(_) => {}
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
async fn watch_directory(dir: PathBuf, tx: mpsc::Sender<Reload>, stop: CancellationToken) {
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
            if tx.send(Reload).await.is_err() {
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
