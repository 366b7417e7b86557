//! `conf/portcullis.yaml`: listeners, the admin listener, sinks, dedup and Pingora's settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use super::diagnostics::{parse, suggest, Report};
use super::filter::parse_net;
use super::{parse_duration, parse_size, SizeValue};

pub const KEYS: &[&str] = &[
    "listen",
    "admin",
    "filters",
    "trusted_proxies",
    "dedup",
    "sinks",
    "drain",
    "header_timeout",
    "pingora",
];

/// The keys of each nested block, for "did you mean" on a misspelt one (`sinks.*`: any sink).
const NESTED_KEYS: &[(&str, &[&str])] = &[
    ("listen", &["addr", "tls", "proxy_protocol"]),
    (
        "tls",
        &["cert", "key", "certificates", "min_version", "client_ca"],
    ),
    ("certificates", &["cert", "key"]),
    (
        "dedup",
        &[
            "backend",
            "max_entries",
            "url",
            "key_prefix",
            "on_error",
            "timeout",
            "journal",
        ],
    ),
    (
        "sinks.*",
        &[
            "type",
            "dir",
            "segment_size",
            "min_free",
            "retention",
            "max_size",
            "url",
            "timeout",
            "stream",
            "maxlen",
            "subject",
            "create_stream",
            "duplicate_window",
            "exchange",
            "routing_key",
            "fallback",
        ],
    ),
];

#[derive(Debug, Deserialize)]
struct ServerFile {
    #[serde(default)]
    listen: Vec<ListenSpec>,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    filters: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    dedup: Option<DedupSpec>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkSpec>,
    #[serde(default)]
    drain: Option<String>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    pingora: Option<serde_yaml::Mapping>,
}

#[derive(Debug, Deserialize)]
struct ListenSpec {
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

#[derive(Debug, Deserialize)]
struct DedupSpec {
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
}

#[derive(Debug, Deserialize)]
struct SinkSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    segment_size: Option<SizeValue>,
    #[serde(default)]
    min_free: Option<SizeValue>,
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    max_size: Option<SizeValue>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    maxlen: Option<u64>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    create_stream: Option<bool>,
    #[serde(default)]
    duplicate_window: Option<String>,
    #[serde(default)]
    exchange: Option<String>,
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default)]
    fallback: Option<String>,
}

impl SinkSpec {
    /// The optional keys that are set, by name, to check them against the sink type.
    fn present(&self) -> Vec<&'static str> {
        let keys = [
            ("dir", self.dir.is_some()),
            ("segment_size", self.segment_size.is_some()),
            ("min_free", self.min_free.is_some()),
            ("retention", self.retention.is_some()),
            ("max_size", self.max_size.is_some()),
            ("url", self.url.is_some()),
            ("timeout", self.timeout.is_some()),
            ("stream", self.stream.is_some()),
            ("maxlen", self.maxlen.is_some()),
            ("subject", self.subject.is_some()),
            ("create_stream", self.create_stream.is_some()),
            ("duplicate_window", self.duplicate_window.is_some()),
            ("exchange", self.exchange.is_some()),
            ("routing_key", self.routing_key.is_some()),
            ("fallback", self.fallback.is_some()),
        ];
        keys.iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// The keys each sink type takes besides `type`.
const SINK_KEYS: &[(&str, &[&str])] = &[
    (
        "spool",
        &["dir", "segment_size", "min_free", "retention", "max_size"],
    ),
    ("http", &["url", "timeout", "fallback"]),
    ("redis", &["url", "stream", "maxlen", "timeout", "fallback"]),
    (
        "nats",
        &[
            "url",
            "stream",
            "subject",
            "create_stream",
            "duplicate_window",
            "timeout",
        ],
    ),
    (
        "amqp",
        &["url", "exchange", "routing_key", "timeout", "fallback"],
    ),
];

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

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Spool {
        dir: PathBuf,
        segment_size: u64,
        disk: SpoolDisk,
    },
    Http {
        url: String,
        timeout: Duration,
    },
    Redis {
        url: String,
        stream: String,
        maxlen: Option<u64>,
        timeout: Duration,
    },
    Nats(NatsConfig),
    Amqp {
        url: String,
        exchange: String,
        routing_key: String,
        timeout: Duration,
    },
}

