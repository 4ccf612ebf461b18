//! The PROXY protocol phase, first thing on the front runtime when
//! `[proxy] proxy_protocol` is on: who the client is when a load balancer relays it.
//!
//! A peer in `proxy_protocol_from` (a trusted balancer) may start its connection with a
//! header (`wire::proxy_header`, v2 or v1); with `proxy_protocol = "v2"` it must, and
//! peers outside the list are refused at accept (listener.rs). A header from any other
//! peer is never believed: the connection is refused. The header's source address is
//! then the client's address for everything after (pre-login count, bans,
//! `allow_cidrs`, cancel rates, logs); a `LOCAL` header (a health check) or one without
//! addresses leaves the socket's peer as the client.
//!
//! Reads are exact, as in negotiate.rs: one byte to tell a header from a Postgres
//! packet (neither `\r` nor `P` can start a startup packet or a TLS record), then the
//! v2 fixed part and the length it announces (at most `MAX_V2_BODY`, checked before
//! reading), or the v1 line byte by byte up to its `\r\n` (at most 107 bytes). Nothing
//! after the header is consumed; a first byte that was not a header is handed on to
//! negotiation.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};
use wire::proxy_header::{self, ProxyHeader, MAX_V1_LEN, MAX_V2_BODY, MIN_V1_LEN, V2_FIXED_LEN};

use crate::config::{PeerKind, ProxyProtocol, ProxyProtocolMode};
use crate::error::ClientError;

/// Who a connection is from, once its header (if any) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The client's address: the header's source, else the socket's peer.
    pub client: SocketAddr,
    /// The balancer it came through, when the header named another client.
    pub via: Option<SocketAddr>,
    /// The connection's first byte, read here and not part of a header.
    pub first: Option<u8>,
    /// A `LOCAL` header: the balancer's own connection, such as a health check.
    pub local: bool,
}

/// Reads the PROXY protocol header `peer` sends, if it may and must (see the module
/// doc). Runs under the login timeout.
pub async fn resolve<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    config: &ProxyProtocol,
) -> Result<Resolved, ClientError> {
    let direct = |first| Resolved {
        client: peer,
        via: None,
        first,
        local: false,
    };
    let kind = config.at_accept(peer.ip());
    if config.mode == ProxyProtocolMode::Off {
        return Ok(direct(None));
    }
    if kind == PeerKind::Refused {
        return Err(ClientError::UntrustedProxy { sent_header: false });
    }
    let first = read_byte(stream).await?;
    if !proxy_header::may_start_header(first) {
        return match (kind, config.mode) {
            (PeerKind::Balancer, ProxyProtocolMode::V2) => {
                Err(ClientError::ProxyHeader("a header is required".into()))
            }
            _ => Ok(direct(Some(first))),
        };
    }
    if kind != PeerKind::Balancer {
        return Err(ClientError::UntrustedProxy { sent_header: true });
    }
    let header = read_header(stream, first)
        .await?
        .map_err(|e| ClientError::ProxyHeader(e.to_string()))?;
    Ok(match header {
        ProxyHeader::Proxied { source, .. } => Resolved {
            client: source,
            via: Some(peer),
            first: None,
            local: false,
        },
        ProxyHeader::Local => Resolved {
            local: true,
            ..direct(None)
        },
        ProxyHeader::Unknown => direct(None),
    })
}

/// Reads the rest of a header whose first byte is `first`, exactly.
async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    first: u8,
) -> io::Result<Result<ProxyHeader, proxy_header::ProxyHeaderError>> {
    if first == proxy_header::V2_SIGNATURE[0] {
        let mut fixed = [0u8; V2_FIXED_LEN];
        fixed[0] = first;
        stream.read_exact(&mut fixed[1..]).await?;
        let len = match proxy_header::v2_body_len(&fixed) {
            Ok(len) => len,
            Err(e) => return Ok(Err(e)),
        };
        let mut body = [0u8; MAX_V2_BODY];
        let body = &mut body[..len];
        stream.read_exact(body).await?;
        return Ok(proxy_header::parse_v2(&fixed, body));
    }
    let mut line = [0u8; MAX_V1_LEN];
    line[0] = first;
    stream.read_exact(&mut line[1..MIN_V1_LEN]).await?;
    let mut len = MIN_V1_LEN;
    while !line[..len].ends_with(b"\r\n") && len < MAX_V1_LEN {
        line[len] = read_byte(stream).await?;
        len += 1;
    }
    Ok(proxy_header::parse_v1(&line[..len]))
}

