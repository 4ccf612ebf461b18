//! All pools of a process, created on first use, and their upkeep.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use router::{Backend, PoolSettings, TenantId};
use tokio_util::sync::CancellationToken;

use crate::pause::Pause;
use crate::pool::{Pool, PoolKey};
use crate::registry::Registry;
use crate::stats::{Histograms, PoolCounts};
use crate::tenant_servers::TenantServers;
use crate::tls::TlsConnectors;

/// How often idle connections are checked for timeouts and dead peers.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Pools {
    pools: DashMap<PoolKey, Arc<Pool>>,
    pub tls: TlsConnectors,
    /// Latency histograms shared by every pool.
    pub histograms: Arc<Histograms>,
    /// Each tenant's cap on server connections across its pools.
    tenants: DashMap<TenantId, Arc<TenantServers>>,
    /// Each tenant's PAUSE switch (kept while the tenant is in the catalog).
    pauses: DashMap<TenantId, Arc<Pause>>,
    /// Every logged-in client and open server connection (SHOW CLIENTS / SERVERS).
    pub registry: Arc<Registry>,
}

impl Pools {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pools whose checkouts and queries feed `histograms`.
    pub fn with_histograms(histograms: Histograms) -> Self {
        Pools {
            histograms: Arc::new(histograms),
            ..Self::default()
        }
    }

    /// The pool for `key`, created with `backend` and `settings` if it does not exist;
    /// `max_servers` is its tenant's `max_server_connections` (when the tenant's
    /// first pool is created; [`Pools::apply`] follows later changes).
    pub fn get_or_create(
        &self,
        key: PoolKey,
        backend: &Arc<Backend>,
        settings: &PoolSettings,
        max_servers: Option<usize>,
    ) -> Arc<Pool> {
        if let Some(pool) = self.pools.get(&key) {
            if pool.backend() == backend {
                return pool.clone();
            }
        }
        // A pool on another backend than the caller's (the tenant's catalog entry
        // changed under it): retired and replaced.
        let replaced = self
            .pools
            .remove_if(&key, |_, pool| pool.backend() != backend);
        if let Some((_, old)) = replaced {
            tracing::info!(pool = %key, "pool retired: its backend changed");
            old.retire();
        }
        let servers = self
            .tenants
            .entry(key.tenant.clone())
            .or_insert_with(|| Arc::new(TenantServers::new(max_servers)))
            .clone();
        self.pools
            .entry(key.clone())
            .or_insert_with(|| {
                let pause = self.pause_of(&key.tenant);
                let pool = Arc::new(Pool::new(
                    key,
                    backend.clone(),
                    settings.clone(),
                    self.histograms.clone(),
                    servers.clone(),
                    (self.registry.clone(), pause),
                ));
                servers.register(&pool);
                pool
            })
            .clone()
    }

    /// Drops the pool for `key` if nothing uses it (no client, no connection in any
    /// state): a login the backend refused for its database (3D000) leaves no pool, no
    /// stats row behind. Whether it went.
    pub fn forget_unused(&self, key: &PoolKey) -> bool {
        self.pools
            .remove_if(key, |_, pool| {
                let c = pool.counts();
                c.clients == 0
                    && c.active == 0
                    && c.idle == 0
                    && c.connecting == 0
                    && c.waiting == 0
            })
            .is_some()
    }

    pub fn get(&self, key: &PoolKey) -> Option<Arc<Pool>> {
        self.pools.get(key).map(|p| p.clone())
    }

