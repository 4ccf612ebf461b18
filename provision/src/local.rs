//! The `local` driver: one PostgreSQL cluster per tenant on this machine, made with
//! localpg. What `sluice demo`, the tests and a single-machine Sluice use.
//!
//! Layout under `<data_dir>/backends` (directories mode 0700):
//!
//! - `owner.lock`: flock'ed by the [`LocalDriver`] for its whole life. A postmaster found
//!   running while this process holds the lock was left by a Sluice that died (SIGKILL:
//!   the postmaster, in its own process group, outlives it); it is stopped and started
//!   again under a handle of ours, as the embedded control store does.
//! - `<tenant>/run/`: the cluster's unix socket directory;
//! - `<tenant>/pgdata.new/` and `<tenant>/tls.new/`: a creation in progress. Found at the
//!   start of a creation, they are what a creation that died half-way left: removed and
//!   redone, never reused;
//! - `<tenant>/pgdata/`: a complete cluster. It appears only through the final rename, after
//!   the superuser's password was set, so a `pgdata/` is never half-made;
//! - `<tenant>.removing/`: a backend being destroyed (renamed first, so that a destroy that
//!   dies half-way never leaves something that looks like a backend).
//!
//! A cluster listens on 127.0.0.1 on a port that was free when it was created (kept for
//! its life: it is in the cluster's settings), with `ssl = on` and SCRAM only. Its
//! certificate comes from a CA made for it and thrown away: the address says
//! `tls = "require"` (encrypted, not authenticated), which on loopback is what matters.
//! Its `postgres` superuser gets the request's admin password, as a SCRAM verifier
//! written in single-user mode before the first start.
//!
//! localpg is synchronous; every operation runs on a blocking thread (`spawn_blocking`),
//! holding the tenant's slot, so operations on one tenant never overlap.
//!
//! Not yet: a plan's `max_connections` (and memory settings) as cluster settings; a
//! port taken by another process while the cluster was stopped (the cluster then fails
//! to start; the port cannot be changed afterwards).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use localpg::tls::CertificateAuthority;
use localpg::{Cluster, ClusterConfig, Installation, StopMode, Template, TlsFiles};
use nix::fcntl::Flock;

use crate::private_file::{create_private_dir, take_ownership};

use crate::driver::{
    check_tenant, lock, remove_dir_if_exists, BackendAddress, BackendRequest, BoxFuture, Driver,
    TenantSlots,
};
use crate::sql;

const HOME: &str = "backends";
const PGDATA: &str = "pgdata";
const STAGING: &str = "pgdata.new";
const TLS_STAGING: &str = "tls.new";
const SOCKET_DIR: &str = "run";
const REMOVING_SUFFIX: &str = ".removing";
/// The bootstrap superuser of localpg's template, which the control plane logs in as.
const SUPERUSER: &str = "postgres";

/// Local clusters, one per tenant; see the module documentation.
#[derive(Debug)]
pub struct LocalDriver {
    /// Shared with the blocking threads that do the work.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<data_dir>/backends`.
    root: PathBuf,
    install: Installation,
    /// A slot per tenant this process has touched, holding the cluster handle once
    /// opened: the handle owns the postmaster it started (and stops it when dropped).
    slots: TenantSlots<Option<Cluster>>,
    /// Held while this driver lives; released after the clusters are stopped (fields
    /// drop after `Drop::drop`).
    _owner: Flock<std::fs::File>,
}

impl LocalDriver {
    /// Takes `<data_dir>/backends/owner.lock` (failing at once if another Sluice holds
    /// it) and finds the PostgreSQL server binaries. Starts nothing: backends are started
    /// by `ensure_running` (or `create`).
    pub fn new(data_dir: &Path) -> anyhow::Result<LocalDriver> {
        let root = data_dir.join(HOME);
        create_private_dir(&root)?;
        let owner = take_ownership(&root, "the local backends")?;
        let install = Installation::discover()
            .context("finding the PostgreSQL server binaries for the local provisioner")?;
        Ok(LocalDriver {
            inner: Arc::new(Inner {
                root,
                install,
                slots: TenantSlots::new("local"),
                _owner: owner,
            }),
        })
    }

