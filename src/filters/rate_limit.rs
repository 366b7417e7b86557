//! Per-filter and per-source-IP rate limits, counted with pingora-limits' `Rate` estimator
//! (fixed one-second windows over a compact count-min sketch: no per-IP allocation, so a
//! flood from many addresses cannot grow memory).

use std::time::Duration;

use pingora_limits::rate::Rate;

use super::Filter;
use crate::config::RateLimit;
use crate::reason::Reason;
use crate::request::Inbound;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn a_source_over_its_share_is_limited_while_others_pass() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: Some(1000),
            per_ip_per_second: Some(3),
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
