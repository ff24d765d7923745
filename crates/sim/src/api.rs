//! The Media Intelligence API as the simulator serves it: path shapes of both generations (§1)
//! and of the discovery calls (§6), the gateway layer (removed routes, auth, quota, faults) and
//! the service answers with their envelopes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::auth;
use super::clock::kst_string;
use super::discovery;
use super::faults::{self, FaultKind};
use super::scenario::ErrorEnvelope;
use super::server::Sim;
use super::state::{Refusal, ResultSnapshot};
use super::text;

/// Request bodies above this get the gateway's 413 / errorCode 430.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Which API generation a route belongs to: `Index` routes are the deprecated ones that
/// `index_routes = false` removes; `Asset` is everything current (discovery included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    Index,
    Asset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Request,
    Status,
    Result,
    Cancel,
    /// `GET …/projects/{p}/assets` (§6).
    ListAssets,
    /// `GET …/assets/{a}/index/status` (§6).
    AnalysisStatus,
    /// `GET …/assets/{a}/indexes` (§7, deprecated).
    IndexList,
}

/// A request matched to one of the documented operations.
#[derive(Debug)]
struct Route<'a> {
    generation: Generation,
    op: Op,
    workspace: &'a str,
    project_id: &'a str,
    /// Empty for the project-level listing.
    asset_id: &'a str,
    index_id: Option<&'a str>,
    summary_id: Option<&'a str>,
}

impl<'a> Route<'a> {
    /// Matches method and path exactly as in the doc's tables; anything else is the gateway's
    /// 404 (a wrong method on a known path included: the gateway routes on both).
    fn parse(method: &Method, path: &'a str) -> Option<Self> {
        let segs: Vec<&str> = path.split('/').collect();
        let [
            "",
            "api",
            "v1",
            "workspaces",
            ws,
            "projects",
            proj,
            "assets",
            rest @ ..,
        ] = segs.as_slice()
        else {
            return None;
        };
        if ws.is_empty() || proj.is_empty() {
            return None;
        }
        let m = |want: Method| *method == want;
        let [asset, rest @ ..] = rest else {
            return m(Method::GET).then_some(Self {
                generation: Generation::Asset,
                op: Op::ListAssets,
                workspace: ws,
                project_id: proj,
                asset_id: "",
                index_id: None,
                summary_id: None,
            });
        };
        if asset.is_empty() {
            return None;
        }
        let (generation, op, index_id, summary_id) = match rest {
            ["indexes", i, "scene-summaries"] if m(Method::POST) => {
                (Generation::Index, Op::Request, Some(*i), None)
            }
            ["indexes", i, "scene-summaries"] if m(Method::GET) => {
                (Generation::Index, Op::Result, Some(*i), None)
            }
            ["indexes", i, "scene-summaries", s, "status"] if m(Method::GET) => {
                (Generation::Index, Op::Status, Some(*i), Some(*s))
            }
            ["indexes", i, "scene-summaries", s] if m(Method::DELETE) => {
                (Generation::Index, Op::Cancel, Some(*i), Some(*s))
            }
            ["indexes"] if m(Method::GET) => (Generation::Index, Op::IndexList, None, None),
            ["scene-summary"] if m(Method::POST) => (Generation::Asset, Op::Request, None, None),
            ["scene-summary"] if m(Method::GET) => (Generation::Asset, Op::Result, None, None),
            ["scene-summary", "status"] if m(Method::GET) => {
                (Generation::Asset, Op::Status, None, None)
            }
            ["scene-summary", "cancel"] if m(Method::POST) => {
                (Generation::Asset, Op::Cancel, None, None)
            }
            ["index", "status"] if m(Method::GET) => {
                (Generation::Asset, Op::AnalysisStatus, None, None)
            }
            _ => return None,
        };
        if index_id.is_some_and(str::is_empty) || summary_id.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            generation,
            op,
            workspace: ws,
            project_id: proj,
            asset_id: asset,
            index_id,
            summary_id,
        })
    }

    /// The name `/__sim/stats` counts this route under.
    fn kind(&self) -> &'static str {
        match (self.generation, self.op) {
            (Generation::Index, Op::Request) => "index_request",
            (Generation::Index, Op::Status) => "index_status",
            (Generation::Index, Op::Result) => "index_result",
            (Generation::Index, Op::Cancel) => "index_cancel",
            (_, Op::IndexList) => "index_list",
            (Generation::Asset, Op::Request) => "asset_request",
            (Generation::Asset, Op::Status) => "asset_status",
            (Generation::Asset, Op::Result) => "asset_result",
            (Generation::Asset, Op::Cancel) => "asset_cancel",
            (_, Op::ListAssets) => "list_assets",
            (_, Op::AnalysisStatus) => "analysis_status",
        }
    }
}

