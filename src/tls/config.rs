//! The `listen:` list of the server file: addresses, TLS (certificates, version floor, client
//! CAs) and the PROXY protocol, parsed and checked here (certificates are loaded once, so a
//! bad one fails `check`, not the first handshake).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::secrets::expand_vars;
use crate::config::{diagnostics, keys, Report};

#[derive(Debug, Deserialize)]
pub struct ListenSpec {
    addr: String,
    #[serde(default)]
    tls: Option<TlsSpec>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
struct TlsSpec {
    cert: String,
    key: String,
    /// More certificate/key pairs, chosen when the SNI name is one of theirs.
    #[serde(default)]
    certificates: Vec<CertSpec>,
    /// "1.3" (default) or "1.2"; a number in YAML (`1.2`) is accepted too.
    #[serde(default)]
    min_version: Option<serde_yaml::Value>,
    /// PEM bundle of the CAs whose client certificates are required (mTLS).
    #[serde(default)]
    client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CertSpec {
    cert: String,
    key: String,
}

/// The keys of each block under `listen:`, for "did you mean".
pub fn nested_keys() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("listen", keys::<ListenSpec>()),
        ("tls", keys::<TlsSpec>()),
        ("certificates", keys::<CertSpec>()),
    ]
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: String,
    pub tls: Option<TlsListener>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a trusted proxy.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    /// (cert, key) PEM files; the first pair is the default certificate.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    pub min_version: TlsVersion,
    pub client_ca: Option<PathBuf>,
}

/// The listeners, and the addresses they take (for the admin address's check).
/// `trusted_proxies` says whether any proxy is trusted (PROXY protocol needs one);
/// `required`, whether a config without listeners would do nothing.
pub fn load(
    specs: &[ListenSpec],
    trusted_proxies: bool,
    required: bool,
    base: &Path,
    report: &mut Report<'_>,
) -> (Vec<Listener>, Vec<SocketAddr>) {
    if specs.is_empty() && required {
        report.error(
            &["listen"],
            "no listeners: add listen: [{ addr: 127.0.0.1:8080 }]",
        );
    }
    let mut listen = Vec::new();
    let mut seen: Vec<SocketAddr> = Vec::new();
    for (i, l) in specs.iter().enumerate() {
        let nth = specs[..i].iter().filter(|o| o.addr == l.addr).count();
        let line = line_of_value(report.text, &l.addr, nth);
        match l.addr.parse::<SocketAddr>() {
            Err(_) => report.error_at(
                line,
                format!(
                    "listen addr `{}` is not IP:PORT (like 0.0.0.0:443 or [::]:443)",
                    l.addr
                ),
            ),
            Ok(addr) if seen.contains(&addr) => report.error_at(
                line,
                format!("listen addr {addr} is listed twice: remove one"),
            ),
            Ok(addr) => seen.push(addr),
        }
        let tls = l.tls.as_ref().map(|t| tls_listener(t, base, report));
        if l.proxy_protocol && tls.is_none() {
            report.error(
                &["listen", "proxy_protocol"],
                format!(
                    "listener {}: proxy_protocol needs a tls listener (Pingora reads the header before the TLS handshake); behind an HTTP balancer use X-Forwarded-For with trusted_proxies",
                    l.addr
                ),
            );
        }
        if l.proxy_protocol && !trusted_proxies {
            report.error(
                &["listen", "proxy_protocol"],
                format!(
                    "listener {}: proxy_protocol is believed only from trusted_proxies: list the balancer's addresses there",
                    l.addr
                ),
            );
        }
        listen.push(Listener {
            addr: l.addr.clone(),
            tls,
            proxy_protocol: l.proxy_protocol,
        });
    }
    (listen, seen)
}

/// The line where `value` (a listen address) is written for the `nth` time (from 0), or the
/// `listen:` line.
fn line_of_value(text: &str, value: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(value))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| diagnostics::line_of(text, &["listen"]))
}

fn tls_listener(t: &TlsSpec, base: &Path, report: &mut Report<'_>) -> TlsListener {
    let at = ["listen", "tls"];
    // `${CREDENTIALS_DIRECTORY}/cert.pem` and the like, as secrets take them.
    let mut path = |text: &str| match expand_vars(text) {
        Ok(expanded) => base.join(expanded),
        Err(e) => {
            report.error(&at, format!("tls: {e}"));
            base.join(text)
        }
    };
    let mut pairs = vec![(path(&t.cert), path(&t.key))];
    for c in &t.certificates {
        let pair = (path(&c.cert), path(&c.key));
        pairs.push(pair);
    }
    let client_ca = t.client_ca.as_deref().map(&mut path);
    let min_version = match t.min_version.as_ref().map(yaml_scalar).as_deref() {
        None | Some("1.3") => TlsVersion::Tls13,
        Some("1.2") => TlsVersion::Tls12,
        Some(other) => {
            report.error(
                &["listen", "min_version"],
                format!("min_version `{other}` is not \"1.2\" or \"1.3\""),
            );
            TlsVersion::Tls13
        }
    };
    let tls = TlsListener {
        pairs,
        min_version,
        client_ca,
    };
    if let Err(e) = super::validate(&tls) {
        report.error(&at, format!("tls: {e}"));
    }
    tls
}

fn yaml_scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}
