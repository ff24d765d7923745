//! The PostgreSQL sink: one row per result version and one per scene in a schema it creates and
//! migrates itself, written in one transaction per version and keyed by the version id, so a
//! repeated delivery changes nothing. docs/sinks.md documents the tables, the view and queries.
//!
//! Nothing the API sends is refused for its characters: `result_text` keeps the API's `result`
//! byte for byte (JSON text never holds a raw U+0000), while `jsonb` and `text` columns, which
//! cannot hold U+0000, get the six characters `\u0000` in its place. A version the server
//! refuses for good (a data error, a limit such as JSON nested too deeply for `jsonb`) is
//! parked, not retried.
//!
//! The password travels from the config's `SecretString` into the driver's connection settings
//! and nowhere else: messages name `postgres://user@host:port/db` and the schema, never it, and
//! this sink's `Debug` is written by hand.
//!
//! Its configuration is at the end of this file: [`RawPostgresSink`] (the table as written), [`PostgresSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use crate::pg::{Target, TlsMode, migration_lock_key, parse_url};
use crate::pg::{describe, quote_ident, tls_connector};

use super::{Delivery, Disposition, Receipt, Sink, SinkError};
use crate::config::checks::duration;
use crate::config::{Origins, Problem};

/// The schema version this build writes. Bump it with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: i32 = 2;

/// Migration `n` (1-based) takes the schema from version `n - 1` to `n`. `{s}` is the quoted
/// schema name. Never edit a released entry: databases out there already ran it.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // 2: the raw result beside the jsonb one (which cannot hold U+0000), and lastAnalyzedAt as a
    // time, so "latest" means the latest analysis even when the API changes how it writes times.
    // `last_analyzed_time` of existing rows is filled in by `backfill_analyzed_time`, with the same
    // parser the sinks use.
    r#"
ALTER TABLE {s}.index_versions
    ADD COLUMN result_text text,
    ADD COLUMN last_analyzed_time timestamp;
COMMENT ON COLUMN {s}.index_versions.result IS
    'the API''s result as jsonb; U+0000 in a string is stored as the six characters \u0000';
COMMENT ON COLUMN {s}.index_versions.result_text IS
    'the API''s result byte for byte (null for versions stored before schema version 2)';
COMMENT ON COLUMN {s}.index_versions.last_analyzed_time IS
    'last_analyzed_at as a time (UTC when it had an offset); null when it is not ISO 8601';
COMMENT ON COLUMN {s}.scenes.description IS
    'sceneSummary.description; U+0000 is stored as the six characters \u0000';
DROP INDEX IF EXISTS {s}.index_versions_by_index;
CREATE INDEX index_versions_by_index
    ON {s}.index_versions (workspace, project_id, asset_id, index_id,
                           last_analyzed_time DESC NULLS LAST, fetched_at DESC);
CREATE OR REPLACE VIEW {s}.latest_index_versions AS
SELECT DISTINCT ON (workspace, project_id, asset_id, index_id)
       version_id, workspace, project_id, asset_id, index_id, last_analyzed_at,
       analyzed_scene_ids, scene_count, fetched_at, delivered_at, result,
       result_text, last_analyzed_time
  FROM {s}.index_versions
 ORDER BY workspace, project_id, asset_id, index_id,
          last_analyzed_time DESC NULLS LAST,
          (CASE WHEN last_analyzed_time IS NULL THEN last_analyzed_at END) COLLATE "C" DESC,
          fetched_at DESC;
"#,
];

