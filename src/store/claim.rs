//! Claiming due deliveries, fairly and within each endpoint's limits, for the whole fleet.
//!
//! One claim is one transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: under an advisory
//! lock, so two nodes never both count the same free slot), which also reads the claimed
//! deliveries' messages. It takes, in this order:
//! - one probe per endpoint whose circuit breaker is open and whose cooldown has passed (the
//!   breaker's `open_until` moves past the lease, so no other node probes meanwhile);
//! - due deliveries round-robin across endpoints (the oldest due of each endpoint, then the
//!   second of each, …), the endpoint with the fewest attempts in flight on this node first
//!   (its slots are what a slow endpoint holds), so one endpoint's backlog or slowness never
//!   queues ahead of another's work;
//! - skipping endpoints at `max_in_flight` (leases held by any node), at the claiming node's
//!   share of its own slots (`node_room`), over their rate limit
//!   (GCRA on `endpoint_health.tat_us`), or with an open breaker; an `ordered` endpoint's
//!   delivery only when it heads its FIFO and nothing of that FIFO is in flight; nothing of
//!   a disabled endpoint.
//!
//! A delivery skipped is deferred, not attempted: its retry budget is not spent. The
//! fleet's leases are counted only when a candidate's endpoint has a `max_in_flight`: on
//! PostgreSQL that count reads every lease index entry since the last vacuum (a bitmap scan
//! does not skip dead ones), and was half of a claim's time under a backlog.
//!
//! On SQLite a claim is a batch of the writer thread (see `writer`): a claim runs a dozen
//! statements, each of which would otherwise cross sqlx's worker thread and back.

use std::collections::HashMap;
use std::sync::Arc;

use super::ledger::{stored_message, MESSAGE_COLUMNS};
use super::now_ms;
use super::writer::{block_on, columns, Db, Param};
use super::{param, placeholders, Backend, Claimed, Store, StoreError};

/// An endpoint's limits, from its config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Attempts in flight across the fleet.
    pub max_in_flight: Option<u32>,
    pub rate: Option<Rate>,
    /// Attempts the claiming node may still start to this endpoint (its share of the node's
    /// slots); `None`: no cap.
    pub node_room: Option<usize>,
    /// Attempts to this endpoint in flight on the claiming node.
    pub node_busy: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    /// Attempts that may go at once after a quiet spell.
    pub burst: u32,
}

/// PostgreSQL advisory lock key that serialises claims across the fleet.
const CLAIM_LOCK: i64 = 0x506f_7274_6375; // "Portcu"

/// An endpoint's first due deliveries (`$2` of them) in queue order, through the index
/// `deliveries_queue`: only an `ordered` delivery that heads its FIFO with nothing of that
/// FIFO in flight.
const HEAD: &str = "FROM deliveries x WHERE x.tenant = h.tenant AND x.endpoint = h.endpoint \
     AND x.status = 'pending' AND x.next_at <= $1 AND x.lease_until <= $1 \
     AND (x.fifo_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e \
          WHERE e.tenant = x.tenant AND e.endpoint = x.endpoint AND e.fifo_key = x.fifo_key \
          AND e.status = 'pending' AND (e.seq < x.seq OR e.lease_until > $1))) \
     ORDER BY x.next_at, x.seq LIMIT $2";

/// Which endpoints' heads are candidates (`h` is the endpoint's health row): a closed
/// breaker's, or an open one's whose cooldown has passed (a probe).
const DUE: &str = "(h.state = 'closed' OR (h.state = 'open' AND h.open_until <= $1))";
const ENABLED: &str =
    "NOT EXISTS (SELECT 1 FROM endpoint_state s WHERE s.tenant = h.tenant AND s.endpoint = h.endpoint)";

impl Store {
    /// Leases up to `limit` due deliveries for `lease_ms` to `owner`; also says whether
    /// some due delivery was left only because its endpoint had no `node_room`.
    pub async fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        limits: impl Fn(&str, &str) -> Limits + Send + 'static,
    ) -> Result<(Vec<Claimed>, bool), StoreError> {
        let lease = self.lease().await?;
        if let Some(writer) = &lease.writer {
            let _writing = lease.writes.take().await;
            let owner = owner.to_owned();
            return writer
                .transaction("NORMAL", move |db| {
                    block_on(claim_in(
                        db,
                        Backend::Sqlite,
                        &owner,
                        lease_ms,
                        limit,
                        &limits,
                    ))
                })
                .await;
        }
        let (_writing, mut tx) = lease.tx().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let claimed = claim_in(
            &mut super::writer::SqlxDb(&mut tx),
            Backend::Postgres,
            owner,
            lease_ms,
            limit,
            &limits,
        )
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }
}

