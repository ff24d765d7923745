//! The PostgreSQL ledger: the same rows and contracts as the SQLite ledger, in a schema of a
//! PostgreSQL database (`[state] backend = "postgres"`), so the ledger can live off the machine
//! that runs the daemon and, later, be shared by replicas.
//!
//! Every [`Ledger`] call is one transaction on a pooled connection (deadpool-postgres, prepared
//! statements cached per connection): a poll step's watch row, version, delivery rows and events
//! commit together or not at all, and a caller is answered only after the `COMMIT` (the server's
//! `synchronous_commit` decides how durable that is; its default waits for the WAL flush).
//! Concurrent calls run side by side on the pool; where two could race (two sinks finishing
//! one version), the first statement locks the row they share. Events are numbered when
//! inserted and sent in that order, so causal order is kept (everything a watch emits, and
//! anything recorded after another call returned, comes after it); two steps of different
//! watches committing at the same instant may reach an event sink in the order they commit,
//! where SQLite, with one writer, never interleaves them.
//!
//! The schema and its migrations are in `schema.rs`, the SQL of each operation in `store.rs`.
//! The one entry point is [`PostgresLedger`] (and its configuration, [`PostgresTarget`]), so
//! the whole module can sit behind one `#[cfg(feature = "postgres")]`.
//!
//! The password goes from the configuration's `SecretString` into the driver's settings and
//! nowhere else: messages name `postgres://user@host:port/db (schema "…")`, and `Debug` is
//! written by hand.

mod leases;
pub mod migrate;
pub mod schema;
mod store;

pub use leases::LeaseTick;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use secrecy::{ExposeSecret, SecretString};

use super::{
    Backlog, Ledger, LedgerFuture, PendingDelivery, Pruned, SinkHealth, StateError, StatusRow,
    StepCommit, WatchRecord,
};
use crate::config::WatchSpec;
use crate::domain::{VersionId, WatchKey};
use crate::events::Event;
use crate::pg::{describe, lock_key, quote_ident, tls_connector};

/// The schema version this build writes and reads (rows of `ledger_schema`).
pub const SCHEMA_VERSION: u32 = schema::MIGRATIONS.len() as u32;

pub use crate::state::shards::{SHARDS, shard_of};

/// How long connecting and each statement may take; a call gets twice that before its
/// connection is dropped (a network that stopped answering).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Connections in the pool: the engine's concurrent poll steps, the drainers and the server.
const POOL_SIZE: usize = 16;

/// A watch of a shard, as [`PostgresLedger::records_in_shards`] reads it.
#[derive(Debug, Clone)]
pub struct ShardWatch {
    /// Its row's id (ascending in insertion order).
    pub watch_id: i64,
    /// The selector that found it (`None`: configured as an index watch).
    pub origin: Option<String>,
    /// Its state.
    pub record: WatchRecord,
}

/// `[state] backend = "postgres"`, validated: where the ledger is.
#[derive(Clone)]
pub struct PostgresTarget {
    /// `postgres://user@host:port/db?sslmode=…`, without its password (safe to show).
    pub url: String,
    /// The password (from the URL, `password_file` or `password_env`).
    pub password: Option<SecretString>,
    /// The schema holding the ledger's tables.
    pub schema: String,
    /// Extra CA certificates (PEM) for TLS.
    pub ca_file: Option<PathBuf>,
    /// `state.replicated`: the lease of this daemon's shard leases (`None`: one daemon owns
    /// the whole ledger, under a session lock).
    pub replicated: Option<Duration>,
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("ca_file", &self.ca_file)
            .field("replicated", &self.replicated)
            .finish()
    }
}