/// Writes result versions to PostgreSQL.
pub struct PostgresSink {
    name: String,
    schema: String,
    shown: String,
    pool: Pool,
    timeout: Duration,
    sql: Statements,
    /// Set once this process has seen the schema at [`SCHEMA_VERSION`]; cleared when the server
    /// says a table or the schema is missing (someone dropped it), so the next try recreates it.
    migrated: AtomicBool,
    /// One migration at a time within the process; the advisory lock handles other processes.
    migrating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand, so the pool's connection settings (which hold the password) never show.
        f.debug_struct("PostgresSink")
            .field("name", &self.name)
            .field("server", &self.shown)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The SQL of one schema, built once.
struct Statements {
    insert_version: String,
    insert_scenes: String,
    set_timeout: String,
}

impl Statements {
    fn new(q: &str, timeout: Duration) -> Self {
        Self {
            // DO NOTHING rather than an update: a repeated delivery of a version must leave the
            // row untouched (same `delivered_at`, same tuple), and the data cannot differ since
            // the id is a hash of the watch key and `lastAnalyzedAt`.
            // The result is sent once as text: `$10` is its jsonb-safe form only when that
            // differs from the raw text `$11` (a U+0000 in it), NULL otherwise.
            insert_version: format!(
                "INSERT INTO {q}.index_versions (version_id, workspace, project_id, asset_id, \
                 index_id, last_analyzed_at, analyzed_scene_ids, scene_count, fetched_at, result, \
                 result_text, last_analyzed_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::integer, $9::timestamptz, \
                 coalesce($10::text, $11::text)::jsonb, $11::text, $12::timestamp) \
                 ON CONFLICT (version_id) DO NOTHING"
            ),
            // Every scene of the version in one statement: one array per column.
            insert_scenes: format!(
                "INSERT INTO {q}.scenes (version_id, scene, start_ms, end_ms, description, \
                 metadata_changed_after_summary, analyzed_at) \
                 SELECT $1::text, u.* FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], \
                 $5::text[], $6::boolean[], $7::text[]) AS u \
                 ON CONFLICT (version_id, scene) DO NOTHING"
            ),
            // Per transaction rather than per session, so it also holds behind a pgbouncer in
            // transaction mode.
            set_timeout: format!(
                "SET LOCAL statement_timeout = {}",
                timeout.as_millis().clamp(1, i32::MAX as u128)
            ),
        }
    }
}

/// The scene columns of one version, as the arrays the insert takes.
#[derive(Debug, Default, PartialEq)]
struct SceneColumns<'a> {
    scene: Vec<i64>,
    start_ms: Vec<Option<i64>>,
    end_ms: Vec<Option<i64>>,
    description: Vec<Option<Cow<'a, str>>>,
    stale: Vec<Option<bool>>,
    analyzed_at: Vec<Option<Cow<'a, str>>>,
    /// `analyzedSceneIds` as JSON text, `None` after a full run.
    analyzed_scene_ids: Option<String>,
}

impl<'a> SceneColumns<'a> {
    /// Fails (naming the scene) only for numbers PostgreSQL's `bigint` cannot hold.
    fn of(d: &'a Delivery) -> Result<Self, String> {
        // Read from the stored text, borrowing it: the scenes are not kept beside it.
        let scenes = d
            .result
            .scenes()
            .map_err(|e| format!("the scenes cannot be read from the result: {e}"))?;
        let mut c = SceneColumns {
            scene: Vec::with_capacity(scenes.len()),
            start_ms: Vec::with_capacity(scenes.len()),
            end_ms: Vec::with_capacity(scenes.len()),
            description: Vec::with_capacity(scenes.len()),
            stale: Vec::with_capacity(scenes.len()),
            analyzed_at: Vec::with_capacity(scenes.len()),
            analyzed_scene_ids: None,
        };
        if let Some(ids) = d
            .result
            .info
            .as_ref()
            .and_then(|i| i.analyzed_scene_ids.as_deref())
        {
            let text = serde_json::to_string(ids)
                .map_err(|e| format!("analyzedSceneIds cannot be encoded: {e}"))?;
            c.analyzed_scene_ids = Some(text);
        }
        let big = |v: u64, what: &str, scene: u64| {
            i64::try_from(v).map_err(|_| format!("scene {scene}: {what} {v} does not fit a bigint"))
        };
        for s in scenes {
            c.scene.push(big(s.scene, "number", s.scene)?);
            c.start_ms
                .push(s.start_ms.map(|v| big(v, "startMs", s.scene)).transpose()?);
            c.end_ms
                .push(s.end_ms.map(|v| big(v, "endMs", s.scene)).transpose()?);
            c.stale
                .push(s.summary.as_ref().map(|m| m.metadata_changed_after_summary));
            let (description, analyzed_at) = match s.summary {
                Some(m) => (Some(text_cow(m.description)), m.analyzed_at.map(text_cow)),
                None => (None, None),
            };
            c.description.push(description);
            c.analyzed_at.push(analyzed_at);
        }
        Ok(c)
    }
}

