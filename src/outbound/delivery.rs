//! One delivery attempt: sign, vet the address, POST, classify the answer.
//!
//! The request goes through Pingora's own connector (pooled HTTP/1.1, HTTP/2 by ALPN over
//! rustls) to the address the SSRF guard vetted, with the endpoint's host as SNI and `Host`.
//! Redirects are never followed (a 3xx is a failed attempt); at most [`PREVIEW`] bytes of a
//! response body are read, and a connection whose body was not read to the end is dropped,
//! not pooled.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::endpoints::Endpoint;
use super::ssrf::{self, Refusal};
use crate::schemes::Outbound;
use crate::store::StoredMessage;

/// Response bytes kept (and read) per attempt.
pub const PREVIEW: usize = 512;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an attempt ended in.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub preview: Option<String>,
    /// A 429/503's `Retry-After`, when it said.
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    /// Why, for the log (no secret, no payload).
    pub detail: Option<String>,
}

pub struct Client {
    connector: Connector,
    allow_internal: Vec<ipnet::IpNet>,
}

impl Client {
    pub fn new(allow_internal: Vec<ipnet::IpNet>) -> Client {
        Client {
            connector: Connector::new(None),
            allow_internal,
        }
    }

    /// Delivers `message` to `endpoint`, all of it within `timeout`.
    pub async fn attempt(
        &self,
        endpoint: &Endpoint,
        message: &StoredMessage,
        timeout: Duration,
    ) -> Attempted {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.exchange(endpoint, message)).await;
        let mut attempted = match result {
            Ok(a) => a,
            Err(_) => failed("timeout", format!("no answer within {timeout:?}")),
        };
        attempted.latency = started.elapsed();
        attempted
    }

    async fn exchange(&self, endpoint: &Endpoint, message: &StoredMessage) -> Attempted {
        // Checked at enqueue; fails only if the endpoint's transform changed since.
        let payload = match endpoint.body(&message.payload) {
            Ok(p) => p,
            Err(e) => return failed("transform_failed", e),
        };
        let target = &endpoint.target;
        let addr = match ssrf::vet(target, &self.allow_internal).await {
            Ok(addr) => addr,
            Err(Refusal::Dns(e)) => return failed("dns_error", e),
            Err(Refusal::Blocked(host, ip)) => {
                return failed(
                    "ssrf_blocked",
                    format!("{host} is {ip}, an internal address"),
                )
            }
        };
        let mut peer = HttpPeer::new(addr, target.tls, target.host.to_string());
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        if target.tls {
            // ALPN offers h2 first, then HTTP/1.1.
            peer.options.set_http_version(2, 1);
        }
        let req = match request(endpoint, message, &payload) {
            Ok(r) => r,
            Err(e) => return failed("connect_error", format!("request: {e}")),
        };
        let (mut session, _reused) = match self.connector.get_http_session(&peer).await {
            Ok(s) => s,
            Err(e) => return failed(error_outcome(&e), e.to_string()),
        };
        let sent = async {
            session.write_request_header(Box::new(req)).await?;
            session
                .write_request_body(Bytes::copy_from_slice(payload.as_bytes()), true)
                .await?;
            session.finish_request_body().await?;
            session.read_response_header().await?;
            Ok::<_, Box<pingora::Error>>(())
        };
        if let Err(e) = sent.await {
            return failed(error_outcome(&e), e.to_string());
        }
        let (status, retry_after) = match session.response_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after),
            ),
            None => return failed("connect_error", "no response head".into()),
        };
        let mut body = Vec::new();
        let mut complete = false;
        while body.len() < PREVIEW {
            match session.read_response_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => {
                    complete = true;
                    break;
                }
                Err(_) => break,
            }
        }
        body.truncate(PREVIEW);
        if complete {
            self.connector
                .release_http_session(session, &peer, Some(IDLE_TIMEOUT))
                .await;
        }
        Attempted {
            outcome: status_outcome(status),
            status: Some(status),
            preview: (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned()),
            retry_after,
            latency: Duration::ZERO,
            detail: None,
        }
    }
}

fn failed(outcome: &'static str, detail: String) -> Attempted {
    Attempted {
        outcome,
        status: None,
        preview: None,
        retry_after: None,
        latency: Duration::ZERO,
        detail: Some(detail),
    }
}

/// The signed request head.
fn request(
    endpoint: &Endpoint,
    message: &StoredMessage,
    payload: &str,
) -> pingora::Result<RequestHeader> {
    let id = message.id.as_str();
    // A bridged inbound webhook keeps its own type (a form body stays a form); a transform's
    // body is JSON.
    let content_type = match &endpoint.transform {
        Some(_) => "application/json",
        None => message
            .content_type
            .as_deref()
            .unwrap_or("application/json"),
    };
    let mut req = RequestHeader::build("POST", endpoint.target.path.as_bytes(), None)?;
    req.insert_header("host", &endpoint.target.authority)?;
    for (name, value) in &endpoint.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    req.insert_header("content-type", content_type)?;
    req.insert_header(
        "user-agent",
        concat!("Portcullis/", env!("CARGO_PKG_VERSION")),
    )?;
    req.insert_header("content-length", payload.len())?;
    req.insert_header("webhook-id", id)?;
    let signed = endpoint.scheme.sign(&Outbound {
        body: payload.as_bytes(),
        timestamp: chrono::Utc::now().timestamp(),
        id,
        url: Some(&endpoint.url),
        content_type: Some(content_type),
    });
    for (name, value) in signed {
        req.insert_header(name, value)?;
    }
    Ok(req)
}

/// The outcome of an answer, by status.
pub fn status_outcome(status: u16) -> &'static str {
    match status {
        200..=299 => "delivered",
        410 => "gone",
        429 | 503 => "throttled",
        300..=399 => "redirect",
        _ => "http_status",
    }
}

fn error_outcome(e: &pingora::Error) -> &'static str {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "timeout",
        TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => "tls_error",
        _ => "connect_error",
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let secs = at.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_contract_outcomes() {
        assert_eq!(status_outcome(204), "delivered");
        assert_eq!(status_outcome(301), "redirect");
        assert_eq!(status_outcome(410), "gone");
        assert_eq!(status_outcome(429), "throttled");
        assert_eq!(status_outcome(503), "throttled");
        assert_eq!(status_outcome(500), "http_status");
        assert_eq!(status_outcome(404), "http_status");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
