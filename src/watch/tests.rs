//! Table tests of the poll step: every answer kind, from every relevant state.

use std::time::Duration;

use serde_json::value::RawValue;

use super::*;
use crate::ncp::{
    ApiError, ErrorOrigin, Operation, SceneSummaryInfo, SummaryResult, SummaryStatus, Verdict,
};
use crate::policy::Policy;

const LIMITS: Limits = Limits {
    max_wait: Duration::from_secs(3600),
    not_requested_grace: Duration::from_secs(600),
    policy: Policy {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(300),
        recheck: Duration::from_secs(3600),
    },
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn err(status: u16) -> ApiError {
    ApiError {
        operation: Operation::Status,
        path: "/p".into(),
        http_status: Some(status),
        code: None,
        message: "m".into(),
        details: None,
        trace_id: Some("trace-1".into()),
        origin: ErrorOrigin::Gateway,
    }
}

fn status(s: RemoteStatus) -> Verdict<SummaryStatus> {
    Verdict::Ok(SummaryStatus { status: s })
}

fn result(last: Option<&str>) -> Verdict<SummaryResult> {
    Verdict::Ok(SummaryResult {
        raw: RawValue::from_string("{}".into()).unwrap(),
        index_id: Some(1),
        info: last.map(|l| SceneSummaryInfo {
            last_analyzed_at: l.into(),
            analyzed_scene_ids: None,
        }),
        scene_count: 0,
        stale: Vec::new(),
    })
}

fn waiting(remote: RemoteStatus) -> WatchState {
    WatchState {
        phase: Phase::Waiting,
        remote: Some(remote),
        polls: 3,
        started_at: Some(secs(0)),
        ..WatchState::default()
    }
}

#[test]
fn status_answers() {
    use RemoteStatus::*;
    let fresh = WatchState::default();
    // (from, answer, expected phase, expected action)
    let cases: Vec<(WatchState, Verdict<SummaryStatus>, Phase, Action)> = vec![
        (
            fresh.clone(),
            status(WaitSummarize),
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: true,
            },
        ),
        (
            waiting(WaitSummarize),
            status(WaitSummarize),
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: false,
            },
        ),
        (
            waiting(WaitSummarize),
            status(Summarizing),
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: true,
            },
        ),
        (
            waiting(Summarizing),
            status(Completed),
            Phase::Waiting,
            Action::FetchResult,
        ),
        (
            waiting(Summarizing),
            status(Failed),
            Phase::Failed,
            Action::Stop,
        ),
        (
            waiting(Summarizing),
            status(Canceled),
            Phase::Canceled,
            Action::Stop,
        ),
        (
            waiting(Summarizing),
            status(Unknown("NEW_THING".into())),
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: true,
            },
        ),
        (
            fresh.clone(),
            status(BeforeSummarize),
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: true,
            },
        ),
        (
            waiting(Summarizing),
            Verdict::Retryable {
                after: Some(secs(2)),
                error: err(503),
            },
            Phase::Waiting,
            Action::Retry {
                after: Some(secs(2)),
            },
        ),
        (
            waiting(Summarizing),
            Verdict::Throttled {
                retry_after: None,
                error: err(429),
            },
            Phase::Waiting,
            Action::Throttle { retry_after: None },
        ),
        (
            waiting(Summarizing),
            Verdict::AuthFailure(err(401)),
            Phase::Waiting,
            Action::PauseClient(PauseReason::Auth),
        ),
        (
            waiting(Summarizing),
            Verdict::QuotaExceeded {
                retry_after: None,
                error: err(429),
            },
            Phase::Waiting,
            Action::PauseClient(PauseReason::Quota),
        ),
        (
            waiting(Summarizing),
            Verdict::Permanent(err(404)),
            Phase::Rejected,
            Action::Stop,
        ),
    ];
    for (i, (from, answer, phase, action)) in cases.into_iter().enumerate() {
        let s = step(&from, secs(10), LIMITS, Answer::Status(&answer), 0);
        assert_eq!(
            (s.state.phase, &s.action),
            (phase, &action),
            "case {i}: {answer:?}"
        );
        assert_eq!(
            s.state.polls,
            from.polls + 1,
            "case {i}: every answer counts as a poll"
        );
    }
}

#[test]
fn errors_are_counted_kept_for_display_and_cleared_by_success() {
    let s = step(
        &waiting(RemoteStatus::Summarizing),
        secs(5),
        LIMITS,
        Answer::Status(&Verdict::Retryable {
            after: None,
            error: err(504),
        }),
        0,
    );
    assert_eq!(s.state.consecutive_errors, 1);
    assert!(
        s.state.last_error.as_deref().unwrap().contains("trace-1"),
        "trace id kept for logs"
    );
    let s = step(
        &s.state,
        secs(6),
        LIMITS,
        Answer::Status(&status(RemoteStatus::Summarizing)),
        0,
    );
    assert_eq!(s.state.consecutive_errors, 0);
    assert_eq!(s.state.last_error, None);
}

