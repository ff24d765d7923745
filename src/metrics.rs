//! Prometheus metrics (prometheus-client, OpenMetrics text). Label values come from closed sets
//! (outcomes, phases, event types) or from configured sink names: never a watch id, so the
//! number of series stays bounded however many watches there are. Names are documented in
//! docs/operations.md. Besides the `scenewatch_*` families: `scenewatch_build_info` and, on
//! Linux, the conventional `process_*` metrics (`process.rs`), read at scrape time.

mod process;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric scenewatch exports.
pub struct Metrics {
    /// The unprefixed root (process metrics) with the `scenewatch` sub-registry in it.
    registry: Registry,
    polls: Family<Labels, Counter>,
    poll_latency: Family<Labels, Histogram>,
    watches: Family<Labels, Gauge>,
    completion: Histogram,
    deliveries: Family<Labels, Counter>,
    delivery_latency: Family<Labels, Histogram>,
    backlog: Family<Labels, Gauge>,
    parked: Family<Labels, Gauge>,
    sink_failing: Family<Labels, Gauge>,
    budget_rate: Gauge<f64, AtomicU64>,
    recheck_interval: Gauge<f64, AtomicU64>,
    poll_lateness: Family<Labels, Histogram>,
    polls_per_completion: Histogram,
    budget_cuts: Counter,
    throttled: Counter,
    auth_paused: Gauge,
    quota_paused: Gauge,
    events: Family<Labels, Counter>,
    events_sent: Family<Labels, Counter>,
    ledger_commit: Histogram,
    pruned: Family<Labels, Counter>,
    unrecognised: Family<Labels, Counter>,
    shards_owned: Gauge,
    replicas: Gauge,
    lease_renewals: Counter,
    lease_takeovers: Counter,
    shards_lost: Counter,
    lease_errors: Counter,
    /// Codes admitted as label values so far (at most [`MAX_CODE_LABELS`]).
    unrecognised_codes: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct API codes that get a label value of their own in
/// `scenewatch_unrecognised_answers_total`; later ones count as `other`. A hostile or broken
/// server must not be able to grow the number of series without bound.
const MAX_CODE_LABELS: usize = 32;

/// A code as a label value: short, plain characters only (it came from the network).
fn code_label(code: Option<&str>) -> String {
    match code {
        None => "none".into(),
        Some(c)
            if !c.is_empty()
                && c.len() <= 40
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
        {
            c.to_string()
        }
        Some(_) => "invalid".into(),
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// 10 ms to about 3 h: a poll launched on time, or held by a budget far too small.
fn lateness_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

fn latency_histogram() -> Histogram {
    // 5 ms … ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    /// Registers every metric under the `scenewatch` prefix, plus the process metrics.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("scenewatch");
        // Constant 1, for joining version and commit onto other series and for spotting a
        // half-done rollout (two versions at once).
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").into()),
                ("commit", env!("SCENEWATCH_COMMIT").into()),
            ])
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version and the commit this binary was built from",
            build_info,
        );
        let polls = Family::<Labels, Counter>::default();
        registry.register(
            "polls",
            "API answers by operation (status, result) and outcome (ok, pending, not_ready, retryable, throttled, auth_failure, permanent)",
            polls.clone(),
        );
        let poll_latency = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "poll_duration_seconds",
            "Time of one API request, by operation",
            poll_latency.clone(),
        );
        let watches = Family::<Labels, Gauge>::default();
        registry.register("watches", "Watches by phase", watches.clone());
        // 10 s … ~3.8 days.
        let completion = Histogram::new(exponential_buckets(10.0, 2.0, 16));
        registry.register(
            "completion_seconds",
            "Time from a watch's first poll to its result being fetched",
            completion.clone(),
        );
        let deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "deliveries",
            "Result deliveries by sink and outcome (ok, retry, parked, disabled)",
            deliveries.clone(),
        );
        let delivery_latency = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "delivery_duration_seconds",
            "Time of one successful delivery, by sink",
            delivery_latency.clone(),
        );
        let backlog = Family::<Labels, Gauge>::default();
        registry.register(
            "sink_backlog",
            "Deliveries (result sinks) or events (event sinks) waiting, by sink",
            backlog.clone(),
        );
        let parked = Family::<Labels, Gauge>::default();
        registry.register(
            "sink_parked",
            "Deliveries refused by the receiver and kept for an operator, by sink",
            parked.clone(),
        );
        let sink_failing = Family::<Labels, Gauge>::default();
        registry.register(
            "sink_failing",
            "1 while a sink is failing, by sink",
            sink_failing.clone(),
        );
        let budget_rate = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "request_budget_rate",
            "Current request budget in requests per second (lowered by throttling)",
            budget_rate.clone(),
        );
        let recheck_interval = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "recheck_interval_effective_seconds",
            "The interval delivered watches are rechecked at: poll.recheck_interval, or longer when the request budget left after waiting jobs, first polls and fetches cannot carry that many rechecks",
            recheck_interval.clone(),
        );
        let poll_lateness = Family::<Labels, Histogram>::new_with_constructor(
            lateness_histogram as fn() -> Histogram,
        );
        // Every class starts at 0, so each has a series from the first scrape.
        for class in ["waiting", "first", "recheck"] {
            let _ = poll_lateness.get_or_create(&vec![("class", class.into())]);
        }
        registry.register(
            "poll_lateness_seconds",
            "How late each poll was launched against its due time, by class (waiting, first, recheck)",
            poll_lateness.clone(),
        );
        let polls_per_completion = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "polls_per_completion",
            "Answers a watch took from its first poll to its first completed version",
            polls_per_completion.clone(),
        );
        let budget_cuts = Counter::default();
        registry.register(
            "request_budget_cuts",
            "Times throttling halved the request budget",
            budget_cuts.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled",
            "429 answers (gateway errorCode 400/410/420) received",
            throttled.clone(),
        );
        let quota_paused = Gauge::default();
        registry.register(
            "quota_paused",
            "1 while polling is paused because the API said the account's quota is used up (gateway 429, errorCode 400)",
            quota_paused.clone(),
        );
        let auth_paused = Gauge::default();
        registry.register(
            "auth_paused",
            "1 while polling is paused because the API refused the credentials",
            auth_paused.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        // Every type starts at 0, so the first event of a type after a start is an increase
        // that rate() and increase() see (a series that appears at 1 shows none).
        for t in crate::events::EventType::ALL {
            let _ = events.get_or_create(&vec![("type", t.as_str().into())]);
        }
        registry.register("events", "Events emitted, by type", events.clone());
        let events_sent = Family::<Labels, Counter>::default();
        registry.register(
            "events_sent",
            "Events confirmed by an event sink, by sink and type",
            events_sent.clone(),
        );
        let ledger_commit = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "ledger_commit_seconds",
            "Time to commit one poll step to the state database",
            ledger_commit.clone(),
        );
        let pruned = Family::<Labels, Counter>::default();
        registry.register(
            "ledger_pruned_rows",
            "Rows retention (state.retention) deleted from the state database, by table (versions, deliveries, events, event_deliveries)",
            pruned.clone(),
        );
        // Exported from 0, so the first pruning after a start counts as an increase.
        for table in ["versions", "deliveries", "events", "event_deliveries"] {
            pruned
                .get_or_create(&vec![("table", table.into())])
                .inc_by(0);
        }
        let unrecognised = Family::<Labels, Counter>::default();
        registry.register(
            "unrecognised_answers",
            "Answers the client could not place and took as \"not ready\" (a result-call service error whose code is not in api.pending_codes), by call and code (at most 32 codes, then \"other\")",
            unrecognised.clone(),
        );
        // Replicas (`state.replicated`): 0 and never increased on a single daemon.
        let shards_owned = Gauge::default();
        registry.register(
            "shards_owned",
            "Shards of the shared PostgreSQL ledger this replica holds a lease on (of 256; 0 unless state.replicated)",
            shards_owned.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Live replicas sharing the ledger at this replica's last lease renewal, itself included (0 unless state.replicated)",
            replicas.clone(),
        );
        let lease_renewals = Counter::default();
        registry.register(
            "lease_renewals",
            "Shard leases this replica renewed",
            lease_renewals.clone(),
        );
        let lease_takeovers = Counter::default();
        registry.register(
            "lease_takeovers",
            "Shards this replica took over from a replica whose lease had expired (it died, was paused or cut off)",
            lease_takeovers.clone(),
        );
        let shards_lost = Counter::default();
        registry.register(
            "shards_lost",
            "Shards this replica lost without giving them up: its lease expired before it renewed it (paused, cut off from the database, or too slow)",
            shards_lost.clone(),
        );
        let lease_errors = Counter::default();
        registry.register(
            "lease_errors",
            "Lease renewals that failed to reach the PostgreSQL ledger",
            lease_errors.clone(),
        );
        Self {
            registry: root,
            polls,
            poll_latency,
            watches,
            completion,
            deliveries,
            delivery_latency,
            backlog,
            parked,
            sink_failing,
            budget_rate,
            recheck_interval,
            poll_lateness,
            polls_per_completion,
            budget_cuts,
            throttled,
            auth_paused,
            quota_paused,
            events,
            events_sent,
            ledger_commit,
            pruned,
            unrecognised,
            shards_owned,
            replicas,
            lease_renewals,
            lease_takeovers,
            shards_lost,
            lease_errors,
            unrecognised_codes: std::sync::Mutex::default(),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// One API answer.
    pub fn poll(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.polls
            .get_or_create(&vec![
                ("operation", operation.into()),
                ("outcome", outcome.into()),
            ])
            .inc();
        self.poll_latency
            .get_or_create(&vec![("operation", operation.into())])
            .observe(took.as_secs_f64());
        if outcome == "throttled" {
            self.throttled.inc();
        }
    }

    /// Watches per phase.
    pub fn set_phase(&self, phase: &str, n: u64) {
        self.watches
            .get_or_create(&vec![("phase", phase.to_string())])
            .set(n as i64);
    }

    /// A watch's result was fetched `waited` after its first poll.
    pub fn completed(&self, waited: Duration) {
        self.completion.observe(waited.as_secs_f64());
    }

    /// One delivery attempt.
    pub fn delivery(&self, sink: &str, outcome: &'static str, took: Option<Duration>) {
        self.deliveries
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("outcome", outcome.into()),
            ])
            .inc();
        if let Some(t) = took {
            self.delivery_latency
                .get_or_create(&vec![("sink", sink.to_string())])
                .observe(t.as_secs_f64());
        }
    }

    /// The backlog of a sink.
    pub fn set_backlog(&self, sink: &str, pending: u64, parked: u64) {
        self.backlog
            .get_or_create(&vec![("sink", sink.to_string())])
            .set(pending as i64);
        self.parked
            .get_or_create(&vec![("sink", sink.to_string())])
            .set(parked as i64);
    }

    /// Whether a sink is failing.
    pub fn set_sink_failing(&self, sink: &str, failing: bool) {
        self.sink_failing
            .get_or_create(&vec![("sink", sink.to_string())])
            .set(i64::from(failing));
    }

    /// The request budget's current rate.
    pub fn set_budget_rate(&self, rate: f64) {
        self.budget_rate.set(rate);
    }

    /// The interval delivered watches are rechecked at now.
    pub fn set_recheck_interval(&self, interval: std::time::Duration) {
        self.recheck_interval.set(interval.as_secs_f64());
    }

    /// A poll of `class` was launched `late` after its due time.
    pub fn poll_lateness(&self, class: &'static str, late: std::time::Duration) {
        self.poll_lateness
            .get_or_create(&vec![("class", class.into())])
            .observe(late.as_secs_f64());
    }

    /// A job completed after `polls` polls.
    pub fn polls_per_completion(&self, polls: u64) {
        self.polls_per_completion.observe(polls as f64);
    }

    /// Throttling halved the budget to `rate`.
    pub fn budget_cut(&self, rate: f64) {
        self.budget_cuts.inc();
        self.budget_rate.set(rate);
    }

    /// A lease renewal went through: the shards held after it, the live replicas, and what it
    /// renewed, took over and found lost.
    pub fn lease_tick(&self, owned: u32, replicas: u64, renewed: u64, taken_over: u64, lost: u64) {
        self.shards_owned.set(i64::from(owned));
        self.replicas
            .set(i64::try_from(replicas).unwrap_or(i64::MAX));
        self.lease_renewals.inc_by(renewed);
        self.lease_takeovers.inc_by(taken_over);
        self.shards_lost.inc_by(lost);
    }

    /// A lease renewal failed; `owned`: the shards the replica still polls.
    pub fn lease_error(&self, owned: u32) {
        self.lease_errors.inc();
        self.shards_owned.set(i64::from(owned));
    }

    /// Whether polling is paused on refused credentials.
    pub fn set_auth_paused(&self, paused: bool) {
        self.auth_paused.set(i64::from(paused));
    }

    /// Whether polling is paused on a used-up quota.
    pub fn set_quota_paused(&self, paused: bool) {
        self.quota_paused.set(i64::from(paused));
    }

    /// An event was emitted (committed to the outbox and logged).
    pub fn event(&self, event_type: &'static str) {
        self.events
            .get_or_create(&vec![("type", event_type.into())])
            .inc();
    }

    /// An event was confirmed by an event sink.
    pub fn event_sent(&self, sink: &str, event_type: &'static str) {
        self.events_sent
            .get_or_create(&vec![
                ("sink", sink.to_string()),
                ("type", event_type.into()),
            ])
            .inc();
    }

    /// An answer taken as "not ready" although its code is not a known one.
    pub fn unrecognised(&self, operation: &'static str, code: Option<&str>) {
        let label = code_label(code);
        let label = {
            let mut seen = self
                .unrecognised_codes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if seen.contains(&label) || seen.len() < MAX_CODE_LABELS {
                seen.insert(label.clone());
                label
            } else {
                "other".into()
            }
        };
        self.unrecognised
            .get_or_create(&vec![("call", operation.into()), ("code", label)])
            .inc();
    }

    /// Rows one retention batch deleted from `table`.
    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.pruned
            .get_or_create(&vec![("table", table.into())])
            .inc_by(rows);
    }

    /// One ledger commit.
    pub fn ledger_commit(&self, took: Duration) {
        self.ledger_commit.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..100 {
            m.unrecognised("result", Some(&format!("c{i}")));
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("scenewatch_unrecognised_answers_total{"))
            .count();
        assert_eq!(series, MAX_CODE_LABELS + 1, "{text}");
        assert!(text.contains("code=\"other\"} 68"), "{text}");
    }

    #[test]
    fn renders_openmetrics_with_bounded_labels() {
        let m = Metrics::new();
        m.poll("status", "ok", Duration::from_millis(12));
        m.poll("status", "throttled", Duration::from_millis(3));
        m.set_phase("waiting", 3);
        m.delivery("file", "ok", Some(Duration::from_millis(2)));
        m.set_backlog("file", 4, 1);
        m.event("com.scenewatch.summary.completed");
        m.unrecognised("result", Some("10042"));
        m.unrecognised("result", Some("<script>"));
        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let build = format!(
            "scenewatch_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("SCENEWATCH_COMMIT")
        );
        for needle in [
            "scenewatch_polls_total{operation=\"status\",outcome=\"ok\"} 1",
            "scenewatch_throttled_total 1",
            "scenewatch_watches{phase=\"waiting\"} 3",
            "scenewatch_deliveries_total{sink=\"file\",outcome=\"ok\"} 1",
            "scenewatch_sink_backlog{sink=\"file\"} 4",
            "scenewatch_events_total{type=\"com.scenewatch.summary.completed\"} 1",
            "# TYPE scenewatch_poll_duration_seconds histogram",
            "scenewatch_unrecognised_answers_total{call=\"result\",code=\"10042\"} 1",
            "scenewatch_unrecognised_answers_total{call=\"result\",code=\"invalid\"} 1",
            build.as_str(),
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
        // Process metrics: unprefixed, Linux only.
        let process = [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ];
        for name in process {
            let found = text.lines().any(|l| l.starts_with(name));
            assert_eq!(found, cfg!(target_os = "linux"), "{name}:\n{text}");
        }
    }
}
