//! The client against the simulator, on loopback: every status and every fault kind.
//!
//! Each test starts its own simulator with one asset whose queue and run take an hour, so nothing
//! moves unless a test moves it through the `/__sim/` control routes.

use std::time::Duration;

use scenewatch::ncp::{
    Client, ClientOptions, Credentials, ErrorOrigin, Generation, RemoteStatus, Target, Verdict,
};
use scenewatch::sim::{Scenario, SimHandle, spawn};
use tokio_util::sync::CancellationToken;

const ACCESS_KEY: &str = "IT_ACCESS_KEY";
const SECRET_KEY: &str = "IT_SECRET_KEY_MUST_NEVER_SHOW";

const WS: &str = "it-ws";
const PROJECT: &str = "10";
const ASSET: &str = "20";
const INDEX: &str = "30";
const SUMMARY: &str = "40";
const SCENES: usize = 6;

/// The scenario of every test; `extra` adds or overrides top-level tables (`[api]`, `[faults]`).
/// The result call's "not completed" answer is whatever the simulator draws from the seed: a
/// code the client was never told about.
fn scenario(extra: &str) -> Scenario {
    scenario_seeded(7, extra)
}

fn scenario_seeded(seed: u64, extra: &str) -> Scenario {
    let toml = format!(
        r#"
seed = {seed}

[[credentials]]
access_key = "{ACCESS_KEY}"
secret_key = "{SECRET_KEY}"

[[asset]]
workspace = "{WS}"
project_id = "{PROJECT}"
asset_id = "{ASSET}"
index_id = "{INDEX}"
scene_summary_id = "{SUMMARY}"
scenes = {SCENES}
initial = "BEFORE_SUMMARIZE"
queue = "1h"
run = "1h"

{extra}
"#
    );
    match Scenario::from_toml_str(&toml) {
        Ok(s) => s,
        Err(e) => panic!("test scenario: {e}"),
    }
}

/// A simulator and a client pointed at it; the simulator stops when this is dropped.
struct Env {
    sim: SimHandle,
    shutdown: CancellationToken,
    control: reqwest::Client,
    client: Client,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(extra: &str) -> Env {
    start_with(extra, |_| {}).await
}

async fn start_with(extra: &str, tune: impl FnOnce(&mut ClientOptions)) -> Env {
    start_scenario(scenario(extra), tune).await
}

async fn start_scenario(scenario: Scenario, tune: impl FnOnce(&mut ClientOptions)) -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let sim = spawn(scenario, listener, shutdown.clone()).await.unwrap();
    let mut opts = ClientOptions::new(sim.base_url(), Credentials::new(ACCESS_KEY, SECRET_KEY));
    opts.timeout = Duration::from_secs(5);
    tune(&mut opts);
    let client = Client::new(opts).unwrap();
    Env {
        sim,
        shutdown,
        control: crate::support::http(),
        client,
    }
}

