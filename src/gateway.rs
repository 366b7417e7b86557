//! The Pingora `ProxyHttp` implementation: glue between a request, a provider's filter chain,
//! the dedup store and a sink.
//!
//! Portcullis terminates every request in `request_filter` and answers it itself: the body is
//! read (bounded and timed), verified, and handed to a sink, so nothing unverified is ever
//! proxied and no upstream sees a byte before the signature checks out.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::ErrorType;

use crate::filters::config::{Filter as FilterConfig, Mode};
use crate::filters::dedup::{self, Dedup, Reservation};
use crate::filters::{self, allowlist};
use crate::loader::Server;
use crate::metrics;
use crate::reason::Reason;
use crate::request::Inbound;
use crate::routes::{Builder, Provider, Reloader, Routes};
use crate::sinks::{Envelope, Sink, SinkError, Sinks};

pub struct Gateway {
    routes: Arc<ArcSwap<Routes>>,
    builder: Builder,
    trusted_proxies: Vec<IpNet>,
    journal: Option<dedup::Journal>,
    access_log: bool,
    event_log: Option<crate::event_log::EventLog>,
}

/// What became of a request: the response and the metrics follow from it.
enum Outcome {
    /// (The event id is the context's.)
    Accepted,
    Duplicate,
    Rejected(Reason),
}

#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    /// Wall-clock arrival (unix ms): the event log's `at`, in the order requests came.
    arrived_ms: i64,
    provider: Option<Arc<Provider>>,
    client_ip: Option<IpAddr>,
    event_id: Option<String>,
    outcome: &'static str,
    reason: Option<Reason>,
    shadow_verdict: Option<Reason>,
    /// With `missing_field`: the configured field (or id header / JSON pointer) absent.
    field: Option<String>,
    /// With `schema_violation` (also in shadow mode): where the body failed its schema.
    violation: Option<crate::filters::schema::Violation>,
    status: u16,
    /// Names this request in the access log and the `X-Request-Id` response header.
    request_id: String,
    /// Body bytes read.
    bytes: u64,
    /// The stored url-key key that opened it.
    key_id: Option<String>,
    /// Keeps a shutdown from exiting before this request is answered.
    _in_flight: Option<crate::lifecycle::InFlight>,
}

impl Gateway {
    pub fn build(
        filters: Vec<FilterConfig>,
        server: &Server,
        sinks: Sinks,
        access_log: bool,
        event_log: Option<crate::event_log::EventLog>,
    ) -> Result<Gateway, String> {
        let dedup = Arc::new(match &server.dedup_shared {
            None => Dedup::new(server.dedup_max_entries),
            Some(shared) => Dedup::shared(
                server.dedup_max_entries,
                dedup::SharedStore::new(shared)?,
                shared.on_error,
            ),
        });
        let journal = match (&server.dedup_journal, &server.dedup_shared) {
            (Some(dir), None) => Some(dedup::Journal::open(dir)?),
            _ => None,
        };
        let builder = Builder {
            sinks,
            dedup,
            journal: journal.is_some(),
        };
        let routes = builder.build(filters)?;
        Ok(Gateway {
            routes: Arc::new(ArcSwap::from_pointee(routes)),
            builder,
            trusted_proxies: server.trusted_proxies.clone(),
            journal,
            access_log,
            event_log,
        })
    }

    /// The filters in force, as SIGHUP swaps them.
    pub fn routes(&self) -> Arc<ArcSwap<Routes>> {
        self.routes.clone()
    }

    /// Reloads the filters from `config` on SIGHUP (a background service).
    pub fn reloader(&self, config: &std::path::Path) -> Reloader {
        Reloader {
            config: config.to_path_buf(),
            routes: self.routes.clone(),
            builder: self.builder.clone(),
        }
    }

    pub fn dedup(&self) -> Arc<Dedup> {
        self.builder.dedup.clone()
    }

