//! The stdout sink: one compact JSON line per result version (the envelope) or per event (the
//! CloudEvent), for piping into `jq`, a log shipper or another process.
//!
//! Its configuration is at the end of this file: [`RawStdoutSink`] (the table as written), [`StdoutSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::io::Write;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Delivery, Disposition, EventSink, Receipt, Sink, SinkError};
use crate::events::Event;

/// Writes JSON lines to the process's standard output.
#[derive(Debug)]
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    /// A sink named after `config`.
    pub fn new(config: &StdoutSinkConfig) -> Self {
        Self {
            name: config.name.clone(),
        }
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            kind: "stdout",
            name: self.name.clone(),
            message,
            // A closed or full pipe may be a reader restarting; the outbox keeps the lines.
            disposition: Disposition::Retry,
            source: None,
        }
    }

    /// Writes `lines` under one stdout lock, so no other writer in the process can put a line
    /// between them or inside one, then flushes. Blocking, so it runs off the async threads: a
    /// slow reader of the pipe must not stall the runtime.
    async fn write_lines(&self, lines: Vec<Vec<u8>>) -> Result<(), SinkError> {
        tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            render_lines(&mut out, &lines)
        })
        .await
        .map_err(|e| self.error(format!("writer task failed: {e}")))?
        .map_err(|e| self.error(format!("cannot write to standard output: {e}")))
    }
}

/// Writes each line followed by `\n`, then flushes. Lines must not contain a newline; the
/// encoders used here (compact serde_json) never produce one.
pub fn render_lines<W: Write>(out: &mut W, lines: &[Vec<u8>]) -> std::io::Result<()> {
    for line in lines {
        out.write_all(line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The line of an event: its compact CloudEvent.
pub fn event_line(e: &Event) -> Vec<u8> {
    e.to_cloudevent_bytes()
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn targets(&self, _d: &Delivery) -> Vec<String> {
        vec!["standard output (one line)".into()]
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let line = d.body("stdout", &self.name, true)?;
            self.write_lines(vec![line]).await?;
            Ok(Receipt {
                location: "stdout".into(),
            })
        })
    }
}

impl EventSink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            self.write_lines(events.iter().map(event_line).collect())
                .await
        })
    }
}

/// A delivery of `raw` (the API's `result`) for watch `ws/1234/5678/1001`, fetched at
/// 2026-04-17T10:30:00.123Z; shared by the sink tests.
#[cfg(test)]
pub(crate) fn test_delivery(raw: &str) -> Delivery {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use crate::domain::WatchKey;
    use crate::ncp::{SceneSummaryInfo, SummaryResult};

    let key = WatchKey::new("ws", "1234", "5678", "1001").unwrap();
    let result = SummaryResult {
        raw: serde_json::value::RawValue::from_string(raw.to_string()).unwrap(),
        index_id: Some(1001),
        info: Some(SceneSummaryInfo {
            last_analyzed_at: "2026-04-17T10:30:00".into(),
            analyzed_scene_ids: None,
        }),
        scene_count: 0,
        stale: Vec::new(),
    };
    Delivery::new(
        key,
        Arc::new(result),
        UNIX_EPOCH + Duration::from_millis(1_776_421_800_123),
    )
    .unwrap()
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

/// `type = "stdout"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStdoutSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
}

/// `type = "stdout"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StdoutSinkConfig {
    /// Name in logs.
    pub name: String,
}

/// `type = "stdout"`, validated: only the name, `default_name` when none is given.
pub(crate) fn validate(raw: &RawStdoutSink, default_name: &str) -> StdoutSinkConfig {
    StdoutSinkConfig {
        name: raw.name.clone().unwrap_or_else(|| default_name.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn result_line_is_one_compact_line_with_the_result_unchanged() {
        // A pretty-printed API answer, with whitespace and an escaped newline inside a string.
        let raw = "{\n  \"text\": \"a  b\\nc\",\n  \"n\": 1.50\n}";
        let d = test_delivery(raw);
        let line = d.envelope_json_compact().unwrap();
        assert!(!line.contains(&b'\n'));
        let text = String::from_utf8(line.clone()).unwrap();
        // Number formatting and string contents are byte for byte the API's.
        assert!(
            text.contains(r#""result":{"text":"a  b\nc","n":1.50}"#),
            "{text}"
        );
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["version"], d.version_id.as_str());
        assert_eq!(
            v["source"],
            "/workspaces/ws/projects/1234/assets/5678/indexes/1001"
        );
        assert_eq!(v["fetchedAt"], "2026-04-17T10:30:00.123Z");
        // Same document as the pretty envelope the file sink writes.
        let pretty: Value = serde_json::from_slice(&d.envelope_json().unwrap()).unwrap();
        assert_eq!(v, pretty);
    }

    #[test]
    fn lines_render_with_newlines_in_order() {
        let k = test_delivery("{}").key;
        let events = [
            Event::waiting(&k, "SUMMARIZING", "", 1),
            Event::sink_recovered("s", 1, 2),
        ];
        let lines: Vec<_> = events.iter().map(event_line).collect();
        let mut out = Vec::new();
        render_lines(&mut out, &lines).unwrap();
        let text = String::from_utf8(out).unwrap();
        let parsed: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(text.ends_with('\n'));
        assert_eq!(parsed.len(), 2);
        for (p, e) in parsed.iter().zip(&events) {
            assert_eq!(Event::from_cloudevent(p).as_ref(), Some(e));
        }
    }

    #[tokio::test]
    async fn an_empty_batch_writes_nothing() {
        // Deliveries are not run here: the test harness does not capture the blocking pool's
        // stdout, and `render_lines` above covers the bytes.
        let sink = StdoutSink::new(&StdoutSinkConfig { name: "out".into() });
        EventSink::send(&sink, &[]).await.unwrap();
        assert_eq!(EventSink::name(&sink), "out");
    }

    proptest::proptest! {
        /// The compact envelope is one line and carries the same `result` as the API sent,
        /// whatever its strings hold (quotes, backslashes, escaped newlines, non-ASCII).
        #[test]
        fn compact_envelope_is_one_line_with_the_same_result(
            text in "\\PC*",
            n in proptest::num::i64::ANY,
        ) {
            let value =
                serde_json::json!({"text": text, "list": [n, {"again": text}], "empty": {}});
            let raw = serde_json::to_string_pretty(&value).unwrap();
            let line = test_delivery(&raw).envelope_json_compact().unwrap();
            proptest::prop_assert!(!line.contains(&b'\n'));
            let back: Value = serde_json::from_slice(&line).unwrap();
            proptest::prop_assert_eq!(&back["result"], &value);
        }
    }
}
