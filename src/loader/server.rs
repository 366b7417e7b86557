//! `conf/portcullis.yaml`: listeners, the admin listener, sinks, dedup and Pingora's settings,
//! each block checked by its component (`tls::config`, `sinks::config`,
//! `filters::dedup::config`); what is left here is the server's own keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use crate::config::diagnostics::{parse_quiet, report_unknown, suggest};
use crate::config::{join_normalized, keys, parse_net, Report, Section};
use crate::event_log::{self, EventLogConfig, EventLogSpec};
use crate::filters::dedup::config::{self as dedup, DedupSpec, SharedDedup};
use crate::outbound::config::{self as outbound, Outbound, OutboundSpec};
use crate::sinks::config::{self as sinks, SinkSpec};
use crate::sinks::SinkConfig;
use crate::store::config::{self as store, StoreConfig, StoreSpec};
use crate::tls::config::{self as listeners, ListenSpec, Listener};

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
    #[serde(default)]
    store: Option<StoreSpec>,
    #[serde(default)]
    outbound: Option<OutboundSpec>,
    #[serde(default)]
    event_log: Option<EventLogSpec>,
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
    pub sinks: Vec<(String, Arc<dyn SinkConfig>)>,
    /// (sink, the spool sink it falls back to).
    pub fallbacks: Vec<(String, String)>,
    /// On SIGTERM, how long `/readyz` fails before the listeners close.
    pub drain: Duration,
    /// How long a connection has to send a complete request head, counted from accept or from
    /// its previous response (so it is also the keep-alive idle limit).
    pub header_timeout: Duration,
    pub pingora: ServerConf,
    /// The outbound ledger.
    pub store: StoreConfig,
    /// The dispatcher, when the server sends webhooks.
    pub outbound: Option<Outbound>,
    /// The inbound event log (in the store), when on.
    pub event_log: Option<EventLogConfig>,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn load(path: &Path, report: &mut Report<'_>) -> Option<Server> {
    let (raw, ignored) = parse_quiet::<ServerFile>(report, "server reference")?;
    let parsed_sinks = sinks::parse(&raw.sinks, report)?;
    let mut nested = vec![("dedup", dedup::server_keys())];
    nested.extend(listeners::nested_keys());
    nested.extend(outbound::nested_keys());
    nested.push(store::nested_keys());
    nested.push(event_log::nested_keys());
    report_unknown(
        report,
        &ignored,
        keys::<ServerFile>(),
        &nested,
        "server reference",
        sinks::unknown_key,
    );
    let base = path.parent().unwrap_or(Path::new("."));

    // A node that only dispatches needs no listener, sink or filter.
    let receives = raw.outbound.is_none() || !raw.listen.is_empty();
    let (listen, mut addrs) = listeners::load(
        &raw.listen,
        !raw.trusted_proxies.is_empty(),
        receives,
        base,
        report,
    );
    let trusted_proxies = trusted_proxies(&raw.trusted_proxies, report);
    let dedup = dedup::load_server(raw.dedup.as_ref(), base, report);
    let (sinks, fallbacks) =
        sinks::load(&raw.sinks, &parsed_sinks, &ignored, receives, base, report);
    let store = store::load(raw.store.as_ref(), base, report);
    let outbound = raw
        .outbound
        .as_ref()
        .map(|o| outbound::load(o, base, report));
    let event_log = raw.event_log.as_ref().map(|e| event_log::load(e, report));
    let pingora = pingora_conf(raw.pingora.as_ref(), report);
    let mut at = Section::new(report, &[]);
    let drain = at.duration("drain", raw.drain.as_deref(), Duration::ZERO, |d| {
        if d > Duration::from_secs(300) {
            Err("drain must be at most 5m".into())
        } else {
            Ok(())
        }
    });
    let header_timeout = at.duration(
        "header_timeout",
        raw.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
        |d| {
            if d.is_zero() || d > Duration::from_secs(300) {
                Err("header_timeout must be more than zero and at most 5m".into())
            } else {
                Ok(())
            }
        },
    );
    let filters_dir = join_normalized(base, raw.filters.as_deref().unwrap_or("filters/"));
    check_admin(raw.admin.as_deref(), &addrs, report);
    if let (Some(api), Some(admin)) = (
        outbound.as_ref().and_then(|o| o.api),
        raw.admin.as_deref().and_then(|a| a.parse().ok()),
    ) {
        addrs.push(admin);
        if addrs.contains(&api) {
            report.error(
                &["outbound", "api"],
                format!("outbound.api {api} is also a listener or the admin address: give it a port of its own"),
            );
        }
    }
    if dedup.shared.is_none() && dedup.journal.is_none() {
        warn_unrecorded(&sinks, report);
    }
    Some(Server {
        listen,
        admin: raw.admin,
        filters_dir,
        trusted_proxies,
        dedup_max_entries: dedup.max_entries,
        dedup_shared: dedup.shared,
        dedup_journal: dedup.journal,
        sinks,
        fallbacks,
        drain,
        header_timeout,
        pingora,
        store,
        outbound,
        event_log,
    })
}

fn trusted_proxies(cidrs: &[String], report: &mut Report<'_>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for cidr in cidrs {
        match parse_net(cidr) {
            Some(net) => nets.push(net),
            None => report.error(
                &["trusted_proxies"],
                format!("`{cidr}` is not an IP address or CIDR"),
            ),
        }
    }
    nets
}

fn check_admin(admin: Option<&str>, listeners: &[SocketAddr], report: &mut Report<'_>) {
    let Some(admin) = admin else { return };
    match admin.parse::<SocketAddr>() {
        Err(_) => report.error(
            &["admin"],
            format!("admin `{admin}` is not IP:PORT (like 127.0.0.1:9090)"),
        ),
        Ok(addr) if listeners.contains(&addr) => report.error(
            &["admin"],
            format!("admin {addr} is also a listener: give the admin listener a port of its own"),
        ),
        Ok(_) => {}
    }
}

/// Without a journal, ids accepted for sinks that do not remember them are lost on a restart.
fn warn_unrecorded(sinks: &[(String, Arc<dyn SinkConfig>)], report: &mut Report<'_>) {
    let unrecorded: Vec<&str> = sinks
        .iter()
        .filter(|(_, c)| !c.remembers_ids())
        .map(|(n, _)| n.as_str())
        .collect();
    if unrecorded.is_empty() {
        return;
    }
    report.warn(
        &["dedup"],
        format!(
            "ids accepted for sink{} {} are forgotten on a restart, so a sender's retry would be stored twice: add dedup: {{ journal: state/dedup/ }} (spool and redis sinks need none: spool segments are read back, redis publishes idempotently)",
            if unrecorded.len() == 1 { "" } else { "s" },
            unrecorded.join(", ")
        ),
    );
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
