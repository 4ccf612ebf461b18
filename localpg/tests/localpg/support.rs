//! Shared helpers: the installation, a cached template, psql, SCRAM verifiers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use localpg::{Cluster, ClusterConfig, Installation, Template};
use sha2::{Digest, Sha256};

/// The superuser password the tests install.
pub const SUPERUSER_PASSWORD: &str = "pw-for-tests";

pub fn install() -> &'static Installation {
    static INSTALL: OnceLock<Installation> = OnceLock::new();
    INSTALL.get_or_init(|| Installation::discover().expect("PostgreSQL server binaries"))
}

/// A template cached across test runs in Cargo's temporary directory for this crate.
pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-templates");
        let started = Instant::now();
        let template = Template::ensure(install(), &cache).expect("template");
        eprintln!("template ready in {:?}", started.elapsed());
        template
    })
}

/// A new cluster in `root/data` with its socket in `root/sock`, superuser password set.
pub fn cluster(root: &Path, configure: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut config = ClusterConfig::new(root.join("data"), root.join("sock"));
    configure(&mut config);
    let started = Instant::now();
    let cluster = Cluster::create(install(), template(), config).expect("create cluster");
    eprintln!("create took {:?}", started.elapsed());
    let started = Instant::now();
    cluster
        .run_single_user(&format!(
            "ALTER ROLE postgres PASSWORD '{SUPERUSER_PASSWORD}'"
        ))
        .expect("set superuser password");
    eprintln!("single-user password took {:?}", started.elapsed());
    cluster
}

/// Runs `sql` with psql over `conninfo` and returns its unaligned, tuples-only output.
pub fn psql(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .arg("-c")
        .arg(sql)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// libpq connection string for the cluster's unix socket.
pub fn socket_conninfo(cluster: &Cluster, user: &str) -> String {
    format!(
        "host={} port={} user={user} dbname=postgres",
        cluster.socket_dir().display(),
        cluster.socket_port()
    )
}

/// Fails unless `pid` no longer exists at all (not even as a zombie).
pub fn assert_gone(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(!proc_dir.exists(), "process {pid} is still there");
}

/// A PostgreSQL SCRAM-SHA-256 verifier for `password`, as `ALTER ROLE ... PASSWORD` takes it.
pub fn scram_verifier(password: &str) -> String {
    const ITERATIONS: u32 = 4096;
    let salt: [u8; 16] = rand::random();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2::<Hmac<Sha256>>(password.as_bytes(), &salt, ITERATIONS, &mut salted)
        .expect("pbkdf2 output length");
    let hmac = |key: &[u8], message: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}
