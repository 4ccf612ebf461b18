//! Provisioning: where a tenant's own PostgreSQL backend comes from.
//!
//! The job worker (in `control`) asks a [`Driver`] for a backend and gets back a
//! [`BackendAddress`]: where the backend is and how the control plane logs into it as an
//! administrator. Everything after that (the `sluice_auth` role and its lookup function,
//! the `app` database, the tenant's login roles) is plain SQL over that login and the same
//! for every driver ([`sql`]).
//!
//! Every driver operation is idempotent: the worker re-runs a job from its last finished
//! step after a crash, so `create` must find what an interrupted `create` made rather than
//! make a second backend, and `destroy` must succeed when there is nothing left to remove.
//!
//! Drivers, one module each: [`LocalDriver`] (`local`: a localpg cluster per tenant on
//! this machine), [`StaticDriver`] (`static`: a server the operator already runs; Sluice
//! never creates or removes it), [`LxcDriver`] (`lxc`: an unprivileged LXC container per
//! tenant on this host) and [`ProxmoxDriver`] (`proxmox`: a container per tenant through
//! the Proxmox VE API). [`private_file`] keeps the files Sluice's control plane must keep
//! to itself (key files, data directories).
//!
//! This crate knows nothing of Sluice's admin API, its control store or its clients: it
//! takes a request and answers with a backend. (The proxmox driver is an HTTPS client of
//! the Proxmox VE API; that is the only HTTP it speaks.)

mod driver;
mod local;
pub mod lxc;
pub mod private_file;
pub mod proxmox;
pub mod sql;
mod static_server;

pub use driver::{BackendAddress, BackendRequest, BoxFuture, Driver, PlanSize};
pub use local::LocalDriver;
pub use lxc::{LxcConfig, LxcDriver};
pub use proxmox::{ProxmoxConfig, ProxmoxDriver};
pub use static_server::StaticDriver;
