//! The first bytes of a connection: SSLRequest / GSSENCRequest / CancelRequest / a
//! startup message, or a TLS ClientHello straight away (direct TLS); the ClientHello
//! itself; and the rest of the TLS handshake.
//!
//! Everything before the ClientHello is complete runs on the front runtime and only
//! ever waits for the socket to become readable: each read consumes what it returns,
//! so a read of 0 bytes means the client closed and the connection ends at once.
//! The ClientHello goes into a `rustls::server::Acceptor`, at most
//! [`MAX_CLIENT_HELLO`] bytes of it; the `Accepted` it yields travels with the socket
//! to the main runtime, where [`tls_handshake`] continues the handshake from it (its
//! key exchange and signature are the expensive part).

use std::io::{self, Read};

use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;
use wire::startup::{self, ClientCancelKey, StartupError, StartupMessage, StartupPacket};

use crate::error::ClientError;
use crate::stream::ClientStream;
use crate::tls::{ServerTls, ALPN_POSTGRESQL};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Most bytes read for a ClientHello: one TLS record of the largest size and its
/// header. A ClientHello not complete by then is refused ("ClientHello too large").
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// Bytes read from the socket at once while a ClientHello comes in.
const HELLO_CHUNK: usize = 2048;

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
    /// and is closed, in order, once the request has been dealt with. `key` is `None`
    /// for a secret of a length Sluice never hands out (neither 4 nor 32 bytes).
    Cancel {
        key: Option<ClientCancelKey>,
        stream: ClientStream,
    },
    /// The client wants TLS (after an SSLRequest, or direct TLS) and its ClientHello
    /// has been read: the handshake continues from `accepted` ([`tls_handshake`]),
    /// on whichever runtime the socket is moved to.
    Tls(ClientHello),
}

/// A connection whose ClientHello has been read, and nothing after it.
#[derive(Debug)]
pub struct ClientHello {
    pub tcp: TcpStream,
    pub accepted: Box<Accepted>,
    /// The server name (SNI) of the ClientHello, lowercased.
    pub sni: Option<String>,
    /// Direct TLS (no SSLRequest first).
    pub direct: bool,
}

/// Bytes the first read of a connection asks for: a whole protocol 3.0 CancelRequest
/// (a 3.2 one, with its longer secret, is read on with an exact read), the start of any
/// other startup packet, or of a ClientHello. A client that sent more than its
/// first packet before Sluice answered (what follows an SSLRequest must be TLS) has
/// the rest taken as the start of what comes next, exactly as if it had been read
/// later; the smallest StartupMessage that names a user is 16 bytes, so nothing is
/// ever read past one.
const FIRST_READ: usize = 16;

/// The connection's first read. A client's first bytes are usually in by the time its
/// connection is accepted, so they are read at once, without a round through the
/// reactor; only when nothing is there yet does this wait for readability.
async fn first_read(tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(&*tcp);
    match (&*socket).read(buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            tcp.read(buf).await
        }
        read => read,
    }
}

/// Reads one length-prefixed startup-phase packet with exact reads, of which `already`
/// holds the first bytes (read by the caller): nothing beyond the packet is read from
/// `stream`, which keeps the "no bytes before TLS" invariant true. Returns the packet
/// and how much of `already` it took (what is left belongs to what follows).
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    already: &[u8],
) -> Result<(StartupPacket, usize), ClientError> {
    let mut header = [0u8; 4];
    let have = already.len().min(4);
    header[..have].copy_from_slice(&already[..have]);
    stream.read_exact(&mut header[have..]).await?;
    let len = startup::parse_len(header).map_err(|e| match e {
        StartupError::BadLength(len) => ClientError::InvalidStartupLength(len),
        other => ClientError::Protocol(other.to_string()),
    })?;
    let taken = already.len().min(len);
    // `len` is bounded by MAX_STARTUP_LEN, so this allocation is too.
    let mut packet = vec![0u8; len];
    packet[..taken].copy_from_slice(&already[..taken]);
    packet[..4].copy_from_slice(&header);
    stream.read_exact(&mut packet[taken.max(4)..]).await?;
    let packet = startup::parse(&packet).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((packet, taken))
}

