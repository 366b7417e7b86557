//! The delivery worker: attempts deliveries under the node's concurrency limit, records the
//! outcome and the next step. Deliveries reach it two ways: handed off by an enqueue that
//! leased them to this node in its own transaction (a slot was free: attempted at once), or
//! claimed from the ledger under a lease (retries, backlogs, ordered and rate-limited
//! endpoints, other nodes' expired leases).
//!
//! A slot (`slots`) is taken before an attempt is spawned (never more attempts in flight
//! than `concurrency`) and given back when the endpoint has answered; the outcome is then
//! recorded in the store's next group commit. The lease outlives the attempt's hard timeout
//! (by 5 s), so a node that dies mid-attempt only delays the delivery until its lease runs
//! out and another claim picks it up (at least once, with the same `webhook-id`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::Rng;

use super::delivery::Attempted;
use super::slots::Slot;
use super::Dispatcher;
use crate::metrics;
use crate::store::{now_ms, BreakerMove, Claimed, Next, Outcome};

/// How often the ledger is polled when nothing woke the worker.
const POLL: Duration = Duration::from_millis(200);
/// How long a busy worker waits for a batch of free slots before claiming fewer.
const BATCH_WAIT: Duration = Duration::from_millis(2);
/// How often the ledger-wide gauges are read.
const GAUGES: Duration = Duration::from_secs(2);

pub struct Worker {
    pub dispatcher: Arc<Dispatcher>,
}

