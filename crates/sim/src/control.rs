//! Test-only control routes under `/__sim/` (a prefix the real API never uses): inspect state,
//! counters and the run's [guess] answers, move assets through the state machine now, re-index
//! them, remove the index-level routes, set listing quirks, queue faults. No signature needed.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::faults::{FaultKind, MAX_QUEUED, Queued};
use super::scenario::{
    AnalysisStatus, AssetSpec, FaultRates, MAX_TEXT_BYTES, Status, check_listing,
};
use super::server::Sim;
use super::state::{Reindex, ReindexError};

type S = State<Arc<Sim>>;

pub fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/state", get(state))
        .route("/api", get(api))
        .route("/api/index-routes", post(index_routes))
        .route("/listing", get(listing_get).post(listing_post))
        .route("/stats", get(stats))
        .route("/requests", get(requests))
        .route("/requests/log", get(request_log).post(request_log_on))
        .route("/stats/reset", post(stats_reset))
        .route("/assets", post(add_asset))
        .route(
            "/assets/{workspace}/{project_id}/{asset_id}/reindex",
            post(reindex),
        )
        .route(
            "/assets/{workspace}/{project_id}/{asset_id}/analysis",
            post(analysis),
        )
        .route(
            "/assets/{workspace}/{project_id}/{asset_id}/advance",
            post(advance),
        )
        .route(
            "/assets/{workspace}/{project_id}/{asset_id}/force",
            post(force),
        )
        .route(
            "/assets/{workspace}/{project_id}/{asset_id}/metadata-changed",
            post(metadata_changed),
        )
        .route("/faults/next", post(faults_next).delete(faults_clear))
        .route("/faults/rates", get(rates_get).put(rates_put))
        .route("/clock/skew", post(skew))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such control route".into()) })
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn err(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// JSON bodies are parsed here rather than by axum's extractor so errors stay JSON.
/// A control-route failure, turned into a JSON response by `err` (kept small for `Result`).
type Failure = (StatusCode, String);

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// Like `body`, but an empty body (or JSON `null`) means `{}`: for routes whose every field is
/// optional.
fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Failure> {
    if bytes.trim_ascii().is_empty() || bytes.trim_ascii() == b"null" {
        Ok(T::default())
    } else {
        body(bytes)
    }
}

#[derive(Deserialize)]
struct AssetPath {
    workspace: String,
    project_id: String,
    asset_id: String,
}

/// `?index_id=` picks one index of the asset; default: its latest.
#[derive(Deserialize)]
struct IndexQuery {
    index_id: Option<String>,
}

/// Runs `f` on the addressed index (settled to now) and answers with its new state.
fn with_asset(
    sim: &Sim,
    p: &AssetPath,
    q: &IndexQuery,
    f: impl FnOnce(&mut super::state::Asset, Instant) -> Result<(), Failure>,
) -> Response {
    let mut inner = sim.lock();
    let found = match &q.index_id {
        Some(i) => inner
            .store
            .find(&p.workspace, &p.project_id, &p.asset_id, i),
        None => inner.store.latest(&p.workspace, &p.project_id, &p.asset_id),
    };
    let latest = found.is_some_and(|i| inner.store.is_latest(i));
    let Some(asset) = found.and_then(|i| inner.store.assets.get_mut(i)) else {
        return err(StatusCode::NOT_FOUND, "no such asset or index".into());
    };
    let now = crate::clock::instant_now();
    asset.settle(now, &sim.clock);
    match f(asset, now) {
        Ok(()) => ok(asset.to_json(&sim.clock, latest)),
        Err((status, message)) => err(status, message),
    }
}

async fn state(State(sim): S) -> Response {
    let api = sim.api_json();
    let mut inner = sim.lock();
    let now = crate::clock::instant_now();
    let store = &mut inner.store;
    for a in &mut store.assets {
        a.settle(now, &sim.clock);
    }
    let assets: Vec<Value> = (0..store.assets.len())
        .filter_map(|i| {
            let latest = store.is_latest(i);
            store.assets.get(i).map(|a| a.to_json(&sim.clock, latest))
        })
        .collect();
    ok(json!({ "assets": assets, "clock_skew_ms": sim.clock.skew_ms(), "api": api }))
}

async fn api(State(sim): S) -> Response {
    ok(sim.api_json())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRoutesBody {
    enabled: bool,
}

async fn index_routes(State(sim): S, bytes: Bytes) -> Response {
    let b: IndexRoutesBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    sim.index_routes
        .store(b.enabled, std::sync::atomic::Ordering::Relaxed);
    ok(json!({ "index_routes": b.enabled }))
}

async fn listing_get(State(sim): S) -> Response {
    let listing = sim.lock().listing.clone();
    ok(serde_json::to_value(listing).unwrap_or(Value::Null))
}

/// Changes only the keys given (unlike `faults/rates`): a test flips one quirk at a time.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingBody {
    page_base: Option<u64>,
    pages_forever: Option<bool>,
    lying_total_count: Option<bool>,
    injected_asset_ids: Option<Vec<String>>,
}

async fn listing_post(State(sim): S, bytes: Bytes) -> Response {
    let b: ListingBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    let injected = b.injected_asset_ids.as_deref().unwrap_or_default();
    if let Err(m) = check_listing(b.page_base, injected) {
        return err(StatusCode::BAD_REQUEST, m);
    }
    let mut inner = sim.lock();
    let l = &mut inner.listing;
    if let Some(v) = b.page_base {
        l.page_base = v;
    }
    if let Some(v) = b.pages_forever {
        l.pages_forever = v;
    }
    if let Some(v) = b.lying_total_count {
        l.lying_total_count = v;
    }
    if let Some(v) = b.injected_asset_ids {
        l.injected_asset_ids = v;
    }
    ok(serde_json::to_value(&*l).unwrap_or(Value::Null))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReindexBody {
    #[serde(default)]
    index_id: Option<Value>,
    #[serde(default)]
    scene_summary_id: Option<Value>,
    scenes: Option<u32>,
    initial: Option<Status>,
    analysis: Option<AnalysisStatus>,
}

/// Ids may be strings or integers, as in scenario files.
fn id_of(v: Option<Value>, what: &str) -> Result<Option<String>, Failure> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err((
            StatusCode::BAD_REQUEST,
            format!("{what} must be a string or a non-negative integer"),
        )),
    }
}

