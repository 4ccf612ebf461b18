//! Keeps the backends this process runs alive: every [`PERIOD`] each tenant's driver is
//! asked for the backend's health ([`Driver::health`]; drivers that run nothing answer
//! `None`). A backend found down is restarted with `ensure_running`, with exponential
//! backoff between attempts. After [`GIVE_UP_AFTER`] failed restarts an `active` tenant
//! is marked `failed` with the reason (audited as `tenant.backend_failed`; it leaves the
//! catalog); the restarts go on at the longest interval, and a backend that comes back
//! makes its tenant `active` again (`tenant.backend_recovered`).
//!
//! A backend parked for scale to zero ([`Parking`]) is left alone until it is woken.
//!
//! Backends this process does not run (static, proxmox, tenants of the config file) are
//! checked by connecting to their address, at the first round and every
//! [`PROBE_EVERY`] rounds after. Every verdict goes into [`BackendHealth`].
//!
//! [`Driver::health`]: provision::Driver::health

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::catalog_sync::CatalogSync;
use crate::drivers::Drivers;
use crate::health::BackendHealth;
use crate::open::Control;
use crate::park::Parking;
use crate::store::AuditEvent;

/// How often backends are checked.
pub const PERIOD: Duration = Duration::from_secs(2);
/// Failed restarts before an active tenant is marked `failed`.
pub const GIVE_UP_AFTER: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Rounds between connects to the backends this process does not run (10 s).
pub const PROBE_EVERY: u32 = 5;

/// A backend found down, and what has been tried.
#[derive(Debug)]
struct Down {
    failed_restarts: u32,
    next_restart: Instant,
    /// This supervisor marked the tenant `failed`.
    marked_failed: bool,
}

pub(crate) async fn run(
    control: Control,
    sync: Arc<CatalogSync>,
    drivers: Arc<Drivers>,
    health: Arc<BackendHealth>,
    parking: Arc<Parking>,
    stop: CancellationToken,
) {
    let mut down: HashMap<String, Down> = HashMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probing = round.is_multiple_of(PROBE_EVERY);
        round = round.wrapping_add(1);
        let catalog = sync.catalog.snapshot();
        health.retain(|id| catalog.get(id).is_some());
        let mut probes = tokio::task::JoinSet::new();
        for record in sync.records() {
            if parking.is_parked(&record.id) {
                // Stopped on purpose, not down: neither restarted nor probed.
                down.remove(&record.id);
                continue;
            }
            let watched = matches!(record.status.as_str(), "active" | "suspended")
                || (record.status == "failed"
                    && down.get(&record.id).is_some_and(|d| d.marked_failed));
            let id = record.id.as_str();
            let driver = drivers.get(&record.backend.driver).filter(|_| watched);
            let verdict = match driver {
                Some(driver) => driver.health(id).await.map(|v| (driver, v)),
                None => None,
            };
            let Some((driver, verdict)) = verdict else {
                // Nothing this process runs: whether its address takes a connection.
                down.remove(id);
                if let Some(tenant) = catalog.get(id).filter(|_| probing) {
                    let (id, addr) = (id.to_owned(), tenant.backend.addr.clone());
                    probes.spawn(async move { (id, crate::probe::listens(&addr).await) });
                }
                continue;
            };
            match verdict {
                Ok(()) => {
                    health.up(id);
                    if let Some(was) = down.remove(id) {
                        tracing::info!(tenant = id, "the tenant's backend is up again");
                        if was.marked_failed {
                            set_status(&control, &sync, id, "failed", "active", None).await;
                        }
                    }
                }
                Err(e) => {
                    health.down(id, format!("{e:#}"));
                    let d = down.entry(id.to_owned()).or_insert_with(|| {
                        tracing::warn!(tenant = id, error = %format!("{e:#}"), "the tenant's backend is down; restarting it");
                        Down {
                            failed_restarts: 0,
                            next_restart: Instant::now(),
                            marked_failed: false,
                        }
                    });
                    if Instant::now() < d.next_restart {
                        continue;
                    }
                    match driver.ensure_running(id).await {
                        Ok(()) => {
                            // Started and taking connections: up, from now on.
                            health.up(id);
                            tracing::info!(tenant = id, "restarted the tenant's backend");
                            d.next_restart = Instant::now() + backoff(d.failed_restarts);
                        }
                        Err(e) => {
                            d.failed_restarts += 1;
                            d.next_restart = Instant::now() + backoff(d.failed_restarts);
                            let reason = format!("its backend is down and does not restart: {e:#}");
                            tracing::error!(tenant = id, attempt = d.failed_restarts, error = %format!("{e:#}"), "restarting the tenant's backend failed");
                            if d.failed_restarts >= GIVE_UP_AFTER
                                && !d.marked_failed
                                && record.status == "active"
                            {
                                d.marked_failed = set_status(
                                    &control,
                                    &sync,
                                    id,
                                    "active",
                                    "failed",
                                    Some(&reason),
                                )
                                .await;
                            }
                        }
                    }
                }
            }
        }
        while let Some(Ok((id, verdict))) = probes.join_next().await {
            match verdict {
                Ok(()) => health.up(&id),
                Err(why) => {
                    if health.is_up(&id) != Some(false) {
                        tracing::warn!(tenant = id, error = %why, "the tenant's backend does not take connections");
                    }
                    health.down(&id, why);
                }
            }
        }
    }
}

/// 1, 2, 4, 8, 16, 30, 30... seconds.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF)
}

/// Moves the tenant from `from` to `to` with an audit event; whether it happened.
async fn set_status(
    control: &Control,
    sync: &CatalogSync,
    id: &str,
    from: &str,
    to: &str,
    reason: Option<&str>,
) -> bool {
    let Ok(store) = control.store() else {
        return false;
    };
    let action = if to == "failed" {
        "tenant.backend_failed"
    } else {
        "tenant.backend_recovered"
    };
    let event = AuditEvent {
        actor: Some("system".into()),
        target: Some(id.to_owned()),
        details: json!({"reason": reason, "before": {"status": from}}),
        ..AuditEvent::new(action)
    };
    match store
        .set_tenant_status(id, &[from], to, reason, Some(&event))
        .await
    {
        Ok(_) => {
            tracing::warn!(
                tenant = id,
                status = to,
                reason,
                "tenant status changed by the backend supervisor"
            );
            sync.apply_locally(control, id).await;
            true
        }
        Err(e) => {
            tracing::error!(tenant = id, error = %e, "recording the backend's state");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
