//! Which events a poll step stands for: a pure function of the record before, the state after,
//! the action and what was fetched. Event ids are built from the fact's parts (see
//! docs/events.md), so computing the same fact again after a crash gives the same ids.

use crate::domain::WatchKey;
use crate::events::{Event, EventType};
use crate::ncp::{ApiError, RemoteStatus, SummaryResult};
use crate::state::WatchRecord;
use crate::watch::{Phase, WatchState};

/// What a step fetched, when it fetched a new version.
pub struct Fetched<'a> {
    /// The stable version id.
    pub version_id: &'a str,
    /// The result.
    pub result: &'a SummaryResult,
}

/// The cycle a watch is in: the version it last delivered, or "first" before any. Waiting and
/// terminal facts are scoped to it, so a re-analysis after a delivery is a new fact.
pub fn cycle(record: &WatchRecord) -> String {
    record
        .last_version_id
        .as_ref()
        .map_or_else(|| "first".into(), |v| v.to_string())
}

/// The events of one step.
pub fn step_events(
    key: &WatchKey,
    before: &WatchRecord,
    after: &WatchState,
    error: Option<&ApiError>,
    new_version: Option<&Fetched<'_>>,
    now_ms: u64,
) -> Vec<Event> {
    let mut events = Vec::new();
    let cycle = cycle(before);
    if after.remote != before.state.remote
        && let Some(remote @ (RemoteStatus::WaitSummarize | RemoteStatus::Summarizing)) =
            &after.remote
    {
        events.push(Event::waiting(key, remote.as_str(), &cycle, now_ms));
    }
    if after.phase != before.state.phase {
        let started = after
            .started_at
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|| cycle.clone());
        let ended = match after.phase {
            Phase::Failed => Some(EventType::Failed),
            Phase::Canceled => Some(EventType::Canceled),
            Phase::TimedOut => Some(EventType::TimedOut),
            Phase::NotRequested => Some(EventType::NotRequested),
            _ => None,
        };
        if let Some(kind) = ended {
            let data = serde_json::json!({
                "remoteStatus": after.remote.as_ref().map(|r| r.as_str()),
                "polls": after.polls,
            });
            events.push(Event::ended(
                key,
                kind,
                &format!("{cycle}/{started}"),
                data,
                now_ms,
            ));
        }
        if after.phase == Phase::Rejected {
            let (status, code, trace, message) = match error {
                Some(e) => (
                    e.http_status,
                    e.code.as_deref(),
                    e.trace_id.as_deref(),
                    e.message.as_str(),
                ),
                None => (None, None, None, "rejected"),
            };
            events.push(Event::rejected(
                key,
                &format!("{cycle}/{started}"),
                status,
                code,
                trace,
                message,
                now_ms,
            ));
        }
    }
    if let Some(f) = new_version {
        let info = f.result.info.as_ref();
        let last = info.map(|i| i.last_analyzed_at.as_str()).unwrap_or("");
        let ids = info.and_then(|i| i.analyzed_scene_ids.as_deref());
        events.push(Event::completed(
            key,
            f.version_id,
            last,
            f.result.scene_count as u64,
            ids,
            now_ms,
        ));
        if let Some(previous) = &before.last_version_id
            && previous != f.version_id
        {
            events.push(Event::updated(
                key,
                f.version_id,
                previous,
                last,
                ids,
                now_ms,
            ));
        }
    }
    events
}

/// `summary.stale` for a fetched version, once per version: `Some` when scenes are marked
/// `metadataChangedAfterSummary` and the event was not emitted for this version yet.
pub fn stale_event(
    key: &WatchKey,
    record: &WatchRecord,
    version_id: &str,
    result: &SummaryResult,
    now_ms: u64,
) -> Option<Event> {
    if record.stale_version_id.as_deref() == Some(version_id) {
        return None;
    }
    let scenes = result.stale_scenes();
    (!scenes.is_empty()).then(|| Event::stale(key, version_id, scenes, now_ms))
}
