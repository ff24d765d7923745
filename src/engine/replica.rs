//! The engine's side of replicas (`state.replicated`): one request budget for the deployment.
//! Each replica spends its portion of `[api] requests_per_second` (its shards over all shards,
//! set by [`super::Command::Shards`]); a cut of the rate on a 429 is written to the ledger as the
//! fact [`THROTTLE_FACT`], and every replica reads it every [`THROTTLE_CHECK_EVERY`] and slows
//! to the same fraction, with the same pause. Which watches a replica polls is the
//! [`crate::state::shards::ShardSet`] the engine is given; the leases themselves are the
//! daemon's (`daemon/replica.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::RequestBudget;
use crate::clock::Clock;
use crate::state::SharedLedger;

/// The ledger fact holding the latest throttle (JSON, see [`Throttle`]).
pub const THROTTLE_FACT: &str = "budget.throttle";

/// How often a replica reads the latest throttle from the ledger.
pub const THROTTLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A throttle older than this (by the writer's clock) is not followed: a replica starting
/// long after it, or a clock far off.
const THROTTLE_FRESH_MS: u64 = 30_000;

/// This replica, for the engine.
#[derive(Debug)]
pub(crate) struct ReplicaCtx {
    /// Its id.
    pub id: String,
    /// Throttles it published.
    published: AtomicU64,
}

impl ReplicaCtx {
    pub fn new(id: &str) -> ReplicaCtx {
        ReplicaCtx {
            id: id.to_string(),
            published: AtomicU64::new(0),
        }
    }
}

/// A cut of the rate, as shared through the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Throttle {
    /// The replica that was throttled.
    by: String,
    /// Its count of throttles (with `by`, what makes one new).
    n: u64,
    /// When, by its clock (ms since the Unix epoch).
    at_ms: u64,
    /// Its rate after the cut, as a fraction of its highest.
    fraction: f64,
    /// How long it paused (Retry-After, bounded).
    pause_ms: u64,
}

/// Tells the other replicas that this one's rate was cut (in the background: the poll that saw
/// the 429 does not wait for the ledger). A write that fails is logged; the others then learn
/// of the throttle from their own 429s, as a single daemon does.
pub(crate) fn publish(
    ledger: &SharedLedger,
    me: &Arc<ReplicaCtx>,
    budget: &RequestBudget,
    clock: Clock,
    pause: Option<Duration>,
) {
    let t = Throttle {
        by: me.id.clone(),
        n: me.published.fetch_add(1, Ordering::Relaxed) + 1,
        at_ms: clock.now_ms(),
        fraction: budget.fraction(),
        pause_ms: pause.map_or(0, |p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX)),
    };
    let Ok(value) = serde_json::to_string(&t) else {
        return;
    };
    let ledger = ledger.clone();
    tokio::spawn(async move {
        if let Err(e) = ledger.set_fact(THROTTLE_FACT, &value).await {
            warn!(error = %e, "Cannot share a throttle with the other replicas through the ledger; they slow down when the API throttles them.");
        }
    });
}

/// Follows the throttles of the other replicas until `stop`: each new one slows this
/// replica's budget to the same fraction.
pub(crate) async fn follow(
    ledger: SharedLedger,
    budget: Arc<RequestBudget>,
    clock: Clock,
    me: Arc<ReplicaCtx>,
    stop: CancellationToken,
) {
    // What is there at start is old news (or this replica's own, from before a restart).
    let mut seen = read(&ledger).await.map(|t| (t.by, t.n));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(THROTTLE_CHECK_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let Some(t) = read(&ledger).await else {
            continue;
        };
        let id = (t.by.clone(), t.n);
        if seen.as_ref() == Some(&id) {
            continue;
        }
        seen = Some(id);
        if t.by == me.id || clock.now_ms().abs_diff(t.at_ms) > THROTTLE_FRESH_MS {
            continue;
        }
        budget.throttled_elsewhere(t.fraction, Duration::from_millis(t.pause_ms));
        info!(replica = %t.by, fraction = t.fraction, rate = budget.current_rate(), "Another replica was throttled by the API; this one slows down too.");
    }
}

/// The latest throttle in the ledger; `None` when there is none, it cannot be read now, or it
/// is garbled (then it is ignored, with a warning at debug level: the next write replaces it).
async fn read(ledger: &SharedLedger) -> Option<Throttle> {
    let value = ledger.fact(THROTTLE_FACT).await.ok()??;
    match serde_json::from_str(&value) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::debug!(error = %e, "The shared throttle in the ledger cannot be read; ignored.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryLedger;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_published_by_one_replica_slows_the_other() {
        let ledger: SharedLedger = Arc::new(MemoryLedger::new(vec![], vec![]));
        let clock = Clock::new();
        let (a, b) = (
            Arc::new(RequestBudget::new(10.0, 10)),
            Arc::new(RequestBudget::new(10.0, 10)),
        );
        let (me_a, me_b) = (
            Arc::new(ReplicaCtx::new("a")),
            Arc::new(ReplicaCtx::new("b")),
        );
        let stop = CancellationToken::new();
        let followers = [
            tokio::spawn(follow(
                ledger.clone(),
                a.clone(),
                clock,
                me_a.clone(),
                stop.clone(),
            )),
            tokio::spawn(follow(
                ledger.clone(),
                b.clone(),
                clock,
                me_b.clone(),
                stop.clone(),
            )),
        ];
        // Let both read the (empty) start.
        tokio::time::sleep(THROTTLE_CHECK_EVERY / 2).await;
        assert!(a.throttled(None));
        publish(&ledger, &me_a, &a, clock, Some(Duration::from_secs(1)));
        assert_eq!(a.current_rate(), 5.0);
        for _ in 0..5 {
            tokio::time::sleep(THROTTLE_CHECK_EVERY).await;
            if b.current_rate() < 10.0 {
                break;
            }
        }
        assert_eq!(b.current_rate(), 5.0, "b follows a's cut");
        assert_eq!(a.current_rate(), 5.0, "a does not follow itself");
        // A garbled fact is ignored.
        ledger.set_fact(THROTTLE_FACT, "{not json").await.unwrap();
        for _ in 0..100 {
            b.succeeded();
        }
        tokio::time::sleep(THROTTLE_CHECK_EVERY * 2).await;
        assert_eq!(b.current_rate(), 10.0);
        stop.cancel();
        for f in followers {
            f.await.unwrap();
        }
    }
}
