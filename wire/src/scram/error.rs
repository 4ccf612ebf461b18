//! Why a SCRAM exchange failed, and the SQLSTATE each reason means.

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
