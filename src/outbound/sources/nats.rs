//! A JetStream source: a durable pull consumer on `stream` (filtered to `subject`), each
//! message acknowledged only after the ledger committed it. A message the ledger could not
//! take is NAKed for redelivery; one that dies with its node is redelivered after `ack_wait`.
//! The payload of a NATS message is the message object of `POST /outbound`, as JSON. It
//! signs in like the nats sink (`tls`, and `creds`, `nkey` or `username`/`password`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;

use super::Handled;
use crate::config::Section;
use crate::outbound::message;
use crate::outbound::Dispatcher;
use crate::sinks::nats::{Access, AccessSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    url: String,
    stream: String,
    subject: String,
    #[serde(default)]
    durable: Option<String>,
    #[serde(default)]
    tls: Option<crate::sinks::config::TlsSpec>,
    #[serde(default)]
    creds: Option<String>,
    #[serde(default)]
    nkey: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub stream: String,
    pub subject: String,
    pub durable: String,
    pub access: Access,
}

impl Spec {
    pub fn load(&self, base: &std::path::Path, at: &mut Section<'_, '_>) -> Option<Config> {
        let access = Access::load(
            AccessSpec {
                tls: self.tls.as_ref(),
                creds: self.creds.as_deref(),
                nkey: self.nkey.as_deref(),
                username: self.username.as_deref(),
                password: self.password.as_deref(),
            },
            base,
            at,
        );
        if self.stream.is_empty() || self.subject.is_empty() {
            let key = if self.stream.is_empty() {
                "stream"
            } else {
                "subject"
            };
            at.error(&[key], "nats source: stream and subject must not be empty");
            return None;
        }
        Some(Config {
            url: self.url.clone(),
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            durable: self.durable.clone().unwrap_or_else(|| "portcullis".into()),
            access,
        })
    }
}

/// How long JetStream waits for an ack before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);

pub struct Consumer {
    pub config: Config,
    pub dispatcher: Arc<Dispatcher>,
    pub health: Arc<super::Health>,
}

#[async_trait]
impl BackgroundService for Consumer {
    async fn start(&self, shutdown: ShutdownWatch) {
        let what = format!("nats stream {}", self.config.stream);
        super::keep_running(shutdown, &what, &self.health, || self.run()).await;
    }
}

impl Consumer {
    async fn run(&self) -> Result<(), String> {
        let cfg = &self.config;
        let client = cfg
            .access
            .options()
            .map_err(|e| format!("credentials: {e}"))?
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![cfg.subject.clone()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("stream {}: {e}", cfg.stream))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &cfg.durable,
                consumer::pull::Config {
                    durable_name: Some(cfg.durable.clone()),
                    filter_subject: cfg.subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("consumer {}: {e}", cfg.durable))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("pull: {e}"))?;
        self.health.set(true);
        // The client reconnects by itself; meanwhile the source is not ready.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                msg = messages.next() => msg,
                _ = check.tick() => {
                    let connected = client.connection_state() == async_nats::connection::State::Connected;
                    self.health.set(connected);
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            let msg = msg.map_err(|e| format!("pull: {e}"))?;
            let raw = String::from_utf8_lossy(&msg.payload).into_owned();
            let parsed = message::parse(&msg.payload).map_err(|e| ("invalid_message", e.detail));
            let ack = match super::handle(&self.dispatcher, "nats", parsed, &raw).await {
                Handled::Committed | Handled::DeadLetter => AckKind::Ack,
                Handled::Retry => AckKind::Nak(Some(Duration::from_secs(1))),
            };
            msg.ack_with(ack).await.map_err(|e| format!("ack: {e}"))?;
        }
        Ok(())
    }
}