    /// Counts per pool, for stats and tests.
    pub fn counts(&self) -> Vec<(PoolKey, PoolCounts)> {
        self.pools
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().counts()))
            .collect()
    }

    /// Gives every pool its tenant's settings from `catalog` where they changed (see
    /// [`Pool::update_settings`]). Pools of tenants no longer in the catalog are left
    /// alone.
    pub fn apply(&self, catalog: &router::Catalog) {
        // A pool whose tenant left the catalog (deleted, failed), or whose backend is
        // not the tenant's any more (deleted and created again, moved), goes: the next
        // login makes a pool on the backend of now, and the stats forget the old one.
        let stale: Vec<PoolKey> = self
            .pools
            .iter()
            .filter(|e| {
                catalog
                    .get(e.key().tenant.as_str())
                    .is_none_or(|t| **e.value().backend() != *t.backend)
            })
            .map(|e| e.key().clone())
            .collect();
        for key in stale {
            if let Some((_, pool)) = self.pools.remove(&key) {
                tracing::info!(pool = %key, "pool retired: its tenant or backend changed");
                pool.retire();
            }
        }
        self.tenants
            .retain(|tenant, _| catalog.get(tenant.as_str()).is_some());
        self.pauses
            .retain(|tenant, _| catalog.get(tenant.as_str()).is_some());
        for entry in self.tenants.iter() {
            if let Some(tenant) = catalog.get(entry.key().as_str()) {
                entry.value().set_max(tenant.limits.max_server_connections);
            }
        }
        for pool in self.all() {
            if let Some(tenant) = catalog.get(pool.key.tenant.as_str()) {
                if *pool.settings() != tenant.pool {
                    pool.update_settings(tenant.pool.clone());
                }
            }
        }
    }

    fn pause_of(&self, tenant: &TenantId) -> Arc<Pause> {
        self.pauses.entry(tenant.clone()).or_default().clone()
    }

    /// PAUSE: the tenant's checkouts wait from now on (see pause.rs); whether it was
    /// running before.
    pub fn pause(&self, tenant: &TenantId) -> bool {
        self.pause_of(tenant).set(true)
    }

    /// RESUME: the tenant's waiting checkouts go on; whether it was paused.
    pub fn resume(&self, tenant: &TenantId) -> bool {
        self.pauses.get(tenant).is_some_and(|p| p.set(false))
    }

    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        self.pauses.get(tenant).is_some_and(|p| p.is_paused())
    }

    /// Server connections of `tenant` lent to clients, and checkouts let past its
    /// pause check that may yet take one: PAUSE is done when this is 0.
    pub fn in_use(&self, tenant: &TenantId) -> usize {
        let entering = self.pauses.get(tenant).map_or(0, |p| p.entering());
        let active: usize = self
            .all()
            .iter()
            .filter(|p| p.key.tenant == *tenant)
            .map(|p| p.counts().active)
            .sum();
        entering + active
    }

    /// Waits until no server connection of `tenant` is in use (after PAUSE), or the
    /// tenant is resumed meanwhile; whether it is paused and idle.
    pub async fn wait_idle(&self, tenant: &TenantId) -> bool {
        loop {
            if !self.is_paused(tenant) {
                return false;
            }
            if self.in_use(tenant) == 0 {
                return true;
            }
            // Releases are not announced: a short poll is enough for an admin command.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// RECONNECT: every server connection of `tenant` closes, the idle ones now and
    /// the ones in use when released; how many pools.
    pub fn reconnect(&self, tenant: &TenantId) -> usize {
        let pools: Vec<Arc<Pool>> = self
            .all()
            .into_iter()
            .filter(|p| p.key.tenant == *tenant)
            .collect();
        for pool in &pools {
            pool.reconnect();
        }
        pools.len()
    }

    /// Every pool, in no particular order.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|e| e.value().clone()).collect()
    }

    /// Each tenant's most server connections open at once since the last call (see
    /// [`TenantServers::take_peak`]): what usage metering records per hour.
    pub fn take_server_peaks(&self) -> Vec<(TenantId, usize)> {
        self.tenants
            .iter()
            .map(|e| (e.key().clone(), e.value().take_peak()))
            .collect()
    }

    /// Evicts idle connections past their timeouts, every second, until `shutdown`;
    /// then closes all idle connections.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            for pool in self.all() {
                let n = pool.evict_idle();
                if n > 0 {
                    tracing::debug!(pool = %pool.key, evicted = n, "closed idle server connections");
                }
                // Each pool tops up on its own: one slow backend must not hold up the
                // upkeep of the others.
                if pool.settings().min_idle > 0 && pool.begin_top_up() {
                    let pools = self.clone();
                    tokio::spawn(async move {
                        pool.top_up(&pools.tls).await;
                        pool.end_top_up();
                    });
                }
            }
        }
        self.close_all_idle().await;
    }

    /// Closes the idle server connections of `tenant`'s pools of `database` (before a
    /// `DROP DATABASE` of it, say), and waits until each has said goodbye; how many.
    pub async fn close_idle_of(&self, tenant: &TenantId, database: &str) -> usize {
        let mut closed = 0;
        for pool in self.all() {
            if pool.key.tenant == *tenant && pool.key.database == database {
                for conn in pool.close_idle() {
                    conn.terminate().await;
                    closed += 1;
                }
            }
        }
        closed
    }

    pub async fn close_all_idle(&self) {
        for pool in self.all() {
            for conn in pool.close_idle() {
                conn.terminate().await;
            }
        }
    }
}
