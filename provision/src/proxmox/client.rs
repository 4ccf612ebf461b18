//! A small Proxmox VE API client: HTTPS with a pinned certificate or a CA, the
//! `PVEAPIToken` header, the `{"data": …}` envelope, and both error formats (the text in
//! the body's `message` since libpve-http-server-perl 5.2.0, and only in the HTTP reason
//! phrase before it).
//!
//! One TLS connection per request: the driver makes few calls, and pveproxy closes the
//! connection after every error anyway. Request bodies are form-encoded with a
//! `Content-Length` (pveproxy does not read chunked bodies); GET and DELETE parameters go
//! in the query string (a body on DELETE gets 501).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{client_config, PveTls};

/// How long one request may take, connection included (pveproxy itself gives up on a
/// proxied call after 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// Tries of a read that fails transiently.
const READ_ATTEMPTS: u32 = 4;
/// The first pause between them (doubling).
const READ_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The largest answer read (the driver's answers are a few KiB).
const MAX_BODY: usize = 4 << 20;

/// Why a call failed, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// 401: a wrong, disabled or expired token. Never retried.
    #[error(
        "Proxmox VE rejected the API token {token_id:?} (HTTP 401 {reason}): check the token \
         id and secret, and that the token and its user are enabled and not expired"
    )]
    Unauthorized { token_id: String, reason: String },
    /// Any other error answer. `message` is the body's `message`, else the reason phrase,
    /// followed by the per-parameter `errors` of a 400.
    #[error("Proxmox VE answered {method} {path} with HTTP {status}: {message}")]
    Api {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
    /// No answer: connection, TLS or timeout.
    #[error("calling Proxmox VE ({method} {path}): {reason}")]
    Transport {
        method: Method,
        path: String,
        reason: String,
    },
    /// A task that ended with an error; `exitstatus` is Proxmox's text.
    #[error("Proxmox VE task {upid} failed: {exitstatus}")]
    Task { upid: String, exitstatus: String },
}

impl PveError {
    fn message(&self) -> &str {
        match self {
            PveError::Api { message, .. } => message,
            PveError::Task { exitstatus, .. } => exitstatus,
            _ => "",
        }
    }

    /// The guest (or its config file) does not exist: a 500, never a 404.
    pub fn is_missing(&self) -> bool {
        let m = self.message();
        matches!(self, PveError::Api { status: 500, .. })
            && (m.contains("does not exist") || m.contains("No such file or directory"))
    }

    /// The VMID is taken (the nextid race).
    pub fn is_already_exists(&self) -> bool {
        self.message().contains("already exists")
    }

    /// `CT is locked (…)`: re-read the state and try again later.
    pub fn is_locked(&self) -> bool {
        self.message().contains("is locked")
    }

    /// Worth retrying as is: no answer, the inter-node proxy's 595–599, flock timeouts,
    /// a missing worker UPID, or a concurrent config edit.
    pub fn is_transient(&self) -> bool {
        let m = self.message();
        match self {
            PveError::Transport { .. } => true,
            PveError::Api { status, .. } if (595..=599).contains(status) => true,
            PveError::Api { .. } | PveError::Task { .. } => {
                m.contains("got timeout")
                    || m.contains("got no worker upid")
                    || m.contains("detected modified configuration")
            }
            PveError::Unauthorized { .. } => false,
        }
    }
}

/// Where the API is and how to authenticate; cheap to share.
pub struct Client {
    /// `host` for the TCP connection (brackets removed from an IPv6 literal).
    host: String,
    port: u16,
    /// The `Host` header (as written in the URL).
    authority: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_id: String,
    /// `PVEAPIToken=USER@REALM!TOKENID=SECRET`, marked sensitive.
    auth: HeaderValue,
}

