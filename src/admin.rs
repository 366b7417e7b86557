//! The admin listener: `/healthz` (the process answers), `/readyz` (every sink can take
//! events, the outbound store answers and its sources are subscribed, and the node is not
//! shutting down) and `/metrics` (Prometheus text, served by pingora-prometheus).
//! Bind it to loopback or a private interface: it is not meant for the internet.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;

use crate::sinks::Sink;

pub struct Admin {
    pub sinks: Vec<Arc<dyn Sink>>,
    pub dedup: Arc<crate::filters::dedup::Dedup>,
    /// The outbound ledger, on a node that dispatches.
    pub store: Option<Arc<crate::store::Store>>,
    /// The outbound sources: each is ready while subscribed to its broker.
    pub sources: Vec<Arc<crate::outbound::sources::Health>>,
}

fn json(status: u16, body: serde_json::Value) -> http::Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).unwrap_or_default();
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" if crate::lifecycle::draining() => {
                json(503, serde_json::json!({"status": "draining"}))
            }
            "/readyz" => {
                let mut sinks = serde_json::Map::new();
                let mut ready = true;
                for sink in &self.sinks {
                    let ok = sink.ready().await;
                    ready &= ok;
                    sinks.insert(sink.name().to_owned(), serde_json::Value::Bool(ok));
                }
                let dedup = self.dedup.ready().await;
                ready &= dedup;
                let mut body = serde_json::json!({"sinks": sinks, "dedup": dedup});
                if let Some(store) = &self.store {
                    let ok = store.ready().await;
                    ready &= ok;
                    body["store"] = ok.into();
                }
                if !self.sources.is_empty() {
                    let mut sources = serde_json::Map::new();
                    for source in &self.sources {
                        ready &= source.up();
                        sources.insert(source.name.clone(), source.up().into());
                    }
                    body["sources"] = sources.into();
                }
                body["status"] = if ready { "ready" } else { "not_ready" }.into();
                json(if ready { 200 } else { 503 }, body)
            }
            "/metrics" => PrometheusHttpApp.response(session).await,
            _ => json(404, serde_json::json!({"error": "not_found"})),
        }
    }
}
