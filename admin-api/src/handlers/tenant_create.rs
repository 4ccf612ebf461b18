//! `POST /v1/tenants`: a new tenant (`provisioning`) and its create job, checked whole
//! before anything is written.

use control::keys::Role;
use control::secrets::tenant_secret;
use control::settings::{LimitsPatch, PoolPatch};
use control::store::{BackendRecord, TenantRecord};
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::event;
use super::jobs::JobView;
use super::tenants::view;
use crate::error::{change_error, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::json;
use crate::state::State;

/// The body of `POST /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub backend: Option<CreateBackend>,
    #[serde(default)]
    pub pool: Option<PoolPatch>,
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
}

/// `backend` of `POST /v1/tenants`: the driver, and for `static` the server to use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBackend {
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<String>,
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_password: Option<String>,
    #[serde(default)]
    pub admin_database: Option<String>,
    /// Let clients log in through Sluice as the tenant's `auth_user` (default false).
    #[serde(default)]
    pub allow_auth_user_login: Option<bool>,
}

/// `POST /v1/tenants`: 202 with the tenant (`provisioning`) and its job. The tenant,
/// its job, its secrets and the audit event are one transaction: a refused or failed
/// request leaves nothing behind.
pub(crate) fn create<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let body: CreateTenant = req.json()?;
        let record = new_record(state, &body)?;
        let store = state.plane.control.store()?;
        let mut secrets = Vec::new();
        let backend = body.backend.unwrap_or_default();
        if let Some(password) = &backend.admin_password {
            let name = tenant_secret(&record.id, "admin");
            secrets.push((name.clone(), state.plane.sync.secrets.seal(&name, password)));
        }
        let details = json!({
            "plan": record.plan,
            "driver": record.backend.driver,
            "params": record.backend.params,
            "pool": record.pool,
            "limits": record.limits,
        });
        let event = event(req, &caller, "tenant.create", record.id.clone(), details);
        let (tenant, job) = store
            .create_tenant(&record, &secrets, &event)
            .await
            .map_err(change_error)?;
        state.plane.wake.notify_one();
        tracing::info!(tenant = %record.id, job = job.id, key_id = %caller.key_id, "tenant queued for provisioning");
        Ok(json(
            StatusCode::ACCEPTED,
            &json!({"tenant": view(state, &tenant), "job": JobView::of(&job)}),
        ))
    })
}

/// Checks a create request and turns it into the record to insert.
fn new_record(state: &State, body: &CreateTenant) -> Result<TenantRecord, ApiError> {
    let id =
        router::TenantId::parse(&body.id).map_err(|e| ApiError::invalid(format!("id: {e}")))?;
    let plans = state.plane.sync.plans();
    if let Some(plan) = &body.plan {
        plans
            .base(Some(plan))
            .map_err(|e| ApiError::invalid(format!("plan: {e}")))?;
    }
    let empty = CreateBackend::default();
    let b = body.backend.as_ref().unwrap_or(&empty);
    let drivers = &state.plane.drivers;
    let driver = match b.driver.as_deref().or(drivers.default) {
        Some(name) => drivers.get(name).map(|d| d.name()).ok_or_else(|| {
            ApiError::invalid(match drivers.why_unavailable(name) {
                Some(reason) => format!("backend.driver: {name:?} cannot run here: {reason}"),
                None => format!(
                    "backend.driver: {name:?} is not enabled here (enabled: {})",
                    drivers.names().join(", ")
                ),
            })
        })?,
        None => {
            return Err(ApiError::invalid(
                "backend.driver: no provisioner driver is enabled",
            ))
        }
    };
    let tls = b.tls.clone().unwrap_or_else(|| "require".into());
    if !["disable", "prefer", "require", "verify-full"].contains(&tls.as_str()) {
        return Err(ApiError::invalid(format!(
            "backend.tls: {tls:?} is not one of disable, prefer, require, verify-full"
        )));
    }
    let params = if driver == "static" {
        let host = b
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ApiError::invalid("backend.host: required by the static driver"))?;
        let admin_user = b
            .admin_user
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ApiError::invalid("backend.admin_user: required by the static driver")
            })?;
        if b.admin_password.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "backend.admin_password: required by the static driver",
            ));
        }
        let params = json!({
            "host": host,
            "port": b.port.unwrap_or(5432),
            "tls": tls,
            "tls_ca": b.tls_ca,
            "admin_user": admin_user,
            "admin_database": b.admin_database.clone().unwrap_or_else(|| "postgres".into()),
        });
        // What the job would find wrong, refused now.
        control::drivers::check_static_params(&params).map_err(ApiError::invalid)?;
        params
    } else {
        let named = [
            ("host", b.host.is_some()),
            ("port", b.port.is_some()),
            ("tls_ca", b.tls_ca.is_some()),
            ("admin_user", b.admin_user.is_some()),
            ("admin_password", b.admin_password.is_some()),
            ("admin_database", b.admin_database.is_some()),
        ];
        if let Some((key, _)) = named.iter().find(|(_, given)| *given) {
            return Err(ApiError::invalid(format!(
                "backend.{key}: only for the static driver, not {driver}"
            )));
        }
        json!({})
    };
    let record = TenantRecord {
        id: id.to_string(),
        plan: body.plan.clone(),
        status: "provisioning".into(),
        suspended_reason: None,
        backend: BackendRecord {
            driver: driver.to_owned(),
            host: None,
            port: None,
            tls,
            tls_ca: None,
            admin_user: None,
            admin_database: None,
            auth_user: control::jobs::AUTH_USER.to_owned(),
            allow_auth_user_login: b.allow_auth_user_login.unwrap_or(false),
            auth_database: "postgres".into(),
            auth_query: None,
            params,
        },
        pool: body.pool.clone().unwrap_or_default(),
        limits: body.limits.clone().unwrap_or_default(),
        version: 0,
    };
    // Settings that do not resolve are refused now, not when the job ends.
    plans
        .resolve(&record)
        .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    Ok(record)
}
