//! A tenant's backend for tests: a real cluster with an `app` role and database, a
//! `sluice_auth` role for auth_query, and a marker table naming the tenant.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use localpg::bootstrap::{auth_lookup_sql, create_login_role};
use localpg::{Cluster, ClusterConfig, Installation, StopMode, Template};
use rand::distributions::{Alphanumeric, DistString};
use wire::scram::Verifier;

use crate::pki::Pki;

pub struct TestClusterOptions<'a> {
    /// Listen on 127.0.0.1 with TLS using these certificates; else unix socket only.
    pub tcp_tls: Option<&'a Pki>,
    /// Also create role `md5user` with an md5 password (password_encryption = md5).
    pub md5_role: bool,
    pub max_connections: u32,
}

impl Default for TestClusterOptions<'_> {
    fn default() -> Self {
        TestClusterOptions {
            tcp_tls: None,
            md5_role: false,
            max_connections: 100,
        }
    }
}

pub struct TestCluster {
    pub name: String,
    pub cluster: Cluster,
    pub socket_dir: PathBuf,
    pub tcp_port: Option<u16>,
    pub app_password: String,
    pub auth_password_file: PathBuf,
}

pub const APP_ROLE: &str = "app";
pub const APP_DATABASE: &str = "app";
pub const AUTH_ROLE: &str = "sluice_auth";
pub const MD5_ROLE: &str = "md5user";
/// A login role whose `rolvaliduntil` is in the past (password = app's).
pub const EXPIRED_ROLE: &str = "expired";

fn install_and_template() -> &'static (Installation, Template) {
    static CELL: OnceLock<(Installation, Template)> = OnceLock::new();
    CELL.get_or_init(|| {
        let install = Installation::discover().expect("PostgreSQL server binaries");
        let template =
            Template::ensure(&install, &localpg::default_template_cache()).expect("template");
        (install, template)
    })
}

fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 20)
}

pub fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
    Verifier::from_password(password, &salt, 4096).to_postgres_string()
}

impl TestCluster {
    /// Creates and starts a cluster under `dir/name`.
    pub fn start(dir: &Path, name: &str, opts: TestClusterOptions<'_>) -> anyhow::Result<Self> {
        // The TCP port comes from the OS and is released before the postmaster binds it;
        // another socket (a client's ephemeral port, in a busy test run) may take it
        // meanwhile. Then the cluster is made again on a fresh port.
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, name, &opts) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("already in use") => {
                    attempt += 1;
                    std::fs::remove_dir_all(dir.join(name))?;
                }
                result => return result,
            }
        }
    }

    fn start_once(dir: &Path, name: &str, opts: &TestClusterOptions<'_>) -> anyhow::Result<Self> {
        let (install, template) = install_and_template();
        let home = dir.join(name);
        std::fs::create_dir_all(&home)?;
        let socket_dir = home.join("run");
        let mut config = ClusterConfig::new(home.join("data"), &socket_dir);
        config.settings = vec![
            ("max_connections".into(), opts.max_connections.to_string()),
            ("fsync".into(), "off".into()),
        ];
        let tcp_port = match opts.tcp_tls {
            Some(pki) => {
                config.port = Some(localpg::free_port()?);
                config.tls = Some(localpg::TlsFiles {
                    cert_pem: pki.backend_cert.clone(),
                    key_pem: pki.backend_key.clone(),
                });
                config.port
            }
            None => None,
        };
        let mut cluster = Cluster::create(install, template, config)?;
        let app_password = random_password();
        let auth_password = random_password();
        let mut sql = vec![
            create_login_role(APP_ROLE, &scram_verifier(&app_password)),
            create_login_role(AUTH_ROLE, &scram_verifier(&auth_password)),
            format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}"),
            auth_lookup_sql(AUTH_ROLE),
            // Same password as app, but its validity ended long ago.
            format!(
                "{} VALID UNTIL '2000-01-01'",
                create_login_role(EXPIRED_ROLE, &scram_verifier(&app_password))
            ),
        ];
        if opts.md5_role {
            let hash = wire::md5::md5_password_hash(MD5_ROLE, &app_password);
            sql.push(format!("CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{hash}'"));
            sql.push(format!(
                "GRANT ALL ON DATABASE {APP_DATABASE} TO {MD5_ROLE}"
            ));
        }
        cluster.run_single_user(&sql.join("\n"))?;
        if opts.md5_role {
            // md5 roles need md5 (not scram) in pg_hba; lines are matched in order.
            let hba = cluster.data_dir().join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba)?;
            std::fs::write(
                &hba,
                format!("local all {MD5_ROLE} md5\nhost all {MD5_ROLE} 127.0.0.1/32 md5\n{old}"),
            )?;
        }
        let auth_password_file = home.join("auth.pw");
        std::fs::write(&auth_password_file, &auth_password)?;
        cluster.start()?;
        let tc = TestCluster {
            name: name.to_owned(),
            cluster,
            socket_dir,
            tcp_port,
            app_password,
            auth_password_file,
        };
        let out = tc.psql_direct(&format!(
            "CREATE TABLE tenant_marker (tenant text); INSERT INTO tenant_marker VALUES ('{name}')"
        ));
        anyhow::ensure!(
            out.status.success(),
            "marker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(tc)
    }

    /// libpq conninfo for a direct connection as `app` over the unix socket.
    pub fn direct_conninfo(&self) -> String {
        format!(
            "host={} port={} user={APP_ROLE} dbname={APP_DATABASE}",
            self.socket_dir.display(),
            self.cluster.socket_port()
        )
    }

    /// Runs SQL directly on the cluster as `app` (not through Sluice).
    pub fn psql_direct(&self, sql: &str) -> std::process::Output {
        std::process::Command::new("psql")
            .arg(self.direct_conninfo())
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", &self.app_password)
            .output()
            .expect("running psql")
    }

    /// Counts sessions of `role` (excluding the counting one) via pg_stat_activity.
    pub fn sessions_of(&self, role: &str) -> usize {
        let out = self.psql_direct(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND pid <> pg_backend_pid()"
        ));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(usize::MAX)
    }

    pub fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        Ok(self.cluster.stop(mode)?)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        Ok(self.cluster.start()?)
    }
}
