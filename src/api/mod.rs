//! The internal API listener (`outbound.api`): `POST /outbound` enqueues a message;
//! `/v1/endpoints…` manages endpoints at run time (see `endpoints`), `/v1/filters/…/keys`
//! url-key keys (`keys`), `GET /v1/events` reads the inbound event log (`events`).
//!
//! Every call needs `Authorization: Bearer <token>`; an `X-Account-Id` from a trusted proxy
//! narrows it to one tenant (see `auth`). A 202 is sent only after the ledger committed the
//! message; a 503 means nothing was kept, so the caller's retry is safe.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub mod auth;
pub mod endpoints;
pub mod events;
pub mod keys;
pub mod limit;

use crate::metrics;
use crate::outbound::message;
use crate::outbound::{Dispatcher, Refused};
use crate::store::Enqueued;

/// How long a caller has to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the message's other fields beside the payload.
const ENVELOPE_ROOM: usize = 16 * 1024;

pub struct Api {
    pub dispatcher: Arc<Dispatcher>,
    pub tokens: Vec<Vec<u8>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_payload: usize,
    pub limiter: limit::Limiter,
    pub tenant_limits: limit::TenantLimits,
    /// Management calls per tenant and minute.
    pub per_minute: limit::PerMinute,
    /// The filters in force (swapped by SIGHUP): which take their keys from the store.
    pub routes: std::sync::Arc<arc_swap::ArcSwap<crate::routes::Routes>>,
    /// Whether the inbound event log is on (`GET /v1/events`).
    pub event_log: bool,
}

/// An answer of the API.
pub type Reply = http::Response<Vec<u8>>;

/// A JSON answer; a 503 says when to retry (a second).
fn json_response(status: u16, body: serde_json::Value) -> Reply {
    let mut body = serde_json::to_vec(&body).unwrap_or_default();
    body.push(b'\n');
    let r = http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid");
    if status == 503 {
        with_retry_after(r, 1)
    } else {
        r
    }
}

fn with_retry_after(mut r: Reply, seconds: u64) -> Reply {
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, seconds.max(1).into());
    r
}

fn error(status: u16, reason: &str) -> Reply {
    let r = json_response(status, serde_json::json!({ "error": reason }));
    match status {
        401 => {
            let mut r = r;
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        // Over a per-second limit: the next second.
        429 => with_retry_after(r, 1),
        _ => r,
    }
}

/// A unix-ms time as RFC 3339 (null for none), as every answer writes times.
pub(crate) fn time(ms: Option<i64>) -> serde_json::Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .into()
}

/// After a change through this node: reload the store's endpoints and keys now, so the
/// node's next request sees it (other nodes see it within their poll).
async fn reload(api: &Api) {
    let d = &api.dispatcher;
    if let Err(e) = d.catalog.refresh(&d.store).await {
        tracing::warn!("management API: endpoints and keys not reloaded: {e}");
    }
}

fn empty(status: u16) -> Reply {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, 0)
        .body(Vec::new())
        .expect("static response parts are valid")
}

impl Api {
    /// The whole body, or the status and reason to answer with.
    async fn body(&self, session: &mut ServerSession) -> Result<Vec<u8>, (u16, &'static str)> {
        let limit = self.max_payload + ENVELOPE_ROOM;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err((413, "payload_too_large"));
        }
        let mut body = Vec::new();
        let read = async {
            while let Some(chunk) = session
                .read_request_body()
                .await
                .map_err(|_| (400, "invalid_request"))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Err((413, "payload_too_large"));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(())) => Ok(body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err((408, "body_timeout")),
        }
    }

    async fn outbound(&self, who: &auth::Principal, session: &mut ServerSession) -> Reply {
        let rejected = || {
            metrics::OUTBOUND_MESSAGES
                .with_label_values(&["api", "rejected"])
                .inc()
        };
        if !self.limiter.admit() {
            rejected();
            return error(429, "rate_limited");
        }
        let body = match self.body(session).await {
            Ok(b) => b,
            Err((status, reason)) => {
                rejected();
                return error(status, reason);
            }
        };
        let message = match message::parse(&body) {
            Ok(m) => m,
            Err(invalid) => {
                rejected();
                return invalid_message(invalid);
            }
        };
        if message.payload.len() > self.max_payload {
            rejected();
            return error(413, "payload_too_large");
        }
        if !who.may(&message.tenant) {
            rejected();
            return error(403, "forbidden_tenant");
        }
        if !self.limiter.admit_tenant(&message.tenant) {
            rejected();
            return error(429, "rate_limited");
        }
        match self.dispatcher.enqueue(message, "api").await {
            Ok(done) => {
                let (status, outcome) = match done {
                    Enqueued::Queued { .. } => (202, "queued"),
                    Enqueued::Duplicate { .. } => (200, "duplicate"),
                };
                metrics::OUTBOUND_MESSAGES
                    .with_label_values(&["api", outcome])
                    .inc();
                json_response(status, crate::outbound::enqueued_json(&done))
            }
            Err(Refused::Invalid(invalid)) => {
                rejected();
                invalid_message(invalid)
            }
            Err(Refused::Schema {
                endpoint,
                violation,
            }) => {
                rejected();
                json_response(
                    400,
                    serde_json::json!({"error": "schema_violation", "endpoint": endpoint,
                        "pointer": violation.pointer, "keyword": violation.keyword}),
                )
            }
            Err(Refused::UnknownTenant) => {
                rejected();
                error(404, "unknown_tenant")
            }
            Err(Refused::Store(e)) => {
                tracing::warn!("POST /outbound: {e}");
                error(503, "store_unavailable")
            }
        }
    }
}

/// The OpenAPI 3.1 document of this listener (no secret in it, so no token needed);
/// `tests/management.rs` runs schemathesis against the live API with it.
fn openapi() -> Reply {
    static DOCUMENT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        include_str!("openapi.json")
            .replace("PORTCULLIS_VERSION", env!("CARGO_PKG_VERSION"))
            .into_bytes()
    });
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.clone())
        .expect("static response parts are valid")
}

fn invalid_message(invalid: message::Invalid) -> Reply {
    let mut body = serde_json::json!({"error": "invalid_message", "detail": invalid.detail});
    if let Some(field) = invalid.field {
        body["field"] = field.into();
    }
    json_response(400, body)
}

#[async_trait]
impl ServeHttp for Api {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let method = session.req_header().method.clone();
        if path == "/v1/openapi.json" {
            return match method.as_str() {
                "GET" => openapi(),
                _ => error(405, "method_not_allowed"),
            };
        }
        let ours = path == "/outbound"
            || path == "/v1/endpoints"
            || path.starts_with("/v1/endpoints/")
            || path.starts_with("/v1/filters/")
            || path == "/v1/events";
        if !ours {
            return error(404, "not_found");
        }
        let who = match auth::principal(session, &self.tokens, &self.trusted_proxies) {
            Ok(who) => who,
            Err((status, reason)) => return error(status, reason),
        };
        match (method.as_str(), path.as_str()) {
            ("POST", "/outbound") => self.outbound(&who, session).await,
            (_, "/outbound") => error(405, "method_not_allowed"),
            _ if path.starts_with("/v1/filters/") => keys::route(self, &who, session).await,
            ("GET", "/v1/events") => events::list(self, &who, session).await,
            (_, "/v1/events") => error(405, "method_not_allowed"),
            _ => endpoints::route(self, &who, session).await,
        }
    }
}
