//! A PostgreSQL client that speaks the protocol by hand ([`RawClient`]), for what no
//! driver lets a test do: half-close its side of the connection, and see every message
//! the other end sends until the connection ends. It logs in with SCRAM-SHA-256 (the
//! password of its [`PgTarget`]), over TLS after an SSLRequest (SNI from the target's
//! host name) or over plain TCP (then the tenant must come from `options`).
//!
//! Every read is bounded by [`READ_TIMEOUT`], so a hang fails the test instead of
//! blocking it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::frame::{split_frame, Frame};
use wire::messages::{self, Authentication, ErrorFields};
use wire::scram::{ClientCredential, ScramClient, SCRAM_SHA_256};
use wire::startup::CancelKey;

use crate::clients::{rustls_config, PgTarget};

/// Longest any single read may wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message the client accepts.
const MAX_FRAME: usize = 1 << 20;

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    /// SSLRequest, then TLS with the target's host name as SNI.
    Tls,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A logged-in connection driven message by message.
pub struct RawClient {
    stream: Box<dyn Io>,
    buf: BytesMut,
    /// The BackendKeyData of the greeting (the secret's first 4 bytes, for a longer
    /// protocol 3.2 one).
    pub key: CancelKey,
    /// The secret of that BackendKeyData, whole: 4 bytes (protocol 3.0), or up to 256
    /// (3.2).
    pub secret: Vec<u8>,
    /// The version a NegotiateProtocolVersion named, if the server sent one.
    pub negotiated: Option<u32>,
    /// The ParameterStatus values of the greeting, in order.
    pub params: Vec<(String, String)>,
}

impl RawClient {
    /// Connects to `target` and logs in with protocol 3.0; returns at the first
    /// ReadyForQuery.
    pub async fn login(target: &PgTarget, transport: Transport) -> anyhow::Result<Self> {
        Self::login_with(target, transport, wire::startup::PROTOCOL_3_0).await
    }

    /// [`RawClient::login`] asking for protocol `version` (`3 << 16 | minor`).
    pub async fn login_with(
        target: &PgTarget,
        transport: Transport,
        version: u32,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match transport {
            Transport::Plain => Box::new(tcp),
            Transport::Tls => Box::new(tls(tcp, target).await?),
        };
        let mut client = RawClient {
            stream,
            buf: BytesMut::new(),
            key: CancelKey { pid: 0, secret: 0 },
            secret: Vec::new(),
            negotiated: None,
            params: Vec::new(),
        };
        let mut params = vec![("user", target.user.as_str())];
        params.push(("database", target.dbname.as_str()));
        if let Some(options) = &target.options {
            params.push(("options", options.as_str()));
        }
        let mut out = BytesMut::new();
        wire::startup::encode_startup_version(version, &params, &mut out);
        client.send(&out).await?;
        client.authenticate(&target.password).await?;
        // ParameterStatus and BackendKeyData, up to ReadyForQuery.
        for frame in client.until_ready().await? {
            match frame.tag {
                b'K' => {
                    let (pid, secret) = messages::parse_backend_key_data_any(&frame.body)?;
                    let first: [u8; 4] = secret[..4].try_into()?;
                    client.key = CancelKey {
                        pid,
                        secret: i32::from_be_bytes(first),
                    };
                    client.secret = secret.to_vec();
                }
                b'S' => {
                    let (name, value) = messages::parse_parameter_status(&frame.body)?;
                    client.params.push((name.to_owned(), value.to_owned()));
                }
                _ => {}
            }
        }
        Ok(client)
    }

