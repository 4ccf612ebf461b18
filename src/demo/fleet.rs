//! `sluice demo --replicas N`: the demo as a fleet on this host. The demo process runs
//! the control store (the embedded cluster under `DIR/store`) and replica 0 itself;
//! replicas 1.. are `sluice serve` child processes on configs of their own
//! (`DIR/r<i>.toml`, data in `DIR/r<i>`), and HAProxy (`DIR/haproxy.cfg`, round robin,
//! PROXY v2) listens on the demo's address in front of them all. Everything the demo
//! starts here is stopped by pid when it ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use control::store::EmbeddedControl;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

/// One replica: where it listens and what its config adds to the demo's.
pub struct Replica {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    /// Lines for `[proxy]`: HAProxy's headers are believed from 127.0.0.1 (direct
    /// clients from there still work: `optional`).
    pub proxy_lines: String,
    /// The `[control]` and `[fleet]` sections.
    pub sections: String,
}

/// The fleet's plan and the control store it shares, started.
pub struct Plan {
    pub store: EmbeddedControl,
    pub replicas: Vec<Replica>,
    /// Where HAProxy listens: the demo's `--listen`.
    pub front: SocketAddr,
}

/// A port the OS picked, released for a replica to bind.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Plan {
    /// Starts the store and plans `replicas` replicas: replica 0's admin API on
    /// `admin_listen`, HAProxy on `listen`, everything else on ports the OS picks.
    pub fn new(
        dir: &Path,
        replicas: usize,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> anyhow::Result<Plan> {
        if which("haproxy").is_none() {
            bail!("sluice demo --replicas needs HAProxy on the PATH (apt-get install haproxy)");
        }
        let store = EmbeddedControl::start(&dir.join("store"))
            .context("starting the fleet's control store")?;
        let secret = dir.join("fleet.key");
        provision::private_file::read_or_create(&secret, || {
            let bytes: [u8; 32] = rand::thread_rng().gen();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        })?;
        let mut planned = Vec::with_capacity(replicas);
        for i in 0..replicas {
            let admin = if i == 0 {
                admin_listen
            } else {
                SocketAddr::from(([127, 0, 0, 1], free_port()?))
            };
            planned.push(Replica {
                listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                admin,
                data_dir: dir.join(format!("r{i}")),
                proxy_lines:
                    "proxy_protocol = \"optional\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\n"
                        .into(),
                sections: format!(
                    "\n[control]\ndatabase_url = {url:?}\nsecrets_key_file = {key:?}\n\n\
                     [fleet]\nid = \"r{i}\"\nlisten = \"127.0.0.1:0\"\nsecret_file = {secret:?}\n",
                    url = store.conninfo(),
                    key = dir.join("secrets.key").display().to_string(),
                    secret = secret.display().to_string(),
                ),
            });
        }
        // Port 0: one the OS picks now, for HAProxy (which binds what it is told).
        let front = match listen.port() {
            0 => SocketAddr::new(listen.ip(), free_port()?),
            _ => listen,
        };
        Ok(Plan {
            store,
            replicas: planned,
            front,
        })
    }
}

/// The processes the demo started beside itself; dropping it stops them (SIGTERM, then
/// SIGKILL after 40 s), HAProxy first.
pub struct Processes {
    haproxy: Option<Child>,
    replicas: Vec<Child>,
}

impl Processes {
    /// Starts replicas 1.. (`configs[i - 1]` is replica i's config file) and waits for
    /// each one's admin API, then HAProxy in front of all of `plan`'s replicas.
    pub fn start(plan: &Plan, configs: &[PathBuf], dir: &Path) -> anyhow::Result<Processes> {
        let mut started = Processes {
            haproxy: None,
            replicas: Vec::new(),
        };
        let exe = std::env::current_exe().context("finding the sluice binary")?;
        for (config, replica) in configs.iter().zip(&plan.replicas[1..]) {
            let log = std::fs::File::create(config.with_extension("log"))?;
            let child = Command::new(&exe)
                .arg("serve")
                .arg("--config")
                .arg(config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", config.display()))?;
            started.replicas.push(child);
            wait_for(replica.admin, &config.with_extension("log"))?;
        }
        let mut cfg = format!(
            "global\n  maxconn 4000\n\
             defaults\n  mode tcp\n  retries 3\n  option redispatch\n  timeout connect 5s\n  \
             timeout client 1h\n  timeout server 1h\n\
             listen sluice\n  bind {}\n  balance leastconn\n",
            plan.front
        );
        for (i, replica) in plan.replicas.iter().enumerate() {
            cfg.push_str(&format!(
                "  server r{i} {} send-proxy-v2 check inter 1s\n",
                replica.listen
            ));
        }
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let haproxy = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("starting haproxy")?;
        started.haproxy = Some(haproxy);
        wait_for(plan.front, &dir.join("haproxy.log"))?;
        Ok(started)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let children = self.haproxy.iter_mut().chain(self.replicas.iter_mut());
        let children: Vec<&mut Child> = children.collect();
        for child in &children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        for child in children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts connections on `addr` (30 s at most).
fn wait_for(addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nothing listened on {addr} within 30 s (see {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `name` on the PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
