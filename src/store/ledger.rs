//! The ledger's queries: enqueue (group-committed), the operator's and the worker's reads.
//!
//! Enqueues go through one committer task that takes every message waiting and writes them
//! in one transaction: under load many API calls share one commit (one fsync on SQLite)
//! instead of queueing for their own, and each caller is answered only after the commit.
//! On SQLite the batch runs on the writer thread (see `writer`), on PostgreSQL through sqlx.
//!
//! The hand-off: an enqueue may ask for some of its deliveries to be leased, in the same
//! transaction, to the node's own worker (it has a free slot for them), which then attempts
//! them at once instead of finding them with a claim. Only while the endpoint's breaker is
//! closed; the lease is the same as a claim's, so a node that dies before the attempt only
//! delays it until another node's claim takes the delivery over.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use sqlx::AnyPool;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::writer::{block_on, columns, Cell, Db, Param, SqliteWriter, SqlxDb};
use super::{now_ms, param, placeholders, Store, StoreError, Writes};

/// Most messages written in one transaction.
const MAX_BATCH: usize = 512;

/// A message as a source hands it over, with the endpoints it goes to.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant: String,
    /// The sender's id (the idempotency key).
    pub event_id: String,
    pub event_type: String,
    /// The payload's exact bytes (JSON text).
    pub payload: String,
    /// `None`: application/json.
    pub content_type: Option<String>,
    pub ordering_key: Option<String>,
    pub source: &'static str,
    pub endpoints: Vec<Route>,
    /// How long (tenant, event_id) names this message.
    pub idempotency_ms: i64,
}

/// An endpoint a message goes to.
#[derive(Debug, Clone)]
pub struct Route {
    pub endpoint: String,
    /// FIFO: delivered one at a time in enqueue order (per `ordering_key` when it has one).
    pub ordered: bool,
}

/// The circuit breaker's settings (the same for every endpoint).
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    /// Consecutive failed attempts that open it.
    pub failures: i64,
    /// How long it stays open before one probe.
    pub cooldown_ms: i64,
}

/// How recording an attempt moved the endpoint's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMove {
    Unchanged,
    Opened,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        message_id: String,
        endpoints: usize,
        /// Of those, the deliveries leased to the enqueue's hand-off.
        handed_off: usize,
    },
    Duplicate {
        message_id: String,
    },
}

/// A delivery a worker holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message_id: String,
    pub tenant: String,
    pub endpoint: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Of those, the ones made before its last replay (they do not count against the budget).
    pub budget_from: i64,
    /// The message, read with the claim (`None`: purged meanwhile).
    pub message: Option<std::sync::Arc<StoredMessage>>,
}

impl Claimed {
    /// Which attempt of its retry budget this one is (from 1).
    pub fn budget_attempt(&self) -> i64 {
        self.attempts - self.budget_from + 1
    }
}

#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: String,
    pub tenant: String,
    pub event_type: String,
    pub payload: String,
    /// `None`: application/json.
    pub content_type: Option<String>,
    pub created_at: i64,
}

/// What an attempt ended in, and what happens next.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub preview: Option<String>,
    pub next: Next,
}

#[derive(Debug, Clone)]
pub enum Next {
    Delivered,
    RetryAt(i64),
    Dead(&'static str),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub endpoint: String,
    pub attempt: i64,
    pub at: i64,
    pub outcome: String,
    pub status: Option<i64>,
    pub latency_ms: i64,
    pub preview: Option<String>,
}

/// A delivery given up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub tenant: String,
    pub endpoint: String,
    pub reason: String,
    pub last_outcome: Option<String>,
    pub attempts: i64,
    /// When it died (unix ms).
    pub at: i64,
}

/// What [`stored_message`] reads, in its order.
pub(super) const MESSAGE_COLUMNS: &str =
    "id, tenant, event_type, payload, created_at, content_type";

pub(super) fn stored_message(row: Vec<Cell>) -> Result<StoredMessage, StoreError> {
    let [id, tenant, event_type, payload, created_at, content_type] = columns(row)?;
    Ok(StoredMessage {
        id: id.text()?,
        tenant: tenant.text()?,
        event_type: event_type.text()?,
        payload: payload.text()?,
        created_at: created_at.int()?,
        content_type: match content_type {
            Cell::Null => None,
            other => Some(other.text()?),
        },
    })
}

