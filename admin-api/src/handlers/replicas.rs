//! `GET /v1/replicas`: the live replicas of the fleet, as the control store lists them.

use control::keys::Role;
use hyper::StatusCode;
use serde::Serialize;

use crate::error::store_error;
use crate::request::{authorize, Pending, Req};
use crate::response::json;
use crate::state::State;

/// A replica as the API shows it.
#[derive(Debug, Serialize)]
struct ReplicaView<'a> {
    id: &'a str,
    /// The process: a restarted replica beside its old process is another instance.
    instance: String,
    slot: u8,
    internal_addr: &'a str,
    proxy_addrs: &'a [String],
    admin_addr: &'a str,
    version: &'a str,
    started_at: &'a str,
    heartbeat_age_ms: u64,
    state: &'static str,
}

/// `GET /v1/replicas`: every replica whose heartbeat is within the fleet's expiry, by
/// slot; an empty list from a process that is not in a fleet.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let Some(fleet) = &state.plane.fleet else {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({"fleet": false, "replicas": []}),
            ));
        };
        let store = state.plane.control.store()?;
        let replicas = store
            .live_replicas(fleet.expire_after)
            .await
            .map_err(store_error("listing the replicas"))?;
        let views: Vec<ReplicaView<'_>> = replicas
            .iter()
            .map(|r| ReplicaView {
                id: &r.id,
                instance: format!("{:016x}", r.instance),
                slot: r.slot,
                internal_addr: &r.internal_addr,
                proxy_addrs: &r.proxy_addrs,
                admin_addr: &r.admin_addr,
                version: &r.version,
                started_at: &r.started_at,
                heartbeat_age_ms: r.heartbeat_age_ms,
                state: if r.draining { "draining" } else { "serving" },
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"fleet": true, "replicas": views}),
        ))
    })
}
