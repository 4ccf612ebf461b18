//! Secrets at rest: backend credentials (the auth role's password that the data plane
//! logs in with, a backend's administrator password) are kept in the control store and
//! the catalog snapshot only as AES-256-GCM ciphertext. The key lives in a file
//! (`[control] secrets_key_file`, default `data_dir/secrets.key`, generated with mode
//! 0600) that never enters the database, so a dump of the store reveals no credential.
//!
//! Each secret has a name (`tenant/<id>/auth`, `tenant/<id>/admin`) that is bound to its
//! ciphertext as associated data: a ciphertext copied under another name does not open.
//! Role passwords are never secrets here: only their SCRAM verifiers are stored.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, Context};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// A sealed secret: a fresh 96-bit nonce and the ciphertext with its tag.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// The key, loaded once.
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Reads the key file (64 hex digits), generating it when missing.
    pub fn load(path: &Path) -> anyhow::Result<SecretBox> {
        let text = provision::private_file::read_or_create(path, || {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            hex(&key)
        })
        .context("the secrets key file")?;
        let key = unhex(&text)
            .ok_or_else(|| anyhow!("{}: expected 64 hex digits (a 256-bit key)", path.display()))?;
        Ok(SecretBox::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Encrypts `plaintext` for the secret called `name`.
    pub fn seal(&self, name: &str, plaintext: &str) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Decrypts the secret called `name`; fails if it was sealed with another key, under
    /// another name, or altered.
    pub fn open(&self, name: &str, sealed: &Sealed) -> anyhow::Result<String> {
        if sealed.nonce.len() != 12 {
            return Err(anyhow!("secret {name}: the nonce is not 96 bits"));
        }
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow!("secret {name} does not decrypt: wrong secrets key file, or altered")
            })?;
        String::from_utf8(plaintext).map_err(|_| anyhow!("secret {name} is not UTF-8"))
    }
}

/// The name of a tenant's secret `what` (`auth` or `admin`).
pub fn tenant_secret(tenant: &str, what: &str) -> String {
    format!("tenant/{tenant}/{what}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding_to_name_and_key() {
        let a = SecretBox::from_key(&[7; 32]);
        let sealed = a.seal("tenant/acme/auth", "hunter2");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open("tenant/acme/auth", &sealed).unwrap(), "hunter2");
        // Another name, another key, a flipped bit: refused.
        assert!(a.open("tenant/globex/auth", &sealed).is_err());
        assert!(SecretBox::from_key(&[8; 32])
            .open("tenant/acme/auth", &sealed)
            .is_err());
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(a.open("tenant/acme/auth", &altered).is_err());
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(a.seal("n", "x"), a.seal("n", "x"));
    }

    #[test]
    fn key_file_is_generated_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let first = SecretBox::load(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal("s", "v");
        assert_eq!(
            SecretBox::load(&path).unwrap().open("s", &sealed).unwrap(),
            "v"
        );
        std::fs::write(&path, "not hex\n").unwrap();
        let e = SecretBox::load(&path).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }
}
