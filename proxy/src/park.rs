//! Scale to zero, the proxy's half: [`watch_idle`] finds the tenants that have had no
//! client for their `suspend_after_idle_s` and asks the control plane to park their
//! backends (`router::parking::BackendPower`); a login for a parked tenant wakes its
//! backend first ([`wake_for_login`]), within the login timeout, so the client sees an
//! ordinary, slower login.
//!
//! A tenant is idle when no client of it is connected here (logging in counts) and
//! none of its server connections is lent. Its idle server connections are closed
//! just before the backend stops. A tenant whose pool keeps `min_idle` connections is
//! never parked (it asked for warm connections).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use router::parking::BackendPower;
use router::{Tenant, TenantId};
use tokio_util::sync::CancellationToken;

use crate::error::ClientError;
use crate::state::Proxy;

/// How often tenants are checked for idleness.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether nothing of `tenant` is connected or running here.
fn idle(proxy: &Proxy, tenant: &TenantId) -> bool {
    let clients = proxy.gates.existing(tenant).map_or(0, |g| g.clients());
    clients == 0 && proxy.pools.in_use(tenant) == 0
}

/// Parks the backends of tenants idle for their `suspend_after_idle`, until `stop`.
pub async fn watch_idle(proxy: Arc<Proxy>, power: Arc<dyn BackendPower>, stop: CancellationToken) {
    let mut idle_since: HashMap<TenantId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let catalog = proxy.catalog.snapshot();
        idle_since.retain(|id, _| catalog.get(id.as_str()).is_some());
        for tenant in catalog.iter() {
            let Some(after) = tenant.limits.suspend_after_idle else {
                idle_since.remove(&tenant.id);
                continue;
            };
            if tenant.pool.min_idle > 0 || power.is_parked(tenant.id.as_str()) {
                continue;
            }
            let now = Instant::now();
            if !idle(&proxy, &tenant.id) {
                idle_since.insert(tenant.id.clone(), now);
                continue;
            }
            let since = *idle_since.entry(tenant.id.clone()).or_insert(now);
            if now.duration_since(since) < after {
                continue;
            }
            // Checked again once logins wait for the stop; the idle server connections
            // close before the backend goes.
            let still_idle = {
                let (proxy, id) = (proxy.clone(), tenant.id.clone());
                Box::new(move || {
                    let idle = idle(&proxy, &id);
                    if idle {
                        proxy.pools.reconnect(&id);
                    }
                    idle
                })
            };
            match power.park(tenant.id.as_str(), still_idle).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(tenant = %tenant.id, error = %e, "cannot park the tenant's backend; trying again after another idle period")
                }
            }
            idle_since.insert(tenant.id.clone(), Instant::now());
        }
    }
}

/// Starts `tenant`'s backend if it is parked, before the login goes on to read the
/// role's secret from it; a start that fails refuses the login (08006).
pub async fn wake_for_login(proxy: &Proxy, tenant: &Tenant) -> Result<(), ClientError> {
    let Some(power) = proxy.power.get() else {
        return Ok(());
    };
    if !power.is_parked(tenant.id.as_str()) {
        return Ok(());
    }
    power
        .wake(tenant.id.as_str())
        .await
        .map(|_| ())
        .map_err(|detail| ClientError::BackendUnavailable {
            tenant: tenant.id.to_string(),
            detail: format!("its parked backend did not start: {detail}"),
        })
}
