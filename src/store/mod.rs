//! The SQL store of the outbound ledger: SQLite in the state directory by default, PostgreSQL
//! for a fleet. One set of migrations and runtime queries (sqlx's `Any` driver) serves both;
//! only the claim's locking differs (see `claim`).
//!
//! The pool is opened on first use, inside the runtime that uses it: Pingora may fork to
//! daemonize after the config is loaded, and SQLite connections own threads. `run` checks
//! the store once before that ([`Store::check`]), so a store that cannot open stops the start.
//!
//! Durability is where a 202 depends on it. A message's commit is forced to disk (SQLite
//! `synchronous = FULL`; PostgreSQL's default synchronous commit). Leases and recorded
//! attempts are committed without waiting for the disk (SQLite `synchronous = NORMAL`, on
//! the lease connections and for the writer thread's claims and record batches; PostgreSQL
//! `synchronous_commit = off` for that transaction): a power loss may roll the last few
//! back, which only means those deliveries are attempted again with the same `webhook-id`,
//! at least once as always. A process crash loses none of them (WAL).

pub mod catalog;
mod claim;
pub mod config;
pub mod events;
pub mod inbound_keys;
mod ledger;
mod operator;
mod outbox;
mod record;
mod retention;
pub mod sealed;
mod writer;

pub use claim::{Limits, Rate};
pub use ledger::{
    Attempt, Breaker, BreakerMove, Claimed, DeadLetter, Enqueued, Handoff, NewMessage, Next,
    Outcome, Route, StoredMessage,
};
pub use operator::EndpointStatus;
pub use outbox::Unpublished;

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Executor;
use tokio::sync::OnceCell;

pub use config::StoreConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

pub struct Store {
    url: String,
    backend: Backend,
    pool: OnceCell<AnyPool>,
    lease_pool: OnceCell<Lease>,
    /// SQLite: the thread the enqueue batches, claims and record batches run on (see `writer`).
    sqlite_writer: OnceCell<std::sync::Arc<writer::SqliteWriter>>,
    /// SQLite's one write lock, taken in this process before asking SQLite for it.
    writes: Writes,
    committer: ledger::Committer,
    recorder: record::Recorder,
    /// Wrap the tenants' data keys (see `sealed`).
    keys: Option<sealed::Keyring>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    pub fn new(config: &StoreConfig) -> Store {
        let backend = if config.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        Store {
            url: config.url.clone(),
            backend,
            pool: OnceCell::new(),
            lease_pool: OnceCell::new(),
            sqlite_writer: OnceCell::new(),
            writes: Writes::default(),
            committer: ledger::Committer::default(),
            recorder: record::Recorder::default(),
            keys: config.keys.clone(),
        }
    }

