//! The `lxc` driver: each tenant's PostgreSQL in its own unprivileged LXC container on
//! this host, with no network, reached through its unix socket.
//!
//! Layout under the driver's root (`[provisioner.lxc] path`, default `<data_dir>/lxc`,
//! mode 0711: the containers' root, an unprivileged uid on the host, must pass through it):
//!
//! - `owner.lock`: flock'ed while this driver lives (one Sluice per root);
//! - `template/`: the pre-shifted rootfs every container is copied from ([`template`];
//!   `[provisioner.lxc] template` may put it elsewhere, shared by several Sluices);
//! - with `storage = "btrfs"`, `containers/` is a btrfs filesystem (from `btrfs.img` or a
//!   device when the driver mounts it) holding the template's copy as the read-only
//!   subvolume `containers/.template`, and each rootfs is a snapshot of it ([`storage`]);
//! - `containers/<tenant>/`: LXC's directory of the container (`config`, `rootfs/`,
//!   `lxc.log`). It appears through one rename from `containers/<tenant>.new/` after the
//!   rootfs is copied and the administrator's password is set, so a `containers/<tenant>/`
//!   is never half-made; a `.new` found at the start of a creation is what a creation
//!   that died left, and is redone. `containers/<tenant>.removing/`: being destroyed;
//! - `sockets/<tenant>/`: the server's socket directory (owned by the container's
//!   `postgres` user, mode 0700; the socket itself 0700), bind-mounted at
//!   `/run/postgresql` in the container. It is the tenant's backend address.
//!
//! Security properties: the container maps its ids to `subid_base..+65536` (never the
//! host's root); it has no network interface but loopback; its only way out is the socket
//! directory, which only root and the container's own `postgres` uid can use; every login
//! needs a SCRAM password, the administrator's included, and that password never exists
//! in the container in plaintext (its verifier is written by a single-user server before
//! the first start). Plan limits are cgroup limits (memory, memory+swap where accounted,
//! CPU quota and weight, a process cap). Disk is limited with `storage = "btrfs"` only
//! (the qgroup of the rootfs's subvolume); a `dir` rootfs on the host's filesystem has
//! no size of its own (docs/drivers.md).

mod config;
mod container;
pub mod requirements;
pub mod storage;
pub mod template;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::fcntl::Flock;

use crate::private_file::take_ownership;

use crate::driver::{
    check_tenant, lock, remove_dir_if_exists, BackendAddress, BackendRequest, BoxFuture, Driver,
    PlanSize, TenantSlots,
};
use crate::sql;
pub use config::{BtrfsSource, LxcConfig, Storage};
use container::{Container, State};
pub use template::TemplateInfo;

/// The superuser the control plane manages a container's PostgreSQL as.
const SUPERUSER: &str = "postgres";
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started container may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(30);

/// The first Debian mirror this host's apt uses (deb822 `URIs:` or a one-line `deb`
/// entry), else deb.debian.org.
pub fn host_mirror() -> String {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        sources.extend(more);
    }
    sources
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| {
                    let line = line.trim();
                    let uri = line
                        .strip_prefix("URIs:")
                        .or_else(|| line.strip_prefix("deb "))?;
                    uri.split_whitespace()
                        .find(|word| word.starts_with("http"))
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// Unprivileged containers, one per tenant; see the module documentation.
#[derive(Debug)]
pub struct LxcDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LxcConfig,
    /// A mutex per tenant this process has touched, serialising operations on it.
    slots: TenantSlots<()>,
    _owner: Flock<std::fs::File>,
}

