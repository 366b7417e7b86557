//! Keys of `url-key` filters with `keys: store` (`/v1/filters/{name}/keys`): their hashes,
//! state and use counts. A change bumps the catalog version like an endpoint's, so every
//! node reloads the keys within its poll.

use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// A key as lists show it (never the key itself).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub filter: String,
    pub hint: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    pub previous_until: Option<i64>,
    pub events: i64,
    pub last_used_at: Option<i64>,
}

/// An enabled key's hashes (hex), for the gateway.
pub struct ActiveKey {
    pub id: String,
    pub filter: String,
    pub hashes: Vec<String>,
    /// When the previous value stops opening it.
    pub previous_until: Option<i64>,
}

const COLUMNS: &str =
    "id, filter, hint, created_at, disabled_at, previous_until, events, last_used_at";

fn info(r: &sqlx::any::AnyRow) -> Result<KeyInfo, sqlx::Error> {
    Ok(KeyInfo {
        id: r.try_get(0)?,
        filter: r.try_get(1)?,
        hint: r.try_get(2)?,
        created_at: r.try_get(3)?,
        disabled_at: r.try_get(4)?,
        previous_until: r.try_get(5)?,
        events: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
    })
}

impl Store {
    pub async fn create_key(
        &self,
        filter: &str,
        hash: &str,
        hint: &str,
    ) -> Result<KeyInfo, StoreError> {
        let id = format!("key_{:024x}", rand::random::<u128>() >> 32);
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        sqlx::query(
            "INSERT INTO inbound_keys (id, filter, hash, hint, created_at, events) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(&id)
        .bind(filter)
        .bind(hash)
        .bind(hint)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.key(filter, &id)
            .await?
            .ok_or_else(|| StoreError::Unavailable("key vanished after its commit".into()))
    }

    pub async fn keys(&self, filter: &str) -> Result<Vec<KeyInfo>, StoreError> {
        let pool = self.pool().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM inbound_keys WHERE filter = $1 ORDER BY created_at, id"
        ))
        .bind(filter)
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().map(info).collect::<Result<_, _>>()?)
    }

    pub async fn key(&self, filter: &str, id: &str) -> Result<Option<KeyInfo>, StoreError> {
        let pool = self.pool().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM inbound_keys WHERE filter = $1 AND id = $2"
        ))
        .bind(filter)
        .bind(id)
        .fetch_optional(pool)
        .await?;
        Ok(row.as_ref().map(info).transpose()?)
    }

    /// Disables (or enables) a key at once; false when there is no such key.
    pub async fn set_key_disabled(
        &self,
        filter: &str,
        id: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let at = disabled.then(now_ms);
        let done =
            sqlx::query("UPDATE inbound_keys SET disabled_at = $1 WHERE filter = $2 AND id = $3")
                .bind(at)
                .bind(filter)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Gives a key a new value; the old one keeps opening it for `grace_ms` (0: stops at
    /// once). False when there is no such key.
    pub async fn regenerate_key(
        &self,
        filter: &str,
        id: &str,
        hash: &str,
        hint: &str,
        grace_ms: i64,
    ) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        // (`previous_hash = hash` reads the value before this update.)
        let query = if grace_ms > 0 {
            sqlx::query(
                "UPDATE inbound_keys SET previous_hash = hash, previous_until = $1, hash = $2, \
                 hint = $3 WHERE filter = $4 AND id = $5",
            )
            .bind(now_ms() + grace_ms)
        } else {
            sqlx::query(
                "UPDATE inbound_keys SET previous_hash = NULL, previous_until = NULL, hash = $1, \
                 hint = $2 WHERE filter = $3 AND id = $4",
            )
        };
        let done = query
            .bind(hash)
            .bind(hint)
            .bind(filter)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Every enabled key with the values that open it now.
    pub async fn active_keys(&self) -> Result<Vec<ActiveKey>, StoreError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, filter, hash, previous_hash, previous_until FROM inbound_keys \
             WHERE disabled_at IS NULL",
        )
        .fetch_all(pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut hashes = vec![r.try_get::<String, _>(2)?];
            let previous: Option<String> = r.try_get(3)?;
            let until: Option<i64> = r.try_get(4)?;
            let live = until.filter(|u| *u > now);
            if let (Some(p), Some(_)) = (previous, live) {
                hashes.push(p);
            }
            out.push(ActiveKey {
                id: r.try_get(0)?,
                filter: r.try_get(1)?,
                hashes,
                previous_until: live,
            });
        }
        Ok(out)
    }

    /// Adds uses (count, last unix ms) to the keys' statistics.
    pub async fn add_key_uses(
        &self,
        uses: &std::collections::HashMap<String, (u64, i64)>,
    ) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let (_writing, mut tx) = self.write_tx().await?;
        for (id, (count, last)) in uses {
            sqlx::query(
                "UPDATE inbound_keys SET events = events + $1, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 ELSE last_used_at END \
                 WHERE id = $3",
            )
            .bind(*count as i64)
            .bind(*last)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