/// A complete service answer, kept as bytes so a fault can still break it afterwards.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

#[derive(Serialize)]
struct Success<T: Serialize> {
    code: &'static str,
    message: &'static str,
    result: T,
}

fn success<T: Serialize>(result: T) -> Answer {
    let body = serde_json::to_vec(&Success {
        code: "0",
        message: "success",
        result,
    });
    match body {
        Ok(body) => Answer {
            status: StatusCode::OK,
            body,
        },
        // Serializing our own plain structs cannot fail; answer like the real 500 if it did.
        Err(_) => Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: br#"{"code":"99999","message":"Internal error."}"#.to_vec(),
        },
    }
}

/// A service error body in one of the envelopes NCP uses (§5, §6).
fn error_body(
    envelope: ErrorEnvelope,
    code: serde_json::Value,
    message: &str,
) -> serde_json::Value {
    let inner = serde_json::json!({ "code": code, "message": message });
    match envelope {
        ErrorEnvelope::Top => inner,
        ErrorEnvelope::ResponseError => serde_json::json!({ "responseError": inner }),
        // The gateway's wrapper with the service's fields: no errorCode, no details.
        ErrorEnvelope::Error => serde_json::json!({ "error": inner }),
        ErrorEnvelope::ReturnCode => {
            serde_json::json!({ "returnCode": code, "returnMessage": message })
        }
    }
}

/// A service error in the run's envelope for every error but "not completed".
fn service_error(sim: &Sim, status: StatusCode, code: &str, message: &str) -> Answer {
    let body = error_body(sim.drawn.error_envelope, code.into(), message);
    Answer {
        status,
        body: body.to_string().into_bytes(),
    }
}

/// The result call before completion, as drawn (or pinned) for this run.
fn not_ready(sim: &Sim) -> Answer {
    let n = &sim.drawn.result_not_ready;
    let body = error_body(n.envelope, n.code.to_json(), &n.message);
    Answer {
        status: StatusCode::from_u16(n.status).unwrap_or(StatusCode::BAD_REQUEST),
        body: body.to_string().into_bytes(),
    }
}

fn refusal(sim: &Sim, r: Refusal, generation: Generation) -> Answer {
    let bad = StatusCode::BAD_REQUEST;
    match r {
        Refusal::InProgress => {
            service_error(sim, bad, "10030", "Scene summary is already in progress.")
        }
        Refusal::PartialBeforeFull => service_error(
            sim,
            bad,
            "10031",
            "Scene ids can be given only after a full scene summary has completed.",
        ),
        Refusal::NotCancelable => service_error(
            sim,
            bad,
            "10032",
            "Scene summary can be canceled only while waiting or summarizing.",
        ),
        Refusal::NeverSummarized if generation == Generation::Asset => service_error(
            sim,
            StatusCode::NOT_FOUND,
            "10041",
            "Scene summary does not exist.",
        ),
        Refusal::NotReady | Refusal::NeverSummarized => not_ready(sim),
        Refusal::BadSceneIds(_) => invalid(sim),
    }
}

fn invalid(sim: &Sim) -> Answer {
    service_error(sim, StatusCode::BAD_REQUEST, "10001", "Invalid Request.")
}

fn not_found(sim: &Sim) -> Answer {
    service_error(sim, StatusCode::NOT_FOUND, "10040", "Not found.")
}

