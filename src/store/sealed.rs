//! Secrets at rest: envelope encryption with AES-256-GCM (aes-gcm).
//!
//! Each tenant has a data key (32 random bytes) stored wrapped by the master key
//! (`store.master_key`); each endpoint secret is sealed under its tenant's data key. A dump of
//! the store holds ciphertext only, and rotating the master key re-wraps the data keys without
//! touching a secret (`portcullis store rotate-master-key`). Every ciphertext is bound to what
//! it belongs to (associated data: the tenant, the endpoint and secret ids), so a sealed value
//! copied to another row does not open there. The master key is named by a short id (a hash
//! of it), never stored itself.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

const NONCE: usize = 12;

/// A 256-bit key: the master key, or a tenant's data key. Never printed.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn random() -> Key {
        Key(rand::random())
    }

    /// A master key as its file or variable holds it: 64 hex characters (`openssl rand -hex
    /// 32`), 44 base64 characters, or the 32 bytes themselves.
    pub fn parse(bytes: &[u8]) -> Result<Key, String> {
        let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
        let decoded = if text.len() == 64 {
            hex::decode(text).ok()
        } else if text.len() == 44 {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        } else {
            None
        };
        let raw = decoded.unwrap_or_else(|| bytes.to_vec());
        let key: [u8; 32] = raw.try_into().map_err(|_| {
            "a master key is 32 bytes, written as 64 hex characters (make one with `openssl rand -hex 32`)".to_string()
        })?;
        Ok(Key(key))
    }

    /// Names the key without revealing it (for `master_id` and messages).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"portcullis master key id\0");
        h.update(self.0);
        hex::encode(&h.finalize()[..8])
    }

    /// `plain` encrypted under this key, bound to `aad`: base64 of nonce + ciphertext + tag.
    pub fn seal(&self, plain: &[u8], aad: &str) -> String {
        let cipher = Aes256Gcm::new((&self.0).into());
        let nonce: [u8; NONCE] = rand::random();
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any input under 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// What [`Key::seal`] sealed with this key and `aad`; `None` for another key, another
    /// `aad` or altered bytes.
    pub fn open(&self, sealed: &str, aad: &str) -> Option<Vec<u8>> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if raw.len() < NONCE + 16 {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE);
        Aes256Gcm::new((&self.0).into())
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }

    /// A data key this key unwraps.
    pub fn unwrap_key(&self, wrapped: &str, aad: &str) -> Option<Key> {
        let raw = self.open(wrapped, aad)?;
        Some(Key(raw.try_into().ok()?))
    }

    pub fn wrap_key(&self, key: &Key, aad: &str) -> String {
        self.seal(&key.0, aad)
    }
}

/// The master keys a node holds: the current one (wraps every new data key) and, during a
/// rotation, the previous one (still unwraps the data keys not re-wrapped yet).
#[derive(Debug, Clone)]
pub struct Keyring {
    pub current: Key,
    pub previous: Option<Key>,
}

impl Keyring {
    /// The key `master_id` names, if this node holds it.
    pub fn by_id(&self, master_id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id() == master_id)
    }
}

/// What names a tenant's data key in its wrapping.
pub fn data_key_aad(tenant: &str) -> String {
    format!("portcullis/data-key/{tenant}")
}

/// What names an endpoint secret in its sealing.
pub fn secret_aad(tenant: &str, endpoint_id: &str, secret_id: &str) -> String {
    format!("portcullis/endpoint-secret/{tenant}/{endpoint_id}/{secret_id}")
}

/// A secret's public name: the first 16 hex digits of its SHA-256.
pub fn fingerprint(secret: &[u8]) -> String {
    format!("sha256:{}", &hex::encode(Sha256::digest(secret))[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_its_associated_data() {
        let k = Key::random();
        let sealed = k.seal(b"whsec_abc", "portcullis/endpoint-secret/acme/ep_1/sec_1");
        assert!(!sealed.contains("whsec"));
        assert_eq!(
            k.open(&sealed, "portcullis/endpoint-secret/acme/ep_1/sec_1")
                .as_deref(),
            Some(&b"whsec_abc"[..])
        );
        assert_eq!(
            k.open(&sealed, "portcullis/endpoint-secret/globex/ep_1/sec_1"),
            None
        );
        assert_eq!(
            Key::random().open(&sealed, "portcullis/endpoint-secret/acme/ep_1/sec_1"),
            None
        );
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        bytes[20] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            k.open(&altered, "portcullis/endpoint-secret/acme/ep_1/sec_1"),
            None
        );
        assert_eq!(k.open("not base64!", "x"), None);
        assert_eq!(k.open("", "x"), None);
    }

    #[test]
    fn master_keys_are_read_as_hex_base64_or_raw_bytes() {
        let hex_text = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let a = Key::parse(hex_text.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(a.0);
        assert_eq!(Key::parse(b64.as_bytes()).unwrap().id(), a.id());
        assert_eq!(Key::parse(&a.0).unwrap().id(), a.id());
        assert!(Key::parse(b"short")
            .unwrap_err()
            .contains("openssl rand -hex 32"));
        assert_ne!(Key::random().id(), a.id());
        assert!(!format!("{a:?}").contains("0011"));
    }
}