/// PostgreSQL text cannot hold U+0000, which JSON can carry; it becomes the six characters
/// `\u0000` rather than failing the whole version, as in the `jsonb` result ([`jsonb_text`]), so
/// a description reads the same from `scenes` and from `result` (documented in docs/sinks.md).
fn text_column(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\u0000"))
    } else {
        // Borrowed: a 20,000-scene version would otherwise copy every description once more.
        Cow::Borrowed(s)
    }
}

/// [`text_column`] of a text that may be borrowed already.
fn text_cow(s: Cow<'_, str>) -> Cow<'_, str> {
    match text_column(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => Cow::Owned(o),
    }
}

/// JSON text that `jsonb` accepts: every `\u0000` escape (U+0000, which `jsonb` refuses) in a
/// string or key becomes `\\u0000`, the six characters `\u0000`; all else is kept. Borrowed when
/// there is none, which is nearly always. `json` is valid JSON (the API's, checked when it was
/// read), so a backslash is always inside a string and starts an escape.
fn jsonb_text(json: &str) -> Cow<'_, str> {
    const NUL: &[u8] = b"\\u0000";
    let b = json.as_bytes();
    if !b.windows(NUL.len()).any(|w| w == NUL) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b[i..].starts_with(NUL) {
            out.push_str(&json[copied..i]);
            out.push_str("\\\\u0000");
            i += NUL.len();
            copied = i;
        } else {
            // Any other escape, `\\` included, is two characters (`\uXXXX` continues with
            // plain hex digits).
            i += 2;
        }
    }
    if copied == 0 {
        // Only `\\u0000`, an escaped backslash before "u0000": nothing to change.
        return Cow::Borrowed(json);
    }
    out.push_str(&json[copied..]);
    Cow::Owned(out)
}

/// Fills `last_analyzed_time` of rows stored before schema version 2, with the parser every
/// sink uses to order versions (SQL's own would accept other forms).
async fn backfill_analyzed_time(
    tx: &tokio_postgres::Transaction<'_>,
    q: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!("SELECT version_id, last_analyzed_at FROM {q}.index_versions"),
            &[],
        )
        .await?;
    let (mut ids, mut times) = (Vec::new(), Vec::new());
    for row in &rows {
        if let Some(t) = crate::time::parse_iso8601(row.get(1)) {
            ids.push(row.get::<_, String>(0));
            times.push(t);
        }
    }
    if !ids.is_empty() {
        tx.execute(
            &format!(
                "UPDATE {q}.index_versions AS v SET last_analyzed_time = u.t \
                 FROM unnest($1::text[], $2::timestamp[]) AS u(id, t) WHERE v.version_id = u.id"
            ),
            &[&ids, &times],
        )
        .await?;
    }
    Ok(())
}

