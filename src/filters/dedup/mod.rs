//! De-duplication on (provider, event id): reserve before the sink, commit on success,
//! release on failure, so exactly one copy of an event is ever published and a sender's retry
//! after a failed publish goes through.
//!
//! Committed ids live in [`remembered`], each until its own expiry (the filter's TTL), bounded
//! by `max_entries` and making room with the ids nearest their end. They are kept as a 128-bit
//! keyed digest of (provider, id), not the strings: 16 bytes whatever the id's length, and a
//! sender who cannot know the process's random keys cannot aim two ids at one digest (by
//! chance: about 1 in 10^26 for a million ids). Reservations in flight (a publish takes
//! milliseconds) sit in a small sharded map beside it, so an accepted event costs one write
//! of a remembered id.
//!
//! With `backend: redis` ([`shared`]) the fleet shares the protocol in Redis, and the node's
//! own table only remembers ids it committed, answering their retries without a round
//! trip. When Redis cannot answer, `on_error` decides: refuse with 503 `dedup_unavailable`
//! (the sender retries later) or fall back to this node's table alone.

pub mod config;
mod journal;
mod remembered;
mod shared;
pub use config::{DedupOnError, EventIdSource, SharedDedup};
pub use journal::{CatchUp, Journal, Recovery};
pub use shared::SharedStore;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::reason::Reason;
use crate::request::Inbound;

/// How long an unresolved reservation in the fleet's store may block copies of the same
/// event (a node that dies mid-publish leaves one behind).
const IN_FLIGHT_TTL: Duration = Duration::from_secs(120);

/// Shards of the in-flight map (a power of two).
const SHARDS: usize = 64;

/// Two SipHash-1-3 digests of (provider, id) under independent random keys.
type Key = u128;

pub struct Dedup {
    /// Committed ids.
    remembered: remembered::Remembered,
    /// Reservations of this node being published, by token.
    in_flight: Vec<Mutex<HashMap<Key, u64>>>,
    digest: [RandomState; 2],
    tokens: AtomicU64,
    shared: Option<(Arc<SharedStore>, DedupOnError)>,
    /// Makes this node's reservation tokens unique in the fleet.
    node: String,
}

pub enum Reservation<'a> {
    /// This request owns the event now: `commit` it once the sink has it, `release` it if the
    /// sink failed; dropping it unresolved (a cancelled request) releases it too.
    Fresh(Reserved<'a>),
    /// Already accepted within the TTL.
    Duplicate,
    /// Another copy is being published right now.
    InProgress,
    /// The shared store did not answer and `on_error: reject`.
    Unavailable,
}

enum Hold {
    Local(u64),
    Shared { key: String, token: String },
}

impl Dedup {
    pub fn new(max_entries: u64) -> Dedup {
        Dedup {
            remembered: remembered::Remembered::new(max_entries),
            in_flight: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            digest: [RandomState::new(), RandomState::new()],
            tokens: AtomicU64::new(1),
            shared: None,
            node: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The fleet's store in Redis, with this node's cache of committed ids in front.
    pub fn shared(max_entries: u64, store: SharedStore, on_error: DedupOnError) -> Dedup {
        Dedup {
            shared: Some((Arc::new(store), on_error)),
            ..Dedup::new(max_entries)
        }
    }

    pub async fn reserve<'a>(&'a self, provider: &str, id: &str) -> Reservation<'a> {
        let Some((store, on_error)) = &self.shared else {
            return self.reserve_local(provider, id);
        };
        let key = self.key(provider, id);
        if self.remembered.contains(key) {
            return Reservation::Duplicate;
        }
        let shared_key = store.key(provider, id);
        let token = format!(
            "inflight:{}:{}",
            self.node,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        match store.reserve(&shared_key, &token, IN_FLIGHT_TTL).await {
            Ok(shared::Claim::Fresh) => Reservation::Fresh(Reserved {
                dedup: self,
                key,
                hold: Hold::Shared {
                    key: shared_key,
                    token,
                },
                resolved: false,
            }),
            Ok(shared::Claim::Duplicate) => Reservation::Duplicate,
            Ok(shared::Claim::InProgress) => Reservation::InProgress,
            Err(e) => {
                crate::metrics::DEDUP_ERRORS.inc();
                match on_error {
                    DedupOnError::Reject => {
                        tracing::warn!(error = %e, "dedup store unavailable: refusing (on_error: reject)");
                        Reservation::Unavailable
                    }
                    DedupOnError::Local => {
                        tracing::warn!(error = %e, "dedup store unavailable: this node's cache decides (on_error: local)");
                        crate::metrics::DEDUP_LOCAL_FALLBACKS.inc();
                        self.reserve_local(provider, id)
                    }
                }
            }
        }
    }

    fn reserve_local<'a>(&'a self, provider: &str, id: &str) -> Reservation<'a> {
        let key = self.key(provider, id);
        // The check and the claim happen under the shard's lock, as does a commit's move from
        // in flight to the cache, so no copy slips between them.
        let mut in_flight = self.shard(&key);
        if self.remembered.contains(key) {
            return Reservation::Duplicate;
        }
        if in_flight.contains_key(&key) {
            return Reservation::InProgress;
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        in_flight.insert(key, token);
        drop(in_flight);
        Reservation::Fresh(Reserved {
            dedup: self,
            key,
            hold: Hold::Local(token),
            resolved: false,
        })
    }