/// Disk policy of a spool (sink keys `min_free`, `retention`, `max_size`).
#[derive(Debug, Clone, Copy)]
pub struct SpoolDisk {
    /// Below this much free space on its filesystem the spool refuses writes (503) and is not
    /// ready, before the disk is full for everything else on it.
    pub min_free: u64,
    /// Sealed segments older than this are deleted (consumed or not).
    pub retention: Option<Duration>,
    /// Past this many bytes of segments, the oldest sealed ones are deleted.
    pub max_size: Option<u64>,
}

impl Default for SpoolDisk {
    fn default() -> SpoolDisk {
        SpoolDisk {
            min_free: DEFAULT_MIN_FREE,
            retention: None,
            max_size: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    /// The JetStream stream; required with `create_stream`.
    pub stream: Option<String>,
    pub subject: String,
    pub create_stream: bool,
    pub duplicate_window: Duration,
    pub timeout: Duration,
}

pub struct Server {
    pub listen: Vec<Listener>,
    pub admin: Option<String>,
    pub filters_dir: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub dedup_max_entries: u64,
    pub dedup_shared: Option<SharedDedup>,
    /// `dedup: { journal: DIR }`: where a memory-dedup node keeps the ids it accepted for
    /// non-spool sinks, so a restart, upgrade or crash remembers them (spool sinks' own
    /// segments are read back for theirs).
    pub dedup_journal: Option<PathBuf>,
    pub sinks: Vec<(String, SinkConfig)>,
    /// (sink, the spool sink it falls back to).
    pub fallbacks: Vec<(String, String)>,
    /// On SIGTERM, how long `/readyz` fails before the listeners close.
    pub drain: Duration,
    /// How long a connection has to send a complete request head, counted from accept or from
    /// its previous response (so it is also the keep-alive idle limit).
    pub header_timeout: Duration,
    pub pingora: ServerConf,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// The spool's default free-space floor.
pub const DEFAULT_MIN_FREE: u64 = 100 * 1024 * 1024;
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounded well below the dedup in-flight lifetime, so a reservation cannot expire mid-publish.
pub const MAX_SINK_TIMEOUT: Duration = Duration::from_secs(60);

/// The line where `value` (a listen address) is written for the `nth` time (from 0), or the
/// `listen:` line.
fn line_of_value(text: &str, value: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(value))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| super::diagnostics::line_of(text, &["listen"]))
}

pub fn load(path: &Path, report: &mut Report<'_>) -> Option<Server> {
    let raw: ServerFile = parse(report, KEYS, NESTED_KEYS, "server reference")?;
    let base = path.parent().unwrap_or(Path::new("."));

    if raw.listen.is_empty() {
        report.error(
            &["listen"],
            "no listeners: add listen: [{ addr: 127.0.0.1:8080 }]",
        );
    }
    let mut listen = Vec::new();
    let mut seen: Vec<std::net::SocketAddr> = Vec::new();
    for (i, l) in raw.listen.iter().enumerate() {
        let nth = raw.listen[..i].iter().filter(|o| o.addr == l.addr).count();
        let line = line_of_value(report.text, &l.addr, nth);
        match l.addr.parse::<std::net::SocketAddr>() {
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
        if l.proxy_protocol && raw.trusted_proxies.is_empty() {
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
    let mut trusted_proxies = Vec::new();
    for cidr in &raw.trusted_proxies {
        match parse_net(cidr) {
            Some(net) => trusted_proxies.push(net),
            None => report.error(
                &["trusted_proxies"],
                format!("`{cidr}` is not an IP address or CIDR"),
            ),
        }
    }

    let mut dedup_max_entries = 1_000_000;
    let mut dedup_shared = None;
    let mut dedup_journal = None;
    if let Some(d) = &raw.dedup {
        let redis_only = [
            ("url", d.url.is_some()),
            ("key_prefix", d.key_prefix.is_some()),
            ("on_error", d.on_error.is_some()),
            ("timeout", d.timeout.is_some()),
        ];
        match d.backend.as_deref() {
            None | Some("memory") => {
                for (key, _) in redis_only.iter().filter(|(_, set)| *set) {
                    report.error(
                        &["dedup", key],
                        format!("dedup `{key}` only applies to `backend: redis`"),
                    );
                }
            }
            Some("redis") => {
                dedup_shared = shared_dedup(d, report);
                if d.journal.is_some() {
                    report.error(
                        &["dedup", "journal"],
                        "dedup `journal` only applies to `backend: memory`: the fleet's ids live in Redis",
                    );
                }
            }
            Some(other) => report.error(
                &["dedup", "backend"],
                format!("dedup backend `{other}` is not one of memory, redis"),
            ),
        }
        if let Some(n) = d.max_entries {
            if n == 0 {
                report.error(
                    &["dedup", "max_entries"],
                    "dedup max_entries must be more than zero",
                );
            }
            dedup_max_entries = n;
        }
        if d.backend.as_deref() != Some("redis") {
            dedup_journal = match d.journal.as_deref() {
                None | Some("off") => None,
                Some(dir) => Some(base.join(dir)),
            };
        }
    }

    if raw.sinks.is_empty() {
        report.error(
            &["sinks"],
            "no sinks: add sinks: { spool: { type: spool, dir: spool/ } }",
        );
    }
    let mut sinks = Vec::new();
    for (name, spec) in &raw.sinks {
        let at = ["sinks", name.as_str()];
        let Some((_, allowed)) = SINK_KEYS.iter().find(|(kind, _)| *kind == spec.kind) else {
            let kinds: Vec<&str> = SINK_KEYS.iter().map(|(k, _)| *k).collect();
            let hint = format!("unknown sink type `{}`", spec.kind);
            report.error(&at, format!("{hint}: use one of {}", kinds.join(", ")));
            continue;
        };
        for key in spec.present() {
            if !allowed.contains(&key) {
                report.error(
                    &["sinks", name, key],
                    format!(
                        "sink `{name}` (type {}) has no `{key}` setting; it takes {}",
                        spec.kind,
                        allowed.join(", ")
                    ),
                );
            }
        }
        let timeout = match spec.timeout.as_deref().map(parse_duration) {
            None => DEFAULT_SINK_TIMEOUT,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_SINK_TIMEOUT => d,
            Some(Ok(_)) => {
                report.error(
                    &at,
                    "timeout must be more than zero and at most 60s (senders time out long before)",
                );
                DEFAULT_SINK_TIMEOUT
            }
            Some(Err(e)) => {
                report.error(&at, e);
                DEFAULT_SINK_TIMEOUT
            }
        };
        let url = |report: &mut Report<'_>, example: &str| match &spec.url {
            Some(url) => Some(url.clone()),
            None => {
                report.error(
                    &at,
                    format!("{} sink `{name}` needs url: {example}", spec.kind),
                );
                None
            }
        };
        match spec.kind.as_str() {
            "spool" => {
                let dir = base.join(spec.dir.as_deref().unwrap_or("spool/"));
                let segment_size = match spec.segment_size.as_ref().map(parse_size) {
                    None => DEFAULT_SEGMENT_SIZE,
                    Some(Ok(n)) if n >= 4096 => n,
                    Some(Ok(_)) => {
                        report.error(&at, "segment_size must be at least 4KiB");
                        DEFAULT_SEGMENT_SIZE
                    }
                    Some(Err(e)) => {
                        report.error(&at, e);
                        DEFAULT_SEGMENT_SIZE
                    }
                };
                let size =
                    |report: &mut Report<'_>, key: &str, value: &Option<SizeValue>| match value
                        .as_ref()
                        .map(parse_size)
                    {
                        None => None,
                        Some(Ok(n)) => Some(n),
                        Some(Err(e)) => {
                            report.error(&["sinks", name, key], e);
                            None
                        }
                    };
                let min_free = size(report, "min_free", &spec.min_free).unwrap_or(DEFAULT_MIN_FREE);
                let max_size = size(report, "max_size", &spec.max_size);
                if max_size.is_some_and(|m| m < segment_size) {
                    report.error(
                        &["sinks", name, "max_size"],
                        "max_size must be at least segment_size: every segment but the open one would go",
                    );
                }
                let retention = match spec.retention.as_deref().map(parse_duration) {
                    None => None,
                    Some(Ok(d)) if !d.is_zero() => Some(d),
                    Some(Ok(_)) => {
                        report.error(
                            &["sinks", name, "retention"],
                            "retention must be more than zero",
                        );
                        None
                    }
                    Some(Err(e)) => {
                        report.error(&["sinks", name, "retention"], e);
                        None
                    }
                };
                sinks.push((
                    name.clone(),
                    SinkConfig::Spool {
                        dir,
                        segment_size,
                        disk: SpoolDisk {
                            min_free,
                            retention,
                            max_size,
                        },
                    },
                ));
            }
            "http" => {
                let Some(url) = url(report, "http://host:port/path") else {
                    continue;
                };
                if let Err(e) = crate::sinks::http::parse_url(&url) {
                    report.error(&at, format!("http sink `{name}`: {e}"));
                }
                sinks.push((name.clone(), SinkConfig::Http { url, timeout }));
            }
            "redis" => {
                let Some(url) = url(report, "redis://127.0.0.1:6379") else {
                    continue;
                };
                if let Err(e) = redis::Client::open(url.as_str()) {
                    report.error(&at, format!("redis sink `{name}`: url `{url}`: {e}"));
                }
                let stream = spec
                    .stream
                    .clone()
                    .unwrap_or_else(|| "webhooks:{provider}".into());
                if let Err(e) = crate::sinks::check_template(&stream) {
                    report.error(&["sinks", name, "stream"], e);
                }
                if spec.maxlen == Some(0) {
                    report.error(
                        &["sinks", name, "maxlen"],
                        "maxlen 0 would trim every event away: remove it for no trimming",
                    );
                }
                sinks.push((
                    name.clone(),
                    SinkConfig::Redis {
                        url,
                        stream,
                        maxlen: spec.maxlen,
                        timeout,
                    },
                ));
            }
            "nats" => {
                let Some(url) = url(report, "nats://127.0.0.1:4222") else {
                    continue;
                };
                let subject = spec
                    .subject
                    .clone()
                    .unwrap_or_else(|| "webhooks.{provider}".into());
                if let Err(e) = crate::sinks::check_template(&subject) {
                    report.error(&["sinks", name, "subject"], e);
                }
                let create_stream = spec.create_stream.unwrap_or(false);
                if create_stream {
                    if let Err(e) = crate::sinks::nats::check_stream_subject(&subject) {
                        report.error(&["sinks", name, "subject"], e);
                    }
                }
                if create_stream && spec.stream.is_none() {
                    report.error(
                        &["sinks", name, "create_stream"],
                        "create_stream needs `stream:` (the JetStream stream name, like WEBHOOKS)",
                    );
                }
                let duplicate_window = match spec.duplicate_window.as_deref().map(parse_duration) {
                    None => Duration::from_secs(120),
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        report.error(&["sinks", name, "duplicate_window"], e);
                        Duration::from_secs(120)
                    }
                };
                sinks.push((
                    name.clone(),
                    SinkConfig::Nats(NatsConfig {
                        url,
                        stream: spec.stream.clone(),
                        subject,
                        create_stream,
                        duplicate_window,
                        timeout,
                    }),
                ));
            }
            "amqp" => {
                let Some(url) = url(report, "amqp://guest:guest@127.0.0.1:5672/%2f") else {
                    continue;
                };
                if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                    report.error(&at, format!("amqp sink `{name}`: url `{url}`: {e}"));
                }
                let exchange = spec.exchange.clone().unwrap_or_else(|| "webhooks".into());
                let routing_key = spec
                    .routing_key
                    .clone()
                    .unwrap_or_else(|| "{provider}".into());
                if let Err(e) = crate::sinks::check_template(&routing_key) {
                    report.error(&["sinks", name, "routing_key"], e);
                }
                sinks.push((
                    name.clone(),
                    SinkConfig::Amqp {
                        url,
                        exchange,
                        routing_key,
                        timeout,
                    },
                ));
            }
            _ => unreachable!("every kind in SINK_KEYS is handled"),
        }
    }

    let mut fallbacks: Vec<(String, String)> = Vec::new();
    for (name, spec) in &raw.sinks {
        let Some(target) = &spec.fallback else {
            continue;
        };
        let at = ["sinks", name.as_str(), "fallback"];
        match raw.sinks.get(target) {
            Some(t) if t.kind == "spool" && (t.retention.is_some() || t.max_size.is_some()) => {
                report.error(
                    &at,
                    format!("fallback `{target}` has retention/max_size: its segments wait for the replay, none may be deleted before"),
                )
            }
            Some(t) if t.kind == "spool" => {}
            Some(_) => report.error(
                &at,
                format!("fallback `{target}` must be a sink of type spool"),
            ),
            None => report.error(
                &at,
                format!("fallback `{target}` is not a sink defined here"),
            ),
        }
        if let Some((other, _)) = fallbacks.iter().find(|(_, t)| t == target) {
            report.error(&at, format!("spool `{target}` is already the fallback of `{other}`: give each sink its own spool"));
        }
        fallbacks.push((name.clone(), target.clone()));
    }

    let pingora = pingora_conf(raw.pingora.as_ref(), report);
    let drain = match raw.drain.as_deref().map(parse_duration) {
        None => Duration::ZERO,
        Some(Ok(d)) if d <= Duration::from_secs(300) => d,
        Some(Ok(_)) => {
            report.error(&["drain"], "drain must be at most 5m");
            Duration::ZERO
        }
        Some(Err(e)) => {
            report.error(&["drain"], e);
            Duration::ZERO
        }
    };
    let header_timeout = match raw.header_timeout.as_deref().map(parse_duration) {
        None => DEFAULT_HEADER_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(300) => d,
        Some(Ok(_)) => {
            report.error(
                &["header_timeout"],
                "header_timeout must be more than zero and at most 5m",
            );
            DEFAULT_HEADER_TIMEOUT
        }
        Some(Err(e)) => {
            report.error(&["header_timeout"], e);
            DEFAULT_HEADER_TIMEOUT
        }
    };
    let filters_dir = super::join_normalized(base, raw.filters.as_deref().unwrap_or("filters/"));
    if let Some(admin) = raw.admin.as_deref() {
        match admin.parse::<std::net::SocketAddr>() {
            Err(_) => report.error(
                &["admin"],
                format!("admin `{admin}` is not IP:PORT (like 127.0.0.1:9090)"),
            ),
            Ok(addr) if seen.contains(&addr) => report.error(
                &["admin"],
                format!(
                    "admin {addr} is also a listener: give the admin listener a port of its own"
                ),
            ),
            Ok(_) => {}
        }
    }
    if dedup_shared.is_none() && dedup_journal.is_none() {
        let unrecorded: Vec<&str> = sinks
            .iter()
            .filter(|(_, c)| !matches!(c, SinkConfig::Spool { .. } | SinkConfig::Redis { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        if !unrecorded.is_empty() {
            report.warn(
                &["dedup"],
                format!(
                    "ids accepted for sink{} {} are forgotten on a restart, so a sender's retry would be stored twice: add dedup: {{ journal: state/dedup/ }} (spool and redis sinks need none: spool segments are read back, redis publishes idempotently)",
                    if unrecorded.len() == 1 { "" } else { "s" },
                    unrecorded.join(", ")
                ),
            );
        }
    }
    Some(Server {
        listen,
        admin: raw.admin,
        filters_dir,
        trusted_proxies,
        dedup_max_entries,
        dedup_shared,
        dedup_journal,
        sinks,
        fallbacks,
        drain,
        header_timeout,
        pingora,
    })
}

fn shared_dedup(d: &DedupSpec, report: &mut Report<'_>) -> Option<SharedDedup> {
    let Some(url) = &d.url else {
        report.error(
            &["dedup", "backend"],
            "dedup backend redis needs url: redis://127.0.0.1:6379",
        );
        return None;
    };
    if let Err(e) = redis::Client::open(url.as_str()) {
        report.error(&["dedup", "url"], format!("dedup url `{url}`: {e}"));
    }
    let on_error = match d.on_error.as_deref() {
        None | Some("reject") => DedupOnError::Reject,
        Some("local") => DedupOnError::Local,
        Some(other) => {
            report.error(
                &["dedup", "on_error"],
                format!("dedup on_error `{other}` is not reject or local"),
            );
            DedupOnError::Reject
        }
    };
    let timeout = match d.timeout.as_deref().map(parse_duration) {
        None => Duration::from_secs(1),
        Some(Ok(t)) if !t.is_zero() && t <= Duration::from_secs(10) => t,
        Some(Ok(_)) => {
            report.error(
                &["dedup", "timeout"],
                "dedup timeout must be more than zero and at most 10s",
            );
            Duration::from_secs(1)
        }
        Some(Err(e)) => {
            report.error(&["dedup", "timeout"], e);
            Duration::from_secs(1)
        }
    };
    Some(SharedDedup {
        url: url.clone(),
        key_prefix: d
            .key_prefix
            .clone()
            .unwrap_or_else(|| "portcullis:dedup:".into()),
        on_error,
        timeout,
    })
}

fn tls_listener(t: &TlsSpec, base: &Path, report: &mut Report<'_>) -> TlsListener {
    let at = ["listen", "tls"];
    // `${CREDENTIALS_DIRECTORY}/cert.pem` and the like, as secrets take them.
    let mut path = |text: &str| match super::secrets::expand_vars(text) {
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
    if let Err(e) = crate::tls::validate(&tls) {
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

/// Pingora's own `ServerConf`, from the `pingora:` block, with keys checked against it.
fn pingora_conf(block: Option<&serde_yaml::Mapping>, report: &mut Report<'_>) -> ServerConf {
    let mut conf = ServerConf {
        threads: 2,
        grace_period_seconds: Some(10),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let Some(block) = block else { return conf };
    let defaults = serde_yaml::to_value(&conf).unwrap_or_default();
    let known: Vec<String> = defaults
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut merged = defaults.as_mapping().cloned().unwrap_or_default();
    for (key, value) in block {
        let name = key.as_str().unwrap_or_default();
        if !known.iter().any(|k| k == name) {
            report.error(
                &["pingora", name],
                format!(
                    "unknown Pingora setting `{name}`: {}",
                    suggest(name, &known_refs)
                ),
            );
            continue;
        }
        merged.insert(key.clone(), value.clone());
    }
    match serde_yaml::from_value::<ServerConf>(serde_yaml::Value::Mapping(merged)) {
        Ok(c) => conf = c,
        Err(e) => report.error(&["pingora"], format!("pingora settings: {e}")),
    }
    if conf.threads == 0 {
        report.error(
            &["pingora", "threads"],
            "pingora.threads must be at least 1",
        );
    }
    conf
}
