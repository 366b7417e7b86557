//! The event log's writer: takes what the gateway queued and writes it to the store as one
//! page per wake-up (at most [`BATCH`] records; see `store::events`), and purges what is past
//! the retention. A batch the store refuses is dropped and counted, like a record the full queue
//! refused: the queue never waits on the store. It runs until the process exits (the
//! drainer waits for the queued records: `event_log::wait_written`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc::Receiver;

use super::EventLogConfig;
use crate::metrics;
use crate::store::events::NewEvent;
use crate::store::Store;

/// Records per page at most.
const BATCH: usize = 50_000;
/// A wake-up that found less than a full batch waits this long before the next, so a
/// steady trickle is written in pages rather than a transaction per request (and a record
/// is readable within about this long).
const LINGER: Duration = Duration::from_millis(500);
/// The writer's threads' nice value: the log is background work, so on a saturated node the
/// gateway's threads go first (the log still gets its few percent, or drops and counts).
const NICE: libc::c_int = 10;

/// Lowers the calling thread's priority to [`NICE`] (Linux: the nice value is per thread).
fn yield_to_the_gateway() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !DONE.get() {
        // SAFETY: setpriority only reads its arguments; who = 0 is the calling thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
        DONE.set(true);
    }
}

/// [`LINGER`] once shutdown began.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(10);
/// After a failed write, before trying again.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct Writer {
    pub store: Arc<Store>,
    pub config: EventLogConfig,
    pub queue: std::sync::Mutex<Option<Receiver<NewEvent>>>,
}

#[async_trait]
impl BackgroundService for Writer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut queue) = self.queue.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        let sweep_every =
            (self.config.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut batch = Vec::with_capacity(BATCH);
        let mut failing = false;
        loop {
            // Once shutdown began the process exits after its last request: write promptly.
            let linger = if *shutdown.borrow() {
                SHUTDOWN_LINGER
            } else {
                LINGER
            };
            tokio::select! {
                got = queue.recv_many(&mut batch, BATCH) => {
                    if got == 0 {
                        return;
                    }
                    let ok = self.write(&mut batch, &mut failing).await;
                    let pause = if !ok { BACKOFF } else if got < BATCH { linger } else { Duration::ZERO };
                    if !pause.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed(), if !*shutdown.borrow() => {}
                        }
                    }
                }
                _ = sweep.tick() => self.purge().await,
                _ = shutdown.changed(), if !*shutdown.borrow() => {}
            }
        }
    }
}

impl Writer {
    /// Writes and empties `batch`; false when the store refused it (the rows are dropped).
    async fn write(&self, batch: &mut Vec<NewEvent>, failing: &mut bool) -> bool {
        // (On whichever of the runtime's threads this task runs now.)
        yield_to_the_gateway();
        let n = batch.len() as u64;
        let result = self.store.insert_events(batch).await;
        super::settled(batch.len());
        batch.clear();
        match result {
            Ok(()) => {
                metrics::EVENT_LOG_WRITTEN.inc_by(n);
                if *failing {
                    tracing::info!("event log: writing again");
                }
                *failing = false;
                true
            }
            Err(e) => {
                metrics::EVENT_LOG_DROPPED.inc_by(n);
                // Once per outage, not once a batch.
                if !*failing {
                    tracing::warn!("event log: records dropped, the store refused them: {e}");
                }
                *failing = true;
                false
            }
        }
    }

    async fn purge(&self) {
        let cutoff = crate::store::now_ms() - self.config.retention.as_millis() as i64;
        match self.store.purge_events(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pages = n, "event log: records past the retention deleted"),
            Err(e) => tracing::debug!("event log: purge failed, tried again later: {e}"),
        }
    }
}
