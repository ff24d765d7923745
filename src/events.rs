//! The closed set of events scenewatch emits, their stable ids, their CloudEvents 1.0 encoding
//! and their structured log line. docs/events.md is the user-facing description; keep both true.
//!
//! Constructors are pure: time is passed in and the id is a hash of the fact the event states,
//! so the same fact re-emitted after a restart (replayed from the outbox) carries the same id and
//! consumers can dedupe on it.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::domain::WatchKey;
use crate::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// Every kind of event. The order is the documentation order; `Ord` exists only so callers can
/// keep event types in sorted maps (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// The remote status was first seen as queued or running, or changed between them.
    Waiting,
    /// A new result version was fetched.
    Completed,
    /// A sink confirmed a version.
    Delivered,
    /// A later version replaced an earlier one.
    Updated,
    /// Scenes changed after they were summarised.
    Stale,
    /// The summary failed remotely.
    Failed,
    /// The summary was canceled remotely.
    Canceled,
    /// The watch's `max_wait` passed.
    TimedOut,
    /// The summary was never requested (grace passed in `BEFORE_SUMMARIZE`).
    NotRequested,
    /// A permanent API error stopped the watch.
    Rejected,
    /// A re-index replaced the watch's index.
    Superseded,
    /// A watch was found through a `[[watch]]` without an index (an asset's latest index, a
    /// project's asset).
    Discovered,
    /// A sink started failing.
    SinkFailing,
    /// A failing sink works again.
    SinkRecovered,
}

impl EventType {
    /// All event types, in documentation order.
    pub const ALL: [EventType; 14] = [
        EventType::Waiting,
        EventType::Completed,
        EventType::Delivered,
        EventType::Updated,
        EventType::Stale,
        EventType::Failed,
        EventType::Canceled,
        EventType::TimedOut,
        EventType::NotRequested,
        EventType::Rejected,
        EventType::Superseded,
        EventType::Discovered,
        EventType::SinkFailing,
        EventType::SinkRecovered,
    ];

    /// The CloudEvents `type`. These strings are a public contract: never change them.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Waiting => "com.scenewatch.summary.waiting",
            EventType::Completed => "com.scenewatch.summary.completed",
            EventType::Delivered => "com.scenewatch.summary.delivered",
            EventType::Updated => "com.scenewatch.summary.updated",
            EventType::Stale => "com.scenewatch.summary.stale",
            EventType::Failed => "com.scenewatch.summary.failed",
            EventType::Canceled => "com.scenewatch.summary.canceled",
            EventType::TimedOut => "com.scenewatch.summary.timed_out",
            EventType::NotRequested => "com.scenewatch.summary.not_requested",
            EventType::Rejected => "com.scenewatch.watch.rejected",
            EventType::Superseded => "com.scenewatch.watch.superseded",
            EventType::Discovered => "com.scenewatch.watch.discovered",
            EventType::SinkFailing => "com.scenewatch.sink.failing",
            EventType::SinkRecovered => "com.scenewatch.sink.recovered",
        }
    }

    /// The inverse of [`EventType::as_str`].
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// True for the outcomes an operator should look at; they log at `warn`.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            EventType::Failed
                | EventType::Canceled
                | EventType::TimedOut
                | EventType::NotRequested
                | EventType::Rejected
                | EventType::SinkFailing
        )
    }

    /// True for the types [`Event::ended`] is meant for.
    pub fn is_ending(self) -> bool {
        matches!(
            self,
            EventType::Failed | EventType::Canceled | EventType::TimedOut | EventType::NotRequested
        )
    }

    /// The short sentence of the log line.
    fn sentence(self) -> &'static str {
        match self {
            EventType::Waiting => "Summary is waiting",
            EventType::Completed => "Summary completed",
            EventType::Delivered => "Summary delivered",
            EventType::Updated => "Summary updated",
            EventType::Stale => "Summary has stale scenes",
            EventType::Failed => "Summary failed",
            EventType::Canceled => "Summary canceled",
            EventType::TimedOut => "Summary timed out",
            EventType::NotRequested => "Summary was never requested",
            EventType::Rejected => "Watch rejected by the API",
            EventType::Superseded => "Watch superseded by a re-index",
            EventType::Discovered => "Watch discovered",
            EventType::SinkFailing => "Sink is failing",
            EventType::SinkRecovered => "Sink recovered",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. Build it with the constructors, which fix the id recipe per type.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Stable for the same fact: hex of the first 128 bits of SHA-256 over the type and the
    /// fact's parts, each followed by a NUL byte.
    pub id: String,
    /// The type.
    pub kind: EventType,
    /// `/workspaces/{w}/projects/{p}/assets/{a}/indexes/{i}`, or `/sinks/{name}` for sink events.
    pub source: String,
    /// The index id, or the sink name.
    pub subject: String,
    /// When it happened, Unix milliseconds.
    pub time_ms: u64,
    /// The watch key `w/p/a/i`; `None` for sink events.
    pub watch: Option<String>,
    /// The type-specific payload (see docs/events.md).
    pub data: Value,
}

