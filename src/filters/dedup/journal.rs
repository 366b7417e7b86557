//! The durable memory of accepted ids for `backend: memory`, so a restart, a graceful upgrade
//! or a crash does not forget them and a sender's retry stays a duplicate within the TTL.
//!
//! Two records are read back at start: the segments of every spool sink (a spool line names
//! its provider, event id and arrival time, and is fsynced before the 202, so it *is* the
//! record) and, for every other sink, the journal: one small JSON line per accepted id
//! (`{"provider":…,"event_id":…,"expires":<unix ms>}`), appended through the spool's group
//! commit and fsynced before the 202. Only ids still inside their filter's TTL are loaded.
//!
//! During a graceful upgrade the old process still answers requests after the new one has
//! read the records, so the new one keeps reading what is appended for a while
//! ([`Recovery::catch_up`]); with a crash there is nothing to hand over. Journal segments whose
//! every id has expired are deleted (never a spool's: those belong to their consumers).

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::Dedup;
use crate::sinks::spool::{self, Spool};

/// Journal segments rotate at this size; a segment is deleted once all its ids expired.
const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The longest TTL this process journaled an id with: a segment it wrote holds no id that
/// outlives its last write by more.
static MAX_TTL_MS: AtomicI64 = AtomicI64::new(0);

/// Where accepted ids of non-spool sinks are written.
pub struct Journal {
    spool: Spool,
}

impl Journal {
    pub fn open(dir: &Path) -> Result<Journal, String> {
        Ok(Journal {
            spool: Spool::open("dedup-journal", dir, SEGMENT_SIZE)?,
        })
    }

    pub fn dir(&self) -> &Path {
        self.spool.dir()
    }

    /// Records that `provider`/`id` was accepted and is a duplicate for `ttl`; returns once
    /// the line is fsynced.
    pub async fn record(&self, provider: &str, id: &str, ttl: Duration) -> Result<(), String> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            provider: &'a str,
            event_id: &'a str,
            expires: i64,
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        MAX_TTL_MS.fetch_max(ttl_ms, Ordering::Relaxed);
        let expires = unix_ms() + ttl_ms;
        let mut line = Vec::with_capacity(64 + id.len());
        serde_json::to_writer(
            &mut line,
            &Line {
                provider,
                event_id: id,
                expires,
            },
        )
        .expect("strings and a number serialize");
        line.push(b'\n');
        self.spool.write_line(line).await
    }
}

/// A record line of either kind: only the fields dedup needs (a spool line's body is skipped).
#[derive(Deserialize)]
struct Record {
    provider: String,
    event_id: String,
    /// Journal lines: when the id stops being a duplicate (unix ms).
    #[serde(default)]
    expires: Option<i64>,
    /// Spool lines: when the event arrived (RFC 3339); the filter's TTL counts from it.
    #[serde(default)]
    received_at: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Journal,
    Spool,
}

struct Source {
    dir: PathBuf,
    kind: Kind,
    /// Per segment: bytes read so far and the latest expiry seen in it.
    read: HashMap<u64, (u64, i64)>,
}

/// Reads the records back into a [`Dedup`]: all of them at start, then what is appended.
pub struct Recovery {
    sources: Vec<Source>,
    /// Each provider's dedup TTL (providers with `dedup: off` are absent).
    ttls: HashMap<String, Duration>,
    /// Also read segments this process wrote (tests play both processes in one).
    read_own: bool,
}

impl Recovery {
    pub fn new(
        journal: Option<&Path>,
        spools: Vec<PathBuf>,
        ttls: HashMap<String, Duration>,
    ) -> Recovery {
        let source = |dir: PathBuf, kind| Source {
            dir,
            kind,
            read: HashMap::new(),
        };
        let mut sources: Vec<Source> = spools.into_iter().map(|d| source(d, Kind::Spool)).collect();
        sources.extend(journal.map(|d| source(d.to_path_buf(), Kind::Journal)));
        Recovery {
            sources,
            ttls,
            read_own: false,
        }
    }

