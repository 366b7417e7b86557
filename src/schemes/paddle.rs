//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]`, HMAC-SHA256 over
//! `{ts}:{body}`. The same shape as Stripe's header with other names.

use std::time::Duration;

use super::stripe::PairScheme;
use super::{Algorithm, Keys, Secret};

pub struct Paddle;

impl Paddle {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(secrets: &[Secret], tolerance: Duration) -> PairScheme {
        PairScheme {
            header: "paddle-signature",
            separator: ';',
            timestamp_key: "ts",
            signature_key: "h1",
            joiner: ":",
            keys: Keys::new(Algorithm::Sha256, secrets),
            tolerance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use crate::schemes::test_support::{headers, inbound, secret};
    use crate::schemes::Scheme;

    const BODY: &[u8] = br#"{"event_id":"evt_1"}"#;
    // printf '%s' '1700000000:{"event_id":"evt_1"}' | openssl dgst -sha256 -hmac pdl_ntfset_secret
    const H1: &str = "05baa29ac78ebc4421d9a808c0ec0ca1ef283a0eeb96996c9055776551f67907";

    fn paddle() -> PairScheme {
        Paddle::new(&[secret("pdl_ntfset_secret")], Duration::from_secs(5))
    }

    #[test]
    fn verifies_ts_colon_body_and_rotation_pairs() {
        let h = headers(&[("Paddle-Signature", &format!("ts=1700000000;h1={H1}"))]);
        assert_eq!(paddle().verify(&inbound(&h, BODY), 1_700_000_003), Ok(()));
        let rotated = format!("ts=1700000000;h1={};h1={H1}", "00".repeat(32));
        let h = headers(&[("Paddle-Signature", &rotated)]);
        assert_eq!(paddle().verify(&inbound(&h, BODY), 1_700_000_000), Ok(()));
    }

    #[test]
    fn five_seconds_is_the_default_window() {
        let h = headers(&[("Paddle-Signature", &format!("ts=1700000000;h1={H1}"))]);
        assert_eq!(
            paddle().verify(&inbound(&h, BODY), 1_700_000_006),
            Err(Reason::StaleTimestamp)
        );
        let comma = format!("ts=1700000000,h1={H1}");
        let h = headers(&[("Paddle-Signature", &comma)]);
        assert_eq!(
            paddle().verify(&inbound(&h, BODY), 1_700_000_000),
            Err(Reason::MissingTimestamp)
        );
    }
}
