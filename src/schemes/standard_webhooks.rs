//! Standard Webhooks (and Svix, the same scheme under `svix-*` header names).
//!
//! HMAC-SHA256 over `{id}.{timestamp}.{body}`, base64, sent as space-separated `v1,<sig>`
//! entries. The secret is `whsec_` + base64: the prefix is stripped and the rest decoded to
//! get the key bytes (Stripe, by contrast, uses its `whsec_` secret verbatim).

use std::time::Duration;

use base64::Engine;

use super::{check_fresh, parse_unix, Algorithm, Keys, Outbound, Scheme, Secret};
use crate::reason::Reason;
use crate::request::Inbound;

pub struct Headers {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

impl Headers {
    pub const STANDARD: Headers = Headers {
        id: "webhook-id",
        timestamp: "webhook-timestamp",
        signature: "webhook-signature",
    };
    pub const SVIX: Headers = Headers {
        id: "svix-id",
        timestamp: "svix-timestamp",
        signature: "svix-signature",
    };
}

pub struct StandardWebhooks {
    headers: Headers,
    keys: Keys,
    tolerance: Duration,
}

/// `whsec_<base64>` (or bare base64) to key bytes.
pub fn decode_secret(secret: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(secret).map_err(|_| "secret is not text".to_string())?;
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| {
            "a Standard Webhooks secret is `whsec_` followed by base64 (as the sender shows it)"
                .to_string()
        })
}

impl StandardWebhooks {
    pub fn new(
        headers: Headers,
        secrets: &[Secret],
        tolerance: Duration,
    ) -> Result<StandardWebhooks, String> {
        let decoded = secrets
            .iter()
            .map(|s| decode_secret(&s.0).map(Secret))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StandardWebhooks {
            headers,
            keys: Keys::new(Algorithm::Sha256, &decoded),
            tolerance,
        })
    }
}

impl Scheme for StandardWebhooks {
    fn verify(&self, req: &Inbound<'_>, now: i64) -> Result<(), Reason> {
        let value = req.signature(self.headers.signature)?;
        let id = req
            .header(self.headers.id)
            .ok_or(Reason::MissingSignature)?;
        let ts_text = req
            .header(self.headers.timestamp)
            .ok_or(Reason::MissingTimestamp)?;
        let ts = parse_unix(ts_text).ok_or(Reason::MissingTimestamp)?;
        let candidates: Vec<Vec<u8>> = value
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|sig| base64::engine::general_purpose::STANDARD.decode(sig).ok())
            .collect();
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", req.body];
        if candidates.is_empty() || !self.keys.matches(&parts, &candidates) {
            return Err(Reason::InvalidSignature);
        }
        check_fresh(ts, now, self.tolerance)
    }

    fn sign(&self, msg: &Outbound<'_>) -> Vec<(String, String)> {
        let ts = msg.timestamp.to_string();
        // One signature per active secret (the spec's space-separated list): during a
        // rotation a receiver holding either secret verifies.
        let signatures: Vec<String> = self
            .keys
            .sign_each(&[msg.id.as_bytes(), b".", ts.as_bytes(), b".", msg.body])
            .iter()
            .map(|tag| {
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                )
            })
            .collect();
        vec![
            (self.headers.id.to_owned(), msg.id.to_owned()),
            (self.headers.timestamp.to_owned(), ts),
            (self.headers.signature.to_owned(), signatures.join(" ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::{headers, inbound, secret};

    // The published Standard Webhooks / Svix test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn scheme(h: Headers) -> StandardWebhooks {
        StandardWebhooks::new(h, &[secret(SECRET)], Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn signs_the_published_test_vector() {
        let signed = scheme(Headers::STANDARD).sign(&Outbound {
            body: BODY,
            timestamp: TS,
            id: ID,
            url: None,
            content_type: None,
        });
        assert_eq!(signed[2], ("webhook-signature".into(), SIG.into()));
    }

    #[test]
    fn verifies_the_vector_among_several_signatures_under_both_header_names() {
        for (h, prefix) in [(Headers::STANDARD, "webhook"), (Headers::SVIX, "svix")] {
            let sigs = format!("v1,bm9wZQ== v1a,abc {SIG}");
            let map = headers(&[
                (&format!("{prefix}-id"), ID),
                (&format!("{prefix}-timestamp"), "1614265330"),
                (&format!("{prefix}-signature"), &sigs),
            ]);
            assert_eq!(
                scheme(h).verify(&inbound(&map, BODY), TS),
                Ok(()),
                "{prefix}"
            );
        }
    }

    #[test]
    fn the_whsec_prefix_is_optional_but_the_key_must_be_base64() {
        let bare = StandardWebhooks::new(
            Headers::STANDARD,
            &[secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
            Duration::from_secs(300),
        )
        .unwrap();
        let map = headers(&[
            ("webhook-id", ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SIG),
        ]);
        assert_eq!(bare.verify(&inbound(&map, BODY), TS), Ok(()));
        assert!(StandardWebhooks::new(
            Headers::STANDARD,
            &[secret("whsec_not base64!")],
            Duration::from_secs(300)
        )
        .is_err());
    }

    #[test]
    fn rejects_tampering_staleness_and_missing_parts() {
        let s = scheme(Headers::STANDARD);
        let ok = [
            ("webhook-id", ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SIG),
        ];
        let map = headers(&ok);
        assert_eq!(
            s.verify(&inbound(&map, br#"{"test": 2432232315}"#), TS),
            Err(Reason::InvalidSignature)
        );
        assert_eq!(
            s.verify(&inbound(&map, BODY), TS + 301),
            Err(Reason::StaleTimestamp)
        );
        assert_eq!(
            s.verify(&inbound(&map, BODY), TS - 301),
            Err(Reason::StaleTimestamp)
        );
        let other_id = headers(&[ok[0], ok[1], ("webhook-signature", SIG)]);
        assert_eq!(s.verify(&inbound(&other_id, BODY), TS), Ok(()));
        for (drop, reason) in [
            (0, Reason::MissingSignature),
            (1, Reason::MissingTimestamp),
            (2, Reason::MissingSignature),
        ] {
            let partial: Vec<_> = ok
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(
                s.verify(&inbound(&headers(&partial), BODY), TS),
                Err(reason)
            );
        }
        for bad in [
            "v1,",
            "v1,!!!",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE",
        ] {
            let map = headers(&[ok[0], ok[1], ("webhook-signature", bad)]);
            assert_eq!(
                s.verify(&inbound(&map, BODY), TS),
                Err(Reason::InvalidSignature),
                "{bad}"
            );
        }
    }
}