/// A gateway error: `{"error":{…}}` plus the APIGW origin header (§5).
pub fn gateway_error(
    sim: &Sim,
    status: StatusCode,
    code: &str,
    message: &str,
    details: &str,
) -> Response {
    let code_value = match (sim.api.gateway_error_code_as_number, code.parse::<u64>()) {
        (true, Ok(n)) => serde_json::Value::from(n),
        _ => serde_json::Value::from(code),
    };
    let body = serde_json::json!({
        "error": { "errorCode": code_value, "message": message, "details": details }
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    h.insert(
        "x-ncp-apigw-response-origin",
        HeaderValue::from_static("APIGW"),
    );
    resp
}

fn into_response(a: Answer) -> Response {
    let mut resp = Response::new(Body::from(a.body));
    *resp.status_mut() = a.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    resp
}

/// Every non-control request lands here: route, authenticate, quota, fault, serve.
pub async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path_with_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let url_not_found = || {
        gateway_error(
            &sim,
            StatusCode::NOT_FOUND,
            "300",
            "Not Found Exception",
            "URL not found.",
        )
    };
    {
        let mut inner = sim.lock();
        if inner.stats.log.is_some() {
            let t_ms = u64::try_from(
                crate::clock::instant_now()
                    .saturating_duration_since(sim.clock.start())
                    .as_millis(),
            )
            .unwrap_or(u64::MAX);
            let agent = parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            inner.stats.log(t_ms, parts.uri.path(), agent);
        }
    }
    let Some(route) = Route::parse(&parts.method, parts.uri.path()) else {
        sim.lock().stats.record("unknown", 404, None);
        return url_not_found();
    };
    let kind = route.kind();
    // Removed routes answer like unknown paths, before auth, as the gateway would once the
    // deprecated generation is gone; counted under their own kind so tests see who still calls.
    if route.generation == Generation::Index && !sim.index_routes() {
        sim.lock().stats.record(kind, 404, Some("removed"));
        return url_not_found();
    }
    if let Err(failure) = auth::verify(
        &parts.headers,
        parts.method.as_str(),
        &path_with_query,
        &sim.secrets,
        sim.clock.gateway_now_ms(),
    ) {
        sim.lock().stats.record(kind, 401, None);
        return gateway_error(
            &sim,
            StatusCode::UNAUTHORIZED,
            "200",
            "Authentication Failed",
            &failure.details(),
        );
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        sim.lock().stats.record(kind, 413, None);
        return gateway_error(
            &sim,
            StatusCode::PAYLOAD_TOO_LARGE,
            "430",
            "Request Entity Too Large",
            "Request body is larger than 1 MiB.",
        );
    };

    let (throttled, fault) = {
        let mut inner = sim.lock();
        let inner = &mut *inner;
        let now = crate::clock::instant_now();
        let throttled = inner.bucket.as_mut().is_some_and(|b| !b.take(now));
        // A throttled request gets no fault draw, so the quota does not shift the fault stream.
        let fault = if throttled {
            FaultKind::None.into()
        } else {
            inner.faults.next(&mut inner.rng)
        };
        (throttled, fault)
    };
    let (fault, retry_after) = (fault.kind, fault.retry_after);
    if throttled {
        sim.lock().stats.record(kind, 429, Some("quota"));
        return gateway_error(
            &sim,
            StatusCode::TOO_MANY_REQUESTS,
            "420",
            "Rate Limited",
            "Rate limited.",
        );
    }
    let fault_name = (fault != FaultKind::None).then(|| fault.name());
    if let Some((status, code, message, details)) = fault.gateway() {
        sim.lock().stats.record(kind, status.as_u16(), fault_name);
        let mut resp = gateway_error(&sim, status, code, message, details);
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        } else if fault == FaultKind::ThrottleRetryAfter {
            let secs = sim.lock().faults.rates.retry_after.0.as_secs().max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return resp;
    }

    let answer = serve(&sim, &route, parts.uri.query(), &body);
    let status = if fault == FaultKind::Oversized {
        StatusCode::OK
    } else {
        answer.status
    };
    sim.lock().stats.record(kind, status.as_u16(), fault_name);

    // Faults below happen after the service acted: the state changed, the answer is lost.
    match fault {
        FaultKind::Slow => {
            let delay = sim.lock().faults.rates.slow_delay.0;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = sim.shutdown.cancelled() => {}
            }
            into_response(answer)
        }
        FaultKind::Reset => faults::reset(answer.status),
        FaultKind::Truncated => faults::truncated(answer.status, answer.body),
        FaultKind::MalformedJson => faults::malformed(answer.status, &answer.body),
        FaultKind::Oversized => {
            let bytes = sim.lock().faults.rates.oversized_bytes;
            faults::oversized(bytes, sim.shutdown.clone())
        }
        _ => into_response(answer),
    }
}

