//! `state.replicated`: the daemon as one of several replicas sharing a PostgreSQL ledger. It
//! joins the ledger's members, renews its shard leases every lease / 3 (the ledger's side is
//! `state/postgres/leases.rs`) and tells the engine which shards it holds
//! ([`crate::engine::Command::Shards`]), with the ledger's records of the shards it gained and
//! of the watches the other replicas added to its shards (discovery runs on one replica). On
//! shutdown the ledger's `close` gives every lease up at once.
//!
//! A renewal that fails keeps the shards it holds in the engine's view until a lease has
//! passed since the last good one (the leases have then expired on the server, and another
//! replica may hold them): from then on the engine polls nothing until a renewal goes through
//! again, and readiness says why.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::engine::{Command, ShardNews};
use crate::health::{Health, ReplicaHealth};
use crate::state::shards::ShardSet;
use crate::state::{LeaseTick, PostgresLedger, StateError};

/// This process's replica id: `{hostname}-{pid}` (the pod's name in Kubernetes), made of
/// plain characters, at most 100 of them.
pub(crate) fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(80)
        .collect();
    let host = if host.is_empty() {
        "scenewatch".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// A joined replica.
pub(crate) struct Replica {
    pub ledger: PostgresLedger,
    pub id: String,
    pub lease: Duration,
    /// The highest watch id seen (where to look for watches others added).
    last_id: i64,
    /// The shards the engine polls.
    owned: ShardSet,
    /// Wall-clock ms of the last good renewal.
    renewed_at_ms: u64,
}

impl Replica {
    /// Joins the ledger as `id` and renews once, so the engine starts with this replica's
    /// shards (none yet if the others hold them all: they give up their surplus within a
    /// renewal, and it claims them on its next).
    pub async fn join(
        ledger: PostgresLedger,
        id: String,
        lease: Duration,
        health: &Health,
        clock: Clock,
    ) -> Result<Replica, StateError> {
        let last_id = ledger.last_watch_id().await?;
        ledger.join(&id, lease);
        let mut r = Replica {
            ledger,
            id,
            lease,
            last_id,
            owned: ShardSet::default(),
            renewed_at_ms: 0,
        };
        let t = r.ledger.lease_tick().await?;
        r.renewed(&t, health, clock);
        info!(replica = %r.id, shards = t.owned.len(), replicas = t.members, lease = %humantime::format_duration(lease), "Joined the shared ledger as a replica.");
        Ok(r)
    }

    /// The shards held now.
    pub fn owned(&self) -> ShardSet {
        self.owned
    }

    fn renewed(&mut self, t: &LeaseTick, health: &Health, clock: Clock) {
        self.owned = ShardSet::of(&t.owned);
        self.renewed_at_ms = clock.now_ms();
        health.metrics.lease_tick(
            self.owned.len(),
            t.members,
            t.renewed,
            t.taken_over,
            t.lost.len() as u64,
        );
        health.set_replica(ReplicaHealth {
            id: self.id.clone(),
            shards: self.owned.len(),
            replicas: t.members,
            lease: self.lease,
            renewed_at_ms: self.renewed_at_ms,
        });
    }

    /// Renews every lease / 3 until `stop`, telling the engine what changed.
    pub async fn run(
        mut self,
        commands: mpsc::Sender<Command>,
        health: Arc<Health>,
        clock: Clock,
        stop: CancellationToken,
    ) {
        let every = self.lease / 3;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            match self.renew(&health, clock).await {
                Ok(news) => {
                    if std::mem::take(&mut failing) {
                        info!(replica = %self.id, "The shard leases are renewed again.");
                    }
                    if let Some(news) = news
                        && commands
                            .send(Command::Shards(Box::new(news)))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let since = clock.now_ms().saturating_sub(self.renewed_at_ms);
                    let expired = u128::from(since) > self.lease.as_millis();
                    health
                        .metrics
                        .lease_error(if expired { 0 } else { self.owned.len() });
                    if !failing {
                        failing = true;
                        warn!(replica = %self.id, error = %e, "Cannot renew the shard leases; this replica stops polling once its leases have expired, until the ledger answers again.");
                    }
                    if expired && !self.owned.is_empty() {
                        warn!(replica = %self.id, shards = self.owned.len(), "The shard leases expired without renewal; this replica polls nothing until it renews them.");
                        self.owned = ShardSet::default();
                        let news = ShardNews::default();
                        if commands
                            .send(Command::Shards(Box::new(news)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One renewal and what the engine must hear of it (`None`: nothing changed).
    async fn renew(
        &mut self,
        health: &Health,
        clock: Clock,
    ) -> Result<Option<ShardNews>, StateError> {
        let t = self.ledger.lease_tick().await?;
        let before = self.owned;
        self.renewed(&t, health, clock);
        if !t.lost.is_empty() {
            // Lost, not given up: its lease ran out before this renewal (a pause, a slow
            // database); another replica may have polled them meanwhile.
            warn!(replica = %self.id, shards = ?t.lost, "Shards lost: their leases expired before this replica renewed them (it was paused, cut off or too slow); other replicas poll them now.");
        }
        if !t.released.is_empty() {
            info!(replica = %self.id, shards = t.released.len(), replicas = t.members, "Gave up shards to make room for another replica.");
        }
        if t.taken_over > 0 {
            info!(replica = %self.id, taken_over = t.taken_over, "Took over the shards of a replica whose lease expired.");
        }
        // Shards the engine did not poll before: claimed now, or held all along on the server
        // while renewals failed here for longer than a lease (the engine stopped polling
        // them). Their watches are loaded from the ledger.
        let (newly, kept): (Vec<i32>, Vec<i32>) =
            t.owned.iter().partition(|s| !before.contains(**s));
        let reloaded = if newly.is_empty() {
            Vec::new()
        } else {
            self.ledger.records_in_shards(&newly, 0).await?
        };
        // Watches others added (discovery runs on one replica), in the shards kept.
        let top = self.ledger.last_watch_id().await?;
        let added = if kept.is_empty() || top <= self.last_id {
            Vec::new()
        } else {
            self.ledger.records_in_shards(&kept, self.last_id).await?
        };
        self.last_id = self.last_id.max(top);
        for w in reloaded.iter().chain(&added) {
            self.last_id = self.last_id.max(w.watch_id);
        }
        if self.owned == before && reloaded.is_empty() && added.is_empty() {
            return Ok(None);
        }
        let pair = |w: crate::state::ShardWatch| (w.origin, w.record);
        Ok(Some(ShardNews {
            owned: self.owned,
            reloaded: reloaded.into_iter().map(pair).collect(),
            added: added.into_iter().map(pair).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_replica_id_is_the_host_and_the_process() {
        let id = super::replica_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.len() <= 100);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
            "{id}"
        );
    }
}
