//! The audit log through the API: every change is recorded before it is applied
//! ([`super::record`]), `GET /v1/audit-events` lists events (newest first, filters, cursor) and
//! `GET /v1/audit-events/verify` recomputes the hash chain.
//!
//! Order of a change: authorize, validate the request (4xx leaves no trace), append the
//! event (durable once `append_audit` returns), then apply. If the append fails the
//! change is not made and the caller gets 503, so nothing changes unaudited. The price:
//! if applying fails after the append (a concurrent change made the request invalid), the
//! log holds an event for a change that did not happen; the answer is then 4xx and the
//! log line says so.

use hyper::StatusCode;
use serde_json::{json, Value};

use control::keys::Role;
use control::store::AuditFilter;

use crate::error::{unavailable, ApiError};
use crate::request::{authorize, parse_time, query_pairs, Pending, Req, TIME};
use crate::response::json;
use crate::state::State;

/// `GET /v1/audit-events?tenant=&action=&since=&until=&cursor=&limit=`.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let (filter, cursor, limit) = audit_query(req)?;
        let store = state.plane.control.store()?;
        let (events, next) = store
            .list_audit(&filter, cursor, limit)
            .await
            .map_err(|e| unavailable(format!("listing audit events: {e:#}")))?;
        let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
        Ok(json(
            StatusCode::OK,
            &json!({"events": events, "next_cursor": next.map(|id| id.to_string())}),
        ))
    })
}

/// `GET /v1/audit-events/verify`.
pub(crate) fn verify<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let store = state.plane.control.store()?;
        let verdict = store
            .verify_audit()
            .await
            .map_err(|e| unavailable(format!("verifying the audit log: {e:#}")))?;
        if !verdict.ok {
            tracing::warn!(
                broken_at = verdict.broken_at,
                "the audit chain does not verify"
            );
        }
        Ok(json(StatusCode::OK, &verdict))
    })
}

fn audit_query(req: &Req) -> Result<(AuditFilter, Option<i64>, u32), ApiError> {
    let mut filter = AuditFilter::default();
    let (mut cursor, mut limit) = (None, 100);
    for (key, value) in query_pairs(req)? {
        let bad = |what: &str| ApiError::bad_request(format!("{key}: {value:?} is not {what}"));
        match key {
            "tenant" => filter.tenant = Some(value),
            "action" => filter.action = Some(value),
            "since" => filter.since = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "until" => filter.until = Some(parse_time(&value).ok_or_else(|| bad(TIME))?),
            "cursor" => {
                cursor = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad("a cursor from next_cursor"))?,
                )
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit must be 1..=1000"))?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok((filter, cursor, limit))
}