/// What the POST body asks for: a full run (None) or these scenes.
fn parse_request_body(body: &[u8]) -> Result<Option<Vec<u32>>, ()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| ())?;
    let obj = v.as_object().ok_or(())?;
    let ids = match obj.get("sceneIds") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items)) => {
            // Numbers, or digit strings (ids travel as strings elsewhere in this API).
            let ids = items
                .iter()
                .map(|i| match i {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(s) => s.parse().ok(),
                    _ => None,
                })
                .map(|n| n.and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or(())?;
            Some(ids)
        }
        Some(_) => return Err(()),
    };
    match obj.get("locale") {
        None | Some(serde_json::Value::Null) => {}
        // `locale` is for full runs only (§2).
        Some(serde_json::Value::String(_)) if ids.is_none() => {}
        Some(_) => return Err(()),
    }
    Ok(ids)
}

/// The discovery calls (§6, §7), rendered under the lock: a page is at most 1,000 entries.
fn discover(sim: &Sim, route: &Route<'_>, query: Option<&str>) -> Answer {
    let mut inner = sim.lock();
    let inner = &mut *inner;
    match route.op {
        Op::ListAssets => match discovery::parse_page_query(query, inner.listing.page_base) {
            Some((page, size)) => success(discovery::list_assets(
                &inner.store,
                &inner.listing,
                route.workspace,
                route.project_id,
                page,
                size,
            )),
            None => invalid(sim),
        },
        Op::AnalysisStatus => {
            let Some(i) = inner
                .store
                .latest(route.workspace, route.project_id, route.asset_id)
            else {
                return not_found(sim);
            };
            if let Some(a) = inner.store.assets.get_mut(i) {
                a.served += 1;
            }
            match discovery::analysis_status(&inner.store, i) {
                Some(v) => success(v),
                None => not_found(sim),
            }
        }
        _ => {
            let store = &inner.store;
            if store
                .indexes_of(route.workspace, route.project_id, route.asset_id)
                .is_empty()
            {
                return not_found(sim);
            }
            success(discovery::index_list(
                store,
                &sim.clock,
                route.workspace,
                route.project_id,
                route.asset_id,
            ))
        }
    }
}

