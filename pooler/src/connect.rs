//! Opening a server connection: transport, optional TLS, startup, authentication, and
//! the parameters and key the server reports before its first ReadyForQuery.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use wire::messages::{self, Authentication, ErrorFields};
use wire::scram::{ClientCredential, ScramClient, SCRAM_SHA_256};

use crate::credential::ServerCredential;
use crate::server::{ServerConn, ServerError};
use crate::stream::ServerStream;
use crate::tls::TlsConnectors;
use router::{Backend, BackendAddr, BackendTls};

/// How long opening a server connection (all of it) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to open one server connection.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    pub backend: &'a Backend,
    pub user: &'a str,
    pub database: &'a str,
    pub credential: &'a ServerCredential,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach backend {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with backend failed: {0}")]
    Tls(String),
    /// The server refused us with an ErrorResponse (its SQLSTATE is worth showing).
    #[error("backend refused the connection: {} {}", .0.code, .0.message)]
    Refused(ErrorFields),
    #[error("backend asked for {0} authentication, which Sluice cannot answer for this role")]
    UnsupportedAuth(&'static str),
    #[error("backend SCRAM exchange failed: {0}")]
    Scram(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("backend did not complete the connection within {0:?}")]
    Timeout(Duration),
}

/// Opens and authenticates a server connection. Only startup parameters that define
/// the connection (user, database) are sent; a client's session settings are applied
/// afterwards with SET so that `DISCARD ALL` takes them away again.
pub async fn connect(
    req: ConnectRequest<'_>,
    tls: &TlsConnectors,
) -> Result<ServerConn, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(req, tls))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
}

async fn connect_inner(
    req: ConnectRequest<'_>,
    tls: &TlsConnectors,
) -> Result<ServerConn, ConnectError> {
    let addr = Arc::new(req.backend.addr.clone());
    let stream = open_transport(req.backend, tls).await?;
    // Where a password-derived answer may be sent: not to whoever answered on an
    // unencrypted TCP connection.
    let private = matches!(stream, ServerStream::Unix(_) | ServerStream::Tls(_));
    let mut conn = ServerConn::new(stream, addr);

    let mut out = BytesMut::new();
    wire::startup::encode_startup(
        &[
            ("user", req.user),
            ("database", req.database),
            ("client_encoding", "UTF8"),
        ],
        &mut out,
    );
    conn.send(&out).await?;
    authenticate(&mut conn, req.user, req.credential, private).await?;

    // After AuthenticationOk: ParameterStatus*, BackendKeyData, ReadyForQuery.
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            b'S' => conn.note_parameter(&frame.body)?,
            b'K' => {
                let key = messages::parse_backend_key_data(&frame.body)
                    .map_err(|e| ServerError::Protocol(format!("BackendKeyData: {e}")))?;
                conn.cancel_key = Some(key);
            }
            b'Z' => return Ok(conn),
            b'E' => return Err(refused(&frame.body)),
            b'N' => {}
            other => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                ))
                .into())
            }
        }
    }
}

async fn open_transport(
    backend: &Backend,
    tls: &TlsConnectors,
) -> Result<ServerStream, ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        addr: backend.addr.to_string(),
        source,
    };
    let (host, port) = match &backend.addr {
        BackendAddr::Unix { dir, port } => {
            // TLS over a unix socket is pointless and Postgres does not offer it.
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = UnixStream::connect(&path).await.map_err(unreachable)?;
            return Ok(ServerStream::Unix(stream));
        }
        BackendAddr::Tcp { host, port } => (host.as_str(), *port),
    };
    let mut tcp = TcpStream::connect((host, port))
        .await
        .map_err(unreachable)?;
    tcp.set_nodelay(true).map_err(unreachable)?;
    if backend.tls == BackendTls::Disable {
        return Ok(ServerStream::Tcp(tcp));
    }

    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&wire::startup::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await.map_err(unreachable)?;
    let answer = tcp.read_u8().await.map_err(unreachable)?;
    match (answer, backend.tls) {
        (b'S', _) => {}
        (b'N', BackendTls::Prefer) => return Ok(ServerStream::Tcp(tcp)),
        (b'N', _) => {
            return Err(ConnectError::Tls(
                "backend does not accept TLS but the tenant requires it".into(),
            ))
        }
        (other, _) => {
            return Err(ServerError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))
            .into())
        }
    }
    let config = match (&backend.tls, &backend.tls_ca) {
        (BackendTls::VerifyFull, Some(ca)) => tls
            .verified(ca)
            .map_err(|e| ConnectError::Tls(e.to_string()))?,
        (BackendTls::VerifyFull, None) => {
            return Err(ConnectError::Tls("verify-full needs tls_ca".into()))
        }
        _ => tls.unverified(),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError::Tls(format!("invalid backend host name {host:?}: {e}")))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    Ok(ServerStream::Tls(Box::new(stream)))
}