#[test]
fn before_summarize_beyond_the_grace_is_not_requested() {
    let s = step(
        &WatchState::default(),
        secs(0),
        LIMITS,
        Answer::Status(&status(RemoteStatus::BeforeSummarize)),
        0,
    );
    let s = step(
        &s.state,
        secs(599),
        LIMITS,
        Answer::Status(&status(RemoteStatus::BeforeSummarize)),
        0,
    );
    assert_eq!(
        s.action,
        Action::PollAgain {
            reset_backoff: false
        }
    );
    let s = step(
        &s.state,
        secs(600),
        LIMITS,
        Answer::Status(&status(RemoteStatus::BeforeSummarize)),
        0,
    );
    assert_eq!(
        (s.state.phase, s.action),
        (Phase::NotRequested, Action::Stop)
    );
    // A request in between restarts the grace.
    let s = step(
        &WatchState::default(),
        secs(0),
        LIMITS,
        Answer::Status(&status(RemoteStatus::BeforeSummarize)),
        0,
    );
    let s = step(
        &s.state,
        secs(300),
        LIMITS,
        Answer::Status(&status(RemoteStatus::WaitSummarize)),
        0,
    );
    let s = step(
        &s.state,
        secs(700),
        LIMITS,
        Answer::Status(&status(RemoteStatus::BeforeSummarize)),
        0,
    );
    assert_eq!(s.state.phase, Phase::Waiting);
}

#[test]
fn result_answers_deliver_new_versions_once() {
    let s = step(
        &waiting(RemoteStatus::Completed),
        secs(1),
        LIMITS,
        Answer::Result(&result(Some("2026-04-17T10:30:00"))),
        0,
    );
    assert_eq!(s.state.phase, Phase::Completed);
    assert_eq!(
        s.action,
        Action::Deliver {
            version: "2026-04-17T10:30:00".into()
        }
    );
    let done = delivered(&s.state, "2026-04-17T10:30:00");
    assert_eq!(done.phase, Phase::Watching);
    // The same version again: nothing to deliver.
    let s = step(
        &done,
        secs(2),
        LIMITS,
        Answer::Result(&result(Some("2026-04-17T10:30:00"))),
        0,
    );
    assert_eq!(
        (s.state.phase, &s.action),
        (Phase::Watching, &Action::Recheck)
    );
    // A newer version (partial re-analysis): delivered again.
    let s = step(
        &done,
        secs(3),
        LIMITS,
        Answer::Result(&result(Some("2026-04-18T09:00:00"))),
        0,
    );
    assert_eq!(
        s.action,
        Action::Deliver {
            version: "2026-04-18T09:00:00".into()
        }
    );
    // No sceneSummaryInfo, or "not completed yet": keep polling.
    let s = step(
        &waiting(RemoteStatus::Summarizing),
        secs(4),
        LIMITS,
        Answer::Result(&result(None)),
        0,
    );
    assert_eq!(
        s.action,
        Action::PollAgain {
            reset_backoff: false
        }
    );
    let s = step(
        &WatchState::default(),
        secs(4),
        LIMITS,
        Answer::Result(&Verdict::Pending(err(400))),
        0,
    );
    assert_eq!(
        (s.state.phase, s.action),
        (
            Phase::Waiting,
            Action::PollAgain {
                reset_backoff: false
            }
        )
    );
}

#[test]
fn deadline_applies_only_while_waiting() {
    let w = waiting(RemoteStatus::Summarizing);
    assert_eq!(check_deadline(&w, secs(3599), LIMITS), None);
    let s = check_deadline(&w, secs(3600), LIMITS).unwrap();
    assert_eq!((s.state.phase, s.action), (Phase::TimedOut, Action::Stop));
    let mut done = w.clone();
    done.phase = Phase::Watching;
    assert_eq!(check_deadline(&done, secs(99_999), LIMITS), None);
    assert_eq!(
        check_deadline(&WatchState::default(), secs(99_999), LIMITS),
        None,
        "not started yet"
    );
}

