//! The closed sets of result sinks (`[[sink]]`) and event sinks (`[[event_sink]]`) as the
//! configuration names them, tagged by `type`: the raw enums the file is read into, the validated
//! enums the sinks are built from ([`super::build`], [`super::build_event_sink`]), and the pass
//! over both lists that runs each kind's `validate` (in that kind's file) and keeps names unique.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::file::{self, FileSinkConfig, RawFileSink};
use super::jsonl::{self, JsonlSinkConfig, RawJsonlSink};
#[cfg(feature = "nats")]
use super::nats::{self, NatsEventSinkConfig, RawNatsEventSink};
#[cfg(feature = "postgres")]
use super::postgres::{self, PostgresSinkConfig, RawPostgresSink};
#[cfg(feature = "s3")]
use super::s3::{self, RawS3Sink, S3SinkConfig};
use super::stdout::{self, RawStdoutSink, StdoutSinkConfig};
use super::webhook::{self, RawWebhookSink, WebhookSinkConfig};
use crate::config::{Origins, Problem};

/// One `[[sink]]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawSink {
    /// One JSON document per index, written atomically.
    File(RawFileSink),
    /// One JSON line per version on standard output.
    Stdout(RawStdoutSink),
    /// One JSON line per version appended to a file, rotated by size.
    Jsonl(RawJsonlSink),
    /// A signed POST per version.
    Webhook(RawWebhookSink),
    /// Rows in PostgreSQL: one per version, one per scene.
    #[cfg(feature = "postgres")]
    Postgres(RawPostgresSink),
    /// Objects in S3-compatible storage: one per version plus `latest.json`.
    #[cfg(feature = "s3")]
    S3(RawS3Sink),
}

impl RawSink {
    /// The `type` names the walker knows, for error messages: every kind, also those whose
    /// cargo feature this build leaves out (the walker refuses those with [`compiled_out`]).
    pub const TYPES: &'static [&'static str] =
        &["file", "stdout", "jsonl", "webhook", "postgres", "s3"];
}

/// One `[[event_sink]]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawEventSink {
    /// One CloudEvent JSON line per event on standard output.
    Stdout(RawStdoutSink),
    /// One CloudEvent JSON line per event appended to a file, rotated by size.
    Jsonl(RawJsonlSink),
    /// A signed POST per event.
    Webhook(RawWebhookSink),
    /// A JetStream publish per event.
    #[cfg(feature = "nats")]
    Nats(RawNatsEventSink),
}

impl RawEventSink {
    /// The `type` names the walker knows, for error messages (as [`RawSink::TYPES`]).
    pub const TYPES: &'static [&'static str] = &["stdout", "jsonl", "webhook", "nats"];
}

/// The sink kinds that are cargo features of their own, as `(type, cargo feature, list)`
/// where the list is `sink` or `event_sink`; Cargo.toml's `[features]` has the same names.
pub const FEATURE_SINKS: &[(&str, &str, &str)] = &[
    ("postgres", "postgres", "sink"),
    ("s3", "s3", "sink"),
    ("nats", "nats", "event_sink"),
];

/// The name a sink of type `kind` in `list` gets when the configuration gives none: the type
/// for a `[[sink]]`, `{type}-events` for an `[[event_sink]]` (as each kind's `validate` does).
pub fn default_name(list: &str, kind: &str) -> String {
    if list == "event_sink" {
        format!("{kind}-events")
    } else {
        kind.to_string()
    }
}

/// What `check` and `run` say of a `[[sink]]` or `[[event_sink]]` (`list`) of type `kind`,
/// named `name`, whose cargo feature `feature` this build was compiled without: the sink, the
/// feature, and how to get a build that has it. The configuration is refused rather than run
/// without a sink it names.
pub fn compiled_out(list: &str, kind: &str, name: &str, feature: &str) -> String {
    let what = if list == "event_sink" {
        "event sink"
    } else {
        "sink"
    };
    format!(
        "the {kind} {what} {name:?} is not in this build: scenewatch was compiled without the \
         cargo feature {feature:?}; rebuild with `--features {feature}` (`--features full`: \
         every sink), see the README, \"Cargo features\""
    )
}

/// A result sink, validated.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// The file sink.
    File(FileSinkConfig),
    /// JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// JSON lines appended to a file.
    Jsonl(JsonlSinkConfig),
    /// Signed POSTs.
    Webhook(WebhookSinkConfig),
    /// PostgreSQL rows.
    #[cfg(feature = "postgres")]
    Postgres(PostgresSinkConfig),
    /// S3-compatible objects.
    #[cfg(feature = "s3")]
    S3(S3SinkConfig),
}

