//! Round trips between the builders and the parsers, and malformed bodies.

use super::*;
use crate::frame::{split_frame, Frame, DEFAULT_MAX_FRAME_LEN};
use crate::startup::CancelKey;
use bytes::BytesMut;

/// Builds one message and splits it back into a frame.
fn built(build: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut out = BytesMut::new();
    build(&mut out);
    let frame = split_frame(&mut out, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert!(out.is_empty(), "exactly one message");
    frame
}

#[test]
fn error_and_notice_responses_round_trip() {
    let f = built(|o| {
        error_response(
            o,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
        )
    });
    assert_eq!(f.tag, tag::ERROR_RESPONSE);
    let fields = parse_error_fields(&f.body).unwrap();
    assert_eq!(
        fields,
        ErrorFields {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed".into()
        }
    );
    let f = built(|o| notice_response(o, "00000", "hello\0world"));
    assert_eq!(f.tag, tag::NOTICE_RESPONSE);
    let fields = parse_error_fields(&f.body).unwrap();
    assert_eq!(fields.severity, "NOTICE");
    assert_eq!(fields.message, "hello", "cut at the NUL");
    assert_eq!(Severity::Error.as_str(), "ERROR");
}

#[test]
fn authentication_requests_round_trip() {
    let cases: Vec<(Frame, Authentication<'static>)> = vec![
        (built(auth_ok), Authentication::Ok),
        (built(auth_cleartext), Authentication::CleartextPassword),
        (
            built(|o| auth_md5(o, [1, 2, 3, 4])),
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
        ),
        (
            built(|o| auth_sasl(o, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])),
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
            },
        ),
        (
            built(|o| auth_sasl_continue(o, b"r=abc,s=c2FsdA==,i=4096")),
            Authentication::SaslContinue(b"r=abc,s=c2FsdA==,i=4096"),
        ),
        (
            built(|o| auth_sasl_final(o, b"v=xyz")),
            Authentication::SaslFinal(b"v=xyz"),
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(frame.tag, tag::AUTHENTICATION);
        assert_eq!(parse_authentication(&frame.body), Ok(want));
    }
    assert_eq!(
        parse_authentication(&[0, 0, 0, 7, 1, 2]),
        Ok(Authentication::Other(7))
    );
}

#[test]
fn session_messages_round_trip() {
    let f = built(|o| parameter_status(o, "server_version", "17.2"));
    assert_eq!(
        parse_parameter_status(&f.body),
        Ok(("server_version", "17.2"))
    );
    let key = CancelKey {
        pid: 99,
        secret: -12345,
    };
    let f = built(|o| backend_key_data(o, key));
    assert_eq!(parse_backend_key_data(&f.body), Ok(key));
    assert_eq!(
        parse_backend_key_data_any(&f.body),
        Ok((99, &(-12345i32).to_be_bytes()[..]))
    );
    let long = crate::startup::LongKey {
        pid: 7,
        secret: [0xab; 32],
    };
    let f = built(|o| backend_key_data_long(o, &long));
    assert_eq!(f.body.len(), 36);
    assert_eq!(
        parse_backend_key_data_any(&f.body),
        Ok((7, &[0xab; 32][..]))
    );
    assert!(
        parse_backend_key_data(&f.body).is_err(),
        "3.0 has 4 bytes only"
    );
    assert!(parse_backend_key_data_any(&[0; 7]).is_err());
    assert!(parse_backend_key_data_any(&[0; 4 + 257]).is_err());
    let f = built(|o| ready_for_query(o, tag::STATUS_IN_TRANSACTION));
    assert_eq!(f.tag, tag::READY_FOR_QUERY);
    assert_eq!(parse_ready_for_query(&f.body), Ok(b'T'));
    let f = built(|o| negotiate_protocol_version(o, 0, &["_pq_.foo"]));
    assert_eq!(&f.body[..], b"\x00\x03\x00\x00\x00\x00\x00\x01_pq_.foo\0");
}

