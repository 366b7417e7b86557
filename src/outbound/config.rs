//! The server file's `outbound:` block: the API listener, its tokens, the endpoints
//! directory and how deliveries are made.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::secrets::{self, Source};
use crate::config::{join_normalized, keys, parse_net, parse_size, Report, Section, SizeValue};
use crate::store::Breaker;

#[derive(Debug, Deserialize)]
pub struct OutboundSpec {
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    endpoints: Option<String>,
    #[serde(default)]
    delivery: Option<DeliverySpec>,
    #[serde(default)]
    max_payload: Option<SizeValue>,
    #[serde(default)]
    sources: Vec<super::sources::SourceSpec>,
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    dead_letters: Option<DeadLettersSpec>,
    #[serde(default)]
    rate_limit: Option<crate::api::limit::LimitSpec>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    tenant_limits: Option<crate::api::limit::TenantLimitsSpec>,
}

#[derive(Debug, Deserialize)]
struct DeadLettersSpec {
    sink: String,
}

#[derive(Debug, Deserialize)]
struct DeliverySpec {
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<Vec<String>>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    allow_internal: Vec<String>,
    #[serde(default)]
    breaker: Option<BreakerSpec>,
}

#[derive(Debug, Deserialize)]
struct BreakerSpec {
    #[serde(default)]
    failures: Option<i64>,
    #[serde(default)]
    cooldown: Option<String>,
}

pub fn nested_keys() -> [(&'static str, &'static [&'static str]); 6] {
    [
        ("rate_limit", crate::api::limit::keys()),
        ("tenant_limits", crate::api::limit::tenant_keys()),
        ("outbound", keys::<OutboundSpec>()),
        ("delivery", keys::<DeliverySpec>()),
        ("breaker", keys::<BreakerSpec>()),
        ("dead_letters", keys::<DeadLettersSpec>()),
    ]
}

pub struct Outbound {
    pub api: Option<SocketAddr>,
    /// Bearer tokens of the API (never logged).
    pub tokens: Vec<Vec<u8>>,
    pub endpoints_dir: Option<PathBuf>,
    pub delivery: Delivery,
    pub max_payload: usize,
    pub sources: Vec<super::sources::Source>,
    /// The sink every dead letter is also published to.
    pub dead_letters: Option<String>,
    /// Calls per second the API takes (none by default).
    pub rate_limit: crate::api::limit::Limit,
    /// Peers whose `X-Account-Id` is believed (a gateway that authenticated the caller).
    pub trusted_proxies: Vec<IpNet>,
    pub tenant_limits: crate::api::limit::TenantLimits,
}

/// Delivered messages and their attempts are kept this long (7 days by default).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Delivery {
    pub concurrency: usize,
    pub timeout: Duration,
    /// The delay after each failed attempt; a delivery dies after the last.
    pub retry: Vec<Duration>,
    pub allow_http: bool,
    pub allow_internal: Vec<IpNet>,
    pub breaker: Breaker,
    pub retention: Duration,
}

pub const DEFAULT_RETRY: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(7200),
    Duration::from_secs(18000),
    Duration::from_secs(36000),
    Duration::from_secs(36000),
];
/// Five failures in a row open an endpoint's breaker for 30 s, then one probe.
pub const DEFAULT_BREAKER: Breaker = Breaker {
    failures: 5,
    cooldown_ms: 30_000,
};
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;

