//! The embedded spool: append-only JSON-lines segment files, fsynced before a 202.
//!
//! A single writer thread takes every pending event, writes them in one go and calls
//! `fdatasync` once for the batch (group commit), so under load many requests share one fsync
//! instead of queueing for their own. Segments rotate by size and are never appended to after
//! a restart or a write error, so a torn line can only ever be the last line of a segment.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Envelope, Sink, SinkError};

/// Most events written under one fsync.
const MAX_BATCH: usize = 4096;

mod config;
pub use config::{Access, Config, Limits, Spec, DEFAULT_MIN_FREE, DEFAULT_SEGMENT_SIZE};

/// `type: spool`.
pub const KIND: super::Kind = super::Kind::of::<Spec>("spool");

pub struct Spool {
    name: String,
    dir: PathBuf,
    segment_size: u64,
    limits: Limits,
    access: Access,
    /// Started on first use: Pingora may fork to daemonize after the config is loaded.
    writer: OnceLock<mpsc::UnboundedSender<Job>>,
    healthy: Arc<AtomicBool>,
    /// Set by a fallback replayer that has read everything: the next write starts a new
    /// segment, so the read one can be deleted.
    rotate: Arc<AtomicBool>,
}

struct Job {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Spool {
    pub fn open(name: &str, dir: &Path, segment_size: u64) -> Result<Spool, String> {
        Self::open_with(name, dir, segment_size, Access::None)
    }

    pub fn open_with(
        name: &str,
        dir: &Path,
        segment_size: u64,
        access: Access,
    ) -> Result<Spool, String> {
        create_dir(dir, access)
            .map_err(|e| format!("spool `{name}`: cannot create {}: {e}", dir.display()))?;
        if access != Access::None {
            // Segments written before `group_access` was set get its mode too.
            for seq in segments(dir) {
                let path = segment_path(dir, seq);
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(access.file_mode()),
                )
                .map_err(|e| format!("spool `{name}`: cannot chmod {}: {e}", path.display()))?;
            }
        }
        Ok(Spool {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            segment_size,
            access,
            limits: Limits::default(),
            writer: OnceLock::new(),
            healthy: Arc::new(AtomicBool::new(true)),
            rotate: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn with_limits(mut self, limits: Limits) -> Spool {
        self.limits = limits;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks the writer to start a new segment with its next write.
    pub fn request_rotation(&self) {
        self.rotate.store(true, Ordering::Relaxed);
    }

    fn writer(&self) -> &mpsc::UnboundedSender<Job> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let writer = Writer {
                dir: self.dir.clone(),
                segment_size: self.segment_size,
                limits: self.limits,
                access: self.access,
                healthy: self.healthy.clone(),
                rotate: self.rotate.clone(),
            };
            std::thread::Builder::new()
                .name(format!("spool-{}", self.name))
                .spawn(move || writer.run(rx))
                .expect("spawn the spool writer thread");
            tx
        })
    }
}

impl Spool {
    /// Appends one line (ending in `\n`) with the next group commit; `Ok` once it is fsynced.
    pub async fn write_line(&self, line: Vec<u8>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.writer()
            .send(Job { line, done })
            .map_err(|_| "spool writer stopped".to_owned())?;
        match wait.await {
            Ok(result) => result,
            Err(_) => Err("spool writer stopped".into()),
        }
    }
}

/// One spool line: the envelope as JSON, the body as text when it is UTF-8 (escaping is
/// lossless) and as `body_base64` otherwise. Written field by field from borrowed values: no
/// intermediate JSON tree, no copy of the body besides the escaped output, which
/// [`escape_into`] writes a word at a time.
pub fn encode_line(envelope: &Envelope) -> Vec<u8> {
    fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) {
        out.push(if out.is_empty() { b'{' } else { b',' });
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, value).expect("a string-only record serializes");
    }
    let mut out = Vec::with_capacity(envelope.body.len() + envelope.body.len() / 8 + 256);
    field(&mut out, "provider", &envelope.provider);
    field(&mut out, "event_id", &envelope.event_id);
    field(&mut out, "event_type", &envelope.event_type);
    field(&mut out, "received_at", &envelope.received_at);
    field(&mut out, "source_ip", &envelope.source_ip);
    field(&mut out, "verified", &envelope.verified);
    if let Some(reason) = envelope.reason {
        field(&mut out, "reason", reason);
    }
    field(&mut out, "headers", &envelope.headers_json());
    let map: Option<Value> = envelope
        .map
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    if let Some(map) = &map {
        field(&mut out, "map", map);
    }
    match std::str::from_utf8(&envelope.body) {
        Ok(text) => {
            out.extend_from_slice(b",\"body\":\"");
            escape_into(&mut out, text);
            out.push(b'"');
        }
        Err(_) => field(
            &mut out,
            "body_base64",
            &base64::engine::general_purpose::STANDARD.encode(&envelope.body),
        ),
    }
    out.extend_from_slice(b"}\n");
    out
}

