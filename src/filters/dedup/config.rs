//! Dedup's keys: the server file's `dedup:` block (memory or the fleet's Redis, the journal)
//! and a filter's `event_id`, `event_type` and `dedup` (its TTL).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{keys, Report, Section};
use crate::schemes::DefaultEventId;

/// The server file's `dedup:` block.
#[derive(Debug, Deserialize)]
pub struct DedupSpec {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    max_entries: Option<u64>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    on_error: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    journal: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls: Option<crate::sinks::config::TlsSpec>,
}

/// The keys of the server file's `dedup:` block, for "did you mean".
pub fn server_keys() -> &'static [&'static str] {
    keys::<DedupSpec>()
}

/// What a node does when the shared dedup store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupOnError {
    /// 503 `dedup_unavailable`: nothing is accepted that the fleet could not deduplicate.
    Reject,
    /// This node's own cache decides (copies on other nodes may pass too), counted in a metric.
    Local,
}

/// `dedup: { backend: redis, … }`: the fleet's shared store.
#[derive(Debug, Clone)]
pub struct SharedDedup {
    pub url: String,
    pub key_prefix: String,
    pub on_error: DedupOnError,
    pub timeout: Duration,
    /// The ACL password and TLS, as the redis sink takes them.
    pub auth: crate::sinks::redis::Auth,
}

/// The server's dedup settings.
pub struct Settings {
    pub max_entries: u64,
    pub shared: Option<SharedDedup>,
    /// `journal: DIR`: where a memory-dedup node keeps the ids it accepted for sinks that do
    /// not remember them, so a restart, upgrade or crash remembers them.
    pub journal: Option<PathBuf>,
}

pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

/// The server file's `dedup:` block, checked.
pub fn load_server(d: Option<&DedupSpec>, base: &Path, report: &mut Report<'_>) -> Settings {
    let mut settings = Settings {
        max_entries: DEFAULT_MAX_ENTRIES,
        shared: None,
        journal: None,
    };
    let Some(d) = d else { return settings };
    let mut at = Section::new(report, &["dedup"]);
    let redis_only = [
        ("url", d.url.is_some()),
        ("key_prefix", d.key_prefix.is_some()),
        ("on_error", d.on_error.is_some()),
        ("timeout", d.timeout.is_some()),
        ("password", d.password.is_some()),
        ("tls", d.tls.is_some()),
    ];
    match d.backend.as_deref() {
        None | Some("memory") => {
            for (key, _) in redis_only.iter().filter(|(_, set)| *set) {
                at.error(
                    &[key],
                    format!("dedup `{key}` only applies to `backend: redis`"),
                );
            }
        }
        Some("redis") => {
            settings.shared = shared(d, base, &mut at);
            if d.journal.is_some() {
                at.error(
                    &["journal"],
                    "dedup `journal` only applies to `backend: memory`: the fleet's ids live in Redis",
                );
            }
        }
        Some(other) => at.error(
            &["backend"],
            format!("dedup backend `{other}` is not one of memory, redis"),
        ),
    }
    if let Some(n) = d.max_entries {
        if n == 0 {
            at.error(&["max_entries"], "dedup max_entries must be more than zero");
        }
        settings.max_entries = n;
    }
    if d.backend.as_deref() != Some("redis") {
        settings.journal = match d.journal.as_deref() {
            None | Some("off") => None,
            Some(dir) => Some(base.join(dir)),
        };
    }
    settings
}