async fn read_byte<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(byte[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use router::Cidr;
    use tokio::io::AsyncWriteExt;

    fn config(mode: ProxyProtocolMode) -> ProxyProtocol {
        ProxyProtocol {
            mode,
            from: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const BALANCER: &str = "10.1.2.3:50000";
    const STRANGER: &str = "192.0.2.9:50000";
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

    fn v2_from(source: [u8; 4]) -> Vec<u8> {
        let mut out = proxy_header::V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[0x21, 0x11, 0, 12]);
        out.extend_from_slice(&source);
        out.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x19, 0x00]);
        out
    }

    /// Runs `resolve` over `sent`, and returns what it said and what it left unread.
    async fn run(
        mode: ProxyProtocolMode,
        peer: &str,
        sent: &[u8],
    ) -> (Result<Resolved, ClientError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(sent).await.unwrap();
        drop(client);
        let result = resolve(&mut server, addr(peer), &config(mode)).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (result, rest)
    }

    #[tokio::test]
    async fn a_balancers_header_names_the_client_and_nothing_more_is_read() {
        for mode in [ProxyProtocolMode::V2, ProxyProtocolMode::Optional] {
            let mut sent = v2_from([203, 0, 113, 7]);
            sent.extend_from_slice(&SSL_REQUEST);
            let (result, rest) = run(mode, BALANCER, &sent).await;
            let resolved = result.unwrap();
            assert_eq!(resolved.client, addr("203.0.113.7:40000"));
            assert_eq!(resolved.via, Some(addr(BALANCER)));
            assert_eq!(resolved.first, None);
            assert_eq!(rest, SSL_REQUEST);
        }
        let mut sent = b"PROXY TCP4 203.0.113.8 10.0.0.1 1234 6432\r\n".to_vec();
        sent.extend_from_slice(&SSL_REQUEST);
        let (result, rest) = run(ProxyProtocolMode::V2, BALANCER, &sent).await;
        assert_eq!(result.unwrap().client, addr("203.0.113.8:1234"));
        assert_eq!(rest, SSL_REQUEST);
    }

    #[tokio::test]
    async fn local_is_the_balancer_itself() {
        let mut sent = proxy_header::V2_SIGNATURE.to_vec();
        sent.extend_from_slice(&[0x20, 0x00, 0, 0]);
        let (result, rest) = run(ProxyProtocolMode::V2, BALANCER, &sent).await;
        let resolved = result.unwrap();
        assert_eq!((resolved.client, resolved.via), (addr(BALANCER), None));
        assert!(resolved.local);
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn headers_are_required_and_trusted_only_as_configured() {
        // A balancer without a header: refused in "v2", a direct client in "optional".
        let (result, _) = run(ProxyProtocolMode::V2, BALANCER, &SSL_REQUEST).await;
        assert!(matches!(result, Err(ClientError::ProxyHeader(_))));
        let (result, rest) = run(ProxyProtocolMode::Optional, BALANCER, &SSL_REQUEST).await;
        let resolved = result.unwrap();
        assert_eq!((resolved.client, resolved.first), (addr(BALANCER), Some(0)));
        assert_eq!(rest, SSL_REQUEST[1..]);
        // Anyone else: refused in "v2"; in "optional" direct, but never with a header.
        let (result, rest) = run(ProxyProtocolMode::V2, STRANGER, &SSL_REQUEST).await;
        assert!(matches!(
            result,
            Err(ClientError::UntrustedProxy { sent_header: false })
        ));
        assert_eq!(rest, SSL_REQUEST, "nothing read");
        let (result, _) = run(ProxyProtocolMode::Optional, STRANGER, &SSL_REQUEST).await;
        assert_eq!(result.unwrap().client, addr(STRANGER));
        for forged in [v2_from([127, 0, 0, 2]), b"PROXY UNKNOWN\r\n".to_vec()] {
            let (result, _) = run(ProxyProtocolMode::Optional, STRANGER, &forged).await;
            assert!(matches!(
                result,
                Err(ClientError::UntrustedProxy { sent_header: true })
            ));
        }
        // "off" reads nothing at all.
        let (result, rest) = run(ProxyProtocolMode::Off, BALANCER, &v2_from([1, 2, 3, 4])).await;
        assert_eq!(result.unwrap().client, addr(BALANCER));
        assert_eq!(rest.len(), 28);
    }

    #[tokio::test]
    async fn bad_headers_are_refused_without_reading_past_the_bound() {
        let mut huge = proxy_header::V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        huge.extend_from_slice(&[0; 64]);
        let (result, rest) = run(ProxyProtocolMode::V2, BALANCER, &huge).await;
        assert!(matches!(result, Err(ClientError::ProxyHeader(_))));
        assert_eq!(rest.len(), 64, "the body was not read");
        let long = [b"PROXY ".as_slice(), &[b'1'; 300]].concat();
        let (result, rest) = run(ProxyProtocolMode::V2, BALANCER, &long).await;
        assert!(matches!(result, Err(ClientError::ProxyHeader(_))));
        assert_eq!(rest.len(), long.len() - MAX_V1_LEN);
        // A header cut short: the client left.
        let (result, _) = run(
            ProxyProtocolMode::V2,
            BALANCER,
            &v2_from([1, 2, 3, 4])[..20],
        )
        .await;
        assert!(matches!(result, Err(ClientError::Io(_))));
    }
}
