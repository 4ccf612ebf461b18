//! The PROXY protocol header a TCP load balancer (HAProxy, cloud balancers) puts in
//! front of a connection to say whom it carries: version 2 (binary) and version 1
//! (one text line). Only the addresses are read; TLVs are skipped.
//!
//! The reader (proxy's `proxy_protocol.rs`) never reads past the header, so the
//! Postgres bytes after it stay in the socket:
//! - version 2: [`V2_FIXED_LEN`] bytes, then [`v2_body_len`] more (at most
//!   [`MAX_V2_BODY`], whatever the header says), then [`parse_v2`];
//! - version 1: a line of at most [`MAX_V1_LEN`] bytes up to `\r\n`, then [`parse_v1`].
//!
//! [`parse`] does both over a buffer (for tests and the fuzz target). Nothing here
//! panics or allocates from a length the peer sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first 12 bytes of every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
pub const V2_FIXED_LEN: usize = 16;
/// The most bytes after the fixed part that Sluice reads: the addresses of any family
/// (216 for unix sockets) and room for the TLVs balancers add (AWS, Azure and GCP
/// send an id or two). A header announcing more is refused, never read.
pub const MAX_V2_BODY: usize = 1024;
/// The longest version 1 line, `\r\n` included (the specification's bound).
pub const MAX_V1_LEN: usize = 107;
/// The shortest version 1 line: `PROXY UNKNOWN\r\n`.
pub const MIN_V1_LEN: usize = 15;
/// The first bytes of a version 1 line.
pub const V1_PREFIX: &[u8] = b"PROXY ";

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer's own connection (a health check, version 2 `LOCAL`): the socket's
    /// peer is the client.
    Local,
    /// A relayed connection whose addresses the header does not give (version 2
    /// `UNSPEC` or unix sockets, version 1 `UNKNOWN`): the socket's peer is used, as
    /// the specification says.
    Unknown,
    /// A relayed TCP connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Why a header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotAHeader,
    #[error("more bytes needed: {0}")]
    Incomplete(usize),
    #[error("PROXY protocol version {0} is not supported")]
    Version(u8),
    #[error("unknown PROXY protocol v2 command {0}")]
    Command(u8),
    #[error("unknown PROXY protocol v2 address family {0:#04x}")]
    Family(u8),
    #[error("PROXY protocol v2 header of {0} bytes is too long (at most {MAX_V2_BODY})")]
    TooLong(usize),
    #[error("PROXY protocol v2 addresses need {need} bytes, the header has {have}")]
    Short { need: usize, have: usize },
    #[error("malformed PROXY protocol v1 line")]
    BadV1Line,
}

/// Whether `first` can begin a header: the first byte of the v2 signature (`\r`) or
/// of `PROXY ` (`P`). Neither can begin a Postgres startup packet (its length would
/// be over 200 MiB) or a TLS record.
pub fn may_start_header(first: u8) -> bool {
    first == V2_SIGNATURE[0] || first == V1_PREFIX[0]
}

/// Checks the fixed part of a version 2 header and returns how many bytes follow it.
pub fn v2_body_len(fixed: &[u8; V2_FIXED_LEN]) -> Result<usize, ProxyHeaderError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::NotAHeader);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let command = fixed[12] & 0x0f;
    if command > 1 {
        return Err(ProxyHeaderError::Command(command));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_V2_BODY {
        return Err(ProxyHeaderError::TooLong(len));
    }
    Ok(len)
}

