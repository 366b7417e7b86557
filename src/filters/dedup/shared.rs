//! The fleet's shared dedup store: the reserve / commit / release protocol done atomically in
//! Redis, so copies of one event that reach different nodes still yield exactly one 202.
//!
//! - reserve: `SET key inflight:<token> NX PX <in-flight ttl>`; if the key exists, `done`
//!   means a duplicate and anything else another node publishing right now (one Lua script,
//!   one round trip);
//! - commit: turn our own reservation into `done` with the filter's TTL;
//! - release: delete the key only if it still holds our token (never someone else's).
//!
//! Every call is bounded by `timeout`; an error or timeout is `Err`, and the caller applies
//! the configured `on_error`.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::sinks::redis::LazyRedis;

const RESERVE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == 'done' then return 2 end
return 3";

const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Fresh,
    Duplicate,
    InProgress,
}

pub struct SharedStore {
    prefix: String,
    timeout: Duration,
    connection: LazyRedis,
    reserve: redis::Script,
    commit: redis::Script,
    release: redis::Script,
}

impl SharedStore {
    pub fn new(config: &super::config::SharedDedup) -> Result<SharedStore, String> {
        let timeout = config.timeout;
        Ok(SharedStore {
            connection: LazyRedis::open_with(&config.url, timeout, &config.auth)
                .map_err(|e| format!("dedup redis: {e}"))?,
            prefix: config.key_prefix.clone(),
            timeout,
            reserve: redis::Script::new(RESERVE),
            commit: redis::Script::new(COMMIT),
            release: redis::Script::new(RELEASE),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn key(&self, provider: &str, id: &str) -> String {
        format!("{}{provider}:{id}", self.prefix)
    }

    /// The multiplexed connection (fleet-scope rate limits use it too).
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        self.connection
            .get()
            .await
            .map_err(|e| format!("dedup redis connect: {e}"))
    }

    async fn run(
        &self,
        script: &redis::Script,
        key: &str,
        args: (&str, u64),
    ) -> Result<i64, String> {
        let mut conn = self.connection().await?;
        let mut invocation = script.key(key);
        invocation.arg(args.0).arg(args.1);
        let call = invocation.invoke_async(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(format!("dedup redis: {e}")),
            Err(_) => Err(format!("dedup redis: no answer within {:?}", self.timeout)),
        }
    }

    pub async fn reserve(
        &self,
        key: &str,
        token: &str,
        in_flight: Duration,
    ) -> Result<Claim, String> {
        match self
            .run(&self.reserve, key, (token, millis(in_flight)))
            .await?
        {
            1 => Ok(Claim::Fresh),
            2 => Ok(Claim::Duplicate),
            _ => Ok(Claim::InProgress),
        }
    }

    /// Whether our reservation was still ours to commit.
    pub async fn commit(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, String> {
        Ok(self.run(&self.commit, key, (token, millis(ttl))).await? == 1)
    }

    pub async fn release(&self, key: &str, token: &str) -> Result<(), String> {
        self.run(&self.release, key, (token, 0)).await.map(|_| ())
    }

    pub async fn ready(&self) -> bool {
        self.connection.ping().await
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}
