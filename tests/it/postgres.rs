//! The PostgreSQL sink against a real server on loopback (`SCENEWATCH_TEST_PG`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`): what a delivery stores, idempotence, a server
//! going away mid-run, migrations, TLS modes, error messages, and the example queries of
//! docs/sinks.md run as written there. Each test works in its own schema and drops it.
//!
//! Without `SCENEWATCH_TEST_PG` every test that needs the server is compiled ignored (build.rs
//! turns `cfg(sw_test_pg)` on when it is set), so `cargo test` counts and names it as ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::Url;
use scenewatch::config::PostgresSinkConfig;
use scenewatch::domain::WatchKey;
use scenewatch::ncp::SummaryResult;
use scenewatch::sink::postgres::{PostgresSink, parse_url};
use scenewatch::sink::{Delivery, Disposition, Sink, SinkError};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const ENV: &str = "SCENEWATCH_TEST_PG";

/// The server's URL. Without `SCENEWATCH_TEST_PG` these tests are compiled `#[ignore]` (see
/// build.rs), so reaching here without it means the test was asked for by name
/// (`--include-ignored`): a failure that says what is missing, not a silent pass.
fn server(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_string()),
        _ => panic!(
            "{test} needs {ENV} (a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
        ),
    }
}

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// A fresh schema name, unique across tests and concurrent test processes.
fn fresh_schema() -> String {
    format!(
        "sw_test_{}_{}",
        std::process::id(),
        SCHEMAS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A sink configuration as `validate` would produce it: the password moved out of the URL.
fn config(url: &str, schema: &str) -> PostgresSinkConfig {
    let mut u = Url::parse(url).expect("SCENEWATCH_TEST_PG is a URL");
    let password = u.password().map(|p| SecretString::from(p.to_string()));
    let _ = u.set_password(None);
    PostgresSinkConfig {
        name: "pg".into(),
        url: u.to_string(),
        password,
        schema: schema.into(),
        pool_size: 2,
        timeout: Duration::from_secs(10),
        ca_file: None,
    }
}

fn sink(c: &PostgresSinkConfig) -> Arc<PostgresSink> {
    Arc::new(PostgresSink::new(c).expect("sink builds"))
}

/// A direct connection for checking what the sink wrote, and the test's schema, dropped (with
/// everything in it) when the guard goes, also when the test fails.
struct Db {
    url: String,
    schema: String,
    client: tokio_postgres::Client,
    _conn: JoinHandle<()>,
}

async fn connect(url: &str) -> (tokio_postgres::Client, JoinHandle<()>) {
    let mut c = config(url, "x");
    let mut pg = parse_url(&c.url).expect("URL parses").pg;
    if let Some(p) = c.password.take() {
        use secrecy::ExposeSecret;
        pg.password(p.expose_secret().as_bytes());
    }
    let (client, conn) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the test server accepts a plain connection");
    (
        client,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

impl Db {
    async fn new(url: &str) -> Db {
        let (client, conn) = connect(url).await;
        let schema = fresh_schema();
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .unwrap();
        Db {
            url: url.to_string(),
            schema,
            client,
            _conn: conn,
        }
    }

    /// `sql` with the documentation's schema name replaced by this test's.
    fn sql(&self, sql: &str) -> String {
        sql.replace("scenewatch.", &format!("{}.", self.schema))
    }

    async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.client.query(&self.sql(sql), &[]).await.unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(&self.sql(sql), &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Async drop does not exist; a thread with its own runtime can block here safely.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, _conn) = connect(&url).await;
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

fn key(asset: &str, index: &str) -> WatchKey {
    WatchKey::new("media", "p-1", asset, index).unwrap()
}

/// A scene: number, and `(description, metadataChangedAfterSummary)` if it was analyzed.
type SceneSpec<'a> = (u64, Option<(&'a str, bool)>);

fn result_json(last: &str, analyzed: Option<&[&str]>, scenes: &[SceneSpec<'_>]) -> String {
    let scenes: Vec<Value> = scenes
        .iter()
        .map(|(n, summary)| {
            let mut s = json!({"scene": n, "startMs": n * 1000, "endMs": n * 1000 + 999});
            if let Some((d, stale)) = summary {
                s["sceneSummary"] = json!({
                    "description": d,
                    "metadataChangedAfterSummary": stale,
                    "analyzedAt": last,
                });
            }
            s
        })
        .collect();
    json!({
        "indexId": 7,
        "sceneSummaryInfo": {"lastAnalyzedAt": last, "analyzedSceneIds": analyzed},
        "sceneSummaries": scenes,
    })
    .to_string()
}

fn delivery(key: WatchKey, result: &str) -> Delivery {
    let r = SummaryResult::from_result_json(result.to_string()).expect("test result parses");
    Delivery::new(key, Arc::new(r), SystemTime::now()).expect("a completed result")
}

/// `n` generated scenes, every tenth stale.
fn big_result(last: &str, n: u64) -> String {
    let texts: Vec<String> = (1..=n)
        .map(|i| format!("Scene {i}: a long shot of the harbour at dusk, \"as the docs say\"."))
        .collect();
    let specs: Vec<SceneSpec<'_>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, Some((t.as_str(), i % 10 == 0))))
        .collect();
    result_json(last, None, &specs)
}

/// The fenced SQL blocks of the "Example queries" part of docs/sinks.md, in order.
fn documented_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sinks.md"))
        .expect("docs/sinks.md exists");
    let section = doc
        .split("### Example queries")
        .nth(1)
        .expect("docs/sinks.md has an Example queries section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn delivered_versions_read_back_as_documented() {
    let Some(url) = server("delivered_versions_read_back_as_documented") else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    s.healthcheck().await.unwrap();

    let v1 = delivery(
        key("a-42", "7"),
        &result_json(
            "2026-04-17T10:30:00",
            None,
            &[
                (1, Some(("A kickoff at the stadium.", false))),
                (2, Some(("The striker scores a goal.", false))),
                (3, None),
            ],
        ),
    );
    // A partial re-analysis: scenes 2 and 3 redone; scene 1's labels changed since.
    let v2 = delivery(
        key("a-42", "7"),
        &result_json(
            "2026-04-18T09:00:00",
            Some(&["2", "3"]),
            &[
                (1, Some(("A kickoff at the stadium.", true))),
                (2, Some(("A replay of the goal from behind.", false))),
                (3, Some(("Fans leave the stadium.", false))),
            ],
        ),
    );
    let other = delivery(
        key("a-43", "8"),
        &result_json(
            "2026-04-18T11:00:00",
            None,
            &[(1, Some(("An own goal in extra time.", true)))],
        ),
    );
    // Newest first: the view must pick by lastAnalyzedAt, not by arrival.
    for d in [&v2, &v1, &other] {
        let receipt = s.deliver(d).await.unwrap();
        assert!(
            receipt
                .location
                .ends_with(&format!("#{}.index_versions/{}", db.schema, d.version_id)),
            "{}",
            receipt.location
        );
    }

    // The version row, column by column.
    let row = db
        .client
        .query_one(
            &db.sql(
                "SELECT workspace, project_id, asset_id, index_id, last_analyzed_at, \
                 analyzed_scene_ids, scene_count, fetched_at, result, delivered_at \
                 FROM scenewatch.index_versions WHERE version_id = $1",
            ),
            &[&v2.version_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "media");
    assert_eq!(row.get::<_, &str>(1), "p-1");
    assert_eq!(row.get::<_, &str>(2), "a-42");
    assert_eq!(row.get::<_, &str>(3), "7");
    assert_eq!(row.get::<_, &str>(4), "2026-04-18T09:00:00");
    assert_eq!(row.get::<_, Option<Value>>(5), Some(json!(["2", "3"])));
    assert_eq!(row.get::<_, i32>(6), 3);
    let fetched: SystemTime = row.get(7);
    let drift = fetched
        .duration_since(v2.fetched_at)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(1),
        "timestamptz keeps microseconds"
    );
    let raw: Value = serde_json::from_str(v2.result.raw.get()).unwrap();
    assert_eq!(row.get::<_, Value>(8), raw, "result is the API's result");
    let extra = db
        .client
        .query_one(
            &db.sql(
                "SELECT result_text, last_analyzed_time FROM scenewatch.index_versions \
                 WHERE version_id = $1",
            ),
            &[&v2.version_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(
        extra.get::<_, &str>(0),
        v2.result.raw.get(),
        "byte for byte"
    );
    assert_eq!(
        extra.get::<_, SystemTime>(1),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_776_502_800),
        "2026-04-18T09:00:00 as a time"
    );
    assert!(row.get::<_, SystemTime>(9) <= SystemTime::now());
    // A full run has no analyzedSceneIds: SQL NULL, not JSON null.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM scenewatch.index_versions \
             WHERE version_id = '{}' AND analyzed_scene_ids IS NULL",
            v1.version_id
        ))
        .await,
        1
    );

    // Scene rows, including a scene never analyzed.
    let scenes = db
        .client
        .query(
            &db.sql(
                "SELECT scene, start_ms, end_ms, description, metadata_changed_after_summary, \
                 analyzed_at FROM scenewatch.scenes WHERE version_id = $1 ORDER BY scene",
            ),
            &[&v1.version_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(scenes.len(), 3);
    assert_eq!(scenes[1].get::<_, i64>(0), 2);
    assert_eq!(scenes[1].get::<_, Option<i64>>(1), Some(2000));
    assert_eq!(scenes[1].get::<_, Option<i64>>(2), Some(2999));
    assert_eq!(
        scenes[1].get::<_, Option<&str>>(3),
        Some("The striker scores a goal.")
    );
    assert_eq!(scenes[1].get::<_, Option<bool>>(4), Some(false));
    assert_eq!(
        scenes[1].get::<_, Option<&str>>(5),
        Some("2026-04-17T10:30:00")
    );
    assert_eq!(scenes[2].get::<_, Option<&str>>(3), None);
    assert_eq!(scenes[2].get::<_, Option<bool>>(4), None);
    assert_eq!(scenes[2].get::<_, Option<&str>>(5), None);

    assert_eq!(
        db.count("SELECT count(*) FROM scenewatch.latest_index_versions")
            .await,
        2
    );

    // The documented queries, as written in docs/sinks.md.
    let queries = documented_queries();
    assert_eq!(
        queries.len(),
        4,
        "docs/sinks.md example queries: {queries:?}"
    );

    let latest = db.rows(&queries[0]).await;
    let got: Vec<(String, i64, Option<String>)> = latest
        .iter()
        .map(|r| (r.get("version_id"), r.get("scene"), r.get("description")))
        .collect();
    let want = |n: i64, d: &str| (v2.version_id.to_string(), n, Some(d.to_string()));
    assert_eq!(
        got,
        vec![
            want(1, "A kickoff at the stadium."),
            want(2, "A replay of the goal from behind."),
            want(3, "Fans leave the stadium."),
        ],
        "latest summary of an index"
    );

    let word = db.rows(&queries[1]).await;
    let got: Vec<(String, String, i64)> = word
        .iter()
        .map(|r| (r.get("asset_id"), r.get("index_id"), r.get("scene")))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a-42".into(), "7".into(), 2),
            ("a-43".into(), "8".into(), 1)
        ],
        "scenes mentioning a word, latest versions only"
    );

    let stale = db.rows(&queries[2]).await;
    let got: Vec<(String, String, i64, Option<String>)> = stale
        .iter()
        .map(|r| {
            (
                r.get("asset_id"),
                r.get("index_id"),
                r.get("scene"),
                r.get("analyzed_at"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "a-42".into(),
                "7".into(),
                1,
                Some("2026-04-18T09:00:00".into())
            ),
            (
                "a-43".into(),
                "8".into(),
                1,
                Some("2026-04-18T11:00:00".into())
            ),
        ],
        "stale scenes"
    );

    let history = db.rows(&queries[3]).await;
    let got: Vec<(String, i32)> = history
        .iter()
        .map(|r| (r.get("version_id"), r.get("scene_count")))
        .collect();
    assert_eq!(
        got,
        vec![
            (v2.version_id.to_string(), 3),
            (v1.version_id.to_string(), 3)
        ],
        "every version of an index"
    );
}

/// `v` with every U+0000 in its strings and keys spelled as the six characters `\u0000`, as the
/// sink stores it in `jsonb`.
fn spell_nul(v: Value) -> Value {
    let spell = |s: String| s.replace('\0', "\\u0000");
    match v {
        Value::String(s) => Value::String(spell(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(spell_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (spell(k), spell_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_result_with_nul_characters_is_stored_and_kept_byte_for_byte() {
    let Some(url) = server("a_result_with_nul_characters_is_stored_and_kept_byte_for_byte") else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    // U+0000 (the escape `\u0000`) in a description, a time, a scene id and a key; and an
    // escaped backslash before "u0000", which is not one.
    let raw = r#"{"indexId":7,"sceneSummaryInfo":{"lastAnalyzedAt":"2026-04-17T10:30:00","analyzedSceneIds":["1\u0000"]},
  "sceneSummaries":[{"scene":1,"startMs":0,"endMs":999,"sceneSummary":{"description":"A kick\u0000off, \"\\u0000\" on the board.","metadataChangedAfterSummary":false,"analyzedAt":"2026-04-17T10:30:00\u0000"}}],
  "note\u0000":"x"}"#;
    let d = delivery(key("a-42", "7"), raw);
    s.deliver(&d).await.expect("a result with U+0000 is stored");
    s.deliver(&d).await.expect("and again, as a repeat");

    let row = db
        .client
        .query_one(
            &db.sql(
                "SELECT result_text, result, analyzed_scene_ids, \
                 result->'sceneSummaries'->0->'sceneSummary'->>'description' \
                 FROM scenewatch.index_versions WHERE version_id = $1",
            ),
            &[&d.version_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), raw, "result_text is the API's bytes");
    let parsed: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        row.get::<_, Value>(1),
        spell_nul(parsed),
        "jsonb spells U+0000 out"
    );
    assert_eq!(row.get::<_, Value>(2), json!(["1\\u0000"]));
    let description = r#"A kick\u0000off, "\u0000" on the board."#;
    assert_eq!(row.get::<_, &str>(3), description);

    let scene = db
        .client
        .query_one(
            &db.sql("SELECT description, analyzed_at FROM scenewatch.scenes WHERE version_id = $1"),
            &[&d.version_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(
        scene.get::<_, &str>(0),
        description,
        "the scene row reads as the jsonb does"
    );
    assert_eq!(scene.get::<_, &str>(1), r"2026-04-17T10:30:00\u0000");
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_result_nested_too_deeply_for_jsonb_is_parked_and_the_sink_stays_healthy() {
    let Some(url) =
        server("a_result_nested_too_deeply_for_jsonb_is_parked_and_the_sink_stays_healthy")
    else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    let depth = 100_000;
    let raw = format!(
        r#"{{"indexId":7,"sceneSummaryInfo":{{"lastAnalyzedAt":"2026-04-17T10:30:00","analyzedSceneIds":null}},"sceneSummaries":[],"extra":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let deep = delivery(key("a-42", "7"), &raw);
    let e = s.deliver(&deep).await.unwrap_err();
    assert_eq!(
        e.disposition,
        Disposition::Park,
        "parked, not retried forever: {e}"
    );
    let text = e.to_string();
    for needle in [
        "postgres sink `pg`",
        deep.version_id.as_str(),
        "54001",
        "nested too deeply",
    ] {
        assert!(text.contains(needle), "{needle:?} missing: {text}");
    }
    // Nothing half-stored, and the sink is well: readiness checks pass and the next version
    // goes through.
    assert_eq!(
        db.count("SELECT count(*) FROM scenewatch.index_versions")
            .await,
        0
    );
    s.healthcheck().await.expect("the sink stays healthy");
    let next = delivery(key("a-42", "7"), &big_result("2026-04-18T09:00:00", 3));
    s.deliver(&next).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM scenewatch.scenes").await, 3);
}

/// The latest version of index `a-42/7` as the view says.
async fn latest_in_view(db: &Db) -> String {
    db.client
        .query_one(
            &db.sql(
                "SELECT version_id FROM scenewatch.latest_index_versions \
                 WHERE asset_id = 'a-42' AND index_id = '7'",
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn the_latest_version_is_the_latest_analysis_whatever_the_arrival_order() {
    let Some(url) = server("the_latest_version_is_the_latest_analysis_whatever_the_arrival_order")
    else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    // As strings, "…00Z" sorts after "…00.5": as times it is half a second earlier.
    let newest = delivery(key("a-42", "7"), &big_result("2026-04-17T10:30:00.5", 2));
    s.deliver(&newest).await.unwrap();
    for older in ["2026-04-17T10:30:00Z", "2026-04-17 10:00:00", "not a time"] {
        // Delivered later (fetched later, too): stored, but not the latest.
        let d = delivery(key("a-42", "7"), &big_result(older, 2));
        s.deliver(&d).await.unwrap();
        assert_eq!(
            latest_in_view(&db).await,
            newest.version_id,
            "after {older:?}"
        );
    }
    let later = delivery(key("a-42", "7"), &big_result("2026-04-17 10:31:00", 2));
    s.deliver(&later).await.unwrap();
    assert_eq!(latest_in_view(&db).await, later.version_id);
    assert_eq!(
        db.count("SELECT count(*) FROM scenewatch.index_versions")
            .await,
        5,
        "every version is kept"
    );
}

/// Schema version 1 as scenewatch 0.1 created it, to migrate from.
const SCHEMA_V1: &str = r#"
CREATE SCHEMA {s};
CREATE TABLE {s}.scenewatch_schema (version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL);
INSERT INTO {s}.scenewatch_schema (version, applied_by) VALUES (1, 'scenewatch 0.1.0');
CREATE TABLE {s}.index_versions (
    version_id          text PRIMARY KEY,
    workspace           text NOT NULL,
    project_id          text NOT NULL,
    asset_id            text NOT NULL,
    index_id            text NOT NULL,
    last_analyzed_at    text NOT NULL,
    analyzed_scene_ids  jsonb,
    scene_count         integer NOT NULL,
    fetched_at          timestamptz NOT NULL,
    delivered_at        timestamptz NOT NULL DEFAULT now(),
    result              jsonb NOT NULL
);
CREATE INDEX index_versions_by_index
    ON {s}.index_versions (workspace, project_id, asset_id, index_id,
                           last_analyzed_at DESC, fetched_at DESC);
CREATE TABLE {s}.scenes (
    version_id                      text NOT NULL
        REFERENCES {s}.index_versions (version_id) ON DELETE CASCADE,
    scene                           bigint NOT NULL,
    start_ms                        bigint,
    end_ms                          bigint,
    description                     text,
    metadata_changed_after_summary  boolean,
    analyzed_at                     text,
    PRIMARY KEY (version_id, scene)
);
CREATE VIEW {s}.latest_index_versions AS
SELECT DISTINCT ON (workspace, project_id, asset_id, index_id)
       version_id, workspace, project_id, asset_id, index_id, last_analyzed_at,
       analyzed_scene_ids, scene_count, fetched_at, delivered_at, result
  FROM {s}.index_versions
 ORDER BY workspace, project_id, asset_id, index_id, last_analyzed_at DESC, fetched_at DESC;
INSERT INTO {s}.index_versions (version_id, workspace, project_id, asset_id, index_id,
    last_analyzed_at, scene_count, fetched_at, result) VALUES
    ('v-new', 'media', 'p-1', 'a-42', '7', '2026-04-17T10:30:00.5', 0, now(), '{}'),
    ('v-old', 'media', 'p-1', 'a-42', '7', '2026-04-17T10:30:00Z', 0, now(), '{}'),
    ('v-odd', 'media', 'p-1', 'a-42', '7', 'not a time', 0, now(), '{}');
"#;

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_version_1_schema_is_migrated_with_its_rows_given_their_times() {
    let Some(url) = server("a_version_1_schema_is_migrated_with_its_rows_given_their_times") else {
        return;
    };
    let db = Db::new(&url).await;
    db.client
        .batch_execute(&SCHEMA_V1.replace("{s}", &db.schema))
        .await
        .unwrap();
    let s = sink(&config(&url, &db.schema));
    s.healthcheck().await.expect("migrates");
    let versions = db
        .rows("SELECT version FROM scenewatch.scenewatch_schema ORDER BY version")
        .await;
    assert_eq!(versions.len(), 2);
    let times: Vec<(String, Option<SystemTime>)> = db
        .rows(
            "SELECT version_id, last_analyzed_time FROM scenewatch.index_versions \
             ORDER BY version_id",
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let at = |ms: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(
        times,
        [
            ("v-new".to_string(), at(1_776_421_800_500)),
            ("v-odd".to_string(), None),
            ("v-old".to_string(), at(1_776_421_800_000)),
        ]
    );
    assert_eq!(latest_in_view(&db).await, "v-new");
    // The migrated schema takes deliveries as a new one does.
    let d = delivery(key("a-42", "7"), &big_result("2026-04-17T10:00:00", 1));
    s.deliver(&d).await.unwrap();
    assert_eq!(latest_in_view(&db).await, "v-new");
}

/// Everything the sink wrote, as text, with each row's `xmin` (the transaction that last wrote
/// it): equal snapshots mean nothing was inserted, updated or deleted.
async fn snapshot(db: &Db) -> (Vec<String>, i64, String) {
    let versions = db
        .rows(
            "SELECT xmin::text || ' ' || row_to_json(v)::text AS r \
             FROM scenewatch.index_versions v ORDER BY version_id",
        )
        .await
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let row = db
        .client
        .query_one(
            &db.sql(
                "SELECT count(*), md5(coalesce(string_agg(xmin::text || row_to_json(s)::text, '|' \
                 ORDER BY version_id, scene), '')) FROM scenewatch.scenes s",
            ),
            &[],
        )
        .await
        .unwrap();
    (versions, row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn delivering_a_version_again_changes_nothing() {
    let Some(url) = server("delivering_a_version_again_changes_nothing") else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    let d = delivery(key("a-42", "7"), &big_result("2026-04-17T10:30:00", 2_000));
    s.deliver(&d).await.unwrap();
    let first = snapshot(&db).await;
    assert_eq!(first.0.len(), 1);
    assert_eq!(first.1, 2_000);

    // Again; twice at once; and from a second sink (another daemon on the same database).
    s.deliver(&d).await.unwrap();
    let (a, b) = tokio::join!(s.deliver(&d), s.deliver(&d));
    a.unwrap();
    b.unwrap();
    let other = sink(&config(&url, &db.schema));
    other.deliver(&d).await.unwrap();

    assert_eq!(
        snapshot(&db).await,
        first,
        "a repeated delivery changed rows"
    );
}

/// A TCP proxy standing in for the server going away: the machine's PostgreSQL is shared with
/// other tests and must not be stopped, so the test cuts the sink off from it instead. Stopping
/// the proxy closes every connection (as a server restart does) and refuses new ones; starting
/// it again on the same port is the server coming back.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Proxy {
            port,
            upstream,
            task: Some(tokio::spawn(serve(listener, upstream))),
        }
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            // Dropping the task drops its JoinSet, which aborts every forwarding task.
            t.abort();
        }
    }

    async fn restart(&mut self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind the proxy port {}: {e}", self.port),
            }
        };
        self.task = Some(tokio::spawn(serve(listener, self.upstream)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        conns.spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

async fn upstream_of(url: &str) -> SocketAddr {
    let u = Url::parse(url).unwrap();
    let host = u.host_str().expect("SCENEWATCH_TEST_PG names a TCP host");
    let port = u.port().unwrap_or(5432);
    tokio::net::lookup_host((host, port))
        .await
        .unwrap()
        .next()
        .expect("the test server's host resolves")
}

fn via(url: &str, port: u16) -> String {
    let mut u = Url::parse(url).unwrap();
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

/// Delivers as the outbox does: a `Retry` is tried again (here without the backoff).
async fn deliver_until_ok(s: &PostgresSink, d: &Delivery) {
    for _ in 0..10 {
        match s.deliver(d).await {
            Ok(_) => return,
            Err(e) => {
                assert_eq!(e.disposition, Disposition::Retry, "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("version {} was never delivered", d.version_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn server_stopped_mid_run_and_restarted_loses_nothing() {
    let Some(url) = server("server_stopped_mid_run_and_restarted_loses_nothing") else {
        return;
    };
    let db = Db::new(&url).await;
    let mut proxy = Proxy::start(upstream_of(&url).await).await;
    let mut c = config(&via(&url, proxy.port), &db.schema);
    c.timeout = Duration::from_secs(5);
    let s = sink(&c);

    let versions: Vec<Delivery> = (0..6)
        .map(|i| {
            delivery(
                key("a-42", "7"),
                &big_result(&format!("2026-04-17T10:3{i}:00"), 50 + i),
            )
        })
        .collect();
    for d in &versions[..2] {
        s.deliver(d).await.unwrap();
    }

    // The server goes away: deliveries fail, asking to be retried, and so does the healthcheck.
    proxy.stop();
    for d in &versions[2..4] {
        let e = s.deliver(d).await.unwrap_err();
        assert_eq!(e.disposition, Disposition::Retry, "{e}");
        assert!(
            e.message.contains(&format!("127.0.0.1:{}", proxy.port)),
            "{e}"
        );
    }
    assert_eq!(
        s.healthcheck().await.unwrap_err().disposition,
        Disposition::Retry
    );

    // It comes back: the failed versions go through on retry, the rest as usual.
    proxy.restart().await;
    for d in &versions[2..] {
        deliver_until_ok(&s, d).await;
    }

    // Stopped while a 20,000-scene version is in flight: committed whole or not at all.
    let big = Arc::new(delivery(
        key("a-43", "8"),
        &big_result("2026-04-19T00:00:00", 20_000),
    ));
    let in_flight = {
        let (s, big) = (s.clone(), big.clone());
        tokio::spawn(async move { s.deliver(&big).await })
    };
    tokio::time::sleep(Duration::from_millis(15)).await;
    proxy.stop();
    match in_flight.await.unwrap() {
        Ok(_) => {}
        Err(e) => assert_eq!(e.disposition, Disposition::Retry, "{e}"),
    }
    proxy.restart().await;
    deliver_until_ok(&s, &big).await;
    // The outbox may deliver a version again after the ledger missed the confirmation.
    deliver_until_ok(&s, &versions[0]).await;

    let counts = db
        .rows(
            "SELECT v.version_id, v.scene_count, count(s.scene) AS stored \
             FROM scenewatch.index_versions v LEFT JOIN scenewatch.scenes s USING (version_id) \
             GROUP BY v.version_id, v.scene_count",
        )
        .await;
    assert_eq!(counts.len(), 7, "every version exactly once");
    for r in &counts {
        assert_eq!(
            i64::from(r.get::<_, i32>("scene_count")),
            r.get::<_, i64>("stored"),
            "version {} has all its scenes",
            r.get::<_, String>("version_id")
        );
    }
    for d in versions.iter().chain([&*big]) {
        assert!(
            counts
                .iter()
                .any(|r| r.get::<_, String>("version_id") == d.version_id.as_str())
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_schema_from_a_newer_scenewatch_disables_the_sink() {
    let Some(url) = server("a_schema_from_a_newer_scenewatch_disables_the_sink") else {
        return;
    };
    let db = Db::new(&url).await;
    let c = config(&url, &db.schema);
    sink(&c).healthcheck().await.unwrap();
    db.client
        .batch_execute(&db.sql(
            "INSERT INTO scenewatch.scenewatch_schema (version, applied_by) VALUES (99, 'future')",
        ))
        .await
        .unwrap();

    let s = sink(&c);
    let d = delivery(key("a-42", "7"), &big_result("2026-04-17T10:30:00", 3));
    let e: SinkError = s.deliver(&d).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::Disable, "{e}");
    for needle in [
        db.schema.as_str(),
        "version 99",
        "Upgrade scenewatch",
        "another schema",
    ] {
        assert!(e.message.contains(needle), "{needle:?} missing: {e}");
    }
    assert_eq!(
        s.healthcheck().await.unwrap_err().disposition,
        Disposition::Disable
    );
    assert_eq!(
        db.count("SELECT count(*) FROM scenewatch.index_versions")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn sinks_starting_together_migrate_the_schema_once() {
    let Some(url) = server("sinks_starting_together_migrate_the_schema_once") else {
        return;
    };
    let db = Db::new(&url).await;
    let c = config(&url, &db.schema);
    let sinks: Vec<_> = (0..4).map(|_| sink(&c)).collect();
    let checks = futures_util::future::join_all(sinks.iter().map(|s| s.healthcheck())).await;
    for r in checks {
        r.unwrap();
    }
    let versions: Vec<i32> = db
        .rows("SELECT version FROM scenewatch.scenewatch_schema ORDER BY version")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2], "each migration once");
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_dropped_schema_is_recreated_on_retry() {
    let Some(url) = server("a_dropped_schema_is_recreated_on_retry") else {
        return;
    };
    let db = Db::new(&url).await;
    let s = sink(&config(&url, &db.schema));
    s.deliver(&delivery(key("a-42", "7"), &big_result("t1", 3)))
        .await
        .unwrap();
    db.client
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", db.schema))
        .await
        .unwrap();
    let d = delivery(key("a-42", "7"), &big_result("t2", 3));
    deliver_until_ok(&s, &d).await;
    assert_eq!(db.count("SELECT count(*) FROM scenewatch.scenes").await, 3);
}

#[tokio::test]
async fn errors_name_the_server_and_never_the_password() {
    const PASSWORD: &str = "pw-never-shown-7Qx";
    // Nothing listens on this port: connection refused, without needing a server.
    let port = crate::support::free_port();
    let mut c = config(
        &format!("postgres://scenewatch@127.0.0.1:{port}/media"),
        "reports",
    );
    c.password = Some(SecretString::from(PASSWORD));
    c.timeout = Duration::from_secs(2);
    let s = sink(&c);
    assert!(!format!("{s:?}").contains(PASSWORD));
    let d = delivery(key("a-42", "7"), &big_result("2026-04-17T10:30:00", 2));
    for e in [
        s.deliver(&d).await.unwrap_err(),
        s.healthcheck().await.unwrap_err(),
    ] {
        assert_eq!(e.disposition, Disposition::Retry, "{e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(
            text.contains(&format!("postgres://scenewatch@127.0.0.1:{port}/media")),
            "{text}"
        );
        assert!(text.contains("\"reports\""), "{text}");
    }
}

/// A database that does not exist: retried (an operator may create it), and said so.
#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn a_missing_database_is_retried_and_named_without_the_password() {
    const PASSWORD: &str = "pw-never-shown-7Qx";
    let d = delivery(key("a-42", "7"), &big_result("2026-04-17T10:30:00", 2));
    let Some(url) = server("a_missing_database_is_retried_and_named_without_the_password") else {
        return;
    };
    let mut u = Url::parse(&url).unwrap();
    u.set_path("/scenewatch_no_such_database");
    let mut c = config(u.as_str(), "reports");
    c.password = Some(SecretString::from(PASSWORD));
    let e = sink(&c).deliver(&d).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::Retry, "{e}");
    assert!(e.message.contains("3D000"), "{e}");
    assert!(e.message.contains("create the database"), "{e}");
    assert!(!format!("{e:?}").contains(PASSWORD), "{e:?}");
}

/// The server's TLS certificate file, if it has TLS on and the file is readable here.
async fn server_certificate(db: &Db) -> Option<std::path::PathBuf> {
    let ssl: String = db.client.query_one("SHOW ssl", &[]).await.ok()?.get(0);
    if ssl != "on" {
        return None;
    }
    let file: String = db
        .client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .ok()?
        .get(0);
    let path = std::path::PathBuf::from(file);
    std::fs::read(&path).ok().map(|_| path)
}

fn with_sslmode(url: &str, mode: &str, app: &str) -> String {
    let mut u = Url::parse(url).unwrap();
    u.query_pairs_mut()
        .append_pair("sslmode", mode)
        .append_pair("application_name", app);
    u.to_string()
}

#[tokio::test]
#[cfg_attr(
    not(sw_test_pg),
    ignore = "needs SCENEWATCH_TEST_PG (a PostgreSQL URL); .ci/run sets it"
)]
async fn tls_modes_against_the_local_server() {
    let Some(url) = server("tls_modes_against_the_local_server") else {
        return;
    };
    let db = Db::new(&url).await;
    let Some(cert) = server_certificate(&db).await else {
        crate::support::skip(
            "tls_modes_against_the_local_server: the test server has no readable TLS certificate",
        );
        return;
    };
    let encrypted = async |app: &str| {
        db.count(&format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = '{app}' AND ssl"
        ))
        .await
    };

    // require: encrypted, certificate not checked (the server's is self-signed).
    let app = format!("{}_require", db.schema);
    let s = sink(&config(&with_sslmode(&url, "require", &app), &db.schema));
    s.healthcheck().await.unwrap();
    assert!(encrypted(&app).await >= 1, "sslmode=require uses TLS");

    // verify-ca with the server's own certificate as the CA: the chain checks, the name is not
    // looked at.
    let app = format!("{}_verify_ca", db.schema);
    let mut c = config(&with_sslmode(&url, "verify-ca", &app), &db.schema);
    c.ca_file = Some(cert.clone());
    // Kept in a binding so its connection is still open when pg_stat_ssl is read.
    let verify_ca = sink(&c);
    match verify_ca.healthcheck().await {
        Ok(()) => assert!(encrypted(&app).await >= 1),
        // webpki refuses some self-signed server certificates as their own anchor (e.g. with
        // CA:FALSE and no key usage for signing); then verify-ca must fail on the chain.
        Err(e) => assert!(e.message.contains("certificate"), "{e}"),
    }

    // verify-full without the server's CA in the system roots: refused, retried, explained.
    let s = sink(&config(
        &with_sslmode(&url, "verify-full", "sw_verify_full"),
        &db.schema,
    ));
    let e = s.healthcheck().await.unwrap_err();
    assert_eq!(e.disposition, Disposition::Retry, "{e}");
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");

    // disable: plain.
    let app = format!("{}_disable", db.schema);
    let s = sink(&config(&with_sslmode(&url, "disable", &app), &db.schema));
    s.healthcheck().await.unwrap();
    assert_eq!(encrypted(&app).await, 0, "sslmode=disable is plain");
}
