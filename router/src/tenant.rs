//! Tenants and what Sluice knows about each one's backend.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::{BanPolicy, Cidr};
use crate::tenant_id::TenantId;

/// One tenant as the data plane sees it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub backend: Arc<Backend>,
    pub pool: PoolSettings,
    pub limits: Limits,
    /// Why the tenant is suspended (new connections get 28000), if it is.
    pub suspended: Option<String>,
    /// The tenant's own host names (`POST /v1/tenants/{id}/hostnames`), each with its
    /// certificate: a client whose TLS server name is exactly one of them reaches this
    /// tenant and is served that certificate (docs/routing.md).
    pub hostnames: Vec<TenantHostname>,
}

/// One of a tenant's own host names, with its certificate chain and private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct TenantHostname {
    /// Lowercase, without a trailing dot.
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for TenantHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("TenantHostname")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Per-tenant limits enforced by Sluice itself (so a client cannot `SET` them away).
/// `None` means no limit. See docs/limits.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A query running longer is cancelled on the backend (client: 57014).
    pub query_timeout: Option<Duration>,
    /// A client idle inside a transaction longer is disconnected (25P03).
    pub idle_in_transaction_timeout: Option<Duration>,
    /// A client idle outside a transaction longer is disconnected (57P05).
    pub client_idle_timeout: Option<Duration>,
    /// Client connections of the tenant at once (53300).
    pub max_client_connections: Option<usize>,
    /// Server connections of the tenant across all its pools; a pool that needs one
    /// more closes a sibling's idle one, or waits (up to `max_wait`, then 53300).
    pub max_server_connections: Option<usize>,
    /// New connections per second, token bucket with a burst of twice the rate (53400).
    pub connect_rate: Option<u32>,
    /// Queries per second; excess queries wait in line up to the pool's `max_wait`,
    /// then 53400.
    pub query_rate: Option<u32>,
    /// Bytes per second the tenant's clients send, over all their connections: a
    /// relay that has read past it waits before it reads again (TCP pushes back on the
    /// client), so a tenant's bulk traffic cannot take the CPU every tenant shares.
    pub client_bytes_rate: Option<u64>,
    /// The same for what the tenant's server connections send to its clients.
    pub server_bytes_rate: Option<u64>,
    /// Logins (TLS handshake to authenticated) of the tenant in progress at once; more
    /// wait their turn, so one tenant's storm cannot take every login slot.
    pub max_concurrent_logins: usize,
    /// Failed logins from one address before that address is refused for a while.
    pub failed_logins: BanPolicy,
    /// Client addresses allowed to connect; empty = any.
    pub allow_cidrs: Vec<Cidr>,
    /// Scale to zero: a tenant with no client for this long has its backend stopped
    /// (drivers local, lxc, proxmox); the next login starts it again.
    pub suspend_after_idle: Option<Duration>,
    /// Storage watermarks: the size of the tenant's databases at which it gets a
    /// warning (80 %) and becomes read-only for new transactions (100 %), in bytes.
    /// From `limits.disk_limit_mb`, else the plan's `[backend] disk_gib`.
    pub disk_limit: Option<u64>,
}

impl Default for Limits {
    /// The documented defaults (configs/sluice.example.toml).
    fn default() -> Self {
        Limits {
            query_timeout: None,
            idle_in_transaction_timeout: None,
            client_idle_timeout: None,
            max_client_connections: Some(200),
            max_server_connections: None,
            connect_rate: Some(50),
            query_rate: None,
            client_bytes_rate: None,
            server_bytes_rate: None,
            max_concurrent_logins: 32,
            failed_logins: BanPolicy {
                max_failures: 10,
                window: Duration::from_secs(60),
                ban: Duration::from_secs(120),
            },
            allow_cidrs: Vec::new(),
            suspend_after_idle: None,
            disk_limit: None,
        }
    }
}

/// How to reach a tenant's Postgres and how to read its roles' secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: BackendAddr,
    pub tls: BackendTls,
    /// CA bundle (PEM) for `tls = "verify-full"`.
    pub tls_ca: Option<PathBuf>,
    /// The role Sluice logs in as to run `auth_query` (never used for client sessions).
    pub auth_user: String,
    /// Whether a client may log in through Sluice as `auth_user` (default no: 28000).
    pub allow_auth_user_login: bool,
    /// Its password, read from `auth_password_file` when the config was loaded.
    pub auth_password: String,
    /// The database `auth_query` runs in.
    pub auth_database: String,
    /// Returns `(rolpassword, rolvaliduntil as epoch seconds)` for the role named by
    /// `$1`, or no row.
    pub auth_query: String,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The auth password never reaches a log line.
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("auth_user", &self.auth_user)
            .field("allow_auth_user_login", &self.allow_auth_user_login)
            .field("auth_database", &self.auth_database)
            .finish_non_exhaustive()
    }
}

