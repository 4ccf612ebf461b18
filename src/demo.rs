//! `sluice demo`: two local tenants, `acme` and `globex`, each with its own Postgres
//! cluster, behind one Sluice listener with TLS and SNI, ready for plain `psql`.
//!
//! The first run creates everything under the demo directory; later runs reuse it
//! (same CA, same passwords). The demo writes an ordinary config file
//! (`DIR/sluice.toml`) and serves it through the same code path as `sluice serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use localpg::tls::CertificateAuthority;
use localpg::{Cluster, ClusterConfig, Installation, StopMode, Template};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use wire::scram::Verifier;

use crate::config::Config;
use crate::serve;

const SNI_SUFFIX: &str = "db.example.test";
const TENANTS: [&str; 2] = ["acme", "globex"];
const APP_ROLE: &str = "app";
const APP_DATABASE: &str = "app";
const AUTH_ROLE: &str = "sluice_auth";

/// `DIR/demo.json`: what a person (or a script) needs to connect.
#[derive(Debug, Serialize, Deserialize)]
struct DemoFacts {
    proxy: String,
    admin_url: String,
    admin_key: String,
    ca_cert: PathBuf,
    config: PathBuf,
    tenants: Vec<DemoTenant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DemoTenant {
    id: String,
    host: String,
    role: String,
    password: String,
    connection_string: String,
    psql: String,
}

/// Per-tenant secrets kept between runs (`DIR/tenants/<id>/secrets.json`, mode 0600).
#[derive(Debug, Serialize, Deserialize)]
struct TenantSecrets {
    app_password: String,
}

pub fn run(dir: &Path, listen: SocketAddr, admin_listen: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let install = Installation::discover().context("finding the PostgreSQL server binaries")?;
    let template = Template::ensure(&install, &localpg::default_template_cache())
        .context("preparing the initdb template")?;
    let ca_cert = certificates(&dir)?;

    let mut clusters = Vec::new();
    let mut secrets = Vec::new();
    for id in TENANTS {
        let (cluster, secret) = tenant_cluster(&install, &template, &dir, id)?;
        clusters.push(cluster);
        secrets.push(secret);
    }

    let config_path = dir.join("sluice.toml");
    std::fs::write(&config_path, config_text(&dir, listen, admin_listen))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    let runtime = config.runtime()?;

    let rt = serve::tokio_runtime()?;
    let result = rt.block_on(async {
        for (id, secret) in TENANTS.iter().zip(&secrets) {
            seed_marker(&config, id, &secret.app_password).await?;
        }
        let shutdown = serve::shutdown_on_signals()?;
        let running = serve::start(runtime).await.with_context(|| {
            format!(
                "starting the proxy on {listen} and the admin API on {admin_listen} \
                 (pass --listen / --admin-listen 127.0.0.1:PORT if taken)"
            )
        })?;
        let admin = Admin {
            url: format!("http://{}", running.admin_addr()),
            key: std::fs::read_to_string(dir.join("admin.key"))?
                .trim()
                .to_owned(),
        };
        let facts = facts(&config_path, &ca_cert, running.addrs[0], admin, &secrets);
        write_private(
            &dir.join("demo.json"),
            serde_json::to_string_pretty(&facts)?.as_bytes(),
        )?;
        print_instructions(&facts);
        running.wait(shutdown).await;
        anyhow::Ok(())
    });
    drop(rt);
    for mut cluster in clusters {
        if let Err(e) = cluster.stop(StopMode::Fast) {
            eprintln!("stopping {}: {e}", cluster.data_dir().display());
        }
    }
    result
}

/// The demo CA (reused across runs) and the proxy's wildcard certificate.
fn certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let (ca_cert, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
    let ca = if ca_cert.exists() && ca_key.exists() {
        CertificateAuthority::load(&ca_cert, &ca_key)?
    } else {
        let ca = CertificateAuthority::generate("Sluice demo CA")?;
        ca.write(&ca_cert, &ca_key)?;
        ca
    };
    let wildcard = format!("*.{SNI_SUFFIX}");
    ca.issue(&[&wildcard, SNI_SUFFIX, "localhost", "127.0.0.1"])?
        .write(&tls.join("proxy.crt"), &tls.join("proxy.key"))?;
    Ok(ca_cert)
}

fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
    Verifier::from_password(password, &salt, 4096).to_postgres_string()
}

/// Creates (first run) or opens the tenant's cluster and starts it. Returns the secrets.
fn tenant_cluster(
    install: &Installation,
    template: &Template,
    dir: &Path,
    id: &str,
) -> anyhow::Result<(Cluster, TenantSecrets)> {
    let home = dir.join("tenants").join(id);
    let data = home.join("data");
    let secrets_path = home.join("secrets.json");
    let mut cluster = if data.exists() && secrets_path.exists() {
        Cluster::open(install, &data)?
    } else {
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        std::fs::create_dir_all(&home)?;
        let cluster = Cluster::create(
            install,
            template,
            ClusterConfig::new(&data, home.join("run")),
        )?;
        let app_password = random_password();
        let auth_password = random_password();
        cluster.run_single_user(&bootstrap_sql(&app_password, &auth_password))?;
        write_private(&home.join("auth.pw"), auth_password.as_bytes())?;
        write_private(
            &secrets_path,
            serde_json::to_string(&TenantSecrets { app_password })?.as_bytes(),
        )?;
        cluster
    };
    let secrets: TenantSecrets = serde_json::from_slice(&std::fs::read(&secrets_path)?)?;
    if !cluster.is_running() {
        cluster
            .start()
            .with_context(|| format!("starting tenant {id}'s cluster"))?;
    }
    Ok((cluster, secrets))
}

