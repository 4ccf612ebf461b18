//! Local PostgreSQL clusters for tests, `sluice demo`, the local provisioner and the
//! embedded control store.
//!
//! The flow: [`Installation::discover`] finds the server binaries, [`Template::ensure`] runs
//! initdb once per cache directory and major version, [`Cluster::create`] copies the template
//! (≈ 0.2 s instead of initdb's ≈ 0.5 s) and writes its settings,
//! [`Cluster::run_single_user`] installs credentials while it is stopped, and
//! [`Cluster::start`] / [`Cluster::stop`] run the postmaster. [`tls`] makes the certificates.
//!
//! Everything is synchronous std code (async callers use `spawn_blocking`). When running as
//! root, the server binaries run inside a user namespace as uid 65534 (see `launcher`).
//!
//! Invariant: a postmaster started by a [`Cluster`] handle never outlives the handle.

pub mod bootstrap;
mod cluster;
mod error;
mod installation;
mod launcher;
mod port;
mod process;
mod template;
pub mod tls;

pub use cluster::{Cluster, ClusterConfig, StopMode, TlsFiles};
pub use error::Error;
pub use installation::Installation;
pub use port::free_port;
pub use template::{default_template_cache, Template};
