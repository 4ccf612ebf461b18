//! `/healthz`, `/readyz`, `/metrics` and `/v1/openapi.json`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::error::ApiError;
use crate::openapi::OPENAPI_JSON;
use crate::request::{Pending, Req};
use crate::response::{json, Body};
use crate::state::State;

pub(crate) fn healthz(_: &State, _: &Req) -> Result<Response<Body>, ApiError> {
    Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

/// `GET /readyz`: 503 only while draining. An unreachable control store, or a tenant
/// whose backend is down, does not make the process unready (it serves every other
/// tenant, and the catalog it has); the body says so: `backends_down` lists the
/// tenants whose backend the supervisor last found down, with why.
pub(crate) fn readyz<'a>(state: &'a State, _: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let tenants = state.sources.catalog.snapshot().len();
        let draining = state.draining.is_cancelled();
        let backends_down: Vec<_> = state
            .sources
            .health
            .down_now()
            .into_iter()
            .map(|(tenant, error)| serde_json::json!({"tenant": tenant, "error": error}))
            .collect();
        let body = serde_json::json!({
            "ready": !draining,
            "reason": if draining { "shutting down: draining client connections" } else { "serving" },
            "catalog": {"tenants": tenants, "source": state.plane.sync.source()},
            "control_store": state.plane.control.status().await,
            "backends_down": backends_down,
        });
        let status = if draining {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        Ok(json(status, &body))
    })
}

pub(crate) fn metrics(state: &State, _: &Req) -> Result<Response<Body>, ApiError> {
    if !state.metrics_enabled {
        return Err(ApiError::not_found(
            "metrics are disabled ([metrics] enabled = false)",
        ));
    }
    let text = crate::metrics::render(&state.registry);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(response)
}

pub(crate) fn openapi(_: &State, _: &Req) -> Result<Response<Body>, ApiError> {
    let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