fn refused(body: &[u8]) -> ConnectError {
    match messages::parse_error_fields(body) {
        Ok(fields) => ConnectError::Refused(fields),
        Err(e) => ServerError::Protocol(format!("ErrorResponse: {e}")).into(),
    }
}

/// Answers whatever the server asks for, with what the credential allows.
async fn authenticate(
    conn: &mut ServerConn,
    user: &str,
    credential: &ServerCredential,
    private: bool,
) -> Result<(), ConnectError> {
    let mut scram: Option<ScramClient> = None;
    // Set once the server has proved it knows the verifier (SASLFinal checked).
    let mut scram_done = false;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(refused(&frame.body)),
            other => {
                return Err(ServerError::Protocol(format!(
                    "expected an authentication request, got {:?}",
                    other as char
                ))
                .into())
            }
        }
        let request = messages::parse_authentication(&frame.body)
            .map_err(|e| ServerError::Protocol(format!("authentication request: {e}")))?;
        let mut out = BytesMut::new();
        match request {
            // A server that started SCRAM must finish it: an early Ok would skip the
            // check that it really is the tenant's backend.
            Authentication::Ok if scram.is_some() && !scram_done => {
                return Err(ConnectError::Scram(
                    "server skipped the end of the SCRAM exchange".into(),
                ))
            }
            Authentication::Ok => return Ok(()),
            Authentication::CleartextPassword | Authentication::Md5Password { .. }
                if !private && matches!(credential, ServerCredential::Password(_)) =>
            {
                return Err(ConnectError::UnsupportedAuth(
                    "a password over an unencrypted TCP connection",
                ))
            }
            Authentication::CleartextPassword => match credential {
                ServerCredential::Password(password) => {
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    messages::password_message(&mut out, &body);
                }
                _ => return Err(ConnectError::UnsupportedAuth("cleartext password")),
            },
            Authentication::Md5Password { salt } => {
                let hash = match credential {
                    ServerCredential::Md5Hash(hash) => hash.clone(),
                    ServerCredential::Password(password) => {
                        wire::md5::md5_password_hash(user, password)
                    }
                    ServerCredential::ScramClientKey { .. } => {
                        return Err(ConnectError::UnsupportedAuth("md5"))
                    }
                };
                let mut body = wire::md5::md5_response(&hash, salt).into_bytes();
                body.push(0);
                messages::password_message(&mut out, &body);
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(ConnectError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                }
                let client_credential = match credential {
                    ServerCredential::ScramClientKey {
                        client_key,
                        server_key,
                    } => ClientCredential::ClientKey {
                        client_key: client_key.clone(),
                        server_key: Some(*server_key),
                    },
                    ServerCredential::Password(password) => {
                        ClientCredential::Password(password.clone())
                    }
                    ServerCredential::Md5Hash(_) => {
                        return Err(ConnectError::UnsupportedAuth(
                            "SCRAM (role has an md5 secret)",
                        ))
                    }
                };
                let client = ScramClient::new(client_credential);
                messages::sasl_initial_response(&mut out, SCRAM_SHA_256, &client.client_first());
                scram = Some(client);
            }
            Authentication::SaslContinue(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ServerError::Protocol("SASLContinue before SASL".into()))?;
                let reply = client
                    .handle_server_first(data)
                    .map_err(|e| ConnectError::Scram(e.to_string()))?;
                messages::password_message(&mut out, &reply);
            }
            Authentication::SaslFinal(data) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| ServerError::Protocol("SASLFinal before SASL".into()))?;
                client
                    .handle_server_final(data)
                    .map_err(|e| ConnectError::Scram(e.to_string()))?;
                scram_done = true;
                continue;
            }
            Authentication::Other(code) => {
                return Err(ServerError::Protocol(format!(
                    "unsupported authentication request {code}"
                ))
                .into())
            }
        }
        conn.send(&out).await?;
    }
}