    fn key(&self, provider: &str, id: &str) -> Key {
        let [high, low] = &self.digest;
        (u128::from(high.hash_one((provider, id))) << 64) | u128::from(low.hash_one((provider, id)))
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, u64>> {
        let i = *key as usize & (SHARDS - 1);
        self.in_flight[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends our own reservation (and nothing else), remembering the id if `committed`.
    fn resolve(&self, key: &Key, token: u64, committed: Option<Duration>) {
        let mut in_flight = self.shard(key);
        if in_flight.get(key) != Some(&token) {
            return;
        }
        if let Some(ttl) = committed {
            self.remembered.insert(*key, ttl);
        }
        in_flight.remove(key);
    }

    pub fn entries(&self) -> u64 {
        self.remembered.len()
    }

    /// Remembers an id accepted before this process started (read back by [`Recovery`]) for
    /// the `remaining` part of its TTL; false when it was known already.
    pub fn remember(&self, provider: &str, id: &str, remaining: Duration) -> bool {
        self.remembered
            .insert_new(self.key(provider, id), remaining)
    }

    #[cfg(test)]
    fn entries_now(&self) -> u64 {
        self.remembered.len()
    }

    /// The fleet's Redis store, if there is one (fleet-scope rate limits count there too).
    pub fn store(&self) -> Option<Arc<SharedStore>> {
        self.shared.as_ref().map(|(store, _)| store.clone())
    }

    /// For `/readyz`: whether the shared store answers (always true without one).
    pub async fn ready(&self) -> bool {
        match &self.shared {
            Some((store, _)) => store.ready().await,
            None => true,
        }
    }
}

/// An event this request owns until it commits it or lets it go.
pub struct Reserved<'a> {
    dedup: &'a Dedup,
    key: Key,
    hold: Hold,
    resolved: bool,
}

impl Reserved<'_> {
    /// Marks the event accepted for `ttl`.
    pub async fn commit(mut self, ttl: Duration) {
        self.resolved = true;
        match &self.hold {
            Hold::Local(token) => self.dedup.resolve(&self.key, *token, Some(ttl)),
            Hold::Shared { key, token } => {
                self.dedup.remembered.insert(self.key, ttl);
                let Some((store, _)) = &self.dedup.shared else {
                    return;
                };
                match store.commit(key, token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        "dedup reservation expired before its commit: another node may publish a copy"
                    ),
                    Err(e) => {
                        crate::metrics::DEDUP_ERRORS.inc();
                        tracing::error!(error = %e, "event accepted but not recorded in the dedup store: another node may accept a retry")
                    }
                }
            }
        }
    }