/// Parses a version 2 header: its fixed part and exactly the body it announced.
pub fn parse_v2(fixed: &[u8; V2_FIXED_LEN], body: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let len = v2_body_len(fixed)?;
    if body.len() != len {
        return Err(ProxyHeaderError::Short {
            need: len,
            have: body.len(),
        });
    }
    if fixed[12] & 0x0f == 0 {
        // LOCAL: whatever the addresses say, the connection is the balancer's own.
        return Ok(ProxyHeader::Local);
    }
    let family = fixed[13] >> 4;
    let need = match family {
        0 => return Ok(ProxyHeader::Unknown),
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(ProxyHeaderError::Family(fixed[13])),
    };
    if body.len() < need {
        return Err(ProxyHeaderError::Short {
            need,
            have: body.len(),
        });
    }
    let (source, destination) = match family {
        1 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 4];
                octets.copy_from_slice(&body[at..at + 4]);
                IpAddr::V4(Ipv4Addr::from(octets))
            };
            ((ip(0), port(body, 8)), (ip(4), port(body, 10)))
        }
        2 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            ((ip(0), port(body, 32)), (ip(16), port(body, 34)))
        }
        // Unix sockets: no address Sluice can use.
        _ => return Ok(ProxyHeader::Unknown),
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::from(source),
        destination: SocketAddr::from(destination),
    })
}

fn port(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([body[at], body[at + 1]])
}

