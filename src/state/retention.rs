//! Retention (`state.retention`): a background task that keeps the ledger's size bounded by
//! forgetting what is done and old, in small batches, each its own short transaction, off the
//! poll path. What goes and what stays (and why) is [`Ledger::prune`]'s contract; this module
//! decides when it runs.
//!
//! A round runs [`FIRST_ROUND_AFTER`] after the daemon starts and then every [`EVERY`]; it calls
//! [`Ledger::prune`] with [`BATCH`] until the walk is over, pausing [`PAUSE`] between batches so
//! the poll steps and deliveries queued meanwhile commit first (the SQLite ledger has one writer
//! thread). A failing round (a full disk: deleting needs room in the WAL too) is logged and
//! tried again at the next round; nothing else depends on it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Ledger, Pruned, SharedLedger, StateError};
use crate::clock::Clock;
use crate::events::EventType;
use crate::health::Health;

/// Versions and events looked at per batch (one transaction): a few milliseconds of the
/// writer thread.
pub const BATCH: usize = 500;

/// Time between rounds.
pub const EVERY: Duration = Duration::from_secs(3600);

/// The first round after start: late enough not to compete with the start-up sync.
pub const FIRST_ROUND_AFTER: Duration = Duration::from_secs(60);

/// Pause between the batches of a round.
pub const PAUSE: Duration = Duration::from_millis(20);

/// Whether an event of this CloudEvents type may be pruned at all. `watch.discovered` (one per
/// watch and selector) is computed again at every start and every discovery pass, and
/// `watch.superseded` (one per watch and new index) whenever the old index is looked at again:
/// only the stored id keeps them from being sent again. Both are bounded by the number of
/// watches, not by time, so keeping them keeps the ledger bounded.
pub fn event_type_may_go(kind: &str) -> bool {
    !matches!(
        EventType::parse(kind),
        Some(EventType::Discovered | EventType::Superseded)
    )
}

/// One round: prunes everything done before `before_ms` that retention may forget, batch by
/// batch, calling `each` after every batch, pausing `pause` between batches. Returns the sum.
pub async fn round(
    ledger: &dyn Ledger,
    before_ms: u64,
    pause: Duration,
    mut each: impl FnMut(&Pruned),
) -> Result<Pruned, StateError> {
    let mut total = Pruned::default();
    loop {
        let batch = ledger.prune(before_ms, BATCH).await?;
        each(&batch);
        total.versions += batch.versions;
        total.deliveries += batch.deliveries;
        total.events += batch.events;
        total.event_deliveries += batch.event_deliveries;
        if !batch.more {
            return Ok(total);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The daemon's retention task: a round at start (after [`FIRST_ROUND_AFTER`]) and every
/// [`EVERY`], forgetting what was done more than `retention` ago, until `stop`.
pub async fn run(
    ledger: SharedLedger,
    clock: Clock,
    retention: Duration,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut wait = FIRST_ROUND_AFTER;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = EVERY;
        let before_ms = clock.now_ms().saturating_sub(retention_ms);
        let metrics = &health.metrics;
        let counted = |b: &Pruned| {
            metrics.pruned("versions", b.versions);
            metrics.pruned("deliveries", b.deliveries);
            metrics.pruned("events", b.events);
            metrics.pruned("event_deliveries", b.event_deliveries);
        };
        let done = tokio::select! {
            r = round(ledger.as_ref(), before_ms, PAUSE, counted) => r,
            _ = stop.cancelled() => return,
        };
        match done {
            Ok(p) if p.rows() > 0 => tracing::info!(
                versions = p.versions,
                deliveries = p.deliveries,
                events = p.events,
                event_deliveries = p.event_deliveries,
                retention = %humantime::format_duration(retention),
                "Retention: forgot what was done before the retention."
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "Retention could not prune the ledger; it tries again at the next round."
            ),
        }
    }
}