/// The media type of the `data` member.
const DATA_CONTENT_TYPE: &str = "application/json";

impl Event {
    fn for_watch(key: &WatchKey, kind: EventType, id: String, data: Value, time_ms: u64) -> Event {
        Event {
            id,
            kind,
            source: key.source(),
            subject: key.index_id().to_string(),
            time_ms,
            watch: Some(key.to_string()),
            data,
        }
    }

    fn for_sink(sink: &str, kind: EventType, id: String, data: Value, time_ms: u64) -> Event {
        Event {
            id,
            kind,
            source: sink_source(sink),
            subject: sink.to_string(),
            time_ms,
            watch: None,
            data,
        }
    }

    /// The remote status was first seen as queued or running, or changed between them.
    /// `cycle` tells apart waits of different analysis runs of the same index (empty if unknown).
    pub fn waiting(key: &WatchKey, remote_status: &str, cycle: &str, time_ms: u64) -> Event {
        let kind = EventType::Waiting;
        let id = event_id(kind, &with_key(key, &[remote_status, cycle]));
        let mut data = Map::new();
        data.insert("remoteStatus".into(), remote_status.into());
        if !cycle.is_empty() {
            data.insert("cycle".into(), cycle.into());
        }
        Event::for_watch(key, kind, id, Value::Object(data), time_ms)
    }

    /// A new result version was fetched. The version id already names the watch, so it alone
    /// makes the fact.
    pub fn completed(
        key: &WatchKey,
        version_id: &str,
        last_analyzed_at: &str,
        scene_count: u64,
        analyzed_scene_ids: Option<&[String]>,
        time_ms: u64,
    ) -> Event {
        let kind = EventType::Completed;
        let data = json!({
            "version": version_id,
            "sceneCount": scene_count,
            "lastAnalyzedAt": last_analyzed_at,
            "analyzedSceneIds": analyzed_scene_ids,
        });
        Event::for_watch(key, kind, event_id(kind, &[version_id]), data, time_ms)
    }

    /// A sink confirmed a version.
    pub fn delivered(
        key: &WatchKey,
        version_id: &str,
        sink: &str,
        location: &str,
        time_ms: u64,
    ) -> Event {
        let kind = EventType::Delivered;
        let data = json!({ "version": version_id, "sink": sink, "location": location });
        Event::for_watch(
            key,
            kind,
            event_id(kind, &[version_id, sink]),
            data,
            time_ms,
        )
    }

    /// A later version replaced an earlier one (a partial or full re-analysis).
    pub fn updated(
        key: &WatchKey,
        version_id: &str,
        previous_version_id: &str,
        last_analyzed_at: &str,
        analyzed_scene_ids: Option<&[String]>,
        time_ms: u64,
    ) -> Event {
        let kind = EventType::Updated;
        let data = json!({
            "version": version_id,
            "previousVersion": previous_version_id,
            "lastAnalyzedAt": last_analyzed_at,
            "analyzedSceneIds": analyzed_scene_ids,
        });
        Event::for_watch(key, kind, event_id(kind, &[version_id]), data, time_ms)
    }