/// A claim inside its transaction (PostgreSQL's holding the claim lock).
async fn claim_in(
    db: &mut impl Db,
    backend: Backend,
    owner: &str,
    lease_ms: i64,
    limit: i64,
    limits: &impl Fn(&str, &str) -> Limits,
) -> Result<(Vec<Claimed>, bool), StoreError> {
    // After the lock: a claim that waited for another node's sees that node's leases.
    let now = now_ms();
    let mut taken = Vec::new();
    let mut held_back = false;
    // One statement for both: a round trip less per claim on PostgreSQL.
    let (probes, due) = candidates(db, backend, now, limit).await?;
    // Probes first: one per endpoint whose cooldown has passed.
    for probe in probes.into_iter().take(limit.max(0) as usize) {
        let updated = db
            .execute(
                "UPDATE endpoint_health SET open_until = $1 WHERE tenant = $2 AND endpoint = $3 \
                 AND state = 'open' AND open_until <= $4",
                &[
                    (now + lease_ms).into(),
                    (&probe.tenant).into(),
                    (&probe.endpoint).into(),
                    now.into(),
                ],
            )
            .await?;
        if updated == 1 {
            taken.push(probe);
        }
    }
    let room = limit - taken.len() as i64;
    if room > 0 {
        // Four times the room: some candidates are skipped for their endpoint's limits.
        let mut pool: Vec<(Claimed, Limits)> = due
            .into_iter()
            .take((room * 4) as usize)
            .map(|c| {
                let l = limits(&c.tenant, &c.endpoint);
                (c, l)
            })
            .collect();
        let mut fleet = if pool.iter().any(|(_, l)| l.max_in_flight.is_some()) {
            in_flight(db, backend, now).await?
        } else {
            HashMap::new()
        };
        // Each rate-limited endpoint's theoretical arrival time, as this claim moves it.
        let mut rates: HashMap<(String, String), i64> = HashMap::new();
        // What this claim took per endpoint (against the node's share).
        let mut took: HashMap<(String, String), usize> = HashMap::new();
        let now_us = now * 1000;
        while (taken.len() as i64) < limit && !pool.is_empty() {
            // The least busy endpoint first: a slow endpoint holding this node's slots
            // yields each slot that frees to an endpoint with fewer in flight.
            let busy = |(c, l): &(Claimed, Limits)| {
                l.node_busy
                    + took
                        .get(&(c.tenant.clone(), c.endpoint.clone()))
                        .copied()
                        .unwrap_or(0)
            };
            let next = (0..pool.len()).min_by_key(|&i| busy(&pool[i])).unwrap_or(0);
            let (c, l) = pool.remove(next);
            let key = (c.tenant.clone(), c.endpoint.clone());
            if l.max_in_flight
                .is_some_and(|max| fleet.get(&key).copied().unwrap_or(0) >= i64::from(max))
            {
                continue;
            }
            if l.node_room
                .is_some_and(|room| took.get(&key).copied().unwrap_or(0) >= room)
            {
                held_back = true;
                continue;
            }
            if let Some(rate) = l.rate {
                let tat = match rates.get(&key) {
                    Some(t) => *t,
                    None => tat(db, &c.tenant, &c.endpoint).await?,
                };
                let interval = (1_000_000.0 / rate.per_second) as i64;
                let tolerance = interval * i64::from(rate.burst.max(1) - 1);
                let start = tat.max(now_us);
                rates.insert(key.clone(), tat);
                if start - now_us > tolerance {
                    continue;
                }
                rates.insert(key.clone(), start + interval);
            }
            *took.entry(key.clone()).or_insert(0) += 1;
            *fleet.entry(key).or_insert(0) += 1;
            taken.push(c);
        }
        for ((tenant, endpoint), tat) in &rates {
            set_tat(db, tenant, endpoint, *tat).await?;
        }
    }
    for chunk in taken.chunks(CHUNK) {
        lease(db, chunk, now + lease_ms, owner).await?;
    }
    let mut messages = HashMap::new();
    for chunk in taken.chunks(CHUNK) {
        for m in read_messages(db, chunk).await? {
            messages.insert(m.id.clone(), Arc::new(m));
        }
    }
    for c in &mut taken {
        c.message = messages.get(&c.message_id).cloned();
    }
    Ok((taken, held_back))
}

/// Rows per statement of the lease and message reads.
const CHUNK: usize = 200;

async fn lease(
    db: &mut impl Db,
    taken: &[Claimed],
    until: i64,
    owner: &str,
) -> Result<(), StoreError> {
    // The `message_id IN` lets both planners find the rows by primary key (SQLite would
    // scan the table for the row values alone).
    let n = taken.len();
    let sqlite = db.sqlite();
    let sql = format!(
        "UPDATE deliveries SET lease_until = {}, lease_owner = {} \
         WHERE message_id IN ({}) AND (message_id, endpoint) IN (VALUES {})",
        param(sqlite, 1),
        param(sqlite, 2),
        placeholders(sqlite, 2, n, 1),
        placeholders(sqlite, 2 + n, n, 2)
    );
    let mut params: Vec<Param<'_>> = Vec::with_capacity(2 + 3 * n);
    params.push(until.into());
    params.push(owner.into());
    params.extend(taken.iter().map(|c| Param::from(&c.message_id)));
    for c in taken {
        params.push((&c.message_id).into());
        params.push((&c.endpoint).into());
    }
    db.execute(&sql, &params).await?;
    Ok(())
}

