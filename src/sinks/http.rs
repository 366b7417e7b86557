//! The http sink: POST the verified raw body to an internal service, with the envelope as
//! `X-Portcullis-*` headers and the filter's forwarded headers as they came.
//!
//! It uses Pingora's own connector, so upstream connections are pooled and kept alive like
//! Pingora's proxy does. The body is written whole from memory: it was buffered to be verified
//! anyway, and this avoids Pingora's 64 KiB limit on replaying a body read in a request filter.
//! A 2xx is the acknowledgement; any other answer is a 502, no answer a 503. A pooled
//! connection the upstream closed while idle is retried once on a fresh one.
//!
//! An `https://` service with a private CA or mTLS: `tls: { ca, cert, key }` becomes the
//! peer's own CA list and client certificate (Pingora's per-peer TLS options), so the system's
//! roots stop counting for it. `headers:` adds fixed request headers, whose values may be
//! `env:`/`file:` references (an `Authorization` token), resolved at load and never logged.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::{Envelope, Sink, SinkError};

const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct HttpSink {
    name: String,
    /// `headers:` of the config, set on every request (over a forwarded header of that name).
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    connector: Connector,
    peer: HttpPeer,
    addr: SocketAddr,
    host: String,
    path: String,
    timeout: Duration,
}

pub struct ParsedUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// `http(s)://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("url `{url}` must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h, port),
            Err(_) if authority.starts_with('[') && !h.contains(']') => (authority, default_port),
            Err(_) => return Err(format!("url `{url}` has a bad port `{p}`")),
        },
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return Err(format!("url `{url}` has no host"));
    }
    Ok(ParsedUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// The PEM files of `tls:` as Pingora's peer options: its CA list and client certificate.
fn peer_tls(peer: &mut HttpPeer, tls: &super::config::ClientTls) -> Result<(), String> {
    use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &std::path::Path| -> Result<Vec<Vec<u8>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Pingora's wrapper panics on a certificate it cannot parse: refuse those here.
        for cert in &certs {
            rustls::RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
        }
        Ok(certs.into_iter().map(|c| c.to_vec()).collect())
    };
    if let Some(ca) = &tls.ca {
        let list: Vec<WrappedX509> = certs(ca)?
            .into_iter()
            .map(|der| WrappedX509::new(der, parse_x509))
            .collect();
        peer.options.ca = Some(std::sync::Arc::from(list.into_boxed_slice()));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let chain = certs(cert)?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate", cert.display()));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        peer.client_cert_key = Some(std::sync::Arc::new(CertKey::new(
            chain,
            key.secret_der().to_vec(),
        )));
    }
    Ok(())
}

