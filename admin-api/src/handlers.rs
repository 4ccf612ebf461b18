//! The endpoints, one module per resource, and what several of them share: the tenant
//! id of a path, a tenant's record or 404, and the audit event of a change.
//!
//! Handlers take the [`State`] and the [`Req`] and answer; [`crate::routes`] maps paths
//! to them. Every change is authorized, validated (a 4xx leaves no trace), and written
//! with its audit event before it is applied.

pub mod api_keys;
pub mod audit;
pub mod bans;
pub mod connections;
pub mod health;
pub mod hostnames;
pub mod jobs;
pub mod pools;
pub mod replicas;
pub mod roles;
pub mod tenant_changes;
pub mod tenant_create;
pub mod tenants;
pub mod usage;

use control::keys::Caller;
use control::store::{AuditEvent, TenantRecord};
use serde_json::Value;

use crate::error::{store_error, unavailable, ApiError};
use crate::request::Req;
use crate::state::State;

/// The tenant id of a `/v1/tenants/{id}/…` path.
pub(crate) fn tenant_id(req: &Req) -> String {
    req.segments()[2].to_owned()
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("tenant \"{id}\" does not exist"))
}

/// The tenant's record, or 404.
pub(crate) async fn record_of(state: &State, id: &str) -> Result<TenantRecord, ApiError> {
    let store = state.plane.control.store()?;
    store
        .get_tenant(id)
        .await
        .map_err(store_error("reading the tenant"))?
        .ok_or_else(|| not_found(id))
}

/// An audit event for `caller`'s change of `target`.
pub(crate) fn event(
    req: &Req,
    caller: &Caller,
    action: &str,
    target: String,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        actor: Some(caller.key_id.clone()),
        source_ip: Some(req.peer.ip().to_string()),
        target: Some(target),
        details,
        ..AuditEvent::new(action)
    }
}

/// Appends the event for a change `caller` is about to make, and returns once it is
/// durable. `details` must never hold a key or a password.
pub(crate) async fn record(
    state: &State,
    req: &Req,
    caller: &Caller,
    action: &str,
    target: String,
    details: Value,
) -> Result<i64, ApiError> {
    let store = state.plane.control.store()?;
    let event = AuditEvent {
        actor: Some(caller.key_id.clone()),
        source_ip: Some(req.peer.ip().to_string()),
        target: Some(target),
        details,
        ..AuditEvent::new(action)
    };
    store.append_audit(&event).await.map_err(|e| {
        tracing::error!(action, error = %format!("{e:#}"), "audit append failed: the change was not applied");
        unavailable(format!("recording the audit event failed: {e:#}"))
    })
}
