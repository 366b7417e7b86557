//! The server file's `store:` block: where the outbound ledger lives.

use std::path::Path;

use serde::Deserialize;

use crate::config::{keys, Report};

#[derive(Debug, Deserialize)]
pub struct StoreSpec {
    #[serde(default)]
    url: Option<String>,
}

pub fn nested_keys() -> (&'static str, &'static [&'static str]) {
    ("store", keys::<StoreSpec>())
}

/// Where the ledger is: a SQLite file (made absolute against the config's directory) or a
/// PostgreSQL URL.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
}

pub const DEFAULT_URL: &str = "sqlite://state/portcullis.db";

pub fn load(spec: Option<&StoreSpec>, base: &Path, report: &mut Report<'_>) -> StoreConfig {
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
    StoreConfig { url }
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
