//! The fake's state: nodes, containers (each a localpg cluster on its own loopback
//! address), tasks, and the scripted faults.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use localpg::tls::CertificateAuthority;
use localpg::{Cluster, ClusterConfig, Installation, StopMode, Template};

use super::options::FakePveOptions;

/// What the server tasks share.
pub(crate) struct Shared {
    pub options: FakePveOptions,
    pub token_id: String,
    pub token_secret: String,
    pub ca: CertificateAuthority,
    pub fingerprint: String,
    /// Containers' file systems and clusters live under here.
    pub dir: PathBuf,
    pub state: Mutex<State>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A scripted error answer.
#[derive(Debug, Clone)]
pub(crate) struct Injection {
    pub method: String,
    pub path_suffix: String,
    pub status: u16,
    pub message: String,
    pub times: u32,
}

/// The comment prefix of the handoff line in `authorized_keys` (the driver's
/// `HANDOFF_MARKER`; the template's first-boot unit looks for it).
pub const HANDOFF_MARKER: &str = "sluice-admin-verifier:";
/// The port PostgreSQL listens on in every container.
pub const PG_PORT: u16 = 5432;

pub(crate) type ClusterSlot = Arc<Mutex<Option<Cluster>>>;

pub(crate) struct State {
    pub nodes: Vec<(String, u64)>,
    pub guests: BTreeMap<u64, Guest>,
    pub tasks: HashMap<String, Task>,
    pub task_failures: Vec<(String, String)>,
    pub injections: Vec<Injection>,
    pub requests: BTreeMap<String, usize>,
    /// VMID and parameters of every destroy call that was accepted.
    pub destroyed: Vec<(u64, BTreeMap<String, String>)>,
    next_pid: u32,
}

/// One container.
pub(crate) struct Guest {
    pub node: String,
    pub lock: Option<String>,
    pub running: bool,
    /// Empty while the creation runs (Proxmox writes the full config at its end).
    pub config: BTreeMap<String, String>,
    /// The memory the creation asked for, counted against its node from the start.
    pub memory_mib: u64,
    pub firewall: FirewallView,
    pub address: Ipv4Addr,
    pub home: PathBuf,
    pub cluster: ClusterSlot,
}

/// A container's firewall as the API set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallView {
    pub options: BTreeMap<String, String>,
    pub ipsets: BTreeMap<String, Vec<String>>,
    pub rules: Vec<BTreeMap<String, String>>,
}

/// A container as tests see it.
#[derive(Debug, Clone)]
pub struct GuestView {
    pub vmid: u64,
    pub node: String,
    pub running: bool,
    pub lock: Option<String>,
    pub config: BTreeMap<String, String>,
    pub firewall: FirewallView,
    pub address: Ipv4Addr,
    /// `/root/.ssh/authorized_keys` in the container.
    pub authorized_keys: String,
}

pub(crate) struct Task {
    pub node: String,
    pub kind: String,
    pub vmid: u64,
    pub pid: u32,
    pub starttime: u64,
    /// None while running.
    pub exit: Option<String>,
}

impl State {
    pub fn new(nodes: &[(String, u64)]) -> State {
        State {
            nodes: nodes.to_vec(),
            guests: BTreeMap::new(),
            tasks: HashMap::new(),
            task_failures: Vec::new(),
            injections: Vec::new(),
            requests: BTreeMap::new(),
            destroyed: Vec::new(),
            next_pid: 0x1000,
        }
    }

    pub fn views(&self) -> Vec<GuestView> {
        self.guests
            .iter()
            .map(|(vmid, g)| GuestView {
                vmid: *vmid,
                node: g.node.clone(),
                running: g.running,
                lock: g.lock.clone(),
                config: g.config.clone(),
                firewall: g.firewall.clone(),
                address: g.address,
                authorized_keys: std::fs::read_to_string(authorized_keys(&g.home))
                    .unwrap_or_default(),
            })
            .collect()
    }

    pub fn take_clusters(&mut self) -> Vec<ClusterSlot> {
        self.guests.values().map(|g| g.cluster.clone()).collect()
    }

    /// Memory in use on `node`, bytes: 512 MiB for the host plus every container's.
    pub fn node_mem(&self, node: &str) -> u64 {
        let guests: u64 = self
            .guests
            .values()
            .filter(|g| g.node == node)
            .map(|g| g.memory_mib)
            .sum();
        (512 + guests) << 20
    }

    /// True while a task of `kind` runs on `node`.
    pub fn running_task(&self, node: &str, kind: &str) -> bool {
        self.tasks
            .values()
            .any(|t| t.node == node && t.kind == kind && t.exit.is_none())
    }

    /// A new task's UPID, registered as running.
    fn new_task(&mut self, node: &str, kind: &str, vmid: u64, user: &str) -> String {
        self.next_pid += 1;
        let starttime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let upid = format!(
            "UPID:{node}:{:08X}:{:08X}:{:08X}:{kind}:{vmid}:{user}:",
            self.next_pid, 0x5EED, starttime
        );
        self.tasks.insert(
            upid.clone(),
            Task {
                node: node.to_owned(),
                kind: kind.to_owned(),
                vmid,
                pid: self.next_pid,
                starttime,
                exit: None,
            },
        );
        upid
    }
}

/// Work a task does on a blocking thread once its running time is over.
pub(crate) type Work = Box<dyn FnOnce(&Arc<Shared>) -> Result<(), String> + Send>;

