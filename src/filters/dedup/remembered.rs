//! The ids this node committed, each until its own expiry: a sharded open-addressing table
//! (std's hashbrown) of 24-byte slots, the 128-bit keyed digest and the expiry in milliseconds.
//!
//! It replaces a moka cache, whose per-entry bookkeeping (the entry's `Arc`, two order-deque
//! nodes, a timer-wheel node for per-entry expiry, the frequency sketch) cost ≈300 bytes per
//! id; here it is the slot and its control byte at hashbrown's load factor, ≈30–60 bytes
//! (`bench/RESULTS.md`). What dedup needs is simpler than a general cache: an id is looked up
//! by its digest, remembered until its TTL ends, and, when `max_entries` is reached, the ids
//! nearest their end make room first (the oldest, for one TTL: the ones least likely to be
//! retried). Expired ids are dropped when looked up, by a sweep of a shard at most once a
//! minute as it takes new ids, and before anything unexpired is evicted. All work happens
//! under one shard's lock, on the calling thread: there is no background maintenance.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The table's key: the digest's two halves (8-byte aligned, so a slot is 24 bytes, not 32).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digest {
    hash: u64,
    rest: u64,
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The digest is already a keyed SipHash value: it is its own hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<Digest, u64, BuildHasherDefault<DigestHasher>>;

struct Shard {
    /// Expiry, in milliseconds since `Remembered::epoch`.
    ids: Table,
    next_sweep: u64,
}

pub struct Remembered {
    shards: Vec<Mutex<Shard>>,
    /// Ids held before a shard taking one more makes room (all shards together, so an uneven
    /// spread of digests does not evict early).
    max_entries: u64,
    count: AtomicU64,
    epoch: Instant,
}

/// How often a shard taking new ids drops its expired ones.
const SWEEP_EVERY: u64 = 60_000;
/// Most shards; fewer for a small `max_entries`, so the bound stays close to exact.
const MAX_SHARDS: usize = 64;
/// Ids per shard below which one shard fewer is used.
const MIN_PER_SHARD: u64 = 1024;

impl Remembered {
    pub fn new(max_entries: u64) -> Remembered {
        let wanted = (max_entries / MIN_PER_SHARD).clamp(1, MAX_SHARDS as u64) as usize;
        let shards = if wanted.is_power_of_two() {
            wanted
        } else {
            wanted.next_power_of_two() / 2
        };
        Remembered {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        ids: Table::default(),
                        next_sweep: SWEEP_EVERY,
                    })
                })
                .collect(),
            max_entries: max_entries.max(1),
            count: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn split(key: u128) -> Digest {
        Digest {
            hash: (key >> 64) as u64,
            rest: key as u64,
        }
    }

    fn shard(&self, digest: &Digest) -> MutexGuard<'_, Shard> {
        self.shards[digest.rest as usize & (self.shards.len() - 1)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `key` is remembered and not expired.
    pub fn contains(&self, key: u128) -> bool {
        let digest = Self::split(key);
        let now = self.now();
        let mut shard = self.shard(&digest);
        match shard.ids.get(&digest) {
            Some(&expiry) if expiry > now => true,
            Some(_) => {
                shard.ids.remove(&digest);
                self.count.fetch_sub(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Remembers `key` for `ttl` (from now), replacing an earlier expiry.
    pub fn insert(&self, key: u128, ttl: Duration) {
        self.put(key, ttl, true);
    }

    /// Remembers `key` for `ttl` unless it is remembered already; whether it was new.
    pub fn insert_new(&self, key: u128, ttl: Duration) -> bool {
        self.put(key, ttl, false)
    }

    fn put(&self, key: u128, ttl: Duration, replace: bool) -> bool {
        let digest = Self::split(key);
        let now = self.now();
        let expiry = now.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
        let mut shard = self.shard(&digest);
        if let Some(old) = shard.ids.get_mut(&digest) {
            if *old > now && !replace {
                return false;
            }
            *old = expiry;
            return true;
        }
        let before = shard.ids.len();
        let full = || self.count.load(Ordering::Relaxed) >= self.max_entries;
        if now >= shard.next_sweep || full() {
            shard.ids.retain(|_, e| *e > now);
            shard.next_sweep = now + SWEEP_EVERY;
        }
        // What the sweep dropped counts before asking again.
        self.adjust(before, shard.ids.len());
        let before = shard.ids.len();
        if full() && before > 0 {
            make_room(&mut shard.ids);
        }
        shard.ids.insert(digest, expiry);
        let after = shard.ids.len();
        drop(shard);
        self.adjust(before, after);
        true
    }

    fn adjust(&self, before: usize, after: usize) {
        if after >= before {
            self.count
                .fetch_add((after - before) as u64, Ordering::Relaxed);
        } else {
            self.count
                .fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
    }

    /// Ids held (expired ones not yet dropped included).
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Drops the eighth of a shard's ids that expire first (at least one), when all shards
/// together are full: amortized over the inserts that follow, a constant cost per id.
fn make_room(ids: &mut Table) {
    let mut expiries: Vec<u64> = ids.values().copied().collect();
    let k = (expiries.len() / 8).max(1) - 1;
    let (_, threshold, _) = expiries.select_nth_unstable(k);
    let threshold = *threshold;
    ids.retain(|_, e| *e > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_remembered_until_its_ttl_ends() {
        let r = Remembered::new(100);
        r.insert(7, Duration::from_millis(50));
        assert!(r.contains(7));
        assert!(!r.contains(8));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!r.contains(7), "expired");
        assert_eq!(r.len(), 0, "an expired id found is dropped");
    }

    #[test]
    fn insert_new_keeps_a_live_id_and_takes_an_expired_one() {
        let r = Remembered::new(100);
        assert!(r.insert_new(1, Duration::from_secs(60)));
        assert!(!r.insert_new(1, Duration::from_secs(60)));
        r.insert(2, Duration::ZERO);
        assert!(r.insert_new(2, Duration::from_secs(60)));
        assert!(r.contains(2));
    }

    #[test]
    fn a_full_table_drops_the_ids_nearest_their_end_first() {
        let r = Remembered::new(16);
        assert_eq!(r.shards.len(), 1);
        for i in 0..16u128 {
            r.insert(i, Duration::from_secs(100 + i as u64));
        }
        assert_eq!(r.len(), 16);
        r.insert(99, Duration::from_secs(1000));
        assert!(r.len() <= 16, "bounded: {}", r.len());
        assert!(!r.contains(0), "the first to expire made room");
        assert!(r.contains(15) && r.contains(99));
    }

    #[test]
    fn the_bound_holds_across_shards() {
        let r = Remembered::new(100_000);
        assert!(r.shards.len() > 1);
        for i in 0..300_000u128 {
            // Digests are uniform: spread the test's keys like SipHash output would be.
            let key = i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            r.insert(key, Duration::from_secs(3600));
        }
        assert!(r.len() <= 100_000, "{}", r.len());
        assert!(r.len() > 95_000, "{}", r.len());
    }
}
