//! What runs: the cluster, the poolers, how clients reach them.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Session,
    Transaction,
}

pub(crate) const MODES: [Mode; 2] = [Mode::Session, Mode::Transaction];

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Session => "session",
            Mode::Transaction => "transaction",
        }
    }

    /// Server connections per pool, the same for both poolers: session mode needs one
    /// per client (`-c 64`); transaction mode has both poolers' default, 20.
    pub(crate) fn pool_size(self) -> u32 {
        match self {
            Mode::Session => 64,
            Mode::Transaction => 20,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leg {
    Tls,
    Plain,
}

pub(crate) const LEGS: [Leg; 2] = [Leg::Tls, Leg::Plain];

impl Leg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Leg::Tls => "TLS",
            Leg::Plain => "plain",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Direct,
    PgBouncer,
    Sluice,
}

/// The cluster, its certificates and what PgBouncer needs. Field order is drop order:
/// the cluster stops before its directory is removed.
pub(crate) struct Base {
    pub(crate) cluster: TestCluster,
    pub(crate) pki: Pki,
    pub(crate) dir: tempfile::TempDir,
    /// PgBouncer's version and the SCRAM verifier for its auth_file, or why it is skipped.
    pub(crate) bouncer: Result<((u32, u32), String), String>,
    pub(crate) hz: f64,
}

impl Base {
    pub(crate) fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-compare-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let cluster = TestCluster::start(
            dir.path(),
            "acme",
            TestClusterOptions {
                tcp_tls: Some(&pki),
                max_connections: MAX_CONNECTIONS,
                ..Default::default()
            },
        )
        .unwrap();
        let bouncer = ensure_pgbouncer("compare").map(|version| {
            // PgBouncer runs as `postgres` and reaches the cluster over its socket.
            let_postgres_reach_socket(dir.path(), &cluster);
            (version, app_scram_secret(&cluster))
        });
        if let Err(why) = &bouncer {
            println!("compare: SKIP PgBouncer column: {why}");
        }
        let base = Base {
            cluster,
            pki,
            dir,
            bouncer,
            hz: clock_ticks_per_second(),
        };
        let init = testkit::pgbench(
            &base.target(Side::Direct, base.direct_addr(), Leg::Tls),
            &["-i", "-s", "1", "-q"],
        );
        assert!(init.success, "pgbench -i: {}", init.stderr);
        base
    }

    pub(crate) fn direct_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.cluster.tcp_port.unwrap()))
    }

    /// How `app` reaches `side` at `addr`. Sluice: SNI names the tenant over TLS, the
    /// `options` word `tenant=acme` in plaintext; the others: by address.
    pub(crate) fn target(&self, side: Side, addr: SocketAddr, leg: Leg) -> PgTarget {
        let mut t = PgTarget::tenant(addr, "acme", &self.cluster.app_password, &self.pki.ca_cert);
        t.sslmode = match leg {
            Leg::Tls => "require",
            Leg::Plain => "disable",
        };
        match (side, leg) {
            (Side::Sluice, Leg::Tls) => {}
            (Side::Sluice, Leg::Plain) => {
                t.sni_host = None;
                t.options = Some("tenant=acme".into());
            }
            _ => t.sni_host = Some("localhost".into()),
        }
        t
    }

    /// Sluice's config for `mode`: the tenant over the unix socket, plaintext clients
    /// allowed, no per-tenant connection caps or connect rate, logging at `warn`,
    /// [`START_TIMEOUT`] to listen.
    pub(crate) fn sluice_config(&self, mode: Mode) -> SluiceConfig {
        let mut c = SluiceConfig::new(&self.pki);
        c.log = "warn".into();
        c.start_timeout = START_TIMEOUT;
        c.require_tls = false;
        c.tenants = vec![TenantEntry::over_unix_socket(&self.cluster, &self.pki)];
        c.default_pool = vec![
            format!("mode = \"{}\"", mode.name()),
            format!("size = {}", mode.pool_size()),
        ];
        c.default_limits = vec![
            "connect_rate = 0".into(),
            "max_client_connections = 0".into(),
        ];
        c
    }

    /// Starts `sluice serve` with `config`; `Err` if it does not listen within the
    /// config's `start_timeout`.
    pub(crate) fn start_sluice(
        &self,
        mode: Mode,
        config: &SluiceConfig,
        label: &str,
    ) -> Result<Pooler, String> {
        let dir = self.dir.path().join(format!("sluice-{label}"));
        let sluice = SluiceProcess::start(BIN.as_ref(), &dir, config).map_err(|e| e.to_string())?;
        Ok(Pooler {
            side: Side::Sluice,
            mode,
            pid: sluice.pid(),
            addr: sluice.addr,
            started_in: sluice.started_in,
            _process: Box::new(sluice),
        })
    }

    /// A PgBouncer like `sluice_config(mode)`: TLS optional (`prefer`), no login logs.
    pub(crate) fn start_bouncer(
        &self,
        mode: Mode,
        max_client_conn: u32,
        label: &str,
    ) -> Option<Pooler> {
        let (version, secret) = self.bouncer.as_ref().ok()?;
        let settings = PgBouncerSettings {
            pool_mode: mode.name(),
            default_pool_size: mode.pool_size(),
            max_client_conn,
            client_tls_sslmode: "prefer",
            log_connections: false,
            version: *version,
        };
        let log = self.dir.path().join(format!("pgbouncer-{label}.log"));
        let bouncer = PgBouncer::start(&self.cluster, &self.pki, secret, &settings, log);
        Some(Pooler {
            side: Side::PgBouncer,
            mode,
            pid: bouncer.pid,
            addr: SocketAddr::from(([127, 0, 0, 1], bouncer.port)),
            started_in: Duration::ZERO,
            _process: Box::new(bouncer),
        })
    }
}

/// A running pooler; dropping it stops the process.
pub(crate) struct Pooler {
    pub(crate) side: Side,
    pub(crate) mode: Mode,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// From spawning Sluice to its "listening" lines (zero for PgBouncer).
    pub(crate) started_in: Duration,
    /// The `SluiceProcess` or `PgBouncer` guard.
    pub(crate) _process: Box<dyn std::any::Any>,
}
