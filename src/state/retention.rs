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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemoryLedger, NewVersion, StepCommit, WatchRecord};

    #[test]
    fn only_discovered_and_superseded_are_kept_by_type() {
        for t in EventType::ALL {
            let keep = matches!(t, EventType::Discovered | EventType::Superseded);
            assert_eq!(event_type_may_go(t.as_str()), !keep, "{t}");
        }
        assert!(event_type_may_go("com.example.unknown"));
    }

    /// A round goes batch after batch until the walk is over, and adds them up.
    #[tokio::test]
    async fn a_round_prunes_every_batch_and_sums_them() {
        let l = MemoryLedger::new(vec!["files".into()], vec![]);
        let key = crate::domain::WatchKey::new("w", "1", "2", "3").unwrap();
        let n = BATCH as u64 * 2 + 7;
        for i in 0..=n {
            let at = format!("2026-01-01T00:00:{i:05}Z");
            let vid = crate::domain::VersionId::of(&key, &at);
            let record = WatchRecord {
                key: key.clone(),
                state: crate::watch::WatchState::default(),
                next_poll_at_ms: None,
                last_version_id: Some(vid.clone()),
                last_change_at_ms: None,
                stale_version_id: None,
            };
            l.commit_step(StepCommit {
                record,
                events: vec![],
                new_version: Some(NewVersion {
                    version_id: vid.clone(),
                    key: key.clone(),
                    last_analyzed_at: at,
                    fetched_at_ms: 1_000 + i,
                    scene_count: 0,
                    analyzed_scene_ids: None,
                    result_json: "{}".into(),
                }),
            })
            .await
            .unwrap();
            l.delivery_succeeded(&vid, "files", "/x", vec![], 2_000 + i)
                .await
                .unwrap();
        }
        let mut batches = 0;
        let total = round(&l, 1_000_000, Duration::ZERO, |_| batches += 1)
            .await
            .unwrap();
        // Every version but the last one, in three batches (the third finds the rest).
        assert_eq!((total.versions, total.deliveries), (n, n));
        assert_eq!(batches, 3);
        assert_eq!(
            round(&l, 1_000_000, Duration::ZERO, |_| {})
                .await
                .unwrap()
                .rows(),
            0
        );
    }
}