impl Env {
    /// The code of the result call's "not completed" answer this simulator drew, as a string
    /// (the client normalises numeric codes to strings).
    async fn not_ready_code(&self) -> String {
        let url = format!("{}/__sim/api", self.sim.base_url());
        let v: serde_json::Value = self
            .control
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match &v["result_not_ready"]["code"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    async fn control(&self, path: &str, body: serde_json::Value) {
        let url = format!("{}/__sim/{path}", self.sim.base_url());
        let resp = self.control.post(&url).json(&body).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {url}: {status} {text}");
    }

    async fn force(&self, status: &str) {
        let path = format!("assets/{WS}/{PROJECT}/{ASSET}/force");
        self.control(&path, serde_json::json!({ "status": status }))
            .await;
    }

    async fn advance(&self) {
        let path = format!("assets/{WS}/{PROJECT}/{ASSET}/advance");
        self.control(&path, serde_json::json!({})).await;
    }

    async fn fault(&self, kind: &str) {
        self.control(
            "faults/next",
            serde_json::json!({ "kind": kind, "count": 1 }),
        )
        .await;
    }
}

fn target(sid: Option<&str>) -> Target {
    Target {
        workspace: WS.into(),
        project_id: PROJECT.into(),
        asset_id: ASSET.into(),
        index_id: INDEX.into(),
        scene_summary_id: sid.map(String::from),
    }
}

/// Asserts the error side of a verdict: its kind, origin, code, and that the trace id was kept
/// and the secret never shows.
fn check_failure<T: std::fmt::Debug>(
    what: &str,
    v: &Verdict<T>,
    kind: &str,
    origin: ErrorOrigin,
    code: Option<&str>,
) {
    assert_eq!(v.kind(), kind, "{what}: {v:?}");
    let Some(e) = v.error() else {
        panic!("{what}: no error in {v:?}")
    };
    assert_eq!(e.origin, origin, "{what}: {e}");
    if code.is_some() {
        assert_eq!(e.code.as_deref(), code, "{what}: {e}");
    }
    if origin != ErrorOrigin::Transport {
        assert!(
            e.trace_id.as_deref().is_some_and(|t| !t.is_empty()),
            "{what}: trace id lost: {e:?}"
        );
        assert!(e.to_string().contains("trace id"), "{what}: {e}");
    }
    assert!(!e.to_string().contains(SECRET_KEY), "{what}: {e}");
    assert!(!format!("{e:?}").contains(SECRET_KEY), "{what}: {e:?}");
}

#[tokio::test]
async fn every_status_on_both_generations() {
    let env = start("").await;
    let cases = [
        ("BEFORE_SUMMARIZE", RemoteStatus::BeforeSummarize),
        ("WAIT_SUMMARIZE", RemoteStatus::WaitSummarize),
        ("SUMMARIZING", RemoteStatus::Summarizing),
        ("SUMMARIZE_COMPLETED", RemoteStatus::Completed),
        ("SUMMARIZE_FAIL", RemoteStatus::Failed),
        ("SUMMARIZE_CANCELED", RemoteStatus::Canceled),
    ];
    for (wire, want) in cases {
        env.force(wire).await;
        for (generation, t) in [
            (Generation::Index, target(Some(SUMMARY))),
            (Generation::Asset, target(None)),
        ] {
            match env.client.status(generation, &t).await {
                Verdict::Ok(s) => assert_eq!(s.status, want, "{wire} {generation}"),
                other => panic!("{wire} {generation}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn result_is_pending_until_completed_then_has_every_scene() {
    let env = start("").await;
    env.force("WAIT_SUMMARIZE").await;
    let code = env.not_ready_code().await;
    for generation in [Generation::Index, Generation::Asset] {
        let v = env.client.result(generation, &target(None)).await;
        // Not a code the client was told about: "not ready", never a refusal.
        check_failure(
            &format!("{generation} waiting"),
            &v,
            "not_ready",
            ErrorOrigin::Service,
            Some(&code),
        );
    }
    env.advance().await; // SUMMARIZING
    env.advance().await; // SUMMARIZE_COMPLETED
    for generation in [Generation::Index, Generation::Asset] {
        let r = match env.client.result(generation, &target(None)).await {
            Verdict::Ok(r) => r,
            other => panic!("{generation}: {other:?}"),
        };
        assert_eq!(r.index_id, Some(30));
        let info = r.info.as_ref().unwrap();
        assert!(!info.last_analyzed_at.is_empty());
        assert_eq!(info.analyzed_scene_ids, None);
        assert_eq!(r.scene_count, SCENES);
        for (i, s) in r.scenes().unwrap().iter().enumerate() {
            assert_eq!(s.scene, i as u64 + 1);
            let summary = s.summary.as_ref().unwrap();
            assert!(!summary.description.is_empty());
            assert!(s.start_ms.unwrap() < s.end_ms.unwrap());
        }
        // `raw` is the result object itself, re-parseable.
        let raw: serde_json::Value = serde_json::from_str(r.raw.get()).unwrap();
        assert_eq!(raw["indexId"], 30);
    }
}

/// Across many seeds the simulator answers "not completed" in every envelope, status and code
/// shape NCP uses (none of them told to the client): the client, with no pending codes, takes
/// every one as "not ready", with the code it read, never as a refusal.
#[tokio::test]
async fn every_drawn_not_ready_answer_is_not_ready() {
    let mut shapes = std::collections::BTreeSet::new();
    for seed in 0..24 {
        let env = start_scenario(scenario_seeded(seed, ""), |o| o.pending_codes.clear()).await;
        env.force("SUMMARIZING").await;
        let url = format!("{}/__sim/api", env.sim.base_url());
        let drawn: serde_json::Value = env
            .control
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        shapes.insert(drawn["result_not_ready"]["envelope"].to_string());
        let code = env.not_ready_code().await;
        for generation in [Generation::Index, Generation::Asset] {
            let v = env.client.result(generation, &target(None)).await;
            check_failure(
                &format!("seed {seed} {generation} {drawn}"),
                &v,
                "not_ready",
                ErrorOrigin::Service,
                Some(&code),
            );
            let status = drawn["result_not_ready"]["status"]
                .as_u64()
                .map(|s| s as u16);
            assert_eq!(v.error().unwrap().http_status, status, "seed {seed}");
        }
    }
    assert!(shapes.len() >= 4, "every envelope was drawn: {shapes:?}");
}

#[tokio::test]
async fn result_before_any_request() {
    let env = start("").await;
    // The index-level result answers "not completed" for a never-summarized index; the
    // asset-level one says there is no summary (404): the caller must ask for one.
    // Both are service errors of the result call: "not ready" (a watch keeps waiting, bounded
    // by max_wait), never a refusal that would end it.
    let v = env.client.result(Generation::Index, &target(None)).await;
    let code = env.not_ready_code().await;
    check_failure("index", &v, "not_ready", ErrorOrigin::Service, Some(&code));
    let v = env.client.result(Generation::Asset, &target(None)).await;
    check_failure("asset", &v, "not_ready", ErrorOrigin::Service, None);
    assert_eq!(v.error().unwrap().http_status, Some(404));
}

#[tokio::test]
async fn request_and_cancel_on_the_index_level() {
    let env = start("").await;
    let accepted = match env
        .client
        .request(Generation::Index, &target(None), None, Some("ko"))
        .await
    {
        Verdict::Ok(a) => a,
        other => panic!("{other:?}"),
    };
    // The simulator answers a number by default; the model normalises it to a string.
    let sid = accepted.scene_summary_id.unwrap();
    assert_ne!(sid, SUMMARY);
    let t = target(Some(&sid));
    match env.client.status(Generation::Index, &t).await {
        Verdict::Ok(s) => assert_eq!(s.status, RemoteStatus::WaitSummarize),
        other => panic!("{other:?}"),
    }
    // The old summary id no longer addresses anything.
    let v = env
        .client
        .status(Generation::Index, &target(Some(SUMMARY)))
        .await;
    check_failure("old id", &v, "permanent", ErrorOrigin::Service, None);

    let v = env.client.request(Generation::Index, &t, None, None).await;
    check_failure(
        "while running",
        &v,
        "permanent",
        ErrorOrigin::Service,
        Some("10030"),
    );

    assert_eq!(
        env.client.cancel(Generation::Index, &t).await,
        Verdict::Ok(())
    );
    match env.client.status(Generation::Index, &t).await {
        Verdict::Ok(s) => assert_eq!(s.status, RemoteStatus::Canceled),
        other => panic!("{other:?}"),
    }
    let v = env.client.cancel(Generation::Index, &t).await;
    check_failure(
        "cancel twice",
        &v,
        "permanent",
        ErrorOrigin::Service,
        Some("10032"),
    );

    // Without an id the index-level status and cancel are refused before sending.
    let v = env.client.status(Generation::Index, &target(None)).await;
    assert!(
        matches!(&v, Verdict::Permanent(e) if e.origin == ErrorOrigin::Client),
        "{v:?}"
    );
}

#[tokio::test]
async fn request_and_cancel_on_the_asset_level() {
    let env = start("").await;
    let t = target(None);
    let v = env
        .client
        .request(Generation::Asset, &t, None, Some("ko"))
        .await;
    assert!(v.is_ok(), "{v:?}");
    match env.client.status(Generation::Asset, &t).await {
        Verdict::Ok(s) => assert_eq!(s.status, RemoteStatus::WaitSummarize),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        env.client.cancel(Generation::Asset, &t).await,
        Verdict::Ok(())
    );
    match env.client.status(Generation::Asset, &t).await {
        Verdict::Ok(s) => assert_eq!(s.status, RemoteStatus::Canceled),
        other => panic!("{other:?}"),
    }
    // A partial run before any full run is refused by the service.
    env.force("BEFORE_SUMMARIZE").await;
    let v = env
        .client
        .request(Generation::Asset, &t, Some(&[1]), None)
        .await;
    check_failure(
        "partial first",
        &v,
        "permanent",
        ErrorOrigin::Service,
        Some("10031"),
    );
}

#[tokio::test]
async fn partial_rerun_gives_a_new_version_with_its_scene_ids() {
    let env = start("").await;
    let t = target(None);
    env.force("SUMMARIZE_COMPLETED").await;
    let first = env.client.result(Generation::Asset, &t).await.ok().unwrap();
    let first_info = first.info.unwrap();
    assert_eq!(first_info.analyzed_scene_ids, None);

    // The locale is dropped for a partial run (the simulator refuses the pair, as documented).
    let v = env
        .client
        .request(Generation::Asset, &t, Some(&[2, 5]), Some("ko"))
        .await;
    assert!(v.is_ok(), "{v:?}");
    let v = env.client.result(Generation::Asset, &t).await;
    let code = env.not_ready_code().await;
    check_failure(
        "rerun waiting",
        &v,
        "not_ready",
        ErrorOrigin::Service,
        Some(&code),
    );
    env.advance().await;
    env.advance().await;

    let second = env.client.result(Generation::Index, &t).await.ok().unwrap();
    let info = second.info.clone().unwrap();
    assert_ne!(info.last_analyzed_at, first_info.last_analyzed_at);
    assert_eq!(
        info.analyzed_scene_ids,
        Some(vec!["2".to_owned(), "5".to_owned()])
    );
    assert_eq!(second.scene_count, SCENES);
    assert!(second.scenes().unwrap().iter().all(|s| s.summary.is_some()));
}

#[tokio::test]
async fn every_fault_kind_maps_to_its_verdict() {
    let env = start_with(
        "[faults]\nslow_delay = \"10s\"\nretry_after = \"3s\"\noversized_bytes = 1048576\n",
        |o| {
            o.timeout = Duration::from_millis(500);
            o.max_body_bytes = 64 * 1024;
        },
    )
    .await;
    env.force("SUMMARIZING").await;
    let t = target(None);
    use ErrorOrigin::*;
    // (fault, verdict kind, origin, code, http status)
    type Case = (
        &'static str,
        &'static str,
        ErrorOrigin,
        Option<&'static str>,
        Option<u16>,
    );
    let cases: [Case; 12] = [
        (
            "throttle_400",
            "quota_exceeded",
            Gateway,
            Some("400"),
            Some(429),
        ),
        ("throttle_410", "throttled", Gateway, Some("410"), Some(429)),
        ("throttle_420", "throttled", Gateway, Some("420"), Some(429)),
        (
            "throttle_retry_after",
            "throttled",
            Gateway,
            Some("420"),
            Some(429),
        ),
        ("http_500", "retryable", Gateway, Some("900"), Some(500)),
        ("http_503", "retryable", Gateway, Some("500"), Some(503)),
        ("http_504", "retryable", Gateway, Some("510"), Some(504)),
        ("reset", "retryable", Transport, None, Some(200)),
        ("slow", "retryable", Transport, None, None),
        ("malformed_json", "retryable", Decode, None, Some(200)),
        ("truncated", "retryable", Transport, None, Some(200)),
        ("oversized", "retryable", TooLarge, None, Some(200)),
    ];
    for (fault, kind, origin, code, http) in cases {
        env.fault(fault).await;
        let v = env.client.status(Generation::Asset, &t).await;
        check_failure(fault, &v, kind, origin, code);
        let e = v.error().unwrap();
        // A reset or a cut body may land before or after the status line; the rest is exact.
        if fault == "reset" || fault == "truncated" {
            assert!(matches!(e.http_status, None | Some(200)), "{fault}: {e}");
        } else {
            assert_eq!(e.http_status, http, "{fault}: {e}");
        }
        match (fault, &v) {
            ("throttle_retry_after", Verdict::Throttled { retry_after, .. }) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(3)))
            }
            (_, Verdict::Throttled { retry_after, .. }) => {
                assert_eq!(*retry_after, None, "{fault}")
            }
            ("slow", _) => assert!(e.message.contains("timed out"), "{e}"),
            ("oversized", _) => assert!(e.message.contains("api.max_body_bytes"), "{e}"),
            _ => {}
        }
        // The next call is clean again: the fault was one answer only.
        let v = env.client.status(Generation::Asset, &t).await;
        assert!(v.is_ok(), "after {fault}: {v:?}");
    }
}

#[tokio::test]
async fn bad_credentials_and_clock_skew_are_auth_failures() {
    let env = start("").await;
    let wrong = Client::new(ClientOptions::new(
        env.sim.base_url(),
        Credentials::new(ACCESS_KEY, "NOT_THE_SECRET"),
    ))
    .unwrap();
    for generation in [Generation::Index, Generation::Asset] {
        let v = wrong.status(generation, &target(Some(SUMMARY))).await;
        check_failure(
            "wrong secret",
            &v,
            "auth_failure",
            ErrorOrigin::Gateway,
            Some("200"),
        );
        assert_eq!(v.error().unwrap().http_status, Some(401));
    }
    let unknown = Client::new(ClientOptions::new(
        env.sim.base_url(),
        Credentials::new("NOBODY", SECRET_KEY),
    ))
    .unwrap();
    let v = unknown.result(Generation::Asset, &target(None)).await;
    check_failure(
        "unknown key",
        &v,
        "auth_failure",
        ErrorOrigin::Gateway,
        Some("200"),
    );
    assert!(!format!("{unknown:?}").contains(SECRET_KEY));
    assert!(!format!("{:?}", env.client).contains(SECRET_KEY));

    // The gateway clock 10 minutes ahead: every signature is stale.
    env.control("clock/skew", serde_json::json!({ "ms": 600_000 }))
        .await;
    let v = env.client.status(Generation::Asset, &target(None)).await;
    check_failure(
        "skewed clock",
        &v,
        "auth_failure",
        ErrorOrigin::Gateway,
        Some("200"),
    );
    // One minute is within the documented five.
    env.control("clock/skew", serde_json::json!({ "ms": 60_000 }))
        .await;
    let v = env.client.status(Generation::Asset, &target(None)).await;
    assert!(v.is_ok(), "{v:?}");
}

/// The [guess] parts the simulator makes configurable: numeric gateway codes, the
/// `responseError` wrapper, and a different "not completed" status and code.
#[tokio::test]
async fn configurable_guesses_are_tolerated() {
    let api = "[api]\nresult_not_ready_status = 404\nresult_not_ready_code = \"20404\"\n\
               error_envelope = \"responseError\"\ngateway_error_code_as_number = true\n\
               scene_summary_id_as_number = false\n";
    let env = start_with(api, |o| o.pending_codes = vec!["20404".into()]).await;
    env.force("SUMMARIZING").await;
    let v = env.client.result(Generation::Index, &target(None)).await;
    check_failure(
        "wrapped pending",
        &v,
        "pending",
        ErrorOrigin::Service,
        Some("20404"),
    );
    assert_eq!(v.error().unwrap().http_status, Some(404));

    // With the default (empty) pending codes the same answer is still "not ready": a code
    // nobody documented must not end a watch.
    let strict = Client::new(ClientOptions::new(
        env.sim.base_url(),
        Credentials::new(ACCESS_KEY, SECRET_KEY),
    ))
    .unwrap();
    let v = strict.result(Generation::Index, &target(None)).await;
    check_failure(
        "not a pending code",
        &v,
        "not_ready",
        ErrorOrigin::Service,
        Some("20404"),
    );

    env.fault("throttle_410").await;
    let v = env.client.status(Generation::Asset, &target(None)).await;
    check_failure(
        "numeric errorCode",
        &v,
        "throttled",
        ErrorOrigin::Gateway,
        Some("410"),
    );

    env.force("SUMMARIZE_CANCELED").await;
    let accepted = env
        .client
        .request(Generation::Index, &target(None), None, None)
        .await
        .ok()
        .unwrap();
    assert!(accepted.scene_summary_id.is_some());
}

#[tokio::test]
async fn unknown_ids_are_permanent() {
    let env = start("").await;
    let mut t = target(Some(SUMMARY));
    t.asset_id = "999".into();
    for generation in [Generation::Index, Generation::Asset] {
        let v = env.client.status(generation, &t).await;
        check_failure("unknown asset", &v, "permanent", ErrorOrigin::Service, None);
        assert_eq!(v.error().unwrap().http_status, Some(404));
    }
}

/// The two discovery calls of API doc §6: the asset list, in pages from either base, and the
/// index status that names an asset's latest index (which a re-index moves).
#[tokio::test]
async fn index_status_and_the_asset_list() {
    for base in [0u64, 1] {
        let extra = format!(
            "[listing]\npage_base = {base}\n\
             [[asset]]\nworkspace = \"{WS}\"\nproject_id = \"{PROJECT}\"\nasset_id = \"21\"\nindex_id = \"31\"\nscenes = 2\n\
             [[asset]]\nworkspace = \"{WS}\"\nproject_id = \"{PROJECT}\"\nasset_id = \"22\"\nindex_id = \"32\"\nscenes = 2\n"
        );
        let env = start(&extra).await;
        let mut seen = Vec::new();
        for page in base..base + 3 {
            let v = env.client.list_assets(WS, PROJECT, page, 2).await;
            let Verdict::Ok(p) = v else {
                panic!("base {base} page {page}: {v:?}")
            };
            assert_eq!(p.total_count, Some(3), "base {base}");
            assert_eq!(p.malformed, 0);
            seen.extend(p.asset_ids);
        }
        seen.sort();
        assert_eq!(seen, [ASSET, "21", "22"], "base {base}: every asset once");
    }

    let env = start("").await;
    let t = target(None);
    let v = env.client.index_status(&t).await;
    let Verdict::Ok(s) = v else { panic!("{v:?}") };
    assert_eq!(s.status, scenewatch::ncp::AnalysisStatus::Completed);
    assert_eq!(s.index_id.as_deref(), Some(INDEX));
    env.control(
        &format!("assets/{WS}/{PROJECT}/{ASSET}/reindex"),
        serde_json::json!({"index_id": "99"}),
    )
    .await;
    let v = env.client.index_status(&t).await;
    assert_eq!(v.ok().and_then(|s| s.index_id).as_deref(), Some("99"));
    let v = env
        .client
        .list_assets(WS, "no-such-project", 1, 10)
        .await
        .ok()
        .unwrap();
    assert!(v.asset_ids.is_empty());
}
