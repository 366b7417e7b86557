//! `filters/NAME.yaml`: one provider's route, scheme, secrets and limits.
//!
//! Parsing keeps every problem (unknown keys through serde_ignored, then each value's
//! validation) so `check` can print them all; a filter with any error is not built.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::diagnostics::{parse, suggest, Report};
use super::secrets::{self, Source};
use super::{parse_duration, parse_size, SizeValue};
use crate::schemes::{
    self, DefaultEventId, Scheme, SchemeConfig, Secret, SignatureSpec, TimestampSpec,
};

pub const KEYS: &[&str] = &[
    "name",
    "path",
    "preset",
    "secrets",
    "tolerance",
    "event_id",
    "event_type",
    "dedup",
    "allow",
    "rate_limit",
    "max_body",
    "content_types",
    "require_fields",
    "mode",
    "sink",
    "signature",
    "timestamp",
    "public_url",
    "forward_headers",
    "body_timeout",
];

#[derive(Debug, Deserialize)]
pub struct FilterFile {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    pub preset: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub tolerance: Option<String>,
    #[serde(default)]
    pub event_id: Option<EventIdSpec>,
    #[serde(default)]
    pub event_type: Option<EventIdSpec>,
    #[serde(default)]
    pub dedup: Option<DedupSpec>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    pub max_body: Option<SizeValue>,
    #[serde(default)]
    pub content_types: Vec<String>,
    #[serde(default)]
    pub require_fields: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub sink: Option<String>,
    #[serde(default)]
    pub signature: Option<SignatureSpec>,
    #[serde(default)]
    pub timestamp: Option<TimestampSpec>,
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    #[serde(default)]
    pub body_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EventIdSpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub json: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum DedupSpec {
    Switch(String),
    Ttl { ttl: String },
}

#[derive(Debug, Deserialize)]
pub struct RateLimitSpec {
    #[serde(default)]
    pub per_second: Option<u32>,
    #[serde(default)]
    pub per_ip_per_second: Option<u32>,
    /// `node` (default): each node counts alone; `fleet`: counted across nodes in Redis.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// Where the event id comes from; `required` ids missing from a request are a 400.
#[derive(Debug, Clone)]
pub enum EventIdSource {
    Header { name: String, required: bool },
    Json { pointer: String, required: bool },
    BodyHash,
}

impl EventIdSource {
    /// The header name or JSON pointer the id is read from (what `missing_field` names).
    pub fn field(&self) -> Option<&str> {
        match self {
            EventIdSource::Header { name, .. } => Some(name),
            EventIdSource::Json { pointer, .. } => Some(pointer),
            EventIdSource::BodyHash => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: Option<u32>,
    pub per_ip_per_second: Option<u32>,
    /// Limits hold across the fleet (Redis), with the node's own limit still in front.
    pub fleet: bool,
}

/// A validated filter, ready for the gateway.
pub struct Filter {
    pub name: String,
    pub route: String,
    pub preset: &'static str,
    pub url_key: bool,
    pub scheme: Arc<dyn Scheme>,
    pub event_id: EventIdSource,
    /// Where `{event_type}` comes from; `None` when neither the preset nor the filter says.
    pub event_type: Option<EventIdSource>,
    pub dedup_ttl: Option<Duration>,
    pub allow: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    pub max_body: u64,
    pub content_types: Vec<String>,
    pub require_fields: Vec<String>,
    pub mode: Mode,
    pub sink: String,
    pub forward_headers: Vec<String>,
    pub body_timeout: Duration,
    pub public_url: Option<String>,
}

pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest body any filter may accept: the body is buffered whole to be verified.
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The keys of each nested block, for "did you mean" on a misspelt one.
const NESTED_KEYS: &[(&str, &[&str])] = &[
    ("rate_limit", &["per_second", "per_ip_per_second", "scope"]),
    (
        "signature",
        &[
            "header",
            "algorithm",
            "encoding",
            "prefix",
            "prefix_optional",
            "signed",
        ],
    ),
    ("timestamp", &["header", "json", "format"]),
    ("event_id", &["header", "json"]),
    ("event_type", &["header", "json"]),
    ("dedup", &["ttl"]),
];

/// What RFC 3986 lets a path carry unescaped (`pchar` and `/`), plus `%` of an escape.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)
}

fn percent_escapes_are_whole(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Parses and validates one filter file. `sinks` are the names the server defines.
/// `sinks` is `None` when the filter is loaded alone (`sign`, `verify`): its sink is not checked.
pub fn load(path: &Path, sinks: Option<&[String]>, report: &mut Report<'_>) -> Option<Filter> {
    let errors_before = report.problems.len();
    let raw: FilterFile = parse(report, KEYS, NESTED_KEYS, "filter reference")?;

    let base_dir = path.parent().unwrap_or(Path::new("."));
    let name = raw.name.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        report.error(
            &["name"],
            "name must be letters, digits, `-` or `_` (it names routes, metrics and queues)",
        );
    }
    let route = raw
        .path
        .clone()
        .unwrap_or_else(|| format!("/webhook/{name}"));
    if !route.starts_with('/') || route.contains('?') || (route.len() > 1 && route.ends_with('/')) {
        report.error(
            &["path"],
            format!("path `{route}` must start with `/`, without a trailing `/` or query"),
        );
    } else if let Some(bad) = route.chars().find(|&c| !is_path_char(c)) {
        report.error(
            &["path"],
            format!(
                "path {route:?} has {bad:?}, which a request path cannot carry: use letters, digits and -._~!$&'()*+,;=:@/ (or %XX)"
            ),
        );
    } else if !percent_escapes_are_whole(&route) {
        report.error(
            &["path"],
            format!("path {route:?} has a `%` not followed by two hex digits"),
        );
    }

    let Some(preset) = schemes::preset(&raw.preset) else {
        let names: Vec<&str> = schemes::PRESETS.iter().map(|p| p.name).collect();
        report.error(
            &["preset"],
            format!(
                "unknown preset `{}`: {}",
                raw.preset,
                suggest(&raw.preset, &names)
            ),
        );
        return None;
    };

    let mut secrets: Vec<Secret> = Vec::new();
    for (i, reference) in raw.secrets.iter().enumerate() {
        match secrets::resolve(reference, base_dir) {
            Ok((secret, source)) => {
                if matches!(source, Source::Literal) {
                    report.warn(&["secrets"], format!("secret #{} is written literally in the file: fine for a demo, but use env:NAME or file:PATH in production", i + 1));
                }
                if preset.name == "url-key" {
                    if let Err(e) = schemes::url_key_validate(&secret.0) {
                        report.error(&["secrets"], format!("secret #{}: {e}", i + 1));
                    }
                }
                secrets.push(secret);
            }
            Err(e) => report.error(&["secrets"], e),
        }
    }
    if preset.needs_secret && raw.secrets.is_empty() {
        report.error(
            &["preset"],
            format!(
                "preset `{}` needs at least one secret: add secrets: [env:NAME]",
                preset.name
            ),
        );
    }
    if !preset.needs_secret && !raw.secrets.is_empty() {
        report.warn(
            &["secrets"],
            "preset `none` checks no signature: these secrets are unused",
        );
    }
    if preset.name == "none" && raw.allow.is_empty() {
        report.warn(
            &["preset"],
            "preset `none` accepts unsigned requests from anywhere: add an `allow:` list",
        );
    }

    let tolerance = raw
        .tolerance
        .as_deref()
        .and_then(|t| match parse_duration(t) {
            Ok(d) => Some(d),
            Err(e) => {
                report.error(&["tolerance"], e);
                None
            }
        });

    let signs_timestamp =
        preset.tolerance.is_some() || (preset.name == "hmac" && raw.timestamp.is_some());
    if raw.tolerance.is_some() && !signs_timestamp {
        report.warn(
            &["tolerance"],
            format!(
                "tolerance has no effect: preset `{}` signs no timestamp{}",
                preset.name,
                if preset.name == "hmac" {
                    " (add a timestamp: block)"
                } else {
                    ""
                }
            ),
        );
    }

    // A source the filter names is required of every request (for the event id: a 400 when
    // absent); a preset's default is best effort.
    let event_id = match &raw.event_id {
        None => Some(EventIdSource::from(preset.event_id)),
        Some(spec) => source(spec, "event_id", "/data/id", true, report),
    }
    .unwrap_or(EventIdSource::BodyHash);
    let event_type = match &raw.event_type {
        None => preset.event_type.map(EventIdSource::from),
        Some(spec) => source(spec, "event_type", "/type", false, report),
    };
    let id_header = match &event_id {
        EventIdSource::Header { name, .. } => Some(name.as_str()),
        _ => None,
    };

    let dedup_ttl = match &raw.dedup {
        None => Some(DEFAULT_DEDUP_TTL),
        Some(DedupSpec::Switch(s)) if s == "off" => None,
        Some(DedupSpec::Switch(s)) => {
            report.error(
                &["dedup"],
                format!("dedup `{s}`: write `dedup: off` or `dedup: {{ ttl: 24h }}`"),
            );
            None
        }
        Some(DedupSpec::Ttl { ttl }) => match parse_duration(ttl) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                report.error(
                    &["dedup", "ttl"],
                    "dedup ttl must be more than zero (or write `dedup: off`)",
                );
                None
            }
            Err(e) => {
                report.error(&["dedup", "ttl"], e);
                None
            }
        },
    };

