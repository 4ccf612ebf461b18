//! Fuzzes the PROXY protocol header: `wire::proxy_header::parse` over a buffer, and
//! the reader Sluice runs on a socket (`proxy::proxy_protocol::resolve`, from a
//! trusted balancer in `optional` mode) over the same bytes.
//!
//! Checks: no panic; a parsed header is never longer than the input or the bounds
//! (v2: 16 + `MAX_V2_BODY`, v1: `MAX_V1_LEN`) and parses the same from exactly its own
//! bytes; the socket reader consumes exactly the header the buffer parser found
//! (nothing of what follows), names the same client, and accepts what it accepts.
#![no_main]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use proxy::config::{ProxyProtocol, ProxyProtocolMode};
use proxy::proxy_protocol::resolve;
use router::Cidr;
use wire::proxy_header::{self, ProxyHeader, ProxyHeaderError, MAX_V1_LEN, MAX_V2_BODY};

const BALANCER: &str = "10.0.0.1:40000";

fuzz_target!(|data: &[u8]| {
    let parsed = proxy_header::parse(data);
    if let Ok((header, len)) = &parsed {
        assert!(*len <= data.len());
        assert!(*len <= (16 + MAX_V2_BODY).max(MAX_V1_LEN));
        assert_eq!(proxy_header::parse(&data[..*len]), Ok((*header, *len)));
    }

    // The reader over a byte slice never waits: one poll finishes it.
    let config = ProxyProtocol {
        mode: ProxyProtocolMode::Optional,
        from: vec![Cidr::parse("10.0.0.0/8").unwrap()],
    };
    let peer: SocketAddr = BALANCER.parse().unwrap();
    let mut rest = data;
    let read = {
        let future = pin!(resolve(&mut rest, peer, &config));
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("reading a slice waited"),
        }
    };
    let consumed = data.len() - rest.len();
    match (&parsed, read) {
        (Ok((header, len)), Ok(resolved)) => {
            assert_eq!(consumed, *len);
            let client = match header {
                ProxyHeader::Proxied { source, .. } => *source,
                ProxyHeader::Local | ProxyHeader::Unknown => peer,
            };
            assert_eq!(resolved.client, client);
            assert_eq!(resolved.first, None);
        }
        (Err(ProxyHeaderError::NotAHeader), Ok(resolved)) if !data.is_empty() => {
            // A direct client: only its first byte was read, and handed on.
            assert!(!proxy_header::may_start_header(data[0]));
            assert_eq!((consumed, resolved.first), (1, Some(data[0])));
            assert_eq!(resolved.client, peer);
        }
        (Ok(_), Err(e)) => panic!("the buffer parser accepts what the reader refuses: {e}"),
        (Err(e), Ok(r)) => panic!("the reader accepts ({r:?}) what the parser refuses: {e}"),
        (Err(_), Err(_)) => {
            assert!(consumed <= (16 + MAX_V2_BODY).max(MAX_V1_LEN));
        }
    }
});
