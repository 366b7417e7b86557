//! `fallback: <spool sink>` on a queue or http sink: when the primary cannot take an event, it
//! goes to a local spool (fsync) and the sender still gets its 202; a background replayer
//! (a Pingora background service) re-publishes the spooled events to the primary in order
//! once it is back, and deletes what it has delivered.
//!
//! While a backlog exists, new events join the end of the spool instead of overtaking it, so
//! the primary sees events in arrival order. The replay position is a small checkpoint file
//! in the spool directory: a restart resumes where it stopped. Delivery from the spool is
//! at-least-once (a crash between a publish and its checkpoint repeats that event; NATS's
//! `Nats-Msg-Id` absorbs such repeats, other consumers see the same `event_id`).
//!
//! During a graceful upgrade two processes share the spool directory for a few seconds. Only
//! one replays at a time (a lock file), and a segment another writer still holds (its
//! `flock`) is neither deleted nor passed: replay waits there until that writer lets go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::spool::{complete_lines, decode_line, in_use, segment_path, segments, Position, Spool};
use super::{Envelope, Sink, SinkError};
use crate::metrics;

const CHECKPOINT: &str = "replay.checkpoint";
const REPLAY_LOCK: &str = "replay.lock";

/// What the publishing side and the replayer share.
struct Backlog {
    /// Spooled events wait to be replayed: new ones must queue behind them.
    pending: AtomicBool,
    wake: Notify,
}

pub struct WithFallback {
    primary: Arc<dyn Sink>,
    spool: Arc<Spool>,
    backlog: Arc<Backlog>,
}

/// Builds the sink and the replayer that drains its spool.
pub fn wrap(primary: Arc<dyn Sink>, spool: Arc<Spool>) -> (Arc<WithFallback>, Replayer) {
    let pending = Position::load(spool.dir(), CHECKPOINT).backlog(spool.dir());
    let backlog = Arc::new(Backlog {
        pending: AtomicBool::new(pending),
        wake: Notify::new(),
    });
    let sink = Arc::new(WithFallback {
        primary: primary.clone(),
        spool: spool.clone(),
        backlog: backlog.clone(),
    });
    (
        sink,
        Replayer {
            primary,
            spool,
            backlog,
        },
    )
}

#[async_trait]
impl Sink for WithFallback {
    fn name(&self) -> &str {
        self.primary.name()
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        if !self.backlog.pending.load(Ordering::SeqCst) {
            match self.primary.publish(envelope).await {
                Ok(()) => return Ok(()),
                // An upstream's explicit refusal is an answer, not an outage: no fallback.
                Err(rejected @ SinkError::Rejected(_)) => return Err(rejected),
                Err(e) => {
                    metrics::SINK_ERRORS
                        .with_label_values(&[self.primary.name()])
                        .inc();
                    tracing::warn!(sink = self.primary.name(), error = %e, fallback = self.spool.name(), "primary failed, spooling");
                }
            }
        }
        if let Err(e) = self.spool.publish(envelope).await {
            metrics::SINK_ERRORS
                .with_label_values(&[self.spool.name()])
                .inc();
            return Err(e);
        }
        self.backlog.pending.store(true, Ordering::SeqCst);
        self.backlog.wake.notify_one();
        Ok(())
    }

    /// Events are still taken (into the spool) while the primary is down.
    async fn ready(&self) -> bool {
        self.primary.ready().await || self.spool.ready().await
    }

    async fn warm(&self) {
        self.primary.warm().await
    }

    /// The primary's failures and the spool's, each under its own name, each once.
    fn counts_own_errors(&self) -> bool {
        true
    }
}

pub struct Replayer {
    primary: Arc<dyn Sink>,
    spool: Arc<Spool>,
    backlog: Arc<Backlog>,
}

