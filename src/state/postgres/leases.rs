//! Shard leases: how replicas sharing one PostgreSQL ledger split its 256 shards, and the
//! fencing check that keeps a replica that lost a shard from writing to it.
//!
//! A replica ([`PostgresLedger::join`]) calls [`PostgresLedger::lease_tick`] every lease / 3.
//! One tick is one transaction, on the server's clock (`now()`), so the replicas' clocks do not
//! matter:
//!
//! 1. heartbeat: its `members` row gets `heartbeat_at = now()` (members silent for ten leases
//!    are deleted);
//! 2. renew: the leases it holds, with the epoch it claimed them at and not yet expired, get
//!    `expires_at = now() + lease` (the epoch stays); any other lease it thought it held is
//!    lost (expired, taken over);
//! 3. its fair share is `ceil(256 / live members)` (live: a heartbeat within one lease); above
//!    it, the highest shards it holds are released (no owner, expired now), so a replica that
//!    joins gets its share within a tick of each of the others;
//! 4. below it, it claims expired leases (oldest expiry first; never-held and released ones
//!    expire at `-infinity` / the release) with `FOR UPDATE SKIP LOCKED`, so two replicas
//!    claiming at once take different shards and neither waits; every claim increments the
//!    shard's epoch.
//!
//! [`PostgresLedger::release_leases`] (on close) gives every lease up at once and removes the
//! member, so the others take its shards on their next tick instead of after the lease.
//!
//! # Fencing
//!
//! With a replica joined, every write of a watch's poll step or outbox (`commit_step`,
//! `delivery_succeeded`, `delivery_failed`, `events_sent`, `events_failed`) first runs, in its
//! own transaction, `SELECT ... FROM shard_leases WHERE shard = $s AND owner = $me AND epoch =
//! $e AND expires_at > now() FOR SHARE`: no row, and the transaction is rolled back with
//! [`StateError::LeaseLost`], having written nothing. The `FOR SHARE` row lock makes a
//! takeover's `UPDATE` wait for a write that passed the check to commit, so a write is either
//! before the takeover or refused, never after it. A replica stopped between its check and its
//! `COMMIT` would hold that row lock, and the claim (`SKIP LOCKED`) would pass the shard by, for
//! as long as it is stopped: its sessions have `idle_in_transaction_session_timeout` = the lease
//! (see `PostgresLedger::build`), so the server ends such a transaction and the takeover
//! follows at the next tick. The due queries (`due_deliveries`,
//! `due_events`) return only rows of shards the replica holds; events of no watch (sink events)
//! belong to shard 0.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::{Fail, Inner, PostgresLedger, SHARDS};
use crate::state::StateError;

/// A replica's identity and the leases it holds, as of its last tick.
#[derive(Debug, Clone)]
pub(crate) struct Replica {
    /// Unique per process (the members table's key, the leases' owner).
    pub(crate) id: String,
    pub(crate) lease: Duration,
    /// Shard → the epoch it was claimed at.
    pub(crate) held: BTreeMap<i32, i64>,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTick {
    /// The shards held after the tick, ascending.
    pub owned: Vec<i32>,
    /// Shards claimed by this tick.
    pub gained: Vec<i32>,
    /// Shards held before and lost: their lease had expired or was taken over before this
    /// tick renewed it (the replica was paused, cut off or too slow).
    pub lost: Vec<i32>,
    /// Shards given up by this tick to make room for another replica (handed over, not lost).
    pub released: Vec<i32>,
    /// Leases renewed.
    pub renewed: u64,
    /// Of `gained`, shards another replica still held when its lease expired (it died, was
    /// paused or cut off: it did not release them). Shards released on shutdown or to make
    /// room are handed over, not taken over.
    pub taken_over: u64,
    /// Live members counted for the fair share (this one included).
    pub members: u64,
}

impl PostgresLedger {
    /// Makes this handle a replica named `id` holding leases of `lease` (fencing on from now:
    /// until the first [`PostgresLedger::lease_tick`], it holds no shard and may write to
    /// none). `id` must be unique among the processes sharing the ledger.
    pub fn join(&self, id: &str, lease: Duration) {
        *self
            .inner
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Replica {
            id: id.to_string(),
            lease,
            held: BTreeMap::new(),
        });
    }