    let mut allow = Vec::new();
    for cidr in &raw.allow {
        match parse_net(cidr) {
            Some(net) => allow.push(net),
            None => report.error(&["allow"], format!("`{cidr}` is not an IP address or CIDR (like 192.30.252.0/22 or 2606:50c0::/32)")),
        }
    }

    let rate_limit = raw.rate_limit.as_ref().map(|r| {
        for (key, value) in [
            ("per_second", r.per_second),
            ("per_ip_per_second", r.per_ip_per_second),
        ] {
            if value == Some(0) {
                report.error(
                    &["rate_limit", key],
                    format!("rate_limit.{key} is 0, which admits nothing: remove it for no limit"),
                );
            }
        }
        let fleet = match r.scope.as_deref() {
            None | Some("node") => false,
            Some("fleet") => true,
            Some(other) => {
                report.error(
                    &["rate_limit", "scope"],
                    format!("rate_limit.scope `{other}` is not node or fleet"),
                );
                false
            }
        };
        RateLimit {
            per_second: r.per_second,
            per_ip_per_second: r.per_ip_per_second,
            fleet,
        }
    });

    let max_body = match &raw.max_body {
        None => DEFAULT_MAX_BODY,
        Some(v) => match parse_size(v) {
            Ok(n) if n > 0 && n <= MAX_BODY_LIMIT => n,
            Ok(n) => {
                report.error(&["max_body"], format!("max_body {n} bytes is outside 1 byte to 64MiB: bodies are buffered whole to be verified"));
                DEFAULT_MAX_BODY
            }
            Err(e) => {
                report.error(&["max_body"], e);
                DEFAULT_MAX_BODY
            }
        },
    };

