//! The amqp sink (RabbitMQ): publish to an exchange with a routing-key template, persistent
//! delivery, publisher confirms and `mandatory`, so an event no queue would take is an error
//! and not a silent drop. The broker's confirm is the acknowledgement.
//!
//! The envelope rides in AMQP properties (`message_id` = event id, `timestamp`,
//! `content_type`, `app_id`) and `portcullis-*` headers beside the forwarded request headers.
//! One connection carries `channels` confirm-mode channels, taken in turn (default 1). A pool
//! was meant to lift the sink's 9.5k/s (Redis: 51k), but measured side by side it did not:
//! one durable queue on RabbitMQ is the bound (its process near a core, confirms waiting for
//! its disk batches), and four channels only lengthened p99 (`bench/RESULTS.md`). It is there
//! for brokers where a channel is the bound (many queues, a cluster). After any failure the
//! link is dropped and the next publish reconnects, so the gateway heals without a restart.
//!
//! [`Broker`] is the connection both this sink and the RabbitMQ source of outbound messages
//! open: the url's user unless `username:`/`password:` (from `env:`/`file:`) say otherwise,
//! and for `amqps://` the `tls:` CA and client certificate. `tls:` with `amqp://` is refused
//! at load: a plaintext url is never upgraded, and a TLS broker is never spoken to in the clear.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use super::{render, Envelope, Sink, SinkError};

/// After a failed connect, publishes fail fast for this long instead of reconnecting each time.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Confirm channels per connection unless `channels:` says otherwise.
pub const DEFAULT_CHANNELS: usize = 1;
const MAX_CHANNELS: usize = 64;

/// A RabbitMQ to connect to: where, as whom, and over which TLS.
#[derive(Clone)]
pub struct Broker {
    uri: AMQPUri,
    tls: Option<super::config::ClientTls>,
}

/// Never the password.
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.uri.authority;
        f.debug_struct("Broker")
            .field("user", &a.userinfo.username)
            .field("host", &a.host)
            .field("port", &a.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A sink's or source's connection keys, as written.
pub struct BrokerSpec<'a> {
    pub url: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub tls: Option<&'a super::config::TlsSpec>,
}

impl Broker {
    /// The keys of `what` (like "amqp sink `a`"), checked together.
    pub fn load(
        what: &str,
        spec: BrokerSpec<'_>,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<Broker> {
        let BrokerSpec {
            url,
            username,
            password,
            tls,
        } = spec;
        let mut uri = match url.parse::<AMQPUri>() {
            Ok(uri) => uri,
            Err(e) => {
                at.error(
                    &["url"],
                    format!("{what}: url `{}`: {e}", crate::store::config::redact(url)),
                );
                return None;
            }
        };
        // `guest` is RabbitMQ's default user, which it accepts from loopback only: no secret.
        if url::Url::parse(url).is_ok_and(|u| u.password().is_some_and(|p| p != "guest")) {
            at.warn(
                &["url"],
                "the url holds a password, which ends up wherever urls are shown: use password: env:NAME",
            );
        }
        let tls = super::config::client_tls(tls, base, at);
        if tls.is_some() && uri.scheme != AMQPScheme::AMQPS {
            at.error(
                &["tls"],
                "tls: needs an amqps:// url (amqp:// is plaintext, and is never upgraded)",
            );
        }
        if let Some(username) = username {
            uri.authority.userinfo.username = username.to_owned();
        }
        match (username, password) {
            (_, Some(password)) => {
                let secret = super::config::password(password, base, &["password"], at)?;
                match String::from_utf8(secret.0.clone()) {
                    Ok(p) => uri.authority.userinfo.password = p,
                    Err(_) => at.error(&["password"], "the password is not UTF-8"),
                }
            }
            (Some(_), None) => at.error(
                &["password"],
                "username: needs password: (env:NAME or file:PATH)",
            ),
            (None, None) => {}
        }
        Some(Broker { uri, tls })
    }

