//! `/v1/api-keys` (admin role): create a key (shown once), list keys (never their
//! hashes), revoke one. The store holds the keys; this process's cache
//! ([`control::keys::ApiKeys`]) follows each change at once, so a revoked key gets 401 on
//! its next request here. (Other processes on the same store see it at their restart
//! until the catalog sync carries key changes.)

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use control::keys::{self, Role};
use control::store::rfc3339::format_micros;

use super::record;
use crate::error::{unavailable, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::json;
use crate::state::State;

/// The body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    role: Role,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /v1/api-keys` `{"role", "name"}` → 201 `{"id", "key", "role", "name"}`.
pub(crate) fn create<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Admin)?;
        let body: NewKey = req.json()?;
        if body.name.as_ref().is_some_and(|n| n.len() > 200) {
            return Err(ApiError::invalid("name: at most 200 bytes"));
        }
        let store = state.plane.control.store()?;
        let key = keys::generate();
        let id = keys::key_id(&key)
            .expect("generated keys are well-formed")
            .to_owned();
        record(
            state,
            req,
            &caller,
            "api_key.create",
            format!("api-key:{id}"),
            json!({"role": body.role, "name": body.name}),
        )
        .await?;
        let hash = keys::hash(&key);
        store
            .insert_api_key(&id, &hash, body.role.as_str(), body.name.as_deref())
            .await
            .map_err(|e| {
                tracing::error!(key_id = %id, error = %format!("{e:#}"), "audited API key creation failed to store the key");
                unavailable(format!("storing the key: {e:#}"))
            })?;
        state.keys.insert_hashed(&id, hash, body.role);
        tracing::info!(key_id = %id, role = body.role.as_str(), by = %caller.key_id, "API key created");
        Ok(json(
            StatusCode::CREATED,
            &json!({"id": id, "key": key, "role": body.role, "name": body.name}),
        ))
    })
}

/// `GET /v1/api-keys`: every key, revoked ones too, oldest first.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Admin)?;
        let store = state.plane.control.store()?;
        let records = store
            .list_api_keys()
            .await
            .map_err(|e| unavailable(format!("listing API keys: {e:#}")))?;
        let keys: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "role": r.role,
                    "name": r.name,
                    "created_at": format_micros(r.created_at),
                    "revoked_at": r.revoked_at.map(format_micros),
                })
            })
            .collect();
        Ok(json(StatusCode::OK, &json!({ "api_keys": keys })))
    })
}

/// `DELETE /v1/api-keys/{id}`: 404 unless the key exists unrevoked. Revoking the key
/// making the call is allowed (it is the last call that key makes).
pub(crate) fn revoke<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Admin)?;
        let id = req.segments()[2].to_owned();
        let store = state.plane.control.store()?;
        let not_found = || ApiError::not_found(format!("no unrevoked API key {id:?}"));
        let known = id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !known {
            return Err(not_found());
        }
        let active = store
            .lookup_api_key(&id)
            .await
            .map_err(|e| unavailable(format!("looking up the key: {e:#}")))?;
        if active.is_none() {
            return Err(not_found());
        }
        record(
            state,
            req,
            &caller,
            "api_key.revoke",
            format!("api-key:{id}"),
            json!({}),
        )
        .await?;
        let revoked = store.revoke_api_key(&id).await.map_err(|e| {
            tracing::error!(key_id = %id, error = %format!("{e:#}"), "audited API key revocation failed in the store");
            unavailable(format!("revoking the key: {e:#}"))
        })?;
        state.keys.remove(&id);
        if !revoked {
            // Revoked meanwhile by another call.
            return Err(not_found());
        }
        tracing::info!(key_id = %id, by = %caller.key_id, "API key revoked");
        Ok(json(StatusCode::OK, &json!({"revoked": true})))
    })
}
