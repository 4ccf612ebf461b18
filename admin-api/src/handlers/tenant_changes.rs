//! Changes to a tenant: `PATCH /v1/tenants/{id}` (pool settings, limits, plan),
//! suspend, resume and `DELETE` (a job). Each is one store transaction with its audit
//! event, then applied to this process's catalog at once.

use control::keys::Role;
use control::settings::{LimitsPatch, PoolPatch};
use control::store::TenantRecord;
use control::Plans;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::jobs::JobView;
use super::tenants::view;
use super::{event, not_found, record_of, tenant_id};
use crate::error::{change_error, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::json;
use crate::state::State;

/// The body of `PATCH /v1/tenants/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// A new plan: its settings apply at once, and a container driver resizes the
    /// backend to the plan's size before the change is stored.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub pool: Option<PoolPatch>,
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
}

/// `DELETE /v1/tenants/{id}`: 202 with the delete job. The tenant leaves the catalog at
/// once (new connections: 3D000); the job ends its sessions (57P01), removes the
/// backend and then the tenant.
pub(crate) fn delete<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let before = record_of(state, &id).await?;
        let store = state.plane.control.store()?;
        let details = json!({"before": {"status": before.status, "plan": before.plan, "driver": before.backend.driver}});
        let event = event(req, &caller, "tenant.delete", id.clone(), details);
        let job = store
            .start_delete(&id, &event)
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        state.plane.wake.notify_one();
        tracing::info!(tenant = %id, job = job.id, key_id = %caller.key_id, "tenant queued for deletion");
        Ok(json(
            StatusCode::ACCEPTED,
            &json!({"job": JobView::of(&job)}),
        ))
    })
}

/// `PATCH /v1/tenants/{id}` with `{"pool": {...}, "limits": {...}}`: only the keys
/// given change; the whole patch applies or nothing does. The change and its audit
/// event (`tenant.update`, with the request and the effective settings before and
/// after) commit together; a concurrent change in between answers 409.
pub(crate) fn patch<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let patch: TenantPatch = req.json()?;
        let current = record_of(state, &id).await?;
        let mut next = current.clone();
        if let Some(pool) = &patch.pool {
            next.pool = overlay(&current.pool, pool);
        }
        if let Some(limits) = &patch.limits {
            next.limits = overlay(&current.limits, limits);
        }
        if let Some(plan) = &patch.plan {
            next.plan = Some(plan.clone());
        }
        let plans = state.plane.sync.plans();
        // Validate first: a refused request leaves no trace.
        let after = settings_of(&plans, &next).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        let before = settings_of(&plans, &current).unwrap_or_default();
        let details = json!({
            "request": serde_json::from_slice::<serde_json::Value>(&req.body).unwrap_or_default(),
            "before": before,
            "after": after,
        });
        let event = event(req, &caller, "tenant.update", id.clone(), details);
        let store = state.plane.control.store()?;
        if next.plan != current.plan {
            resize_backend(state, &current, next.plan.as_deref()).await?;
        }
        let updated = store
            .update_tenant_settings(
                &id,
                current.version,
                next.plan.as_deref(),
                &next.pool,
                &next.limits,
                &event,
            )
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant pool/limits changed through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}

/// Gives the tenant's backend `plan`'s size (container drivers; the others have no
/// sizes). Done before the store records the plan, so that the store never names a plan
/// the backend was not given; a failure answers 502 and changes nothing.
async fn resize_backend(
    state: &State,
    record: &TenantRecord,
    plan: Option<&str>,
) -> Result<(), ApiError> {
    let built = record.backend.host.is_some() && record.status != "provisioning";
    let Some(driver) = state.plane.drivers.get(&record.backend.driver) else {
        return Ok(());
    };
    if !built {
        return Ok(()); // the create job sizes it from the stored plan
    }
    driver.resize(&record.id, plan).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "backend_error",
            format!("resizing the tenant's backend to the plan failed: {e:#}"),
        )
    })
}

/// `base` with the keys set in `patch` written over it.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(base: &T, patch: &T) -> T {
    let mut merged = serde_json::to_value(base).expect("settings serialize");
    if let (serde_json::Value::Object(m), serde_json::Value::Object(p)) = (
        &mut merged,
        serde_json::to_value(patch).expect("settings serialize"),
    ) {
        m.extend(p);
    }
    serde_json::from_value(merged).expect("a merge of two valid settings is valid")
}

/// A tenant's effective pool settings and limits as the API shows them (an audit
/// event's before/after).
fn settings_of(plans: &Plans, record: &TenantRecord) -> anyhow::Result<serde_json::Value> {
    let (pool, limits) = plans.resolve(record)?;
    Ok(json!({"pool": PoolPatch::of(&pool), "limits": LimitsPatch::of(&limits)}))
}

/// The body of `POST /v1/tenants/{id}/suspend`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suspend {
    #[serde(default)]
    reason: Option<String>,
    /// Also end the sessions already running (57P01).
    #[serde(default)]
    terminate: bool,
}

/// `POST /v1/tenants/{id}/suspend` `{"reason", "terminate"}`: new connections get
/// 28000 `tenant "<id>" is suspended`; with `terminate`, running sessions end.
pub(crate) fn suspend<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let body: Suspend = if req.body.is_empty() {
            Suspend::default()
        } else {
            req.json()?
        };
        let reason = body
            .reason
            .unwrap_or_else(|| "suspended by an operator".into());
        if reason.len() > 1000 {
            return Err(ApiError::invalid("reason: at most 1000 bytes"));
        }
        let before = record_of(state, &id).await?;
        let details = json!({"reason": reason, "terminate": body.terminate,
            "before": {"status": before.status, "suspended_reason": before.suspended_reason}});
        let event = event(req, &caller, "tenant.suspend", id.clone(), details);
        let store = state.plane.control.store()?;
        let updated = store
            .set_tenant_status(
                &id,
                &["active", "suspended"],
                "suspended",
                Some(&reason),
                Some(&event),
            )
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        let terminated = if body.terminate {
            let tenant = router::TenantId::parse(&id).map_err(|_| not_found(&id))?;
            // Here at once; in every other process through the store.
            let ended = state.plane.gates.terminate_sessions(&tenant);
            if let Err(e) = store.notify_end_sessions(&id).await {
                tracing::warn!(tenant = %id, error = %format!("{e:#}"), "telling the other processes to end the tenant's sessions");
            }
            ended
        } else {
            0
        };
        tracing::info!(tenant = %id, terminate = body.terminate, terminated, key_id = %caller.key_id, "tenant suspended through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}

/// `POST /v1/tenants/{id}/resume`.
pub(crate) fn resume<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let before = record_of(state, &id).await?;
        let details = json!({"before": {"status": before.status, "suspended_reason": before.suspended_reason}});
        let event = event(req, &caller, "tenant.resume", id.clone(), details);
        let store = state.plane.control.store()?;
        let updated = store
            .set_tenant_status(&id, &["active", "suspended"], "active", None, Some(&event))
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        tracing::info!(tenant = %id, key_id = %caller.key_id, "tenant resumed through the API");
        Ok(json(StatusCode::OK, &view(state, &updated)))
    })
}
