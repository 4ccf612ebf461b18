//! The SCRAM-SHA-256 key derivations (RFC 5802 §3).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// `HMAC-SHA-256(key, parts...)`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `SHA-256(data)`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `SaltedPassword = Hi(password, salt, iterations)` (PBKDF2-HMAC-SHA-256).
///
/// An iteration count of 0 is treated as 1: PBKDF2 always does one round.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations.max(1), &mut out);
    out
}

/// `ClientKey = HMAC(SaltedPassword, "Client Key")`.
pub(crate) fn client_key(salted: &[u8; 32]) -> [u8; 32] {
    hmac(salted, &[b"Client Key"])
}

/// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
pub(crate) fn server_key(salted: &[u8; 32]) -> [u8; 32] {
    hmac(salted, &[b"Server Key"])
}

/// `a XOR b`.
pub(crate) fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// The AuthMessage both proofs sign:
/// `client-first-bare "," server-first "," client-final-without-proof`.
pub(crate) fn auth_message<'a>(
    client_first_bare: &'a str,
    server_first: &'a str,
    client_final_without_proof: &'a str,
) -> [&'a [u8]; 5] {
    [
        client_first_bare.as_bytes(),
        b",",
        server_first.as_bytes(),
        b",",
        client_final_without_proof.as_bytes(),
    ]
}

/// A SCRAM ClientKey: `HMAC(SaltedPassword, "Client Key")`.
///
/// Anyone holding it can log in as the role wherever the same verifier is
/// stored, so it is as sensitive as a password and its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(pub [u8; 32]);

impl ClientKey {
    /// `SHA-256(ClientKey)`, the StoredKey it authenticates against.
    pub fn stored_key(&self) -> [u8; 32] {
        sha256(&self.0)
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}
