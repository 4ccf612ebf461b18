//! A small HTTP/1.1 client of Sluice's own admin API, shared by the CLI commands that
//! talk to a running Sluice (`stats`, `tenants`, `roles`, `audit`).
//!
//! One TCP connection per request: the CLI makes a handful of requests, so a pool
//! would buy nothing, and a fresh connection can never be a half-closed stale one.

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
pub mod fake;
mod idempotency;
pub mod pages;

pub use idempotency::IdempotencyKey;

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT,
};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Whole-request budget: connect, send, and read the complete answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read; the API's biggest page is 1000 pools, far below this.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How much of a non-JSON error body is worth showing to a person.
const MAX_RAW_ERROR: usize = 300;

/// Where the admin API is and how to authenticate to it.
pub struct ApiClient {
    /// `http://authority/prefix`, without a trailing slash: for messages.
    base: String,
    /// `host:port` to connect to.
    connect_to: String,
    /// Sent as the `Host` header: the authority as the user wrote it.
    host: HeaderValue,
    /// Path prefix (e.g. `/sluice` behind a path-routing proxy), or empty.
    prefix: String,
    /// `Bearer <key>`, marked sensitive so hyper never logs it.
    authorization: Option<HeaderValue>,
}

/// Hand-written so a `{:?}` of the client can never print the API key.
impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// The API answered with a non-2xx status; `code` and `message` come from its
    /// `{"error":{"code","message"}}` body, or the raw body when it is not that.
    Status {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// No complete answer within [`TIMEOUT`]. The request may have been applied.
    Timeout { url: String },
    /// No connection could be made: nothing was sent.
    Unreachable { url: String, detail: String },
    /// The connection broke off after it was made. The request may have been applied.
    Transport { url: String, detail: String },
    /// A 2xx answer whose body is not JSON.
    BadBody { url: String, detail: String },
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status {
                status,
                code,
                message,
            } => {
                write!(f, "{} {code}: {message}", status.as_u16())?;
                if *status == StatusCode::UNAUTHORIZED {
                    // What a newcomer needs next: where the key goes.
                    write!(f, " (pass an admin API key with --token or SLUICE_TOKEN)")?;
                }
                Ok(())
            }
            ApiError::Timeout { url } => {
                write!(f, "no answer from {url} within {}s", TIMEOUT.as_secs())
            }
            ApiError::Unreachable { url, detail } => write!(f, "{url}: {detail}"),
            ApiError::Transport { url, detail } => {
                write!(f, "{url}: {detail}")?;
                if detail.contains("invalid HTTP version")
                    || detail.contains("connection closed before message completed")
                {
                    // What a Postgres listener does with an HTTP request: it answers
                    // with bytes that are not HTTP, or closes without a word.
                    write!(
                        f,
                        " (no HTTP answer: is --api the admin listener, [admin] listen, and not the proxy's port?)"
                    )?;
                }
                Ok(())
            }
            ApiError::BadBody { url, detail } => {
                write!(f, "{url}: the answer is not JSON: {detail}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// Whether the server may have received and applied the request although no
    /// answer came back: what makes a retry with the same idempotency key worth it.
    pub fn may_have_been_applied(&self) -> bool {
        matches!(self, ApiError::Timeout { .. } | ApiError::Transport { .. })
    }
}

impl ApiClient {
    /// `base_url` is `http://host[:port][/prefix]` (a bare `host:port` means http).
    /// `token` is an admin API key; surrounding whitespace (a newline left by a key
    /// file) is ignored.
    pub fn new(base_url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let (authority, prefix) = split_base_url(base_url)?;
        let (host, port) = match authority.port_u16() {
            Some(port) => (authority.host(), port),
            None => (authority.host(), 80),
        };
        let authorization = token
            .map(|t| bearer(t.trim()))
            .transpose()
            .context("the API key (--token / SLUICE_TOKEN)")?;
        Ok(ApiClient {
            base: format!("http://{authority}{prefix}"),
            connect_to: format!("{host}:{port}"),
            host: HeaderValue::from_str(authority.as_str())
                .context("the host of the API URL is not a valid Host header")?,
            prefix,
            authorization,
        })
    }

    /// The normalized base URL, for headers and messages.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path_and_query` (which starts with `/`), expecting JSON back.
    pub async fn get_json(&self, path_and_query: &str) -> Result<Value, ApiError> {
        self.request(Call::new(Method::GET, path_and_query)).await
    }

    /// `POST path` with `body` (none: an empty body) as JSON.
    pub async fn post_json(&self, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        self.request(Call {
            body,
            ..Call::new(Method::POST, path)
        })
        .await
    }

    /// `POST path` with an `Idempotency-Key` header: the server answers a repeat of the
    /// same key with the first answer instead of acting twice.
    pub async fn post_json_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: &IdempotencyKey,
    ) -> Result<Value, ApiError> {
        self.request(Call {
            body: Some(body),
            idempotency_key: Some(key),
            ..Call::new(Method::POST, path)
        })
        .await
    }

    /// `PATCH path` with `body` as JSON.
    pub async fn patch_json(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request(Call {
            body: Some(body),
            ..Call::new(Method::PATCH, path)
        })
        .await
    }

    /// `DELETE path`; an empty answer (204) is `null`.
    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Call::new(Method::DELETE, path)).await
    }

    /// `GET path_and_query` for an answer that is not JSON (a CSV): its body as text.
    pub async fn get_text(&self, path_and_query: &str) -> Result<String, ApiError> {
        let call = Call::new(Method::GET, path_and_query);
        let url = format!("{}{}", self.base, call.path_and_query);
        let bytes = self.request_bytes(call, &url).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ApiError::BadBody {
            url,
            detail: e.to_string(),
        })
    }

    /// One request on a fresh connection, bounded by [`TIMEOUT`]; a 2xx answer's body.
    async fn request_bytes(&self, call: Call<'_>, url: &str) -> Result<Bytes, ApiError> {
        let exchange = self.exchange(call, url);
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                url: url.to_owned(),
            })??;
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        Ok(bytes)
    }

    /// One request on a fresh connection, bounded by [`TIMEOUT`]; a 2xx answer's body
    /// is parsed as JSON (`null` when empty).
    async fn request(&self, call: Call<'_>) -> Result<Value, ApiError> {
        let url = format!("{}{}", self.base, call.path_and_query);
        let bytes = self.request_bytes(call, &url).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadBody {
            url,
            detail: e.to_string(),
        })
    }

    /// Connects, sends, and reads the whole answer. The connection is driven in this
    /// future (not a spawned task) so that a timeout drops it along with the request.
    async fn exchange(&self, call: Call<'_>, url: &str) -> Result<(StatusCode, Bytes), ApiError> {
        let transport = |detail: String| ApiError::Transport {
            url: url.to_owned(),
            detail,
        };
        let unreachable = |detail: String| ApiError::Unreachable {
            url: url.to_owned(),
            detail,
        };
        let request = self
            .build_request(call)
            .map_err(|e| unreachable(format!("cannot build the request: {e:#}")))?;
        let tcp = TcpStream::connect(&self.connect_to)
            .await
            .map_err(|e| unreachable(format!("cannot connect to {}: {e}", self.connect_to)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let send = async move {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            // `sender` is dropped here, which lets `conn` finish.
            let bytes = Limited::new(body, MAX_BODY).collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts.status, bytes))
        };
        // The request either completes or fails with the connection's error, so the
        // connection's own result adds nothing.
        let (answer, _) = tokio::join!(send, conn);
        answer.map_err(|e| transport(error_chain(e.as_ref())))
    }

    fn build_request(&self, call: Call<'_>) -> anyhow::Result<Request<Full<Bytes>>> {
        let uri: Uri = format!("{}{}", self.prefix, call.path_and_query)
            .parse()
            .context("invalid request path")?;
        let mut builder = Request::builder()
            .method(call.method)
            .uri(uri)
            .header(HOST, self.host.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .header(CONNECTION, "close");
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(key) = call.idempotency_key {
            builder = builder.header(IdempotencyKey::HEADER, key.header_value());
        }
        let bytes = match call.body {
            Some(value) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value)?)
            }
            None => Bytes::new(),
        };
        Ok(builder.body(Full::new(bytes))?)
    }
}