impl LxcDriver {
    /// Checks the host (everything missing is named, with its fix) and takes the root's
    /// owner lock. The template is built by the first creation, or ahead of time by
    /// `sluice lxc prepare`.
    pub fn new(config: LxcConfig) -> anyhow::Result<LxcDriver> {
        let problems = requirements::missing(&config, false);
        if !problems.is_empty() {
            bail!("{}", requirements::describe(&problems));
        }
        let owner = prepare_root(&config, &mut |line| tracing::info!("lxc storage: {line}"))?;
        Ok(LxcDriver {
            inner: Arc::new(Inner {
                config,
                slots: TenantSlots::new("lxc"),
                _owner: owner,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| anyhow!("the lxc provisioner's worker thread failed: {e}"))?
    }
}

/// Sets the storage up and builds the template for `config` if there is none yet
/// (`sluice lxc prepare`); with btrfs, also the template's subvolume.
pub fn prepare(config: &LxcConfig, progress: &mut dyn FnMut(&str)) -> anyhow::Result<TemplateInfo> {
    let problems = requirements::missing(config, template::current(config).is_none());
    if !problems.is_empty() {
        bail!("{}", requirements::describe(&problems));
    }
    let _owner = prepare_root(config, progress)?;
    let info = template::ensure(config, progress)?;
    if let Storage::Btrfs(_) = config.storage {
        storage::ensure_base(config, &info, progress)?;
    }
    Ok(info)
}

/// Creates the root (0711) and its `containers` and `sockets` directories, takes its
/// owner lock, and sets the storage up ([`storage::setup`]).
fn prepare_root(
    config: &LxcConfig,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Flock<std::fs::File>> {
    let root = &config.root;
    for dir in [
        root.to_path_buf(),
        root.join("containers"),
        root.join("sockets"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    let owner = take_ownership(root, "the lxc containers")?;
    storage::setup(config, progress)?;
    Ok(owner)
}

impl Driver for LxcDriver {
    fn name(&self) -> &'static str {
        "lxc"
    }

    fn create<'a>(
        &'a self,
        req: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>> {
        let req = req.clone();
        Box::pin(self.blocking(move |inner| inner.create(&req)))
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

    fn resize<'a>(
        &'a self,
        tenant: &'a str,
        plan: Option<&'a str>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        let tenant = tenant.to_owned();
        let plan = plan.map(str::to_owned);
        Box::pin(self.blocking(move |inner| inner.resize(&tenant, plan.as_deref())))
    }

    fn shutdown(&self) {
        self.inner.stop_all();
    }
}

impl Inner {
    fn container(&self, tenant: &str) -> Container {
        Container {
            lxcpath: self.config.root.join("containers"),
            name: tenant.to_owned(),
            socket_dir: self.config.root.join("sockets").join(tenant),
        }
    }

    fn create(&self, req: &BackendRequest) -> anyhow::Result<BackendAddress> {
        let tenant = req.tenant.as_str();
        check_tenant(tenant)?;
        anyhow::ensure!(
            !req.admin_password.is_empty(),
            "the backend's admin password is required"
        );
        let info = template::ensure(&self.config, &mut |line| {
            tracing::info!(tenant, "lxc template: {line}")
        })?;
        let slot = self.slots.slot(tenant);
        let _slot = lock(&slot);
        self.slots.check_not_stopped()?;
        let ct = self.container(tenant);
        storage::remove_container_dir(&self.config, &removing_dir(&ct))?;
        if !ct.config_path().exists() {
            self.build(&ct, &info, req)?;
        }
        self.socket_dir(&ct, &info)?;
        if ct.state()? != State::Running {
            self.start(&ct)?;
        }
        Ok(self.address(&ct))
    }

    /// Copies the template into `containers/<tenant>.new`, sets the administrator's
    /// password, writes the config, and renames it into place.
    fn build(
        &self,
        ct: &Container,
        info: &TemplateInfo,
        req: &BackendRequest,
    ) -> anyhow::Result<()> {
        let tenant = ct.name.as_str();
        let staging = staging_dir(ct);
        storage::remove_container_dir(&self.config, &staging)?;
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o711))?;
        let rootfs = staging.join("rootfs");
        let size = self.config.plan_size(req.plan.as_deref());
        storage::make_rootfs(&self.config, info, &rootfs, &size)?;
        container::set_verifier_offline(
            &rootfs,
            info,
            SUPERUSER,
            &sql::scram_verifier(&req.admin_password),
        )
        .with_context(|| format!("setting the admin password of tenant {tenant}'s backend"))?;
        self.write_plan_settings(&rootfs, info, &size)?;
        std::fs::write(staging.join("config"), ct.config_text(info, &size))
            .context("writing the container's config")?;
        std::fs::rename(&staging, ct.dir())
            .with_context(|| format!("renaming {} to {}", staging.display(), ct.dir().display()))?;
        tracing::info!(tenant, container = %ct.dir().display(), "created an lxc container");
        Ok(())
    }

    /// Creates the socket directory, owned by the container's postgres user, mode 0700.
    fn socket_dir(&self, ct: &Container, info: &TemplateInfo) -> anyhow::Result<()> {
        let dir = &ct.socket_dir;
        if !dir.exists() {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (uid, gid) = info.host_postgres_ids();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("changing the owner of {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))
    }

    /// Starts the container and waits for its server's socket.
    fn start(&self, ct: &Container) -> anyhow::Result<()> {
        ct.start()?;
        let socket = ct.socket_dir.join(".s.PGSQL.5432");
        let deadline = std::time::Instant::now() + SOCKET_WAIT;
        while !socket.exists() {
            if ct.state()? == State::Stopped {
                bail!(
                    "tenant {}'s container stopped right after starting; PostgreSQL's log is \
                     under {}/var/log/postgresql",
                    ct.name,
                    ct.rootfs().display()
                );
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "tenant {}'s container has no PostgreSQL socket after {SOCKET_WAIT:?}",
                    ct.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(tenant = %ct.name, pid = ?ct.init_pid(), "started an lxc container");
        Ok(())
    }

    fn address(&self, ct: &Container) -> BackendAddress {
        BackendAddress {
            host: ct.socket_dir.display().to_string(),
            port: 5432,
            tls: "disable".to_owned(),
            tls_ca: None,
            admin_user: SUPERUSER.to_owned(),
            admin_database: SUPERUSER.to_owned(),
        }
    }

    fn ensure_running(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let _slot = lock(&slot);
        self.slots.check_not_stopped()?;
        let ct = self.container(tenant);
        if !ct.config_path().exists() {
            bail!(
                "tenant {tenant} has no lxc container ({} does not exist)",
                ct.dir().display()
            );
        }
        match ct.state()? {
            State::Running => Ok(()),
            _ => self.start(&ct),
        }
    }

    /// Stops the tenant's container (its Postgres shuts down cleanly first); its
    /// rootfs and config stay, so `ensure_running` starts it again.
    fn park(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let _slot = lock(&slot);
        let ct = self.container(tenant);
        if !ct.config_path().exists() {
            bail!("tenant {tenant} has no lxc container");
        }
        ct.stop(STOP_TIMEOUT)
            .with_context(|| format!("stopping tenant {tenant}'s container"))
    }

    /// `None` when the tenant has no container here (another process's, or none yet).
    fn health(&self, tenant: &str) -> Option<anyhow::Result<()>> {
        let ct = self.container(tenant);
        if !ct.config_path().exists() || self.slots.is_stopped() {
            return None;
        }
        Some(match ct.state() {
            Ok(State::Running) => Ok(()),
            Ok(state) => Err(anyhow!("its container is {state:?}")),
            Err(e) => Err(e),
        })
    }

    /// Applies `plan`'s size: the config for the next start, the cgroup limits at once.
    fn resize(&self, tenant: &str, plan: Option<&str>) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let _slot = lock(&slot);
        let ct = self.container(tenant);
        let Some(info) = template::current(&self.config) else {
            bail!("the lxc template is missing");
        };
        if !ct.config_path().exists() {
            bail!("tenant {tenant} has no lxc container");
        }
        let size = self.config.plan_size(plan);
        // A bigger disk first, so that a tenant at its quota has room for its new
        // settings; a smaller one last.
        let growing = storage::grows(&self.config, &ct.rootfs(), &size);
        if growing {
            storage::apply_limit(&self.config, &info, &ct.rootfs(), &size)?;
        }
        self.write_plan_settings(&ct.rootfs(), &info, &size)?;
        std::fs::write(ct.config_path(), ct.config_text(&info, &size))
            .context("writing the container's config")?;
        if !growing {
            storage::apply_limit(&self.config, &info, &ct.rootfs(), &size)?;
        }
        if ct.state()? == State::Running {
            ct.apply_limits(&size)?;
        }
        tracing::info!(tenant, ?size, "resized an lxc container");
        Ok(())
    }

    fn destroy(&self, tenant: &str) -> anyhow::Result<()> {
        check_tenant(tenant)?;
        let slot = self.slots.slot(tenant);
        let _slot = lock(&slot);
        let ct = self.container(tenant);
        if ct.config_path().exists() {
            ct.stop(STOP_TIMEOUT)
                .with_context(|| format!("stopping tenant {tenant}'s container"))?;
        }
        let removing = removing_dir(&ct);
        if ct.dir().symlink_metadata().is_ok() {
            storage::remove_container_dir(&self.config, &removing)?;
            std::fs::rename(ct.dir(), &removing).with_context(|| {
                format!("renaming {} to {}", ct.dir().display(), removing.display())
            })?;
        }
        storage::remove_container_dir(&self.config, &removing)?;
        storage::remove_container_dir(&self.config, &staging_dir(&ct))?;
        remove_dir_if_exists(&ct.socket_dir)?;
        tracing::info!(tenant, "removed the lxc container");
        Ok(())
    }

    /// Stops every running container under the root, in parallel, and forbids starting
    /// more.
    fn stop_all(&self) {
        self.slots.stop();
        let Ok(entries) = std::fs::read_dir(self.config.root.join("containers")) else {
            return;
        };
        let containers: Vec<Container> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| check_tenant(name).is_ok())
            .map(|name| self.container(&name))
            .collect();
        std::thread::scope(|scope| {
            for ct in &containers {
                scope.spawn(move || {
                    if let Err(e) = ct.stop(STOP_TIMEOUT) {
                        tracing::warn!(tenant = %ct.name, error = %format!("{e:#}"), "stopping an lxc container");
                    }
                });
            }
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Inner {
    /// The PostgreSQL settings that follow the plan, in the rootfs's `conf.d`; with
    /// btrfs storage `max_wal_size` (a quarter of the WAL's part of the disk) and
    /// `min_wal_size` (two segments) too.
    fn write_plan_settings(
        &self,
        rootfs: &Path,
        info: &TemplateInfo,
        size: &PlanSize,
    ) -> anyhow::Result<()> {
        let path = rootfs
            .join(info.config_dir().trim_start_matches('/'))
            .join("conf.d/sluice-plan.conf");
        let mut text = container::plan_settings(size);
        if let Storage::Btrfs(_) = self.config.storage {
            text.push_str(&format!(
                "max_wal_size = '{}MB'\nmin_wal_size = '32MB'\n",
                storage::wal_mib(size) / 4
            ));
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::os::unix::fs::lchown(&path, Some(info.subid_base), Some(info.subid_base))
            .with_context(|| format!("changing the owner of {}", path.display()))
    }
}

fn staging_dir(ct: &Container) -> PathBuf {
    ct.lxcpath.join(format!("{}.new", ct.name))
}

fn removing_dir(ct: &Container) -> PathBuf {
    ct.lxcpath.join(format!("{}.removing", ct.name))
}
