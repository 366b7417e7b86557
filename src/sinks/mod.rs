//! Sinks: where a verified event goes. One trait for all of them, one file per sink.
//!
//! `publish` returns only once the event is durable in the sink's own terms (fsync for the
//! spool, a 2xx for the http sink): the gateway answers 202 on `Ok` and nothing else.

pub mod amqp;
pub mod config;
pub mod fallback;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod outbound;
pub mod redis;
pub mod spool;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use config::{Kind, SinkConfig};

/// Every sink kind, by its `type:` name: a new sink is its file plus one line here.
pub const KINDS: &[Kind] = &[
    spool::KIND,
    http::KIND,
    redis::KIND,
    nats::KIND,
    amqp::KIND,
    kafka::KIND,
    outbound::KIND,
];

/// What the server built before its sinks, for sinks that hand events to it.
#[derive(Default)]
pub struct Built {
    /// The node's outbound dispatcher, when it has an `outbound:` block.
    pub dispatcher: Option<Arc<crate::outbound::Dispatcher>>,
}

/// What a sink receives: the raw body, byte for byte, and what the gateway learnt about it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub provider: String,
    pub event_id: String,
    /// The provider's event type, made safe for keys (`unknown` when it does not say).
    pub event_type: String,
    /// RFC 3339, UTC.
    pub received_at: String,
    pub source_ip: String,
    pub verified: bool,
    /// Why verification failed, in shadow mode.
    pub reason: Option<&'static str>,
    /// The request headers the filter forwards, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The filter's `map:` fields as compact ASCII JSON (an object), when it has one.
    pub map: Option<String>,
    pub body: Bytes,
    /// How long (provider, event id) is a duplicate (the filter's dedup TTL; `None` with
    /// `dedup: off` or on replay): a sink that can publish idempotently remembers it as long.
    pub dedup_ttl: Option<std::time::Duration>,
}

impl Envelope {
    /// The forwarded headers as a JSON object, in their order, serialized from the borrowed
    /// pairs (the spool line's `headers`, the redis entry's `headers` field).
    pub fn headers_json(&self) -> HeadersJson<'_> {
        HeadersJson(&self.headers)
    }
}

pub struct HeadersJson<'a>(&'a [(String, String)]);

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Nothing was kept; the sender should retry (503).
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The upstream answered, but not with a 2xx (502).
    #[error("upstream answered {0}")]
    Rejected(u16),
}

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    /// Returns once the event is durable, or with why it is not.
    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError>;
    /// Whether the sink can take events now (for `/readyz`).
    async fn ready(&self) -> bool;
    /// Whether `publish` counts its own failures in `portcullis_sink_errors_total`: a sink
    /// wrapping others knows which of them failed; for the rest the gateway counts.
    fn counts_own_errors(&self) -> bool {
        false
    }
    /// The directory whose segments durably record every event this sink took, provider and
    /// event id included (a spool): dedup reads them back at start instead of journaling ids.
    fn recorded_in(&self) -> Option<&std::path::Path> {
        None
    }
    /// Whether publishing the same (provider, event id) again within its dedup TTL stores it
    /// only once (the redis sink's marker): such a sink needs no dedup journal either.
    fn idempotent(&self) -> bool {
        false
    }
    /// Connects ahead of the first event, once the server runs (after any fork), so that
    /// event does not wait for it.
    async fn warm(&self) {}
}

/// Warms every sink once at start (a background service).
pub struct Warmer(pub Vec<Arc<dyn Sink>>);

#[async_trait]
impl pingora::services::background::BackgroundService for Warmer {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        futures::future::join_all(self.0.iter().map(|s| s.warm())).await;
    }
}

/// Every sink of a server by name, with fallbacks wrapped around their primaries.
pub type Sinks = HashMap<String, Arc<dyn Sink>>;

/// Builds the server's sinks, and the replayers (background services) that drain the
/// fallback spools.
pub fn build_all(
    sinks_config: &[(String, Arc<dyn SinkConfig>)],
    fallbacks: &[(String, String)],
    built: &Built,
) -> Result<(Sinks, Vec<fallback::Replayer>), String> {
    let mut spools: HashMap<&str, Arc<spool::Spool>> = HashMap::new();
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    for (name, config) in sinks_config {
        let sink: Arc<dyn Sink> = match config.as_spool() {
            Some(spool) => {
                let spool = Arc::new(spool.open(name)?);
                spools.insert(name, spool.clone());
                spool
            }
            None => config.build(name, built)?,
        };
        sinks.insert(name.clone(), sink);
    }
    let mut replayers = Vec::new();
    for (primary, spool) in fallbacks {
        let (Some(inner), Some(spool)) = (sinks.get(primary).cloned(), spools.get(spool.as_str()))
        else {
            return Err(format!(
                "sink `{primary}`: fallback `{spool}` is not a spool sink"
            ));
        };
        let (wrapped, replayer) = fallback::wrap(inner, spool.clone());
        sinks.insert(primary.clone(), wrapped);
        replayers.push(replayer);
    }
    Ok((sinks, replayers))
}

/// A stream, subject or routing-key template: literal text, `{provider}` and `{event_type}`.
/// Provider names are validated at load (letters, digits, `-`, `_`) and event types cleaned
/// to letters, digits and `._-:`, so nothing raw a sender sends reaches a key through a template.
pub fn check_template(template: &str) -> Result<(), String> {
    let rest = template
        .replace("{provider}", "")
        .replace("{event_type}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "template `{template}` may only use {{provider}} and {{event_type}}"
        ));
    }
    if template.is_empty() {
        return Err("template is empty".into());
    }
    Ok(())
}

pub fn render(template: &str, envelope: &Envelope) -> String {
    template
        .replace("{provider}", &envelope.provider)
        .replace("{event_type}", &envelope.event_type)
}
