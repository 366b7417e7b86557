//! Publishing dead letters to a sink (`outbound.dead_letters: { sink: NAME }`), e.g. a Redis
//! stream `webhook:dead_letter:{provider}` or the NATS subject `webhook.dispatch.deadletter`.
//!
//! The ledger stays the truth (`outbound dlq list`); this is an outbox on top of it: a dead
//! letter is marked published only after the sink acknowledged it, so a sink that is down
//! delays publishing and loses nothing (at least once; the envelope's event id is stable per
//! death, so an idempotent sink keeps one). In the sink's templates `{provider}` is the
//! tenant (`invalid` for a source entry that was no message) and `{event_type}` the reason.
//! The body is a JSON record with the message's payload under `payload` (as text when it was
//! not JSON).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Dispatcher;
use crate::sinks::{Envelope, Sink};
use crate::store::Unpublished;

/// How often the outbox is read when it was empty, and the pause after a failed publish.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_secs(5);

pub struct Publisher {
    pub dispatcher: Arc<Dispatcher>,
    pub sink: Arc<dyn Sink>,
}

#[async_trait]
impl BackgroundService for Publisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let pause = match self.dispatcher.store.unpublished(100).await {
                Ok(list) if list.is_empty() => POLL,
                Ok(list) => self.publish_all(&list).await,
                Err(e) => {
                    tracing::warn!("outbound: cannot read dead letters to publish: {e}");
                    BACKOFF
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Publisher {
    /// Publishes in order; the pause before the next round (none when all went out).
    async fn publish_all(&self, list: &[Unpublished]) -> Duration {
        for dead in list {
            if let Err(e) = self.sink.publish(&envelope(dead)).await {
                tracing::warn!(sink = self.sink.name(), id = %dead.id, "outbound: dead letter not published yet: {e}");
                return BACKOFF;
            }
            if let Err(e) = self.dispatcher.store.mark_published(dead).await {
                tracing::warn!("outbound: {e}");
                return BACKOFF;
            }
        }
        Duration::ZERO
    }
}

pub fn envelope(dead: &Unpublished) -> Envelope {
    let payload = serde_json::from_str::<&serde_json::value::RawValue>(&dead.payload)
        .ok()
        .map(|raw| raw.get().to_owned())
        .unwrap_or_else(|| serde_json::Value::from(dead.payload.as_str()).to_string());
    let record = serde_json::to_string(dead).unwrap_or_default();
    // The record's fields, then the payload as it came (JSON is never re-serialised).
    let body = format!(
        "{},\"payload\":{payload}}}",
        record.strip_suffix('}').unwrap_or(&record)
    );
    let at = chrono::DateTime::from_timestamp_millis(dead.at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Envelope {
        provider: dead.tenant.clone().unwrap_or_else(|| "invalid".into()),
        event_id: format!(
            "{}:{}:{}",
            dead.id,
            dead.endpoint.as_deref().unwrap_or("-"),
            dead.attempts
        ),
        event_type: dead.reason.clone(),
        received_at: at,
        source_ip: String::new(),
        verified: true,
        reason: None,
        headers: Vec::new(),
        map: None,
        body: Bytes::from(body),
        dedup_ttl: Some(Duration::from_secs(24 * 3600)),
    }
}
