//! The in-memory ledger: the same contract as the SQLite one (see [`Ledger`]), held in maps for
//! the life of the process. `scenewatch once` and the demo run the engine over it; engine tests
//! use it because every call completes at once, so paused tokio time is never moved on while a
//! ledger thread works.
//!
//! One mutex over everything: every call is one short critical section, which is what makes each
//! call atomic (the SQLite ledger's transaction).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use super::{
    Backlog, Ledger, LedgerFuture, PendingDelivery, Pruned, SinkHealth, StateError, StatusRow,
    StepCommit, WatchRecord,
};
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::watch::WatchState;

/// See the module documentation.
pub struct MemoryLedger {
    inner: Mutex<Mem>,
}

impl std::fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLedger").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Mem {
    closed: bool,
    sinks: Vec<String>,
    event_sinks: Vec<String>,
    watches: BTreeMap<WatchKey, WatchRow>,
    versions: HashMap<VersionId, VersionRow>,
    /// Numbers versions in the order they were first recorded (retention walks them oldest first).
    next_version: u64,
    deliveries: BTreeMap<(VersionId, String), Row>,
    /// Events by sequence number (emission order).
    events: BTreeMap<u64, Event>,
    seq_by_id: HashMap<String, u64>,
    next_seq: u64,
    event_deliveries: BTreeMap<(String, u64), Row>,
    sink_health: HashMap<String, SinkHealth>,
    facts: HashMap<String, String>,
}

struct WatchRow {
    record: WatchRecord,
    scene_summary_id: Option<String>,
    generation: Option<&'static str>,
    origin: Option<String>,
    removed: bool,
}

struct VersionRow {
    order: u64,
    key: WatchKey,
    last_analyzed_at: String,
    fetched_at_ms: u64,
    /// Emptied once every configured sink has the version (as the SQLite ledger does).
    result_json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    Parked,
}

/// One delivery or event-delivery row.
struct Row {
    state: State,
    attempts: u32,
    next_attempt_at_ms: u64,
    /// When it was marked done (deliveries; retention reads it).
    done_at_ms: Option<u64>,
}

impl Row {
    fn pending(at: u64) -> Row {
        Row {
            state: State::Pending,
            attempts: 0,
            next_attempt_at_ms: at,
            done_at_ms: None,
        }
    }

    fn failed(&mut self, next_attempt_at_ms: u64, park: bool) {
        if self.state == State::Done {
            return;
        }
        self.attempts = self.attempts.saturating_add(1);
        self.next_attempt_at_ms = next_attempt_at_ms;
        if park {
            self.state = State::Parked;
        }
    }
}

fn new_record(key: &WatchKey) -> WatchRecord {
    WatchRecord {
        key: key.clone(),
        state: WatchState::default(),
        next_poll_at_ms: None,
        last_version_id: None,
        last_change_at_ms: None,
        stale_version_id: None,
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

impl MemoryLedger {
    /// An empty ledger for these result and event sinks.
    pub fn new(sinks: Vec<String>, event_sinks: Vec<String>) -> MemoryLedger {
        MemoryLedger {
            inner: Mutex::new(Mem {
                sinks,
                event_sinks,
                next_seq: 1,
                ..Mem::default()
            }),
        }
    }

    /// Runs `f` on the state: one atomic call.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Mem) -> Result<T, StateError>,
    ) -> LedgerFuture<'_, T> {
        let result = {
            // Every change below is a plain update of owned values, so the state is consistent
            // even if a holder panicked.
            let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if m.closed {
                Err(StateError::Closed {
                    path: PathBuf::from("(in memory)"),
                })
            } else {
                f(&mut m)
            }
        };
        Box::pin(std::future::ready(result))
    }
}

impl Mem {
    /// Inserts a watch, or refreshes its settings and un-removes it, keeping its state.
    fn upsert(&mut self, spec: &WatchSpec, _now_ms: u64) -> WatchRecord {
        let row = self
            .watches
            .entry(spec.key.clone())
            .or_insert_with(|| WatchRow {
                record: new_record(&spec.key),
                scene_summary_id: None,
                generation: None,
                origin: None,
                removed: false,
            });
        row.scene_summary_id = spec.scene_summary_id.as_deref().map(str::to_owned);
        row.generation = Some(spec.generation.as_str());
        row.origin = spec.origin.as_deref().map(str::to_string);
        row.removed = false;
        row.record.clone()
    }