/// Reads what the client sends first, up to its StartupMessage (plaintext), its
/// CancelRequest, or its complete ClientHello (TLS). Cheap: parsing only, no
/// cryptography, so it runs on the front runtime. `read_first`: the connection's
/// first byte when the PROXY protocol phase has read it already.
pub async fn negotiate(
    mut tcp: TcpStream,
    read_first: Option<u8>,
    tls: Option<&ServerTls>,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let mut head = [0u8; FIRST_READ];
    let got = match read_first {
        Some(byte) => {
            head[0] = byte;
            1
        }
        None => first_read(&mut tcp, &mut head)
            .await
            .map_err(|e| (None, e.into()))?,
    };
    if got == 0 {
        return Err((
            None,
            ClientError::Protocol("client closed before startup".into()),
        ));
    }
    let first = &head[..got];
    if first[0] == TLS_HANDSHAKE {
        if tls.is_none() {
            // No TLS configured: there is no way to answer a ClientHello readably.
            return Err((
                None,
                ClientError::Protocol("direct TLS without TLS configured".into()),
            ));
        }
        return client_hello(tcp, first, true).await;
    }

    // A client may try GSSAPI encryption, then TLS, then plaintext: bounded rounds.
    let mut already = first;
    for _ in 0..3 {
        let packet = match read_packet(&mut tcp, already).await {
            Ok((packet, taken)) => {
                already = &already[taken..];
                packet
            }
            Err(e) => return Err((Some(ClientStream::Plain(tcp)), e)),
        };
        match packet {
            StartupPacket::SslRequest => match tls {
                Some(_) => {
                    tcp.write_all(b"S").await.map_err(|e| (None, e.into()))?;
                    return client_hello(tcp, already, false).await;
                }
                None => tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?,
            },
            StartupPacket::GssEncRequest => {
                tcp.write_all(b"N").await.map_err(|e| (None, e.into()))?
            }
            StartupPacket::Cancel(request) => {
                return Ok(Negotiated::Cancel {
                    key: request.key(),
                    stream: ClientStream::Plain(tcp),
                })
            }
            StartupPacket::Startup(_) if !already.is_empty() => {
                return Err((
                    Some(ClientStream::Plain(tcp)),
                    ClientError::Protocol("data after a startup packet without a user".into()),
                ))
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

/// Reads the ClientHello (`first`: its bytes read already) with real reads into a
/// rustls `Acceptor`, until it yields `Accepted`. A client that closes (a read of 0),
/// sends more than [`MAX_CLIENT_HELLO`] bytes without completing it, or sends
/// something that is not a ClientHello, ends here.
async fn client_hello(
    mut tcp: TcpStream,
    first: &[u8],
    direct: bool,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let accepted = read_client_hello(&mut tcp, first)
        .await
        .map_err(|e| (None, e))?;
    let sni = accepted
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    Ok(Negotiated::Tls(ClientHello {
        tcp,
        accepted: Box::new(accepted),
        sni,
        direct,
    }))
}

async fn read_client_hello(tcp: &mut TcpStream, first: &[u8]) -> Result<Accepted, ClientError> {
    let mut acceptor = Acceptor::default();
    let mut total = first.len();
    feed(&mut acceptor, first)?;
    loop {
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted),
            Ok(None) => {}
            Err((e, mut alert)) => {
                // The alert rustls has for it, into the socket's send buffer without
                // waiting (a fresh socket takes a few bytes at once).
                let mut out = Vec::new();
                if alert.write_all(&mut out).is_ok() && !out.is_empty() {
                    let _ = tcp.try_write(&out);
                }
                return Err(ClientError::Protocol(format!("TLS: {e}")));
            }
        }
        if total >= MAX_CLIENT_HELLO {
            return Err(ClientError::Protocol("ClientHello too large".into()));
        }
        tcp.readable().await?;
        // Not held across an await: a connection waiting for the rest of its
        // ClientHello keeps only what the Acceptor has buffered.
        let mut chunk = [0u8; HELLO_CHUNK];
        let want = (MAX_CLIENT_HELLO - total).min(HELLO_CHUNK);
        match tcp.try_read(&mut chunk[..want]) {
            Ok(0) => {
                return Err(ClientError::Protocol(
                    "client closed during its ClientHello".into(),
                ))
            }
            Ok(n) => {
                total += n;
                feed(&mut acceptor, &chunk[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Hands `bytes` to the acceptor (it may take them in several reads).
fn feed(acceptor: &mut Acceptor, mut bytes: &[u8]) -> Result<(), ClientError> {
    // An empty read would tell rustls the client closed.
    while !bytes.is_empty() {
        let n = acceptor
            .read_tls(&mut bytes)
            .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// The rest of the TLS handshake, from the ClientHello read on the front runtime (one
/// certificate for now; choosing one per server name is where custom domains go), and
/// the startup packet inside TLS.
pub async fn tls_handshake(
    hello: ClientHello,
    tls: &ServerTls,
) -> Result<Negotiated, (Option<ClientStream>, ClientError)> {
    let ClientHello {
        tcp,
        accepted,
        sni,
        direct,
    } = hello;
    let stream = StartHandshake::from_parts(*accepted, tcp)
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
    match read_packet(&mut stream, &[])
        .await
        .map(|(packet, _)| packet)
    {
        Ok(StartupPacket::Startup(startup)) => Ok(Negotiated::Startup {
            stream,
            startup,
            sni,
        }),
        Ok(StartupPacket::Cancel(request)) => Ok(Negotiated::Cancel {
            key: request.key(),
            stream,
        }),
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => Err((
            Some(stream),
            ClientError::Protocol("encryption request inside TLS".into()),
        )),
        Err(e) => Err((Some(stream), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// A real ClientHello naming `server`, as rustls's client writes it.
    fn client_hello_bytes(server: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// A connected pair: (Sluice's side, the client's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// Runs `read_client_hello` on Sluice's side while `client` does its part; the
    /// client's socket, if it hands it back, stays open until the reader is done.
    async fn hello_after<F: std::future::Future<Output = Option<TcpStream>>>(
        client: impl FnOnce(TcpStream) -> F,
    ) -> Result<Accepted, ClientError> {
        let (mut server, peer) = pair().await;
        let (result, kept) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(read_client_hello(&mut server, &[]), client(peer))
        })
        .await
        .expect("read_client_hello kept waiting");
        drop(kept);
        result
    }

    fn message(result: Result<Accepted, ClientError>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected a refusal, got a ClientHello"),
        }
    }

    #[tokio::test]
    async fn a_client_hello_in_pieces_is_accepted_with_its_server_name() {
        let hello = client_hello_bytes("Acme.db.example.test");
        let accepted = hello_after(|mut client| async move {
            for piece in hello.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Kept open: the ClientHello alone must be enough.
            Some(client)
        })
        .await
        .unwrap();
        assert_eq!(
            accepted.client_hello().server_name(),
            Some("acme.db.example.test")
        );
    }

    #[tokio::test]
    async fn a_partial_client_hello_then_close_ends_at_once() {
        let hello = client_hello_bytes("acme.db.example.test");
        let result = hello_after(|mut client| async move {
            client.write_all(&hello[..20]).await.unwrap();
            None
        })
        .await;
        assert_eq!(message(result), "client closed during its ClientHello");
    }

    #[tokio::test]
    async fn a_client_hello_past_one_record_is_refused_as_too_large() {
        // A ClientHello that says it is 60,000 bytes long, sent in full records: the
        // reader stops after MAX_CLIENT_HELLO bytes without waiting for the rest.
        let result = hello_after(|mut client| async move {
            let mut body = vec![1u8, 0, 0xea, 0x60]; // ClientHello, 60,000 bytes
            body.resize(60_004, 0);
            for fragment in body.chunks(16 * 1024) {
                let mut record = vec![0x16, 3, 1];
                record.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
                record.extend_from_slice(fragment);
                if client.write_all(&record).await.is_err() {
                    break;
                }
            }
            Some(client)
        })
        .await;
        assert_eq!(message(result), "ClientHello too large");
    }

    #[tokio::test]
    async fn something_else_than_a_client_hello_is_refused() {
        let result = hello_after(|mut client| async move {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            Some(client)
        })
        .await;
        assert!(message(result).starts_with("TLS: "));
    }
}
