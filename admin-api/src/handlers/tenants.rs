//! `/v1/tenants` and `/v1/jobs`: create (a provisioning job), read, change pool
//! settings and limits live (`PATCH`), suspend, resume, delete (a job), and list or lift
//! a tenant's login bans.
//!
//! Tenants live in the control store. A change is one store transaction with its audit
//! event; this process then re-reads the tenant into its catalog at once (the proxy,
//! subscribed to the catalog, applies new pool settings and limits to what is running),
//! and every other process does when the store's notification reaches its catalog sync.
//! With the store unreachable, these endpoints answer 503 while the data plane keeps
//! serving the catalog it has.

use control::keys::Role;
use control::settings::{LimitsPatch, PoolPatch};
use control::store::TenantRecord;
use hyper::StatusCode;
use serde::Serialize;

use super::{record_of, tenant_id};
use crate::error::store_error;
use crate::request::{authorize, list_query, Pending, Req, MAX_PAGE};
use crate::response::json;
use crate::state::State;

/// A tenant as the API shows it. Durations and limits use the config file's keys and
/// units; 0 means "no limit".
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub id: String,
    /// `provisioning`, `active`, `suspended`, `failed` or `deleting`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
    /// Why a tenant whose backend went down and did not come back is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_reason: Option<String>,
    pub plan: Option<String>,
    pub backend: BackendView,
    /// Effective settings: the plan's, with the tenant's own keys over them.
    pub pool: PoolPatch,
    pub limits: LimitsPatch,
    /// How a client reaches the tenant through Sluice (the role and password are the
    /// client's), when the proxy's SNI suffix is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    /// `local`, `static` or `config`.
    pub driver: String,
    /// `host:port` or the socket path; none until the backend is created.
    pub address: Option<String>,
    pub tls: String,
    /// Whether clients may log in through Sluice as the tenant's `auth_user`.
    pub allow_auth_user_login: bool,
}

/// The API's view of a record: its effective settings (plan + overrides).
pub(crate) fn view(state: &State, record: &TenantRecord) -> TenantView {
    let plane = &state.plane;
    let plans = plane.sync.plans();
    let (pool, limits) = plans.resolve(record).unwrap_or_else(|e| {
        tracing::warn!(tenant = %record.id, error = %format!("{e:#}"), "showing plan defaults");
        let base = &plans.defaults;
        (base.pool.clone(), base.limits.clone())
    });
    let b = &record.backend;
    TenantView {
        id: record.id.clone(),
        status: record.status.clone(),
        // One column holds the reason for the current status.
        suspended_reason: (record.status == "suspended")
            .then(|| record.suspended_reason.clone())
            .flatten(),
        failed_reason: (record.status == "failed")
            .then(|| record.suspended_reason.clone())
            .flatten(),
        plan: record.plan.clone(),
        backend: BackendView {
            driver: b.driver.clone(),
            address: match (&b.host, b.port) {
                (Some(host), Some(port)) => {
                    Some(router::BackendAddr::from_host(host, port).to_string())
                }
                _ => None,
            },
            tls: b.tls.clone(),
            allow_auth_user_login: b.allow_auth_user_login,
        },
        pool: PoolPatch::of(&pool),
        limits: LimitsPatch::of(&limits),
        connection_string: state.hint.as_ref().map(|h| h.connection_string(&record.id)),
    }
}

/// `GET /v1/tenants[?limit=N][&cursor=C]`: sorted by id.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let q = list_query(req)?;
        let limit = q.limit.unwrap_or(MAX_PAGE);
        let store = state.plane.control.store()?;
        let records = store
            .list_tenants()
            .await
            .map_err(store_error("listing tenants"))?;
        let mut page: Vec<&TenantRecord> = records
            .iter()
            .filter(|t| q.cursor.as_deref().is_none_or(|c| t.id.as_str() > c))
            .collect();
        let next_cursor = (page.len() > limit).then(|| page[limit - 1].id.clone());
        page.truncate(limit);
        let views: Vec<TenantView> = page.into_iter().map(|r| view(state, r)).collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"tenants": views, "next_cursor": next_cursor}),
        ))
    })
}

/// `GET /v1/tenants/{id}`.
pub(crate) fn get<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let record = record_of(state, &tenant_id(req)).await?;
        Ok(json(StatusCode::OK, &view(state, &record)))
    })
}
