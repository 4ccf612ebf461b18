//! `/v1/tenants/{id}/roles`: login roles on a tenant's backend.
//!
//! The backend is changed first (over the administrator credential the provisioning job
//! stored), then the store records the role's SCRAM verifier together with the audit
//! event. A password is generated unless the caller gives one, travels to the backend only
//! as a verifier, and is shown once in the answer. Rotation takes effect for new logins at
//! once in every process (the role change notifies each catalog sync, which drops the
//! cached secret); sessions already logged in keep running.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use control::keys::Role;
use control::roles::{self, AdminAccessError, RoleError};
use control::store::rfc3339::format_micros;

use super::{event, record_of, tenant_id};
use crate::error::{store_error, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::{empty, json};
use crate::state::State;

/// Shortest password a caller may choose.
const MIN_PASSWORD: usize = 12;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRole {
    name: String,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    password: Option<String>,
}

/// A connection to the tenant's backend as its administrator: 404 for no such tenant,
/// 409 when the tenant has no administrator credential (still provisioning, or declared
/// in the config file), 503 when the store or the backend does not answer.
async fn admin_client(state: &State, id: &str) -> Result<roles::AdminClient, ApiError> {
    let record = record_of(state, id).await?;
    roles::admin_client(&state.plane, &record)
        .await
        .map_err(|e| match e {
            AdminAccessError::NotManaged(why) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", why)
            }
            AdminAccessError::Store(e) => e.into(),
            AdminAccessError::StoreFailed(e) => {
                store_error("reading the administrator credential")(e)
            }
            AdminAccessError::Sealed(e) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{e:#}"),
            ),
            AdminAccessError::Backend(e) => backend_error(id)(e),
        })
}

fn backend_error(id: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| {
        tracing::warn!(tenant = %id, error = %format!("{e:#}"), "tenant backend unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            format!("tenant \"{id}\"'s backend: {e:#}"),
        )
    }
}

fn role_error(id: &str, name: &str, e: RoleError) -> ApiError {
    match e {
        RoleError::Exists => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("role \"{name}\" already exists on tenant \"{id}\""),
        ),
        RoleError::Missing => {
            ApiError::not_found(format!("role \"{name}\" does not exist on tenant \"{id}\""))
        }
        RoleError::Other(e) => backend_error(id)(e),
    }
}

fn password_or_generated(given: Option<String>) -> Result<String, ApiError> {
    match given {
        Some(p) if p.chars().count() < MIN_PASSWORD => Err(ApiError::invalid(format!(
            "password: at least {MIN_PASSWORD} characters (or leave it out to have one generated)"
        ))),
        Some(p) if p.len() > 1000 || p.contains('\0') => {
            Err(ApiError::invalid("password: at most 1000 bytes, no NUL"))
        }
        Some(p) => Ok(p),
        None => Ok(roles::generate_password()),
    }
}

/// The role named in the path, if it is a name Sluice manages.
fn role_name(req: &Req) -> Result<String, ApiError> {
    let name = req.segments()[4];
    roles::valid_role_name(name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
    Ok(name.to_owned())
}

/// Tells this process's proxy at once (others hear it from the store).
fn forget_secret(state: &State, id: &str, role: &str) {
    if let Ok(tenant) = router::TenantId::parse(id) {
        state.sources.catalog.role_changed(&tenant, role);
    }
}

/// `GET /v1/tenants/{id}/roles`: the roles made through the API.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let id = tenant_id(req);
        record_of(state, &id).await?;
        let store = state.plane.control.store()?;
        let roles = store
            .list_roles(&id)
            .await
            .map_err(store_error("listing roles"))?;
        let roles: Vec<_> = roles
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "created_at": format_micros(r.created_at),
                    "rotated_at": r.rotated_at.map(format_micros),
                })
            })
            .collect();
        Ok(json(StatusCode::OK, &json!({"roles": roles})))
    })
}

/// `POST /v1/tenants/{id}/roles` `{"name", "password"?}` → 201 `{"name", "password"}`.
pub(crate) fn create<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let body: CreateRole = req.json()?;
        roles::valid_role_name(&body.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let password = password_or_generated(body.password)?;
        let verifier = roles::scram_verifier(&password);
        let client = admin_client(state, &id).await?;
        roles::create_role(&client, &body.name, &verifier)
            .await
            .map_err(|e| role_error(&id, &body.name, e))?;
        let event = event(
            req,
            &caller,
            "role.create",
            format!("{id}/roles/{}", body.name),
            json!({"name": body.name}),
        );
        let store = state.plane.control.store()?;
        if let Err(e) = store
            .put_role(&id, &body.name, &verifier, false, &event)
            .await
        {
            // Not recorded, not audited: undo it on the backend.
            if let Err(undo) = roles::drop_role(&client, &body.name).await {
                tracing::error!(tenant = %id, role = %body.name, error = ?undo, "a role was created on the backend but could not be recorded or removed");
            }
            return Err(store_error("recording the role")(e));
        }
        forget_secret(state, &id, &body.name);
        tracing::info!(tenant = %id, role = %body.name, key_id = %caller.key_id, "role created through the API");
        Ok(json(
            StatusCode::CREATED,
            &json!({"name": body.name, "password": password}),
        ))
    })
}

/// `POST /v1/tenants/{id}/roles/{name}/rotate` `{"password"?}` → `{"name", "password"}`.
pub(crate) fn rotate<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let name = role_name(req)?;
        let body: Rotate = if req.body.is_empty() {
            Rotate::default()
        } else {
            req.json()?
        };
        let password = password_or_generated(body.password)?;
        let verifier = roles::scram_verifier(&password);
        let client = admin_client(state, &id).await?;
        roles::set_password(&client, &name, &verifier)
            .await
            .map_err(|e| role_error(&id, &name, e))?;
        forget_secret(state, &id, &name);
        let event = event(
            req,
            &caller,
            "role.rotate",
            format!("{id}/roles/{name}"),
            json!({"name": name}),
        );
        let store = state.plane.control.store()?;
        store
            .put_role(&id, &name, &verifier, true, &event)
            .await
            .map_err(|e| {
                tracing::error!(tenant = %id, role = %name, "a password was rotated on the backend but the store did not record it");
                store_error("recording the rotation")(e)
            })?;
        tracing::info!(tenant = %id, role = %name, key_id = %caller.key_id, "role rotated through the API");
        Ok(json(
            StatusCode::OK,
            &json!({"name": name, "password": password}),
        ))
    })
}

/// `DELETE /v1/tenants/{id}/roles/{name}` → 204.
pub(crate) fn delete<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let name = role_name(req)?;
        let client = admin_client(state, &id).await?;
        roles::drop_role(&client, &name)
            .await
            .map_err(|e| role_error(&id, &name, e))?;
        forget_secret(state, &id, &name);
        let event = event(
            req,
            &caller,
            "role.delete",
            format!("{id}/roles/{name}"),
            json!({"name": name}),
        );
        let store = state.plane.control.store()?;
        store
            .delete_role(&id, &name, &event)
            .await
            .map_err(store_error("recording the role's removal"))?;
        tracing::info!(tenant = %id, role = %name, key_id = %caller.key_id, "role deleted through the API");
        Ok(hyper::Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .expect("a valid response"))
    })
}
