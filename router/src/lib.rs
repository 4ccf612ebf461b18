//! The tenant catalog and the decisions made from it: which tenant a connection is
//! for, and whether it may come in.
//!
//! Invariant: this crate does no I/O. It holds plain data (tenants, their backends and
//! pool settings) and pure functions over it, so every decision here is unit-testable
//! and cheap on the connection path. Files, sockets and clocks belong to the callers.

pub mod admission;
pub mod catalog;
pub mod console;
pub mod disk;
pub mod fleet;
pub mod identify;
pub mod memory;
pub mod parking;
pub mod rejections;
pub mod tenant;
pub mod tenant_id;

pub use admission::{
    AddressBuckets, AdmissionControl, AllowList, Ban, BanPolicy, Cidr, CidrError, FailedLogins,
    TokenBucket, DEFAULT_MAX_ADDRESSES,
};
pub use catalog::{Catalog, CatalogHandle};
pub use disk::{DiskLevel, DiskQuotas, TenantDisk};
pub use fleet::{Membership, Replica, Share};
pub use identify::Client as IdentifyClient;
pub use identify::{identify, Identified, IdentifyError, IdentifyRules, TenantSource};
pub use memory::MemoryBudget;
pub use rejections::{CancelOutcome, Reason, Rejections, TenantLabels, Who};
pub use tenant::{
    Backend, BackendAddr, BackendTls, Limits, PoolMode, PoolSettings, SessionState, Tenant,
    TenantHostname,
};
pub use tenant_id::{TenantId, TenantIdError};