    /// The shards this replica holds as of its last tick (empty when it did not join).
    pub fn owned_shards(&self) -> Vec<i32> {
        self.inner
            .replica()
            .map(|r| r.held.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The (not removed) watches in `shards` with a `watch_id` above `after_id`, as the ledger
    /// holds them, in `watch_id` order: with `after_id` 0, for a replica to load the watches of
    /// shards it has just claimed (their last owner may have polled them since this replica
    /// last saw them); with the highest id it has seen, for the watches another replica added
    /// since (discovery runs on one replica).
    pub async fn records_in_shards(
        &self,
        shards: &[i32],
        after_id: i64,
    ) -> Result<Vec<super::ShardWatch>, StateError> {
        self.run("read", false, async move |i, c| {
            super::store::records_in_shards(i, c, shards, after_id).await
        })
        .await
    }

    /// The highest `watch_id` in the ledger (0 when it has no watch): where a replica starts
    /// looking for watches added by others.
    pub async fn last_watch_id(&self) -> Result<i64, StateError> {
        self.run("read", false, async |i, c| {
            let row = c
                .query_one(
                    &i.sql("SELECT coalesce(max(watch_id), 0)::int8 FROM {s}.watches"),
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// Heartbeats, renews, releases beyond and claims up to its fair share (see the module
    /// documentation). On an error the leases it held are kept in its view; they expire on the
    /// server if no later tick renews them, and every write is checked against the server.
    pub async fn lease_tick(&self) -> Result<LeaseTick, StateError> {
        let Some(me) = self.inner.replica() else {
            return Ok(LeaseTick::default());
        };
        let (tick, held) = self
            .run("renew the shard leases of", false, async |i, c| {
                let tx = c.transaction().await?;
                let out = tick(i, &tx, &me).await?;
                tx.commit().await?;
                Ok(out)
            })
            .await?;
        if let Some(r) = self
            .inner
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            && r.id == me.id
        {
            r.held = held;
        }
        Ok(tick)
    }

    /// Gives up every lease of this replica at once and leaves the members table (on
    /// shutdown); the other replicas take the shards on their next tick.
    pub async fn release_leases(&self) -> Result<(), StateError> {
        let Some(me) = self.inner.replica() else {
            return Ok(());
        };
        if let Some(r) = self
            .inner
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            r.held.clear();
        }
        self.run("release the shard leases of", false, async |i, c| {
            let tx = c.transaction().await?;
            tx.execute(
                &i.sql(
                    "UPDATE {s}.shard_leases SET owner = NULL, expires_at = now()
                     WHERE owner = $1",
                ),
                &[&me.id],
            )
            .await?;
            tx.execute(
                &i.sql("DELETE FROM {s}.members WHERE replica = $1"),
                &[&me.id],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn tick(
    i: &Inner,
    c: &impl GenericClient,
    me: &Replica,
) -> Result<(LeaseTick, BTreeMap<i32, i64>), Fail> {
    let lease = secs(me.lease);
    c.execute(
        &i.sql(
            "INSERT INTO {s}.members (replica, heartbeat_at, started_at)
             VALUES ($1, now(), now())
             ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now()",
        ),
        &[&me.id],
    )
    .await?;
    c.execute(
        &i.sql(
            "DELETE FROM {s}.members
             WHERE heartbeat_at < now() - make_interval(secs => $1::float8 * 10)",
        ),
        &[&lease],
    )
    .await?;
    let members: i64 = c
        .query_one(
            &i.sql(
                "SELECT count(*) FROM {s}.members
                 WHERE heartbeat_at > now() - make_interval(secs => $1::float8)",
            ),
            &[&lease],
        )
        .await?
        .try_get(0)?;
    let members = members.max(1) as u64;
    // Renew what is still ours at the epoch we claimed it at.
    let (shards, epochs): (Vec<i32>, Vec<i64>) = me.held.iter().map(|(s, e)| (*s, *e)).unzip();
    let mut held: BTreeMap<i32, i64> = BTreeMap::new();
    for row in c
        .query(
            &i.sql(
                "UPDATE {s}.shard_leases AS l
                 SET expires_at = now() + make_interval(secs => $4::float8)
                 FROM unnest($1::int4[], $2::int8[]) AS h(shard, epoch)
                 WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $3
                   AND l.expires_at > now()
                 RETURNING l.shard, l.epoch",
            ),
            &[&shards, &epochs, &me.id, &lease],
        )
        .await?
    {
        held.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let renewed = held.len() as u64;
    let lost = me
        .held
        .keys()
        .filter(|s| !held.contains_key(s))
        .copied()
        .collect();
    let share = SHARDS.div_ceil(members as u32) as usize;
    let mut released = Vec::new();
    if held.len() > share {
        let extra: Vec<i32> = held
            .keys()
            .rev()
            .take(held.len() - share)
            .copied()
            .collect();
        for s in &extra {
            held.remove(s);
        }
        released.clone_from(&extra);
        released.sort_unstable();
        c.execute(
            &i.sql(
                "UPDATE {s}.shard_leases SET owner = NULL, expires_at = now()
                 WHERE shard = ANY($1::int4[]) AND owner = $2",
            ),
            &[&extra, &me.id],
        )
        .await?;
    }
    let mut gained = Vec::new();
    let mut taken_over = 0;
    if held.len() < share {
        let need = (share - held.len()) as i64;
        for row in c
            .query(
                &i.sql(
                    "WITH free AS (
                         SELECT shard, owner FROM {s}.shard_leases
                         WHERE expires_at <= now()
                         ORDER BY expires_at, shard
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE {s}.shard_leases AS l
                     SET owner = $1, epoch = l.epoch + 1,
                         expires_at = now() + make_interval(secs => $3::float8)
                     FROM free WHERE l.shard = free.shard
                     RETURNING l.shard, l.epoch, free.owner",
                ),
                &[&me.id, &need, &lease],
            )
            .await?
        {
            let shard: i32 = row.try_get(0)?;
            held.insert(shard, row.try_get(1)?);
            gained.push(shard);
            if row
                .try_get::<_, Option<String>>(2)?
                .is_some_and(|o| o != me.id)
            {
                taken_over += 1;
            }
        }
        gained.sort_unstable();
    }
    Ok((
        LeaseTick {
            owned: held.keys().copied().collect(),
            gained,
            lost,
            released,
            renewed,
            taken_over,
            members,
        },
        held,
    ))
}

impl Inner {
    pub(crate) fn replica(&self) -> Option<Replica> {
        self.replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The replica's id when fencing is on (for the due queries' filter).
    pub(crate) fn fencing_owner(&self) -> Option<String> {
        self.replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|r| r.id.clone())
    }

    fn lease_lost(&self, shard: i32) -> Fail {
        Fail::State(StateError::LeaseLost {
            at: self.at.clone(),
            shard,
        })
    }
}

/// The fencing check (see the module documentation), inside the caller's transaction, before
/// it writes anything; a no-op unless a replica joined.
pub(crate) async fn fence(i: &Inner, c: &impl GenericClient, shard: i32) -> Result<(), Fail> {
    let (owner, epoch) = {
        let r = i
            .replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(r) = r.as_ref() else {
            return Ok(());
        };
        match r.held.get(&shard) {
            Some(e) => (r.id.clone(), *e),
            None => return Err(i.lease_lost(shard)),
        }
    };
    let st = c
        .prepare_cached(&i.sql(
            "SELECT 1 FROM {s}.shard_leases
             WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
             FOR SHARE",
        ))
        .await?;
    match c.query_opt(&st, &[&shard, &owner, &epoch]).await? {
        Some(_) => Ok(()),
        None => Err(i.lease_lost(shard)),
    }
}

/// The shard of an event's `watch_key` in SQL (the last of the first four bytes of its SHA-256
/// is [`super::shard_of`] modulo 256); events of no watch are shard 0's.
pub(crate) const EVENT_SHARD: &str =
    "coalesce(get_byte(sha256(convert_to(e.watch_key, 'UTF8')), 3), 0)";
