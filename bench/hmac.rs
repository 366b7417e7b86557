//! HMAC-SHA256 implementations side by side: RustCrypto's hmac + sha2 (what the product uses)
//! against ring (a dev-dependency only, for this comparison). Each scheme's whole verify: bench/chain.rs.
//!
//!     cargo bench --bench hmac
//!
//! Results and the choice they support: bench/RESULTS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY: &[u8] = b"It's a Secret to Everybody";

fn implementations(c: &mut Criterion) {
    let mut group = c.benchmark_group("hmac_sha256");
    for size in [1024usize, 64 * 1024] {
        let body = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);
        group.bench_with_input(BenchmarkId::new("ring", size), &body, |b, body| {
            b.iter(|| ring::hmac::sign(&ring_key, black_box(body)))
        });
        // Both keyed once up front, as the gateway keys its secrets once at load.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(KEY).unwrap();
        group.bench_with_input(BenchmarkId::new("hmac+sha2", size), &body, |b, body| {
            b.iter(|| {
                let mut mac = keyed.clone();
                mac.update(black_box(body));
                mac.finalize().into_bytes()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, implementations);
criterion_main!(benches);