impl SinkConfig {
    /// The sink's name in logs, metrics and the ledger.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File(f) => &f.name,
            SinkConfig::Stdout(s) => &s.name,
            SinkConfig::Jsonl(j) => &j.name,
            SinkConfig::Webhook(w) => &w.name,
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(p) => &p.name,
            #[cfg(feature = "s3")]
            SinkConfig::S3(o) => &o.name,
        }
    }
}

/// An event sink, validated.
#[derive(Debug, Clone)]
pub enum EventSinkConfig {
    /// CloudEvents as JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// CloudEvents as JSON lines appended to a file.
    Jsonl(JsonlSinkConfig),
    /// Signed POSTs of CloudEvents.
    Webhook(WebhookSinkConfig),
    /// JetStream publishes.
    #[cfg(feature = "nats")]
    Nats(NatsEventSinkConfig),
}

impl EventSinkConfig {
    /// The sink's name in logs, metrics and the ledger.
    pub fn name(&self) -> &str {
        match self {
            EventSinkConfig::Stdout(s) => &s.name,
            EventSinkConfig::Jsonl(j) => &j.name,
            EventSinkConfig::Webhook(w) => &w.name,
            #[cfg(feature = "nats")]
            EventSinkConfig::Nats(n) => &n.name,
        }
    }
}

/// Validates every `[[sink]]` and `[[event_sink]]` in file order, pushing every problem; names
/// must be unique across both lists. Without any `[[sink]]`, results go to a file sink in
/// `{state_dir}/results`.
pub(crate) fn validate(
    origins: &Origins,
    p: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
    state_dir: &Path,
    raw_sinks: &[RawSink],
    raw_event_sinks: &[RawEventSink],
) -> (Vec<SinkConfig>, Vec<EventSinkConfig>) {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut sinks = Vec::new();
    for (i, s) in raw_sinks.iter().enumerate() {
        let base = format!("sink[{i}]");
        let sink = match s {
            RawSink::File(f) => Some(SinkConfig::File(file::validate(f, state_dir))),
            RawSink::Stdout(s) => Some(SinkConfig::Stdout(stdout::validate(s, "stdout"))),
            RawSink::Jsonl(j) => {
                jsonl::validate(origins, p, &base, j, "jsonl").map(SinkConfig::Jsonl)
            }
            RawSink::Webhook(w) => webhook::validate(origins, p, warnings, &base, w, "webhook")
                .map(SinkConfig::Webhook),
            #[cfg(feature = "postgres")]
            RawSink::Postgres(c) => {
                postgres::validate(origins, p, &base, c).map(SinkConfig::Postgres)
            }
            #[cfg(feature = "s3")]
            RawSink::S3(c) => s3::validate(origins, p, &base, c).map(SinkConfig::S3),
        };
        if let Some(sink) = sink {
            unique_name(origins, p, &mut names, &base, sink.name());
            sinks.push(sink);
        }
    }
    if sinks.is_empty() {
        sinks.push(SinkConfig::File(file::validate(
            &RawFileSink::default(),
            state_dir,
        )));
    }
    let mut event_sinks = Vec::new();
    for (i, s) in raw_event_sinks.iter().enumerate() {
        let base = format!("event_sink[{i}]");
        // Event sinks default to "{type}-events", so a result sink and an event sink of the
        // same type need no names to be told apart.
        let sink = match s {
            RawEventSink::Stdout(s) => Some(EventSinkConfig::Stdout(stdout::validate(
                s,
                "stdout-events",
            ))),
            RawEventSink::Jsonl(j) => {
                jsonl::validate(origins, p, &base, j, "jsonl-events").map(EventSinkConfig::Jsonl)
            }
            RawEventSink::Webhook(w) => {
                webhook::validate(origins, p, warnings, &base, w, "webhook-events")
                    .map(EventSinkConfig::Webhook)
            }
            #[cfg(feature = "nats")]
            RawEventSink::Nats(n) => {
                nats::validate(origins, p, &base, n).map(EventSinkConfig::Nats)
            }
        };
        if let Some(sink) = sink {
            unique_name(origins, p, &mut names, &base, sink.name());
            event_sinks.push(sink);
        }
    }
    (sinks, event_sinks)
}