    let body_timeout = match raw.body_timeout.as_deref().map(parse_duration) {
        None => DEFAULT_BODY_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            report.error(&["body_timeout"], "body_timeout must be more than zero");
            DEFAULT_BODY_TIMEOUT
        }
        Some(Err(e)) => {
            report.error(&["body_timeout"], e);
            DEFAULT_BODY_TIMEOUT
        }
    };

    let sink = match (&raw.sink, sinks) {
        (Some(s), _) => s.clone(),
        (None, Some([only])) => only.clone(),
        (None, None) => String::new(),
        (None, Some(sinks)) => {
            report.error(
                &["name"],
                format!(
                    "no `sink:` and the server defines {} sinks: add sink: <one of {}>",
                    sinks.len(),
                    sinks.join(", ")
                ),
            );
            String::new()
        }
    };
    if let Some(sinks) = sinks {
        if !sink.is_empty() && !sinks.contains(&sink) {
            report.error(
                &["sink"],
                format!(
                    "sink `{sink}` is not defined in the server config (defined: {})",
                    sinks.join(", ")
                ),
            );
        }
    }

    if preset.name != "hmac" && raw.signature.is_some() {
        report.error(
            &["signature"],
            format!(
                "`signature:` is only for preset hmac; preset `{}` fixes its own",
                preset.name
            ),
        );
    }
    if preset.name != "hmac" && raw.timestamp.is_some() {
        report.error(
            &["timestamp"],
            format!(
                "`timestamp:` is only for preset hmac; preset `{}` fixes its own",
                preset.name
            ),
        );
    }
    if let (Some(sig), Some(ts)) = (&raw.signature, &raw.timestamp) {
        if ts.header.is_some() && !sig.signed.contains("{timestamp}") {
            report.warn(&["timestamp"], "the timestamp header is not in `signed:`, so it is not authenticated: a replay can carry a fresh one (add {timestamp} to the template)");
        }
    }
    if let Some(url) = &raw.public_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('?') {
            report.error(
                &["public_url"],
                format!("public_url `{url}` must be an http(s) URL without a query string"),
            );
        }
    }

    let content_types = raw
        .content_types
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut forward_headers: Vec<String> = raw
        .forward_headers
        .clone()
        .map(|list| list.into_iter().map(|h| h.to_ascii_lowercase()).collect())
        .unwrap_or_else(|| {
            let mut list = vec!["content-type".to_string(), "user-agent".to_string()];
            list.extend(preset.forward_headers.iter().map(|h| h.to_string()));
            list
        });
    // Named twice, forwarded once: sinks carry the headers as a map.
    let mut seen = std::collections::HashSet::new();
    forward_headers.retain(|h| seen.insert(h.clone()));
    for header in &forward_headers {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            report.error(
                &["forward_headers"],
                format!("`{header}` is not a valid header name"),
            );
        }
    }

    if report.problems[errors_before..]
        .iter()
        .any(|p| p.severity == super::diagnostics::Severity::Error)
    {
        return None;
    }
    let scheme = match schemes::build(&SchemeConfig {
        preset,
        secrets: &secrets,
        tolerance,
        signature: raw.signature.as_ref(),
        timestamp: raw.timestamp.as_ref(),
        public_url: raw.public_url.as_deref(),
        id_header,
    }) {
        Ok(s) => s,
        Err(e) => {
            let key = if raw.signature.is_some() {
                "signature"
            } else {
                "preset"
            };
            report.error(&[key], e);
            return None;
        }
    };

    Some(Filter {
        name,
        route,
        preset: preset.name,
        url_key: preset.name == "url-key",
        scheme: Arc::from(scheme),
        event_id,
        event_type,
        dedup_ttl,
        allow,
        rate_limit,
        max_body,
        content_types,
        require_fields: raw.require_fields,
        mode: raw.mode,
        sink,
        forward_headers,
        body_timeout,
        public_url: raw.public_url,
    })
}