    /// One connection, its TLS files read now (a renewed certificate is used on reconnect).
    pub async fn connect(&self) -> Result<Connection, String> {
        let config = match &self.tls {
            None => OwnedTLSConfig::default(),
            Some(tls) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
                };
                let cert_chain = match &tls.ca {
                    Some(ca) => Some(String::from_utf8_lossy(&read(ca)?).into_owned()),
                    None => None,
                };
                let identity = match (&tls.cert, &tls.key) {
                    (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                        pem: read(cert)?,
                        key: read(key)?,
                    }),
                    _ => None,
                };
                OwnedTLSConfig {
                    identity,
                    cert_chain,
                }
            }
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        Connection::connect_uri_with_config(
            self.uri.clone(),
            ConnectionProperties::default(),
            config,
            runtime,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

pub struct AmqpSink {
    name: String,
    broker: Broker,
    exchange: String,
    routing_key: String,
    timeout: Duration,
    channels: usize,
    /// Round robin over the pool.
    next: AtomicUsize,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    channels: Vec<Channel>,
    failed_at: Option<Instant>,
}

impl Link {
    /// Channel `turn` of the pool, if the connection and that channel are up.
    fn healthy(&self, turn: usize) -> Option<&Channel> {
        let connected = self
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        let channel = self.channels.get(turn % self.channels.len().max(1))?;
        (connected && channel.status().connected()).then_some(channel)
    }
}

impl AmqpSink {
    pub fn new(
        name: &str,
        broker: Broker,
        exchange: &str,
        routing_key: &str,
        timeout: Duration,
        channels: usize,
    ) -> AmqpSink {
        AmqpSink {
            name: name.to_owned(),
            broker,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            timeout,
            channels: channels.clamp(1, MAX_CHANNELS),
            next: AtomicUsize::new(0),
            link: Mutex::new(Link::default()),
        }
    }

    /// The pool's next channel, connecting (and declaring the exchange) when there is none.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut link = self.link.lock().await;
        if let Some(channel) = link.healthy(turn) {
            return Ok(channel.clone());
        }
        if link
            .failed_at
            .is_some_and(|t| t.elapsed() < RECONNECT_PAUSE)
        {
            return Err(SinkError::Unavailable("amqp: reconnecting".into()));
        }
        match self.connect().await {
            Ok((connection, channels)) => {
                let channel = channels[turn % channels.len()].clone();
                *link = Link {
                    connection: Some(connection),
                    channels,
                    failed_at: None,
                };
                Ok(channel)
            }
            Err(e) => {
                *link = Link {
                    failed_at: Some(Instant::now()),
                    ..Link::default()
                };
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, Vec<Channel>), SinkError> {
        let unavailable =
            |what: &str, e: lapin::Error| SinkError::Unavailable(format!("amqp {what}: {e}"));
        let connection = self
            .broker
            .connect()
            .await
            .map_err(|e| SinkError::Unavailable(format!("amqp connect: {e}")))?;
        let mut channels = Vec::with_capacity(self.channels);
        for _ in 0..self.channels {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| unavailable("channel", e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| unavailable("confirm.select", e))?;
            channels.push(channel);
        }
        channels[0]
            .exchange_declare(
                ShortString::from(self.exchange.clone()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable("exchange.declare", e))?;
        Ok((connection, channels))
    }

    async fn forget(&self) {
        let mut link = self.link.lock().await;
        *link = Link {
            failed_at: link.failed_at,
            ..Link::default()
        };
    }

    fn properties(envelope: &Envelope) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut put = |k: &str, v: &str| {
            headers.insert(
                ShortString::from(k.to_owned()),
                AMQPValue::LongString(LongString::from(v.to_owned())),
            );
        };
        put("portcullis-provider", &envelope.provider);
        put("portcullis-event-id", &envelope.event_id);
        put("portcullis-event-type", &envelope.event_type);
        put("portcullis-received-at", &envelope.received_at);
        put("portcullis-source-ip", &envelope.source_ip);
        put(
            "portcullis-verified",
            if envelope.verified { "true" } else { "false" },
        );
        if let Some(reason) = envelope.reason {
            put("portcullis-reason", reason);
        }
        if let Some(map) = &envelope.map {
            put("portcullis-map", map);
        }
        for (name, value) in &envelope.headers {
            put(name, value);
        }
        let timestamp = chrono::DateTime::parse_from_rfc3339(&envelope.received_at)
            .map(|t| t.timestamp().max(0) as u64)
            .unwrap_or_default();
        let mut properties = BasicProperties::default()
            .with_message_id(ShortString::from(envelope.event_id.clone()))
            .with_type(ShortString::from(envelope.event_type.clone()))
            .with_timestamp(timestamp)
            .with_delivery_mode(2)
            .with_app_id(ShortString::from("portcullis".to_owned()))
            .with_headers(headers);
        if let Some((_, ct)) = envelope.headers.iter().find(|(k, _)| k == "content-type") {
            properties = properties.with_content_type(ShortString::from(ct.clone()));
        }
        properties
    }

    async fn try_publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                ShortString::from(self.exchange.clone()),
                ShortString::from(render(&self.routing_key, envelope)),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &envelope.body,
                Self::properties(envelope),
            )
            .await
            .map_err(|e| SinkError::Unavailable(format!("amqp publish: {e}")))?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_returned))) => Err(SinkError::Unavailable(format!(
                "amqp: no queue is bound to exchange `{}` for routing key `{}` (unroutable, returned)",
                self.exchange,
                render(&self.routing_key, envelope)
            ))),
            Ok(Confirmation::Nack(_)) => Err(SinkError::Unavailable("amqp: broker nacked the message".into())),
            Ok(Confirmation::NotRequested) => Err(SinkError::Unavailable("amqp: no publisher confirm".into())),
            Err(e) => Err(SinkError::Unavailable(format!("amqp confirm: {e}"))),
        }
    }
}