    /// Runs `work` on a blocking thread with the shared state.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| anyhow!("the local provisioner's worker thread failed: {e}"))?
    }
}

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn create<'a>(
        &'a self,
        req: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>> {
        let tenant = req.tenant.clone();
        let password = req.admin_password.clone();
        Box::pin(self.blocking(move |inner| inner.create(&tenant, &password)))
    }

    fn ensure_running<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        let tenant = tenant.to_owned();
        Box::pin(self.blocking(move |inner| inner.ensure_running(&tenant)))
    }

    fn destroy<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        let tenant = tenant.to_owned();
        Box::pin(self.blocking(move |inner| inner.destroy(&tenant)))
    }

    fn park<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        let tenant = tenant.to_owned();
        Box::pin(self.blocking(move |inner| inner.park(&tenant)))
    }

    fn health<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Option<anyhow::Result<()>>> {
        let tenant = tenant.to_owned();
        Box::pin(async move {
            self.blocking(move |inner| Ok(inner.health(&tenant)))
                .await
                .unwrap_or_else(|e| Some(Err(e)))
        })
    }

    fn shutdown(&self) {
        self.inner.stop_all();
    }
}

impl Inner {
    fn create(&self, tenant: &str, admin_password: &str) -> anyhow::Result<BackendAddress> {
        check_tenant(tenant)?;
        anyhow::ensure!(
            !admin_password.is_empty(),
            "the backend's admin password is required"
        );
        let slot = self.slots.slot(tenant);
        let mut slot = lock(&slot);
        self.slots.check_not_stopped()?;
        if slot.is_none() {
            let home = self.root.join(tenant);
            remove_dir_if_exists(&self.removing_dir(tenant))?;
            if !home.join(PGDATA).exists() {
                self.build(tenant, &home, admin_password)?;
            }
            *slot = Some(self.open(&home)?);
        }
        let cluster = slot.as_mut().expect("opened above");
        start(cluster, tenant)?;
        let port = cluster
            .port()
            .with_context(|| format!("tenant {tenant}'s local backend has no TCP port"))?;
        Ok(BackendAddress {
            host: "127.0.0.1".to_owned(),
            port,
            tls: "require".to_owned(),
            tls_ca: None,
            admin_user: SUPERUSER.to_owned(),
            admin_database: SUPERUSER.to_owned(),
        })
    }

    fn ensure_running(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let mut slot = lock(&slot);
        self.slots.check_not_stopped()?;
        if slot.is_none() {
            let home = self.root.join(tenant);
            if !home.join(PGDATA).exists() {
                bail!(
                    "tenant {tenant} has no local backend ({} does not exist)",
                    home.join(PGDATA).display()
                );
            }
            *slot = Some(self.open(&home)?);
        }
        start(slot.as_mut().expect("opened above"), tenant)
    }

    /// Stops the tenant's postmaster (fast: there are no sessions left to end) and
    /// keeps the handle, so that `ensure_running` starts the same cluster again.
    fn park(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let mut slot = lock(&slot);
        if let Some(cluster) = slot.as_mut() {
            cluster
                .stop(StopMode::Fast)
                .with_context(|| format!("stopping tenant {tenant}'s local backend"))?;
        }
        Ok(())
    }

    /// Whether the postmaster of a cluster this process opened still runs (a dead one is
    /// reaped on the way). None when this process has not opened the tenant's cluster,
    /// when an operation on it is under way (create, a restart, destroy: the next check
    /// looks again), and once the driver is stopping.
    fn health(&self, tenant: &str) -> Option<anyhow::Result<()>> {
        if self.slots.is_stopped() {
            return None;
        }
        let slot = self.slots.slot(tenant);
        let cluster = slot.try_lock().ok()?;
        let cluster = cluster.as_ref()?;
        Some(if cluster.is_running() {
            Ok(())
        } else {
            Err(anyhow!(
                "its postmaster ({}) is not running",
                cluster.data_dir().display()
            ))
        })
    }

    fn destroy(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let mut slot = lock(&slot);
        let home = self.root.join(tenant);
        if slot.is_none() && home.join(PGDATA).exists() {
            // Not opened by this process; a postmaster may still run on it, left by a
            // Sluice that died (we hold the owner lock, so no live one runs it). A
            // directory localpg cannot open has no postmaster we could find: remove it.
            match self.open(&home) {
                Ok(cluster) => *slot = Some(cluster),
                Err(e) => tracing::warn!(tenant, error = %format!("{e:#}"), "removing anyway"),
            }
        }
        if let Some(cluster) = slot.as_mut() {
            cluster
                .stop(StopMode::Fast)
                .with_context(|| format!("stopping tenant {tenant}'s local backend"))?;
        }
        *slot = None;
        let removing = self.removing_dir(tenant);
        if home.symlink_metadata().is_ok() {
            remove_dir_if_exists(&removing)?;
            std::fs::rename(&home, &removing).with_context(|| {
                format!("renaming {} to {}", home.display(), removing.display())
            })?;
        }
        remove_dir_if_exists(&removing)?;
        tracing::info!(tenant, "removed the local backend");
        Ok(())
    }

