//! What every endpoint works with: the request read whole ([`Req`]: its head, path
//! segments, JSON body and query parameters), the caller behind its bearer token
//! ([`authorize`]), and the shape of an endpoint ([`Handler`]). Imports no endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use control::keys::{Caller, Role};
use hyper::header::AUTHORIZATION;
use hyper::{Response, StatusCode};

use crate::error::ApiError;
use crate::response::Body;
use crate::state::State;

/// Most items a list returns at once.
pub(crate) const MAX_PAGE: usize = 1000;

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
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let what = plain_words(&e.into_inner().to_string());
            ApiError::invalid(if path == "." {
                what
            } else {
                format!("{path}: {what}")
            })
        })
    }
}

/// serde's message with Rust's type names put in plain words: `invalid type: string
/// "3", expected usize` becomes `invalid type: string "3", expected a whole number`.
fn plain_words(message: &str) -> String {
    const NAMES: [(&str, &str); 10] = [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object"),
    ];
    let mut out = message.to_owned();
    for (rust, plain) in NAMES {
        if let Some(at) = out.find(rust) {
            // Only a whole word: `expected u8` must not match `expected u8x`.
            let end = at + rust.len();
            if !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, plain);
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::{percent_decode, plain_words};

    #[test]
    fn rust_type_names_become_plain_words() {
        assert_eq!(
            plain_words("invalid type: string \"3\", expected usize"),
            "invalid type: string \"3\", expected a whole number"
        );
        assert_eq!(
            plain_words("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a whole number"
        );
        assert_eq!(
            plain_words("unknown field `colour`"),
            "unknown field `colour`"
        );
    }

    #[test]
    fn percent_decoding_rejects_what_is_not_utf8_or_hex() {
        assert_eq!(percent_decode("acme").as_deref(), Some("acme"));
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