/// The service proper. Holds the lock only for the state change; results render after.
fn serve(sim: &Sim, route: &Route<'_>, query: Option<&str>, body: &[u8]) -> Answer {
    if matches!(
        route.op,
        Op::ListAssets | Op::AnalysisStatus | Op::IndexList
    ) {
        return discover(sim, route, query);
    }
    let requested = if route.op == Op::Request {
        match parse_request_body(body) {
            Ok(ids) => Some(ids),
            Err(()) => return invalid(sim),
        }
    } else {
        None
    };
    let snapshot = {
        let mut inner = sim.lock();
        let store = &mut inner.store;
        let found = match route.generation {
            Generation::Index => store.find(
                route.workspace,
                route.project_id,
                route.asset_id,
                route.index_id.unwrap_or_default(),
            ),
            Generation::Asset => store.latest(route.workspace, route.project_id, route.asset_id),
        };
        let Some(i) = found else {
            return not_found(sim);
        };
        let new_id = (route.op == Op::Request).then(|| store.alloc_summary_id());
        let Some(asset) = store.assets.get_mut(i) else {
            return not_found(sim);
        };
        asset.settle(crate::clock::instant_now(), &sim.clock);
        asset.served += 1;
        if let Some(s) = route.summary_id
            && s != asset.summary_id
        {
            return not_found(sim);
        }
        match route.op {
            Op::Status => {
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct StatusOut {
                    status: &'static str,
                    index_id: u64,
                }
                return success(StatusOut {
                    status: asset.status().as_str(),
                    index_id: asset.index_id,
                });
            }
            Op::Request => {
                let ids = requested.unwrap_or_default();
                let id = new_id.unwrap_or_default();
                return match asset.request(crate::clock::instant_now(), ids, id) {
                    Ok(id) => {
                        let id_value = match (sim.api.scene_summary_id_as_number, id.parse::<u64>())
                        {
                            (true, Ok(n)) => serde_json::Value::from(n),
                            _ => serde_json::Value::from(id),
                        };
                        success(serde_json::json!({ "sceneSummaryId": id_value }))
                    }
                    Err(r) => refusal(sim, r, route.generation),
                };
            }
            Op::Cancel => {
                return match asset.cancel() {
                    Ok(()) => success(serde_json::json!({ "status": asset.status().as_str() })),
                    Err(r) => refusal(sim, r, route.generation),
                };
            }
            Op::Result => match asset.result(&sim.clock) {
                Ok(s) => s,
                Err(r) => return refusal(sim, r, route.generation),
            },
            // Served by `discover` above.
            Op::ListAssets | Op::AnalysisStatus | Op::IndexList => return not_found(sim),
        }
    };
    success(render_result(&snapshot))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultOut {
    index_id: u64,
    scene_summary_info: InfoOut,
    scene_summaries: Vec<SceneOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoOut {
    last_analyzed_at: String,
    analyzed_scene_ids: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SceneOut {
    scene: u32,
    start_ms: u64,
    end_ms: u64,
    /// Absent for scenes never analyzed (§3).
    #[serde(skip_serializing_if = "Option::is_none")]
    scene_summary: Option<SummaryOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryOut {
    description: String,
    metadata_changed_after_summary: bool,
    analyzed_at: String,
}

/// The §3 result, texts generated on the fly from (seed, scene, analysis time).
fn render_result(s: &ResultSnapshot) -> ResultOut {
    let mut start = 0u64;
    let scenes = (1..=s.scenes)
        .map(|scene| {
            let len = text::scene_length_ms(s.seed, scene);
            let out = SceneOut {
                scene,
                start_ms: start,
                end_ms: start + len,
                scene_summary: s.analyzed_at(scene).map(|at| SummaryOut {
                    description: text::description(s.seed, scene, at),
                    metadata_changed_after_summary: s
                        .metadata_changed
                        .binary_search(&scene)
                        .is_ok(),
                    analyzed_at: kst_string(s.wall_secs(at)),
                }),
            };
            start += len;
            out
        })
        .collect();
    ResultOut {
        index_id: s.index_id,
        scene_summary_info: InfoOut {
            last_analyzed_at: kst_string(s.wall_secs(s.last_analyzed_at)),
            analyzed_scene_ids: s
                .analyzed_scene_ids
                .as_ref()
                .map(|ids| ids.iter().map(u32::to_string).collect()),
        },
        scene_summaries: scenes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_documented_table_only() {
        let base = "/api/v1/workspaces/w/projects/1/assets/2";
        let ok = [
            (Method::POST, "/indexes/3/scene-summaries", "index_request"),
            (Method::GET, "/indexes/3/scene-summaries", "index_result"),
            (
                Method::GET,
                "/indexes/3/scene-summaries/4/status",
                "index_status",
            ),
            (
                Method::DELETE,
                "/indexes/3/scene-summaries/4",
                "index_cancel",
            ),
            (Method::POST, "/scene-summary", "asset_request"),
            (Method::GET, "/scene-summary", "asset_result"),
            (Method::GET, "/scene-summary/status", "asset_status"),
            (Method::POST, "/scene-summary/cancel", "asset_cancel"),
            (Method::GET, "/index/status", "analysis_status"),
            (Method::GET, "/indexes", "index_list"),
        ];
        for (m, p, kind) in ok {
            let path = format!("{base}{p}");
            assert_eq!(
                Route::parse(&m, &path).map(|r| r.kind()),
                Some(kind),
                "{path}"
            );
        }
        for (m, p) in [
            (Method::DELETE, "/scene-summary"),
            (Method::GET, "/scene-summary/"),
            (Method::GET, "/indexes//scene-summaries"),
            (Method::GET, "/scene-summaries"),
            (Method::POST, "/indexes"),
            (Method::GET, "/index"),
            (Method::GET, "/index/status/"),
        ] {
            assert!(Route::parse(&m, &format!("{base}{p}")).is_none(), "{p}");
        }
        let list = "/api/v1/workspaces/w/projects/1/assets";
        assert_eq!(
            Route::parse(&Method::GET, list).map(|r| r.kind()),
            Some("list_assets")
        );
        assert!(Route::parse(&Method::POST, list).is_none());
        assert!(Route::parse(&Method::GET, &format!("{list}/")).is_none());
        assert!(Route::parse(&Method::GET, "/api/v1/workspaces/w/projects//assets").is_none());
    }

    #[test]
    fn request_bodies() {
        assert_eq!(parse_request_body(b""), Ok(None));
        assert_eq!(parse_request_body(b"{}"), Ok(None));
        assert_eq!(parse_request_body(br#"{"locale":"ko"}"#), Ok(None));
        assert_eq!(
            parse_request_body(br#"{"sceneIds":[1,"3"]}"#),
            Ok(Some(vec![1, 3]))
        );
        assert!(parse_request_body(br#"{"sceneIds":[1],"locale":"ko"}"#).is_err());
        assert!(parse_request_body(br#"{"sceneIds":[-1]}"#).is_err());
        assert!(parse_request_body(b"[").is_err());
    }
}
