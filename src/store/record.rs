//! Recording attempts, group-committed: one recorder task takes every outcome waiting and
//! writes them in one transaction (SQLite: on the writer thread, see `writer`; PostgreSQL:
//! through the lease pool, committed asynchronously), so a busy node records a
//! batch per commit instead of queueing a commit per attempt. Each caller is answered
//! after the commit; a batch that fails leaves its deliveries leased, and they are
//! attempted again once the lease runs out (at least once).
//!
//! The circuit breaker's row is read once per endpoint and batch (PostgreSQL: locked, in
//! key order so two nodes' batches never deadlock), the batch's outcomes are applied to
//! it in order, and it is written once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use super::writer::{block_on, Db, Param, SqlxDb};
use super::{
    now_ms, param, placeholders, Breaker, BreakerMove, Claimed, Lease, Next, Outcome, Store,
    StoreError,
};

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 512;

struct Job {
    rec: Rec,
    done: oneshot::Sender<Result<BreakerMove, String>>,
}

/// What a batch writes for one attempt.
struct Rec {
    claimed: Claimed,
    owner: String,
    outcome: Outcome,
    breaker: Option<Breaker>,
}

#[derive(Default)]
pub struct Recorder {
    tx: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Store {
    /// Records an attempt of a leased delivery and its next step, and with `breaker` (an
    /// attempt was made) the endpoint's breaker: closed by a success, opened by `failures`
    /// in a row, re-opened by a failed probe. Returns once committed.
    pub async fn record(
        &self,
        claimed: &Claimed,
        owner: &str,
        outcome: &Outcome,
        breaker: Option<Breaker>,
    ) -> Result<BreakerMove, StoreError> {
        let lease = self.lease().await?.clone();
        let tx = self.recorder.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(record_loop(lease, rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        let job = Job {
            rec: Rec {
                claimed: claimed.clone(),
                owner: owner.to_owned(),
                outcome: outcome.clone(),
                breaker,
            },
            done,
        };
        let stopped = || StoreError::Unavailable("the recorder stopped".into());
        tx.send(job).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Unavailable)
    }
}

async fn record_loop(lease: Lease, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (recs, replies): (Vec<Rec>, Vec<_>) = std::mem::take(&mut batch)
            .into_iter()
            .map(|j| (j.rec, j.done))
            .unzip();
        let n = recs.len();
        let written = match &lease.writer {
            Some(writer) => {
                let _writing = lease.writes.take().await;
                writer
                    .transaction("NORMAL", move |db| block_on(write(db, &recs)))
                    .await
            }
            None => write_postgres(&lease, &recs).await,
        };
        match written {
            Ok(moves) => {
                for (done, moved) in replies.into_iter().zip(moves) {
                    let _ = done.send(Ok(moved));
                }
            }
            Err(e) => {
                tracing::warn!("outbound: cannot record {n} attempts: {e}");
                for done in replies {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn write_postgres(lease: &Lease, recs: &[Rec]) -> Result<Vec<BreakerMove>, StoreError> {
    let (_writing, mut tx) = lease.tx().await?;
    let moves = write(&mut SqlxDb(&mut tx), recs).await?;
    tx.commit().await?;
    Ok(moves)
}

/// An endpoint's breaker row as the batch moves it.
struct Health {
    failures: i64,
    open: bool,
    open_until: i64,
    succeeded: bool,
    failed: bool,
}

/// Writes a batch of outcomes inside its transaction.
async fn write(db: &mut impl Db, jobs: &[Rec]) -> Result<Vec<BreakerMove>, StoreError> {
    let now = now_ms();
    // Breaker rows first, in key order (then the deliveries: the order claims lock in too).
    let keys: BTreeSet<(&str, &str)> = jobs
        .iter()
        .filter(|j| j.breaker.is_some())
        .map(|j| (j.claimed.tenant.as_str(), j.claimed.endpoint.as_str()))
        .collect();
    let mut health: BTreeMap<(&str, &str), Health> = BTreeMap::new();
    for key in keys {
        let row = read_health(db, key.0, key.1).await?;
        health.insert(key, row);
    }
    for chunk in jobs.chunks(ROWS) {
        insert_attempts(db, chunk, now).await?;
        update_deliveries(db, chunk, now).await?;
    }
    let mut moves = Vec::with_capacity(jobs.len());
    for job in jobs {
        let c = &job.claimed;
        let moved = match (
            job.breaker,
            health.get_mut(&(c.tenant.as_str(), c.endpoint.as_str())),
        ) {
            (Some(b), Some(h)) => apply(h, matches!(job.outcome.next, Next::Delivered), b, now),
            _ => BreakerMove::Unchanged,
        };
        moves.push(moved);
    }
    for ((tenant, endpoint), h) in &health {
        write_health(db, tenant, endpoint, h, now).await?;
    }
    Ok(moves)
}

/// One outcome applied to the breaker: a success closes it; a failure while open (the
/// probe, or an attempt begun before it opened) restarts the cooldown; the `failures`-th
/// failure in a row opens it.
fn apply(h: &mut Health, delivered: bool, b: Breaker, now: i64) -> BreakerMove {
    let was_open = h.open;
    if delivered {
        h.succeeded = true;
        h.failures = 0;
        h.open = false;
        h.open_until = 0;
        return if was_open {
            BreakerMove::Closed
        } else {
            BreakerMove::Unchanged
        };
    }
    h.failed = true;
    h.failures += 1;
    if h.open || h.failures >= b.failures {
        h.open = true;
        h.open_until = now + b.cooldown_ms;
    }
    if h.open && !was_open {
        BreakerMove::Opened
    } else {
        BreakerMove::Unchanged
    }
}

async fn read_health(db: &mut impl Db, tenant: &str, endpoint: &str) -> Result<Health, StoreError> {
    // One statement: the row is made if missing and read; the no-op update also locks it on
    // PostgreSQL (as FOR UPDATE would) until the batch commits.
    let rows = db
        .fetch(
            "INSERT INTO endpoint_health (tenant, endpoint) VALUES ($1, $2) \
             ON CONFLICT (tenant, endpoint) DO UPDATE SET failures = endpoint_health.failures \
             RETURNING failures, state, open_until",
            &[tenant.into(), endpoint.into()],
        )
        .await?;
    let mut row = rows
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Unavailable("the breaker row was not returned".into()))?
        .into_iter();
    let mut next = || {
        row.next()
            .ok_or_else(|| StoreError::Unavailable("the breaker row is short".into()))
    };
    let failures = next()?.int()?;
    let open = next()?.text()? == "open";
    let open_until = next()?.int()?;
    Ok(Health {
        failures,
        open,
        open_until,
        succeeded: false,
        failed: false,
    })
}

async fn write_health(
    db: &mut impl Db,
    tenant: &str,
    endpoint: &str,
    h: &Health,
    now: i64,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE endpoint_health SET failures = $1, state = $2, open_until = $3, \
         last_success = CASE WHEN $4 = 1 THEN $5 ELSE last_success END, \
         last_failure = CASE WHEN $6 = 1 THEN $5 ELSE last_failure END \
         WHERE tenant = $7 AND endpoint = $8",
        &[
            h.failures.into(),
            (if h.open { "open" } else { "closed" }).into(),
            h.open_until.into(),
            i64::from(h.succeeded).into(),
            now.into(),
            i64::from(h.failed).into(),
            tenant.into(),
            endpoint.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Outcomes per statement (well under either database's parameter limit).
const ROWS: usize = 200;

async fn insert_attempts(db: &mut impl Db, jobs: &[Rec], now: i64) -> Result<(), StoreError> {
    // A node whose lease ran out may record the same attempt number as the node that took
    // over: the first record stands, neither fails.
    let sql = format!(
        "INSERT INTO attempts (message_id, endpoint, attempt, at, outcome, status, latency_ms, preview) \
         VALUES {} ON CONFLICT DO NOTHING",
        placeholders(db.sqlite(), 0, jobs.len(), 8)
    );
    let mut params: Vec<Param> = Vec::with_capacity(jobs.len() * 8);
    for job in jobs {
        let (c, outcome) = (&job.claimed, &job.outcome);
        params.extend([
            Param::from(&c.message_id),
            (&c.endpoint).into(),
            (c.attempts + 1).into(),
            now.into(),
            outcome.outcome.into(),
            outcome.status.map(i64::from).into(),
            outcome.latency_ms.into(),
            outcome.preview.as_deref().into(),
        ]);
    }
    db.execute(&sql, &params).await?;
    Ok(())
}

/// Each delivery's next step, one statement for the batch (a join on the primary key with
/// the outcomes as a VALUES list, whose columns both databases name column1, column2, …);
/// only while this node still holds the lease.
async fn update_deliveries(db: &mut impl Db, jobs: &[Rec], now: i64) -> Result<(), StoreError> {
    let sqlite = db.sqlite();
    let sql = format!(
        "UPDATE deliveries SET status = v.column1, attempts = attempts + 1, next_at = v.column2, \
         lease_until = 0, lease_owner = NULL, last_outcome = v.column3, dead_reason = v.column4, \
         updated_at = {} FROM (VALUES {}) AS v \
         WHERE deliveries.message_id = v.column5 AND deliveries.endpoint = v.column6 \
         AND deliveries.lease_owner = v.column7",
        param(sqlite, 1),
        placeholders(sqlite, 1, jobs.len(), 7)
    );
    let mut params: Vec<Param> = Vec::with_capacity(jobs.len() * 7 + 1);
    params.push(now.into());
    for job in jobs {
        let (status, next_at, dead_reason) = match &job.outcome.next {
            Next::Delivered => ("delivered", now, None),
            Next::RetryAt(at) => ("pending", *at, None),
            Next::Dead(reason) => ("dead", now, Some(*reason)),
        };
        params.extend([
            Param::from(status),
            next_at.into(),
            job.outcome.outcome.into(),
            dead_reason.into(),
            (&job.claimed.message_id).into(),
            (&job.claimed.endpoint).into(),
            (&job.owner).into(),
        ]);
    }
    db.execute(&sql, &params).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> Health {
        Health {
            failures: 0,
            open: false,
            open_until: 0,
            succeeded: false,
            failed: false,
        }
    }

    #[test]
    fn a_batch_moves_the_breaker_as_its_outcomes_would_one_by_one() {
        let b = Breaker {
            failures: 3,
            cooldown_ms: 1_000,
        };
        let mut h = closed();
        let moves: Vec<_> = [false, false, true, false, false, false, false]
            .iter()
            .map(|&ok| apply(&mut h, ok, b, 10))
            .collect();
        use BreakerMove::*;
        // A success in between resets the count; the third failure in a row opens it; a
        // failure while open restarts the cooldown without opening it again.
        assert_eq!(
            moves,
            [Unchanged, Unchanged, Unchanged, Unchanged, Unchanged, Opened, Unchanged]
        );
        assert!(h.open && h.failures == 4 && h.open_until == 1_010);
        assert!(h.succeeded && h.failed);
        assert_eq!(apply(&mut h, true, b, 20), Closed);
        assert!(!h.open && h.failures == 0 && h.open_until == 0);
    }
}
