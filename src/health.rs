//! Live facts about a running engine, shared by the engine, the outbox drainers, the HTTP server
//! (readiness, metrics) and systemd's STATUS line. Plain atomics and small maps: reading them
//! never waits for the engine.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::watch::Phase;

/// Live facts about the engine, for readiness, metrics and systemd's STATUS line.
#[derive(Debug, Default)]
pub struct Health {
    /// Wall-clock ms of the scheduler loop's last turn.
    pub last_tick_ms: AtomicU64,
    /// The API refused the credentials; polling is paused.
    pub auth_paused: AtomicBool,
    /// The account's quota is used up (gateway 429 `Quota Exceeded`); polling is paused.
    pub quota_paused: AtomicBool,
    /// Shutdown has begun.
    pub draining: AtomicBool,
    /// The configuration is loaded and the ledger open.
    pub started: AtomicBool,
    sinks_failing: Mutex<HashMap<String, bool>>,
    phases: Mutex<HashMap<Phase, u64>>,
    /// The metrics, updated where things happen and read by `/metrics`.
    pub metrics: Metrics,
    /// `state.replicated`: this replica's shards and lease, as of its last renewal.
    pub replica: Mutex<Option<ReplicaHealth>>,
}

/// A replica's standing in the shared ledger (readiness shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// Its id (in the members table, the logs and the User-Agent).
    pub id: String,
    /// Shards it holds.
    pub shards: u32,
    /// Live replicas at the last renewal, itself included.
    pub replicas: u64,
    /// `state.lease`.
    pub lease: Duration,
    /// Wall-clock ms of its last successful renewal.
    pub renewed_at_ms: u64,
}

impl Health {
    /// This replica's standing, when it is one.
    pub fn replica(&self) -> Option<ReplicaHealth> {
        lock(&self.replica).clone()
    }

    /// Records this replica's standing.
    pub fn set_replica(&self, r: ReplicaHealth) {
        *lock(&self.replica) = Some(r);
    }

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