async fn reindex(State(sim): S, Path(p): Path<AssetPath>, bytes: Bytes) -> Response {
    let parsed = optional_body::<ReindexBody>(&bytes).and_then(|b| {
        Ok(Reindex {
            index_id: id_of(b.index_id, "index_id")?,
            scene_summary_id: id_of(b.scene_summary_id, "scene_summary_id")?,
            scenes: b.scenes,
            initial: b.initial,
            analysis: b.analysis,
        })
    });
    let r = match parsed {
        Ok(r) => r,
        Err((status, message)) => return err(status, message),
    };
    let mut inner = sim.lock();
    let store = &mut inner.store;
    let added = store.reindex(
        (&p.workspace, &p.project_id, &p.asset_id),
        r,
        sim.seed,
        crate::clock::instant_now(),
        &sim.clock,
    );
    match added {
        Ok(i) => match store.assets.get(i) {
            Some(a) => ok(a.to_json(&sim.clock, true)),
            None => err(StatusCode::INTERNAL_SERVER_ERROR, "index vanished".into()),
        },
        Err(ReindexError::NoSuchAsset) => err(StatusCode::NOT_FOUND, "no such asset".into()),
        Err(ReindexError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(ReindexError::Exists(m)) => err(StatusCode::CONFLICT, m),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisBody {
    status: AnalysisStatus,
    #[serde(default)]
    message: Option<String>,
}

async fn analysis(
    State(sim): S,
    Path(p): Path<AssetPath>,
    Query(q): Query<IndexQuery>,
    bytes: Bytes,
) -> Response {
    let b: AnalysisBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    if b.message.as_ref().is_some_and(|m| m.len() > MAX_TEXT_BYTES) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("message is longer than {MAX_TEXT_BYTES} bytes"),
        );
    }
    with_asset(&sim, &p, &q, |a, _| {
        a.analysis = b.status;
        a.analysis_message = b.message;
        Ok(())
    })
}

async fn stats(State(sim): S) -> Response {
    let v = serde_json::to_value(&sim.lock().stats).unwrap_or(Value::Null);
    ok(v)
}

/// When each API request arrived, in milliseconds since the simulator started (oldest first,
/// the last million at most; reset with the stats): for tests that check a request rate over
/// every window.
async fn requests(State(sim): S) -> Response {
    let start = sim.clock.start();
    let times: Vec<u64> = sim
        .lock()
        .stats
        .times
        .iter()
        .map(|t| u64::try_from(t.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX))
        .collect();
    ok(json!({ "times_ms": times }))
}

/// `GET /__sim/requests/log`: every request since the log was turned on (time, path,
/// User-Agent), oldest first.
async fn request_log(State(sim): S) -> Response {
    let inner = sim.lock();
    match &inner.stats.log {
        Some(log) => ok(json!({ "requests": log })),
        None => err(
            StatusCode::CONFLICT,
            "the request log is off: POST /__sim/requests/log turns it on".into(),
        ),
    }
}

/// `POST /__sim/requests/log`: turn the request log on (empty).
async fn request_log_on(State(sim): S) -> Response {
    sim.lock().stats.log = Some(Default::default());
    ok(json!({}))
}

async fn stats_reset(State(sim): S) -> Response {
    let mut inner = sim.lock();
    let log = inner.stats.log.as_ref().map(|_| Default::default());
    inner.stats = Default::default();
    inner.stats.log = log;
    drop(inner);
    ok(json!({}))
}

async fn add_asset(State(sim): S, bytes: Bytes) -> Response {
    let spec: AssetSpec = match body(&bytes) {
        Ok(s) => s,
        Err((status, message)) => return err(status, message),
    };
    if let Err(m) = spec.validate() {
        return err(StatusCode::BAD_REQUEST, format!("{}: {m}", spec.label()));
    }
    let mut inner = sim.lock();
    match inner
        .store
        .add(&spec, sim.seed, crate::clock::instant_now(), &sim.clock)
    {
        Ok(i) => match inner.store.assets.get(i) {
            Some(a) => ok(a.to_json(&sim.clock, inner.store.is_latest(i))),
            None => err(StatusCode::INTERNAL_SERVER_ERROR, "asset vanished".into()),
        },
        Err(m) => err(StatusCode::CONFLICT, m),
    }
}

async fn advance(State(sim): S, Path(p): Path<AssetPath>, Query(q): Query<IndexQuery>) -> Response {
    with_asset(&sim, &p, &q, |a, now| {
        if a.advance(now, &sim.clock) {
            Ok(())
        } else {
            Err((
                StatusCode::CONFLICT,
                format!("{} is terminal; use force", a.status().as_str()),
            ))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    status: Status,
}

async fn force(
    State(sim): S,
    Path(p): Path<AssetPath>,
    Query(q): Query<IndexQuery>,
    bytes: Bytes,
) -> Response {
    let b: ForceBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    with_asset(&sim, &p, &q, |a, now| {
        a.force(b.status, now, &sim.clock);
        Ok(())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenesBody {
    scenes: Vec<u32>,
}

async fn metadata_changed(
    State(sim): S,
    Path(p): Path<AssetPath>,
    Query(q): Query<IndexQuery>,
    bytes: Bytes,
) -> Response {
    let b: ScenesBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    with_asset(&sim, &p, &q, |a, _| {
        a.set_metadata_changed(&b.scenes)
            .map_err(|m| (StatusCode::BAD_REQUEST, m))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextBody {
    kind: FaultKind,
    #[serde(default = "one")]
    count: usize,
    /// A `Retry-After` header sent verbatim with these faults (gateway kinds only).
    #[serde(default)]
    retry_after: Option<String>,
}

fn one() -> usize {
    1
}

async fn faults_next(State(sim): S, bytes: Bytes) -> Response {
    let b: NextBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    let mut inner = sim.lock();
    let queued = &mut inner.faults.queued;
    if queued.len().saturating_add(b.count) > MAX_QUEUED {
        return err(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_QUEUED} queued faults"),
        );
    }
    if let Some(v) = &b.retry_after
        && axum::http::HeaderValue::from_str(v).is_err()
    {
        return err(
            StatusCode::BAD_REQUEST,
            "retry_after must be a valid header value (visible ASCII)".to_string(),
        );
    }
    let q = Queued {
        kind: b.kind,
        retry_after: b.retry_after,
    };
    queued.extend(std::iter::repeat_n(q, b.count));
    ok(json!({ "queued": queued.len() }))
}

async fn faults_clear(State(sim): S) -> Response {
    sim.lock().faults.queued.clear();
    ok(json!({ "queued": 0 }))
}

async fn rates_get(State(sim): S) -> Response {
    let rates = sim.lock().faults.rates.clone();
    ok(serde_json::to_value(rates).unwrap_or(Value::Null))
}

async fn rates_put(State(sim): S, bytes: Bytes) -> Response {
    let rates: FaultRates = match body(&bytes) {
        Ok(r) => r,
        Err((status, message)) => return err(status, message),
    };
    if let Err(e) = rates.validate() {
        return err(StatusCode::BAD_REQUEST, e.to_string());
    }
    sim.lock().faults.rates = rates.clone();
    ok(serde_json::to_value(rates).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkewBody {
    ms: i64,
}

async fn skew(State(sim): S, bytes: Bytes) -> Response {
    let b: SkewBody = match body(&bytes) {
        Ok(b) => b,
        Err((status, message)) => return err(status, message),
    };
    sim.clock.set_skew_ms(b.ms);
    ok(json!({ "clock_skew_ms": b.ms }))
}