    fn insert_events(&mut self, events: &[Event]) {
        for ev in events {
            if self.seq_by_id.contains_key(&ev.id) {
                continue; // the same fact recorded again is not sent again
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.seq_by_id.insert(ev.id.clone(), seq);
            self.events.insert(seq, ev.clone());
            for sink in &self.event_sinks {
                self.event_deliveries
                    .insert((sink.clone(), seq), Row::pending(ev.time_ms));
            }
        }
    }
}

impl Ledger for MemoryLedger {
    fn describe(&self) -> String {
        "the in-memory ledger".into()
    }

    fn set_sinks(&self, sinks: Vec<String>, event_sinks: Vec<String>) -> LedgerFuture<'_, ()> {
        self.with(move |m| {
            m.sinks = sinks;
            m.event_sinks = event_sinks;
            Ok(())
        })
    }

    fn sync_watches<'a>(
        &'a self,
        specs: &'a [WatchSpec],
        origins: &'a [String],
        now_ms: u64,
    ) -> LedgerFuture<'a, Vec<WatchRecord>> {
        self.with(move |m| {
            let mut seen = std::collections::HashSet::with_capacity(specs.len());
            let mut out = Vec::with_capacity(specs.len());
            for spec in specs {
                let r = m.upsert(spec, now_ms);
                if seen.insert(spec.key.clone()) {
                    out.push(r);
                }
            }
            for (key, row) in &mut m.watches {
                let gone = match &row.origin {
                    None => !seen.contains(key),
                    Some(o) => !origins.contains(o),
                };
                if gone {
                    row.removed = true;
                }
            }
            Ok(out)
        })
    }

    fn add_watch<'a>(&'a self, spec: &'a WatchSpec, now_ms: u64) -> LedgerFuture<'a, WatchRecord> {
        self.with(move |m| Ok(m.upsert(spec, now_ms)))
    }

    fn remove_watches(&self, keys: Vec<WatchKey>, _now_ms: u64) -> LedgerFuture<'_, ()> {
        self.with(move |m| {
            for k in &keys {
                if let Some(row) = m.watches.get_mut(k) {
                    row.removed = true;
                }
            }
            Ok(())
        })
    }

    fn discovered(&self) -> LedgerFuture<'_, Vec<(String, WatchRecord)>> {
        self.with(|m| {
            Ok(m.watches
                .values()
                .filter(|r| !r.removed)
                .filter_map(|r| Some((r.origin.clone()?, r.record.clone())))
                .collect())
        })
    }

    fn reset_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, Vec<WatchKey>> {
        self.with(move |m| {
            let mut reset = Vec::new();
            for (key, row) in &mut m.watches {
                let r = &mut row.record;
                if row.removed || !r.state.phase.is_terminal() {
                    continue;
                }
                if !keys.is_empty() && !keys.contains(key) {
                    continue;
                }
                r.state.phase = crate::watch::Phase::Pending;
                r.state.remote = None;
                r.state.consecutive_errors = 0;
                r.state.started_at = None;
                r.state.before_since = None;
                r.state.last_error = None;
                r.state.attempt = 0;
                r.next_poll_at_ms = Some(now_ms);
                r.last_change_at_ms = Some(now_ms);
                reset.push(key.clone());
            }
            Ok(reset)
        })
    }

    fn unpark(&self, sink: Option<String>, now_ms: u64) -> LedgerFuture<'_, u64> {
        self.with(move |m| {
            let wanted = |s: &str| sink.as_deref().is_none_or(|w| w == s);
            let mut n = 0;
            let rows = m
                .deliveries
                .iter_mut()
                .map(|((_, s), r)| (s, r))
                .chain(m.event_deliveries.iter_mut().map(|((s, _), r)| (s, r)));
            for (s, r) in rows {
                if r.state == State::Parked && wanted(s) {
                    r.state = State::Pending;
                    r.next_attempt_at_ms = now_ms;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn commit_step(&self, commit: StepCommit) -> LedgerFuture<'_, ()> {
        self.with(move |m| {
            let key = commit.record.key.clone();
            match m.watches.get_mut(&key) {
                Some(row) => row.record = commit.record,
                None => {
                    m.watches.insert(
                        key,
                        WatchRow {
                            record: commit.record,
                            scene_summary_id: None,
                            generation: None,
                            origin: None,
                            removed: false,
                        },
                    );
                }
            }
            if let Some(v) = commit.new_version {
                // Kept once: a version fetched again keeps its rows (a done delivery stays
                // done); a sink added since gets its row.
                let order = m.next_version;
                m.versions
                    .entry(v.version_id.clone())
                    .or_insert_with(|| VersionRow {
                        order,
                        key: v.key.clone(),
                        last_analyzed_at: v.last_analyzed_at.clone(),
                        fetched_at_ms: v.fetched_at_ms,
                        result_json: v.result_json,
                    });
                m.next_version += 1;
                for sink in m.sinks.clone() {
                    m.deliveries
                        .entry((v.version_id.clone(), sink))
                        .or_insert_with(|| Row::pending(v.fetched_at_ms));
                }
            }
            m.insert_events(&commit.events);
            Ok(())
        })
    }

    fn due_deliveries<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<PendingDelivery>> {
        self.with(move |m| {
            let mut due: Vec<(u64, &VersionId, &Row)> = m
                .deliveries
                .iter()
                .filter(|((_, s), r)| {
                    s == sink && r.state == State::Pending && r.next_attempt_at_ms <= now_ms
                })
                .map(|((v, _), r)| (r.next_attempt_at_ms, v, r))
                .collect();
            due.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            // Versions of one watch reach one sink in the order they were fetched (see the
            // trait): a newer one waits while an older one is still pending for the sink.
            let held_up = |vid: &VersionId| {
                let Some(v) = m.versions.get(vid) else {
                    return true;
                };
                m.deliveries.iter().any(|((ovid, s), r)| {
                    s == sink
                        && r.state == State::Pending
                        && m.versions.get(ovid).is_some_and(|o| {
                            o.key == v.key && (o.fetched_at_ms, ovid) < (v.fetched_at_ms, vid)
                        })
                })
            };
            due.retain(|(_, vid, _)| !held_up(vid));
            // A batch ends once its results reach the budget (see the trait); a result past it
            // is not copied.
            let mut budget = super::ResultBudget::default();
            Ok(due
                .into_iter()
                .filter_map(|(_, vid, row)| Some((vid, row, m.versions.get(vid)?)))
                .take(limit)
                .take_while(|(_, _, v)| {
                    let room = budget.has_room();
                    budget.spend(v.result_json.len());
                    room
                })
                .map(|(vid, row, v)| PendingDelivery {
                    version_id: vid.clone(),
                    key: v.key.clone(),
                    last_analyzed_at: v.last_analyzed_at.clone(),
                    fetched_at_ms: v.fetched_at_ms,
                    result_json: v.result_json.clone(),
                    attempts: row.attempts,
                })
                .collect())
        })
    }

    fn delivery_succeeded<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        _location: &'a str,
        events: Vec<Event>,
        now_ms: u64,
    ) -> LedgerFuture<'a, bool> {
        self.with(move |m| {
            if let Some(r) = m
                .deliveries
                .get_mut(&(version_id.clone(), sink.to_string()))
                && r.state != State::Done
            {
                r.state = State::Done;
                r.done_at_ms = Some(now_ms);
            }
            m.insert_events(&events);
            // Only the sinks configured now count (see the trait).
            let mut current = m
                .sinks
                .iter()
                .filter_map(|s| m.deliveries.get(&(version_id.clone(), s.clone())))
                .peekable();
            let any = current.peek().is_some();
            let complete = any && current.all(|r| r.state == State::Done);
            if complete && let Some(v) = m.versions.get_mut(version_id) {
                v.result_json.clear();
                if let Some(w) = m.watches.get_mut(&v.key) {
                    let r = &mut w.record;
                    if r.last_version_id.as_ref() == Some(version_id)
                        && r.state.phase == crate::watch::Phase::Completed
                    {
                        r.state.phase = crate::watch::Phase::Watching;
                    }
                }
            }
            Ok(complete)
        })
    }

    fn delivery_failed<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        _error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        self.with(move |m| {
            if let Some(r) = m
                .deliveries
                .get_mut(&(version_id.clone(), sink.to_string()))
            {
                r.failed(next_attempt_at_ms, park);
            }
            Ok(())
        })
    }

    fn record_events(&self, events: Vec<Event>) -> LedgerFuture<'_, ()> {
        self.with(move |m| {
            m.insert_events(&events);
            Ok(())
        })
    }

    fn due_events<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<Event>> {
        self.with(move |m| {
            let mut out = Vec::new();
            let from = (sink.to_string(), 0);
            for ((s, seq), r) in m.event_deliveries.range(from..) {
                if s != sink || out.len() >= limit {
                    break;
                }
                if r.state != State::Pending {
                    continue;
                }
                // Strict emission order: the first event still in backoff holds back the rest.
                if r.next_attempt_at_ms > now_ms {
                    break;
                }
                if let Some(ev) = m.events.get(seq) {
                    out.push(ev.clone());
                }
            }
            Ok(out)
        })
    }

    fn events_sent<'a>(&'a self, sink: &'a str, ids: &'a [String]) -> LedgerFuture<'a, ()> {
        self.with(move |m| {
            for id in ids {
                if let Some(seq) = m.seq_by_id.get(id)
                    && let Some(r) = m.event_deliveries.get_mut(&(sink.to_string(), *seq))
                {
                    r.state = State::Done;
                }
            }
            Ok(())
        })
    }

    fn events_failed<'a>(
        &'a self,
        sink: &'a str,
        ids: &'a [String],
        _error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        self.with(move |m| {
            for id in ids {
                if let Some(seq) = m.seq_by_id.get(id)
                    && let Some(r) = m.event_deliveries.get_mut(&(sink.to_string(), *seq))
                {
                    r.failed(next_attempt_at_ms, park);
                }
            }
            Ok(())
        })
    }

    fn sink_health<'a>(&'a self, sink: &'a str) -> LedgerFuture<'a, SinkHealth> {
        self.with(move |m| Ok(m.sink_health.get(sink).copied().unwrap_or_default()))
    }

    fn set_sink_health<'a>(&'a self, sink: &'a str, health: SinkHealth) -> LedgerFuture<'a, ()> {
        self.with(move |m| {
            m.sink_health.insert(sink.to_string(), health);
            Ok(())
        })
    }

    fn fact<'a>(&'a self, name: &'a str) -> LedgerFuture<'a, Option<String>> {
        self.with(move |m| Ok(m.facts.get(name).cloned()))
    }

    fn set_fact<'a>(&'a self, name: &'a str, value: &'a str) -> LedgerFuture<'a, ()> {
        self.with(move |m| {
            m.facts.insert(name.to_string(), value.to_string());
            Ok(())
        })
    }

    fn status(&self) -> LedgerFuture<'_, Vec<StatusRow>> {
        self.with(|m| {
            let mut open: HashMap<&WatchKey, (u64, u64)> = HashMap::new();
            for ((vid, _), r) in &m.deliveries {
                let Some(v) = m.versions.get(vid) else {
                    continue;
                };
                let e = open.entry(&v.key).or_default();
                match r.state {
                    State::Pending => e.0 += 1,
                    State::Parked => e.1 += 1,
                    State::Done => {}
                }
            }
            Ok(m.watches
                .iter()
                .map(|(key, row)| {
                    let r = &row.record;
                    let (pending, parked) = open.get(key).copied().unwrap_or_default();
                    StatusRow {
                        key: key.clone(),
                        phase: r.state.phase,
                        remote_status: r.state.remote.as_ref().map(|s| s.as_str().to_string()),
                        polls: r.state.polls,
                        last_change_at_ms: r.last_change_at_ms,
                        next_poll_at_ms: r.next_poll_at_ms,
                        pending_deliveries: pending,
                        parked_deliveries: parked,
                        removed: row.removed,
                        last_error: r.state.last_error.clone(),
                    }
                })
                .collect())
        })
    }

    fn backlog(&self) -> LedgerFuture<'_, Vec<Backlog>> {
        self.with(|m| {
            let mut by_sink: BTreeMap<String, (u64, u64)> = m
                .sinks
                .iter()
                .chain(&m.event_sinks)
                .map(|s| (s.clone(), (0, 0)))
                .collect();
            let rows = m
                .deliveries
                .iter()
                .map(|((_, s), r)| (s, r))
                .chain(m.event_deliveries.iter().map(|((s, _), r)| (s, r)));
            for (s, r) in rows {
                let e = by_sink.entry(s.clone()).or_default();
                match r.state {
                    State::Pending => e.0 += 1,
                    State::Parked => e.1 += 1,
                    State::Done => {}
                }
            }
            Ok(by_sink
                .into_iter()
                .map(|(sink, (pending, parked))| Backlog {
                    sink,
                    pending,
                    parked,
                })
                .collect())
        })
    }

    /// The same rules as the SQLite ledger, over maps; each call forgets at most `limit`
    /// versions and `limit` events, oldest first.
    fn prune(&self, before_ms: u64, limit: usize) -> LedgerFuture<'_, Pruned> {
        self.with(move |m| {
            let limit = limit.max(1);
            let mut out = Pruned::default();
            // Versions: every delivery row done before the cutoff, not the watch's last one.
            let mut rows_of: HashMap<&VersionId, Vec<&Row>> = HashMap::new();
            for ((vid, _), r) in &m.deliveries {
                rows_of.entry(vid).or_default().push(r);
            }
            let mut old: Vec<(u64, VersionId)> = m
                .versions
                .iter()
                .filter(|(vid, v)| {
                    v.fetched_at_ms < before_ms
                        && m.watches
                            .get(&v.key)
                            .is_none_or(|w| w.record.last_version_id.as_ref() != Some(*vid))
                        && rows_of.get(vid).is_none_or(|rows| {
                            rows.iter().all(|r| {
                                r.state == State::Done
                                    && r.done_at_ms.is_some_and(|d| d < before_ms)
                            })
                        })
                })
                .map(|(vid, v)| (v.order, vid.clone()))
                .collect();
            old.sort();
            out.more |= old.len() > limit;
            for (_, vid) in old.into_iter().take(limit) {
                m.versions.remove(&vid);
                let before = m.deliveries.len();
                m.deliveries.retain(|(v, _), _| *v != vid);
                out.versions += 1;
                out.deliveries += (before - m.deliveries.len()) as u64;
            }
            // Events: sent everywhere, of a type that may go, not of the current cycle.
            let mut open: std::collections::HashSet<u64> = std::collections::HashSet::new();
            for ((_, seq), r) in &m.event_deliveries {
                if r.state != State::Done {
                    open.insert(*seq);
                }
            }
            let in_current_cycle = |ev: &Event| {
                let Some(key) = &ev.watch else {
                    return false;
                };
                let Some(w) = m
                    .watches
                    .values()
                    .find(|w| w.record.key.to_string() == *key)
                else {
                    return false;
                };
                match w
                    .record
                    .last_version_id
                    .as_ref()
                    .and_then(|vid| m.versions.get(vid))
                {
                    None => true,
                    Some(v) => ev.time_ms >= v.fetched_at_ms,
                }
            };
            let gone: Vec<u64> = m
                .events
                .iter()
                .filter(|(seq, ev)| {
                    ev.time_ms < before_ms
                        && !open.contains(seq)
                        && super::retention::event_type_may_go(ev.kind.as_str())
                        && !in_current_cycle(ev)
                })
                .map(|(seq, _)| *seq)
                .collect();
            out.more |= gone.len() > limit;
            for seq in gone.into_iter().take(limit) {
                if let Some(ev) = m.events.remove(&seq) {
                    m.seq_by_id.remove(&ev.id);
                    out.events += 1;
                }
                let before = m.event_deliveries.len();
                m.event_deliveries.retain(|(_, s), _| *s != seq);
                out.event_deliveries += (before - m.event_deliveries.len()) as u64;
            }
            Ok(out)
        })
    }

    fn probe_writable(&self) -> LedgerFuture<'_, ()> {
        self.with(|_| Ok(()))
    }

    fn close(&self) -> LedgerFuture<'_, ()> {
        self.with(|m| {
            m.closed = true;
            Ok(())
        })
    }
}