    /// Reads everything not read yet; the number of live ids remembered.
    pub fn catch_up(&mut self, dedup: &Dedup) -> usize {
        let now = unix_ms();
        let mut remembered = 0;
        for source in &mut self.sources {
            let segments = spool::segments(&source.dir);
            source.read.retain(|seq, _| segments.contains(seq));
            for seq in segments {
                let path = spool::segment_path(&source.dir, seq);
                // Ids this process wrote it remembered when it accepted them: re-reading its
                // own appends (five times a second during a handover, then every 30 s) only
                // cost CPU and the dedup table's locks. Its journal segments are still deleted
                // once their last write is older than the longest TTL it used.
                if !self.read_own && spool::written_here(&path) {
                    if source.kind == Kind::Journal {
                        let written = std::fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).timestamp_millis());
                        if let Ok(written) = written {
                            let latest = written.saturating_add(MAX_TTL_MS.load(Ordering::Relaxed));
                            if latest <= now
                                && !spool::in_use(&path)
                                && std::fs::remove_file(&path).is_ok()
                            {
                                source.read.remove(&seq);
                            }
                        }
                    }
                    continue;
                }
                let (offset, latest) = source.read.get(&seq).copied().unwrap_or((0, i64::MIN));
                let (read, newest) = read_from(&path, offset, |record| {
                    let expires = match (source.kind, &record) {
                        (
                            Kind::Journal,
                            Record {
                                expires: Some(e), ..
                            },
                        ) => *e,
                        (
                            Kind::Spool,
                            Record {
                                received_at: Some(at),
                                ..
                            },
                        ) => {
                            let ttl = self.ttls.get(&record.provider)?;
                            let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
                            at.timestamp_millis()
                                .saturating_add(i64::try_from(ttl.as_millis()).ok()?)
                        }
                        _ => return None,
                    };
                    if expires > now
                        && dedup.remember(
                            &record.provider,
                            &record.event_id,
                            Duration::from_millis((expires - now) as u64),
                        )
                    {
                        remembered += 1;
                    }
                    Some(expires)
                });
                source.read.insert(seq, (offset + read, latest.max(newest)));
                // A journal segment no writer holds whose every id expired is done with.
                if source.kind == Kind::Journal
                    && latest.max(newest) <= now
                    && !spool::in_use(&path)
                    && std::fs::remove_file(&path).is_ok()
                {
                    source.read.remove(&seq);
                }
            }
        }
        remembered
    }
}

impl Recovery {
    /// Reads this process's own segments too: for tests that play the old and the new
    /// process in one.
    #[cfg(test)]
    fn reading_own_segments(mut self) -> Self {
        self.read_own = true;
        self
    }

    /// Stops reading spool segments back (the handover is over: this process wrote the
    /// rest, and remembers those ids already); the journal is still read and cleaned.
    fn journal_only(&mut self) {
        self.sources.retain(|s| s.kind == Kind::Journal);
    }
}

/// Keeps reading the records while a graceful upgrade hands over (every 200 ms for
/// `handover`), then cleans expired journal segments every 30 s.
pub struct CatchUp {
    pub recovery: std::sync::Mutex<Recovery>,
    pub dedup: std::sync::Arc<Dedup>,
    pub handover: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CatchUp {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let handover_ends = std::time::Instant::now() + self.handover;
        loop {
            let handing_over = std::time::Instant::now() < handover_ends;
            let pause = if handing_over {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(30)
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(pause) => {}
            }
            let mut recovery = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
            if !handing_over {
                recovery.journal_only();
            }
            let n = recovery.catch_up(&self.dedup);
            if n > 0 && handing_over {
                tracing::info!(
                    ids = n,
                    "dedup: remembered ids the previous process accepted while handing over"
                );
            }
        }
    }
}