impl HttpSink {
    pub fn new(name: &str, config: &Config) -> Result<HttpSink, String> {
        let (url, timeout) = (config.url.as_str(), config.timeout);
        let parsed = parse_url(url)?;
        let addr = (parsed.host.as_str(), parsed.port)
            .to_socket_addrs()
            .map_err(|e| format!("http sink `{name}`: cannot resolve {}: {e}", parsed.host))?
            .next()
            .ok_or_else(|| format!("http sink `{name}`: {} has no address", parsed.host))?;
        let mut peer = HttpPeer::new(addr, parsed.tls, parsed.host.clone());
        peer.options.connection_timeout = Some(timeout.min(Duration::from_secs(5)));
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        if let Some(tls) = &config.tls {
            peer_tls(&mut peer, tls).map_err(|e| format!("http sink `{name}`: tls: {e}"))?;
        }
        let headers = config
            .headers
            .iter()
            .map(|(n, v)| {
                let value = http::HeaderValue::from_bytes(&v.0)
                    .map_err(|_| format!("http sink `{name}`: header `{n}`: not a header value"))?;
                Ok((n.clone(), value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let default_port = if parsed.tls { 443 } else { 80 };
        let host = if parsed.port == default_port {
            parsed.host.clone()
        } else {
            format!("{}:{}", parsed.host, parsed.port)
        };
        Ok(HttpSink {
            name: name.to_owned(),
            headers,
            connector: Connector::new(None),
            peer,
            addr,
            host,
            path: parsed.path,
            timeout,
        })
    }

    fn request(&self, envelope: &Envelope) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", self.path.as_bytes(), None)?;
        req.insert_header("host", &self.host)?;
        for (name, value) in &envelope.headers {
            req.append_header(name.clone(), value.as_str())?;
        }
        for (name, value) in &self.headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        req.insert_header("content-length", envelope.body.len())?;
        req.insert_header("x-portcullis-provider", &envelope.provider)?;
        req.insert_header("x-portcullis-event-id", &envelope.event_id)?;
        req.insert_header("x-portcullis-event-type", &envelope.event_type)?;
        req.insert_header("x-portcullis-received-at", &envelope.received_at)?;
        req.insert_header("x-portcullis-source-ip", &envelope.source_ip)?;
        req.insert_header(
            "x-portcullis-verified",
            if envelope.verified { "true" } else { "false" },
        )?;
        if let Some(reason) = envelope.reason {
            req.insert_header("x-portcullis-reason", reason)?;
        }
        if let Some(map) = &envelope.map {
            req.insert_header("x-portcullis-map", map.as_str())?;
        }
        Ok(req)
    }

    /// One exchange. `Err((reused, error))` says whether a pooled connection was used.
    async fn exchange(&self, envelope: &Envelope) -> Result<u16, (bool, String)> {
        let (mut session, reused) = self
            .connector
            .get_http_session(&self.peer)
            .await
            .map_err(|e| (false, format!("connect: {e}")))?;
        let fail = |e: Box<pingora::Error>| (reused, e.to_string());
        let req = self.request(envelope).map_err(fail)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(fail)?;
        session
            .write_request_body(envelope.body.clone(), true)
            .await
            .map_err(fail)?;
        session.finish_request_body().await.map_err(fail)?;
        session.read_response_header().await.map_err(fail)?;
        let status = session
            .response_header()
            .map(|h| h.status.as_u16())
            .unwrap_or(502);
        while session.read_response_body().await.map_err(fail)?.is_some() {}
        self.connector
            .release_http_session(session, &self.peer, Some(IDLE_TIMEOUT))
            .await;
        Ok(status)
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        let attempt = async {
            match self.exchange(envelope).await {
                Err((true, _)) => self.exchange(envelope).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => Err(SinkError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Err((_, e))) => Err(SinkError::Unavailable(e)),
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(SinkError::Rejected(status)),
        }
    }

    async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(self.addr)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// `type: http`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("http");

#[derive(Debug, serde::Deserialize)]
pub struct Spec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    tls: Option<super::config::TlsSpec>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub timeout: Duration,
    pub tls: Option<super::config::ClientTls>,
    /// Values resolved from `env:`/`file:` where written so.
    pub headers: Vec<(http::HeaderName, crate::config::secrets::Secret)>,
}

/// Headers the sink sets itself, which `headers:` may not replace.
const OWN_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

impl super::SinkConfig for Config {
    fn build(&self, name: &str, _built: &super::Built) -> Result<std::sync::Arc<dyn Sink>, String> {
        Ok(std::sync::Arc::new(HttpSink::new(name, self)?))
    }
}

impl Spec {
    /// `headers:` checked: names valid and not the sink's own, `env:`/`file:` values resolved.
    fn headers(
        &self,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Vec<(http::HeaderName, crate::config::secrets::Secret)> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                at.error(
                    &["headers", name],
                    format!("header `{name}` is not a header name"),
                );
                continue;
            };
            if OWN_HEADERS.contains(&header.as_str())
                || header.as_str().starts_with("x-portcullis-")
            {
                at.error(
                    &["headers", name],
                    format!("header `{name}` is set by the sink itself"),
                );
                continue;
            }
            let secret = if value.starts_with("env:") || value.starts_with("file:") {
                match crate::config::secrets::resolve(value, base) {
                    Ok((secret, _)) => secret,
                    Err(e) => {
                        at.error(&["headers", name], e);
                        continue;
                    }
                }
            } else {
                crate::config::secrets::Secret(value.clone().into_bytes())
            };
            if http::HeaderValue::from_bytes(&secret.0).is_err() {
                // Never the value: it may be a token.
                at.error(
                    &["headers", name],
                    format!("header `{name}`: the value is not a valid header value (a line break, a control character)"),
                );
                continue;
            }
            out.push((header, secret));
        }
        out
    }
}

impl super::config::Spec for Spec {
    fn load(
        &self,
        name: &str,
        base: &std::path::Path,
        at: &mut crate::config::Section<'_, '_>,
    ) -> Option<std::sync::Arc<dyn super::SinkConfig>> {
        let timeout = super::config::timeout(self.timeout.as_deref(), at);
        let tls = super::config::client_tls(self.tls.as_ref(), base, at);
        let headers = self.headers(base, at);
        let url = super::config::url(self.url.as_ref(), "http", name, "http://host:port/path", at)?;
        match parse_url(&url) {
            Err(e) => at.error(&[], format!("http sink `{name}`: {e}")),
            Ok(u) if tls.is_some() && !u.tls => at.error(
                &["tls"],
                "tls: needs an https:// url (http:// is plaintext, and is never upgraded)",
            ),
            Ok(_) => {}
        }
        Some(std::sync::Arc::new(Config {
            url,
            timeout,
            tls,
            headers,
        }))
    }

    fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_and_explicit_ports() {
        let u = parse_url("http://127.0.0.1:3000/ingest").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 3000, "/ingest")
        );
        let u = parse_url("https://app.internal").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        let u = parse_url("http://[::1]:8080/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
    }
}
