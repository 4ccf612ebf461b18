//! A tenant's server connections across all its pools (`max_server_connections`):
//! each open server connection holds one slot. When the tenant is at its cap, a pool
//! that needs a new connection first closes an idle one of a sibling pool, so idle
//! connections of one (database, role) cannot starve another.
//!
//! The pools are known here only as [`SiblingPool`]s (pool.rs implements it), so this
//! file stays below pool.rs and server.rs, which use it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::resizable::Resizable;

#[derive(Debug)]
pub struct TenantServers {
    slots: Resizable,
    /// The tenant's pools, to take an idle connection from when at the cap.
    pools: Mutex<Vec<Weak<dyn SiblingPool>>>,
    /// Server connections open now (connecting, idle or lent out): slots held.
    open: AtomicUsize,
    /// The most open at once since the last [`TenantServers::take_peak`].
    peak: AtomicUsize,
}

/// What the tenant's cap needs of a pool: to close one of its idle connections so a
/// sibling pool can open one.
pub trait SiblingPool: Send + Sync {
    /// Closes the least recently used idle connection, if there is one.
    fn close_one_idle(&self) -> bool;
    /// The pool's name in logs.
    fn name(&self) -> &dyn fmt::Display;
}

/// One server connection's place in its tenant's cap; given back when dropped.
#[derive(Debug)]
pub struct ServerSlot {
    permit: Option<OwnedSemaphorePermit>,
    servers: Arc<TenantServers>,
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.servers.open.fetch_sub(1, Ordering::Relaxed);
        self.servers.slots.settle();
    }
}

/// `None` (no cap) is a semaphore too large to run out, so that setting a cap later
/// counts the connections already open.
fn size_of(max: Option<usize>) -> usize {
    max.unwrap_or(Semaphore::MAX_PERMITS)
}

impl TenantServers {
    pub fn new(max: Option<usize>) -> Self {
        TenantServers {
            slots: Resizable::new(size_of(max)),
            pools: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Server connections of the tenant open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The most server connections the tenant had open at once since the last call
    /// (those open now included), and a new period starting with those open now.
    /// Usage metering reads it every second for the peak of each hour.
    pub fn take_peak(&self) -> usize {
        let peak = self.peak.swap(0, Ordering::Relaxed);
        let now = self.open.load(Ordering::Relaxed);
        self.peak.fetch_max(now, Ordering::Relaxed);
        peak.max(now)
    }

    /// Changes the cap live: a lower one closes nothing, it only holds new
    /// connections back until enough have closed.
    pub fn set_max(&self, max: Option<usize>) {
        self.slots.resize(size_of(max));
    }

    pub(crate) fn register<P: SiblingPool + 'static>(&self, pool: &Arc<P>) {
        let mut pools = self.pools.lock().expect("tenant lock poisoned");
        pools.retain(|p| p.strong_count() > 0);
        let pool = Arc::downgrade(pool);
        pools.push(pool);
    }

    /// A slot for a new server connection of `for_pool`: at once if one is free;
    /// else after closing an idle connection of another pool of the tenant; else
    /// waiting up to `wait`. `None` when none came in time.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        for_pool: &dyn SiblingPool,
        wait: Duration,
    ) -> Option<ServerSlot> {
        let semaphore = self.slots.semaphore().clone();
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.close_an_idle_sibling(for_pool);
                tokio::time::timeout(wait, semaphore.acquire_owned())
                    .await
                    .ok()?
                    .expect("slot semaphores are never closed")
            }
        };
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        Some(ServerSlot {
            permit: Some(permit),
            servers: self.clone(),
        })
    }

    fn close_an_idle_sibling(&self, for_pool: &dyn SiblingPool) {
        let pools: Vec<Arc<dyn SiblingPool>> = self
            .pools
            .lock()
            .expect("tenant lock poisoned")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for pool in pools {
            if std::ptr::addr_eq(&*pool, for_pool) {
                continue;
            }
            if pool.close_one_idle() {
                tracing::debug!(pool = %pool.name(), "closed an idle connection for a sibling pool at the tenant's cap");
                return;
            }
        }
    }
}
