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
mod error;
mod keys;
mod mechanism;
mod messages;
mod server;
mod verifier;

pub use channel_binding::tls_server_end_point;
pub use client::{ClientCredential, ScramClient};
pub use error::ScramError;
pub use keys::ClientKey;
pub use mechanism::{MAX_ITERATIONS, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT};
pub use server::{ScramServer, ServerOutcome};
pub use verifier::Verifier;

#[cfg(test)]
mod tests;
