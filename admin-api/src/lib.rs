//! The admin listener: `/healthz`, `/readyz`, `/metrics` (OpenMetrics), the stats API
//! (`/v1/pools`, `/v1/tenants/{id}/stats`), live tenant changes
//! (`/v1/tenants[/{id}[/bans]]`), API keys (`/v1/api-keys`) and the audit log
//! (`/v1/audit-events`), with bearer API keys; and the control store behind the last
//! two ([`store`], opened by [`control`]).
//!
//! Only this crate speaks HTTP. It reads the data plane through shared handles (the
//! catalog, the pools, the rejection counters) and never takes a lock the relay path
//! takes, so a scrape cannot slow a query down.

pub mod audit_api;
pub mod catalog_sync;
pub mod control;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod keys_api;
pub mod metrics;
pub mod private_file;
pub mod provision;
pub mod refusals;
pub mod roles;
pub mod secrets;
pub mod stats;
pub mod store;
mod supervise;
pub mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use catalog_sync::{CatalogSync, ConfigTenant, Plans};
pub use control::{Control, ControlConfig, OpenedControl};
pub use jobs::Drivers;
pub use keys::{ApiKeys, Role};
pub use metrics::{AdminRequests, Sources};
pub use tenants::ConnectionHint;

/// `[admin]` and `[metrics]` of the config file.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The first admin API key; generated (mode 0600) when the file is missing.
    pub bootstrap_key_file: PathBuf,
    /// `/metrics` answers (and the latency histograms are fed).
    pub metrics_enabled: bool,
    /// How often refused connections are summed into the audit log.
    pub refusal_audit_interval: std::time::Duration,
}

/// What every admin request can see.
#[derive(Debug)]
pub struct State {
    pub sources: Sources,
    pub keys: ApiKeys,
    /// The id of the bootstrap key (kept in the store like any other).
    bootstrap_id: String,
    pub admin_requests: Arc<AdminRequests>,
    pub sampler: Arc<stats::RateSampler>,
    /// The data plane's admission gates (bans, ending a tenant's sessions).
    pub gates: Arc<dyn router::AdmissionControl>,
    /// The control store (tenants, API keys, the audit log); changes need it.
    pub control: Control,
    /// Catalog sync, provisioning drivers and the job worker's wake-up.
    pub plane: Plane,
    registry: Registry,
    metrics_enabled: bool,
    refusal_audit_interval: std::time::Duration,
    /// Fired when the process starts draining: `/readyz` then answers 503.
    pub draining: CancellationToken,
}

/// The control plane's moving parts, shared by the API handlers and the worker.
#[derive(Debug, Clone)]
pub struct Plane {
    pub sync: Arc<CatalogSync>,
    pub drivers: Arc<Drivers>,
    /// Poked when a job is queued.
    pub wake: Arc<tokio::sync::Notify>,
    /// For the `connection_string` of tenant views.
    pub hint: Option<ConnectionHint>,
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub struct Admin {
    pub state: Arc<State>,
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `config.listen`, loads the bootstrap key and, with a reachable `control`
    /// store, stores it there and accepts the store's keys. `catalog`, `pools` and
    /// `rejections` are the data plane's own handles.
    pub async fn bind(
        config: &AdminConfig,
        catalog: Arc<router::CatalogHandle>,
        pools: Arc<pooler::Pools>,
        rejections: Arc<router::Rejections>,
        gates: Arc<dyn router::AdmissionControl>,
        control: Control,
        plane: Plane,
    ) -> anyhow::Result<Admin> {
        let keys = ApiKeys::default();
        let bootstrap_id = keys.load_bootstrap(&config.bootstrap_key_file)?;
        if let Control::Ok { store, .. } = &control {
            // Retried every few seconds by `upkeep` while the store is away.
            if let Err(e) = keys.sync_with_store(store, &bootstrap_id).await {
                tracing::warn!(error = %format!("{e:#}"), "loading API keys from the control store; only the bootstrap key works until it answers");
            }
        }
        let admin_requests = Arc::new(AdminRequests::default());
        let sources = Sources {
            catalog,
            pools,
            rejections,
            admin_requests: admin_requests.clone(),
            jobs: Arc::new(metrics::JobCounts::default()),
        };
        let state = Arc::new(State {
            registry: metrics::registry(sources.clone()),
            sources,
            keys,
            bootstrap_id,
            admin_requests,
            sampler: Arc::new(stats::RateSampler::default()),
            gates,
            control,
            plane,
            metrics_enabled: config.metrics_enabled,
            refusal_audit_interval: config.refusal_audit_interval,
            draining: CancellationToken::new(),
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the admin listener {}", config.listen))?;
        let addr = listener.local_addr()?;
        Ok(Admin {
            state,
            listener,
            addr,
        })
    }

    /// Serves until `stop`; rates are sampled, the catalog follows the store and the
    /// provisioning worker runs meanwhile.
    pub async fn serve(self, stop: CancellationToken) {
        let follow = tokio::spawn(
            self.state
                .plane
                .sync
                .clone()
                .run(self.state.control.clone(), stop.clone()),
        );
        let worker = tokio::spawn(run_worker(self.state.clone(), stop.clone()));
        let sampler = tokio::spawn(
            self.state
                .sampler
                .clone()
                .run(self.state.sources.pools.clone(), stop.clone()),
        );
        let jobs = tokio::spawn(upkeep(self.state.clone(), stop.clone()));
        let supervisor = tokio::spawn(supervise::run(self.state.clone(), stop.clone()));
        let refusals = tokio::spawn(refusals::run(
            self.state.clone(),
            self.state.refusal_audit_interval,
            stop.clone(),
        ));
        tracing::info!(addr = %self.addr, "admin API listening");
        http::serve(self.listener, self.state, stop).await;
        let _ = sampler.await;
        let _ = follow.await;
        let _ = worker.await;
        let _ = refusals.await;
        let _ = jobs.await;
        let _ = supervisor.await;
    }
}

/// Every few seconds: reads the jobs per state from the control store (for
/// `sluice_provision_jobs{state}`: a scrape never waits on the store) and the API keys
/// (keys made or revoked through another Sluice process are honoured here within a
/// period; those of this process at once).
async fn upkeep(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(stats::SAMPLE_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(store) = state.control.store() else {
            continue;
        };
        match store.job_counts().await {
            Ok(counts) => state.sources.jobs.set(counts),
            Err(e) => tracing::debug!(error = %e, "counting provisioning jobs"),
        }
        if let Err(e) = state.keys.refresh(store, &state.bootstrap_id).await {
            tracing::debug!(error = %format!("{e:#}"), "refreshing API keys");
        }
    }
}

/// Runs the provisioning worker on a connection of its own (its job locks live as long
/// as that session), reconnecting while the store is away.
async fn run_worker(state: Arc<State>, stop: CancellationToken) {
    let Ok(store) = state.control.store() else {
        return;
    };
    let worker = Arc::new(jobs::Worker {
        sync: state.plane.sync.clone(),
        drivers: state.plane.drivers.clone(),
        gates: state.gates.clone(),
        wake: state.plane.wake.clone(),
        name: format!("sluice-{}", std::process::id()),
    });
    worker.run(store.another(), stop).await;
}