    /// Makes the cluster in `home/pgdata.new` (after removing what an interrupted creation
    /// left), sets the superuser's password, and renames it to `home/pgdata`.
    fn build(&self, tenant: &str, home: &Path, admin_password: &str) -> anyhow::Result<()> {
        create_private_dir(home)?;
        let staging = home.join(STAGING);
        let tls_dir = home.join(TLS_STAGING);
        remove_dir_if_exists(&staging)?;
        remove_dir_if_exists(&tls_dir)?;

        create_private_dir(&tls_dir)?;
        let tls = TlsFiles {
            cert_pem: tls_dir.join("server.crt"),
            key_pem: tls_dir.join("server.key"),
        };
        CertificateAuthority::generate(&format!("Sluice local backend CA ({tenant})"))
            .and_then(|ca| ca.issue(&["127.0.0.1", "localhost"]))
            .and_then(|leaf| leaf.write(&tls.cert_pem, &tls.key_pem))
            .with_context(|| format!("making the TLS certificate of tenant {tenant}'s backend"))?;

        let template = Template::ensure(&self.install, &localpg::default_template_cache())
            .context("preparing the initdb template for local backends")?;
        let mut config = ClusterConfig::new(&staging, home.join(SOCKET_DIR));
        config.port = Some(localpg::free_port().context("picking a port")?);
        config.tls = Some(tls);
        let cluster = Cluster::create(&self.install, &template, config)
            .with_context(|| format!("creating tenant {tenant}'s local backend"))?;
        // Only the verifier travels, through a pipe to the single-user backend.
        let sql = format!(
            "ALTER ROLE {SUPERUSER} PASSWORD '{}'",
            sql::scram_verifier(admin_password)
        );
        cluster
            .run_single_user(&sql)
            .with_context(|| format!("setting the admin password of tenant {tenant}'s backend"))?;
        drop(cluster);
        // The server has its own copies (localpg copies them into the data directory).
        remove_dir_if_exists(&tls_dir)?;
        let pgdata = home.join(PGDATA);
        std::fs::rename(&staging, &pgdata)
            .with_context(|| format!("renaming {} to {}", staging.display(), pgdata.display()))?;
        tracing::info!(tenant, data_dir = %pgdata.display(), "created a local backend");
        Ok(())
    }

    fn open(&self, home: &Path) -> anyhow::Result<Cluster> {
        let pgdata = home.join(PGDATA);
        Cluster::open(&self.install, &pgdata)
            .with_context(|| format!("opening the local backend {}", pgdata.display()))
    }

    fn removing_dir(&self, tenant: &str) -> PathBuf {
        self.root.join(format!("{tenant}{REMOVING_SUFFIX}"))
    }

    /// Stops every cluster this driver opened (fast shutdown: sessions are ended, data is
    /// flushed) and forbids starting more. Waits for an operation in progress on a tenant
    /// to finish first.
    fn stop_all(&self) {
        self.slots.stop();
        for (tenant, slot) in self.slots.all() {
            let Some(mut cluster) = lock(&slot).take() else {
                continue;
            };
            if let Err(e) = cluster.stop(StopMode::Fast) {
                tracing::warn!(tenant, error = %e, "stopping a local backend");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Starts the cluster unless this handle's postmaster already runs. A postmaster that
/// another handle started can only have been left by a Sluice that died, since we hold
/// the owner lock: it is stopped, and ours started.
fn start(cluster: &mut Cluster, tenant: &str) -> anyhow::Result<()> {
    let started = match cluster.start() {
        Err(localpg::Error::AlreadyRunning { pid, .. }) => {
            tracing::warn!(
                tenant,
                pid,
                "stopping a local backend's postmaster left by a Sluice that died"
            );
            cluster
                .stop(StopMode::Fast)
                .with_context(|| format!("stopping the leftover postmaster {pid}"))?;
            cluster.start()
        }
        other => other,
    };
    started.with_context(|| format!("starting tenant {tenant}'s local backend"))
}
