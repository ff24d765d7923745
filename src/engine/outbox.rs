//! The outbox drainers: one task per result sink and per event sink, each taking its due rows
//! from the ledger, delivering them, and recording the outcome. A failing sink holds its backlog
//! on its own backoff (raising `sink.failing` once, then `sink.recovered`); the others and the
//! polling carry on.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Notice, Observer, Update};
use crate::clock::Clock;
use crate::events::Event;
use crate::health::Health;
use crate::ncp::SummaryResult;
use crate::policy::backoff;
use crate::sink::{Delivery, Disposition, EventSink, Sink, SinkError};
use crate::state::{PendingDelivery, SharedLedger, SinkHealth, StateError};

/// Rows taken per round.
const BATCH: usize = 64;
/// How often an idle drainer looks at the ledger even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(2);
/// Backoff of a failing sink: from a second up to five minutes.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What a drainer needs.
#[derive(Clone)]
pub struct Outbox {
    pub ledger: SharedLedger,
    pub clock: Clock,
    pub health: Arc<Health>,
    pub stop: CancellationToken,
    /// `sink_healthcheck_interval`.
    pub healthcheck_every: Duration,
    /// Wakes the event drainers: events recorded here (`sink.*`, `summary.delivered`) are sent
    /// at once, not at the next idle recheck.
    pub events_wake: Arc<[Arc<Notify>]>,
    /// Tells the engine which versions every sink has (and, in `once`, which it gave up on).
    pub notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// `once`: park a delivery after this many failed attempts instead of retrying forever.
    pub give_up_after: Option<u32>,
    /// The progress display, tests.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Outbox {
    /// Tells every event drainer that new events are due (a stored permit, so a drainer that is
    /// between its fetch and its wait does not miss it).
    fn wake_events(&self) {
        for w in self.events_wake.iter() {
            w.notify_one();
        }
    }
}

/// Tracks one sink's failing episodes and emits the event pair.
struct Episodes {
    name: String,
    health: SinkHealth,
    consecutive_failures: u32,
    /// The current failing episode was started by a healthcheck (not by a delivery), so a
    /// passing healthcheck may end it. One started by a delivery ends only with a delivery: a
    /// healthcheck cannot see every way a delivery fails (a webhook's 500), and letting it end
    /// the episode would make the event pair flap.
    from_healthcheck: bool,
    /// Shutdown began and the drainer is on its last batch.
    finishing: bool,
    /// Ledger writes that failed in a row (a full disk): the drainer backs off on them.
    ledger_failures: u32,
}

impl Episodes {
    async fn load(o: &Outbox, name: &str) -> Self {
        let health = o.ledger.sink_health(name).await.unwrap_or_default();
        o.health.set_sink_failing(name, health.failing);
        Self {
            name: name.to_string(),
            health,
            consecutive_failures: 0,
            from_healthcheck: false,
            finishing: false,
            ledger_failures: 0,
        }
    }

    async fn failed(&mut self, o: &Outbox, e: &SinkError) -> Duration {
        self.consecutive_failures += 1;
        // A failed delivery makes the episode a delivery's (see `from_healthcheck`).
        self.from_healthcheck = false;
        if !self.health.failing {
            self.health = SinkHealth {
                failing: true,
                episode: self.health.episode + 1,
            };
            let ev = Event::sink_failing(
                &self.name,
                self.health.episode,
                &e.to_string(),
                o.clock.now_ms(),
            );
            self.record(o, ev).await;
        }
        backoff(
            RETRY_INITIAL,
            RETRY_MAX,
            self.consecutive_failures.saturating_sub(1),
            u64::from(self.consecutive_failures),
        )
    }

    /// The ledger refused a write: the delay before trying again.
    fn ledger_failed(&mut self) -> Duration {
        self.ledger_failures = self.ledger_failures.saturating_add(1);
        backoff(
            RETRY_INITIAL,
            RETRY_MAX,
            self.ledger_failures - 1,
            u64::from(self.ledger_failures),
        )
    }

    async fn succeeded(&mut self, o: &Outbox) {
        self.consecutive_failures = 0;
        self.ledger_failures = 0;
        self.from_healthcheck = false;
        if self.health.failing {
            self.health.failing = false;
            let ev = Event::sink_recovered(&self.name, self.health.episode, o.clock.now_ms());
            self.record(o, ev).await;
        }
    }

