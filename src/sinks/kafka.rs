//! The kafka sink: one produce per event through librdkafka (rdkafka), acknowledged by its
//! delivery report.
//!
//! The producer is idempotent with `acks=all`: the report arrives once every in-sync replica
//! has the record, and librdkafka's own retries within the timeout never write it twice. The
//! key is `provider:event_id` (so one event's retries land in one partition), the value the raw
//! body, and the envelope travels as `Portcullis-*` record headers, like the nats sink's. A
//! delivery that does not report within `timeout` is a 503; it may still land afterwards, so a
//! consumer sees a sender's retry as a second record with the same key (at least once, as
//! with every queue without a broker-side dedup window).
//!
//! The producer is made when the server starts (the sink warm-up; or at first use), inside
//! its runtime: the daemon forks before that, and librdkafka's threads would not survive it.
//! A producer whose idempotence session
//! broke is replaced, and the next event starts a fresh session (a new producer id) instead of
//! every event failing until a restart: on librdkafka's fatal error, on the broker refusing
//! its sequence, epoch or producer id or failing unexpectedly, and on a delivery that timed
//! out. The last leaves a gap in the session's sequence numbers, which librdkafka would repair
//! by bumping the producer epoch (KIP-360); brokers before Kafka 2.5 cannot, and Tansu 0.6
//! breaks on it after a restart, while a new session works with every broker. The old producer
//! is dropped off the runtime (librdkafka's destroy waits for its threads).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{render, Envelope, Sink, SinkError};

/// Kafka's own limit on a topic name's length.
const MAX_TOPIC: usize = 249;

pub struct KafkaSink {
    name: String,
    config: Config,
    producer: ArcSwapOption<FutureProducer>,
    /// Held while a producer is made, so concurrent first events make one (a second one
    /// would have to be destroyed, which blocks).
    making: std::sync::Mutex<()>,
}

impl KafkaSink {
    pub fn new(name: &str, config: Config) -> KafkaSink {
        KafkaSink {
            name: name.to_owned(),
            config,
            producer: ArcSwapOption::empty(),
            making: std::sync::Mutex::new(()),
        }
    }

    fn producer(&self) -> Result<Arc<FutureProducer>, SinkError> {
        if let Some(producer) = self.producer.load_full() {
            return Ok(producer);
        }
        // Making one is quick (librdkafka connects in its own threads): no await under it.
        let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(producer) = self.producer.load_full() {
            return Ok(producer);
        }
        let made: FutureProducer = self
            .config
            .client_config()
            .create()
            .map_err(|e| SinkError::Unavailable(format!("kafka producer: {e}")))?;
        let made = Arc::new(made);
        self.producer.store(Some(made.clone()));
        Ok(made)
    }

    /// Replaces a producer whose session broke (`error`: its delivery's, `None` when the
    /// report did not come in time), so the next event makes a new one.
    fn forget_if_broken(&self, producer: Arc<FutureProducer>, error: Option<&KafkaError>) {
        let why = match (producer.client().fatal_error(), error) {
            (Some((code, reason)), _) => format!("{code:?}: {reason}"),
            (None, None) => "no delivery report in time".to_owned(),
            (None, Some(e)) if e.rdkafka_error_code().is_some_and(breaks_session) => e.to_string(),
            (None, Some(_)) => return,
        };
        let current = self.producer.load();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &producer)) {
            return; // another event replaced it already
        }
        self.producer.compare_and_swap(&*current, None::<Arc<_>>);
        tracing::warn!(sink = %self.name, error = %why, "kafka producer session broke; the next event starts a new one");
        retire(producer, self.config.timeout);
    }

    fn headers(envelope: &Envelope) -> OwnedHeaders {
        let verified = if envelope.verified { "true" } else { "false" };
        let mut headers = OwnedHeaders::new_with_capacity(8 + envelope.headers.len());
        for (key, value) in [
            ("Portcullis-Provider", envelope.provider.as_str()),
            ("Portcullis-Event-Id", envelope.event_id.as_str()),
            ("Portcullis-Event-Type", envelope.event_type.as_str()),
            ("Portcullis-Received-At", envelope.received_at.as_str()),
            ("Portcullis-Source-Ip", envelope.source_ip.as_str()),
            ("Portcullis-Verified", verified),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if let Some(reason) = envelope.reason {
            headers = headers.insert(Header {
                key: "Portcullis-Reason",
                value: Some(reason),
            });
        }
        if let Some(map) = &envelope.map {
            headers = headers.insert(Header {
                key: "Portcullis-Map",
                value: Some(map.as_str()),
            });
        }
        for (key, value) in &envelope.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_str()),
            });
        }
        headers
    }
}

