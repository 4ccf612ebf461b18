//! The admin listener: hyper HTTP/1.1, one task per connection, routes in one table
//! (`ROUTES`, described by `openapi.json`), JSON in and out,
//! `{"error":{"code","message"}}` on failure.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keys::{Caller, Role};
use crate::stats;
use crate::tenants;
use crate::State;
use crate::{audit_api, keys_api, roles};

/// Longest request head accepted (the API takes small JSON bodies only).
const MAX_HEAD: usize = 64 * 1024;
/// A client gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most items a list returns at once.
pub(crate) const MAX_PAGE: usize = 1000;

pub(crate) type Body = Full<Bytes>;

/// An empty body (204 answers).
pub(crate) fn empty() -> Body {
    Full::new(Bytes::new())
}
/// What an endpoint answers.
pub(crate) type Answer = Result<Response<Body>, ApiError>;
/// The future of an endpoint that waits (for the control store).
pub(crate) type Pending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// An endpoint: the state and the request (head, path segments, whole body). Endpoints
/// that only read memory answer `Now`; those that wait for the control store `Later`.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    Now(fn(&State, &Req) -> Answer),
    Later(for<'a> fn(&'a State, &'a Req) -> Pending<'a>),
}
use Handler::{Later, Now};

/// Largest request body the API reads (its bodies are small JSON documents).
const MAX_BODY: usize = 64 * 1024;

/// A request, read whole.
pub(crate) struct Req {
    pub head: hyper::http::request::Parts,
    pub body: Bytes,
    /// The client's address (the audit log's `source_ip`).
    pub peer: SocketAddr,
}

impl Req {
    /// The path split at '/', without the leading one.
    pub fn segments(&self) -> Vec<&str> {
        self.head.uri.path().trim_matches('/').split('/').collect()
    }

    /// The body as a JSON object of type `T`: 400 when it is not JSON, 422 when it
    /// does not fit `T` (unknown fields, wrong types, not an object: serde would also
    /// take a struct's fields as an array, which openapi.json does not describe).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("expected a JSON body"));
        }
        let value: serde_json::Value = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("expected a JSON object"));
        }
        serde_json::from_value(value).map_err(|e| ApiError::invalid(e.to_string()))
    }
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Well-formed, but not acceptable (a value out of range, an unknown field).
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    fn response(&self) -> Response<Body> {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let mut response = json(
            self.status,
            &Outer {
                error: Inner {
                    code: self.code,
                    message: &self.message,
                },
            },
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("API values serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Serves the admin API on `listener` until `shutdown`, then finishes the requests in
/// progress and returns.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .max_header_size(MAX_HEAD)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (head, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let (body, too_big) = match body {
        Ok(body) => (body, None),
        Err(e) => (Bytes::new(), Some(e)),
    };
    let req = Req { head, body, peer };
    let (route, handler) = route(&req);
    let response = match (handler, too_big) {
        (Ok(handler), None) => match idempotency_key(state, &req) {
            Ok(Some(key)) => idempotent(state, &req, handler, key).await,
            Ok(None) => run(state, &req, handler).await,
            Err(e) => e.response(),
        },
        (Err(e), _) | (_, Some(e)) => e.response(),
    };
    state
        .admin_requests
        .record(route, response.status().as_u16());
    tracing::debug!(%peer, method = %req.head.method, route, status = response.status().as_u16(), "admin request");
    response
}

async fn run(state: &State, req: &Req, handler: Handler) -> Response<Body> {
    let result = match handler {
        Now(handler) => handler(state, req),
        Later(handler) => handler(state, req).await,
    };
    result.unwrap_or_else(|e| e.response())
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An `Idempotency-Key` of a POST by a known API key: (key, API key id, request hash).
type IdempotencyKey = (String, String, [u8; 32]);

/// The request's `Idempotency-Key`, if it is a POST that carries one and a valid API key
/// (an unauthenticated request is answered 401 by its handler as usual).
fn idempotency_key(state: &State, req: &Req) -> Result<Option<IdempotencyKey>, ApiError> {
    if req.head.method != Method::POST {
        return Ok(None);
    }
    let Some(value) = req.head.headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Authentication comes first: an unauthenticated request is answered 401 by its
    // handler, whatever its key looks like.
    let Ok(caller) = authorize(state, req, Role::Viewer) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    let mut hash = Sha256::new();
    hash.update(req.head.uri.path().as_bytes());
    hash.update([0]);
    hash.update(&req.body);
    Ok(Some((
        key.to_owned(),
        caller.key_id,
        hash.finalize().into(),
    )))
}

/// The name a stored answer is sealed under: answers may carry a password or an API
/// key, so they are kept only encrypted (like backend credentials) and bound to the
/// API key and Idempotency-Key they answer.
fn answer_secret(key_id: &str, key: &str) -> String {
    format!("idempotency/{key_id}/{key}")
}

/// Runs a POST at most once per (Idempotency-Key, API key): a retry gets the first
/// answer (marked `Idempotent-Replayed: true`), a different request with the same key
/// 422. Answers of 5xx are not kept, so the retry runs again.
async fn idempotent(
    state: &State,
    req: &Req,
    handler: Handler,
    (key, key_id, hash): IdempotencyKey,
) -> Response<Body> {
    use crate::store::idempotency::Begin;
    let store = match state.control.store() {
        Ok(store) => store,
        Err(e) => return e.response(),
    };
    let begun = match store.idempotency_begin(&key, &key_id, &hash).await {
        Ok(begun) => begun,
        Err(e) => {
            return crate::audit_api::unavailable(format!("the control store: {e:#}")).response()
        }
    };
    match begun {
        Begin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let secrets = &state.plane.sync.secrets;
            let body = serde_json::from_str::<crate::secrets::Sealed>(&body)
                .map_err(anyhow::Error::from)
                .and_then(|sealed| secrets.open(&answer_secret(&key_id, &key), &sealed));
            let body = match body {
                Ok(body) => body,
                Err(e) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("the stored answer for this Idempotency-Key cannot be read: {e:#}"),
                    )
                    .response()
                }
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Begin::Mismatch => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
        .response(),
        Begin::InFlight => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the first request with this Idempotency-Key is still being handled",
        )
        .response(),
        Begin::New => {
            let response = run(state, req, handler).await;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let kept = if parts.status.is_server_error() {
                store.idempotency_abandon(&key, &key_id).await
            } else {
                let text = String::from_utf8_lossy(&bytes);
                let sealed = state
                    .plane
                    .sync
                    .secrets
                    .seal(&answer_secret(&key_id, &key), &text);
                let sealed = serde_json::to_string(&sealed).expect("a sealed value serializes");
                store
                    .idempotency_finish(&key, &key_id, parts.status.as_u16(), &sealed)
                    .await
            };
            if let Err(e) = kept {
                tracing::warn!(error = %format!("{e:#}"), "recording an idempotent answer; a retry may be refused as in flight");
            }
            Response::from_parts(parts, Full::new(bytes))
        }
    }
}

