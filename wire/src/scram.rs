//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL implements it.
//!
//! Both sides live here: [`ScramServer`] authenticates clients against a
//! stored [`Verifier`], and [`ScramClient`] logs Sluice into a backend with
//! either a password or a [`ClientKey`] recovered from a client's proof
//! (SCRAM pass-through: Sluice never needs the password itself).
//!
//! Postgres specifics followed here: clients send an empty username (`n=`)
//! because the role comes from the startup packet; authorization identities
//! (`a=`) are refused; the only channel-binding type is
//! `tls-server-end-point`. SASLprep is not applied to passwords: Postgres
//! treats it as optional and ASCII passwords are unchanged by it, but a
//! non-ASCII password that SASLprep would rewrite will not match a verifier
//! Postgres built.

mod channel_binding;
mod client;
mod keys;
mod messages;
mod server;
mod verifier;

pub use channel_binding::tls_server_end_point;
pub use client::{ClientCredential, ScramClient};
pub use server::{ScramServer, ServerOutcome};
pub use verifier::Verifier;

/// Mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Mechanism name with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel-binding type Postgres (and so Sluice) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// Largest iteration count Sluice accepts from a server, so a hostile or
/// misconfigured server cannot make it spin (Postgres' default is 4096).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ScramError {
    /// The client's proof is wrong (or the role does not exist): SQLSTATE
    /// 28P01.
    #[error("password authentication failed")]
    AuthenticationFailed,
    /// A malformed or out-of-order message, a nonce or channel-binding
    /// mismatch: SQLSTATE 08P01.
    #[error("SCRAM protocol violation: {0}")]
    Protocol(String),
    /// A stored secret that is not a valid SCRAM-SHA-256 verifier.
    #[error("invalid SCRAM-SHA-256 secret: {0}")]
    InvalidVerifier(&'static str),
    /// The server's final signature does not match: it does not know the
    /// verifier, so it may be an impostor.
    #[error("server's SCRAM signature does not match")]
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=<reason>`.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerError(String),
}

impl ScramError {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        ScramError::Protocol(msg.into())
    }
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
        keys::sha256(&self.0)
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests;
