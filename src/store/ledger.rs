//! The ledger's queries: enqueue (group-committed), the operator's and the worker's reads.
//!
//! Enqueues go through one committer task that takes every message waiting and writes them
//! in one transaction: under load many API calls share one commit (one fsync on SQLite)
//! instead of queueing for their own, and each caller is answered only after the commit.
//!
//! The hand-off: an enqueue may ask for some of its deliveries to be leased, in the same
//! transaction, to the node's own worker (it has a free slot for them), which then attempts
//! them at once instead of finding them with a claim. Only while the endpoint's breaker is
//! closed; the lease is the same as a claim's, so a node that dies before the attempt only
//! delays it until another node's claim takes the delivery over.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use sqlx::AnyPool;
use sqlx::{Any, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{is_sqlite, now_ms, param, placeholders, Backend, Store, StoreError, Writes};

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

pub(super) fn stored_message(r: &sqlx::any::AnyRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        event_type: r.try_get(2)?,
        payload: r.try_get(3)?,
        created_at: r.try_get(4)?,
        content_type: r.try_get(5)?,
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
    message: NewMessage,
    handoff: Option<Handoff>,
    done: oneshot::Sender<Result<Enqueued, String>>,
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
        let tx = self.committer.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let writes = (self.backend == Backend::Sqlite).then(|| self.writes.clone());
            tokio::spawn(commit_loop(pool, writes, rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        tx.send(Job {
            message,
            handoff,
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

async fn commit_loop(pool: AnyPool, writes: Option<Writes>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        match commit(&pool, writes.as_ref(), &jobs).await {
            Ok((results, mut leased)) => {
                for (i, (job, result)) in jobs.into_iter().zip(results).enumerate() {
                    if let (Some(h), Some(claims)) = (job.handoff, leased.remove(&i)) {
                        (h.then)(claims);
                    }
                    let _ = job.done.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!("ledger commit failed: {e}");
                for job in jobs {
                    let _ = job.done.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// The deliveries leased by a batch's hand-offs, by the index of their job.
type Leased = HashMap<usize, Vec<Claimed>>;

/// `writes`: SQLite's (see [`Writes`]).
async fn commit(
    pool: &AnyPool,
    writes: Option<&Writes>,
    jobs: &[Job],
) -> Result<(Vec<Enqueued>, Leased), sqlx::Error> {
    // SQLite: the write lock from the start (the batch reads before it writes, and a read
    // transaction cannot become a write one once another connection has committed).
    let (_writing, mut tx) = match writes {
        Some(w) => (w.take().await, pool.begin_with("BEGIN IMMEDIATE").await?),
        None => (None, pool.begin().await?),
    };
    let now = now_ms();
    let mut results = Vec::with_capacity(jobs.len());
    let mut disabled = HashMap::new();
    let mut queues = BTreeSet::new();
    let mut accepted = Vec::new();
    for job in jobs {
        let tenant = &job.message.tenant;
        if !disabled.contains_key(tenant) {
            let names = disabled_endpoints(&mut tx, tenant).await?;
            disabled.insert(tenant.clone(), names);
        }
    }
    let keys = take_keys(&mut tx, jobs, now).await?;
    for (index, (job, key)) in jobs.iter().zip(keys).enumerate() {
        let m = &job.message;
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
                lease: job
                    .handoff
                    .as_ref()
                    .filter(|h| h.endpoints.contains(&r.endpoint))
                    .map(|h| (h.owner.clone(), now + h.lease_ms)),
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
        let state: Option<String> =
            sqlx::query("SELECT state FROM endpoint_health WHERE tenant = $1 AND endpoint = $2")
                .bind(tenant)
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        match state.as_deref() {
            Some("closed") => {}
            Some(_) => {
                open.insert((tenant, endpoint));
            }
            None => {
                sqlx::query(
                    "INSERT INTO endpoint_health (tenant, endpoint) VALUES ($1, $2) \
                     ON CONFLICT (tenant, endpoint) DO NOTHING",
                )
                .bind(tenant)
                .bind(endpoint)
                .execute(&mut *tx)
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
    insert_rows(&mut tx, &accepted, now).await?;
    tx.commit().await?;
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

async fn disabled_endpoints(
    tx: &mut Transaction<'_, Any>,
    tenant: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query("SELECT endpoint FROM endpoint_state WHERE tenant = $1")
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
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
async fn take_keys(
    tx: &mut Transaction<'_, Any>,
    jobs: &[Job],
    now: i64,
) -> Result<Vec<Key>, sqlx::Error> {
    // A key twice in one batch: the later job is the earlier one's duplicate (and one row
    // may not be upserted twice in a statement).
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut repeats: HashMap<usize, usize> = HashMap::new();
    let mut ids: Vec<String> = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let m = &job.message;
        match first.get(&(m.tenant.as_str(), m.event_id.as_str())) {
            Some(&j) => {
                repeats.insert(i, j);
            }
            None => {
                first.insert((m.tenant.as_str(), m.event_id.as_str()), i);
            }
        }
        ids.push(new_message_id());
    }
    let unique: Vec<usize> = (0..jobs.len())
        .filter(|i| !repeats.contains_key(i))
        .collect();
    let mut taken = std::collections::HashSet::new();
    let sqlite = is_sqlite(tx);
    for chunk in unique.chunks(ROWS) {
        // Parameters in the order of the text: the rows, then `now`.
        let sql = format!(
            "INSERT INTO idempotency (tenant, event_id, message_id, expires_at) VALUES {} \
             ON CONFLICT (tenant, event_id) DO UPDATE SET message_id = excluded.message_id, \
             expires_at = excluded.expires_at WHERE idempotency.expires_at < {} RETURNING message_id",
            placeholders(sqlite, 0, chunk.len(), 4),
            param(sqlite, chunk.len() * 4 + 1)
        );
        let mut q = sqlx::query(&sql);
        for &i in chunk {
            let m = &jobs[i].message;
            q = q
                .bind(&m.tenant)
                .bind(&m.event_id)
                .bind(&ids[i])
                .bind(now + m.idempotency_ms);
        }
        for row in q.bind(now).fetch_all(&mut **tx).await? {
            taken.insert(row.try_get::<String, _>(0)?);
        }
    }
    let mut keys: Vec<Key> = Vec::with_capacity(jobs.len());
    for (i, id) in ids.into_iter().enumerate() {
        let key = if let Some(&j) = repeats.get(&i) {
            Key::Duplicate(match &keys[j] {
                Key::Taken(id) | Key::Duplicate(id) => id.clone(),
            })
        } else if taken.contains(&id) {
            Key::Taken(id)
        } else {
            // Rare (a sender's retry): one read each.
            let m = &jobs[i].message;
            let existing: String = sqlx::query(
                "SELECT message_id FROM idempotency WHERE tenant = $1 AND event_id = $2",
            )
            .bind(&m.tenant)
            .bind(&m.event_id)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            Key::Duplicate(existing)
        };
        keys.push(key);
    }
    Ok(keys)
}

/// Rows per multi-row INSERT (well under either database's parameter limit).
const ROWS: usize = 256;

/// Writes the accepted messages and their deliveries, many rows per statement.
async fn insert_rows(
    tx: &mut Transaction<'_, Any>,
    accepted: &[Accepted<'_>],
    now: i64,
) -> Result<(), sqlx::Error> {
    let sqlite = is_sqlite(tx);
    for chunk in accepted.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO messages (id, tenant, event_id, event_type, payload, ordering_key, source, created_at, content_type) VALUES {}",
            placeholders(sqlite, 0, chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for a in chunk {
            let m = a.m;
            q = q
                .bind(&a.message_id)
                .bind(&m.tenant)
                .bind(&m.event_id)
                .bind(&m.event_type)
                .bind(&m.payload)
                .bind(m.ordering_key.as_deref())
                .bind(m.source)
                .bind(now)
                .bind(m.content_type.as_deref());
        }
        q.execute(&mut **tx).await?;
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
        let mut q = sqlx::query(&sql);
        for (a, r) in chunk {
            let (owner, until) = match &r.lease {
                Some((owner, until)) => (Some(owner.as_ref()), *until),
                None => (None, 0),
            };
            q = q
                .bind(&a.message_id)
                .bind(&a.m.tenant)
                .bind(r.endpoint)
                .bind(now)
                .bind(now)
                .bind(a.seq)
                .bind(r.fifo.as_deref())
                .bind(until)
                .bind(owner);
        }
        q.execute(&mut **tx).await?;
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

/// `msg_` + 24 random base-62 characters (143 bits).
fn new_message_id() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "msg_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
    )
}