impl Replayer {
    /// Publishes every spooled event after the checkpoint; returns false on shutdown.
    async fn drain(&self, shutdown: &mut ShutdownWatch) -> bool {
        let dir = self.spool.dir().to_path_buf();
        loop {
            let mut position = Position::load(&dir, CHECKPOINT);
            let all = segments(&dir);
            let newest = all.last().copied().unwrap_or(0);
            let start = position.seq;
            for seq in all.into_iter().filter(|s| *s >= start) {
                if seq > position.seq {
                    position = Position { seq, offset: 0 };
                }
                let path = segment_path(&dir, seq);
                let data = match complete_lines(&path, position.offset) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "cannot read spool segment");
                        return true;
                    }
                };
                for line in data.split_inclusive(|b| *b == b'\n') {
                    match decode_line(line.strip_suffix(b"\n").unwrap_or(line)) {
                        Some(mut envelope) => {
                            // An idempotent primary (redis) checks its marker on replay too:
                            // the publish that timed out before the fallback may have landed.
                            envelope.dedup_ttl = Some(crate::filters::dedup::config::DEFAULT_TTL);
                            if !self.deliver(&envelope, shutdown).await {
                                return false;
                            }
                        }
                        None => {
                            tracing::error!(path = %path.display(), offset = position.offset, "skipping a spool line that is not an envelope")
                        }
                    }
                    position.offset += line.len() as u64;
                    if let Err(e) = position.save(&dir, CHECKPOINT) {
                        tracing::error!(error = %e, "cannot save the replay checkpoint");
                    }
                }
                let live = in_use(&path);
                if live && seq < newest {
                    // Another process's live segment: later appends to it come first.
                    return true;
                }
                if seq < newest {
                    // Fully delivered and no longer written to: done with it.
                    let _ = std::fs::remove_file(&path);
                } else if position.offset > 0 {
                    // The live segment is delivered: let the writer move on so it can go too.
                    self.spool.request_rotation();
                }
            }
            self.backlog.pending.store(false, Ordering::SeqCst);
            // A publisher may have spooled behind the last read: look once more.
            if !Position::load(&dir, CHECKPOINT).backlog(&dir) {
                return true;
            }
            self.backlog.pending.store(true, Ordering::SeqCst);
        }
    }

    /// The replay lock of this spool, if no other process holds it.
    fn lock(&self) -> std::io::Result<Option<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.spool.dir().join(REPLAY_LOCK))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Publishes one event, retrying with backoff until the primary takes it.
    async fn deliver(&self, envelope: &Envelope, shutdown: &mut ShutdownWatch) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.primary.publish(envelope).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::debug!(sink = self.primary.name(), error = %e, "replay waits for the primary");
                    tokio::select! {
                        _ = shutdown.changed() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Replayer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // One replayer per spool, across processes: held until this process exits.
        let _lock = loop {
            match self.lock() {
                Ok(Some(file)) => break file,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot open the replay lock"),
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        loop {
            if *shutdown.borrow() || !self.drain(&mut shutdown).await {
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.backlog.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::spool::tests::envelope;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(envelope.event_id.clone());
            Ok(())
        }
        async fn ready(&self) -> bool {
            true
        }
    }

    struct Down;

    #[async_trait]
    impl Sink for Down {
        fn name(&self) -> &str {
            "down-primary"
        }
        async fn publish(&self, _: &Envelope) -> Result<(), SinkError> {
            Err(SinkError::Unavailable("connection refused".into()))
        }
        async fn ready(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn when_primary_and_spool_both_fail_each_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open("gone-spool", &dir.path().join("s"), 1 << 20).unwrap());
        // A file where the spool's directory was: no segment can be created.
        std::fs::remove_dir_all(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s"), b"").unwrap();
        let (sink, _replayer) = wrap(Arc::new(Down), spool);
        let errors = |name: &str| metrics::SINK_ERRORS.with_label_values(&[name]).get();

        assert!(sink.publish(&envelope("e-1", b"{}")).await.is_err());
        assert!(
            sink.counts_own_errors(),
            "the gateway must not count it again"
        );
        assert_eq!((errors("down-primary"), errors("gone-spool")), (1, 1));
    }

    #[tokio::test]
    async fn replay_waits_at_a_segment_another_process_still_writes() {
        // The old (a) and new (b) process of an upgrade, both spooling into one directory.
        let dir = tempfile::tempdir().unwrap();
        let a = Spool::open("a", dir.path(), 1 << 20).unwrap();
        a.publish(&envelope("a-1", b"{}")).await.unwrap();
        let b = Arc::new(Spool::open("b", dir.path(), 1 << 20).unwrap());
        b.publish(&envelope("b-1", b"{}")).await.unwrap();
        let recorder = Arc::new(Recorder::default());
        let (_sink, replayer) = wrap(recorder.clone(), b.clone());
        let (_tx, mut shutdown) = tokio::sync::watch::channel(false);

        assert!(replayer.drain(&mut shutdown).await);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["a-1"],
            "stops at a's live segment"
        );
        assert!(
            segment_path(dir.path(), 1).exists(),
            "a's segment is not deleted"
        );

        a.publish(&envelope("a-2", b"{}")).await.unwrap();
        drop(a); // a exits: its writer closes the segment and lets go of the lock
        for _ in 0..200 {
            if !in_use(&segment_path(dir.path(), 1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(replayer.drain(&mut shutdown).await);
        assert_eq!(*recorder.0.lock().unwrap(), ["a-1", "a-2", "b-1"]);
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "delivered and closed: deleted"
        );
    }

    #[tokio::test]
    async fn only_one_replayer_holds_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open("s", dir.path(), 1 << 20).unwrap());
        let (_, first) = wrap(Arc::new(Recorder::default()), spool.clone());
        let (_, second) = wrap(Arc::new(Recorder::default()), spool);
        let held = first.lock().unwrap();
        assert!(held.is_some());
        assert!(second.lock().unwrap().is_none(), "the other process waits");
        drop(held);
        assert!(second.lock().unwrap().is_some());
    }
}
