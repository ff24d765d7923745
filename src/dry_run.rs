//! `once --dry-run`: the sinks and event sinks of the configuration stand-ins that write
//! nothing. Each result sink is built as configured (which does no IO) but never called: its
//! [`Sink::targets`] says where a delivery would have gone, and the [`Plan`] keeps that with a
//! short summary of the payload. Event sinks only count what they would have received. `once`
//! already keeps its ledger in memory, so a dry run writes no file at all; healthchecks are not
//! run either, since some of them write (the file sink's probe).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use crate::events::Event;
use crate::sink::{Delivery, EventSink, Receipt, Sink, SinkError};

/// What a dry run would have written, in the order it happened.
#[derive(Debug, Default)]
pub struct Plan {
    deliveries: Mutex<Vec<String>>,
    events: Mutex<EventCounts>,
}

/// Per event sink (name, kind): event type → count.
type EventCounts = BTreeMap<(String, &'static str), BTreeMap<&'static str, usize>>;

impl Plan {
    /// The plan as printed at the end of the run.
    pub fn render(&self) -> String {
        let deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::from(
            "Dry run: nothing was written (no sink, no event sink, no ledger file).\n",
        );
        if deliveries.is_empty() {
            s.push_str("No result version would have been delivered.\n");
        }
        for d in deliveries.iter() {
            s.push_str(d);
        }
        for ((name, kind), counts) in events.iter() {
            let total: usize = counts.values().sum();
            let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
            let _ = writeln!(
                s,
                "event sink `{name}` ({kind}) would have received {total} event(s): {}",
                parts.join(", ")
            );
        }
        s
    }
}

/// A result sink that records where it would write.
pub struct DryRunSink {
    inner: Arc<dyn Sink>,
    kind: &'static str,
    plan: Arc<Plan>,
}

impl DryRunSink {
    /// Stands in for `inner`, a sink of `kind`.
    pub fn new(inner: Arc<dyn Sink>, kind: &'static str, plan: Arc<Plan>) -> Self {
        Self { inner, kind, plan }
    }
}

impl Sink for DryRunSink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let targets = self.inner.targets(d);
            let bytes = d.envelope_json_compact().map_or_else(
                |e| format!("not encodable: {e}"),
                |b| format!("{} bytes", b.len()),
            );
            let mut line = format!(
                "sink `{}` ({}) would write {} version {} (lastAnalyzedAt {}, {} scenes, envelope {bytes}) to:\n",
                self.inner.name(),
                self.kind,
                d.key,
                d.version_id,
                crate::status::escape_controls(&d.last_analyzed_at),
                d.result.scene_count,
            );
            for t in &targets {
                let _ = writeln!(line, "  {t}");
            }
            self.plan
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
            Ok(Receipt {
                location: format!(
                    "(dry run) {}",
                    targets.first().map_or("nowhere", String::as_str)
                ),
            })
        })
    }
}

/// An event sink that counts what it would have sent.
pub struct DryRunEventSink {
    name: String,
    kind: &'static str,
    plan: Arc<Plan>,
}

impl DryRunEventSink {
    /// Stands in for the event sink `name` of `kind`.
    pub fn new(name: String, kind: &'static str, plan: Arc<Plan>) -> Self {
        // Listed even if it would receive nothing.
        plan.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name.clone(), kind))
            .or_default();
        Self { name, kind, plan }
    }
}

impl EventSink for DryRunEventSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut all = self.plan.events.lock().unwrap_or_else(|e| e.into_inner());
            let counts = all.entry((self.name.clone(), self.kind)).or_default();
            for e in events {
                *counts.entry(e.kind.as_str()).or_default() += 1;
            }
            Ok(())
        })
    }
}
