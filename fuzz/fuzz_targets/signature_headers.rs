//! Every preset's `verify` against arbitrary signature, timestamp and id header values and
//! bodies: a rejection is fine, a panic is the bug, and what `sign` made (undamaged) must verify.
//! One filter per preset, built once.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis::filters::config::Filter;
use portcullis::request::Inbound;
use portcullis::schemes::{Outbound, PRESETS};

const WSS: &str = "signature: { header: X-Webhook-Signature, algorithm: [sha256, sha512], encoding: hex, prefix: \"{algorithm}=\", prefix_optional: true, signed: \"{timestamp}.{id}.{body}\" }\ntimestamp: { header: X-Webhook-Timestamp, format: rfc3339 }\nevent_id: { header: X-Webhook-Id }\n";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    preset: u8,
    /// Start from a genuine signature and damage it, or use raw bytes.
    mutate_genuine: bool,
    signature: &'a [u8],
    timestamp: &'a [u8],
    id: &'a [u8],
    query: Option<&'a str>,
    repeat_signature: bool,
    body: &'a [u8],
    now: i64,
}

fn filters() -> &'static Vec<Filter> {
    static FILTERS: OnceLock<Vec<Filter>> = OnceLock::new();
    FILTERS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        PRESETS
            .iter()
            .filter(|p| p.needs_secret)
            .map(|p| {
                // Two secrets in each preset's own format (rotation: either verifies).
                let (secret, second) = if p.name.contains("standard") || p.name == "svix" {
                    (
                        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                        "whsec_c2Vjb25kLXNlY3JldC1mb3ItZnV6emluZw==",
                    )
                } else if p.name == "url-key" {
                    (
                        "wh_0123456789abcdefghijklmnopqrstuv",
                        "wh_vutsrqponmlkjihgfedcba9876543210",
                    )
                } else {
                    ("secret", "second")
                };
                let extra = match p.name {
                    "hmac" => WSS,
                    _ if p.needs_public_url => "public_url: https://h.example/webhook/f\n",
                    _ => "",
                };
                let yaml = format!(
                    "name: f\npreset: {}\nsecrets: [\"{secret}\", \"{second}\"]\n{extra}",
                    p.name
                );
                let path = dir.join(format!("{}.yaml", p.name));
                let (filter, problems) = portcullis::loader::load_filter_text(&path, &yaml);
                filter.unwrap_or_else(|| panic!("{}: {problems:?}", p.name))
            })
            .collect()
    })
}

fn header_names(filter: &Filter) -> [&'static str; 3] {
    // The signature, timestamp and id headers each preset reads (hmac: the WSS block above).
    match filter.preset {
        "standard-webhooks" => ["webhook-signature", "webhook-timestamp", "webhook-id"],
        "svix" => ["svix-signature", "svix-timestamp", "svix-id"],
        "slack" => ["x-slack-signature", "x-slack-request-timestamp", "x"],
        "zoom" => ["x-zm-signature", "x-zm-request-timestamp", "x"],
        "hmac" => ["x-webhook-signature", "x-webhook-timestamp", "x-webhook-id"],
        name => [
            portcullis::schemes::preset(name)
                .and_then(|p| p.signature_header)
                .unwrap_or("x"),
            "x",
            "x",
        ],
    }
}

fuzz_target!(|input: Input<'_>| {
    let filters = filters();
    let filter = &filters[input.preset as usize % filters.len()];
    let [sig_name, ts_name, id_name] = header_names(filter);
    let mut headers = http::HeaderMap::new();
    fn put(headers: &mut http::HeaderMap, name: &'static str, value: &[u8]) {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    if input.mutate_genuine {
        let signed = filter.scheme.sign(&Outbound {
            body: input.body,
            timestamp: input.now,
            id: "evt_1",
            url: filter.public_url.as_deref(),
            content_type: Some("application/x-www-form-urlencoded"),
        });
        for (name, value) in signed {
            let mut bytes = value.into_bytes();
            for (i, b) in input.signature.iter().enumerate() {
                if bytes.is_empty() {
                    break;
                }
                let at = (*b as usize * 7 + i) % bytes.len();
                bytes[at] ^= b | 1;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(&bytes),
            ) {
                headers.append(n, v);
            }
        }
    } else {
        put(&mut headers, sig_name, input.signature);
        if input.repeat_signature {
            put(&mut headers, sig_name, input.signature);
        }
        put(&mut headers, ts_name, input.timestamp);
        put(&mut headers, id_name, input.id);
    }
    put(
        &mut headers,
        "content-type",
        b"application/x-www-form-urlencoded",
    );
    let req = Inbound::new(
        "POST",
        "/webhook/f",
        input.query,
        &headers,
        std::net::Ipv4Addr::LOCALHOST.into(),
        input.body,
    );
    let verdict = filter.scheme.verify(&req, input.now);
    // `sign` and `verify` share their code: an undamaged genuine request must verify. (Not for
    // linear, whose timestamp is inside the body, nor url-key, whose key is in the path.)
    let undamaged = input.mutate_genuine && input.signature.is_empty() && input.query.is_none();
    if undamaged
        && (0..=4_102_444_800).contains(&input.now)
        && !matches!(filter.preset, "linear" | "url-key")
    {
        assert_eq!(
            verdict,
            Ok(()),
            "{}: genuine signature refused",
            filter.preset
        );
    }
});
