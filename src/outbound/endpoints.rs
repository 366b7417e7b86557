//! `endpoints/TENANT.yaml`: a tenant's outbound endpoints, each with its URL, secrets and
//! signing scheme (Standard Webhooks by default; any preset that signs, or `hmac` with its
//! `signature:`/`timestamp:` blocks, the X-WSS style among them), the event types it takes
//! and the headers it adds; optionally a JSON Schema its payloads must satisfy (checked when
//! a message is enqueued, so a bad one is refused before anything is stored) and a
//! `transform: { map }` that shapes the delivered body (applied at each attempt, to the
//! stored payload, so every attempt sends and signs the same bytes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::ssrf::{self, Target};
use crate::config::diagnostics::{self, parse, Report};
use crate::config::secrets::{self, Secret, Source};
use crate::config::{keys, Problem, Section};
use crate::schemes::{self, Scheme, SchemeConfig, SignatureSpec, TimestampSpec};
use crate::store::{Limits, Rate};

#[derive(Debug, Deserialize)]
struct TenantFile {
    tenant: String,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
}

/// An endpoint's keys, as an endpoints file's entry or a management API body holds them.
#[derive(Debug, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    url: String,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    signature: Option<SignatureSpec>,
    #[serde(default)]
    timestamp: Option<TimestampSpec>,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateSpec>,
    #[serde(default)]
    max_in_flight: Option<u32>,
    #[serde(default)]
    ordered: bool,
    #[serde(default)]
    schema: Option<SchemaSpec>,
    #[serde(default)]
    transform: Option<TransformSpec>,
}

/// `schema:` a file (relative to the endpoints file; not through the API) or the schema itself.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SchemaSpec {
    File(String),
    Inline(serde_json::Map<String, serde_json::Value>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformSpec {
    map: BTreeMap<String, crate::filters::map::FieldSpec>,
}

#[derive(Debug, Deserialize)]
struct RateSpec {
    per_second: f64,
    #[serde(default)]
    burst: Option<u32>,
}

/// A checked endpoint.
pub struct Endpoint {
    pub tenant: String,
    pub name: String,
    pub url: String,
    pub target: Target,
    pub scheme: Arc<dyn Scheme>,
    /// Patterns (`order.*`, `*`); empty takes every type.
    pub event_types: Vec<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Option<Duration>,
    /// Fleet-wide limits the claim respects.
    pub limits: Limits,
    /// FIFO per endpoint (per `ordering_key` when a message has one).
    pub ordered: bool,
    /// What a message's payload must satisfy to be enqueued for this endpoint.
    pub schema: Option<crate::filters::schema::Schema>,
    /// The delivered body: these fields of the payload instead of the payload.
    pub transform: Option<crate::filters::map::Map>,
    pub origin: Origin,
}

/// Where an endpoint is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `endpoints/TENANT.yaml` (read-only through the API).
    File,
    /// The management API, under this id.
    Api(String),
}

impl Endpoint {
    pub fn takes(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|p| matches(p, event_type))
    }

    /// Whether the payload must be parsed at enqueue (a schema or a transform to check).
    pub fn inspects_payload(&self) -> bool {
        self.schema.is_some() || self.transform.is_some()
    }

    /// The body an attempt sends: the payload, or its transform.
    pub fn body<'a>(&self, payload: &'a str) -> Result<std::borrow::Cow<'a, str>, String> {
        let Some(map) = &self.transform else {
            return Ok(std::borrow::Cow::Borrowed(payload));
        };
        let json: serde_json::Value =
            serde_json::from_str(payload).map_err(|_| "the payload is not JSON".to_owned())?;
        map.apply_to(&json)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| match e {
                crate::filters::map::Unmapped::NotJson => "the payload is not JSON".to_owned(),
                crate::filters::map::Unmapped::Missing(f) => {
                    format!("transform field `{f}` matches nothing in the payload")
                }
            })
    }
}

/// `*` matches any run of characters (dots included); everything else literally.
fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Every tenant's endpoints, by tenant.
#[derive(Default, Clone)]
pub struct Endpoints {
    by_tenant: BTreeMap<String, Vec<Arc<Endpoint>>>,
}

