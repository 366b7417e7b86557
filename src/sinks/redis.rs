//! The redis sink: `XADD` to a stream (default `webhooks:{provider}`), envelope as stream
//! fields and the raw body as the binary-safe `body` field.
//!
//! One multiplexed connection (redis-rs's `ConnectionManager`) carries every publish:
//! concurrent requests are pipelined onto it, and it reconnects with backoff by itself after
//! the server goes away. The reply to `XADD` is the acknowledgement; how durable that is is the
//! server's `appendfsync` setting (`always` for "the 202 survives a Redis crash").
//!
//! A publish is idempotent per (stream, provider, event id): one script sets a marker
//! (`portcullis:published:<stream>:<provider>:<event id>`, kept for the filter's dedup TTL) and
//! adds to the stream only if the marker is new. A publish that timed out (Redis frozen, a slow disk)
//! got a 503, but may still land when Redis resumes: the sender's retry then finds the marker
//! and is acknowledged without a second entry. The same makes it safe to retry a publish once
//! on a fresh connection when the first attempt found the old one broken (Redis restarted), so
//! the first request after a restart does not fail. A background ping keeps the connection
//! (and `/readyz`) current while no request arrives.

use std::time::Duration;

use async_trait::async_trait;
use once_cell::sync::Lazy;
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

/// What a Redis needs beyond its URL: an ACL password (from `env:`/`file:`, so it is in no URL
/// and no log), and for `rediss://` the CA that signs the server and a client certificate.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub password: Option<crate::config::secrets::Secret>,
    pub tls: Option<super::config::ClientTls>,
}

impl Auth {
    /// A redis sink's or source's `password:` and `tls:`, checked against its url.
    pub fn load(
        url: &str,
        password: Option<&str>,
        tls: Option<&super::config::TlsSpec>,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Auth {
        if url::Url::parse(url).is_ok_and(|u| u.password().is_some()) {
            at.warn(
                &["url"],
                "the url holds a password, which ends up wherever urls are shown: use password: env:NAME",
            );
        }
        let tls = super::config::client_tls(tls, base, at);
        if tls.is_some() && !url.starts_with("rediss://") {
            at.error(
                &["tls"],
                "tls: needs a rediss:// url (redis:// is plaintext, and is never upgraded)",
            );
        }
        let password = password.and_then(|p| super::config::password(p, base, &["password"], at));
        Auth { password, tls }
    }

    /// A client for `url` with this password and TLS.
    pub fn client(&self, url: &str) -> Result<redis::Client, String> {
        use redis::IntoConnectionInfo;
        let mut info = url.into_connection_info().map_err(|e| e.to_string())?;
        if let Some(password) = &self.password {
            let password = std::str::from_utf8(&password.0)
                .map_err(|_| "the password is not UTF-8".to_owned())?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match &self.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
                };
                let client_tls = match (&tls.cert, &tls.key) {
                    (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                        client_cert: read(cert)?,
                        client_key: read(key)?,
                    }),
                    _ => None,
                };
                let root_cert = tls.ca.as_deref().map(read).transpose()?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    },
                )
            }
        }
        .map_err(|e| e.to_string())
    }
}

impl LazyRedis {
    pub fn open_with(url: &str, timeout: Duration, auth: &Auth) -> Result<LazyRedis, String> {
        Ok(LazyRedis {
            client: auth.client(url)?,
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
            .get_or_try_init(|| async {
                let conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
                keep_current(conn.clone());
                Ok(conn)
            })
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

/// Pings every second in the background: a connection Redis dropped (a restart) is noticed
/// and re-established before the next request needs it.
fn keep_current(mut conn: ConnectionManager) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
        }
    });
}

/// Adds the entry unless the marker says it was added before, then sets the marker; the entry
/// id, or nil for an event published before. The marker is set only after the XADD succeeded:
/// a script that fails halfway is not rolled back, and a marker without its entry would turn
/// the sender's retry into a silent loss. KEYS: stream, marker. ARGV: marker TTL (ms, 0 = no
/// marker), MAXLEN (0 = none), then the field/value pairs.
const PUBLISH: &str = r"
local ttl = tonumber(ARGV[1])
if ttl > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local args = {KEYS[1]}
if tonumber(ARGV[2]) > 0 then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 3, #ARGV do
  table.insert(args, ARGV[i])
end
local id = redis.call('XADD', unpack(args))
if ttl > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ttl)
end
return id
";

static SCRIPT: Lazy<redis::Script> = Lazy::new(|| redis::Script::new(PUBLISH));

pub struct RedisSink {
    name: String,
    stream: String,
    maxlen: Option<u64>,
    timeout: Duration,
    connection: LazyRedis,
}

