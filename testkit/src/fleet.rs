//! A fleet for end-to-end tests: several real `sluice serve` processes sharing one
//! control store (a cluster of its own), behind a real HAProxy that sends PROXY v2
//! headers, in front of one tenant (`acme`, TCP with TLS).
//!
//! Every replica has a `[fleet]` section (`id = "r<i>"`, a shared secret, a fast
//! heartbeat: 200 ms, expiry after 3 s, long enough that a replica starved of CPU by a busy test machine is not taken for dead) so the replicas know each other.
//!
//! Each replica listens on a port fixed when the fleet starts (so a replica can be
//! started again beside itself on the same port) and has a data directory of its own
//! per launch. HAProxy balances over the replicas' ports in the order of
//! [`Fleet::ports`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::clients::PgTarget;
use crate::cluster::{TestCluster, APP_DATABASE, APP_ROLE};
use crate::env::OneTenant;
use crate::haproxy::{Haproxy, BALANCER};
use crate::pki::Pki;
use crate::sluice::{SluiceConfig, SluiceProcess, TenantEntry};

/// The fleet; dropping it stops the replicas, then HAProxy, then the clusters.
pub struct Fleet {
    /// Replica `i`'s running process, `None` once a test stopped or killed it.
    pub replicas: Vec<Option<SluiceProcess>>,
    pub haproxy: Haproxy,
    pub acme: TestCluster,
    pub store: TestCluster,
    /// What every replica's config starts from.
    pub config: SluiceConfig,
    /// Replica `i`'s proxy port.
    pub ports: Vec<u16>,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    launches: usize,
}

impl Fleet {
    /// `replicas` processes behind HAProxy (`balance`: `roundrobin`, `leastconn`);
    /// `tweak` adjusts the config they share.
    pub fn start(
        bin: &Path,
        replicas: usize,
        balance: &str,
        tweak: impl FnOnce(&mut SluiceConfig),
    ) -> anyhow::Result<Fleet> {
        let OneTenant {
            dir,
            pki,
            cluster: acme,
        } = OneTenant::start("sluice-fleet-")?;
        let store = TestCluster::start(dir.path(), "control", Default::default())?;
        let mut config = SluiceConfig::new(&pki);
        config.tenants = vec![TenantEntry::for_cluster(&acme, &pki)];
        config.proxy_extra = vec![
            "proxy_protocol = \"v2\"".into(),
            format!("proxy_protocol_from = [\"{BALANCER}/32\"]"),
        ];
        config.plans = format!(
            "\n[control]\ndatabase_url = \"host={} port={} user={} dbname={} password={}\"\n\
             secrets_key_file = {:?}\n",
            store.socket_dir.display(),
            store.cluster.socket_port(),
            crate::cluster::APP_ROLE,
            crate::cluster::APP_DATABASE,
            store.app_password,
            dir.path().join("secrets.key").display().to_string(),
        );
        let secret = dir.path().join("fleet.key");
        std::fs::write(&secret, "a fleet secret for the tests, 32+ bytes long\n")?;
        tweak(&mut config);
        let ports = (0..replicas)
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<u16>>>()?;
        let servers: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let haproxy = Haproxy::balance(dir.path(), &servers, balance);
        let mut fleet = Fleet {
            replicas: Vec::new(),
            haproxy,
            acme,
            store,
            config,
            ports,
            pki,
            dir,
            bin: bin.to_owned(),
            launches: 0,
        };
        for i in 0..replicas {
            let process = fleet.launch(i)?;
            fleet.replicas.push(Some(process));
        }
        Ok(fleet)
    }

    /// Starts a new process for replica `i` on its port (beside a running one, if
    /// any), with a data directory of its own; the caller decides where it goes.
    pub fn launch(&mut self, i: usize) -> anyhow::Result<SluiceProcess> {
        self.launches += 1;
        let mut config = self.config.clone();
        config.listen = format!("127.0.0.1:{}", self.ports[i]);
        config.plans.push_str(&format!(
            "\n[fleet]\nid = \"r{i}\"\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\n\
             heartbeat_ms = 200\nexpire_after_ms = 3000\n",
            self.dir.path().join("fleet.key").display().to_string(),
        ));
        let dir = self
            .dir
            .path()
            .join(format!("replica-{i}-launch-{}", self.launches));
        SluiceProcess::start(&self.bin, &dir, &config)
    }

    /// Replica `i`'s running process.
    pub fn replica(&self, i: usize) -> &SluiceProcess {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// How `app` reaches `acme` through HAProxy.
    pub fn target(&self) -> PgTarget {
        PgTarget::tenant(
            self.haproxy.addr,
            "acme",
            &self.acme.app_password,
            &self.pki.ca_cert,
        )
    }

    /// The backend's own view: `app` on `acme` directly over its unix socket, to count
    /// its server connections in `pg_stat_activity`.
    pub fn backend_conninfo(&self) -> String {
        format!(
            "host={} port={} user={APP_ROLE} dbname={APP_DATABASE} password={}",
            self.acme.socket_dir.display(),
            self.acme.cluster.socket_port(),
            self.acme.app_password,
        )
    }
}

/// A port the OS picked, released for a replica to bind.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