    /// Scenes of a version have `metadataChangedAfterSummary: true`.
    pub fn stale(key: &WatchKey, version_id: &str, scenes: &[u64], time_ms: u64) -> Event {
        let kind = EventType::Stale;
        let data = json!({ "version": version_id, "scenes": scenes });
        Event::for_watch(key, kind, event_id(kind, &[version_id]), data, time_ms)
    }

    /// A terminal outcome: `kind` is one of `Failed`, `Canceled`, `TimedOut`, `NotRequested`
    /// (see [`EventType::is_ending`]); `data` is passed through unchanged.
    pub fn ended(key: &WatchKey, kind: EventType, cycle: &str, data: Value, time_ms: u64) -> Event {
        // Another kind is a caller bug, but not worth a panic: the id still includes the type,
        // so the event stays distinct and honest about what it says.
        let id = event_id(kind, &with_key(key, &[cycle]));
        Event::for_watch(key, kind, id, data, time_ms)
    }

    /// A permanent API error stopped the watch.
    pub fn rejected(
        key: &WatchKey,
        cycle: &str,
        http_status: Option<u16>,
        code: Option<&str>,
        trace_id: Option<&str>,
        message: &str,
        time_ms: u64,
    ) -> Event {
        let kind = EventType::Rejected;
        let data = json!({
            "httpStatus": http_status,
            "code": code,
            "traceId": trace_id,
            "message": message,
        });
        let id = event_id(kind, &with_key(key, &[cycle]));
        Event::for_watch(key, kind, id, data, time_ms)
    }

    /// A re-index replaced the watch's index by `new_index_id` (the asset's latest now).
    /// `follows`: the watch follows the asset's latest index and goes on as a watch of the new
    /// one. One fact per (watch, new index).
    pub fn superseded(key: &WatchKey, new_index_id: &str, follows: bool, time_ms: u64) -> Event {
        let kind = EventType::Superseded;
        let data = json!({
            "indexId": key.index_id(),
            "newIndexId": new_index_id,
            "followed": follows,
        });
        let id = event_id(kind, &with_key(key, &[new_index_id]));
        Event::for_watch(key, kind, id, data, time_ms)
    }

    /// A watch was found by the selector `origin` (`asset:w/p/a` or `project:w/p`). One fact
    /// per (watch, origin): found again after a restart, it is the same event.
    pub fn discovered(key: &WatchKey, origin: &str, time_ms: u64) -> Event {
        let kind = EventType::Discovered;
        let data = json!({ "origin": origin });
        let id = event_id(kind, &with_key(key, &[origin]));
        Event::for_watch(key, kind, id, data, time_ms)
    }

    /// A sink started failing; `episode` numbers its failure episodes so each start is its own
    /// fact while repeats of the same episode dedupe.
    pub fn sink_failing(sink: &str, episode: u64, error: &str, time_ms: u64) -> Event {
        let kind = EventType::SinkFailing;
        let ep = episode.to_string();
        let data = json!({ "sink": sink, "episode": episode, "error": error });
        Event::for_sink(sink, kind, event_id(kind, &[sink, &ep]), data, time_ms)
    }

    /// The failure episode `episode` of a sink ended.
    pub fn sink_recovered(sink: &str, episode: u64, time_ms: u64) -> Event {
        let kind = EventType::SinkRecovered;
        let ep = episode.to_string();
        let data = json!({ "sink": sink, "episode": episode });
        Event::for_sink(sink, kind, event_id(kind, &[sink, &ep]), data, time_ms)
    }

    /// CloudEvents 1.0 structured-mode JSON with exactly the core attributes: `specversion`,
    /// `id`, `source`, `type`, `subject`, `time` (RFC 3339 UTC with milliseconds),
    /// `datacontenttype` and `data`.
    pub fn to_cloudevent(&self) -> Value {
        json!({
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.kind.as_str(),
            "subject": self.subject,
            "time": format_rfc3339_ms(self.time_ms),
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": self.data,
        })
    }

