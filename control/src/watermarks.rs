//! Storage watermarks: each disk sample ([`crate::usage::disk`]) and each change of a
//! tenant's limit (a PATCH, a plan change, a reload) is measured against the limit
//! (`limits.disk_limit_mb`, or the plan's `[backend] disk_gib`); a tenant at 80 % is at
//! `warning`, at 100 % `full`, and the data plane makes a full tenant read-only for new
//! transactions (it reads the level from the shared [`DiskQuotas`]). Every change of
//! level is written to the audit log (`tenant.disk_warning`, `tenant.disk_full`,
//! `tenant.disk_ok`, actor `sluice`), once: an event is appended only if the tenant's
//! last disk event says otherwise, checked under the audit lock, so the processes of a
//! fleet (each samples every tenant) and a restarted process do not repeat it. See
//! docs/limits.md, "Storage watermarks".

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use router::disk::{DiskLevel, Transition};
use router::{Catalog, CatalogHandle, DiskQuotas, Tenant};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::open::Control;
use crate::store::AuditEvent;

/// The audit actions of the watermarks, one per level.
pub const ACTIONS: [&str; 3] = ["tenant.disk_ok", "tenant.disk_warning", "tenant.disk_full"];

fn action(level: DiskLevel) -> &'static str {
    ACTIONS[level as usize]
}

/// Measures samples and limits, and passes the changes of level on to the audit log.
#[derive(Debug)]
pub struct Watermarks {
    pub quotas: Arc<DiskQuotas>,
    changes: mpsc::UnboundedSender<Transition>,
}

impl Watermarks {
    /// The watermarks over `quotas`, and the changes of level for [`write_events`].
    pub fn new(quotas: Arc<DiskQuotas>) -> (Arc<Watermarks>, mpsc::UnboundedReceiver<Transition>) {
        let (changes, receiver) = mpsc::unbounded_channel();
        (Arc::new(Watermarks { quotas, changes }), receiver)
    }

    /// `tenant`'s databases held `bytes` at `at`.
    pub fn sampled(&self, tenant: &Tenant, bytes: u64, at: SystemTime) {
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let disk = self.quotas.of(&tenant.id);
        if let Some(change) = disk.sampled(&tenant.id, bytes, secs, tenant.limits.disk_limit) {
            self.tell(change);
        }
    }

    fn tell(&self, change: Transition) {
        if change.from != change.to {
            let limit = change.limit.unwrap_or(0);
            tracing::info!(
                tenant = %change.tenant,
                bytes = change.bytes,
                limit,
                from = change.from.as_str(),
                to = change.to.as_str(),
                "storage watermark crossed"
            );
        }
        let _ = self.changes.send(change);
    }

    /// Measures every tenant of `catalog` against its limit now (the latest sample
    /// stays); a tenant that left has its samples forgotten.
    pub fn limits_changed(&self, catalog: &Catalog) {
        for tenant in catalog.iter() {
            let disk = self.quotas.of(&tenant.id);
            if let Some(change) = disk.limit_changed(&tenant.id, tenant.limits.disk_limit) {
                self.tell(change);
            }
        }
        self.quotas
            .forget_except(|id| catalog.get(id.as_str()).is_some());
    }

    /// Follows `catalog`: a changed limit takes effect at once, not at the next sample.
    pub fn follow(self: &Arc<Self>, catalog: &CatalogHandle) {
        let weak = Arc::downgrade(self);
        catalog.subscribe(move |catalog| {
            if let Some(w) = weak.upgrade() {
                w.limits_changed(catalog);
            }
        });
    }
}

/// Appends an audit event for each change of level, until `stop`. A change the store
/// cannot take now is retried (the latest one per tenant matters; older ones are
/// dropped for a newer one).
pub async fn write_events(
    control: Control,
    mut changes: mpsc::UnboundedReceiver<Transition>,
    stop: CancellationToken,
) {
    let mut waiting: Vec<Transition> = Vec::new();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => {
                    waiting.retain(|w| w.tenant != change.tenant);
                    waiting.push(change);
                }
                None => return,
            },
            _ = retry.tick() => {}
        }
        let Ok(store) = control.store() else {
            continue;
        };
        while let Some(change) = waiting.first() {
            match write_one(store, change).await {
                Ok(()) => {
                    waiting.remove(0);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not write a storage watermark to the audit log; will retry");
                    break;
                }
            }
        }
    }
}

async fn write_one(store: &crate::store::Store, change: &Transition) -> anyhow::Result<()> {
    let event = AuditEvent {
        actor: Some("sluice".into()),
        target: Some(change.tenant.to_string()),
        details: json!({
            "bytes": change.bytes,
            "limit_bytes": change.limit,
            "state": change.to.as_str(),
        }),
        ..AuditEvent::new(action(change.to))
    };
    // A first sample that finds the tenant fine says nothing unless the log says it
    // was not (it shrank, or its limit grew, while no process watched).
    let only_after_one = change.first && change.to == DiskLevel::Ok;
    store
        .append_audit_transition(&event, &ACTIONS, only_after_one)
        .await?;
    Ok(())
}
