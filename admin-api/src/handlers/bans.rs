//! `/v1/tenants/{id}/bans`: the addresses a tenant refuses for failed logins now, and
//! lifting them.

use std::net::IpAddr;

use control::keys::Role;
use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::{not_found, record, tenant_id};
use crate::error::ApiError;
use crate::request::{authorize, list_query, Answer, Pending, Req};
use crate::state::State;

#[derive(Serialize)]
struct BanView {
    ip: IpAddr,
    retry_in_s: u64,
    failures: u32,
}

/// `GET /v1/tenants/{id}/bans`: addresses refused for failed logins now.
pub(crate) fn bans(state: &State, req: &Req) -> Answer {
    authorize(state, req, Role::Viewer)?;
    let id = tenant_id(req);
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog.get(&id).ok_or_else(|| not_found(&id))?;
    let bans: Vec<BanView> = state
        .plane
        .gates
        .bans(&tenant.id)
        .into_iter()
        .map(|b| BanView {
            ip: b.ip,
            retry_in_s: b.until_remaining.as_secs().max(1),
            failures: b.failures,
        })
        .collect();
    Ok(crate::response::json(
        StatusCode::OK,
        &serde_json::json!({"bans": bans}),
    ))
}

/// `DELETE /v1/tenants/{id}/bans[?ip=ADDR]`: lifts one address's ban, or all.
pub(crate) fn lift_bans<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let q = list_query(req)?;
        let ip =
            q.ip.map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| ApiError::bad_request(format!("ip: {ip:?} is not an IP address")))
            })
            .transpose()?;
        let tenant = {
            let catalog = state.sources.catalog.snapshot();
            catalog.get(&id).ok_or_else(|| not_found(&id))?.id.clone()
        };
        let details = json!({"ip": ip.map(|ip| ip.to_string())});
        record(state, req, &caller, "tenant.bans.lift", id.clone(), details).await?;
        let lifted = state.plane.gates.lift(&tenant, ip);
        tracing::info!(tenant = %id, ?ip, lifted, key_id = %caller.key_id, "bans lifted through the API");
        Ok(crate::response::json(
            StatusCode::OK,
            &serde_json::json!({"lifted": lifted}),
        ))
    })
}