    /// What [`dedup::Recovery`] reads back for this gateway: the journal (if any), every
    /// spool sink's segments, and each provider's TTL. `None` with the fleet's Redis store.
    pub fn recovery(&self) -> Option<dedup::Recovery> {
        if self.builder.dedup.store().is_some() {
            return None;
        }
        let spools = self
            .builder
            .sinks
            .values()
            .filter_map(|s| s.recorded_in().map(std::path::Path::to_path_buf))
            .collect();
        let ttls = self
            .routes
            .load()
            .providers()
            .iter()
            .filter_map(|p| Some((p.name.to_string(), p.config.dedup_ttl?)))
            .collect();
        Some(dedup::Recovery::new(
            self.journal.as_ref().map(dedup::Journal::dir),
            spools,
            ttls,
        ))
    }

    pub fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        self.builder.sinks.values().cloned().collect()
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let head = session.req_header();
        let forwarded = head
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client_ip = allowlist::client_ip(peer, forwarded, &self.trusted_proxies);
        ctx.client_ip = Some(client_ip);
        if let Err(reason) = filters::framing::check(head.version, &head.headers) {
            return Outcome::Rejected(reason);
        }
        // This request keeps the filters it started with, whatever a reload does meanwhile.
        let Some(provider) = self.routes.load().route(head.uri.path()).cloned() else {
            return Outcome::Rejected(Reason::UnknownProvider);
        };
        ctx.provider = Some(provider.clone());
        let provider = &*provider;
        if head.method != http::Method::POST {
            return Outcome::Rejected(Reason::MethodNotAllowed);
        }
        let req = inbound(session, client_ip, b"");
        if let Err(reason) = filters::check_head(&provider.chain, &req) {
            return Outcome::Rejected(reason);
        }
        if let Some(fleet) = &provider.fleet_limit {
            if let Err(reason) = fleet.check(client_ip).await {
                return Outcome::Rejected(reason);
            }
        }

        if expects_continue(session) {
            let _ = session.write_continue_response().await;
        }
        let body = match read_body(
            session,
            provider.config.max_body,
            provider.config.body_timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(reason) => return Outcome::Rejected(reason),
        };
        ctx.bytes = body.len() as u64;

