//! [`Store`]: one connection to the control store, re-established when lost, migrated
//! on first use when the store was down at start. The queries live beside it, one
//! module per table (`impl Store` blocks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};

use super::migrate;

/// A connection to the control store.
///
/// One connection, behind an async mutex because a transaction needs the client to
/// itself: tokio-postgres pipelines statements from concurrent callers on one connection,
/// which would interleave their BEGIN/COMMIT. A lost connection (the store restarted, a
/// network cut) is replaced on the next call, so the store comes back without a Sluice
/// restart; while it cannot be reached, every call fails fast (the connect timeout).
#[derive(Debug)]
pub struct Store {
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
    /// Run the migrations on the first connection (a store that was down at start).
    auto_migrate: bool,
    migrated: AtomicBool,
    /// A separate audit database (`[control] audit_database_url`), if any: audit events
    /// go there instead of this store's `audit_events`.
    pub(super) audit: Option<Box<Store>>,
    /// This process's `[fleet] id`: the home of the tenants whose host-bound backends
    /// it creates, and the host of the jobs its worker may take (jobs.rs, tenants.rs).
    pub(super) home: Option<String>,
}

/// How long a reconnect may take before the call fails (and the API answers 503).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Connects without TLS (the embedded cluster is reached over its unix socket; an
    /// external store on another host should come with TLS later) and spawns the task that
    /// drives the connection. Must be called inside a tokio runtime.
    pub async fn connect(config: tokio_postgres::Config) -> anyhow::Result<Store> {
        let client = open(&config).await?;
        Ok(Store {
            config,
            client: Mutex::new(Some(client)),
            auto_migrate: false,
            migrated: AtomicBool::new(false),
            audit: None,
            home: None,
        })
    }

    /// A store that connects (and migrates) on first use, so a store that is down when
    /// Sluice starts is picked up when it comes back.
    pub fn lazy(config: tokio_postgres::Config) -> Store {
        Store {
            config,
            client: Mutex::new(None),
            auto_migrate: true,
            migrated: AtomicBool::new(false),
            audit: None,
            home: None,
        }
    }

    /// This store, used by the replica `[fleet] id` `home` (see the field).
    pub fn with_home(mut self, home: Option<String>) -> Store {
        self.home = home;
        self
    }

    /// This store, with audit events kept in `audit` instead (connected and migrated on
    /// first use, like [`Store::lazy`]).
    pub fn with_audit(mut self, audit: Store) -> Store {
        self.audit = Some(Box::new(audit));
        self
    }

    /// Another connection to the same store (the job worker holds its own, because its
    /// advisory locks live as long as its session).
    pub fn another(&self) -> Store {
        let store = Store::lazy(self.config.clone()).with_home(self.home.clone());
        match &self.audit {
            Some(audit) => store.with_audit(Store::lazy(audit.config.clone())),
            None => store,
        }
    }

    /// A new connection whose messages (notifications) the caller drives itself.
    pub async fn connect_raw(
        &self,
    ) -> anyhow::Result<(
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    )> {
        let mut config = self.config.clone();
        config.connect_timeout(RECONNECT_TIMEOUT);
        config
            .connect(NoTls)
            .await
            .context("connecting to the control store")
    }

    /// Whether the store answers now (connecting if need be), and why not.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client().await?.simple_query("").await?;
        if let Some(audit) = &self.audit {
            Box::pin(audit.ping()).await.context("the audit database")?;
        }
        Ok(())
    }

    /// The client, held exclusively until the guard drops; (re)connects first if there is
    /// no live connection.
    pub(super) async fn client(&self) -> anyhow::Result<MappedMutexGuard<'_, Client>> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let mut config = self.config.clone();
            config.connect_timeout(RECONNECT_TIMEOUT);
            let mut client = tokio::time::timeout(RECONNECT_TIMEOUT, open(&config))
                .await
                .map_err(|_| anyhow::anyhow!("connecting to the control store timed out"))??;
            if self.auto_migrate && !self.migrated.load(Ordering::Acquire) {
                let applied = migrate::migrate_client(&mut client).await?;
                tracing::info!(?applied, "control store migrated");
                self.migrated.store(true, Ordering::Release);
            }
            tracing::info!("connected to the control store");
            *slot = Some(client);
        }
        Ok(MutexGuard::map(slot, |c| {
            c.as_mut().expect("just connected")
        }))
    }

    /// Applies the migrations the store lacks, in order, and returns the versions this call
    /// applied (empty when the schema was already current). Fails with a [`SchemaMismatch`]
    /// (inside the `anyhow::Error`) when the store was migrated by a newer or different
    /// build; nothing is changed then.
    pub async fn migrate(&self) -> anyhow::Result<Vec<i32>> {
        let mut client = self.client().await?;
        migrate::migrate_client(&mut client).await
    }
}

async fn open(config: &tokio_postgres::Config) -> anyhow::Result<Client> {
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
    Ok(client)
}