    /// Lets the event go after a failed publish, so the sender's retry passes.
    pub async fn release(mut self) {
        self.resolved = true;
        match &self.hold {
            Hold::Local(token) => self.dedup.resolve(&self.key, *token, None),
            Hold::Shared { key, token } => {
                if let Some((store, _)) = &self.dedup.shared {
                    if let Err(e) = store.release(key, token).await {
                        crate::metrics::DEDUP_ERRORS.inc();
                        tracing::warn!(error = %e, "dedup reservation not released: retries get 409 until it expires");
                    }
                }
            }
        }
    }
}

impl Drop for Reserved<'_> {
    /// An unresolved reservation (a cancelled request) is released.
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        match &self.hold {
            Hold::Local(token) => self.dedup.resolve(&self.key, *token, None),
            Hold::Shared { key, token } => {
                let (Some((store, _)), Ok(runtime)) =
                    (&self.dedup.shared, tokio::runtime::Handle::try_current())
                else {
                    return;
                };
                let (store, key, token) = (store.clone(), key.clone(), token.clone());
                runtime.spawn(async move {
                    let _ = store.release(&key, &token).await;
                });
            }
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

    #[tokio::test]
    async fn reserve_commit_and_release_follow_the_protocol() {
        let dedup = Dedup::new(100);
        let p: Arc<str> = Arc::from("github");
        let Reservation::Fresh(first) = dedup.reserve(&p, "a").await else {
            panic!("a new id is fresh")
        };
        assert!(matches!(
            dedup.reserve(&p, "a").await,
            Reservation::InProgress
        ));
        drop(first);
        let Reservation::Fresh(second) = dedup.reserve(&p, "a").await else {
            panic!("a released id passes again")
        };
        second.commit(Duration::from_secs(60)).await;
        assert!(matches!(
            dedup.reserve(&p, "a").await,
            Reservation::Duplicate
        ));
        // Another provider's id space is separate.
        assert!(matches!(
            dedup.reserve(&Arc::from("stripe"), "a").await,
            Reservation::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn provider_and_id_are_kept_apart_in_the_digest() {
        let dedup = Dedup::new(100);
        let Reservation::Fresh(held) = dedup.reserve("ab", "c").await else {
            panic!("a new id is fresh")
        };
        held.commit(Duration::from_secs(60)).await;
        assert!(matches!(
            dedup.reserve("a", "bc").await,
            Reservation::Fresh(_)
        ));
        assert!(matches!(
            dedup.reserve("ab", "c").await,
            Reservation::Duplicate
        ));
        assert_ne!(dedup.key("ab", "c"), dedup.key("a", "bc"));
        assert_ne!(
            dedup.key("p", "x"),
            Dedup::new(1).key("p", "x"),
            "keys are per process"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_copies_yield_exactly_one_fresh_reservation() {
        let dedup = Arc::new(Dedup::new(10_000));
        let p: Arc<str> = Arc::from("x");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (dedup, p) = (dedup.clone(), p.clone());
                tokio::spawn(async move {
                    let mut fresh = Vec::new();
                    for i in 0..500 {
                        let id = format!("id-{i}");
                        if let Reservation::Fresh(r) = dedup.reserve(&p, &id).await {
                            tokio::task::yield_now().await;
                            r.commit(Duration::from_secs(60)).await;
                            fresh.push(id);
                        }
                    }
                    fresh
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "an id was reserved fresh twice");
        assert_eq!(all.len(), 500);
    }

    #[tokio::test]
    async fn a_stale_reservation_cannot_undo_a_commit() {
        let dedup = Dedup::new(100);
        let p: Arc<str> = Arc::from("x");
        let Reservation::Fresh(stale) = dedup.reserve(&p, "id").await else {
            panic!()
        };
        // Simulate the stale hold losing its entry and a new owner committing meanwhile.
        let key = dedup.key(&p, "id");
        dedup.shard(&key).remove(&key);
        let Reservation::Fresh(owner) = dedup.reserve(&p, "id").await else {
            panic!()
        };
        owner.commit(Duration::from_secs(60)).await;
        drop(stale);
        assert!(matches!(
            dedup.reserve(&p, "id").await,
            Reservation::Duplicate
        ));
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