/// Delivery errors after which this producer's idempotence session cannot go on.
fn breaks_session(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        OutOfOrderSequenceNumber
            | DuplicateSequenceNumber
            | InvalidProducerEpoch
            | InvalidProducerIdMapping
            | UnknownProducerId
            | ProducerFenced
            | Unknown
            | MessageTimedOut
    )
}

/// Drops a replaced producer on a blocking thread once the events still waiting on it are
/// answered (their delivery reports come within `timeout`): librdkafka's destroy purges,
/// flushes for up to 500 ms and joins its threads, which must not stall the runtime.
fn retire(producer: Arc<FutureProducer>, timeout: Duration) {
    tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + timeout + Duration::from_secs(1);
        while Arc::strong_count(&producer) > 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(producer);
    });
}

/// The topic of an event: the template rendered, with what Kafka does not allow in a name
/// (the `:` event types may hold) made `_`, and at most Kafka's 249 characters.
pub fn topic(template: &str, envelope: &Envelope) -> String {
    render(template, envelope)
        .chars()
        .map(|c| if topic_char(c) { c } else { '_' })
        .take(MAX_TOPIC)
        .collect()
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let producer = self.producer()?;
        let topic = topic(&self.config.topic, envelope);
        let key = format!("{}:{}", envelope.provider, envelope.event_id);
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&envelope.body[..])
            .headers(Self::headers(envelope));
        // librdkafka bounds the delivery by `message.timeout.ms`; this bounds the wait for room
        // in its queue as well, so the sender's answer never waits longer than `timeout`.
        let delivery = producer.send(record, Timeout::After(self.config.timeout));
        match tokio::time::timeout(self.config.timeout, delivery).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => {
                let failed = format!("kafka delivery to {topic}: {e}");
                self.forget_if_broken(producer, Some(&e));
                Err(SinkError::Unavailable(failed))
            }
            Err(_) => {
                self.forget_if_broken(producer, None);
                Err(SinkError::Unavailable(format!(
                    "no kafka delivery report within {:?}",
                    self.config.timeout
                )))
            }
        }
    }

    /// Makes the producer: librdkafka connects and takes its producer id in the background.
    async fn warm(&self) {
        if let Err(e) = self.producer() {
            tracing::warn!(sink = %self.name, "{e}");
        }
    }

    /// Whether a broker answers a metadata request within a second.
    async fn ready(&self) -> bool {
        let Ok(producer) = self.producer() else {
            return false;
        };
        let asked = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .map(|m| !m.brokers().is_empty())
                .unwrap_or(false)
        });
        matches!(
            tokio::time::timeout(Duration::from_secs(2), asked).await,
            Ok(Ok(true))
        )
    }
}

/// `type: kafka`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("kafka");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    brokers: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    tls: Option<super::config::TlsSpec>,
    #[serde(default)]
    sasl: Option<SaslSpec>,
}

