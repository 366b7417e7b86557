//! Retention: delivered messages and their attempts are deleted once every delivery of the
//! message was delivered longer ago than the retention (so is a message no endpoint took);
//! a message with a pending or dead delivery stays whole. Expired idempotency keys go too.

use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// Messages removed per transaction (keeps each purge short beside the workers).
const BATCH: i64 = 500;

impl Store {
    /// Deletes what is older than `retention_ms`; returns how many messages went.
    pub async fn purge(&self, retention_ms: i64) -> Result<usize, StoreError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let cutoff = now - retention_ms;
        let mut purged = 0;
        loop {
            let ids: Vec<String> = sqlx::query(
                "SELECT id FROM messages m WHERE m.created_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM deliveries d WHERE d.message_id = m.id \
                 AND (d.status <> 'delivered' OR d.updated_at >= $1)) LIMIT $2",
            )
            .bind(cutoff)
            .bind(BATCH)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                break;
            }
            let list = (1..=ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut tx = pool.begin().await?;
            for (table, column) in [
                ("attempts", "message_id"),
                ("deliveries", "message_id"),
                ("messages", "id"),
            ] {
                let sql = format!("DELETE FROM {table} WHERE {column} IN ({list})");
                let mut q = sqlx::query(&sql);
                for id in &ids {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            purged += ids.len();
            if (ids.len() as i64) < BATCH {
                break;
            }
        }
        sqlx::query("DELETE FROM idempotency WHERE expires_at < $1")
            .bind(now)
            .execute(pool)
            .await?;
        Ok(purged)
    }
}