/// What went wrong inside a call, before it is named after the ledger.
pub(crate) enum Fail {
    Db(tokio_postgres::Error),
    /// A stored value this build cannot read back.
    Bad(String),
    State(StateError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

/// A hint for the SQLSTATEs an operator can fix.
fn hint(code: Option<&str>) -> &'static str {
    match code {
        Some("28000" | "28P01") => {
            " (check the user and password (state.password_file or state.password_env) and pg_hba.conf)"
        }
        Some("3D000") => " (create the database or fix the database name in state.url)",
        Some("42501") => {
            " (grant the user CREATE on the database, or create the schema for it and grant USAGE, CREATE on it)"
        }
        Some("3F000" | "42P01") => {
            " (the ledger's schema or a table is gone: restore it from a backup; scenewatch does not recreate a ledger under a running daemon)"
        }
        Some("53100") => " (the database server's disk is full)",
        Some("25006") => " (this connection is read-only)",
        _ => "",
    }
}

/// The PostgreSQL ledger's handle. Cheap to clone.
#[derive(Clone)]
pub struct PostgresLedger {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: Pool,
    /// `postgres://user@host:port/db (schema "name")`.
    at: String,
    /// The quoted schema name, substituted for `{s}` in the SQL.
    q: String,
    schema: String,
    /// Result sinks, then event sinks (one delivery row each per new version / event).
    sinks: std::sync::RwLock<(Vec<String>, Vec<String>)>,
    read_only: bool,
    closed: AtomicBool,
    /// The last write failure, until a write commits again (readiness reports it).
    last_write_error: std::sync::Mutex<Option<StateError>>,
    /// Where retention's walk is.
    prune_walk: tokio::sync::Mutex<store::PruneWalk>,
    /// [`PostgresLedger::claim_exclusive`] was called (and not undone by `close`).
    claimed: AtomicBool,
    /// The connection holding the daemon's exclusive lock on the ledger, while it holds it.
    owner: tokio::sync::Mutex<Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>>,
    /// Set by [`PostgresLedger::join`]: this handle is a replica holding shard leases, and its
    /// poll-step and outbox writes are fenced (see `leases.rs`).
    replica: std::sync::RwLock<Option<leases::Replica>>,
    /// What the owner lock's connection is: the pool's settings.
    connect: (
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
}

impl fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("at", &self.inner.at)
            .field("read_only", &self.inner.read_only)
            .finish_non_exhaustive()
    }
}