fn unique_name(
    origins: &Origins,
    p: &mut Vec<Problem>,
    names: &mut HashMap<String, String>,
    base: &str,
    name: &str,
) {
    if let Some(first) = names.insert(name.to_string(), base.to_string()) {
        p.push(origins.problem(
            &format!("{base}.name"),
            format!("{name:?} is already the name of {first}; give each sink its own name"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{Origins, load};

    use super::*;

    fn sources(toml: &str) -> crate::config::Sources {
        crate::config::Sources {
            inline: Some(("test.toml".into(), toml.into())),
            env: Some(
                [
                    ("SCENEWATCH__API__ACCESS_KEY", "AK"),
                    ("SCENEWATCH__API__SECRET_KEY", "SK"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn names_default_by_kind_and_list_and_a_file_sink_is_added() {
        let c = load(&sources(
            "state_dir = \"/s\"\n[[event_sink]]\ntype = \"stdout\"\n[[event_sink]]\ntype = \"jsonl\"\npath = \"/e\"\n",
        ))
        .expect("valid");
        assert_eq!(c.sinks.len(), 1);
        let SinkConfig::File(f) = &c.sinks[0] else {
            panic!("{:?}", c.sinks[0]);
        };
        assert_eq!(
            (f.name.as_str(), &f.dir),
            ("file", &PathBuf::from("/s/results"))
        );
        let names: Vec<_> = c.event_sinks.iter().map(EventSinkConfig::name).collect();
        assert_eq!(names, ["stdout-events", "jsonl-events"]);
    }

    /// The problems `load` finds in `toml`, as `check` prints them.
    #[cfg(not(all(feature = "postgres", feature = "s3", feature = "nats")))]
    fn problems(toml: &str) -> Vec<String> {
        match load(&sources(toml)) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_message_for_a_compiled_out_sink_names_it_its_type_and_the_feature() {
        let m = compiled_out("sink", "postgres", "archive", "postgres");
        assert_eq!(
            m,
            "the postgres sink \"archive\" is not in this build: scenewatch was compiled \
             without the cargo feature \"postgres\"; rebuild with `--features postgres` \
             (`--features full`: every sink), see the README, \"Cargo features\""
        );
        let m = compiled_out(
            "event_sink",
            "nats",
            &default_name("event_sink", "nats"),
            "nats",
        );
        assert!(
            m.starts_with("the nats event sink \"nats-events\" is not in this build"),
            "{m}"
        );
        // Each feature sink's default name is what its own validation gives it.
        assert_eq!(default_name("sink", "s3"), "s3");
        assert_eq!(
            FEATURE_SINKS.iter().map(|f| f.0).collect::<Vec<_>>(),
            ["postgres", "s3", "nats"]
        );
    }

    #[test]
    #[cfg(not(feature = "postgres"))]
    fn a_postgres_sink_without_the_postgres_feature_is_refused_naming_it_and_the_feature() {
        let p = problems(
            "[[sink]]\ntype = \"file\"\ndir = \"/r\"\n[[sink]]\nname = \"archive\"\ntype = \"postgres\"\n\
             url = \"postgres://app:pg-pass-77@db/media\"\n",
        );
        assert_eq!(
            p,
            [format!(
                "sink[1].type: {} (in test.toml:6:1)",
                compiled_out("sink", "postgres", "archive", "postgres")
            )]
        );
        assert!(!p[0].contains("pg-pass-77"), "{p:?}");
    }

    #[test]
    #[cfg(not(feature = "s3"))]
    fn an_s3_sink_without_the_s3_feature_is_refused_with_its_default_name() {
        let p = problems("[[sink]]\ntype = \"s3\"\nbucket = \"b\"\n");
        assert_eq!(
            p,
            [format!(
                "sink[0].type: {} (in test.toml:2:1)",
                compiled_out("sink", "s3", "s3", "s3")
            )]
        );
    }

    #[test]
    #[cfg(not(feature = "nats"))]
    fn a_nats_event_sink_without_the_nats_feature_is_refused_naming_it_and_the_feature() {
        let p = problems(
            "[[event_sink]]\ntype = \"nats\"\nname = \"bus\"\nurl = \"nats://127.0.0.1:4222\"\n",
        );
        assert_eq!(
            p,
            [format!(
                "event_sink[0].type: {} (in test.toml:2:1)",
                compiled_out("event_sink", "nats", "bus", "nats")
            )]
        );
    }

    #[test]
    fn every_problem_of_every_sink_with_unique_names_across_both_lists() {
        let raw_sinks = vec![
            RawSink::Stdout(RawStdoutSink::default()),
            RawSink::Jsonl(RawJsonlSink {
                max_bytes: 1,
                ..RawJsonlSink::default()
            }),
        ];
        let raw_events = vec![RawEventSink::Stdout(RawStdoutSink {
            name: Some("stdout".into()),
        })];
        let (mut p, mut warnings) = (Vec::new(), Vec::new());
        let (sinks, events) = validate(
            &Origins::default(),
            &mut p,
            &mut warnings,
            Path::new("/s"),
            &raw_sinks,
            &raw_events,
        );
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            text,
            [
                "sink[1].path: missing; the file to append to (built-in default)",
                "sink[1].max_bytes: must be at least 4096 (built-in default)",
                "event_sink[0].name: \"stdout\" is already the name of sink[0]; give each sink its own name (built-in default)",
            ]
        );
        assert_eq!((sinks.len(), events.len()), (1, 1));
    }
}
