//! The redis sink: `XADD` to a stream (default `webhooks:{provider}`), envelope as stream
//! fields and the raw body as the binary-safe `body` field.
//!
//! One multiplexed connection (redis-rs's `ConnectionManager`) carries every publish:
//! concurrent requests are pipelined onto it, and it reconnects with backoff by itself after
//! the server goes away. The reply to `XADD` is the acknowledgement; how durable that is is the
//! server's `appendfsync` setting (`always` for "the 202 survives a Redis crash").

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::{render, Envelope, Sink, SinkError};

/// One multiplexed redis-rs `ConnectionManager`, connected on first use inside the server's
/// runtime (Pingora may fork before that). The sink and the fleet's dedup store use it.
pub struct LazyRedis {
    client: redis::Client,
    timeout: Duration,
    connection: OnceCell<ConnectionManager>,
}

impl LazyRedis {
    pub fn open(url: &str, timeout: Duration) -> redis::RedisResult<LazyRedis> {
        Ok(LazyRedis {
            client: redis::Client::open(url)?,
            timeout,
            connection: OnceCell::new(),
        })
    }

    pub async fn get(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.min(Duration::from_secs(2))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    /// Whether the server answers a PING within a second (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut conn = self.get().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Some(_))
        )
    }
}

pub struct RedisSink {
    name: String,
    stream: String,
    maxlen: Option<u64>,
    timeout: Duration,
    connection: LazyRedis,
}

impl RedisSink {
    pub fn new(
        name: &str,
        url: &str,
        stream: &str,
        maxlen: Option<u64>,
        timeout: Duration,
    ) -> Result<RedisSink, String> {
        let connection =
            LazyRedis::open(url, timeout).map_err(|e| format!("redis sink `{name}`: url: {e}"))?;
        Ok(RedisSink {
            name: name.to_owned(),
            stream: stream.to_owned(),
            maxlen,
            timeout,
            connection,
        })
    }

    /// `XADD stream [MAXLEN ~ n] * field value …`
    fn command(&self, envelope: &Envelope) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(render(&self.stream, envelope));
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*")
            .arg("provider")
            .arg(&envelope.provider)
            .arg("event_id")
            .arg(&envelope.event_id)
            .arg("event_type")
            .arg(&envelope.event_type)
            .arg("received_at")
            .arg(&envelope.received_at)
            .arg("source_ip")
            .arg(&envelope.source_ip)
            .arg("verified")
            .arg(if envelope.verified { "true" } else { "false" });
        if let Some(reason) = envelope.reason {
            cmd.arg("reason").arg(reason);
        }
        let headers: serde_json::Map<String, serde_json::Value> = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        cmd.arg("headers")
            .arg(serde_json::Value::Object(headers).to_string())
            .arg("body")
            .arg(envelope.body.as_ref());
        cmd
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let cmd = self.command(envelope);
        let attempt = async {
            let mut conn = self
                .connection
                .get()
                .await
                .map_err(|e| SinkError::Unavailable(format!("redis connect: {e}")))?;
            cmd.query_async::<String>(&mut conn)
                .await
                .map_err(|e| SinkError::Unavailable(format!("redis XADD: {e}")))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(_id)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SinkError::Unavailable(format!(
                "redis gave no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn ready(&self) -> bool {
        self.connection.ping().await
    }
}