/// What to do about a failed statement, and what to tell the operator, from its SQLSTATE.
/// Transient and fixable problems all retry: the backlog waits in the ledger while an operator
/// fixes a password or a grant, and nothing is parked for a database problem. Only what the
/// server refuses for this version's data is parked: a data exception (class 22) or a limit the
/// version exceeds (class 54, e.g. 54001 for JSON nested too deeply for `jsonb`).
pub fn classify(sqlstate: Option<&str>) -> (Disposition, &'static str) {
    let Some(code) = sqlstate else {
        // No SQLSTATE: the connection failed, broke or timed out.
        return (Disposition::Retry, "");
    };
    match code {
        "28000" | "28P01" => (
            Disposition::Retry,
            "; check the user and password (password_file or password_env) and pg_hba.conf",
        ),
        "3D000" => (
            Disposition::Retry,
            "; create the database or fix the URL's database name",
        ),
        "42501" => (
            Disposition::Retry,
            "; grant the user CREATE on the database (or create the schema for it) and USAGE, CREATE on the schema",
        ),
        "3F000" | "42P01" => (
            Disposition::Retry,
            "; the schema or a table is missing, it is recreated on the next try",
        ),
        "53100" => (Disposition::Retry, "; the database server's disk is full"),
        c if c.starts_with("22") => (
            Disposition::Park,
            "; the server refuses this version's data, retrying would not help",
        ),
        "54001" => (
            Disposition::Park,
            "; the result is nested too deeply for the server to store as jsonb, retrying would \
             not help (a larger max_stack_depth on the server may take it: then run \
             `scenewatch retry-parked`)",
        ),
        c if c.starts_with("54") => (
            Disposition::Park,
            "; this version exceeds a limit of the server, retrying would not help",
        ),
        // 08 connection, 40 serialization/deadlock, 53 resources, 57 shutdown or statement
        // timeout, 58 system errors, and anything unexpected: worth another try.
        _ => (Disposition::Retry, ""),
    }
}