/// Reads whole lines of `path` from `offset` on, calling `each` with every record; returns
/// the bytes consumed (up to the last newline: a line being written is read next time) and
/// the latest expiry `each` reported. Streams: memory is one line, not the segment.
fn read_from(path: &Path, offset: u64, mut each: impl FnMut(Record) -> Option<i64>) -> (u64, i64) {
    use std::io::BufRead;
    let mut newest = i64::MIN;
    let Ok(mut file) = std::fs::File::open(path) else {
        return (0, newest);
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return (0, newest);
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut consumed = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                consumed += n as u64;
                if let Ok(record) = serde_json::from_slice::<Record>(&line[..n - 1]) {
                    if let Some(expires) = each(record) {
                        newest = newest.max(expires);
                    }
                }
            }
            _ => return (consumed, newest),
        }
    }
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttls() -> HashMap<String, Duration> {
        HashMap::from([("github".to_owned(), Duration::from_secs(3600))])
    }

    #[tokio::test]
    async fn journaled_ids_are_remembered_by_the_next_process_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal
            .record("stripe", "evt_1", Duration::from_secs(60))
            .await
            .unwrap();
        journal
            .record("stripe", "evt_gone", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let next = Dedup::new(100);
        // Written by this process: the ids are its own, nothing to read back.
        assert_eq!(
            Recovery::new(Some(dir.path()), Vec::new(), ttls()).catch_up(&next),
            0
        );
        let mut recovery =
            Recovery::new(Some(dir.path()), Vec::new(), ttls()).reading_own_segments();
        assert_eq!(recovery.catch_up(&next), 1);
        assert!(matches!(
            next.reserve("stripe", "evt_1").await,
            super::super::Reservation::Duplicate
        ));
        assert!(matches!(
            next.reserve("stripe", "evt_gone").await,
            super::super::Reservation::Fresh(_)
        ));
        // Appended later (an old process still draining): read on the next catch-up only.
        journal
            .record("stripe", "evt_2", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(recovery.catch_up(&next), 1);
        assert_eq!(recovery.catch_up(&next), 0);
    }

    #[tokio::test]
    async fn own_journal_segments_are_deleted_unread_once_past_the_longest_ttl() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            journal
                .record("stripe", "evt_1", Duration::from_secs(60))
                .await
                .unwrap();
        }
        let path = spool::segment_path(dir.path(), spool::segments(dir.path())[0]);
        // The writer thread lets go of the segment once its spool is dropped.
        for _ in 0..200 {
            if !spool::in_use(&path) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let dedup = Dedup::new(100);
        let mut recovery = Recovery::new(Some(dir.path()), Vec::new(), ttls());
        // Last written within the TTL: kept, and not read (its id is this process's own).
        assert_eq!(recovery.catch_up(&dedup), 0);
        assert!(path.exists());
        // Last written longer ago than any TTL this process used: deleted.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(400 * 86_400))
            .unwrap();
        assert_eq!(recovery.catch_up(&dedup), 0);
        assert!(!path.exists());
        assert_eq!(dedup.entries_now(), 0);
    }

    #[test]
    fn spool_lines_count_from_arrival_with_their_filters_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let at = |ago: i64| {
            (now - chrono::Duration::seconds(ago))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let lines = [
            format!(
                r#"{{"provider":"github","event_id":"fresh","received_at":"{}","body":"x"}}"#,
                at(60)
            ),
            format!(
                r#"{{"provider":"github","event_id":"old","received_at":"{}","body":"x"}}"#,
                at(7200)
            ),
            format!(
                r#"{{"provider":"nodedup","event_id":"any","received_at":"{}","body":"x"}}"#,
                at(1)
            ),
            "not json".to_owned(),
            format!(
                r#"{{"provider":"github","event_id":"torn","received_at":"{}""#,
                at(1)
            ),
        ];
        std::fs::write(spool::segment_path(dir.path(), 1), lines.join("\n")).unwrap();
        let dedup = Dedup::new(100);
        let mut recovery = Recovery::new(None, vec![dir.path().to_path_buf()], ttls());
        assert_eq!(recovery.catch_up(&dedup), 1);
        assert_eq!(dedup.entries_now(), 1);
    }
}
