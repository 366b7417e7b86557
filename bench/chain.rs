//! Microbenches of the hot path without the network, so a regression in any of them shows:
//! each preset's `verify`, the header and raw-request parsing, and one whole accepted request
//! through the chain (head checks, body checks, event id, dedup reserve + commit, envelope,
//! spool line encoding).
//!
//!     cargo bench --bench chain
//!
//! Results: bench/RESULTS.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::filters::config::Filter;
use portcullis::filters::{self, dedup};
use portcullis::loader::load_filter;
use portcullis::request::Inbound;
use portcullis::schemes::Outbound;

const NOW: i64 = 1_700_000_000;
const WSS: &str = "signature: { header: X-WSS-Signature, algorithm: sha256, encoding: hex, signed: \"{timestamp}{body}\" }\ntimestamp: { header: X-WSS-Timestamp, format: unix }\n";

/// Every preset that checks a signature, with what it needs beyond a secret.
const PRESETS: &[(&str, &str)] = &[
    ("github", ""),
    ("github-sha1", ""),
    ("stripe", ""),
    ("standard-webhooks", ""),
    ("svix", ""),
    ("slack", ""),
    ("shopify", ""),
    (
        "twilio",
        "public_url: https://hooks.example.com/webhook/b\n",
    ),
    ("paddle", ""),
    (
        "square",
        "public_url: https://hooks.example.com/webhook/b\n",
    ),
    ("zoom", ""),
    ("linear", ""),
    ("hmac", WSS),
];

fn filter(dir: &Path, preset: &str, extra: &str) -> Filter {
    let secret = if matches!(preset, "standard-webhooks" | "svix") {
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    } else {
        "It's a Secret to Everybody"
    };
    let path = dir.join(format!("{preset}.yaml"));
    std::fs::write(
        &path,
        format!("name: b\npreset: {preset}\nsecrets: [\"{secret}\"]\n{extra}"),
    )
    .unwrap();
    let (filter, problems) = load_filter(&path);
    filter.unwrap_or_else(|| panic!("{preset}: {problems:?}"))
}

