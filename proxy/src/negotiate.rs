//! The first bytes of a connection: SSLRequest / GSSENCRequest / CancelRequest / a
//! startup message, or a TLS ClientHello straight away (direct TLS), and the TLS
//! handshake that reads the server name before choosing a certificate.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use wire::startup::{self, CancelKey, StartupMessage, StartupPacket};

use crate::error::ClientError;
use crate::stream::ClientStream;
use crate::tls::{ServerTls, ALPN_POSTGRESQL};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Where negotiation ended.
#[derive(Debug)]
pub enum Negotiated {
    /// A client that wants a session.
    Startup {
        stream: ClientStream,
        startup: StartupMessage,
        /// The TLS server name the client sent, if any.
        sni: Option<String>,
    },
    /// A cancel request (plaintext or over TLS); the connection carries nothing else.
    Cancel(CancelKey),
    /// A TLS ClientHello has arrived: the server name is known and the handshake's
    /// expensive part is still to come, so admission can run first.
    Hello(Box<Hello>),
}

/// A TLS handshake stopped after the ClientHello.
pub struct Hello {
    start: tokio_rustls::StartHandshake<TcpStream>,
    /// The TLS server name the client sent, lowercased.
    pub sni: Option<String>,
    direct: bool,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("sni", &self.sni)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

/// Reads one length-prefixed startup-phase packet with exact reads: nothing beyond the
/// packet is consumed, which keeps the "no bytes before TLS" invariant trivially true.
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<StartupPacket, ClientError> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = startup::parse_len(header).map_err(|e| ClientError::Protocol(e.to_string()))?;
    // `len` is bounded by MAX_STARTUP_LEN, so this allocation is too.
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&header);
    stream.read_exact(&mut packet[4..]).await?;
    startup::parse(&packet).map_err(|e| ClientError::Protocol(e.to_string()))
}

pub async fn negotiate(
    mut tcp: TcpStream,
    tls: Option<&ServerTls>,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let mut first = [0u8; 1];
    let peeked = tcp.peek(&mut first).await.map_err(|e| (None, e.into()))?;
    if peeked == 0 {
        return Err((
            None,
            ClientError::Protocol("client closed before startup".into()),
        ));
    }
    if first[0] == TLS_HANDSHAKE {
        if tls.is_none() {
            // No TLS configured: there is no way to answer a ClientHello readably.
            return Err((
                None,
                ClientError::Protocol("direct TLS without TLS configured".into()),
            ));
        }
        return handshake(tcp, true).await;
    }

    // A client may try GSSAPI encryption, then TLS, then plaintext: bounded rounds.
    for _ in 0..3 {
        let packet = match read_packet(&mut tcp).await {
            Ok(p) => p,
            Err(e) => return Err((Some(ClientStream::Plain(tcp)), e)),
        };
        match packet {
            StartupPacket::SslRequest => match tls {
                Some(_) => {
                    tcp.write_all(b"S").await.map_err(|e| (None, e.into()))?;
                    return handshake(tcp, false).await;
                }
                None => tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?,
            },
            StartupPacket::GssEncRequest => {
                tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?
            }
            StartupPacket::Cancel(key) => return Ok(Negotiated::Cancel(key)),
            StartupPacket::Startup(startup) => {
                return Ok(Negotiated::Startup {
                    stream: ClientStream::Plain(tcp),
                    startup,
                    sni: None,
                })
            }
        }
    }
    Err((
        Some(ClientStream::Plain(tcp)),
        ClientError::Protocol("too many encryption requests".into()),
    ))
}

/// Reads the ClientHello (cheap: no cryptography yet).
async fn handshake(
    tcp: TcpStream,
    direct: bool,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = acceptor
        .await
        .map_err(|e| (None, ClientError::Protocol(format!("TLS: {e}"))))?;
    let sni = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    Ok(Negotiated::Hello(Box::new(Hello { start, sni, direct })))
}

impl Hello {
    /// Finishes the handshake and reads the startup packet inside TLS.
    pub async fn complete(
        self: Box<Self>,
        tls: &ServerTls,
    ) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
        let Hello { start, sni, direct } = *self;
        // One certificate for now; choosing per server name is where custom domains go.
        let stream = start
            .into_stream(tls.config.clone())
            .await
            .map_err(|e| (None, ClientError::Protocol(format!("TLS handshake: {e}"))))?;
        after_handshake(stream, sni, direct).await
    }
}

async fn after_handshake(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    sni: Option<String>,
    direct: bool,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let alpn_ok = stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
    let mut stream = ClientStream::Tls(Box::new(stream));
    if direct && !alpn_ok {
        // Direct TLS without ALPN could be a confused HTTPS client (PostgreSQL 17 rules).
        return Err((
            Some(stream),
            ClientError::Protocol("direct TLS connections must use ALPN \"postgresql\"".into()),
        ));
    }
    match read_packet(&mut stream).await {
        Ok(StartupPacket::Startup(startup)) => Ok(Negotiated::Startup {
            stream,
            startup,
            sni,
        }),
        Ok(StartupPacket::Cancel(key)) => Ok(Negotiated::Cancel(key)),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => Err((
            Some(stream),
            ClientError::Protocol("encryption request inside TLS".into()),
        )),
        Err(e) => Err((Some(stream), e)),
    }
}
