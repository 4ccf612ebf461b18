//! Tests for startup packet parsing and encoding.

use super::*;

fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = (u32::try_from(body.len()).unwrap() + 8)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn parses_special_requests() {
    assert_eq!(
        parse(&packet(SSL_REQUEST_CODE, b"")),
        Ok(StartupPacket::SslRequest)
    );
    assert_eq!(
        parse(&packet(GSSENC_REQUEST_CODE, b"")),
        Ok(StartupPacket::GssEncRequest)
    );
    let mut out = BytesMut::new();
    let key = CancelKey {
        pid: 4242,
        secret: -7,
    };
    encode_cancel(key, &mut out);
    assert_eq!(out.len(), 16);
    let Ok(StartupPacket::Cancel(request)) = parse(&out) else {
        panic!("not a CancelRequest: {out:?}")
    };
    assert_eq!(request.key(), Some(ClientCancelKey::Short(key)));
}

#[test]
fn cancel_requests_carry_4_to_256_bytes_of_secret() {
    let long = ClientCancelKey::Long(LongKey {
        pid: -3,
        secret: [7; LONG_SECRET_LEN],
    });
    let mut out = BytesMut::new();
    long.encode_cancel(&mut out);
    assert_eq!(out.len(), 12 + LONG_SECRET_LEN);
    let Ok(StartupPacket::Cancel(request)) = parse(&out) else {
        panic!("not a CancelRequest: {out:?}")
    };
    assert_eq!(request.key(), Some(long));
    for len in [MIN_SECRET_LEN, 5, 31, 33, 200, MAX_SECRET_LEN] {
        let mut body = 42i32.to_be_bytes().to_vec();
        body.extend((0..len).map(|i| i as u8));
        let Ok(StartupPacket::Cancel(request)) = parse(&packet(CANCEL_REQUEST_CODE, &body)) else {
            panic!("a {len}-byte secret is refused")
        };
        assert_eq!((request.pid, request.secret.len()), (42, len));
        // Only the lengths Sluice hands out can name a client of Sluice's.
        assert_eq!(
            request.key().is_some(),
            len == 4 || len == LONG_SECRET_LEN,
            "{len}"
        );
        let mut again = BytesMut::new();
        encode_cancel_secret(request.pid, &request.secret, &mut again);
        assert_eq!(&again[..], &packet(CANCEL_REQUEST_CODE, &body)[..]);
    }
}

#[test]
fn special_requests_must_have_exact_lengths() {
    assert!(matches!(
        parse(&packet(SSL_REQUEST_CODE, b"x")),
        Err(StartupError::BadRequestLength { len: 9, .. })
    ));
    assert!(matches!(
        parse(&packet(CANCEL_REQUEST_CODE, &[0; 4])),
        Err(StartupError::BadRequestLength { len: 12, .. })
    ));
    // A secret of 3 bytes, or of more than 256 (protocol 3.2's bounds).
    assert!(matches!(
        parse(&packet(CANCEL_REQUEST_CODE, &[0; 7])),
        Err(StartupError::BadRequestLength { len: 15, .. })
    ));
    assert!(matches!(
        parse(&packet(CANCEL_REQUEST_CODE, &[0; 4 + 257])),
        Err(StartupError::BadRequestLength { len: 269, .. })
    ));
    assert!(matches!(
        parse(&packet(CANCEL_REQUEST_CODE, &[0; 4 + 256])),
        Ok(StartupPacket::Cancel(_))
    ));
}

#[test]
fn startup_round_trip() {
    let mut out = BytesMut::new();
    encode_startup(
        &[
            ("user", "alice"),
            ("database", "shop"),
            ("_pq_.compression", "on"),
        ],
        &mut out,
    );
    assert_eq!(parse_len(out[..4].try_into().unwrap()), Ok(out.len()));
    let StartupPacket::Startup(msg) = parse(&out).unwrap() else {
        panic!("not a startup message");
    };
    assert_eq!((msg.major, msg.minor), (3, 0));
    assert_eq!(msg.user(), Some("alice"));
    assert_eq!(msg.database(), Some("shop"));
    assert_eq!(msg.get("_pq_.compression"), Some("on"));
    assert_eq!(msg.params.len(), 3);
}

#[test]
fn any_3x_minor_is_accepted_and_database_defaults_to_user() {
    let StartupPacket::Startup(msg) = parse(&packet((3 << 16) | 2, b"user\0bob\0\0")).unwrap()
    else {
        panic!("not a startup message");
    };
    assert_eq!((msg.major, msg.minor), (3, 2));
    assert_eq!(msg.database(), Some("bob"));
    let StartupPacket::Startup(msg) =
        parse(&packet(PROTOCOL_3_0, b"database\0\0user\0bob\0\0")).unwrap()
    else {
        panic!("not a startup message");
    };
    assert_eq!(msg.database(), Some("bob"));
}

#[test]
fn rejects_malformed_startup_messages() {
    let cases: &[(&[u8], StartupError)] = &[
        (b"user\0bob\0", StartupError::MissingTerminator),
        (b"user\0bob", StartupError::MissingTerminator),
        (b"user\0", StartupError::OddParams("user".into())),
        (b"user\0bob\0\0x", StartupError::TrailingBytes),
        (b"user\0\xff\0\0", StartupError::NonUtf8),
        (
            b"user\0a\0user\0b\0\0",
            StartupError::DuplicateKey("user".into()),
        ),
        (b"database\0d\0\0", StartupError::MissingUser),
        (b"user\0\0\0", StartupError::MissingUser),
        (b"", StartupError::MissingTerminator),
    ];
    for (body, want) in cases {
        assert_eq!(
            parse(&packet(PROTOCOL_3_0, body)).as_ref(),
            Err(want),
            "{body:?}"
        );
    }
    assert_eq!(
        parse(&packet(2 << 16, b"user\0bob\0\0")),
        Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
    );
    assert_eq!(
        parse(&packet(1234 << 16 | 5681, b"")),
        Err(StartupError::UnsupportedProtocol {
            major: 1234,
            minor: 5681
        })
    );
}

#[test]
fn checks_lengths() {
    assert_eq!(
        parse_len(7u32.to_be_bytes()),
        Err(StartupError::BadLength(7))
    );
    assert_eq!(parse_len(8u32.to_be_bytes()), Ok(8));
    assert_eq!(parse_len(10_000u32.to_be_bytes()), Ok(10_000));
    assert_eq!(
        parse_len(10_001u32.to_be_bytes()),
        Err(StartupError::BadLength(10_001))
    );
    assert_eq!(parse(&[0, 0, 0]), Err(StartupError::BadLength(3)));
    let mut p = packet(SSL_REQUEST_CODE, b"");
    p.push(0);
    assert_eq!(
        parse(&p),
        Err(StartupError::LengthMismatch {
            declared: 8,
            actual: 9
        })
    );
}
