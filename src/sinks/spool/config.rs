//! `type: spool` keys: the directory, segment size and disk policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Spool;
use crate::config::{parse_size, Section, SizeValue};
use crate::sinks::config::{SinkConfig, Spec as SinkSpec};
use crate::sinks::Sink;

#[derive(Debug, Deserialize)]
pub struct Spec {
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
    group_access: Access,
}

/// Who besides the gateway's user may reach the segments (`group_access`): nobody by default
/// (files 0600 in a 0700 directory), or the directory's group, to read (0640 / 0750) or also
/// to acknowledge, which writes checkpoints and deletes segments (0660 / 0770). The modes are
/// set explicitly, whatever the umask (the unit's is 0077).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    #[default]
    None,
    Read,
    ReadWrite,
}

impl Access {
    pub fn file_mode(self) -> u32 {
        match self {
            Access::None => 0o600,
            Access::Read => 0o640,
            Access::ReadWrite => 0o660,
        }
    }

    pub fn dir_mode(self) -> u32 {
        match self {
            Access::None => 0o700,
            Access::Read => 0o750,
            Access::ReadWrite => 0o770,
        }
    }
}

pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// The spool's default free-space floor.
pub const DEFAULT_MIN_FREE: u64 = 100 * 1024 * 1024;

/// Disk policy of a spool (keys `min_free`, `retention`, `max_size`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Below this much free space on its filesystem the spool refuses writes (503) and is not
    /// ready, before the disk is full for everything else on it.
    pub min_free: u64,
    /// Sealed segments older than this are deleted (consumed or not).
    pub retention: Option<Duration>,
    /// Past this many bytes of segments, the oldest sealed ones are deleted.
    pub max_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            min_free: DEFAULT_MIN_FREE,
            retention: None,
            max_size: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub segment_size: u64,
    pub limits: Limits,
    pub access: Access,
}

impl Config {
    pub fn open(&self, name: &str) -> Result<Spool, String> {
        Ok(
            Spool::open_with(name, &self.dir, self.segment_size, self.access)?
                .with_limits(self.limits),
        )
    }
}

impl SinkConfig for Config {
    fn build(&self, name: &str, _built: &crate::sinks::Built) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(self.open(name)?))
    }
    fn as_spool(&self) -> Option<&Config> {
        Some(self)
    }
    fn remembers_ids(&self) -> bool {
        true
    }
}

impl SinkSpec for Spec {
    fn load(
        &self,
        _name: &str,
        base: &Path,
        at: &mut Section<'_, '_>,
    ) -> Option<Arc<dyn SinkConfig>> {
        let dir = base.join(self.dir.as_deref().unwrap_or("spool/"));
        let segment_size = match self.segment_size.as_ref().map(parse_size) {
            None => DEFAULT_SEGMENT_SIZE,
            Some(Ok(n)) if n >= 4096 => n,
            Some(Ok(_)) => {
                at.error(&[], "segment_size must be at least 4KiB");
                DEFAULT_SEGMENT_SIZE
            }
            Some(Err(e)) => {
                at.error(&[], e);
                DEFAULT_SEGMENT_SIZE
            }
        };
        let min_free = size(at, "min_free", &self.min_free).unwrap_or(DEFAULT_MIN_FREE);
        let max_size = size(at, "max_size", &self.max_size);
        if max_size.is_some_and(|m| m < segment_size) {
            at.error(
                &["max_size"],
                "max_size must be at least segment_size: every segment but the open one would go",
            );
        }
        let retention = self.retention.as_deref().and_then(|text| {
            let d = at.duration("retention", Some(text), Duration::ZERO, |d| {
                if d.is_zero() {
                    Err("retention must be more than zero".into())
                } else {
                    Ok(())
                }
            });
            (!d.is_zero()).then_some(d)
        });
        Some(Arc::new(Config {
            dir,
            segment_size,
            access: self.group_access,
            limits: Limits {
                min_free,
                retention,
                max_size,
            },
        }))
    }

    fn refuses_to_be_fallback(&self) -> Option<String> {
        (self.retention.is_some() || self.max_size.is_some()).then(|| {
            "has retention/max_size: its segments wait for the replay, none may be deleted before"
                .into()
        })
    }
}

fn size(at: &mut Section<'_, '_>, key: &str, value: &Option<SizeValue>) -> Option<u64> {
    match value.as_ref().map(parse_size) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            at.error(&[key], e);
            None
        }
    }
}
