//! The dead-letter outbox: dead deliveries and invalid source entries not yet published to
//! the `dead_letters` sink, and marking them published once it acknowledged.

use sqlx::Row;

use super::{Store, StoreError};

/// A dead letter as published: the record and, for a delivery, its message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unpublished {
    /// `delivery` (given up) or `invalid` (a source entry that was no message).
    pub kind: &'static str,
    /// The message id (delivery) or the invalid entry's id.
    pub id: String,
    pub tenant: Option<String>,
    pub endpoint: Option<String>,
    pub event_type: Option<String>,
    pub reason: String,
    pub last_outcome: Option<String>,
    pub attempts: i64,
    /// When it died (unix ms).
    pub at: i64,
    /// The message's payload (JSON text, or the bridged body), or the invalid entry as it came.
    #[serde(skip)]
    pub payload: String,
    /// Where an invalid entry came from (`redis`, `nats`, `amqp`).
    pub source: Option<String>,
}

impl Store {
    /// Up to `limit` dead letters not yet published, oldest first.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<Unpublished>, StoreError> {
        let pool = self.pool().await?;
        let mut out = Vec::new();
        let rows = sqlx::query(
            "SELECT d.message_id, d.tenant, d.endpoint, m.event_type, d.dead_reason, d.last_outcome, \
             d.attempts, d.updated_at, m.payload FROM deliveries d JOIN messages m ON m.id = d.message_id \
             WHERE d.status = 'dead' AND d.dead_published = 0 ORDER BY d.updated_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        for r in rows {
            out.push(Unpublished {
                kind: "delivery",
                id: r.try_get(0)?,
                tenant: Some(r.try_get(1)?),
                endpoint: Some(r.try_get(2)?),
                event_type: Some(r.try_get(3)?),
                reason: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                last_outcome: r.try_get(5)?,
                attempts: r.try_get(6)?,
                at: r.try_get(7)?,
                payload: r.try_get(8)?,
                source: None,
            });
        }
        let rows = sqlx::query(
            "SELECT id, source, reason, raw, at FROM invalid_messages WHERE published = 0 \
             ORDER BY at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        for r in rows {
            out.push(Unpublished {
                kind: "invalid",
                id: r.try_get(0)?,
                tenant: None,
                endpoint: None,
                event_type: None,
                source: Some(r.try_get(1)?),
                reason: r.try_get(2)?,
                last_outcome: None,
                attempts: 0,
                payload: r.try_get(3)?,
                at: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    /// Marks one published (after the sink acknowledged it).
    pub async fn mark_published(&self, d: &Unpublished) -> Result<(), StoreError> {
        let pool = self.pool().await?;
        match d.kind {
            "delivery" => sqlx::query(
                "UPDATE deliveries SET dead_published = 1 WHERE message_id = $1 AND endpoint = $2 \
                     AND status = 'dead' AND updated_at = $3",
            )
            .bind(&d.id)
            .bind(d.endpoint.as_deref().unwrap_or_default())
            .bind(d.at)
            .execute(pool)
            .await?,
            _ => {
                sqlx::query("UPDATE invalid_messages SET published = 1 WHERE id = $1")
                    .bind(&d.id)
                    .execute(pool)
                    .await?
            }
        };
        Ok(())
    }
}
