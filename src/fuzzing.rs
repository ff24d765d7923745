//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a public API: hidden from the
//! documentation, and free to change). Each takes arbitrary bytes, drives one parser or writer
//! of the crate with them, and checks what must hold for every input, panicking when it does
//! not; the targets only call these. Every crash the fuzzer found is a regression test in the
//! normal suite (the `tests` module below), which calls the same functions.
//!
//! Inputs are split at NUL bytes into the parts a function needs (a header value, a body, a
//! file, environment lines), so the fuzzer's byte mutations reach every part.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{self, Sources};
use crate::domain::WatchKey;
use crate::events::{Event, EventType};
use crate::ncp::classify::{Answer, classify, parse_retry_after};
use crate::ncp::model::{decode_asset_page, decode_index_status, decode_result, decode_status};
use crate::ncp::{Operation, SummaryResult, Verdict};
use crate::sink::Delivery;

/// A fixed "now" for `Retry-After` dates: fuzzing must be deterministic.
fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600) // 2026-01-01T00:00:00Z
}

/// The first `n` NUL-separated parts of `data` (the last one takes the rest, NULs included).
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One HTTP answer of the Media Intelligence API: byte 0 picks the call, bytes 1–2 the status,
/// byte 3 the flags (gateway origin, a `Retry-After`, a trace id), then the `Retry-After` value
/// and the body, NUL-separated. It is classified as the client does, a successful `result` is
/// decoded with the call's model, and a result is turned into the envelope sinks write.
pub fn ncp_answer(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let ops = [
        Operation::Status,
        Operation::Result,
        Operation::Request,
        Operation::Cancel,
        Operation::IndexStatus,
        Operation::ListAssets,
    ];
    let op = ops[usize::from(data[0]) % ops.len()];
    let status = 100 + u16::from_le_bytes([data[1], data[2]]) % 500;
    let flags = data[3];
    let rest = parts(&data[4..], 2);
    let retry_after = text(rest[0]);
    let body = rest.get(1).copied().unwrap_or_default();
    let answer = Answer {
        http_status: status,
        retry_after: (flags & 1 != 0).then_some(retry_after.as_str()),
        trace_id: (flags & 2 != 0).then_some("trace-fuzz"),
        apigw_origin: flags & 4 != 0,
        body,
    };
    let pending = vec!["10100".to_string()];
    let verdict = classify(op, "/fuzz/path", &answer, &pending, fixed_now());
    // Any Retry-After the client can be handed parses without panicking; a number of seconds
    // is never read as something shorter than it says (saturating, not wrapping).
    if let Some(d) = parse_retry_after(&retry_after, fixed_now()) {
        let digits = retry_after.trim();
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse::<u64>()
        {
            assert_eq!(d, Duration::from_secs(n), "Retry-After {digits:?}");
        }
    }
    if let Some(e) = verdict.error() {
        // Every error names its call and renders (the log line and the event).
        assert_eq!(e.operation, op);
        let _ = e.to_string();
    }
    if let Verdict::Ok(success) = verdict {
        assert!((200..300).contains(&status), "Ok from HTTP {status}");
        if let Some(result) = success.result {
            decode(op, result);
        }
    }
}

/// Decodes a successful `result` with the model of its call.
fn decode(op: Operation, result: &RawValue) {
    match op {
        Operation::Status => {
            let _ = decode_status(result);
        }
        Operation::IndexStatus => {
            let _ = decode_index_status(result);
        }
        Operation::ListAssets => {
            if let Ok(page) = decode_asset_page(result) {
                let _ = page.asset_ids.len();
            }
        }
        Operation::Result => {
            if let Ok(r) = decode_result(result) {
                // What the ledger stores is read back the same.
                let again = SummaryResult::from_result_json(r.raw.get())
                    .expect("a decoded result decodes again from its stored text");
                assert_eq!(again.scenes.len(), r.scenes.len());
                let _ = r.stale_scenes();
                envelope_of(r);
            }
        }
        Operation::Request | Operation::Cancel => {}
    }
}

