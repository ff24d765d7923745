//! The running simulator: shared state behind one mutex, the router, trace ids and the
//! request counters that tests read through `/__sim/stats`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::discovery::Listing;
use super::draw::{Drawn, draw};
use super::faults::FaultPlan;
use super::rng::{SplitMix64, mix};
use super::scenario::{ApiSpec, Scenario};
use super::state::Store;
use super::{SimError, api, control};

/// Everything the handlers share. Configuration is immutable; what changes sits in `inner`.
pub struct Sim {
    pub api: ApiSpec,
    /// The [guess] answers resolved for this run (pinned by the scenario or drawn from its seed).
    pub drawn: Drawn,
    /// Whether the index-level (deprecated) routes still exist; `POST /__sim/api/index-routes`
    /// flips it while clients run, hence an atomic rather than part of `api`.
    pub index_routes: AtomicBool,
    /// access key -> secret key. Never logged.
    pub secrets: HashMap<String, String>,
    pub clock: Clock,
    pub seed: u64,
    pub shutdown: CancellationToken,
    trace_counter: AtomicU64,
    /// A std mutex, never held across an await: every critical section is a few field updates
    /// (or one asset lookup), far cheaper than an async lock on loopback request rates.
    inner: Mutex<Inner>,
}

pub struct Inner {
    pub store: Store,
    pub stats: Stats,
    pub faults: FaultPlan,
    pub rng: SplitMix64,
    pub bucket: Option<Bucket>,
    pub listing: Listing,
}

/// Most request times kept for `GET /__sim/requests` (the oldest are dropped first).
pub const MAX_REQUEST_TIMES: usize = 1_000_000;

/// Counts of API requests (control routes excluded).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub total: u64,
    /// When each request arrived (tokio clock), oldest first, at most [`MAX_REQUEST_TIMES`];
    /// served by `GET /__sim/requests`, not by `/__sim/stats`.
    #[serde(skip)]
    pub times: std::collections::VecDeque<tokio::time::Instant>,
    pub by_route: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    pub by_fault: BTreeMap<String, u64>,
    /// `route status` pairs, e.g. `"index_status 200"`, for precise assertions.
    pub by_route_status: BTreeMap<String, u64>,
    /// Each request's time, path and User-Agent, once `POST /__sim/requests/log` turned the
    /// log on (at most [`MAX_LOGGED_REQUESTS`], the oldest dropped first).
    #[serde(skip)]
    pub log: Option<std::collections::VecDeque<LoggedRequest>>,
}

/// Most requests kept by the request log.
pub const MAX_LOGGED_REQUESTS: usize = 200_000;

/// One request in the log.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// Milliseconds since the simulator started.
    pub t_ms: u64,
    /// The path, without the query.
    pub path: String,
    /// The `User-Agent` header (empty when absent).
    pub agent: String,
}

impl Stats {
    /// Logs a request, when the log is on.
    pub fn log(&mut self, t_ms: u64, path: &str, agent: &str) {
        if let Some(log) = &mut self.log {
            if log.len() >= MAX_LOGGED_REQUESTS {
                log.pop_front();
            }
            log.push_back(LoggedRequest {
                t_ms,
                path: path.to_owned(),
                agent: agent.to_owned(),
            });
        }
    }

    pub fn record(&mut self, route: &str, status: u16, fault: Option<&str>) {
        self.total += 1;
        if self.times.len() >= MAX_REQUEST_TIMES {
            self.times.pop_front();
        }
        self.times.push_back(crate::clock::instant_now());
        *self.by_route.entry(route.to_owned()).or_default() += 1;
        *self.by_status.entry(status.to_string()).or_default() += 1;
        *self
            .by_route_status
            .entry(format!("{route} {status}"))
            .or_default() += 1;
        if let Some(f) = fault {
            *self.by_fault.entry(f.to_owned()).or_default() += 1;
        }
    }
}

/// The `[api] requests_per_second` quota: a token bucket holding one second of requests.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Sim {
    pub fn new(scenario: Scenario, shutdown: CancellationToken) -> Result<Self, SimError> {
        scenario.validate()?;
        let clock = Clock::new();
        let start = clock.start();
        let mut store = Store::new();
        for spec in scenario.expanded_assets() {
            store
                .add(&spec, scenario.seed, start, &clock)
                .map_err(SimError::Invalid)?;
        }
        let secrets = scenario
            .credentials
            .iter()
            .map(|c| (c.access_key.clone(), c.secret_key.clone()))
            .collect();
        let bucket = scenario
            .api
            .requests_per_second
            .map(|r| Bucket::new(r, start));
        let drawn = draw(scenario.seed, &scenario.api, &scenario.listing);
        let listing = Listing {
            page_base: drawn.page_base,
            pages_forever: scenario.listing.pages_forever,
            lying_total_count: scenario.listing.lying_total_count,
            injected_asset_ids: scenario.listing.injected_asset_ids,
        };
        Ok(Self {
            index_routes: AtomicBool::new(scenario.api.index_routes),
            drawn,
            api: scenario.api,
            secrets,
            clock,
            seed: scenario.seed,
            shutdown,
            trace_counter: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                store,
                stats: Stats::default(),
                faults: FaultPlan {
                    rates: scenario.faults,
                    queued: VecDeque::new(),
                },
                rng: SplitMix64::new(mix(&[scenario.seed, 0xFA17])),
                bucket,
                listing,
            }),
        })
    }

    /// The state; a poisoned lock (a panic elsewhere) is recovered rather than spread.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn index_routes(&self) -> bool {
        self.index_routes.load(Ordering::Relaxed)
    }

    /// What `GET /__sim/api` reports: every [guess] answer of this run, drawn or pinned.
    pub fn api_json(&self) -> serde_json::Value {
        let listing = self.lock().listing.clone();
        serde_json::json!({
            "result_not_ready": self.drawn.result_not_ready,
            "error_envelope": self.drawn.error_envelope,
            "index_routes": self.index_routes(),
            "listing": listing,
            "gateway_error_code_as_number": self.api.gateway_error_code_as_number,
            "scene_summary_id_as_number": self.api.scene_summary_id_as_number,
            "requests_per_second": self.api.requests_per_second,
        })
    }

    /// 32 hex digits, unique per response within a run and repeatable for a seed.
    fn next_trace_id(&self) -> String {
        let n = self.trace_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", mix(&[self.seed, n]))
    }
}

/// Adds `x-ncp-trace-id` to every response, API or control, success or error.
async fn add_trace_id(State(sim): State<Arc<Sim>>, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&sim.next_trace_id()) {
        resp.headers_mut().insert("x-ncp-trace-id", v);
    }
    resp
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .nest("/__sim", control::router())
        .fallback(api::handle)
        .layer(axum::middleware::map_response_with_state(
            sim.clone(),
            add_trace_id,
        ))
        .with_state(sim)
}
