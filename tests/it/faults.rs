//! The fault matrix (issue 11): the real binary (`scenewatch once`) against the simulator, once
//! per fault kind of the simulator and once per `Retry-After` variant on a 429 and on a 503. Each
//! case queues the fault for the first requests, then lets the simulator answer normally, and
//! asserts what a user would notice:
//!
//! - no panic, and `once` ends with every watch delivered (exit 0);
//! - the request budget holds: in every one-second window of the requests the simulator saw
//!   (`GET /__sim/requests`), at most `requests_per_second + burst`;
//! - recovery within a bound once the fault stops: the last request (the last result fetched)
//!   comes at most [`RECOVERY`] after both the last faulted request and the summaries' completion.
//!
//! A used-up quota (`throttle_400`) pauses every watch for five minutes by design, too long for
//! this suite: its case checks that the client goes quiet instead (no request for a few seconds
//! after the refusal) and stops cleanly on SIGINT; the pause's end is tested under paused time in
//! the engine tests (`a_used_up_quota_pauses_every_watch_for_five_minutes`).

use std::time::{Duration, Instant};

use crate::support::{scenewatch, start_sim, text, watch, watcher_config};

const SECRET: &str = "SK-fault-matrix-5c1e";

/// Watches, each of its own asset: more than the budget serves at the configured intervals, so
/// the budget (not the demand) bounds the request rate.
const WATCHES: usize = 8;
const RPS: usize = 10;
const BURST: usize = 5;
/// The first requests that get the fault.
const FAULTED: usize = 4;
/// Summaries complete this long after the simulator starts (queue + run).
const DONE_AFTER_MS: u64 = 1_000;
/// The longest the last result may come after the fault stopped and the summaries completed:
/// a few `max_interval`s of backoff plus the budget's recovery after a 429, with room for a
/// loaded machine.
const RECOVERY: Duration = Duration::from_secs(10);
/// `once` must be done by then.
const DEADLINE: Duration = Duration::from_secs(60);

fn scenario() -> String {
    let mut s = format!(
        "seed = 11\n[[credentials]]\naccess_key = \"AK\"\nsecret_key = \"{SECRET}\"\n\
         [faults]\nslow_delay = \"3s\"\noversized_bytes = 3000000\n"
    );
    for i in 0..WATCHES {
        s.push_str(&format!(
            "[[asset]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"{a}\"\n\
             index_id = \"{x}\"\nscenes = 3\nqueue = \"500ms\"\nrun = \"500ms\"\n",
            a = 100 + i,
            x = 200 + i
        ));
    }
    s
}

fn config(url: &str, dir: &std::path::Path) -> String {
    let watches: String = (0..WATCHES)
        .map(|i| {
            watch(
                &(100 + i).to_string(),
                &(200 + i).to_string(),
                None,
                "asset",
            )
        })
        .collect();
    watcher_config(url, dir, &watches)
        .replace(
            "requests_per_second = 50.0",
            &format!("requests_per_second = {RPS}.0\nburst = {BURST}\nmax_body_bytes = 1048576"),
        )
        .replace("max_wait = \"30s\"", "max_wait = \"50s\"")
}

