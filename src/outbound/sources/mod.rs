//! Broker sources of outbound messages (`outbound.sources`). Each reads its broker, hands
//! every entry to the dispatcher and acknowledges it only after the ledger committed it; an
//! entry that is not a message is kept as a dead letter (`invalid_message`, `unknown_tenant`)
//! and acknowledged, so it never blocks the stream and is never dropped silently.

pub mod amqp;
pub mod nats;
pub mod redis;

use std::sync::Arc;

use serde::Deserialize;

use super::message::Message;
use super::{Dispatcher, Refused};
use crate::config::Section;
use crate::metrics;

/// One `outbound.sources` entry, by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    Redis(redis::Spec),
    Nats(nats::Spec),
    Amqp(amqp::Spec),
}

pub enum Source {
    Redis(redis::Config),
    Nats(nats::Config),
    Amqp(amqp::Config),
}

pub fn load(specs: &[SourceSpec], base: &std::path::Path, at: &mut Section<'_, '_>) -> Vec<Source> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            // Problems at the item's own lines.
            let item = format!("[{i}]");
            let at = &mut at.nested(&["sources", &item]);
            match spec {
                SourceSpec::Redis(s) => s.load(base, at).map(Source::Redis),
                SourceSpec::Nats(s) => s.load(base, at).map(Source::Nats),
                SourceSpec::Amqp(s) => s.load(base, at).map(Source::Amqp),
            }
        })
        .collect()
}

/// What became of one entry.
pub enum Handled {
    /// In the ledger (queued or a duplicate): acknowledge it.
    Committed,
    /// Not a message; recorded as a dead letter: acknowledge it.
    DeadLetter,
    /// The ledger could not take it: leave it unacknowledged, try again later.
    Retry,
}

/// Hands one message (or why it is none) to the ledger.
pub async fn handle(
    dispatcher: &Dispatcher,
    source: &'static str,
    parsed: Result<Message, (&'static str, String)>,
    raw: &str,
) -> Handled {
    let refused = match parsed {
        Err(refusal) => refusal,
        Ok(message) => match dispatcher.enqueue(message, source).await {
            Ok(enqueued) => {
                let outcome = match enqueued {
                    crate::store::Enqueued::Queued { .. } => "queued",
                    crate::store::Enqueued::Duplicate { .. } => "duplicate",
                };
                metrics::OUTBOUND_MESSAGES
                    .with_label_values(&[source, outcome])
                    .inc();
                return Handled::Committed;
            }
            Err(Refused::Store(e)) => {
                tracing::warn!("outbound source {source}: {e}");
                return Handled::Retry;
            }
            Err(Refused::Invalid(invalid)) => ("invalid_message", invalid.detail),
            Err(Refused::Schema {
                endpoint,
                violation,
            }) => (
                "schema_violation",
                Refused::schema_detail(&endpoint, &violation),
            ),
            Err(Refused::UnknownTenant) => ("unknown_tenant", "no such tenant".to_owned()),
        },
    };
    let (reason, detail) = refused;
    match dispatcher
        .store
        .record_invalid(source, reason, &detail, raw)
        .await
    {
        Ok(()) => {
            metrics::OUTBOUND_MESSAGES
                .with_label_values(&[source, "rejected"])
                .inc();
            metrics::OUTBOUND_DEAD_LETTERS
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(
                source,
                reason,
                detail,
                "outbound: an entry is not a message; kept as a dead letter"
            );
            Handled::DeadLetter
        }
        Err(e) => {
            tracing::warn!("outbound source {source}: {e}");
            Handled::Retry
        }
    }
}

/// Whether a source holds a working subscription to its broker, for `/readyz`. A source that
/// cannot connect (a refused certificate or password, a broker away) is not ready.
pub struct Health {
    pub name: String,
    up: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn new(name: String) -> Arc<Health> {
        Arc::new(Health {
            name,
            up: Default::default(),
        })
    }

    pub fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `connect_and_consume` until shutdown, again a second after each time it ends (the
/// broker went away, a call failed): a source reconnects forever. `connect_and_consume`
/// marks `health` up once it is subscribed; it is down from the moment it ends.
pub async fn keep_running<F, Fut, E>(
    mut shutdown: pingora::server::ShutdownWatch,
    what: &str,
    health: &Health,
    connect_and_consume: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while !*shutdown.borrow() {
        tokio::select! {
            result = connect_and_consume() => {
                health.set(false);
                if let Err(e) = result {
                    tracing::warn!("outbound source {what}: {e}");
                }
            }
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A source's background service.
pub enum Service {
    Redis(redis::Consumer),
    Nats(nats::Consumer),
    Amqp(amqp::Consumer),
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Service {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        match self {
            Service::Redis(c) => c.start(shutdown).await,
            Service::Nats(c) => c.start(shutdown).await,
            Service::Amqp(c) => c.start(shutdown).await,
        }
    }
}

/// The background service of each source, and its health.
pub fn services(sources: Vec<Source>, dispatcher: &Arc<Dispatcher>) -> Vec<(Service, Arc<Health>)> {
    sources
        .into_iter()
        .map(|s| match s {
            Source::Redis(config) => {
                let health = Health::new(format!("redis:{}", config.stream));
                let consumer = redis::Consumer {
                    config,
                    dispatcher: dispatcher.clone(),
                    health: health.clone(),
                };
                (Service::Redis(consumer), health)
            }
            Source::Nats(config) => {
                let health = Health::new(format!("nats:{}", config.stream));
                let consumer = nats::Consumer {
                    config,
                    dispatcher: dispatcher.clone(),
                    health: health.clone(),
                };
                (Service::Nats(consumer), health)
            }
            Source::Amqp(config) => {
                let health = Health::new(format!("amqp:{}", config.queue));
                let consumer = amqp::Consumer {
                    config,
                    dispatcher: dispatcher.clone(),
                    health: health.clone(),
                };
                (Service::Amqp(consumer), health)
            }
        })
        .collect()
}
