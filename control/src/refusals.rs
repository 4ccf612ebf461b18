//! Refused connections in the audit log: at most one event per tenant, reason and
//! interval (a minute by default), summed from the counters `/metrics` reads, so a
//! connection storm costs the audit log one row per minute, not one per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use router::{Reason, Rejections};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::open::Control;
use crate::store::AuditEvent;

/// Appends a `tenant.refusals` event for each (tenant, reason) with refusals since the
/// last interval, every `interval`, until `stop`. Counts are kept until they are
/// written, so an unreachable store delays events rather than losing them.
pub async fn run(
    control: Control,
    rejections: Arc<Rejections>,
    interval: Duration,
    stop: CancellationToken,
) {
    // What was there before this process could write it down is not this run's.
    let mut written: HashMap<(Arc<str>, Reason), u64> = rejections
        .refused()
        .into_iter()
        .map(|(tenant, reason, n)| ((tenant, reason), n))
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(store) = control.store() else {
            continue;
        };
        for (tenant, reason, total) in rejections.refused() {
            let key = (tenant.clone(), reason);
            let before = written.get(&key).copied().unwrap_or(0);
            if total <= before {
                continue;
            }
            let event = AuditEvent {
                actor: Some("sluice".into()),
                target: Some(tenant.to_string()),
                details: json!({
                    "reason": reason.as_str(),
                    "count": total - before,
                    "interval_s": interval.as_secs(),
                }),
                ..AuditEvent::new("tenant.refusals")
            };
            match store.append_audit(&event).await {
                Ok(_) => {
                    written.insert(key, total);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not write refusals to the audit log; will retry");
                    break;
                }
            }
        }
    }
}
