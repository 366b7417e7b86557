//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 over `{t}.{body}`.
//!
//! The secret (`whsec_…`) is used verbatim as the key, unlike Standard Webhooks. Several `v1`
//! entries appear while a secret is being rolled; any one matching is enough. Paddle signs the
//! same shape with other names, so [`PairScheme`] serves both.

use std::time::Duration;

use super::{check_fresh, pairs, parse_unix, Algorithm, Keys, Outbound, Scheme, Secret};
use crate::reason::Reason;
use crate::request::Inbound;

/// A header of `key=value` pairs carrying a timestamp and one or more hex HMAC-SHA256 tags
/// over `{timestamp}{joiner}{body}`.
pub struct PairScheme {
    pub(super) header: &'static str,
    pub(super) separator: char,
    pub(super) timestamp_key: &'static str,
    pub(super) signature_key: &'static str,
    pub(super) joiner: &'static str,
    pub(super) keys: Keys,
    pub(super) tolerance: Duration,
}

pub type Stripe = PairScheme;

impl PairScheme {
    pub fn new(secrets: &[Secret], tolerance: Duration) -> PairScheme {
        PairScheme {
            header: "stripe-signature",
            separator: ',',
            timestamp_key: "t",
            signature_key: "v1",
            joiner: ".",
            keys: Keys::new(Algorithm::Sha256, secrets),
            tolerance,
        }
    }
}

impl Scheme for PairScheme {
    fn verify(&self, req: &Inbound<'_>, now: i64) -> Result<(), Reason> {
        let value = req.signature(self.header)?;
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for (key, val) in pairs(value, self.separator) {
            if key == self.timestamp_key && timestamp.is_none() {
                timestamp = Some(val);
            } else if key == self.signature_key {
                if let Ok(bytes) = hex::decode(val) {
                    candidates.push(bytes);
                }
            }
        }
        let ts_text = timestamp.ok_or(Reason::MissingTimestamp)?;
        let ts = parse_unix(ts_text).ok_or(Reason::MissingTimestamp)?;
        let parts: [&[u8]; 3] = [ts_text.as_bytes(), self.joiner.as_bytes(), req.body];
        if candidates.is_empty() || !self.keys.matches(&parts, &candidates) {
            return Err(Reason::InvalidSignature);
        }
        check_fresh(ts, now, self.tolerance)
    }

    fn sign(&self, msg: &Outbound<'_>) -> Vec<(String, String)> {
        let ts = msg.timestamp.to_string();
        let tag = self
            .keys
            .sign(&[ts.as_bytes(), self.joiner.as_bytes(), msg.body]);
        vec![(
            self.header.to_owned(),
            format!(
                "{}={ts}{}{}={}",
                self.timestamp_key,
                self.separator,
                self.signature_key,
                hex::encode(tag)
            ),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::{headers, inbound, round_trip, secret};

    const BODY: &[u8] = br#"{"id":"evt_1"}"#;
    // printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret
    const V1: &str = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";

    fn stripe() -> Stripe {
        Stripe::new(&[secret("whsec_test_secret")], Duration::from_secs(300))
    }

    #[test]
    fn uses_the_whsec_secret_verbatim_over_t_dot_body() {
        let h = headers(&[("Stripe-Signature", &format!("t=1700000000,v1={V1}"))]);
        assert_eq!(stripe().verify(&inbound(&h, BODY), 1_700_000_000), Ok(()));
        assert_eq!(round_trip(&stripe(), BODY, 1_700_000_000), Ok(()));
    }

    #[test]
    fn any_of_several_v1_signatures_may_match_and_v0_is_ignored() {
        let value = format!("t=1700000000,v1={},v0={V1},v1={V1}", "ab".repeat(32));
        let h = headers(&[("Stripe-Signature", &value)]);
        assert_eq!(stripe().verify(&inbound(&h, BODY), 1_700_000_000), Ok(()));
        let only_v0 = format!("t=1700000000,v0={V1}");
        let h = headers(&[("Stripe-Signature", &only_v0)]);
        assert_eq!(
            stripe().verify(&inbound(&h, BODY), 1_700_000_000),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn rejects_missing_stale_and_malformed_values() {
        let now = 1_700_000_000;
        let cases = [
            (format!("v1={V1}"), Reason::MissingTimestamp),
            (format!("t=abc,v1={V1}"), Reason::MissingTimestamp),
            ("t=1700000000".to_string(), Reason::InvalidSignature),
            (
                "t=1700000000,v1=nothex".to_string(),
                Reason::InvalidSignature,
            ),
            ("garbage".to_string(), Reason::MissingTimestamp),
            (format!("t=1700000001,v1={V1}"), Reason::InvalidSignature),
        ];
        for (value, reason) in cases {
            let h = headers(&[("Stripe-Signature", &value)]);
            assert_eq!(
                stripe().verify(&inbound(&h, BODY), now),
                Err(reason),
                "{value}"
            );
        }
        let h = headers(&[("Stripe-Signature", &format!("t=1700000000,v1={V1}"))]);
        assert_eq!(
            stripe().verify(&inbound(&h, BODY), now + 301),
            Err(Reason::StaleTimestamp)
        );
        assert_eq!(
            stripe().verify(&inbound(&headers(&[]), BODY), now),
            Err(Reason::MissingSignature)
        );
    }
}
