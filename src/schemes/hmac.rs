//! The generic HMAC scheme: one header, one or more algorithms, hex or base64, an optional
//! prefix and a signed-string template over `{body}` `{timestamp}` `{id}` `{url}`.
//!
//! GitHub, Slack, Shopify, Square, Zoom and Linear sign exactly this way with fixed parameters,
//! so their presets are rows of data here rather than code of their own; `preset: hmac` lets a
//! filter spell out any other sender the same way.

use std::time::Duration;

use serde::Deserialize;

use super::{check_fresh, parse_unix, Algorithm, Encoding, Keys, Outbound, Scheme, Secret};
use crate::reason::Reason;
use crate::request::Inbound;

/// `signature:` in a filter (preset `hmac`).
#[derive(Debug, Clone, Deserialize)]
pub struct SignatureSpec {
    pub header: String,
    #[serde(default = "default_algorithms")]
    pub algorithm: OneOrMany,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub prefix_optional: bool,
    #[serde(default = "default_signed")]
    pub signed: String,
}

/// `algorithm: sha256` or `algorithm: [sha256, sha512]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_algorithms() -> OneOrMany {
    OneOrMany::One("sha256".into())
}
fn default_encoding() -> String {
    "hex".into()
}
fn default_signed() -> String {
    "{body}".into()
}

/// `timestamp:` in a filter: a header, or a JSON pointer into the (signed) body.
#[derive(Debug, Clone, Deserialize)]
pub struct TimestampSpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub json: Option<String>,
    #[serde(default)]
    pub format: TimestampFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    #[default]
    Unix,
    UnixMs,
    Rfc3339,
}