    /// Persists the episode and its event first, then shows it in readiness: once `/readyz`
    /// says a sink is failing or back, the event saying so is in the ledger.
    async fn record(&self, o: &Outbox, ev: Event) {
        if let Err(e) = o.ledger.set_sink_health(&self.name, self.health).await {
            error!(sink = %self.name, error = %e, "Cannot record the sink's health in the ledger.");
        }
        match o.ledger.record_events(vec![ev.clone()]).await {
            Ok(()) => {
                ev.log();
                o.health.metrics.event(ev.kind.as_str());
                o.wake_events();
            }
            Err(e) => {
                error!(sink = %self.name, error = %e, "Cannot record a sink event in the ledger.")
            }
        }
        o.health.set_sink_failing(&self.name, self.health.failing);
    }
}

/// The next due rows of a queue, waiting (for a wake-up, a short idle period) while there are
/// none; `None` once stopped. A ledger read error is logged and retried after the idle period.
/// While idle, the sink's healthcheck runs every `sink_healthcheck_interval`, so readiness and
/// `sink.failing` also cover a sink that breaks while it has nothing to deliver.
async fn next_due<T, Fut>(
    o: &Outbox,
    wake: &Notify,
    sink: &str,
    queue: &str,
    fetch: impl Fn() -> Fut,
    episodes: &mut Episodes,
    healthcheck: impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), SinkError>>,
) -> Option<Vec<T>>
where
    Fut: std::future::Future<Output = Result<Vec<T>, crate::state::StateError>>,
{
    let mut last_check = crate::clock::instant_now();
    loop {
        if o.stop.is_cancelled() {
            // Shutdown: the daemon stops the drainers only after the last polls committed, so
            // one last batch of what is due now leaves with the process (its events and
            // deliveries), inside the shutdown deadline. A failure ends it: the rest waits in
            // the ledger for the next start.
            if episodes.finishing {
                return None;
            }
            episodes.finishing = true;
            return match fetch().await {
                Ok(rows) if !rows.is_empty() => Some(rows),
                _ => None,
            };
        }
        match fetch().await {
            Ok(rows) if !rows.is_empty() => return Some(rows),
            Ok(_) => {
                if last_check.elapsed() >= o.healthcheck_every {
                    last_check = crate::clock::instant_now();
                    match healthcheck().await {
                        Ok(()) => episodes.succeeded(o).await,
                        Err(e) => {
                            warn!(sink, error = %e, "Sink healthcheck failed.");
                            episodes.failed(o, &e).await;
                        }
                    }
                }
            }
            Err(e) => {
                error!(sink, error = %e, "Cannot read the {queue} queue from the ledger.");
            }
        }
        // Stopped while idle: the loop's top sends the last batch (a wake-up and the stop can
        // arrive together, and the wake-up's events must still go out).
        idle(o, wake, IDLE_RECHECK).await;
    }
}

/// While a failing sink backs off, its healthcheck is tried this often: once it passes, the
/// backlog is tried again at once instead of at the end of a backoff of up to five minutes.
const BACKOFF_PROBE: Duration = Duration::from_secs(15);

/// Waits out a failing sink's backoff `d`, ending it early when the sink's healthcheck passes;
/// false once stopped. (A healthcheck cannot see every failure, a webhook's 500 say: then the
/// retries come at most every [`BACKOFF_PROBE`], never in a storm.)
async fn back_off(
    o: &Outbox,
    d: Duration,
    healthcheck: impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), SinkError>>,
) -> bool {
    let until = o.clock.instant() + d;
    loop {
        let left = until.saturating_duration_since(o.clock.instant());
        if left.is_zero() {
            return true;
        }
        if !idle(o, &Notify::new(), left.min(BACKOFF_PROBE)).await {
            return false;
        }
        if left > BACKOFF_PROBE && healthcheck().await.is_ok() {
            return true;
        }
    }
}

async fn idle(o: &Outbox, wake: &Notify, d: Duration) -> bool {
    tokio::select! {
        _ = wake.notified() => true,
        _ = tokio::time::sleep(d) => true,
        _ = o.stop.cancelled() => false,
    }
}

