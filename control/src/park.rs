//! Scale to zero ([`Parking`]): stops the backend of a tenant the proxy found idle for
//! its `suspend_after_idle_s`, and starts it again for the next login, through the
//! tenant's driver (`Driver::park`, `Driver::ensure_running`). One operation per
//! tenant at a time: a login that arrives while the backend stops waits for the stop,
//! then starts it; concurrent logins share one start. The supervisor leaves a parked
//! backend alone ([`Parking::is_parked`]). Implements `router::parking::BackendPower`,
//! which the proxy calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use router::parking::{BackendPower, PowerFuture};

use crate::catalog_sync::CatalogSync;
use crate::drivers::Drivers;

/// Upper bounds (seconds) of the cold-start histogram's buckets.
pub const COLD_START_BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// How long a started backend may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// One tenant's power state and counters.
#[derive(Debug, Default)]
struct Power {
    /// Held for the whole of a stop or a start.
    lock: tokio::sync::Mutex<()>,
    /// From the moment a stop is decided until a start has finished: logins wait.
    parked: std::sync::atomic::AtomicBool,
    /// The backend is stopped (the stop finished, no start has finished since): what
    /// the stats and `/metrics` report.
    stopped: std::sync::atomic::AtomicBool,
}

/// Cold starts of one tenant: how many, and how long each took, in buckets.
#[derive(Debug, Clone, Default)]
pub struct ColdStarts {
    pub count: u64,
    pub sum_seconds: f64,
    /// Per bucket of [`COLD_START_BUCKETS`] (and one past the last): starts that took
    /// at most that long and more than the bucket before.
    pub buckets: [u64; COLD_START_BUCKETS.len() + 1],
    pub parks: u64,
}

/// The tenants' backends' power states (see the module docs).
#[derive(Debug)]
pub struct Parking {
    sync: Arc<CatalogSync>,
    drivers: Arc<Drivers>,
    power: DashMap<String, Arc<Power>>,
    stats: DashMap<String, ColdStarts>,
}

impl Parking {
    pub fn new(sync: Arc<CatalogSync>, drivers: Arc<Drivers>) -> Self {
        Parking {
            sync,
            drivers,
            power: DashMap::new(),
            stats: DashMap::new(),
        }
    }

    fn power(&self, tenant: &str) -> Arc<Power> {
        self.power.entry(tenant.to_owned()).or_default().clone()
    }

    /// Whether the tenant's backend is parked or being parked.
    pub fn is_parked(&self, tenant: &str) -> bool {
        self.power
            .get(tenant)
            .is_some_and(|p| p.parked.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Whether the tenant's backend is stopped now (parked, its stop finished).
    pub fn is_stopped(&self, tenant: &str) -> bool {
        self.power
            .get(tenant)
            .is_some_and(|p| p.stopped.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The tenants whose backend is stopped now, and every tenant's cold starts so far.
    pub fn snapshot(&self) -> (Vec<String>, Vec<(String, ColdStarts)>) {
        let parked = self
            .power
            .iter()
            .filter(|p| p.stopped.load(std::sync::atomic::Ordering::Acquire))
            .map(|p| p.key().clone())
            .collect();
        let stats = self
            .stats
            .iter()
            .map(|s| (s.key().clone(), s.value().clone()))
            .collect();
        (parked, stats)
    }

    /// The driver that runs the tenant's backend, if one of this process's does.
    fn driver(&self, tenant: &str) -> Result<Arc<dyn provision::Driver>, String> {
        let record = self
            .sync
            .records()
            .into_iter()
            .find(|r| r.id == tenant)
            .ok_or_else(|| format!("tenant {tenant} is not one of the control store's"))?;
        self.drivers
            .get(&record.backend.driver)
            .cloned()
            .ok_or_else(|| format!("the {} driver does not run here", record.backend.driver))
    }

    async fn park_now(
        &self,
        tenant: &str,
        still_idle: Box<dyn FnOnce() -> bool + Send + '_>,
    ) -> Result<bool, String> {
        let driver = self.driver(tenant)?;
        let power = self.power(tenant);
        let _held = power.lock.lock().await;
        use std::sync::atomic::Ordering;
        if power.parked.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        // From here a login waits for this stop and then starts the backend again.
        if !still_idle() {
            power.parked.store(false, Ordering::Release);
            return Ok(false);
        }
        if let Err(e) = driver.park(tenant).await {
            power.parked.store(false, Ordering::Release);
            return Err(format!("{e:#}"));
        }
        power.stopped.store(true, Ordering::Release);
        self.stats.entry(tenant.to_owned()).or_default().parks += 1;
        tracing::info!(
            tenant,
            "parked the tenant's backend (no client for its suspend_after_idle_s)"
        );
        Ok(true)
    }

    async fn wake_now(&self, tenant: &str) -> Result<bool, String> {
        use std::sync::atomic::Ordering;
        let power = self.power(tenant);
        if !power.parked.load(Ordering::Acquire) {
            return Ok(false);
        }
        let _held = power.lock.lock().await;
        if !power.parked.load(Ordering::Acquire) {
            // Another login started it meanwhile.
            return Ok(false);
        }
        let started = Instant::now();
        let driver = self.driver(tenant)?;
        driver
            .ensure_running(tenant)
            .await
            .map_err(|e| format!("{e:#}"))?;
        // A container reports running before the Postgres in it takes logins.
        if let Some(backend) = self
            .sync
            .catalog
            .snapshot()
            .get(tenant)
            .map(|t| t.backend.clone())
        {
            let deadline = Instant::now() + LISTEN_WITHIN;
            while let Err(e) = crate::probe::takes_logins(&backend.addr).await {
                if Instant::now() >= deadline {
                    return Err(format!("started, but does not take connections: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        power.stopped.store(false, Ordering::Release);
        power.parked.store(false, Ordering::Release);
        let took = started.elapsed();
        self.count_cold_start(tenant, took);
        tracing::info!(
            tenant,
            took_ms = took.as_millis() as u64,
            "started the tenant's parked backend for a login"
        );
        Ok(true)
    }

    fn count_cold_start(&self, tenant: &str, took: Duration) {
        let mut stats = self.stats.entry(tenant.to_owned()).or_default();
        let seconds = took.as_secs_f64();
        stats.count += 1;
        stats.sum_seconds += seconds;
        let bucket = COLD_START_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(COLD_START_BUCKETS.len());
        stats.buckets[bucket] += 1;
    }
}

impl BackendPower for Parking {
    fn is_parked(&self, tenant: &str) -> bool {
        Parking::is_parked(self, tenant)
    }

    fn park<'a>(
        &'a self,
        tenant: &'a str,
        still_idle: Box<dyn FnOnce() -> bool + Send + 'a>,
    ) -> PowerFuture<'a, bool> {
        Box::pin(self.park_now(tenant, still_idle))
    }

    fn wake<'a>(&'a self, tenant: &'a str) -> PowerFuture<'a, bool> {
        Box::pin(self.wake_now(tenant))
    }
}
