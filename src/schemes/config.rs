//! A filter file's scheme keys: `preset`, `secrets`, `tolerance`, and for `hmac` the
//! `signature`/`timestamp` blocks, plus `public_url` (Twilio, Square, `{url}` templates).
//! Checked in two steps around the filter's other keys (the preset decides their defaults),
//! then built once the whole filter is valid.

use std::path::Path;
use std::time::Duration;

use super::{Preset, Scheme, SchemeConfig, Secret, SignatureSpec, TimestampSpec, PRESETS};
use crate::config::diagnostics::suggest;
use crate::config::secrets::{self, Source};
use crate::config::{keys, parse_duration, Section};

/// The scheme's keys as the filter file wrote them.
pub struct SchemeKeys<'a> {
    pub preset: &'a str,
    pub secrets: &'a [String],
    pub tolerance: Option<&'a str>,
    pub signature: Option<&'a SignatureSpec>,
    pub timestamp: Option<&'a TimestampSpec>,
    pub public_url: Option<&'a str>,
    /// `keys: store`: a `url-key` filter's keys live in the store, under this filter name.
    pub stored: Option<&'a str>,
}

/// The keys of the `hmac` blocks, for "did you mean".
pub fn nested_keys() -> [(&'static str, &'static [&'static str]); 2] {
    [
        ("signature", keys::<SignatureSpec>()),
        ("timestamp", keys::<TimestampSpec>()),
    ]
}

/// The preset and its secrets, resolved.
pub struct Chosen {
    pub preset: &'static Preset,
    secrets: Vec<Secret>,
    tolerance: Option<Duration>,
}

/// Step one: the preset, its secrets and tolerance. `None` for an unknown preset (nothing
/// else of the filter can be checked without it). `allow` says whether the filter has an
/// allowlist (`none` without one is warned about).
pub fn choose(
    keys: &SchemeKeys<'_>,
    base_dir: &Path,
    allow: bool,
    at: &mut Section<'_, '_>,
) -> Option<Chosen> {
    let Some(preset) = super::preset(keys.preset) else {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        at.error(
            &["preset"],
            format!(
                "unknown preset `{}`: {}",
                keys.preset,
                suggest(keys.preset, &names)
            ),
        );
        return None;
    };
    if keys.stored.is_some() {
        if preset.name != "url-key" {
            at.error(
                &["keys"],
                format!(
                    "keys: store is for url-key filters (preset `{}` signs with secrets:)",
                    preset.name
                ),
            );
        }
        if !keys.secrets.is_empty() {
            at.error(
                &["secrets"],
                "a filter with keys: store takes its keys from the store: remove secrets:",
            );
        }
        return Some(Chosen {
            preset,
            secrets: Vec::new(),
            tolerance: None,
        });
    }
    let secrets = resolve_secrets(preset, keys.secrets, base_dir, at);
    if preset.name == "none" && !allow {
        at.warn(
            &["preset"],
            "preset `none` accepts unsigned requests from anywhere: add an `allow:` list",
        );
    }
    let tolerance = keys.tolerance.and_then(|t| match parse_duration(t) {
        Ok(d) => Some(d),
        Err(e) => {
            at.error(&["tolerance"], e);
            None
        }
    });
    let signs_timestamp =
        preset.tolerance.is_some() || (preset.name == "hmac" && keys.timestamp.is_some());
    if keys.tolerance.is_some() && !signs_timestamp {
        let hint = if preset.name == "hmac" {
            " (add a timestamp: block)"
        } else {
            ""
        };
        at.warn(
            &["tolerance"],
            format!(
                "tolerance has no effect: preset `{}` signs no timestamp{hint}",
                preset.name
            ),
        );
    }
    Some(Chosen {
        preset,
        secrets,
        tolerance,
    })
}

fn resolve_secrets(
    preset: &Preset,
    references: &[String],
    base_dir: &Path,
    at: &mut Section<'_, '_>,
) -> Vec<Secret> {
    let mut secrets = Vec::new();
    for (i, reference) in references.iter().enumerate() {
        match secrets::resolve(reference, base_dir) {
            Ok((secret, source)) => {
                if matches!(source, Source::Literal) {
                    at.warn(&["secrets"], format!("secret #{} is written literally in the file: fine for a demo, but use env:NAME or file:PATH in production", i + 1));
                }
                if preset.name == "url-key" {
                    if let Err(e) = super::url_key_validate(&secret.0) {
                        at.error(&["secrets"], format!("secret #{}: {e}", i + 1));
                    }
                }
                secrets.push(secret);
            }
            Err(e) => at.error(&["secrets"], e),
        }
    }
    if preset.needs_secret && references.is_empty() {
        at.error(
            &["preset"],
            format!(
                "preset `{}` needs at least one secret: add secrets: [env:NAME]",
                preset.name
            ),
        );
    }
    if !preset.needs_secret && !references.is_empty() {
        at.warn(
            &["secrets"],
            "preset `none` checks no signature: these secrets are unused",
        );
    }
    secrets
}

/// Step two: the blocks only `hmac` takes, and `public_url`.
pub fn check_blocks(keys: &SchemeKeys<'_>, preset: &Preset, at: &mut Section<'_, '_>) {
    for (key, set) in [
        ("signature", keys.signature.is_some()),
        ("timestamp", keys.timestamp.is_some()),
    ] {
        if preset.name != "hmac" && set {
            at.error(
                &[key],
                format!(
                    "`{key}:` is only for preset hmac; preset `{}` fixes its own",
                    preset.name
                ),
            );
        }
    }
    if let (Some(sig), Some(ts)) = (keys.signature, keys.timestamp) {
        if ts.header.is_some() && !sig.signed.contains("{timestamp}") {
            at.warn(&["timestamp"], "the timestamp header is not in `signed:`, so it is not authenticated: a replay can carry a fresh one (add {timestamp} to the template)");
        }
    }
    if let Some(url) = keys.public_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('?') {
            at.error(
                &["public_url"],
                format!("public_url `{url}` must be an http(s) URL without a query string"),
            );
        }
    }
}

/// Builds the scheme of a filter with no errors. `id_header` is the event-id header, which
/// `{id}` in an `hmac` template refers to.
pub fn build(
    chosen: &Chosen,
    keys: &SchemeKeys<'_>,
    id_header: Option<&str>,
    at: &mut Section<'_, '_>,
) -> Option<Box<dyn Scheme>> {
    if let Some(filter) = keys.stored {
        return Some(Box::new(super::url_key::UrlKey::stored(filter)));
    }
    let built = super::build(&SchemeConfig {
        preset: chosen.preset,
        secrets: &chosen.secrets,
        tolerance: chosen.tolerance,
        signature: keys.signature,
        timestamp: keys.timestamp,
        public_url: keys.public_url,
        id_header,
    });
    built
        .map_err(|e| {
            let key = if keys.signature.is_some() {
                "signature"
            } else {
                "preset"
            };
            at.error(&[key], e);
        })
        .ok()
}