impl TimestampFormat {
    fn parse(self, text: &str) -> Option<i64> {
        match self {
            TimestampFormat::Unix => parse_unix(text),
            TimestampFormat::UnixMs => parse_unix_ms(text),
            TimestampFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp()),
        }
    }
    fn format(self, unix: i64) -> String {
        match self {
            TimestampFormat::Unix => unix.to_string(),
            TimestampFormat::UnixMs => (unix * 1000).to_string(),
            TimestampFormat::Rfc3339 => chrono::DateTime::from_timestamp(unix, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

fn parse_unix_ms(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().map(|ms| ms / 1000)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Body,
    Timestamp,
    Id,
    Url,
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest.as_bytes()[..open].to_vec()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in signed template {template:?}"))?;
        let part = match &rest[open + 1..open + close] {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "id" => Part::Id,
            "url" => Part::Url,
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` in signed template: use {{body}}, {{timestamp}}, {{id}} or {{url}}"
                ))
            }
        };
        parts.push(part);
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.as_bytes().to_vec()));
    }
    if !parts.contains(&Part::Body) {
        return Err(format!(
            "signed template {template:?} does not include {{body}}: the body would be unauthenticated"
        ));
    }
    Ok(parts)
}

enum Prefix {
    None,
    Literal(String),
    /// `"{algorithm}="`: the prefix names the algorithm (`sha256=…`, `sha512=…`).
    PerAlgorithm {
        before: String,
        after: String,
    },
}

enum TimestampSource {
    Header(String, TimestampFormat),
    Json(String, TimestampFormat),
}

pub struct HmacScheme {
    header: String,
    algorithms: Vec<(Algorithm, Keys)>,
    encoding: Encoding,
    prefix: Prefix,
    prefix_optional: bool,
    template: Vec<Part>,
    timestamp: Option<TimestampSource>,
    tolerance: Duration,
    id_header: Option<String>,
    public_url: Option<String>,
    /// Headers the provider sends with every request and its own verifiers require (Shopify's
    /// topic, shop and API version): `sign` adds them so its output passes those verifiers.
    sent_with: &'static [(&'static str, &'static str)],
}

/// What Shopify sends beside its signature; `@shopify/shopify-api` refuses a request without it.
const SHOPIFY_HEADERS: &[(&str, &str)] = &[
    ("x-shopify-topic", "orders/create"),
    ("x-shopify-shop-domain", "example.myshopify.com"),
    ("x-shopify-api-version", "2025-07"),
];

impl HmacScheme {
    pub fn from_spec(
        spec: &SignatureSpec,
        timestamp: Option<&TimestampSpec>,
        secrets: &[Secret],
        tolerance: Duration,
        id_header: Option<&str>,
        public_url: Option<&str>,
    ) -> Result<HmacScheme, String> {
        let names = match &spec.algorithm {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(list) => list.clone(),
        };
        if names.is_empty() {
            return Err("signature.algorithm is empty: write sha256 (or sha1, sha512)".into());
        }
        let mut algorithms = Vec::new();
        for name in &names {
            let alg = Algorithm::parse(name).ok_or_else(|| {
                format!("signature.algorithm `{name}` is not supported: use sha1, sha256 or sha512")
            })?;
            algorithms.push((alg, Keys::new(alg, secrets)));
        }
        let encoding = Encoding::parse(&spec.encoding).ok_or_else(|| {
            format!(
                "signature.encoding `{}` is not supported: use hex or base64",
                spec.encoding
            )
        })?;
        let prefix = match spec.prefix.as_deref() {
            None | Some("") => Prefix::None,
            Some(p) => match p.split_once("{algorithm}") {
                Some((before, after)) => Prefix::PerAlgorithm {
                    before: before.into(),
                    after: after.into(),
                },
                None => Prefix::Literal(p.into()),
            },
        };
        let template = parse_template(&spec.signed)?;
        let timestamp = match timestamp {
            None => None,
            Some(TimestampSpec {
                header: Some(h),
                json: None,
                format,
            }) => Some(TimestampSource::Header(h.to_ascii_lowercase(), *format)),
            Some(TimestampSpec {
                header: None,
                json: Some(p),
                format,
            }) => Some(TimestampSource::Json(p.clone(), *format)),
            Some(_) => {
                return Err("timestamp: set exactly one of `header` or `json`".into());
            }
        };
        if template.contains(&Part::Timestamp) && timestamp.is_none() {
            return Err(
                "signed template uses {timestamp} but there is no `timestamp:` block: add timestamp: { header: X-…-Timestamp, format: unix }".into(),
            );
        }
        if template.contains(&Part::Id) && id_header.is_none() {
            return Err(
                "signed template uses {id} but the event id is not a header: add event_id: { header: X-…-Id }".into(),
            );
        }
        if template.contains(&Part::Url) && public_url.is_none() {
            return Err(
                "signed template uses {url}: add `public_url:` (the URL the sender calls)".into(),
            );
        }
        Ok(HmacScheme {
            header: spec.header.to_ascii_lowercase(),
            algorithms,
            encoding,
            prefix,
            prefix_optional: spec.prefix_optional,
            template,
            timestamp,
            tolerance,
            id_header: id_header.map(str::to_ascii_lowercase),
            public_url: public_url.map(str::to_owned),
            sent_with: &[],
        })
    }

    /// Finds which algorithm the value claims and strips its prefix.
    fn split<'v>(&self, value: &'v str) -> Option<(usize, &'v str)> {
        match &self.prefix {
            Prefix::None => Some((0, value)),
            Prefix::Literal(p) => match value.strip_prefix(p.as_str()) {
                Some(rest) => Some((0, rest)),
                None if self.prefix_optional => Some((0, value)),
                None => None,
            },
            Prefix::PerAlgorithm { before, after } => {
                for (i, (alg, _)) in self.algorithms.iter().enumerate() {
                    let rest = value
                        .strip_prefix(before.as_str())
                        .and_then(|r| r.strip_prefix(alg.name()))
                        .and_then(|r| r.strip_prefix(after.as_str()));
                    if let Some(rest) = rest {
                        return Some((i, rest));
                    }
                }
                self.prefix_optional.then_some((0, value))
            }
        }
    }

    fn prefix_for(&self, alg: Algorithm) -> String {
        match &self.prefix {
            Prefix::None => String::new(),
            Prefix::Literal(p) => p.clone(),
            Prefix::PerAlgorithm { before, after } => format!("{before}{}{after}", alg.name()),
        }
    }

    /// The timestamp as text (what the template signs) and as unix seconds.
    fn timestamp_of(&self, req: &Inbound<'_>) -> Result<Option<(String, i64)>, Reason> {
        let Some(source) = &self.timestamp else {
            return Ok(None);
        };
        let (text, format) = match source {
            TimestampSource::Header(name, format) => (
                req.header(name).ok_or(Reason::MissingTimestamp)?.to_owned(),
                *format,
            ),
            TimestampSource::Json(pointer, format) => {
                let value = req
                    .json()
                    .and_then(|j| j.pointer(pointer))
                    .ok_or(Reason::MissingTimestamp)?;
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return Err(Reason::MissingTimestamp),
                };
                (text, *format)
            }
        };
        let unix = format.parse(&text).ok_or(Reason::MissingTimestamp)?;
        Ok(Some((text, unix)))
    }

    fn url(&self, query: Option<&str>) -> String {
        let base = self.public_url.as_deref().unwrap_or_default();
        match query {
            Some(q) if !q.is_empty() => format!("{base}?{q}"),
            _ => base.to_owned(),
        }
    }

    fn parts<'p>(
        &'p self,
        body: &'p [u8],
        timestamp: &'p str,
        id: &'p str,
        url: &'p str,
    ) -> Vec<&'p [u8]> {
        self.template
            .iter()
            .map(|part| match part {
                Part::Literal(bytes) => bytes.as_slice(),
                Part::Body => body,
                Part::Timestamp => timestamp.as_bytes(),
                Part::Id => id.as_bytes(),
                Part::Url => url.as_bytes(),
            })
            .collect()
    }
}

impl Scheme for HmacScheme {
    fn verify(&self, req: &Inbound<'_>, now: i64) -> Result<(), Reason> {
        let value = req.signature(&self.header)?;
        let timestamp = self.timestamp_of(req)?;
        let (index, encoded) = self.split(value).ok_or(Reason::InvalidSignature)?;
        let signature = self
            .encoding
            .decode(encoded)
            .ok_or(Reason::InvalidSignature)?;
        let ts_text = timestamp.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
        let id = match &self.id_header {
            Some(h) if self.template.contains(&Part::Id) => {
                req.header(h).ok_or(Reason::MissingSignature)?
            }
            _ => "",
        };
        let url = if self.template.contains(&Part::Url) {
            self.url(req.query)
        } else {
            String::new()
        };
        let parts = self.parts(req.body, ts_text, id, &url);
        if !self.algorithms[index].1.matches(&parts, &[signature]) {
            return Err(Reason::InvalidSignature);
        }
        match timestamp {
            Some((_, unix)) => check_fresh(unix, now, self.tolerance),
            None => Ok(()),
        }
    }

    fn sign(&self, msg: &Outbound<'_>) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        let mut ts_text = String::new();
        if let Some(TimestampSource::Header(name, format)) = &self.timestamp {
            ts_text = format.format(msg.timestamp);
            headers.push((name.clone(), ts_text.clone()));
        }
        if let (Some(h), true) = (&self.id_header, self.template.contains(&Part::Id)) {
            headers.push((h.clone(), msg.id.to_owned()));
        }
        let url = msg.url.map(str::to_owned).unwrap_or_else(|| self.url(None));
        let (alg, keys) = &self.algorithms[0];
        let tag = keys.sign(&self.parts(msg.body, &ts_text, msg.id, &url));
        headers.push((
            self.header.clone(),
            format!("{}{}", self.prefix_for(*alg), self.encoding.encode(&tag)),
        ));
        headers.extend(
            self.sent_with
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        headers
    }
}

/// The providers that sign as plain HMAC over a template, with their published parameters.
pub fn provider_preset(
    name: &str,
    secrets: &[Secret],
    tolerance: Duration,
    public_url: Option<&str>,
) -> Result<HmacScheme, String> {
    let spec = |header: &str, alg: &str, encoding: &str, prefix: Option<&str>, signed: &str| {
        SignatureSpec {
            header: header.into(),
            algorithm: OneOrMany::One(alg.into()),
            encoding: encoding.into(),
            prefix: prefix.map(Into::into),
            prefix_optional: false,
            signed: signed.into(),
        }
    };
    let header_ts = |header: &str| TimestampSpec {
        header: Some(header.into()),
        json: None,
        format: TimestampFormat::Unix,
    };
    let (signature, timestamp) = match name {
        "github" => (
            spec(
                "x-hub-signature-256",
                "sha256",
                "hex",
                Some("sha256="),
                "{body}",
            ),
            None,
        ),
        "github-sha1" => (
            spec("x-hub-signature", "sha1", "hex", Some("sha1="), "{body}"),
            None,
        ),
        "slack" => (
            spec(
                "x-slack-signature",
                "sha256",
                "hex",
                Some("v0="),
                "v0:{timestamp}:{body}",
            ),
            Some(header_ts("x-slack-request-timestamp")),
        ),
        "zoom" => (
            spec(
                "x-zm-signature",
                "sha256",
                "hex",
                Some("v0="),
                "v0:{timestamp}:{body}",
            ),
            Some(header_ts("x-zm-request-timestamp")),
        ),
        "shopify" => (
            spec("x-shopify-hmac-sha256", "sha256", "base64", None, "{body}"),
            None,
        ),
        "square" => (
            spec(
                "x-square-hmacsha256-signature",
                "sha256",
                "base64",
                None,
                "{url}{body}",
            ),
            None,
        ),
        "linear" => (
            spec("linear-signature", "sha256", "hex", None, "{body}"),
            Some(TimestampSpec {
                header: None,
                json: Some("/webhookTimestamp".into()),
                format: TimestampFormat::UnixMs,
            }),
        ),
        other => return Err(format!("unknown preset `{other}`")),
    };
    let mut scheme = HmacScheme::from_spec(
        &signature,
        timestamp.as_ref(),
        secrets,
        tolerance,
        None,
        public_url,
    )?;
    if name == "shopify" {
        scheme.sent_with = SHOPIFY_HEADERS;
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::{headers, inbound, round_trip, secret, signed_headers};

    const MIN5: Duration = Duration::from_secs(300);

    fn preset(name: &str, key: &str) -> HmacScheme {
        provider_preset(
            name,
            &[secret(key)],
            MIN5,
            Some("https://example.com/webhook"),
        )
        .unwrap()
    }

    #[test]
    fn github_matches_the_documented_example() {
        // docs.github.com, "Validating webhook deliveries".
        let scheme = preset("github", "It's a Secret to Everybody");
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("X-Hub-Signature-256", sig)]);
        assert_eq!(scheme.verify(&inbound(&h, b"Hello, World!"), 0), Ok(()));
        // Upper-case hex is the same bytes.
        let h = headers(&[(
            "X-Hub-Signature-256",
            &sig.to_uppercase().replace("SHA256=", "sha256="),
        )]);
        assert_eq!(scheme.verify(&inbound(&h, b"Hello, World!"), 0), Ok(()));
        assert_eq!(
            scheme.verify(&inbound(&h, b"Hello, World?"), 0),
            Err(Reason::InvalidSignature)
        );
        let wrong = preset("github", "another secret");
        assert_eq!(
            wrong.verify(&inbound(&h, b"Hello, World!"), 0),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn github_rejects_malformed_and_missing_headers() {
        let scheme = preset("github", "s");
        let body = b"{}";
        for bad in [
            "sha256=",
            "sha256=zz",
            "sha256=abc",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1700",
        ] {
            let h = headers(&[("X-Hub-Signature-256", bad)]);
            assert_eq!(
                scheme.verify(&inbound(&h, body), 0),
                Err(Reason::InvalidSignature),
                "{bad}"
            );
        }
        let h = headers(&[]);
        assert_eq!(
            scheme.verify(&inbound(&h, body), 0),
            Err(Reason::MissingSignature)
        );
        let h = headers(&[("X-Hub-Signature-256", "")]);
        assert_eq!(
            scheme.verify(&inbound(&h, body), 0),
            Err(Reason::MissingSignature)
        );
    }

    #[test]
    fn github_sha1_uses_the_legacy_header() {
        let scheme = preset("github-sha1", "It's a Secret to Everybody");
        assert_eq!(round_trip(&scheme, b"Hello, World!", 0), Ok(()));
        let signed = scheme.sign(&Outbound {
            body: b"x",
            timestamp: 0,
            id: "",
            url: None,
            content_type: None,
        });
        assert_eq!(signed[0].0, "x-hub-signature");
        assert!(signed[0].1.starts_with("sha1=") && signed[0].1.len() == 5 + 40);
    }

    #[test]
    fn slack_matches_the_documented_example() {
        // api.slack.com, "Verifying requests from Slack".
        let scheme = preset("slack", "8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = headers(&[
            ("X-Slack-Request-Timestamp", "1531420618"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        assert_eq!(scheme.verify(&inbound(&h, body), 1531420618), Ok(()));
        assert_eq!(
            scheme.verify(&inbound(&h, body), 1531420618 + 301),
            Err(Reason::StaleTimestamp)
        );
        let h2 = headers(&[(
            "X-Slack-Signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        )]);
        assert_eq!(
            scheme.verify(&inbound(&h2, body), 1531420618),
            Err(Reason::MissingTimestamp)
        );
        let h3 = headers(&[
            ("X-Slack-Request-Timestamp", "1531420619"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        assert_eq!(
            scheme.verify(&inbound(&h3, body), 1531420618),
            Err(Reason::InvalidSignature),
            "the timestamp is signed"
        );
    }

    #[test]
    fn shopify_zoom_square_and_linear_round_trip_and_reject_tampering() {
        let now = 1_700_000_000;
        for name in ["shopify", "zoom", "square", "linear"] {
            let scheme = preset(name, "shhh");
            let body = br#"{"webhookTimestamp":1700000000000,"id":"1"}"#;
            assert_eq!(round_trip(&scheme, body, now), Ok(()), "{name}");
            let h = signed_headers(&scheme, body, now);
            let tampered = br#"{"webhookTimestamp":1700000000000,"id":"2"}"#;
            assert_eq!(
                scheme.verify(&inbound(&h, tampered), now),
                Err(Reason::InvalidSignature),
                "{name}"
            );
        }
    }

    #[test]
    fn shopify_signs_base64_of_the_raw_body() {
        // Shopify's own SDK tests sign as base64(HMAC-SHA256(secret, raw body))
        // (shopify-api-js lib/webhooks/__tests__/utils.ts); computed independently with
        // printf '%s' '{"id":1}' | openssl dgst -sha256 -hmac shhh -binary | base64
        let scheme = preset("shopify", "shhh");
        let signed = scheme.sign(&Outbound {
            body: br#"{"id":1}"#,
            timestamp: 0,
            id: "",
            url: None,
            content_type: None,
        });
        assert_eq!(signed[0].0, "x-shopify-hmac-sha256");
        assert_eq!(signed[0].1, "Lcc9Yf2U6zbkFFL44wuL0uEJMTo4Q8mC5iIG3KWCtLA=");
    }

    #[test]
    fn square_signs_the_notification_url_then_the_body() {
        // Square: base64(HMAC-SHA256(key, notification_url + body)).
        // printf '%s' 'https://example.com/webhook{"a":1}' | openssl dgst -sha256 -hmac shhh -binary | base64
        let scheme = preset("square", "shhh");
        let signed = scheme.sign(&Outbound {
            body: br#"{"a":1}"#,
            timestamp: 0,
            id: "",
            url: None,
            content_type: None,
        });
        assert_eq!(signed[0].1, "4T7iyfV3JTvzr+dBb+4Q1g+KEUjOcQXH9CEZZW7wyIg=");
    }

    #[test]
    fn linear_reads_its_timestamp_from_the_signed_body() {
        let scheme = preset("linear", "k");
        let now = 1_700_000_000;
        let old = br#"{"webhookTimestamp":1699999000000}"#;
        let h = signed_headers(&scheme, old, now);
        assert_eq!(
            scheme.verify(&inbound(&h, old), now),
            Err(Reason::StaleTimestamp)
        );
        let none = br#"{"action":"create"}"#;
        let h = signed_headers(&scheme, none, now);
        assert_eq!(
            scheme.verify(&inbound(&h, none), now),
            Err(Reason::MissingTimestamp)
        );
    }

    fn sidecar_wss() -> HmacScheme {
        let spec: SignatureSpec = serde_yaml::from_str(
            "{ header: X-WSS-Signature, algorithm: sha256, encoding: hex, signed: \"{timestamp}{body}\" }",
        )
        .unwrap();
        let ts: TimestampSpec =
            serde_yaml::from_str("{ header: X-WSS-Timestamp, format: unix }").unwrap();
        HmacScheme::from_spec(
            &spec,
            Some(&ts),
            &[secret("k1"), secret("k2")],
            MIN5,
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn sidecar_wss_style_signs_timestamp_then_body_without_separator() {
        let scheme = sidecar_wss();
        // printf '%s' '1700000000{"a":1}' | openssl dgst -sha256 -hmac k1
        let expected = "d5eecce547baa0190411edcb072042c3261ff895763044fa9ac6c9b8cb8e11b2";
        let signed = scheme.sign(&Outbound {
            body: br#"{"a":1}"#,
            timestamp: 1_700_000_000,
            id: "",
            url: None,
            content_type: None,
        });
        assert_eq!(signed[0], ("x-wss-timestamp".into(), "1700000000".into()));
        assert_eq!(signed[1], ("x-wss-signature".into(), expected.into()));
        let h = headers(&[
            ("X-WSS-Timestamp", "1700000000"),
            ("X-WSS-Signature", expected),
        ]);
        assert_eq!(
            scheme.verify(&inbound(&h, br#"{"a":1}"#), 1_700_000_000),
            Ok(())
        );
        let h = headers(&[
            ("X-WSS-Timestamp", "1700000001"),
            ("X-WSS-Signature", expected),
        ]);
        assert_eq!(
            scheme.verify(&inbound(&h, br#"{"a":1}"#), 1_700_000_000),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn rotated_secrets_all_verify() {
        let scheme = sidecar_wss();
        let second = HmacScheme::from_spec(
            &serde_yaml::from_str("{ header: X-WSS-Signature, signed: \"{timestamp}{body}\" }")
                .unwrap(),
            Some(&serde_yaml::from_str("{ header: X-WSS-Timestamp }").unwrap()),
            &[secret("k2")],
            MIN5,
            None,
            None,
        )
        .unwrap();
        let h = signed_headers(&second, b"x", 5);
        assert_eq!(scheme.verify(&inbound(&h, b"x"), 5), Ok(()));
    }

    fn sidecar_webhook() -> HmacScheme {
        let spec: SignatureSpec = serde_yaml::from_str(
            "{ header: X-Webhook-Signature, algorithm: [sha256, sha512], encoding: hex, prefix: \"{algorithm}=\", prefix_optional: true, signed: \"{body}\" }",
        )
        .unwrap();
        HmacScheme::from_spec(&spec, None, &[secret("key")], MIN5, None, None).unwrap()
    }

    #[test]
    fn sidecar_webhook_style_accepts_both_algorithms_and_bare_hex() {
        let scheme = sidecar_webhook();
        let body = b"payload";
        // printf '%s' payload | openssl dgst -sha256 -hmac key (and -sha512)
        let h256 = "5d98b45c90a207fa998ce639fea6f02ecc8cc3f36fef81d694fb856b4d0a28ca";
        let h512 = "185beceee65a5ed7e43f7cc98530bfab1b0d00679488a47225255d04594fd7f17ed6908e7a08df57ac14c9e56c2fdef83ee9adaf9df2ff9f61465898c5d78c00";
        for (value, ok) in [
            (format!("sha256={h256}"), true),
            (format!("sha512={h512}"), true),
            (h256.to_owned(), true),
            (format!("sha512={h256}"), false),
            (h512.to_owned(), false),
            (format!("md5={h256}"), false),
        ] {
            let h = headers(&[("X-Webhook-Signature", &value)]);
            let expected = if ok {
                Ok(())
            } else {
                Err(Reason::InvalidSignature)
            };
            assert_eq!(scheme.verify(&inbound(&h, body), 0), expected, "{value}");
        }
    }

    #[test]
    fn templates_are_validated_at_load() {
        assert!(parse_template("{timestamp}.{body}").is_ok());
        assert!(parse_template("{timestamp}")
            .unwrap_err()
            .contains("{body}"));
        assert!(parse_template("{nope}{body}")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(parse_template("{body").unwrap_err().contains("unclosed"));
    }
}