/// Drains one result sink until stopped.
pub async fn drain_results(o: Outbox, sink: Arc<dyn Sink>, wake: Arc<Notify>) {
    let name = sink.name().to_string();
    let mut episodes = Episodes::load(&o, &name).await;
    let fetch = || o.ledger.due_deliveries(&name, o.clock.now_ms(), BATCH);
    let check = || {
        let sink = sink.clone();
        Box::pin(async move { sink.healthcheck().await })
            as futures_util::future::BoxFuture<'static, _>
    };
    while let Some(due) = next_due(&o, &wake, &name, "delivery", fetch, &mut episodes, check).await
    {
        for mut row in due {
            if o.stop.is_cancelled() && !episodes.finishing {
                break; // the final batch follows
            }
            match deliver_one(&o, sink.as_ref(), &mut row).await {
                Ok(()) => episodes.succeeded(&o).await,
                Err(Failure::Ledger(le @ StateError::LeaseLost { .. })) => {
                    // The watch's shard moved to another replica, which delivers it from the
                    // ledger (its sinks take the version again harmlessly, by its id).
                    info!(sink = %name, version = %row.version_id, error = %le, "Delivered, but not recorded here: the watch's shard moved to another replica.");
                    break;
                }
                Err(Failure::Ledger(le)) => {
                    // Delivered, but not recorded (a full disk): fetching again at once would
                    // deliver the same version again and again. Wait, with backoff.
                    let delay = episodes.ledger_failed();
                    error!(sink = %name, version = %row.version_id, error = %le, retry_in = %humantime::format_duration(delay), "Delivered, but the ledger could not record it; the sink waits for the ledger before going on (the version will be delivered again, which its id makes harmless).");
                    if !idle(&o, &Notify::new(), delay).await {
                        return;
                    }
                    break;
                }
                Err(Failure::Sink(e)) => {
                    let gave_up = o
                        .give_up_after
                        .is_some_and(|n| row.attempts.saturating_add(1) >= n);
                    if let Some(obs) = &o.observer {
                        obs.update(&Update::DeliveryFailed {
                            key: &row.key,
                            sink: &name,
                            error: &e.to_string(),
                            gave_up: gave_up || e.disposition != Disposition::Retry,
                        });
                    }
                    if gave_up || e.disposition != Disposition::Retry {
                        let _ = o.notices.send(Notice::GaveUp {
                            key: row.key.clone(),
                            error: e.to_string(),
                        });
                    }
                    let e = if gave_up && e.disposition == Disposition::Retry {
                        SinkError {
                            disposition: Disposition::Park,
                            message: format!(
                                "{} (gave up after {} attempts)",
                                e.message,
                                row.attempts.saturating_add(1)
                            ),
                            ..e
                        }
                    } else {
                        e
                    };
                    let now = o.clock.now_ms();
                    match e.disposition {
                        Disposition::Retry => {
                            o.health.metrics.delivery(&name, "retry", None);
                            let delay = episodes.failed(&o, &e).await;
                            warn!(sink = %name, version = %row.version_id, error = %e, retry_in = %humantime::format_duration(delay), "Delivery failed; the sink keeps its backlog and retries.");
                            // Due again at once in the ledger (so a restart tries it at once);
                            // this drainer holds the backlog for the backoff, or until the
                            // sink's healthcheck passes.
                            record_failure(&o, &row, &name, &e, now, false).await;
                            if !back_off(&o, delay, check).await {
                                return;
                            }
                            break;
                        }
                        Disposition::Park => {
                            o.health.metrics.delivery(&name, "parked", None);
                            error!(sink = %name, version = %row.version_id, error = %e, "Delivery refused by the receiver; parked (kept, not retried).");
                            record_failure(&o, &row, &name, &e, now, true).await;
                        }
                        Disposition::Disable => {
                            o.health.metrics.delivery(&name, "disabled", None);
                            episodes.failed(&o, &e).await;
                            error!(sink = %name, error = %e, "Sink disabled; its backlog is kept until it is reconfigured.");
                            record_failure(&o, &row, &name, &e, now, false).await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn record_failure(
    o: &Outbox,
    row: &PendingDelivery,
    sink: &str,
    e: &SinkError,
    next_ms: u64,
    park: bool,
) {
    if let Err(le) = o
        .ledger
        .delivery_failed(&row.version_id, sink, &e.to_string(), next_ms, park)
        .await
    {
        error!(sink, version = %row.version_id, error = %le, "Cannot record a failed delivery in the ledger.");
    }
}

/// Why a delivery did not get recorded as done.
enum Failure {
    /// The sink did not confirm it.
    Sink(SinkError),
    /// The sink confirmed it, but the ledger could not record that.
    Ledger(StateError),
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Self {
        Failure::Sink(e)
    }
}

/// Delivers `row`, taking its stored result (the text becomes the delivery's `raw` as it is).
async fn deliver_one(
    o: &Outbox,
    sink: &dyn Sink,
    row: &mut PendingDelivery,
) -> Result<(), Failure> {
    if row.result_json.is_empty() {
        // Released once every sink configured at the time had it (see state::store); this row
        // belongs to a sink that was removed then and has been added back since.
        return Err(Failure::Sink(SinkError {
            kind: "outbox",
            name: sink.name().to_string(),
            message: format!(
                "version {} was released from the ledger after every configured sink had it; it cannot be delivered to this sink any more",
                row.version_id
            ),
            disposition: Disposition::Park,
            source: None,
        }));
    }
    let result =
        SummaryResult::from_result_json(std::mem::take(&mut row.result_json)).map_err(|e| {
            SinkError {
                kind: "outbox",
                name: sink.name().to_string(),
                message: format!("stored version {} cannot be read back: {e}", row.version_id),
                disposition: Disposition::Park,
                source: None,
            }
        })?;
    let fetched_at = UNIX_EPOCH + Duration::from_millis(row.fetched_at_ms);
    let delivery = Delivery {
        key: row.key.clone(),
        version_id: row.version_id.clone(),
        last_analyzed_at: row.last_analyzed_at.clone(),
        fetched_at: if fetched_at > UNIX_EPOCH {
            fetched_at
        } else {
            crate::clock::wall_now()
        },
        result: Arc::new(result),
    };
    let started = o.clock.instant();
    let receipt = sink.deliver(&delivery).await?;
    o.health.observe_delivery(sink.name(), started.elapsed());
    let now = o.clock.now_ms();
    let ev = Event::delivered(
        &row.key,
        &row.version_id,
        sink.name(),
        &receipt.location,
        now,
    );
    let complete = o
        .ledger
        .delivery_succeeded(
            &row.version_id,
            sink.name(),
            &receipt.location,
            vec![ev.clone()],
            now,
        )
        .await
        .map_err(Failure::Ledger)?;
    ev.log();
    o.health.metrics.event(ev.kind.as_str());
    o.wake_events();
    if let Some(obs) = &o.observer {
        obs.update(&Update::Delivered {
            key: &row.key,
            sink: sink.name(),
            location: &receipt.location,
            complete,
        });
    }
    let _ = o.notices.send(Notice::Delivered {
        key: row.key.clone(),
        version: row.version_id.clone(),
        location: receipt.location,
        complete,
    });
    Ok(())
}

/// Drains one event sink until stopped.
pub async fn drain_events(o: Outbox, sink: Arc<dyn EventSink>, wake: Arc<Notify>) {
    let name = sink.name().to_string();
    let mut episodes = Episodes::load(&o, &name).await;
    let fetch = || o.ledger.due_events(&name, o.clock.now_ms(), BATCH);
    let check = || {
        let sink = sink.clone();
        Box::pin(async move { sink.healthcheck().await })
            as futures_util::future::BoxFuture<'static, _>
    };
    while let Some(due) = next_due(&o, &wake, &name, "event", fetch, &mut episodes, check).await {
        let ids: Vec<String> = due.iter().map(|e| e.id.clone()).collect();
        match sink.send(&due).await {
            Ok(()) => {
                for ev in &due {
                    o.health.metrics.event_sent(&name, ev.kind.as_str());
                }
                let recorded = o.ledger.events_sent(&name, &ids).await;
                if let Err(e @ StateError::LeaseLost { .. }) = &recorded {
                    info!(sink = %name, error = %e, "Events sent, but not recorded here: a shard moved to another replica, which sends them again (harmless, by their ids).");
                    continue;
                }
                if let Err(e) = recorded {
                    // Sent, but not recorded (a full disk): sending again at once would repeat
                    // them again and again. Wait, with backoff.
                    let delay = episodes.ledger_failed();
                    error!(sink = %name, error = %e, retry_in = %humantime::format_duration(delay), "Events sent, but the ledger could not record it; the sink waits for the ledger (they will be sent again, which their ids make harmless).");
                    if !idle(&o, &Notify::new(), delay).await {
                        return;
                    }
                    continue;
                }
                episodes.succeeded(&o).await;
            }
            Err(e) => {
                let now = o.clock.now_ms();
                let (delay, park) = match e.disposition {
                    Disposition::Retry => (episodes.failed(&o, &e).await, false),
                    Disposition::Park => (Duration::ZERO, true),
                    Disposition::Disable => {
                        episodes.failed(&o, &e).await;
                        error!(sink = %name, error = %e, "Event sink disabled; its backlog is kept until it is reconfigured.");
                        return;
                    }
                };
                warn!(sink = %name, events = ids.len(), error = %e, "Sending events failed.");
                if let Err(le) = o
                    .ledger
                    .events_failed(&name, &ids, &e.to_string(), now, park)
                    .await
                {
                    error!(sink = %name, error = %le, "Cannot record failed events in the ledger.");
                }
                if !delay.is_zero() && !back_off(&o, delay, check).await {
                    return;
                }
            }
        }
    }
}