/// `sasl:` the credentials the broker asks for.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslSpec {
    mechanism: String,
    username: String,
    password: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port[,host:port…]`, the bootstrap brokers.
    pub brokers: String,
    pub topic: String,
    pub timeout: Duration,
    pub tls: Option<super::config::ClientTls>,
    pub sasl: Option<Sasl>,
}

#[derive(Debug, Clone)]
pub struct Sasl {
    /// As librdkafka spells it: SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN.
    pub mechanism: &'static str,
    pub username: String,
    pub password: crate::config::secrets::Secret,
}

const MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"];

impl Config {
    /// The producer's settings: the durable ones are fixed, not configurable.
    fn client_config(&self) -> ClientConfig {
        let timeout_ms = self.timeout.as_millis().to_string();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms)
            // Concurrent events still share a batch; one event alone waits at most 1 ms.
            .set("linger.ms", "2")
            // A broker back from a restart is found within a second, not librdkafka's 10 s.
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.keepalive.enable", "true");
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(tls) = &self.tls {
            // The broker's name is checked against its certificate (librdkafka's default).
            config.set("ssl.endpoint.identification.algorithm", "https");
            for (key, path) in [
                ("ssl.ca.location", &tls.ca),
                ("ssl.certificate.location", &tls.cert),
                ("ssl.key.location", &tls.key),
            ] {
                if let Some(path) = path {
                    config.set(key, path.to_string_lossy());
                }
            }
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set(
                    "sasl.password",
                    String::from_utf8_lossy(&sasl.password.0).into_owned(),
                );
        }
        config
    }
}

impl super::SinkConfig for Config {
    fn build(&self, name: &str, _built: &super::Built) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(KafkaSink::new(name, self.clone())))
    }
}

/// Whether `brokers` is a list of `host:port`.
fn check_brokers(brokers: &str) -> Result<(), String> {
    for broker in brokers.split(',').map(str::trim) {
        let port = broker
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok());
        if port.is_none() {
            return Err(format!(
                "broker `{broker}` is not host:port (like 127.0.0.1:9092; several: a,b)"
            ));
        }
    }
    Ok(())
}

impl super::config::Spec for Spec {
    fn load(
        &self,
        name: &str,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<Arc<dyn super::SinkConfig>> {
        let timeout = super::config::timeout(self.timeout.as_deref(), at);
        let tls = super::config::client_tls(self.tls.as_ref(), base, at);
        let sasl = self.sasl.as_ref().and_then(|s| {
            let Some(mechanism) = MECHANISMS
                .iter()
                .find(|m| m.eq_ignore_ascii_case(&s.mechanism))
            else {
                at.error(
                    &["sasl", "mechanism"],
                    format!(
                        "sasl mechanism `{}`: use one of {}",
                        s.mechanism,
                        MECHANISMS.join(", ")
                    ),
                );
                return None;
            };
            if *mechanism == "PLAIN" && self.tls.is_none() {
                at.error(
                    &["sasl", "mechanism"],
                    "sasl PLAIN sends the password as it is: it needs tls: (or use SCRAM-SHA-512)",
                );
            }
            let password = super::config::password(&s.password, base, &["sasl", "password"], at)?;
            Some(Sasl {
                mechanism,
                username: s.username.clone(),
                password,
            })
        });
        let Some(brokers) = &self.brokers else {
            at.error(
                &[],
                format!("kafka sink `{name}` needs brokers: \"127.0.0.1:9092\""),
            );
            return None;
        };
        if let Err(e) = check_brokers(brokers) {
            at.error(&["brokers"], e);
        }
        let topic = self
            .topic
            .clone()
            .unwrap_or_else(|| "webhooks.{provider}".into());
        if let Err(e) = super::check_template(&topic) {
            at.error(&["topic"], e);
        } else {
            let literal = topic.replace("{provider}", "").replace("{event_type}", "");
            if let Some(c) = literal.chars().find(|c| !topic_char(*c)) {
                at.error(
                    &["topic"],
                    format!("topic `{topic}`: Kafka topic names take letters, digits, `.`, `_` and `-`, not `{c}`"),
                );
            }
        }
        Some(Arc::new(Config {
            brokers: brokers.clone(),
            topic,
            timeout,
            tls,
            sasl,
        }))
    }

    fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event_type: &str) -> Envelope {
        Envelope {
            provider: "stripe".into(),
            event_id: "evt_1".into(),
            event_type: event_type.into(),
            received_at: "2026-12-03T00:00:00Z".into(),
            source_ip: "127.0.0.1".into(),
            verified: true,
            reason: None,
            headers: vec![],
            map: None,
            body: bytes::Bytes::new(),
            dedup_ttl: None,
        }
    }

    #[test]
    fn topics_take_only_what_kafka_allows() {
        let t = "webhooks.{provider}.{event_type}";
        assert_eq!(
            topic(t, &envelope("charge.succeeded")),
            "webhooks.stripe.charge.succeeded"
        );
        assert_eq!(topic(t, &envelope("ns:push")), "webhooks.stripe.ns_push");
        let long = "a".repeat(300);
        assert_eq!(topic("{event_type}", &envelope(&long)).len(), MAX_TOPIC);
    }

    #[test]
    fn brokers_are_host_port_lists() {
        assert!(check_brokers("127.0.0.1:9092").is_ok());
        assert!(check_brokers("k1:9092, k2:9093").is_ok());
        assert!(check_brokers("[::1]:9092").is_ok());
        for bad in ["127.0.0.1", ":9092", "k1:9092,", "k1:port"] {
            assert!(check_brokers(bad).is_err(), "{bad}");
        }
    }
}
