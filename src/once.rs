//! `scenewatch once` (and so the demo): the engine over the in-memory ledger, run until every
//! watch is settled, then the report and its exit code. The same engine as `scenewatch run`:
//! the same polling, events, event sinks, outbox and credential pause; only the ledger and the
//! stop condition differ.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::Clock;
use crate::config::{Config, WatchSpec};
use crate::dry_run::{DryRunEventSink, DryRunSink, Plan};
use crate::engine::{self, Mode, Observer, Setup};
use crate::exit;
use crate::health::Health;
use crate::sink::{self, EventSink, EventSinkConfig, Sink, SinkConfig, SinkError};
use crate::state::{MemoryLedger, SharedLedger};
use crate::watch::WatchState;

/// How `once` runs.
#[derive(Default, Clone)]
pub struct OnceOptions {
    /// Give up after this long (`--timeout`); unfinished watches are reported as such.
    pub timeout: Option<Duration>,
    /// Told about every poll and delivery (the progress display).
    pub observer: Option<Arc<dyn Observer>>,
    /// `--dry-run`: poll and fetch, write nothing; the report's `dry_run` says what would have
    /// been written.
    pub dry_run: bool,
}

/// How one watch ended.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// The watch.
    pub spec: WatchSpec,
    /// Its final state.
    pub state: WatchState,
    /// Where the result was written, one per sink.
    pub locations: Vec<String>,
    /// The delivery error, if a sink gave up.
    pub sink_error: Option<String>,
    /// Time from the start of the run to the watch's end.
    pub elapsed: Duration,
}

/// What `once` did.
#[derive(Debug, Clone, Default)]
pub struct OnceReport {
    /// One per watch, in config order.
    pub outcomes: Vec<WatchOutcome>,
    /// Set when the run ended with the credentials refused.
    pub auth_failure: Option<String>,
    /// Set when the run ended with the quota used up.
    pub quota_exceeded: Option<String>,
    /// `--timeout` passed first.
    pub timed_out: bool,
    /// Assets of watched assets or projects that never got an index to watch.
    pub unresolved: Vec<String>,
    /// Set when the run was interrupted.
    pub interrupted: bool,
    /// `--dry-run`: what would have been written, to print.
    pub dry_run: Option<String>,
}

impl OnceReport {
    /// The process exit code: see [`crate::exit`].
    pub fn exit_code(&self) -> u8 {
        if self.auth_failure.is_some() || self.quota_exceeded.is_some() {
            exit::AUTH
        } else if self.interrupted {
            exit::INTERRUPTED
        } else if self.outcomes.iter().any(|o| o.sink_error.is_some()) {
            exit::SINK
        } else if self.timed_out {
            exit::TIMEOUT
        } else if self.unresolved.is_empty()
            && self.outcomes.iter().all(|o| o.state.phase.is_success())
        {
            exit::OK
        } else {
            exit::NOT_ALL_COMPLETED
        }
    }
}

/// Builds the result sinks and checks that each can take deliveries; the error names the sink
/// at fault (and maps to exit code 74).
pub async fn sinks(config: &Config) -> Result<Vec<Arc<dyn Sink>>, SinkError> {
    let mut out = Vec::new();
    for c in &config.sinks {
        let s = sink::build(c)?;
        s.healthcheck().await?;
        out.push(s);
    }
    Ok(out)
}

/// Builds the event sinks; one that is not healthy is warned about (its events wait in the
/// ledger and are retried), as in the daemon.
pub async fn event_sinks(config: &Config) -> Result<Vec<Arc<dyn EventSink>>, SinkError> {
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

/// The result sinks and the event sinks of a run.
type Sinks = (Vec<Arc<dyn Sink>>, Vec<Arc<dyn EventSink>>);

/// The stand-ins of `--dry-run` for every configured sink and event sink: built as configured
/// (no IO), never called, no healthcheck (the file sink's writes a probe).
fn dry_run_sinks(config: &Config, plan: &Arc<Plan>) -> Result<Sinks, SinkError> {
    let mut out: Vec<Arc<dyn Sink>> = Vec::new();
    for c in &config.sinks {
        let kind = match c {
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Jsonl(_) => "jsonl",
            SinkConfig::Webhook(_) => "webhook",
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(_) => "postgres",
            #[cfg(feature = "s3")]
            SinkConfig::S3(_) => "s3",
        };
        out.push(Arc::new(DryRunSink::new(
            sink::build(c)?,
            kind,
            plan.clone(),
        )));
    }
    let events = config
        .event_sinks
        .iter()
        .map(|c| {
            let kind = match c {
                EventSinkConfig::Stdout(_) => "stdout",
                EventSinkConfig::Jsonl(_) => "jsonl",
                EventSinkConfig::Webhook(_) => "webhook",
                #[cfg(feature = "nats")]
                EventSinkConfig::Nats(_) => "nats",
            };
            Arc::new(DryRunEventSink::new(
                c.name().to_string(),
                kind,
                plan.clone(),
            )) as Arc<dyn EventSink>
        })
        .collect();
    Ok((out, events))
}

/// Polls every configured watch until each is settled, then returns the report. `shutdown`
/// interrupts the run (the report then says so).
pub async fn once(
    config: Config,
    options: OnceOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<OnceReport> {
    for w in &config.warnings {
        warn!("{w}");
    }
    let plan = options.dry_run.then(|| Arc::new(Plan::default()));
    let (sinks, event_sinks) = match &plan {
        Some(plan) => dry_run_sinks(&config, plan)?,
        None => (sinks(&config).await?, event_sinks(&config).await?),
    };
    let memory = MemoryLedger::new(
        sinks.iter().map(|s| s.name().to_string()).collect(),
        event_sinks.iter().map(|s| s.name().to_string()).collect(),
    );
    let ledger: SharedLedger = Arc::new(memory);
    let clock = Clock::new();
    let start_ms = clock.now_ms();
    let origins: Vec<String> = config.selectors.iter().map(|s| s.origin()).collect();
    let records = ledger
        .sync_watches(&config.watches, &origins, start_ms)
        .await?;
    // Nothing sends commands to `once`; the sender is kept so the channel stays open.
    let (_commands, rx) = mpsc::channel(1);
    let finished = engine::run(
        Setup {
            config,
            ledger: ledger.clone(),
            records,
            paged: false,
            sinks,
            event_sinks,
            health: Arc::new(Health::default()),
            clock,
            mode: Mode::Once {
                timeout: options.timeout,
            },
            observer: options.observer,
            api: crate::ncp::http_api(),
            replica: None,
        },
        rx,
        shutdown,
    )
    .await?;
    ledger.close().await?;
    let end_ms = clock.now_ms();
    Ok(OnceReport {
        outcomes: finished
            .watches
            .into_iter()
            .map(|w| WatchOutcome {
                elapsed: Duration::from_millis(
                    w.settled_at_ms.unwrap_or(end_ms).saturating_sub(start_ms),
                ),
                spec: w.spec,
                state: w.record.state,
                locations: w.locations,
                sink_error: w.sink_error,
            })
            .collect(),
        auth_failure: finished.auth_refused,
        quota_exceeded: finished.quota_exceeded,
        timed_out: finished.timed_out,
        interrupted: finished.interrupted,
        unresolved: finished.unresolved,
        dry_run: plan.map(|p| p.render()),
    })
}