async fn read_messages(
    db: &mut impl Db,
    taken: &[Claimed],
) -> Result<Vec<super::StoredMessage>, StoreError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({})",
        placeholders(db.sqlite(), 0, taken.len(), 1)
    );
    let params: Vec<Param<'_>> = taken.iter().map(|c| Param::from(&c.message_id)).collect();
    db.fetch(&sql, &params)
        .await?
        .into_iter()
        .map(stored_message)
        .collect()
}

/// The probes (the first due delivery of each endpoint whose breaker's cooldown has
/// passed) and up to `per_endpoint` due deliveries of each endpoint whose breaker is closed,
/// round-robin: every endpoint's first (oldest first), then every endpoint's second, ….
async fn candidates(
    db: &mut impl Db,
    backend: Backend,
    now: i64,
    per_endpoint: i64,
) -> Result<(Vec<Claimed>, Vec<Claimed>), StoreError> {
    // One index range per endpoint (the endpoints are the health rows, a few per tenant):
    // PostgreSQL joins each laterally; SQLite, which has no LATERAL, by rowid, with the
    // endpoints as the outer loop (its CROSS JOIN keeps the order it is written in; left
    // to itself the planner walks every delivery and runs the head query for each).
    let sql = match backend {
        Backend::Postgres => format!(
            "SELECT d.message_id, d.tenant, d.endpoint, d.attempts, d.budget_from, d.next_at, \
             h.state FROM endpoint_health h CROSS JOIN LATERAL (SELECT x.message_id, x.tenant, \
             x.endpoint, x.attempts, x.budget_from, x.next_at, x.seq {HEAD}) d \
             WHERE {DUE} AND {ENABLED} ORDER BY d.tenant, d.endpoint, d.next_at, d.seq"
        ),
        Backend::Sqlite => format!(
            "SELECT d.message_id, d.tenant, d.endpoint, d.attempts, d.budget_from, d.next_at, \
             h.state FROM endpoint_health h CROSS JOIN deliveries d ON d.rowid IN \
             (SELECT x.rowid {HEAD}) WHERE {DUE} AND {ENABLED} \
             ORDER BY h.tenant, h.endpoint, d.next_at, d.seq"
        ),
    };
    let rows = db.fetch(&sql, &[now.into(), per_endpoint.into()]).await?;
    let mut probes = Vec::new();
    // (rank within its endpoint, due at, delivery)
    let mut ranked = Vec::with_capacity(rows.len());
    let mut rank = 0;
    let mut last: Option<(String, String)> = None;
    for r in rows {
        let [message_id, tenant, endpoint, attempts, budget_from, next_at, state] = columns(r)?;
        let c = Claimed {
            message_id: message_id.text()?,
            tenant: tenant.text()?,
            endpoint: endpoint.text()?,
            attempts: attempts.int()?,
            budget_from: budget_from.int()?,
            message: None,
        };
        let next_at = next_at.int()?;
        let key = (c.tenant.clone(), c.endpoint.clone());
        rank = if last.as_ref() == Some(&key) {
            rank + 1
        } else {
            0
        };
        last = Some(key);
        if state.text()? == "open" {
            if rank == 0 {
                probes.push(c);
            }
        } else {
            ranked.push((rank, next_at, c));
        }
    }
    ranked.sort_by_key(|(rank, next_at, _)| (*rank, *next_at));
    Ok((probes, ranked.into_iter().map(|(_, _, c)| c).collect()))
}

/// Leases held now, per endpoint, by any node.
async fn in_flight(
    db: &mut impl Db,
    backend: Backend,
    now: i64,
) -> Result<HashMap<(String, String), i64>, StoreError> {
    // The leases, not the whole queue: SQLite's planner (no statistics) would rather walk
    // `deliveries_queue` for the GROUP BY, which reads every pending delivery.
    let index = match backend {
        Backend::Sqlite => " INDEXED BY deliveries_leased",
        Backend::Postgres => "",
    };
    let sql = format!(
        "SELECT tenant, endpoint, COUNT(*) FROM deliveries{index} \
         WHERE lease_until > $1 AND status = 'pending' GROUP BY tenant, endpoint"
    );
    db.fetch(&sql, &[now.into()])
        .await?
        .into_iter()
        .map(|r| {
            let [tenant, endpoint, n] = columns(r)?;
            Ok(((tenant.text()?, endpoint.text()?), n.int()?))
        })
        .collect()
}

async fn tat(db: &mut impl Db, tenant: &str, endpoint: &str) -> Result<i64, StoreError> {
    let rows = db
        .fetch(
            "SELECT tat_us FROM endpoint_health WHERE tenant = $1 AND endpoint = $2",
            &[tenant.into(), endpoint.into()],
        )
        .await?;
    match rows.into_iter().next() {
        Some(r) => {
            let [tat] = columns(r)?;
            tat.int()
        }
        None => Ok(0),
    }
}

async fn set_tat(
    db: &mut impl Db,
    tenant: &str,
    endpoint: &str,
    tat: i64,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO endpoint_health (tenant, endpoint, tat_us) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant, endpoint) DO UPDATE SET tat_us = excluded.tat_us",
        &[tenant.into(), endpoint.into(), tat.into()],
    )
    .await?;
    Ok(())
}