/// The envelope of a result, pretty and compact: both are JSON, the compact one is one line, and
/// both carry the API's `result` unchanged: byte for byte in the pretty one, with only the
/// whitespace between tokens taken out in the compact one. Compared as text, not as parsed
/// values: JSON puts no limit on numbers, and a result may hold one no `f64` can (`3e0900`,
/// found by the fuzzer), which the sinks must carry as the API sent it.
fn envelope_of(result: SummaryResult) {
    #[derive(serde::Deserialize)]
    struct Carried<'a> {
        #[serde(borrow)]
        result: &'a RawValue,
    }
    let index = result
        .index_id
        .map_or_else(|| "3".to_string(), |i| i.to_string());
    let Ok(key) = WatchKey::new("ws", "1", "2", index) else {
        return;
    };
    let raw = result.raw.get().to_string();
    let Some(d) = Delivery::new(key, Arc::new(result), fixed_now()) else {
        return;
    };
    for compact in [false, true] {
        let Ok(bytes) = d.body("file", "fuzz", compact) else {
            continue;
        };
        if compact {
            assert!(!bytes.contains(&b'\n'), "a compact envelope is one line");
        }
        let carried: Carried<'_> = serde_json::from_slice(&bytes).expect("an envelope is JSON");
        let want = if compact && raw.contains(['\n', '\r']) {
            without_whitespace(&raw)
        } else {
            raw.clone()
        };
        assert_eq!(
            carried.result.get(),
            want,
            "the result is carried unchanged"
        );
    }
}

/// JSON text without the whitespace between tokens (strings kept as they are). Deliberately not
/// `sink::minify_json`, which the envelope writer uses: the check needs a reference written
/// apart from the code it checks, or it would only prove that the code agrees with itself.
fn without_whitespace(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// The configuration loader: a TOML file (the part before the first NUL) and environment
/// variables (each later line `NAME=value`; `SCENEWATCH__` is added when missing). Nothing may
/// panic, and no problem may quote the secret key given in the environment. Inputs that would
/// make the loader read other files (the `…_file` keys, `watch_dir`, and backslashes, since a
/// quoted TOML key can spell those with escapes) are skipped: the fuzzer must not read the
/// machine's files (`/dev/zero`, say).
pub fn config_sources(data: &[u8]) {
    const SECRET: &str = "FUZZ-SECRET-8e1f2a";
    let lowered = data.to_ascii_lowercase();
    let mentions = |needle: &[u8]| lowered.windows(needle.len()).any(|w| w == needle);
    if mentions(b"file") || mentions(b"watch_dir") || lowered.contains(&b'\\') {
        return;
    }
    let p = parts(data, 2);
    let file = text(p[0]);
    let mut env = HashMap::new();
    env.insert(
        "SCENEWATCH__API__SECRET_KEY".to_string(),
        SECRET.to_string(),
    );
    if let Some(lines) = p.get(1) {
        for line in text(lines).lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = if k.starts_with("SCENEWATCH__") {
                    k.to_string()
                } else {
                    format!("SCENEWATCH__{k}")
                };
                if k != "SCENEWATCH__API__SECRET_KEY" {
                    env.insert(k, v.to_string());
                }
            }
        }
    }
    let sources = Sources {
        file: None,
        inline: Some(("fuzz.toml".into(), file)),
        env: Some(env),
        credentials_directory: None,
    };
    match config::load(&sources) {
        Ok(c) => {
            let shown = format!("{c:?}");
            assert!(
                !shown.contains(SECRET),
                "Debug of a config shows the secret"
            );
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                !shown.contains(SECRET),
                "a problem quotes the secret: {shown}"
            );
        }
    }
}

/// The simulator's scenario parser: a scenario file is parsed and validated, and a valid one
/// has its assets expanded (bounded by the validation's limits).
pub fn sim_scenario(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scenario) = scenewatch_sim::Scenario::from_toml_str(s) {
        for asset in scenario.expanded_assets().take(10_000) {
            let _ = asset;
        }
    }
}