    /// The inverse of [`Event::to_cloudevent`]; `None` if `v` is not an event of ours.
    pub fn from_cloudevent(v: &Value) -> Option<Event> {
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str);
        if s("specversion")? != "1.0" {
            return None;
        }
        if let Some(ct) = s("datacontenttype")
            && ct != DATA_CONTENT_TYPE
        {
            return None;
        }
        let kind = EventType::parse(s("type")?)?;
        let source = s("source")?;
        let watch = match kind {
            EventType::SinkFailing | EventType::SinkRecovered => {
                source.strip_prefix("/sinks/")?;
                None
            }
            _ => Some(watch_of_source(source)?),
        };
        let id = s("id")?;
        if id.is_empty() {
            return None;
        }
        Some(Event {
            id: id.to_string(),
            kind,
            source: source.to_string(),
            subject: s("subject")?.to_string(),
            time_ms: parse_rfc3339_ms(s("time")?)?,
            watch,
            data: o.get("data").cloned().unwrap_or(Value::Null),
        })
    }

    /// The compact CloudEvents JSON, as sinks write it: the same document as
    /// [`Event::to_cloudevent`], with the attributes in specification order (`Value` would sort
    /// them), which reads better in a terminal or a log.
    pub fn to_cloudevent_bytes(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct CloudEvent<'a> {
            specversion: &'static str,
            id: &'a str,
            source: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            subject: &'a str,
            time: String,
            datacontenttype: &'static str,
            data: &'a Value,
        }
        let ce = CloudEvent {
            specversion: "1.0",
            id: &self.id,
            source: &self.source,
            kind: self.kind.as_str(),
            subject: &self.subject,
            time: format_rfc3339_ms(self.time_ms),
            datacontenttype: DATA_CONTENT_TYPE,
            data: &self.data,
        };
        // Serialising strings and a `Value` to memory cannot fail.
        serde_json::to_vec(&ce).unwrap_or_default()
    }

    /// Writes this event's structured log line: target `scenewatch::events`, level `warn` for
    /// the outcomes an operator should look at, `info` otherwise. The field names are a
    /// contract documented in docs/events.md.
    pub fn log(&self) {
        let d = &self.data;
        let str_field = |k: &str| d.get(k).and_then(Value::as_str);
        let u64_field = |k: &str| d.get(k).and_then(Value::as_u64);
        let scenes = d.get("scenes").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        let analyzed = d
            .get("analyzedSceneIds")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        // One macro body for both levels: tracing needs the level as a constant per callsite.
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "scenewatch::events",
                    $level,
                    event_id = %self.id,
                    event_type = self.kind.as_str(),
                    watch = self.watch.as_deref(),
                    sink = str_field("sink"),
                    version = str_field("version"),
                    previous_version = str_field("previousVersion"),
                    last_analyzed_at = str_field("lastAnalyzedAt"),
                    scene_count = u64_field("sceneCount"),
                    analyzed_scene_ids = analyzed.as_deref(),
                    scenes = scenes.as_deref(),
                    location = str_field("location"),
                    remote_status = str_field("remoteStatus"),
                    cycle = str_field("cycle"),
                    http_status = u64_field("httpStatus"),
                    code = str_field("code"),
                    trace_id = str_field("traceId"),
                    detail = str_field("message"),
                    episode = u64_field("episode"),
                    error = str_field("error"),
                    new_index_id = str_field("newIndexId"),
                    origin = str_field("origin"),
                    "{}",
                    self.kind.sentence()
                )
            };
        }
        if self.kind.is_warning() {
            emit!(tracing::Level::WARN);
        } else {
            emit!(tracing::Level::INFO);
        }
    }
}

