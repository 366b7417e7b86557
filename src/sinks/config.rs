//! The `sinks:` section of the server file. Each sink kind owns its keys (a `Spec` in its own
//! file, with defaults and checks) and registers itself in [`super::KINDS`] by its `type`
//! name; this file only reads the section through that registry and checks what spans
//! sinks (fallbacks).
//!
//! The section is read in two steps: with the rest of the file, each entry's `type`
//! (`SinkSpec`); then, once per kind in use, that kind's entries as its own `Spec`, from the
//! same text with the file's own deserializer, so a bad value keeps its line and key path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::Lazy;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{Sink, KINDS};
use crate::config::diagnostics::{parse_entries, Unknown};
use crate::config::{keys, Report, Section};

/// The first step: each entry's kind; its other keys are read by the kind.
#[derive(Debug, Deserialize)]
pub struct SinkSpec {
    #[serde(rename = "type")]
    kind: String,
}

/// One kind's keys, as parsed (what a `Spec` implements).
pub trait Spec: Send {
    /// Checks the keys and makes the config; `None` when the sink cannot be made at all (no url).
    fn load(
        &self,
        name: &str,
        base: &Path,
        at: &mut Section<'_, '_>,
    ) -> Option<Arc<dyn SinkConfig>>;
    /// The spool this sink falls back to (`fallback:`), for the kinds that take one.
    fn fallback(&self) -> Option<&str> {
        None
    }
    /// Why this sink cannot be another's fallback; `None` when it can.
    fn refuses_to_be_fallback(&self) -> Option<String> {
        Some("must be a sink of type spool".into())
    }
}

/// A sink's checked config: what the gateway builds it from.
pub trait SinkConfig: Send + Sync + Debug {
    fn build(&self, name: &str, built: &super::Built) -> Result<Arc<dyn Sink>, String>;
    /// The outbound tenant this sink hands events to (`type: outbound`), for the loader's
    /// cross-check against the endpoints.
    fn bridges_to(&self) -> Option<&str> {
        None
    }
    /// The spool's own config, for a sink that is a spool (fallbacks, `portcullis spool`).
    fn as_spool(&self) -> Option<&super::spool::Config> {
        None
    }
    /// Whether accepted ids outlive a restart without a dedup journal (the spool's segments
    /// are read back; redis publishes idempotently).
    fn remembers_ids(&self) -> bool {
        false
    }
}

/// The entries of one kind, by sink name.
type Entries = Vec<(String, Box<dyn Spec>)>;
type Parse = fn(&str, &BTreeSet<&str>) -> Result<Entries, (usize, String)>;
/// Each sink's config, by name.
pub type Configs = Vec<(String, Arc<dyn SinkConfig>)>;

/// A sink kind as the server file names it (`type: redis`).
pub struct Kind {
    pub name: &'static str,
    /// Its keys besides `type`, from its `Spec`.
    pub keys: fn() -> &'static [&'static str],
    parse: Parse,
}

impl Kind {
    pub const fn of<S: Spec + DeserializeOwned + 'static>(name: &'static str) -> Kind {
        Kind {
            name,
            keys: keys::<S>,
            parse: parse_kind::<S>,
        }
    }
}

fn parse_kind<S: Spec + DeserializeOwned + 'static>(
    text: &str,
    names: &BTreeSet<&str>,
) -> Result<Entries, (usize, String)> {
    let entries = parse_entries::<S>(text, "sinks", names, "server reference")?;
    Ok(entries
        .into_iter()
        .map(|(name, spec)| (name, Box::new(spec) as Box<dyn Spec>))
        .collect())
}

/// Every key some kind takes: `type`, each kind's in registry order, `fallback` last.
static ANY_KIND_KEYS: Lazy<Vec<&'static str>> = Lazy::new(|| {
    let mut all = vec!["type"];
    for kind in KINDS {
        for key in (kind.keys)() {
            if *key != "fallback" && !all.contains(key) {
                all.push(key);
            }
        }
    }
    all.push("fallback");
    all
});