        let shadow = provider.config.mode == Mode::Shadow;
        let req = inbound(session, client_ip, &body);
        let now = chrono::Utc::now();
        let checked = filters::check_body(&provider.chain, &req, now.timestamp(), shadow);
        ctx.key_id = req.key_id().map(str::to_owned);
        ctx.violation = req.violation().cloned();
        ctx.shadow_verdict = match checked {
            Ok(verdict) => verdict,
            Err(reason) => {
                if reason == Reason::MissingField {
                    ctx.field =
                        filters::payload::first_missing(&provider.config.require_fields, &req)
                            .map(str::to_owned);
                }
                return Outcome::Rejected(reason);
            }
        };
        let event_id = match dedup::event_id(&provider.config.event_id, &req) {
            Ok(id) => id,
            Err(reason) if !shadow => {
                ctx.field = provider.config.event_id.field().map(str::to_owned);
                return Outcome::Rejected(reason);
            }
            Err(reason) => {
                ctx.shadow_verdict.get_or_insert(reason);
                dedup::event_id(&crate::filters::dedup::EventIdSource::BodyHash, &req)
                    .unwrap_or_default()
            }
        };
        ctx.event_id = Some(event_id.clone());
        let map = match provider.config.map.as_ref().map(|m| m.apply(&req)) {
            None => None,
            Some(Ok(map)) => Some(map),
            Some(Err(unmapped)) => {
                let (reason, field) = unmapped.verdict();
                ctx.field = field;
                if !shadow {
                    return Outcome::Rejected(reason);
                }
                ctx.shadow_verdict.get_or_insert(reason);
                None
            }
        };
        let envelope = Envelope {
            provider: provider.name.to_string(),
            event_id,
            event_type: dedup::event_type(provider.config.event_type.as_ref(), &req),
            received_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            source_ip: client_ip.to_string(),
            verified: ctx.shadow_verdict.is_none(),
            reason: ctx.shadow_verdict.map(Reason::as_str),
            headers: forward_headers(&req, &provider.config.forward_headers),
            map,
            body: body.clone(),
            dedup_ttl: provider.config.dedup_ttl,
        };
        drop(req);
        self.deliver(provider, envelope).await
    }

    /// Reserve, publish, then commit or release: exactly one 202 per event id.
    async fn deliver(&self, provider: &Provider, envelope: Envelope) -> Outcome {
        let event_id = &envelope.event_id;
        let Some(ttl) = provider.config.dedup_ttl else {
            return match publish(provider, &envelope).await {
                Ok(()) => Outcome::Accepted,
                Err(reason) => Outcome::Rejected(reason),
            };
        };
        let reserved = match self.builder.dedup.reserve(&provider.name, event_id).await {
            Reservation::Fresh(reserved) => reserved,
            Reservation::Duplicate => return Outcome::Duplicate,
            Reservation::InProgress => return Outcome::Rejected(Reason::InProgress),
            Reservation::Unavailable => return Outcome::Rejected(Reason::DedupUnavailable),
        };
        match publish(provider, &envelope).await {
            Ok(()) => {
                if let Some(journal) = self.journal.as_ref().filter(|_| provider.journaled) {
                    // Still reserved meanwhile: a concurrent copy gets 409, not a second 202.
                    if let Err(e) = journal.record(&provider.name, event_id, ttl).await {
                        metrics::DEDUP_JOURNAL_ERRORS.inc();
                        tracing::error!(provider = %provider.name, error = %e, "event accepted but its id not journaled: a restart would forget it");
                    }
                }
                reserved.commit(ttl).await;
                Outcome::Accepted
            }
            Err(reason) => {
                // Released before the answer goes out: the sender's retry must pass.
                reserved.release().await;
                Outcome::Rejected(reason)
            }
        }
    }

    fn provider_label<'c>(&self, ctx: &'c RequestCtx) -> &'c str {
        ctx.provider.as_ref().map_or("unknown", |p| &*p.name)
    }

    fn record(&self, ctx: &RequestCtx) {
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let reason = ctx.reason.or(ctx.shadow_verdict);
        let series = ctx.provider.as_ref().map(|p| &p.series);
        match series.and_then(|s| s.request(ctx.outcome)) {
            Some(counter) => counter.inc(),
            None => metrics::REQUESTS
                .with_label_values(&[self.provider_label(ctx), ctx.outcome])
                .inc(),
        }
        if let Some(reason) = reason {
            match series.and_then(|s| s.rejection(reason)) {
                Some(counter) => counter.inc(),
                None => metrics::REJECTIONS
                    .with_label_values(&[self.provider_label(ctx), reason.as_str()])
                    .inc(),
            }
        }
        match series {
            Some(series) => series.duration.observe(elapsed.as_secs_f64()),
            None => metrics::REQUEST_DURATION
                .with_label_values(&[self.provider_label(ctx)])
                .observe(elapsed.as_secs_f64()),
        }
        metrics::DEDUP_ENTRIES.set(self.builder.dedup.entries() as i64);
    }

    async fn respond(&self, session: &mut Session, ctx: &mut RequestCtx, outcome: Outcome) {
        // Requests pipelined behind an accepted one are answered in order (RFC 9112 §9.3.2).
        // Behind a rejected one they are not: bytes past what it declared may be a request
        // smuggled inside its body, so the connection closes after the answer, as before.
        session.set_pipelining_enabled(matches!(outcome, Outcome::Accepted | Outcome::Duplicate));
        let mut body = Vec::with_capacity(128);
        let provider = ctx.provider.as_ref().map(|p| &*p.name);
        let (status, retry_after) = match &outcome {
            Outcome::Accepted | Outcome::Duplicate => {
                let (status, word) = match outcome {
                    Outcome::Accepted => (202, "accepted"),
                    _ => (200, "duplicate"),
                };
                ctx.outcome = word;
                let answer = Answered {
                    event_id: ctx.event_id.as_deref().unwrap_or_default(),
                    provider,
                    status: word,
                };
                let _ = serde_json::to_writer(&mut body, &answer);
                (status, None)
            }
            Outcome::Rejected(reason) => {
                let reason = *reason;
                ctx.outcome = match reason {
                    Reason::SinkUnavailable | Reason::UpstreamError => "error",
                    _ => "rejected",
                };
                ctx.reason = Some(reason);
                let mut answer = Refused {
                    error: reason.as_str(),
                    field: None,
                    keyword: None,
                    pointer: None,
                };
                match (reason, &ctx.field, &ctx.violation) {
                    (Reason::MissingField, Some(field), _) => answer.field = Some(field),
                    // Where and which rule, never the value.
                    (Reason::SchemaViolation, _, Some(v)) => {
                        answer.pointer = Some(&v.pointer);
                        answer.keyword = Some(&v.keyword);
                    }
                    _ => {}
                }
                let _ = serde_json::to_writer(&mut body, &answer);
                (reason.status(), reason.retry_after())
            }
        };
        ctx.status = status;
        // Counted before answering, so a client that reads its answer sees it in /metrics.
        self.record(ctx);
        // A request turned away before its body was read, or whose body broke off, must not
        // have that body drained (it may be huge, never come or be unframeable): close the
        // connection after answering.
        let body_broken = matches!(
            ctx.reason,
            Some(
                Reason::InvalidBody
                    | Reason::BodyTimeout
                    | Reason::PayloadTooLarge
                    | Reason::InvalidRequest
                    | Reason::UnsupportedTransferEncoding
            )
        );
        if body_broken || !session.is_body_done() {
            session.set_keepalive(None);
        }
        body.push(b'\n');
        let body = Bytes::from(body);
        let Ok(mut resp) = ResponseHeader::build(status, Some(4)) else {
            return;
        };
        let _ = resp.insert_header("content-type", "application/json");
        let _ = resp.insert_header("content-length", body.len());
        let _ = resp.insert_header("cache-control", "no-store");
        let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
        if let Some(seconds) = retry_after {
            let _ = resp.insert_header("retry-after", seconds);
        }
        if status == 405 {
            let _ = resp.insert_header("allow", "POST");
        }
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }
}

