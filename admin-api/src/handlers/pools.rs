//! `/v1/pools` and `/v1/tenants/{id}/stats`: the data plane's pools as the stats views
//! see them.

use control::keys::Role;
use hyper::{Response, StatusCode};

use crate::error::ApiError;
use crate::request::{authorize, list_query, Req, MAX_PAGE};
use crate::response::{json, Body};
use crate::state::State;
use crate::stats;

/// `GET /v1/pools`: every pool, sorted by tenant/database/role; `cursor` is the
/// `next_cursor` of the previous page.
pub(crate) fn pools(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
    authorize(state, req, Role::Viewer)?;
    let q = list_query(req)?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    let cursor_of = |p: &stats::PoolStatsView| format!("{}/{}/{}", p.tenant, p.database, p.role);
    let mut all: Vec<stats::PoolStatsView> = stats::all_pools(&state.sources.pools, &state.sampler)
        .into_iter()
        .filter(|p| q.tenant.as_deref().is_none_or(|t| p.tenant == t))
        .filter(|p| {
            q.cursor
                .as_deref()
                .is_none_or(|c| cursor_of(p).as_str() > c)
        })
        .collect();
    let next_cursor = (all.len() > limit).then(|| cursor_of(&all[limit - 1]));
    all.truncate(limit);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"pools": all, "next_cursor": next_cursor}),
    ))
}

/// `GET /v1/tenants/{id}/stats`.
pub(crate) fn tenant_stats(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
    authorize(state, req, Role::Viewer)?;
    let segments = req.segments();
    let id = segments[2];
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("tenant \"{id}\" does not exist")))?;
    let mut view = stats::tenant_view(
        &tenant.id,
        &state.sources.pools,
        &state.sampler,
        &state.sources.rejections,
    );
    // The supervisor's verdict counts too: a backend found down is down before any
    // pool has tried it.
    view.counts.backend_up &= state.sources.health.is_up(id) != Some(false);
    view.backend_parked = state.sources.parking.is_stopped(id);
    view.disk = stats::DiskView::of(
        state.sources.disk.get(&tenant.id).as_deref(),
        tenant.limits.disk_limit,
    );
    Ok(json(StatusCode::OK, &view))
}