impl RedisSink {
    pub fn new(name: &str, config: &Config) -> Result<RedisSink, String> {
        let (stream, maxlen, timeout) = (&config.stream, config.maxlen, config.timeout);
        let connection = LazyRedis::open_with(&config.url, timeout, &config.auth)
            .map_err(|e| format!("redis sink `{name}`: {e}"))?;
        Ok(RedisSink {
            name: name.to_owned(),
            stream: stream.to_owned(),
            maxlen,
            timeout,
            connection,
        })
    }

    /// `EVALSHA` of the publish script for this envelope. Built as one `Cmd`, which packs its
    /// arguments into a single buffer (redis-rs's `ScriptInvocation` holds a `Vec` per
    /// argument and copies them all into such a `Cmd` on every call).
    fn command(&self, envelope: &Envelope) -> redis::Cmd {
        let stream = render(&self.stream, envelope);
        // Per stream: the same event may go to two streams (two sinks) once each.
        let marker = format!(
            "portcullis:published:{stream}:{}:{}",
            envelope.provider, envelope.event_id
        );
        let ttl_ms = envelope
            .dedup_ttl
            .map_or(0, |t| t.as_millis().max(1) as u64);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(SCRIPT.get_hash())
            .arg(2)
            .arg(stream)
            .arg(marker)
            .arg(ttl_ms)
            .arg(self.maxlen.unwrap_or(0));
        cmd.arg("provider")
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
        if let Some(map) = &envelope.map {
            cmd.arg("map").arg(map);
        }
        let headers = serde_json::to_vec(&envelope.headers_json()).unwrap_or_default();
        cmd.arg("headers")
            .arg(headers)
            .arg("body")
            .arg(envelope.body.as_ref());
        cmd
    }
}

fn no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// A failure of the connection rather than of the command: worth one retry on a new one.
fn connection_broke(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let cmd = self.command(envelope);
        let attempt = async {
            let (mut retried, mut loaded) = (false, false);
            loop {
                let mut conn = self
                    .connection
                    .get()
                    .await
                    .map_err(|e| SinkError::Unavailable(format!("redis connect: {e}")))?;
                // Nil: published before (a timed-out attempt landed); the event is in the stream.
                match cmd.query_async::<Option<String>>(&mut conn).await {
                    Ok(_) => return Ok(()),
                    // A restarted (or `SCRIPT FLUSH`ed) Redis has forgotten the script.
                    Err(e) if no_script(&e) && !loaded => {
                        loaded = true;
                        SCRIPT.load_async(&mut conn).await.map_err(|e| {
                            SinkError::Unavailable(format!("redis SCRIPT LOAD: {e}"))
                        })?;
                    }
                    Err(e) if connection_broke(&e) && !retried => {
                        tracing::debug!(error = %e, "redis connection broke: retrying on a new one");
                        retried = true;
                    }
                    Err(e) => return Err(SinkError::Unavailable(format!("redis XADD: {e}"))),
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Unavailable(format!(
                "redis gave no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn ready(&self) -> bool {
        self.connection.ping().await
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// `type: redis`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("redis");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    maxlen: Option<u64>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<super::config::TlsSpec>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub stream: String,
    pub maxlen: Option<u64>,
    pub timeout: Duration,
    pub auth: Auth,
}

impl super::SinkConfig for Config {
    fn build(&self, name: &str, _built: &super::Built) -> Result<std::sync::Arc<dyn Sink>, String> {
        let sink = RedisSink::new(name, self)?;
        Ok(std::sync::Arc::new(sink))
    }
    fn remembers_ids(&self) -> bool {
        true
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
        let url = super::config::url(
            self.url.as_ref(),
            "redis",
            name,
            "redis://127.0.0.1:6379",
            at,
        )?;
        if let Err(e) = redis::Client::open(url.as_str()) {
            let shown = crate::store::config::redact(&url);
            at.error(&[], format!("redis sink `{name}`: url `{shown}`: {e}"));
        }
        let auth = Auth::load(&url, self.password.as_deref(), self.tls.as_ref(), base, at);
        let stream = self
            .stream
            .clone()
            .unwrap_or_else(|| "webhooks:{provider}".into());
        if let Err(e) = super::check_template(&stream) {
            at.error(&["stream"], e);
        }
        if self.maxlen == Some(0) {
            at.error(
                &["maxlen"],
                "maxlen 0 would trim every event away: remove it for no trimming",
            );
        }
        Some(std::sync::Arc::new(Config {
            url,
            stream,
            maxlen: self.maxlen,
            timeout,
            auth,
        }))
    }

    fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}