#[test]
fn phase_names_round_trip() {
    for p in Phase::ALL {
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
    assert_eq!(Phase::parse("nope"), None);
}

/// A code nobody told us about never ends a watch: before any version it is "not completed
/// yet"; after a delivery it starts a new wait (a re-analysis), bounded by a new deadline.
#[test]
fn unrecognised_not_ready_keeps_waiting() {
    let mut e = err(400);
    e.origin = ErrorOrigin::Service;
    e.code = Some("10042".into());
    let nr = Verdict::NotReady(e);
    let s = step(
        &WatchState::default(),
        secs(1),
        LIMITS,
        Answer::Result(&nr),
        0,
    );
    assert_eq!(s.state.phase, Phase::Waiting);
    assert_eq!(
        s.action,
        Action::PollAgain {
            reset_backoff: false
        }
    );
    assert_eq!(s.state.consecutive_errors, 0, "not an error");
    // Polled until max_wait, then timed out: never rejected.
    let mut st = s.state;
    let mut t = 1;
    while check_deadline(&st, secs(t), LIMITS).is_none() {
        st = step(&st, secs(t), LIMITS, Answer::Result(&nr), 0).state;
        assert_eq!(st.phase, Phase::Waiting);
        t += 600;
    }
    assert_eq!(
        check_deadline(&st, secs(t), LIMITS).unwrap().state.phase,
        Phase::TimedOut
    );

    let delivered = WatchState {
        phase: Phase::Watching,
        last_version: Some("2026-01-01T00:00:00".into()),
        started_at: Some(secs(0)),
        ..WatchState::default()
    };
    let s = step(&delivered, secs(9000), LIMITS, Answer::Result(&nr), 0);
    assert_eq!(s.state.phase, Phase::Waiting, "a re-analysis is waited for");
    assert_eq!(s.state.started_at, Some(secs(9000)), "under a new deadline");
}

/// A result that never decodes: the status says completed each time, the result call fails
/// each time. The error streak goes on across the status polls, so the retries back off (they
/// used to restart at about a second forever).
#[test]
fn a_result_that_keeps_failing_backs_off_across_status_polls() {
    let mut st = waiting(RemoteStatus::Summarizing);
    let mut delays = Vec::new();
    let mut now = secs(10);
    let garbled: Verdict<SummaryResult> = Verdict::Retryable {
        after: None,
        error: err(200),
    };
    for _ in 0..8 {
        let s = step(
            &st,
            now,
            LIMITS,
            Answer::Status(&status(RemoteStatus::Completed)),
            0,
        );
        assert_eq!(s.action, Action::FetchResult);
        let s = step(&s.state, now, LIMITS, Answer::Result(&garbled), 0);
        let next = s.next_poll.unwrap();
        delays.push(next - now);
        now = next;
        st = s.state;
    }
    assert_eq!(st.consecutive_errors, 8);
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert!(*delays.last().unwrap() > secs(100), "{delays:?}");
}

/// Errors never make a watch poll faster than it would when healthy: at half the answers
/// failing, the rate stays the healthy one (it used to double).
#[test]
fn a_flaky_api_is_not_polled_faster_than_a_healthy_one() {
    let unavailable: Verdict<SummaryStatus> = Verdict::Retryable {
        after: None,
        error: err(503),
    };
    let mut st = waiting(RemoteStatus::Summarizing);
    st.attempt = 4; // a job waited on for a while: about 160 s between polls
    let healthy = step(
        &st,
        secs(0),
        LIMITS,
        Answer::Status(&status(RemoteStatus::Summarizing)),
        0,
    );
    let healthy_gap = healthy.next_poll.unwrap();
    let failed = step(
        &healthy.state,
        secs(0),
        LIMITS,
        Answer::Status(&unavailable),
        0,
    );
    assert!(
        failed.next_poll.unwrap()
            >= healthy_gap.min(LIMITS.policy.poll_delay(healthy.state.attempt, 0)),
        "{failed:?}"
    );
    // A job just started still retries within seconds.
    let fresh = step(
        &WatchState::default(),
        secs(0),
        LIMITS,
        Answer::Status(&unavailable),
        0,
    );
    assert!(fresh.next_poll.unwrap() <= secs(20), "{fresh:?}");
}

/// One oversized answer (a broken one) is retried; only a few in a row end the watch.
#[test]
fn oversized_answers_are_retried_before_the_watch_ends() {
    let mut e = err(200);
    e.origin = ErrorOrigin::TooLarge;
    let big: Verdict<SummaryStatus> = Verdict::Retryable {
        after: None,
        error: e,
    };
    let mut st = waiting(RemoteStatus::Summarizing);
    for n in 1..TOO_LARGE_TRIES {
        let s = step(&st, secs(n.into()), LIMITS, Answer::Status(&big), 0);
        assert!(matches!(s.action, Action::Retry { .. }), "{n}: {s:?}");
        assert_eq!(s.state.phase, Phase::Waiting);
        st = s.state;
    }
    let s = step(&st, secs(9), LIMITS, Answer::Status(&big), 0);
    assert_eq!((s.state.phase, s.action), (Phase::Rejected, Action::Stop));
}
