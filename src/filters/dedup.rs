//! De-duplication on (provider, event id): reserve before the sink, commit on success,
//! release on failure, so exactly one copy of an event is ever published and a sender's retry
//! after a failed publish goes through.
//!
//! A moka cache holds the entries with a per-entry lifetime: an in-flight reservation lives
//! only as long as a publish can take, a committed id for the filter's TTL, and the cache is
//! bounded (`max_entries`), evicting the least useful ids first under pressure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use crate::config::EventIdSource;
use crate::reason::Reason;
use crate::request::Inbound;

/// How long an unresolved reservation may block copies of the same event.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InFlight(u64),
    Committed,
}

#[derive(Clone, Debug)]
struct Entry {
    state: State,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<(Arc<str>, String), Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _: &(Arc<str>, String),
        v: &Entry,
        _: Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &(Arc<str>, String),
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub struct Dedup {
    cache: Cache<(Arc<str>, String), Entry>,
    tokens: AtomicU64,
}

pub enum Reservation<'a> {
    /// This request owns the event now: `commit` it once the sink has it; dropping it
    /// unresolved (a failed publish, a cancelled request) releases it.
    Fresh(Reserved<'a>),
    /// Already accepted within the TTL.
    Duplicate,
    /// Another copy is being published right now.
    InProgress,
}

impl Dedup {
    pub fn new(max_entries: u64) -> Dedup {
        Dedup {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(EntryExpiry)
                .build(),
            tokens: AtomicU64::new(1),
        }
    }

    pub fn reserve<'a>(&'a self, provider: &Arc<str>, id: &str) -> Reservation<'a> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let key = (provider.clone(), id.to_owned());
        let mut fresh = true;
        let mut outcome = Reservation::InProgress;
        self.cache.entry(key.clone()).and_compute_with(|existing| {
            match existing.map(|e| e.into_value().state) {
                Some(State::Committed) => {
                    fresh = false;
                    outcome = Reservation::Duplicate;
                    Op::Nop
                }
                Some(State::InFlight(_)) => {
                    fresh = false;
                    Op::Nop
                }
                None => Op::Put(Entry {
                    state: State::InFlight(token),
                    ttl: IN_FLIGHT_TTL,
                }),
            }
        });
        if fresh {
            outcome = Reservation::Fresh(Reserved {
                dedup: self,
                key,
                token,
                resolved: false,
            });
        }
        outcome
    }

    /// Replaces our own in-flight entry (and nothing else) by `op`.
    fn resolve(&self, key: &(Arc<str>, String), token: u64, op: Op<Entry>) {
        self.cache.entry(key.clone()).and_compute_with(|existing| {
            match existing.map(|e| e.into_value().state) {
                Some(State::InFlight(t)) if t == token => op,
                _ => Op::Nop,
            }
        });
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// An event this request owns until it commits it or lets it go.
pub struct Reserved<'a> {
    dedup: &'a Dedup,
    key: (Arc<str>, String),
    token: u64,
    resolved: bool,
}

impl Reserved<'_> {
    /// Marks the event accepted for `ttl`.
    pub fn commit(mut self, ttl: Duration) {
        let committed = Entry {
            state: State::Committed,
            ttl,
        };
        self.dedup
            .resolve(&self.key, self.token, Op::Put(committed));
        self.resolved = true;
    }
}

impl Drop for Reserved<'_> {
    /// Forgets the reservation so the sender's retry passes.
    fn drop(&mut self) {
        if !self.resolved {
            self.dedup.resolve(&self.key, self.token, Op::Remove);
        }
    }
}

/// Longest event id kept as sent; longer ones (and any with control or non-ASCII characters)
/// are replaced by their SHA-256, so nothing raw from a sender reaches a key, subject or header.
pub const MAX_EVENT_ID: usize = 200;

/// The event id of a request, from the filter's source.
pub fn event_id(source: &EventIdSource, req: &Inbound<'_>) -> Result<String, Reason> {
    let raw: Option<String> = match source {
        EventIdSource::Header { name, .. } => req.header(name).map(str::to_owned),
        EventIdSource::Json { pointer, .. } => match req.json().and_then(|j| j.pointer(pointer)) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        EventIdSource::BodyHash => None,
    };
    let required = matches!(
        source,
        EventIdSource::Header { required: true, .. } | EventIdSource::Json { required: true, .. }
    );
    match raw {
        Some(id) => Ok(sanitize(&id)),
        None if required => Err(Reason::MissingField),
        None => Ok(hash_id(req.body)),
    }
}

