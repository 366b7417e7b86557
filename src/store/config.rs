//! The server file's `store:` block: where the outbound ledger lives.

use std::path::Path;

use serde::Deserialize;

use super::sealed::{Key, Keyring};
use crate::config::secrets::{self, Source};
use crate::config::{keys, Report};

#[derive(Debug, Deserialize)]
pub struct StoreSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    master_key: Option<String>,
    #[serde(default)]
    previous_master_key: Option<String>,
}

pub fn nested_keys() -> (&'static str, &'static [&'static str]) {
    ("store", keys::<StoreSpec>())
}

/// Where the ledger is: a SQLite file (made absolute against the config's directory) or a
/// PostgreSQL URL.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    /// The master keys that wrap the tenants' data keys (`None`: no endpoint secret can be
    /// stored, so the management API cannot create endpoints).
    pub keys: Option<Keyring>,
}

pub const DEFAULT_URL: &str = "sqlite://state/portcullis.db";

pub fn load(spec: Option<&StoreSpec>, base: &Path, report: &mut Report<'_>) -> StoreConfig {
    let keys = keyring(spec, base, report);
    let mut config = locate(spec, base, report);
    config.keys = keys;
    config
}

/// `master_key:` and `previous_master_key:`, resolved and parsed.
fn keyring(spec: Option<&StoreSpec>, base: &Path, report: &mut Report<'_>) -> Option<Keyring> {
    let mut key = |field: &str, reference: Option<&String>| -> Option<Key> {
        let reference = reference?;
        let parsed = secrets::resolve(reference, base).and_then(|(secret, source)| {
            if matches!(source, Source::Literal) {
                return Err("is written literally in the file: use file:PATH (or env:NAME) so it stays out of the config".into());
            }
            Key::parse(&secret.0)
        });
        match parsed {
            Ok(k) => Some(k),
            Err(e) => {
                report.error(&["store", field], format!("store.{field}: {e}"));
                None
            }
        }
    };
    let current = key("master_key", spec.and_then(|s| s.master_key.as_ref()));
    let previous = key(
        "previous_master_key",
        spec.and_then(|s| s.previous_master_key.as_ref()),
    );
    match (current, previous) {
        (Some(current), previous) => Some(Keyring { current, previous }),
        (None, Some(_)) => {
            report.error(
                &["store", "previous_master_key"],
                "store.previous_master_key is only read beside a master_key (the key data keys are re-wrapped to)",
            );
            None
        }
        (None, None) => None,
    }
}

fn locate(spec: Option<&StoreSpec>, base: &Path, report: &mut Report<'_>) -> StoreConfig {
    let url = spec
        .and_then(|s| s.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.into());
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            report.error(
                &["store", "url"],
                "store url: a sqlite store is a file (like sqlite://state/portcullis.db): the ledger must survive a restart",
            );
        }
        let full = base.join(path);
        return StoreConfig {
            url: format!("sqlite://{}", full.display()),
            keys: None,
        };
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        report.error(
            &["store", "url"],
            format!(
                "store url `{}` is not sqlite://FILE or postgres://…",
                redact(&url)
            ),
        );
    }
    let url = postgres_tls(&url, base, report);
    StoreConfig { url, keys: None }
}

/// A postgres url with its `sslrootcert`, `sslcert` and `sslkey` relative to the config file
/// (libpq's and sqlx's are relative to the working directory, `/` under systemd), and a
/// warning when a store across the network does not verify its server.
fn postgres_tls(url: &str, base: &Path, report: &mut Report<'_>) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = match k.as_ref() {
                "sslrootcert" | "sslcert" | "sslkey" if Path::new(v.as_ref()).is_relative() => {
                    base.join(v.as_ref()).to_string_lossy().into_owned()
                }
                _ => v.into_owned(),
            };
            (k.into_owned(), v)
        })
        .collect();
    let mode = pairs
        .iter()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.as_str());
    let local = match parsed.host() {
        // A postgres:// url's host is opaque to the url crate: an address stays text.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => true,
    };
    if !local && !matches!(mode, Some("verify-full" | "verify-ca")) {
        report.warn(
            &["store", "url"],
            "the store is across the network and its certificate is not verified: add sslmode=verify-full&sslrootcert=CA.pem (payloads and sealed secrets cross it)",
        );
    }
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(&pairs);
    }
    parsed.to_string()
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(url: &str) -> (String, Vec<String>) {
        let mut problems = Vec::new();
        let text = format!("store: {{ url: \"{url}\" }}\n");
        let out = {
            let mut report = Report::new(Path::new("p.yaml"), &text, &mut problems);
            postgres_tls(url, Path::new("/etc/portcullis"), &mut report)
        };
        (out, problems.into_iter().map(|p| p.message).collect())
    }

    #[test]
    fn certificate_paths_are_relative_to_the_config_and_an_unverified_remote_store_is_warned_about()
    {
        let (url, warnings) =
            checked("postgres://db.internal/p?sslmode=verify-full&sslrootcert=tls/ca.pem");
        assert_eq!(
            url,
            "postgres://db.internal/p?sslmode=verify-full&sslrootcert=%2Fetc%2Fportcullis%2Ftls%2Fca.pem"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let (_, warnings) = checked("postgres://db.internal/p?sslmode=require");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("sslmode=verify-full"));
        let (url, warnings) = checked("postgres://postgres@127.0.0.1:5432/p");
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/p");
        assert!(warnings.is_empty(), "loopback needs no TLS: {warnings:?}");
    }
}