/// Parses a version 1 line, `\r\n` included: `PROXY TCP4|TCP6 src dst sport dport` or
/// `PROXY UNKNOWN ...`.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if line.len() > MAX_V1_LEN {
        return Err(ProxyHeaderError::BadV1Line);
    }
    let text = line
        .strip_prefix(V1_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .ok_or(ProxyHeaderError::BadV1Line)?;
    let mut words = text.split(' ');
    let protocol = words.next().ok_or(ProxyHeaderError::BadV1Line)?;
    if protocol == "UNKNOWN" {
        // The rest of the line is to be ignored (specification, 2.1).
        return Ok(ProxyHeader::Unknown);
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyHeaderError::BadV1Line),
    };
    let mut next = || words.next().ok_or(ProxyHeaderError::BadV1Line);
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if words.next().is_some() {
        return Err(ProxyHeaderError::BadV1Line);
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
        let ip = if v6 {
            IpAddr::V6(s.parse().map_err(|_| ProxyHeaderError::BadV1Line)?)
        } else {
            IpAddr::V4(s.parse().map_err(|_| ProxyHeaderError::BadV1Line)?)
        };
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        // Decimal, no sign, no leading zero (the specification's form).
        let plain = !s.is_empty()
            && s.len() <= 5
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        if !plain {
            return Err(ProxyHeaderError::BadV1Line);
        }
        s.parse().map_err(|_| ProxyHeaderError::BadV1Line)
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// Parses the header at the start of `buf`, returning it and its length in bytes.
/// `Incomplete(n)`: at least `n` more bytes are needed to decide.
pub fn parse(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyHeaderError> {
    let Some(&first) = buf.first() else {
        return Err(ProxyHeaderError::Incomplete(1));
    };
    if first == V2_SIGNATURE[0] {
        let Some(fixed) = buf.get(..V2_FIXED_LEN) else {
            let have = buf.len().min(12);
            if buf[..have] != V2_SIGNATURE[..have] {
                return Err(ProxyHeaderError::NotAHeader);
            }
            return Err(ProxyHeaderError::Incomplete(V2_FIXED_LEN - buf.len()));
        };
        let mut head = [0u8; V2_FIXED_LEN];
        head.copy_from_slice(fixed);
        let len = v2_body_len(&head)?;
        let total = V2_FIXED_LEN + len;
        let Some(body) = buf.get(V2_FIXED_LEN..total) else {
            return Err(ProxyHeaderError::Incomplete(total - buf.len()));
        };
        return Ok((parse_v2(&head, body)?, total));
    }
    if first == V1_PREFIX[0] {
        let window = &buf[..buf.len().min(MAX_V1_LEN)];
        let have = window.len().min(V1_PREFIX.len());
        if window[..have] != V1_PREFIX[..have] {
            return Err(ProxyHeaderError::NotAHeader);
        }
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(at) => Ok((parse_v1(&window[..at + 2])?, at + 2)),
            None if window.len() >= MAX_V1_LEN => Err(ProxyHeaderError::BadV1Line),
            None => Err(ProxyHeaderError::Incomplete(1)),
        };
    }
    Err(ProxyHeaderError::NotAHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v2_ipv4_with_tlvs_and_what_follows() {
        let mut body = vec![127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x19, 0x2c];
        body.extend_from_slice(&[0x03, 0x00, 0x04, 1, 2, 3, 4]); // a CRC32c TLV
        let mut buf = v2(1, 0x11, &body);
        let header_len = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 8, 4, 210, 22, 47]); // an SSLRequest after it
        let (header, len) = parse(&buf).unwrap();
        assert_eq!(len, header_len);
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("127.0.0.2:40000"),
                destination: addr("127.0.0.1:6444"),
            }
        );
    }

    #[test]
    fn v2_ipv6_local_and_unspec() {
        let mut body = [0u8; 36];
        body[15] = 1; // ::1
        body[16] = 0x20;
        body[17] = 0x01;
        body[32..34].copy_from_slice(&5432u16.to_be_bytes());
        let (header, _) = parse(&v2(1, 0x21, &body)).unwrap();
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("[::1]:5432"),
                destination: addr("[2001::]:0"),
            }
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().0, ProxyHeader::Local);
        // LOCAL ignores whatever addresses come with it.
        assert_eq!(parse(&v2(0, 0x11, &[1; 12])).unwrap().0, ProxyHeader::Local);
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().0, ProxyHeader::Unknown);
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])).unwrap().0,
            ProxyHeader::Unknown
        );
    }

    #[test]
    fn v2_refusals() {
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 11])),
            Err(ProxyHeaderError::Short { need: 12, have: 11 })
        );
        assert_eq!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyHeaderError::Command(2))
        );
        assert_eq!(
            parse(&v2(1, 0x41, &[0; 12])),
            Err(ProxyHeaderError::Family(0x41))
        );
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x11;
        assert_eq!(parse(&bad), Err(ProxyHeaderError::Version(1)));
        // The announced length is checked before anything is read.
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&65535u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyHeaderError::TooLong(65535)));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUI"),
            Err(ProxyHeaderError::Incomplete(6))
        );
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyHeaderError::NotAHeader));
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 12])[..20]),
            Err(ProxyHeaderError::Incomplete(8))
        );
    }

    #[test]
    fn v1_lines() {
        let (header, len) = parse(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 6432\r\nrest").unwrap();
        assert_eq!(len, 43);
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("127.0.0.2:40000"),
                destination: addr("127.0.0.1:6432"),
            }
        );
        let (header, _) = parse(b"PROXY TCP6 ::1 2001:db8::1 1 65535\r\n").unwrap();
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: addr("[::1]:1"),
                destination: addr("[2001:db8::1]:65535"),
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            (ProxyHeader::Unknown, 15)
        );
        for bad in [
            &b"PROXY TCP4 127.0.0.2 127.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
            b"PROXY TCP6 127.0.0.1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 1\r\n",
            b"PROXY TCP4 1.2.3.4  1.2.3.4 1 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 extra\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 1\r\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyHeaderError::BadV1Line), "{bad:?}");
        }
        assert_eq!(
            parse(b"PROXY TCP4 1.2"),
            Err(ProxyHeaderError::Incomplete(1))
        );
        assert_eq!(parse(b"PRONTO"), Err(ProxyHeaderError::NotAHeader));
        let long = [b'P'; 200];
        assert_eq!(parse(&long), Err(ProxyHeaderError::NotAHeader));
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'x'; 200]);
        assert_eq!(parse(&long), Err(ProxyHeaderError::BadV1Line));
    }

    #[test]
    fn postgres_and_tls_first_bytes_are_not_headers() {
        for first in [0x00, 0x16, 0x01] {
            assert!(!may_start_header(first));
            assert_eq!(parse(&[first, 0, 0, 8]), Err(ProxyHeaderError::NotAHeader));
        }
        assert!(may_start_header(b'\r') && may_start_header(b'P'));
    }
}
