//! The control plane as one process runs it: the store, the catalog sync, the drivers,
//! the job worker's wake-up and the data plane's admission gates, and the background
//! tasks over them (catalog follower, job worker, backend supervisor, refusal audit).

use std::sync::Arc;
use std::time::Duration;

use router::{AdmissionControl, Rejections};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog_sync::{CatalogSync, StoreEvent};
use crate::drivers::Drivers;
use crate::jobs::Worker;
use crate::open::Control;
use crate::{refusals, supervise};

/// The control plane's moving parts, shared by the admin API's handlers and the
/// background tasks.
#[derive(Debug, Clone)]
pub struct Plane {
    /// The control store, or why it could not be reached at start.
    pub control: Control,
    pub sync: Arc<CatalogSync>,
    pub drivers: Arc<Drivers>,
    /// Poked when a job is queued.
    pub wake: Arc<Notify>,
    /// The data plane's admission gates (bans, ending a tenant's sessions).
    pub gates: Arc<dyn AdmissionControl>,
    /// What the supervisor last found of each tenant's backend.
    pub health: Arc<crate::health::BackendHealth>,
    /// `[fleet]`, if this process is a replica of one (`GET /v1/replicas`).
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// Which backends are parked for scale to zero, and their cold starts.
    pub parking: Arc<crate::park::Parking>,
    /// Storage watermarks: each tenant's latest disk sample and level, shared with
    /// the data plane (which makes a full tenant read-only).
    pub disk: Arc<router::DiskQuotas>,
}

impl Plane {
    /// Puts the change of tenant `id` into this process's catalog at once (other
    /// processes hear of it through the store's notification).
    pub async fn apply_locally(&self, id: &str) {
        self.sync.apply_locally(&self.control, id).await;
    }

    /// Runs the background tasks until `stop`: the catalog follows the store, the
    /// provisioning worker takes jobs, the supervisor restarts backends found down, and
    /// refused connections (`rejections`) reach the audit log every `refusal_interval`.
    pub async fn run(
        self,
        rejections: Arc<Rejections>,
        refusal_interval: Duration,
        stop: CancellationToken,
    ) {
        // Subscribed before the follower starts, so no notification is missed.
        let ends = tokio::spawn(end_sessions(
            self.sync.events(),
            self.gates.clone(),
            stop.clone(),
        ));
        let follow = tokio::spawn(self.sync.clone().run(self.control.clone(), stop.clone()));
        let worker = tokio::spawn(run_worker(self.clone(), stop.clone()));
        let supervisor = tokio::spawn(supervise::run(
            self.control.clone(),
            self.sync.clone(),
            self.drivers.clone(),
            self.health.clone(),
            self.parking.clone(),
            stop.clone(),
        ));
        let refusals = tokio::spawn(refusals::run(
            self.control.clone(),
            rejections,
            refusal_interval,
            stop.clone(),
        ));
        let _ = follow.await;
        let _ = worker.await;
        let _ = refusals.await;
        let _ = supervisor.await;
        let _ = ends.await;
    }
}

/// Ends the sessions of a tenant suspended with `terminate` through any process
/// (another's request reaches this one as a store notification).
async fn end_sessions(
    mut events: tokio::sync::broadcast::Receiver<StoreEvent>,
    gates: Arc<dyn AdmissionControl>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(StoreEvent::EndSessions(tenant)) => {
                let ended = gates.terminate_sessions(&tenant);
                tracing::info!(tenant = %tenant, sessions = ended, "sessions ended: the tenant was suspended with terminate");
            }
            Ok(StoreEvent::ApiKeysChanged) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "store notifications missed");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Runs the provisioning worker on a connection of its own (its job locks live as long
/// as that session), reconnecting while the store is away.
async fn run_worker(plane: Plane, stop: CancellationToken) {
    let Ok(store) = plane.control.store() else {
        return;
    };
    let worker = Arc::new(Worker {
        sync: plane.sync.clone(),
        drivers: plane.drivers.clone(),
        gates: plane.gates.clone(),
        wake: plane.wake.clone(),
        name: format!("sluice-{}", std::process::id()),
    });
    worker.run(store.another(), stop).await;
}
