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
    /// `keys: store`: this filter's keys are those [`install`] last gave it.
    stored: Option<String>,
}

impl UrlKey {
    pub fn new(secrets: &[Secret]) -> UrlKey {
        UrlKey {
            keys: secrets.to_vec(),
            stored: None,
        }
    }

    pub fn stored(filter: &str) -> UrlKey {
        UrlKey {
            keys: Vec::new(),
            stored: Some(filter.to_owned()),
        }
    }
}

/// A key of the store as the gateway checks it: the SHA-256 of each value that opens it (the
/// current one and, during a regeneration's grace, the previous one). The keys are 190
/// random bits, so their hashes are as good as the keys for comparing and reveal nothing.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: String,
    pub hashes: Vec<[u8; 32]>,
}

type Installed = std::collections::HashMap<String, Vec<StoredKey>>;

/// Every `keys: store` filter's enabled keys, by filter name (swapped whole by the
/// dispatcher's reload), and the uses not yet written back to the store.
static STORED: once_cell::sync::Lazy<arc_swap::ArcSwap<Installed>> =
    once_cell::sync::Lazy::new(Default::default);
static USES: once_cell::sync::Lazy<
    std::sync::Mutex<std::collections::HashMap<String, (u64, i64)>>,
> = once_cell::sync::Lazy::new(Default::default);

/// Makes `keys` the stored keys in force.
pub fn install(keys: Installed) {
    STORED.store(std::sync::Arc::new(keys));
}

/// The uses (count, last unix ms) per key id since the last call.
pub fn take_uses() -> std::collections::HashMap<String, (u64, i64)> {
    std::mem::take(&mut *USES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Puts back uses [`take_uses`] gave that could not be written (the store did not answer):
/// they are added to the next write.
pub fn give_back(uses: std::collections::HashMap<String, (u64, i64)>) {
    let mut pending = USES.lock().unwrap_or_else(|e| e.into_inner());
    for (id, (count, last)) in uses {
        let entry = pending.entry(id).or_insert((0, last));
        entry.0 += count;
        entry.1 = entry.1.max(last);
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The hash [`StoredKey::hashes`] holds for a key.
pub fn key_hash(key: &str) -> [u8; 32] {
    sha256(key.as_bytes())
}

impl Scheme for UrlKey {
    fn verify(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        let (_, last) = req.path.rsplit_once('/').unwrap_or(("", req.path));
        if !last.starts_with(KEY_PREFIX) {
            return Err(Reason::MissingSignature);
        }
        if let Some(filter) = &self.stored {
            let given = sha256(last.as_bytes());
            let installed = STORED.load();
            let mut hit: Option<&str> = None;
            for key in installed.get(filter).into_iter().flatten() {
                for h in &key.hashes {
                    if bool::from(h.ct_eq(&given)) {
                        hit = Some(&key.id);
                    }
                }
            }
            let Some(id) = hit else {
                return Err(Reason::InvalidSignature);
            };
            req.note_key(id);
            let now = chrono::Utc::now().timestamp_millis();
            let mut uses = USES.lock().unwrap_or_else(|e| e.into_inner());
            let entry = uses.entry(id.to_owned()).or_insert((0, now));
            entry.0 += 1;
            entry.1 = now;
            return Ok(());
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
    fn a_stored_key_opens_its_filter_only_and_counts_its_uses() {
        let (current, previous) = (generate(), generate());
        let mut keys = Installed::new();
        keys.insert(
            "unit-stored".into(),
            vec![StoredKey {
                id: "key_unit".into(),
                hashes: vec![key_hash(&current), key_hash(&previous)],
            }],
        );
        install(keys);
        let scheme = UrlKey::stored("unit-stored");
        assert_eq!(at(&scheme, &format!("/webhook/x/{current}")), Ok(()));
        assert_eq!(at(&scheme, &format!("/webhook/x/{previous}")), Ok(()));
        assert_eq!(
            at(&scheme, &format!("/webhook/x/{}", generate())),
            Err(Reason::InvalidSignature)
        );
        let other = UrlKey::stored("unit-other");
        assert_eq!(
            at(&other, &format!("/webhook/x/{current}")),
            Err(Reason::InvalidSignature),
            "another filter's key"
        );
        assert_eq!(take_uses().get("key_unit").map(|u| u.0), Some(2));
        // Uses a failed write gives back are added to the next one (here: USES is global,
        // and another test taking them meanwhile would race).
        give_back(std::collections::HashMap::from([(
            "key_back".into(),
            (2, 100),
        )]));
        give_back(std::collections::HashMap::from([(
            "key_back".into(),
            (3, 50),
        )]));
        assert_eq!(take_uses().get("key_back"), Some(&(5, 100)));
        assert_eq!(scheme.path_suffix(), None);
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