impl PostgresLedger {
    /// Connects, creates the schema or migrates it to [`SCHEMA_VERSION`] (under an advisory
    /// lock; a newer one is refused), and returns the ledger. `sinks` / `event_sinks` are the
    /// configured sink names, as for [`crate::state::SqliteLedger::open`].
    pub async fn open(
        target: &PostgresTarget,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<PostgresLedger, StateError> {
        let l = Self::build(target, false, sinks, event_sinks)?;
        l.inner.migrate().await?;
        Ok(l)
    }

    /// A read-only view for `status`: creates and migrates nothing (an older schema is refused,
    /// asking to start the daemon once), refuses a newer schema, works while a daemon runs.
    /// Its sessions are `default_transaction_read_only`; writes fail with
    /// [`StateError::Postgres`].
    pub async fn open_read_only(target: &PostgresTarget) -> Result<PostgresLedger, StateError> {
        let l = Self::build(target, true, Vec::new(), Vec::new())?;
        l.inner.check_version().await?;
        Ok(l)
    }

    /// For `check --online`: connects read-only and says what the schema holds (no ledger yet,
    /// or its schema version), creating and changing nothing; a newer schema is an error.
    pub async fn probe(target: &PostgresTarget) -> Result<String, StateError> {
        let l = Self::build(target, true, Vec::new(), Vec::new())?;
        let found = l
            .run("read", false, async |i, c| {
                let table = format!("{}.{}", i.q, schema::VERSION_TABLE);
                let there: bool = c
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await?
                    .get(0);
                if there {
                    Ok(Some(i.version_in(&*c).await?))
                } else {
                    Ok(None)
                }
            })
            .await;
        let _ = l.close().await;
        match found? {
            None => Ok(format!(
                "connected to {}; it holds no ledger yet (the daemon creates it on start)",
                l.inner.at
            )),
            Some(v) if v > SCHEMA_VERSION => Err(StateError::NewerPgSchema {
                at: l.inner.at.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(v) => Ok(format!(
                "connected to {}; ledger schema version {v}{}",
                l.inner.at,
                if v < SCHEMA_VERSION {
                    format!(" (the daemon migrates it to {SCHEMA_VERSION} on start)")
                } else {
                    String::new()
                }
            )),
        }
    }

    fn build(
        target: &PostgresTarget,
        read_only: bool,
        sinks: Vec<String>,
        event_sinks: Vec<String>,
    ) -> Result<PostgresLedger, StateError> {
        let shown_at = |shown: &str| format!("{shown} (schema {:?})", target.schema);
        let fail = |at: String, detail: String| StateError::Postgres {
            at,
            op: "connect to",
            detail,
            source: None,
        };
        let mut t = crate::pg::parse_url(&target.url)
            .map_err(|d| fail(format!("{} (schema {:?})", "state.url", target.schema), d))?;
        let at = shown_at(&t.shown);
        if let Some(pw) = &target.password {
            t.pg.password(pw.expose_secret().as_bytes());
        }
        t.pg.connect_timeout(TIMEOUT);
        // Statements are bounded on the server too; a read-only view cannot write by mistake.
        let mut options = t.pg.get_options().unwrap_or_default().to_string();
        options.push_str(&format!(" -c statement_timeout={}", TIMEOUT.as_millis()));
        // A transaction left open by a process that stopped mid-call (SIGSTOP, a VM paused,
        // a partition) is ended by the server, so its row locks do not outlive it: a replica's
        // fencing check holds its shard's lease row FOR SHARE, and a takeover's claim skips a
        // locked row. Within a lease, so a paused replica delays no takeover past two leases.
        let idle = target
            .replicated
            .map_or(TIMEOUT, |lease| lease.min(TIMEOUT));
        options.push_str(&format!(
            " -c idle_in_transaction_session_timeout={}",
            idle.as_millis()
        ));
        if read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        t.pg.options(options.trim());
        let tls = tls_connector(t.tls, target.ca_file.as_deref())
            .map_err(|m| fail(at.clone(), format!("TLS: {m}")))?;
        let manager = Manager::from_config(
            t.pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| fail(at.clone(), format!("cannot build the connection pool: {e}")))?;
        Ok(PostgresLedger {
            inner: Arc::new(Inner {
                pool,
                at,
                q: quote_ident(&target.schema),
                schema: target.schema.clone(),
                sinks: std::sync::RwLock::new((sinks, event_sinks)),
                read_only,
                closed: AtomicBool::new(false),
                last_write_error: std::sync::Mutex::new(None),
                prune_walk: tokio::sync::Mutex::new(store::PruneWalk::default()),
                claimed: AtomicBool::new(false),
                owner: tokio::sync::Mutex::new(None),
                replica: std::sync::RwLock::new(None),
                connect: (t.pg, tls),
            }),
        })
    }

    /// The ledger as messages name it: `postgres://user@host:port/db (schema "name")`.
    pub fn at(&self) -> &str {
        &self.inner.at
    }

    /// Takes the ledger for this process alone, until [`Ledger::close`] (or the process ends):
    /// a session advisory lock on a connection of its own. A second daemon on the same schema
    /// is refused instead of polling and delivering every watch a second time. (Replicas that
    /// share a ledger by shard leases are later work; this lock is what keeps it to one daemon
    /// until then.) Operator verbs (`reset`, `retry-parked`, `status`) do not take it.
    pub async fn claim_exclusive(&self) -> Result<(), StateError> {
        let i = &self.inner;
        let mut owner = i.owner.lock().await;
        if owner.is_some() {
            return Ok(());
        }
        let (client, task) = i.dedicated().await?;
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&lock_key("scenewatch ledger owner", &i.schema)],
            )
            .await
            .map_err(|e| i.db_error("lock", e))?
            .get(0);
        if !got {
            task.abort();
            return Err(StateError::Postgres {
                at: i.at.clone(),
                op: "take",
                detail: "another scenewatch daemon is running on this ledger (it holds its lock); \
                         stop it first, give this one its own state.schema, or run every daemon \
                         on it with state.replicated = true to share it as replicas"
                    .into(),
                source: None,
            });
        }
        *owner = Some((client, task));
        i.claimed.store(true, Ordering::Release);
        Ok(())
    }

    /// For readiness: the daemon's lock is still held. If its connection ended (a restarted
    /// server, a network cut, an administrator's `pg_terminate_backend`), the lock is taken
    /// again; if another daemon took it meanwhile, this one is not ready, saying so.
    async fn check_claim(&self) -> Result<(), StateError> {
        let i = &self.inner;
        if !i.claimed.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let mut owner = i.owner.lock().await;
            // A round trip, not only `is_closed`: a connection the server ended is noticed
            // by the client only when it next reads from it.
            if let Some((client, _)) = &*owner
                && client.batch_execute("SELECT 1").await.is_ok()
            {
                return Ok(());
            }
            if let Some((_, task)) = owner.take() {
                task.abort();
            }
        }
        match self.claim_exclusive().await {
            Ok(()) => {
                tracing::warn!(ledger = %i.at, "The connection holding the PostgreSQL ledger's lock had ended; took the lock again.");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a daemon holds the ledger now ([`PostgresLedger::claim_exclusive`]).
    pub async fn held_by_a_daemon(&self) -> Result<bool, StateError> {
        let i = &self.inner;
        let key = lock_key("scenewatch ledger owner", &i.schema);
        let (client, task) = i.dedicated().await?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| i.db_error("lock", e))?
            .get(0);
        task.abort();
        Ok(!got)
    }

    /// Runs `work` on a pooled connection (see [`Inner::run`]).
    async fn run<T>(
        &self,
        op: &'static str,
        write: bool,
        work: impl AsyncFnOnce(&Inner, &mut Object) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        self.inner.run(op, write, work).await
    }
}

impl Inner {
    /// `template` with `{s}` replaced by the quoted schema.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.q)
    }

    fn db_error(&self, op: &'static str, e: tokio_postgres::Error) -> StateError {
        let h = hint(e.code().map(|c| c.code()));
        StateError::Postgres {
            at: self.at.clone(),
            op,
            detail: format!("{}{h}", describe(&e)),
            source: crate::cause::of(e),
        }
    }

    fn fail(&self, op: &'static str, f: Fail) -> StateError {
        match f {
            Fail::Db(e) => self.db_error(op, e),
            Fail::Bad(detail) => StateError::Postgres {
                at: self.at.clone(),
                op: "read",
                detail: format!(
                    "a stored value cannot be read back ({detail}); was the table edited by hand?"
                ),
                source: None,
            },
            Fail::State(e) => e,
        }
    }

    fn pool_error(&self, e: PoolError) -> StateError {
        let detail = match e {
            PoolError::Backend(e) => {
                let h = hint(e.code().map(|c| c.code()));
                return StateError::Postgres {
                    at: self.at.clone(),
                    op: "connect to",
                    detail: format!("{}{h}", describe(&e)),
                    source: crate::cause::of(e),
                };
            }
            PoolError::Timeout(_) => format!(
                "no connection within {}",
                humantime::format_duration(TIMEOUT)
            ),
            PoolError::Closed => return self.closed(),
            other => other.to_string(),
        };
        StateError::Postgres {
            at: self.at.clone(),
            op: "connect to",
            detail,
            source: None,
        }
    }

    fn closed(&self) -> StateError {
        StateError::Closed {
            path: PathBuf::from(&self.at),
        }
    }

    pub(crate) fn sinks(&self) -> (Vec<String>, Vec<String>) {
        self.sinks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A connection outside the pool (the owner lock, the migration tool's checks).
    async fn dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StateError> {
        let (pg, tls) = &self.connect;
        let (client, connection) = pg
            .connect(tls.clone())
            .await
            .map_err(|e| self.db_error("connect to", e))?;
        let at = self.at.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(ledger = %at, error = %describe(&e), "The PostgreSQL ledger's lock connection ended; another daemon could now take the ledger.");
            }
        });
        Ok((client, task))
    }