/// The id parts of a fact about a watch: the four ids of the key, then `rest`.
fn with_key<'a>(key: &'a WatchKey, rest: &[&'a str]) -> Vec<&'a str> {
    let mut parts = vec![
        key.workspace(),
        key.project_id(),
        key.asset_id(),
        key.index_id(),
    ];
    parts.extend_from_slice(rest);
    parts
}

/// Hex of the first 128 bits of SHA-256 over the type string and `parts`, each followed by NUL.
/// NUL cannot occur in ids or API strings we hash, so distinct part lists never collide by
/// concatenation.
fn event_id(kind: EventType, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0u8]);
    for part in parts {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `/sinks/{name}`, with anything outside the URI "unreserved" set percent-encoded so the source
/// stays a valid URI-reference whatever the operator named the sink.
fn sink_source(name: &str) -> String {
    let mut out = String::from("/sinks/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `w/p/a/i` from `/workspaces/{w}/projects/{p}/assets/{a}/indexes/{i}`.
fn watch_of_source(source: &str) -> Option<String> {
    let mut it = source.strip_prefix('/')?.split('/');
    let mut ids = Vec::with_capacity(4);
    for label in ["workspaces", "projects", "assets", "indexes"] {
        if it.next()? != label {
            return None;
        }
        let id = it.next()?;
        if id.is_empty() {
            return None;
        }
        ids.push(id);
    }
    if it.next().is_some() {
        return None;
    }
    Some(ids.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> WatchKey {
        WatchKey::new("ws", "1234", "5678", "1001").unwrap()
    }

    fn other_key() -> WatchKey {
        key().with_index("1002").unwrap()
    }

    const T: u64 = 1_776_421_800_123; // 2026-04-17T10:30:00.123Z

    /// One event of every type, built from `key`, so tests can cover all of them.
    fn one_of_each(k: &WatchKey) -> Vec<Event> {
        let ids = vec!["3".to_string(), "4".to_string()];
        vec![
            Event::waiting(k, "SUMMARIZING", "c1", T),
            Event::completed(k, "v1", "2026-04-17T10:30:00", 12, Some(&ids), T),
            Event::delivered(k, "v1", "files", "/out/1001.json", T),
            Event::updated(k, "v2", "v1", "2026-04-18T10:30:00", None, T),
            Event::stale(k, "v1", &[3, 7], T),
            Event::ended(
                k,
                EventType::Failed,
                "c1",
                json!({"remoteStatus": "SUMMARIZE_FAIL"}),
                T,
            ),
            Event::ended(k, EventType::Canceled, "c1", json!({}), T),
            Event::ended(k, EventType::TimedOut, "c1", json!({"waitedMs": 5}), T),
            Event::ended(k, EventType::NotRequested, "c1", json!({}), T),
            Event::rejected(
                k,
                "c1",
                Some(404),
                Some("3001"),
                Some("t-1"),
                "not found",
                T,
            ),
            Event::superseded(k, "1002", true, T),
            Event::discovered(k, "project:ws/1234", T),
            Event::sink_failing("files", 1, "disk full", T),
            Event::sink_recovered("files", 1, T),
        ]
    }

    #[test]
    fn every_type_string_parses_back_and_is_distinct() {
        let mut seen = std::collections::HashSet::new();
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(t.as_str().starts_with("com.scenewatch."), "{t}");
            assert!(seen.insert(t.as_str()));
        }
        assert_eq!(EventType::parse("com.scenewatch.summary.nope"), None);
        assert_eq!(EventType::parse(""), None);
    }

    #[test]
    fn one_of_each_covers_every_type_and_ids_are_distinct() {
        let events = one_of_each(&key());
        let types: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(types, EventType::ALL.to_vec());
        let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), events.len());
        for e in &events {
            assert_eq!(e.id.len(), 32, "{e:?}");
            assert!(
                e.id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn same_fact_same_id_across_time_and_calls() {
        let a = one_of_each(&key());
        let b: Vec<_> = one_of_each(&key())
            .into_iter()
            .map(|mut e| {
                e.time_ms += 99_000;
                e
            })
            .collect();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.id, y.id, "{:?}", x.kind);
        }
        // Time is not part of the fact.
        let k = key();
        assert_eq!(
            Event::waiting(&k, "SUMMARIZING", "c1", 1).id,
            Event::waiting(&k, "SUMMARIZING", "c1", 2).id
        );
    }

    #[test]
    fn ids_are_pinned() {
        // The recipe is a public contract (docs/events.md): a change here breaks consumers'
        // dedupe across upgrades. Computed independently:
        // python3 -c "import hashlib; print(hashlib.sha256(b'com.scenewatch.summary.completed\0v1\0').hexdigest()[:32])"
        let e = Event::completed(&key(), "v1", "x", 0, None, 0);
        assert_eq!(e.id, "ee4e43069469e6111d5dc7b60581e54e");
        // ... b'com.scenewatch.sink.failing\0files\x001\0'
        let e = Event::sink_failing("files", 1, "disk full", 0);
        assert_eq!(e.id, "b4a1c9b784ff1a043db149e934ddfa4a");
        // ... b'com.scenewatch.summary.waiting\0ws\x001234\x005678\x001001\0SUMMARIZING\0c1\0'
        let e = Event::waiting(&key(), "SUMMARIZING", "c1", 0);
        assert_eq!(e.id, "68c5eecb6027e63fa1e824a2fa4ffc55");
    }

    #[test]
    fn any_part_changed_gives_another_id() {
        let k = key();
        let o = other_key();
        let ids = [None::<&[String]>, None];
        let pairs = [
            (
                Event::waiting(&k, "SUMMARIZING", "c1", T),
                Event::waiting(&o, "SUMMARIZING", "c1", T),
            ),
            (
                Event::waiting(&k, "SUMMARIZING", "c1", T),
                Event::waiting(&k, "WAIT_SUMMARIZE", "c1", T),
            ),
            (
                Event::waiting(&k, "SUMMARIZING", "c1", T),
                Event::waiting(&k, "SUMMARIZING", "c2", T),
            ),
            (
                Event::completed(&k, "v1", "a", 1, ids[0], T),
                Event::completed(&k, "v2", "a", 1, ids[1], T),
            ),
            (
                Event::delivered(&k, "v1", "s1", "l", T),
                Event::delivered(&k, "v2", "s1", "l", T),
            ),
            (
                Event::delivered(&k, "v1", "s1", "l", T),
                Event::delivered(&k, "v1", "s2", "l", T),
            ),
            (
                Event::updated(&k, "v1", "v0", "a", None, T),
                Event::updated(&k, "v2", "v0", "a", None, T),
            ),
            (
                Event::stale(&k, "v1", &[1], T),
                Event::stale(&k, "v2", &[1], T),
            ),
            (
                Event::ended(&k, EventType::Failed, "c1", Value::Null, T),
                Event::ended(&o, EventType::Failed, "c1", Value::Null, T),
            ),
            (
                Event::ended(&k, EventType::Failed, "c1", Value::Null, T),
                Event::ended(&k, EventType::Failed, "c2", Value::Null, T),
            ),
            (
                Event::ended(&k, EventType::Failed, "c1", Value::Null, T),
                Event::ended(&k, EventType::Canceled, "c1", Value::Null, T),
            ),
            (
                Event::rejected(&k, "c1", None, None, None, "m", T),
                Event::rejected(&o, "c1", None, None, None, "m", T),
            ),
            (
                Event::rejected(&k, "c1", None, None, None, "m", T),
                Event::rejected(&k, "c2", None, None, None, "m", T),
            ),
            (
                Event::sink_failing("a", 1, "e", T),
                Event::sink_failing("b", 1, "e", T),
            ),
            (
                Event::sink_failing("a", 1, "e", T),
                Event::sink_failing("a", 2, "e", T),
            ),
            (
                Event::sink_recovered("a", 1, T),
                Event::sink_recovered("a", 2, T),
            ),
            (
                Event::sink_recovered("a", 1, T),
                Event::sink_failing("a", 1, "e", T),
            ),
            // Parts are NUL-separated, so shifting text between parts is another fact.
            (
                Event::delivered(&k, "v1", "ab", "l", T),
                Event::delivered(&k, "v1a", "b", "l", T),
            ),
        ];
        for (i, (a, b)) in pairs.iter().enumerate() {
            assert_ne!(a.id, b.id, "pair {i}: {a:?} vs {b:?}");
        }
    }

    #[test]
    fn cloudevent_has_exactly_the_core_attributes() {
        let ids = vec!["3".to_string()];
        let e = Event::completed(&key(), "v1", "2026-04-17T10:30:00", 12, Some(&ids), T);
        let ce = e.to_cloudevent();
        let expected = json!({
            "specversion": "1.0",
            "id": e.id,
            "source": "/workspaces/ws/projects/1234/assets/5678/indexes/1001",
            "type": "com.scenewatch.summary.completed",
            "subject": "1001",
            "time": "2026-04-17T10:30:00.123Z",
            "datacontenttype": "application/json",
            "data": {
                "version": "v1",
                "sceneCount": 12,
                "lastAnalyzedAt": "2026-04-17T10:30:00",
                "analyzedSceneIds": ["3"],
            },
        });
        assert_eq!(ce, expected);

        let s = Event::sink_failing("files", 2, "disk full", T).to_cloudevent();
        assert_eq!(s["source"], "/sinks/files");
        assert_eq!(s["subject"], "files");
        assert_eq!(
            s["data"],
            json!({"sink": "files", "episode": 2, "error": "disk full"})
        );
    }

    #[test]
    fn data_shapes_are_as_documented() {
        let k = key();
        assert_eq!(
            Event::waiting(&k, "WAIT_SUMMARIZE", "", T).data,
            json!({"remoteStatus": "WAIT_SUMMARIZE"})
        );
        assert_eq!(
            Event::waiting(&k, "WAIT_SUMMARIZE", "c9", T).data,
            json!({"remoteStatus": "WAIT_SUMMARIZE", "cycle": "c9"})
        );
        assert_eq!(
            Event::updated(&k, "v2", "v1", "t", None, T).data,
            json!({"version": "v2", "previousVersion": "v1", "lastAnalyzedAt": "t", "analyzedSceneIds": null})
        );
        assert_eq!(
            Event::stale(&k, "v1", &[3, 7], T).data,
            json!({"version": "v1", "scenes": [3, 7]})
        );
        assert_eq!(
            Event::rejected(&k, "c", Some(403), None, Some("tr"), "forbidden", T).data,
            json!({"httpStatus": 403, "code": null, "traceId": "tr", "message": "forbidden"})
        );
        let e = Event::delivered(&k, "v1", "files", "/x.json", T);
        assert_eq!(
            e.data,
            json!({"version": "v1", "sink": "files", "location": "/x.json"})
        );
        assert_eq!(e.watch.as_deref(), Some("ws/1234/5678/1001"));
        assert_eq!(Event::sink_recovered("s", 1, T).watch, None);
    }

    #[test]
    fn cloudevents_round_trip() {
        let mut all = one_of_each(&key());
        all.push(Event::sink_failing("odd name/ü", 3, "x", 0));
        for e in all {
            let back = Event::from_cloudevent(&e.to_cloudevent());
            assert_eq!(back.as_ref(), Some(&e), "{:?}", e.kind);
            // And through bytes, as the ledger stores them.
            let v: Value = serde_json::from_slice(&e.to_cloudevent_bytes()).unwrap();
            assert_eq!(v, e.to_cloudevent());
            assert_eq!(Event::from_cloudevent(&v), Some(e));
        }
    }

    #[test]
    fn foreign_cloudevents_are_refused() {
        let good = Event::waiting(&key(), "SUMMARIZING", "", T).to_cloudevent();
        let with = |k: &str, v: Value| {
            let mut x = good.clone();
            x[k] = v;
            x
        };
        assert!(Event::from_cloudevent(&good).is_some());
        for bad in [
            json!(null),
            json!([]),
            with("specversion", json!("0.3")),
            with("type", json!("org.example.other")),
            with("time", json!("yesterday")),
            with("source", json!("/elsewhere")),
            with(
                "source",
                json!("/workspaces/ws/projects/1/assets/2/indexes/3/extra"),
            ),
            with("id", json!(7)),
            with("id", json!("")),
            with("subject", json!(null)),
            with("datacontenttype", json!("text/plain")),
        ] {
            assert_eq!(Event::from_cloudevent(&bad), None, "{bad}");
        }
        let sink = Event::sink_recovered("s", 1, T).to_cloudevent();
        let mut wrong = sink.clone();
        wrong["source"] = json!("/workspaces/ws/projects/1/assets/2/indexes/3");
        assert_eq!(Event::from_cloudevent(&wrong), None);
    }

    #[test]
    fn sink_sources_are_uri_safe() {
        assert_eq!(sink_source("files"), "/sinks/files");
        assert_eq!(sink_source("a b/c"), "/sinks/a%20b%2Fc");
    }

    #[test]
    fn warning_levels() {
        let warn: Vec<_> = EventType::ALL
            .into_iter()
            .filter(|t| t.is_warning())
            .collect();
        assert_eq!(
            warn,
            [
                EventType::Failed,
                EventType::Canceled,
                EventType::TimedOut,
                EventType::NotRequested,
                EventType::Rejected,
                EventType::SinkFailing
            ]
        );
        // Logging never panics, whatever the data looks like.
        for e in one_of_each(&key()) {
            e.log();
        }
        let mut odd = Event::sink_recovered("s", 1, T);
        odd.data = json!({"scenes": "not a list", "httpStatus": -1});
        odd.log();
    }

    /// Runs `f` with a JSON subscriber and returns the lines it logged.
    fn logged(f: impl FnOnce()) -> Vec<Value> {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn log_lines_carry_the_documented_fields() {
        let k = key();
        let lines = logged(|| {
            Event::delivered(&k, "v1", "files", "/out/1001.json", T).log();
            Event::rejected(
                &k,
                "c1",
                Some(403),
                Some("210"),
                Some("tr-9"),
                "forbidden",
                T,
            )
            .log();
            Event::sink_failing("files", 2, "disk full", T).log();
        });
        assert_eq!(lines.len(), 3);
        let f = |i: usize| &lines[i]["fields"];
        assert_eq!(lines[0]["target"], "scenewatch::events");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(f(0)["message"], "Summary delivered");
        assert_eq!(f(0)["event_type"], "com.scenewatch.summary.delivered");
        assert_eq!(
            f(0)["event_id"],
            Event::delivered(&k, "v1", "files", "", 0).id.as_str()
        );
        assert_eq!(f(0)["watch"], "ws/1234/5678/1001");
        assert_eq!(f(0)["version"], "v1");
        assert_eq!(f(0)["sink"], "files");
        assert_eq!(f(0)["location"], "/out/1001.json");
        // Absent data is absent, not null: log queries can test for the field.
        assert!(f(0).get("http_status").is_none(), "{}", f(0));

        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(f(1)["http_status"], 403);
        assert_eq!(f(1)["code"], "210");
        assert_eq!(f(1)["trace_id"], "tr-9");
        assert_eq!(f(1)["detail"], "forbidden");

        assert_eq!(lines[2]["level"], "WARN");
        assert!(f(2).get("watch").is_none(), "{}", f(2));
        assert_eq!(f(2)["episode"], 2);
        assert_eq!(f(2)["error"], "disk full");
    }

    #[test]
    fn docs_examples_are_what_the_code_builds() {
        // docs/events.md shows ids and CloudEvents; keep them true.
        let doc = include_str!("../docs/events.md");
        let k = WatchKey::new("my-workspace", "1234", "5678", "1001").unwrap();
        let version = crate::domain::VersionId::of(&k, "2026-04-17T10:30:00");
        assert!(doc.contains(version.as_str()), "{version}");
        let completed = Event::completed(
            &k,
            &version,
            "2026-04-17T10:30:00",
            42,
            None,
            1_776_421_862_512,
        );
        let location = "/var/lib/scenewatch/results/my-workspace/1234/5678/1001.json";
        let delivered = Event::delivered(&k, &version, "results", location, 1_776_421_862_734);
        let examples: Vec<Value> = doc
            .split("```json\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter(|block| block.contains("\"specversion\""))
            .map(|block| serde_json::from_str(block).unwrap())
            .collect();
        assert_eq!(
            examples,
            [completed.to_cloudevent(), delivered.to_cloudevent()]
        );
        // The indented examples list attributes in the order the sinks write them.
        let line = String::from_utf8(completed.to_cloudevent_bytes()).unwrap();
        let order = [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
        ];
        let at: Vec<_> = order
            .iter()
            .map(|a| line.find(&format!("\"{a}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
    }
}
