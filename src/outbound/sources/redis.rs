//! A Redis Stream source: a consumer group reads `stream` (`XREADGROUP`), each entry is
//! acknowledged (`XACK`) only after the ledger committed its message. After a restart the
//! consumer first re-reads its own pending entries (same `consumer` name), and it takes over
//! the entries another consumer left pending longer than `claim_idle` (`XAUTOCLAIM`): a node
//! that died between read and commit loses nothing. The group starts at the stream's first
//! entry, so what was written before the dispatcher first ran is delivered too.
//!
//! Entry fields: `tenant`, `event_type`, `id`, `payload` (JSON text, delivered byte for
//! byte), `ordering_key`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Handled;
use crate::config::{parse_duration, Section};
use crate::outbound::message::{self, Message};
use crate::outbound::Dispatcher;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    url: String,
    stream: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    claim_idle: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<crate::sinks::config::TlsSpec>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub claim_idle: Duration,
    /// The ACL password and TLS, as the redis sink takes them.
    pub auth: crate::sinks::redis::Auth,
}

impl Spec {
    pub fn load(&self, base: &std::path::Path, at: &mut Section<'_, '_>) -> Option<Config> {
        if let Err(e) = ::redis::Client::open(self.url.as_str()) {
            at.error(
                &["url"],
                format!(
                    "redis source: url `{}`: {e}",
                    crate::store::config::redact(&self.url)
                ),
            );
            return None;
        }
        let claim_idle = match self.claim_idle.as_deref().map(parse_duration) {
            None => Duration::from_secs(60),
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                at.error(
                    &["claim_idle"],
                    "redis source: claim_idle must be more than zero",
                );
                return None;
            }
            Some(Err(e)) => {
                at.error(&["claim_idle"], format!("redis source: claim_idle: {e}"));
                return None;
            }
        };
        Some(Config {
            url: self.url.clone(),
            stream: self.stream.clone(),
            group: self.group.clone().unwrap_or_else(|| "portcullis".into()),
            consumer: self
                .consumer
                .clone()
                .unwrap_or_else(crate::outbound::hostname),
            claim_idle,
            auth: crate::sinks::redis::Auth::load(
                &self.url,
                self.password.as_deref(),
                self.tls.as_ref(),
                base,
                at,
            ),
        })
    }
}

/// Entries read per call.
const BATCH: usize = 100;
/// How long one `XREADGROUP` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

pub struct Consumer {
    pub config: Config,
    pub dispatcher: Arc<Dispatcher>,
    /// Up while reads succeed.
    pub health: Arc<super::Health>,
}

#[async_trait]
impl BackgroundService for Consumer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut pending = true;
        let mut last_claim: Option<Instant> = None;
        let mut conn: Option<ConnectionManager> = None;
        while !*shutdown.borrow() {
            let c = match &conn {
                Some(c) => c.clone(),
                None => match self.connect().await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.health.set(false);
                        tracing::warn!(stream = %self.config.stream, "outbound redis source: {e}");
                        if pause(&mut shutdown, Duration::from_secs(1)).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let step = self.step(c, &mut pending, &mut last_claim).await;
            self.health.set(step.is_ok());
            match step {
                Ok(true) => {}
                Ok(false) => {
                    if pause(&mut shutdown, Duration::from_secs(1)).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.config.stream, "outbound redis source: {e}");
                    pending = true;
                    if pause(&mut shutdown, Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps `d` unless shutdown comes first (then true).
async fn pause(shutdown: &mut ShutdownWatch, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

impl Consumer {
    async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let client =
            self.config.auth.client(&self.config.url).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "redis source", e))
            })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(conn),
        }
    }

    /// One round: this consumer's own pending entries (after a start or a failure), entries
    /// left by others, then new ones. `Ok(false)` when the ledger refused and the round
    /// should pause.
    async fn step(
        &self,
        mut conn: ConnectionManager,
        pending: &mut bool,
        last_claim: &mut Option<Instant>,
    ) -> redis::RedisResult<bool> {
        let cfg = &self.config;
        if *pending {
            let entries = self.read(&mut conn, "0", None).await?;
            if entries.is_empty() {
                *pending = false;
            } else if !self.process(&mut conn, entries).await? {
                return Ok(false);
            }
            return Ok(true);
        }
        if last_claim.is_none_or(|t| t.elapsed() >= cfg.claim_idle / 2) {
            *last_claim = Some(Instant::now());
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&cfg.stream)
                .arg(&cfg.group)
                .arg(&cfg.consumer)
                .arg(cfg.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            if !reply.claimed.is_empty() && !self.process(&mut conn, reply.claimed).await? {
                *pending = true;
                return Ok(false);
            }
        }
        let entries = self.read(&mut conn, ">", Some(BLOCK)).await?;
        if !self.process(&mut conn, entries).await? {
            *pending = true;
            return Ok(false);
        }
        Ok(true)
    }

    async fn read(
        &self,
        conn: &mut ConnectionManager,
        from: &str,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut options = StreamReadOptions::default()
            .group(&self.config.group, &self.config.consumer)
            .count(BATCH);
        if let Some(b) = block {
            options = options.block(b.as_millis() as usize);
        }
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(conn, &[&self.config.stream], &[from], &options)
                .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Hands each entry to the ledger and acks it after; false at the first refusal (the
    /// rest stay pending).
    async fn process(
        &self,
        conn: &mut ConnectionManager,
        entries: Vec<StreamId>,
    ) -> redis::RedisResult<bool> {
        for entry in entries {
            let raw = raw_fields(&entry);
            let handled = super::handle(&self.dispatcher, "redis", parse(&entry), &raw).await;
            match handled {
                Handled::Committed | Handled::DeadLetter => {
                    let _: i64 = redis::AsyncCommands::xack(
                        conn,
                        &self.config.stream,
                        &self.config.group,
                        &[&entry.id],
                    )
                    .await?;
                }
                Handled::Retry => return Ok(false),
            }
        }
        Ok(true)
    }
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get::<String>(name)
}

/// An entry's fields as a message.
fn parse(entry: &StreamId) -> Result<Message, (&'static str, String)> {
    let invalid = |detail: String| ("invalid_message", detail);
    let payload = field(entry, "payload").ok_or_else(|| invalid("`payload` is missing".into()))?;
    if serde_json::from_str::<&RawValue>(&payload).is_err() {
        return Err(invalid("`payload` is not JSON text".into()));
    }
    let mut object = serde_json::Map::new();
    for name in ["tenant", "event_type", "id", "ordering_key"] {
        if let Some(v) = field(entry, name) {
            object.insert(name.into(), v.into());
        }
    }
    // The same checks as the API's, on the text fields; the payload stays as sent.
    let mut message = message::parse(
        serde_json::Value::Object({
            let mut o = object;
            o.insert("payload".into(), 0.into());
            o
        })
        .to_string()
        .as_bytes(),
    )
    .map_err(|e| invalid(e.detail))?;
    message.payload = payload;
    Ok(message)
}

/// The entry as JSON text (for the dead letter), cut at 64 KiB.
fn raw_fields(entry: &StreamId) -> String {
    let fields: serde_json::Map<String, serde_json::Value> = entry
        .map
        .keys()
        .filter_map(|k| Some((k.clone(), field(entry, k)?.into())))
        .collect();
    let mut text = serde_json::Value::Object(fields).to_string();
    if text.len() > 64 * 1024 {
        let mut cut = 64 * 1024;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
