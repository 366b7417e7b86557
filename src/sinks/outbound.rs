//! The inbound bridge (`type: outbound`): a verified inbound webhook becomes an outbound
//! message of `tenant`, written to the node's ledger and delivered, signed, to that tenant's
//! endpoints with retries. The 202 means the ledger committed it.
//!
//! The message's event type is `<provider>.<event_type>`, its id `<provider>:<event_id>` (so a
//! sender's retry is a ledger duplicate, acknowledged again without a second message), and its
//! payload the raw body: a JSON body as it came, any other UTF-8 body (a form) as it came with
//! its own `content-type`. A body that is not UTF-8 cannot be kept as a payload (502).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Envelope, Sink, SinkError};
use crate::outbound::message::Message;
use crate::outbound::{Dispatcher, Refused};

pub struct OutboundSink {
    name: String,
    tenant: String,
    timeout: Duration,
    dispatcher: Arc<Dispatcher>,
}

impl OutboundSink {
    fn message(&self, envelope: &Envelope) -> Result<Message, SinkError> {
        let Ok(text) = std::str::from_utf8(&envelope.body) else {
            return Err(SinkError::Rejected(415));
        };
        let json = serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok();
        let content_type = (!json).then(|| {
            envelope
                .headers
                .iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "application/octet-stream".into())
        });
        Ok(Message {
            tenant: self.tenant.clone(),
            event_type: format!("{}.{}", envelope.provider, envelope.event_type),
            id: Some(format!("{}:{}", envelope.provider, envelope.event_id)),
            payload: text.to_owned(),
            content_type,
            ordering_key: None,
            endpoints: None,
        })
    }
}

#[async_trait]
impl Sink for OutboundSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let message = self.message(envelope)?;
        let enqueued =
            tokio::time::timeout(self.timeout, self.dispatcher.enqueue(message, "inbound")).await;
        let outcome = match enqueued {
            // A commit that finishes after the timeout makes the sender's retry a duplicate.
            Err(_) => {
                return Err(SinkError::Unavailable(
                    "the ledger did not commit in time".into(),
                ))
            }
            Ok(Ok(crate::store::Enqueued::Queued { .. })) => "queued",
            Ok(Ok(crate::store::Enqueued::Duplicate { .. })) => "duplicate",
            Ok(Err(Refused::Store(e))) => return Err(SinkError::Unavailable(e.to_string())),
            Ok(Err(Refused::UnknownTenant)) => {
                return Err(SinkError::Unavailable(format!(
                    "outbound tenant `{}` has no endpoints",
                    self.tenant
                )))
            }
            Ok(Err(Refused::Invalid(i))) => return Err(SinkError::Unavailable(i.detail)),
            // Like an upstream's 400: a retry of the same event cannot pass.
            Ok(Err(Refused::Schema {
                endpoint,
                violation,
            })) => {
                tracing::warn!(
                    sink = %self.name,
                    detail = %Refused::schema_detail(&endpoint, &violation),
                    "the outbound endpoint's schema refuses the event"
                );
                return Err(SinkError::Rejected(400));
            }
        };
        crate::metrics::OUTBOUND_MESSAGES
            .with_label_values(&["inbound", outcome])
            .inc();
        Ok(())
    }

    async fn ready(&self) -> bool {
        self.dispatcher.store.ready().await
    }

    /// The ledger keeps message ids (`<provider>:<event_id>`): a retry is a duplicate there.
    fn idempotent(&self) -> bool {
        true
    }
}

/// `type: outbound`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("outbound");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub tenant: String,
    pub timeout: Duration,
}

impl super::SinkConfig for Config {
    fn build(&self, name: &str, built: &super::Built) -> Result<Arc<dyn Sink>, String> {
        let dispatcher = built.dispatcher.clone().ok_or_else(|| {
            format!("sink `{name}` (type outbound) needs an outbound: block in the server file")
        })?;
        Ok(Arc::new(OutboundSink {
            name: name.to_owned(),
            tenant: self.tenant.clone(),
            timeout: self.timeout,
            dispatcher,
        }))
    }

    fn bridges_to(&self) -> Option<&str> {
        Some(&self.tenant)
    }

    /// The ledger is durable and keeps each message's id (for the retention).
    fn remembers_ids(&self) -> bool {
        true
    }
}

impl super::config::Spec for Spec {
    fn load(
        &self,
        name: &str,
        _base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<Arc<dyn super::SinkConfig>> {
        let timeout = super::config::timeout(self.timeout.as_deref(), at);
        let Some(tenant) = self.tenant.clone() else {
            at.error(
                &[],
                format!("outbound sink `{name}` needs tenant: (the endpoints file whose endpoints get the events)"),
            );
            return None;
        };
        Some(Arc::new(Config { tenant, timeout }))
    }
}
