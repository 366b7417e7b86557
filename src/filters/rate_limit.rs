//! Per-filter and per-source-IP rate limits, counted with pingora-limits' `Rate` estimator
//! (fixed one-second windows over a compact count-min sketch: no per-IP allocation, so a
//! flood from many addresses cannot grow memory).
//!
//! With `scope: fleet` the same limits also hold across every node: [`FleetLimit`] runs GCRA
//! (the generic cell rate algorithm, one Lua script, one round trip, Redis's own clock) on
//! the fleet's Redis after the node's local check has passed, so a flood is still cut by the
//! local check without touching Redis. If Redis does not answer, the local limit alone
//! applies (a rate limit protects; it must not take the gateway down with Redis).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::filters::dedup::SharedStore;

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

/// A filter's `rate_limit:` block.
#[derive(Debug, serde::Deserialize)]
pub struct RateLimitSpec {
    #[serde(default)]
    pub per_second: Option<u32>,
    #[serde(default)]
    pub per_ip_per_second: Option<u32>,
    /// `node` (default): each node counts alone; `fleet`: counted across nodes in Redis.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: Option<u32>,
    pub per_ip_per_second: Option<u32>,
    /// Limits hold across the fleet (Redis), with the node's own limit still in front.
    pub fleet: bool,
}

/// The keys of `rate_limit:`, for "did you mean".
pub fn keys() -> &'static [&'static str] {
    crate::config::keys::<RateLimitSpec>()
}

/// `rate_limit:`, checked.
pub fn load(spec: &RateLimitSpec, at: &mut crate::config::Section<'_, '_>) -> RateLimit {
    at.refuse_zero_limits(
        "rate_limit",
        &[
            ("per_second", spec.per_second),
            ("per_ip_per_second", spec.per_ip_per_second),
        ],
    );
    let fleet = match spec.scope.as_deref() {
        None | Some("node") => false,
        Some("fleet") => true,
        Some(other) => {
            at.error(
                &["rate_limit", "scope"],
                format!("rate_limit.scope `{other}` is not node or fleet"),
            );
            false
        }
    };
    RateLimit {
        per_second: spec.per_second,
        per_ip_per_second: spec.per_ip_per_second,
        fleet,
    }
}

pub struct RateLimiter {
    limit: RateLimit,
    total: Rate,
    per_ip: Rate,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            total: Rate::new(Duration::from_secs(1)),
            per_ip: Rate::new(Duration::from_secs(1)),
        }
    }
}

impl Filter for RateLimiter {
    fn check_head(&self, req: &Inbound<'_>) -> Result<(), Reason> {
        if let Some(max) = self.limit.per_ip_per_second {
            if self.per_ip.observe(&req.client_ip, 1) > max as isize {
                return Err(Reason::RateLimited);
            }
        }
        if let Some(max) = self.limit.per_second {
            if self.total.observe(&(), 1) > max as isize {
                return Err(Reason::RateLimited);
            }
        }
        Ok(())
    }
}

/// GCRA over every cell in `KEYS`: cell i has emission interval `ARGV[2i-1]` and burst
/// tolerance `ARGV[2i]`, in microseconds. A request is charged to every cell only when every
/// cell admits it (a source over its own share does not use up the filter-wide budget).
/// Returns 1 when admitted, 0 when over a rate.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  if tat - now > tonumber(ARGV[2 * i]) then return 0 end
  next[i] = tat + tonumber(ARGV[2 * i - 1])
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, next[i], 'PX', math.floor((next[i] - now) / 1000) + 1)
end
return 1";

/// Key prefix of the fleet's rate-limit cells in Redis.
const KEY_PREFIX: &str = "portcullis:rate:";

pub struct FleetLimit {
    store: Arc<SharedStore>,
    provider: String,
    /// The per-source cell's (emission interval, burst tolerance), if there is one.
    per_ip: Option<(u64, u64)>,
    /// The filter-wide cell's key (built once) and parameters.
    total: Option<(String, (u64, u64))>,
    script: redis::Script,
}

impl FleetLimit {
    pub fn new(store: Arc<SharedStore>, provider: &str, limit: RateLimit) -> FleetLimit {
        FleetLimit {
            store,
            provider: provider.to_owned(),
            per_ip: limit.per_ip_per_second.map(cell),
            total: limit
                .per_second
                .map(|n| (format!("{KEY_PREFIX}{provider}"), cell(n))),
            script: redis::Script::new(GCRA),
        }
    }

    /// Both cells (the source's and the filter's) in one round trip.
    pub async fn check(&self, client_ip: IpAddr) -> Result<(), Reason> {
        if self.per_ip.is_none() && self.total.is_none() {
            return Ok(());
        }
        let mut call = self.script.prepare_invoke();
        if let Some((interval, tolerance)) = self.per_ip {
            call.key(format!("{KEY_PREFIX}{}:{client_ip}", self.provider));
            call.arg(interval).arg(tolerance);
        }
        if let Some((key, (interval, tolerance))) = &self.total {
            call.key(key);
            call.arg(interval).arg(tolerance);
        }
        let Ok(mut conn) = self.store.connection().await else {
            return Ok(());
        };
        match tokio::time::timeout(self.store.timeout(), call.invoke_async::<i64>(&mut conn)).await
        {
            Ok(Ok(0)) => Err(Reason::RateLimited),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fleet rate limit unavailable: the local limit applies");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}

/// One GCRA cell at `per_second` with a burst of one second's worth, like the local
/// one-second windows: over any interval T the fleet admits at most N×(T+1).
/// Returns (emission interval, burst tolerance) in microseconds.
fn cell(per_second: u32) -> (u64, u64) {
    let burst = u64::from(per_second.max(1));
    let interval = 1_000_000 / burst;
    (interval, interval * (burst - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn a_source_over_its_share_is_limited_while_others_pass() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: Some(1000),
            per_ip_per_second: Some(3),
            fleet: false,
        });
        let h = http::HeaderMap::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let check = |ip| limiter.check_head(&Inbound::new("POST", "/", None, &h, ip, b""));
        // No timing assumption: within one window the 4th request is over; if the window
        // rolled over in between, the count restarts and fewer are limited, never more.
        let results: Vec<_> = (0..10).map(|_| check(a)).collect();
        assert!(results.iter().filter(|r| r.is_err()).count() >= 1);
        assert!(results[..3].iter().all(|r| r.is_ok()));
        assert_eq!(check(b), Ok(()));
    }
}