/// One endpoint: its path template (also the `route` label of
/// `sluice_admin_requests_total`, never the raw path; a `{...}` segment matches any one
/// segment) and a handler per method.
struct Route {
    template: &'static str,
    methods: &'static [(Method, Handler)],
}

impl Route {
    fn matches(&self, segments: &[&str]) -> bool {
        let pattern = self.template.trim_start_matches('/').split('/');
        pattern.clone().count() == segments.len()
            && pattern
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == *s)
    }
}

/// Every endpoint of the API. `openapi.json` describes exactly these (a test checks).
static ROUTES: &[Route] = &[
    Route {
        template: "/healthz",
        methods: &[(Method::GET, Now(healthz))],
    },
    Route {
        template: "/readyz",
        methods: &[(Method::GET, Later(readyz))],
    },
    Route {
        template: "/metrics",
        methods: &[(Method::GET, Now(metrics))],
    },
    Route {
        template: "/v1/openapi.json",
        methods: &[(Method::GET, Now(openapi))],
    },
    Route {
        template: "/v1/pools",
        methods: &[(Method::GET, Now(pools))],
    },
    Route {
        template: "/v1/tenants",
        methods: &[
            (Method::GET, Later(tenants::list)),
            (Method::POST, Later(tenants::create)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}",
        methods: &[
            (Method::GET, Later(tenants::get)),
            (Method::PATCH, Later(tenants::patch)),
            (Method::DELETE, Later(tenants::delete)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}/roles",
        methods: &[
            (Method::GET, Later(roles::list)),
            (Method::POST, Later(roles::create)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}/roles/{name}",
        methods: &[(Method::DELETE, Later(roles::delete))],
    },
    Route {
        template: "/v1/tenants/{id}/roles/{name}/rotate",
        methods: &[(Method::POST, Later(roles::rotate))],
    },
    Route {
        template: "/v1/jobs/{id}",
        methods: &[(Method::GET, Later(tenants::job))],
    },
    Route {
        template: "/v1/tenants/{id}/stats",
        methods: &[(Method::GET, Now(tenant_stats))],
    },
    Route {
        template: "/v1/tenants/{id}/suspend",
        methods: &[(Method::POST, Later(tenants::suspend))],
    },
    Route {
        template: "/v1/tenants/{id}/resume",
        methods: &[(Method::POST, Later(tenants::resume))],
    },
    Route {
        template: "/v1/tenants/{id}/bans",
        methods: &[
            (Method::GET, Now(tenants::bans)),
            (Method::DELETE, Later(tenants::lift_bans)),
        ],
    },
    Route {
        template: "/v1/api-keys",
        methods: &[
            (Method::GET, Later(keys_api::list)),
            (Method::POST, Later(keys_api::create)),
        ],
    },
    Route {
        template: "/v1/api-keys/{id}",
        methods: &[(Method::DELETE, Later(keys_api::revoke))],
    },
    Route {
        template: "/v1/audit-events",
        methods: &[(Method::GET, Later(audit_api::list))],
    },
    Route {
        template: "/v1/audit-events/verify",
        methods: &[(Method::GET, Later(audit_api::verify))],
    },
];

/// Every (path template, method) the API serves; `HEAD` is also accepted wherever
/// `GET` is.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(|(m, _)| (r.template, m.as_str())))
        .collect()
}

/// Matches the request to a route and method.
fn route(req: &Req) -> (&'static str, Result<Handler, ApiError>) {
    let segments = req.segments();
    let Some(route) = ROUTES.iter().find(|r| r.matches(&segments)) else {
        let path = req.head.uri.path();
        let e = ApiError::not_found(format!("no such endpoint: {path}"));
        return ("other", Err(e));
    };
    let template = route.template;
    let method = if req.head.method == Method::HEAD {
        Method::GET
    } else {
        req.head.method.clone()
    };
    match route.methods.iter().find(|(m, _)| *m == method) {
        Some((_, handler)) => (template, Ok(*handler)),
        None => {
            let allowed: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
            let e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} {template} is not supported (allowed: {})",
                    req.head.method,
                    allowed.join(", ")
                ),
            );
            (template, Err(e))
        }
    }
}

