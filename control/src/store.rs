//! The control store: tenants, their host names, roles, API keys, jobs, idempotency
//! keys, secrets and the audit log, in PostgreSQL through tokio-postgres.
//!
//! The store is a database rather than files because several Sluice processes share it:
//! the jobs queue needs row locks, the audit chain needs serialised appends, and the
//! catalog sync needs LISTEN/NOTIFY. Without `control.database_url`, [`EmbeddedControl`]
//! runs a private cluster under `data_dir`, so there is one code path either way.
//!
//! Layout: [`connection`] (`Store`, one connection, re-established when lost),
//! [`migrate`] (the versioned schema), [`tenants`] and [`hostnames`] (tenants' own host
//! names with their certificates), [`audit`] (the hash-chained log, with
//! [`canonical`] JSON and [`rfc3339`] timestamps for the hashing rule), [`api_keys`],
//! [`usage`] (what each tenant used, per hour and process), and [`embedded`] (the
//! private cluster).

pub mod api_keys;
pub mod audit;
pub mod canonical;
pub mod connection;
pub mod embedded;
pub mod hostnames;
pub mod idempotency;
pub mod jobs;
pub mod migrate;
pub mod replicas;
pub mod rfc3339;
pub mod tenants;
pub mod usage;

pub use api_keys::ApiKeyRecord;
pub use audit::{AuditEvent, AuditFilter, AuditRow, AuditVerify};
pub use canonical::canonical_json;
pub use connection::Store;
pub use embedded::EmbeddedControl;
pub use hostnames::{HostnamePut, HostnameRecord};
pub use jobs::{JobOutcome, JobRecord, JOB_STATES};
pub use migrate::{Migration, SchemaMismatch, MIGRATIONS};
pub use replicas::{FleetFull, ReplicaInfo};
pub use tenants::{BackendRecord, ChangeError, RoleRecord, TenantRecord};
pub use usage::{Granularity, UsageBucket, UsageRow, UsageTotals};
