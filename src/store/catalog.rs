//! Endpoints created through the management API: their specs, their sealed secrets (see
//! `sealed`) and the version every node polls to reload them.
//!
//! Every change runs in one transaction that first bumps `catalog_version`: on PostgreSQL
//! that row's lock orders concurrent changes, so the per-tenant limit cannot be overshot by
//! two creates at once, and a node that sees the new version reads the change whole.

use sqlx::{Any, Row, Transaction};

use super::sealed::{self, Key};
use super::{now_ms, Backend, Store, StoreError, Writing};
use crate::config::secrets::Secret;

/// A stored secret's public side.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    pub id: String,
    pub fingerprint: String,
    pub created_at: i64,
    /// When a rotated-out secret stops signing (`None`: current).
    pub expires_at: Option<i64>,
}

/// An endpoint as the store holds it (secrets by their public side only).
#[derive(Debug, Clone)]
pub struct StoredEndpoint {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// The endpoint's keys, as JSON text.
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Newest first; expired ones left out.
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store.master_key is not set: endpoint secrets cannot be stored without it")]
    NoMasterKey,
    #[error("tenant `{0}` has {1} endpoints, the most it may have")]
    Limit(String, usize),
    #[error("tenant `{0}` already has an endpoint named `{1}`")]
    Taken(String, String),
    /// A data key this node cannot unwrap, or a secret that does not open.
    #[error("{0}")]
    Keys(String),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> CatalogError {
        CatalogError::Store(e.into())
    }
}

/// A fresh id with a prefix (`ep_`, `sec_`): 96 random bits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

impl Store {
    /// A write transaction on the durable pool (SQLite: the node's write lock first).
    pub(super) async fn write_tx(
        &self,
    ) -> Result<(Writing, Transaction<'static, Any>), StoreError> {
        let pool = self.pool().await?;
        Ok(match self.backend {
            Backend::Sqlite => {
                let writing = self.writes.take().await;
                (writing, pool.begin_with("BEGIN IMMEDIATE").await?)
            }
            Backend::Postgres => (None, pool.begin().await?),
        })
    }