/// `text` as the inside of a JSON string, byte for byte what serde_json writes: `"` and `\`
/// and control characters escaped (`\n`-style where JSON has one, `\u00xx` otherwise),
/// everything else, UTF-8 included, as it is. Eight bytes are checked at once for one that
/// needs escaping (a JSON body is mostly runs of plain text between quotes).
pub fn escape_into(out: &mut Vec<u8>, text: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte that is < 0x20, `"` or `\`. Only the lowest flagged byte is
    // certain (a borrow can flag bytes above it), which is the one used.
    fn flags(word: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
            | zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
    }
    let bytes = text.as_bytes();
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < bytes.len() {
        let found = match bytes.get(i..i + 8) {
            Some(chunk) => {
                let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                match flags(word) {
                    0 => {
                        i += 8;
                        continue;
                    }
                    f => i + (f.trailing_zeros() / 8) as usize,
                }
            }
            None => match bytes[i..]
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
            {
                Some(at) => i + at,
                None => break,
            },
        };
        out.extend_from_slice(&bytes[start..found]);
        let b = bytes[found];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        i = found + 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[async_trait]
impl Sink for Spool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), SinkError> {
        self.write_line(encode_line(envelope))
            .await
            .map_err(SinkError::Unavailable)
    }

    fn recorded_in(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    async fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.dir.is_dir()
            && free_space(&self.dir).is_none_or(|free| free >= self.limits.min_free)
    }
}

struct Writer {
    dir: PathBuf,
    segment_size: u64,
    limits: Limits,
    access: Access,
    healthy: Arc<AtomicBool>,
    rotate: Arc<AtomicBool>,
}

struct Segment {
    /// Holds an exclusive `flock` while open: the replayer leaves a locked segment alone.
    file: File,
    len: u64,
    seq: u64,
}

impl Writer {
    fn run(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut segment: Option<Segment> = None;
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            buf.clear();
            for job in &batch {
                buf.extend_from_slice(&job.line);
            }
            let result = self.append(&mut segment, &buf);
            self.healthy.store(result.is_ok(), Ordering::Relaxed);
            if result.is_err() {
                // Never write after a failure into the same file: a torn line stays last.
                segment = None;
            }
            for job in batch.drain(..) {
                let _ = job.done.send(result.clone());
            }
        }
    }

    fn append(&self, segment: &mut Option<Segment>, buf: &[u8]) -> Result<(), String> {
        if let Some(free) = free_space(&self.dir) {
            if free.saturating_sub(buf.len() as u64) < self.limits.min_free {
                return Err(format!(
                    "spool: {} has {} MiB free, below min_free ({} MiB): refusing to fill the disk",
                    self.dir.display(),
                    free >> 20,
                    self.limits.min_free >> 20
                ));
            }
        }
        let rotate = self.rotate.swap(false, Ordering::Relaxed);
        if segment
            .as_ref()
            .is_none_or(|s| s.len >= self.segment_size || (rotate && s.len > 0))
        {
            let seq = match segment {
                Some(s) => s.seq + 1,
                None => next_sequence(&self.dir),
            };
            *segment = Some(self.create_from(seq)?);
            enforce(&self.dir, &self.limits);
        }
        let seg = segment.as_mut().expect("segment just ensured");
        let result = seg.file.write_all(buf).and_then(|()| seg.file.sync_data());
        match result {
            Ok(()) => {
                seg.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = seg.file.set_len(seg.len);
                Err(format!("spool write: {e}"))
            }
        }
    }

    /// Creates segment `seq`, or the next free one: during a graceful upgrade the old and the
    /// new process append to the same directory, each to segments of its own.
    fn create_from(&self, seq: u64) -> Result<Segment, String> {
        let mut seq = seq;
        for _ in 0..64 {
            match self.create(seq) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    seq = next_sequence(&self.dir).max(seq + 1);
                }
                other => return other.map_err(|e| format!("spool segment: {e}")),
            }
        }
        Err(format!("spool segment: no free segment number near {seq}"))
    }

    fn create(&self, seq: u64) -> std::io::Result<Segment> {
        create_dir(&self.dir, self.access)?;
        // Webhook bodies are the senders' data: readable by this user alone (or the group
        // `group_access` names), whatever the umask.
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(segment_path(&self.dir, seq))?;
        if self.access != Access::None {
            file.set_permissions(std::fs::Permissions::from_mode(self.access.file_mode()))?;
        }
        // The new directory entry must be durable too, or a crash could lose the whole file.
        File::open(&self.dir)?.sync_all()?;
        // Fresh file, nobody else has it: the lock only fails on filesystems without flock.
        if let Err(e) = file.try_lock() {
            tracing::warn!(segment = seq, "cannot lock the spool segment: {e}");
        }
        if let Ok(meta) = file.metadata() {
            created_here().insert(
                segment_path(&self.dir, seq),
                std::os::unix::fs::MetadataExt::ino(&meta),
            );
        }
        Ok(Segment { file, len: 0, seq })
    }
}

/// Creates a spool directory (and its parents) private to this user. With `group_access`
/// the directory gets its group's bits whatever the umask, keeping a setgid bit (so segments
/// take the directory's group); without, an existing directory keeps the mode it was given.
fn create_dir(dir: &Path, access: Access) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if access != Access::None {
        let setgid = std::fs::metadata(dir)?.permissions().mode() & 0o2000;
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode(setgid | access.dir_mode()),
        )?;
    }
    Ok(())
}

/// Bytes available to this user on the filesystem holding `dir` (`None` if it cannot tell).
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statvfs the call fills in.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Applies `retention` and `max_size` to the sealed segments (never the one being written,
/// never one another process still writes); each deletion is logged.
fn enforce(dir: &Path, limits: &Limits) {
    if limits.retention.is_none() && limits.max_size.is_none() {
        return;
    }
    let now = std::time::SystemTime::now();
    let mut sealed: Vec<(u64, u64, std::time::SystemTime)> = Vec::new();
    let mut total = 0u64;
    for seq in segments(dir) {
        let path = segment_path(dir, seq);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        total += meta.len();
        if !in_use(&path) {
            sealed.push((seq, meta.len(), meta.modified().unwrap_or(now)));
        }
    }
    for (seq, len, modified) in sealed {
        let expired = limits
            .retention
            .is_some_and(|r| now.duration_since(modified).unwrap_or_default() > r);
        let over = limits.max_size.is_some_and(|m| total > m);
        if !(expired || over) {
            continue;
        }
        if std::fs::remove_file(segment_path(dir, seq)).is_ok() {
            total -= len;
            let why = if expired { "retention" } else { "max_size" };
            tracing::warn!(segment = seq, bytes = len, "spool segment deleted by {why}");
        }
    }
}

/// The inverse of [`encode_line`]; `None` for a line that is not a spooled envelope.
pub fn decode_line(line: &[u8]) -> Option<Envelope> {
    let record: Value = serde_json::from_slice(line).ok()?;
    let text = |key: &str| record.get(key).and_then(Value::as_str).map(str::to_owned);
    let body = match (text("body"), text("body_base64")) {
        (Some(body), _) => bytes::Bytes::from(body),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?
            .into(),
        (None, None) => return None,
    };
    let reason = text("reason").and_then(|r| {
        crate::reason::Reason::ALL
            .iter()
            .find(|known| known.as_str() == r)
            .map(|known| known.as_str())
    });
    let headers = record
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some(Envelope {
        provider: text("provider")?,
        event_id: text("event_id")?,
        event_type: text("event_type").unwrap_or_else(|| "unknown".into()),
        received_at: text("received_at")?,
        source_ip: text("source_ip").unwrap_or_default(),
        verified: record
            .get("verified")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        reason,
        headers,
        map: record
            .get("map")
            .filter(|m| m.is_object())
            .map(crate::filters::map::ascii_json),
        body,
        dedup_ttl: None,
    })
}

/// How far a reader has read: a segment and a byte offset in it, kept in a checkpoint file
/// of the spool directory (`replay.checkpoint` for a fallback's replayer, `consumer-NAME.
/// checkpoint` for `portcullis spool ack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

impl Position {
    pub fn load(dir: &Path, checkpoint: &str) -> Position {
        std::fs::read_to_string(dir.join(checkpoint))
            .ok()
            .and_then(|text| Position::parse(text.trim(), ' '))
            .unwrap_or_default()
    }

    /// `SEQ OFFSET` (the checkpoint file) or `SEQ:OFFSET` (the command line).
    pub fn parse(text: &str, separator: char) -> Option<Position> {
        let (seq, offset) = text.split_once(separator)?;
        Some(Position {
            seq: seq.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }

    /// Written to a temporary file and renamed over the old one: never half a checkpoint.
    pub fn save(self, dir: &Path, checkpoint: &str) -> std::io::Result<()> {
        let tmp = dir.join(format!("{checkpoint}.tmp"));
        std::fs::write(&tmp, format!("{} {}\n", self.seq, self.offset))?;
        std::fs::rename(tmp, dir.join(checkpoint))
    }

    /// Whether any spooled byte lies past this position.
    pub fn backlog(self, dir: &Path) -> bool {
        segments(dir).into_iter().any(|seq| {
            let len = std::fs::metadata(segment_path(dir, seq))
                .map(|m| m.len())
                .unwrap_or(0);
            seq > self.seq && len > 0 || seq == self.seq && len > self.offset
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.offset)
    }
}

/// The complete lines of a segment from `offset` on (a torn last line is left for later).
pub fn complete_lines(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    data.truncate(end);
    Ok(data)
}

/// Up to `max` complete lines after `from`, oldest first, and the position after the last.
pub fn read_after(
    dir: &Path,
    from: Position,
    max: usize,
) -> std::io::Result<(Vec<Vec<u8>>, Position)> {
    let mut lines = Vec::new();
    let mut at = from;
    for seq in segments(dir).into_iter().filter(|&s| s >= from.seq) {
        if seq > at.seq {
            at = Position { seq, offset: 0 };
        }
        let data = complete_lines(&segment_path(dir, seq), at.offset)?;
        for line in data.split_inclusive(|b| *b == b'\n') {
            if lines.len() == max {
                return Ok((lines, at));
            }
            at.offset += line.len() as u64;
            lines.push(line.to_vec());
        }
    }
    Ok((lines, at))
}

/// Deletes the segments wholly before `upto` that no writer holds any more; how many.
pub fn delete_before(dir: &Path, upto: Position) -> usize {
    segments(dir)
        .into_iter()
        .filter(|&seq| seq < upto.seq)
        .filter(|&seq| {
            let path = segment_path(dir, seq);
            !in_use(&path) && std::fs::remove_file(&path).is_ok()
        })
        .count()
}

/// The segment numbers in a spool directory, oldest first.
pub fn segments(dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".jsonl")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    seqs.sort_unstable();
    seqs
}

/// Segments this process created (path → inode, so a number reused after a deletion by
/// another process is not mistaken for ours).
static CREATED_HERE: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
> = std::sync::LazyLock::new(Default::default);

fn created_here() -> std::sync::MutexGuard<'static, std::collections::HashMap<PathBuf, u64>> {
    CREATED_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this process created the segment at `path` (and it is still that file): a
/// reader of records can then tell its own writes, whose ids it already holds, from
/// another process's.
pub fn written_here(path: &Path) -> bool {
    let Some(ino) = created_here().get(path).copied() else {
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino)
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

/// Whether a writer (of this or another process) still has the segment open.
pub fn in_use(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

/// One past the highest segment number in the directory.
fn next_sequence(dir: &Path) -> u64 {
    segments(dir).last().map_or(1, |m| m + 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    pub(crate) fn envelope(id: &str, body: &[u8]) -> Envelope {
        Envelope {
            provider: "github".into(),
            event_id: id.into(),
            event_type: "push".into(),
            received_at: "2026-01-01T00:00:00Z".into(),
            source_ip: "127.0.0.1".into(),
            verified: true,
            reason: None,
            headers: vec![("content-type".into(), "application/json".into())],
            map: None,
            body: Bytes::copy_from_slice(body),
            dedup_ttl: None,
        }
    }

    fn lines(dir: &Path) -> Vec<Value> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open("s", dir.path(), 4096).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                spool
                    .publish(&envelope(&format!("id-{i}"), &[b'x'; 100]))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut ids: Vec<String> = lines(dir.path())
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        assert!(spool.ready().await);
    }

    #[tokio::test]
    async fn segments_rotate_once_they_pass_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open("s", dir.path(), 4096).unwrap();
        for i in 0..40 {
            spool
                .publish(&envelope(&i.to_string(), &[b'x'; 200]))
                .await
                .unwrap();
        }
        assert_eq!(lines(dir.path()).len(), 40);
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(
            segments >= 2,
            "40 lines of ~330 bytes span several 4KiB segments, got {segments}"
        );
    }

    #[tokio::test]
    async fn bodies_round_trip_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open("s", dir.path(), 1 << 20).unwrap();
        let text = "{\"a\":\"\\u00e9\\n\" , \"b\": \"\u{2028}\"}\n".as_bytes();
        let binary = [0xff, 0x00, 0xfe, b'"'];
        spool.publish(&envelope("t", text)).await.unwrap();
        spool.publish(&envelope("b", &binary)).await.unwrap();
        let all = lines(dir.path());
        assert_eq!(all[0]["body"].as_str().unwrap().as_bytes(), text);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(all[1]["body_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, binary);
    }

    #[test]
    fn lines_decode_back_into_the_envelope_they_encode() {
        for body in [&b"{\"a\":1}"[..], &[0xff, 0x00, b'\n']] {
            let mut e = envelope("id-1", body);
            e.verified = false;
            e.reason = Some("invalid_signature");
            let line = encode_line(&e);
            let back = decode_line(line.strip_suffix(b"\n").unwrap()).unwrap();
            assert_eq!(back.body, e.body);
            assert_eq!(
                (back.event_id, back.verified, back.reason),
                (e.event_id, false, e.reason)
            );
            assert_eq!(back.headers, e.headers);
        }
        assert!(decode_line(b"not json").is_none());
        assert!(decode_line(b"{\"provider\":\"x\"}").is_none());
    }

    /// Byte for byte what serde_json writes, for every ASCII byte in every position of a
    /// word, for UTF-8 and for runs longer and shorter than a word.
    #[test]
    fn the_escaper_writes_what_serde_json_writes() {
        let mut texts: Vec<String> = Vec::new();
        for b in 0u8..0x80 {
            for pad in 0..17 {
                let c = char::from(b);
                texts.push(format!("{}{c}{}", "a".repeat(pad), "é".repeat(pad % 3)));
                texts.push(format!("{c}{}{c}\"x\\", "z".repeat(pad)));
            }
        }
        texts.push(String::new());
        texts.push("plain text longer than one word, no escapes at all".into());
        texts.push("日本語 \u{1F600} \u{7f} \u{80} \u{2028}".into());
        texts.push(r#"{"action":"opened","seq":1,"pad":"\\\"\n\t"}"#.into());
        for text in &texts {
            let mut out = Vec::new();
            escape_into(&mut out, text);
            let serde = serde_json::to_string(text).unwrap();
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                &serde[1..serde.len() - 1],
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_line_is_the_json_of_its_fields() {
        let mut e = envelope("id-\"1", b"{\"a\":\"\\u00e9\\n\"}\t");
        e.reason = Some("invalid_signature");
        e.map = Some(r#"{"k":[1,"v"]}"#.into());
        let line = encode_line(&e);
        assert!(line.ends_with(b"}\n"));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "provider": "github", "event_id": "id-\"1", "event_type": "push",
                "received_at": "2026-01-01T00:00:00Z", "source_ip": "127.0.0.1",
                "verified": true, "reason": "invalid_signature",
                "headers": {"content-type": "application/json"},
                "map": {"k": [1, "v"]},
                "body": "{\"a\":\"\\u00e9\\n\"}\t",
            })
        );
        let binary = encode_line(&envelope("2", &[0xff, 0]));
        let v: Value = serde_json::from_slice(&binary).unwrap();
        assert_eq!(v["body_base64"], "/wA=");
        assert!(v.get("body").is_none() && v.get("reason").is_none());
    }

    #[tokio::test]
    async fn a_restart_starts_a_new_segment_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        Spool::open("s", dir.path(), 1 << 20)
            .unwrap()
            .publish(&envelope("1", b"{}"))
            .await
            .unwrap();
        Spool::open("s", dir.path(), 1 << 20)
            .unwrap()
            .publish(&envelope("2", b"{}"))
            .await
            .unwrap();
        assert!(segment_path(dir.path(), 1).exists());
        assert!(segment_path(dir.path(), 2).exists());
    }

    #[tokio::test]
    async fn two_processes_on_one_directory_never_share_a_segment() {
        // The old and the new process of a graceful upgrade, rotating past each other.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Spool::open("a", dir.path(), 4096).unwrap(),
            Spool::open("b", dir.path(), 4096).unwrap(),
        );
        for i in 0..60 {
            let (who, spool) = if i % 3 == 0 { ("a", &a) } else { ("b", &b) };
            spool
                .publish(&envelope(&format!("{who}-{i}"), &[b'x'; 200]))
                .await
                .unwrap();
        }
        let mut ids: Vec<String> = lines(dir.path())
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 60, "every event kept once");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 60);
    }
}