    /// Runs `work` on a pooled connection, bounded by twice [`TIMEOUT`]; on that deadline the
    /// connection is dropped rather than returned to the pool (it may be mid-transaction).
    /// `write` calls are refused on a read-only view, and their outcome feeds readiness.
    pub(crate) async fn run<T>(
        &self,
        op: &'static str,
        write: bool,
        work: impl AsyncFnOnce(&Inner, &mut Object) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed());
        }
        if write && self.read_only {
            return Err(StateError::Postgres {
                at: self.at.clone(),
                op: "write",
                detail: "this ledger was opened read-only (for status)".into(),
                source: None,
            });
        }
        let outcome = async {
            let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
            match tokio::time::timeout(TIMEOUT.saturating_mul(2), work(self, &mut client)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(f)) => {
                    if let Fail::Db(e) = &f
                        && matches!(
                            e.code().map(|c| c.code()),
                            Some("3F000" | "42P01" | "0A000" | "26000")
                        )
                    {
                        // Prepared statements naming tables that were replaced.
                        client.statement_cache.clear();
                    }
                    Err(self.fail(op, f))
                }
                Err(_) => {
                    drop(Object::take(client));
                    Err(StateError::Postgres {
                        at: self.at.clone(),
                        op,
                        detail: format!(
                            "no answer within {}; the connection was dropped",
                            humantime::format_duration(TIMEOUT.saturating_mul(2))
                        ),
                        source: None,
                    })
                }
            }
        }
        .await;
        if write {
            let mut last = self
                .last_write_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &outcome {
                Ok(_) => *last = None,
                Err(e @ StateError::Postgres { .. }) => *last = Some(e.clone()),
                Err(_) => {}
            }
        }
        outcome
    }

    /// Creates or migrates the schema (see `schema.rs`).
    async fn migrate(&self) -> Result<(), StateError> {
        self.run("migrate", false, async |i, c| {
            let tx = c.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key("scenewatch ledger migration", &i.schema)],
            )
            .await?;
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                    &[&i.schema],
                )
                .await?
                .get(0);
            if !exists {
                // Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
                // even when the schema is there, and a DBA may have made it for a smaller user.
                tx.batch_execute(&i.sql("CREATE SCHEMA {s}")).await?;
            }
            tx.batch_execute(&i.sql(&format!(
                "CREATE TABLE IF NOT EXISTS {{s}}.{} (\
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now(), \
                 applied_by text NOT NULL)",
                schema::VERSION_TABLE
            )))
            .await?;
            let current = i.version_in(&tx).await?;
            if current > SCHEMA_VERSION {
                return Err(Fail::State(StateError::NewerPgSchema {
                    at: i.at.clone(),
                    found: current,
                    supported: SCHEMA_VERSION,
                }));
            }
            let by = concat!("scenewatch ", env!("CARGO_PKG_VERSION"));
            for (n, migration) in schema::MIGRATIONS.iter().enumerate().skip(current as usize) {
                if let Err(e) = tx.batch_execute(&i.sql(migration)).await {
                    if e.code().map(|c| c.code()) == Some("42P07") {
                        return Err(Fail::State(StateError::Postgres {
                            at: i.at.clone(),
                            op: "migrate",
                            detail: format!(
                                "{}; the schema already holds tables not made by the scenewatch \
                                 ledger: configure another state.schema",
                                describe(&e)
                            ),
                            source: None,
                        }));
                    }
                    return Err(e.into());
                }
                let version = n as i32 + 1;
                tx.execute(
                    &i.sql(&format!(
                        "INSERT INTO {{s}}.{} (version, applied_by) VALUES ($1, $2)",
                        schema::VERSION_TABLE
                    )),
                    &[&version, &by],
                )
                .await?;
            }
            tx.execute(
                &i.sql(
                    "INSERT INTO {s}.meta (key, value) VALUES ('created_by', $1)
                     ON CONFLICT (key) DO NOTHING",
                ),
                &[&by],
            )
            .await?;
            tx.execute(
                &i.sql(
                    "INSERT INTO {s}.meta (key, value) VALUES ('written_by', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                ),
                &[&by],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The highest applied migration (0 for none).
    async fn version_in(&self, c: &impl deadpool_postgres::GenericClient) -> Result<u32, Fail> {
        let v: i32 = c
            .query_one(
                &self.sql(&format!(
                    "SELECT coalesce(max(version), 0) FROM {{s}}.{}",
                    schema::VERSION_TABLE
                )),
                &[],
            )
            .await?
            .get(0);
        u32::try_from(v).map_err(|_| Fail::Bad(format!("schema version {v}")))
    }

    /// For a read-only view: the ledger is there, at this build's version.
    async fn check_version(&self) -> Result<(), StateError> {
        self.run("read", false, async |i, c| {
            let table = format!("{}.{}", i.q, schema::VERSION_TABLE);
            let there: bool = c
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await?
                .get(0);
            let found = if there { i.version_in(&*c).await? } else { 0 };
            let refuse = |detail: String| {
                Err(Fail::State(StateError::Postgres {
                    at: i.at.clone(),
                    op: "read",
                    detail,
                    source: None,
                }))
            };
            match found {
                0 => {
                    refuse("the schema holds no ledger yet (the daemon creates it on start)".into())
                }
                v if v == SCHEMA_VERSION => Ok(()),
                v if v > SCHEMA_VERSION => Err(Fail::State(StateError::NewerPgSchema {
                    at: i.at.clone(),
                    found: v,
                    supported: SCHEMA_VERSION,
                })),
                v => refuse(format!(
                    "it has schema {v} of an older scenewatch; start the daemon once to migrate it \
                     to schema {SCHEMA_VERSION}"
                )),
            }
        })
        .await
    }
}

impl Ledger for PostgresLedger {
    fn describe(&self) -> String {
        format!("the PostgreSQL ledger {}", self.inner.at)
    }

    fn set_sinks(&self, sinks: Vec<String>, event_sinks: Vec<String>) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(self.inner.closed());
            }
            *self
                .inner
                .sinks
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = (sinks, event_sinks);
            Ok(())
        })
    }

    fn sync_watches<'a>(
        &'a self,
        specs: &'a [WatchSpec],
        origins: &'a [String],
        now_ms: u64,
    ) -> LedgerFuture<'a, Vec<WatchRecord>> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::sync_watches(i, c, specs, origins, now_ms).await
        }))
    }

    fn add_watch<'a>(&'a self, spec: &'a WatchSpec, now_ms: u64) -> LedgerFuture<'a, WatchRecord> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::add_watch(i, c, spec, now_ms).await
        }))
    }

    fn remove_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::remove_watches(i, c, &keys, now_ms).await
        }))
    }

    fn discovered(&self) -> LedgerFuture<'_, Vec<(String, WatchRecord)>> {
        Box::pin(self.run("read", false, store::discovered))
    }

    fn reset_watches(&self, keys: Vec<WatchKey>, now_ms: u64) -> LedgerFuture<'_, Vec<WatchKey>> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::reset_watches(i, c, &keys, now_ms).await
        }))
    }

    fn unpark(&self, sink: Option<String>, now_ms: u64) -> LedgerFuture<'_, u64> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::unpark(i, c, sink.as_deref(), now_ms).await
        }))
    }

    fn commit_step(&self, commit: StepCommit) -> LedgerFuture<'_, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::commit_step(i, c, &commit).await
        }))
    }

    fn due_deliveries<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<PendingDelivery>> {
        Box::pin(self.run("read", false, async move |i, c| {
            store::due_deliveries(i, c, sink, now_ms, limit).await
        }))
    }

    fn delivery_succeeded<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        location: &'a str,
        events: Vec<Event>,
        now_ms: u64,
    ) -> LedgerFuture<'a, bool> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::delivery_succeeded(i, c, version_id.as_str(), sink, location, &events, now_ms)
                .await
        }))
    }

    fn delivery_failed<'a>(
        &'a self,
        version_id: &'a VersionId,
        sink: &'a str,
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::delivery_failed(
                i,
                c,
                version_id.as_str(),
                sink,
                error,
                next_attempt_at_ms,
                park,
            )
            .await
        }))
    }

    fn record_events(&self, events: Vec<Event>) -> LedgerFuture<'_, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            let tx = c.transaction().await?;
            store::insert_events(i, &tx, &events).await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    fn due_events<'a>(
        &'a self,
        sink: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<Event>> {
        // A read for readiness and the read-only check: it writes only to park an undecodable
        // event, which the read-only view refuses on its own (see `store::due_events`).
        Box::pin(self.run("read", false, async move |i, c| {
            store::due_events(i, c, sink, now_ms, limit).await
        }))
    }

    fn events_sent<'a>(&'a self, sink: &'a str, ids: &'a [String]) -> LedgerFuture<'a, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::events_sent(i, c, sink, ids).await
        }))
    }

    fn events_failed<'a>(
        &'a self,
        sink: &'a str,
        ids: &'a [String],
        error: &'a str,
        next_attempt_at_ms: u64,
        park: bool,
    ) -> LedgerFuture<'a, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::events_failed(i, c, sink, ids, error, next_attempt_at_ms, park).await
        }))
    }

    fn sink_health<'a>(&'a self, sink: &'a str) -> LedgerFuture<'a, SinkHealth> {
        Box::pin(self.run("read", false, async move |i, c| {
            store::sink_health(i, c, sink).await
        }))
    }

    fn set_sink_health<'a>(&'a self, sink: &'a str, health: SinkHealth) -> LedgerFuture<'a, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::set_sink_health(i, c, sink, health).await
        }))
    }

    fn fact<'a>(&'a self, name: &'a str) -> LedgerFuture<'a, Option<String>> {
        Box::pin(self.run("read", false, async move |i, c| {
            store::fact(i, c, name).await
        }))
    }

    fn set_fact<'a>(&'a self, name: &'a str, value: &'a str) -> LedgerFuture<'a, ()> {
        Box::pin(self.run("write", true, async move |i, c| {
            store::set_fact(i, c, name, value).await
        }))
    }

    fn status(&self) -> LedgerFuture<'_, Vec<StatusRow>> {
        Box::pin(self.run("read", false, store::status))
    }

    fn backlog(&self) -> LedgerFuture<'_, Vec<Backlog>> {
        Box::pin(self.run("read", false, store::backlog))
    }

    /// One batch in a transaction of its own (see [`Ledger::prune`]); the walk's position is
    /// kept by this handle between calls.
    fn prune(&self, before_ms: u64, limit: usize) -> LedgerFuture<'_, Pruned> {
        Box::pin(async move {
            let mut walk = self.inner.prune_walk.lock().await;
            let start = *walk;
            let (out, next) = self
                .run("prune", true, async move |i, c| {
                    store::prune(i, c, start, before_ms, limit).await
                })
                .await?;
            *walk = next;
            Ok(out)
        })
    }

    /// Checks the daemon's lock (see `check_claim`), then commits a real tiny write; after a
    /// failed real write it still reports that failure until a real write commits, as the
    /// SQLite ledger does.
    fn probe_writable(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            self.check_claim().await?;
            let before = self
                .inner
                .last_write_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            self.inner
                .run("write", false, async |i, c| {
                    if i.read_only {
                        return Err(Fail::State(StateError::Postgres {
                            at: i.at.clone(),
                            op: "write",
                            detail: "this ledger was opened read-only (for status)".into(),
                            source: None,
                        }));
                    }
                    c.execute(
                        &i.sql(
                            "INSERT INTO {s}.meta (key, value) VALUES ('probe', 'ok')
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        ),
                        &[],
                    )
                    .await?;
                    Ok(())
                })
                .await?;
            match before {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    /// Gives up a replica's shard leases at once (see [`PostgresLedger::release_leases`]),
    /// closes the pool and gives up the daemon's lock; later calls fail with
    /// [`StateError::Closed`]. Calls already running finish.
    fn close(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            if !self.inner.closed.load(Ordering::Acquire)
                && let Err(e) = self.release_leases().await
            {
                tracing::warn!(ledger = %self.inner.at, error = %e, "Could not give up the shard leases on close; the other replicas take them when they expire.");
            }
            self.inner.closed.store(true, Ordering::Release);
            self.inner.claimed.store(false, Ordering::Release);
            self.inner.pool.close();
            if let Some((client, task)) = self.inner.owner.lock().await.take() {
                // Given back on the server before `close` returns, so a daemon started right
                // after this one stopped is not refused while the server has yet to notice
                // the dropped connection. If it fails, the connection's end releases it.
                let key = lock_key("scenewatch ledger owner", &self.inner.schema);
                let _ = tokio::time::timeout(
                    TIMEOUT,
                    client.execute("SELECT pg_advisory_unlock($1)", &[&key]),
                )
                .await;
                drop(client);
                task.abort();
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;

/// A fresh schema on the test server (`SCENEWATCH_TEST_PG`), for this module's tests and the
/// contract tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::PostgresTarget;

    /// The server's URL; a test that needs it and runs without it fails saying so (it is
    /// compiled ignored unless build.rs saw the variable).
    pub(crate) fn server_url(test: &str) -> String {
        match std::env::var("SCENEWATCH_TEST_PG") {
            Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
            _ => panic!(
                "{test} needs SCENEWATCH_TEST_PG (a PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/test)"
            ),
        }
    }

    /// A schema name unique to this test and process, dropped by [`Schema::drop_it`].
    pub(crate) struct Schema {
        pub(crate) target: PostgresTarget,
        url: String,
    }

    impl Schema {
        pub(crate) async fn fresh(test: &str) -> Schema {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let url = server_url(test);
            let short: String = test
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(20)
                .collect();
            let schema = format!(
                "sw_ledger_{}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                short.to_ascii_lowercase()
            );
            let mut u = reqwest::Url::parse(&url).unwrap();
            let password = u
                .password()
                .map(|p| secrecy::SecretString::from(p.to_string()));
            let _ = u.set_password(None);
            let s = Schema {
                target: PostgresTarget {
                    url: u.to_string(),
                    password,
                    schema,
                    ca_file: None,
                    replicated: None,
                },
                url,
            };
            s.exec(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                s.target.schema
            ))
            .await;
            s
        }

        /// Runs SQL on a connection of its own.
        pub(crate) async fn exec(&self, sql: &str) {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .expect("the test server answers");
            let task = tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
            drop(client);
            let _ = task.await;
        }

        pub(crate) async fn drop_it(self) {
            self.exec(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.target.schema
            ))
            .await;
        }
    }
}