/// When each API request reached the simulator, in ms since it started.
async fn request_times(url: &str) -> Vec<u64> {
    let v: serde_json::Value = reqwest::get(format!("{url}/__sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// The most requests in any one-second window that starts at a request.
fn busiest_second(times: &[u64]) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + 1_000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn queue_fault(url: &str, kind: &str, retry_after: Option<&str>) {
    let mut body = serde_json::json!({ "kind": kind, "count": FAULTED });
    if let Some(v) = retry_after {
        body["retry_after"] = v.into();
    }
    let r = crate::support::http()
        .post(format!("{url}/__sim/faults/next"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Runs `once` with `kind` queued for the first requests and checks the three properties.
async fn case(kind: &str, retry_after: Option<&str>) {
    let what = format!("{kind} with Retry-After {retry_after:?}");
    let sim = start_sim(&scenario()).await;
    queue_fault(&sim.url, kind, retry_after).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&sim.url, dir.path())).unwrap();
    let mut cmd = scenewatch();
    cmd.arg("once")
        .arg("--config")
        .arg(&cfg)
        .env("SCENEWATCH__API__SECRET_KEY", SECRET)
        .timeout(DEADLINE);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let all = text(&out);
    assert!(!all.contains("panicked"), "{what}: a panic\n{all}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: not every watch was delivered within {DEADLINE:?} (took {:?})\n{all}",
        started.elapsed()
    );
    for i in 0..WATCHES {
        let f = dir
            .path()
            .join(format!("results/w/1/{}/{}.json", 100 + i, 200 + i));
        assert!(f.exists(), "{what}: no result for watch {i}\n{all}");
    }
    let times = request_times(&sim.url).await;
    assert!(times.len() > FAULTED, "{what}: {} requests", times.len());
    let busiest = busiest_second(&times);
    assert!(
        busiest <= RPS + BURST + 1,
        "{what}: {busiest} requests in one second, over the budget of {RPS}/s with a burst of \
         {BURST}: {times:?}"
    );
    let fault_stopped = times[FAULTED - 1].max(DONE_AFTER_MS);
    let last = *times.last().unwrap();
    let recovery = Duration::from_millis(last.saturating_sub(fault_stopped));
    eprintln!(
        "fault matrix: {what}: {} requests, busiest second {busiest}, recovery {recovery:?}",
        times.len()
    );
    assert!(
        recovery <= RECOVERY,
        "{what}: the last result came {recovery:?} after the fault stopped (bound {RECOVERY:?}): \
         {times:?}"
    );
}

macro_rules! fault_cases {
    ($($name:ident: $kind:literal, $retry_after:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                case($kind, $retry_after).await;
            }
        )*
    };
}

// Every fault kind of the simulator (docs/simulator.md, "Fault injection") but the quota.
fault_cases! {
    throttle_410_throttle_limited: "throttle_410", None;
    throttle_420_rate_limited: "throttle_420", None;
    throttle_with_the_default_retry_after: "throttle_retry_after", None;
    http_500: "http_500", None;
    http_503: "http_503", None;
    http_504: "http_504", None;
    connection_reset: "reset", None;
    slow_answers_past_the_timeout: "slow", None;
    malformed_json: "malformed_json", None;
    truncated_body: "truncated", None;
    oversized_body: "oversized", None;
}

// Retry-After variants, on a 429 (errorCode 420) and on a 503: absent, 0, 2, 120, 90000 (25 h),
// 20 digits (wraps a u64 of milliseconds), an HTTP date (a day in 2099), garbage.
fault_cases! {
    retry_after_absent_on_429: "throttle_420", None;
    retry_after_0_on_429: "throttle_420", Some("0");
    retry_after_2_on_429: "throttle_420", Some("2");
    retry_after_120_on_429: "throttle_420", Some("120");
    retry_after_90000_on_429: "throttle_420", Some("90000");
    retry_after_20_digits_on_429: "throttle_420", Some("99999999999999999999");
    retry_after_http_date_on_429: "throttle_420", Some("Wed, 21 Oct 2099 07:28:00 GMT");
    retry_after_garbage_on_429: "throttle_420", Some("soon, maybe");
    retry_after_absent_on_503: "http_503", None;
    retry_after_0_on_503: "http_503", Some("0");
    retry_after_2_on_503: "http_503", Some("2");
    retry_after_120_on_503: "http_503", Some("120");
    retry_after_90000_on_503: "http_503", Some("90000");
    retry_after_20_digits_on_503: "http_503", Some("99999999999999999999");
    retry_after_http_date_on_503: "http_503", Some("Wed, 21 Oct 2099 07:28:00 GMT");
    retry_after_garbage_on_503: "http_503", Some("soon, maybe");
}

/// A used-up quota: the client pauses every watch (five minutes, doubling) instead of polling
/// on; it stops cleanly meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_makes_the_client_go_quiet_not_storm() {
    let sim = start_sim(&scenario()).await;
    queue_fault(&sim.url, "throttle_400", Some("1")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&sim.url, dir.path())).unwrap();
    let log = dir.path().join("once.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("scenewatch"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCENEWATCH") {
            child.env_remove(k);
        }
    }
    let mut child = child
        .env_remove("RUST_LOG")
        .env("SCENEWATCH__API__SECRET_KEY", SECRET)
        .args(["once", "--config"])
        .arg(&cfg)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // The first refusal, then quiet: at most the requests already in flight come after it.
    let until = Instant::now() + Duration::from_secs(20);
    let first_refusal = loop {
        let times = request_times(&sim.url).await;
        if !times.is_empty() {
            break times[0];
        }
        assert!(Instant::now() < until, "no request reached the simulator");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times = request_times(&sim.url).await;
    let after = times.iter().filter(|t| **t > first_refusal + 500).count();
    assert!(
        after == 0,
        "requests went on during the quota pause: {times:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = std::process::Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "once did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shown = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!shown.contains("panicked"), "{shown}");
    assert!(
        status.code().is_some(),
        "killed by a signal: {status:?}\n{shown}"
    );
}
