//! The stored form of a SCRAM-SHA-256 password.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::error::ScramError;
use super::keys;

/// What the server stores instead of a password (`pg_authid.rolpassword`).
///
/// `Debug` shows only the iteration count and salt length: the keys must not
/// reach logs, since StoredKey and ServerKey together let an attacker
/// impersonate the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Per-role salt.
    pub salt: Vec<u8>,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses Postgres' `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::InvalidVerifier("not a SCRAM-SHA-256 secret"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(ScramError::InvalidVerifier("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::InvalidVerifier(
            "missing ':' after the iteration count",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(ScramError::InvalidVerifier("missing ':' between the keys"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::InvalidVerifier("bad iteration count"))?;
        if iterations == 0 {
            return Err(ScramError::InvalidVerifier("iteration count is zero"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::InvalidVerifier("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::InvalidVerifier("salt is empty"));
        }
        Ok(Self {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Formats the verifier the way Postgres stores it.
    pub fn to_postgres_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    /// Builds a verifier from a password (PBKDF2-HMAC-SHA-256); used by tests,
    /// the demo and role creation. An iteration count of 0 is stored as 1.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let salted = keys::salted_password(password, salt, iterations);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys::sha256(&keys::client_key(&salted)),
            server_key: keys::server_key(&salted),
        }
    }

    /// A deterministic fake verifier for a role that does not exist, so an
    /// unknown role takes the same path and time as a wrong password.
    ///
    /// The salt is derived from `HMAC(secret, role)` so it is stable across
    /// attempts (a changing salt would reveal that the role is fake) and the
    /// keys are random-looking. Pair it with `is_mock = true` in
    /// [`super::ScramServer::new`], which makes it never match.
    pub fn mock(secret: &[u8; 32], role: &str, iterations: u32) -> Self {
        let salt = keys::hmac(secret, &[b"sluice mock salt\0", role.as_bytes()]);
        Self {
            iterations: iterations.max(1),
            // Postgres' default salt length.
            salt: salt[..16].to_vec(),
            stored_key: keys::hmac(secret, &[b"sluice mock stored key\0", role.as_bytes()]),
            server_key: keys::hmac(secret, &[b"sluice mock server key\0", role.as_bytes()]),
        }
    }
}

fn decode_key(b64: &str) -> Result<[u8; 32], ScramError> {
    BASE64
        .decode(b64)
        .ok()
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .ok_or(ScramError::InvalidVerifier("key is not 32 bytes of base64"))
}