enum Failure {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    Timeout,
    NewerSchema(i32),
    Foreign(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl PostgresSink {
    /// A sink for `config`. Nothing connects yet (the pool connects on first use); fails with
    /// `Disable` if the URL or the CA file cannot be used, which retrying would not change.
    pub fn new(config: &PostgresSinkConfig) -> Result<Self, SinkError> {
        let fail = |message: String| SinkError {
            kind: "postgres",
            name: config.name.clone(),
            message,
            disposition: Disposition::Disable,
            source: None,
        };
        let mut target = parse_url(&config.url).map_err(fail)?;
        if let Some(pw) = &config.password {
            target.pg.password(pw.expose_secret().as_bytes());
        }
        target.pg.connect_timeout(config.timeout);
        let tls = tls_connector(target.tls, config.ca_file.as_deref())
            .map_err(|m| fail(format!("TLS for {}: {m}", target.shown)))?;
        let manager = Manager::from_config(
            target.pg,
            tls,
            ManagerConfig {
                // A broken connection fails its statement and is then dropped; checking each
                // one with a query before use would cost a round trip per delivery.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(config.timeout))
            .recycle_timeout(Some(config.timeout))
            .build()
            .map_err(|e| fail(format!("cannot build the connection pool: {e}")))?;
        let q = quote_ident(&config.schema);
        Ok(Self {
            name: config.name.clone(),
            schema: config.schema.clone(),
            shown: target.shown,
            pool,
            timeout: config.timeout,
            sql: Statements::new(&q, config.timeout),
            migrated: AtomicBool::new(false),
            migrating: tokio::sync::Mutex::new(()),
        })
    }

    fn error(&self, what: &str, f: Failure) -> SinkError {
        let at = format!("{} (schema {:?})", self.shown, self.schema);
        let mut source = None;
        let (message, disposition) = match f {
            Failure::Db(e) => {
                let (disposition, hint) = classify(e.code().map(|c| c.code()));
                let message = format!("{what} on {at}: {}{hint}", describe(&e));
                source = crate::cause::of(e);
                (message, disposition)
            }
            Failure::Pool(PoolError::Backend(e)) => {
                let (disposition, hint) = classify(e.code().map(|c| c.code()));
                (
                    format!("cannot connect to {at}: {}{hint}", describe(&e)),
                    disposition,
                )
            }
            Failure::Pool(PoolError::Timeout(_)) => (
                format!(
                    "cannot connect to {at}: no connection within {}",
                    humantime::format_duration(self.timeout)
                ),
                Disposition::Retry,
            ),
            Failure::Pool(e) => (format!("cannot connect to {at}: {e}"), Disposition::Retry),
            Failure::Timeout => (
                format!(
                    "{what} on {at}: no answer within {}; the connection was dropped",
                    humantime::format_duration(self.timeout.saturating_mul(2))
                ),
                Disposition::Retry,
            ),
            Failure::NewerSchema(v) => (
                format!(
                    "{what} on {at}: the schema is at version {v}, written by a newer scenewatch; \
                     this one knows up to version {SCHEMA_VERSION}. Upgrade scenewatch, or \
                     configure another schema"
                ),
                Disposition::Disable,
            ),
            Failure::Foreign(m) => (format!("{what} on {at}: {m}"), Disposition::Disable),
        };
        SinkError {
            kind: "postgres",
            name: self.name.clone(),
            message,
            disposition,
            source,
        }
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, Failure> {
        self.pool.get().await.map_err(Failure::Pool)
    }

    /// Runs `work` on a pooled connection, bounded by twice the timeout (statements are bounded
    /// by the server's `statement_timeout`; this catches a network that stopped answering). On
    /// that deadline the connection is dropped rather than returned to the pool, since it may be
    /// in the middle of a transaction.
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout.saturating_mul(2), work(&mut client)).await;
        match outcome {
            Ok(Err(Failure::Db(e))) => {
                if matches!(
                    e.code().map(|c| c.code()),
                    Some("3F000" | "42P01" | "0A000" | "26000")
                ) {
                    // Someone dropped or replaced the schema: migrate again, and forget prepared
                    // statements that name the old tables.
                    self.migrated.store(false, Ordering::Release);
                    client.statement_cache.clear();
                }
                Err(Failure::Db(e))
            }
            Ok(r) => r,
            Err(_) => {
                drop(Object::take(client));
                Err(Failure::Timeout)
            }
        }
    }

    /// Creates the schema or brings it to [`SCHEMA_VERSION`], once per process (again after the
    /// server said it is gone).
    async fn ensure_schema(&self) -> Result<(), SinkError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.migrating.lock().await;
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.with_client(async |c| self.migrate(c).await)
            .await
            .map_err(|f| self.error("migrating the schema", f))?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn migrate(&self, client: &mut Object) -> Result<(), Failure> {
        let q = quote_ident(&self.schema);
        let tx = client.transaction().await?;
        tx.batch_execute(&self.sql.set_timeout).await?;
        // Held until commit: a second daemon on the same schema waits here, then sees the
        // version this one wrote and has nothing to do.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&migration_lock_key(&self.schema)],
        )
        .await?;
        let exists = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.schema],
            )
            .await?
            .get::<_, bool>(0);
        if !exists {
            // Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
            // when the schema is there, and a DBA may have created it for a less privileged user.
            tx.batch_execute(&format!("CREATE SCHEMA {q}")).await?;
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {q}.scenewatch_schema (\
             version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             applied_by text NOT NULL)"
        ))
        .await?;
        let current: i32 = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {q}.scenewatch_schema"),
                &[],
            )
            .await?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(Failure::NewerSchema(current));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
            let version = i as i32 + 1;
            if let Err(e) = tx.batch_execute(&migration.replace("{s}", &q)).await {
                if e.code().map(|c| c.code()) == Some("42P07") {
                    // A table or view of ours already exists without a version row: the
                    // schema holds something else, which we must not write into.
                    return Err(Failure::Foreign(format!(
                        "{}; the schema already holds tables not made by scenewatch: configure another schema",
                        describe(&e)
                    )));
                }
                return Err(e.into());
            }
            if version == 2 {
                backfill_analyzed_time(&tx, &q).await?;
            }
            tx.execute(
                &format!("INSERT INTO {q}.scenewatch_schema (version, applied_by) VALUES ($1, $2)"),
                &[&version, &concat!("scenewatch ", env!("CARGO_PKG_VERSION"))],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One transaction: the version row, then (only if it was new) every scene in one statement.
    async fn write(
        &self,
        client: &mut Object,
        d: &Delivery,
        cols: &SceneColumns<'_>,
        scene_count: i32,
    ) -> Result<bool, Failure> {
        let insert_version = client.prepare_cached(&self.sql.insert_version).await?;
        let insert_scenes = client.prepare_cached(&self.sql.insert_scenes).await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&self.sql.set_timeout).await?;
        let raw = d.result.raw.get();
        let jsonb = match jsonb_text(raw) {
            Cow::Borrowed(_) => None,
            Cow::Owned(safe) => Some(safe),
        };
        let analyzed = cols.analyzed_scene_ids.as_deref().map(jsonb_text);
        let inserted = tx
            .execute(
                &insert_version,
                &[
                    &d.version_id.as_str(),
                    &d.key.workspace(),
                    &d.key.project_id(),
                    &d.key.asset_id(),
                    &d.key.index_id(),
                    &text_column(&d.last_analyzed_at),
                    &analyzed,
                    &scene_count,
                    &d.fetched_at,
                    &jsonb,
                    &raw,
                    &crate::time::parse_iso8601(&d.last_analyzed_at),
                ],
            )
            .await?;
        // Scenes of a version already stored were stored with it (same transaction), so a
        // repeated delivery skips them instead of sending thousands of rows to be ignored.
        if inserted == 1 && !cols.scene.is_empty() {
            tx.execute(
                &insert_scenes,
                &[
                    &d.version_id.as_str(),
                    &cols.scene,
                    &cols.start_ms,
                    &cols.end_ms,
                    &cols.description,
                    &cols.stale,
                    &cols.analyzed_at,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted == 1)
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn targets(&self, d: &Delivery) -> Vec<String> {
        vec![
            format!(
                "{}#{}.index_versions/{}",
                self.shown, self.schema, d.version_id
            ),
            format!(
                "{}#{}.scenes ({} rows)",
                self.shown, self.schema, d.result.scene_count
            ),
        ]
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let park = |m: String| SinkError {
                kind: "postgres",
                name: self.name.clone(),
                message: format!("version {} cannot be stored: {m}", d.version_id),
                disposition: Disposition::Park,
                source: None,
            };
            let cols = SceneColumns::of(d).map_err(park)?;
            let scene_count = i32::try_from(cols.scene.len())
                .map_err(|_| park(format!("{} scenes is too many", cols.scene.len())))?;
            self.ensure_schema().await?;
            self.with_client(async |c| self.write(c, d, &cols, scene_count).await)
                .await
                .map_err(|f| self.error(&format!("writing version {}", d.version_id), f))?;
            Ok(Receipt {
                location: format!(
                    "{}#{}.index_versions/{}",
                    self.shown, self.schema, d.version_id
                ),
            })
        })
    }

    /// A connection from the pool answers `SELECT 1` within the timeout, and the schema is at
    /// this build's version (created or migrated if needed), so a sink that could not take
    /// deliveries shows at start.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.with_client(async |c| {
                c.simple_query("SELECT 1").await?;
                Ok(())
            })
            .await
            .map_err(|f| self.error("checking the connection", f))?;
            self.ensure_schema().await
        })
    }
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