/// The event type of a request (`{event_type}` in sink templates), or `unknown`. Only
/// letters, digits and `.` `_` `-` `:` survive, so it is safe in a stream key, a NATS subject
/// (where `.` nests) or a routing key; at most 100 characters.
pub fn event_type(source: Option<&EventIdSource>, req: &Inbound<'_>) -> String {
    let raw = match source {
        Some(EventIdSource::Header { name, .. }) => req.header(name).map(str::to_owned),
        Some(EventIdSource::Json { pointer, .. }) => req
            .json()
            .and_then(|j| j.pointer(pointer))
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        _ => None,
    };
    let cleaned: String = raw
        .unwrap_or_default()
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches('.');
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed.replace("..", "._")
    }
}

fn sanitize(id: &str) -> String {
    let safe = id.len() <= MAX_EVENT_ID && id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if safe {
        id.to_owned()
    } else {
        hash_id(id.as_bytes())
    }
}

fn hash_id(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::schemes::sha256_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reserve_commit_and_release_follow_the_protocol() {
        let dedup = Dedup::new(100);
        let p: Arc<str> = Arc::from("github");
        let Reservation::Fresh(first) = dedup.reserve(&p, "a") else {
            panic!("a new id is fresh")
        };
        assert!(matches!(dedup.reserve(&p, "a"), Reservation::InProgress));
        drop(first);
        let Reservation::Fresh(second) = dedup.reserve(&p, "a") else {
            panic!("a released id passes again")
        };
        second.commit(Duration::from_secs(60));
        assert!(matches!(dedup.reserve(&p, "a"), Reservation::Duplicate));
        // Another provider's id space is separate.
        assert!(matches!(
            dedup.reserve(&Arc::from("stripe"), "a"),
            Reservation::Fresh(_)
        ));
    }

    #[test]
    fn a_stale_reservation_cannot_undo_a_commit() {
        let dedup = Dedup::new(100);
        let p: Arc<str> = Arc::from("x");
        let Reservation::Fresh(stale) = dedup.reserve(&p, "id") else {
            panic!()
        };
        // Simulate expiry of the in-flight entry and a new owner committing meanwhile.
        dedup.cache.invalidate(&(p.clone(), "id".to_string()));
        let Reservation::Fresh(owner) = dedup.reserve(&p, "id") else {
            panic!()
        };
        owner.commit(Duration::from_secs(60));
        drop(stale);
        assert!(matches!(dedup.reserve(&p, "id"), Reservation::Duplicate));
    }

    #[test]
    fn event_types_are_made_safe_for_keys_and_subjects() {
        let h = crate::schemes::test_support::headers(&[("x-github-event", "pull_request")]);
        let body = br#"{"type":"charge.succeeded","bad":"a b/c*>..d"}"#;
        let req = Inbound::new("POST", "/", None, &h, Ipv4Addr::LOCALHOST.into(), body);
        let header = EventIdSource::Header {
            name: "x-github-event".into(),
            required: false,
        };
        assert_eq!(event_type(Some(&header), &req), "pull_request");
        let json = |p: &str| EventIdSource::Json {
            pointer: p.into(),
            required: false,
        };
        assert_eq!(event_type(Some(&json("/type")), &req), "charge.succeeded");
        assert_eq!(event_type(Some(&json("/bad")), &req), "a_b_c__._d");
        assert_eq!(event_type(Some(&json("/missing")), &req), "unknown");
        assert_eq!(event_type(None, &req), "unknown");
    }

    #[test]
    fn unsafe_ids_are_hashed_and_missing_ones_fall_back_or_fail() {
        let h = crate::schemes::test_support::headers(&[("x-id", "evt_1")]);
        let req = Inbound::new(
            "POST",
            "/",
            None,
            &h,
            Ipv4Addr::LOCALHOST.into(),
            br#"{"id":"a b"}"#,
        );
        let header = EventIdSource::Header {
            name: "x-id".into(),
            required: true,
        };
        assert_eq!(event_id(&header, &req).unwrap(), "evt_1");
        let json = EventIdSource::Json {
            pointer: "/id".into(),
            required: true,
        };
        assert!(
            event_id(&json, &req).unwrap().starts_with("sha256:"),
            "spaces are not kept raw"
        );
        let missing = EventIdSource::Header {
            name: "x-other".into(),
            required: true,
        };
        assert_eq!(event_id(&missing, &req), Err(Reason::MissingField));
        let optional = EventIdSource::Header {
            name: "x-other".into(),
            required: false,
        };
        assert_eq!(event_id(&optional, &req).unwrap(), hash_id(req.body));
        assert!(sanitize(&"a".repeat(201)).starts_with("sha256:"));
        assert_eq!(sanitize(&"a".repeat(200)), "a".repeat(200));
    }
}
