//! `wire`'s builders of server messages, read back by an independent codec: the
//! `postgres-protocol` crate that tokio-postgres parses servers' answers with. A field
//! laid out wrongly (a length, a terminator, a count) makes it fail or read other
//! values than were written.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use wire::messages::{self, Severity};
use wire::startup::CancelKey;

/// Parses exactly one message out of `out`, which must hold nothing else.
fn one(mut out: BytesMut) -> Message {
    let message = Message::parse(&mut out)
        .expect("a well-formed message")
        .expect("a whole message");
    assert!(out.is_empty(), "{} bytes after the message", out.len());
    message
}

fn built(build: impl FnOnce(&mut BytesMut)) -> Message {
    let mut out = BytesMut::new();
    build(&mut out);
    one(out)
}

#[test]
fn error_and_notice_fields_read_back() {
    let Message::ErrorResponse(body) = built(|out| {
        messages::error_response(out, Severity::Error, "42704", "unknown command \"SHOW X\"")
    }) else {
        panic!("not an ErrorResponse")
    };
    let fields: Vec<(u8, Vec<u8>)> = body
        .fields()
        .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
        .collect()
        .unwrap();
    assert_eq!(
        fields,
        [
            (b'S', b"ERROR".to_vec()),
            (b'V', b"ERROR".to_vec()),
            (b'C', b"42704".to_vec()),
            (b'M', b"unknown command \"SHOW X\"".to_vec()),
        ]
    );
    let Message::NoticeResponse(body) = built(|out| messages::notice_response(out, "00000", "hi"))
    else {
        panic!("not a NoticeResponse")
    };
    let codes: Vec<u8> = body.fields().map(|f| Ok(f.type_())).collect().unwrap();
    assert_eq!(codes, b"SVCM");
}

#[test]
fn authentication_requests_read_back() {
    assert!(matches!(
        built(messages::auth_ok),
        Message::AuthenticationOk
    ));
    assert!(matches!(
        built(messages::auth_cleartext),
        Message::AuthenticationCleartextPassword
    ));
    let Message::AuthenticationMd5Password(body) =
        built(|out| messages::auth_md5(out, [1, 2, 3, 4]))
    else {
        panic!("not md5")
    };
    assert_eq!(body.salt(), [1, 2, 3, 4]);
    let Message::AuthenticationSasl(body) =
        built(|out| messages::auth_sasl(out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    else {
        panic!("not SASL")
    };
    let mechanisms: Vec<String> = body
        .mechanisms()
        .map(|m| Ok(m.to_owned()))
        .collect()
        .unwrap();
    assert_eq!(mechanisms, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    let Message::AuthenticationSaslContinue(body) =
        built(|out| messages::auth_sasl_continue(out, b"r=abc,s=def,i=4096"))
    else {
        panic!("not SASL continue")
    };
    assert_eq!(body.data(), b"r=abc,s=def,i=4096");
    let Message::AuthenticationSaslFinal(body) =
        built(|out| messages::auth_sasl_final(out, b"v=xyz"))
    else {
        panic!("not SASL final")
    };
    assert_eq!(body.data(), b"v=xyz");
}

#[test]
fn greeting_messages_read_back() {
    let Message::ParameterStatus(body) =
        built(|out| messages::parameter_status(out, "server_version", "17.2"))
    else {
        panic!("not ParameterStatus")
    };
    assert_eq!(body.name().unwrap(), "server_version");
    assert_eq!(body.value().unwrap(), "17.2");
    let key = CancelKey {
        pid: 4242,
        secret: -7,
    };
    let Message::BackendKeyData(body) = built(|out| messages::backend_key_data(out, key)) else {
        panic!("not BackendKeyData")
    };
    assert_eq!((body.process_id(), body.secret_key()), (4242, -7));
    let Message::ReadyForQuery(body) =
        built(|out| messages::ready_for_query(out, messages::tag::STATUS_IDLE))
    else {
        panic!("not ReadyForQuery")
    };
    assert_eq!(body.status(), b'I');
    assert!(matches!(
        built(messages::parse_complete),
        Message::ParseComplete
    ));
    assert!(matches!(
        built(messages::close_complete),
        Message::CloseComplete
    ));
}

#[test]
fn a_result_set_reads_back() {
    let Message::RowDescription(body) =
        built(|out| messages::row_description(out, &["tenant", "state", "bytes"]))
    else {
        panic!("not RowDescription")
    };
    let columns: Vec<(String, u32, i16)> = body
        .fields()
        .map(|f| Ok((f.name().to_owned(), f.type_oid(), f.format())))
        .collect()
        .unwrap();
    assert_eq!(
        columns,
        [
            ("tenant".to_owned(), messages::TEXT_OID, 0),
            ("state".to_owned(), messages::TEXT_OID, 0),
            ("bytes".to_owned(), messages::TEXT_OID, 0),
        ]
    );
    let Message::DataRow(body) =
        built(|out| messages::data_row(out, &[Some("acme"), None, Some("")]))
    else {
        panic!("not DataRow")
    };
    let values: Vec<Option<Vec<u8>>> = body
        .ranges()
        .map(|r| Ok(r.map(|r| body.buffer()[r].to_vec())))
        .collect()
        .unwrap();
    assert_eq!(values, [Some(b"acme".to_vec()), None, Some(Vec::new())]);
    let Message::CommandComplete(body) = built(|out| messages::command_complete(out, "SHOW"))
    else {
        panic!("not CommandComplete")
    };
    assert_eq!(body.tag().unwrap(), "SHOW");
    assert!(matches!(
        built(messages::empty_query_response),
        Message::EmptyQueryResponse
    ));
}

#[test]
fn messages_written_back_to_back_split_where_they_end() {
    let mut out = BytesMut::new();
    messages::row_description(&mut out, &["a"]);
    messages::data_row(&mut out, &[Some("1")]);
    messages::command_complete(&mut out, "SELECT 1");
    messages::ready_for_query(&mut out, messages::tag::STATUS_IDLE);
    let mut kinds = Vec::new();
    while let Some(message) = Message::parse(&mut out).unwrap() {
        kinds.push(match message {
            Message::RowDescription(_) => 'T',
            Message::DataRow(_) => 'D',
            Message::CommandComplete(_) => 'C',
            Message::ReadyForQuery(_) => 'Z',
            _ => '?',
        });
    }
    assert_eq!(kinds, ['T', 'D', 'C', 'Z']);
    assert!(out.is_empty());
}
