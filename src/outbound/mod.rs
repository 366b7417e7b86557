//! The outbound dispatcher: messages from the internal API (and, to come, brokers and the
//! inbound side) are written to the ledger with one delivery per matching endpoint, then
//! signed and delivered by the [`worker`] with retries and dead letters, through the SSRF
//! guard. The ledger (`crate::store`) is the truth; nothing is queued outside it.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod delivery;
pub mod endpoints;
pub mod message;
pub mod slots;
pub mod sources;
pub mod ssrf;
pub mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::store::{Enqueued, Handoff, NewMessage, Route, Store, StoreError};
use config::Delivery;
use endpoints::Endpoints;
use message::{Invalid, Message};

/// How long a sender's (tenant, id) names one message.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

pub struct Dispatcher {
    pub store: Arc<Store>,
    /// The endpoints files' and the management API's endpoints.
    pub catalog: catalog::Catalog,
    pub delivery: Delivery,
    pub client: delivery::Client,
    /// This node's name on the leases it takes.
    pub owner: String,
    /// Rung after an enqueue that left deliveries for a claim, so the worker does not wait
    /// for its next poll.
    pub wake: Notify,
    /// Rung when an attempt gives its slot back (a worker with a backlog claims again).
    pub freed: Notify,
    pub slots: slots::Slots,
    /// How long a lease lasts: the longest attempt (any endpoint's timeout) and 5 s to
    /// record its outcome.
    pub lease_ms: i64,
}

/// Why a message was not queued.
#[derive(Debug)]
pub enum Refused {
    Invalid(Invalid),
    /// The payload fails the schema of an endpoint it is for.
    Schema {
        endpoint: String,
        violation: crate::filters::schema::Violation,
    },
    UnknownTenant,
    Store(StoreError),
}

impl Refused {
    /// `schema_violation`'s detail for a dead letter or a log: where, never the value.
    pub fn schema_detail(endpoint: &str, v: &crate::filters::schema::Violation) -> String {
        let at = if v.pointer.is_empty() {
            "/"
        } else {
            &v.pointer
        };
        format!(
            "endpoint `{endpoint}`: the payload at {at} fails `{}`",
            v.keyword
        )
    }
}

/// Checks the payload against the schemas and transforms of the endpoints it is for, so a
/// message none of them could take is refused before anything is stored.
fn check_payload(
    message: &Message,
    endpoints: &[&Arc<endpoints::Endpoint>],
) -> Result<(), Refused> {
    let mut inspecting = endpoints.iter().filter(|e| e.inspects_payload()).peekable();
    if inspecting.peek().is_none() {
        return Ok(());
    }
    let json: Option<serde_json::Value> = match message.content_type {
        None => serde_json::from_str(&message.payload).ok(),
        Some(_) => None,
    };
    for e in inspecting {
        let Some(json) = &json else {
            return Err(Refused::Invalid(Invalid {
                field: Some("payload"),
                detail: format!(
                    "endpoint `{}` checks or transforms payloads: the payload must be JSON",
                    e.name
                ),
            }));
        };
        if let Some(violation) = e.schema.as_ref().and_then(|s| s.violation(json)) {
            return Err(Refused::Schema {
                endpoint: e.name.clone(),
                violation,
            });
        }
        if let Some(Err(crate::filters::map::Unmapped::Missing(field))) =
            e.transform.as_ref().map(|m| m.apply_to(json))
        {
            return Err(Refused::Invalid(Invalid {
                field: Some("payload"),
                detail: format!(
                    "endpoint `{}`: transform field `{field}` matches nothing in the payload",
                    e.name
                ),
            }));
        }
    }
    Ok(())
}

impl Dispatcher {
    pub fn new(store: Arc<Store>, endpoints: Endpoints, delivery: Delivery) -> Dispatcher {
        let owner = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let longest = endpoints.max_timeout().max(delivery.timeout);
        Dispatcher {
            client: delivery::Client::new(delivery.allow_internal.clone()),
            slots: slots::Slots::new(delivery.concurrency),
            lease_ms: longest.as_millis() as i64 + 5_000,
            store,
            catalog: catalog::Catalog::new(
                endpoints,
                delivery.allow_http,
                delivery.allow_internal.clone(),
            ),
            delivery,
            owner,
            wake: Notify::new(),
            freed: Notify::new(),
        }
    }

