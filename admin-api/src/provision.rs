//! Provisioner drivers: where a tenant's own PostgreSQL backend comes from.
//!
//! The job worker asks a [`Driver`] for a backend and gets back a [`BackendAddress`]: where
//! the backend is and how the control plane logs into it as an administrator. Everything
//! after that (the `sluice_auth` role and its lookup function, the `app` database, the
//! tenant's login roles) is plain SQL over that login and the same for every driver
//! ([`sql`]).
//!
//! Every driver operation is idempotent: the worker re-runs a job from its last finished
//! step after a crash, so `create` must find what an interrupted `create` made rather than
//! make a second backend, and `destroy` must succeed when there is nothing left to remove.
//!
//! Drivers: [`LocalDriver`] (a localpg cluster per tenant on this machine) and
//! [`StaticDriver`] (a server the operator already runs; Sluice never creates or removes
//! it). DESIGN §2's `lxc` and `proxmox` drivers are not built yet.

mod fixed;
mod local;
pub mod proxmox;
pub mod sql;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use fixed::StaticDriver;
pub use local::LocalDriver;
pub use proxmox::{ProxmoxConfig, ProxmoxDriver};

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

    /// Stops every backend this driver runs. Called once at Sluice shutdown; blocks.
    fn shutdown(&self);
}