/// The event envelope writer: an event built from the input (its type, watch ids, time, and a
/// JSON `data`) encodes to CloudEvents that decode back to the same event (for times inside
/// 1970..9999, which RFC 3339 can write), and the compact bytes are the same document.
pub fn envelope(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let kind = EventType::ALL[usize::from(data[0]) % EventType::ALL.len()];
    let time_ms = u64::from_le_bytes([
        data[1], data[2], data[3], data[4], data[5], data[6], data[7], data[8],
    ]);
    let p = parts(&data[9..], 6);
    let s = |i: usize| p.get(i).map(|b| text(b)).unwrap_or_default();
    let payload: Value = p
        .get(5)
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    let event = match WatchKey::new(s(0), s(1), s(2), s(3)) {
        Ok(key) => match kind {
            EventType::Waiting => Event::waiting(&key, &s(4), &s(4), time_ms),
            EventType::Completed => Event::completed(&key, &s(4), &s(4), time_ms, None, time_ms),
            EventType::Delivered => Event::delivered(&key, &s(4), &s(4), &s(4), time_ms),
            EventType::Updated => Event::updated(&key, &s(4), &s(4), &s(4), None, time_ms),
            EventType::Stale => Event::stale(&key, &s(4), &[time_ms], time_ms),
            EventType::Rejected => Event::rejected(
                &key,
                &s(4),
                Some(data[1].into()),
                Some(&s(4)),
                None,
                &s(4),
                time_ms,
            ),
            EventType::Superseded => Event::superseded(&key, &s(4), data[2] & 1 == 1, time_ms),
            EventType::Discovered => Event::discovered(&key, &s(4), time_ms),
            EventType::SinkFailing => Event::sink_failing(&s(4), time_ms, &s(0), time_ms),
            EventType::SinkRecovered => Event::sink_recovered(&s(4), time_ms, time_ms),
            ended => Event::ended(&key, ended, &s(4), payload.clone(), time_ms),
        },
        Err(_) => Event::sink_failing(&s(4), time_ms, &s(0), time_ms),
    };
    let doc = event.to_cloudevent();
    let bytes = event.to_cloudevent_bytes();
    let parsed: Value = serde_json::from_slice(&bytes).expect("the compact CloudEvent is JSON");
    assert_eq!(parsed, doc, "the compact bytes are the same document");
    // 9999-12-31T23:59:59.999Z, the last time RFC 3339 can write.
    if time_ms <= 253_402_300_799_999 {
        let back = Event::from_cloudevent(&doc).expect("an event decodes back");
        assert_eq!(back, event);
    }
}

#[cfg(test)]
mod tests {
    //! Regression tests: inputs the fuzzer found (see docs/benchmarks.md, "Fuzzing"), and one
    //! plain input per target so each entry point runs in `cargo test`.

    use super::*;

    #[test]
    fn each_entry_point_runs_on_a_plain_input() {
        let mut answer = vec![1, 200, 0, 0, 0];
        answer.extend_from_slice(
            br#"{"code":"0","result":{"indexId":"3","sceneSummaryInfo":{"lastAnalyzedAt":"2026-01-01T00:00:00Z"},"sceneSummaries":[{"scene":1}]}}"#,
        );
        ncp_answer(&answer);
        config_sources(
            b"[api]\naccess_key = \"AK\"\n[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n\0POLL__MAX_WAIT=12h\n",
        );
        sim_scenario(b"seed = 1\n");
        let mut ev = vec![0u8; 9];
        ev.extend_from_slice(b"ws\x001\x002\x003\x00summarizing\x00{}");
        envelope(&ev);
    }

    /// Found by the fuzzer (`ncp_answer`, 1.3 million runs in): a result holding a number no
    /// `f64` can hold (`3e0900`) is valid JSON and is carried byte for byte; the first harness
    /// compared parsed values and failed on it. The fuzzer's input and a minimal one.
    #[test]
    fn a_result_with_a_number_beyond_f64_is_carried_byte_for_byte() {
        ncp_answer(include_bytes!(
            "../fuzz/regressions/ncp_answer/number-out-of-f64-range"
        ));
        let mut answer = vec![1, 100, 0, 0, 0];
        answer.extend_from_slice(
            b"{\"code\":\"0\",\"result\":{\"x\": 3e0900,\n\"sceneSummaryInfo\":{\"lastAnalyzedAt\":\"2026-01-01T00:00:00Z\"},\"sceneSummaries\":[{\"scene\":1}]}}",
        );
        ncp_answer(&answer);
    }
    /// Found by the fuzzer (`envelope`, in CI): a payload holding a float that needs all 17
    /// digits (`27777777777775553555554` as JSON, an integer too long for `u64`) printed in the
    /// CloudEvent and read back as a different `f64`. serde_json's fast float parser is not
    /// correctly rounded; the `float_roundtrip` feature makes print-then-parse exact, so a result
    /// value written to a sink reads back as the value received.
    #[test]
    fn a_payload_float_reads_back_as_the_same_number() {
        envelope(include_bytes!("../fuzz/regressions/envelope/float-payload"));
        envelope(include_bytes!(
            "../fuzz/regressions/envelope/long-integer-payload"
        ));
        for text in [
            "27777777777775553555554",
            "8888888e120",
            "0.30000000000000004",
            "1e-320",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let back: Value = serde_json::from_str(&v.to_string()).unwrap();
            assert_eq!(back, v, "{text} printed as {v} and read back as {back}");
        }
    }
}
