//! The fake's HTTP layer, as pveproxy's: TLS, token auth, parameters from the query and
//! a form or JSON body, the `{"data": …}` envelope, errors with their text in the reason
//! phrase (and the body's `message` unless legacy), and the connection closed after an
//! error.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, SERVER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::api;
use super::call::{Answer, Call};
use super::guests::Shared;

/// pveproxy's cap on a request body.
const MAX_POST: usize = 512 * 1024;

pub(crate) async fn serve(
    listener: TcpListener,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    shared: Arc<Shared>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("the fake's certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    // Authentication first, as pveproxy: no header "No ticket", a bad one after a delay.
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(value) = header.as_deref().and_then(token_value) else {
        return empty(401, "No ticket");
    };
    let authorized = value
        .rsplit_once('=')
        .is_some_and(|(id, secret)| id == shared.token_id && secret == shared.token_secret);
    if !authorized {
        tokio::time::sleep(shared.options.auth_failure_delay).await;
        return empty(401, "Authentication failed!");
    }

    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), MAX_POST).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(shared, Answer::error(501, "for data too large")),
    };
    let Some(rest) = path.strip_prefix("/api2/json/") else {
        return reply(shared, Answer::error(501, "no such uri"));
    };
    if !body.is_empty() && matches!(method.as_str(), "GET" | "DELETE") {
        return reply(
            shared,
            Answer::error(501, format!("Unexpected content for method '{method}'")),
        );
    }
    let mut params = BTreeMap::new();
    if !body.is_empty() {
        if content_type.starts_with("application/json") {
            let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&body) else {
                return reply(shared, Answer::error(400, "malformed JSON body"));
            };
            for (k, v) in object {
                let v = match v {
                    Value::String(s) => s,
                    Value::Bool(b) => u8::from(b).to_string(),
                    other => other.to_string(),
                };
                params.insert(k, v);
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            params.extend(form_decode(&String::from_utf8_lossy(&body)));
        } else {
            return reply(
                shared,
                Answer::error(
                    506,
                    format!("upload 'Content-Type '{content_type}' not implemented"),
                ),
            );
        }
    }
    params.extend(form_decode(&query));
    let call = Call {
        method,
        segments: rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect(),
        params,
    };
    let answer = api::route(shared, call);
    reply(shared, answer)
}

/// The value after `PVEAPIToken=` or `PVEAPIToken ` (URI-unescaped).
fn token_value(header: &str) -> Option<String> {
    let start = header.find("PVEAPIToken")?;
    let preceded_ok = start == 0 || header[..start].ends_with(char::is_whitespace);
    let rest = &header[start + "PVEAPIToken".len()..];
    let rest = rest.strip_prefix('=').or_else(|| rest.strip_prefix(' '))?;
    let value = rest.split(';').next()?;
    preceded_ok.then(|| percent_decode(value))
}

fn reply(shared: &Shared, answer: Answer) -> Response<Full<Bytes>> {
    match answer {
        Answer::Data(data) => respond(200, None, json!({ "data": data })),
        Answer::Error {
            status,
            message,
            errors,
        } => {
            let first_line = message.lines().next().unwrap_or("").to_owned();
            let mut body = json!({ "data": null });
            if !shared.options.legacy_errors || status == 400 {
                if let Some(errors) = errors {
                    body["errors"] = errors;
                }
            }
            if !shared.options.legacy_errors {
                body["message"] = Value::String(format!("{message}\n"));
            }
            respond(status, Some(&first_line), body)
        }
    }
}

fn respond(status: u16, reason: Option<&str>, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    headers.insert(SERVER, HeaderValue::from_static("pve-api-daemon/3.0"));
    if status >= 400 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(reason) = reason {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.to_owned()) {
            response.extensions_mut().insert(phrase);
        }
    }
    response
}

/// A 401 as pveproxy sends it: the reason phrase and no body at all.
fn empty(status: u16, reason: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.to_owned()) {
        response.extensions_mut().insert(phrase);
    }
    response
}

fn form_decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