/// Deliveries of one message to lease, in its enqueue transaction, to the node's worker.
pub struct Handoff {
    pub owner: std::sync::Arc<str>,
    pub lease_ms: i64,
    /// Endpoints of the message's routes the worker has a slot for.
    pub endpoints: Vec<String>,
    /// Called after the commit with the deliveries leased (not those whose endpoint's
    /// breaker is open or that the endpoint state stopped); dropped uncalled if none was.
    pub then: Box<dyn FnOnce(Vec<Claimed>) + Send + Sync>,
}

struct Job {
    entry: Entry,
    then: Option<Then>,
    done: oneshot::Sender<Result<Enqueued, String>>,
}

/// [`Handoff::then`].
type Then = Box<dyn FnOnce(Vec<Claimed>) + Send + Sync>;

/// What a batch writes for one job.
struct Entry {
    message: NewMessage,
    /// The hand-off's lease: (owner, lease_ms, endpoints).
    lease: Option<(std::sync::Arc<str>, i64, Vec<String>)>,
}

#[derive(Default)]
pub struct Committer {
    tx: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Store {
    /// Writes the message and its deliveries; returns once committed (or says it was not).
    /// With `handoff`, some deliveries are leased to the node's worker (see the module doc).
    pub async fn enqueue(
        &self,
        message: NewMessage,
        handoff: Option<Handoff>,
    ) -> Result<Enqueued, StoreError> {
        let pool = self.pool().await?.clone();
        let writer = self.sqlite_writer().await?;
        let tx = self.committer.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let sqlite = writer.map(|w| (self.writes.clone(), w));
            tokio::spawn(commit_loop(pool, sqlite, rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        let (lease, then) = match handoff {
            Some(h) => (Some((h.owner, h.lease_ms, h.endpoints)), Some(h.then)),
            None => (None, None),
        };
        tx.send(Job {
            entry: Entry { message, lease },
            then,
            done,
        })
        .map_err(|_| StoreError::Unavailable("the committer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the committer stopped".into()))?
            .map_err(StoreError::Unavailable)
    }

    /// Stops an endpoint: no new deliveries, and its pending ones are not claimed. With
    /// `gone` (a 410) they become dead letters `endpoint_gone` (they would meet the same
    /// answer); an operator's `disabled` leaves them waiting for `enable`.
    pub async fn disable_endpoint(
        &self,
        tenant: &str,
        endpoint: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let mut tx = pool.begin().await?;
        let added = sqlx::query(
            "INSERT INTO endpoint_state (tenant, endpoint, disabled_at, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, endpoint) DO NOTHING",
        )
        .bind(tenant)
        .bind(endpoint)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if reason == "gone" {
            sqlx::query(
                "UPDATE deliveries SET status = 'dead', dead_reason = 'endpoint_gone', updated_at = $1 \
                 WHERE tenant = $2 AND endpoint = $3 AND status = 'pending' AND lease_until < $1",
            )
            .bind(now)
            .bind(tenant)
            .bind(endpoint)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added == 1)
    }

    /// Dead deliveries, oldest first, optionally of one tenant / endpoint, dead since `since`.
    pub async fn dead_letters(
        &self,
        tenant: Option<&str>,
        endpoint: Option<&str>,
        since: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let pool = self.pool().await?;
        let rows = sqlx::query(
            "SELECT message_id, tenant, endpoint, dead_reason, last_outcome, attempts, updated_at \
             FROM deliveries WHERE status = 'dead' AND updated_at >= $1 \
             AND ($2 = '' OR tenant = $2) AND ($3 = '' OR endpoint = $3) \
             ORDER BY updated_at, message_id",
        )
        .bind(since)
        .bind(tenant.unwrap_or(""))
        .bind(endpoint.unwrap_or(""))
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    message_id: r.try_get(0)?,
                    tenant: r.try_get(1)?,
                    endpoint: r.try_get(2)?,
                    reason: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                    last_outcome: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    at: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Puts one dead delivery back in the queue, due now, with a fresh retry budget (same
    /// message id, so the same `webhook-id`). False when it was not dead.
    pub async fn replay(&self, message_id: &str, endpoint: &str) -> Result<bool, StoreError> {
        let pool = self.pool().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE deliveries SET status = 'pending', budget_from = attempts, next_at = $1, \
             lease_until = 0, lease_owner = NULL, dead_reason = NULL, updated_at = $1, dead_published = 0 \
             WHERE message_id = $2 AND endpoint = $3 AND status = 'dead'",
        )
        .bind(now)
        .bind(message_id)
        .bind(endpoint)
        .execute(pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Keeps an entry a source could not take as a message.
    pub async fn record_invalid(
        &self,
        source: &str,
        reason: &str,
        detail: &str,
        raw: &str,
    ) -> Result<(), StoreError> {
        let pool = self.pool().await?;
        sqlx::query(
            "INSERT INTO invalid_messages (id, source, reason, detail, raw, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_message_id().replacen("msg_", "inv_", 1))
        .bind(source)
        .bind(reason)
        .bind(detail)
        .bind(raw)
        .bind(now_ms())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Every attempt of a message, oldest first.
    pub async fn attempts(&self, message_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let pool = self.pool().await?;
        let rows = sqlx::query(
            "SELECT endpoint, attempt, at, outcome, status, latency_ms, preview FROM attempts \
             WHERE message_id = $1 ORDER BY at, attempt",
        )
        .bind(message_id)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    endpoint: r.try_get(0)?,
                    attempt: r.try_get(1)?,
                    at: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                    status: r.try_get(4)?,
                    latency_ms: r.try_get(5)?,
                    preview: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// (pending deliveries, open breakers), fleet-wide.
    pub async fn gauges(&self) -> Result<(i64, i64), StoreError> {
        let pool = self.pool().await?;
        let pending: i64 = sqlx::query("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        let open: i64 = sqlx::query("SELECT COUNT(*) FROM endpoint_health WHERE state = 'open'")
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        Ok((pending, open))
    }

    /// A delivery's state: (status, attempts, dead_reason).
    pub async fn delivery(
        &self,
        message_id: &str,
        endpoint: &str,
    ) -> Result<Option<(String, i64, Option<String>)>, StoreError> {
        let pool = self.pool().await?;
        let row = sqlx::query(
            "SELECT status, attempts, dead_reason FROM deliveries WHERE message_id = $1 AND endpoint = $2",
        )
        .bind(message_id)
        .bind(endpoint)
        .fetch_optional(pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
            .map_err(|e: sqlx::Error| e.into())
    }
}

async fn commit_loop(
    pool: AnyPool,
    sqlite: Option<(Writes, std::sync::Arc<SqliteWriter>)>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (entries, replies): (Vec<Entry>, Vec<_>) = std::mem::take(&mut batch)
            .into_iter()
            .map(|j| (j.entry, (j.then, j.done)))
            .unzip();
        let written = match &sqlite {
            Some((writes, writer)) => {
                let _writing = writes.take().await;
                writer
                    .transaction("FULL", move |db| block_on(write_batch(db, &entries)))
                    .await
            }
            None => commit_postgres(&pool, &entries).await,
        };
        match written {
            Ok((results, mut leased)) => {
                for (i, ((then, done), result)) in replies.into_iter().zip(results).enumerate() {
                    if let (Some(then), Some(claims)) = (then, leased.remove(&i)) {
                        then(claims);
                    }
                    let _ = done.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!("ledger commit failed: {e}");
                for (_, done) in replies {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// The deliveries leased by a batch's hand-offs, by the index of their job.
type Leased = HashMap<usize, Vec<Claimed>>;

async fn commit_postgres(
    pool: &AnyPool,
    entries: &[Entry],
) -> Result<(Vec<Enqueued>, Leased), StoreError> {
    let mut tx = pool.begin().await?;
    let written = write_batch(&mut SqlxDb(&mut tx), entries).await?;
    tx.commit().await?;
    Ok(written)
}

/// Writes a batch inside its transaction (SQLite's holds the write lock from its start: the
/// batch reads before it writes, and a read transaction cannot become a write one once
/// another connection has committed).
async fn write_batch(
    db: &mut impl Db,
    entries: &[Entry],
) -> Result<(Vec<Enqueued>, Leased), StoreError> {
    let now = now_ms();
    let mut results = Vec::with_capacity(entries.len());
    let mut disabled = HashMap::new();
    let mut queues = BTreeSet::new();
    let mut accepted = Vec::new();
    for e in entries {
        let tenant = &e.message.tenant;
        if !disabled.contains_key(tenant) {
            let names = disabled_endpoints(db, tenant).await?;
            disabled.insert(tenant.clone(), names);
        }
    }
    let keys = take_keys(db, entries, now).await?;
    for (index, (e, key)) in entries.iter().zip(keys).enumerate() {
        let m = &e.message;
        let message_id = match key {
            Key::Taken(id) => id,
            Key::Duplicate(existing) => {
                results.push(Enqueued::Duplicate {
                    message_id: existing,
                });
                continue;
            }
        };
        let off: &Vec<String> = &disabled[&m.tenant];
        let routes: Vec<RouteRow> = m
            .endpoints
            .iter()
            .filter(|r| !off.contains(&r.endpoint))
            .map(|r| RouteRow {
                endpoint: r.endpoint.as_str(),
                fifo: r
                    .ordered
                    .then(|| m.ordering_key.clone().unwrap_or_default()),
                lease: e
                    .lease
                    .as_ref()
                    .filter(|(_, _, endpoints)| endpoints.contains(&r.endpoint))
                    .map(|(owner, lease_ms, _)| (owner.clone(), now + lease_ms)),
            })
            .collect();
        for r in &routes {
            queues.insert((m.tenant.as_str(), r.endpoint));
        }
        results.push(Enqueued::Queued {
            message_id: message_id.clone(),
            endpoints: routes.len(),
            handed_off: 0,
        });
        accepted.push(Accepted {
            index,
            message_id,
            m,
            seq: next_seq(),
            routes,
        });
    }
    // Claims find an endpoint's queue through its health row; a hand-off only goes to an
    // endpoint whose breaker is closed (an open one's deliveries wait for its probe).
    let mut open = BTreeSet::new();
    for (tenant, endpoint) in queues {
        let rows = db
            .fetch(
                "SELECT state FROM endpoint_health WHERE tenant = $1 AND endpoint = $2",
                &[tenant.into(), endpoint.into()],
            )
            .await?;
        let state = match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
            Some(cell) => Some(cell.text()?),
            None => None,
        };
        match state.as_deref() {
            Some("closed") => {}
            Some(_) => {
                open.insert((tenant, endpoint));
            }
            None => {
                db.execute(
                    "INSERT INTO endpoint_health (tenant, endpoint) VALUES ($1, $2) \
                     ON CONFLICT (tenant, endpoint) DO NOTHING",
                    &[tenant.into(), endpoint.into()],
                )
                .await?;
            }
        }
    }
    for a in &mut accepted {
        for r in &mut a.routes {
            if open.contains(&(a.m.tenant.as_str(), r.endpoint)) {
                r.lease = None;
            }
        }
    }
    insert_rows(db, &accepted, now).await?;
    let leased = handed_off(&accepted, now);
    for (i, claims) in &leased {
        if let Some(Enqueued::Queued { handed_off, .. }) = results.get_mut(*i) {
            *handed_off = claims.len();
        }
    }
    Ok((results, leased))
}

/// The deliveries the batch leased to hand-offs, with their messages.
fn handed_off(accepted: &[Accepted<'_>], now: i64) -> Leased {
    let mut leased = Leased::new();
    for a in accepted {
        let endpoints: Vec<&str> = a
            .routes
            .iter()
            .filter(|r| r.lease.is_some())
            .map(|r| r.endpoint)
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let message = std::sync::Arc::new(StoredMessage {
            id: a.message_id.clone(),
            tenant: a.m.tenant.clone(),
            event_type: a.m.event_type.clone(),
            payload: a.m.payload.clone(),
            content_type: a.m.content_type.clone(),
            created_at: now,
        });
        let claims = endpoints
            .into_iter()
            .map(|endpoint| Claimed {
                message_id: a.message_id.clone(),
                tenant: a.m.tenant.clone(),
                endpoint: endpoint.to_owned(),
                attempts: 0,
                budget_from: 0,
                message: Some(message.clone()),
            })
            .collect();
        leased.insert(a.index, claims);
    }
    leased
}

async fn disabled_endpoints(db: &mut impl Db, tenant: &str) -> Result<Vec<String>, StoreError> {
    db.fetch(
        "SELECT endpoint FROM endpoint_state WHERE tenant = $1",
        &[tenant.into()],
    )
    .await?
    .into_iter()
    .map(|r| first(r)?.text())
    .collect()
}

/// A row's first column.
fn first(row: Vec<Cell>) -> Result<Cell, StoreError> {
    row.into_iter()
        .next()
        .ok_or_else(|| StoreError::Unavailable("store returned an empty row".into()))
}

/// A message whose idempotency key this batch took, with its deliveries.
struct Accepted<'a> {
    /// Its job's place in the batch.
    index: usize,
    message_id: String,
    m: &'a NewMessage,
    seq: i64,
    routes: Vec<RouteRow<'a>>,
}

/// A delivery row to write.
struct RouteRow<'a> {
    endpoint: &'a str,
    /// The FIFO it belongs to (ordered endpoints).
    fifo: Option<String>,
    /// Leased at once to a hand-off: (owner, until).
    lease: Option<(std::sync::Arc<str>, i64)>,
}

/// What a job's idempotency key gave it.
enum Key {
    /// The key is this new message's.
    Taken(String),
    /// A message already holds it (in the ledger, or earlier in this batch).
    Duplicate(String),
}

/// Takes each job's idempotency key, many rows per statement; a key whose window has passed
/// is taken over by the new message.
async fn take_keys(db: &mut impl Db, entries: &[Entry], now: i64) -> Result<Vec<Key>, StoreError> {
    // A key twice in one batch: the later job is the earlier one's duplicate (and one row
    // may not be upserted twice in a statement).
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut repeats: HashMap<usize, usize> = HashMap::new();
    let mut ids: Vec<String> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let m = &e.message;
        match first_of.get(&(m.tenant.as_str(), m.event_id.as_str())) {
            Some(&j) => {
                repeats.insert(i, j);
            }
            None => {
                first_of.insert((m.tenant.as_str(), m.event_id.as_str()), i);
            }
        }
        ids.push(new_message_id());
    }
    let unique: Vec<usize> = (0..entries.len())
        .filter(|i| !repeats.contains_key(i))
        .collect();
    let mut taken = std::collections::HashSet::new();
    let sqlite = db.sqlite();
    for chunk in unique.chunks(ROWS) {
        // Parameters in the order of the text: the rows, then `now`.
        let sql = format!(
            "INSERT INTO idempotency (tenant, event_id, message_id, expires_at) VALUES {} \
             ON CONFLICT (tenant, event_id) DO UPDATE SET message_id = excluded.message_id, \
             expires_at = excluded.expires_at WHERE idempotency.expires_at < {} RETURNING message_id",
            placeholders(sqlite, 0, chunk.len(), 4),
            param(sqlite, chunk.len() * 4 + 1)
        );
        let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * 4 + 1);
        for &i in chunk {
            let m = &entries[i].message;
            params.extend([
                Param::from(&m.tenant),
                (&m.event_id).into(),
                (&ids[i]).into(),
                (now + m.idempotency_ms).into(),
            ]);
        }
        params.push(now.into());
        for row in db.fetch(&sql, &params).await? {
            taken.insert(first(row)?.text()?);
        }
    }
    let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
    for (i, id) in ids.into_iter().enumerate() {
        let key = if let Some(&j) = repeats.get(&i) {
            Key::Duplicate(match &keys[j] {
                Key::Taken(id) | Key::Duplicate(id) => id.clone(),
            })
        } else if taken.contains(&id) {
            Key::Taken(id)
        } else {
            // Rare (a sender's retry): one read each.
            let m = &entries[i].message;
            let rows = db
                .fetch(
                    "SELECT message_id FROM idempotency WHERE tenant = $1 AND event_id = $2",
                    &[(&m.tenant).into(), (&m.event_id).into()],
                )
                .await?;
            let row = rows.into_iter().next().ok_or_else(|| {
                StoreError::Unavailable("an idempotency key was neither taken nor held".into())
            })?;
            Key::Duplicate(first(row)?.text()?)
        };
        keys.push(key);
    }
    Ok(keys)
}

/// Rows per multi-row INSERT (well under either database's parameter limit).
const ROWS: usize = 256;

/// Writes the accepted messages and their deliveries, many rows per statement.
async fn insert_rows(
    db: &mut impl Db,
    accepted: &[Accepted<'_>],
    now: i64,
) -> Result<(), StoreError> {
    let sqlite = db.sqlite();
    for chunk in accepted.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO messages (id, tenant, event_id, event_type, payload, ordering_key, source, created_at, content_type) VALUES {}",
            placeholders(sqlite, 0, chunk.len(), 9)
        );
        let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * 9);
        for a in chunk {
            let m = a.m;
            params.extend([
                Param::from(&a.message_id),
                (&m.tenant).into(),
                (&m.event_id).into(),
                (&m.event_type).into(),
                (&m.payload).into(),
                m.ordering_key.as_deref().into(),
                m.source.into(),
                now.into(),
                m.content_type.as_deref().into(),
            ]);
        }
        db.execute(&sql, &params).await?;
    }
    let deliveries: Vec<(&Accepted<'_>, &RouteRow<'_>)> = accepted
        .iter()
        .flat_map(|a| a.routes.iter().map(move |r| (a, r)))
        .collect();
    for chunk in deliveries.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO deliveries (message_id, tenant, endpoint, status, attempts, next_at, updated_at, seq, fifo_key, lease_until, lease_owner) VALUES {}",
            (0..chunk.len())
                .map(|i| {
                    let p = |j: usize| param(sqlite, i * 9 + j);
                    format!(
                        "({}, {}, {}, 'pending', 0, {}, {}, {}, {}, {}, {})",
                        p(1),
                        p(2),
                        p(3),
                        p(4),
                        p(5),
                        p(6),
                        p(7),
                        p(8),
                        p(9)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * 9);
        for (a, r) in chunk {
            let (owner, until) = match &r.lease {
                Some((owner, until)) => (Some(owner.as_ref()), *until),
                None => (None, 0),
            };
            params.extend([
                Param::from(&a.message_id),
                (&a.m.tenant).into(),
                r.endpoint.into(),
                now.into(),
                now.into(),
                a.seq.into(),
                r.fifo.as_deref().into(),
                until.into(),
                owner.into(),
            ]);
        }
        db.execute(&sql, &params).await?;
    }
    Ok(())
}

/// Enqueue order: microseconds, strictly increasing in this process (nodes enqueueing in
/// the same microsecond are concurrent; either order is FIFO).
fn next_seq() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// `msg_` + the time in milliseconds (8 base-62 digits) + 16 random base-62 characters (95
/// bits): ids sort by creation time, so a batch's rows go to the right-hand edge of the
/// messages', deliveries' and attempts' keys (a few pages per commit) instead of one page
/// per row scattered over the whole index (random ids: most of the writer's time was
/// writing and reading those pages).
fn new_message_id() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "msg_{}{}",
        base62_time(now_ms()),
        Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
    )
}

/// `ms` as 8 base-62 digits in ASCII order (0-9, A-Z, a-z), so text order is time order
/// (until the year 8800).
fn base62_time(ms: i64) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = ms.max(0) as u64;
    let mut out = [b'0'; 8];
    for d in out.iter_mut().rev() {
        *d = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_time_and_keep_their_shape() {
        assert_eq!(base62_time(0), "00000000");
        assert_eq!(base62_time(61), "0000000z");
        assert_eq!(base62_time(62), "00000010");
        let times = [
            0,
            61,
            62,
            1_700_000_000_000,
            1_800_000_000_000,
            62i64.pow(8) - 1,
        ];
        let encoded: Vec<String> = times.iter().map(|&t| base62_time(t)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        let id = new_message_id();
        assert_eq!(id.len(), 28);
        assert!(id.starts_with("msg_") && id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_message_id()[12..], id[12..]);
    }
}
