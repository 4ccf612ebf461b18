//! `sluice demo`: two tenants, `acme` and `globex`, each with its own Postgres cluster,
//! behind one Sluice listener with TLS and SNI, ready for plain `psql`.
//!
//! The demo is `sluice serve` on a config it writes (`DIR/sluice.toml`: the embedded
//! control store and the `local` provisioner under `DIR`), plus what an operator would
//! do next through the admin API: create the two tenants (the same provisioning jobs as
//! `POST /v1/tenants`), give each a login role `app`, and write `DIR/demo.json`. Later
//! runs reuse everything (the store knows the tenants; the role passwords come back from
//! the previous `demo.json`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use localpg::tls::CertificateAuthority;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod fleet;

use crate::api_client::{ApiClient, ApiError};
use crate::config::Config;
use crate::serve;

const SNI_SUFFIX: &str = "db.example.test";
const TENANTS: [&str; 2] = ["acme", "globex"];
const APP_ROLE: &str = "app";
const APP_DATABASE: &str = "app";
/// How long the first run may take to provision a tenant.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(120);

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

/// `replicas` above 1 makes the demo a fleet behind HAProxy (fleet.rs).
pub fn run(
    dir: &Path,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    replicas: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let ca_cert = certificates(&dir)?;
    let config_path = dir.join("sluice.toml");
    let plan = (replicas > 1)
        .then(|| fleet::Plan::new(&dir, replicas, listen, admin_listen))
        .transpose()?;
    // Replica 0 is this process (`DIR/sluice.toml`); the others run `DIR/r<i>.toml`.
    let mut others = Vec::new();
    let replicas: Vec<Option<&fleet::Replica>> = match &plan {
        None => vec![None],
        Some(plan) => plan.replicas.iter().map(Some).collect(),
    };
    for (i, replica) in replicas.into_iter().enumerate() {
        let text = match replica {
            None => config_text(&dir, &dir, listen, admin_listen, "", ""),
            Some(r) => config_text(
                &dir,
                &r.data_dir,
                r.listen,
                r.admin,
                &r.proxy_lines,
                &r.sections,
            ),
        };
        let path = match i {
            0 => config_path.clone(),
            i => dir.join(format!("r{i}.toml")),
        };
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if i > 0 {
            others.push(path);
        }
    }
    let (config, table) = Config::read(&config_path)?;
    let runtime = config.runtime()?;
    let previous = previous_passwords(&dir.join("demo.json"));

    let rt = serve::tokio_runtime()?;
    rt.block_on(async {
        let signals = crate::signals::Signals::install()?;
        let shutdown = signals.shutdown.clone();
        let running = serve::start(runtime).await.with_context(|| {
            format!(
                "starting the proxy on {listen} and the admin API on {admin_listen} \
                 (pass --listen / --admin-listen 127.0.0.1:PORT if taken)"
            )
        })?;
        let proxy = running.addrs[0];
        let admin_url = format!("http://{}", running.admin_addr());
        let admin_key = std::fs::read_to_string(dir.join("admin.key"))?
            .trim()
            .to_owned();
        let file = crate::signals::ConfigFile {
            path: config_path.clone(),
            table,
        };
        let serving = tokio::spawn(running.wait(signals, file));
        // A fleet: the other replicas and HAProxy, stopped when this is dropped.
        let processes = match &plan {
            Some(plan) => {
                let (plan_dir, others) = (dir.clone(), others.clone());
                let started = tokio::task::block_in_place(|| {
                    fleet::Processes::start(plan, &others, &plan_dir)
                });
                match started {
                    Ok(p) => Some(p),
                    Err(e) => {
                        shutdown.cancel();
                        let _ = serving.await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let proxy = plan.as_ref().map_or(proxy, |p| p.front);
        let api = ApiClient::new(&admin_url, Some(admin_key.clone()))?;
        let mut passwords = Vec::new();
        for id in TENANTS {
            let prepared = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = prepare_tenant(&api, id, previous.get(id)) => r,
            };
            match prepared {
                Ok(password) => passwords.push(password),
                Err(e) => {
                    shutdown.cancel();
                    let _ = serving.await;
                    return Err(e.context(format!("preparing demo tenant {id}")));
                }
            }
        }
        if passwords.len() == TENANTS.len() {
            let facts = facts(
                &config_path,
                &ca_cert,
                proxy,
                admin_url,
                admin_key,
                &passwords,
            );
            write_private(
                &dir.join("demo.json"),
                serde_json::to_string_pretty(&facts)?.as_bytes(),
            )?;
            print_instructions(&facts);
        }
        serving.await.context("the demo's server task")?;
        tokio::task::block_in_place(|| drop(processes));
        anyhow::Ok(())
    })?;
    if let Some(plan) = plan {
        plan.store.stop()?;
    }
    Ok(())
}

/// The role passwords of the last run's `demo.json`, by tenant.
fn previous_passwords(path: &Path) -> HashMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<DemoFacts>(&bytes).ok())
        .map(|facts| {
            facts
                .tenants
                .into_iter()
                .map(|t| (t.id, t.password))
                .collect()
        })
        .unwrap_or_default()
}

/// Makes sure tenant `id` is active with a role `app` and a marker table, through the
/// admin API; returns the role's password.
async fn prepare_tenant(
    api: &ApiClient,
    id: &str,
    previous: Option<&String>,
) -> anyhow::Result<String> {
    let tenant = match api.get_json(&format!("/v1/tenants/{id}")).await {
        Ok(tenant) => tenant,
        Err(ApiError::Status { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            println!("sluice demo: provisioning tenant {id} (a Postgres cluster of its own)...");
            let created = api
                .post_json("/v1/tenants", Some(&json!({"id": id})))
                .await?;
            wait_job(api, created["job"]["id"].as_i64().unwrap_or_default()).await?;
            api.get_json(&format!("/v1/tenants/{id}")).await?
        }
        Err(e) => return Err(e.into()),
    };
    match tenant["status"].as_str() {
        Some("active") => {}
        Some("provisioning") => {
            bail!("tenant {id} is still provisioning; run the demo again in a moment")
        }
        other => bail!("tenant {id} is {other:?}; delete DIR to start over"),
    }
    let roles = api.get_json(&format!("/v1/tenants/{id}/roles")).await?;
    let has_role = roles["roles"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["name"] == APP_ROLE));
    let password = match (has_role, previous) {
        (true, Some(password)) => password.clone(),
        (true, None) => {
            let rotated = api
                .post_json(&format!("/v1/tenants/{id}/roles/{APP_ROLE}/rotate"), None)
                .await?;
            rotated["password"].as_str().unwrap_or_default().to_owned()
        }
        (false, _) => {
            let made = api
                .post_json(
                    &format!("/v1/tenants/{id}/roles"),
                    Some(&json!({"name": APP_ROLE})),
                )
                .await?;
            made["password"].as_str().unwrap_or_default().to_owned()
        }
    };
    seed_marker(id, &tenant, &password).await?;
    Ok(password)
}

async fn wait_job(api: &ApiClient, job: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PROVISION_TIMEOUT;
    loop {
        let state = api.get_json(&format!("/v1/jobs/{job}")).await?;
        match state["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("failed") => bail!("provisioning job {job} failed: {}", state["error"]),
            _ if Instant::now() > deadline => {
                bail!("provisioning job {job} did not finish in {PROVISION_TIMEOUT:?}: {state}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A table that says which tenant's database you are in, created as the tenant's app
/// role on its own backend (the address the API shows).
async fn seed_marker(id: &str, tenant: &Value, password: &str) -> anyhow::Result<()> {
    let address = tenant["backend"]["address"]
        .as_str()
        .context("the tenant has no backend address")?;
    let addr: SocketAddr = address
        .parse()
        .with_context(|| format!("backend address {address:?}"))?;
    let backend = router::Backend {
        addr: router::BackendAddr::from_host(&addr.ip().to_string(), addr.port()),
        tls: router::BackendTls::Require,
        tls_ca: None,
        auth_user: String::new(),
        allow_auth_user_login: false,
        auth_password: String::new(),
        auth_database: String::new(),
        auth_query: String::new(),
    };
    let tls = pooler::TlsConnectors::new();
    let credential = pooler::ServerCredential::Password(password.to_owned());
    let mut conn = pooler::connect(
        pooler::ConnectRequest {
            backend: &backend,
            user: APP_ROLE,
            database: APP_DATABASE,
            credential: &credential,
        },
        &tls,
    )
    .await
    .with_context(|| format!("logging into {id}'s backend as {APP_ROLE}"))?;
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

/// The demo's config (certificates and the admin key under `dir`), keeping its state
/// in `data_dir`, with `proxy_lines` added to `[proxy]` and `sections` after the
/// others (a fleet's replica).
fn config_text(
    dir: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    proxy_lines: &str,
    sections: &str,
) -> String {
    format!(
        "# Written by `sluice demo`; rewritten on every run.\n\
         data_dir = {data:?}\n\n\
         [proxy]\n\
         listen = [\"{listen}\"]\n\
         tls_cert = {cert:?}\n\
         tls_key = {key:?}\n\
         sni_suffix = \"{SNI_SUFFIX}\"\n\
         require_tls = true\n\
         tenant_from_options = true\n\
         {proxy_lines}\n\
         [admin]\n\
         listen = \"{admin_listen}\"\n\
         bootstrap_key_file = {admin_key:?}\n\n\
         [provisioner]\n\
         driver = \"local\"   # a Postgres cluster per tenant under data_dir/backends\n\n\
         [defaults.pool]\n\
         mode = \"session\"\n\
         size = 10\n",
        data = data_dir.display().to_string(),
        cert = dir.join("tls/proxy.crt").display().to_string(),
        key = dir.join("tls/proxy.key").display().to_string(),
        admin_key = dir.join("admin.key").display().to_string(),
    ) + &shipped_plans()
        + sections
}

/// The `[plans.*]` of configs/sluice.example.toml (nano, lite, pro, pro-heavy), so
/// `sluice tenants create shop --plan nano` works against the demo as documented.
fn shipped_plans() -> String {
    let example = include_str!("../configs/sluice.example.toml");
    // The first table header (at the start of a line; comments mention plans too).
    let start = example.find("\n[plans.").map_or(example.len(), |i| i + 1);
    let end = example[start..]
        .find("\n# ---")
        .map_or(example.len(), |i| start + i);
    format!("\n{}\n", &example[start..end])
}

fn facts(
    config: &Path,
    ca_cert: &Path,
    proxy: SocketAddr,
    admin_url: String,
    admin_key: String,
    passwords: &[String],
) -> DemoFacts {
    let tenants = TENANTS
        .iter()
        .zip(passwords)
        .map(|(id, password)| {
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
                password: password.clone(),
                psql: format!("PGPASSWORD={password} psql \"{conninfo}\""),
                connection_string: conninfo,
            }
        })
        .collect();
    DemoFacts {
        proxy: proxy.to_string(),
        admin_url,
        admin_key,
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
