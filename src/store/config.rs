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
    StoreConfig { url, keys: None }
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