#[test]
fn frontend_messages_have_the_documented_layout() {
    assert_eq!(&built(|o| query(o, "select 1")).body[..], b"select 1\0");
    assert_eq!(built(terminate).tag, tag::TERMINATE);
    assert_eq!(built(sync).tag, tag::SYNC);
    let f = built(|o| password_message(o, b"md5abc\0"));
    assert_eq!(
        (f.tag, &f.body[..]),
        (tag::PASSWORD_MESSAGE, &b"md5abc\0"[..])
    );
    let f = built(|o| sasl_initial_response(o, "SCRAM-SHA-256", b"n,,n=,r=abc"));
    assert_eq!(
        parse_sasl_initial_response(&f.body),
        Ok(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]))
    );
    let f = built(|o| parse(o, "s1", "select $1", &[23]));
    assert_eq!(&f.body[..], b"s1\0select $1\0\x00\x01\x00\x00\x00\x17");
    let f = built(|o| bind_text(o, "", "s1", &[Some(b"42"), None]));
    assert_eq!(
        &f.body[..],
        b"\0s1\0\x00\x00\x00\x02\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00"
    );
    let f = built(|o| execute(o, "", 0));
    assert_eq!((f.tag, &f.body[..]), (b'E', &b"\0\0\0\0\0"[..]));
    let f = built(|o| describe_portal(o, "p"));
    assert_eq!((f.tag, &f.body[..]), (b'D', &b"Pp\0"[..]));
}

#[test]
fn data_rows_parse_with_nulls() {
    let body = b"\x00\x03\x00\x00\x00\x01a\xff\xff\xff\xff\x00\x00\x00\x00";
    assert_eq!(
        parse_data_row(body),
        Ok(vec![Some(&b"a"[..]), None, Some(&b""[..])])
    );
    assert!(parse_data_row(b"\xff\xff").is_err(), "negative count");
    assert!(parse_data_row(b"\x7f\xff").is_err(), "huge count, no data");
    assert!(parse_data_row(b"\x00\x01\xff\xff\xff\xfe").is_err());
    assert!(parse_data_row(b"\x00\x01\x00\x00\x00\x05ab").is_err());
    assert!(parse_data_row(b"\x00\x00x").is_err(), "trailing byte");
}

#[test]
fn malformed_bodies_are_errors() {
    assert!(parse_authentication(b"").is_err());
    assert!(parse_authentication(b"\0\0\0\x05\x01").is_err());
    assert!(parse_authentication(b"\0\0\0\x0aSCRAM").is_err());
    assert!(parse_authentication(b"\0\0\0\x00x").is_err());
    assert!(parse_error_fields(b"Mno terminator").is_err());
    assert!(parse_error_fields(b"Mmsg\0").is_err());
    assert!(parse_parameter_status(b"a\0b").is_err());
    assert!(parse_backend_key_data(b"\0\0\0\x01\0\0\0").is_err());
    assert!(parse_ready_for_query(b"").is_err());
    assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err());
    assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\x00\x00\x00\x09abc").is_err());
    assert_eq!(
        parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff"),
        Ok(("SCRAM-SHA-256", &b""[..]))
    );
}

#[test]
fn extended_protocol_views_round_trip() {
    let mut out = BytesMut::new();
    parse_raw(&mut out, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
    let frame = crate::frame::split_frame(&mut out, 1 << 20)
        .unwrap()
        .unwrap();
    let view = parse_parse(&frame.body).unwrap();
    assert_eq!((view.name, view.query), (&b"s1"[..], &b"select $1"[..]));
    assert_eq!(view.param_types, &[0, 1, 0, 0, 0, 23]);
    // A count that disagrees with the bytes is refused.
    assert!(parse_parse(b"s\0q\0\0\x02\0\0\0\x17").is_err());
    assert!(parse_parse(b"s\0q\0\xff\xff").is_err());

    bind_raw(&mut out, b"", b"s1", b"\0\0\0\0\0\0");
    let frame = crate::frame::split_frame(&mut out, 1 << 20)
        .unwrap()
        .unwrap();
    let bind = parse_bind(&frame.body).unwrap();
    assert_eq!(
        (bind.portal, bind.statement, bind.rest),
        (&b""[..], &b"s1"[..], &b"\0\0\0\0\0\0"[..])
    );

    close(&mut out, b'S', b"s1");
    let frame = crate::frame::split_frame(&mut out, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(frame.tag, b'C');
    assert_eq!(parse_target(&frame.body).unwrap(), (b'S', &b"s1"[..]));
    assert!(parse_target(b"X\0").is_err());
    assert!(parse_target(b"S").is_err());
}
