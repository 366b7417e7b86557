//! The filter chain: every check a request must pass, one small type per stage.
//!
//! `Filter` is the seam (as `ProxyHttp` is Pingora's): a stage looks at the request head
//! before the body is read, or at the whole raw body after. The chain is a `Vec` built from a
//! provider's config, cheapest stages first, so a flood of garbage is turned away before any
//! byte of its body is read or any HMAC computed.

pub mod allowlist;
pub mod config;
pub mod dedup;
pub mod framing;
pub mod limits;
pub mod map;
pub mod payload;
pub mod rate_limit;
pub mod schema;
pub mod signature;

use crate::reason::Reason;
use crate::request::Inbound;
use config::Filter as FilterConfig;

pub trait Filter: Send + Sync {
    /// Checks on the request head; the body is still unread (and empty in `req`).
    fn check_head(&self, _req: &Inbound<'_>) -> Result<(), Reason> {
        Ok(())
    }
    /// Checks on the whole raw body. `now` is unix seconds.
    fn check_body(&self, _req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        Ok(())
    }
}

pub type Chain = Vec<Box<dyn Filter>>;

/// The chain for one provider, cheapest first: source, rate, type and size, then signature
/// and timestamp, then payload rules.
pub fn chain(config: &FilterConfig) -> Chain {
    let mut chain: Chain = Vec::new();
    if !config.allow.is_empty() {
        chain.push(Box::new(allowlist::Allowlist::new(config.allow.clone())));
    }
    if let Some(limit) = config.rate_limit {
        chain.push(Box::new(rate_limit::RateLimiter::new(limit)));
    }
    chain.push(Box::new(limits::Limits::new(
        config.content_types.clone(),
        config.max_body,
    )));
    chain.push(Box::new(signature::Signature::new(config.scheme.clone())));
    if !config.require_fields.is_empty() {
        use dedup::EventIdSource::Json;
        let value_later = config.schema.is_some()
            || config.map.is_some()
            || matches!(config.event_id, Json { .. })
            || matches!(config.event_type, Some(Json { .. }));
        chain.push(Box::new(payload::RequireFields::new(
            config.require_fields.clone(),
            value_later,
        )));
    }
    if let Some(schema) = &config.schema {
        chain.push(Box::new(schema::SchemaCheck(schema.clone())));
    }
    chain
}

/// Runs the head checks; the first rejection wins.
pub fn check_head(chain: &Chain, req: &Inbound<'_>) -> Result<(), Reason> {
    chain.iter().try_for_each(|f| f.check_head(req))
}

/// Runs the body checks. In shadow mode a verification verdict is recorded (returned as
/// `Ok(Some(reason))`) instead of enforced; the first such verdict is the one kept.
pub fn check_body(
    chain: &Chain,
    req: &Inbound<'_>,
    now: i64,
    shadow: bool,
) -> Result<Option<Reason>, Reason> {
    let mut recorded = None;
    for filter in chain {
        match filter.check_body(req, now) {
            Ok(()) => {}
            Err(reason) if shadow && reason.is_verification() => {
                recorded.get_or_insert(reason);
            }
            Err(reason) => return Err(reason),
        }
    }
    Ok(recorded)
}
