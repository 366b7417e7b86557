//! A RabbitMQ source: consumes `queue` (declared durable) with manual acks and a bounded
//! prefetch; each delivery is acked only after the ledger committed its message, and
//! requeued (nack) when the ledger could not take it. A delivery whose node dies before its
//! ack goes back to the queue when the connection drops. The body is the message object of
//! `POST /outbound`, as JSON. It connects like the amqp sink (`username`, `password`, `tls`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;

use super::Handled;
use crate::config::Section;
use crate::outbound::message;
use crate::outbound::Dispatcher;
use crate::sinks::amqp::{Broker, BrokerSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    url: String,
    queue: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<crate::sinks::config::TlsSpec>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: Broker,
    pub queue: String,
}

impl Spec {
    pub fn load(&self, base: &std::path::Path, at: &mut Section<'_, '_>) -> Option<Config> {
        if self.queue.is_empty() {
            at.error(&["queue"], "amqp source: queue must not be empty");
            return None;
        }
        let spec = BrokerSpec {
            url: &self.url,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            tls: self.tls.as_ref(),
        };
        let broker = Broker::load("amqp source", spec, base, at)?;
        Some(Config {
            broker,
            queue: self.queue.clone(),
        })
    }
}

/// Deliveries in flight per consumer.
const PREFETCH: u16 = 100;

pub struct Consumer {
    pub config: Config,
    pub dispatcher: Arc<Dispatcher>,
    pub health: Arc<super::Health>,
}

#[async_trait]
impl BackgroundService for Consumer {
    async fn start(&self, shutdown: ShutdownWatch) {
        let what = format!("amqp queue {}", self.config.queue);
        super::keep_running(shutdown, &what, &self.health, || self.run()).await;
    }
}

impl Consumer {
    async fn run(&self) -> Result<(), String> {
        let connection = self.config.broker.connect().await?;
        self.consume(&connection).await.map_err(|e| e.to_string())
    }

    async fn consume(&self, connection: &lapin::Connection) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        channel
            .queue_declare(
                self.config.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "portcullis".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.health.set(true);
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery?;
            let raw = String::from_utf8_lossy(&delivery.data).into_owned();
            let parsed = message::parse(&delivery.data).map_err(|e| ("invalid_message", e.detail));
            match super::handle(&self.dispatcher, "amqp", parsed, &raw).await {
                Handled::Committed | Handled::DeadLetter => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Handled::Retry => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }
}