    /// Whether endpoint secrets can be stored (a master key is configured).
    pub fn can_seal(&self) -> bool {
        self.keys.is_some()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens the store, applies the migrations and closes it again (before Pingora forks).
    pub fn check(config: &StoreConfig) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let store = Store::new(config);
            let pool = store
                .pool()
                .await
                .map_err(|e| format!("store {}: {e}", config::redact(&config.url)))?;
            // Stored endpoints whose secrets this node cannot open would fail every delivery.
            let opened = store.unsealed_endpoints().await.map(|_| ());
            pool.close().await;
            opened.map_err(|e| format!("store {}: {e}", config::redact(&config.url)))
        })
    }

    async fn pool(&self) -> Result<&AnyPool, StoreError> {
        self.pool
            .get_or_try_init(|| async {
                sqlx::any::install_default_drivers();
                if self.backend == Backend::Sqlite {
                    prepare_file(&self.url)?;
                }
                let max = if self.backend == Backend::Sqlite {
                    4
                } else {
                    16
                };
                let pool = self.open(max, "FULL").await?;
                MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
                Ok(pool)
            })
            .await
    }

    /// The SQLite file, or the PostgreSQL server, with at most `max` connections; SQLite's
    /// at `synchronous` (`FULL`: every commit reaches the disk).
    async fn open(&self, max: u32, synchronous: &'static str) -> Result<AnyPool, StoreError> {
        let sqlite = self.backend == Backend::Sqlite;
        let url = if sqlite && !self.url.contains('?') {
            format!("{}?mode=rwc", self.url)
        } else {
            self.url.clone()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(pool)
    }

    /// SQLite's batch writer, opened once the pool has made and migrated the file; `None`
    /// on PostgreSQL.
    async fn sqlite_writer(
        &self,
    ) -> Result<Option<std::sync::Arc<writer::SqliteWriter>>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        self.pool().await?;
        let w = self
            .sqlite_writer
            .get_or_try_init(|| async {
                writer::SqliteWriter::open(sqlite_path(&self.url)).map(std::sync::Arc::new)
            })
            .await?;
        Ok(Some(w.clone()))
    }

    /// Where leases and attempt records are written (see [`Lease`]).
    async fn lease(&self) -> Result<&Lease, StoreError> {
        let durable = self.pool().await?;
        self.lease_pool
            .get_or_try_init(|| async {
                let pool = match self.backend {
                    Backend::Sqlite => self.open(2, "NORMAL").await?,
                    Backend::Postgres => durable.clone(),
                };
                Ok(Lease {
                    backend: self.backend,
                    pool,
                    writes: self.writes.clone(),
                    writer: self.sqlite_writer().await?,
                })
            })
            .await
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ready(&self) -> bool {
        match self.pool().await {
            Ok(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Where leases and attempt records are written: commits that do not wait for the disk (see
/// the module doc).
#[derive(Clone)]
pub(crate) struct Lease {
    backend: Backend,
    /// SQLite: connections of their own, at `synchronous = NORMAL`.
    pool: AnyPool,
    writes: Writes,
    /// SQLite: where the claims and record batches run.
    writer: Option<std::sync::Arc<writer::SqliteWriter>>,
}

impl Lease {
    /// A write transaction: it takes SQLite's write lock at once (`BEGIN IMMEDIATE`, no
    /// upgrade deadlock); on PostgreSQL its commit is asynchronous. Keep the guard until
    /// the commit.
    async fn tx(&self) -> Result<(Writing, sqlx::Transaction<'static, sqlx::Any>), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let writing = self.writes.take().await;
                Ok((writing, self.pool.begin_with("BEGIN IMMEDIATE").await?))
            }
            // One round trip (the simple query protocol takes both statements).
            Backend::Postgres => Ok((
                None,
                self.pool
                    .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                    .await?,
            )),
        }
    }
}

/// The node's SQLite writers (enqueue batches, claims, outcome batches) queue here rather
/// than at SQLite's lock, whose busy handler waits by sleeping (1, 2, 5, 10 ms, …): under
/// load that sleep, not the work, would set the pace. Other processes (the CLI) still
/// meet SQLite's lock and its `busy_timeout`.
#[derive(Clone, Default)]
pub(crate) struct Writes(std::sync::Arc<tokio::sync::Mutex<()>>);

/// Held while a write transaction is open (`None` on PostgreSQL).
pub(crate) type Writing = Option<tokio::sync::OwnedMutexGuard<()>>;

impl Writes {
    async fn take(&self) -> Writing {
        Some(self.0.clone().lock_owned().await)
    }
}

/// Makes the SQLite file's directory (0700) and the file itself (0600; SQLite gives its WAL
/// and shared-memory files the same mode): payloads are in it.
fn prepare_file(url: &str) -> Result<(), StoreError> {
    let path = sqlite_path(url);
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            // Payloads live there: a directory only the service reads.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot create {path}: {e}")))?;
    Ok(())
}

/// The file of a `sqlite://FILE[?options]` url.
fn sqlite_path(url: &str) -> &str {
    url.trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap_or_default()
}

/// Placeholders for `n` rows of `per` parameters numbered after the first `first`:
/// `($3, $4), ($5, $6), …`, or `$1, $2, …` when `per` is 1. On SQLite every one is a bare `?`
/// (so a statement binds in the order its text names them): sqlx looks each `$N` up by name,
/// a scan of all the statement's names, quadratic in a multi-row statement (6% of a loaded
/// node's time in `sqlite3_bind_parameter_name`).
fn placeholders(sqlite: bool, first: usize, n: usize, per: usize) -> String {
    (0..n)
        .map(|i| {
            let p: Vec<String> = (0..per)
                .map(|j| param(sqlite, first + i * per + j + 1))
                .collect();
            if per == 1 {
                p.concat()
            } else {
                format!("({})", p.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parameter `n` (1-based) as [`placeholders`] writes it.
fn param(sqlite: bool, n: usize) -> String {
    if sqlite {
        "?".into()
    } else {
        format!("${n}")
    }
}

/// Whether a connection (or transaction) speaks to SQLite.
fn is_sqlite(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