    /// The longest an attempt may take: its lease is that and 5 s to record the outcome.
    pub fn longest_attempt(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.lease_ms - 5_000).max(1) as u64)
    }

    /// Writes `message` to the ledger for every endpoint of its tenant that takes its type.
    pub async fn enqueue(
        &self,
        message: Message,
        source: &'static str,
    ) -> Result<Enqueued, Refused> {
        let Some(known) = self.catalog.tenant(&self.store, &message.tenant).await else {
            return Err(Refused::UnknownTenant);
        };
        let all = known.tenant(&message.tenant).unwrap_or_default();
        if let Some(names) = &message.endpoints {
            if let Some(unknown) = names.iter().find(|n| !all.iter().any(|e| &e.name == *n)) {
                return Err(Refused::Invalid(Invalid {
                    field: Some("endpoints"),
                    detail: format!("tenant `{}` has no endpoint `{unknown}`", message.tenant),
                }));
            }
        }
        let matching: Vec<_> = all
            .iter()
            .filter(|e| e.takes(&message.event_type))
            .filter(|e| {
                message
                    .endpoints
                    .as_ref()
                    .is_none_or(|n| n.contains(&e.name))
            })
            .collect();
        check_payload(&message, &matching)?;
        let endpoints = matching
            .iter()
            .map(|e| Route {
                endpoint: e.name.clone(),
                ordered: e.ordered,
            })
            .collect();
        // Deliveries this node can start at once are leased to its worker in the enqueue
        // (no claim needed); not those an ordered queue or a fleet-wide limit must admit.
        let mut slots: Vec<(String, slots::Slot)> = matching
            .iter()
            .filter(|e| !e.ordered && e.limits.max_in_flight.is_none() && e.limits.rate.is_none())
            .filter_map(|e| {
                self.slots
                    .try_take(&message.tenant, &e.name)
                    .map(|slot| (e.name.clone(), slot))
            })
            .collect();
        let handed = slots.len();
        let handoff = self
            .slots
            .handoffs()
            .filter(|_| handed > 0)
            .map(|to| Handoff {
                owner: std::sync::Arc::from(self.owner.as_str()),
                lease_ms: self.lease_ms,
                endpoints: slots.iter().map(|(name, _)| name.clone()).collect(),
                then: Box::new(move |claims| {
                    for claim in claims {
                        if let Some(i) = slots.iter().position(|(name, _)| *name == claim.endpoint)
                        {
                            let (_, slot) = slots.swap_remove(i);
                            crate::metrics::OUTBOUND_STARTS
                                .with_label_values(&["handoff"])
                                .inc();
                            let _ = to.send((claim, slot));
                        }
                    }
                }),
            });
        let (event_id, idempotency_ms) = match message.id {
            Some(id) => (id, IDEMPOTENCY_WINDOW_MS),
            // No id, no idempotency: a key of its own that names nothing else.
            None => (format!("anon:{:032x}", rand::random::<u128>()), 0),
        };
        let enqueued = self
            .store
            .enqueue(
                NewMessage {
                    tenant: message.tenant,
                    event_id,
                    event_type: message.event_type,
                    payload: message.payload,
                    content_type: message.content_type,
                    ordering_key: message.ordering_key,
                    source,
                    endpoints,
                    idempotency_ms,
                },
                handoff,
            )
            .await
            .map_err(Refused::Store)?;
        if let Enqueued::Queued {
            endpoints,
            handed_off,
            ..
        } = &enqueued
        {
            if handed_off < endpoints {
                self.wake.notify_one();
            }
        }
        Ok(enqueued)
    }
}

/// The answer naming what an enqueue did (the API's body, `outbound send`'s output).
pub fn enqueued_json(e: &Enqueued) -> serde_json::Value {
    match e {
        Enqueued::Queued {
            message_id,
            endpoints,
            ..
        } => {
            serde_json::json!({"status": "queued", "message_id": message_id, "endpoints": endpoints})
        }
        Enqueued::Duplicate { message_id } => {
            serde_json::json!({"status": "duplicate", "message_id": message_id})
        }
    }
}

/// Adds the dispatcher's services to Pingora's server: each source, the worker, and the API
/// listener (after the bootstrap, which hands sockets over on an upgrade). Returns the
/// sources' health for `/readyz`.
pub fn add_services(
    server: &mut pingora::server::Server,
    bootstrap: &pingora::services::ServiceHandle,
    outbound: &mut config::Outbound,
    dispatcher: &Arc<Dispatcher>,
    sinks: &crate::sinks::Sinks,
    routes: Arc<arc_swap::ArcSwap<crate::routes::Routes>>,
    event_log: bool,
) -> Vec<Arc<sources::Health>> {
    use pingora::services::background::background_service;
    if let Some(sink) = outbound.dead_letters.as_ref().and_then(|n| sinks.get(n)) {
        server.add_service(background_service(
            "dead-letter publisher",
            dead_letters::Publisher {
                dispatcher: dispatcher.clone(),
                sink: sink.clone(),
            },
        ));
    }
    let sources = std::mem::take(&mut outbound.sources);
    let mut health = Vec::new();
    for (consumer, h) in sources::services(sources, dispatcher) {
        server.add_service(background_service("outbound source", consumer));
        health.push(h);
    }
    server.add_service(background_service(
        "outbound endpoints",
        catalog::Refresher {
            dispatcher: dispatcher.clone(),
        },
    ));
    server.add_service(background_service(
        "outbound worker",
        worker::Worker {
            dispatcher: dispatcher.clone(),
        },
    ));
    if let Some(addr) = outbound.api {
        let api = crate::api::Api {
            dispatcher: dispatcher.clone(),
            tokens: outbound.tokens.clone(),
            trusted_proxies: outbound.trusted_proxies.clone(),
            max_payload: outbound.max_payload,
            limiter: crate::api::limit::Limiter::new(outbound.rate_limit),
            tenant_limits: outbound.tenant_limits,
            per_minute: crate::api::limit::PerMinute::new(outbound.tenant_limits.calls_per_minute),
            routes,
            event_log,
        };
        let app = pingora::apps::http_app::HttpServer::new_app(api);
        let mut service = pingora::services::listening::Service::new("outbound api".into(), app);
        service.add_tcp(&addr.to_string());
        server.add_service(service).add_dependency(bootstrap);
        tracing::info!(%addr, endpoints = dispatcher.catalog.current().count(), "outbound api listening (POST /outbound, /v1/)");
    }
    health
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into())
}
