//! The first bytes of a connection: SSLRequest / GSSENCRequest / CancelRequest / a
//! startup message, or a TLS ClientHello straight away (direct TLS), and the TLS
//! handshake that reads the server name before choosing a certificate.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use wire::startup::{self, CancelKey, StartupError, StartupMessage, StartupPacket};

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
    /// A cancel request (plaintext or over TLS); the connection carries nothing else
    /// and is closed, in order, once the request has been dealt with.
    Cancel {
        key: CancelKey,
        stream: ClientStream,
    },
    /// The client wants TLS (after an SSLRequest, or direct TLS); nothing of its
    /// ClientHello has been read yet, so the connection can still move to another
    /// runtime and the handshake start from scratch there.
    Tls { tcp: TcpStream, direct: bool },
}

/// Reads one length-prefixed startup-phase packet with exact reads: nothing beyond the
/// packet is consumed, which keeps the "no bytes before TLS" invariant trivially true.
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<StartupPacket, ClientError> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = startup::parse_len(header).map_err(|e| match e {
        StartupError::BadLength(len) => ClientError::InvalidStartupLength(len),
        other => ClientError::Protocol(other.to_string()),
    })?;
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
        return tls_wanted(tcp, true);
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
                    return tls_wanted(tcp, false);
                }
                None => tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?,
            },
            StartupPacket::GssEncRequest => {
                tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?
            }
            StartupPacket::Cancel(key) => {
                return Ok(Negotiated::Cancel {
                    key,
                    stream: ClientStream::Plain(tcp),
                })
            }
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

/// The client wants TLS; the handshake is [`tls_handshake`]'s.
fn tls_wanted(
    tcp: TcpStream,
    direct: bool,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    Ok(Negotiated::Tls { tcp, direct })
}

/// Largest ClientHello looked at before the handshake (one TLS record and its header).
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// The server name in the client's ClientHello, read with `peek` so that the bytes stay
/// in the socket for the real handshake. Cheap: parsing only, no cryptography. `None`
/// when the ClientHello names no server.
pub async fn server_name(tcp: &TcpStream) -> Result<Option<String>, ClientError> {
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "client closed before its ClientHello".into(),
            ));
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut seen = &buf[..n];
        acceptor
            .read_tls(&mut seen)
            .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase))
            }
            Ok(None) if n < buf.len() => {
                // Part of it so far: `peek` would return the same bytes at once, so
                // wait a moment for the rest (the login timeout bounds this).
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Ok(None) => return Err(ClientError::Protocol("ClientHello too large".into())),
            Err((e, _)) => return Err(ClientError::Protocol(format!("TLS: {e}"))),
        }
    }
}

/// The TLS handshake (the certificate chosen after reading the server name) and the
/// startup packet inside TLS.
pub async fn tls_handshake(
    tcp: TcpStream,
    tls: &ServerTls,
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
    // One certificate for now; choosing per server name is where custom domains go.
    let stream = start
        .into_stream(tls.config.clone())
        .await
        .map_err(|e| (None, ClientError::Protocol(format!("TLS handshake: {e}"))))?;
    after_handshake(stream, sni, direct).await
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
        Ok(StartupPacket::Cancel(key)) => Ok(Negotiated::Cancel { key, stream }),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => Err((
            Some(stream),
            ClientError::Protocol("encryption request inside TLS".into()),
        )),
        Err(e) => Err((Some(stream), e)),
    }
}
