//! A real `sluice serve` process on an OS-assigned port, and the config it runs with.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{TestCluster, AUTH_ROLE};
use crate::pki::Pki;

/// One `[[tenants]]` entry.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub tls: &'static str,
    pub tls_ca: Option<PathBuf>,
    pub auth_password_file: PathBuf,
    pub auth_query: Option<String>,
    /// Extra lines for `[tenants.pool]`.
    pub pool: Vec<String>,
    /// Lines for `[tenants.limits]`.
    pub limits: Vec<String>,
    pub plan: Option<String>,
}

impl TenantEntry {
    /// A tenant served by `cluster`: over TCP with verify-full TLS when the cluster
    /// listens on TCP, else over its unix socket.
    pub fn for_cluster(cluster: &TestCluster, pki: &Pki) -> Self {
        let (host, port, tls, tls_ca) = match cluster.tcp_port {
            Some(port) => (
                "localhost".to_owned(),
                port,
                "verify-full",
                Some(pki.ca_cert.clone()),
            ),
            None => (
                cluster.socket_dir.display().to_string(),
                cluster.cluster.socket_port(),
                "disable",
                None,
            ),
        };
        TenantEntry {
            id: cluster.name.clone(),
            host,
            port,
            tls,
            tls_ca,
            auth_password_file: cluster.auth_password_file.clone(),
            auth_query: Some(localpg::bootstrap::AUTH_QUERY.to_owned()),
            pool: Vec::new(),
            limits: Vec::new(),
            plan: None,
        }
    }
}

impl TenantEntry {
    /// A tenant served by `cluster` over its unix socket (no backend TLS), whatever else
    /// the cluster listens on: what benchmarks use, to keep the backend leg cheap.
    pub fn over_unix_socket(cluster: &TestCluster, pki: &Pki) -> Self {
        TenantEntry {
            host: cluster.socket_dir.display().to_string(),
            port: cluster.cluster.socket_port(),
            tls: "disable",
            tls_ca: None,
            ..TenantEntry::for_cluster(cluster, pki)
        }
    }
}

#[derive(Debug, Clone)]
pub struct SluiceConfig {
    pub pki: Pki,
    pub require_tls: bool,
    pub tenant_from_options: bool,
    pub login_timeout_ms: u64,
    pub shutdown_grace_s: u64,
    /// `[proxy] listen`: `127.0.0.1:0` (a port from the OS) unless a test needs a
    /// fixed one (a replica restarted beside itself on the same port).
    pub listen: String,
    /// `[admin] listen`: `127.0.0.1:0` unless a test needs a fixed port.
    pub admin_listen: String,
    /// Lines for `[defaults.pool]`.
    pub default_pool: Vec<String>,
    /// Lines for `[defaults.limits]`.
    pub default_limits: Vec<String>,
    /// `text` or `json`.
    pub log_format: &'static str,
    /// Lines for `[metrics]`.
    pub metrics: Vec<String>,
    /// More lines for `[proxy]`.
    pub proxy_extra: Vec<String>,
    /// More lines for `[admin]`.
    pub admin_extra: Vec<String>,
    /// Raw TOML appended before the tenants (e.g. `[plans.nano]` tables).
    pub plans: String,
    pub tenants: Vec<TenantEntry>,
    /// More lines for the `[tenants.backend]` of the tenant with this id.
    pub backend_extra: std::collections::BTreeMap<String, Vec<String>>,
    /// `SLUICE_LOG` for the process. Tests log the proxy and pooler at debug;
    /// benchmarks use `info`, what production runs (a connection storm at debug writes
    /// a line per attempt, and that costs more than the storm).
    pub log: String,
    /// How long [`SluiceProcess::start`] waits for the process to listen: 30 s. A config
    /// with 10,000 `[[tenants]]` takes longer, since each is upserted into the control
    /// store before Sluice listens.
    pub start_timeout: Duration,
}

impl SluiceConfig {
    pub fn new(pki: &Pki) -> Self {
        SluiceConfig {
            pki: pki.clone(),
            require_tls: true,
            tenant_from_options: true,
            login_timeout_ms: 15_000,
            shutdown_grace_s: 5,
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            default_pool: Vec::new(),
            default_limits: Vec::new(),
            log_format: "text",
            metrics: Vec::new(),
            proxy_extra: Vec::new(),
            admin_extra: Vec::new(),
            plans: String::new(),
            tenants: Vec::new(),
            backend_extra: Default::default(),
            log: "info,proxy=debug,pooler=debug".into(),
            start_timeout: Duration::from_secs(30),
        }
    }

