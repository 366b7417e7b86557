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

#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// This request owns the event now; commit or release it.
    Fresh(u64),
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

    pub fn reserve(&self, provider: &Arc<str>, id: &str) -> Reservation {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut outcome = Reservation::Fresh(token);
        self.cache
            .entry((provider.clone(), id.to_owned()))
            .and_compute_with(|existing| match existing.map(|e| e.into_value().state) {
                Some(State::Committed) => {
                    outcome = Reservation::Duplicate;
                    Op::Nop
                }
                Some(State::InFlight(_)) => {
                    outcome = Reservation::InProgress;
                    Op::Nop
                }
                None => Op::Put(Entry {
                    state: State::InFlight(token),
                    ttl: IN_FLIGHT_TTL,
                }),
            });
        outcome
    }

    /// Marks the event accepted for `ttl`, if this request still owns the reservation.
    pub fn commit(&self, provider: &Arc<str>, id: &str, token: u64, ttl: Duration) {
        self.resolve(
            provider,
            id,
            token,
            Op::Put(Entry {
                state: State::Committed,
                ttl,
            }),
        );
    }

    /// Forgets the reservation so the sender's retry passes.
    pub fn release(&self, provider: &Arc<str>, id: &str, token: u64) {
        self.resolve(provider, id, token, Op::Remove);
    }

    fn resolve(&self, provider: &Arc<str>, id: &str, token: u64, op: Op<Entry>) {
        self.cache
            .entry((provider.clone(), id.to_owned()))
            .and_compute_with(|existing| match existing.map(|e| e.into_value().state) {
                Some(State::InFlight(t)) if t == token => op,
                _ => Op::Nop,
            });
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// Releases a reservation that was neither committed nor released, e.g. when the request's
/// task is dropped mid-publish; the event must not stay blocked until the in-flight TTL.
pub struct ReservationGuard<'a> {
    pub dedup: &'a Dedup,
    pub provider: &'a Arc<str>,
    pub id: &'a str,
    pub token: u64,
    pub resolved: bool,
}

impl Drop for ReservationGuard<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.dedup.release(self.provider, self.id, self.token);
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
        let Reservation::Fresh(t) = dedup.reserve(&p, "a") else {
            panic!()
        };
        assert_eq!(dedup.reserve(&p, "a"), Reservation::InProgress);
        dedup.release(&p, "a", t);
        let Reservation::Fresh(t2) = dedup.reserve(&p, "a") else {
            panic!("released ids pass again")
        };
        dedup.commit(&p, "a", t2, Duration::from_secs(60));
        assert_eq!(dedup.reserve(&p, "a"), Reservation::Duplicate);
        // A stale token cannot undo the commit.
        dedup.release(&p, "a", t);
        assert_eq!(dedup.reserve(&p, "a"), Reservation::Duplicate);
        // Another provider's id space is separate.
        assert!(matches!(
            dedup.reserve(&Arc::from("stripe"), "a"),
            Reservation::Fresh(_)
        ));
    }

    #[test]
    fn a_dropped_guard_releases_its_reservation() {
        let dedup = Dedup::new(100);
        let p: Arc<str> = Arc::from("x");
        let Reservation::Fresh(token) = dedup.reserve(&p, "id") else {
            panic!()
        };
        drop(ReservationGuard {
            dedup: &dedup,
            provider: &p,
            id: "id",
            token,
            resolved: false,
        });
        assert!(matches!(dedup.reserve(&p, "id"), Reservation::Fresh(_)));
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
