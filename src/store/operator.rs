//! What `portcullis outbound status` and `endpoint enable|disable` read and change.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// One endpoint's state in the ledger.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EndpointStatus {
    pub tenant: String,
    pub endpoint: String,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    /// `closed`, or `open` (attempts deferred until `breaker_until`, then a probe).
    pub breaker: String,
    pub breaker_until: Option<i64>,
    /// Failed attempts in a row.
    pub failures: i64,
    pub last_success: Option<i64>,
    pub last_failure: Option<i64>,
    /// Why it is disabled (`gone`: it answered 410; `disabled`: an operator), if it is.
    pub disabled: Option<String>,
}

impl Store {
    /// Every endpoint the ledger knows of, by (tenant, endpoint).
    pub async fn endpoint_status(
        &self,
    ) -> Result<BTreeMap<(String, String), EndpointStatus>, StoreError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let mut all: BTreeMap<(String, String), EndpointStatus> = BTreeMap::new();
        let entry = |all: &mut BTreeMap<_, EndpointStatus>, t: String, e: String| {
            all.entry((t.clone(), e.clone()))
                .or_insert_with(|| EndpointStatus {
                    tenant: t,
                    endpoint: e,
                    breaker: "closed".into(),
                    ..Default::default()
                })
                .clone()
        };
        let rows = sqlx::query(
            "SELECT tenant, endpoint, \
             SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN status = 'pending' AND lease_until > $1 THEN 1 ELSE 0 END), \
             SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) \
             FROM deliveries GROUP BY tenant, endpoint",
        )
        .bind(now)
        .fetch_all(pool)
        .await?;
        for r in rows {
            let mut s = entry(&mut all, r.try_get(0)?, r.try_get(1)?);
            s.pending = r.try_get::<Option<i64>, _>(2)?.unwrap_or(0);
            s.in_flight = r.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
            s.dead = r.try_get::<Option<i64>, _>(4)?.unwrap_or(0);
            all.insert((s.tenant.clone(), s.endpoint.clone()), s);
        }
        let rows = sqlx::query(
            "SELECT tenant, endpoint, state, open_until, failures, last_success, last_failure \
             FROM endpoint_health",
        )
        .fetch_all(pool)
        .await?;
        for r in rows {
            let mut s = entry(&mut all, r.try_get(0)?, r.try_get(1)?);
            s.breaker = r.try_get(2)?;
            s.breaker_until = (s.breaker == "open").then(|| r.try_get(3)).transpose()?;
            s.failures = r.try_get(4)?;
            s.last_success = r.try_get(5)?;
            s.last_failure = r.try_get(6)?;
            all.insert((s.tenant.clone(), s.endpoint.clone()), s);
        }
        let rows = sqlx::query("SELECT tenant, endpoint, reason FROM endpoint_state")
            .fetch_all(pool)
            .await?;
        for r in rows {
            let mut s = entry(&mut all, r.try_get(0)?, r.try_get(1)?);
            s.disabled = Some(r.try_get(2)?);
            all.insert((s.tenant.clone(), s.endpoint.clone()), s);
        }
        Ok(all)
    }

    /// Lets a disabled endpoint take deliveries again (its waiting ones go out). False when
    /// it was not disabled.
    pub async fn enable_endpoint(&self, tenant: &str, endpoint: &str) -> Result<bool, StoreError> {
        let pool = self.pool().await?;
        let done = sqlx::query("DELETE FROM endpoint_state WHERE tenant = $1 AND endpoint = $2")
            .bind(tenant)
            .bind(endpoint)
            .execute(pool)
            .await?
            .rows_affected();
        Ok(done == 1)
    }
}