/// The headers of a request with `body` that `filter` accepts at `NOW`.
fn signed(filter: &Filter, body: &[u8], id: &str) -> http::HeaderMap {
    let form = filter.preset == "twilio";
    let content_type = if form {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in filter.scheme.sign(&Outbound {
        body,
        timestamp: NOW,
        id,
        url: filter.public_url.as_deref(),
        content_type: Some(content_type),
    }) {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    headers.insert("content-type", content_type.parse().unwrap());
    headers
}

fn inbound<'a>(headers: &'a http::HeaderMap, body: &'a [u8]) -> Inbound<'a> {
    Inbound::new(
        "POST",
        "/webhook/b",
        None,
        headers,
        std::net::Ipv4Addr::LOCALHOST.into(),
        body,
    )
}

/// A 1 KiB form body, as Twilio posts.
fn form_body() -> Vec<u8> {
    let mut body = b"AccountSid=AC123&CallSid=CA456&From=%2B15550001&To=%2B15550002&Body=".to_vec();
    body.resize(1024, b'x');
    body
}

/// A 1 KiB JSON body like a provider's (with Linear's signed timestamp, in milliseconds).
fn body() -> Vec<u8> {
    let mut body =
        br#"{"id":"evt_1","type":"invoice.paid","action":"opened","webhookTimestamp":1700000000000,"data":{"pad":""#.to_vec();
    body.resize(1024 - 4, b'x');
    body.extend_from_slice(br#""}}"#);
    body.push(b'\n');
    body
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let body = body();
    let mut group = c.benchmark_group("verify_1KiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let form = form_body();
    for (preset, extra) in PRESETS {
        let filter = filter(dir.path(), preset, extra);
        let body = if *preset == "twilio" { &form } else { &body };
        let headers = signed(&filter, body, "evt_1");
        filter.scheme.verify(&inbound(&headers, body), NOW).unwrap();
        group.bench_function(*preset, |b| {
            b.iter(|| {
                filter
                    .scheme
                    .verify(black_box(&inbound(&headers, body)), NOW)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let body = body();
    let mut group = c.benchmark_group("parse");
    // What `portcullis verify` reads: a captured request, head and body.
    let github = filter(dir.path(), "github", "");
    let mut raw = format!(
        "POST /webhook/github HTTP/1.1\r\nHost: hooks.example.com\r\nUser-Agent: GitHub-Hookshot/abc\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in signed(&github, &body, "d-1").iter() {
        raw.extend_from_slice(format!("{k}: {}\r\n", v.to_str().unwrap()).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&body);
    group.bench_function("raw_request", |b| {
        b.iter(|| portcullis::rawhttp::parse(black_box(&raw)).unwrap())
    });
    // A Stripe header with a rotated secret's second signature: the k=v list every pair
    // scheme splits.
    let header = format!(
        "t={NOW},v1={},v1={},v0={}",
        "a".repeat(64),
        "b".repeat(64),
        "c".repeat(64)
    );
    group.bench_function("signature_pairs", |b| {
        b.iter(|| portcullis::schemes::pairs(black_box(&header), ',').count())
    });
    // The JSON pointer lookup of an event id (parses the body once).
    let headers = http::HeaderMap::new();
    let source = portcullis::filters::dedup::EventIdSource::Json {
        pointer: "/id".into(),
        required: true,
    };
    group.bench_function("event_id_json_1KiB", |b| {
        b.iter(|| dedup::event_id(&source, black_box(&inbound(&headers, &body))).unwrap())
    });
    group.finish();
}

/// One accepted request, everything but the sockets and the fsync.
fn chain(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let body = body();
    let extra = "allow: [\"127.0.0.0/8\", \"10.0.0.0/8\"]\nrate_limit: { per_second: 100000000, per_ip_per_second: 100000000 }\nmax_body: 64KiB\ncontent_types: [application/json]\nrequire_fields: [action]\nevent_id: { header: X-GitHub-Delivery }\n";
    let filter = filter(dir.path(), "github", extra);
    let chain = filters::chain(&filter);
    let store = dedup::Dedup::new(1_000_000);
    let provider: Arc<str> = Arc::from("github");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let headers: Vec<http::HeaderMap> = (0..1024)
        .map(|i| {
            let mut h = signed(&filter, &body, "unused");
            h.insert("x-github-delivery", format!("d-{i}").parse().unwrap());
            h
        })
        .collect();
    let mut round = 0u64;
    let mut group = c.benchmark_group("chain");
    group.throughput(Throughput::Elements(1));
    group.bench_function("github_accepted_to_spool_line", |b| {
        b.iter(|| {
            round += 1;
            let headers = &headers[(round % 1024) as usize];
            let head = inbound(headers, b"");
            filters::check_head(&chain, &head).unwrap();
            let req = inbound(headers, &body);
            assert!(filters::check_body(&chain, &req, NOW, false)
                .unwrap()
                .is_none());
            // A fresh id each round, as on the wire: the real insert, not a duplicate hit.
            let id = format!(
                "{}-{round}",
                dedup::event_id(&filter.event_id, &req).unwrap()
            );
            let envelope = portcullis::sinks::Envelope {
                provider: "github".into(),
                event_id: id.clone(),
                event_type: dedup::event_type(filter.event_type.as_ref(), &req),
                received_at: "2026-11-23T12:00:00.000Z".into(),
                source_ip: "127.0.0.1".into(),
                verified: true,
                reason: None,
                headers: vec![("content-type".into(), "application/json".into())],
                map: None,
                body: bytes::Bytes::copy_from_slice(&body),
                dedup_ttl: None,
            };
            let line = portcullis::sinks::spool::encode_line(black_box(&envelope));
            runtime.block_on(async {
                match store.reserve(&provider, &id).await {
                    dedup::Reservation::Fresh(held) => held.commit(Duration::from_secs(60)).await,
                    _ => panic!("a fresh id was not fresh"),
                }
            });
            line.len()
        })
    });
    group.finish();
}

criterion_group!(benches, verify, parsing, chain);
criterion_main!(benches);
