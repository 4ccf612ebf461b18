//! Sluice's control plane: what decides which tenants exist and what they may do, and
//! keeps their backends alive.
//!
//! - [`store`]: the control store (PostgreSQL): tenants, roles, jobs, API keys,
//!   idempotency records and the hash-chained audit log, with its migrations and the
//!   embedded cluster Sluice can run itself; [`open`] connects to it at start.
//! - [`catalog_sync`]: the store's tenants turned into the data plane's catalog, in every
//!   process, following the store's notifications; [`settings`] is a tenant's own pool
//!   settings and limits over its plan.
//! - [`jobs`]: the provisioning worker (create and delete jobs) over the [`drivers`];
//!   [`supervise`]: restarts backends found down; [`park`]: stops idle tenants'
//!   backends and starts them for the next login (scale to zero); [`refusals`]:
//!   refused connections summed into the audit log.
//! - [`usage`]: what each tenant used per hour, metered in memory and written to the
//!   store (with the size of its databases, sampled from its backend); [`watermarks`]:
//!   those sizes against each tenant's disk limit (warning, read-only when full).
//! - [`roles`]: a tenant's login roles, managed on its backend; [`hostnames`]: what a
//!   tenant's own host name and its certificate must be.
//! - [`secrets`]: backend credentials sealed at rest; [`keys`]: the admin API keys and
//!   their roles.
//! - [`plane`]: the parts above as one process runs them.
//! - [`console`]: the keys and the audit log as the proxy's admin console uses them
//!   (`router::console::ConsoleAuthority`).
//!
//! The admin API (the `admin-api` crate) is this crate's HTTP face; provisioning drivers
//! (the `provision` crate) are below it. This crate speaks no HTTP and never touches a
//! client socket: it reaches the data plane only through the catalog it writes and the
//! `router::AdmissionControl` handle it is given.

pub mod catalog_sync;
pub mod console;
pub mod drivers;
pub mod fleet;
pub mod health;
pub mod hostnames;
pub mod jobs;
pub mod keys;
pub mod open;
pub mod park;
pub mod plane;
mod probe;
pub mod refusals;
pub mod roles;
pub mod secrets;
pub mod settings;
pub mod store;
pub mod supervise;
pub mod usage;
pub mod watermarks;

pub use catalog_sync::{CatalogSync, ConfigTenant, Plans, StoreEvent};
pub use drivers::Drivers;
pub use open::{Control, ControlConfig, OpenedControl, StoreUnavailable};
pub use plane::Plane;
