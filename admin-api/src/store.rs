//! The control store: tenants, roles, API keys, jobs, idempotency keys, secrets and the
//! audit log, in PostgreSQL through tokio-postgres.
//!
//! The store is a database rather than files because several Sluice processes share it:
//! the jobs queue needs row locks, the audit chain needs serialised appends, and the
//! catalog sync needs LISTEN/NOTIFY. Without `control.database_url`, [`EmbeddedControl`]
//! runs a private cluster under `data_dir`, so there is one code path either way.
//!
//! Layout: [`migrate`] (the versioned schema), [`audit`] (the hash-chained log, with
//! [`canonical`] JSON and [`rfc3339`] timestamps for the hashing rule), [`api_keys`], and
//! [`embedded`] (the private cluster).

pub mod api_keys;
pub mod audit;
pub mod canonical;
pub mod embedded;
pub mod jobs;
pub mod migrate;
pub mod rfc3339;

use anyhow::Context;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

pub use api_keys::ApiKeyRecord;
pub use audit::{AuditEvent, AuditFilter, AuditRow, AuditVerify};
pub use canonical::canonical_json;
pub use embedded::EmbeddedControl;
pub use jobs::JOB_STATES;
pub use migrate::{Migration, SchemaMismatch, MIGRATIONS};

/// A connection to the control store.
///
/// One connection for now. It sits behind an async mutex because a transaction needs the
/// client to itself: tokio-postgres pipelines statements from concurrent callers on one
/// connection, which would interleave their BEGIN/COMMIT. Every method takes `&self`, so a
/// pool can replace the mutex later without changing callers.
#[derive(Debug)]
pub struct Store {
    client: Mutex<Client>,
}

impl Store {
    /// Connects without TLS (the embedded cluster is reached over its unix socket; an
    /// external store on another host should come with TLS later) and spawns the task that
    /// drives the connection. Must be called inside a tokio runtime.
    pub async fn connect(config: tokio_postgres::Config) -> anyhow::Result<Store> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .context("connecting to the control store")?;
        tokio::spawn(async move {
            // Ends when the client is dropped (Ok) or the server goes away (Err).
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "control store connection ended");
            }
        });
        Ok(Store {
            client: Mutex::new(client),
        })
    }

    /// True once the connection is gone; every call then fails until a new `Store`.
    pub async fn is_closed(&self) -> bool {
        self.client.lock().await.is_closed()
    }

    /// The client, held exclusively until the guard drops.
    async fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().await
    }
}
