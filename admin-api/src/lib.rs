//! Sluice's admin API: HTTP only. The admin listener serves `/healthz`, `/readyz`,
//! `/metrics` (OpenMetrics), the stats API (`/v1/pools`, `/v1/tenants/{id}/stats`),
//! tenants and their changes (`/v1/tenants[/{id}[/roles|/bans|/suspend|/resume]]`,
//! `/v1/jobs/{id}`), API keys (`/v1/api-keys`) and the audit log
//! (`/v1/audit-events`), with bearer API keys, as `openapi.json` describes.
//!
//! - [`server`] accepts and reads requests; [`routes`] is the route table;
//!   [`handlers`] the endpoints, one module per resource.
//! - [`request`], [`response`] and [`error`] are what every endpoint works with;
//!   [`state`] is what every request can see. None of them imports an endpoint.
//! - [`metrics`] and [`stats`] expose the data plane's counters; [`usage`] meters them
//!   per tenant and hour into the control store (`/v1/tenants/{id}/usage`).
//!
//! What the endpoints change lives in the control plane (the `control` crate): this
//! crate authorizes, validates, answers and counts. It reads the data plane through
//! shared handles (the catalog, the pools, the rejection counters) and never takes a lock
//! the relay path takes, so a scrape cannot slow a query down.

pub mod error;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod state;
pub mod stats;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use control::keys::ApiKeys;
use control::Plane;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use metrics::{AdminRequests, Sources};
pub use state::{ConnectionHint, State};

/// `[admin]` and `[metrics]` of the config file.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The first admin API key; generated (mode 0600) when the file is missing.
    pub bootstrap_key_file: PathBuf,
    /// `/metrics` answers (and the latency histograms are fed).
    pub metrics_enabled: bool,
    /// `[usage]`: how often usage is flushed and disks sampled, and this process's
    /// replica.
    pub usage: control::usage::UsageConfig,
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub struct Admin {
    pub state: Arc<State>,
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `config.listen` and [`Admin::prepare`]s the state.
    pub async fn bind(
        config: &AdminConfig,
        catalog: Arc<router::CatalogHandle>,
        pools: Arc<pooler::Pools>,
        rejections: Arc<router::Rejections>,
        memory: Arc<router::MemoryBudget>,
        plane: Plane,
        hint: Option<ConnectionHint>,
    ) -> anyhow::Result<Admin> {
        let state = Admin::prepare(config, catalog, pools, rejections, memory, plane, hint).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the admin listener {}", config.listen))?;
        Admin::on(listener, state)
    }

    /// The admin listener on a socket the caller bound (or took over from the process
    /// it replaces: `sluice serve`'s handover).
    pub fn on(listener: TcpListener, state: Arc<State>) -> anyhow::Result<Admin> {
        let addr = listener.local_addr()?;
        Ok(Admin {
            state,
            listener,
            addr,
        })
    }

    /// Loads the bootstrap key and, with a reachable control store, stores it there and
    /// accepts the store's keys. `catalog`, `pools`, `rejections` and `memory` are the
    /// data plane's own handles.
    pub async fn prepare(
        config: &AdminConfig,
        catalog: Arc<router::CatalogHandle>,
        pools: Arc<pooler::Pools>,
        rejections: Arc<router::Rejections>,
        memory: Arc<router::MemoryBudget>,
        plane: Plane,
        hint: Option<ConnectionHint>,
    ) -> anyhow::Result<Arc<State>> {
        let keys = Arc::new(ApiKeys::default());
        let bootstrap_id = keys.load_bootstrap(&config.bootstrap_key_file)?;
        if let control::Control::Ok { store, .. } = &plane.control {
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
            memory,
            health: plane.health.clone(),
            parking: plane.parking.clone(),
            admin_requests: admin_requests.clone(),
            jobs: Arc::new(metrics::JobCounts::default()),
            disk: plane.disk.clone(),
        };
        let state = Arc::new(State {
            registry: metrics::registry(sources.clone()),
            sources,
            keys,
            bootstrap_id,
            admin_requests,
            sampler: Arc::new(stats::RateSampler::default()),
            usage: Arc::new(control::usage::UsageMeter::new(config.usage.clone())),
            plane,
            hint,
            metrics_enabled: config.metrics_enabled,
            draining: CancellationToken::new(),
        });
        Ok(state)
    }

    /// Serves until `stop`; rates are sampled, usage metered (a last flush of it at
    /// `stop`), and the job counts and API keys re-read from the store, meanwhile. (The control plane's own tasks run beside it:
    /// `control::Plane::run`.) New connections are accepted until `stop` or
    /// `stop_accepting` (a process that handed its listener over to a new one stops
    /// accepting when it starts draining).
    pub async fn serve(self, stop: CancellationToken, stop_accepting: CancellationToken) {
        let sampler = tokio::spawn(
            self.state
                .sampler
                .clone()
                .run(self.state.sources.pools.clone(), stop.clone()),
        );
        let jobs = tokio::spawn(upkeep(self.state.clone(), stop.clone()));
        let usage = tokio::spawn(usage::run(self.state.clone(), stop.clone()));
        tracing::info!(addr = %self.addr, "admin API listening");
        server::serve(self.listener, self.state, stop, stop_accepting).await;
        let _ = sampler.await;
        let _ = jobs.await;
        let _ = usage.await;
    }
}

/// Every few seconds: reads the jobs per state from the control store (for
/// `sluice_provision_jobs{state}`: a scrape never waits on the store) and the API keys;
/// and the keys again whenever the store says they changed (keys made or revoked
/// through another Sluice process are honoured here as soon as the notification
/// arrives, within the period if it is lost; those of this process at once).
async fn upkeep(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(stats::SAMPLE_PERIOD);
    let mut events = state.plane.sync.events();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            event = events.recv() => {
                // A key made or revoked through another process: re-read them now.
                use tokio::sync::broadcast::error::RecvError;
                if matches!(event, Ok(control::StoreEvent::ApiKeysChanged) | Err(RecvError::Lagged(_))) {
                    if let Ok(store) = state.plane.control.store() {
                        if let Err(e) = state.keys.refresh(store, &state.bootstrap_id).await {
                            tracing::debug!(error = %format!("{e:#}"), "refreshing API keys");
                        }
                    }
                }
                continue;
            }
        }
        let Ok(store) = state.plane.control.store() else {
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
