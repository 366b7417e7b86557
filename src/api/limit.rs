//! The API's rate limit (`outbound.rate_limit`): calls per second on this node, in all and
//! per tenant, answered `429 rate_limited` with `Retry-After` beyond.
//!
//! Counted like the inbound filters' limits, with pingora-limits' `Rate` (one-second windows
//! over a count-min sketch: a caller inventing tenants cannot grow memory). The node-wide
//! cap is checked before the body is read (an over-limit caller costs no parsing); the
//! tenant's after, since the tenant is in the body. A call refused here kept nothing, so
//! the caller's retry is safe. No limit unless configured: the API is internal, behind its
//! bearer tokens, and its callers are services whose throughput it must not cap by surprise.

use std::time::Duration;

use pingora_limits::rate::Rate;
use serde::Deserialize;

use crate::config::Section;

/// `outbound.rate_limit:`.
#[derive(Debug, Deserialize)]
pub struct LimitSpec {
    #[serde(default)]
    per_second: Option<u32>,
    #[serde(default)]
    per_tenant_per_second: Option<u32>,
}

/// The keys of `rate_limit:`, for "did you mean".
pub fn keys() -> &'static [&'static str] {
    crate::config::keys::<LimitSpec>()
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Limit {
    pub per_second: Option<u32>,
    pub per_tenant_per_second: Option<u32>,
}

/// `outbound.rate_limit:`, checked.
pub fn load(spec: Option<&LimitSpec>, at: &mut Section<'_, '_>) -> Limit {
    let Some(spec) = spec else {
        return Limit::default();
    };
    at.refuse_zero_limits(
        "rate_limit",
        &[
            ("per_second", spec.per_second),
            ("per_tenant_per_second", spec.per_tenant_per_second),
        ],
    );
    Limit {
        per_second: spec.per_second,
        per_tenant_per_second: spec.per_tenant_per_second,
    }
}

pub struct Limiter {
    limit: Limit,
    total: Rate,
    per_tenant: Rate,
}

impl Limiter {
    pub fn new(limit: Limit) -> Limiter {
        Limiter {
            limit,
            total: Rate::new(Duration::from_secs(1)),
            per_tenant: Rate::new(Duration::from_secs(1)),
        }
    }

    /// Whether one more call fits the node-wide limit (and counts it).
    pub fn admit(&self) -> bool {
        self.limit
            .per_second
            .is_none_or(|max| self.total.observe(&(), 1) <= max as isize)
    }

    /// Whether one more call of `tenant` fits its limit (and counts it).
    pub fn admit_tenant(&self, tenant: &str) -> bool {
        self.limit
            .per_tenant_per_second
            .is_none_or(|max| self.per_tenant.observe(&tenant, 1) <= max as isize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_limit_does_not_use_up_another_tenants() {
        let l = Limiter::new(Limit {
            per_second: None,
            per_tenant_per_second: Some(3),
        });
        // One window can end between two calls: at most the calls after it are admitted
        // again, so count what a burst of 10 lets through.
        let acme = (0..10).filter(|_| l.admit_tenant("acme")).count();
        assert!((3..=6).contains(&acme), "{acme}");
        assert!(l.admit_tenant("globex"));
        assert!(l.admit(), "no node-wide limit set");
    }
}
