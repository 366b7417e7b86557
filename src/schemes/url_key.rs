//! `url-key`: the secret is a `wh_` + 32-character random key in the path
//! (`POST /webhook/NAME/KEY`), for senders that cannot sign at all. `portcullis keygen` makes one.

use rand::distributions::{Alphanumeric, DistString};
use subtle::ConstantTimeEq;

use super::{Outbound, Scheme, Secret};
use crate::reason::Reason;
use crate::request::Inbound;

pub const KEY_PREFIX: &str = "wh_";
pub const KEY_CHARS: usize = 32;

/// A fresh key from the operating system's CSPRNG.
pub fn generate() -> String {
    format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rngs::OsRng, KEY_CHARS)
    )
}

/// Checks a configured key's shape, so a typo or a weak key fails at load.
pub fn validate(secret: &[u8]) -> Result<(), String> {
    let ok = secret.len() == KEY_PREFIX.len() + KEY_CHARS
        && secret.starts_with(KEY_PREFIX.as_bytes())
        && secret[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(
            "a url-key secret is `wh_` + 32 letters or digits: make one with `portcullis keygen`"
                .into(),
        )
    }
}

pub struct UrlKey {
    keys: Vec<Secret>,
}

impl UrlKey {
    pub fn new(secrets: &[Secret]) -> UrlKey {
        UrlKey {
            keys: secrets.to_vec(),
        }
    }
}

impl Scheme for UrlKey {
    fn verify(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        let (_, last) = req.path.rsplit_once('/').unwrap_or(("", req.path));
        if !last.starts_with(KEY_PREFIX) {
            return Err(Reason::MissingSignature);
        }
        let mut found = false;
        for key in &self.keys {
            found |= bool::from(key.0.as_slice().ct_eq(last.as_bytes()));
        }
        if found {
            Ok(())
        } else {
            Err(Reason::InvalidSignature)
        }
    }

    fn sign(&self, _msg: &Outbound<'_>) -> Vec<(String, String)> {
        Vec::new()
    }

    fn path_suffix(&self) -> Option<String> {
        self.keys
            .first()
            .map(|k| String::from_utf8_lossy(&k.0).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::headers;
    use std::net::{IpAddr, Ipv4Addr};

    fn at(scheme: &UrlKey, path: &str) -> Result<(), Reason> {
        let h = headers(&[]);
        let req = Inbound::new("POST", path, None, &h, IpAddr::V4(Ipv4Addr::LOCALHOST), b"");
        scheme.verify(&req, 0)
    }

    #[test]
    fn generated_keys_have_the_documented_shape_and_differ() {
        let (a, b) = (generate(), generate());
        assert!(validate(a.as_bytes()).is_ok(), "{a}");
        assert_ne!(a, b);
        assert!(validate(b"wh_short").is_err());
        assert!(validate(b"xx_0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn the_key_in_the_path_must_be_one_of_the_secrets() {
        let old = generate();
        let new = generate();
        let scheme = UrlKey::new(&[Secret(new.clone().into()), Secret(old.clone().into())]);
        assert_eq!(at(&scheme, &format!("/webhook/x/{new}")), Ok(()));
        assert_eq!(at(&scheme, &format!("/webhook/x/{old}")), Ok(()));
        assert_eq!(
            at(&scheme, &format!("/webhook/x/{}", generate())),
            Err(Reason::InvalidSignature)
        );
        assert_eq!(at(&scheme, "/webhook/x"), Err(Reason::MissingSignature));
        assert_eq!(scheme.path_suffix(), Some(new));
    }
}