impl Endpoints {
    pub fn tenant(&self, tenant: &str) -> Option<&[Arc<Endpoint>]> {
        self.by_tenant.get(tenant).map(Vec::as_slice)
    }

    pub fn get(&self, tenant: &str, name: &str) -> Option<&Arc<Endpoint>> {
        self.tenant(tenant)?.iter().find(|e| e.name == name)
    }

    /// The longest `timeout` any endpoint sets (zero when none does).
    pub fn max_timeout(&self) -> Duration {
        self.by_tenant
            .values()
            .flatten()
            .filter_map(|e| e.timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Every endpoint, by tenant then file order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_tenant.values().flatten()
    }

    pub fn count(&self) -> usize {
        self.by_tenant.values().map(Vec::len).sum()
    }

    /// These endpoints and `more` (each after its tenant's own).
    pub fn with(&self, more: Vec<Arc<Endpoint>>) -> Endpoints {
        let mut all = self.clone();
        for e in more {
            all.by_tenant.entry(e.tenant.clone()).or_default().push(e);
        }
        all
    }
}

/// What an endpoint's URL must pass at load (the same guard as at delivery, minus DNS).
pub struct Rules<'a> {
    pub allow_http: bool,
    pub allow_internal: &'a [IpNet],
}

/// Loads every `*.yaml` of `dir`.
pub fn load_dir(dir: &Path, rules: &Rules<'_>, problems: &mut Vec<Problem>) -> Endpoints {
    let mut endpoints = Endpoints::default();
    let files = match crate::config::yaml_files(dir) {
        Ok(files) => files,
        Err(e) => {
            problems.push(Problem {
                file: dir.to_path_buf(),
                line: 1,
                severity: crate::config::Severity::Error,
                message: format!("endpoints directory cannot be read: {e}"),
            });
            return endpoints;
        }
    };
    for file in files {
        let Some(text) = diagnostics::read(&file, problems) else {
            continue;
        };
        let mut report = Report::new(&file, &text, problems);
        let Some((tenant, list)) = load_file(&file, rules, &mut report) else {
            continue;
        };
        if endpoints.by_tenant.contains_key(&tenant) {
            report.error(
                &["tenant"],
                format!("tenant `{tenant}` is defined by another file too"),
            );
            continue;
        }
        endpoints.by_tenant.insert(tenant, list);
    }
    endpoints
}

fn nested_keys() -> Vec<(&'static str, &'static [&'static str])> {
    let mut nested = vec![
        ("endpoints", keys::<EndpointSpec>()),
        ("rate_limit", keys::<RateSpec>()),
        ("transform", keys::<TransformSpec>()),
    ];
    nested.extend(schemes::config::nested_keys());
    nested
}

fn load_file(
    file: &Path,
    rules: &Rules<'_>,
    report: &mut Report<'_>,
) -> Option<(String, Vec<Arc<Endpoint>>)> {
    let mark = report.problems.len();
    let raw: TenantFile = parse(
        report,
        keys::<TenantFile>(),
        &nested_keys(),
        "endpoints reference",
    )?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut at = Section::new(report, &[]);
    if !crate::config::is_name(&raw.tenant) {
        at.error(&["tenant"], "tenant must be letters, digits, `-` or `_`");
    }
    let mut list: Vec<Arc<Endpoint>> = Vec::new();
    for (i, spec) in raw.endpoints.iter().enumerate() {
        let line = nth_line(at.text(), "name:", i);
        if list.iter().any(|e| e.name == spec.name) {
            at.error_at(line, format!("endpoint name `{}` is used twice", spec.name));
            continue;
        }
        if let Some(e) = endpoint(&raw.tenant, spec, base, rules, line, &mut at) {
            list.push(Arc::new(e));
        }
    }
    if at.errors_since(mark) {
        return None;
    }
    Some((raw.tenant, list))
}

/// The line of the `nth` (from 0) occurrence of `key` in the file.
fn nth_line(text: &str, key: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(key))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}