/// How an unknown key under `sinks.<name>` is worded: a key of another kind waits for
/// [`load`] ("sink … has no `url` setting"), any other gets "did you mean" from every kind's.
pub fn unknown_key(path: &[&str]) -> Unknown {
    match path {
        ["sinks", _, key] if ANY_KIND_KEYS.contains(key) => Unknown::Skip,
        ["sinks", _, _, ..] => Unknown::Among(&ANY_KIND_KEYS),
        _ => Unknown::Plain,
    }
}

/// Each sink's keys read by its kind (the second step), or `None` after a value did not parse.
pub fn parse(heads: &BTreeMap<String, SinkSpec>, report: &mut Report<'_>) -> Option<Parsed> {
    let mut specs = BTreeMap::new();
    for kind in KINDS {
        let names: BTreeSet<&str> = heads
            .iter()
            .filter(|(_, h)| h.kind == kind.name)
            .map(|(n, _)| n.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        match (kind.parse)(report.text, &names) {
            Ok(entries) => specs.extend(entries),
            Err((line, message)) => {
                report.error_at(line, message);
                return None;
            }
        }
    }
    Some(Parsed { specs })
}

pub struct Parsed {
    specs: BTreeMap<String, Box<dyn Spec>>,
}

/// The sinks' configs and (sink, the spool it falls back to). `ignored` are the key paths
/// the first step left (those of other kinds are reported here); `required`: whether the
/// server receives webhooks (a dispatcher-only node needs no sink).
pub fn load(
    heads: &BTreeMap<String, SinkSpec>,
    parsed: &Parsed,
    ignored: &[String],
    required: bool,
    base: &Path,
    report: &mut Report<'_>,
) -> (Configs, Vec<(String, String)>) {
    if heads.is_empty() && required {
        report.error(
            &["sinks"],
            "no sinks: add sinks: { spool: { type: spool, dir: spool/ } }",
        );
    }
    let mut sinks = Vec::new();
    for (name, head) in heads {
        let mut at = Section::new(report, &["sinks", name]);
        let Some(kind) = KINDS.iter().find(|k| k.name == head.kind) else {
            let kinds: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
            let hint = format!("unknown sink type `{}`", head.kind);
            at.error(&[], format!("{hint}: use one of {}", kinds.join(", ")));
            continue;
        };
        let allowed = (kind.keys)();
        for key in other_kinds_keys(name, allowed, ignored) {
            at.error(
                &[key],
                format!(
                    "sink `{name}` (type {}) has no `{key}` setting; it takes {}",
                    kind.name,
                    allowed.join(", ")
                ),
            );
        }
        let Some(spec) = parsed.specs.get(name) else {
            continue;
        };
        if let Some(config) = spec.load(name, base, &mut at) {
            sinks.push((name.clone(), config));
        }
    }
    let fallbacks = fallbacks(heads, parsed, report);
    (sinks, fallbacks)
}

/// Keys of sink `name` that another kind takes but its own does not, in registry order.
fn other_kinds_keys(name: &str, allowed: &[&str], ignored: &[String]) -> Vec<&'static str> {
    let prefix = format!("sinks.{name}.");
    let set: BTreeSet<&str> = ignored
        .iter()
        .filter_map(|p| p.strip_prefix(&prefix))
        .collect();
    ANY_KIND_KEYS
        .iter()
        .copied()
        .filter(|k| set.contains(k) && !allowed.contains(k))
        .collect()
}

