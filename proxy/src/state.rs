//! The state every connection task shares ([`Proxy`]): configuration, TLS, the
//! catalog, the pools, the caches and registries, admission and shutdown.
//!
//! Built once, before the listeners start. It uses no phase of a connection: every
//! phase (session.rs, login.rs, transaction.rs, ...) uses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pooler::Pools;
use router::{CatalogHandle, Rejections};
use tokio_util::sync::CancellationToken;

use crate::admit::Gates;
use crate::auth::MockSecret;
use crate::cancel::{CancelRates, CancelRegistry, FleetTag};
use crate::config::ProxyConfig;
use crate::fleet::FleetLink;
use crate::prelogin::PendingLogins;
use crate::secrets::SecretCache;
use crate::successor::Successor;
use crate::tls::hostnames::HostCerts;
use crate::tls::ServerTls;
use router::memory::MemoryBudget;

/// What connection tasks share. Built once; the catalog inside swaps snapshots.
#[derive(Debug)]
pub struct Proxy {
    pub config: ProxyConfig,
    pub tls: Option<ServerTls>,
    /// Tenants' own host names with their certificates, chosen by exact SNI; replaced
    /// whole by whoever follows the store (empty until then).
    pub hostnames: Arc<HostCerts>,
    pub catalog: Arc<CatalogHandle>,
    pub pools: Arc<Pools>,
    pub secrets: SecretCache,
    pub cancels: Arc<CancelRegistry>,
    pub mock_secret: MockSecret,
    /// Refused connections and failed logins per tenant (for `/metrics`).
    pub rejections: Arc<Rejections>,
    /// Admission: connection limits, rates, bans (admit.rs).
    pub gates: Arc<Gates>,
    /// What clients may make Sluice hold (memory.rs).
    pub memory: Arc<MemoryBudget>,
    /// Connections in the pre-login phase, and their caps (prelogin.rs).
    pub pending: PendingLogins,
    /// In a fleet: cancels to and from the other replicas (fleet.rs).
    pub fleet: Option<Arc<FleetLink>>,
    /// Fired when the shutdown grace period ends: relays tell clients 57P01 and stop.
    pub terminate: CancellationToken,
    /// The Sluice that took this one's listeners over, if any: idle transaction-mode
    /// clients move to it once this one drains.
    pub successor: Successor,
    /// The API keys and audit log the admin console (console.rs) uses; set once by
    /// the binary when the control plane is up. Unset, the console refuses logins.
    pub console: std::sync::OnceLock<Arc<dyn router::console::ConsoleAuthority>>,
    /// Scale to zero: stops and starts the backends this process runs (park.rs); set
    /// once by the binary, unset in a fleet (no tenant is parked).
    pub power: std::sync::OnceLock<Arc<dyn router::parking::BackendPower>>,
    next_id: AtomicU64,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        tls: Option<ServerTls>,
        catalog: Arc<CatalogHandle>,
        pools: Arc<Pools>,
        rejections: Arc<Rejections>,
    ) -> Self {
        let terminate = CancellationToken::new();
        let mut cancels = CancelRegistry::new(CancelRates {
            per_key: config.cancel_rate_per_key,
            per_ip: config.cancel_rate_per_ip,
        });
        let fleet = config.fleet_secret.as_ref().map(|secret| {
            let tag = Arc::new(FleetTag::new(secret.0.clone()));
            cancels = std::mem::take(&mut cancels).in_fleet(tag.clone());
            Arc::new(FleetLink::new(tag, cancels.instance()))
        });
        let cancels = Arc::new(cancels);
        Proxy {
            rejections,
            gates: Arc::new(Gates::new(
                config.max_client_connections,
                config.max_concurrent_logins,
                terminate.clone(),
            )),
            secrets: SecretCache::new(config.auth_cache_ttl),
            memory: MemoryBudget::new(config.memory_budget, config.memory_budget_per_tenant),
            pending: PendingLogins::new(
                config.max_pending_logins,
                config.max_pending_logins_per_ip,
            ),
            config,
            tls,
            hostnames: Arc::default(),
            catalog,
            pools,
            cancels,
            fleet,
            mock_secret: MockSecret::random(),
            terminate,
            successor: Successor::default(),
            console: std::sync::OnceLock::new(),
            power: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The id of the next accepted connection (1, 2, ...; for logs and statement names).
    pub fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
