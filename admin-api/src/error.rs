//! `ApiError`: what a failed request answers, `{"error":{"code","message"}}` with its
//! status, and how the control plane's errors read to an API caller.

use control::settings::InvalidSetting;
use control::store::ChangeError;
use control::StoreUnavailable;
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::response::{json, Body};

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

    pub(crate) fn response(&self) -> Response<Body> {
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

impl From<StoreUnavailable> for ApiError {
    /// 503 `unavailable`: the store is what is missing.
    fn from(e: StoreUnavailable) -> Self {
        unavailable(e.to_string())
    }
}

impl From<InvalidSetting> for ApiError {
    fn from(e: InvalidSetting) -> Self {
        ApiError::invalid(e.0)
    }
}

/// 503 `unavailable`.
pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

/// A store failure as the API says it: 503, the store is what is missing.
pub(crate) fn store_error(what: &str) -> impl FnOnce(anyhow::Error) -> ApiError + '_ {
    move |e| {
        tracing::warn!(error = %format!("{e:#}"), "{what}");
        unavailable(format!("{what}: {e:#}"))
    }
}

/// How a refused store change reads to the caller.
pub(crate) fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Exists(what) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what} already exists"),
        ),
        ChangeError::Taken(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        ChangeError::Missing(what) => ApiError::not_found(format!("{what} does not exist")),
        ChangeError::Conflict(what) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "tenant {what} was changed concurrently or is in the wrong state; read it again"
            ),
        ),
        ChangeError::Store(e) => store_error("the control store")(e),
    }
}
