//! Signature schemes: one file per provider family, each able to `sign` and `verify` with the
//! same code, so the CLI, the tests and a future outbound dispatcher share one implementation.
//!
//! Everything a scheme needs is prepared once at config load (decoded secrets, HMAC keys,
//! parsed templates); `verify` on the hot path only hashes and compares in constant time.

pub mod config;
mod hmac;
mod paddle;
mod standard_webhooks;
mod stripe;
mod twilio;
pub mod url_key;

use std::time::Duration;

use ::hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

pub use self::hmac::{HmacScheme, SignatureSpec, TimestampFormat, TimestampSpec};
pub use self::url_key::{generate as url_key_generate, validate as url_key_validate};
use crate::reason::Reason;
use crate::request::Inbound;

pub use crate::config::secrets::Secret;

/// What the sender of a message knows: used by `sign`.
pub struct Outbound<'a> {
    pub body: &'a [u8],
    pub timestamp: i64,
    pub id: &'a str,
    /// The public URL the provider calls, including any query string.
    pub url: Option<&'a str>,
    /// The request's content type (Twilio signs form posts and other bodies differently).
    pub content_type: Option<&'a str>,
}

pub trait Scheme: Send + Sync {
    /// Checks signature then timestamp freshness against the raw request. `now` is unix seconds.
    fn verify(&self, req: &Inbound<'_>, now: i64) -> Result<(), Reason>;
    /// The headers (name, value) of a request that `verify` accepts, signed with the first secret.
    fn sign(&self, msg: &Outbound<'_>) -> Vec<(String, String)>;
    /// For schemes that carry the key in the URL path (`url-key`): the path suffix to append.
    fn path_suffix(&self) -> Option<String> {
        None
    }
    /// A query string the signed request must carry (Twilio's `bodySHA256` of a JSON body).
    fn sign_query(&self, _msg: &Outbound<'_>) -> Option<String> {
        None
    }
}

/// Where a preset finds the event id when the filter does not say.
#[derive(Debug, Clone, Copy)]
pub enum DefaultEventId {
    Header(&'static str),
    Json(&'static str),
    BodyHash,
}

/// The provider facts a preset fixes: header names, defaults and what it requires.
pub struct Preset {
    pub name: &'static str,
    pub event_id: DefaultEventId,
    /// Where the event type (`{event_type}` in sink templates) is, if the provider says.
    pub event_type: Option<DefaultEventId>,
    /// Default timestamp window; `None` for providers that send no signed timestamp.
    pub tolerance: Option<Duration>,
    /// Headers copied into the envelope by default (beside content-type and user-agent).
    pub forward_headers: &'static [&'static str],
    pub needs_secret: bool,
    pub needs_public_url: bool,
    /// The header that carries the signature: what `forward_headers` never copies by default.
    pub signature_header: Option<&'static str>,
}

const FIVE_MINUTES: Option<Duration> = Some(Duration::from_secs(300));

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "standard-webhooks",
        event_id: DefaultEventId::Header("webhook-id"),
        event_type: Some(DefaultEventId::Json("/type")),
        tolerance: FIVE_MINUTES,
        forward_headers: &["webhook-id", "webhook-timestamp"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("webhook-signature"),
    },
    Preset {
        name: "svix",
        event_id: DefaultEventId::Header("svix-id"),
        event_type: Some(DefaultEventId::Json("/type")),
        tolerance: FIVE_MINUTES,
        forward_headers: &["svix-id", "svix-timestamp"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("svix-signature"),
    },
    Preset {
        name: "github",
        event_id: DefaultEventId::Header("x-github-delivery"),
        event_type: Some(DefaultEventId::Header("x-github-event")),
        tolerance: None,
        forward_headers: &["x-github-event", "x-github-delivery", "x-github-hook-id"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("x-hub-signature-256"),
    },
    Preset {
        name: "github-sha1",
        event_id: DefaultEventId::Header("x-github-delivery"),
        event_type: Some(DefaultEventId::Header("x-github-event")),
        tolerance: None,
        forward_headers: &["x-github-event", "x-github-delivery", "x-github-hook-id"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("x-hub-signature"),
    },
    Preset {
        name: "stripe",
        event_id: DefaultEventId::Json("/id"),
        event_type: Some(DefaultEventId::Json("/type")),
        tolerance: FIVE_MINUTES,
        forward_headers: &[],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("stripe-signature"),
    },
    Preset {
        name: "slack",
        event_id: DefaultEventId::Json("/event_id"),
        event_type: Some(DefaultEventId::Json("/event/type")),
        tolerance: FIVE_MINUTES,
        forward_headers: &["x-slack-request-timestamp", "x-slack-retry-num"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("x-slack-signature"),
    },
    Preset {
        name: "shopify",
        event_id: DefaultEventId::Header("x-shopify-webhook-id"),
        event_type: Some(DefaultEventId::Header("x-shopify-topic")),
        tolerance: None,
        forward_headers: &[
            "x-shopify-topic",
            "x-shopify-webhook-id",
            "x-shopify-shop-domain",
            "x-shopify-api-version",
        ],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("x-shopify-hmac-sha256"),
    },
    Preset {
        name: "twilio",
        event_id: DefaultEventId::Header("i-twilio-idempotency-token"),
        event_type: None,
        tolerance: None,
        forward_headers: &["i-twilio-idempotency-token"],
        needs_secret: true,
        needs_public_url: true,
        signature_header: Some("x-twilio-signature"),
    },
    Preset {
        name: "paddle",
        event_id: DefaultEventId::Json("/event_id"),
        event_type: Some(DefaultEventId::Json("/event_type")),
        // Paddle's SDKs reject signatures older than five seconds.
        tolerance: Some(Duration::from_secs(5)),
        forward_headers: &[],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("paddle-signature"),
    },
    Preset {
        name: "square",
        event_id: DefaultEventId::Json("/event_id"),
        event_type: Some(DefaultEventId::Json("/type")),
        tolerance: None,
        forward_headers: &[],
        needs_secret: true,
        needs_public_url: true,
        signature_header: Some("x-square-hmacsha256-signature"),
    },
    Preset {
        name: "zoom",
        event_id: DefaultEventId::BodyHash,
        event_type: Some(DefaultEventId::Json("/event")),
        tolerance: FIVE_MINUTES,
        forward_headers: &["x-zm-request-timestamp", "x-zm-trackingid"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("x-zm-signature"),
    },
    Preset {
        name: "linear",
        event_id: DefaultEventId::Header("linear-delivery"),
        event_type: Some(DefaultEventId::Header("linear-event")),
        // Linear's docs: reject webhookTimestamp more than a minute away.
        tolerance: Some(Duration::from_secs(60)),
        forward_headers: &["linear-delivery", "linear-event"],
        needs_secret: true,
        needs_public_url: false,
        signature_header: Some("linear-signature"),
    },
    Preset {
        name: "hmac",
        event_id: DefaultEventId::BodyHash,
        event_type: None,
        tolerance: FIVE_MINUTES,
        forward_headers: &[],
        needs_secret: true,
        needs_public_url: false,
        signature_header: None,
    },
    Preset {
        name: "url-key",
        event_id: DefaultEventId::BodyHash,
        event_type: None,
        tolerance: None,
        forward_headers: &[],
        needs_secret: true,
        needs_public_url: false,
        signature_header: None,
    },
    Preset {
        name: "none",
        event_id: DefaultEventId::BodyHash,
        event_type: None,
        tolerance: None,
        forward_headers: &[],
        needs_secret: false,
        needs_public_url: false,
        signature_header: None,
    },
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Everything a scheme is built from, already validated by the config loader.
pub struct SchemeConfig<'a> {
    pub preset: &'static Preset,
    pub secrets: &'a [Secret],
    pub tolerance: Option<Duration>,
    pub signature: Option<&'a SignatureSpec>,
    pub timestamp: Option<&'a TimestampSpec>,
    pub public_url: Option<&'a str>,
    /// The event-id header, which `{id}` in an `hmac` template refers to.
    pub id_header: Option<&'a str>,
}

/// Builds the preset's scheme, or says what in the filter must change.
pub fn build(cfg: &SchemeConfig<'_>) -> Result<Box<dyn Scheme>, String> {
    let tolerance = cfg
        .tolerance
        .or(cfg.preset.tolerance)
        .unwrap_or(FIVE_MINUTES.unwrap());
    Ok(match cfg.preset.name {
        "standard-webhooks" => Box::new(standard_webhooks::StandardWebhooks::new(
            standard_webhooks::Headers::STANDARD,
            cfg.secrets,
            tolerance,
        )?),
        "svix" => Box::new(standard_webhooks::StandardWebhooks::new(
            standard_webhooks::Headers::SVIX,
            cfg.secrets,
            tolerance,
        )?),
        "stripe" => Box::new(stripe::Stripe::new(cfg.secrets, tolerance)),
        "paddle" => Box::new(paddle::Paddle::new(cfg.secrets, tolerance)),
        "twilio" => Box::new(twilio::Twilio::new(cfg.secrets, public_url(cfg)?)),
        "url-key" => Box::new(url_key::UrlKey::new(cfg.secrets)),
        "none" => Box::new(NoSignature),
        "hmac" => {
            let spec = cfg.signature.ok_or(
                "preset `hmac` needs a `signature:` block (header, algorithm, encoding, signed)",
            )?;
            Box::new(HmacScheme::from_spec(
                spec,
                cfg.timestamp,
                cfg.secrets,
                tolerance,
                cfg.id_header,
                cfg.public_url,
            )?)
        }
        other => Box::new(hmac::provider_preset(
            other,
            cfg.secrets,
            tolerance,
            cfg.public_url,
        )?),
    })
}

fn public_url<'a>(cfg: &SchemeConfig<'a>) -> Result<&'a str, String> {
    cfg.public_url.ok_or_else(|| {
        format!(
            "preset `{}` signs the URL it calls: add `public_url: https://your.host/webhook/...`",
            cfg.preset.name
        )
    })
}

/// `preset: none`: no signature is checked (use with `allow` or behind another check).
struct NoSignature;

impl Scheme for NoSignature {
    fn verify(&self, _req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        Ok(())
    }
    fn sign(&self, _msg: &Outbound<'_>) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Encoding> {
        match name {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }
    /// Decodes a received signature; malformed text is simply "no signature bytes".
    pub fn decode(self, text: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            Encoding::Hex => hex::decode(text).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        }
    }
    pub fn encode(self, bytes: &[u8]) -> String {
        use base64::Engine;
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// An HMAC state with its key already absorbed: cloning it per message skips re-keying.
/// RustCrypto's hmac + sha2 measured faster than ring here (bench/RESULTS.md).
#[derive(Clone)]
enum KeyedMac {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
}

impl KeyedMac {
    fn new(algorithm: Algorithm, key: &[u8]) -> KeyedMac {
        // HMAC takes keys of any length, so new_from_slice cannot fail.
        match algorithm {
            Algorithm::Sha1 => KeyedMac::Sha1(Mac::new_from_slice(key).expect("any key length")),
            Algorithm::Sha256 => {
                KeyedMac::Sha256(Mac::new_from_slice(key).expect("any key length"))
            }
            Algorithm::Sha512 => {
                KeyedMac::Sha512(Mac::new_from_slice(key).expect("any key length"))
            }
        }
    }

    fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + Clone>(keyed: &M, parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = keyed.clone();
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            KeyedMac::Sha1(m) => run(m, parts),
            KeyedMac::Sha256(m) => run(m, parts),
            KeyedMac::Sha512(m) => run(m, parts),
        }
    }
}

/// HMAC keys for every active secret, prepared once. The first secret signs.
pub struct Keys {
    keys: Vec<KeyedMac>,
}

impl Keys {
    pub fn new(algorithm: Algorithm, secrets: &[Secret]) -> Keys {
        Keys {
            keys: secrets
                .iter()
                .map(|s| KeyedMac::new(algorithm, &s.0))
                .collect(),
        }
    }

    /// The tag of `parts` (concatenated) under the signing (first) key.
    pub fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        match self.keys.first() {
            Some(key) => key.tag(parts),
            None => Vec::new(),
        }
    }

    /// The tag of `parts` under every key, the signing one first.
    pub fn sign_each(&self, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        self.keys.iter().map(|key| key.tag(parts)).collect()
    }

    /// True when any candidate equals the tag under any key. Each tag is computed once;
    /// comparisons are constant-time.
    pub fn matches(&self, parts: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
        let mut found = false;
        for key in &self.keys {
            let expected = key.tag(parts);
            for candidate in candidates {
                found |= bool::from(expected.as_slice().ct_eq(candidate.as_slice()));
            }
        }
        found
    }
}

/// Hex SHA-256 of some bytes (body hashes as event ids, Twilio's bodySHA256).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Rejects a timestamp outside `now ± tolerance` (both directions: a far-future timestamp
/// would otherwise stay "fresh" forever).
pub fn check_fresh(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), Reason> {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(timestamp).saturating_abs() > tolerance {
        Err(Reason::StaleTimestamp)
    } else {
        Ok(())
    }
}

/// Parses a unix-seconds timestamp as providers send it: digits only, no sign, no spaces.
pub fn parse_unix(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Splits `k=v<sep>k=v…` (Stripe's `t=…,v1=…`, Paddle's `ts=…;h1=…`) into pairs.
pub fn pairs(value: &str, separator: char) -> impl Iterator<Item = (&str, &str)> {
    value
        .split(separator)
        .filter_map(|part| part.trim().split_once('='))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use http::HeaderMap;
    use std::net::{IpAddr, Ipv4Addr};

    pub fn secret(text: &str) -> Secret {
        Secret(text.as_bytes().to_vec())
    }

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    pub fn inbound<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
        Inbound::new(
            "POST",
            "/webhook/test",
            None,
            headers,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            body,
        )
    }

    /// The headers `scheme` signs `body` with at `timestamp`.
    pub fn signed_headers(scheme: &dyn Scheme, body: &[u8], timestamp: i64) -> HeaderMap {
        let signed = scheme.sign(&Outbound {
            body,
            timestamp,
            id: "evt_1",
            url: None,
            content_type: None,
        });
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers(&pairs)
    }

    /// Signs with `scheme`, then checks that the signed request verifies at `now`.
    pub fn round_trip(scheme: &dyn Scheme, body: &[u8], now: i64) -> Result<(), Reason> {
        let map = signed_headers(scheme, body, now);
        scheme.verify(&inbound(&map, body), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_symmetric_around_now() {
        let t = Duration::from_secs(300);
        assert!(check_fresh(1000, 1300, t).is_ok());
        assert!(check_fresh(1300, 1000, t).is_ok());
        assert_eq!(check_fresh(1000, 1301, t), Err(Reason::StaleTimestamp));
        assert_eq!(check_fresh(1302, 1000, t), Err(Reason::StaleTimestamp));
        assert_eq!(
            check_fresh(i64::MIN, i64::MAX, t),
            Err(Reason::StaleTimestamp)
        );
    }

    #[test]
    fn unix_timestamps_are_plain_digits() {
        assert_eq!(parse_unix("1614265330"), Some(1614265330));
        for bad in ["", "-1", "+1", " 1", "1e9", "abc", "99999999999999999999"] {
            assert_eq!(parse_unix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_preset_has_a_unique_name() {
        let mut names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PRESETS.len());
    }
}
