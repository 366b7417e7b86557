//! The shared machinery of configuration: reading files with `file:line` diagnostics and
//! suggestions, secret references, durations, sizes, CIDRs, and the key lists of a config
//! struct. It imports no component: each sink, scheme, stage and listener parses and
//! validates its own keys with these pieces, and `loader` composes them into the files.

pub mod diagnostics;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use diagnostics::{Problem, Report, Section, Severity};

/// The keys a config struct takes, in declaration order, from its `Deserialize` impl (so a
/// "did you mean" list cannot drift from what is parsed).
pub fn keys<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

/// The `*.yaml` / `*.yml` files of a directory, sorted (one per filter, one per tenant).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// A name that appears in routes, metrics, keys and queues: letters, digits, `-`, `_`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An address or CIDR; a bare address is a single-host network.
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// `base/rel` with `.` and `..` folded away where the text allows (`conf/../filters` →
/// `filters`), so messages name files the way a person would; nothing is resolved on disk.
pub fn join_normalized(base: &Path, rel: &str) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in base.join(rel).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `5m`, `24h`, `1500ms` (humantime). A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}): write it like 30s, 5m or 24h"))
}

/// A size written as a number of bytes or with a unit (`1MiB`, `512KiB`, `2MB`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

pub fn parse_size(value: &SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Bytes(n) => Ok(*n),
        SizeValue::Text(t) => t
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| format!("`{t}` is not a size: write it like 1MiB, 512KiB or 65536")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_like_the_docs_write_them() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_size(&SizeValue::Text("1MiB".into())).unwrap(),
            1 << 20
        );
        assert_eq!(
            parse_size(&SizeValue::Text("64 KiB".into())).unwrap(),
            64 << 10
        );
        assert_eq!(parse_size(&SizeValue::Bytes(10)).unwrap(), 10);
        assert!(parse_size(&SizeValue::Text("big".into())).is_err());
    }
}