impl std::fmt::Debug for Client {
    /// Never shows the token secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("authority", &self.authority)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Checks the URL (`https://HOST[:PORT][/]`, port 8006 by default) and the token, and
    /// builds the TLS config. Connects to nothing.
    pub fn new(url: &str, token_id: &str, secret: &str, tls: &PveTls) -> anyhow::Result<Client> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("proxmox url {url:?}: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "proxmox url {url:?} must start with https://"
        );
        anyhow::ensure!(
            matches!(uri.path(), "" | "/" | "/api2/json" | "/api2/json/"),
            "proxmox url {url:?} must be https://HOST:PORT, without a path"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("proxmox url {url:?} has no host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(8006);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| anyhow::anyhow!("proxmox url {url:?}: bad host name: {e}"))?;
        anyhow::ensure!(
            valid_token_id(token_id),
            "proxmox token_id {token_id:?} must look like USER@REALM!TOKENNAME"
        );
        anyhow::ensure!(!secret.is_empty(), "proxmox token_secret is empty");
        let mut auth = HeaderValue::from_str(&format!("PVEAPIToken={token_id}={secret}"))
            .map_err(|_| anyhow::anyhow!("the proxmox token holds characters a header cannot"))?;
        auth.set_sensitive(true);
        Ok(Client {
            host,
            port,
            authority: authority.to_string(),
            server_name,
            tls: TlsConnector::from(Arc::new(client_config(tls)?)),
            token_id: token_id.to_owned(),
            auth,
        })
    }

    /// A read; retried (reads change nothing) up to [`READ_ATTEMPTS`] times on
    /// transient errors.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, PveError> {
        let mut attempt = 0;
        loop {
            match self.call(Method::GET, path, query, &[]).await {
                Err(e) if e.is_transient() && attempt + 1 < READ_ATTEMPTS => {
                    tracing::debug!(path, error = %e, "proxmox read failed; retrying");
                    tokio::time::sleep(READ_RETRY_PAUSE * (1 << attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn post(&self, path: &str, form: &[(&str, String)]) -> Result<Value, PveError> {
        self.call(Method::POST, path, &[], form).await
    }

    pub async fn put(&self, path: &str, form: &[(&str, String)]) -> Result<Value, PveError> {
        self.call(Method::PUT, path, &[], form).await
    }

    pub async fn delete(&self, path: &str, query: &[(&str, String)]) -> Result<Value, PveError> {
        self.call(Method::DELETE, path, query, &[]).await
    }

    /// One call; `path` is relative to `/api2/json`, its segments already encoded
    /// ([`segment`]). Answers the envelope's `data`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        form: &[(&str, String)],
    ) -> Result<Value, PveError> {
        let transport = |reason: String| PveError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            reason,
        };
        let exchange = self.exchange(method.clone(), path, query, form);
        let (status, reason, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(transport)?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(PveError::Unauthorized {
                token_id: self.token_id.clone(),
                reason,
            });
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return match json {
                Some(Value::Object(mut object)) => Ok(object.remove("data").unwrap_or(Value::Null)),
                _ => Err(transport(format!(
                    "HTTP {status} with a body that is not a JSON object"
                ))),
            };
        }
        Err(PveError::Api {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            message: error_message(json.as_ref(), &reason),
        })
    }

    /// Connects, sends, and reads the status, reason phrase and body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        form: &[(&str, String)],
    ) -> Result<(StatusCode, String, Bytes), String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "proxmox API connection ended");
            }
        });

        let mut uri = format!("/api2/json/{path}");
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&form_encode(query));
        }
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, &self.authority)
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, self.auth.clone());
        let body = if form.is_empty() {
            Bytes::new()
        } else {
            request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            Bytes::from(form_encode(form))
        };
        if !body.is_empty() {
            request = request.header(CONTENT_LENGTH, body.len());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let status = response.status();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .or_else(|| status.canonical_reason().map(str::to_owned))
            .unwrap_or_default();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, reason, body))
    }
}

/// The error text: the body's `message` when there is one (new servers), else the reason
/// phrase (old servers), plus each parameter error of a 400.
fn error_message(body: Option<&Value>, reason: &str) -> String {
    let message = body
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(reason)
        .to_owned();
    let errors = body
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_object)
        .map(|errors| {
            errors
                .iter()
                .map(|(param, text)| {
                    let text = text
                        .as_str()
                        .map_or_else(|| text.to_string(), str::to_owned);
                    format!("{param}: {}", text.trim())
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|e| !e.is_empty());
    match errors {
        Some(errors) => format!("{message} ({errors})"),
        None => message,
    }
}

/// `USER@REALM!TOKENNAME`, token name `[A-Za-z][A-Za-z0-9.\-_]+`.
fn valid_token_id(id: &str) -> bool {
    let Some((user, name)) = id.rsplit_once('!') else {
        return false;
    };
    let mut chars = name.chars();
    user.contains('@')
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Percent-encodes everything but RFC 3986's unreserved characters: for a path segment
/// (a UPID holds `:`, `!` and `@`; a CIDR holds `/`) and for form values.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn form_encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", segment(k), segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A number that Perl may have sent as a JSON number or a string.
pub fn lenient_u64(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string field, absent or null as None.
pub fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_text_comes_from_the_body_or_the_reason_phrase() {
        let new = json!({"data": null, "message": "CT is locked (disk)\n"});
        assert_eq!(error_message(Some(&new), "x"), "CT is locked (disk)");
        let old = json!({"data": null});
        assert_eq!(
            error_message(Some(&old), "CT is locked (disk)"),
            "CT is locked (disk)"
        );
        let param = json!({"data": null, "message": "Parameter verification failed.\n",
            "errors": {"vmid": "VM 104 already exists\n"}});
        assert_eq!(
            error_message(Some(&param), ""),
            "Parameter verification failed. (vmid: VM 104 already exists)"
        );
    }

    #[test]
    fn token_ids_and_encoding() {
        assert!(valid_token_id("sluice@pve!prov"));
        assert!(!valid_token_id("sluice@pve"));
        assert!(!valid_token_id("sluice!prov"));
        assert_eq!(
            segment("UPID:pve1:0000:x:root@pam!t:"),
            "UPID%3Apve1%3A0000%3Ax%3Aroot%40pam%21t%3A"
        );
        assert_eq!(lenient_u64(Some(&json!("101"))), Some(101));
        assert_eq!(lenient_u64(Some(&json!(101))), Some(101));
        assert_eq!(lenient_u64(Some(&json!(null))), None);
    }
}
