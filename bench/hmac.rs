//! HMAC-SHA256 implementations side by side (ring, which the product uses, against RustCrypto's
//! hmac + sha2, kept here as a dev-dependency only), then the product's own verify path.
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

/// The whole verify of one scheme over a 1 KiB body, headers included.
fn scheme_verify(c: &mut Criterion) {
    use portcullis::request::Inbound;
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = vec![b'x'; 1024];
    let mut group = c.benchmark_group("verify_1KiB");
    for (preset, extra) in [
        ("github", ""),
        ("stripe", ""),
        ("standard-webhooks", ""),
        ("slack", ""),
    ] {
        let secret = if preset == "standard-webhooks" {
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        } else {
            "secret"
        };
        let path = dir.join(format!("{preset}.yaml"));
        std::fs::write(
            &path,
            format!("name: b\npreset: {preset}\nsecrets: [\"{secret}\"]\n{extra}"),
        )
        .unwrap();
        let filter = portcullis::config::load_filter(&path).0.unwrap();
        let now = 1_700_000_000;
        let signed = filter.scheme.sign(&portcullis::schemes::Outbound {
            body: &body,
            timestamp: now,
            id: "evt_1",
            url: None,
        });
        let mut headers = http::HeaderMap::new();
        for (k, v) in &signed {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        group.bench_function(preset, |b| {
            b.iter(|| {
                let req = Inbound::new(
                    "POST",
                    "/",
                    None,
                    &headers,
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    &body,
                );
                filter.scheme.verify(black_box(&req), now).unwrap()
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, implementations, scheme_verify);
criterion_main!(benches);
