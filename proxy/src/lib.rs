//! The data plane: listeners, TLS with SNI, the client handshake and authentication,
//! the relay between a client and its server connection, and cancel requests.
//!
//! A connection goes through phases that each take and return owned values
//! ([`session`]): negotiate → TLS → identify tenant → admit → authenticate →
//! checkout → relay → release, behind a load balancer after its PROXY protocol header
//! ([`proxy_protocol`]). From accept to a proved password a connection is in
//! the pre-login phase, capped by [`prelogin`]. Every rejection a client sees is built in one place,
//! [`error::ClientError::to_response`].
//!
//! What every connection shares is [`Proxy`] ([`state`]), which knows no phase;
//! [`listener`] only accepts and hands each connection to [`session`], which runs the
//! phases. Files use the files below them only (checked by `testkit/tests/layout.rs`).
//!
//! Invariant: after an 8-byte SSLRequest nothing more is read before the TLS handshake.
//! Invariant: a client's bytes only ever reach the server connection checked out from
//! the pool of its own (tenant, database, role).

/// Connection lifecycle lines (session started, connection closed): `info` with
/// `log_connections = true` (the default), else `debug`.
macro_rules! log_connection {
    ($proxy:expr, $($arg:tt)+) => {
        if $proxy.config.log_connections {
            tracing::info!($($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

pub mod admit;
pub mod arrival;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod console;
pub mod error;
mod farewell;
pub mod fleet;
mod goodbye;
pub mod listener;
pub mod login;
pub mod negotiate;
pub mod params;
pub mod park;
pub mod prelogin;
pub mod proxy_protocol;
pub mod quota;
pub mod relay;
pub mod secrets;
pub mod session;
pub mod session_state;
pub mod state;
pub mod stream;
pub mod successor;
pub mod tls;
pub mod transaction;

pub use config::ProxyConfig;
pub use listener::{listen, serve};
pub use state::Proxy;