    pub(super) async fn bump(tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
        sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The catalog's version: it changes with every change of a stored endpoint.
    pub async fn catalog_version(&self) -> Result<i64, StoreError> {
        let pool = self.pool().await?;
        let row = sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
            .fetch_one(pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The stored endpoints (of one tenant, or all), by tenant then name.
    pub async fn stored_endpoints(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEndpoint>, StoreError> {
        let pool = self.pool().await?;
        let rows = match tenant {
            Some(t) => {
                sqlx::query(
                    "SELECT id, tenant, name, spec, created_at, updated_at FROM api_endpoints \
                     WHERE tenant = $1 ORDER BY tenant, name",
                )
                .bind(t)
                .fetch_all(pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, tenant, name, spec, created_at, updated_at FROM api_endpoints \
                     ORDER BY tenant, name",
                )
                .fetch_all(pool)
                .await?
            }
        };
        let mut list = Vec::with_capacity(rows.len());
        for r in rows {
            list.push(StoredEndpoint {
                id: r.try_get(0)?,
                tenant: r.try_get(1)?,
                name: r.try_get(2)?,
                spec: r.try_get(3)?,
                created_at: r.try_get(4)?,
                updated_at: r.try_get(5)?,
                secrets: Vec::new(),
            });
        }
        let now = now_ms();
        let secrets = sqlx::query(
            "SELECT endpoint_id, id, fingerprint, created_at, expires_at FROM endpoint_secrets \
             WHERE expires_at IS NULL OR expires_at > $1 ORDER BY created_at DESC, id",
        )
        .bind(now)
        .fetch_all(pool)
        .await?;
        for r in secrets {
            let owner: String = r.try_get(0)?;
            if let Some(e) = list.iter_mut().find(|e| e.id == owner) {
                e.secrets.push(SecretInfo {
                    id: r.try_get(1)?,
                    fingerprint: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    expires_at: r.try_get(4)?,
                });
            }
        }
        Ok(list)
    }

    /// One stored endpoint by its id.
    pub async fn stored_endpoint(&self, id: &str) -> Result<Option<StoredEndpoint>, StoreError> {
        let pool = self.pool().await?;
        let Some(row) = sqlx::query("SELECT tenant FROM api_endpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
        else {
            return Ok(None);
        };
        let tenant: String = row.try_get(0)?;
        Ok(self
            .stored_endpoints(Some(&tenant))
            .await?
            .into_iter()
            .find(|e| e.id == id))
    }

    /// Every stored endpoint with its signing secrets opened (newest first), for the
    /// dispatcher's catalog.
    pub async fn unsealed_endpoints(
        &self,
    ) -> Result<Vec<(StoredEndpoint, Vec<Secret>)>, CatalogError> {
        let list = self.stored_endpoints(None).await?;
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys.as_ref().ok_or_else(|| {
            CatalogError::Keys(format!(
                "the store holds {} endpoints created through the API, and store.master_key is not set: their secrets cannot be opened",
                list.len()
            ))
        })?;
        let pool = self.pool().await?;
        let mut data_keys: std::collections::HashMap<String, Key> = Default::default();
        for r in sqlx::query("SELECT tenant, wrapped, master_id FROM tenant_keys")
            .fetch_all(pool)
            .await?
        {
            let tenant: String = r.try_get(0)?;
            let key = unwrap_data_key(
                keys,
                &tenant,
                &r.try_get::<String, _>(1)?,
                &r.try_get::<String, _>(2)?,
            )?;
            data_keys.insert(tenant, key);
        }
        let sealed: std::collections::HashMap<String, String> =
            sqlx::query("SELECT id, sealed FROM endpoint_secrets")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let mut out = Vec::with_capacity(list.len());
        for e in list {
            let key = data_keys.get(&e.tenant).ok_or_else(|| {
                CatalogError::Keys(format!(
                    "tenant `{}` has no data key in the store",
                    e.tenant
                ))
            })?;
            let mut secrets = Vec::new();
            for s in &e.secrets {
                let plain = sealed
                    .get(&s.id)
                    .and_then(|text| key.open(text, &sealed::secret_aad(&e.tenant, &e.id, &s.id)))
                    .ok_or_else(|| {
                        CatalogError::Keys(format!(
                            "secret {} of endpoint {} does not open under its tenant's data key (altered in the store?)",
                            s.id, e.id
                        ))
                    })?;
                secrets.push(Secret(plain));
            }
            out.push((e, secrets));
        }
        Ok(out)
    }

    /// The tenant's data key, made (and wrapped by the current master key) if it has none.
    async fn data_key(
        &self,
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
    ) -> Result<Key, CatalogError> {
        let keys = self.keys.as_ref().ok_or(CatalogError::NoMasterKey)?;
        let row = sqlx::query("SELECT wrapped, master_id FROM tenant_keys WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(r) = row {
            return unwrap_data_key(
                keys,
                tenant,
                &r.try_get::<String, _>(0)?,
                &r.try_get::<String, _>(1)?,
            );
        }
        let key = Key::random();
        sqlx::query(
            "INSERT INTO tenant_keys (tenant, wrapped, master_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(keys.current.wrap_key(&key, &sealed::data_key_aad(tenant)))
        .bind(keys.current.id())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(key)
    }

    async fn add_secret(
        &self,
        tx: &mut Transaction<'static, Any>,
        tenant: &str,
        endpoint_id: &str,
        secret: &[u8],
        now: i64,
    ) -> Result<(), CatalogError> {
        let key = self.data_key(tx, tenant).await?;
        let id = new_id("sec_");
        sqlx::query(
            "INSERT INTO endpoint_secrets (id, endpoint_id, sealed, fingerprint, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&id)
        .bind(endpoint_id)
        .bind(key.seal(secret, &sealed::secret_aad(tenant, endpoint_id, &id)))
        .bind(sealed::fingerprint(secret))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Stores a new endpoint of `tenant` with its first secret, unless the tenant has
    /// `max` stored endpoints already.
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        name: &str,
        spec: &str,
        secret: &[u8],
        max: usize,
    ) -> Result<StoredEndpoint, CatalogError> {
        if self.keys.is_none() {
            return Err(CatalogError::NoMasterKey);
        }
        let id = new_id("ep_");
        let now = now_ms();
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM api_endpoints WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if count as usize >= max {
            return Err(CatalogError::Limit(tenant.into(), max));
        }
        let taken = sqlx::query("SELECT 1 FROM api_endpoints WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(CatalogError::Taken(tenant.into(), name.into()));
        }
        sqlx::query(
            "INSERT INTO api_endpoints (id, tenant, name, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(spec)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.add_secret(&mut tx, tenant, &id, secret, now).await?;
        tx.commit().await?;
        Ok(self
            .stored_endpoint(&id)
            .await?
            .ok_or_else(|| StoreError::Unavailable("endpoint vanished after its commit".into()))?)
    }

    /// Replaces an endpoint's spec; `None` when there is no such endpoint.
    pub async fn update_endpoint(
        &self,
        id: &str,
        spec: &str,
    ) -> Result<Option<StoredEndpoint>, CatalogError> {
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let done = sqlx::query("UPDATE api_endpoints SET spec = $1, updated_at = $2 WHERE id = $3")
            .bind(spec)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(self.stored_endpoint(id).await?)
    }

    /// Removes an endpoint and its secrets; its waiting deliveries become dead letters
    /// `endpoint_removed` at once (a later endpoint of the same name does not inherit them,
    /// nor a disabled state). Leased ones end with their attempt. False when there was none.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, CatalogError> {
        let now = now_ms();
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let Some(row) = sqlx::query("SELECT tenant, name FROM api_endpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let (tenant, name): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        for statement in [
            "DELETE FROM api_endpoints WHERE id = $1",
            "DELETE FROM endpoint_secrets WHERE endpoint_id = $1",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM endpoint_state WHERE tenant = $1 AND endpoint = $2")
            .bind(&tenant)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE deliveries SET status = 'dead', dead_reason = 'endpoint_removed', updated_at = $1 \
             WHERE tenant = $2 AND endpoint = $3 AND status = 'pending' AND lease_until < $1",
        )
        .bind(now)
        .bind(&tenant)
        .bind(&name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives an endpoint a new current secret; the ones it had keep signing for
    /// `overlap_ms` (or until they expire, if sooner). `None` when there is no such endpoint.
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: &[u8],
        overlap_ms: i64,
    ) -> Result<Option<StoredEndpoint>, CatalogError> {
        if self.keys.is_none() {
            return Err(CatalogError::NoMasterKey);
        }
        let now = now_ms();
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let Some(row) = sqlx::query("SELECT tenant FROM api_endpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let tenant: String = row.try_get(0)?;
        let until = now + overlap_ms;
        sqlx::query(
            "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE endpoint_secrets SET expires_at = $1 WHERE endpoint_id = $2 \
             AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(until)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE api_endpoints SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.add_secret(&mut tx, &tenant, id, secret, now).await?;
        tx.commit().await?;
        Ok(self.stored_endpoint(id).await?)
    }

    /// Re-wraps every data key under the current master key: (re-wrapped, already current).
    pub async fn rewrap_data_keys(&self) -> Result<(usize, usize), CatalogError> {
        let keys = self.keys.as_ref().ok_or(CatalogError::NoMasterKey)?;
        let current = keys.current.id();
        let (_writing, mut tx) = self.write_tx().await?;
        Self::bump(&mut tx).await?;
        let rows = sqlx::query("SELECT tenant, wrapped, master_id FROM tenant_keys")
            .fetch_all(&mut *tx)
            .await?;
        let (mut rewrapped, mut kept) = (0, 0);
        for r in rows {
            let (tenant, wrapped, master_id): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if master_id == current {
                kept += 1;
                continue;
            }
            let key = unwrap_data_key(keys, &tenant, &wrapped, &master_id)?;
            sqlx::query("UPDATE tenant_keys SET wrapped = $1, master_id = $2 WHERE tenant = $3")
                .bind(keys.current.wrap_key(&key, &sealed::data_key_aad(&tenant)))
                .bind(&current)
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
            rewrapped += 1;
        }
        tx.commit().await?;
        Ok((rewrapped, kept))
    }
}

fn unwrap_data_key(
    keys: &sealed::Keyring,
    tenant: &str,
    wrapped: &str,
    master_id: &str,
) -> Result<Key, CatalogError> {
    let master = keys.by_id(master_id).ok_or_else(|| {
        CatalogError::Keys(format!(
            "the data key of tenant `{tenant}` is wrapped by master key {master_id}, which this node does not hold (its store.master_key is {}): set previous_master_key to that key, or restore it",
            keys.current.id()
        ))
    })?;
    master
        .unwrap_key(wrapped, &sealed::data_key_aad(tenant))
        .ok_or_else(|| {
            CatalogError::Keys(format!(
                "the data key of tenant `{tenant}` does not unwrap under master key {master_id} (altered in the store?)"
            ))
        })
}
