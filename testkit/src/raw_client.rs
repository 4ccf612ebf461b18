//! A client that speaks the protocol itself, for what client libraries keep to
//! themselves: the BackendKeyData a server sent, a CancelRequest sent inside TLS, and
//! exactly how a connection ends. SCRAM-SHA-256 over TLS with SNI, simple queries only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use wire::frame::{split_frame, Frame};
use wire::messages::{self, Authentication, ErrorFields};
use wire::scram::{ClientCredential, ScramClient};
use wire::startup::{self, CancelKey};

use crate::clients::PgTarget;

/// Longest any read waits for the server.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A rustls client configuration that trusts the CA certificate(s) in `ca`.
pub fn rustls_client_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("reading CA");
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TCP connection to `target` that sent an SSLRequest, got `S`, and finished the TLS
/// handshake (SNI from `target.sni_host`, the server checked against `target.ca`).
pub async fn tls_to(target: &PgTarget) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(target.addr).await?;
    let mut request = BytesMut::new();
    bytes::BufMut::put_u32(&mut request, 8);
    bytes::BufMut::put_u32(&mut request, startup::SSL_REQUEST_CODE);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(READ_TIMEOUT, tcp.read_exact(&mut answer)).await??;
    if answer[0] != b'S' {
        bail!("the server declined TLS: {:?}", answer[0] as char);
    }
    let host = target
        .sni_host
        .clone()
        .unwrap_or_else(|| target.addr.ip().to_string());
    let name = rustls_pki_types::ServerName::try_from(host)?;
    let connector = TlsConnector::from(Arc::new(rustls_client_config(&target.ca)));
    Ok(connector.connect(name, tcp).await?)
}

/// One logged-in session.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    /// The BackendKeyData the server sent.
    pub key: CancelKey,
    /// The ParameterStatus values of the greeting, in order.
    pub params: Vec<(String, String)>,
}

impl RawClient {
    /// Connects over TLS and logs in as `target.user` with SCRAM-SHA-256.
    pub async fn connect(target: &PgTarget) -> anyhow::Result<Self> {
        let stream = tls_to(target).await?;
        let mut client = RawClient {
            stream,
            buf: BytesMut::new(),
            key: CancelKey { pid: 0, secret: 0 },
            params: Vec::new(),
        };
        let mut params = vec![("user", target.user.as_str())];
        params.push(("database", target.dbname.as_str()));
        if let Some(options) = &target.options {
            params.push(("options", options.as_str()));
        }
        let mut out = BytesMut::new();
        startup::encode_startup(&params, &mut out);
        client.send(&out).await?;
        let mut scram = ScramClient::new(ClientCredential::Password(target.password.clone()));
        let mut key = None;
        loop {
            let frame = client.next().await?;
            match frame.tag {
                b'R' => match messages::parse_authentication(&frame.body)? {
                    Authentication::Sasl { .. } => {
                        let mut out = BytesMut::new();
                        messages::sasl_initial_response(
                            &mut out,
                            "SCRAM-SHA-256",
                            &scram.client_first(),
                        );
                        client.send(&out).await?;
                    }
                    Authentication::SaslContinue(server_first) => {
                        let client_final = scram.handle_server_first(server_first)?;
                        let mut out = BytesMut::new();
                        messages::password_message(&mut out, &client_final);
                        client.send(&out).await?;
                    }
                    Authentication::SaslFinal(server_final) => {
                        scram.handle_server_final(server_final)?
                    }
                    Authentication::Ok => {}
                    other => bail!("unexpected authentication request {other:?}"),
                },
                b'K' => key = Some(messages::parse_backend_key_data(&frame.body)?),
                b'S' => {
                    let (name, value) = messages::parse_parameter_status(&frame.body)?;
                    client.params.push((name.to_owned(), value.to_owned()));
                }
                b'E' => bail!(
                    "login refused: {:?}",
                    messages::parse_error_fields(&frame.body)?
                ),
                b'Z' => break,
                _ => {}
            }
        }
        client.key = key.ok_or_else(|| anyhow!("no BackendKeyData"))?;
        Ok(client)
    }

    /// Sends a simple Query without waiting for its result.
    pub async fn send_query(&mut self, sql: &str) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.send(&out).await
    }

    /// Reads the result of a query sent before, up to its ReadyForQuery: the rows (as
    /// text), or the server's error.
    pub async fn result(
        &mut self,
    ) -> anyhow::Result<Result<Vec<Vec<Option<String>>>, ErrorFields>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.next().await?;
            match frame.tag {
                b'D' => rows.push(
                    messages::parse_data_row(&frame.body)?
                        .into_iter()
                        .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                ),
                b'E' => error = Some(messages::parse_error_fields(&frame.body)?),
                b'Z' => return Ok(error.map_or(Ok(rows), Err)),
                _ => {}
            }
        }
    }

    /// Runs `sql` and returns the first column of its first row.
    pub async fn scalar(&mut self, sql: &str) -> anyhow::Result<String> {
        self.send_query(sql).await?;
        let rows = self
            .result()
            .await?
            .map_err(|e| anyhow!("{sql}: {} {}", e.code, e.message))?;
        rows.first()
            .and_then(|row| row.first().cloned().flatten())
            .ok_or_else(|| anyhow!("{sql}: no value"))
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, 1 << 20)? {
                return Ok(frame);
            }
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .context("no answer from the server")??;
            if n == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}
