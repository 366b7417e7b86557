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

/// `outbound.tenant_limits:`: what one tenant may do through the management API.
#[derive(Debug, Deserialize)]
pub struct TenantLimitsSpec {
    #[serde(default)]
    endpoints: Option<usize>,
    #[serde(default)]
    calls_per_minute: Option<u32>,
}

pub fn tenant_keys() -> &'static [&'static str] {
    crate::config::keys::<TenantLimitsSpec>()
}

#[derive(Debug, Clone, Copy)]
pub struct TenantLimits {
    /// Endpoints a tenant may create through the API (its endpoints file's not counted).
    pub endpoints: usize,
    /// Management calls (`/v1/…`) per minute and tenant.
    pub calls_per_minute: u32,
}

pub const DEFAULT_TENANT_LIMITS: TenantLimits = TenantLimits {
    endpoints: 10,
    calls_per_minute: 60,
};

/// `outbound.tenant_limits:`, checked.
pub fn load_tenant(spec: Option<&TenantLimitsSpec>, at: &mut Section<'_, '_>) -> TenantLimits {
    let mut limits = DEFAULT_TENANT_LIMITS;
    let Some(spec) = spec else { return limits };
    match spec.endpoints {
        Some(n) if (1..=100_000).contains(&n) => limits.endpoints = n,
        Some(_) => at.error(
            &["tenant_limits", "endpoints"],
            "tenant_limits.endpoints must be from 1 to 100000",
        ),
        None => {}
    }
    match spec.calls_per_minute {
        Some(n) if n >= 1 => limits.calls_per_minute = n,
        Some(_) => at.error(
            &["tenant_limits", "calls_per_minute"],
            "tenant_limits.calls_per_minute must be at least 1",
        ),
        None => {}
    }
    limits
}

/// Management calls per tenant in one-minute windows (count-min sketch: bounded memory
/// whatever tenants callers name).
pub struct PerMinute {
    max: u32,
    rate: Rate,
    start: std::time::Instant,
}

impl PerMinute {
    pub fn new(max: u32) -> PerMinute {
        PerMinute {
            max,
            rate: Rate::new(Duration::from_secs(60)),
            start: std::time::Instant::now(),
        }
    }

    /// Counts one call of `tenant`; beyond the limit, the seconds until its window ends.
    pub fn admit(&self, tenant: &str) -> Result<(), u64> {
        if self.rate.observe(&tenant, 1) <= self.max as isize {
            return Ok(());
        }
        Err(60 - self.start.elapsed().as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_calls_per_minute_is_told_when_to_come_back() {
        let l = PerMinute::new(3);
        let admitted = (0..5).filter(|_| l.admit("acme").is_ok()).count();
        assert_eq!(admitted, 3);
        let wait = l.admit("acme").unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(l.admit("globex").is_ok());
    }

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