#[async_trait]
impl BackgroundService for Worker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let d = &self.dispatcher;
        let concurrency = d.delivery.concurrency;
        if let Some(mut handed) = d.slots.take_handoffs() {
            let d = d.clone();
            tokio::spawn(async move {
                while let Some((claim, slot)) = handed.recv().await {
                    tokio::spawn(run(d.clone(), claim, slot));
                }
            });
        }
        tokio::spawn(gauges(d.clone(), shutdown.clone()));
        tokio::spawn(retention(d.clone(), shutdown.clone()));
        // Whether the last claim took all it asked for (more may be due).
        let mut busy = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Under a backlog, claim a batch (a quarter of the slots) rather than one
            // delivery per transaction as each attempt ends; never wait long for it.
            if busy && d.slots.free() < (concurrency / 4).max(1) {
                tokio::select! {
                    _ = d.freed.notified() => {}
                    _ = tokio::time::sleep(BATCH_WAIT) => {}
                    _ = shutdown.changed() => return,
                }
            }
            let free = d.slots.free();
            if free == 0 {
                tokio::select! {
                    _ = d.freed.notified() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let endpoints = d.catalog.current();
            let dispatcher = d.clone();
            let limits = move |tenant: &str, name: &str| {
                let mut l = endpoints
                    .get(tenant, name)
                    .map(|e| e.limits)
                    .unwrap_or_default();
                l.node_room = Some(dispatcher.slots.room(tenant, name));
                l.node_busy = dispatcher.slots.busy(tenant, name);
                l
            };
            let claimed = d
                .store
                .claim(&d.owner, d.lease_ms, free as i64, limits)
                .await;
            busy = matches!(&claimed, Ok((list, _)) if list.len() == free);
            match claimed {
                Ok((list, held_back)) => {
                    for claim in list {
                        let Some(slot) = d.slots.acquire(&claim.tenant, &claim.endpoint).await
                        else {
                            return;
                        };
                        metrics::OUTBOUND_STARTS.with_label_values(&["claim"]).inc();
                        tokio::spawn(run(d.clone(), claim, slot));
                    }
                    // Nothing (more) is due: wait for an enqueue a hand-off did not take,
                    // the next poll (retries come due), or, if an endpoint's share held
                    // this claim back, a slot freeing.
                    if !busy {
                        tokio::select! {
                            _ = d.freed.notified(), if held_back => {}
                            _ = d.wake.notified() => {}
                            _ = tokio::time::sleep(POLL) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("outbound: cannot claim deliveries: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

/// One attempt in its slot: made, the slot freed once the endpoint answered, recorded.
async fn run(d: Arc<Dispatcher>, claim: Claimed, mut slot: Slot) {
    metrics::OUTBOUND_IN_FLIGHT.inc();
    let (outcome, attempted) = attempt(&d, &claim).await;
    metrics::OUTBOUND_IN_FLIGHT.dec();
    slot.answered();
    d.freed.notify_one();
    record(&d, &claim, outcome, attempted).await;
    drop(slot);
    d.freed.notify_one();
}

/// Refreshes the ledger-wide gauges (pending, open breakers) every few seconds.
async fn gauges(d: Arc<super::Dispatcher>, mut shutdown: ShutdownWatch) {
    loop {
        if let Ok((pending, open)) = d.store.gauges().await {
            metrics::OUTBOUND_PENDING.set(pending);
            metrics::OUTBOUND_BREAKERS_OPEN.set(open);
        }
        tokio::select! {
            _ = tokio::time::sleep(GAUGES) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Purges delivered messages past the retention, a few times per retention period (every
/// node does; the deletes are idempotent).
async fn retention(d: Arc<super::Dispatcher>, mut shutdown: ShutdownWatch) {
    let every = (d.delivery.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match d.store.purge(d.delivery.retention.as_millis() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                messages = n,
                "outbound: purged delivered messages past the retention"
            ),
            Err(e) => tracing::warn!("outbound: retention purge failed: {e}"),
        }
    }
}

/// Makes the attempt; its outcome, and whether an attempt reached the endpoint's breaker.
async fn attempt(d: &Dispatcher, claim: &Claimed) -> (Outcome, bool) {
    let Some(message) = claim.message.as_deref() else {
        return (dead("message_missing"), false);
    };
    let endpoint = match d
        .catalog
        .get(&d.store, &claim.tenant, &claim.endpoint)
        .await
    {
        Ok(Some(e)) => e,
        Ok(None) => return (dead("endpoint_removed"), false),
        // Unknown here, and the store could not say whether it still exists: later.
        Err(e) => {
            tracing::warn!(endpoint = %claim.endpoint, "outbound: endpoint not looked up: {e}");
            let outcome = Outcome {
                outcome: "endpoint_unknown",
                status: None,
                latency_ms: 0,
                preview: None,
                next: Next::RetryAt(now_ms() + 5_000),
            };
            return (outcome, false);
        }
    };
    // Within the lease, whatever a stored endpoint asks.
    let timeout = endpoint
        .timeout
        .unwrap_or(d.delivery.timeout)
        .min(d.longest_attempt());
    let attempted = d.client.attempt(&endpoint, message, timeout).await;
    metrics::OUTBOUND_ATTEMPTS
        .with_label_values(&[attempted.outcome])
        .inc();
    metrics::OUTBOUND_ATTEMPT_DURATION.observe(attempted.latency.as_secs_f64());
    if attempted.outcome == "delivered" {
        let lag = (now_ms() - message.created_at).max(0) as f64 / 1000.0;
        metrics::OUTBOUND_DELIVERY_LAG.observe(lag);
    }
    let next = next_step(&attempted, claim.budget_attempt(), &d.delivery.retry);
    tracing::info!(
        target: "portcullis::outbound",
        message_id = %message.id,
        tenant = %claim.tenant,
        endpoint = %claim.endpoint,
        attempt = claim.attempts + 1,
        outcome = attempted.outcome,
        status = attempted.status,
        latency_ms = attempted.latency.as_millis() as u64,
        detail = attempted.detail.as_deref(),
        "attempt"
    );
    if attempted.outcome == "gone" {
        if let Err(e) = d
            .store
            .disable_endpoint(&claim.tenant, &claim.endpoint, "gone")
            .await
        {
            tracing::warn!(
                "outbound: cannot disable {}/{}: {e}",
                claim.tenant,
                claim.endpoint
            );
        }
    }
    // Neither a 410 nor a payload the transform cannot take says the endpoint is unhealthy.
    let tells_breaker = !matches!(attempted.outcome, "gone" | "transform_failed");
    let outcome = Outcome {
        outcome: attempted.outcome,
        status: attempted.status,
        latency_ms: attempted.latency.as_millis() as i64,
        preview: attempted.preview,
        next,
    };
    (outcome, tells_breaker)
}

fn dead(reason: &'static str) -> Outcome {
    Outcome {
        outcome: reason,
        status: None,
        latency_ms: 0,
        preview: None,
        next: Next::Dead(reason),
    }
}

async fn record(d: &Dispatcher, claim: &Claimed, outcome: Outcome, attempted: bool) {
    if let Next::Dead(reason) = &outcome.next {
        metrics::OUTBOUND_DEAD_LETTERS
            .with_label_values(&[reason])
            .inc();
    }
    let breaker = attempted.then_some(d.delivery.breaker);
    match d.store.record(claim, &d.owner, &outcome, breaker).await {
        Ok(BreakerMove::Opened) => tracing::warn!(
            tenant = %claim.tenant,
            endpoint = %claim.endpoint,
            cooldown_ms = d.delivery.breaker.cooldown_ms,
            "outbound: circuit breaker open: attempts to this endpoint are deferred"
        ),
        Ok(BreakerMove::Closed) => tracing::info!(
            tenant = %claim.tenant,
            endpoint = %claim.endpoint,
            "outbound: circuit breaker closed: the probe was delivered"
        ),
        Ok(BreakerMove::Unchanged) => {}
        // The lease runs out and the delivery is attempted again: at least once.
        Err(e) => tracing::warn!(
            "outbound: cannot record an attempt of {}: {e}",
            claim.message_id
        ),
    }
}

/// What follows attempt number `made` (from 1) with this result.
pub fn next_step(a: &Attempted, made: i64, schedule: &[Duration]) -> Next {
    match a.outcome {
        "delivered" => return Next::Delivered,
        "gone" => return Next::Dead("endpoint_gone"),
        // No retry can change it: the payload does not fit the endpoint's transform.
        "transform_failed" => return Next::Dead("transform_failed"),
        _ => {}
    }
    let Some(delay) = schedule.get((made - 1).max(0) as usize) else {
        return Next::Dead("retries_exhausted");
    };
    let mut delay = jitter(*delay);
    if let (Some(after), Some(last)) = (a.retry_after, schedule.last()) {
        delay = delay.max(after.min(*last));
    }
    Next::RetryAt(now_ms() + delay.as_millis() as i64)
}

/// ±20%, so retries of one outage do not arrive together.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempted(outcome: &'static str, retry_after: Option<u64>) -> Attempted {
        Attempted {
            outcome,
            status: None,
            preview: None,
            retry_after: retry_after.map(Duration::from_secs),
            latency: Duration::ZERO,
            detail: None,
        }
    }

    #[test]
    fn the_schedule_runs_out_into_a_dead_letter() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        let at = |n| match next_step(&attempted("http_status", None), n, &schedule) {
            Next::RetryAt(at) => at - now_ms(),
            other => panic!("{other:?}"),
        };
        assert!((7_900..=12_100).contains(&at(1)), "{}", at(1));
        assert!((79_900..=120_100).contains(&at(2)), "{}", at(2));
        assert!(matches!(
            next_step(&attempted("timeout", None), 3, &schedule),
            Next::Dead("retries_exhausted")
        ));
        assert!(matches!(
            next_step(&attempted("gone", None), 1, &schedule),
            Next::Dead("endpoint_gone")
        ));
        assert!(matches!(
            next_step(&attempted("delivered", None), 3, &schedule),
            Next::Delivered
        ));
    }

    #[test]
    fn retry_after_stretches_the_delay_up_to_the_last_one() {
        let schedule = [Duration::from_secs(1), Duration::from_secs(60)];
        let wait = |after| match next_step(&attempted("throttled", Some(after)), 1, &schedule) {
            Next::RetryAt(at) => at - now_ms(),
            other => panic!("{other:?}"),
        };
        assert!((29_900..=30_100).contains(&wait(30)));
        assert!(
            (59_900..=60_100).contains(&wait(3600)),
            "capped at the last delay"
        );
    }
}
