//! Opening an administrator's connection to a backend, with the TLS its address asks for,
//! and waiting until a new backend accepts one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use router::BackendTls;
use tokio_postgres::error::SqlState;
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

/// Retries logging in and running `SELECT 1` until it works or `timeout` has passed. A
/// refused login (wrong password, unknown role or database) fails at once: waiting would
/// not change it.
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
            Err(e) if is_refusal(&e) => return Err(e),
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

/// True for errors that retrying cannot fix: the server refused the login itself.
fn is_refusal(error: &anyhow::Error) -> bool {
    let refusals = [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        SqlState::INVALID_CATALOG_NAME,
    ];
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| refusals.contains(code))
}