/// `[[sink]] type = "postgres"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPostgresSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// `postgres://user@host:port/database?sslmode=disable|prefer|require|verify-full`; required.
    /// A password in the URL works but is better given by `password_file` or `password_env`.
    pub url: String,
    /// A file holding the password.
    pub password_file: String,
    /// The name of an environment variable holding the password.
    pub password_env: String,
    /// The schema the sink creates and writes to.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Timeout of connecting and of each statement.
    pub timeout: String,
    /// PEM file of CA certificates for TLS (default: the system's roots).
    pub ca_file: String,
}

impl Default for RawPostgresSink {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            password_file: String::new(),
            password_env: String::new(),
            schema: "scenewatch".into(),
            pool_size: 4,
            timeout: "30s".into(),
            ca_file: String::new(),
        }
    }
}

/// `type = "postgres"`, validated.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    /// Name in logs.
    pub name: String,
    /// The connection URL without its password (safe to log).
    pub url: String,
    /// The password, from the URL, `password_file` or `password_env`.
    pub password: Option<SecretString>,
    /// The schema to create and write.
    pub schema: String,
    /// Pool size.
    pub pool_size: usize,
    /// Connect and statement timeout.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
}

/// `[[sink]] type = "postgres"`, validated (problems under `base`): the password is taken out
/// of the URL, or read from `password_file` / `password_env`.
pub(crate) fn validate(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    c: &RawPostgresSink,
) -> Option<PostgresSinkConfig> {
    let before = p.len();
    let checked = crate::pg::check_url(origins, p, base, &c.url, &c.password_file, &c.password_env);
    let schema = crate::pg::check_schema(origins, p, &format!("{base}.schema"), &c.schema);
    if c.pool_size == 0 {
        p.push(origins.problem(&format!("{base}.pool_size"), "must be at least 1"));
    }
    let timeout = duration(origins, p, &format!("{base}.timeout"), &c.timeout);
    if p.len() != before {
        return None;
    }
    let (url, password) = checked?;
    Some(PostgresSinkConfig {
        name: c.name.clone().unwrap_or_else(|| "postgres".into()),
        url,
        password,
        schema: schema?,
        pool_size: c.pool_size as usize,
        timeout: timeout?,
        ca_file: (!c.ca_file.trim().is_empty()).then(|| PathBuf::from(c.ca_file.trim())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WatchKey;
    use crate::ncp::SummaryResult;
    use std::sync::Arc;
    use tokio_postgres::config::SslMode;

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_mapped() {
        for (url, mode, ssl) in [
            ("postgres://u@h/db", TlsMode::Prefer, SslMode::Prefer),
            (
                "postgres://u@h/db?sslmode=disable",
                TlsMode::Disable,
                SslMode::Disable,
            ),
            (
                "postgres://u@h/db?sslmode=require",
                TlsMode::Require,
                SslMode::Require,
            ),
            (
                "postgres://u@h/db?sslmode=verify-ca",
                TlsMode::VerifyCa,
                SslMode::Require,
            ),
            (
                "postgresql://u@h:6432/db?connect_timeout=3&sslmode=verify-full",
                TlsMode::VerifyFull,
                SslMode::Require,
            ),
        ] {
            let t = parse_url(url).unwrap();
            assert_eq!((t.tls, t.pg.get_ssl_mode()), (mode, ssl), "{url}");
            assert!(!t.shown.contains('?'), "{}", t.shown);
        }
        let t = parse_url("postgres://me@db.example:6432/media?sslmode=require&application_name=x")
            .unwrap();
        assert_eq!(t.shown, "postgres://me@db.example:6432/media");
        assert_eq!(t.pg.get_application_name(), Some("x"));
        assert_eq!(t.pg.get_dbname(), Some("media"));
    }

    #[test]
    fn unsupported_url_options_are_refused_by_name() {
        let e = parse_url("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(e.contains("sslmode=\"allow\""), "{e}");
        let e = parse_url("postgres://u@h/db?sslrootcert=/x.pem").unwrap_err();
        assert!(e.contains("ca_file"), "{e}");
    }

    #[test]
    fn a_password_in_the_url_never_reaches_the_shown_name() {
        let t = parse_url("postgres://u:hunter2@h/db").unwrap();
        assert!(!t.shown.contains("hunter2"));
        assert!(!format!("{:?}", t.pg).contains("hunter2"));
    }

    #[test]
    fn sqlstates_classify_as_documented() {
        use Disposition::*;
        for (code, want) in [
            (None, Retry),
            (Some("08006"), Retry),
            (Some("40001"), Retry),
            (Some("40P01"), Retry),
            (Some("57P01"), Retry),
            (Some("57014"), Retry),
            (Some("53300"), Retry),
            (Some("28P01"), Retry),
            (Some("3D000"), Retry),
            (Some("42501"), Retry),
            (Some("42P01"), Retry),
            (Some("22P05"), Park),
            (Some("22021"), Park),
            (Some("54001"), Park),
            (Some("54000"), Park),
            (Some("XX000"), Retry),
        ] {
            assert_eq!(classify(code).0, want, "{code:?}");
        }
        assert!(classify(Some("28P01")).1.contains("password_file"));
        assert!(classify(Some("42501")).1.contains("grant"));
        assert!(classify(Some("54001")).1.contains("nested too deeply"));
    }

    #[test]
    fn nul_escapes_become_six_characters_for_jsonb_and_nothing_else_changes() {
        for (json, want) in [
            (r#"{"a":"x"}"#, r#"{"a":"x"}"#),
            (r#"{"a":"x\u0000y"}"#, r#"{"a":"x\\u0000y"}"#),
            (
                r#"{"k\u0000":["\u0000\u0000"]}"#,
                r#"{"k\\u0000":["\\u0000\\u0000"]}"#,
            ),
            // An escaped backslash before "u0000" is not U+0000.
            (r#"["\\u0000"]"#, r#"["\\u0000"]"#),
            (r#"["\\\u0000"]"#, r#"["\\\\u0000"]"#),
            (r#"["\u00001", "\"\u0000"]"#, r#"["\\u00001", "\"\\u0000"]"#),
            (r#"["장면\u0000"]"#, r#"["장면\\u0000"]"#),
        ] {
            let got = jsonb_text(json);
            assert_eq!(got, want, "{json}");
            assert_eq!(matches!(got, Cow::Borrowed(_)), json == want, "{json}");
            // What jsonb will read: the same document, U+0000 spelled out.
            let read: serde_json::Value = serde_json::from_str(&got).unwrap();
            let orig: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(read, spell_nul(orig), "{json}");
        }
    }

    /// `v` with every U+0000 in its strings and keys as the six characters `\u0000`.
    fn spell_nul(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
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

    #[test]
    fn migration_lock_keys_are_stable_and_per_schema() {
        assert_eq!(
            migration_lock_key("scenewatch"),
            migration_lock_key("scenewatch")
        );
        assert_ne!(migration_lock_key("a"), migration_lock_key("b"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("scenewatch"), "\"scenewatch\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    fn delivery(result: &str) -> Delivery {
        let key = WatchKey::new("ws", "p", "a", "i").unwrap();
        let r = SummaryResult::from_result_json(result.to_string()).unwrap();
        Delivery::new(key, Arc::new(r), crate::clock::wall_now()).unwrap()
    }

    #[test]
    fn scene_columns_keep_absent_values_null_and_replace_nul() {
        let d = delivery(
            r#"{"sceneSummaryInfo":{"lastAnalyzedAt":"t"},"sceneSummaries":[
                {"scene":1,"startMs":0,"endMs":10,"sceneSummary":{"description":"a\u0000b","metadataChangedAfterSummary":true,"analyzedAt":"x"}},
                {"scene":2}]}"#,
        );
        let c = SceneColumns::of(&d).unwrap();
        assert_eq!(c.scene, vec![1, 2]);
        assert_eq!(c.start_ms, vec![Some(0), None]);
        assert_eq!(c.end_ms, vec![Some(10), None]);
        assert_eq!(c.description, vec![Some("a\\u0000b".into()), None]);
        assert_eq!(c.stale, vec![Some(true), None]);
        assert_eq!(c.analyzed_at, vec![Some("x".into()), None]);
    }

    #[test]
    fn numbers_beyond_bigint_are_refused_not_wrapped() {
        let d = delivery(
            r#"{"sceneSummaryInfo":{"lastAnalyzedAt":"t"},"sceneSummaries":[{"scene":18446744073709551615}]}"#,
        );
        let e = SceneColumns::of(&d).unwrap_err();
        assert!(e.contains("does not fit a bigint"), "{e}");
    }

    #[test]
    fn tls_connectors_build_for_every_mode() {
        for mode in [
            TlsMode::Disable,
            TlsMode::Prefer,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ] {
            // verify-* need system roots, which a minimal container may lack.
            if let Err(e) = tls_connector(mode, None) {
                assert!(e.contains("no CA certificates"), "{mode:?}: {e}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let Err(e) = tls_connector(TlsMode::VerifyFull, Some(&bad)) else {
            panic!("a file without certificates was accepted");
        };
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }
}
