//! Where this node's attempts may run: `delivery.concurrency` slots (a semaphore taken
//! before an attempt is spawned), a bound on attempts made but not yet recorded, and a count
//! of attempts in flight per endpoint.
//!
//! The per-endpoint count keeps the node fair: one endpoint holds at most half the slots,
//! however its attempts reach the worker (handed off by an enqueue, see `crate::store`'s
//! ledger, or claimed). An endpoint that hangs until its timeout would otherwise take every
//! slot that frees (claims are work-conserving, and a healthy endpoint's deliveries are
//! mostly handed off, so rarely waiting in the ledger when a slot frees) and starve the
//! others until its breaker opens. The price: one slow endpoint alone uses half the node's
//! `concurrency`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::store::Claimed;

type Busy = Arc<Mutex<HashMap<(String, String), usize>>>;

pub struct Slots {
    concurrency: usize,
    permits: Arc<Semaphore>,
    unrecorded: Arc<Semaphore>,
    busy: Busy,
    /// The worker's queue of handed-off deliveries; unset until the worker runs (the CLI's
    /// dispatcher has none, so it never hands off).
    handoff: OnceLock<mpsc::UnboundedSender<(Claimed, Slot)>>,
}

/// One attempt's room: given back in two steps, when the endpoint answered
/// ([`Slot::answered`]) and when the outcome is recorded (drop).
pub struct Slot {
    attempt: Option<(OwnedSemaphorePermit, Counted)>,
    _unrecorded: OwnedSemaphorePermit,
}

impl Slot {
    /// The endpoint answered: the slot is free for another attempt, the record still pends.
    pub fn answered(&mut self) {
        self.attempt = None;
    }
}

/// One attempt counted against its endpoint while held.
struct Counted {
    busy: Busy,
    key: (String, String),
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
    }
}

impl Slots {
    pub fn new(concurrency: usize) -> Slots {
        Slots {
            concurrency,
            permits: Arc::new(Semaphore::new(concurrency)),
            // Bounded, so a store slower than delivery slows attempts down instead of
            // piling outcomes up.
            unrecorded: Arc::new(Semaphore::new(concurrency * 4)),
            busy: Arc::default(),
            handoff: OnceLock::new(),
        }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.permits
            .available_permits()
            .min(self.unrecorded.available_permits())
    }

    /// One endpoint's most slots on this node.
    fn share(&self) -> usize {
        (self.concurrency / 2).max(1)
    }

    /// Attempts to this endpoint in flight on this node.
    pub fn busy(&self, tenant: &str, endpoint: &str) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.get(&(tenant.to_owned(), endpoint.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Attempts this endpoint may still start on this node.
    pub fn room(&self, tenant: &str, endpoint: &str) -> usize {
        self.share().saturating_sub(self.busy(tenant, endpoint))
    }

    /// Waits for a slot for an attempt to this endpoint (`None`: shutting down).
    pub async fn acquire(&self, tenant: &str, endpoint: &str) -> Option<Slot> {
        let unrecorded = self.unrecorded.clone().acquire_owned().await.ok()?;
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        self.counted(permit, unrecorded, tenant, endpoint, None)
    }

    /// A slot for a hand-off to this endpoint, if one is free now, the worker takes
    /// hand-offs and the endpoint holds less than its share.
    pub fn try_take(&self, tenant: &str, endpoint: &str) -> Option<Slot> {
        self.handoff.get()?;
        let unrecorded = self.unrecorded.clone().try_acquire_owned().ok()?;
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.counted(permit, unrecorded, tenant, endpoint, Some(self.share()))
    }

    /// The slot, counted against its endpoint (`None` if that would pass `cap`).
    fn counted(
        &self,
        permit: OwnedSemaphorePermit,
        unrecorded: OwnedSemaphorePermit,
        tenant: &str,
        endpoint: &str,
        cap: Option<usize>,
    ) -> Option<Slot> {
        let key = (tenant.to_owned(), endpoint.to_owned());
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let n = busy.entry(key.clone()).or_insert(0);
        if cap.is_some_and(|cap| *n >= cap) {
            return None;
        }
        *n += 1;
        Some(Slot {
            attempt: Some((
                permit,
                Counted {
                    busy: self.busy.clone(),
                    key,
                },
            )),
            _unrecorded: unrecorded,
        })
    }

    /// The worker takes hand-offs from here on; they arrive on the returned queue.
    pub fn take_handoffs(&self) -> Option<mpsc::UnboundedReceiver<(Claimed, Slot)>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.handoff.set(tx).ok()?;
        Some(rx)
    }

    /// Where hand-offs go, once the worker takes them.
    pub fn handoffs(&self) -> Option<mpsc::UnboundedSender<(Claimed, Slot)>> {
        self.handoff.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_handed_at_most_half_the_slots_and_answering_frees_one() {
        let slots = Slots::new(4);
        assert!(slots.try_take("t", "a").is_none(), "no worker yet");
        let _queue = slots.take_handoffs();
        let mut a1 = slots.try_take("t", "a").expect("a's first");
        let _a2 = slots.try_take("t", "a").expect("a's second");
        assert!(slots.try_take("t", "a").is_none(), "a holds its share");
        assert_eq!(slots.room("t", "a"), 0);
        let _b = slots.try_take("t", "b").expect("b has its own share");
        assert_eq!(slots.free(), 1);
        // Answered: the slot and the share are back, the record still pends.
        a1.answered();
        assert_eq!(slots.room("t", "a"), 1);
        assert_eq!(slots.free(), 2);
        assert!(slots.try_take("t", "a").is_some());
        drop(a1);
    }
}