/// What one request sends.
struct Call<'a> {
    method: Method,
    /// Starts with `/`; the client's prefix goes in front.
    path_and_query: &'a str,
    /// Sent as JSON when given.
    body: Option<&'a Value>,
    idempotency_key: Option<&'a IdempotencyKey>,
}

impl<'a> Call<'a> {
    fn new(method: Method, path_and_query: &'a str) -> Self {
        Call {
            method,
            path_and_query,
            body: None,
            idempotency_key: None,
        }
    }
}

/// Splits `http://host[:port][/prefix]` into its authority and its prefix (no
/// trailing slash; empty for none).
fn split_base_url(base_url: &str) -> anyhow::Result<(hyper::http::uri::Authority, String)> {
    let base_url = base_url.trim();
    let with_scheme = if base_url.contains("://") {
        base_url.to_owned()
    } else {
        format!("http://{base_url}")
    };
    let uri: Uri = with_scheme
        .parse()
        .with_context(|| format!("invalid admin API URL {base_url:?}"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => {}
        Some("https") => bail!(
            "{base_url}: TLS to the admin API is not supported yet; use http:// \
             (the admin listener itself speaks plain HTTP)"
        ),
        _ => bail!("{base_url}: the admin API URL must start with http://"),
    }
    let Some(authority) = uri.authority().cloned() else {
        bail!("{base_url}: the admin API URL needs a host, as in http://127.0.0.1:8080");
    };
    if authority.as_str().contains('@') {
        bail!("{base_url}: credentials in the URL are not supported; use --token");
    }
    if uri.query().is_some() {
        bail!("{base_url}: the admin API URL cannot have a query string");
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((authority, prefix))
}

fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    if token.is_empty() {
        bail!("is empty");
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("contains characters not allowed in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The API's error from a non-2xx answer.
fn status_error(status: StatusCode, body: &[u8]) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<Outer>(body) {
        Ok(Outer { error }) => (error.code, error.message),
        Err(_) => (
            status.canonical_reason().unwrap_or("error").to_owned(),
            raw_excerpt(body),
        ),
    };
    ApiError::Status {
        status,
        code,
        message,
    }
}

/// A non-JSON body, made safe and short enough to print on one line.
fn raw_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match one_line.char_indices().nth(MAX_RAW_ERROR) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None if one_line.is_empty() => "(empty body)".to_owned(),
        None => one_line,
    }
}

/// An error and its sources, as `outer: inner: innermost` (hyper's own `Display`
/// shows only the outermost, e.g. "connection error" without the OS reason).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Percent-encodes `s` for a path segment or a query value: everything but RFC 3986's
/// unreserved characters, so a database named `a&b` or a cursor `t/db/role` cannot
/// change the request's meaning.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_split_into_authority_and_prefix() {
        let c = ApiClient::new("http://127.0.0.1:8080", None).expect("valid");
        assert_eq!(
            (c.base_url(), c.connect_to.as_str()),
            ("http://127.0.0.1:8080", "127.0.0.1:8080")
        );
        assert_eq!(c.prefix, "");
        let c = ApiClient::new("http://admin.internal/sluice/", None).expect("valid");
        assert_eq!(c.connect_to, "admin.internal:80");
        assert_eq!(c.prefix, "/sluice");
        assert_eq!(c.base_url(), "http://admin.internal/sluice");
        let c = ApiClient::new("[::1]:9000", None).expect("valid");
        assert_eq!(c.connect_to, "[::1]:9000");
        assert_eq!(c.host, "[::1]:9000");
    }

    #[test]
    fn unsupported_urls_are_refused_with_a_reason() {
        let err = |url: &str| ApiClient::new(url, None).expect_err(url).to_string();
        assert!(err("https://127.0.0.1:8080").contains("TLS to the admin API is not supported yet"));
        assert!(err("ftp://x").contains("must start with http://"));
        assert!(err("http://u:p@x:1").contains("credentials"));
        assert!(err("http://x:1/?a=b").contains("query string"));
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let c = ApiClient::new("http://x:1", Some("abc\n".into())).expect("valid");
        assert_eq!(c.authorization.as_ref().expect("set"), "Bearer abc");
        assert!(!format!("{c:?}").contains("abc"));
        assert!(ApiClient::new("http://x:1", Some("a\u{7}b".into())).is_err());
        assert!(ApiClient::new("http://x:1", Some(" ".into())).is_err());
    }

    #[test]
    fn error_bodies_become_code_and_message() {
        let body = br#"{"error":{"code":"unauthorized","message":"unknown API key"}}"#;
        let e = status_error(StatusCode::UNAUTHORIZED, body);
        assert_eq!(
            e.to_string(),
            "401 unauthorized: unknown API key (pass an admin API key with --token or SLUICE_TOKEN)"
        );
        let e = status_error(StatusCode::BAD_GATEWAY, b"<html>\n upstream\tdown </html>");
        assert_eq!(
            e.to_string(),
            "502 Bad Gateway: <html> upstream down </html>"
        );
        let e = status_error(StatusCode::NOT_FOUND, b"");
        assert_eq!(e.to_string(), "404 Not Found: (empty body)");
        let long = "x".repeat(MAX_RAW_ERROR + 10);
        let e = status_error(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes());
        assert!(e.to_string().ends_with("x..."));
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("acme-1.x_y~"), "acme-1.x_y~");
        assert_eq!(encode_component("t/db role&é"), "t%2Fdb%20role%26%C3%A9");
    }
}