    async fn authenticate(&mut self, password: &str) -> anyhow::Result<()> {
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = self.expect_next().await?;
            match frame.tag {
                b'R' => {}
                b'v' => {
                    let version: [u8; 4] = frame
                        .body
                        .get(..4)
                        .context("short NegotiateProtocolVersion")?
                        .try_into()?;
                    self.negotiated = Some(u32::from_be_bytes(version));
                    continue;
                }
                b'E' => bail!("login refused: {:?}", error_fields(&frame)),
                other => bail!(
                    "expected an authentication request, got {:?}",
                    other as char
                ),
            }
            let request = messages::parse_authentication(&frame.body)?;
            let mut out = BytesMut::new();
            match request {
                Authentication::Ok => return Ok(()),
                Authentication::Sasl { mechanisms } => {
                    ensure!(
                        mechanisms.contains(&SCRAM_SHA_256),
                        "no SCRAM: {mechanisms:?}"
                    );
                    let client = ScramClient::new(ClientCredential::Password(password.into()));
                    messages::sasl_initial_response(
                        &mut out,
                        SCRAM_SHA_256,
                        &client.client_first(),
                    );
                    scram = Some(client);
                }
                Authentication::SaslContinue(data) => {
                    let client = scram.as_mut().context("SASLContinue before SASL")?;
                    messages::password_message(&mut out, &client.handle_server_first(data)?);
                }
                Authentication::SaslFinal(data) => {
                    let client = scram.as_mut().context("SASLFinal before SASL")?;
                    client.handle_server_final(data)?;
                    continue;
                }
                other => bail!("unsupported authentication request {other:?}"),
            }
            self.send(&out).await?;
        }
    }

    /// Writes `bytes` and flushes them.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.send(&out).await
    }

    /// Ends the client's side of the connection and keeps it open for reading: a TCP
    /// `shutdown(SHUT_WR)`, after a TLS close_notify over TLS.
    pub async fn half_close(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }

    /// The next message, or `None` at the end of the connection (also a TLS connection
    /// closed without close_notify). An end in the middle of a message is an error.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, MAX_FRAME)? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("nothing arrived within {READ_TIMEOUT:?}"))?;
            match read {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => bail!("connection ended in the middle of a message"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn expect_next(&mut self) -> anyhow::Result<Frame> {
        self.next().await?.context("the connection ended")
    }

    /// Every message up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> anyhow::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        loop {
            let frame = self.expect_next().await?;
            let ready = frame.tag == b'Z';
            frames.push(frame);
            if ready {
                return Ok(frames);
            }
        }
    }

    /// Reads the result of a query sent before, up to its ReadyForQuery: the rows (as
    /// text), or the server's error.
    pub async fn result(
        &mut self,
    ) -> anyhow::Result<Result<Vec<Vec<Option<String>>>, ErrorFields>> {
        let mut rows = Vec::new();
        let mut error = None;
        for frame in self.until_ready().await? {
            match frame.tag {
                b'D' => rows.push(
                    messages::parse_data_row(&frame.body)?
                        .into_iter()
                        .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                ),
                b'E' => error = Some(error_fields(&frame)),
                _ => {}
            }
        }
        Ok(error.map_or(Ok(rows), Err))
    }

    /// Runs `sql` and returns the first column of its first row.
    pub async fn scalar(&mut self, sql: &str) -> anyhow::Result<String> {
        self.query(sql).await?;
        let rows = self
            .result()
            .await?
            .map_err(|e| anyhow!("{sql}: {} {}", e.code, e.message))?;
        rows.first()
            .and_then(|row| row.first().cloned().flatten())
            .ok_or_else(|| anyhow!("{sql}: no value"))
    }

    /// Every message up to the end of the connection.
    pub async fn to_end(&mut self) -> anyhow::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await? {
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// One message of type `tag` with `body`, for what the `wire` builders do not make
/// (CopyData, CopyDone).
pub fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[tag]);
    let len = u32::try_from(body.len() + 4).expect("message length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The fields of an ErrorResponse or NoticeResponse (panics on anything else).
pub fn error_fields(frame: &Frame) -> ErrorFields {
    assert!(matches!(frame.tag, b'E' | b'N'), "not an error: {frame:?}");
    messages::parse_error_fields(&frame.body).expect("ErrorResponse body")
}

/// The message types of `frames`, as characters (`"TDCZ"`), for assertions.
pub fn tags(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.tag as char).collect()
}

/// A TLS connection to `target` (SSLRequest, then the handshake with its host name),
/// before any startup packet: for what a test sends inside TLS itself.
pub async fn tls_to(
    target: &PgTarget,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    tls(tcp, target).await
}

/// SSLRequest, then a TLS handshake with the target's host name.
async fn tls(
    mut tcp: TcpStream,
    target: &PgTarget,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&wire::startup::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(READ_TIMEOUT, tcp.read_exact(&mut answer)).await??;
    ensure!(answer[0] == b'S', "TLS refused: {:?}", answer[0] as char);
    let host = target.sni_host.clone().context("TLS needs a host name")?;
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_config(&target.ca)));
    Ok(tokio::time::timeout(READ_TIMEOUT, connector.connect(name, tcp)).await??)
}