pub fn load(spec: &OutboundSpec, base: &Path, report: &mut Report<'_>) -> Outbound {
    let mut at = Section::new(report, &["outbound"]);
    let api = spec
        .api
        .as_deref()
        .and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                at.error(
                    &["api"],
                    format!("outbound.api `{a}` is not IP:PORT (like 127.0.0.1:9091)"),
                );
                None
            }
        });
    let mut tokens = Vec::new();
    for reference in &spec.tokens {
        match secrets::resolve(reference, base) {
            Ok((t, Source::Literal)) => {
                at.warn(&["tokens"], "an API token is written literally in the file: use env:NAME or file:PATH in production");
                tokens.push(t.0);
            }
            Ok((t, _)) => tokens.push(t.0),
            Err(e) => at.error(&["tokens"], e),
        }
    }
    if api.is_some() && spec.tokens.is_empty() {
        at.error(&["tokens"], "outbound.api needs tokens: [env:PORTCULLIS_API_TOKEN] (callers send Authorization: Bearer <token>)");
    }
    let max_payload = match spec.max_payload.as_ref().map(parse_size) {
        None => DEFAULT_MAX_PAYLOAD,
        Some(Ok(n)) if n > 0 && n <= 16 << 20 => n as usize,
        Some(Ok(_)) => {
            at.error(&["max_payload"], "max_payload must be from 1 byte to 16MiB");
            DEFAULT_MAX_PAYLOAD
        }
        Some(Err(e)) => {
            at.error(&["max_payload"], e);
            DEFAULT_MAX_PAYLOAD
        }
    };
    let mut trusted_proxies = Vec::new();
    for cidr in &spec.trusted_proxies {
        match parse_net(cidr) {
            Some(net) => trusted_proxies.push(net),
            None => at.error(
                &["trusted_proxies"],
                format!("`{cidr}` is not an IP address or CIDR"),
            ),
        }
    }
    let mut delivery = delivery(spec.delivery.as_ref(), &mut at);
    delivery.retention = at.duration_at(
        &["retention"],
        spec.retention.as_deref(),
        DEFAULT_RETENTION,
        |d| {
            if d.is_zero() {
                Err("retention must be more than zero (like 7d)".into())
            } else {
                Ok(())
            }
        },
    );
    Outbound {
        api,
        tokens,
        endpoints_dir: spec.endpoints.as_deref().map(|d| join_normalized(base, d)),
        delivery,
        dead_letters: spec.dead_letters.as_ref().map(|d| d.sink.clone()),
        max_payload,
        rate_limit: crate::api::limit::load(spec.rate_limit.as_ref(), &mut at),
        tenant_limits: crate::api::limit::load_tenant(spec.tenant_limits.as_ref(), &mut at),
        trusted_proxies,
        sources: super::sources::load(&spec.sources, base, &mut at),
    }
}

fn delivery(spec: Option<&DeliverySpec>, at: &mut Section<'_, '_>) -> Delivery {
    let mut d = Delivery {
        concurrency: 20,
        timeout: Duration::from_secs(5),
        retry: DEFAULT_RETRY.to_vec(),
        allow_http: false,
        allow_internal: Vec::new(),
        breaker: DEFAULT_BREAKER,
        retention: DEFAULT_RETENTION,
    };
    let Some(spec) = spec else { return d };
    if let Some(n) = spec.concurrency {
        if n == 0 || n > 10_000 {
            at.error(
                &["delivery", "concurrency"],
                "delivery.concurrency must be from 1 to 10000",
            );
        } else {
            d.concurrency = n;
        }
    }
    d.timeout = at.duration_at(
        &["delivery", "timeout"],
        spec.timeout.as_deref(),
        d.timeout,
        |t| {
            if t.is_zero() || t > Duration::from_secs(60) {
                Err("delivery.timeout must be more than zero and at most 60s".into())
            } else {
                Ok(())
            }
        },
    );
    if let Some(list) = &spec.retry {
        let mut retry = Vec::new();
        for text in list {
            match crate::config::parse_duration(text) {
                Ok(delay) => retry.push(delay),
                Err(e) => at.error(&["delivery", "retry"], e),
            }
        }
        d.retry = retry;
    }
    if let Some(b) = &spec.breaker {
        if let Some(n) = b.failures {
            if (1..=10_000).contains(&n) {
                d.breaker.failures = n;
            } else {
                at.error(
                    &["delivery", "breaker", "failures"],
                    "breaker.failures must be from 1 to 10000",
                );
            }
        }
        let cooldown = at.duration_at(
            &["delivery", "breaker", "cooldown"],
            b.cooldown.as_deref(),
            Duration::from_millis(DEFAULT_BREAKER.cooldown_ms as u64),
            |t| {
                if t.is_zero() || t > Duration::from_secs(24 * 3600) {
                    Err("breaker.cooldown must be more than zero and at most 24h".into())
                } else {
                    Ok(())
                }
            },
        );
        d.breaker.cooldown_ms = cooldown.as_millis() as i64;
    }
    d.allow_http = spec.allow_http;
    for cidr in &spec.allow_internal {
        match parse_net(cidr) {
            Some(net) => d.allow_internal.push(net),
            None => at.error(
                &["delivery", "allow_internal"],
                format!("`{cidr}` is not an IP address or CIDR"),
            ),
        }
    }
    d
}
