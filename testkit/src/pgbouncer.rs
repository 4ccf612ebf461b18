//! A PgBouncer to compare Sluice with: found, or installed with apt-get when missing and
//! running as root ([`ensure_pgbouncer`]); run as user `postgres` through `runuser` and
//! `prlimit` ([`PgBouncer`]), in front of a [`TestCluster`] over its unix socket, with
//! SCRAM auth against the backend's own verifier ([`app_scram_secret`]) and the test
//! certificate. Dropping it stops it by pid.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use crate::cluster::{TestCluster, APP_DATABASE, APP_ROLE, AUTH_ROLE};
use crate::pki::Pki;
use crate::procfs::{open_files_limits, ppid_and_comm};

/// `(major, minor)` of the installed `pgbouncer`, if any.
pub fn pgbouncer_version() -> Option<(u32, u32)> {
    let out = Command::new("pgbouncer").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next()?.strip_prefix("PgBouncer ")?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Finds PgBouncer, installing it from apt if it is missing and we are root.
/// `Err` is the reason to skip the PgBouncer column; `bench` names the caller in what
/// is printed.
pub fn ensure_pgbouncer(bench: &str) -> Result<(u32, u32), String> {
    if User::from_name("postgres").ok().flatten().is_none() {
        return Err("no `postgres` system user to run PgBouncer as".into());
    }
    if let Some(v) = pgbouncer_version() {
        return Ok(v);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("pgbouncer is not installed (apt-get install -y pgbouncer)".into());
    }
    println!("{bench}: pgbouncer not found; installing it with `apt-get install -y pgbouncer`");
    let status = Command::new("apt-get")
        .args(["install", "-y", "pgbouncer"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    match (status, pgbouncer_version()) {
        (_, Some(v)) => Ok(v),
        (Ok(s), None) => Err(format!("`apt-get install -y pgbouncer` failed ({s})")),
        (Err(e), None) => Err(format!("could not run apt-get: {e}")),
    }
}

/// Lets the `postgres` user (PgBouncer) reach the cluster's unix socket: the bench's
/// temporary directory and the cluster's directories down to the socket become 0711
/// (no listing, only known names).
pub fn let_postgres_reach_socket(bench_dir: &Path, cluster: &TestCluster) {
    let home = cluster.socket_dir.parent().unwrap();
    for path in [bench_dir, home, &cluster.socket_dir] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
}

/// The backend's SCRAM verifier for `app`, read as `sluice_auth` through the
/// SECURITY DEFINER function testkit creates (the same lookup Sluice uses): what
/// PgBouncer's auth_file holds, so it can log into Postgres like Sluice's pass-through.
pub fn app_scram_secret(cluster: &TestCluster) -> String {
    let password = std::fs::read_to_string(&cluster.auth_password_file).unwrap();
    let out = Command::new("psql")
        .arg(format!(
            "host={} port={} user={} dbname=postgres",
            cluster.socket_dir.display(),
            cluster.cluster.socket_port(),
            AUTH_ROLE
        ))
        .args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("SELECT secret FROM sluice.role_secret('{}')", APP_ROLE),
        ])
        .env("PGPASSWORD", password.trim_end())
        .output()
        .expect("running psql");
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && secret.starts_with("SCRAM-SHA-256$"),
        "reading app's verifier: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secret
}

/// How a PgBouncer is set up, beyond what every bench shares (SCRAM auth with the
/// backend's verifier, the test certificate, Postgres over its unix socket).
#[derive(Debug, Clone)]
pub struct PgBouncerSettings {
    /// `session` or `transaction`.
    pub pool_mode: &'static str,
    pub default_pool_size: u32,
    pub max_client_conn: u32,
    /// `client_tls_sslmode`: `require` (TLS only) or `prefer` (TLS or plaintext).
    pub client_tls_sslmode: &'static str,
    /// Log every login and logout (PgBouncer's default); off to match Sluice at `warn`.
    pub log_connections: bool,
    /// The installed version, for the keys it knows.
    pub version: (u32, u32),
}

/// A running PgBouncer, started as user `postgres` through `runuser` (which forks:
/// `pid` is the pgbouncer child, `runner` the runuser parent) and `prlimit` (which
/// execs it). Dropping it sends
/// SIGTERM to pgbouncer's pid, then SIGKILL to both if they have not exited, and then
/// removes its temporary directory.
pub struct PgBouncer {
    runner: Child,
    pub pid: u32,
    pub port: u16,
    log: PathBuf,
    /// Ini, auth_file, certificate and key, owned by `postgres`.
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Writes the config into a temporary directory owned by `postgres`, starts
    /// PgBouncer (its output goes to `log`) and waits until it accepts TCP connections.
    /// The caller has made the cluster's socket reachable
    /// ([`let_postgres_reach_socket`]).
    pub fn start(
        cluster: &TestCluster,
        pki: &Pki,
        scram_secret: &str,
        settings: &PgBouncerSettings,
        log: PathBuf,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-pgbouncer-")
            .tempdir()
            .unwrap();
        let path = dir.path();
        let postgres = User::from_name("postgres").unwrap().expect("postgres user");
        let cert = path.join("proxy.crt");
        let key = path.join("proxy.key");
        std::fs::copy(&pki.proxy_cert, &cert).unwrap();
        std::fs::copy(&pki.proxy_key, &key).unwrap();
        let userlist = path.join("userlist.txt");
        std::fs::write(&userlist, format!("\"{}\" \"{scram_secret}\"\n", APP_ROLE)).unwrap();
        let port = localpg::free_port().unwrap();
        // 1.18 refuses unknown keys ("cannot load config file"); protocol-level
        // prepared statements in transaction mode exist from 1.21 on.
        let prepared = if settings.version >= (1, 21) {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let quiet = if settings.log_connections {
            ""
        } else {
            "log_connections = 0\nlog_disconnections = 0\n"
        };
        let ini = path.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n{db} = host={sock} port={sock_port} dbname={db}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 pool_mode = {mode}\ndefault_pool_size = {size}\nmax_client_conn = {max_clients}\n\
                 {prepared}{quiet}auth_type = scram-sha-256\nauth_file = {userlist}\n\
                 client_tls_sslmode = {sslmode}\nclient_tls_key_file = {key}\n\
                 client_tls_cert_file = {cert}\nignore_startup_parameters = extra_float_digits\n",
                db = APP_DATABASE,
                sock = cluster.socket_dir.display(),
                sock_port = cluster.cluster.socket_port(),
                mode = settings.pool_mode,
                size = settings.default_pool_size,
                max_clients = settings.max_client_conn,
                sslmode = settings.client_tls_sslmode,
                userlist = userlist.display(),
                key = key.display(),
                cert = cert.display(),
            ),
        )
        .unwrap();
        for file in [path, &cert, &key, &userlist, &ini] {
            chown(
                file,
                Some(postgres.uid.as_raw()),
                Some(postgres.gid.as_raw()),
            )
            .unwrap();
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // runuser's PAM session may lower the soft open-files limit (1024 here), and
        // only the process itself may raise it again (root lacks CAP_SYS_RESOURCE in
        // some containers): `prlimit` sets it, up to the inherited hard limit, and
        // execs pgbouncer. Enough for its clients, its server connections and a margin.
        let hard = open_files_limits(std::process::id()).map_or(u64::MAX, |(_, hard)| hard);
        let files = (u64::from(settings.max_client_conn + settings.default_pool_size) + 100)
            .max(1024)
            .min(hard);
        let log_file = std::fs::File::create(&log).unwrap();
        let runner = Command::new("runuser")
            .args(["-u", "postgres", "--", "prlimit"])
            .arg(format!("--nofile={files}:"))
            .arg("pgbouncer")
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("running runuser -u postgres -- pgbouncer");
        let mut bouncer = PgBouncer {
            pid: 0,
            runner,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = bouncer.runner.try_wait() {
                panic!("pgbouncer exited ({status}); log:\n{}", bouncer.log_text());
            }
            if bouncer.pid == 0 {
                bouncer.pid = bouncer.find_child().unwrap_or(0);
            }
            let up = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok();
            if up && bouncer.pid != 0 {
                return bouncer;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start; log:\n{}",
                bouncer.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pgbouncer process whose parent is the runuser process.
    fn find_child(&self) -> Option<u32> {
        let parent = self.runner.id();
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                matches!(ppid_and_comm(pid), Some((ppid, comm)) if ppid == parent && comm == "pgbouncer")
            })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        stop(&mut self.runner, self.pid);
    }
}

/// Stops `child` by pid: SIGTERM to `pid` (the child itself, or the process it
/// forked; 0: none), up to 10 s for `child` to exit, then SIGKILL to both.
fn stop(child: &mut Child, pid: u32) {
    if pid != 0 {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid != 0 {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}
