//! The SQL store of the outbound ledger: SQLite in the state directory by default, PostgreSQL
//! for a fleet. One set of migrations and runtime queries (sqlx's `Any` driver) serves both;
//! only the claim's locking differs (see `claim`).
//!
//! The pool is opened on first use, inside the runtime that uses it: Pingora may fork to
//! daemonize after the config is loaded, and SQLite connections own threads. `run` checks
//! the store once before that ([`Store::check`]), so a store that cannot open stops the start.

mod claim;
pub mod config;
mod ledger;
mod operator;
mod outbox;
mod retention;

pub use claim::{Limits, Rate};
pub use ledger::{
    Attempt, Breaker, BreakerMove, Claimed, DeadLetter, Enqueued, NewMessage, Next, Outcome, Route,
    StoredMessage,
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
    committer: ledger::Committer,
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
            committer: ledger::Committer::default(),
        }
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
            pool.close().await;
            Ok(())
        })
    }

    async fn pool(&self) -> Result<&AnyPool, StoreError> {
        self.pool
            .get_or_try_init(|| async {
                sqlx::any::install_default_drivers();
                if self.backend == Backend::Sqlite {
                    prepare_file(&self.url)?;
                }
                let sqlite = self.backend == Backend::Sqlite;
                let url = if sqlite && !self.url.contains('?') {
                    format!("{}?mode=rwc", self.url)
                } else {
                    self.url.clone()
                };
                let pool = AnyPoolOptions::new()
                    .max_connections(if sqlite { 4 } else { 16 })
                    .acquire_timeout(Duration::from_secs(5))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            if sqlite {
                                // WAL with a full sync at every commit: a 202 survives power loss.
                                conn.execute("PRAGMA journal_mode = WAL").await?;
                                conn.execute("PRAGMA synchronous = FULL").await?;
                                conn.execute("PRAGMA busy_timeout = 5000").await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
                Ok(pool)
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

/// Makes the SQLite file's directory (0700) and the file itself (0600; SQLite gives its WAL
/// and shared-memory files the same mode): payloads are in it.
fn prepare_file(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap_or_default();
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

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