/// The caller behind the request's bearer token, if it may act as `needed`.
pub(crate) fn authorize(state: &State, req: &Req, needed: Role) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let header = req
        .head
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <key>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("expected Authorization: Bearer <key>"))?;
    let caller = state
        .keys
        .verify(token.trim())
        .ok_or_else(|| unauthorized("unknown API key"))?;
    if caller.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs a key with role {needed:?} or higher").to_lowercase(),
        ));
    }
    Ok(caller)
}

fn healthz(_: &State, _: &Req) -> Result<Response<Body>, ApiError> {
    Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

/// `GET /readyz`: 503 only while draining. An unreachable control store does not make
/// the process unready (the data plane serves the catalog it has); the body says so.
fn readyz<'a>(state: &'a State, _: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let tenants = state.sources.catalog.snapshot().len();
        let draining = state.draining.is_cancelled();
        let body = serde_json::json!({
            "ready": !draining,
            "reason": if draining { "shutting down: draining client connections" } else { "serving" },
            "catalog": {"tenants": tenants, "source": state.plane.sync.source()},
            "control_store": state.control.status().await,
        });
        let status = if draining {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        Ok(json(status, &body))
    })
}

fn metrics(state: &State, _: &Req) -> Result<Response<Body>, ApiError> {
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

/// This API described in OpenAPI 3.1 (`admin-api/openapi.json`), served as is.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

fn openapi(_: &State, _: &Req) -> Result<Response<Body>, ApiError> {
    let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Query parameters of a list request: `tenant`, `limit`, `cursor`.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub tenant: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub ip: Option<String>,
}

/// The query string's `key=value` pairs, values percent-decoded (400 if they cannot
/// be).
pub(crate) fn query_pairs(req: &Req) -> Result<Vec<(&str, String)>, ApiError> {
    req.head
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| ApiError::bad_request(format!("bad percent-encoding in {key}")))?;
            Ok((key, value))
        })
        .collect()
}

pub(crate) fn list_query(req: &Req) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    for (key, value) in query_pairs(req)? {
        match key {
            "tenant" => q.tenant = Some(value),
            "cursor" => q.cursor = Some(value),
            "ip" => q.ip = Some(value),
            "limit" => {
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1..={MAX_PAGE}"))
                    })?;
                q.limit = Some(n);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    Ok(q)
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /v1/pools`: every pool, sorted by tenant/database/role; `cursor` is the
/// `next_cursor` of the previous page.
fn pools(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
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
fn tenant_stats(state: &State, req: &Req) -> Result<Response<Body>, ApiError> {
    authorize(state, req, Role::Viewer)?;
    let segments = req.segments();
    let id = segments[2];
    let catalog = state.sources.catalog.snapshot();
    let tenant = catalog
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("tenant \"{id}\" does not exist")))?;
    let view = stats::tenant_view(
        &tenant.id,
        &state.sources.pools,
        &state.sampler,
        &state.sources.rejections,
    );
    Ok(json(StatusCode::OK, &view))
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_rejects_what_is_not_utf8_or_hex() {
        assert_eq!(percent_decode("acme").as_deref(), Some("acme"));
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
