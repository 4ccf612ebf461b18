//! Opening an administrator's connection to a backend, with the TLS its address asks for,
//! and waiting until a new backend accepts one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use router::BackendTls;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::driver::BackendAddress;

/// How long opening an admin connection may take, TLS and authentication included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts of [`wait_ready`].
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// An administrator's connection to one database of a backend (it derefs to the
/// tokio-postgres [`Client`]), which can open more as the same administrator: setting a
/// backend up and dropping a role need statements in `postgres` and in `app`, and a
/// connection is bound to one database.
pub struct AdminClient {
    client: Client,
    addr: BackendAddress,
    password: String,
    database: String,
}

impl std::fmt::Debug for AdminClient {
    /// Never shows the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for AdminClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl AdminClient {
    /// The database this connection is in.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The backend it is connected to.
    pub fn address(&self) -> &BackendAddress {
        &self.addr
    }

    /// A connection to `database`: None when this one is already there (use `self`).
    pub(super) async fn open_in(&self, database: &str) -> anyhow::Result<Option<AdminClient>> {
        if self.database == database {
            return Ok(None);
        }
        connect_admin(&self.addr, &self.password, Some(database))
            .await
            .map(Some)
    }
}

/// Logs into `addr` as its administrator, into `database` (default: the address's
/// `admin_database`), with TLS as `addr.tls` says, and drives the connection in a task.
/// Gives up after 10 s.
pub async fn connect_admin(
    addr: &BackendAddress,
    password: &str,
    database: Option<&str>,
) -> anyhow::Result<AdminClient> {
    let database = database.unwrap_or(&addr.admin_database);
    let context = || {
        format!(
            "logging into {} as {:?} (database {database:?})",
            describe(addr),
            addr.admin_user
        )
    };
    let tls = tls_connector(addr).with_context(context)?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&addr.host)
        .port(addr.port)
        .user(&addr.admin_user)
        .password(password)
        .dbname(database)
        .application_name("sluice-control")
        .connect_timeout(CONNECT_TIMEOUT);
    let connecting = async {
        match tls {
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(drive(connection));
                Ok::<_, tokio_postgres::Error>(client)
            }
            Some((mode, tls)) => {
                config.ssl_mode(mode);
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(AdminClient {
            client,
            addr: addr.clone(),
            password: password.to_owned(),
            database: database.to_owned(),
        }),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(context())),
        Err(_) => Err(anyhow!("timed out after {CONNECT_TIMEOUT:?}").context(context())),
    }
}

/// Runs an admin connection until it ends; its errors reach the client's callers.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "admin connection to a backend ended");
    }
}

/// The TLS side of an admin connection: None for plaintext (and unix sockets), else the
/// sslmode and a connector that verifies nothing (`prefer`, `require`: libpq's meaning) or
/// checks the chain to `tls_ca` and the host name (`verify-full`).
fn tls_connector(
    addr: &BackendAddress,
) -> anyhow::Result<Option<(tokio_postgres::config::SslMode, MakeRustlsConnect)>> {
    use tokio_postgres::config::SslMode;
    let mode = tls_mode(&addr.tls).map_err(|e| anyhow!(e))?;
    if addr.host.starts_with('/') {
        return Ok(None);
    }
    let connectors = pooler::TlsConnectors::new();
    let (ssl_mode, config) = match mode {
        BackendTls::Disable => return Ok(None),
        BackendTls::Prefer => (SslMode::Prefer, connectors.unverified()),
        BackendTls::Require => (SslMode::Require, connectors.unverified()),
        BackendTls::VerifyFull => {
            let ca = addr
                .tls_ca
                .as_deref()
                .context("tls = \"verify-full\" needs a tls_ca")?;
            (SslMode::Require, connectors.verified(ca)?)
        }
    };
    Ok(Some((
        ssl_mode,
        MakeRustlsConnect::new(Arc::unwrap_or_clone(config)),
    )))
}

/// Parses libpq's sslmode words that Sluice supports.
pub(crate) fn tls_mode(word: &str) -> Result<BackendTls, String> {
    match word {
        "disable" => Ok(BackendTls::Disable),
        "prefer" => Ok(BackendTls::Prefer),
        "require" => Ok(BackendTls::Require),
        "verify-full" => Ok(BackendTls::VerifyFull),
        other => Err(format!(
            "tls must be one of disable, prefer, require, verify-full (not {other:?})"
        )),
    }
}

/// `host:port`, or the socket directory and port, for messages.
fn describe(addr: &BackendAddress) -> String {
    if addr.host.starts_with('/') {
        format!("{} (port {})", addr.host, addr.port)
    } else {
        format!("{}:{}", addr.host, addr.port)
    }
}

/// Retries logging in and running `SELECT 1` until it works or `timeout` has passed. An
/// error that waiting would not change ([`is_permanent`]: a refused login, a TLS
/// handshake that cannot succeed) fails at once.
pub async fn wait_ready(
    addr: &BackendAddress,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let client = connect_admin(addr, password, None).await?;
            client
                .simple_query("SELECT 1")
                .await
                .context("running SELECT 1")?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if is_permanent(&e) => return Err(e),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the backend at {} was not ready after {timeout:?}",
                    describe(addr)
                )))
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// An error that trying again cannot fix, from a driver's own checks (an administrator
/// that is not a superuser, say); see [`is_permanent`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// True for errors that trying again cannot fix, so that a provisioning job fails at once
/// with its cause: a [`Permanent`] error, or a backend's answer that does not depend on
/// time: any ErrorResponse (a refused login: 28P01 wrong password, 28000 no such role or
/// no `pg_hba.conf` entry, 3D000 no such database; a statement's error), or a TLS
/// handshake that cannot succeed (`server does not support TLS`, a certificate that does
/// not verify), an authentication method Sluice cannot answer, a bad configuration.
///
/// Transient, and retried: no answer at all (connection refused or reset, a missing unix
/// socket, unreachable, timeouts), and the answers of a server that is starting,
/// stopping or full (57P03, 57P01–57P03, 53xxx) or of a connection-class error (08xxx).
pub fn is_permanent(error: &anyhow::Error) -> bool {
    if error.chain().any(|cause| cause.is::<Permanent>()) {
        return true;
    }
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
        .is_some_and(permanent_postgres_error)
}

fn permanent_postgres_error(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        let class = &code.code()[..2];
        return !matches!(class, "08" | "53" | "57" | "40");
    }
    // tokio-postgres tells its error kinds apart only in their text.
    let kind = error.to_string();
    let permanent_kind = [
        "error performing TLS handshake",
        "authentication error",
        "invalid configuration",
        "invalid connection string",
    ]
    .contains(&kind.as_str());
    permanent_kind && !lost_connection(error)
}

/// Whether an I/O failure of the connection (reset, closed early, timed out) lies under
/// `error`: a TLS handshake cut short that way may well succeed next time.
fn lost_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut
            ) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}