/// One statement per line (single-user mode). Roles get SCRAM verifiers, never
/// plaintext; `sluice_auth` may only call a SECURITY DEFINER lookup function.
fn bootstrap_sql(app_password: &str, auth_password: &str) -> String {
    use localpg::bootstrap::{auth_lookup_sql, create_login_role};
    [
        format!(
            "ALTER ROLE postgres PASSWORD '{}'",
            scram_verifier(&random_password())
        ),
        create_login_role(APP_ROLE, &scram_verifier(app_password)),
        create_login_role(AUTH_ROLE, &scram_verifier(auth_password)),
        format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}"),
        auth_lookup_sql(AUTH_ROLE),
    ]
    .join("\n")
}

/// A table that says which tenant's database you are in, created through Sluice's own
/// client code as the tenant's app role.
async fn seed_marker(config: &Config, id: &str, app_password: &str) -> anyhow::Result<()> {
    let runtime = config.runtime()?;
    let declared = runtime
        .tenants
        .iter()
        .find(|t| t.record.id == id)
        .context("demo tenant missing from its config")?;
    let tenant = admin_api::catalog_sync::materialize(
        &runtime.plans,
        &declared.record,
        Some(&declared.auth_password),
    )?
    .context("demo tenant is not active")?;
    let tls = pooler::TlsConnectors::new();
    let credential = pooler::ServerCredential::Password(app_password.to_owned());
    let mut conn = pooler::connect(
        pooler::ConnectRequest {
            backend: &tenant.backend,
            user: APP_ROLE,
            database: APP_DATABASE,
            credential: &credential,
        },
        &tls,
    )
    .await
    .with_context(|| format!("logging into {id}'s cluster as {APP_ROLE}"))?;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS tenant_marker (tenant text PRIMARY KEY); \
         INSERT INTO tenant_marker VALUES ('{id}') ON CONFLICT DO NOTHING"
    );
    let outcome = conn.simple_query(&sql).await?;
    conn.terminate().await;
    if let Some(e) = outcome.error {
        bail!(
            "creating the marker table for {id}: {} {}",
            e.code,
            e.message
        );
    }
    Ok(())
}

fn config_text(dir: &Path, listen: SocketAddr, admin_listen: SocketAddr) -> String {
    let mut text = format!(
        "# Written by `sluice demo`; rewritten on every run.\n\
         data_dir = {data:?}\n\n\
         [proxy]\n\
         listen = [\"{listen}\"]\n\
         tls_cert = {cert:?}\n\
         tls_key = {key:?}\n\
         sni_suffix = \"{SNI_SUFFIX}\"\n\
         require_tls = true\n\
         tenant_from_options = true\n\n\
         [admin]\n\
         listen = \"{admin_listen}\"\n\
         bootstrap_key_file = {admin_key:?}\n\n\
         [defaults.pool]\n\
         mode = \"session\"\n\
         size = 10\n",
        data = dir.display().to_string(),
        cert = dir.join("tls/proxy.crt").display().to_string(),
        key = dir.join("tls/proxy.key").display().to_string(),
        admin_key = dir.join("admin.key").display().to_string(),
    );
    for id in TENANTS {
        let home = dir.join("tenants").join(id);
        text.push_str(&format!(
            "\n[[tenants]]\n\
             id = \"{id}\"\n\
             [tenants.backend]\n\
             host = {host:?}\n\
             port = 5432\n\
             tls = \"disable\"   # a unix socket only Sluice (root) can reach\n\
             auth_user = \"{AUTH_ROLE}\"\n\
             auth_password_file = {pw:?}\n\
             auth_query = \"{query}\"\n",
            query = localpg::bootstrap::AUTH_QUERY,
            host = home.join("run").display().to_string(),
            pw = home.join("auth.pw").display().to_string(),
        ));
    }
    text
}

/// Where the admin API answers, and the bootstrap admin key.
struct Admin {
    url: String,
    key: String,
}

fn facts(
    config: &Path,
    ca_cert: &Path,
    proxy: SocketAddr,
    admin: Admin,
    secrets: &[TenantSecrets],
) -> DemoFacts {
    let tenants = TENANTS
        .iter()
        .zip(secrets)
        .map(|(id, s)| {
            let host = format!("{id}.{SNI_SUFFIX}");
            let conninfo = format!(
                "host={host} hostaddr={ip} port={port} user={APP_ROLE} dbname={APP_DATABASE} sslmode=verify-full sslrootcert={ca}",
                ip = proxy.ip(),
                port = proxy.port(),
                ca = ca_cert.display(),
            );
            DemoTenant {
                id: id.to_string(),
                host,
                role: APP_ROLE.into(),
                password: s.app_password.clone(),
                psql: format!("PGPASSWORD={} psql \"{conninfo}\"", s.app_password),
                connection_string: conninfo,
            }
        })
        .collect();
    DemoFacts {
        proxy: proxy.to_string(),
        admin_url: admin.url,
        admin_key: admin.key,
        ca_cert: ca_cert.to_owned(),
        config: config.to_owned(),
        tenants,
    }
}

fn print_instructions(facts: &DemoFacts) {
    println!();
    println!(
        "Sluice demo is running on {} (Ctrl-C stops everything).",
        facts.proxy
    );
    println!("Each tenant has its own Postgres; connect by host name alone:");
    for t in &facts.tenants {
        println!();
        println!("  # tenant {}", t.id);
        println!("  {} -c 'select * from tenant_marker'", t.psql);
    }
    println!();
    println!("Admin API {} (key in demo.json):", facts.admin_url);
    println!("  curl -s {}/metrics", facts.admin_url);
    println!(
        "  sluice stats --watch --api {} --token {}",
        facts.admin_url, facts.admin_key
    );
    println!();
    println!(
        "Facts for scripts: {}",
        facts.config.with_file_name("demo.json").display()
    );
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