impl From<DefaultEventId> for EventIdSource {
    fn from(default: DefaultEventId) -> EventIdSource {
        match default {
            DefaultEventId::Header(h) => EventIdSource::Header {
                name: h.into(),
                required: false,
            },
            DefaultEventId::Json(p) => EventIdSource::Json {
                pointer: p.into(),
                required: false,
            },
            DefaultEventId::BodyHash => EventIdSource::BodyHash,
        }
    }
}

/// `{ header: X }` or `{ json: /pointer }` under `key`, checked.
fn source(
    spec: &EventIdSpec,
    key: &str,
    example: &str,
    required: bool,
    report: &mut Report<'_>,
) -> Option<EventIdSource> {
    match spec {
        EventIdSpec {
            header: Some(h),
            json: None,
        } => {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                report.error(
                    &[key, "header"],
                    format!("`{h}` is not a valid header name"),
                );
            }
            Some(EventIdSource::Header {
                name: h.to_ascii_lowercase(),
                required,
            })
        }
        EventIdSpec {
            header: None,
            json: Some(p),
        } => {
            if !p.starts_with('/') {
                report.error(
                    &[key, "json"],
                    format!("`{p}` is not a JSON pointer: write it like {example}"),
                );
            }
            Some(EventIdSource::Json {
                pointer: p.clone(),
                required,
            })
        }
        _ => {
            report.error(
                &[key],
                format!("{key} takes exactly one of `header:` or `json:`"),
            );
            None
        }
    }
}

/// An address or CIDR; a bare address is a single-host network.
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