/// A 202 or 200's body (keys in the order `json!` gave them: sorted).
#[derive(serde::Serialize)]
struct Answered<'a> {
    event_id: &'a str,
    provider: Option<&'a str>,
    status: &'static str,
}

/// A refusal's body: the reason, and for some the field or the schema rule it failed.
#[derive(serde::Serialize)]
struct Refused<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyword: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pointer: Option<&'a str>,
}

async fn publish(provider: &Provider, envelope: &Envelope) -> Result<(), Reason> {
    let sink = provider.sink.name();
    let timer = provider.series.publish.start_timer();
    let result = provider.sink.publish(envelope).await;
    timer.observe_duration();
    result.map_err(|e| {
        if !provider.sink.counts_own_errors() {
            metrics::SINK_ERRORS.with_label_values(&[sink]).inc();
        }
        tracing::warn!(sink, provider = %provider.name, error = %e, "publish failed");
        match e {
            SinkError::Unavailable(_) => Reason::SinkUnavailable,
            SinkError::Rejected(_) => Reason::UpstreamError,
        }
    })
}

fn inbound<'a>(session: &'a Session, client_ip: IpAddr, body: &'a [u8]) -> Inbound<'a> {
    let head = session.req_header();
    Inbound::new(
        head.method.as_str(),
        head.uri.path(),
        head.uri.query(),
        &head.headers,
        client_ip,
        body,
    )
}