/// Starts a task: `running` for the configured time, then `work` (or the scripted
/// failure for its kind), then `stopped` with `OK` or the error as exit status. A
/// failed `vzcreate` removes its container, as Proxmox's `destroy_config_on_error`.
pub(crate) fn spawn_task(
    shared: &Arc<Shared>,
    node: &str,
    kind: &str,
    vmid: u64,
    work: Work,
) -> String {
    let mut state = shared.state();
    let upid = state.new_task(node, kind, vmid, &shared.token_id);
    let scripted = state
        .task_failures
        .iter()
        .position(|(k, _)| k == kind)
        .map(|i| state.task_failures.remove(i).1);
    drop(state);
    let work: Work = match scripted {
        Some(exit) => Box::new(move |_| Err(exit)),
        None => work,
    };
    let shared = shared.clone();
    let task = upid.clone();
    let kind = kind.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(shared.options.task_duration).await;
        let for_work = shared.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = work(&for_work);
            if result.is_err() && kind == "vzcreate" {
                remove_guest(&for_work, vmid);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(format!("task panicked: {e}")));
        let mut state = shared.state();
        if let Some(t) = state.tasks.get_mut(&task) {
            t.exit = Some(match result {
                Ok(()) => "OK".to_owned(),
                Err(message) => message,
            });
        }
    });
    upid
}

/// Removes a container: its postmaster stopped, its files deleted (blocking).
pub(crate) fn remove_guest(shared: &Shared, vmid: u64) {
    let Some(guest) = shared.state().guests.remove(&vmid) else {
        return;
    };
    stop_cluster(&guest.cluster);
    let _ = std::fs::remove_dir_all(&guest.home);
    release_address(guest.address);
}

pub(crate) fn stop_cluster(slot: &ClusterSlot) {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(mut cluster) = slot.take() {
        let _ = cluster.stop(StopMode::Fast);
    }
}

pub(crate) fn authorized_keys(home: &Path) -> PathBuf {
    home.join("rootfs/root/.ssh/authorized_keys")
}

fn install_and_template() -> Result<&'static (Installation, Template), String> {
    static CELL: OnceLock<Result<(Installation, Template), String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let install = Installation::discover().map_err(|e| e.to_string())?;
        let template = Template::ensure(&install, &localpg::default_template_cache())
            .map_err(|e| e.to_string())?;
        Ok((install, template))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The "unpacked template": a cluster listening on `address:5432` with TLS, SCRAM for
/// every connection from 127.0.0.0/8, its superuser without a password until the first
/// boot.
pub(crate) fn build_cluster(
    shared: &Shared,
    home: &Path,
    address: Ipv4Addr,
) -> Result<Cluster, String> {
    let (install, template) = install_and_template()?;
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let tls_dir = home.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(|e| err("creating the TLS dir", &e))?;
    let tls = localpg::TlsFiles {
        cert_pem: tls_dir.join("server.crt"),
        key_pem: tls_dir.join("server.key"),
    };
    shared
        .ca
        .issue(&[&address.to_string()])
        .and_then(|leaf| leaf.write(&tls.cert_pem, &tls.key_pem))
        .map_err(|e| err("issuing the container's certificate", &e))?;
    let mut config = ClusterConfig::new(home.join("rootfs/pgdata"), home.join("run"));
    config.port = Some(PG_PORT);
    config.tls = Some(tls);
    config.settings = vec![
        ("listen_addresses".into(), address.to_string()),
        ("fsync".into(), "off".into()),
        ("max_connections".into(), "50".into()),
    ];
    let cluster = Cluster::create(install, template, config)
        .map_err(|e| err("unpacking the template", &e))?;
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all all scram-sha-256\nhost all all 127.0.0.0/8 scram-sha-256\n",
    )
    .map_err(|e| err("writing pg_hba.conf", &e))?;
    Ok(cluster)
}

/// The template's first-boot unit: the verifier in the handoff line becomes the
/// `postgres` role's password, and the line goes away.
pub(crate) fn first_boot(home: &Path, cluster: &Cluster) -> Result<(), String> {
    let path = authorized_keys(home);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut kept = Vec::new();
    for line in text.lines() {
        let verifier = line
            .split(' ')
            .find_map(|word| word.strip_prefix(HANDOFF_MARKER));
        match verifier {
            Some(verifier) => {
                let parsed = wire::scram::Verifier::parse(verifier)
                    .map_err(|e| format!("first boot: bad verifier: {e}"))?;
                let sql = format!(
                    "ALTER ROLE postgres PASSWORD '{}'",
                    parsed.to_postgres_string()
                );
                cluster
                    .run_single_user(&sql)
                    .map_err(|e| format!("first boot: {e}"))?;
            }
            None => kept.push(line),
        }
    }
    let mut rest = kept.join("\n");
    if !rest.is_empty() {
        rest.push('\n');
    }
    std::fs::write(&path, rest).map_err(|e| format!("first boot: {e}"))
}

static ADDRESSES: Mutex<Option<HashSet<Ipv4Addr>>> = Mutex::new(None);

/// A loopback address nobody in this process uses and where port 5432 is free:
/// `127.X.Y.Z`, random, never 127.0.0.1.
pub(crate) fn new_address() -> Result<Ipv4Addr, String> {
    let mut used = ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner);
    let used = used.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let [a, b, c]: [u8; 3] = rand::random();
        let address = Ipv4Addr::new(127, a.max(1), b, c.clamp(2, 254));
        if used.contains(&address) {
            continue;
        }
        if std::net::TcpListener::bind((address, PG_PORT)).is_ok() {
            used.insert(address);
            return Ok(address);
        }
    }
    Err("no free loopback address with port 5432".to_owned())
}

fn release_address(address: Ipv4Addr) {
    let mut used = ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(used) = used.as_mut() {
        used.remove(&address);
    }
}