fn shared(d: &DedupSpec, base: &Path, at: &mut Section<'_, '_>) -> Option<SharedDedup> {
    let Some(url) = &d.url else {
        at.error(
            &["backend"],
            "dedup backend redis needs url: redis://127.0.0.1:6379",
        );
        return None;
    };
    if let Err(e) = redis::Client::open(url.as_str()) {
        let shown = crate::store::config::redact(url);
        at.error(&["url"], format!("dedup url `{shown}`: {e}"));
    }
    let auth =
        crate::sinks::redis::Auth::load(url, d.password.as_deref(), d.tls.as_ref(), base, at);
    let on_error = match d.on_error.as_deref() {
        None | Some("reject") => DedupOnError::Reject,
        Some("local") => DedupOnError::Local,
        Some(other) => {
            at.error(
                &["on_error"],
                format!("dedup on_error `{other}` is not reject or local"),
            );
            DedupOnError::Reject
        }
    };
    let timeout = at.duration(
        "timeout",
        d.timeout.as_deref(),
        Duration::from_secs(1),
        |t| {
            if t.is_zero() || t > Duration::from_secs(10) {
                Err("dedup timeout must be more than zero and at most 10s".into())
            } else {
                Ok(())
            }
        },
    );
    Some(SharedDedup {
        url: url.clone(),
        key_prefix: d
            .key_prefix
            .clone()
            .unwrap_or_else(|| "portcullis:dedup:".into()),
        on_error,
        timeout,
        auth,
    })
}

/// A filter's `event_id:` or `event_type:`.
#[derive(Debug, Deserialize)]
pub struct EventIdSpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub json: Option<String>,
}

/// A filter's `dedup:`: `off`, or `{ ttl: 24h }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TtlSpec {
    Switch(String),
    Ttl { ttl: String },
}

/// The keys of a filter's dedup blocks, for "did you mean".
pub fn filter_keys() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("event_id", keys::<EventIdSpec>()),
        ("event_type", keys::<EventIdSpec>()),
        ("dedup", &["ttl"]),
    ]
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

pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A filter's event id: the filter's own source is required of every request (a 400 when
/// absent); the preset's default is best effort.
pub fn event_id(
    spec: Option<&EventIdSpec>,
    default: DefaultEventId,
    at: &mut Section<'_, '_>,
) -> EventIdSource {
    match spec {
        None => Some(EventIdSource::from(default)),
        Some(spec) => source(spec, "event_id", "/data/id", true, at),
    }
    .unwrap_or(EventIdSource::BodyHash)
}

/// Where `{event_type}` comes from; `None` when neither the preset nor the filter says.
pub fn event_type(
    spec: Option<&EventIdSpec>,
    default: Option<DefaultEventId>,
    at: &mut Section<'_, '_>,
) -> Option<EventIdSource> {
    match spec {
        None => default.map(EventIdSource::from),
        Some(spec) => source(spec, "event_type", "/type", false, at),
    }
}

/// A filter's dedup TTL; `None` with `dedup: off`.
pub fn ttl(spec: Option<&TtlSpec>, at: &mut Section<'_, '_>) -> Option<Duration> {
    match spec {
        None => Some(DEFAULT_TTL),
        Some(TtlSpec::Switch(s)) if s == "off" => None,
        Some(TtlSpec::Switch(s)) => {
            at.error(
                &["dedup"],
                format!("dedup `{s}`: write `dedup: off` or `dedup: {{ ttl: 24h }}`"),
            );
            None
        }
        Some(TtlSpec::Ttl { ttl }) => {
            let d = at.duration_at(&["dedup", "ttl"], Some(ttl), Duration::ZERO, |d| {
                if d.is_zero() {
                    Err("dedup ttl must be more than zero (or write `dedup: off`)".into())
                } else {
                    Ok(())
                }
            });
            (!d.is_zero()).then_some(d)
        }
    }
}

/// `{ header: X }` or `{ json: /pointer }` under `key`, checked.
fn source(
    spec: &EventIdSpec,
    key: &str,
    example: &str,
    required: bool,
    at: &mut Section<'_, '_>,
) -> Option<EventIdSource> {
    match spec {
        EventIdSpec {
            header: Some(h),
            json: None,
        } => {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                at.error(
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
                at.error(
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
            at.error(
                &[key],
                format!("{key} takes exactly one of `header:` or `json:`"),
            );
            None
        }
    }
}