/// `Expect: 100-continue` from an HTTP/1.1 client (RFC 9110 §10.1.1: ignored from HTTP/1.0).
fn expects_continue(session: &Session) -> bool {
    let head = session.req_header();
    head.version == http::Version::HTTP_11
        && head
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads the whole body, refusing it once it grows past `max` and when it does not arrive
/// within `timeout` (slow senders hold a connection, not a worker).
async fn read_body(session: &mut Session, max: u64, timeout: Duration) -> Result<Bytes, Reason> {
    let read = async {
        // A body that arrives as one chunk (most do) is kept as Pingora read it, uncopied.
        let mut first: Option<Bytes> = None;
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    let held = first.as_ref().map_or(0, Bytes::len) + body.len();
                    if (held + chunk.len()) as u64 > max {
                        return Err(Reason::PayloadTooLarge);
                    }
                    if held == 0 && first.is_none() {
                        first = Some(chunk);
                        continue;
                    }
                    if let Some(first) = first.take() {
                        body.extend_from_slice(&first);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(first.unwrap_or_else(|| body.freeze())),
                Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                    return Err(Reason::BodyTimeout)
                }
                Err(_) => return Err(Reason::InvalidBody),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Reason::BodyTimeout))
}

fn forward_headers(req: &Inbound<'_>, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| req.header(name).map(|v| (name.clone(), v.to_owned())))
        .collect()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Some(Instant::now()),
            arrived_ms: crate::store::now_ms(),
            _in_flight: Some(crate::lifecycle::InFlight::start()),
            request_id: format!("{:016x}", rand::random::<u64>()),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        crate::header_deadline::head_received();
        if session.is_http2() {
            crate::header_deadline::h2_request_seen(
                session.digest().and_then(|d| d.socket_digest.as_deref()),
            );
        }
        let outcome = self.handle(session, ctx).await;
        self.respond(session, ctx, outcome).await;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; nothing is ever proxied unverified.
        Error::e_explain(ErrorType::InternalError, "portcullis does not proxy")
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        crate::header_deadline::response_sent();
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let provider = self.provider_label(ctx);
        let outcome = ctx.outcome;
        if self.access_log {
            tracing::info!(
                target: "portcullis::access",
                provider,
                status = ctx.status,
                outcome,
                // Absent ones are left out of the line rather than logged empty.
                reason = ctx.reason.map(Reason::as_str),
                shadow_verdict = ctx.shadow_verdict.map(Reason::as_str),
                schema_pointer = ctx.violation.as_ref().map(|v| v.pointer.as_str()),
                schema_keyword = ctx.violation.as_ref().map(|v| v.keyword.as_str()),
                event_id = ctx.event_id.as_deref(),
                client_ip = ctx.client_ip.map(tracing::field::display),
                latency_ms = elapsed.as_micros() as f64 / 1000.0,
                request_id = ctx.request_id.as_str(),
                "request"
            );
        }
        // (A request never answered, its connection gone first, is not an event.)
        if let Some(log) = self.event_log.as_ref().filter(|_| !outcome.is_empty()) {
            log.record(crate::store::events::NewEvent {
                at: ctx.arrived_ms,
                request_id: std::mem::take(&mut ctx.request_id),
                provider: ctx
                    .provider
                    .as_ref()
                    .map_or_else(|| "unknown".into(), |p| p.name.clone()),
                key_id: ctx.key_id.take(),
                outcome,
                reason: ctx.reason.map(Reason::as_str),
                shadow_verdict: ctx.shadow_verdict.map(Reason::as_str),
                status: ctx.status,
                event_id: ctx.event_id.take(),
                client_ip: ctx.client_ip,
                bytes: ctx.bytes,
                latency_us: elapsed.as_micros() as u64,
            });
        }
    }
}
