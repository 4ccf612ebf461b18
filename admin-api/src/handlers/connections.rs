//! `/v1/clients` and `/v1/servers`: the live connections of this process (the
//! registry the console's SHOW CLIENTS / SHOW SERVERS read), and
//! `POST`/`DELETE /v1/tenants/{id}/pause`, the console's PAUSE and RESUME (not
//! `.../resume`, which ends a suspension).

use control::keys::Role;
use hyper::{Response, StatusCode};
use pooler::registry::{rfc3339_ms, ClientView, ServerView};
use router::PoolMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{not_found, record, tenant_id};
use crate::error::ApiError;
use crate::request::{authorize, query_pairs, Pending, Req};
use crate::response::{json, Body};
use crate::state::State;

/// One logged-in client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConnection {
    /// The connection id of the proxy's logs.
    pub id: u64,
    pub tenant: String,
    pub database: String,
    pub user: String,
    /// `active` (holds a server connection), `idle` or `waiting`.
    pub state: String,
    /// The client's address (from the PROXY protocol header behind a balancer).
    pub addr: String,
    pub port: u16,
    pub tls: bool,
    pub pool_mode: String,
    pub connected_at: String,
    pub state_since: String,
    /// The server connection it holds.
    pub server_id: Option<u64>,
    pub backend_pid: Option<i32>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// One open server connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConnection {
    pub id: u64,
    pub tenant: String,
    pub database: String,
    pub user: String,
    /// `active` (lent to a client), `idle` or `used` (being reset).
    pub state: String,
    /// The backend's address.
    pub addr: String,
    pub backend_pid: Option<i32>,
    pub connected_at: String,
    pub state_since: String,
    /// The client it serves.
    pub client_id: Option<u64>,
}

/// The answer of pause and resume.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseState {
    pub tenant: String,
    pub paused: bool,
    /// Server connections of the tenant lent to clients now (0: a PAUSE is complete).
    pub in_use: usize,
}

impl From<ClientView> for ClientConnection {
    fn from(c: ClientView) -> Self {
        ClientConnection {
            id: c.info.id,
            tenant: c.info.key.tenant.to_string(),
            database: c.info.key.database,
            user: c.info.key.role,
            state: c.state.as_str().to_owned(),
            addr: c.info.addr.ip().to_string(),
            port: c.info.addr.port(),
            tls: c.info.tls,
            pool_mode: match c.info.mode {
                PoolMode::Session => "session",
                PoolMode::Transaction => "transaction",
            }
            .to_owned(),
            connected_at: rfc3339_ms(c.connected_at_ms),
            state_since: rfc3339_ms(c.state_since_ms),
            server_id: c.server,
            backend_pid: c.backend_pid,
            bytes_received: c.bytes_from_client,
            bytes_sent: c.bytes_to_client,
        }
    }
}

impl From<ServerView> for ServerConnection {
    fn from(s: ServerView) -> Self {
        ServerConnection {
            id: s.id,
            tenant: s.key.tenant.to_string(),
            database: s.key.database,
            user: s.key.role,
            state: s.state.as_str().to_owned(),
            addr: s.addr,
            backend_pid: s.pid,
            connected_at: rfc3339_ms(s.connected_at_ms),
            state_since: rfc3339_ms(s.state_since_ms),
            client_id: s.client,
        }
    }
}

/// The `tenant` filter, the only parameter these lists take.
fn tenant_filter(req: &Req) -> Result<Option<router::TenantId>, ApiError> {
    let mut tenant = None;
    for (key, value) in query_pairs(req)? {
        match key {
            "tenant" => {
                // An id that cannot exist matches nothing.
                tenant = Some(router::TenantId::parse(&value).map_err(|_| {
                    ApiError::bad_request(format!("tenant: {value:?} is not a tenant id"))
                })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok(tenant)
}

/// `GET /v1/clients[?tenant=]`: every logged-in client of this process, by id.
pub(crate) fn clients(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
    authorize(state, req, Role::Viewer)?;
    let tenant = tenant_filter(req)?;
    let registry = &state.sources.pools.registry;
    let clients: Vec<ClientConnection> = registry
        .clients(tenant.as_ref())
        .into_iter()
        .map(ClientConnection::from)
        .collect();
    Ok(json(StatusCode::OK, &json!({"clients": clients})))
}

/// `GET /v1/servers[?tenant=]`: every open server connection of this process, by id.
pub(crate) fn servers(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
    authorize(state, req, Role::Viewer)?;
    let tenant = tenant_filter(req)?;
    let registry = &state.sources.pools.registry;
    let servers: Vec<ServerConnection> = registry
        .servers(tenant.as_ref())
        .into_iter()
        .map(ServerConnection::from)
        .collect();
    Ok(json(StatusCode::OK, &json!({"servers": servers})))
}

/// `POST /v1/tenants/{id}/pause`: the console's PAUSE, in this process, answered at
/// once (`in_use` says how many server connections are still lent out).
pub(crate) fn pause<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(switch(state, req, true))
}

/// `DELETE /v1/tenants/{id}/pause`: the console's RESUME, in this process.
pub(crate) fn unpause<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(switch(state, req, false))
}

async fn switch(state: &State, req: &Req, paused: bool) -> Result<Response<Body>, ApiError> {
    let caller = authorize(state, req, Role::Operator)?;
    let id = tenant_id(req);
    let tenant = {
        let catalog = state.sources.catalog.snapshot();
        catalog.get(&id).ok_or_else(|| not_found(&id))?.id.clone()
    };
    let action = if paused {
        "tenant.pause"
    } else {
        "tenant.pause.lift"
    };
    record(state, req, &caller, action, id.clone(), json!({})).await?;
    let pools = &state.sources.pools;
    if paused {
        pools.pause(&tenant);
    } else {
        pools.resume(&tenant);
    }
    tracing::info!(tenant = %id, paused, key_id = %caller.key_id, "pause changed through the API");
    let answer = PauseState {
        tenant: id,
        paused: pools.is_paused(&tenant),
        in_use: pools.in_use(&tenant),
    };
    Ok(json(StatusCode::OK, &answer))
}