    pub fn to_toml(&self, data_dir: &Path) -> String {
        let mut s = format!(
            "data_dir = {:?}\nlog_format = \"{}\"\n[proxy]\nlisten = [{:?}]\ntls_cert = {:?}\ntls_key = {:?}\n\
             sni_suffix = \"{}\"\nrequire_tls = {}\ntenant_from_options = {}\nlogin_timeout_ms = {}\n\
             shutdown_grace_s = {}\n{}\n\n[admin]\nlisten = {:?}\nbootstrap_key_file = {:?}\n{}\n\n\
             [metrics]\n{}\n\n[defaults.pool]\n{}\n\n[defaults.limits]\n{}\n",
            data_dir.display().to_string(),
            self.log_format,
            self.listen,
            self.pki.proxy_cert.display().to_string(),
            self.pki.proxy_key.display().to_string(),
            crate::pki::SNI_SUFFIX,
            self.require_tls,
            self.tenant_from_options,
            self.login_timeout_ms,
            self.shutdown_grace_s,
            self.proxy_extra.join("\n"),
            self.admin_listen,
            admin_key_file(data_dir).display().to_string(),
            self.admin_extra.join("\n"),
            self.metrics.join("\n"),
            self.default_pool.join("\n"),
            self.default_limits.join("\n"),
        );
        s.push_str(&self.plans);
        for t in &self.tenants {
            s.push_str(&format!("\n[[tenants]]\nid = \"{}\"\n", t.id));
            if let Some(plan) = &t.plan {
                s.push_str(&format!("plan = \"{plan}\"\n"));
            }
            s.push_str(&format!(
                "[tenants.backend]\nhost = {:?}\nport = {}\ntls = \"{}\"\n\
                 auth_user = \"{AUTH_ROLE}\"\nauth_password_file = {:?}\n",
                t.host,
                t.port,
                t.tls,
                t.auth_password_file.display().to_string(),
            ));
            if let Some(ca) = &t.tls_ca {
                s.push_str(&format!("tls_ca = {:?}\n", ca.display().to_string()));
            }
            if let Some(q) = &t.auth_query {
                s.push_str(&format!("auth_query = {q:?}\n"));
            }
            for line in self.backend_extra.get(&t.id).into_iter().flatten() {
                s.push_str(&format!("{line}\n"));
            }
            if !t.pool.is_empty() {
                s.push_str(&format!("[tenants.pool]\n{}\n", t.pool.join("\n")));
            }
            if !t.limits.is_empty() {
                s.push_str(&format!("[tenants.limits]\n{}\n", t.limits.join("\n")));
            }
        }
        s
    }
}

/// Where a test config puts the bootstrap admin key.
fn admin_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.key")
}

/// A running `sluice serve`. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct SluiceProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener (API, /metrics, /healthz, /readyz).
    pub admin_addr: SocketAddr,
    /// The bootstrap admin key Sluice generated.
    pub admin_key: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// From spawning the process to its "listening" lines.
    pub started_in: Duration,
}

impl SluiceProcess {
    /// Writes the config into `dir` and starts `bin serve` on it (stderr to
    /// `dir/sluice.log`); returns once it listens, an error if it does not within the
    /// config's `start_timeout`.
    pub fn start(bin: &Path, dir: &Path, config: &SluiceConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("sluice.toml");
        std::fs::write(&config_path, config.to_toml(&dir.join("data")))?;
        let log_path = dir.join("sluice.log");
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("SLUICE_LOG", &config.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut proxy = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("sluice: listening on ") {
                    proxy = addr.parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("sluice: admin API listening on ") {
                    let _ = tx.send((proxy, addr.parse::<SocketAddr>().ok()));
                }
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut process = SluiceProcess {
            child,
            addr: unbound,
            admin_addr: unbound,
            admin_key: String::new(),
            config_path,
            log_path,
            started_in: Duration::ZERO,
        };
        let timeout = config.start_timeout;
        match rx.recv_timeout(timeout) {
            Ok((Some(addr), Some(admin))) => {
                process.addr = addr;
                process.admin_addr = admin;
                process.started_in = started.elapsed();
            }
            _ => anyhow::bail!(
                "sluice did not listen within {timeout:?}; log:\n{}",
                process.log()
            ),
        }
        process.admin_key = std::fs::read_to_string(admin_key_file(&dir.join("data")))?
            .trim()
            .to_owned();
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log without its terminal colour sequences (`ESC [ … m`), as a person reads
    /// it: what tests match fields against (`backend_pid=123`).
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `method path` on the admin API with the bootstrap key, `body` sent as JSON when
    /// not empty, `headers` (`Name: value\r\n` lines) added; panics if the request
    /// itself fails (not on an error status).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &str,
    ) -> crate::http::HttpResponse {
        let mut headers = headers.to_owned();
        if !body.is_empty() {
            headers.push_str("Content-Type: application/json\r\n");
        }
        crate::http::request(
            self.admin_addr,
            method,
            path,
            Some(&self.admin_key),
            &headers,
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        if self
            .signal_and_wait(Signal::SIGTERM, Duration::from_secs(10))
            .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How to reach the embedded control store of a Sluice whose data_dir is `data_dir`: its
/// unix socket directory and port, and the superuser password (tests that tamper with
/// the store directly).
pub fn embedded_store(data_dir: &Path) -> tokio_postgres::Config {
    let control = data_dir.join("control");
    let run = control.join("run");
    let port: u16 = std::fs::read_dir(&run)
        .expect("the control store's socket directory")
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let port = name.strip_prefix(".s.PGSQL.")?;
            (!port.ends_with(".lock")).then(|| port.parse().ok())?
        })
        .expect("the control store's socket");
    let password = std::fs::read_to_string(control.join("superuser.password"))
        .expect("the control store's superuser password");
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&run)
        .port(port)
        .user("postgres")
        .password(password.trim())
        .dbname("sluice");
    config
}
