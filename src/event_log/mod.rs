//! The inbound event log: one record per answered request (accepted, duplicate, rejected or
//! failed) kept in the store, for `GET /v1/events` and `portcullis events`.
//!
//! The request path only pushes a record onto a bounded queue ([`EventLog::record`], never
//! waits); the writer ([`writer::Writer`], a background service) takes whatever has queued
//! and stores it as one page (see `store::events`). When the store is slow or down the queue fills and
//! further records are dropped and counted (`portcullis_event_log_dropped_total`): the log
//! is an operator's view, and a webhook is never slowed or refused for it.

pub mod cli;
pub mod writer;

use std::time::Duration;

use serde::Deserialize;

use crate::config::{keys, Report, Section};
use crate::store::events::{InboundEvent, NewEvent};

/// The server file's `event_log:` block (present: the log is on).
#[derive(Debug, Deserialize)]
pub struct EventLogSpec {
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    queue: Option<usize>,
}

pub fn nested_keys() -> (&'static str, &'static [&'static str]) {
    ("event_log", keys::<EventLogSpec>())
}

#[derive(Debug, Clone, Copy)]
pub struct EventLogConfig {
    /// How long a record is kept.
    pub retention: Duration,
    /// Records that may wait for the store; more are dropped.
    pub queue: usize,
}

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_QUEUE: usize = 100_000;
const MAX_QUEUE: usize = 1_000_000;

pub fn load(spec: &EventLogSpec, report: &mut Report<'_>) -> EventLogConfig {
    let mut at = Section::new(report, &["event_log"]);
    let retention = at.duration(
        "retention",
        spec.retention.as_deref(),
        DEFAULT_RETENTION,
        |d| {
            if d < Duration::from_secs(1) || d > Duration::from_secs(366 * 24 * 3600) {
                Err("event_log.retention must be at least 1s and at most 366d".into())
            } else {
                Ok(())
            }
        },
    );
    let queue = match spec.queue {
        None => DEFAULT_QUEUE,
        Some(q) if (1..=MAX_QUEUE).contains(&q) => q,
        Some(q) => {
            at.error(
                &["queue"],
                format!("event_log.queue is {q}: records waiting for the store, between 1 and {MAX_QUEUE}"),
            );
            DEFAULT_QUEUE
        }
    };
    EventLogConfig { retention, queue }
}

/// Records queued and not yet written (or dropped): a shutdown waits for them
/// ([`wait_written`]).
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Called by the writer once `n` records left the queue for good (written or dropped).
fn settled(n: usize) {
    PENDING.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
}

/// Waits (at most `limit`) until every queued record is written: the process is about to
/// exit, after its last request (its writer writes promptly once shutdown began).
pub async fn wait_written(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while PENDING.load(std::sync::atomic::Ordering::Acquire) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("shutdown: event log records not written in time, lost");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The request path's end of the queue.
#[derive(Clone)]
pub struct EventLog {
    queue: tokio::sync::mpsc::Sender<NewEvent>,
}

impl EventLog {
    /// The queue's two ends: this handle for the gateway, the receiver for [`writer::Writer`].
    pub fn new(config: &EventLogConfig) -> (EventLog, tokio::sync::mpsc::Receiver<NewEvent>) {
        crate::metrics::register_event_log_series();
        let (queue, rx) = tokio::sync::mpsc::channel(config.queue);
        (EventLog { queue }, rx)
    }

    /// Queues a record, or drops and counts it when the queue is full. Never waits.
    pub fn record(&self, event: NewEvent) {
        // Counted first, so the writer never settles a record not yet counted.
        PENDING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.queue.try_send(event).is_err() {
            settled(1);
            crate::metrics::EVENT_LOG_DROPPED.inc();
        }
    }
}

/// A record as the API and `portcullis events --json` show it.
pub fn json(e: &InboundEvent) -> serde_json::Value {
    serde_json::json!({
        "at": crate::api::time(Some(e.at)),
        "request_id": e.request_id,
        "provider": e.provider,
        "key_id": e.key_id,
        "outcome": e.outcome,
        "reason": e.reason,
        "shadow_verdict": e.shadow_verdict,
        "status": e.status,
        "event_id": e.event_id,
        "client_ip": e.client_ip,
        "bytes": e.bytes,
        "latency_ms": e.latency_us as f64 / 1000.0,
    })
}

/// The outcomes a record may have (what a query may ask for).
pub const OUTCOMES: [&str; 4] = ["accepted", "duplicate", "rejected", "error"];

/// A `since` as a caller writes it: a duration back from now (`1h`, `30m`) or an RFC 3339
/// time; unix ms.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    crate::config::parse_duration(text)
        .map(|d| now_ms - d.as_millis() as i64)
        .map_err(|_| format!("`{text}` is neither a duration (like 1h) nor an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        assert_eq!(parse_since("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(
            parse_since("2026-12-03T00:00:00Z", 0),
            Ok(1_796_256_000_000)
        );
        assert!(parse_since("yesterday", 0).is_err());
    }
}
