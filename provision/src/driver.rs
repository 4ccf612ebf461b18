//! The [`Driver`] trait every provisioner implements, what it is asked
//! ([`BackendRequest`]) and what it answers ([`BackendAddress`]), container sizes
//! ([`PlanSize`]), and the helpers the drivers share (one operation per tenant at a time,
//! tenant id checks, directory removal).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::ensure;
use serde::{Deserialize, Serialize};

/// A boxed future, so that [`Driver`] can be used as `dyn Driver`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a tenant's backend is and how Sluice's control plane logs into it as an
/// administrator. Stored with the tenant (the password is not part of it: it is kept
/// encrypted apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAddress {
    /// An IP address, a host name, or a unix socket directory (libpq's rule: a value
    /// starting with `/`).
    pub host: String,
    pub port: u16,
    /// libpq's sslmode: `disable`, `prefer`, `require` or `verify-full`. Ignored for unix
    /// sockets, where Postgres offers no TLS (as libpq does).
    pub tls: String,
    /// CA bundle (PEM) that the server's certificate must chain to, for `verify-full`.
    pub tls_ca: Option<PathBuf>,
    /// The role the control plane manages the backend as (it must be a superuser: the
    /// auth lookup function reads `pg_authid`).
    pub admin_user: String,
    /// The database the administrator connects to by default, e.g. `postgres`.
    pub admin_database: String,
}

/// What the job worker asks a driver for.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    /// Already validated as a DNS label.
    pub tenant: String,
    pub plan: Option<String>,
    /// The `backend` object of `POST /v1/tenants`: for `static` its `host`, `port`, `tls`,
    /// `tls_ca`, `admin_user` and `admin_database`; `local` ignores it.
    pub params: serde_json::Value,
    /// The administrator's password. For `local` the worker generates and stores it
    /// (encrypted) before calling `create`, which sets it; a retried `create` must get the
    /// same one. For `static` the operator gives it and the driver checks it.
    pub admin_password: String,
}

/// A way of getting tenant backends. Implementations are shared by the job worker, the
/// roles API and startup, hence `Send + Sync` and `&self` everywhere.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// `"local"` or `"static"`, as in `[provisioner] driver`.
    fn name(&self) -> &'static str;

    /// Creates the tenant's backend, or finds the one an earlier attempt made: running it
    /// twice, or again after a crash half-way, yields one backend.
    fn create<'a>(
        &'a self,
        req: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>>;

    /// Makes sure a created backend is running (local: starts its cluster after a Sluice
    /// restart, taking over a postmaster left by a Sluice that was killed). Static:
    /// nothing to do.
    fn ensure_running<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Stops and removes the tenant's backend; Ok when there is none. Static: nothing is
    /// removed, the operator's server is never touched.
    fn destroy<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Whether the tenant's backend, if this process runs it, is up: `None` when it is
    /// not this process's to watch (the default: servers Sluice does not run, or run by
    /// another Sluice). A backend found down is restarted with `ensure_running`.
    fn health<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Option<anyhow::Result<()>>> {
        Box::pin(async { None })
    }

    /// Applies `plan`'s backend size to the tenant's existing backend (container
    /// drivers); the default has no sizes and does nothing.
    fn resize<'a>(
        &'a self,
        _tenant: &'a str,
        _plan: Option<&'a str>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Stops the tenant's backend while no client needs it (scale to zero), keeping
    /// its data: `ensure_running` starts it again. Drivers that run no backend of their
    /// own cannot (the default).
    fn park<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { anyhow::bail!("the {} driver cannot park a backend", self.name()) })
    }

    /// Stops every backend this driver runs. Called once at Sluice shutdown; blocks.
    fn shutdown(&self);
}

/// The per-tenant state of a driver that runs backends on this machine: a mutex per
/// tenant (serialising the operations on one tenant; slots are never removed, so two
/// threads never hold different slots for one tenant) and the shutdown flag.
#[derive(Debug)]
pub(crate) struct TenantSlots<T> {
    slots: Mutex<HashMap<String, Arc<Mutex<T>>>>,
    stopped: AtomicBool,
    /// `"local"` or `"lxc"`, for messages.
    driver: &'static str,
}

impl<T: Default> TenantSlots<T> {
    pub(crate) fn new(driver: &'static str) -> Self {
        TenantSlots {
            slots: Default::default(),
            stopped: Default::default(),
            driver,
        }
    }

    /// The tenant's slot, made on first use.
    pub(crate) fn slot(&self, tenant: &str) -> Arc<Mutex<T>> {
        lock(&self.slots)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Every slot made so far, with its tenant.
    pub(crate) fn all(&self) -> Vec<(String, Arc<Mutex<T>>)> {
        lock(&self.slots)
            .iter()
            .map(|(tenant, slot)| (tenant.clone(), slot.clone()))
            .collect()
    }

    /// From now on nothing is started.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn check_not_stopped(&self) -> anyhow::Result<()> {
        if self.is_stopped() {
            anyhow::bail!("the {} provisioner is shutting down", self.driver);
        }
        Ok(())
    }
}

/// Tenant ids become directory and container names: only DNS labels, so never `..`, `/`
/// or a name with a dot (`<tenant>.removing` cannot be a tenant's).
pub(crate) fn check_tenant(tenant: &str) -> anyhow::Result<()> {
    router::TenantId::parse(tenant)
        .map(drop)
        .map_err(|_| anyhow::anyhow!("{tenant:?} is not a valid tenant id"))
}

/// Locks a driver's mutex; a panic on another thread poisons nothing that matters here.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn remove_dir_if_exists(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A backend container's size, from a plan's `[plans.NAME.backend]` (both container
/// drivers, `lxc` and `proxmox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSize {
    pub cores: u32,
    pub memory_mib: u64,
    pub swap_mib: u64,
    pub disk_gib: u64,
}

impl Default for PlanSize {
    /// The smallest useful PostgreSQL: 1 core, 1 GiB of memory, 512 MiB of swap, 8 GiB.
    fn default() -> Self {
        PlanSize {
            cores: 1,
            memory_mib: 1024,
            swap_mib: 512,
            disk_gib: 8,
        }
    }
}

impl PlanSize {
    pub(crate) fn validate(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            (1..=8192).contains(&self.cores),
            "{what}.cores must be 1 to 8192"
        );
        ensure!(
            self.memory_mib >= 16,
            "{what}.memory_mib must be at least 16"
        );
        ensure!(self.disk_gib >= 1, "{what}.disk_gib must be at least 1");
        Ok(())
    }
}