fn endpoint(
    tenant: &str,
    spec: &EndpointSpec,
    base: &Path,
    rules: &Rules<'_>,
    line: usize,
    at: &mut Section<'_, '_>,
) -> Option<Endpoint> {
    let name = &spec.name;
    let mut secrets = Vec::new();
    for reference in &spec.secrets {
        match secrets::resolve(reference, base) {
            Ok((secret, Source::Literal)) => {
                at.warn(&["endpoints", "secrets"], format!("endpoint `{name}`: a secret is written literally in the file: use env:NAME or file:PATH in production"));
                secrets.push(secret);
            }
            Ok((secret, _)) => secrets.push(secret),
            Err(e) => at.error_at(line, format!("endpoint `{name}`: {e}")),
        }
    }
    if spec.secrets.is_empty() {
        at.error_at(
            line,
            format!("endpoint `{name}`: needs at least one secret (secrets: [env:NAME])"),
        );
        return None;
    }
    build(
        tenant,
        spec,
        &secrets,
        rules,
        Some(base),
        line,
        at,
        Origin::File,
    )
}

/// An endpoint of the management API from its JSON keys (those of a file's entry, less
/// `secrets`) and its opened secrets; or every problem, as messages for the caller.
pub fn from_api(
    tenant: &str,
    id: &str,
    spec: &serde_json::Value,
    secrets: &[Secret],
    rules: &Rules<'_>,
) -> Result<Endpoint, Vec<String>> {
    let mut unknown = Vec::new();
    let parsed: Result<EndpointSpec, _> =
        serde_ignored::deserialize(spec, |path| unknown.push(path.to_string()));
    let parsed = parsed.map_err(|e| vec![e.to_string()])?;
    let known = keys::<EndpointSpec>();
    let mut problems: Vec<String> = unknown
        .iter()
        .map(|k| {
            format!(
                "unknown key `{k}`: {}",
                diagnostics::suggest(k.rsplit('.').next().unwrap_or(k), known)
            )
        })
        .collect();
    if !parsed.secrets.is_empty() {
        problems.push("`secrets` is not set through the API: a secret is generated (or given as `secret`) at creation and replaced with POST /v1/endpoints/{id}/rotate".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut found = Vec::new();
    let built = {
        let file = Path::new("endpoint");
        let mut report = Report::new(file, "", &mut found);
        let mut at = Section::new(&mut report, &[]);
        build(
            tenant,
            &parsed,
            secrets,
            rules,
            None,
            1,
            &mut at,
            Origin::Api(id.to_owned()),
        )
    };
    let errors: Vec<String> = found
        .into_iter()
        .filter(|p| p.severity == crate::config::Severity::Error)
        .map(|p| p.message)
        .collect();
    match built {
        Some(e) if errors.is_empty() => Ok(e),
        _ => Err(errors),
    }
}

/// An endpoint from its keys and resolved secrets, checked. `base`: the endpoints file's
/// directory (`None` through the API, which takes no schema file).
#[allow(clippy::too_many_arguments)]
fn build(
    tenant: &str,
    spec: &EndpointSpec,
    secrets: &[Secret],
    rules: &Rules<'_>,
    base: Option<&Path>,
    line: usize,
    at: &mut Section<'_, '_>,
    origin: Origin,
) -> Option<Endpoint> {
    let name = &spec.name;
    let mut fail = |message: String| at.error_at(line, format!("endpoint `{name}`: {message}"));
    if !crate::config::is_name(name) {
        fail("name must be letters, digits, `-` or `_`".into());
    }
    let target = match ssrf::parse(&spec.url, rules.allow_http) {
        Ok(t) => t,
        Err(e) => {
            fail(e);
            return None;
        }
    };
    let literal = match &target.host {
        url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(*ip)),
        url::Host::Domain(_) => None,
    };
    if let Some(ip) = literal.filter(|ip| ssrf::forbidden(*ip)) {
        if !rules.allow_internal.iter().any(|n| n.contains(&ip)) {
            fail(format!("url `{}` is an internal address ({ip}): deliveries would be refused; list it in outbound.delivery.allow_internal if it is meant", spec.url));
        }
    }
    let scheme_name = spec.scheme.as_deref().unwrap_or("standard-webhooks");
    let Some(preset) =
        schemes::preset(scheme_name).filter(|p| p.needs_secret && p.name != "url-key")
    else {
        fail(format!("scheme `{scheme_name}` does not sign: use standard-webhooks, hmac or a provider preset"));
        return None;
    };
    if secrets.is_empty() {
        at.error_at(
            line,
            format!("endpoint `{name}`: has no secret to sign with"),
        );
        return None;
    }
    let timeout = spec
        .timeout
        .as_deref()
        .and_then(|t| match crate::config::parse_duration(t) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(60) => Some(d),
            _ => {
                at.error_at(
                    line,
                    format!("endpoint `{name}`: timeout `{t}` must be a duration from 1ms to 60s"),
                );
                None
            }
        });
    let rate = spec.rate_limit.as_ref().and_then(|r| {
        let burst = r.burst.unwrap_or(1);
        if !(r.per_second > 0.0 && r.per_second <= 100_000.0) || burst == 0 || burst > 100_000 {
            at.error_at(line, format!("endpoint `{name}`: rate_limit needs per_second from 0.001 to 100000 and burst from 1 to 100000"));
            return None;
        }
        Some(Rate {
            per_second: r.per_second,
            burst,
        })
    });
    if spec.max_in_flight == Some(0) {
        at.error_at(
            line,
            format!("endpoint `{name}`: max_in_flight must be at least 1"),
        );
    }
    let mut headers = Vec::new();
    for (k, v) in &spec.headers {
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => headers.push((k, v)),
            _ => at.error_at(
                line,
                format!("endpoint `{name}`: header `{k}` is not a valid header"),
            ),
        }
    }
    let scheme = schemes::build(&SchemeConfig {
        preset,
        secrets,
        tolerance: None,
        signature: spec.signature.as_ref(),
        timestamp: spec.timestamp.as_ref(),
        public_url: Some(&spec.url),
        id_header: None,
    });
    let scheme = match scheme {
        Ok(s) => s,
        Err(e) => {
            at.error_at(line, format!("endpoint `{name}`: {e}"));
            return None;
        }
    };
    let schema = spec.schema.as_ref().and_then(|s| {
        let compiled = match (s, base) {
            (SchemaSpec::File(file), Some(base)) => crate::filters::schema::read(file, base)
                .and_then(|(json, text)| crate::filters::schema::compile(&json, file, Some(&text))),
            (SchemaSpec::File(_), None) => Err("schema: through the API the schema is given itself (a JSON object), not a file name".into()),
            (SchemaSpec::Inline(json), _) => crate::filters::schema::compile(
                &serde_json::Value::Object(json.clone()),
                "(inline)",
                None,
            ),
        };
        compiled
            .map_err(|e| at.error_at(line, format!("endpoint `{name}`: {e}")))
            .ok()
    });
    let transform = spec.transform.as_ref().and_then(|t| {
        crate::filters::map::compile(&t.map, |_, e| {
            at.error_at(line, format!("endpoint `{name}`: transform: {e}"))
        })
    });
    Some(Endpoint {
        tenant: tenant.to_owned(),
        name: name.clone(),
        url: spec.url.clone(),
        target,
        scheme: Arc::from(scheme),
        event_types: spec.event_types.clone(),
        headers,
        timeout,
        limits: Limits {
            max_in_flight: spec.max_in_flight.filter(|n| *n > 0),
            rate,
            node_room: None,
            node_busy: 0,
        },
        ordered: spec.ordered,
        schema,
        transform,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn event_type_patterns() {
        assert!(matches("order.*", "order.updated"));
        assert!(matches("order.*", "order.a.b"));
        assert!(!matches("order.*", "orders.updated"));
        assert!(matches("*", "anything"));
        assert!(matches("*.created", "user.created"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXcYb"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
