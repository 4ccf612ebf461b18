//! Everything that can end a client connection, and the one place that turns it into
//! what the client reads (the documented SQLSTATEs, docs/limits.md and docs/auth.md).

use bytes::BytesMut;
use router::memory::Exhausted;
use router::Reason;
use wire::messages::{self, ErrorFields, Severity};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    NoTenant(String),
    #[error("tenant \"{0}\" does not exist")]
    UnknownTenant(String),
    #[error("TLS is required")]
    TlsRequired,
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("timed out waiting for a server connection")]
    PoolTimeout,
    /// The tenant was PAUSEd for the whole `max_wait` (the console, docs/console.md).
    #[error("timed out waiting for a server connection: tenant \"{0}\" is paused")]
    Paused(String),
    #[error("backend for tenant \"{tenant}\" is unavailable")]
    BackendUnavailable { tenant: String, detail: String },
    /// The backend refused with its own error (e.g. database does not exist): shown as is.
    #[error("backend refused: {} {}", .0.code, .0.message)]
    BackendRefused(ErrorFields),
    #[error("{0}")]
    Protocol(String),
    /// The first packet's length is out of range (a Terminate or any typed message
    /// sent instead of a startup packet, or noise): Postgres logs it and closes
    /// without a word, and so does Sluice.
    #[error("invalid length of startup packet: {0}")]
    InvalidStartupLength(usize),
    #[error("{0}")]
    Unsupported(String),
    #[error("terminating connection: {0}")]
    Terminating(&'static str),
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransactionTimeout,
    /// Postgres' own words for `authentication_timeout`.
    #[error("canceling authentication due to timeout")]
    LoginTimeout,
    /// The tenant's `max_client_connections`, or (without a tenant) the process's.
    #[error("{}", match .0 {
        Some(tenant) => format!("too many connections for tenant \"{tenant}\""),
        None => "sorry, too many clients already".to_owned(),
    })]
    TooManyConnections(Option<String>),
    /// Over `[proxy] max_pending_logins` (or its per-address cap) at accept.
    #[error("{}", if *.per_address {
        "sorry, too many connections from this address waiting to log in"
    } else {
        "sorry, too many connections waiting to log in"
    })]
    TooManyPendingLogins { per_address: bool },
    /// The tenant's `auth_user` asked to log in as an ordinary client.
    #[error("role \"{0}\" is Sluice's auth_user and cannot log in through Sluice")]
    AuthUserLogin(String),
    #[error("connection rate limit exceeded for tenant \"{0}\"")]
    ConnectRateLimited(String),
    /// Over the connect rate during a storm: closed at the ClientHello, untold.
    #[error("connection rate limit exceeded for tenant \"{0}\" (shed before TLS)")]
    ConnectRateShed(String),
    #[error("query rate limit exceeded for tenant \"{0}\"")]
    QueryRateLimited(String),
    #[error("too many failed logins; retry in {retry_in_s} s")]
    Banned { retry_in_s: u64 },
    #[error("connections from {ip} are not allowed for tenant \"{tenant}\"")]
    AddressNotAllowed {
        tenant: String,
        ip: std::net::IpAddr,
    },
    #[error("tenant \"{0}\" is suspended")]
    Suspended(String),
    /// The tenant was suspended with `terminate`, or deleted.
    #[error("terminating connection: tenant \"{0}\" is suspended")]
    TenantTerminated(String),
    /// The console's KILL (Postgres' words for `pg_terminate_backend`).
    #[error("terminating connection due to administrator command")]
    Killed,
    /// Postgres' words for `idle_session_timeout`.
    #[error("terminating connection due to idle-session timeout")]
    IdleSessionTimeout,
    /// A message that must be held whole is larger than `max_client_message_buffer`.
    #[error("message of {len} bytes exceeds max_client_message_buffer ({limit} bytes)")]
    MessageTooLarge { len: usize, limit: usize },
    /// Holding what the client sent would take its tenant's share of the memory
    /// budget, or the process's budget, past its limit.
    #[error("out of memory: the {} ({limit} bytes){} is in use", match .exhausted {
        Exhausted::Tenant => "memory_budget_per_tenant",
        Exhausted::Process => "memory_budget",
    }, match .exhausted {
        Exhausted::Tenant => format!(" of tenant \"{tenant}\""),
        Exhausted::Process => String::new(),
    })]
    OutOfMemory {
        tenant: String,
        exhausted: Exhausted,
        limit: usize,
    },
    /// A trusted balancer's connection without a PROXY protocol header
    /// (`proxy_protocol = "v2"`), or with one that does not parse.
    #[error("invalid PROXY protocol header: {0}")]
    ProxyHeader(String),
    /// Not from a trusted balancer (`proxy_protocol_from`) while `proxy_protocol =
    /// "v2"`, or a PROXY protocol header from such a peer.
    #[error("{}", if *.sent_header {
        "PROXY protocol header from an untrusted address"
    } else {
        "connections must come through a trusted proxy"
    })]
    UntrustedProxy { sent_header: bool },
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The SQLSTATE and message the client sees. Internal details (addresses, other
    /// tenants, backend errors of Sluice's own connections) stay in the logs.
    pub fn sqlstate_and_message(&self) -> (&str, String) {
        match self {
            ClientError::NoTenant(_) => ("08004", self.to_string()),
            ClientError::UnknownTenant(_) => ("3D000", self.to_string()),
            ClientError::TlsRequired => ("28000", self.to_string()),
            ClientError::AuthFailed(_) => ("28P01", self.to_string()),
            ClientError::PoolTimeout | ClientError::Paused(_) => ("53300", self.to_string()),
            ClientError::BackendUnavailable { .. } => ("08006", self.to_string()),
            ClientError::BackendRefused(fields) => (fields.code.as_str(), fields.message.clone()),
            ClientError::Protocol(_) | ClientError::InvalidStartupLength(_) => {
                ("08P01", self.to_string())
            }
            ClientError::Unsupported(_) => ("0A000", self.to_string()),
            ClientError::Terminating(_) => ("57P01", self.to_string()),
            ClientError::LoginTimeout => ("57014", self.to_string()),
            ClientError::IdleInTransactionTimeout => ("25P03", self.to_string()),
            ClientError::TooManyConnections(_) => ("53300", self.to_string()),
            ClientError::TooManyPendingLogins { .. } => ("53300", self.to_string()),
            ClientError::AuthUserLogin(_) => ("28000", self.to_string()),
            ClientError::ConnectRateLimited(_) | ClientError::QueryRateLimited(_) => {
                ("53400", self.to_string())
            }
            ClientError::ConnectRateShed(tenant) => (
                "53400",
                ClientError::ConnectRateLimited(tenant.clone()).to_string(),
            ),
            ClientError::Banned { .. } => ("28P01", self.to_string()),
            ClientError::AddressNotAllowed { .. } => ("28000", self.to_string()),
            ClientError::IdleSessionTimeout => ("57P05", self.to_string()),
            ClientError::ProxyHeader(_) => ("08P01", self.to_string()),
            ClientError::UntrustedProxy { .. } => ("28000", self.to_string()),
            ClientError::Suspended(_) => ("28000", self.to_string()),
            ClientError::TenantTerminated(_) | ClientError::Killed => ("57P01", self.to_string()),
            ClientError::MessageTooLarge { .. } => ("54000", self.to_string()),
            ClientError::OutOfMemory { .. } => ("53200", self.to_string()),
            ClientError::Io(_) => ("08006", "connection failure".to_owned()),
        }
    }

    /// Why a connection that fails with this error during login was refused, for
    /// `sluice_connections_rejected_total`; `None` when the client itself went away.
    pub fn reason(&self) -> Option<Reason> {
        Some(match self {
            ClientError::NoTenant(_) => Reason::NoTenant,
            ClientError::UnknownTenant(_) => Reason::UnknownTenant,
            ClientError::TlsRequired => Reason::TlsRequired,
            ClientError::AuthFailed(_) => Reason::AuthFailed,
            ClientError::PoolTimeout | ClientError::Paused(_) => Reason::PoolTimeout,
            ClientError::BackendUnavailable { .. } => Reason::BackendUnavailable,
            ClientError::BackendRefused(_) => Reason::BackendRefused,
            ClientError::Protocol(_) | ClientError::InvalidStartupLength(_) => {
                Reason::ProtocolError
            }
            ClientError::Unsupported(_) => Reason::Unsupported,
            ClientError::Terminating(_) => Reason::ShuttingDown,
            ClientError::LoginTimeout => Reason::LoginTimeout,
            ClientError::TooManyConnections(_) => Reason::TooManyConnections,
            ClientError::TooManyPendingLogins { .. } => Reason::TooManyPendingLogins,
            ClientError::AuthUserLogin(_) => Reason::AuthUserLogin,
            ClientError::ConnectRateLimited(_) | ClientError::ConnectRateShed(_) => {
                Reason::ConnectRate
            }
            ClientError::QueryRateLimited(_) => Reason::QueryRate,
            ClientError::Banned { .. } => Reason::Banned,
            ClientError::AddressNotAllowed { .. } | ClientError::UntrustedProxy { .. } => {
                Reason::AddressNotAllowed
            }
            ClientError::ProxyHeader(_) => Reason::ProtocolError,
            ClientError::Suspended(_) => Reason::Suspended,
            ClientError::MessageTooLarge { .. } => Reason::MessageTooLarge,
            ClientError::OutOfMemory { .. } => Reason::MemoryBudget,
            ClientError::IdleInTransactionTimeout
            | ClientError::IdleSessionTimeout
            | ClientError::TenantTerminated(_)
            | ClientError::Killed
            | ClientError::Io(_) => return None,
        })
    }

    /// Appends the FATAL ErrorResponse for this error.
    pub fn to_response(&self, out: &mut BytesMut) {
        let (code, message) = self.sqlstate_and_message();
        messages::error_response(out, Severity::Fatal, code, &message);
    }

    /// Whether the client is told why with an ErrorResponse: not when it can no
    /// longer be written to, nor where Postgres closes silently.
    pub fn can_tell_client(&self) -> bool {
        !matches!(
            self,
            ClientError::Io(_) | ClientError::InvalidStartupLength(_)
        )
    }

    /// Whether the connection still works, so that Sluice closes it in order (TLS
    /// close_notify, no reset) even when it says nothing.
    pub fn can_close_cleanly(&self) -> bool {
        !matches!(self, ClientError::Io(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_the_design() {
        let cases = [
            (ClientError::NoTenant("no tenant: x".into()), "08004"),
            (ClientError::UnknownTenant("acme".into()), "3D000"),
            (ClientError::TlsRequired, "28000"),
            (ClientError::AuthFailed("app".into()), "28P01"),
            (ClientError::PoolTimeout, "53300"),
            (
                ClientError::BackendUnavailable {
                    tenant: "acme".into(),
                    detail: "refused".into(),
                },
                "08006",
            ),
            (ClientError::Terminating("shutting down"), "57P01"),
            (
                ClientError::TooManyConnections(Some("acme".into())),
                "53300",
            ),
            (ClientError::TooManyConnections(None), "53300"),
            (
                ClientError::TooManyPendingLogins { per_address: false },
                "53300",
            ),
            (
                ClientError::TooManyPendingLogins { per_address: true },
                "53300",
            ),
            (ClientError::AuthUserLogin("sluice_auth".into()), "28000"),
            (ClientError::ConnectRateLimited("acme".into()), "53400"),
            (ClientError::QueryRateLimited("acme".into()), "53400"),
            (ClientError::Banned { retry_in_s: 120 }, "28P01"),
            (ClientError::IdleSessionTimeout, "57P05"),
            (ClientError::Suspended("acme".into()), "28000"),
            (ClientError::TenantTerminated("acme".into()), "57P01"),
            (ClientError::ProxyHeader("missing".into()), "08P01"),
            (ClientError::UntrustedProxy { sent_header: true }, "28000"),
            (ClientError::UntrustedProxy { sent_header: false }, "28000"),
        ];
        for (err, code) in cases {
            assert_eq!(err.sqlstate_and_message().0, code, "{err}");
        }
        let (_, msg) = ClientError::BackendUnavailable {
            tenant: "acme".into(),
            detail: "10.0.0.5:5432 refused".into(),
        }
        .sqlstate_and_message();
        assert_eq!(msg, "backend for tenant \"acme\" is unavailable");
    }
}
