//! Real clients: psql and pgbench (libpq) as processes, tokio-postgres in process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where and how a client connects through Sluice.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub addr: SocketAddr,
    /// Host name sent as SNI; `None` connects by IP (no SNI).
    pub sni_host: Option<String>,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub options: Option<String>,
    pub ca: PathBuf,
    /// libpq sslmode (`require`, `verify-full`, `disable`).
    pub sslmode: &'static str,
    /// More `key=value` words for libpq (psql and pgbench only).
    pub conninfo_extra: Option<String>,
}

impl PgTarget {
    pub fn tenant(addr: SocketAddr, tenant: &str, password: &str, ca: &Path) -> Self {
        PgTarget {
            addr,
            sni_host: Some(format!("{tenant}.{}", crate::pki::SNI_SUFFIX)),
            user: crate::cluster::APP_ROLE.into(),
            password: password.into(),
            dbname: crate::cluster::APP_DATABASE.into(),
            options: None,
            ca: ca.to_owned(),
            sslmode: "verify-full",
            conninfo_extra: None,
        }
    }

    /// The libpq connection string (password passed separately in PGPASSWORD).
    pub fn conninfo(&self) -> String {
        let mut s = match &self.sni_host {
            Some(host) => format!("host={host} hostaddr={}", self.addr.ip()),
            None => format!("host={}", self.addr.ip()),
        };
        s.push_str(&format!(
            " port={} user={} dbname={} sslmode={} sslrootcert={}",
            self.addr.port(),
            self.user,
            self.dbname,
            self.sslmode,
            self.ca.display()
        ));
        if let Some(o) = &self.options {
            s.push_str(&format!(" options='{o}'"));
        }
        if let Some(extra) = &self.conninfo_extra {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }
}

#[derive(Debug)]
pub struct PsqlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `psql -XAtq -c sql` against `target`.
pub fn psql(target: &PgTarget, sql: &str) -> PsqlOutput {
    let out = Command::new("psql")
        .arg(target.conninfo())
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .expect("running psql");
    PsqlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// `pgbench` with `args` against `target` (conninfo as the database argument).
pub fn pgbench(target: &PgTarget, args: &[&str]) -> PsqlOutput {
    let out = Command::new("pgbench")
        .args(args)
        .arg(target.conninfo())
        .env("PGPASSWORD", &target.password)
        .output()
        .expect("running pgbench");
    PsqlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// A tokio-postgres TLS connector trusting `ca`.
pub fn tls_connector(ca: &Path) -> MakeRustlsConnect {
    MakeRustlsConnect::new(rustls_config(ca))
}

/// A rustls client config trusting `ca` (no ALPN, no client certificate).
pub fn rustls_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("reading CA");
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

use rustls_pki_types::pem::PemObject;

/// The one value of a one-row, one-column query (panics with the query on failure).
pub async fn scalar<T>(client: &Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Connects with tokio-postgres (TLS with SNI from `sni_host`) and drives the
/// connection in a task.
pub async fn pg_connect(target: &PgTarget) -> Result<Client, tokio_postgres::Error> {
    let config = pg_config(target);
    let (client, connection) = config.connect(tls_connector(&target.ca)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects like [`pg_connect`], but from the local address `source` (any 127.x.y.z
/// reaches a loopback listener), so tests can play several client hosts. The task
/// driving the connection returns how the connection ended (a FATAL from Sluice shows
/// up there).
pub async fn pg_connect_from(
    target: &PgTarget,
    source: std::net::IpAddr,
) -> Result<
    (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    use tokio_postgres::tls::MakeTlsConnect;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(source, 0))
        .expect("bind the source address");
    let tcp = socket
        .connect(target.addr)
        .await
        .expect("connect to Sluice");
    let host = target
        .sni_host
        .clone()
        .unwrap_or_else(|| target.addr.ip().to_string());
    let mut tls = tls_connector(&target.ca);
    let tls = <MakeRustlsConnect as MakeTlsConnect<tokio::net::TcpStream>>::make_tls_connect(
        &mut tls, &host,
    )
    .expect("TLS connector");
    let (client, connection) = pg_config(target).connect_raw(tcp, tls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// The tokio-postgres settings for `target` (SNI host, TLS unless `disable`, 20 s
/// connect timeout), for tests that connect in their own way.
pub fn pg_config(target: &PgTarget) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    match &target.sni_host {
        Some(host) => {
            config.host(host).hostaddr(target.addr.ip());
        }
        None => {
            config.host(target.addr.ip().to_string());
        }
    }
    config
        .port(target.addr.port())
        .user(&target.user)
        .password(&target.password)
        .dbname(&target.dbname)
        .connect_timeout(std::time::Duration::from_secs(20))
        .ssl_mode(match target.sslmode {
            "disable" => SslMode::Disable,
            _ => SslMode::Require,
        });
    if let Some(o) = &target.options {
        config.options(o);
    }
    config
}