/// The default auth query, like PgBouncer's: only roles that may log in, with their
/// expiry (seconds since the epoch, `Infinity` or NULL) so Sluice can honour
/// `rolvaliduntil` even from its cache. It reads `pg_authid`, so `auth_user` must be a
/// superuser unless a SECURITY DEFINER function is used instead (see docs/auth.md).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolpassword, extract(epoch FROM rolvaliduntil)::float8 FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin";

/// A backend address as libpq understands `host`: a name or IP for TCP, or a directory
/// holding the unix socket `.s.PGSQL.<port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    Tcp { host: String, port: u16 },
    Unix { dir: PathBuf, port: u16 },
}

impl BackendAddr {
    /// libpq's rule: a host starting with `/` is a socket directory.
    pub fn from_host(host: &str, port: u16) -> Self {
        if host.starts_with('/') {
            BackendAddr::Unix {
                dir: PathBuf::from(host),
                port,
            }
        } else {
            BackendAddr::Tcp {
                host: host.to_owned(),
                port,
            }
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BackendAddr::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// TLS towards the backend, with libpq's `sslmode` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTls {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, without verifying the certificate.
    Prefer,
    /// TLS or fail, without verifying the certificate.
    Require,
    /// TLS, certificate chained to `tls_ca` and matching the host name.
    VerifyFull,
}

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// From login to logout.
    Session,
    /// From the start of a transaction to the ReadyForQuery that reports idle.
    Transaction,
}

/// Settings of each (tenant, database, role) pool of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    /// Most server connections one pool may hold.
    pub size: usize,
    /// How long a client waits in the queue for a server connection before 53300.
    pub max_wait: Duration,
    /// Idle server connections older than this (since last use) are closed.
    pub idle_timeout: Duration,
    /// Server connections older than this are closed at their next idle moment.
    pub lifetime: Duration,
    /// Transaction mode: prepared statements kept per server connection (LRU).
    pub max_prepared_statements: usize,
    /// Idle server connections kept open (with the latest client's credential).
    pub min_idle: usize,
    /// Extra connections beyond `size` for clients that waited `reserve_wait`.
    pub reserve: usize,
    pub reserve_wait: Duration,
    /// Transaction mode: what happens to a client whose SQL leaves state on its
    /// server connection (`SET`, `LISTEN`, a temporary table, …).
    pub session_state: SessionState,
}

/// `[pool] session_state`: what transaction mode does with a client whose session
/// starts holding state on its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionState {
    /// The client keeps its server connection until the state is gone (`DISCARD ALL`)
    /// or it leaves, as on a direct connection.
    #[default]
    Pin,
    /// The statement fails with SQLSTATE 0A000; the client's connection stays usable.
    Refuse,
}

impl SessionState {
    /// The config file's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pin => "pin",
            SessionState::Refuse => "refuse",
        }
    }

    /// The policy a config word names.
    pub fn parse(word: &str) -> Option<SessionState> {
        match word {
            "pin" => Some(SessionState::Pin),
            "refuse" => Some(SessionState::Refuse),
            _ => None,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            mode: PoolMode::Session,
            size: 20,
            // PgBouncer's query_wait_timeout.
            max_wait: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            max_prepared_statements: 200,
            min_idle: 0,
            reserve: 0,
            reserve_wait: Duration::from_millis(1000),
            session_state: SessionState::Pin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_dns_labels() {
        for ok in ["acme", "a", "a-b", "0abc", &"x".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Acme", "a.b", "a_b", &"x".repeat(64), "é"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_starting_with_slash_is_a_socket_dir() {
        assert_eq!(
            BackendAddr::from_host("/run/pg", 5433),
            BackendAddr::Unix {
                dir: "/run/pg".into(),
                port: 5433
            }
        );
        assert_eq!(
            BackendAddr::from_host("db.internal", 5432).to_string(),
            "db.internal:5432"
        );
    }
}
