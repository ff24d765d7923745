//! The daemon's small HTTP server: `/healthz` (live: the scheduler loop turned recently),
//! `/readyz` (ready to do its job, with the reasons when not) and `/metrics` (OpenMetrics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::health::Health;
use crate::state::{Ledger, SharedLedger};

/// How long the scheduler loop may stay silent before `/healthz` fails. It turns at least once
/// a second, so this is generous on a loaded machine and still catches a wedged process.
pub const STALL_LIMIT_MS: u64 = 30_000;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    ledger: SharedLedger,
    clock: Clock,
}

/// Binds `listen` (an error names the address) and serves until `stop`.
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    ledger: SharedLedger,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (server.listen): {e}"))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            health,
            ledger,
            clock,
        });
    // The address really bound (with port 0 the OS picks one: say which).
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %bound, "Serving /healthz, /readyz and /metrics.");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "The health and metrics server stopped.");
        }
    }))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let last = s.health.last_tick_ms.load(Ordering::Relaxed);
    let ago = s.clock.now_ms().saturating_sub(last);
    if last > 0 && ago <= STALL_LIMIT_MS {
        json(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "lastTickAgoMs": ago}),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stalled", "lastTickAgoMs": ago}),
        )
    }
}

/// Why the daemon is not ready, empty when it is.
pub async fn not_ready_reasons(health: &Health, ledger: &dyn Ledger, now_ms: u64) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(r) = health.replica() {
        let ago = now_ms.saturating_sub(r.renewed_at_ms);
        if u128::from(ago) > r.lease.as_millis() {
            reasons.push(format!(
                "replica {}: its shard leases were not renewed for {} (longer than state.lease = {}): \
                 it polls nothing until the PostgreSQL ledger answers again",
                r.id,
                humantime::format_duration(Duration::from_millis(ago / 1000 * 1000)),
                humantime::format_duration(r.lease)
            ));
        }
    }
    if !health.started.load(Ordering::Relaxed) {
        reasons.push("starting".to_string());
    }
    if health.draining.load(Ordering::Relaxed) {
        reasons.push("draining: shutting down".to_string());
    }
    if health.auth_paused.load(Ordering::Relaxed) {
        reasons.push("the API refused the credentials; polling is paused".to_string());
    }
    if health.quota_paused.load(Ordering::Relaxed) {
        reasons.push("the API's quota is used up; polling is paused".to_string());
    }
    if let Err(e) = ledger.probe_writable().await {
        reasons.push(format!("ledger not writable: {e}"));
    }
    for sink in health.failing_sinks() {
        reasons.push(format!("sink `{sink}` is failing"));
    }
    reasons
}

async fn readyz(State(s): State<AppState>) -> Response {
    let now = s.clock.now_ms();
    let reasons = not_ready_reasons(&s.health, s.ledger.as_ref(), now).await;
    let mut body = if reasons.is_empty() {
        serde_json::json!({"ready": true})
    } else {
        serde_json::json!({"ready": false, "reasons": reasons})
    };
    if let Some(r) = s.health.replica() {
        body["replica"] = serde_json::json!({
            "id": r.id,
            "shards": r.shards,
            "replicas": r.replicas,
            "lease": humantime::format_duration(r.lease).to_string(),
            "lastRenewalAgoMs": now.saturating_sub(r.renewed_at_ms),
        });
    }
    json(
        if reasons.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

async fn metrics(State(s): State<AppState>) -> Response {
    let m = &s.health.metrics;
    for (phase, n) in s.health.phases() {
        m.set_phase(phase.as_str(), n);
    }
    if let Ok(backlog) = s.ledger.backlog().await {
        for b in backlog {
            m.set_backlog(&b.sink, b.pending, b.parked);
        }
    }
    m.set_auth_paused(s.health.auth_paused.load(Ordering::Relaxed));
    m.set_quota_paused(s.health.quota_paused.load(Ordering::Relaxed));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ReplicaHealth;
    use crate::state::MemoryLedger;

    #[tokio::test]
    async fn a_replica_whose_leases_went_unrenewed_for_a_lease_is_not_ready() {
        let health = Health::default();
        health.started.store(true, Ordering::Relaxed);
        let ledger = MemoryLedger::new(vec![], vec![]);
        assert!(
            not_ready_reasons(&health, &ledger, 100_000)
                .await
                .is_empty()
        );
        health.set_replica(ReplicaHealth {
            id: "pod-a-1".into(),
            shards: 86,
            replicas: 3,
            lease: Duration::from_secs(15),
            renewed_at_ms: 100_000,
        });
        assert!(
            not_ready_reasons(&health, &ledger, 100_000 + 15_000)
                .await
                .is_empty(),
            "within one lease of the last renewal"
        );
        let reasons = not_ready_reasons(&health, &ledger, 100_000 + 21_500).await;
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("replica pod-a-1: its shard leases were not renewed for 21s"),
            "{reasons:?}"
        );
    }
}
