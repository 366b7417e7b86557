//! `filters/NAME.yaml`: one provider's route, scheme, stages and sink.
//!
//! The file is one flat mapping; each key belongs to the component that checks it (the scheme
//! keys to `schemes::config`, `allow` to the allowlist, `rate_limit` to the rate limiter,
//! sizes and types to `limits`, ids and TTL to dedup). This file composes them, in the order
//! `check` lists problems, and keeps what is the filter's own: name, path, mode, sink, the
//! forwarded headers. A filter with any error is not built.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::dedup::config::{self as dedup, EventIdSource, EventIdSpec, TtlSpec};
use super::{allowlist, limits, rate_limit};
use crate::config::diagnostics::parse;
use crate::config::{keys, Report, Section, SizeValue};
use crate::schemes::config::{self as scheme, SchemeKeys};
use crate::schemes::{Scheme, SignatureSpec, TimestampSpec};

pub use rate_limit::RateLimit;

#[derive(Debug, Deserialize)]
pub struct FilterFile {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    pub preset: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// `store`: a url-key filter's keys are managed through the API (`/v1/filters/…/keys`).
    #[serde(default)]
    pub keys: Option<String>,
    #[serde(default)]
    pub tolerance: Option<String>,
    #[serde(default)]
    pub event_id: Option<EventIdSpec>,
    #[serde(default)]
    pub event_type: Option<EventIdSpec>,
    #[serde(default)]
    pub dedup: Option<TtlSpec>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<rate_limit::RateLimitSpec>,
    #[serde(default)]
    pub max_body: Option<SizeValue>,
    #[serde(default)]
    pub content_types: Vec<String>,
    #[serde(default)]
    pub require_fields: Vec<String>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub map: Option<std::collections::BTreeMap<String, super::map::FieldSpec>>,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// A validated filter, ready for the gateway.
pub struct Filter {
    pub name: String,
    pub route: String,
    pub preset: &'static str,
    pub url_key: bool,
    /// `keys: store`: its keys are in the store (the dispatcher loads them).
    pub stored_keys: bool,
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
    /// `schema:`, compiled.
    pub schema: Option<super::schema::Schema>,
    /// `map:`, compiled.
    pub map: Option<super::map::Map>,
    pub mode: Mode,
    pub sink: String,
    pub forward_headers: Vec<String>,
    pub body_timeout: Duration,
    pub public_url: Option<String>,
}

/// The keys of each nested block, for "did you mean".
fn nested_keys() -> Vec<(&'static str, &'static [&'static str])> {
    let mut nested = vec![("rate_limit", rate_limit::keys())];
    nested.extend(scheme::nested_keys());
    nested.extend(dedup::filter_keys());
    nested
}

/// Parses and validates one filter file. `sinks` are the names the server defines;
/// `None` when the filter is loaded alone (`sign`, `verify`): its sink is not checked.
pub fn load(path: &Path, sinks: Option<&[String]>, report: &mut Report<'_>) -> Option<Filter> {
    // Unknown keys count too: a filter with a misspelt key is not built.
    let mark = report.problems.len();
    let raw: FilterFile = parse(
        report,
        keys::<FilterFile>(),
        &nested_keys(),
        "filter reference",
    )?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut at = Section::new(report, &[]);
    check_name(&raw.name, &mut at);
    let route = route(&raw, &mut at);
    let scheme_keys = SchemeKeys {
        preset: &raw.preset,
        secrets: &raw.secrets,
        tolerance: raw.tolerance.as_deref(),
        signature: raw.signature.as_ref(),
        timestamp: raw.timestamp.as_ref(),
        public_url: raw.public_url.as_deref(),
        stored: match raw.keys.as_deref() {
            None => None,
            Some("store") => Some(raw.name.as_str()),
            Some(other) => {
                at.error(
                    &["keys"],
                    format!("keys: `{other}`: the one value is `store`"),
                );
                None
            }
        },
    };
    let chosen = scheme::choose(&scheme_keys, base_dir, !raw.allow.is_empty(), &mut at)?;
    let preset = chosen.preset;
    let event_id = dedup::event_id(raw.event_id.as_ref(), preset.event_id, &mut at);
    let event_type = dedup::event_type(raw.event_type.as_ref(), preset.event_type, &mut at);
    let dedup_ttl = dedup::ttl(raw.dedup.as_ref(), &mut at);
    let allow = allowlist::load(&raw.allow, &mut at);
    let rate_limit = raw
        .rate_limit
        .as_ref()
        .map(|r| rate_limit::load(r, &mut at));
    let max_body = limits::load_max_body(raw.max_body.as_ref(), &mut at);
    let body_timeout = limits::load_body_timeout(raw.body_timeout.as_deref(), &mut at);
    let schema = super::schema::load(raw.schema.as_deref(), base_dir, &mut at);
    let map = super::map::load(raw.map.as_ref(), &mut at);
    let sink = sink(raw.sink.as_deref(), sinks, &mut at);
    scheme::check_blocks(&scheme_keys, preset, &mut at);
    let forward_headers = forward_headers(raw.forward_headers.as_deref(), preset, &mut at);
    if at.errors_since(mark) {
        return None;
    }
    let id_header = match &event_id {
        EventIdSource::Header { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let scheme = scheme::build(&chosen, &scheme_keys, id_header, &mut at)?;
    let stored_keys = scheme_keys.stored.is_some();
    Some(Filter {
        name: raw.name,
        route,
        preset: preset.name,
        url_key: preset.name == "url-key",
        stored_keys,
        scheme: Arc::from(scheme),
        event_id,
        event_type,
        dedup_ttl,
        allow,
        rate_limit,
        max_body,
        content_types: limits::load_content_types(&raw.content_types),
        require_fields: raw.require_fields,
        schema,
        map,
        mode: raw.mode,
        sink,
        forward_headers,
        body_timeout,
        public_url: raw.public_url,
    })
}

fn check_name(name: &str, at: &mut Section<'_, '_>) {
    if !crate::config::is_name(name) {
        at.error(
            &["name"],
            "name must be letters, digits, `-` or `_` (it names routes, metrics and queues)",
        );
    }
}

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

/// The route: `path:`, or `/webhook/NAME`.
fn route(raw: &FilterFile, at: &mut Section<'_, '_>) -> String {
    let route = raw
        .path
        .clone()
        .unwrap_or_else(|| format!("/webhook/{}", raw.name));
    if !route.starts_with('/') || route.contains('?') || (route.len() > 1 && route.ends_with('/')) {
        at.error(
            &["path"],
            format!("path `{route}` must start with `/`, without a trailing `/` or query"),
        );
    } else if let Some(bad) = route.chars().find(|&c| !is_path_char(c)) {
        at.error(
            &["path"],
            format!(
                "path {route:?} has {bad:?}, which a request path cannot carry: use letters, digits and -._~!$&'()*+,;=:@/ (or %XX)"
            ),
        );
    } else if !percent_escapes_are_whole(&route) {
        at.error(
            &["path"],
            format!("path {route:?} has a `%` not followed by two hex digits"),
        );
    }
    route
}

/// The sink: `sink:`, or the server's only one.
fn sink(named: Option<&str>, sinks: Option<&[String]>, at: &mut Section<'_, '_>) -> String {
    let sink = match (named, sinks) {
        (Some(s), _) => s.to_owned(),
        (None, Some([only])) => only.clone(),
        (None, None) => String::new(),
        (None, Some(sinks)) => {
            at.error(
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
            at.error(
                &["sink"],
                format!(
                    "sink `{sink}` is not defined in the server config (defined: {})",
                    sinks.join(", ")
                ),
            );
        }
    }
    sink
}

/// The request headers copied into the envelope, lower case, each once.
fn forward_headers(
    listed: Option<&[String]>,
    preset: &crate::schemes::Preset,
    at: &mut Section<'_, '_>,
) -> Vec<String> {
    let mut headers: Vec<String> = match listed {
        Some(list) => list.iter().map(|h| h.to_ascii_lowercase()).collect(),
        None => {
            let mut list = vec!["content-type".to_string(), "user-agent".to_string()];
            list.extend(preset.forward_headers.iter().map(|h| h.to_string()));
            list
        }
    };
    // Named twice, forwarded once: sinks carry the headers as a map.
    let mut seen = std::collections::HashSet::new();
    headers.retain(|h| seen.insert(h.clone()));
    for header in &headers {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            at.error(
                &["forward_headers"],
                format!("`{header}` is not a valid header name"),
            );
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_header_named_twice_is_forwarded_once() {
        let yaml =
            "name: f\npreset: github\nsecrets: [s]\nforward_headers: [X-A, x-a, User-Agent, x-A]\n";
        let (filter, problems) =
            crate::loader::load_filter_text(std::path::Path::new("f.yaml"), yaml);
        let filter = filter.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(filter.forward_headers, ["x-a", "user-agent"]);
    }
}