#[async_trait]
impl Sink for AmqpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let result = match tokio::time::timeout(self.timeout, self.try_publish(envelope)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Unavailable(format!(
                "no publisher confirm within {:?}",
                self.timeout
            ))),
        };
        if result.is_err() {
            // An unroutable message leaves the channels healthy; anything else may not have.
            let link = self.link.lock().await;
            let healthy = (0..link.channels.len()).all(|i| link.healthy(i).is_some());
            drop(link);
            if !healthy {
                self.forget().await;
            }
        }
        result
    }

    async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.channel()).await,
            Ok(Ok(_))
        )
    }
}

/// `type: amqp`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("amqp");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    channels: Option<usize>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<super::config::TlsSpec>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: Broker,
    pub exchange: String,
    pub routing_key: String,
    pub timeout: Duration,
    pub channels: usize,
}

impl super::SinkConfig for Config {
    fn build(&self, name: &str, _built: &super::Built) -> Result<std::sync::Arc<dyn Sink>, String> {
        Ok(std::sync::Arc::new(AmqpSink::new(
            name,
            self.broker.clone(),
            &self.exchange,
            &self.routing_key,
            self.timeout,
            self.channels,
        )))
    }
}

impl super::config::Spec for Spec {
    fn load(
        &self,
        name: &str,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<std::sync::Arc<dyn super::SinkConfig>> {
        let timeout = super::config::timeout(self.timeout.as_deref(), at);
        let example = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let url = super::config::url(self.url.as_ref(), "amqp", name, example, at)?;
        let spec = BrokerSpec {
            url: &url,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            tls: self.tls.as_ref(),
        };
        let broker = Broker::load(&format!("amqp sink `{name}`"), spec, base, at);
        let exchange = self.exchange.clone().unwrap_or_else(|| "webhooks".into());
        let routing_key = self
            .routing_key
            .clone()
            .unwrap_or_else(|| "{provider}".into());
        if let Err(e) = super::check_template(&routing_key) {
            at.error(&["routing_key"], e);
        }
        let channels = self.channels.unwrap_or(DEFAULT_CHANNELS);
        if !(1..=MAX_CHANNELS).contains(&channels) {
            at.error(
                &["channels"],
                format!("channels must be from 1 to {MAX_CHANNELS} (confirm channels on one connection)"),
            );
        }
        Some(std::sync::Arc::new(Config {
            broker: broker?,
            exchange,
            routing_key,
            timeout,
            channels,
        }))
    }

    fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broker_prints_without_its_password() {
        let broker = super::Broker {
            uri: "amqps://portcullis:s3cret-pw@mq:5671/%2f".parse().unwrap(),
            tls: None,
        };
        let shown = format!("{broker:?}");
        assert!(shown.contains("portcullis") && shown.contains("mq"));
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
}
