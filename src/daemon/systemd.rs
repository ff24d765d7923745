//! systemd integration through sd-notify: READY=1 once serving, STATUS= with the watches by
//! phase, WATCHDOG=1 pings at half the `WatchdogSec` interval while the scheduler loop is alive,
//! and STOPPING=1 at shutdown. Every call is a no-op when `NOTIFY_SOCKET` is not set.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::server::STALL_LIMIT_MS;

/// How often STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify systemd.");
    }
}

/// READY=1 with a first STATUS=.
pub fn ready(health: &Health) {
    let status = health.summary();
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// STOPPING=1.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight work"),
    ]);
}

/// Pings the watchdog (when systemd asked for one) and refreshes STATUS= until `stop`. The ping
/// is withheld while the scheduler loop is stalled, so systemd restarts a wedged daemon.
pub async fn keepalive(health: Arc<Health>, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog
        .map(|w| w / 2)
        .unwrap_or(STATUS_EVERY)
        .min(STATUS_EVERY);
    let clock = crate::clock::Clock::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let status = health.summary();
        let last = health.last_tick_ms.load(Ordering::Relaxed);
        let alive = clock.now_ms().saturating_sub(last) <= STALL_LIMIT_MS;
        if watchdog.is_some() && alive {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
}
