//! The admin listener: hyper HTTP/1.1, one task per connection, each request read whole
//! (head within 10 s and 64 KiB, body within 64 KiB), routed by the table in
//! [`crate::routes`], counted by route template; and `Idempotency-Key` for every POST.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use control::keys::Role;

use crate::error::{unavailable, ApiError};
use crate::request::Handler::{Later, Now};
use crate::request::{authorize, Handler, Req};
use crate::response::Body;
use crate::routes::route;
use crate::state::State;

/// Longest request head accepted (the API takes small JSON bodies only).
const MAX_HEAD: usize = 64 * 1024;
/// A client gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body the API reads (its bodies are small JSON documents).
const MAX_BODY: usize = 64 * 1024;

/// Serves the admin API on `listener` until `shutdown`, then finishes the requests in
/// progress and returns. At `stop_accepting` the listener is let go earlier (the
/// connections already open are served on until `shutdown`).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
    stop_accepting: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = stop_accepting.cancelled() => {
                tracing::info!("admin listener: stopped accepting (the new process answers there)");
                drop(listener);
                shutdown.cancelled().await;
                break;
            }
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
    use control::store::idempotency::Begin;
    let store = match state.plane.control.store() {
        Ok(store) => store,
        Err(e) => return ApiError::from(e).response(),
    };
    let begun = match store.idempotency_begin(&key, &key_id, &hash).await {
        Ok(begun) => begun,
        Err(e) => return unavailable(format!("the control store: {e:#}")).response(),
    };
    match begun {
        Begin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let secrets = &state.plane.sync.secrets;
            let body = serde_json::from_str::<control::secrets::Sealed>(&body)
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