fn fallbacks(
    heads: &BTreeMap<String, SinkSpec>,
    parsed: &Parsed,
    report: &mut Report<'_>,
) -> Vec<(String, String)> {
    let mut fallbacks: Vec<(String, String)> = Vec::new();
    for (name, spec) in &parsed.specs {
        let Some(target) = spec.fallback() else {
            continue;
        };
        let at = ["sinks", name.as_str(), "fallback"];
        let refused = match parsed.specs.get(target) {
            Some(t) => t.refuses_to_be_fallback(),
            None if heads.contains_key(target) => Some("must be a sink of type spool".into()),
            None => None,
        };
        match refused {
            _ if !heads.contains_key(target) => report.error(
                &at,
                format!("fallback `{target}` is not a sink defined here"),
            ),
            Some(why) => report.error(&at, format!("fallback `{target}` {why}")),
            None => {}
        }
        if let Some((other, _)) = fallbacks.iter().find(|(_, t)| t == target) {
            report.error(&at, format!("spool `{target}` is already the fallback of `{other}`: give each sink its own spool"));
        }
        fallbacks.push((name.clone(), target.to_owned()));
    }
    fallbacks
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounded well below the dedup in-flight lifetime, so a reservation cannot expire mid-publish.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A sink's `timeout:` (how long a publish may take before the sender gets a 503).
pub fn timeout(value: Option<&str>, at: &mut Section<'_, '_>) -> Duration {
    at.duration_at(&[], value, DEFAULT_TIMEOUT, |d| {
        if d.is_zero() || d > MAX_TIMEOUT {
            Err(
                "timeout must be more than zero and at most 60s (senders time out long before)"
                    .into(),
            )
        } else {
            Ok(())
        }
    })
}

/// A sink's required `url:`, or an error with an example.
pub fn url(
    value: Option<&String>,
    kind: &str,
    name: &str,
    example: &str,
    at: &mut Section<'_, '_>,
) -> Option<String> {
    if value.is_none() {
        at.error(&[], format!("{kind} sink `{name}` needs url: {example}"));
    }
    value.cloned()
}

/// `tls:` of a sink's connection to its broker: the CA that signs the broker's certificate
/// (default: the system's roots) and a client certificate, when the broker asks for one.
/// With `tls:` a sink speaks only TLS: a broker that does not is refused, never used in the
/// clear.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// A checked `tls:`: PEM files that exist, relative paths made absolute.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// `tls:` checked at the key: each file readable PEM, `cert` and `key` together.
pub fn client_tls(
    spec: Option<&TlsSpec>,
    base: &Path,
    at: &mut Section<'_, '_>,
) -> Option<ClientTls> {
    let spec = spec?;
    // `marker`: what a PEM file of that kind holds (keys: PKCS#8, RSA or EC).
    let mut file = |key: &str, value: &Option<String>, marker: &str, what: &str| {
        let value = value.as_ref()?;
        let path = base.join(value);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.contains(marker) => Some(path),
            Ok(_) => {
                at.error(
                    &["tls", key],
                    format!("tls.{key} `{value}` holds no PEM {what}"),
                );
                None
            }
            Err(e) => {
                at.error(&["tls", key], format!("tls.{key} `{value}`: {e}"));
                None
            }
        }
    };
    let tls = ClientTls {
        ca: file("ca", &spec.ca, "-----BEGIN CERTIFICATE", "certificate"),
        cert: file("cert", &spec.cert, "-----BEGIN CERTIFICATE", "certificate"),
        key: file("key", &spec.key, " PRIVATE KEY-----", "private key"),
    };
    if spec.cert.is_some() != spec.key.is_some() {
        at.error(
            &["tls"],
            "tls: a client certificate needs both `cert` and `key`",
        );
    }
    Some(tls)
}

/// A broker password from `env:NAME`, `file:PATH` or (with a warning) a literal.
pub fn password(
    value: &str,
    base: &Path,
    key: &[&str],
    at: &mut Section<'_, '_>,
) -> Option<crate::config::secrets::Secret> {
    match crate::config::secrets::resolve(value, base) {
        Ok((secret, crate::config::secrets::Source::Literal)) => {
            at.warn(key, "the password is written literally in the file: use env:NAME or file:PATH in production");
            Some(secret)
        }
        Ok((secret, _)) => Some(secret),
        Err(e) => {
            at.error(key, e);
            None
        }
    }
}
