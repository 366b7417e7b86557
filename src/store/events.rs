//! The inbound event log's table: rows written in batches by the event log's writer
//! (`crate::event_log`), read by `GET /v1/events` and `portcullis events`, purged past the
//! retention. Writes go through the lease connections (no wait for the disk): a power loss
//! may cost the last batch of a log, never a message.

use sqlx::Row;

use super::{placeholders, Store, StoreError};

/// One answered inbound request, as the log keeps it (never a secret, signature or payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundEvent {
    /// Unix milliseconds when the request arrived.
    pub at: i64,
    pub request_id: String,
    /// The filter's name, or `unknown` for a path no filter routes.
    pub provider: String,
    /// The stored url-key key that opened it (`keys: store`).
    pub key_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub shadow_verdict: Option<String>,
    pub status: u16,
    pub event_id: Option<String>,
    pub client_ip: Option<String>,
    /// Body bytes read.
    pub bytes: u64,
    pub latency_us: u64,
}

/// Which events a reader asks for; newest first, at most `limit`.
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// Only those at or after this unix ms.
    pub since: Option<i64>,
    pub limit: u32,
}

const COLUMNS: &str = "at, request_id, provider, key_id, outcome, reason, shadow_verdict, \
                       status, event_id, client_ip, bytes, latency_us";
const PER_ROW: usize = 12;
/// Rows deleted per statement by a purge (keeps each short beside the ledger's writers).
const PURGE_BATCH: i64 = 5_000;

impl Store {
    /// Writes `events` in one transaction.
    pub async fn insert_events(&self, events: &[InboundEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let sqlite = self.backend == super::Backend::Sqlite;
        let sql = format!(
            "INSERT INTO inbound_events ({COLUMNS}) VALUES {}",
            placeholders(sqlite, 0, events.len(), PER_ROW)
        );
        let mut q = sqlx::query(&sql);
        for e in events {
            q = q
                .bind(e.at)
                .bind(&e.request_id)
                .bind(&e.provider)
                .bind(&e.key_id)
                .bind(&e.outcome)
                .bind(&e.reason)
                .bind(&e.shadow_verdict)
                .bind(i32::from(e.status))
                .bind(&e.event_id)
                .bind(&e.client_ip)
                .bind(e.bytes as i64)
                .bind(e.latency_us as i64);
        }
        let (_writing, mut tx) = self.lease().await?.tx().await?;
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The events `query` selects, newest first.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<InboundEvent>, StoreError> {
        let pool = self.pool().await?;
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        for (column, value) in [
            ("provider", &query.provider),
            ("outcome", &query.outcome),
            ("reason", &query.reason),
        ] {
            if value.is_some() {
                conditions.push(format!("{column} = {}", next()));
            }
        }
        if query.since.is_some() {
            conditions.push(format!("at >= {}", next()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM inbound_events {filter} ORDER BY at DESC LIMIT {}",
            next()
        );
        let mut q = sqlx::query(&sql);
        for value in [&query.provider, &query.outcome, &query.reason]
            .into_iter()
            .flatten()
        {
            q = q.bind(value);
        }
        if let Some(since) = query.since {
            q = q.bind(since);
        }
        let rows = q.bind(i64::from(query.limit)).fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                Ok(InboundEvent {
                    at: r.try_get(0)?,
                    request_id: r.try_get(1)?,
                    provider: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    reason: r.try_get(5)?,
                    shadow_verdict: r.try_get(6)?,
                    status: r.try_get::<i32, _>(7)?.clamp(0, 999) as u16,
                    event_id: r.try_get(8)?,
                    client_ip: r.try_get(9)?,
                    bytes: r.try_get::<i64, _>(10)?.max(0) as u64,
                    latency_us: r.try_get::<i64, _>(11)?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Deletes the events older than `cutoff` (unix ms); returns how many went.
    pub async fn purge_events(&self, cutoff: i64) -> Result<u64, StoreError> {
        let sql = match self.backend {
            super::Backend::Sqlite => {
                "DELETE FROM inbound_events WHERE rowid IN \
                 (SELECT rowid FROM inbound_events WHERE at < $1 LIMIT $2)"
            }
            super::Backend::Postgres => {
                "DELETE FROM inbound_events WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM inbound_events WHERE at < $1 LIMIT $2))"
            }
        };
        let mut purged = 0;
        loop {
            let (_writing, mut tx) = self.lease().await?.tx().await?;
            let gone = sqlx::query(sql)
                .bind(cutoff)
                .bind(PURGE_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            purged += gone;
            if gone < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}
